//! The orchestrator: processes, faults, the drain, the check.
//!
//! For each store under test, [`run`] starts `--processes` worker processes (each with
//! `--workers` tasks) and two cleaner processes on one space, and then, until
//! `--duration` has passed, injects a fault every `--fault-every-ms` or so. The first
//! faults go through every kind once, in a shuffled order, so a short run still sees each;
//! after that kinds are drawn at random:
//!
//! | fault | what the orchestrator does | what must hold |
//! |---|---|---|
//! | `sigkill` | `SIGKILL` a worker process; start a new generation of it (a new owner) a moment later | its acknowledged commits stay; its slots in flight are resolved by a cleaner (PostgreSQL: sooner than the TTL, via the dead-owner probe) |
//! | `sigstop` | `SIGSTOP` a worker process for longer than every lease it holds except its fenced sequence leases; meanwhile take over the resources it held (epoch + 1); then `SIGCONT` | the zombie's commits are refused (stale epoch, expired lease, resolved slot) and none lands |
//! | `cleaner_kill` | wait until an expired backlog exists (a recovery is due), then `SIGKILL` a cleaner; start a new one | its claims expire, another cleaner finishes; no slot resolved twice, none left |
//! | `pg_restart` | `pg_ctl restart -m fast` or `-m immediate` of the throwaway cluster | processes reconnect; nothing acknowledged is lost |
//! | `connections_cut` | the proxy closes every open connection | processes reconnect; commits retried with their lease are never doubled |
//!
//! The orchestrator samples the watermark every 100 ms. At the end the workers stop by
//! themselves, the cleaners keep running until every slot is resolved, then stop, and the
//! checker ([`crate::check`]) runs over the run directory.
//!
//! SQLite runs on one file shared by every process (its multi-process mode: WAL, writers
//! queue on the file lock). PostgreSQL runs on a throwaway cluster this process starts
//! (never the machine's own server, which must not be restarted) behind a TCP proxy.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use seqlease::core::ResourceQuery;
use seqlease::{Acquire, Space};
use seqlease_conformance::postgres::{Cluster, StopMode};
use tokio::time::Instant;

use crate::check::{self, Manifest};
use crate::journal::{FaultRecord, Journal, WatermarkSample, now_micros};
use crate::proxy::Proxy;
use crate::summary::{self, Summary};
use crate::{ChaosError, SPACE, store};

/// The settings of a run (the `run` subcommand's flags).
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// Which stores: `sqlite`, `postgres` or `all` (one after the other).
    #[arg(long, default_value = "all")]
    pub store: String,
    /// Seconds of faults per store.
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// The long run: 300 s per store unless --duration says otherwise.
    #[arg(long)]
    pub long: bool,
    /// Worker processes at a time.
    #[arg(long, default_value_t = 3)]
    pub processes: u32,
    /// Worker tasks per process.
    #[arg(long, default_value_t = 3)]
    pub workers: u32,
    /// Cleaner processes.
    #[arg(long, default_value_t = 2)]
    pub cleaners: u32,
    /// Seed of the fault schedule and the workers' choices (random when absent; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Directory for the run's files (a fresh temporary one when absent).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// TTL of ordinary sequence leases, ms.
    #[arg(long, default_value_t = 2000)]
    pub ttl_ms: u64,
    /// TTL of fenced sequence leases, ms (must exceed a pause: TTL + 1.5 s).
    #[arg(long, default_value_t = 6000)]
    pub fenced_ttl_ms: u64,
    /// TTL of resource leases, ms.
    #[arg(long, default_value_t = 1500)]
    pub resource_ttl_ms: u64,
    /// Mean pause between faults, ms.
    #[arg(long, default_value_t = 3000)]
    pub fault_every_ms: u64,
    /// Workers also record results under fenced leases, so recovery meets fenced work
    /// whose epoch has moved on (off by default: see docs/fault-injection.md, Limits).
    #[arg(long)]
    pub fenced_results: bool,
    /// Also write the summary table (Markdown) to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

impl RunArgs {
    fn duration(&self) -> Duration {
        let default = RunArgs::default_duration();
        let secs = if self.long && self.duration == default {
            300
        } else {
            self.duration
        };
        Duration::from_secs(secs)
    }

    fn default_duration() -> u64 {
        60
    }

    fn pause(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.max(self.resource_ttl_ms) + 1500)
    }
}

