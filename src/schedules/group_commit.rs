//! The group-commit dispatcher.
//!
//! Every grant and commit of every lease handle goes through one queue; a dispatcher task
//! cuts it into batches and runs them in the store, at most `max_in_flight` at once
//! ([`Dispatcher`]). Its contract: every command is applied exactly once and its caller
//! gets *its own* reply; a caller that gives up after queueing does not stop its command or
//! anyone else's; a batch the store fails answers every caller in it with the error and
//! applies nothing; no batch is larger than `max_batch`; no more batches run at once than
//! the store allows; the batch in hand never waits for more commands. These checks run the real
//! dispatcher — its queue, batch cutting, semaphore and reply routing — over the in-memory
//! store behind a round trip, with shuttle's scheduler in place of tokio's.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::future::BoxFuture;
use seqlease_core::{
    Command, CommitStatus, GrantRequest, LeaseKey, OperationBody, Reply, SpaceConfig, SpaceName,
    Store, StoreError, Timestamp,
};
use shuttle::future::{block_on, spawn};

use super::{SlowStore, explore, name, no_fallback};
use crate::barrier::Spaces;
use crate::group_commit::{Dispatcher, Mutation};
use crate::telemetry::{AlertThresholds, EngineTelemetry, Telemetry};

/// Concurrent callers: more than a batch holds, so batches overlap and queue up.
const CALLERS: u64 = 5;

fn shuttle_spawn(task: BoxFuture<'static, ()>) {
    shuttle::future::spawn(task);
}

/// A group-commit dispatcher over `store` on shuttle's tasks, with `mutation` seeded.
fn dispatcher(
    store: &Arc<SlowStore>,
    spaces: &Arc<Spaces>,
    mutation: Option<Mutation>,
) -> Arc<Dispatcher> {
    let telemetry = Arc::new(
        EngineTelemetry::new(
            Telemetry::Off,
            AlertThresholds::default(),
            store.clone(),
            spaces.clone(),
            Timestamp(0),
        )
        .expect("telemetry off"),
    );
    let (store, spaces) = (store.clone(), spaces.clone());
    Arc::new(match mutation {
        None => Dispatcher::with_spawn(store, spaces, true, telemetry, shuttle_spawn),
        Some(m) => Dispatcher::seeded(store, spaces, telemetry, shuttle_spawn, m),
    })
}

/// A slow store with one space, and the barrier state a dispatcher reports progress to.
async fn setup(max_batch: usize, max_in_flight: usize) -> (Arc<SlowStore>, SpaceName, Arc<Spaces>) {
    let store = Arc::new(SlowStore::new(max_batch, max_in_flight));
    let space = name();
    store
        .ensure_space(&space, &SpaceConfig::default())
        .await
        .expect("space");
    (store, space, Arc::new(Spaces::default()))
}

fn grant(space: &SpaceName, operation_id: &str) -> Command {
    Command::Grant(GrantRequest {
        space: space.clone(),
        operation_id: operation_id.into(),
        projection_type: "orders".into(),
        owner: "worker".into(),
        ttl: std::time::Duration::from_secs(30),
        fence: None,
    })
}

/// The most batches in the store at once and the largest batch, over all schedules of a
/// check: it is not vacuous only if batches did overlap and coalesce.
#[derive(Default)]
struct Seen {
    running: AtomicUsize,
    batch: AtomicUsize,
}

impl Seen {
    fn record(&self, (running, batch): (usize, usize)) {
        self.running.fetch_max(running, Ordering::SeqCst);
        self.batch.fetch_max(batch, Ordering::SeqCst);
    }

    fn most(&self) -> (usize, usize) {
        (
            self.running.load(Ordering::SeqCst),
            self.batch.load(Ordering::SeqCst),
        )
    }
}

