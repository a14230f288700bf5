//! The lease handle: the right to fill one slot before a deadline.
//!
//! A [`Lease`] is what [`Space::grant`](crate::Space::grant) returns. While it is live the
//! worker may renew it, record partial work and a completed result (so that recovery can
//! finish the job if the worker dies), and finally commit one operation or release the slot.
//!
//! The handle keeps a **local safe deadline**: the monotonic time at which the grant (or last
//! renewal) was *requested*, plus the TTL, minus a safety margin. Because the store's clock
//! started counting no earlier than the request, the handle never believes it holds a lease
//! the store may already consider expired. The store stays the authority: a commit is always
//! checked there.
//!
//! Dropping a handle that neither committed nor released (a panic, a cancelled task) releases
//! the slot in the background so readers are not held up until the TTL runs out; if work was
//! recorded, the store hands the slot to recovery instead of dropping it.

use std::sync::Arc;
use std::time::Duration;

use seqlease_core::{
    Command, CommitOutcome, Fence, InvalidInput, LateOutcome, LeaseKey, LeaseRecord, OperationBody,
    ReleaseOutcome, Reply, SpaceName, Timestamp, Token,
};
use tokio::time::Instant;
use tracing::Instrument;

use crate::config::EngineConfig;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::group_commit::Now;
use crate::space::unreachable_reply;
use crate::telemetry::LeaseTelemetry;

/// A held sequence lease. See the module docs.
#[derive(Debug)]
pub struct Lease {
    pub(crate) context: Arc<LeaseContext>,
    /// Boxed as the store's reply brought it (see `Reply::Granted`).
    record: Box<LeaseRecord>,
    local_deadline: Instant,
    /// Set once the slot is committed, released, or known to be out of our hands.
    finished: bool,
}

/// What the leases granted through one space handle for one projection type share: the
/// engine and the attribute sets their metrics are recorded with. Each handle keeps its
/// own (see `Space::lease`), so a grant takes one reference that only its handle's leases
/// count, instead of three (engine, space and type telemetry) that every worker of the
/// space bumps: on two cores each of those moved a cache line between them.
#[derive(Debug)]
pub(crate) struct LeaseContext {
    pub(crate) engine: Engine,
    pub(crate) telemetry: LeaseTelemetry,
    pub(crate) projection_type: Box<str>,
}

impl Lease {
    pub(crate) fn new(
        context: Arc<LeaseContext>,
        record: Box<LeaseRecord>,
        requested_at: Instant,
        ttl: Duration,
    ) -> Self {
        let local_deadline = requested_at + ttl - context.engine.config().safety_margin(ttl);
        Lease {
            context,
            record,
            local_deadline,
            finished: false,
        }
    }

    fn engine(&self) -> &Engine {
        &self.context.engine
    }

    /// The attribute sets this lease's metrics are recorded with.
    pub(crate) fn telemetry(&self) -> &LeaseTelemetry {
        &self.context.telemetry
    }

    /// The space.
    pub fn space(&self) -> &SpaceName {
        &self.record.space
    }

    /// The slot this lease fills.
    pub fn seq(&self) -> u64 {
        self.record.seq
    }

    /// The operation id the slot was granted for.
    pub fn operation_id(&self) -> &str {
        &self.record.operation_id
    }

    /// The projection-type label.
    pub fn projection_type(&self) -> &str {
        &self.record.projection_type
    }

    /// The worker recorded as owner.
    pub fn owner(&self) -> &str {
        &self.record.owner
    }

    /// The fence, if granted under a resource lease.
    pub fn fence(&self) -> Option<&Fence> {
        self.record.fence.as_ref()
    }

    /// The lease's secret (to hand the slot to another process that will commit it).
    pub fn token(&self) -> Token {
        self.record.token
    }

    /// When the store will expire the lease (store clock).
    pub fn expires_at(&self) -> Timestamp {
        self.record.expires_at
    }

    /// Renewals so far.
    pub fn renewals(&self) -> u32 {
        self.record.renewals
    }

    /// Time left before the local safe deadline (zero once passed).
    pub fn remaining(&self) -> Duration {
        self.local_deadline
            .saturating_duration_since(Instant::now())
    }

