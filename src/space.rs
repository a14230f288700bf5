//! A space: one ordered log with its own counter, capacity and watermark.
//!
//! Workers call [`Space::grant`] to lease the next slot (or [`Space::grant_many`] for
//! several in one store round trip); readers call [`Space::watermark`],
//! [`Space::wait_for`] and [`Space::reader`].

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use seqlease_core::{
    Command, CommitOutcome, Fence, GrantRequest, InvalidInput, LeaseError, LeaseKey, LeaseRecord,
    OperationBody, Reply, SpaceInfo, SpaceName, validate_id, validate_name,
};
use tokio::time::Instant;
use tracing::Instrument;

use crate::barrier::SpaceSignals;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::group_commit::{GrantedNow, PairNow};
use crate::lease::{Lease, LeaseContext};
use crate::reader::LogReader;
use crate::telemetry::{EngineTelemetry, SpaceTelemetry};

/// What to lease: built with [`Grant::new`] and optional settings.
#[derive(Clone, Debug)]
pub struct Grant {
    operation_id: String,
    projection_type: String,
    ttl: Option<Duration>,
    owner: Option<String>,
    fence: Option<Fence>,
    wait: Option<Duration>,
}

impl Grant {
    /// A slot for operation `operation_id` (the idempotency key) of `projection_type`.
    pub fn new(operation_id: impl Into<String>, projection_type: impl Into<String>) -> Self {
        Grant {
            operation_id: operation_id.into(),
            projection_type: projection_type.into(),
            ttl: None,
            owner: None,
            fence: None,
            wait: None,
        }
    }

    /// Lease for `ttl` instead of the engine's default.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Record `owner` as the worker instead of the engine's owner.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Fence the lease: its commit is refused once `resource` has moved past `epoch`.
    pub fn fence(mut self, resource: impl Into<String>, epoch: u64) -> Self {
        self.fence = Some(Fence {
            resource: resource.into(),
            epoch,
        });
        self
    }

    /// When the space is at capacity, wait up to `timeout` for a slot instead of failing.
    pub fn wait(mut self, timeout: Duration) -> Self {
        self.wait = Some(timeout);
        self
    }
}

/// A handle on one space. Cheap to clone.
#[derive(Debug)]
pub struct Space {
    engine: Engine,
    name: SpaceName,
    signals: Arc<SpaceSignals>,
    telemetry: Arc<SpaceTelemetry>,
    /// What this handle's leases share (see [`LeaseContext`]): the context of the first
    /// projection type it granted, set once (one atomic load to read it), and that of the
    /// last other type.
    first_leases: OnceLock<Arc<LeaseContext>>,
    other_leases: ArcSwapOption<LeaseContext>,
}

impl Clone for Space {
    /// The clone starts with a lease context of its own: handed to another worker, its
    /// leases then share no reference count with this handle's.
    fn clone(&self) -> Self {
        Space::new(
            self.engine.clone(),
            self.name.clone(),
            self.signals.clone(),
            self.telemetry.clone(),
        )
    }
}

impl Space {
    pub(crate) fn new(
        engine: Engine,
        name: SpaceName,
        signals: Arc<SpaceSignals>,
        telemetry: Arc<SpaceTelemetry>,
    ) -> Self {
        Space {
            engine,
            name,
            signals,
            telemetry,
            first_leases: OnceLock::new(),
            other_leases: ArcSwapOption::empty(),
        }
    }

    /// A handle on a lease this space just granted.
    fn lease(&self, record: Box<LeaseRecord>, requested_at: Instant, ttl: Duration) -> Lease {
        let context = self.lease_context(&record.projection_type);
        let lease = Lease::new(context, record, requested_at, ttl);
        self.engine
            .inner
            .telemetry
            .granted(lease.telemetry(), lease.seq(), requested_at);
        lease
    }

