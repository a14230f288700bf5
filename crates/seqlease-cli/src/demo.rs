//! `seqlease demo`: projection workers over a synthetic event stream, end to end.
//!
//! The stream is an order-management history. Most events touch one order; every fifth is a
//! bulk update whose where-clause ("all packed orders of region R") the worker *explodes* into
//! the concrete order ids it touches, records that as partial work, and commits an update
//! operation naming those ids. Workers run in parallel and commit out of order; a reader
//! follows the ordered log at the barrier. Some workers crash (drop their lease without
//! committing); their slots become explained gaps and the event is retried under a new lease.
//!
//! At the end the log is verified: every slot resolved exactly once and in order, every
//! event's operation committed exactly once, the reader saw exactly the log.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;
use seqlease::cleanup::{CleanupConfig, PartialWorkResolver};
use seqlease::core::ExpiredSlot;
use seqlease::{DEFAULT_URL, Engine, EntryContent, Grant, OperationBody, Space};
use serde_json::json;

use crate::progress::Ticker;

/// Arguments of `seqlease demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The store: memory, sqlite://PATH, postgres://USER@HOST/DB.
    #[arg(long, env = "SEQLEASE_DB", default_value = DEFAULT_URL)]
    db: String,
    /// Concurrent projection workers.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Events in the synthetic stream.
    #[arg(long, default_value_t = 10_000)]
    events: u64,
    /// Fraction of attempts that hit a fault (0..1): a worker that crashes (drops its lease),
    /// stalls past its TTL, or finishes but never commits. Stalls and lost commits need the
    /// cleanup service, so on a store without recovery support only crashes are injected.
    #[arg(long, default_value_t = 0.03)]
    fault_rate: f64,
    /// TTL of the demo's leases, in seconds (stalled slots resolve after it).
    #[arg(long, default_value_t = 1.0)]
    lease_ttl: f64,
    /// The space to write (default: a new `demo-<time>` space per run).
    #[arg(long)]
    space: Option<String>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

/// The operation event `n` turns into: its kind and the concrete entity ids it touches.
fn project(n: u64) -> (&'static str, Vec<u64>) {
    if n.is_multiple_of(5) {
        // Bulk update: "packed orders of region n % 7" exploded into concrete ids.
        let count = 2 + n % 4;
        (
            "bulk_update",
            (0..count)
                .map(|i| (n * 7919 + i * 104_729) % 100_000)
                .collect(),
        )
    } else {
        ("update", vec![n % 100_000])
    }
}

#[derive(Default)]
struct Counters {
    committed: AtomicU64,
    crashes: AtomicU64,
    stalls: AtomicU64,
    lost_commits: AtomicU64,
    read: AtomicU64,
    /// Set when every worker is done: the reader drains what is left and stops.
    writers_done: std::sync::atomic::AtomicBool,
}

