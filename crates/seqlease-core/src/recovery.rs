//! Recovery as data: what a cleaner sees of an expired slot, and how it resolves it.
//!
//! A lease whose `expires_at` has passed by the store's clock belongs to recovery. The
//! cleanup service claims such slots ([`ClaimRequest`] → [`ExpiredSlot`]s, ascending by seq),
//! runs each through the recovery chain, and resolves them in one store transaction
//! ([`Resolve`] → [`ResolveOutcome`]). A claim is itself a short lease: a cleaner that dies
//! between claim and resolve leaves it to expire, and another cleaner takes the slot over.
//!
//! Claims are exclusive per space: while one cleaner holds a live claim in a space, no other
//! cleaner can claim there. Together with resolving a claimed batch in seq order this makes
//! recovery ordered within a space (I8), however many cleaners race.

use std::time::Duration;

use crate::error::LeaseError;
use crate::name::SpaceName;
use crate::time::Timestamp;
use crate::types::{LeaseRecord, OperationBody, RecoveryType, Token};

/// Ask for up to `limit` expired slots of `space`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimRequest {
    /// The space to clean.
    pub space: SpaceName,
    /// Who is cleaning (recorded on the claim; shown by operators' tools).
    pub cleaner: String,
    /// How long the claim lasts; past it, another cleaner may take the slots over.
    pub ttl: Duration,
    /// Most slots to claim.
    pub limit: usize,
}

/// Proof that a cleaner holds the claim on a slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimKey {
    /// The space.
    pub space: SpaceName,
    /// The slot.
    pub seq: u64,
    /// The claim's own secret (not the lease's token).
    pub token: Token,
}

/// An expired slot as claimed by a cleaner, with everything recorded under its lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpiredSlot {
    /// The lease as granted (token zeroed).
    pub lease: LeaseRecord,
    /// The claim to resolve it with.
    pub claim: ClaimKey,
    /// Until when the claim holds (store clock).
    pub claim_expires_at: Timestamp,
    /// Recorded partial work.
    pub partial: Option<Vec<u8>>,
    /// Recorded completed result.
    pub result: Option<OperationBody>,
    /// How many times the slot has been claimed, this claim included.
    pub attempts: u32,
}

/// Where recovered work goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Placement {
    /// Into the expired slot itself: order is preserved, and no reader can have passed an
    /// unresolved slot, so this is always safe.
    #[default]
    InPlace,
    /// Into a fresh seq; the expired slot becomes `GAP(superseded → new seq)`.
    NewSeq,
}

/// What to do with one claimed slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Commit recovered work.
    Recover {
        /// The operation.
        body: OperationBody,
        /// Which step recovered it.
        recovery_type: RecoveryType,
        /// Where it goes.
        placement: Placement,
    },
    /// Write `GAP(expired)`. With `park`, recorded partial work or result is moved to the
    /// recovery queue first, so that skipping recovery now never drops it (I5).
    Gap {
        /// Why (shown to readers and operators).
        detail: Option<String>,
        /// Park recorded work for later re-sequencing.
        park: bool,
    },
}

/// Resolve one claimed slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolve {
    /// The claim.
    pub claim: ClaimKey,
    /// What to do.
    pub resolution: Resolution,
}

/// How a slot was resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResolveOutcome {
    /// The recovered operation was committed at `seq` (the slot itself, or a fresh seq).
    Recovered {
        /// Where the operation lives.
        seq: u64,
    },
    /// The operation id was already committed at `existing` (I6): the slot became
    /// `GAP(superseded → existing)` and nothing was duplicated.
    Duplicate {
        /// Where the operation lives.
        existing: u64,
    },
    /// The slot became `GAP(expired)`; `parked` is the recovery-queue id of its work.
    Gapped {
        /// Queue id when recorded work was parked.
        parked: Option<u64>,
    },
}

/// State of an item in the recovery queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParkedState {
    /// Waiting to be re-sequenced when load allows.
    Parked,
    /// Needs an operator: automatic recovery gave up on it.
    Manual,
    /// Re-sequenced into the log.
    Resequenced,
    /// Discarded by an operator (audited).
    Discarded,
}

