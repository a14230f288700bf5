//! The worker runtime: feeds events through leases, handlers and commits.
//!
//! One [`WorkerRuntime`] is one worker. [`WorkerRuntime::run`] starts `concurrency` lanes
//! (tasks) that share one ordered feed: a free lane takes the next leased event, and when
//! none is left leases the next events from the stream in input order — for itself and the
//! lanes waiting behind it, in one store call — then runs the handler. A handler's operation is committed into its slot; an error goes through the
//! [`ErrorPolicy`]; a panic releases the slot with the panic message. The worker's one
//! heartbeat renews every lease in flight, so handlers may take longer than the TTL.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::stream::Fuse;
use futures::{FutureExt, Stream, StreamExt};
use seqlease_core::{InvalidInput, LeaseError, OperationBody, ReleaseOutcome, validate_id};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::heartbeat::{self, Beat, Heartbeat, Tracking};
use super::projection::{HandlerError, Projection, WorkContext};
use super::{Outcome, OutcomeKind, RunReport, WorkerStats};
use crate::error::{Error, Result};
use crate::lease::{Lease, check_ttl};
use crate::space::{Grant, Space};

/// How long tasks cancelled at the shutdown deadline get to release their slots before
/// they are aborted (their handles then release in the background, or the TTL expires).
const RELEASE_GRACE: Duration = Duration::from_secs(5);

/// What the runtime does when a handler returns an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorPolicy {
    /// Release the slot at once: it becomes a gap carrying the error (or, if the handler
    /// recorded work, goes to recovery).
    Release,
    /// Run the handler again (same event, same slot, lease kept alive by the heartbeat)
    /// up to `max_attempts` attempts in all, waiting `backoff` in between; then release
    /// as [`ErrorPolicy::Release`] does. Permanent errors skip the retries.
    Retry {
        /// Attempts in all, the first included (1 means no retry).
        max_attempts: u32,
        /// Wait between attempts.
        backoff: Backoff,
    },
}

impl ErrorPolicy {
    fn is_last(&self, attempt: u32) -> bool {
        match self {
            ErrorPolicy::Release => true,
            ErrorPolicy::Retry { max_attempts, .. } => attempt >= *max_attempts,
        }
    }
}

impl Default for ErrorPolicy {
    /// Three attempts with the default backoff.
    fn default() -> Self {
        ErrorPolicy::Retry {
            max_attempts: 3,
            backoff: Backoff::default(),
        }
    }
}

/// Exponential backoff: `initial`, then × `multiplier` per retry, at most `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Wait before the first retry.
    pub initial: Duration,
    /// Longest wait.
    pub max: Duration,
    /// Growth per retry (1: a fixed wait).
    pub multiplier: u32,
}

impl Backoff {
    /// The same wait before every retry.
    pub fn fixed(wait: Duration) -> Self {
        Backoff {
            initial: wait,
            max: wait,
            multiplier: 1,
        }
    }

    /// The wait before retry number `retry` (1 for the first).
    pub fn delay(&self, retry: u32) -> Duration {
        let factor = self
            .multiplier
            .max(1)
            .saturating_pow(retry.saturating_sub(1));
        self.initial.saturating_mul(factor).min(self.max)
    }
}

impl Default for Backoff {
    /// 100 ms, doubling, at most 10 s.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            multiplier: 2,
        }
    }
}

type OutcomeHook = Arc<dyn Fn(&Outcome) + Send + Sync>;

/// Configures a [`WorkerRuntime`]; from [`WorkerRuntime::builder`].
pub struct WorkerRuntimeBuilder<P: Projection> {
    space: Space,
    projection: P,
    concurrency: usize,
    ttl: Option<Duration>,
    heartbeat_interval: Option<Duration>,
    policy: ErrorPolicy,
    shutdown_deadline: Duration,
    capacity_wait: Duration,
    worker_id: Option<String>,
    grant_batch: usize,
    on_outcome: Option<OutcomeHook>,
}

