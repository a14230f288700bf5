//! The `Store` trait: the one narrow interface every backend implements.
//!
//! The engine owns policy (validation, group commit, waiting, handles); a store owns
//! atomicity. A store applies a batch of [`Command`]s in **one transaction** and answers each
//! command separately. Every store passes the same conformance suite
//! (`seqlease-conformance`), so a new backend is "pass the suite".
//!
//! # The contract every store implements
//!
//! All checks use the store's clock ([`Store::now`]): `now` is read once per batch.
//!
//! **Grant.** Fails with [`LeaseError::UnknownSpace`] if the space was never ensured, with
//! [`LeaseError::AtCapacity`] if the space already has `capacity` LEASED slots (expired but
//! unresolved slots count). Otherwise allocates `seq = last_seq + 1` (contiguous from 1, I1),
//! generates a fresh random token, and records the slot as LEASED with
//! `leased_at = now`, `expires_at = now + ttl`, `renewals = 0`.
//!
//! **Lease checks** (renew, record, commit, release), in this order, each a typed error that
//! writes nothing: the slot exists ([`LeaseError::UnknownSlot`]); the token matches
//! ([`LeaseError::WrongToken`]); the slot is LEASED ([`LeaseError::Resolved`], except the
//! commit retry below); `expires_at > now` ([`LeaseError::Expired`]).
//!
//! **Fences** (stores whose [`Store::checks_fences`] is true) are checked where a fenced lease
//! writes into the log, in the same transaction: at **grant** and at **commit**, the fence
//! epoch must be the resource's current epoch, else [`LeaseError::StaleEpoch`]. Renewals and
//! records are not fenced: they only touch the lease, and its commit is checked anyway.
//!
//! **Renew** sets `expires_at = now + ttl` and increments `renewals`.
//! **RecordPartial / RecordResult** store the bytes / body on the slot, replacing earlier ones.
//!
//! **Commit.** If the slot is already COMMITTED and the token matches, the reply is
//! [`CommitStatus::AlreadyCommitted`] (an idempotent retry, or recovery committed the
//! lease's recorded work in place first) and nothing changes. After the
//! lease checks: if the space already has a committed operation with the lease's
//! `operation_id` at seq `e` (I6), the slot becomes `GAP(superseded, superseded_by = e)` and
//! the reply is `Duplicate { slot }` with `seq = e`. Otherwise the slot becomes COMMITTED
//! holding the operation (id and projection type from the lease, body from the command).
//!
//! **Release.** After the lease checks: if partial work or a result was recorded, the lease
//! is expired at once (`expires_at = now`) and left to recovery ([`ReleaseOutcome::HandedToRecovery`]);
//! otherwise the slot becomes `GAP(released)` with the command's detail.
//!
//! **Watermark.** After the batch, each touched space's watermark is the largest `W` such
//! that every slot `1..=W` is resolved; it is persisted and reported in
//! [`BatchOutcome::progress`] for every space in which a slot left LEASED.
//!
//! A [`StoreError`] means the transaction was rolled back: nothing of the batch was written.
//!
//! **Consumers and retention** (see [`crate::consumer`]). A consumer row holds a checkpoint
//! per `(space, name)`. Saving a checkpoint is a compare-and-swap checked by
//! [`crate::consumer::check_save`] against the stored checkpoint and the watermark, read in
//! the same transaction; a reset is checked by [`crate::consumer::check_reset`]; a prune by
//! [`crate::consumer::check_prune`] against the watermark and every retaining consumer, all
//! in one transaction with the deletion. Reads starting at or below the last pruned seq fail
//! with [`StoreError::Pruned`].

use async_trait::async_trait;

