//! `seqlease bench`: end-to-end load on a store, with a baseline measured in the same run.
//!
//! N workers each loop grant → commit for the given duration (one lease per round, or
//! `--leases K`: K granted in one call and committed concurrently). Commit latency (call to
//! return) and grant latency go into HDR histograms. With `--baseline` the same run also
//! measures the floor the store sits on, so the figure is a ratio, not a number from a noisy
//! shared machine:
//! - memory: N tasks doing the bare data-structure work of a cycle (insert + update in a
//!   mutex-protected map);
//! - sqlite: one INSERT per transaction in a plain loop on a file in the same directory, WAL,
//!   synchronous=NORMAL;
//! - postgres: use `pgbench -N` (see docs/benchmarks.md).
//!
//! With `--runtime` the same run also drives the worker runtime (`seqlease::worker`) with
//! the same concurrency for the same duration — a projection whose handler returns the
//! same operation the raw loop commits — and reports its cycles/s as a ratio to the raw
//! lease API's: the runtime's overhead.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::process_cpu::process_cpu_time;
use futures::StreamExt;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use seqlease::telemetry::{OtlpExport, Telemetry};
use seqlease::worker::{ErrorPolicy, HandlerError, Projection, WorkContext, WorkerRuntime};
use seqlease::{DEFAULT_URL, Engine, Grant, OperationBody, SpaceConfig};
use serde_json::json;

use crate::progress::Ticker;

/// Arguments of `seqlease bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The store: memory, sqlite://PATH, postgres://USER@HOST/DB.
    #[arg(long, env = "SEQLEASE_DB", default_value = DEFAULT_URL)]
    db: String,
    /// Concurrent workers.
    #[arg(long, default_value_t = 16)]
    workers: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Leases each worker holds per round: 1 grants one lease and commits it; more grants
    /// them in one call (`Space::grant_many`) and commits them concurrently, the way a
    /// projection worker that claims a run of events works.
    #[arg(long, default_value_t = 1)]
    leases: usize,
    /// Commit each lease and take the next in one call (`Space::commit_and_grant`): one
    /// store round trip per cycle instead of two. With one lease per round only.
    #[arg(long)]
    pipeline: bool,
    /// Payload bytes per operation.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Operation ids: `sequential` (`w{worker}-{n}`: each worker's ids sort in the order
    /// it commits them) or `random` (a worker prefix and 16 random hex digits, as event
    /// ids that are UUIDs give: every commit lands in a random place of the I6 index).
    #[arg(long, value_enum, default_value_t = IdOrder::Sequential)]
    ids: IdOrder,
    /// Also measure the store's baseline in the same run and report the ratio.
    #[arg(long)]
    baseline: bool,
    /// Also run the worker runtime with the same concurrency and report its cycles/s as a
    /// ratio to the raw lease API's.
    #[arg(long)]
    runtime: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Telemetry during the run, to measure its cost: `env` (the OTEL_* variables),
    /// `off` (no instruments), `noexport` (instruments, no exporter), `otlp` (OTLP/HTTP
    /// export every second to OTEL_EXPORTER_OTLP_ENDPOINT, or to a local receiver that
    /// this command starts when it is unset).
    #[arg(long, value_enum, default_value_t = TelemetryMode::Env)]
    telemetry: TelemetryMode,
}

/// `--ids` choices.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdOrder {
    /// `w{worker}-{n}`.
    Sequential,
    /// `w{worker}-` and 16 random hex digits.
    Random,
}

impl IdOrder {
    fn as_str(self) -> &'static str {
        match self {
            IdOrder::Sequential => "sequential",
            IdOrder::Random => "random",
        }
    }
}

/// `--telemetry` choices.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TelemetryMode {
    /// Follow the OTEL_* variables (export only when an endpoint is set).
    Env,
    /// No instruments at all.
    Off,
    /// Instruments on a provider without an exporter.
    Noexport,
    /// Export over OTLP every second.
    Otlp,
}

