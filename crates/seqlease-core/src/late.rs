//! Late work: a finished result whose lease ran out before it could be committed.
//!
//! A worker cut off by a network partition, or one that stalled past its TTL, may still
//! hold a finished operation after its slot went to recovery. Dropping that work would lose
//! it; committing it into the old slot would break I2 and I3 (the slot may already be a gap
//! that readers have passed). Instead the store **re-sequences** it: the operation is
//! committed at a fresh seq with recovery metadata (`RecoveryType::Late`, the original seq
//! and operation id), through the same append path as parked work, and the original slot is
//! left as it is (a resolved slot never changes).
//!
//! The lease's token still authenticates the work, its fence is still checked (a zombie
//! whose resource epoch moved on is refused, I9), and an operation that is already committed
//! anywhere in the space is answered with that seq, never duplicated (I6). [`plan_late`] is
//! the decision every store shares; stores only load the facts and write the outcome.

use crate::command::LeaseKey;
use crate::error::LeaseError;
use crate::time::Timestamp;
use crate::types::{Fence, GapReason, OperationBody, SlotState};

/// A late commit: the lease that was granted the slot, and the finished operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LateCommit {
    /// The lease (its token must match the slot's).
    pub key: LeaseKey,
    /// The finished operation.
    pub body: OperationBody,
}

/// Where late work landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LateOutcome {
    /// Committed at the fresh seq `seq` with recovery metadata pointing at `original_seq`.
    Resequenced {
        /// Where the operation lives now.
        seq: u64,
        /// The slot the lease was granted (left as it was).
        original_seq: u64,
    },
    /// The slot itself is committed with this operation (the holder committed in time, or
    /// recovery committed its recorded result in place): nothing was written.
    AlreadyCommitted {
        /// The slot.
        seq: u64,
    },
    /// The operation id is already committed at `existing` (I6): nothing was written.
    Duplicate {
        /// Where the operation lives.
        existing: u64,
    },
}

impl LateOutcome {
    /// The seq where the operation lives.
    pub fn seq(&self) -> u64 {
        match *self {
            LateOutcome::Resequenced { seq, .. } => seq,
            LateOutcome::AlreadyCommitted { seq } => seq,
            LateOutcome::Duplicate { existing } => existing,
        }
    }
}

/// What a store knows about the slot of a late commit, read in the writing transaction
/// after the token matched.
#[derive(Clone, Copy, Debug)]
pub struct LateSlot<'a> {
    /// The slot's state.
    pub state: SlotState,
    /// Its lease's expiry (store clock).
    pub expires_at: Timestamp,
    /// Its lease's fence, if it was granted under a resource lease.
    pub fence: Option<&'a Fence>,
    /// The fenced resource's current epoch (0 when never held); ignored without a fence.
    pub current_epoch: u64,
    /// Where the lease's operation id is committed in the space, if anywhere.
    pub committed_at: Option<u64>,
}

/// The decision for a late commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatePlan {
    /// Nothing to write: answer with this outcome.
    Answer(LateOutcome),
    /// Append the operation at a fresh seq with `RecoveryType::Late` metadata.
    Resequence,
}

/// Decide a late commit for `key`'s slot, `now` by the store clock.
///
/// Refused: a fence whose epoch moved on (`StaleEpoch`, I9), a lease that is still live
/// (commit it normally), and a slot its owner released (the owner gave the work up).
pub fn plan_late(
    key: &LeaseKey,
    slot: LateSlot<'_>,
    now: Timestamp,
) -> Result<LatePlan, LeaseError> {
    if slot.state == SlotState::Committed {
        return Ok(LatePlan::Answer(LateOutcome::AlreadyCommitted {
            seq: key.seq,
        }));
    }
    if let Some(fence) = slot.fence
        && fence.epoch != slot.current_epoch
    {
        return Err(LeaseError::StaleEpoch {
            resource: fence.resource.clone(),
            current: slot.current_epoch,
            attempted: fence.epoch,
        });
    }
    if let Some(existing) = slot.committed_at {
        return Ok(LatePlan::Answer(LateOutcome::Duplicate { existing }));
    }
    let refuse = |reason: &'static str| LeaseError::LateRefused {
        space: key.space.clone(),
        seq: key.seq,
        reason,
    };
    match slot.state {
        SlotState::Leased if slot.expires_at > now => Err(refuse(
            "the lease is still live; commit it with Lease::commit",
        )),
        SlotState::Gap(GapReason::Released) => Err(refuse(
            "its owner released the slot, giving the work up; grant a new slot for it",
        )),
        _ => Ok(LatePlan::Resequence),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SpaceName, Token};

    fn key() -> LeaseKey {
        LeaseKey {
            space: SpaceName::new("s").expect("valid"),
            seq: 7,
            token: Token([1; 16]),
        }
    }

    fn slot(state: SlotState) -> LateSlot<'static> {
        LateSlot {
            state,
            expires_at: Timestamp(100),
            fence: None,
            current_epoch: 0,
            committed_at: None,
        }
    }

    #[test]
    fn expired_or_gapped_slots_are_resequenced() {
        let now = Timestamp(100);
        for state in [
            SlotState::Leased,
            SlotState::Gap(GapReason::Expired),
            SlotState::Gap(GapReason::Manual),
        ] {
            assert_eq!(
                plan_late(&key(), slot(state), now),
                Ok(LatePlan::Resequence)
            );
        }
    }

    #[test]
    fn live_and_released_slots_are_refused() {
        let live = plan_late(&key(), slot(SlotState::Leased), Timestamp(99));
        assert!(matches!(live, Err(LeaseError::LateRefused { seq: 7, .. })));
        let released = plan_late(
            &key(),
            slot(SlotState::Gap(GapReason::Released)),
            Timestamp(0),
        );
        assert!(matches!(released, Err(LeaseError::LateRefused { .. })));
    }

    #[test]
    fn committed_work_is_answered_not_duplicated() {
        let now = Timestamp(500);
        let own = plan_late(&key(), slot(SlotState::Committed), now);
        assert_eq!(
            own,
            Ok(LatePlan::Answer(LateOutcome::AlreadyCommitted { seq: 7 }))
        );
        let elsewhere = LateSlot {
            committed_at: Some(9),
            ..slot(SlotState::Gap(GapReason::Superseded))
        };
        let dup = plan_late(&key(), elsewhere, now);
        assert_eq!(
            dup,
            Ok(LatePlan::Answer(LateOutcome::Duplicate { existing: 9 }))
        );
    }

    #[test]
    fn a_stale_fence_is_refused_before_anything_else() {
        let fence = Fence {
            resource: "orders-0".into(),
            epoch: 3,
        };
        let stale = LateSlot {
            fence: Some(&fence),
            current_epoch: 4,
            committed_at: Some(2),
            ..slot(SlotState::Gap(GapReason::Expired))
        };
        let refused = plan_late(&key(), stale, Timestamp(500));
        assert!(matches!(
            refused,
            Err(LeaseError::StaleEpoch {
                current: 4,
                attempted: 3,
                ..
            })
        ));
    }
}