    /// The context of this handle's leases of `projection_type`: the first type's, the
    /// last other type's, or a new one that becomes the last other type's.
    fn lease_context(&self, projection_type: &str) -> Arc<LeaseContext> {
        let first = self
            .first_leases
            .get_or_init(|| self.new_lease_context(projection_type));
        if *first.projection_type == *projection_type {
            return first.clone();
        }
        if let Some(last) = &*self.other_leases.load()
            && *last.projection_type == *projection_type
        {
            return last.clone();
        }
        let context = self.new_lease_context(projection_type);
        self.other_leases.store(Some(context.clone()));
        context
    }

    fn new_lease_context(&self, projection_type: &str) -> Arc<LeaseContext> {
        Arc::new(LeaseContext {
            engine: self.engine.clone(),
            telemetry: EngineTelemetry::lease_in(&self.telemetry, projection_type),
            projection_type: projection_type.into(),
        })
    }

    /// The space's name.
    pub fn name(&self) -> &SpaceName {
        &self.name
    }

    /// The engine this space belongs to.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Lease the next slot. At capacity this fails at once with
    /// [`LeaseError::AtCapacity`], or, with [`Grant::wait`], waits (woken when slots resolve).
    pub async fn grant(&self, grant: Grant) -> Result<Lease> {
        let wait = grant.wait;
        let request = self.request(grant)?;
        let Some(timeout) = wait else {
            return match self.attempt(request, false).await {
                Attempt::Done(lease) => lease,
                Attempt::AtCapacity(_, refusal) => Err(refusal.into()),
            };
        };
        let deadline = Instant::now() + timeout;
        // Try once before arming the wake-up: most grants find capacity, and arming costs
        // every grant the wake-up's shared counter.
        match self.attempt(request, true).await {
            Attempt::Done(lease) => lease,
            Attempt::AtCapacity(request, _) => {
                self.wait_for_capacity(request, deadline, timeout).await
            }
        }
    }

