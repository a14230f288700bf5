//! Worker-runtime checks: the projection runtime on a store — input order, handler errors,
//! panics, cancellation, slow handlers kept alive by the heartbeat, shutdown mid-flight.
//! Every store invokes [`worker_suite!`](crate::worker_suite).
//!
//! Handlers here follow a script carried by each event ([`Act`]) and block on gates the
//! check opens, so what is in flight at any moment is decided by the check, not by timing.
//! Lease expiry is driven by the fixture's clock; the heartbeat is driven by
//! [`WorkerRuntime::heartbeat_now`] (its timer is set to an hour) except in the one check of
//! the timer itself, which waits for heartbeats as events.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use seqlease::cleanup::{CleanupConfig, LoadClassifier, LoadThresholds, PartialWorkResolver};
use seqlease::worker::{
    Backoff, ErrorPolicy, HandlerError, Outcome, OutcomeKind, Projection, RunReport, WorkContext,
    WorkerRuntime,
};
use seqlease::{
    CommitStatus, Engine, Entry, GapReason, OperationBody, RecoveryType, ReleaseOutcome, SlotState,
    Space, SpaceConfig,
};
use seqlease_core::ExpiredSlot;
use tokio::sync::{mpsc, oneshot};

use crate::harness::{Fixture, Harness};

/// Generous bound for anything that should happen "at once".
const SOON: Duration = Duration::from_secs(20);
/// Lease TTL of the workers (store clock).
const TTL: Duration = Duration::from_secs(10);
/// A heartbeat timer that never fires during a check: checks beat with `heartbeat_now`.
const NEVER: Duration = Duration::from_secs(3600);

/// What a scripted handler does with an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// Return the operation at once.
    Commit,
    /// Fail this many attempts, then succeed.
    FailTimes(u32),
    /// Fail every attempt.
    FailAlways,
    /// Fail with a permanent error.
    Permanent,
    /// Panic.
    Panic,
    /// Wait for the event's gate, then return the operation.
    Block,
    /// Record partial work, then wait for the gate.
    CheckpointThenBlock,
    /// Record the completed result, then wait for the gate.
    RecordThenBlock,
    /// Record partial work, then fail permanently.
    CheckpointThenFail,
}

/// An input event: a number (its operation id is `evt-{n}`) and a script.
#[derive(Clone, Debug)]
pub struct Ev {
    n: u32,
    act: Act,
}

fn ev(n: u32, act: Act) -> Ev {
    Ev { n, act }
}

fn ids(n: u32) -> String {
    format!("{{\"ids\":[{n}]}}")
}

fn body(n: u32) -> OperationBody {
    OperationBody::new("update", ids(n)).with_source_event(format!("evt-{n}"))
}

/// The projection under test: runs each event's script.
pub struct Scripted {
    started: mpsc::UnboundedSender<u32>,
    gates: Mutex<HashMap<u32, oneshot::Receiver<()>>>,
    calls: Mutex<HashMap<u32, u32>>,
}

/// The check's side of a [`Scripted`] projection.
struct Control {
    started: mpsc::UnboundedReceiver<u32>,
    gates: HashMap<u32, oneshot::Sender<()>>,
}

impl Control {
    /// Wait until `n` more handler attempts have started; returns their event numbers.
    async fn started(&mut self, n: usize) -> Vec<u32> {
        let mut seen = Vec::new();
        while seen.len() < n {
            let next = tokio::time::timeout(SOON, self.started.recv())
                .await
                .expect("handlers start")
                .expect("the projection is alive");
            seen.push(next);
        }
        seen
    }

    fn open(&mut self, n: u32) {
        let gate = self.gates.remove(&n).expect("a gate per blocking event");
        let _ = gate.send(());
    }
}

fn scripted(gated: impl IntoIterator<Item = u32>) -> (Scripted, Control) {
    let (started_tx, started) = mpsc::unbounded_channel();
    let mut senders = HashMap::new();
    let mut receivers = HashMap::new();
    for n in gated {
        let (tx, rx) = oneshot::channel();
        senders.insert(n, tx);
        receivers.insert(n, rx);
    }
    let projection = Scripted {
        started: started_tx,
        gates: Mutex::new(receivers),
        calls: Mutex::default(),
    };
    (
        projection,
        Control {
            started,
            gates: senders,
        },
    )
}