impl<P: Projection> WorkerRuntimeBuilder<P> {
    /// Handlers running at once per run (default 64): the run's lanes. Slots are leased
    /// only for events a lane is free to take.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// Lease TTL (default: the engine's). The heartbeat renews leases to this TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// How often the heartbeat renews the leases in flight (default: a third of the TTL).
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = Some(interval);
        self
    }

    /// What to do when a handler fails (default: [`ErrorPolicy::default`]).
    pub fn error_policy(mut self, policy: ErrorPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// How long [`WorkerRuntime::shutdown`] lets in-flight handlers finish (default 30 s).
    pub fn shutdown_deadline(mut self, deadline: Duration) -> Self {
        self.shutdown_deadline = deadline;
        self
    }

    /// How long leasing waits for a free slot when the space is at capacity (default
    /// 30 s); an event still without a slot then is reported as not leased.
    pub fn capacity_wait(mut self, wait: Duration) -> Self {
        self.capacity_wait = wait;
        self
    }

    /// The worker id recorded as owner of this worker's leases (default: the engine's).
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.worker_id = Some(id.into());
        self
    }

    /// Most slots leased in one store call (default 64).
    pub fn grant_batch(mut self, n: usize) -> Self {
        self.grant_batch = n;
        self
    }

    /// Call `hook` with the outcome of every event (from the handler's task; keep it quick).
    pub fn on_outcome(mut self, hook: impl Fn(&Outcome) + Send + Sync + 'static) -> Self {
        self.on_outcome = Some(Arc::new(hook));
        self
    }

    /// Check the settings and start the worker's heartbeat. Must run inside a tokio runtime.
    pub fn build(self) -> Result<WorkerRuntime<P>> {
        let engine = self.space.engine().clone();
        let config = engine.config();
        let setting = |setting: &'static str, reason: String| -> Error {
            InvalidInput::Setting { setting, reason }.into()
        };
        seqlease_core::validate_name("projection type", self.projection.projection_type())?;
        let worker_id = self.worker_id.unwrap_or_else(|| config.owner.clone());
        validate_id("worker id", &worker_id)?;
        if self.concurrency == 0 {
            return Err(setting(
                "concurrency",
                format!("worker {worker_id}: need at least 1 handler at a time"),
            ));
        }
        if self.grant_batch == 0 {
            return Err(setting(
                "grant_batch",
                format!("worker {worker_id}: need at least 1 grant per store call"),
            ));
        }
        if let ErrorPolicy::Retry {
            max_attempts: 0, ..
        } = self.policy
        {
            return Err(setting(
                "error_policy",
                format!(
                    "worker {worker_id}: max_attempts counts the first attempt, so it must be at least 1"
                ),
            ));
        }
        let ttl = check_ttl(config, self.ttl.unwrap_or(config.default_ttl))?;
        let interval = self.heartbeat_interval.unwrap_or(ttl / 3);
        let margin = config.safety_margin(ttl);
        if interval.is_zero() || interval >= ttl - margin {
            return Err(setting(
                "heartbeat_interval",
                format!(
                    "worker {worker_id}: a heartbeat every {interval:?} cannot keep leases of {ttl:?} alive (safety margin {margin:?}); use less than a third of the TTL"
                ),
            ));
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(setting(
                "runtime",
                format!(
                    "worker {worker_id}: build the worker inside a tokio runtime (its heartbeat is a task)"
                ),
            ));
        }
        let beat = Arc::new(Heartbeat::new(engine, self.space.name().clone(), ttl));
        let heartbeat_task = heartbeat::start(Arc::downgrade(&beat), interval);
        let (shutdown, _) = watch::channel(None);
        Ok(WorkerRuntime {
            inner: Arc::new(Inner {
                projection: self.projection,
                space: self.space,
                worker_id,
                ttl,
                policy: self.policy,
                shutdown_deadline: self.shutdown_deadline,
                capacity_wait: self.capacity_wait,
                grant_batch: self.grant_batch,
                on_outcome: self.on_outcome,
                concurrency: self.concurrency,
                heartbeat: beat,
                _heartbeat_task: AbortOnDrop(heartbeat_task),
                shutdown,
            }),
        })
    }
}

/// A worker: runs one projection's handlers over a stream of events. Cheap to clone (all
/// clones are the same worker, with one heartbeat and one concurrency limit).
pub struct WorkerRuntime<P: Projection> {
    inner: Arc<Inner<P>>,
}