    /// Try `request`, refused for capacity, again whenever a slot is freed, until
    /// `deadline` (`timeout` after the first try).
    async fn wait_for_capacity(
        &self,
        mut request: GrantRequest,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Lease> {
        loop {
            // Arm, then try: a slot freed after the arming wakes us, one freed before it is
            // seen by this try.
            let freed = self.signals.freed.armed();
            request = match self.attempt(request, true).await {
                Attempt::Done(lease) => return lease,
                Attempt::AtCapacity(request, _) => request,
            };
            let poll = Instant::now() + self.engine.config().external_poll_interval;
            tokio::select! {
                _ = freed => {}
                _ = tokio::time::sleep_until(poll.min(deadline)) => {}
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    space: self.name.clone(),
                    what: "capacity",
                    waited: timeout,
                });
            }
        }
    }

    /// One try at a grant. A refusal for capacity gives the request back for the next try
    /// when the store hands it back (its synchronous path) or when `retry` asks to keep a
    /// copy; otherwise it is answered as an error.
    async fn attempt(&self, request: GrantRequest, retry: bool) -> Attempt {
        // See `Engine::dispatch`: a store that answers on this thread never yields.
        tokio::task::consume_budget().await;
        let started = Instant::now();
        let ttl = request.ttl;
        let span = tracing::info_span!(target: "seqlease", "seqlease.grant", space = %self.name, seq = tracing::field::Empty);
        let reply = match span.in_scope(|| self.engine.grant_now(request)) {
            GrantedNow::Answered(reply) => reply,
            GrantedNow::AtCapacity(request, refusal) => {
                return Attempt::AtCapacity(request, refusal);
            }
            GrantedNow::Later(request) if retry => {
                // The store takes the request into a future: keep a copy for the next try.
                let sent = Command::Grant(request.clone());
                match self
                    .engine
                    .dispatch_later(sent)
                    .instrument(span.clone())
                    .await
                {
                    Err(Error::Lease(refusal @ LeaseError::AtCapacity { .. })) => {
                        return Attempt::AtCapacity(request, refusal);
                    }
                    reply => reply,
                }
            }
            GrantedNow::Later(request) => {
                let sent = Command::Grant(request);
                self.engine
                    .dispatch_later(sent)
                    .instrument(span.clone())
                    .await
            }
        };
        let lease = self.granted(reply, started, ttl);
        if let Ok(lease) = &lease {
            span.record("seq", lease.seq());
        }
        Attempt::Done(lease)
    }

    /// The handle on a lease the store answered a grant sent at `started` with.
    fn granted(&self, reply: Result<Reply>, started: Instant, ttl: Duration) -> Result<Lease> {
        reply.and_then(|reply| match reply {
            Reply::Granted(record) => Ok(self.lease(record, started, ttl)),
            other => unreachable_reply("grant", other),
        })
    }

    /// Commit `lease`'s operation and lease the next slot of this space in one store call:
    /// a worker that loops grant → work → commit pays one round trip per operation instead
    /// of two, and stores that batch (SQLite, PostgreSQL) write both in one transaction.
    ///
    /// The two answers are independent, as if [`Lease::commit`] and [`Space::grant`] had
    /// been called one after the other: a refused commit (expired, wrong token, a duplicate
    /// operation) does not stop the grant, and the place the commit frees counts for it,
    /// so a space at capacity still grants the next lease. With [`Grant::wait`], a grant
    /// refused for capacity waits as [`Space::grant`] does. `lease` may belong to another
    /// space (then the commit and the grant are applied one after the other).
    ///
    /// The outer error is one that stopped the call before either answer: an invalid grant
    /// or payload (nothing was sent), or a store failure (as with [`Lease::commit`], the
    /// commit may have been applied; a retry answers `AlreadyCommitted`).
    ///
    /// ```
    /// use seqlease::{Engine, Grant, OperationBody};
    ///
    /// # async fn demo() -> Result<(), seqlease::Error> {
    /// let engine = Engine::open("memory").await?;
    /// let space = engine.space("orders").await?;
    /// let mut lease = space.grant(Grant::new("event-1", "order-status")).await?;
    /// for n in 2..=3 {
    ///     let body = OperationBody::new("update", format!("event {}", n - 1));
    ///     let next = Grant::new(format!("event-{n}"), "order-status");
    ///     let (committed, next) = space.commit_and_grant(&mut lease, body, next).await?;
    ///     assert_eq!(committed?.seq, lease.seq());
    ///     lease = next?;
    /// }
    /// lease.commit(OperationBody::new("update", "event 3")).await?;
    /// assert_eq!(space.watermark(), 3);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn commit_and_grant(
        &self,
        lease: &mut Lease,
        body: OperationBody,
        next: Grant,
    ) -> Result<(Result<CommitOutcome>, Result<Lease>)> {
        lease.check_commit(&body)?;
        let wait = next.wait;
        let request = self.request(next)?;
        // See `Engine::dispatch`: a store that answers on this thread never yields.
        tokio::task::consume_budget().await;
        let started = Instant::now();
        let ttl = request.ttl;
        let span = tracing::info_span!(target: "seqlease", "seqlease.commit_and_grant", space = %lease.space(), seq = lease.seq(), next = tracing::field::Empty);
        let key = lease.key();
        let (committed, granted) =
            match span.in_scope(|| self.engine.commit_and_grant_now(key, body, request)) {
                PairNow::Answered(committed, granted) => (committed, granted),
                // Boxed, as the waits below: the store's own I/O dwarfs an allocation, and
                // the future of this call stays small for the synchronous path.
                PairNow::Later(key, body, request) => {
                    Box::pin(
                        self.commit_and_grant_later(key, body, request, wait.is_some())
                            .instrument(span.clone()),
                    )
                    .await?
                }
            };
        let committed = lease.settle_commit(committed, started);
        let attempt = match granted {
            GrantedNow::Answered(reply) => Attempt::Done(self.granted(reply, started, ttl)),
            GrantedNow::AtCapacity(request, refusal) => Attempt::AtCapacity(request, refusal),
            // Not applied with the commit: sent on its own.
            GrantedNow::Later(request) => Box::pin(self.attempt(request, wait.is_some())).await,
        };
        let next = match (attempt, wait) {
            (Attempt::Done(lease), _) => lease,
            (Attempt::AtCapacity(request, _), Some(timeout)) => {
                Box::pin(self.wait_for_capacity(request, started + timeout, timeout)).await
            }
            (Attempt::AtCapacity(_, refusal), None) => Err(refusal.into()),
        };
        if let Ok(next) = &next {
            span.record("next", next.seq());
        }
        Ok((committed, next))
    }

    /// The commit and the grant as one run through the dispatcher (group commit joins it
    /// to a batch). With `retry`, a grant refused for capacity comes back for
    /// [`Space::wait_for_capacity`].
    async fn commit_and_grant_later(
        &self,
        key: LeaseKey,
        body: OperationBody,
        request: GrantRequest,
        retry: bool,
    ) -> Result<(Result<Reply>, GrantedNow)> {
        let kept = retry.then(|| request.clone());
        let run = vec![Command::Commit { key, body }, Command::Grant(request)];
        let mut replies = self.engine.dispatch_many(run).await?.into_iter();
        let (Some(committed), Some(granted), None) =
            (replies.next(), replies.next(), replies.next())
        else {
            return Err(Error::Store(seqlease_core::StoreError::Backend {
                backend: "engine",
                detail: "store answered a run of two commands with another number of replies; this is a bug in the store".into(),
            }));
        };
        let granted = match (granted, kept) {
            (Err(refusal @ LeaseError::AtCapacity { .. }), Some(request)) => {
                GrantedNow::AtCapacity(request, refusal)
            }
            (reply, _) => GrantedNow::Answered(reply.map_err(Error::from)),
        };
        Ok((committed.map_err(Error::from), granted))
    }

    /// Lease several slots in one store transaction. Each grant succeeds or fails on its
    /// own (at capacity, the first ones succeed); [`Grant::wait`] is ignored here.
    pub async fn grant_many(&self, grants: Vec<Grant>) -> Result<Vec<Result<Lease>>> {
        let requests = grants
            .into_iter()
            .map(|g| self.request(g))
            .collect::<Result<Vec<_>>>()?;
        let ttls: Vec<Duration> = requests.iter().map(|r| r.ttl).collect();
        let started = Instant::now();
        let replies = self
            .engine
            .dispatch_many(requests.into_iter().map(Command::Grant).collect())
            .await?;
        Ok(replies
            .into_iter()
            .zip(ttls)
            .map(|(reply, ttl)| match reply {
                Ok(Reply::Granted(record)) => Ok(self.lease(record, started, ttl)),
                Ok(other) => unreachable_reply("grant", other),
                Err(e) => Err(e.into()),
            })
            .collect())
    }

    fn request(&self, grant: Grant) -> Result<GrantRequest> {
        let config = self.engine.config();
        validate_id("operation id", &grant.operation_id)?;
        validate_name("projection type", &grant.projection_type)?;
        let owner = match grant.owner {
            Some(owner) => {
                validate_id("owner", &owner)?;
                owner
            }
            // Validated when the engine was built.
            None => config.owner.clone(),
        };
        let ttl = crate::lease::check_ttl(config, grant.ttl.unwrap_or(config.default_ttl))?;
        // During a cascade new leases live longer, so live workers do not join it.
        let ttl = self.engine.inner.recovery_mode.extend(ttl);
        if let Some(fence) = &grant.fence {
            validate_name("resource", &fence.resource)?;
            if !self.engine.store().checks_fences() {
                // Refuse rather than pretend: this store cannot check the fence at commit,
                // and a caller must never believe it is fenced when it is not.
                return Err(InvalidInput::Setting {
                    setting: "fence",
                    reason: format!(
                        "the {} store does not check fences yet (resource {}, epoch {}); grant without a fence or use a store that does",
                        self.engine.store().backend(), fence.resource, fence.epoch
                    ),
                }
                .into());
            }
        }
        Ok(GrantRequest {
            space: self.name.clone(),
            operation_id: grant.operation_id,
            projection_type: grant.projection_type,
            owner,
            ttl,
            fence: grant.fence,
        })
    }

    /// The watermark this process has seen: every slot `1..=W` is resolved.
    pub fn watermark(&self) -> u64 {
        self.signals.watermark()
    }

    /// Re-read the space from the store (picks up other processes' progress).
    pub async fn info(&self) -> Result<SpaceInfo> {
        let info = self
            .engine
            .store()
            .space_info(&self.name)
            .await?
            .ok_or_else(|| LeaseError::UnknownSpace {
                space: self.name.clone(),
            })?;
        self.signals.raise_watermark(info.watermark);
        Ok(info)
    }

    /// Wait until the watermark reaches `seq` (slot `seq` and all before it are resolved),
    /// at most `timeout`. Returns the watermark.
    pub async fn wait_for(&self, seq: u64, timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        // Woken by in-process progress; between wake-ups, re-read the store now and then
        // (other processes' progress) and give up at the deadline.
        let fallback = || async move {
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    space: self.name.clone(),
                    what: "the watermark",
                    waited: timeout,
                });
            }
            let poll = Instant::now() + self.engine.config().external_poll_interval;
            tokio::time::sleep_until(poll.min(deadline)).await;
            self.info().await.map(drop)
        };
        self.signals.wait_watermark(seq, fallback).await
    }

    /// The lease history of slot `seq`: every transition, in time order.
    pub async fn history(&self, seq: u64) -> Result<Vec<seqlease_core::SlotEvent>> {
        let query = seqlease_core::HistoryQuery {
            space: self.name.clone(),
            seq: Some(seq),
            from_seq: seq,
            limit: 1000,
        };
        Ok(self.engine.store().slot_history(&query).await?)
    }

    /// Commit late work for slot `seq`, authenticated by the token of the lease that was
    /// granted it (for example a result spooled locally during a partition, after the
    /// [`Lease`] handle is gone). The store re-sequences it at a fresh seq; see
    /// [`Lease::commit_late`] and [`crate::late`].
    pub async fn commit_late(
        &self,
        seq: u64,
        token: seqlease_core::Token,
        body: seqlease_core::OperationBody,
    ) -> Result<seqlease_core::LateOutcome> {
        let key = seqlease_core::LeaseKey {
            space: self.name.clone(),
            seq,
            token,
        };
        crate::late::commit_late(&self.engine, key, body).await
    }

    /// Configure consumer `name` of this space (see [`crate::consumer`]); `open()` it.
    pub fn consumer(&self, name: &str) -> crate::consumer::ConsumerBuilder {
        crate::consumer::ConsumerBuilder::new(self.clone(), name)
    }

    /// This space's consumers with their checkpoints and lag, ordered by name.
    pub async fn consumers(&self) -> Result<Vec<seqlease_core::ConsumerState>> {
        Ok(self.engine.store().list_consumers(Some(&self.name)).await?)
    }

    /// Prune entries `1..below` (explicit, operator-requested, audited with `actor`):
    /// refused above the watermark and above the checkpoint of any retaining consumer.
    pub async fn prune(&self, below: u64, actor: &str) -> Result<seqlease_core::RetentionEvent> {
        Ok(self
            .engine
            .store()
            .prune_entries(&self.name, below, actor)
            .await?)
    }

    /// The audited prunes, consumer resets and removals of this space, oldest first.
    pub async fn retention_history(&self) -> Result<Vec<seqlease_core::RetentionEvent>> {
        Ok(self.engine.store().retention_history(&self.name).await?)
    }

    /// A reader of the ordered log from `from` (1 for the beginning), waiting at the barrier.
    pub fn reader(&self, from: u64) -> LogReader {
        LogReader::new(self.clone(), from)
    }
}