pub async fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    anyhow::ensure!(args.workers >= 1, "--workers must be at least 1");
    anyhow::ensure!(
        (0.0..1.0).contains(&args.fault_rate),
        "--fault-rate must be in [0, 1)"
    );
    anyhow::ensure!(
        args.lease_ttl.is_finite() && args.lease_ttl >= 0.01 && args.lease_ttl <= 3600.0,
        "--lease-ttl must be between 0.01 and 3600 seconds"
    );
    let ttl = Duration::from_secs_f64(args.lease_ttl);
    let engine = Engine::builder()
        .url(&args.db)
        .owner("seqlease-demo")
        .build()
        .await?;
    let name = args.space.clone().unwrap_or_else(|| {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        format!("demo-{ms}")
    });
    let space = engine.space(&name).await?;
    let start_seq = space.info().await?.last_seq + 1;
    eprintln!(
        "demo: {} events, {} workers, store {} ({}), space {name}",
        args.events,
        args.workers,
        engine.store().backend(),
        args.db
    );

    // The cleanup service resolves what stalled or crashed workers leave behind.
    let cleanup = match engine
        .cleanup()
        .config(CleanupConfig {
            interval: Duration::from_millis(100),
            ..CleanupConfig::default()
        })
        .resolver("orders", WhereClauseResolver)
        .build()
        .await
    {
        Ok(cleanup) => Some(cleanup.start()),
        Err(e) => {
            eprintln!("demo: no cleanup service on this store ({e}); injecting crashes only");
            None
        }
    };
    let faults = Faults {
        rate: args.fault_rate,
        recovery: cleanup.is_some(),
        ttl,
    };

    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let ticker = {
        let (c, s, total) = (counters.clone(), space.clone(), args.events);
        Ticker::start(Duration::from_millis(500), move || {
            format!(
                "demo: {}/{} events done, watermark {}, faults: {} crashes, {} stalls, {} lost commits; reader at {}",
                c.committed.load(Ordering::Relaxed),
                total,
                s.watermark(),
                c.crashes.load(Ordering::Relaxed),
                c.stalls.load(Ordering::Relaxed),
                c.lost_commits.load(Ordering::Relaxed),
                c.read.load(Ordering::Relaxed)
            )
        })
    };

    let reader = tokio::spawn(follow(space.clone(), start_seq, counters.clone()));
    let run = format!(
        "run-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
    );
    let queue = Arc::new(EventQueue::new(run, args.events));
    let mut workers = Vec::new();
    for w in 0..args.workers {
        let (space, queue, counters) = (space.clone(), queue.clone(), counters.clone());
        workers.push(tokio::spawn(async move {
            work(w, space, queue, counters, faults).await
        }));
    }
    for w in workers {
        w.await??;
    }
    // Stalled slots resolve after their TTL plus a cleanup interval.
    let last_seq = space.info().await?.last_seq;
    space
        .wait_for(last_seq, ttl + Duration::from_secs(60))
        .await?;
    let elapsed = started.elapsed();
    counters.writers_done.store(true, Ordering::Relaxed);
    let reader_seen = tokio::time::timeout(Duration::from_secs(60), reader).await???;
    drop(ticker);
    if let Some(cleanup) = cleanup {
        cleanup.stop().await;
    }

    let report = verify(&space, start_seq, last_seq, &queue, &reader_seen).await?;
    let summary = json!({
        "store": engine.store().backend(),
        "space": name,
        "workers": args.workers,
        "events": args.events,
        "slots": report.slots,
        "committed": report.committed,
        "gaps": report.gaps,
        "gaps_by_reason": report.gaps_by_reason,
        "committed_by": report.committed_by,
        "faults": {
            "crashes": counters.crashes.load(Ordering::Relaxed),
            "stalls": counters.stalls.load(Ordering::Relaxed),
            "lost_commits": counters.lost_commits.load(Ordering::Relaxed),
        },
        "elapsed_ms": elapsed.as_millis() as u64,
        "operations_per_sec": (report.committed as f64 / elapsed.as_secs_f64()).round() as u64,
        "verified": report.problems.is_empty(),
        "problems": report.problems,
    });
    if args.json {
        println!("{summary}");
    } else {
        println!("slots      {}", report.slots);
        println!(
            "committed  {} operations ({} events)",
            report.committed, args.events
        );
        println!("           by {}", summary["committed_by"]);
        println!("gaps       {} {}", report.gaps, summary["gaps_by_reason"]);
        println!("faults     {}", summary["faults"]);
        println!(
            "throughput {} operations/s in {:.2} s",
            summary["operations_per_sec"],
            elapsed.as_secs_f64()
        );
        if report.problems.is_empty() {
            println!("verified   yes: every slot resolved once, in order; every operation once");
        } else {
            println!("verified   NO");
            for p in &report.problems {
                println!("  - {p}");
            }
        }
    }
    Ok(if report.problems.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

/// The synthetic stream: events in order, plus those whose worker crashed, to retry.
struct EventQueue {
    /// Prefix of this run's operation ids, so reruns on the same space do not collide (I6).
    run: String,
    next: AtomicU64,
    total: u64,
    retry: Mutex<Vec<u64>>,
    done: AtomicU64,
}

impl EventQueue {
    fn new(run: String, total: u64) -> Self {
        EventQueue {
            run,
            next: AtomicU64::new(1),
            total,
            retry: Mutex::new(Vec::new()),
            done: AtomicU64::new(0),
        }
    }

    /// The next event to project, `None` when all are done.
    async fn take(&self) -> Option<u64> {
        loop {
            if let Some(n) = self.retry.lock().pop() {
                return Some(n);
            }
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            if n <= self.total {
                return Some(n);
            }
            if self.done.load(Ordering::Relaxed) >= self.total {
                return None;
            }
            // Others are still working; one of their events may come back for retry.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Which faults to inject.
#[derive(Clone, Copy, Debug)]
struct Faults {
    /// Fraction of attempts that hit one.
    rate: f64,
    /// Stalls and lost commits too (they need the cleanup service).
    recovery: bool,
    /// Lease TTL.
    ttl: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// The worker dies: the handle is dropped (released, or handed to recovery when work
    /// was recorded).
    Crash,
    /// The worker hangs past its TTL with partial work recorded (bulk updates).
    Stall,
    /// The worker finished and recorded its result, but the commit never arrives.
    LostCommit,
}

fn pick_fault(faults: Faults) -> Option<Fault> {
    let mut rng = rand::rng();
    if !rng.random_bool(faults.rate) {
        return None;
    }
    if !faults.recovery {
        return Some(Fault::Crash);
    }
    Some([Fault::Crash, Fault::Stall, Fault::LostCommit][rng.random_range(0..3)])
}

async fn work(
    worker: usize,
    space: Space,
    queue: Arc<EventQueue>,
    counters: Arc<Counters>,
    faults: Faults,
) -> anyhow::Result<()> {
    let owner = format!("demo-worker-{worker}");
    while let Some(n) = queue.take().await {
        let grant = Grant::new(format!("{}/event-{n}", queue.run), "orders")
            .owner(&owner)
            .ttl(faults.ttl);
        let mut lease = space.grant(grant.wait(Duration::from_secs(60))).await?;
        let (kind, ids) = project(n);
        let fault = pick_fault(faults);
        if fault == Some(Fault::Crash) && !faults.recovery {
            // Without a cleanup service, crash before anything is recorded: the dropped
            // handle releases the slot, and the event is redelivered.
            drop(lease);
            counters.crashes.fetch_add(1, Ordering::Relaxed);
            queue.retry.lock().push(n);
            continue;
        }
        let recorded = kind == "bulk_update";
        if recorded {
            // The exploded where-clause: the concrete ids, checkpointed before the update.
            lease
                .record_partial(serde_json::to_vec(&json!({ "where_result": ids }))?)
                .await?;
        }
        let body = update(kind, &ids, n);
        let Some(fault) = fault else {
            lease.commit(body).await?;
            counters.committed.fetch_add(1, Ordering::Relaxed);
            queue.done.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let recoverable = match fault {
            Fault::Crash => {
                drop(lease); // with recorded work the store hands the slot to recovery
                counters.crashes.fetch_add(1, Ordering::Relaxed);
                recorded
            }
            Fault::Stall => {
                lease.abandon();
                counters.stalls.fetch_add(1, Ordering::Relaxed);
                recorded
            }
            Fault::LostCommit => {
                lease.record_result(body).await?;
                lease.abandon();
                counters.lost_commits.fetch_add(1, Ordering::Relaxed);
                true
            }
        };
        if recoverable {
            // Recovery finishes this attempt; the final verification checks it did.
            queue.done.fetch_add(1, Ordering::Relaxed);
        } else {
            // Nothing to recover: the slot becomes a gap and the stream redelivers.
            queue.retry.lock().push(n);
        }
    }
    Ok(())
}

/// The update operation for event `n`: set the status of the concrete ids it touches.
fn update(kind: &str, ids: &[u64], n: u64) -> OperationBody {
    let payload = json!({ "set": { "status": "shipped" }, "ids": ids }).to_string();
    OperationBody::new(kind, payload).with_source_event(format!("evt-{n}"))
}

/// Recovery of a bulk update from its checkpoint: the recorded where-clause result is all
/// the update needs.
struct WhereClauseResolver;

#[async_trait::async_trait]
impl PartialWorkResolver for WhereClauseResolver {
    async fn resolve(&self, slot: &ExpiredSlot, partial: &[u8]) -> Result<OperationBody, String> {
        let checkpoint: serde_json::Value =
            serde_json::from_slice(partial).map_err(|e| format!("bad checkpoint: {e}"))?;
        let ids: Vec<u64> = serde_json::from_value(checkpoint["where_result"].clone())
            .map_err(|e| format!("bad checkpoint: {e}"))?;
        let event = slot
            .lease
            .operation_id
            .rsplit("event-")
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        Ok(update("bulk_update", &ids, event))
    }
}

/// Follow the log at the barrier; returns the seqs seen, in the order seen.
async fn follow(space: Space, from: u64, counters: Arc<Counters>) -> anyhow::Result<Vec<u64>> {
    let mut reader = space.reader(from);
    let mut seen = Vec::new();
    loop {
        match reader.next_timeout(Duration::from_millis(200)).await? {
            Some(entry) => {
                seen.push(entry.seq);
                counters
                    .read
                    .fetch_max(seen.len() as u64, Ordering::Relaxed);
            }
            None if counters.writers_done.load(Ordering::Relaxed) => {
                // Done: drain what is left without waiting.
                loop {
                    let page = reader.try_next_page().await?;
                    if page.is_empty() {
                        return Ok(seen);
                    }
                    seen.extend(page.iter().map(|e| e.seq));
                }
            }
            None => {}
        }
    }
}

struct Report {
    slots: u64,
    committed: u64,
    gaps: u64,
    gaps_by_reason: HashMap<String, u64>,
    /// "worker", or the recovery type that committed it.
    committed_by: HashMap<String, u64>,
    problems: Vec<String>,
}

async fn verify(
    space: &Space,
    first: u64,
    last: u64,
    queue: &EventQueue,
    reader_seen: &[u64],
) -> anyhow::Result<Report> {
    let mut problems = Vec::new();
    let mut ops: HashMap<String, u64> = HashMap::new();
    let mut gaps_by_reason = HashMap::new();
    let mut committed_by: HashMap<String, u64> = HashMap::new();
    let (mut committed, mut gaps, mut expected) = (0, 0, first);
    let store = space.engine().store().clone();
    while expected <= last {
        let page = store.read(space.name(), expected, 2048).await?;
        if page.is_empty() {
            problems.push(format!(
                "slot {expected} is not resolved (watermark {})",
                space.watermark()
            ));
            break;
        }
        for entry in page {
            if entry.seq != expected {
                problems.push(format!(
                    "log out of order: expected seq {expected}, got {}",
                    entry.seq
                ));
            }
            expected = entry.seq + 1;
            match entry.content {
                EntryContent::Operation(op) => {
                    committed += 1;
                    let how = op
                        .recovery
                        .as_ref()
                        .map_or("worker", |r| r.recovery_type.as_str());
                    *committed_by.entry(how.to_string()).or_insert(0) += 1;
                    if let Some(prev) = ops.insert(op.operation_id.clone(), entry.seq) {
                        problems.push(format!(
                            "operation {} committed twice: seqs {prev} and {}",
                            op.operation_id, entry.seq
                        ));
                    }
                }
                EntryContent::Gap(g) => {
                    gaps += 1;
                    *gaps_by_reason.entry(g.reason.to_string()).or_insert(0) += 1;
                }
            }
        }
    }
    for n in 1..=queue.total {
        if !ops.contains_key(&format!("{}/event-{n}", queue.run)) {
            problems.push(format!("event {n} has no committed operation"));
            if problems.len() > 20 {
                break;
            }
        }
    }
    let expected_seen: Vec<u64> = (first..=last).collect();
    if reader_seen != expected_seen.as_slice() {
        problems.push(format!(
            "the reader saw {} entries, not exactly slots {first}..={last} in order",
            reader_seen.len()
        ));
    }
    Ok(Report {
        slots: last + 1 - first,
        committed,
        gaps,
        gaps_by_reason,
        committed_by,
        problems,
    })
}