impl Scripted {
    async fn gate(&self, n: u32) {
        let gate = self.gates.lock().expect("not poisoned").remove(&n);
        if let Some(gate) = gate {
            let _ = gate.await;
        }
    }
}

impl Projection for Scripted {
    type Event = Ev;

    fn projection_type(&self) -> &str {
        "scripted"
    }

    fn operation_id(&self, event: &Ev) -> String {
        format!("evt-{}", event.n)
    }

    async fn handle(
        &self,
        e: Ev,
        ctx: &mut WorkContext<'_>,
    ) -> Result<OperationBody, HandlerError> {
        *self
            .calls
            .lock()
            .expect("not poisoned")
            .entry(e.n)
            .or_default() += 1;
        assert_eq!(ctx.operation_id(), format!("evt-{}", e.n));
        let _ = self.started.send(e.n);
        match e.act {
            Act::Commit => {}
            Act::FailTimes(k) if ctx.attempt() <= k => {
                return Err(HandlerError::new(format!(
                    "flaky downstream on attempt {}",
                    ctx.attempt()
                )));
            }
            Act::FailTimes(_) => {}
            Act::FailAlways => return Err(HandlerError::new("downstream unavailable")),
            Act::Permanent => return Err(HandlerError::permanent("malformed event")),
            Act::Panic => panic!("projection bug on evt-{} (expected by the test)", e.n),
            Act::Block => self.gate(e.n).await,
            Act::CheckpointThenBlock => {
                ctx.checkpoint(ids(e.n)).await?;
                self.gate(e.n).await;
            }
            Act::RecordThenBlock => {
                ctx.record_result(body(e.n)).await?;
                self.gate(e.n).await;
            }
            Act::CheckpointThenFail => {
                ctx.checkpoint(ids(e.n)).await?;
                return Err(HandlerError::permanent("gave up after the checkpoint"));
            }
        }
        Ok(body(e.n))
    }

    fn resolver(&self) -> Option<Arc<dyn PartialWorkResolver>> {
        Some(Arc::new(IdsResolver))
    }
}

/// Finishes a checkpoint `{"ids":[…]}` into the update it was heading for.
struct IdsResolver;

#[async_trait]
impl PartialWorkResolver for IdsResolver {
    async fn resolve(&self, _slot: &ExpiredSlot, partial: &[u8]) -> Result<OperationBody, String> {
        Ok(OperationBody::new("update", partial.to_vec()))
    }
}

type Outcomes = Arc<Mutex<Vec<Outcome>>>;

fn outcome_of(outcomes: &Outcomes, n: u32) -> Outcome {
    let id = format!("evt-{n}");
    outcomes
        .lock()
        .expect("not poisoned")
        .iter()
        .find(|o| o.operation_id == id)
        .cloned()
        .unwrap_or_else(|| panic!("no outcome for {id}"))
}

async fn setup(h: &dyn Harness, name: &str) -> (Fixture, Engine, Space) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let space = engine
        .space_with(name, SpaceConfig { capacity: 1000 })
        .await
        .expect("space");
    (fx, engine, space)
}

/// A worker with the checks' settings; its outcomes collected.
fn worker(
    space: &Space,
    projection: Scripted,
    concurrency: usize,
    policy: ErrorPolicy,
) -> (WorkerRuntime<Scripted>, Outcomes) {
    let outcomes: Outcomes = Arc::default();
    let sink = outcomes.clone();
    let worker = WorkerRuntime::builder(space, projection)
        .concurrency(concurrency)
        .ttl(TTL)
        .heartbeat_interval(TTL / 3)
        .error_policy(policy)
        .worker_id("worker-1")
        .on_outcome(move |o| sink.lock().expect("not poisoned").push(o.clone()))
        .build()
        .expect("worker builds");
    (worker, outcomes)
}

/// A worker whose heartbeat timer never fires during the check.
fn quiet_worker(
    space: &Space,
    projection: Scripted,
    concurrency: usize,
    policy: ErrorPolicy,
) -> (WorkerRuntime<Scripted>, Outcomes) {
    let outcomes: Outcomes = Arc::default();
    let sink = outcomes.clone();
    let worker = WorkerRuntime::builder(space, projection)
        .concurrency(concurrency)
        .ttl(NEVER * 2)
        .heartbeat_interval(NEVER)
        .error_policy(policy)
        .worker_id("worker-1")
        .on_outcome(move |o| sink.lock().expect("not poisoned").push(o.clone()))
        .build()
        .expect("worker builds");
    (worker, outcomes)
}

