//! A worker process: several worker tasks leasing, committing and journaling.
//!
//! Each task loops until the run's end time, picking at random (from its own seeded
//! generator) one of:
//!
//! | share | what | what the journal says |
//! |---|---|---|
//! | 60 % | grant, sometimes record the result first, work a few ms, commit | `recorded`, then `committed` at the seq (or `rejected`, `ambiguous`) |
//! | 20 % | acquire a shared resource (`shard-<k>`) and do a few fenced grant-work-commit rounds with its epoch, without re-checking the lease between rounds (as a worker that was paused would) | `acquired`, then `committed` with the epoch, or `rejected: stale_epoch` |
//! | 10 % | commit again an operation id this task already committed | `duplicate` with the seq the store points at |
//! | 5 % | grant and release | nothing |
//! | 5 % | grant, record the result and walk away (a crash that recovery must finish) | `recorded`, `abandoned` |
//!
//! A store error (the server restarting, a connection cut by the proxy) is retried with
//! backoff. A commit is retried with the same lease: if the first attempt did commit, the
//! retry answers `AlreadyCommitted`, so an acknowledgement is never doubled; if the retries
//! run out the outcome is journaled as `ambiguous` and the checker accepts either.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use seqlease::{
    Acquire, CommitStatus, Engine, Error, Grant, Lease, LeaseError, LeaseKeeper, OperationBody,
    Space,
};

use crate::journal::{Journal, Kind, Line, now_micros};
use crate::{ChaosError, SPACE, store};

/// The settings of one worker process (the `worker` subcommand's flags).
#[derive(Clone, Debug, clap::Args)]
pub struct WorkerArgs {
    /// The store (`sqlite://PATH` or `postgres://…`).
    #[arg(long)]
    pub db: String,
    /// This process's engine owner (`p<n>g<generation>`).
    #[arg(long)]
    pub owner: String,
    /// Worker tasks in this process.
    #[arg(long, default_value_t = 3)]
    pub workers: u32,
    /// The journal file.
    #[arg(long)]
    pub journal: std::path::PathBuf,
    /// Seed of the tasks' choices.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// TTL of ordinary sequence leases, ms.
    #[arg(long, default_value_t = 2000)]
    pub ttl_ms: u64,
    /// TTL of fenced sequence leases, ms (longer than a pause, so a zombie's commit meets
    /// the fence, not the TTL).
    #[arg(long, default_value_t = 6000)]
    pub fenced_ttl_ms: u64,
    /// TTL of resource leases, ms.
    #[arg(long, default_value_t = 1500)]
    pub resource_ttl_ms: u64,
    /// Shared resources (`shard-0` …) the tasks compete for.
    #[arg(long, default_value_t = 3)]
    pub shards: u32,
    /// Also record results under fenced leases (exercises recovery of fenced work).
    #[arg(long)]
    pub fenced_results: bool,
    /// Stop at this wall-clock time (ms since the Unix epoch).
    #[arg(long)]
    pub until_ms: i64,
}

struct Ctx {
    args: WorkerArgs,
    engine: Engine,
    space: Space,
    journal: Journal,
}

/// How long a commit is retried through store errors before it is called ambiguous.
const COMMIT_PATIENCE: Duration = Duration::from_secs(30);

/// Run a worker process to the end time.
pub async fn run(args: WorkerArgs) -> Result<(), ChaosError> {
    let journal = Journal::open(&args.journal)?;
    let ttl = Duration::from_millis(args.ttl_ms);
    let engine = store::engine(&args.db, store::config(&args.owner, ttl)).await?;
    let space = store::with_retry("opening the space", Duration::from_secs(60), || {
        engine.space(SPACE)
    })
    .await?;
    let ctx = Arc::new(Ctx {
        args,
        engine,
        space,
        journal,
    });
    let mut tasks = Vec::new();
    for w in 0..ctx.args.workers {
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move { task(ctx, w).await }));
    }
    for t in tasks {
        t.await
            .map_err(|e| ChaosError::Setup(format!("worker task panicked: {e}")))??;
    }
    Ok(())
}

fn ended(ctx: &Ctx) -> bool {
    now_micros() / 1000 >= ctx.args.until_ms
}

