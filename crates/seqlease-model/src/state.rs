//! The state of the modelled system: one space of the store, one resource, the workers and
//! the cleaners, and the *ghost* fields the properties read.
//!
//! The store part mirrors the reference store (`seqlease-memory`): a slot keeps its lease
//! (token, owner, expiry, fence), the work recorded under it, its state and a cleaner's claim;
//! the space keeps its watermark, its operation index (operation id → committed seq) and the
//! recovery queue; the resource keeps its epoch, holder and expiry. Everything is a small
//! integer so that states hash and compare quickly.
//!
//! Ghost fields are not part of the protocol. Transitions write them only to remember what
//! happened (the first resolution of a slot, what readers saw below the watermark, a write
//! accepted without authority) so that the guarantees, which talk about histories, can be
//! checked as predicates on single states.

/// A discrete store-clock instant (the model's `Timestamp`).
pub type Time = u8;
/// A slot's sequence number, from 1 (as in the store).
pub type Seq = u8;
/// A resource epoch (0 until first acquired).
pub type Epoch = u8;

/// Why a slot is a gap (`seqlease_core::GapReason` without `Manual`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GapReason {
    /// The holder released it with nothing recorded.
    Released,
    /// Recovery found nothing to recover (or parked what it found).
    Expired,
    /// Its work lives at `superseded_by`.
    Superseded,
}

/// What a resolved slot holds, as a reader sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Content {
    /// A committed operation (`recovered`: it carries recovery metadata).
    Op {
        /// The operation id.
        op: u8,
        /// Committed by recovery rather than by the lease holder.
        recovered: bool,
    },
    /// A gap.
    Gap {
        /// Why.
        reason: GapReason,
        /// Where the work went (superseded gaps).
        superseded_by: Option<Seq>,
    },
}

/// Who a slot was granted to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Owner {
    /// A worker (index).
    Worker(u8),
    /// A slot that recovery appended already committed (new-sequence placement,
    /// re-sequenced parked work).
    Recovery,
}

/// A cleaner's claim on an expired slot (`space.rs::Claim`). The claim's secret token is
/// modelled by the slot's claim attempt number, which is unique per slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Claim {
    /// The claiming cleaner's id (cleaner index × 16 + incarnation).
    pub cleaner: u8,
    /// The attempt this claim is (its token).
    pub attempt: u8,
    /// Until when the claim holds.
    pub expires_at: Time,
}

/// One slot (`space.rs::Slot`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot {
    /// The lease's operation id.
    pub op: u8,
    /// Who it was granted to.
    pub owner: Owner,
    /// The lease's secret (a number unique per grant).
    pub token: u8,
    /// Lease expiry by the store clock.
    pub expires_at: Time,
    /// The fence epoch the lease was granted under.
    pub fence: Option<Epoch>,
    /// Partial work recorded.
    pub partial: bool,
    /// A completed result recorded.
    pub result: bool,
    /// `None` while LEASED; the content once resolved.
    pub resolved: Option<Content>,
    /// A cleaner's claim.
    pub claim: Option<Claim>,
    /// How many times the slot was claimed.
    pub attempts: u8,
    /// Ghost: how many times this seq was handed out by a grant (I1).
    pub grants: u8,
    /// Ghost: work was ever recorded under the lease (I5).
    pub had_work: bool,
    /// Ghost: the first resolution, never overwritten (I2).
    pub first: Option<Content>,
    /// Ghost: the slots below this one that were expired and unresolved when it was last
    /// claimed (bit `s - 1` for seq `s`), for I8.
    pub expired_below_at_claim: u8,
}

impl Slot {
    /// LEASED (not yet resolved).
    pub fn is_leased(&self) -> bool {
        self.resolved.is_none()
    }

    /// LEASED and past its expiry at `now` (belongs to recovery).
    pub fn is_expired(&self, now: Time) -> bool {
        self.is_leased() && self.expires_at <= now
    }

    /// Holds recorded work.
    pub fn has_work(&self) -> bool {
        self.partial || self.result
    }
}

/// Recorded work that recovery parked instead of dropping (`ParkedWork`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Parked {
    /// The slot it was recorded under (now a gap).
    pub slot: Seq,
    /// Its operation id.
    pub op: u8,
    /// Where it was re-sequenced to, once it was.
    pub resequenced_at: Option<Seq>,
}

/// The resource record (`resources.rs::Record`): it outlives every lease on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Resource {
    /// The current epoch (the fencing token).
    pub epoch: Epoch,
    /// The current or last holder (a worker).
    pub holder: Option<u8>,
    /// Expiry of the current or last lease.
    pub expires_at: Time,
}

impl Resource {
    /// The holder of a live lease at `now`.
    pub fn live_holder(&self, now: Time) -> Option<u8> {
        self.holder.filter(|_| self.expires_at > now)
    }
}