/// Run every requested store, check each, print the table. Returns the summaries (their
/// `violations` say whether the run passed).
pub async fn run(args: RunArgs) -> Result<Vec<Summary>, ChaosError> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("seqlease-chaos-{}-{}", std::process::id(), seed))
    });
    if args.pause() >= Duration::from_millis(args.fenced_ttl_ms) {
        return Err(ChaosError::Setup(format!(
            "--fenced-ttl-ms {} must exceed a pause ({:?}): a zombie's fenced commit must meet the fence, not the TTL",
            args.fenced_ttl_ms,
            args.pause()
        )));
    }
    let stores: Vec<&str> = match args.store.as_str() {
        "all" => vec!["sqlite", "postgres"],
        "sqlite" => vec!["sqlite"],
        "postgres" => vec!["postgres"],
        other => {
            return Err(ChaosError::Setup(format!(
                "--store {other}: expected sqlite, postgres or all"
            )));
        }
    };
    println!(
        "seqlease-chaos: seed {seed}, {} s per store, {} processes × {} workers, run directory {}",
        args.duration().as_secs(),
        args.processes,
        args.workers,
        dir.display()
    );
    let mut summaries = Vec::new();
    for kind in stores {
        let store_dir = dir.join(kind);
        std::fs::create_dir_all(store_dir.join("journals"))
            .and_then(|_| std::fs::create_dir_all(store_dir.join("logs")))
            .map_err(|e| ChaosError::io(&store_dir, e))?;
        let finished = run_store(kind, &args, &store_dir, seed).await?;
        println!("seqlease-chaos: checking the {kind} run");
        let checked = check::check(&store_dir).await;
        if let Some(cluster) = finished.cluster {
            tokio::task::spawn_blocking(move || cluster.stop())
                .await
                .map_err(|e| ChaosError::Setup(e.to_string()))?;
        }
        let mut summary = checked?;
        summary.violations.extend(finished.notes);
        let json = serde_json::to_string_pretty(&summary).map_err(ChaosError::json)?;
        let path = store_dir.join("summary.json");
        std::fs::write(&path, json).map_err(|e| ChaosError::io(&path, e))?;
        for v in &summary.violations {
            println!("  VIOLATION ({kind}): {v}");
        }
        summaries.push(summary);
    }
    let table = summary::table(&summaries);
    println!("\n{table}");
    for path in [Some(dir.join("summary.md")), args.report.clone()]
        .into_iter()
        .flatten()
    {
        std::fs::write(&path, &table).map_err(|e| ChaosError::io(&path, e))?;
    }
    Ok(summaries)
}

/// A worker or cleaner process of the run.
struct Proc {
    /// `p<n>` or `c<n>`.
    role: char,
    index: u32,
    generation: u32,
    child: Child,
}

impl Proc {
    fn name(&self) -> String {
        format!("{}{}g{}", self.role, self.index, self.generation)
    }
}

struct Orchestra<'a> {
    args: &'a RunArgs,
    dir: &'a Path,
    exe: PathBuf,
    /// The store URL for workers and cleaners (PostgreSQL: the proxy).
    db: String,
    until_ms: i64,
    seed: u64,
    faults: Journal,
    /// Things that went wrong with the processes themselves (reported as violations).
    notes: Vec<String>,
}