use crate::command::{BatchOutcome, Command, LeaseKey, OneOutcome, SpaceProgress};
use crate::consumer::{ConsumerError, ConsumerState, RetentionEvent};
use crate::error::{LeaseError, StoreError};
use crate::history::{HistoryQuery, SlotEvent};
use crate::late::LateCommit;
use crate::name::SpaceName;
use crate::recovery::{ClaimRequest, ExpiredSlot, ParkedCommand, ParkedQuery, ParkedWork, Resolve};
use crate::resource::{ResourceCommand, ResourceEvent, ResourceLease, ResourceQuery};
use crate::time::Timestamp;
use crate::types::{
    Entry, GrantRequest, LeaseRecord, OperationBody, SlotState, SpaceConfig, SpaceInfo,
};

#[cfg(doc)]
use crate::command::{CommitStatus, ReleaseOutcome, Reply};

/// How the engine should feed a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchingHint {
    /// Coalesce concurrent commands into batches (group commit). Off for the in-memory
    /// store, where a batch saves no I/O.
    pub group_commit: bool,
    /// Most commands in one batch.
    pub max_batch: usize,
    /// Batches the engine may have in flight at once (1 for a single-writer database).
    pub max_in_flight: usize,
}

/// A slot as the store holds it, for inspection (CLI, tests). Never carries the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotView {
    /// The lease as granted (the token is zeroed).
    pub lease: LeaseRecord,
    /// Its state.
    pub state: SlotState,
    /// Recorded partial work.
    pub partial: Option<Vec<u8>>,
    /// Recorded completed result.
    pub result: Option<OperationBody>,
}

/// Receives progress made by *other* processes (see [`Store::listen`]).
pub type ProgressListener = std::sync::Arc<dyn Fn(&[SpaceProgress]) + Send + Sync>;

