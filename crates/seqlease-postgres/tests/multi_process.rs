//! Many processes on one database, one of them killed with SIGKILL mid-run.
//!
//! The test binary is its own worker (`harness = false`): run normally it orchestrates; run
//! with `SEQLEASE_MP_WORKER=<n>` it is worker process `n`. The orchestrator starts
//! [`PROCESSES`] worker processes with [`TASKS`] concurrent workers each on one space of
//! one database (`DATABASE_URL` or the throwaway cluster). Workers grant, commit (some
//! operation ids are shared by all processes, so duplicates race across processes) and
//! sometimes release, appending every acknowledged commit to a file the moment it is
//! acknowledged. Once process 0 has acknowledged some commits it is killed with SIGKILL,
//! with leases in flight (TTL 300 s).
//!
//! Then the log must satisfy I1–I7: seqs 1..=last_seq allocated once each; every slot in
//! one valid state; at most one committed entry per operation id; every acknowledged commit
//! present exactly once, where its acknowledgement said; the watermark bounding what
//! readers see, with reads of `1..=W` repeatable; and the only unresolved slots are the
//! killed process's, which the other processes' dead-owner probes expired long before
//! their TTL (crash detection).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use seqlease::core::Store;
use seqlease::{CommitStatus, Engine, EngineConfig, Grant, OperationBody, PgOptions, PgStore};
use seqlease_conformance::postgres::{database_url, unique_name};

const PROCESSES: usize = 4;
const TASKS: usize = 4;
const OPS_PER_TASK: usize = 120;
const SPACE: &str = "multi-process";
const TTL: Duration = Duration::from_secs(300);
const BOUND: Duration = Duration::from_secs(60);

fn main() {
    if let Ok(n) = std::env::var("SEQLEASE_MP_WORKER") {
        let n: usize = n.parse().expect("worker number");
        worker(n);
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("multi_process: test");
        return;
    }
    // Like libtest: a filter that does not match this test's name skips it.
    if let Some(filter) = args.iter().find(|a| !a.starts_with('-'))
        && !"multi_process".contains(filter.as_str())
    {
        println!("multi_process: 0 passed, 0 failed, 1 skipped");
        return;
    }
    orchestrate();
    println!("multi_process: 1 passed, 0 failed");
}

fn opts(schema: &str) -> PgOptions {
    PgOptions {
        schema: Some(schema.to_string()),
        max_connections: 6,
        dead_owner_probe: Some(Duration::from_millis(100)),
        ..PgOptions::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// One worker process: TASKS workers granting and committing until done (or killed).
fn worker(n: usize) {
    let url = std::env::var("SEQLEASE_MP_URL").expect("url");
    let schema = std::env::var("SEQLEASE_MP_SCHEMA").expect("schema");
    let out = PathBuf::from(std::env::var("SEQLEASE_MP_OUT").expect("out"));
    // Process 0 runs until it is killed (bounded, in case it is not).
    let ops = if n == 0 { 1_000_000 } else { OPS_PER_TASK };
    runtime().block_on(async move {
        let store = PgStore::connect(&url, opts(&schema))
            .await
            .expect("connect");
        let engine = Engine::builder()
            .store(Arc::new(store))
            .config(EngineConfig {
                owner: format!("mp-{n}"),
                ..EngineConfig::default()
            })
            .build()
            .await
            .expect("engine");
        let space = engine.space(SPACE).await.expect("space");
        let file = Arc::new(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&out)
                .expect("ack file"),
        ));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let (space, file) = (space.clone(), file.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..ops {
                    if started.elapsed() > BOUND {
                        break;
                    }
                    // Every 10th operation id is shared by all processes: duplicates race.
                    let op = if i % 10 == 3 {
                        format!("shared-{}", i / 10 % 7)
                    } else {
                        format!("p{n}-t{t}-{i}")
                    };
                    let mut lease = space
                        .grant(Grant::new(op.clone(), "mp").ttl(TTL))
                        .await
                        .expect("grant");
                    if i % 9 == 5 {
                        lease.release(None).await.expect("release");
                        continue;
                    }
                    let out = lease
                        .commit(OperationBody::new("update", op.clone().into_bytes()))
                        .await
                        .expect("commit");
                    let line = match out.status {
                        CommitStatus::Committed | CommitStatus::AlreadyCommitted => {
                            format!("{} {op} committed\n", out.seq)
                        }
                        CommitStatus::Duplicate { slot } => {
                            format!("{} {op} duplicate {slot}\n", out.seq)
                        }
                    };
                    // Recorded the moment it is acknowledged: a SIGKILL after this line
                    // leaves it in the file (the kernel has it).
                    file.lock()
                        .expect("ack file lock")
                        .write_all(line.as_bytes())
                        .expect("ack write");
                }
            }));
        }
        for t in tasks {
            t.await.expect("worker task");
        }
    });
}