impl ParkedState {
    /// The stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            ParkedState::Parked => "parked",
            ParkedState::Manual => "manual",
            ParkedState::Resequenced => "resequenced",
            ParkedState::Discarded => "discarded",
        }
    }
}

/// Recorded work that recovery set aside instead of dropping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParkedWork {
    /// Queue id (unique per store).
    pub id: u64,
    /// The space.
    pub space: SpaceName,
    /// The slot the work was leased for (now a gap).
    pub original_seq: u64,
    /// The operation id of that lease.
    pub operation_id: String,
    /// Its projection type.
    pub projection_type: String,
    /// Recorded partial work.
    pub partial: Option<Vec<u8>>,
    /// Recorded completed result.
    pub result: Option<OperationBody>,
    /// Automatic attempts so far.
    pub attempts: u32,
    /// Where it stands.
    pub state: ParkedState,
    /// Why it was parked or what the last attempt said.
    pub note: Option<String>,
    /// When it was parked (store clock).
    pub parked_at: Timestamp,
    /// Where it was re-sequenced to, once it was.
    pub resequenced_at_seq: Option<u64>,
}

/// What to do with a parked item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParkedAction {
    /// Commit its work at a fresh seq with recovery metadata (or find it already committed).
    Resequence {
        /// The operation.
        body: OperationBody,
        /// Which step recovered it.
        recovery_type: RecoveryType,
    },
    /// An attempt failed: count it, and after `max_attempts` move the item to manual.
    Failed {
        /// What went wrong.
        error: String,
        /// Attempts allowed before manual handling.
        max_attempts: u32,
    },
    /// An operator sends a manual item back to automatic handling.
    Retry,
    /// An operator drops the work for good.
    Discard,
}

/// One action on one parked item, by whom (audited).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParkedCommand {
    /// Queue id.
    pub id: u64,
    /// What to do.
    pub action: ParkedAction,
    /// Who does it ("cleanup:<id>" for the service, the operator's name otherwise).
    pub actor: String,
}

/// Which parked items to list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParkedQuery {
    /// Only this space.
    pub space: Option<SpaceName>,
    /// Only these states (all when empty).
    pub states: Vec<ParkedState>,
    /// Most items (oldest first).
    pub limit: usize,
}

// ---- the recovery-queue state machine, shared by every store ----

/// Check that `action` is allowed on an item in its current state.
pub fn check_parked(item: &ParkedWork, command: &ParkedCommand) -> Result<(), LeaseError> {
    let allowed = match command.action {
        ParkedAction::Resequence { .. } | ParkedAction::Discard => {
            matches!(item.state, ParkedState::Parked | ParkedState::Manual)
        }
        ParkedAction::Failed { .. } => item.state == ParkedState::Parked,
        ParkedAction::Retry => item.state == ParkedState::Manual,
    };
    if allowed {
        return Ok(());
    }
    Err(LeaseError::Parked {
        id: item.id,
        action: action_name(&command.action),
        reason: format!("it is {}", item.state.as_str()),
    })
}

/// How an action reads in messages ("retried", "discarded", …).
pub fn action_name(action: &ParkedAction) -> &'static str {
    match action {
        ParkedAction::Resequence { .. } => "re-sequenced",
        ParkedAction::Failed { .. } => "marked failed",
        ParkedAction::Retry => "retried",
        ParkedAction::Discard => "discarded",
    }
}

/// Apply the state changes of an action that needs no space (the caller re-sequences).
pub fn apply_parked(item: &mut ParkedWork, command: &ParkedCommand) {
    let by = &command.actor;
    match &command.action {
        ParkedAction::Resequence { .. } => {}
        ParkedAction::Failed {
            error,
            max_attempts,
        } => {
            item.attempts += 1;
            if item.attempts >= *max_attempts {
                item.state = ParkedState::Manual;
            }
            item.note = Some(format!("{error} (attempt {}, by {by})", item.attempts));
        }
        ParkedAction::Retry => {
            item.state = ParkedState::Parked;
            item.attempts = 0;
            item.note = Some(format!("sent back to automatic recovery by {by}"));
        }
        ParkedAction::Discard => {
            item.state = ParkedState::Discarded;
            item.note = Some(format!("discarded by {by}"));
        }
    }
}
