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
//!
//! Recovery writes on behalf of a lease, so a fenced lease's fence still applies (I9): a
//! store resolving a `Recover` for a lease granted under a resource lease first reads the
//! resource's current epoch in the same transaction and asks [`check_recovery_fence`]. A
//! zombie's work whose epoch moved on is never committed; it is parked for an operator
//! ([`ParkedState::Manual`]) and the slot becomes `GAP(expired)`, so nothing is lost (I5).

use std::time::Duration;

use crate::error::LeaseError;
use crate::name::SpaceName;
use crate::time::Timestamp;
use crate::types::{Fence, LeaseRecord, OperationBody, RecoveryType, Token};

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

// ---- the fence of recovered work (I9), shared by every store ----

/// A resolution as a store writes it, once the lease's fence was checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FencedResolution {
    /// What to write.
    pub resolution: Resolution,
    /// The state work parked by a `Gap` resolution enters: [`ParkedState::Parked`] normally,
    /// [`ParkedState::Manual`] when the fence is stale (automatic re-sequencing would commit
    /// the work without its fence).
    pub park_state: ParkedState,
}

/// Check a claimed slot's resolution against its lease's fence (I9).
///
/// `current_epoch` is the fenced resource's epoch (0 when never held) read in the resolving
/// transaction; it is ignored without a fence. With no fence or a current epoch the
/// resolution stands. With a stale epoch nothing of the lease may be committed:
/// - `Recover` becomes `Gap { park: true }` with the detail "recovery refused: stale epoch
///   for R (current C, lease had E); work parked for an operator";
/// - `Gap` keeps its detail, with the stale epoch appended when it parks work;
///
/// and parked work goes to [`ParkedState::Manual`], for an operator to re-sequence or
/// discard. Only a lease's *recorded* work (partial, result) is parked.
pub fn check_recovery_fence(
    resolution: Resolution,
    fence: Option<&Fence>,
    current_epoch: u64,
) -> FencedResolution {
    let Some(fence) = fence.filter(|f| f.epoch != current_epoch) else {
        return FencedResolution {
            resolution,
            park_state: ParkedState::Parked,
        };
    };
    let stale = format!(
        "stale epoch for {} (current {current_epoch}, lease had {})",
        fence.resource, fence.epoch
    );
    let resolution = match resolution {
        Resolution::Recover { .. } => Resolution::Gap {
            detail: Some(format!(
                "recovery refused: {stale}; work parked for an operator"
            )),
            park: true,
        },
        Resolution::Gap { detail, park: true } => Resolution::Gap {
            detail: Some(match detail {
                Some(d) => format!("{d}; {stale}: work parked for an operator"),
                None => format!("{stale}: work parked for an operator"),
            }),
            park: true,
        },
        gap @ Resolution::Gap { park: false, .. } => gap,
    };
    FencedResolution {
        resolution,
        park_state: ParkedState::Manual,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fence(epoch: u64) -> Fence {
        Fence {
            resource: "orders-0".into(),
            epoch,
        }
    }

    fn recover() -> Resolution {
        Resolution::Recover {
            body: OperationBody::default(),
            recovery_type: RecoveryType::Retry,
            placement: Placement::InPlace,
        }
    }

    #[test]
    fn unfenced_and_current_fences_let_recovery_through() {
        for (f, current) in [(None, 0), (None, 7), (Some(fence(2)), 2)] {
            let checked = check_recovery_fence(recover(), f.as_ref(), current);
            assert_eq!(checked.resolution, recover());
            assert_eq!(checked.park_state, ParkedState::Parked);
        }
    }

    #[test]
    fn a_stale_fence_turns_recovery_into_manual_parking() {
        let checked = check_recovery_fence(recover(), Some(&fence(1)), 2);
        let detail = "recovery refused: stale epoch for orders-0 (current 2, lease had 1); \
                      work parked for an operator";
        assert_eq!(
            checked.resolution,
            Resolution::Gap {
                detail: Some(detail.into()),
                park: true
            }
        );
        assert_eq!(checked.park_state, ParkedState::Manual);
    }

    #[test]
    fn a_stale_fence_sends_parked_gaps_to_an_operator() {
        let gap = Resolution::Gap {
            detail: Some("deferred".into()),
            park: true,
        };
        let checked = check_recovery_fence(gap, Some(&fence(1)), 3);
        assert_eq!(checked.park_state, ParkedState::Manual);
        let Resolution::Gap { detail, park } = checked.resolution else {
            panic!("a gap stays a gap");
        };
        assert!(park);
        assert_eq!(
            detail.as_deref(),
            Some(
                "deferred; stale epoch for orders-0 (current 3, lease had 1): \
                 work parked for an operator"
            )
        );
        let plain = Resolution::Gap {
            detail: None,
            park: false,
        };
        let checked = check_recovery_fence(plain.clone(), Some(&fence(1)), 3);
        assert_eq!(checked.resolution, plain);
    }
}