impl<P: Projection> Clone for WorkerRuntime<P> {
    fn clone(&self) -> Self {
        WorkerRuntime {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<P: Projection> {
    projection: P,
    space: Space,
    worker_id: String,
    ttl: Duration,
    policy: ErrorPolicy,
    shutdown_deadline: Duration,
    capacity_wait: Duration,
    grant_batch: usize,
    on_outcome: Option<OutcomeHook>,
    /// Lanes (handlers at once) per run.
    concurrency: usize,
    heartbeat: Arc<Heartbeat>,
    /// Stops the heartbeat task when the last clone of the worker goes.
    _heartbeat_task: AbortOnDrop,
    /// `Some(deadline)` once shutdown was requested.
    shutdown: watch::Sender<Option<Instant>>,
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One call of `run`: what its lanes share.
struct RunState<P: Projection, S> {
    feed: tokio::sync::Mutex<Feed<P::Event, S>>,
    /// Lanes waiting for the feed: the lane that leases takes events for them too.
    waiting: AtomicUsize,
    /// Set at the shutdown deadline: handlers still running stop and release their slots.
    cancel: watch::Sender<bool>,
}

/// The input and the events leased from it that no lane has taken yet, in input order.
struct Feed<E, S> {
    events: Pin<Box<Fuse<S>>>,
    ready: VecDeque<Leased<E>>,
    ended: bool,
}

/// An event with its slot, tracked by the heartbeat.
struct Leased<E> {
    lease: Lease,
    event: E,
    tracking: Tracking,
}

/// How a handler's attempts ended.
enum Handled {
    Done(OperationBody),
    Failed(HandlerError),
    Panicked(String),
}

impl<P: Projection> WorkerRuntime<P> {
    /// Configure a worker for `projection` on `space`.
    pub fn builder(space: &Space, projection: P) -> WorkerRuntimeBuilder<P> {
        WorkerRuntimeBuilder {
            space: space.clone(),
            projection,
            concurrency: 64,
            ttl: None,
            heartbeat_interval: None,
            policy: ErrorPolicy::default(),
            shutdown_deadline: Duration::from_secs(30),
            capacity_wait: Duration::from_secs(30),
            worker_id: None,
            grant_batch: 64,
            on_outcome: None,
        }
    }

    /// The projection.
    pub fn projection(&self) -> &P {
        &self.inner.projection
    }

    /// The worker id on this worker's leases.
    pub fn worker_id(&self) -> &str {
        &self.inner.worker_id
    }

    /// The heartbeat's counters and the leases in flight.
    pub fn stats(&self) -> WorkerStats {
        let c = self.inner.heartbeat.counters();
        WorkerStats {
            heartbeats: c.heartbeats,
            renewed: c.renewed,
            lost: c.lost,
            failed_heartbeats: c.failed,
            in_flight: self.inner.heartbeat.registry.len(),
        }
    }

    /// The number of heartbeats that reached the store so far; changes after each one (for
    /// health checks, and for tests that wait for the next renewal).
    pub fn heartbeats(&self) -> watch::Receiver<u64> {
        self.inner.heartbeat.subscribe()
    }

    /// Renew every lease in flight now, in one store batch (the heartbeat does this on its
    /// own each interval; this is for tests and for callers that know a pause is coming).
    pub async fn heartbeat_now(&self) -> Result<Beat> {
        Ok(self.inner.heartbeat.beat().await?)
    }

    /// Ask every `run` of this worker to stop within the configured shutdown deadline:
    /// no new events are taken, in-flight handlers get until the deadline to finish (and
    /// their operations are committed), and the slots of those still running then are
    /// released. `run` returns its report once that is done. The worker takes no events
    /// after this.
    pub fn shutdown(&self) {
        self.shutdown_within(self.inner.shutdown_deadline);
    }

    /// [`shutdown`](Self::shutdown) with this deadline instead of the configured one.
    pub fn shutdown_within(&self, deadline: Duration) {
        let at = Instant::now() + deadline;
        self.inner.shutdown.send_if_modified(|d| match d {
            Some(earlier) if *earlier <= at => false,
            _ => {
                *d = Some(at);
                true
            }
        });
    }

    /// Process `events` until the stream ends (then wait for every handler and return) or
    /// [`shutdown`](Self::shutdown) is called. Slots are leased in the stream's order.
    ///
    /// The run has `concurrency` lanes (tasks). A free lane takes the next leased event;
    /// when none is left it leases the next ones from the stream — as many as lanes are
    /// waiting, in one store call — so slots are granted in input order and only for
    /// events a lane can take at once.
    ///
    /// Dropping the returned future cancels the run: its lanes are aborted and the lease
    /// handles they held (and those of events leased but not yet started) release their
    /// slots, or hand recorded work to recovery; nothing stays leased past its TTL.
    pub async fn run<S>(&self, events: S) -> RunReport
    where
        S: Stream<Item = P::Event> + Send + 'static,
    {
        let inner = &self.inner;
        let run = Arc::new(RunState::<P, S> {
            feed: tokio::sync::Mutex::new(Feed {
                events: Box::pin(events.fuse()),
                ready: VecDeque::new(),
                ended: false,
            }),
            waiting: AtomicUsize::new(0),
            cancel: watch::channel(false).0,
        });
        let mut lanes = JoinSet::new();
        for _ in 0..inner.concurrency {
            lanes.spawn(self.clone().lane(run.clone()));
        }
        let mut report = RunReport::default();
        let mut shutdown = inner.shutdown.subscribe();
        let stopped = loop {
            tokio::select! {
                biased;
                _ = shutdown.wait_for(Option::is_some) => break true,
                joined = lanes.join_next() => match joined {
                    Some(joined) => merge(&mut report, joined),
                    None => break false,
                },
            }
        };
        if stopped {
            let deadline = (*shutdown.borrow()).unwrap_or_else(Instant::now);
            if tokio::time::timeout_at(deadline, join_all(&mut lanes, &mut report))
                .await
                .is_err()
            {
                tracing::info!(worker = %inner.worker_id, "shutdown deadline passed; releasing the slots of handlers still running");
                run.cancel.send_replace(true);
                if tokio::time::timeout(RELEASE_GRACE, join_all(&mut lanes, &mut report))
                    .await
                    .is_err()
                {
                    // Their lease handles release in the background as they are dropped.
                    lanes.abort_all();
                    join_all(&mut lanes, &mut report).await;
                }
            }
            // Events leased when shutdown came but taken by no lane.
            let leftover: Vec<_> = run.feed.lock().await.ready.drain(..).collect();
            for item in leftover {
                item.tracking.finish();
                let detail = format!(
                    "worker {} shut down before the handler of {} started",
                    inner.worker_id,
                    inner.projection.projection_type()
                );
                let seq = item.lease.seq();
                let id = self.outcome_id(&item.lease);
                let kind = OutcomeKind::Cancelled {
                    release: release(item.lease, detail).await,
                };
                self.report(&mut report, id, Some(seq), 0, kind);
            }
        }
        report.shutdown = stopped;
        report
    }

    /// One lane: take the next leased event, run it, until the input ends or shutdown.
    async fn lane<S>(self, run: Arc<RunState<P, S>>) -> RunReport
    where
        S: Stream<Item = P::Event> + Send + 'static,
    {
        let mut report = RunReport::default();
        let mut shutdown = self.inner.shutdown.subscribe();
        let mut cancel = run.cancel.subscribe();
        while shutdown.borrow().is_none() {
            let Some(item) = self.next(&run, &mut shutdown, &mut report).await else {
                break;
            };
            self.work(item, &mut cancel, &mut report).await;
        }
        report
    }

    /// The next leased event; `None` once the input ended or shutdown was asked.
    async fn next<S>(
        &self,
        run: &RunState<P, S>,
        shutdown: &mut watch::Receiver<Option<Instant>>,
        report: &mut RunReport,
    ) -> Option<Leased<P::Event>>
    where
        S: Stream<Item = P::Event> + Send + 'static,
    {
        loop {
            run.waiting.fetch_add(1, Ordering::Relaxed);
            let feed = tokio::select! {
                biased;
                _ = shutdown.wait_for(Option::is_some) => None,
                feed = run.feed.lock() => Some(feed),
            };
            run.waiting.fetch_sub(1, Ordering::Relaxed);
            let mut feed = feed?;
            if let Some(item) = feed.ready.pop_front() {
                return Some(item);
            }
            if feed.ended {
                return None;
            }
            let first = tokio::select! {
                biased;
                _ = shutdown.wait_for(Option::is_some) => return None,
                event = feed.events.next() => event,
            };
            let Some(first) = first else {
                feed.ended = true;
                return None;
            };
            // Lease for the lanes waiting behind this one too, from what is ready now.
            let want = (run.waiting.load(Ordering::Relaxed) + 1).min(self.inner.grant_batch);
            let mut batch = Vec::with_capacity(want);
            batch.push(first);
            while batch.len() < want {
                match feed.events.next().now_or_never() {
                    Some(Some(event)) => batch.push(event),
                    Some(None) => {
                        feed.ended = true;
                        break;
                    }
                    None => break,
                }
            }
            let leased = self.lease(batch, report).await;
            feed.ready.extend(leased);
            if let Some(item) = feed.ready.pop_front() {
                return Some(item);
            }
            // Every event of the batch was refused a slot (reported): take the next ones.
        }
    }

    /// Lease slots for `batch` in its order.
    async fn lease(&self, batch: Vec<P::Event>, report: &mut RunReport) -> Vec<Leased<P::Event>> {
        let inner = &self.inner;
        report.received += batch.len() as u64;
        let mut pending = Vec::with_capacity(batch.len());
        for event in batch {
            let operation_id = inner.projection.operation_id(&event);
            if let Err(e) = validate_id("operation id", &operation_id) {
                self.report(
                    report,
                    Some(operation_id),
                    None,
                    0,
                    OutcomeKind::NotLeased { error: e.into() },
                );
                continue;
            }
            pending.push((event, operation_id));
        }
        if pending.is_empty() {
            return Vec::new();
        }
        let grants = pending
            .iter()
            .map(|(_, id)| self.grant(id.clone()))
            .collect();
        let mut leases = match inner.space.grant_many(grants).await {
            Ok(leases) => leases,
            Err(e) => {
                tracing::debug!(worker = %inner.worker_id, error = %e, "batch grant failed; leasing one at a time");
                pending.iter().map(|_| Err(e.clone())).collect()
            }
        };
        // At capacity the batch's tail is refused; lease those in order, waiting for room.
        // (By index: events need not be `Sync`, so no borrow of them lives across an await.)
        for i in 0..leases.len() {
            if leases[i].is_err() {
                let grant = self.grant(pending[i].1.clone()).wait(inner.capacity_wait);
                leases[i] = inner.space.grant(grant).await;
            }
        }
        let mut granted = Vec::with_capacity(pending.len());
        for (lease, (event, id)) in leases.into_iter().zip(pending) {
            match lease {
                Ok(lease) => granted.push((lease, event)),
                Err(error) => {
                    self.report(report, Some(id), None, 0, OutcomeKind::NotLeased { error })
                }
            }
        }
        report.leased += granted.len() as u64;
        let tracking = inner
            .heartbeat
            .registry
            .track_all(granted.iter().map(|(l, _)| (l.seq(), l.token())));
        granted
            .into_iter()
            .zip(tracking)
            .map(|((lease, event), tracking)| Leased {
                lease,
                event,
                tracking,
            })
            .collect()
    }

    fn grant(&self, operation_id: String) -> Grant {
        let inner = &self.inner;
        Grant::new(operation_id, inner.projection.projection_type())
            .owner(&inner.worker_id)
            .ttl(inner.ttl)
    }

    /// One event in its slot: the handler's attempts, then commit or release.
    async fn work(
        &self,
        item: Leased<P::Event>,
        cancel: &mut watch::Receiver<bool>,
        report: &mut RunReport,
    ) {
        let Leased {
            mut lease,
            event,
            tracking,
        } = item;
        let mut attempts = 0;
        let handled = tokio::select! {
            biased;
            handled = self.attempts(&mut lease, event, &tracking, &mut attempts, report) => Some(handled),
            _ = cancel.wait_for(|c| *c) => None,
        };
        let standing = tracking.finish();
        if let Some(r) = standing.renewal {
            lease.adopt_renewal(r.expires_at, r.renewals, r.local_deadline);
        }
        let seq = lease.seq();
        let operation_id = self.outcome_id(&lease);
        let projection_type = self.inner.projection.projection_type();
        let kind = match handled {
            Some(Handled::Done(body)) => match standing.lost {
                Some(error) => {
                    // The store refused to renew: committing would be refused too. Recorded
                    // work is recovered by the cleanup service.
                    lease.abandon();
                    OutcomeKind::Lost {
                        error,
                        body: Some(body),
                    }
                }
                None => commit(&mut lease, body).await,
            },
            Some(Handled::Failed(error)) => {
                let detail = format!(
                    "handler of {projection_type} failed after {attempts} attempt(s): {error}"
                );
                OutcomeKind::Failed {
                    release: release(lease, detail).await,
                    error: error.message().to_string(),
                }
            }
            Some(Handled::Panicked(message)) => {
                let detail = format!("handler of {projection_type} panicked: {message}");
                OutcomeKind::Panicked {
                    release: release(lease, detail).await,
                    message,
                }
            }
            None => {
                let detail = format!(
                    "worker {} shut down before the handler of {projection_type} finished",
                    self.inner.worker_id
                );
                OutcomeKind::Cancelled {
                    release: release(lease, detail).await,
                }
            }
        };
        self.report(report, operation_id, Some(seq), attempts, kind);
    }

    /// Run the handler until it succeeds, panics, or the error policy gives up.
    async fn attempts(
        &self,
        lease: &mut Lease,
        event: P::Event,
        tracking: &Tracking,
        attempts: &mut u32,
        report: &mut RunReport,
    ) -> Handled {
        let inner = &self.inner;
        let mut event = Some(event);
        loop {
            *attempts += 1;
            let last = inner.policy.is_last(*attempts);
            let this = if last { event.take() } else { event.clone() }
                .expect("the event is only taken for the last attempt");
            let mut ctx = WorkContext::new(lease, tracking.registry(), *attempts);
            let outcome = AssertUnwindSafe(async { inner.projection.handle(this, &mut ctx).await })
                .catch_unwind()
                .await;
            match outcome {
                Ok(Ok(body)) => return Handled::Done(body),
                Ok(Err(error)) if last || error.is_permanent() => return Handled::Failed(error),
                Ok(Err(error)) => {
                    tracing::debug!(worker = %inner.worker_id, seq = lease.seq(), attempt = *attempts, %error, "handler failed; retrying");
                    report.retries += 1;
                    if let ErrorPolicy::Retry { backoff, .. } = &inner.policy {
                        tokio::time::sleep(backoff.delay(*attempts)).await;
                    }
                }
                Err(panic) => return Handled::Panicked(panic_message(panic.as_ref())),
            }
        }
    }

    /// The operation id for the outcome hook (the counters alone do not need it).
    fn outcome_id(&self, lease: &Lease) -> Option<String> {
        self.inner
            .on_outcome
            .as_ref()
            .map(|_| lease.operation_id().to_string())
    }

    /// Count an outcome and hand it to the hook.
    fn report(
        &self,
        report: &mut RunReport,
        operation_id: Option<String>,
        seq: Option<u64>,
        attempts: u32,
        kind: OutcomeKind,
    ) {
        report.count(&kind);
        if let (Some(hook), Some(operation_id)) = (&self.inner.on_outcome, operation_id) {
            hook(&Outcome {
                operation_id,
                seq,
                attempts,
                kind,
            });
        }
    }
}

fn merge(report: &mut RunReport, joined: std::result::Result<RunReport, tokio::task::JoinError>) {
    match joined {
        Ok(lane) => report.add(&lane),
        Err(e) if e.is_panic() => {
            // Handler panics are caught in the lane; this is the outcome hook or the runtime.
            tracing::error!(error = %e, "worker lane panicked outside its handler; its lease handle released the slot");
        }
        Err(_) => {} // aborted at the end of a shutdown
    }
}

async fn join_all(lanes: &mut JoinSet<RunReport>, report: &mut RunReport) {
    while let Some(joined) = lanes.join_next().await {
        merge(report, joined);
    }
}

async fn commit(lease: &mut Lease, body: OperationBody) -> OutcomeKind {
    match lease.commit(body.clone()).await {
        Ok(outcome) => OutcomeKind::Committed(outcome),
        Err(Error::Lease(
            error @ (LeaseError::Expired { .. }
            | LeaseError::WrongToken { .. }
            | LeaseError::Resolved { .. }
            | LeaseError::UnknownSlot { .. }
            | LeaseError::StaleEpoch { .. }),
        )) => OutcomeKind::Lost {
            error,
            body: Some(body),
        },
        Err(error) => {
            tracing::warn!(space = %lease.space(), seq = lease.seq(), %error, "commit failed; the slot is released (or resolved by recovery when its TTL expires)");
            OutcomeKind::CommitFailed { error, body }
        }
    }
}

/// Release with `detail`; `None` when the store refused or failed (the slot then resolves
/// through recovery when its TTL expires).
async fn release(lease: Lease, detail: String) -> Option<ReleaseOutcome> {
    let (space, seq) = (lease.space().clone(), lease.seq());
    match lease.release(Some(detail)).await {
        Ok(outcome) => Some(outcome),
        Err(error) => {
            tracing::warn!(%space, seq, %error, "release failed; the slot resolves through recovery when its lease expires");
            None
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_string()
    }
}