    /// Whether the handle still believes it holds the lease (by its local safe deadline).
    pub fn is_live(&self) -> bool {
        !self.finished && Instant::now() < self.local_deadline
    }

    pub(crate) fn key(&self) -> LeaseKey {
        LeaseKey {
            space: self.record.space.clone(),
            seq: self.record.seq,
            token: self.record.token,
        }
    }

    /// Extend the lease to `ttl` from now (the engine's default TTL when `None`).
    pub async fn renew(&mut self, ttl: Option<Duration>) -> Result<()> {
        let config = self.engine().config();
        let ttl = check_ttl(config, ttl.unwrap_or(config.default_ttl))?;
        let requested_at = Instant::now();
        let reply = self
            .send(Command::Renew {
                key: self.key(),
                ttl,
            })
            .await;
        let telemetry = &self.engine().inner.telemetry;
        telemetry.renewed(self.telemetry(), reply.is_ok());
        let reply = reply?;
        match reply {
            Reply::Renewed {
                expires_at,
                renewals,
            } => {
                self.record.expires_at = expires_at;
                self.record.renewals = renewals;
                self.local_deadline =
                    requested_at + ttl - self.engine().config().safety_margin(ttl);
                Ok(())
            }
            other => unreachable_reply("renew", other),
        }
    }

    /// Adopt a renewal made for this lease by another task (the worker runtime's heartbeat
    /// renews all its leases in one batch by token). `local_deadline` must have been
    /// computed like [`Lease::renew`] does: request start + TTL − safety margin. Older
    /// renewals than the one the handle knows are ignored.
    pub(crate) fn adopt_renewal(
        &mut self,
        expires_at: Timestamp,
        renewals: u32,
        local_deadline: Instant,
    ) {
        if renewals > self.record.renewals {
            self.record.expires_at = expires_at;
            self.record.renewals = renewals;
            self.local_deadline = local_deadline;
        }
    }

    /// Record a checkpoint of partial work (replaces any earlier one). If the worker dies,
    /// the recovery chain hands it to the resolver registered for the projection type.
    pub async fn record_partial(&mut self, data: impl Into<Vec<u8>>) -> Result<()> {
        let data = data.into();
        check_payload(self.engine().config(), "partial work", data.len())?;
        self.send(Command::RecordPartial {
            key: self.key(),
            data,
        })
        .await
        .map(drop)
    }

    /// Record the finished operation before committing it (the operation tracker). If the
    /// commit never arrives, recovery commits this result.
    pub async fn record_result(&mut self, body: OperationBody) -> Result<()> {
        check_payload(
            self.engine().config(),
            "operation payload",
            body.payload.len(),
        )?;
        self.send(Command::RecordResult {
            key: self.key(),
            body,
        })
        .await
        .map(drop)
    }

    /// Commit `body` into the slot. A retry after an ambiguous failure is safe: it answers
    /// `AlreadyCommitted`. If the operation id is already committed elsewhere in the space,
    /// the answer points there and this slot becomes a superseded gap (I6).
    pub async fn commit(&mut self, body: OperationBody) -> Result<CommitOutcome> {
        self.check_commit(&body)?;
        // See `Engine::dispatch`: a store that answers on this thread never yields.
        tokio::task::consume_budget().await;
        let started = Instant::now();
        let span = tracing::info_span!(target: "seqlease", "seqlease.commit", space = %self.record.space, seq = self.record.seq);
        let command = Command::Commit {
            key: self.key(),
            body,
        };
        let reply = match span.in_scope(|| self.engine().dispatch_now(command)) {
            Now::Answered(reply) => reply,
            Now::Later(command) => self.engine().dispatch_later(command).instrument(span).await,
        };
        self.settle_commit(reply, started)
    }

    /// Refuse a body the engine would not send (over the payload limit).
    pub(crate) fn check_commit(&self, body: &OperationBody) -> Result<()> {
        check_payload(
            self.engine().config(),
            "operation payload",
            body.payload.len(),
        )?;
        Ok(())
    }

    /// The store's reply to a commit sent at `started`, noted on the handle and counted.
    pub(crate) fn settle_commit(
        &mut self,
        reply: Result<Reply>,
        started: Instant,
    ) -> Result<CommitOutcome> {
        match self.note_refusal(reply)? {
            Reply::Committed(outcome) => {
                self.finished = true;
                let telemetry = &self.engine().inner.telemetry;
                telemetry.committed(self.telemetry(), &outcome, started);
                Ok(outcome)
            }
            other => unreachable_reply("commit", other),
        }
    }