/// What [`Space::attempt`] came to.
enum Attempt {
    /// Granted, or refused for good.
    Done(Result<Lease>),
    /// Refused for capacity: the request, to try again, and the refusal.
    AtCapacity(GrantRequest, LeaseError),
}

pub(crate) fn unreachable_reply<T>(command: &'static str, reply: Reply) -> Result<T> {
    // A store that answers a command with another command's reply breaks the contract.
    Err(Error::Store(seqlease_core::StoreError::Backend {
        backend: "engine",
        detail: format!("store answered a {command} with {reply:?}; this is a bug in the store"),
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use crate::{Engine, EngineConfig, Grant, MemoryStore, OperationBody};

    /// A task for the current thread that only notes that it ran.
    fn other_task() -> Arc<AtomicBool> {
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
        ran
    }

    /// On one runtime thread, a task that grants and commits in a loop on the in-memory
    /// store (which answers without ever returning `Pending`), or reads its log back, still
    /// lets the other tasks of that thread run: every grant, commit, page and batch takes
    /// from the task's tokio budget.
    #[tokio::test(flavor = "current_thread")]
    async fn a_task_looping_on_the_memory_store_lets_the_other_tasks_run() {
        const LOG: u32 = 1_000;
        let config = EngineConfig {
            read_page: 1,
            ..EngineConfig::default()
        };
        let engine = Engine::builder()
            .store(Arc::new(MemoryStore::new()))
            .config(config)
            .build()
            .await
            .unwrap();
        let space = engine.space("fair").await.unwrap();
        let other_ran = other_task();
        // The spawned task can only run when this one yields.
        let mut seen_after = None;
        for n in 0..LOG {
            let grant = Grant::new(format!("op-{n}"), "t");
            let mut lease = space.grant(grant).await.unwrap();
            lease.commit(OperationBody::new("k", vec![])).await.unwrap();
            if seen_after.is_none() && other_ran.load(Ordering::SeqCst) {
                seen_after = Some(n);
            }
        }
        let cycles = seen_after.expect("the other task never ran while this one looped");
        assert!(cycles < 200, "the other task waited {cycles} cycles");

        let other_ran = other_task();
        for n in 0..LOG {
            let grants = vec![Grant::new(format!("many-{n}"), "t")];
            for lease in space.grant_many(grants).await.unwrap() {
                lease.unwrap().abandon();
            }
        }
        assert!(
            other_ran.load(Ordering::SeqCst),
            "{LOG} calls of grant_many never yielded"
        );

        let other_ran = other_task();
        let mut reader = space.reader(1);
        for _ in 0..LOG {
            reader.next().await.unwrap();
        }
        assert!(
            other_ran.load(Ordering::SeqCst),
            "a reader of {LOG} pages never yielded"
        );

        let other_ran = other_task();
        let mut consumer = space.consumer("c").batch_size(1).open().await.unwrap();
        for _ in 0..LOG {
            let batch = consumer.next_batch().await.unwrap();
            consumer.commit(&batch).await.unwrap();
        }
        assert_eq!(consumer.checkpoint(), u64::from(LOG));
        assert!(
            other_ran.load(Ordering::SeqCst),
            "a consumer of {LOG} batches never yielded"
        );
    }

    /// A handle keeps its first projection type's lease context for good and its last
    /// other type's while that type repeats: leases of one type share one context, and
    /// each lease's context is its own type's.
    #[tokio::test]
    async fn a_handle_reuses_the_lease_context_of_its_first_and_last_other_type() {
        let engine = Engine::open("memory").await.unwrap();
        let space = engine.space("contexts").await.unwrap();
        let mut contexts = Vec::new();
        for (n, kind) in ["a", "b", "b", "a", "c", "a"].into_iter().enumerate() {
            let mut lease = space
                .grant(Grant::new(format!("op-{n}"), kind))
                .await
                .unwrap();
            assert_eq!(&*lease.context.projection_type, kind);
            contexts.push(lease.context.clone());
            lease.commit(OperationBody::new("k", vec![])).await.unwrap();
        }
        let same = |i: usize, j: usize| Arc::ptr_eq(&contexts[i], &contexts[j]);
        assert!(same(0, 3) && same(0, 5), "the first type's context is kept");
        assert!(same(1, 2), "the last other type's context is reused");
        assert!(!same(1, 4) && !same(0, 4), "a new type gets its own");
    }
}
