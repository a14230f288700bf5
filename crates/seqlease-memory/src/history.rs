//! Lease history in the in-memory store: recorded events per slot, merged at query time
//! with the transitions the slot itself shows (see `seqlease_core::history`).

use seqlease_core::{GapReason, HistoryQuery, SlotEvent, SlotEventKind, Timestamp};

use crate::slot::{Content, Label, Slot};
use crate::space::SpaceState;

impl SpaceState {
    /// Record an event the slot row cannot show.
    pub(crate) fn record(
        &mut self,
        seq: u64,
        at: Timestamp,
        kind: SlotEventKind,
        actor: impl Into<String>,
        detail: Option<String>,
    ) {
        let event = SlotEvent {
            space: self.name.clone(),
            seq,
            at,
            kind,
            actor: actor.into(),
            detail,
        };
        self.events.entry(seq).or_default().push(event);
    }

    /// [`SpaceState::record`] with an owner label as the actor.
    pub(crate) fn record_owner(
        &mut self,
        seq: u64,
        at: Timestamp,
        kind: SlotEventKind,
        owner: Label,
        detail: Option<String>,
    ) {
        let actor = self.labels.text(owner).to_owned();
        self.record(seq, at, kind, actor, detail);
    }

    pub(crate) fn history(&self, query: &HistoryQuery) -> Vec<SlotEvent> {
        let seqs: Box<dyn Iterator<Item = u64>> = match query.seq {
            Some(seq) => Box::new(std::iter::once(seq)),
            None => Box::new(query.from_seq.max(self.slots.floor() + 1)..=self.slots.len()),
        };
        let mut out = Vec::new();
        for seq in seqs {
            let Some(slot) = self.slots.get(seq) else {
                break;
            };
            let mut events = self.derived(seq, slot);
            events.extend(self.events.get(&seq).into_iter().flatten().cloned());
            events.sort_by_key(|e| (e.at, e.kind));
            out.extend(events);
            if out.len() >= query.limit {
                out.truncate(query.limit);
                break;
            }
        }
        out
    }

    /// The transitions the slot row shows: its grant and its resolution.
    fn derived(&self, seq: u64, slot: &Slot) -> Vec<SlotEvent> {
        let event = |at, kind, actor: &str, detail: Option<String>| SlotEvent {
            space: self.name.clone(),
            seq,
            at,
            kind,
            actor: actor.into(),
            detail,
        };
        let owner = self.labels.text(slot.lease.owner);
        let mut events = Vec::with_capacity(2);
        let appended = matches!(slot.resolution(), Some((_, Content::Committed { recovery: Some(r), .. })) if r.original_seq != seq);
        if !appended {
            let until = format!("until {}", slot.lease.expires_at);
            events.push(event(
                slot.lease.leased_at,
                SlotEventKind::Granted,
                owner,
                Some(until),
            ));
        }
        if let Some((at, content)) = slot.resolution() {
            let at = &at;
            events.push(match content {
                Content::Committed { recovery, .. } => match recovery {
                    None => event(*at, SlotEventKind::Committed, owner, None),
                    Some(r) => {
                        let detail = format!(
                            "{} recovery of seq {}",
                            r.recovery_type.as_str(),
                            r.original_seq
                        );
                        event(*at, SlotEventKind::Recovered, "recovery", Some(detail))
                    }
                },
                Content::Gap(g) => match g.reason {
                    GapReason::Released => {
                        event(*at, SlotEventKind::Released, owner, g.detail.clone())
                    }
                    GapReason::Expired => {
                        event(*at, SlotEventKind::Gapped, "recovery", g.detail.clone())
                    }
                    GapReason::Superseded => {
                        let detail = g.superseded_by.map(|n| format!("work at seq {n}"));
                        event(*at, SlotEventKind::Superseded, owner, detail)
                    }
                    GapReason::Manual => {
                        event(*at, SlotEventKind::Manual, "operator", g.detail.clone())
                    }
                },
            });
        }
        events
    }

    pub(crate) fn prune_history(&mut self, before: Timestamp) -> u64 {
        let mut pruned = 0;
        self.events.retain(|_, events| {
            let n = events.len();
            events.retain(|e| e.at >= before);
            pruned += (n - events.len()) as u64;
            !events.is_empty()
        });
        pruned
    }
}