impl Orchestra<'_> {
    fn spawn(&self, role: char, index: u32, generation: u32) -> Result<Proc, ChaosError> {
        let name = format!("{role}{index}g{generation}");
        let log_path = self.dir.join("logs").join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).map_err(|e| ChaosError::io(&log_path, e))?;
        let mut cmd = Command::new(&self.exe);
        if role == 'p' {
            let seed = self
                .seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(u64::from(index) << 20 | u64::from(generation));
            cmd.arg("worker")
                .args(["--db", &self.db, "--owner", &name])
                .arg("--workers")
                .arg(self.args.workers.to_string())
                .arg("--journal")
                .arg(self.dir.join("journals").join(format!("{name}.jsonl")))
                .args(["--seed", &seed.to_string()])
                .args(["--ttl-ms", &self.args.ttl_ms.to_string()])
                .args(["--fenced-ttl-ms", &self.args.fenced_ttl_ms.to_string()])
                .args(["--resource-ttl-ms", &self.args.resource_ttl_ms.to_string()])
                .args(["--shards", &self.args.processes.max(2).to_string()])
                .args(["--until-ms", &self.until_ms.to_string()]);
            if self.args.fenced_results {
                cmd.arg("--fenced-results");
            }
        } else {
            cmd.arg("cleaner").args(["--db", &self.db, "--id", &name]);
        }
        let child = cmd
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| ChaosError::Setup(format!("cannot start {name}: {e}")))?;
        Ok(Proc {
            role,
            index,
            generation,
            child,
        })
    }

    fn fault(&self, kind: &str, target: Option<String>, detail: Option<String>) {
        println!(
            "  fault: {kind} {} {}",
            target.as_deref().unwrap_or(""),
            detail.as_deref().unwrap_or("")
        );
        let record = FaultRecord {
            at: now_micros(),
            kind: kind.into(),
            target,
            detail,
        };
        if let Err(e) = self.faults.append(&record) {
            eprintln!("seqlease-chaos: cannot record fault: {e}");
        }
    }

    /// Start a new generation of any process that exited on its own before the end.
    fn reap(&mut self, procs: &mut [Proc]) -> Result<(), ChaosError> {
        for p in procs.iter_mut() {
            if let Ok(Some(status)) = p.child.try_wait() {
                let name = p.name();
                self.notes.push(format!(
                    "process {name} exited on its own with {status} before the end (see logs/{name}.log)"
                ));
                *p = self.spawn(p.role, p.index, p.generation + 1)?;
            }
        }
        Ok(())
    }
}

fn signal(child: &Child, sig: &str) -> Result<(), ChaosError> {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .map_err(|e| ChaosError::Setup(format!("kill -{sig}: {e}")))?;
    if !status.success() {
        return Err(ChaosError::Setup(format!(
            "kill -{sig} {} failed",
            child.id()
        )));
    }
    Ok(())
}