impl TelemetryMode {
    fn as_str(self) -> &'static str {
        match self {
            TelemetryMode::Env => "env",
            TelemetryMode::Off => "off",
            TelemetryMode::Noexport => "noexport",
            TelemetryMode::Otlp => "otlp",
        }
    }

    async fn telemetry(self) -> anyhow::Result<Telemetry> {
        Ok(match self {
            TelemetryMode::Env => Telemetry::FromEnv,
            TelemetryMode::Off => Telemetry::Off,
            TelemetryMode::Noexport => Telemetry::NoExport,
            TelemetryMode::Otlp => {
                let export = match OtlpExport::from_env()? {
                    Some(export) => export,
                    None => OtlpExport::http(local_receiver().await?),
                };
                Telemetry::Otlp(export.interval(Duration::from_secs(1)))
            }
        })
    }
}

/// An OTLP/HTTP endpoint on 127.0.0.1 that accepts every export (and reads its body), so
/// `--telemetry otlp` measures the exporter's real work without a Collector.
async fn local_receiver() -> anyhow::Result<String> {
    let app = axum::Router::new().route(
        "/v1/metrics",
        axum::routing::post(|body: axum::body::Bytes| async move {
            let _received = body.len();
            (
                [("content-type", "application/x-protobuf")],
                Vec::<u8>::new(),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}"))
}

struct WorkerStats {
    cycles: u64,
    commit: Histogram<u64>,
    grant: Histogram<u64>,
}

/// A worker's operation ids, `w{worker}-{n}` or `w{worker}-` and 16 random hex digits,
/// made without the formatting machinery (`format!` cost the harness ~900 instructions a
/// cycle, 8 % of the whole).
struct OperationIds {
    prefix: String,
    order: IdOrder,
}

impl OperationIds {
    fn new(worker: usize, order: IdOrder) -> Self {
        OperationIds {
            prefix: format!("w{worker}-"),
            order,
        }
    }

    fn get(&self, n: u64) -> String {
        match self.order {
            IdOrder::Sequential => self.with(itoa::Buffer::new().format(n)),
            IdOrder::Random => {
                let bits: u64 = rand::random();
                let hex: [u8; 16] = std::array::from_fn(|i| {
                    b"0123456789abcdef"[(bits >> (60 - 4 * i)) as usize & 0xf]
                });
                self.with(std::str::from_utf8(&hex).expect("hex digits are ASCII"))
            }
        }
    }

    /// The prefix and `suffix`, in a string exactly as long.
    fn with(&self, suffix: &str) -> String {
        let mut id = String::with_capacity(self.prefix.len() + suffix.len());
        id.push_str(&self.prefix);
        id.push_str(suffix);
        id
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds are valid")
}

pub async fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    anyhow::ensure!(args.workers >= 1, "--workers must be at least 1");
    anyhow::ensure!(
        (1..=256).contains(&args.leases),
        "--leases must be in 1..=256"
    );
    anyhow::ensure!(
        !args.pipeline || args.leases == 1,
        "--pipeline chains one lease at a time: use it with --leases 1"
    );
    anyhow::ensure!(
        args.duration > 0.0 && args.duration <= 3600.0,
        "--duration must be in (0, 3600] seconds"
    );
    let duration = Duration::from_secs_f64(args.duration);
    if args.baseline
        && !(args.db == "memory"
            || args.db.starts_with("memory:")
            || args.db.starts_with("sqlite:"))
    {
        // Refuse before the load runs rather than lose its results afterwards.
        anyhow::bail!(
            "--baseline is measured in-process for memory and sqlite only; for PostgreSQL compare with `pgbench -N` as docs/benchmarks.md shows"
        );
    }
    let engine = Engine::builder()
        .url(&args.db)
        .owner("seqlease-bench")
        .telemetry(args.telemetry.telemetry().await?)
        .build()
        .await?;
    let backend = engine.store().backend();
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let capacity = u32::try_from(args.workers.saturating_mul(args.leases).saturating_mul(4))
        .unwrap_or(u32::MAX)
        .max(64);
    let space = engine
        .space_with(&format!("bench-{ms}"), SpaceConfig { capacity })
        .await?;
    eprintln!(
        "bench: {} workers × {} lease(s) for {:.1} s on {backend} ({})",
        args.workers, args.leases, args.duration, args.db
    );

    let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let ticker = {
        let total = total.clone();
        let started = Instant::now();
        Ticker::start(Duration::from_secs(1), move || {
            let n = total.load(std::sync::atomic::Ordering::Relaxed);
            format!(
                "bench: {n} cycles, {:.0}/s",
                n as f64 / started.elapsed().as_secs_f64()
            )
        })
    };
    let payload = vec![b'x'; args.payload];
    let cpu_before = process_cpu_time();
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    let leases_per_round = args.leases as u64;
    let pipeline = args.pipeline;
    for w in 0..args.workers {
        let (space, payload, total) = (space.clone(), payload.clone(), total.clone());
        tasks.push(tokio::spawn(async move {
            let mut stats = WorkerStats {
                cycles: 0,
                commit: histogram(),
                grant: histogram(),
            };
            let owner = format!("bench-{w}");
            let ids = OperationIds::new(w, args.ids);
            // The harness stays out of the figure: a cycle starts when the previous one's
            // commits were seen done (one clock read fewer per cycle), and the shared
            // progress counter is bumped once per 64 cycles, not per cycle.
            let mut t0 = Instant::now();
            let mut unreported = 0;
            // With --pipeline: the lease the last call granted, committed by the next.
            let mut held = None;
            while t0 < deadline {
                let grant = |n: u64| {
                    Grant::new(ids.get(n), "bench")
                        .owner(&owner)
                        .wait(Duration::from_secs(30))
                };
                let body = || OperationBody::new("bench", payload.clone());
                if pipeline {
                    // The first grant stands alone; every later one rides on a commit,
                    // whose call is the cycle's commit latency.
                    let mut lease = match held.take() {
                        Some(lease) => lease,
                        None => {
                            let lease = space.grant(grant(stats.cycles)).await?;
                            let t1 = Instant::now();
                            stats.grant.saturating_record(micros(t1 - t0));
                            t0 = t1;
                            lease
                        }
                    };
                    let (committed, next) = space
                        .commit_and_grant(&mut lease, body(), grant(stats.cycles + 1))
                        .await?;
                    committed?;
                    held = Some(next?);
                    let done = Instant::now();
                    stats.commit.saturating_record(micros(done - t0));
                    t0 = done;
                } else if leases_per_round == 1 {
                    // One lease: commit it directly, without the futures vector below.
                    let mut lease = space.grant(grant(stats.cycles)).await?;
                    let t1 = Instant::now();
                    stats.grant.saturating_record(micros(t1 - t0));
                    lease.commit(body()).await?;
                    let done = Instant::now();
                    stats.commit.saturating_record(micros(done - t1));
                    t0 = done;
                } else {
                    let round = (stats.cycles..stats.cycles + leases_per_round).map(grant);
                    let leases = space
                        .grant_many(round.collect())
                        .await?
                        .into_iter()
                        .collect::<Result<Vec<_>, _>>()?;
                    let t1 = Instant::now();
                    stats.grant.saturating_record(micros(t1 - t0));
                    let commits = leases.into_iter().map(|mut lease| {
                        let body = body();
                        async move {
                            lease.commit(body).await?;
                            anyhow::Ok(Instant::now())
                        }
                    });
                    for done in futures::future::try_join_all(commits).await? {
                        stats.commit.saturating_record(micros(done - t1));
                        t0 = t0.max(done);
                    }
                }
                stats.cycles += leases_per_round;
                unreported += leases_per_round;
                if unreported >= 64 {
                    total.fetch_add(unreported, std::sync::atomic::Ordering::Relaxed);
                    unreported = 0;
                }
            }
            if let Some(mut last) = held {
                last.commit(OperationBody::new("bench", payload.clone()))
                    .await?;
                stats.cycles += 1;
                unreported += 1;
            }
            total.fetch_add(unreported, std::sync::atomic::Ordering::Relaxed);
            anyhow::Ok(stats)
        }));
    }
    let mut commit = histogram();
    let mut grant = histogram();
    let mut cycles = 0;
    for t in tasks {
        let s = t.await??;
        cycles += s.cycles;
        commit.add(&s.commit)?;
        grant.add(&s.grant)?;
    }
    let elapsed = started.elapsed();
    let cpu_us_per_cycle = cpu_before
        .zip(process_cpu_time())
        .filter(|_| cycles > 0)
        .map(|(before, after)| (after - before).as_secs_f64() * 1e6 / cycles as f64);
    drop(ticker);
    let cycles_per_sec = cycles as f64 / elapsed.as_secs_f64();

    let runtime = if args.runtime {
        Some(measure_runtime(&engine, args.workers, duration, &payload, ms).await?)
    } else {
        None
    };

    let baseline = if args.baseline {
        Some(measure_baseline(&args.db, backend, args.workers, duration).await?)
    } else {
        None
    };
    let summary = json!({
        "store": backend,
        "workers": args.workers,
        "leases_per_worker": args.leases,
        "pipeline": args.pipeline,
        "duration_s": elapsed.as_secs_f64(),
        "cycles": cycles,
        "cycles_per_sec": cycles_per_sec.round() as u64,
        "p50_us": commit.value_at_quantile(0.50),
        "p99_us": commit.value_at_quantile(0.99),
        "max_us": commit.max(),
        "grant_p50_us": grant.value_at_quantile(0.50),
        "grant_p99_us": grant.value_at_quantile(0.99),
        "cpu_us_per_cycle": cpu_us_per_cycle.map(|us| (us * 1000.0).round() / 1000.0),
        "payload_bytes": args.payload,
        "ids": args.ids.as_str(),
        "telemetry": args.telemetry.as_str(),
        "mean_batch": mean_batch(&engine),
        "baseline": baseline.as_ref().map(|(name, per_sec)| json!({ "name": name, "per_sec": per_sec.round() as u64 })),
        "ratio_to_baseline": baseline.as_ref().map(|(_, b)| (cycles_per_sec / b * 1000.0).round() / 1000.0),
        "runtime": runtime.map(|per_sec| json!({ "cycles_per_sec": per_sec.round() as u64, "ratio_to_raw": (per_sec / cycles_per_sec * 1000.0).round() / 1000.0 })),
        "machine": { "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1), "os": std::env::consts::OS, "arch": std::env::consts::ARCH },
        "commit": git_commit(),
    });
    engine.shutdown_telemetry().await?;
    if args.json {
        println!("{summary}");
    } else {
        println!(
            "store        {backend}, {} workers × {} lease(s){}, {:.2} s",
            args.workers,
            args.leases,
            if args.pipeline {
                ", each commit granting the next"
            } else {
                ""
            },
            elapsed.as_secs_f64()
        );
        println!(
            "throughput   {cycles} grant→commit cycles, {:.0} cycles/s",
            cycles_per_sec
        );
        println!(
            "commit       p50 {} µs, p99 {} µs, max {} µs",
            summary["p50_us"], summary["p99_us"], summary["max_us"]
        );
        println!(
            "grant        p50 {} µs, p99 {} µs",
            summary["grant_p50_us"], summary["grant_p99_us"]
        );
        if let Some(us) = cpu_us_per_cycle {
            println!("cpu          {us:.3} µs of this process's CPU per cycle");
        }
        if let Some(per_sec) = runtime {
            println!(
                "runtime      {per_sec:.0} cycles/s through the worker runtime → ratio {} to the raw lease API",
                summary["runtime"]["ratio_to_raw"]
            );
        }
        if let Some((name, per_sec)) = &baseline {
            println!(
                "baseline     {name}: {per_sec:.0}/s → ratio {}",
                summary["ratio_to_baseline"]
            );
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// The bench's projection: each event becomes the operation the raw loop commits.
struct BenchProjection {
    payload: Vec<u8>,
}

impl Projection for BenchProjection {
    type Event = u64;

    fn projection_type(&self) -> &str {
        "bench"
    }

    fn operation_id(&self, n: &u64) -> String {
        format!("rt-{n}")
    }

    async fn handle(
        &self,
        _n: u64,
        _ctx: &mut WorkContext<'_>,
    ) -> Result<OperationBody, HandlerError> {
        Ok(OperationBody::new("bench", self.payload.clone()))
    }
}

/// Cycles/s of the worker runtime with `workers` handlers at once, on a space of its own.
async fn measure_runtime(
    engine: &Engine,
    workers: usize,
    duration: Duration,
    payload: &[u8],
    ms: u128,
) -> anyhow::Result<f64> {
    eprintln!(
        "bench: worker runtime, {workers} handlers for {:.1} s",
        duration.as_secs_f64()
    );
    let capacity = (workers as u32 * 4).max(64);
    let space = engine
        .space_with(&format!("bench-rt-{ms}"), SpaceConfig { capacity })
        .await?;
    let projection = BenchProjection {
        payload: payload.to_vec(),
    };
    let worker = WorkerRuntime::builder(&space, projection)
        .concurrency(workers)
        .worker_id("bench-runtime")
        .error_policy(ErrorPolicy::Release)
        .build()?;
    let started = Instant::now();
    let events = futures::stream::iter(0u64..).take_until(tokio::time::sleep(duration));
    let report = worker.run(events).await;
    let elapsed = started.elapsed();
    anyhow::ensure!(
        report.committed == report.received,
        "the runtime bench lost events: {report:?}"
    );
    Ok(report.committed as f64 / elapsed.as_secs_f64())
}

/// Commands per group-commit transaction (null when the store is called directly).
fn mean_batch(engine: &Engine) -> Option<f64> {
    let s = engine.stats();
    (s.group_commit_batches > 0).then(|| {
        (s.group_commit_commands as f64 / s.group_commit_batches as f64 * 10.0).round() / 10.0
    })
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

async fn measure_baseline(
    db: &str,
    backend: &str,
    workers: usize,
    duration: Duration,
) -> anyhow::Result<(String, f64)> {
    eprintln!(
        "bench: measuring the {backend} baseline for {:.1} s",
        duration.as_secs_f64()
    );
    match backend {
        "memory" => Ok((
            "mutex-map insert+update cycle".into(),
            memory_baseline(workers, duration).await,
        )),
        "sqlite" => {
            let path = db
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:");
            let dir = Path::new(path)
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            Ok((
                "sqlite one INSERT per transaction loop".into(),
                sqlite_baseline(dir, duration).await?,
            ))
        }
        other => anyhow::bail!(
            "no in-process baseline for {other}; compare with `pgbench -N` as docs/benchmarks.md shows"
        ),
    }
}

/// The bare work of a cycle on shared memory: insert a slot, then update it.
async fn memory_baseline(workers: usize, duration: Duration) -> f64 {
    let map: Arc<Mutex<HashMap<u64, Vec<u8>>>> = Arc::default();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (map, next) = (map.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                for _ in 0..64 {
                    let seq = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    map.lock().insert(seq, Vec::new());
                    tokio::task::yield_now().await;
                    if let Some(v) = map.lock().get_mut(&seq) {
                        v.extend_from_slice(b"payload");
                    }
                    n += 1;
                }
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap_or(0);
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// One INSERT per transaction in a plain loop: what a naive durable log gets on this disk.
async fn sqlite_baseline(dir: &Path, duration: Duration) -> anyhow::Result<f64> {
    use sqlx::ConnectOptions;
    let path = dir.join(format!("seqlease-baseline-{}.db", std::process::id()));
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal);
    let mut conn = opts.connect().await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
        .execute(&mut conn)
        .await?;
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < duration {
        sqlx::query("INSERT INTO t (v) VALUES (?)")
            .bind(&b"payload"[..])
            .execute(&mut conn)
            .await?;
        n += 1;
    }
    let per_sec = n as f64 / started.elapsed().as_secs_f64();
    drop(conn);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    Ok(per_sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_ids_carry_the_worker_and_follow_the_chosen_order() {
        let sequential = OperationIds::new(3, IdOrder::Sequential);
        assert_eq!(
            (sequential.get(0), sequential.get(42)),
            ("w3-0".into(), "w3-42".into())
        );
        let random = OperationIds::new(3, IdOrder::Random);
        let (a, b) = (random.get(0), random.get(0));
        for id in [&a, &b] {
            let digits = id.strip_prefix("w3-").expect("the worker's prefix");
            assert_eq!(digits.len(), 16, "{id}");
            assert!(digits.bytes().all(|c| c.is_ascii_hexdigit()), "{id}");
        }
        assert_ne!(a, b, "random ids do not repeat");
    }
}