async fn task(ctx: Arc<Ctx>, w: u32) -> Result<(), ChaosError> {
    let mut rng = StdRng::seed_from_u64(ctx.args.seed ^ (u64::from(w) << 40) ^ 0x9e37_79b9);
    let agent = format!("{}w{w}", ctx.args.owner);
    let keeper = store::with_retry("starting the lease keeper", Duration::from_secs(60), || {
        ctx.engine.lease_keeper(&agent)
    })
    .await?;
    let mut committed: Vec<(String, u64)> = Vec::new();
    let mut n = 0u64;
    while !ended(&ctx) {
        n += 1;
        let op = format!("{}w{w}n{n}", ctx.args.owner);
        let roll = rng.random_range(0..100);
        match roll {
            0..60 => plain(&ctx, w, &op, &mut rng, &mut committed).await?,
            60..80 => fenced(&ctx, w, &op, &keeper, &mut rng, &mut committed).await?,
            80..90 => duplicate(&ctx, w, &mut rng, &committed).await?,
            90..95 => {
                if let Some(lease) = grant(&ctx, w, Grant::new(op, "plain")).await? {
                    let _ = lease.release(Some("chaos: released".into())).await;
                }
            }
            _ => abandon(&ctx, w, &op).await?,
        }
    }
    let _ = keeper.shutdown().await;
    Ok(())
}

fn body(op: &str) -> OperationBody {
    OperationBody::new("update", format!("{{\"op\":\"{op}\"}}").into_bytes())
}

/// The stable name of a refusal, for the journal.
fn reason(e: &LeaseError) -> &'static str {
    match e {
        LeaseError::StaleEpoch { .. } => "stale_epoch",
        LeaseError::Expired { .. } => "expired",
        LeaseError::Resolved { .. } => "resolved",
        LeaseError::WrongToken { .. } => "wrong_token",
        LeaseError::UnknownSlot { .. } => "unknown_slot",
        LeaseError::AtCapacity { .. } => "at_capacity",
        _ => "other",
    }
}