/// `seq, state, committed_op_id, gap_reason, owner` of one slot.
type SlotRow = (i64, i16, Option<String>, Option<String>, String);

fn spawn_worker(n: usize, url: &str, schema: &str, out: &Path) -> Child {
    Command::new(std::env::current_exe().expect("own executable"))
        .env("SEQLEASE_MP_WORKER", n.to_string())
        .env("SEQLEASE_MP_URL", url)
        .env("SEQLEASE_MP_SCHEMA", schema)
        .env("SEQLEASE_MP_OUT", out)
        .spawn()
        .expect("spawn worker process")
}

fn acks(path: &Path) -> Vec<(u64, String, Option<u64>)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let parts: Vec<&str> = l.split(' ').collect();
            match parts.as_slice() {
                [seq, op, "committed"] => Some((seq.parse().ok()?, op.to_string(), None)),
                [seq, op, "duplicate", slot] => {
                    Some((seq.parse().ok()?, op.to_string(), slot.parse().ok()))
                }
                _ => None, // a line cut short by the kill
            }
        })
        .collect()
}

fn orchestrate() {
    let url = database_url();
    let schema = unique_name("mp");
    let dir = std::env::temp_dir().join(unique_name("seqlease-mp"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let rt = runtime();
    let store = rt.block_on(async {
        let store = PgStore::connect(&url, opts(&schema))
            .await
            .expect("connect");
        store
            .ensure_space(
                &seqlease::SpaceName::new(SPACE).unwrap(),
                &seqlease::SpaceConfig { capacity: 10_000 },
            )
            .await
            .expect("space");
        store
    });

    let outs: Vec<PathBuf> = (0..PROCESSES)
        .map(|n| dir.join(format!("acks-{n}")))
        .collect();
    let mut children: Vec<Child> = (0..PROCESSES)
        .map(|n| spawn_worker(n, &url, &schema, &outs[n]))
        .collect();

    // Kill process 0 with SIGKILL once it has acknowledged some commits.
    let deadline = Instant::now() + BOUND;
    while acks(&outs[0]).len() < 40 {
        assert!(
            Instant::now() < deadline,
            "worker 0 acknowledged nothing in time"
        );
        if let Ok(Some(status)) = children[0].try_wait() {
            panic!("worker 0 exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    children[0].kill().expect("SIGKILL worker 0");
    let killed = Instant::now();
    children[0].wait().expect("reap worker 0");
    // While the others keep working, the dead-owner probes expire the killed process's
    // leases long before their TTL.
    let expired_after = rt.block_on(wait_for_expiry(&store, killed));
    for (n, child) in children.iter_mut().enumerate().skip(1) {
        let status = child.wait().expect("worker exit");
        assert!(status.success(), "worker {n} failed: {status}");
    }

    rt.block_on(verify(&store, &outs, expired_after));
    rt.block_on(store.close());
    let _ = std::fs::remove_dir_all(&dir);
}

async fn wait_for_expiry(store: &PgStore, killed: Instant) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = store.now().await.unwrap().as_micros();
        let live: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM slots WHERE state = 0 AND owner = 'mp-0' AND expires_at > $1",
        )
        .bind(now)
        .fetch_one(store.pool())
        .await
        .unwrap();
        if live == 0 {
            return killed.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "the killed process's {live} leases were not expired before their 300 s TTL"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn verify(store: &PgStore, outs: &[PathBuf], expired_after: Duration) {
    let space = seqlease::SpaceName::new(SPACE).unwrap();
    let pool = store.pool();

    let info = store.space_info(&space).await.unwrap().expect("space");
    let rows: Vec<SlotRow> = sqlx::query_as(
        "SELECT s.seq, s.state, s.committed_op_id, s.gap_reason, s.owner \
         FROM slots s JOIN spaces p ON p.id = s.space_id WHERE p.name = $1 ORDER BY s.seq",
    )
    .bind(SPACE)
    .fetch_all(pool)
    .await
    .unwrap();

    // I1: every seq 1..=last_seq allocated exactly once.
    let seqs: Vec<u64> = rows.iter().map(|r| r.0 as u64).collect();
    assert_eq!(
        seqs,
        (1..=info.last_seq).collect::<Vec<_>>(),
        "I1: seqs must be exactly 1..=last_seq"
    );

    // I2 / I6: every slot in one valid state; at most one committed entry per operation.
    let mut committed_at: HashMap<String, u64> = HashMap::new();
    let mut leased_owners = HashSet::new();
    for (seq, state, op, gap, owner) in &rows {
        match state {
            0 => {
                leased_owners.insert(owner.clone());
            }
            1 => {
                let op = op
                    .clone()
                    .expect("committed slots carry their operation id");
                assert!(
                    committed_at.insert(op.clone(), *seq as u64).is_none(),
                    "I6: {op} committed twice"
                );
            }
            2 => assert!(gap.is_some(), "gap {seq} without a reason"),
            other => panic!("slot {seq} in unknown state {other}"),
        }
    }
    assert!(
        leased_owners.iter().all(|o| o == "mp-0"),
        "only the killed process may leave unresolved slots, found {leased_owners:?}"
    );

    // Every acknowledged commit is present exactly once, where it was acknowledged.
    let mut acked = 0;
    for path in outs {
        for (seq, op, duplicate_of_slot) in acks(path) {
            acked += 1;
            assert_eq!(
                committed_at.get(&op),
                Some(&seq),
                "acknowledged commit of {op} at {seq} is not in the log there (dup slot {duplicate_of_slot:?})"
            );
        }
    }
    assert!(acked > 0);

    // I7: readers see exactly 1..=W, the same every time, and nothing above.
    let w = info.watermark;
    let lowest_open = rows.iter().find(|r| r.1 == 0).map(|r| r.0 as u64);
    assert_eq!(
        w,
        lowest_open.map_or(info.last_seq, |s| s - 1),
        "I7: W is the end of the resolved prefix"
    );
    let read_all = || async {
        let mut out = Vec::new();
        let mut from = 1;
        loop {
            let page = store.read(&space, from, 500).await.unwrap();
            let Some(last) = page.last() else { break };
            from = last.seq + 1;
            out.extend(page);
        }
        out
    };
    let first = read_all().await;
    assert_eq!(first.len() as u64, w);
    assert_eq!(first, read_all().await, "I7: replay of 1..=W differs");
    assert!(store.read(&space, w + 1, 10).await.unwrap().is_empty());

    println!(
        "multi_process: {PROCESSES} processes x {TASKS} workers, {} slots, {acked} acknowledged commits verified, \
         watermark {w}, {} leases of the SIGKILLed process expired {:?} after the kill (TTL {TTL:?})",
        info.last_seq,
        rows.iter().filter(|r| r.1 == 0).count(),
        expired_after
    );
}
