//! The guarantees of DESIGN.md §3 as properties of single states, plus reachability checks.
//!
//! Safety guarantees are `always` properties. Those about histories read the ghost fields
//! the transitions keep (see [`crate::state`]): a slot's first resolution (I2), what
//! readers were shown (I7), writes accepted without authority (I3, I8, I9).
//!
//! Bounded liveness (I10) is an `always` property too: the model has no cycles (every step
//! changes the state and the clock is bounded), so every behaviour ends in a *terminal*
//! state, where nothing can happen any more; I10 says every slot is resolved there. This is
//! exact, unlike stateright's `eventually`, which can miss counterexamples at joins of the
//! state graph.
//!
//! The `sometimes` properties are the opposite check: each names a path of the protocol
//! (recovery in place, at a new seq, parking, a refused stale fence, …) that must be
//! *reachable* within the bound, so that the safety properties are not true merely because
//! the bound is too small to exercise them.

use stateright::{Model, Property};

use crate::model::ProtocolModel;
use crate::state::{Content, GapReason, Outcome, Owner, Refusal, State, Worker};

/// I1: every seq is allocated by exactly one grant (allocation is contiguous by
/// construction: the slots are a vector).
pub const I1: &str = "I1 each seq granted at most once";
/// I2: a resolved slot keeps its first resolution.
pub const I2: &str = "I2 a resolved slot never changes";
/// I3: every accepted commit held a live lease with a current fence.
pub const I3: &str = "I3 commits only with authority";
/// I5: recorded work of a resolved slot is committed or parked.
pub const I5: &str = "I5 recorded work never silently lost";
/// I6: at most one committed entry per operation id, and the index points at it.
pub const I6: &str = "I6 at most one commit per operation";
/// I7: the watermark is the resolved prefix, never goes back, and what readers saw stays.
pub const I7: &str = "I7 watermark monotone and entries below it immutable";
/// I8: recovery resolves expired slots in ascending seq order.
pub const I8: &str = "I8 recovery in ascending seq order";
/// I9: no accepted write with a stale epoch; epochs only grow, on every change of holder.
pub const I9: &str = "I9 fencing";
/// I10 (bounded): every behaviour ends with every slot resolved.
pub const I10: &str = "I10 every slot resolves (bounded liveness)";

/// Names of the reachability (`sometimes`) properties.
pub const REACHABLE: [&str; 10] = [
    "reachable: recovered in place",
    "reachable: recovered at a new seq",
    "reachable: recorded work parked",
    "reachable: parked work re-sequenced",
    "reachable: duplicate operation superseded",
    "reachable: late commit answered AlreadyCommitted",
    "reachable: stale fence refused",
    "reachable: expired commit refused",
    "reachable: slot re-claimed after a claim ran out",
    "reachable: resource taken over (epoch 2)",
];

/// Every property the model is checked against.
pub fn all() -> Vec<Property<ProtocolModel>> {
    vec![
        Property::always(I1, |_, s: &State| s.slots.iter().all(|x| x.grants == 1)),
        Property::always(I2, |_, s: &State| {
            s.slots
                .iter()
                .all(|x| x.first.is_none() || x.resolved == x.first)
        }),
        Property::always(I3, |_, s: &State| s.monitor.unauthorised_commit.is_none()),
        Property::always(I5, |_, s: &State| i5(s)),
        Property::always(I6, |_, s: &State| i6(s)),
        Property::always(I7, |_, s: &State| i7(s)),
        Property::always(I8, |_, s: &State| s.monitor.resolved_out_of_order.is_none()),
        Property::always(I9, |_, s: &State| {
            s.monitor.stale_fence_accepted.is_none()
                && s.monitor.epoch_not_advanced.is_none()
                && s.resource.epoch == s.max_epoch
        }),
        Property::always(I10, |m, s: &State| {
            !is_terminal(m, s) || s.slots.iter().all(|x| !x.is_leased())
        }),
        Property::sometimes(REACHABLE[0], |_, s: &State| {
            s.slots.iter().any(|x| {
                matches!(x.owner, Owner::Worker(_))
                    && x.resolved
                        == Some(Content::Op {
                            op: x.op,
                            recovered: true,
                        })
            })
        }),
        Property::sometimes(REACHABLE[1], |_, s: &State| {
            s.slots.iter().any(|x| {
                matches!(x.resolved, Some(Content::Gap { reason: GapReason::Superseded, superseded_by: Some(n) })
                    if s.slot(n).owner == Owner::Recovery)
            })
        }),
        Property::sometimes(REACHABLE[2], |_, s: &State| !s.parked.is_empty()),
        Property::sometimes(REACHABLE[3], |_, s: &State| {
            s.parked.iter().any(|p| p.resequenced_at.is_some())
        }),
        Property::sometimes(REACHABLE[4], |_, s: &State| finished(s, Outcome::Duplicate)),
        Property::sometimes(REACHABLE[5], |_, s: &State| {
            finished(s, Outcome::AlreadyCommitted)
        }),
        Property::sometimes(REACHABLE[6], |_, s: &State| {
            finished(s, Outcome::Refused(Refusal::StaleEpoch))
        }),
        Property::sometimes(REACHABLE[7], |_, s: &State| {
            finished(s, Outcome::Refused(Refusal::Expired))
        }),
        Property::sometimes(REACHABLE[8], |_, s: &State| {
            s.slots.iter().any(|x| x.attempts >= 2)
        }),
        Property::sometimes(REACHABLE[9], |_, s: &State| s.resource.epoch >= 2),
    ]
}

fn finished(s: &State, outcome: Outcome) -> bool {
    s.workers.contains(&Worker::Done(outcome))
}

/// Nothing can happen any more (the clock is at its limit and no actor has a step).
/// Every action the model offers changes the state, so this is "no action enabled".
pub fn is_terminal(model: &ProtocolModel, s: &State) -> bool {
    let mut actions = Vec::new();
    model.actions(s, &mut actions);
    actions.is_empty()
}

/// I5: a resolved slot that had recorded work: its operation is committed (here, at a new
/// seq, or already elsewhere) or the work is in the recovery queue.
fn i5(s: &State) -> bool {
    (1..=s.last_seq()).all(|seq| {
        let x = s.slot(seq);
        if !x.had_work || x.is_leased() {
            return true;
        }
        s.committed[usize::from(x.op)].is_some() || s.parked.iter().any(|p| p.slot == seq)
    })
}

/// I6: per operation id, at most one committed slot, and the index names it.
fn i6(s: &State) -> bool {
    (0..s.committed.len()).all(|op| {
        let mut at = (1..=s.last_seq()).filter(|&q| {
            matches!(s.slot(q).resolved, Some(Content::Op { op: o, .. }) if usize::from(o) == op)
        });
        match (at.next(), at.next()) {
            (None, _) => s.committed[op].is_none(),
            (Some(q), None) => s.committed[op] == Some(q),
            (Some(_), Some(_)) => false,
        }
    })
}

/// I7: `W` is exactly the resolved prefix, never below what readers were shown, and every
/// entry at or below it is what readers were shown.
fn i7(s: &State) -> bool {
    let w = usize::from(s.watermark);
    let prefix = s.slots.iter().take_while(|x| !x.is_leased()).count();
    w == prefix
        && s.published.len() == w
        && s.published
            .iter()
            .zip(&s.slots)
            .all(|(seen, x)| x.resolved == Some(*seen))
}