/// Grant with retries through store errors and full capacity. `None` when the run ended
/// first; a refusal (a stale fence) is journaled and returned as `None` too.
async fn grant(ctx: &Ctx, w: u32, grant: Grant) -> Result<Option<Lease>, ChaosError> {
    let mut backoff = Duration::from_millis(50);
    loop {
        match ctx.space.grant(grant.clone()).await {
            Ok(lease) => return Ok(Some(lease)),
            Err(Error::Lease(e)) if !matches!(e, LeaseError::AtCapacity { .. }) => {
                let mut line = Line::new(&ctx.args.owner, w, Kind::Rejected);
                if let LeaseError::StaleEpoch {
                    resource,
                    attempted,
                    ..
                } = &e
                {
                    line.resource = Some(resource.clone());
                    line.epoch = Some(*attempted);
                }
                line.reason = Some(reason(&e).into());
                line.during = Some("grant".into());
                ctx.journal.append(&line)?;
                return Ok(None);
            }
            Err(Error::Invalid(e)) => return Err(ChaosError::Setup(e.to_string())),
            Err(e) => {
                if ended(ctx) {
                    return Ok(None);
                }
                tracing::warn!(error = %e, ?backoff, "grant failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// What a commit came to.
enum Committed {
    /// Acknowledged: the operation lives at this seq (`Some(slot)`: a duplicate, the
    /// lease's own slot was superseded).
    Acked(u64, Option<u64>),
    /// Refused (journaled).
    Rejected,
    /// Unknown (journaled).
    Ambiguous,
}

/// Commit with retries through store errors; journal the answer.
async fn commit(
    ctx: &Ctx,
    w: u32,
    lease: &mut Lease,
    fence: Option<(&str, u64)>,
) -> Result<Committed, ChaosError> {
    let op = lease.operation_id().to_string();
    let seq = lease.seq();
    let started = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(50);
    let mut line = Line::new(&ctx.args.owner, w, Kind::Committed);
    line.op = Some(op.clone());
    line.seq = Some(seq);
    if let Some((resource, epoch)) = fence {
        line.resource = Some(resource.to_string());
        line.epoch = Some(epoch);
    }
    let result = loop {
        match lease.commit(body(&op)).await {
            Ok(outcome) => {
                line.at = now_micros();
                line.seq = Some(outcome.seq);
                if let CommitStatus::Duplicate { slot } = outcome.status {
                    line.kind = Kind::Duplicate;
                    line.slot = Some(slot);
                    break Committed::Acked(outcome.seq, Some(slot));
                }
                break Committed::Acked(outcome.seq, None);
            }
            Err(Error::Lease(e)) => {
                line.at = now_micros();
                line.kind = Kind::Rejected;
                line.reason = Some(reason(&e).into());
                line.during = Some("commit".into());
                break Committed::Rejected;
            }
            Err(e) if started.elapsed() < COMMIT_PATIENCE => {
                tracing::warn!(%op, seq, error = %e, ?backoff, "commit failed; retrying with the same lease");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            Err(e) => {
                line.at = now_micros();
                line.kind = Kind::Ambiguous;
                line.reason = Some(e.to_string());
                break Committed::Ambiguous;
            }
        }
    };
    ctx.journal.append(&line)?;
    Ok(result)
}

async fn record(ctx: &Ctx, w: u32, lease: &mut Lease) -> Result<bool, ChaosError> {
    let op = lease.operation_id().to_string();
    match lease.record_result(body(&op)).await {
        Ok(()) => {
            let mut line = Line::new(&ctx.args.owner, w, Kind::Recorded);
            line.op = Some(op);
            line.seq = Some(lease.seq());
            ctx.journal.append(&line)?;
            Ok(true)
        }
        Err(e) => {
            // Not acknowledged: recovery may or may not find it; nothing to check.
            tracing::warn!(error = %e, "recording the result failed");
            Ok(false)
        }
    }
}

async fn work(rng: &mut StdRng, ms: std::ops::Range<u64>) {
    tokio::time::sleep(Duration::from_millis(rng.random_range(ms))).await;
}

async fn plain(
    ctx: &Ctx,
    w: u32,
    op: &str,
    rng: &mut StdRng,
    committed: &mut Vec<(String, u64)>,
) -> Result<(), ChaosError> {
    let Some(mut lease) = grant(ctx, w, Grant::new(op, "plain")).await? else {
        return Ok(());
    };
    if rng.random_bool(0.3) {
        record(ctx, w, &mut lease).await?;
    }
    work(rng, 2..20).await;
    if let Committed::Acked(seq, None) = commit(ctx, w, &mut lease, None).await? {
        committed.push((op.to_string(), seq));
    }
    Ok(())
}

async fn fenced(
    ctx: &Ctx,
    w: u32,
    op: &str,
    keeper: &LeaseKeeper,
    rng: &mut StdRng,
    committed: &mut Vec<(String, u64)>,
) -> Result<(), ChaosError> {
    let resource = format!("shard-{}", rng.random_range(0..ctx.args.shards));
    let ttl = Duration::from_millis(ctx.args.resource_ttl_ms);
    let epoch = match keeper.acquire(Acquire::new(&resource).ttl(ttl)).await {
        Ok(held) => held.epoch,
        Err(Error::Lease(LeaseError::ResourceHeld { .. })) => {
            return plain(ctx, w, op, rng, committed).await;
        }
        Err(e) => {
            tracing::warn!(%resource, error = %e, "acquire failed");
            tokio::time::sleep(Duration::from_millis(100)).await;
            return Ok(());
        }
    };
    let mut line = Line::new(&ctx.args.owner, w, Kind::Acquired);
    line.resource = Some(resource.clone());
    line.epoch = Some(epoch);
    ctx.journal.append(&line)?;
    let fenced_ttl = Duration::from_millis(ctx.args.fenced_ttl_ms);
    // The epoch is checked once, here; a worker paused between rounds keeps using it and
    // only the store's fence stops it.
    for round in 0..rng.random_range(2..6) {
        let op = format!("{op}f{round}");
        let g = Grant::new(&op, "fenced")
            .ttl(fenced_ttl)
            .fence(&resource, epoch);
        let Some(mut lease) = grant(ctx, w, g).await? else {
            break;
        };
        if ctx.args.fenced_results && rng.random_bool(0.5) {
            record(ctx, w, &mut lease).await?;
        }
        work(rng, 10..60).await;
        match commit(ctx, w, &mut lease, Some((&resource, epoch))).await? {
            Committed::Acked(seq, None) => committed.push((op, seq)),
            Committed::Acked(..) => {}
            Committed::Rejected | Committed::Ambiguous => break,
        }
        if ended(ctx) {
            break;
        }
    }
    let _ = keeper.release(&resource).await;
    Ok(())
}

async fn duplicate(
    ctx: &Ctx,
    w: u32,
    rng: &mut StdRng,
    committed: &[(String, u64)],
) -> Result<(), ChaosError> {
    if committed.is_empty() {
        return Ok(());
    }
    let (op, _) = &committed[rng.random_range(0..committed.len())];
    let Some(mut lease) = grant(ctx, w, Grant::new(op, "plain")).await? else {
        return Ok(());
    };
    commit(ctx, w, &mut lease, None).await?;
    Ok(())
}

async fn abandon(ctx: &Ctx, w: u32, op: &str) -> Result<(), ChaosError> {
    let Some(mut lease) = grant(ctx, w, Grant::new(op, "plain")).await? else {
        return Ok(());
    };
    if record(ctx, w, &mut lease).await? {
        let mut line = Line::new(&ctx.args.owner, w, Kind::Abandoned);
        line.op = Some(op.to_string());
        line.seq = Some(lease.seq());
        ctx.journal.append(&line)?;
        lease.abandon();
    }
    Ok(())
}