/// How a worker's run ended (what its last call answered).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// `CommitStatus::Committed`.
    Committed,
    /// `CommitStatus::AlreadyCommitted`: recovery committed the recorded work in place first.
    AlreadyCommitted,
    /// `CommitStatus::Duplicate`: the operation was already committed elsewhere.
    Duplicate,
    /// The release answered `Gap` or `HandedToRecovery`.
    Released,
    /// A call was refused because the lease expired, was resolved, or had a stale fence.
    Refused(Refusal),
    /// The worker crashed (the lease is abandoned).
    Crashed,
}

/// Why the store refused a worker's call (`LeaseError` variants).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refusal {
    /// `LeaseError::Expired`.
    Expired,
    /// `LeaseError::Resolved`.
    Resolved,
    /// `LeaseError::StaleEpoch`.
    StaleEpoch,
    /// `LeaseError::WrongToken`.
    WrongToken,
    /// `LeaseError::ResourceHeld` (acquire by a fenced worker).
    ResourceHeld,
}

/// A projection worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Worker {
    /// Not started (fenced workers acquire the resource first).
    Idle,
    /// A fenced worker holding the resource at `epoch`, about to grant.
    Fenced {
        /// The epoch it acquired.
        epoch: Epoch,
    },
    /// Holding the lease on `seq`.
    Holding {
        /// The slot.
        seq: Seq,
        /// The lease's token.
        token: u8,
    },
    /// Finished.
    Done(Outcome),
}

/// One claimed slot as the cleaner saw it (`ExpiredSlot`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClaimedSlot {
    /// The slot.
    pub seq: Seq,
    /// The claim's token.
    pub attempt: u8,
    /// Partial work recorded.
    pub partial: bool,
    /// Completed result recorded.
    pub result: bool,
}

/// A cleaner: a cleanup service in some process.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cleaner {
    /// The claimed batch still to resolve, ascending.
    pub batch: Vec<ClaimedSlot>,
    /// Crashes and stalls so far (the model allows a bounded number).
    pub faults: u8,
    /// Restarts after crashes (its incarnation).
    pub restarts: u8,
    /// Stalled while holding its batch: the clock may run past its claims.
    pub stalled: bool,
}

/// Writes the store accepted without the authority the guarantees require. Only a mutated
/// store ever fills these in; the properties require them to stay empty.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Monitor {
    /// I3: a commit accepted while one of its conditions failed: (seq, which condition).
    pub unauthorised_commit: Option<(Seq, &'static str)>,
    /// I9: a write accepted with a fence epoch other than the current one:
    /// (seq, carried epoch, current epoch).
    pub stale_fence_accepted: Option<(Seq, Epoch, Epoch)>,
    /// I9: a change of resource holder that did not advance the epoch: (old, new).
    pub epoch_not_advanced: Option<(Epoch, Epoch)>,
    /// I8: a recovery resolution of `seq` while slot `lower` (expired before `seq` was
    /// claimed) was still unresolved: (seq, lower).
    pub resolved_out_of_order: Option<(Seq, Seq)>,
}

/// The whole modelled system.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct State {
    /// The store clock.
    pub now: Time,
    /// Every slot: `slots[s - 1]` is seq `s` (allocation is the vector's length, I1).
    pub slots: Vec<Slot>,
    /// Grants so far (tokens are numbered by it).
    pub grants: u8,
    /// The space's watermark.
    pub watermark: Seq,
    /// The operation index: `committed[op]` is the seq of op's committed entry (I6).
    pub committed: Vec<Option<Seq>>,
    /// The recovery queue.
    pub parked: Vec<Parked>,
    /// The one resource fenced workers contend for.
    pub resource: Resource,
    /// The workers.
    pub workers: Vec<Worker>,
    /// The cleaners.
    pub cleaners: Vec<Cleaner>,
    /// Ghost: what readers have been shown, `published[s - 1]` for every `s <= W` ever (I7).
    pub published: Vec<Content>,
    /// Ghost: the highest epoch ever seen (I9: epochs never go back).
    pub max_epoch: Epoch,
    /// Ghost: writes accepted without authority (I3, I8, I9).
    pub monitor: Monitor,
}

impl State {
    /// The slot with seq `s`.
    pub fn slot(&self, s: Seq) -> &Slot {
        &self.slots[usize::from(s) - 1]
    }

    /// The slot with seq `s`, mutably.
    pub fn slot_mut(&mut self, s: Seq) -> &mut Slot {
        &mut self.slots[usize::from(s) - 1]
    }

    /// The last allocated seq.
    pub fn last_seq(&self) -> Seq {
        self.slots.len() as Seq
    }
}
