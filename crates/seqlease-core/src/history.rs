//! Lease history: the audit trail of every transition of every slot.
//!
//! Most transitions are already on the slot itself — who was granted it and when, what it
//! resolved to and when — so stores do not write them twice: they record only what the slot
//! row cannot show (renewals, hand-overs to recovery, expiry and claims, recoveries, parking,
//! re-sequencing, operator actions) and the history query merges both. The hot path (grant,
//! commit) costs nothing extra. Recorded events are pruned by age (a retention setting of the
//! cleanup service); the derived ones live as long as the slot.

use crate::name::SpaceName;
use crate::time::Timestamp;

/// What happened to a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SlotEventKind {
    /// Leased to a worker.
    Granted,
    /// The lease was renewed.
    Renewed,
    /// Released with recorded work: expired at once and left to recovery.
    HandedToRecovery,
    /// The lease expired (recorded when a cleaner first claimed the slot).
    Expired,
    /// A cleaner claimed the slot.
    Claimed,
    /// Recovery committed the slot's work (here, or at the seq in the detail).
    Recovered,
    /// Recorded work was parked in the recovery queue.
    Parked,
    /// The worker committed an operation.
    Committed,
    /// The worker released the slot: `GAP(released)`.
    Released,
    /// The slot became `GAP(expired)`.
    Gapped,
    /// The slot's work lives at another seq: `GAP(superseded)`.
    Superseded,
    /// An operator acted on the slot's parked work (retry, resolve as gap, re-sequence).
    Manual,
}

impl SlotEventKind {
    /// The stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            SlotEventKind::Granted => "granted",
            SlotEventKind::Renewed => "renewed",
            SlotEventKind::HandedToRecovery => "handed_to_recovery",
            SlotEventKind::Expired => "expired",
            SlotEventKind::Claimed => "claimed",
            SlotEventKind::Recovered => "recovered",
            SlotEventKind::Parked => "parked",
            SlotEventKind::Committed => "committed",
            SlotEventKind::Released => "released",
            SlotEventKind::Gapped => "gapped",
            SlotEventKind::Superseded => "superseded",
            SlotEventKind::Manual => "manual",
        }
    }
}

/// One transition of one slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotEvent {
    /// The space.
    pub space: SpaceName,
    /// The slot.
    pub seq: u64,
    /// When (store clock).
    pub at: Timestamp,
    /// What happened.
    pub kind: SlotEventKind,
    /// Who: the worker, the cleaner, or the operator.
    pub actor: String,
    /// More: the new expiry, the seq work went to, an error, an operator's note.
    pub detail: Option<String>,
}

/// Which history to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryQuery {
    /// The space.
    pub space: SpaceName,
    /// One slot, or (`None`) the slots from `from_seq` on.
    pub seq: Option<u64>,
    /// First seq when `seq` is `None`.
    pub from_seq: u64,
    /// Most events.
    pub limit: usize,
}