    /// Give the slot up: it becomes `GAP(released)` (or, if work was recorded, goes to
    /// recovery). `detail` is kept on the gap for readers and operators.
    pub async fn release(mut self, detail: Option<String>) -> Result<ReleaseOutcome> {
        match self
            .send(Command::Release {
                key: self.key(),
                detail,
            })
            .await?
        {
            Reply::Released(outcome) => {
                self.finished = true;
                let telemetry = &self.engine().inner.telemetry;
                telemetry.released(self.telemetry(), outcome);
                Ok(outcome)
            }
            other => unreachable_reply("release", other),
        }
    }

    /// Commit `body` although the lease ran out: the store re-sequences it at a fresh seq
    /// with `RecoveryType::Late` metadata pointing at this slot (see [`crate::late`]).
    /// Use it after [`Lease::commit`] failed with `Expired` or `Resolved`; a lease that is
    /// still live is refused (`LateRefused`: commit it normally), and so is a stale fence.
    /// If the operation is already committed (by recovery, say), the answer says where.
    pub async fn commit_late(mut self, body: OperationBody) -> Result<LateOutcome> {
        self.finished = true;
        crate::late::commit_late(self.engine(), self.key(), body).await
    }

    /// Walk away from the slot without releasing it, as a process that crashed or stalled
    /// would: the lease runs until its TTL and the cleanup service resolves the slot
    /// (recovering recorded work). For fault injection and for handing a slot to recovery
    /// on purpose; an ordinary worker releases or just drops the handle.
    pub fn abandon(mut self) {
        self.finished = true;
    }

    async fn send(&mut self, command: Command) -> Result<Reply> {
        // Even after commit the store is asked: it answers a commit retry with
        // AlreadyCommitted and anything else with a typed refusal.
        let result = self.engine().dispatch(command).await;
        self.note_refusal(result)
    }

    /// Pass `result` on, noting when the store says the slot is no longer ours.
    fn note_refusal(&mut self, result: Result<Reply>) -> Result<Reply> {
        if let Err(Error::Lease(e)) = &result {
            use seqlease_core::LeaseError::*;
            // The store says the slot is no longer ours: nothing left to release on drop.
            if matches!(
                e,
                WrongToken { .. }
                    | Expired { .. }
                    | Resolved { .. }
                    | UnknownSlot { .. }
                    | StaleEpoch { .. }
            ) {
                self.finished = true;
            }
        }
        result
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(space = %self.record.space, seq = self.record.seq, "lease dropped outside a runtime; the slot resolves when its TTL expires");
            return;
        };
        let context = self.context.clone();
        let key = self.key();
        tracing::debug!(space = %key.space, seq = key.seq, "lease dropped without commit; releasing its slot");
        runtime.spawn(async move {
            let (space, seq) = (key.space.clone(), key.seq);
            let detail = Some("lease handle dropped without commit (panic or cancellation)".to_string());
            let engine = &context.engine;
            match engine.dispatch(Command::Release { key, detail }).await {
                Ok(Reply::Released(outcome)) => engine.inner.telemetry.released(&context.telemetry, outcome),
                Ok(_) => {}
                Err(e) => tracing::debug!(%space, seq, error = %e, "release of a dropped lease failed; the slot resolves when its TTL expires"),
            }
        });
    }
}

/// Check a TTL against the engine's bounds.
pub(crate) fn check_ttl(config: &EngineConfig, ttl: Duration) -> Result<Duration, InvalidInput> {
    if ttl < config.min_ttl || ttl > config.max_ttl {
        return Err(InvalidInput::Ttl {
            ttl,
            min: config.min_ttl,
            max: config.max_ttl,
        });
    }
    Ok(ttl)
}

pub(crate) fn check_payload(
    config: &EngineConfig,
    what: &'static str,
    size: usize,
) -> Result<(), InvalidInput> {
    if size > config.max_payload_bytes {
        return Err(InvalidInput::PayloadTooLarge {
            what,
            size,
            limit: config.max_payload_bytes,
        });
    }
    Ok(())
}