/// Wait for a child to exit, at most `bound`; SIGKILL it after that. `true` if it exited.
async fn wait_child(child: &mut Child, bound: Duration) -> bool {
    let deadline = Instant::now() + bound;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The PostgreSQL side of a run: the cluster and the proxy in front of it.
struct Pg {
    cluster: Arc<Cluster>,
    proxy: Proxy,
}

async fn run_store(
    kind: &str,
    args: &RunArgs,
    dir: &Path,
    seed: u64,
) -> Result<Finished, ChaosError> {
    println!("seqlease-chaos: {kind} run in {}", dir.display());
    let (direct, worker_db, pg) = if kind == "postgres" {
        let cluster = tokio::task::spawn_blocking(Cluster::start)
            .await
            .map_err(|e| ChaosError::Setup(e.to_string()))?
            .map_err(ChaosError::Setup)?;
        let proxy = Proxy::start(([127, 0, 0, 1], cluster.port()).into()).await?;
        let worker_db = format!("postgres://postgres@127.0.0.1:{}/postgres", proxy.port());
        let direct = cluster.url();
        let pg = Pg {
            cluster: Arc::new(cluster),
            proxy,
        };
        (direct, worker_db, Some(pg))
    } else {
        let db = format!("sqlite://{}", dir.join("chaos.db").display());
        (db.clone(), db, None)
    };
    let manifest = Manifest {
        store: kind.into(),
        db: direct.clone(),
        duration_s: args.duration().as_secs(),
        processes: args.processes,
        workers: args.workers,
        seed,
    };
    let path = check::manifest_path(dir);
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&manifest).map_err(ChaosError::json)?,
    )
    .map_err(|e| ChaosError::io(&path, e))?;

    let engine = store::engine(
        &direct,
        store::config("chaos-orchestrator", Duration::from_secs(5)),
    )
    .await?;
    let space = engine.space(SPACE).await?;
    let takeover = engine.lease_keeper("chaos-takeover").await?;

    let started = Instant::now();
    let duration = args.duration();
    let mut o = Orchestra {
        args,
        dir,
        exe: std::env::current_exe()
            .map_err(|e| ChaosError::Setup(format!("own executable: {e}")))?,
        db: worker_db,
        until_ms: now_micros() / 1000 + duration.as_millis() as i64,
        seed,
        faults: Journal::open(&dir.join("faults.jsonl"))?,
        notes: Vec::new(),
    };
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn(sample_watermark(
        space.clone(),
        Journal::open(&dir.join("watermark.jsonl"))?,
        sampling.clone(),
    ));

    let mut cleaners = (0..args.cleaners.max(1))
        .map(|i| o.spawn('c', i, 0))
        .collect::<Result<Vec<_>, _>>()?;
    let mut workers = (0..args.processes.max(1))
        .map(|i| o.spawn('p', i, 0))
        .collect::<Result<Vec<_>, _>>()?;

    let mut rng = StdRng::seed_from_u64(seed ^ kind.len() as u64);
    let mut kinds = vec!["sigkill", "sigstop", "cleaner_kill"];
    if pg.is_some() {
        kinds.extend(["pg_restart", "connections_cut"]);
    }
    let mut first_round = kinds.clone();
    first_round.shuffle(&mut rng);
    let every = args.fault_every_ms.max(200);
    loop {
        let pause = Duration::from_millis(rng.random_range(every / 2..every * 3 / 2));
        // Leave the last seconds of the run free of faults that need time to play out.
        if started.elapsed() + pause + args.pause() + Duration::from_secs(1) >= duration {
            break;
        }
        tokio::time::sleep(pause).await;
        o.reap(&mut workers)?;
        o.reap(&mut cleaners)?;
        let fault = first_round.pop().unwrap_or_else(|| {
            // sigkill, sigstop and the connection faults twice as often as the others.
            let weighted: Vec<&str> = kinds
                .iter()
                .flat_map(|k| match *k {
                    "sigkill" | "sigstop" | "connections_cut" => vec![*k, *k],
                    _ => vec![*k],
                })
                .collect();
            weighted[rng.random_range(0..weighted.len())]
        });
        match fault {
            "sigkill" => {
                let i = rng.random_range(0..workers.len());
                let p = &mut workers[i];
                let name = p.name();
                let _ = p.child.kill();
                let _ = p.child.wait();
                o.fault("sigkill", Some(name), None);
                tokio::time::sleep(Duration::from_millis(rng.random_range(300..1000))).await;
                let (index, generation) = (workers[i].index, workers[i].generation + 1);
                workers[i] = o.spawn('p', index, generation)?;
            }
            "sigstop" => {
                // Prefer a process that holds a resource now: its zombie has a fence to meet.
                let leases = engine
                    .store()
                    .resource_leases(&ResourceQuery::Active)
                    .await
                    .unwrap_or_default();
                let holding: Vec<usize> = (0..workers.len())
                    .filter(|&i| {
                        let prefix = format!("{}w", workers[i].name());
                        leases.iter().any(|l| l.holder.starts_with(&prefix))
                    })
                    .collect();
                let i = if holding.is_empty() {
                    rng.random_range(0..workers.len())
                } else {
                    holding[rng.random_range(0..holding.len())]
                };
                let name = workers[i].name();
                let agent_prefix = format!("{name}w");
                let held: Vec<String> = leases
                    .into_iter()
                    .filter(|l| l.holder.starts_with(&agent_prefix))
                    .map(|l| l.resource)
                    .collect();
                signal(&workers[i].child, "STOP")?;
                let stopped = Instant::now();
                // Bounded: a process paused inside a store transaction holds its row locks
                // (PostgreSQL) or the write lock (SQLite), and the takeover waits on them.
                // The process must be continued whatever happens here.
                let taken = tokio::time::timeout(
                    args.pause().saturating_sub(Duration::from_millis(100)),
                    take_over(&takeover, &held, args.resource_ttl_ms),
                )
                .await
                .unwrap_or_else(|_| vec![("blocked by the paused process's locks".into(), 0)]);
                tokio::time::sleep(args.pause().saturating_sub(stopped.elapsed())).await;
                signal(&workers[i].child, "CONT")?;
                o.fault(
                    "sigstop",
                    Some(name),
                    Some(format!(
                        "paused {} ms; held {held:?}, taken over {taken:?}",
                        stopped.elapsed().as_millis()
                    )),
                );
            }
            "cleaner_kill" => {
                // Kill it when there is something to recover: mid-recovery, as far as an
                // outside observer can tell.
                let wait_until = Instant::now() + Duration::from_secs(3);
                let mut backlog = 0;
                while Instant::now() < wait_until {
                    backlog = engine
                        .store()
                        .expired_backlog()
                        .await
                        .map(|b| b.iter().map(|(_, n)| n).sum::<u64>())
                        .unwrap_or(0);
                    if backlog > 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let i = rng.random_range(0..cleaners.len());
                let name = cleaners[i].name();
                let _ = cleaners[i].child.kill();
                let _ = cleaners[i].child.wait();
                o.fault(
                    "cleaner_kill",
                    Some(name),
                    Some(format!("expired backlog {backlog} at the kill")),
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
                let (index, generation) = (cleaners[i].index, cleaners[i].generation + 1);
                cleaners[i] = o.spawn('c', index, generation)?;
            }
            "pg_restart" => {
                let Some(pg) = &pg else { continue };
                let mode = if rng.random_bool(0.5) {
                    StopMode::Fast
                } else {
                    StopMode::Immediate
                };
                o.fault("pg_restart", None, Some(format!("{mode:?}")));
                let cluster = pg.cluster.clone();
                tokio::task::spawn_blocking(move || cluster.restart(mode))
                    .await
                    .map_err(|e| ChaosError::Setup(e.to_string()))?
                    .map_err(ChaosError::Setup)?;
            }
            "connections_cut" => {
                let Some(pg) = &pg else { continue };
                let n = pg.proxy.cut_all();
                o.fault("connections_cut", None, Some(format!("{n} connections")));
            }
            _ => {}
        }
    }

    // The workers stop by themselves at the end time.
    println!("seqlease-chaos: fault phase over; waiting for the workers to finish");
    let left = Duration::from_millis((o.until_ms - now_micros() / 1000).max(0) as u64);
    for p in &mut workers {
        let name = p.name();
        if !wait_child(&mut p.child, left + Duration::from_secs(60)).await {
            o.notes.push(format!(
                "worker {name} did not stop at the end time; killed"
            ));
        } else if let Ok(Some(status)) = p.child.try_wait()
            && !status.success()
        {
            o.notes.push(format!(
                "worker {name} exited with {status} (see logs/{name}.log)"
            ));
        }
    }
    // Every slot must resolve with the cleaners running (I10).
    let drain_bound = Duration::from_millis(args.fenced_ttl_ms) + Duration::from_secs(60);
    let drained = drain(&space, drain_bound).await;
    if let Err(info) = &drained {
        o.notes.push(format!(
            "I10: slots still unresolved {drain_bound:?} after the workers stopped: {info}"
        ));
    }
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    for c in &mut cleaners {
        let _ = signal(&c.child, "TERM");
        wait_child(&mut c.child, Duration::from_secs(20)).await;
    }
    let _ = takeover.shutdown().await;
    drop(engine);
    // The cluster stays up for the checker.
    Ok(Finished {
        notes: o.notes,
        cluster: pg.map(|pg| pg.cluster),
    })
}

/// What a store's run leaves for the check.
struct Finished {
    /// Things that went wrong with the processes themselves.
    notes: Vec<String>,
    /// The PostgreSQL cluster, to stop once checked.
    cluster: Option<Arc<Cluster>>,
}

async fn take_over(
    keeper: &seqlease::LeaseKeeper,
    held: &[String],
    resource_ttl_ms: u64,
) -> Vec<(String, u64)> {
    // Wait until the paused holder's resource leases have run out, then take them.
    tokio::time::sleep(Duration::from_millis(resource_ttl_ms + 300)).await;
    let mut taken = Vec::new();
    for resource in held {
        let acquire = Acquire::new(resource)
            .ttl(Duration::from_secs(1))
            .wait(Duration::from_millis(500));
        match keeper.acquire(acquire).await {
            Ok(lease) => {
                taken.push((resource.clone(), lease.epoch));
                let _ = keeper.release(resource).await;
            }
            // Another worker took it first: the epoch moved on all the same.
            Err(e) => tracing::info!(%resource, error = %e, "takeover not needed or failed"),
        }
    }
    taken
}

async fn sample_watermark(space: Space, journal: Journal, running: Arc<AtomicBool>) {
    while running.load(Ordering::Relaxed) {
        if let Ok(Some(info)) = space.engine().store().space_info(space.name()).await {
            let sample = WatermarkSample {
                at: now_micros(),
                watermark: info.watermark,
            };
            if let Err(e) = journal.append(&sample) {
                eprintln!("seqlease-chaos: cannot record a watermark sample: {e}");
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait until every slot is resolved; `Err` with the space's counters after `bound`.
async fn drain(space: &Space, bound: Duration) -> Result<(), String> {
    let deadline = Instant::now() + bound;
    loop {
        let info = space.engine().store().space_info(space.name()).await;
        if let Ok(Some(info)) = &info
            && info.watermark == info.last_seq
            && info.in_flight == 0
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("{info:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