/// `CALLERS` tasks each grant a slot and commit an operation into it through one
/// dispatcher; caller 0 gives up as soon as its commit is queued. Returns the most batches
/// that were in the store at once and the largest batch.
fn scenario(max_batch: usize, max_in_flight: usize, mutation: Option<Mutation>) -> (usize, usize) {
    block_on(async move {
        let (store, space, spaces) = setup(max_batch, max_in_flight).await;
        let signals = spaces.signals(&space, 0);
        let dispatcher = dispatcher(&store, &spaces, mutation);
        let callers: Vec<_> = (0..CALLERS)
            .map(|caller| {
                let (dispatcher, space) = (dispatcher.clone(), space.clone());
                spawn(async move { call(&dispatcher, &space, caller).await })
            })
            .collect();
        let mut seqs = Vec::new();
        for caller in callers {
            seqs.push(caller.await.expect("caller task"));
        }
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (1..=CALLERS).collect::<Vec<_>>(),
            "I1: one slot per grant, no seq skipped or shared"
        );
        // The abandoned commit lands too: the watermark reaches every slot.
        let watermark = signals
            .wait_watermark(CALLERS, no_fallback)
            .await
            .expect("no fallback");
        assert_eq!(watermark, CALLERS);
        let largest = store.max_batch.load(Ordering::SeqCst);
        assert!(
            largest <= max_batch,
            "a batch of {largest} commands, max {max_batch}"
        );
        let running = store.max_running.load(Ordering::SeqCst);
        assert!(
            running <= max_in_flight,
            "{running} batches in the store at once, max {max_in_flight}"
        );
        (running, largest)
    })
}

/// One caller's grant and commit; returns its seq.
async fn call(dispatcher: &Dispatcher, space: &SpaceName, caller: u64) -> u64 {
    let operation_id = format!("op-{caller}");
    let lease = match dispatcher.one(grant(space, &operation_id)).await {
        Ok(Reply::Granted(lease)) => lease,
        other => panic!("caller {caller}: grant answered {other:?}"),
    };
    assert_eq!(
        lease.operation_id, operation_id,
        "caller {caller} got another caller's reply"
    );
    let commit = Command::Commit {
        key: LeaseKey {
            space: space.clone(),
            seq: lease.seq,
            token: lease.token,
        },
        body: OperationBody::new("update", operation_id.into_bytes()),
    };
    if caller == 0 {
        // Queue the commit, then give up on the reply (a cancelled caller).
        let mut abandoned = pin!(dispatcher.one(commit));
        assert!(futures::poll!(abandoned.as_mut()).is_pending());
        return lease.seq;
    }
    match dispatcher.one(commit).await {
        Ok(Reply::Committed(c)) => {
            assert_eq!(
                (c.seq, c.status),
                (lease.seq, CommitStatus::Committed),
                "caller {caller}: a commit reply for another slot"
            );
        }
        other => panic!("caller {caller}: commit answered {other:?}"),
    }
    lease.seq
}

/// Explore `scenario(max_batch, max_in_flight)`; what the schedules saw at most.
fn check(max_batch: usize, max_in_flight: usize) -> (usize, usize) {
    let seen = Arc::new(Seen::default());
    let sink = seen.clone();
    explore(move || sink.record(scenario(max_batch, max_in_flight, None)))
        .expect("every schedule keeps the dispatcher's contract");
    seen.most()
}

#[test]
fn shuttle_group_commit_batches_overlap_within_the_in_flight_limit() {
    assert_eq!(
        check(2, 2),
        (2, 2),
        "some schedule ran two batches at once, some batch coalesced two commands"
    );
}

#[test]
fn shuttle_group_commit_single_writer_runs_batches_inline() {
    assert_eq!(
        check(3, 1),
        (1, 3),
        "batches of up to three coalesced, one at a time"
    );
}

/// `CALLERS` tasks each grant once while the store fails the first batch it is sent.
/// Returns how many callers that batch held.
fn failure_scenario() -> usize {
    block_on(async move {
        let (store, space, spaces) = setup(3, 1).await;
        store.fail_next.store(true, Ordering::SeqCst);
        let dispatcher = dispatcher(&store, &spaces, None);
        let callers: Vec<_> = (0..CALLERS)
            .map(|caller| {
                let (dispatcher, space) = (dispatcher.clone(), space.clone());
                spawn(async move { dispatcher.one(grant(&space, &format!("op-{caller}"))).await })
            })
            .collect();
        let (mut seqs, mut failed) = (Vec::new(), 0);
        for caller in callers {
            match caller.await.expect("caller task") {
                Ok(Reply::Granted(lease)) => seqs.push(lease.seq),
                Err(crate::Error::Store(StoreError::Unavailable { .. })) => failed += 1,
                other => panic!("grant answered {other:?}"),
            }
        }
        assert!(failed >= 1, "the failed batch answered its callers");
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "the failed batch allocated nothing; the others got the next seqs"
        );
        failed
    })
}