fn cleanup_config() -> CleanupConfig {
    let never = Duration::from_secs(3600);
    CleanupConfig {
        cleaner: "worker-suite".into(),
        classifier: LoadClassifier {
            thresholds: LoadThresholds {
                store_latency: (never, never),
                step_latency: (never, never),
                ..LoadThresholds::default()
            },
        },
        ..CleanupConfig::default()
    }
}

async fn read_all(space: &Space) -> Vec<Entry> {
    space
        .engine()
        .store()
        .read(space.name(), 1, 1_000_000)
        .await
        .expect("read")
}

fn gap_detail(entry: &Entry) -> (GapReason, String) {
    let gap = entry
        .gap()
        .unwrap_or_else(|| panic!("seq {} should be a gap: {entry:?}", entry.seq));
    (gap.reason, gap.detail.clone().unwrap_or_default())
}

async fn wait_handed_to_recovery(engine: &Engine, space: &Space, seq: u64) {
    let store = engine.store().clone();
    let handed_over = async {
        loop {
            let v = store
                .slot(space.name(), seq)
                .await
                .expect("slot")
                .expect("granted");
            if v.state != SlotState::Leased
                || v.lease.expires_at <= engine.now().await.expect("now")
            {
                return;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(SOON, handed_over)
        .await
        .expect("a dropped lease with recorded work is handed to recovery");
}

/// Slots are leased in input order, whatever order handlers finish in; feeding the same
/// events again commits nothing twice (I6).
pub async fn input_order_is_seq_order(h: &dyn Harness) {
    const N: u32 = 120;
    let (_fx, _engine, s) = setup(h, "order").await;
    let (projection, _control) = scripted([]);
    let (w, outcomes) = worker(&s, projection, 16, ErrorPolicy::Release);
    // Fed through the channel, from another task, as an application would.
    let (tx, events) = seqlease::worker::channel(8);
    let feeder = tokio::spawn(async move {
        for n in 1..=N {
            tx.send(ev(n, Act::Commit))
                .await
                .expect("worker is running");
        }
    });
    let report = w.run(events).await;
    feeder.await.expect("feeder");
    assert_eq!(
        report,
        RunReport {
            received: N as u64,
            leased: N as u64,
            committed: N as u64,
            ..RunReport::default()
        }
    );
    let log = read_all(&s).await;
    assert_eq!(log.len(), N as usize);
    for (entry, n) in log.iter().zip(1..) {
        assert_eq!(entry.seq, n as u64);
        let op = entry.operation().expect("committed");
        assert_eq!(
            op.operation_id,
            format!("evt-{n}"),
            "input order = seq order"
        );
        assert_eq!(op.projection_type, "scripted");
        assert_eq!(entry.owner, "worker-1");
    }
    for o in outcomes.lock().expect("not poisoned").iter() {
        assert_eq!(o.attempts, 1);
        assert!(matches!(o.kind, OutcomeKind::Committed(c) if c.status == CommitStatus::Committed));
    }
    // Re-fed: each event gets a slot, finds its operation committed, and adds nothing.
    let again = w
        .run(futures::stream::iter((1..=10).map(|n| ev(n, Act::Commit))))
        .await;
    assert_eq!((again.duplicates, again.committed), (10, 0));
    let log = read_all(&s).await;
    assert_eq!(
        log.iter().filter(|e| e.operation().is_some()).count(),
        N as usize
    );
    for (entry, n) in log[N as usize..].iter().zip(1..) {
        assert_eq!(
            entry.gap().map(|g| (g.reason, g.superseded_by)),
            Some((GapReason::Superseded, Some(n)))
        );
    }
    assert_eq!(w.stats().in_flight, 0);
}

/// Handler errors: retried with backoff on the same slot until success; when retries run
/// out (or the error is permanent, or the policy is Release) the slot is released to a gap
/// carrying the error; recorded partial work goes to recovery and is finished by the
/// projection's resolver.
pub async fn handler_errors_follow_the_policy(h: &dyn Harness) {
    let (_fx, engine, s) = setup(h, "errors").await;
    let (projection, _control) = scripted([]);
    let policy = ErrorPolicy::Retry {
        max_attempts: 3,
        backoff: Backoff::fixed(Duration::from_millis(1)),
    };
    let (w, outcomes) = worker(&s, projection, 4, policy);
    let events = [
        ev(1, Act::FailTimes(2)),
        ev(2, Act::FailAlways),
        ev(3, Act::Permanent),
        ev(4, Act::Commit),
        ev(5, Act::CheckpointThenFail),
    ];
    let report = w.run(futures::stream::iter(events)).await;
    assert_eq!(
        (report.committed, report.failed, report.retries),
        (2, 3, 4),
        "{report:?}"
    );
    assert_eq!(
        outcome_of(&outcomes, 1).attempts,
        3,
        "two failures, then success"
    );
    let failed = outcome_of(&outcomes, 2);
    assert_eq!(failed.attempts, 3);
    assert_eq!(
        failed.kind,
        OutcomeKind::Failed {
            error: "downstream unavailable".into(),
            release: Some(ReleaseOutcome::Gap)
        }
    );
    assert_eq!(
        outcome_of(&outcomes, 3).attempts,
        1,
        "permanent errors are not retried"
    );
    assert!(matches!(
        outcome_of(&outcomes, 5).kind,
        OutcomeKind::Failed {
            release: Some(ReleaseOutcome::HandedToRecovery),
            ..
        }
    ));
    let calls = w.projection().calls.lock().expect("not poisoned").clone();
    assert_eq!((calls[&1], calls[&2], calls[&3]), (3, 3, 1));

    let log = read_all(&s).await;
    assert_eq!(log.len(), 4, "slot 5 waits for recovery");
    assert_eq!(log[0].operation().map(|o| o.body.clone()), Some(body(1)));
    let (reason, detail) = gap_detail(&log[1]);
    assert_eq!(reason, GapReason::Released);
    assert!(
        detail.contains("failed after 3 attempt(s)") && detail.contains("downstream unavailable"),
        "the gap says why: {detail}"
    );
    assert!(gap_detail(&log[2]).1.contains("malformed event"));

    // The checkpoint of the failed handler is finished by the projection's resolver.
    let cleanup = engine
        .cleanup()
        .config(cleanup_config())
        .projection(w.projection())
        .build()
        .await
        .expect("cleanup");
    let cycle = cleanup.run_once().await.expect("cycle");
    assert_eq!(cycle.recovered_total(), 1, "{cycle:?}");
    let log = read_all(&s).await;
    let op = log[4].operation().expect("recovered");
    assert_eq!(op.body.payload, ids(5).into_bytes());
    assert_eq!(
        op.recovery.as_ref().map(|r| r.recovery_type),
        Some(RecoveryType::PartialWork)
    );

    // Release at once: one attempt, then a gap.
    let (projection, _control) = scripted([]);
    let (w, outcomes) = worker(&s, projection, 4, ErrorPolicy::Release);
    let report = w
        .run(futures::stream::iter([ev(6, Act::FailTimes(1))]))
        .await;
    assert_eq!((report.failed, report.retries), (1, 0));
    assert_eq!(outcome_of(&outcomes, 6).attempts, 1);
}

/// A panicking handler releases its slot with the panic message; the others carry on.
pub async fn panics_release_the_slot_with_the_message(h: &dyn Harness) {
    let (_fx, _engine, s) = setup(h, "panics").await;
    let (projection, _control) = scripted([]);
    let (w, outcomes) = worker(&s, projection, 4, ErrorPolicy::default());
    let events = (1..=6).map(|n| ev(n, if n == 3 { Act::Panic } else { Act::Commit }));
    let report = w.run(futures::stream::iter(events)).await;
    assert_eq!((report.committed, report.panicked), (5, 1), "{report:?}");
    let panicked = outcome_of(&outcomes, 3);
    assert_eq!(panicked.attempts, 1, "a panic is not retried");
    assert!(matches!(
        &panicked.kind,
        OutcomeKind::Panicked { message, release: Some(ReleaseOutcome::Gap) } if message.contains("projection bug on evt-3")
    ));
    let log = read_all(&s).await;
    assert_eq!(log.len(), 6);
    let (reason, detail) = gap_detail(&log[2]);
    assert_eq!(reason, GapReason::Released);
    assert!(
        detail.contains("panicked") && detail.contains("projection bug on evt-3"),
        "{detail}"
    );
    assert_eq!(w.stats().in_flight, 0);
}

/// Dropping the run future mid-flight leaves no slot stuck: handlers are aborted, their
/// slots released at once, and a slot with a checkpoint goes to recovery, which finishes it.
pub async fn cancelled_run_leaves_no_slot_stuck(h: &dyn Harness) {
    let (_fx, engine, s) = setup(h, "cancel").await;
    let (projection, mut control) = scripted(1..=4);
    let (w, _outcomes) = quiet_worker(&s, projection, 8, ErrorPolicy::default());
    let events = [
        ev(1, Act::Block),
        ev(2, Act::Block),
        ev(3, Act::Block),
        ev(4, Act::CheckpointThenBlock),
    ];
    let run = {
        let w = w.clone();
        // The input stays open: the run would go on forever.
        let events = futures::stream::iter(events).chain(futures::stream::pending());
        tokio::spawn(async move { w.run(events).await })
    };
    control.started(4).await;
    // Slot 4 has recorded its checkpoint once its handler reaches the gate; wait for that.
    let store = engine.store().clone();
    tokio::time::timeout(SOON, async {
        while store
            .slot(s.name(), 4)
            .await
            .expect("slot")
            .and_then(|v| v.partial)
            .is_none()
        {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("checkpoint recorded");
    run.abort();
    assert!(run.await.expect_err("cancelled").is_cancelled());
    assert_eq!(
        s.wait_for(3, SOON)
            .await
            .expect("released, not left to expire"),
        3
    );
    for entry in &read_all(&s).await[..3] {
        assert_eq!(gap_detail(entry).0, GapReason::Released);
    }
    wait_handed_to_recovery(&engine, &s, 4).await;
    let cleanup = engine
        .cleanup()
        .config(cleanup_config())
        .projection(w.projection())
        .build()
        .await
        .expect("cleanup");
    assert_eq!(
        cleanup.run_once().await.expect("cycle").recovered_total(),
        1
    );
    let info = s.info().await.expect("info");
    assert_eq!((info.watermark, info.last_seq, info.in_flight), (4, 4, 0));
    assert_eq!(
        w.stats().in_flight,
        0,
        "aborted handlers are no longer renewed"
    );
    drop(control);
}

/// A handler blocked far longer than the TTL keeps its slot: the heartbeat renews it, and
/// its commit succeeds. Without renewals the lease is lost: the result is not committed
/// by the worker, and the result it recorded is recovered by the cleanup service.
pub async fn slow_handler_kept_alive_by_the_heartbeat(h: &dyn Harness) {
    let (fx, engine, s) = setup(h, "slow").await;
    let (projection, mut control) = scripted([1, 2]);
    let outcomes: Outcomes = Arc::default();
    let sink = outcomes.clone();
    let w = WorkerRuntime::builder(&s, projection)
        .ttl(TTL)
        .heartbeat_interval(TTL / 3)
        .on_outcome(move |o| sink.lock().expect("not poisoned").push(o.clone()))
        .build()
        .expect("worker builds");
    // The heartbeat's own timer: ticks in real time (a third of the TTL), so drive it with
    // heartbeat_now here and check the timer separately below.
    let run = {
        let w = w.clone();
        tokio::spawn(async move { w.run(futures::stream::iter([ev(1, Act::Block)])).await })
    };
    control.started(1).await;
    // Five times 60% of the TTL: three TTLs in all, renewed in between.
    for _ in 0..5 {
        fx.advance(TTL * 6 / 10);
        assert_eq!(w.heartbeat_now().await.expect("beat").renewed, 1);
    }
    let view = engine
        .store()
        .slot(s.name(), 1)
        .await
        .expect("slot")
        .expect("granted");
    assert_eq!(
        (view.state, view.lease.renewals >= 5),
        (SlotState::Leased, true)
    );
    control.open(1);
    let report = run.await.expect("run");
    assert_eq!(report.committed, 1, "{report:?}");
    assert!(read_all(&s).await[0].operation().is_some());

    // No heartbeat while the clock passes the TTL: the lease is lost.
    let run = {
        let w = w.clone();
        tokio::spawn(async move {
            w.run(futures::stream::iter([ev(2, Act::RecordThenBlock)]))
                .await
        })
    };
    control.started(1).await;
    tokio::time::timeout(SOON, async {
        while engine
            .store()
            .slot(s.name(), 2)
            .await
            .expect("slot")
            .and_then(|v| v.result)
            .is_none()
        {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("result recorded");
    fx.advance(TTL * 2);
    // The timer may have beaten heartbeat_now to it; either way the lease is lost once.
    let beat = w.heartbeat_now().await.expect("beat");
    assert_eq!(beat.renewed, 0);
    assert_eq!(w.stats().lost, 1);
    control.open(2);
    let report = run.await.expect("run");
    assert_eq!((report.lost, report.committed), (1, 0), "{report:?}");
    assert!(matches!(
        outcome_of(&outcomes, 2).kind,
        OutcomeKind::Lost { body: Some(ref b), .. } if *b == body(2)
    ));
    let cleanup = engine
        .cleanup()
        .config(cleanup_config())
        .build()
        .await
        .expect("cleanup");
    assert_eq!(
        cleanup.run_once().await.expect("cycle").recovered_total(),
        1
    );
    let op = read_all(&s).await[1]
        .operation()
        .cloned()
        .expect("recovered");
    assert_eq!(
        (op.body, op.recovery.map(|r| r.recovery_type)),
        (body(2), Some(RecoveryType::Retry))
    );
}

/// The heartbeat's own timer keeps a blocked handler's lease alive: each time the store's
/// clock moves most of a TTL, the check waits for two timer heartbeats (the second one
/// surely started after the move) and the lease is still live.
pub async fn heartbeat_timer_renews_in_the_background(h: &dyn Harness) {
    let (fx, engine, s) = setup(h, "timer").await;
    let (projection, mut control) = scripted([1]);
    let w = WorkerRuntime::builder(&s, projection)
        .ttl(TTL)
        .heartbeat_interval(Duration::from_millis(20))
        .build()
        .expect("worker builds");
    let mut beats = w.heartbeats();
    let run = {
        let w = w.clone();
        tokio::spawn(async move { w.run(futures::stream::iter([ev(1, Act::Block)])).await })
    };
    control.started(1).await;
    for _ in 0..4 {
        fx.advance(TTL * 6 / 10);
        let now = *beats.borrow_and_update();
        tokio::time::timeout(SOON, beats.wait_for(|b| *b >= now + 2))
            .await
            .expect("the heartbeat ticks")
            .expect("the worker is alive");
    }
    let view = engine
        .store()
        .slot(s.name(), 1)
        .await
        .expect("slot")
        .expect("granted");
    assert_eq!(view.state, SlotState::Leased);
    assert!(view.lease.expires_at > engine.now().await.expect("now"));
    control.open(1);
    assert_eq!(run.await.expect("run").committed, 1);
}

/// One heartbeat per worker: each renews every lease the worker holds, in one batch.
pub async fn one_heartbeat_renews_every_lease(h: &dyn Harness) {
    let (_fx, engine, s) = setup(h, "one-beat").await;
    let (projection, mut control) = scripted(1..=5);
    let (w, _outcomes) = quiet_worker(&s, projection, 8, ErrorPolicy::default());
    let run = {
        let w = w.clone();
        tokio::spawn(async move {
            w.run(futures::stream::iter((1..=5).map(|n| ev(n, Act::Block))))
                .await
        })
    };
    control.started(5).await;
    assert_eq!(w.stats().in_flight, 5);
    for _ in 0..3 {
        assert_eq!(w.heartbeat_now().await.expect("beat").renewed, 5);
    }
    let stats = w.stats();
    assert_eq!((stats.heartbeats, stats.renewed, stats.lost), (3, 15, 0));
    for seq in 1..=5 {
        let view = engine
            .store()
            .slot(s.name(), seq)
            .await
            .expect("slot")
            .expect("granted");
        assert_eq!(
            view.lease.renewals, 3,
            "seq {seq} renewed by every heartbeat"
        );
    }
    for n in 1..=5 {
        control.open(n);
    }
    assert_eq!(run.await.expect("run").committed, 5);
    assert_eq!(w.heartbeat_now().await.expect("beat").renewed, 0);
    assert_eq!(w.stats().heartbeats, 3, "nothing in flight, no store call");
}

/// Shutdown mid-flight: no new events are taken; handlers that finish before the deadline
/// commit; the slots of those still running at the deadline are released.
pub async fn shutdown_drains_then_releases(h: &dyn Harness) {
    let (_fx, _engine, s) = setup(h, "shutdown").await;
    let (projection, mut control) = scripted(1..=4);
    let (w, outcomes) = quiet_worker(&s, projection, 4, ErrorPolicy::default());
    let (tx, events) = seqlease::worker::channel(16);
    for n in 1..=4 {
        tx.send(ev(n, Act::Block)).await.expect("queued");
    }
    let run = {
        let w = w.clone();
        tokio::spawn(async move { w.run(events).await })
    };
    control.started(4).await;
    // The deadline is what is under test: long enough for two handlers released right
    // after it to commit on a loaded machine, and then it has to pass for the other two.
    w.shutdown_within(Duration::from_secs(3));
    control.open(1);
    control.open(2);
    let report = run.await.expect("run");
    assert!(report.shutdown);
    assert_eq!(
        (report.received, report.committed, report.cancelled),
        (4, 2, 2),
        "{report:?}"
    );
    assert!(
        tx.send(ev(5, Act::Commit)).await.is_err(),
        "the run took no more events"
    );
    for n in [3, 4] {
        assert!(matches!(
            outcome_of(&outcomes, n).kind,
            OutcomeKind::Cancelled {
                release: Some(ReleaseOutcome::Gap)
            }
        ));
    }
    let log = read_all(&s).await;
    assert_eq!(log.len(), 4);
    assert!(log[0].operation().is_some() && log[1].operation().is_some());
    for entry in &log[2..] {
        let (reason, detail) = gap_detail(entry);
        assert_eq!(reason, GapReason::Released);
        assert!(detail.contains("shut down"), "{detail}");
    }
    // A worker that was shut down takes nothing more.
    let after = w.run(futures::stream::iter([ev(6, Act::Commit)])).await;
    assert_eq!((after.received, after.shutdown), (0, true));
    drop(control);
}

/// Bad settings are refused with a clear error, before anything is leased.
pub async fn bad_settings_are_refused(h: &dyn Harness) {
    let (_fx, _engine, s) = setup(h, "settings").await;
    let build = |f: fn(
        seqlease::worker::WorkerRuntimeBuilder<Scripted>,
    ) -> seqlease::worker::WorkerRuntimeBuilder<Scripted>| {
        let (projection, _control) = scripted([]);
        f(WorkerRuntime::builder(&s, projection)).build().err()
    };
    let refused = [
        build(|b| b.concurrency(0)),
        build(|b| b.ttl(TTL).heartbeat_interval(TTL)),
        build(|b| b.ttl(Duration::ZERO)),
        build(|b| {
            b.error_policy(ErrorPolicy::Retry {
                max_attempts: 0,
                backoff: Backoff::default(),
            })
        }),
        build(|b| b.worker_id("")),
    ];
    for (i, error) in refused.into_iter().enumerate() {
        let error = error.unwrap_or_else(|| panic!("setting {i} must be refused"));
        assert!(!error.to_string().is_empty());
    }
    assert_eq!(s.info().await.expect("info").last_seq, 0);
    // An operation id that is not a valid id: the event is reported, not leased.
    struct BadIds;
    impl Projection for BadIds {
        type Event = u32;
        fn projection_type(&self) -> &str {
            "bad-ids"
        }
        fn operation_id(&self, n: &u32) -> String {
            if *n == 2 {
                String::new()
            } else {
                format!("ok-{n}")
            }
        }
        async fn handle(
            &self,
            n: u32,
            _ctx: &mut WorkContext<'_>,
        ) -> Result<OperationBody, HandlerError> {
            Ok(body(n))
        }
    }
    let counted = Arc::new(AtomicU32::new(0));
    let seen = counted.clone();
    let w = WorkerRuntime::builder(&s, BadIds)
        .on_outcome(move |o| {
            if matches!(o.kind, OutcomeKind::NotLeased { .. }) {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build()
        .expect("worker builds");
    let report = w.run(futures::stream::iter(1..=3)).await;
    assert_eq!(
        (report.received, report.not_leased, report.committed),
        (3, 1, 2)
    );
    assert_eq!(counted.load(Ordering::SeqCst), 1);
}
