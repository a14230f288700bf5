//! `seqlease consumers`, `seqlease consumer reset|remove`, `seqlease prune` and
//! `seqlease bench-replay`: consumers, their lag, retention and replay speed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use seqlease::core::{Command, GrantRequest, LeaseKey, Reply};
use seqlease::{DEFAULT_URL, Engine, Entry, OperationBody, SpaceConfig};
use serde_json::json;

use crate::progress::Ticker;

/// Arguments of `seqlease consumers`.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// The store: memory, sqlite://PATH, postgres://USER@HOST/DB.
    #[arg(long, env = "SEQLEASE_DB", default_value = DEFAULT_URL)]
    db: String,
    /// Only this space.
    #[arg(long)]
    space: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub async fn list(args: ListArgs) -> anyhow::Result<std::process::ExitCode> {
    let engine = Engine::open(&args.db).await?;
    let consumers = match &args.space {
        Some(space) => existing_space(&engine, space).await?.consumers().await?,
        None => engine.consumers().await?,
    };
    if args.json {
        let list: Vec<_> = consumers
            .iter()
            .map(|c| {
                json!({
                    "space": c.space.as_str(), "consumer": c.name, "checkpoint": c.checkpoint,
                    "watermark": c.watermark, "lag": c.lag(), "retain": c.retain,
                    "updated_at_us": c.updated_at.as_micros(),
                })
            })
            .collect();
        println!("{}", json!({ "consumers": list }));
        return Ok(std::process::ExitCode::SUCCESS);
    }
    println!(
        "{:<32} {:<32} {:>12} {:>12} {:>10} {:>7}",
        "SPACE", "CONSUMER", "CHECKPOINT", "WATERMARK", "LAG", "RETAIN"
    );
    for c in &consumers {
        println!(
            "{:<32} {:<32} {:>12} {:>12} {:>10} {:>7}",
            c.space.as_str(),
            c.name,
            c.checkpoint,
            c.watermark,
            c.lag(),
            if c.retain { "yes" } else { "no" }
        );
    }
    if consumers.is_empty() {
        println!("(no consumers)");
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Arguments of `seqlease consumer`.
#[derive(clap::Args, Debug)]
pub struct ConsumerArgs {
    #[command(subcommand)]
    action: ConsumerAction,
}

#[derive(clap::Subcommand, Debug)]
enum ConsumerAction {
    /// Move a consumer's checkpoint (0: replay everything on its next run). Audited.
    Reset {
        /// The store.
        #[arg(long, env = "SEQLEASE_DB", default_value = DEFAULT_URL)]
        db: String,
        /// The space.
        #[arg(long)]
        space: String,
        /// The consumer.
        #[arg(long)]
        name: String,
        /// The new checkpoint: the consumer next reads `to + 1`.
        #[arg(long, default_value_t = 0)]
        to: u64,
        /// Who asks (kept in the retention history).
        #[arg(long)]
        actor: String,
    },
    /// Remove a consumer, so it no longer holds back pruning. Audited.
    Remove {
        /// The store.
        #[arg(long, env = "SEQLEASE_DB", default_value = DEFAULT_URL)]
        db: String,
        /// The space.
        #[arg(long)]
        space: String,
        /// The consumer.
        #[arg(long)]
        name: String,
        /// Who asks.
        #[arg(long)]
        actor: String,
    },
}

pub async fn consumer(args: ConsumerArgs) -> anyhow::Result<std::process::ExitCode> {
    match args.action {
        ConsumerAction::Reset {
            db,
            space,
            name,
            to,
            actor,
        } => {
            let engine = Engine::open(&db).await?;
            let space = existing_space(&engine, &space).await?;
            let before = existing(&space, &name).await?;
            let after = engine
                .store()
                .reset_consumer(space.name(), &name, to, &actor)
                .await?;
            println!(
                "consumer {name} of {}: checkpoint {} -> {} (lag {}), reset by {actor}",
                space.name(),
                before.checkpoint,
                after.checkpoint,
                after.lag()
            );
        }
        ConsumerAction::Remove {
            db,
            space,
            name,
            actor,
        } => {
            let engine = Engine::open(&db).await?;
            let space = existing_space(&engine, &space).await?;
            let removed = engine
                .store()
                .remove_consumer(space.name(), &name, &actor)
                .await?;
            println!(
                "consumer {name} of {} removed by {actor} (its checkpoint was {})",
                space.name(),
                removed.checkpoint
            );
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// The space an operator named, which must exist: these commands never create one.
async fn existing_space(engine: &Engine, name: &str) -> anyhow::Result<seqlease::Space> {
    engine.existing_space(name).await?.ok_or_else(|| {
        anyhow::anyhow!(
            "space {name} does not exist in this store; `seqlease status` lists its spaces (is --db the store you meant?)"
        )
    })
}

async fn existing(space: &seqlease::Space, name: &str) -> anyhow::Result<seqlease::ConsumerState> {
    space
        .engine()
        .store()
        .consumer(space.name(), name)
        .await?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "consumer {name} of space {} does not exist; list them with `seqlease consumers`",
                space.name()
            )
        })
}

/// Arguments of `seqlease prune`.
#[derive(clap::Args, Debug)]
pub struct PruneArgs {
    /// The store.
    #[arg(long, env = "SEQLEASE_DB", default_value = DEFAULT_URL)]
    db: String,
    /// The space.
    #[arg(long)]
    space: String,
    /// Delete entries with seq < BELOW (refused above the watermark or above a retaining
    /// consumer's checkpoint).
    #[arg(long)]
    below: u64,
    /// Who asks (kept in the retention history).
    #[arg(long)]
    actor: String,
    /// Print the retention history of the space afterwards.
    #[arg(long)]
    history: bool,
}

pub async fn prune(args: PruneArgs) -> anyhow::Result<std::process::ExitCode> {
    let engine = Engine::open(&args.db).await?;
    let space = existing_space(&engine, &args.space).await?;
    let started = Instant::now();
    let event = space.prune(args.below, &args.actor).await?;
    println!(
        "pruned {} entries of {} (entries 1..={} are gone) by {} in {:.1?}",
        event.entries,
        space.name(),
        event.to,
        event.actor,
        started.elapsed()
    );
    if args.history {
        for e in space.retention_history().await? {
            println!(
                "{}  {:<17} {:<24} {:>10} -> {:<10} entries {:<8} by {}",
                e.at,
                e.kind.as_str(),
                e.consumer.as_deref().unwrap_or("-"),
                e.from,
                e.to,
                e.entries,
                e.actor
            );
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Arguments of `seqlease bench-replay`.
#[derive(clap::Args, Debug)]
pub struct BenchReplayArgs {
    /// The store (the figure the issue asks for is on sqlite://PATH).
    #[arg(long, env = "SEQLEASE_DB", default_value = DEFAULT_URL)]
    db: String,
    /// Entries in the log; appended first when the space holds fewer.
    #[arg(long, default_value_t = 1_000_000)]
    entries: u64,
    /// Entries per consumer batch (one read and one checkpoint each).
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// Replays; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Payload bytes per operation.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

const BENCH_SPACE: &str = "bench-replay";

/// Append committed entries until the space holds `entries`, in store batches of 512 grants
/// then 512 commits (no engine round trips per entry: this is setup, not the figure).
async fn fill(engine: &Engine, entries: u64, payload: usize) -> anyhow::Result<()> {
    let space = engine
        .space_with(BENCH_SPACE, SpaceConfig { capacity: 100_000 })
        .await?;
    let mut have = space.info().await?.last_seq;
    let filled = Arc::new(AtomicU64::new(have));
    let _ticker = (have < entries).then(|| {
        let filled = filled.clone();
        Ticker::start(Duration::from_secs(2), move || {
            let n = filled.load(Ordering::Relaxed);
            format!("filling {BENCH_SPACE}: {n} of {entries} entries")
        })
    });
    let body = OperationBody::new("update", vec![b'x'; payload]);
    while have < entries {
        let n = (entries - have).min(512);
        let grants = (0..n)
            .map(|i| {
                Command::Grant(GrantRequest {
                    space: space.name().clone(),
                    operation_id: format!("op-{}", have + i + 1),
                    projection_type: "bench".into(),
                    owner: "bench-replay".into(),
                    ttl: Duration::from_secs(60),
                    fence: None,
                })
            })
            .collect();
        let outcome = engine.store().execute(grants).await?;
        let mut commits = Vec::with_capacity(n as usize);
        for reply in outcome.replies {
            let Reply::Granted(lease) = reply? else {
                anyhow::bail!("the store answered a grant with something else");
            };
            commits.push(Command::Commit {
                key: LeaseKey {
                    space: lease.space,
                    seq: lease.seq,
                    token: lease.token,
                },
                body: body.clone(),
            });
        }
        for reply in engine.store().execute(commits).await?.replies {
            reply?;
        }
        have += n;
        filled.store(have, Ordering::Relaxed);
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub async fn bench_replay(args: BenchReplayArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::ensure!(args.runs >= 1 && args.batch >= 1 && args.entries >= 1);
    let engine = Engine::open(&args.db).await?;
    fill(&engine, args.entries, args.payload).await?;
    let space = engine.space(BENCH_SPACE).await?;
    let total = space.info().await?.watermark;
    let mut consumer = space
        .consumer("bench-replay")
        .batch_size(args.batch)
        .retain(false)
        .open()
        .await?;
    let (mut replay, mut raw) = (Vec::new(), Vec::new());
    for run in 0..args.runs {
        // Baseline: the bare reads, same batch size, no consumer bookkeeping.
        let started = Instant::now();
        let mut from = 1;
        let mut n = 0u64;
        loop {
            let page = engine.store().read(space.name(), from, args.batch).await?;
            let Some(last) = page.last() else { break };
            from = last.seq + 1;
            n += page.len() as u64;
        }
        raw.push(n as f64 / started.elapsed().as_secs_f64());

        // The figure: a consumer rebuild (reset to 0, replay, checkpoint per batch) into a
        // no-op apply.
        let started = Instant::now();
        let report = consumer
            .rebuild(
                0,
                "bench-replay",
                async |_: &Entry| Ok::<(), std::convert::Infallible>(()),
                |_| {},
            )
            .await?;
        let secs = started.elapsed().as_secs_f64();
        replay.push(report.applied as f64 / secs);
        if !args.json {
            eprintln!(
                "run {}: consumer {:.0} entries/s ({} entries in {:.2}s), bare reads {:.0} entries/s",
                run + 1,
                replay[run],
                report.applied,
                secs,
                raw[run]
            );
        }
    }
    let (replay, raw) = (median(replay), median(raw));
    if args.json {
        println!(
            "{}",
            json!({
                "store": engine.store().backend(), "entries": total, "batch": args.batch,
                "runs": args.runs, "replay_entries_per_s": replay, "bare_read_entries_per_s": raw,
                "ratio_to_bare_reads": replay / raw, "payload": args.payload,
                "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            })
        );
    } else {
        println!(
            "replay of {total} entries from {} (batch {}): median {:.0} entries/s; bare reads {:.0} entries/s; ratio {:.2}",
            engine.store().backend(),
            args.batch,
            replay,
            raw,
            replay / raw
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}