#[test]
fn shuttle_group_commit_failed_batch_answers_every_caller_in_it() {
    let most = Arc::new(AtomicUsize::new(0));
    let sink = most.clone();
    explore(move || {
        sink.fetch_max(failure_scenario(), Ordering::SeqCst);
    })
    .expect("every schedule answers every caller");
    // Not vacuous: in some schedule the failed batch held several callers.
    assert!(most.load(Ordering::SeqCst) >= 2);
}

#[test]
fn shuttle_finds_the_seeded_in_flight_overrun() {
    let found = explore(|| {
        let _ = scenario(1, 2, Some(Mutation::PermitReleasedAtSpawn));
    });
    assert!(
        found.is_err(),
        "shuttle should find too many batches in flight"
    );
}

#[test]
fn shuttle_finds_the_seeded_batch_that_waits_for_more() {
    let found = explore(|| {
        let _ = scenario(3, 1, Some(Mutation::DrainWaits));
    });
    assert!(found.is_err(), "shuttle should find the stalled batch");
}

/// Runs (`Dispatcher::many`, as `Space::grant_many` sends them) share the queue with single
/// commands: run 0 of two grants, run 1 of four (longer than a batch), two single grants.
/// Returns the largest batch.
fn runs_scenario(max_batch: usize, max_in_flight: usize) -> usize {
    const RUNS: [usize; 2] = [2, 4];
    block_on(async move {
        let (store, space, spaces) = setup(max_batch, max_in_flight).await;
        let dispatcher = dispatcher(&store, &spaces, None);
        let mut tasks = Vec::new();
        for (run, len) in RUNS.into_iter().enumerate() {
            let (dispatcher, space) = (dispatcher.clone(), space.clone());
            tasks.push(spawn(async move {
                let ids: Vec<String> = (0..len).map(|i| format!("run{run}-{i}")).collect();
                let commands = ids.iter().map(|id| grant(&space, id)).collect();
                let replies = dispatcher.many(commands).await.expect("store up");
                let seqs: Vec<u64> = replies
                    .into_iter()
                    .zip(&ids)
                    .map(|(reply, id)| match reply {
                        Ok(Reply::Granted(lease)) => {
                            assert_eq!(&lease.operation_id, id, "a reply from outside the run");
                            lease.seq
                        }
                        other => panic!("run {run}: grant answered {other:?}"),
                    })
                    .collect();
                assert_eq!(seqs.len(), len, "run {run}: one reply per command");
                assert!(
                    seqs.windows(2).all(|w| w[1] == w[0] + 1),
                    "run {run} was split across batches: seqs {seqs:?}"
                );
                seqs
            }));
        }
        for caller in 0..2 {
            let (dispatcher, space) = (dispatcher.clone(), space.clone());
            tasks.push(spawn(async move {
                match dispatcher
                    .one(grant(&space, &format!("one-{caller}")))
                    .await
                {
                    Ok(Reply::Granted(lease)) => vec![lease.seq],
                    other => panic!("single grant answered {other:?}"),
                }
            }));
        }
        let mut seqs = Vec::new();
        for task in tasks {
            seqs.extend(task.await.expect("caller task"));
        }
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (1..=8).collect::<Vec<_>>(),
            "I1 over runs and singles"
        );
        for batch in store.grant_batches.lock().expect("not poisoned").iter() {
            assert!(
                batch.len() <= max_batch || batch.iter().all(|id| id.starts_with("run1-")),
                "only a run longer than {max_batch} may exceed it, alone: {batch:?}"
            );
        }
        store.max_batch.load(Ordering::SeqCst)
    })
}

#[test]
fn shuttle_group_commit_runs_stay_whole_and_share_batches() {
    for (max_batch, max_in_flight) in [(3, 1), (3, 2)] {
        let most = Arc::new(AtomicUsize::new(0));
        let sink = most.clone();
        explore(move || {
            sink.fetch_max(runs_scenario(max_batch, max_in_flight), Ordering::SeqCst);
        })
        .expect("every schedule keeps runs whole");
        // Not vacuous: the run of four went to the store in one batch.
        assert_eq!(most.load(Ordering::SeqCst), 4);
    }
}