/// A seqlease backend. See the module docs for the contract.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// "memory", "sqlite" or "postgres": used in errors, logs and metrics.
    fn backend(&self) -> &'static str;

    /// How the engine should batch commands for this store.
    fn batching(&self) -> BatchingHint;

    /// The store's clock.
    async fn now(&self) -> Result<Timestamp, StoreError>;

    /// Create the space if it does not exist; set its capacity to `config.capacity`.
    async fn ensure_space(
        &self,
        space: &SpaceName,
        config: &SpaceConfig,
    ) -> Result<SpaceInfo, StoreError>;

    /// The store's synchronous single-command path, if it has one. A store whose commands
    /// cost no I/O and never wait (in-memory) returns itself here, and the engine applies
    /// each command on the caller's thread instead of awaiting [`Store::execute_one`]'s
    /// boxed future. The default, `None`, is right for every store that does I/O, and for
    /// wrappers (fault injection, delays) that must see every command through
    /// `execute_one`.
    fn inline(&self) -> Option<&dyn InlineStore> {
        None
    }

    /// Write batches so far by the path the store took, for the `seqlease.store.batches`
    /// metric (PostgreSQL: `one_statement`, and `one_statement_refused` when that path
    /// declined a batch and it ran as a general transaction). Empty, the default, for a
    /// store with a single write path.
    fn write_paths(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// A space's counters, `None` if it does not exist.
    async fn space_info(&self, space: &SpaceName) -> Result<Option<SpaceInfo>, StoreError>;

    /// All spaces, ordered by name.
    async fn list_spaces(&self) -> Result<Vec<SpaceInfo>, StoreError>;

    /// Apply `commands` in one transaction, in order; one reply per command.
    async fn execute(&self, commands: Vec<Command>) -> Result<BatchOutcome, StoreError>;

    /// Apply one command: what [`Store::execute`] does with a batch of one, answered
    /// without the batch's vectors. The engine calls it for every command when group
    /// commit is off ([`BatchingHint::group_commit`]); a store where a call costs no I/O
    /// overrides it to save those allocations on every command.
    async fn execute_one(&self, command: Command) -> Result<OneOutcome, StoreError> {
        let mut outcome = self.execute(vec![command]).await?;
        let reply = outcome.replies.pop().ok_or_else(|| StoreError::Backend {
            backend: self.backend(),
            detail: "the store answered a batch of one with no reply; this is a bug in the store"
                .into(),
        })?;
        Ok(OneOutcome {
            reply,
            progress: outcome.progress.pop(),
        })
    }

    /// Resolved entries with `from <= seq <= watermark`, ascending, at most `limit`.
    async fn read(
        &self,
        space: &SpaceName,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError>;

    /// One slot, whatever its state; `None` if never granted.
    async fn slot(&self, space: &SpaceName, seq: u64) -> Result<Option<SlotView>, StoreError>;

    /// Register `listener` for progress that other processes make on this database
    /// (PostgreSQL: LISTEN/NOTIFY). Returns `false` when the store cannot notify across
    /// processes; the engine then relies on its slow fallback re-read. Progress of batches
    /// executed through this store object is *also* reported in [`BatchOutcome`]; listeners
    /// may see it twice, which is harmless because watermarks only move up.
    fn listen(&self, listener: ProgressListener) -> bool {
        let _ = listener;
        false
    }

    /// Declare that `owner` (an engine's worker id) is alive for as long as this store
    /// object lives, so that the store can tell when its process dies and expire its leases
    /// before their TTL (I10; PostgreSQL: a session-level advisory lock). Called by the
    /// engine when it is built. Stores that cannot detect a dead process do nothing.
    async fn register_owner(&self, owner: &str) -> Result<(), StoreError> {
        let _ = owner;
        Ok(())
    }

    /// Expire at once (`expires_at = now`) the live LEASED slots of registered owners whose
    /// process the store can see is dead; returns how many slots were expired. The slots
    /// stay LEASED: recovery resolves them as it does any expired lease. Stores that cannot
    /// detect a dead process return 0.
    async fn expire_dead_owners(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    // ---- recovery (see `crate::recovery`) ----

    /// Expired, unclaimed slots per space (claims that expired count as unclaimed), for
    /// spaces that have any. The cleanup service's backlog signal.
    async fn expired_backlog(&self) -> Result<Vec<(SpaceName, u64)>, StoreError> {
        Err(StoreError::Unsupported {
            backend: self.backend(),
            what: "recovery",
        })
    }

    /// Claim up to `limit` expired slots of the space, lowest seq first, unless another
    /// cleaner holds a live claim in the space (then: none). A slot is claimable when it is
    /// LEASED, `expires_at <= now` and it has no live claim of *another* cleaner: the
    /// requesting cleaner's own live claims (a resolve that failed, say on a dropped
    /// connection) are claimed again, so it never resolves past them (I8). Each claimed slot
    /// gets a fresh claim token, `claim_expires_at = now + ttl`, and its attempt count goes
    /// up by one.
    async fn claim_expired(&self, request: &ClaimRequest) -> Result<Vec<ExpiredSlot>, StoreError> {
        let _ = request;
        Err(StoreError::Unsupported {
            backend: self.backend(),
            what: "recovery",
        })
    }

    /// Resolve claimed slots in one transaction, in order; one reply per item
    /// ([`Reply::Resolved`] or [`LeaseError::ClaimLost`] / [`LeaseError::UnknownSlot`]).
    ///
    /// The claim must be live (`claim_expires_at > now`, token matches, slot LEASED).
    /// `Recover`: if the operation id is already committed at `e` the slot becomes
    /// `GAP(superseded → e)` (`Duplicate`); otherwise, in place, the slot becomes COMMITTED
    /// with [`RecoveryInfo`](crate::RecoveryInfo) `{ original_seq: seq, original_operation_id,
    /// recovered_at: now, recovery_type }`; at a new seq, seq `n = last_seq + 1` is allocated
    /// already COMMITTED (owner: the lease's owner, `leased_at = expires_at = now`) with that
    /// recovery info, and the slot becomes `GAP(superseded → n)`. `Gap`: with `park` and
    /// recorded work, the work is inserted into the recovery queue (state parked, attempts 0);
    /// the slot becomes `GAP(expired)` with the detail (`Duplicate` instead when the
    /// operation id is already committed elsewhere, since then nothing was lost).
    ///
    /// Fenced leases (I9): when the lease carries `fence: Some(Fence { resource, epoch })`,
    /// the store reads the resource's current epoch in the same transaction (so no change of
    /// holder slips between the check and the write) and applies
    /// [`check_recovery_fence`](crate::recovery::check_recovery_fence): with a stale epoch a
    /// `Recover` commits nothing; the slot becomes `GAP(expired)` with the detail "recovery
    /// refused: stale epoch for R (current C, lease had E); work parked for an operator",
    /// the recorded partial work and result are parked in state `manual` (not `parked`:
    /// automatic re-sequencing would commit them without the fence), and the reply is
    /// `Gapped { parked: Some(id) }` (I5). A parking `Gap` of a stale lease parks as
    /// `manual` too.
    async fn resolve(&self, items: Vec<Resolve>) -> Result<BatchOutcome, StoreError> {
        let _ = items;
        Err(StoreError::Unsupported {
            backend: self.backend(),
            what: "recovery",
        })
    }

    /// List recovery-queue items, oldest first.
    async fn parked(&self, query: &ParkedQuery) -> Result<Vec<ParkedWork>, StoreError> {
        let _ = query;
        Err(StoreError::Unsupported {
            backend: self.backend(),
            what: "recovery",
        })
    }

    /// Apply actions to recovery-queue items in one transaction; one reply per action
    /// ([`Reply::Parked`] with the item's new state, or [`LeaseError::Parked`]).
    ///
    /// `Resequence` (item parked or manual): if the operation id is already committed at
    /// `e`, the item becomes resequenced at `e`; otherwise a fresh seq is allocated already
    /// COMMITTED with `RecoveryInfo { original_seq, .. }` and the item points at it.
    /// `Failed` (parked): attempts + 1; at `max_attempts` the item becomes manual.
    /// `Retry` (manual): back to parked with attempts 0. `Discard` (parked or manual):
    /// discarded. The actor is kept with the item's note.
    async fn settle_parked(
        &self,
        commands: Vec<ParkedCommand>,
    ) -> Result<BatchOutcome, StoreError> {
        let _ = commands;
        Err(StoreError::Unsupported {
            backend: self.backend(),
            what: "recovery",
        })
    }

    /// Commit late work (see `crate::late`) in one transaction, one reply per item
    /// ([`Reply::Late`] or a [`LeaseError`]), in order.
    ///
    /// Per item: the slot must exist (`UnknownSlot`) and the token match (`WrongToken`);
    /// then [`crate::late::plan_late`] decides with the slot's state, its lease's expiry and
    /// fence, the fenced resource's current epoch and where the operation id is committed.
    /// `Resequence`: a fresh seq `n = last_seq + 1` is allocated already COMMITTED (owner:
    /// the lease's owner, its fence, `leased_at = expires_at = now`) with
    /// `RecoveryInfo { original_seq: key.seq, original_operation_id, recovered_at: now,
    /// recovery_type: Late }`, and a `Recovered` event by the lease's owner is recorded on
    /// the original slot ("late work re-sequenced at seq n"). The original slot is not
    /// touched.
    async fn commit_late(&self, items: Vec<LateCommit>) -> Result<BatchOutcome, StoreError> {
        let _ = items;
        Err(StoreError::Unsupported {
            backend: self.backend(),
            what: "late commits",
        })
    }

    // ---- lease history (see `crate::history`) ----

    /// The history of a slot (or of the slots from `from_seq`), in time order per slot:
    /// transitions derived from the slot rows merged with the recorded ones.
    async fn slot_history(&self, query: &HistoryQuery) -> Result<Vec<SlotEvent>, StoreError> {
        let _ = query;
        Err(StoreError::Unsupported {
            backend: self.backend(),
            what: "lease history",
        })
    }

    /// Drop recorded history events older than `before`; returns how many.
    async fn prune_slot_history(&self, before: Timestamp) -> Result<u64, StoreError> {
        let _ = before;
        Err(StoreError::Unsupported {
            backend: self.backend(),
            what: "lease history",
        })
    }

    // ---- resource leases (see `crate::resource`) ----

    /// Whether commits check the fence of fenced sequence leases in the same transaction
    /// (I9). The engine refuses fenced grants on stores that do not.
    fn checks_fences(&self) -> bool {
        false
    }

    /// Apply resource-lease commands in one transaction, in order; one reply per command
    /// ([`Reply::Resource`], or [`LeaseError::ResourceHeld`] / [`LeaseError::ResourceNotHeld`]
    /// / [`LeaseError::MaxRenewals`]). All checks use the store clock, read once.
    ///
    /// `Acquire`: if a live lease (`expires_at > now`) is held by another agent →
    /// `ResourceHeld` (audit: conflict); held live by the same agent → renewed as below;
    /// otherwise the agent becomes holder with `epoch = previous epoch + 1` (1 for a resource
    /// never held), `expires_at = now + ttl`, renewals 0 (audit: acquired; an expired
    /// previous holder is audited as expired first). `Renew`: the agent must hold it live at
    /// that epoch (`ResourceNotHeld` otherwise); at `max_renewals` → `MaxRenewals`; else
    /// `expires_at = now + ttl`, renewals + 1. `Release`: the agent must hold it at that
    /// epoch (expired is fine); the lease is released, the epoch kept. `ReleaseAll` releases
    /// every lease of the agent (audited as force-released with the actor when the actor is
    /// not the agent). `ExpireStale` releases every expired lease (audit: expired).
    /// Epochs are never reused or lowered, whatever happens to the lease rows.
    async fn resources(&self, commands: Vec<ResourceCommand>) -> Result<BatchOutcome, StoreError> {
        let _ = commands;
        Err(StoreError::Unsupported {
            backend: self.backend(),
            what: "resource leases",
        })
    }

    /// List resource leases (see [`ResourceQuery`]); for `Agent` and `Active`, only live ones.
    async fn resource_leases(
        &self,
        query: &ResourceQuery,
    ) -> Result<Vec<ResourceLease>, StoreError> {
        let _ = query;
        Err(StoreError::Unsupported {
            backend: self.backend(),
            what: "resource leases",
        })
    }

    /// The current epoch of `resource` (0 if never held).
    async fn resource_epoch(&self, resource: &str) -> Result<u64, StoreError> {
        let _ = resource;
        Err(StoreError::Unsupported {
            backend: self.backend(),
            what: "resource leases",
        })
    }

    /// The audit history of `resource` (all resources when `None`), oldest first, at most
    /// `limit` of the newest events.
    async fn resource_history(
        &self,
        resource: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ResourceEvent>, StoreError> {
        let _ = (resource, limit);
        Err(StoreError::Unsupported {
            backend: self.backend(),
            what: "resource leases",
        })
    }

    // ---- consumers and retention (see `crate::consumer`) ----

    /// Create consumer `name` of `space` (checkpoint 0) if it does not exist, and set its
    /// `retain` flag. Returns its state. [`ConsumerError::UnknownSpace`] if the space does
    /// not exist.
    async fn register_consumer(
        &self,
        space: &SpaceName,
        name: &str,
        retain: bool,
    ) -> Result<ConsumerState, ConsumerError>;

    /// A consumer's state, `None` if it does not exist.
    async fn consumer(
        &self,
        space: &SpaceName,
        name: &str,
    ) -> Result<Option<ConsumerState>, StoreError>;

    /// Move the checkpoint of a consumer from `expected` to `seq` (compare-and-swap): refused
    /// unless the stored checkpoint is `expected`, `seq >= expected` and `seq <= watermark`
    /// ([`crate::consumer::check_save`]).
    async fn save_checkpoint(
        &self,
        space: &SpaceName,
        name: &str,
        expected: u64,
        seq: u64,
    ) -> Result<ConsumerState, ConsumerError>;

    /// Set a consumer's checkpoint to `to` (0 replays everything), whatever it was; refused
    /// above the watermark or below the last pruned seq. Audited as
    /// [`RetentionEventKind::ConsumerReset`](crate::RetentionEventKind) with `actor`.
    async fn reset_consumer(
        &self,
        space: &SpaceName,
        name: &str,
        to: u64,
        actor: &str,
    ) -> Result<ConsumerState, ConsumerError>;

    /// Remove a consumer (it stops holding back retention). Audited with `actor`.
    async fn remove_consumer(
        &self,
        space: &SpaceName,
        name: &str,
        actor: &str,
    ) -> Result<ConsumerState, ConsumerError>;

    /// The consumers of `space` (all spaces when `None`), ordered by space and name, each
    /// with the space's watermark (for the lag).
    async fn list_consumers(
        &self,
        space: Option<&SpaceName>,
    ) -> Result<Vec<ConsumerState>, StoreError>;

    /// Delete entries `1..below` of `space`, at most up to the watermark and to the lowest
    /// checkpoint of the retaining consumers ([`crate::consumer::check_prune`]), with their
    /// recorded lease history, in one transaction, and audit it with `actor`. Pruning below
    /// an earlier prune deletes nothing but is audited all the same. Returns the audit record.
    /// After a prune, operation ids of pruned entries are no longer checked for duplicates
    /// (I6 covers the retained log).
    async fn prune_entries(
        &self,
        space: &SpaceName,
        below: u64,
        actor: &str,
    ) -> Result<RetentionEvent, ConsumerError>;

    /// The audited retention actions of `space` (prunes, resets, removals), oldest first.
    async fn retention_history(&self, space: &SpaceName)
    -> Result<Vec<RetentionEvent>, StoreError>;
}

/// A store's synchronous single-command path (see [`Store::inline`]).
pub trait InlineStore: Send + Sync {
    /// Apply one command now: what [`Store::execute_one`] answers, without a future.
    fn execute_now(&self, command: Command) -> Result<OneOutcome, StoreError>;

    /// Grant now, as `execute_now(Command::Grant(request))` does, except that a grant the
    /// space has no capacity for is handed back unchanged with the refusal. A caller that
    /// waits for capacity tries the same request again, so it need not copy the request
    /// (three strings) before every attempt.
    fn grant_now(&self, request: GrantRequest) -> Result<GrantNow, StoreError>;

    /// Commit `body` under `key`, then grant `request`, now: what `execute_now` of the
    /// commit followed by `grant_now` answer, each on its own (a refused commit does not
    /// stop the grant, and the commit's freed place counts for the grant). A store may
    /// apply both under one lock; this default applies them one after the other. On a
    /// store error the commit may have been applied (a retry answers `AlreadyCommitted`).
    fn commit_and_grant_now(
        &self,
        key: LeaseKey,
        body: OperationBody,
        request: GrantRequest,
    ) -> Result<(OneOutcome, GrantNow), StoreError> {
        commit_then_grant_now(self, key, body, request)
    }
}

/// [`InlineStore::commit_and_grant_now`] as two calls, the commit's and then the grant's:
/// the default, and what a store that holds one lock per space does when the lease and the
/// grant are in different spaces.
pub fn commit_then_grant_now<S: InlineStore + ?Sized>(
    store: &S,
    key: LeaseKey,
    body: OperationBody,
    request: GrantRequest,
) -> Result<(OneOutcome, GrantNow), StoreError> {
    let committed = store.execute_now(Command::Commit { key, body })?;
    Ok((committed, store.grant_now(request)?))
}

/// What [`InlineStore::grant_now`] did.
#[derive(Debug)]
pub enum GrantNow {
    /// Answered as [`InlineStore::execute_now`] would: granted, or refused for any reason
    /// other than capacity.
    Answered(OneOutcome),
    /// The space is at capacity ([`LeaseError::AtCapacity`], in `refusal`); nothing changed.
    AtCapacity {
        /// The request, as it was sent.
        request: GrantRequest,
        /// The refusal, as `execute_now` would have answered it.
        refusal: LeaseError,
    },
}
