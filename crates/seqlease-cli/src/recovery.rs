//! `seqlease recovery` and `seqlease cleanup`: the operator's side of recovery.
//!
//! `recovery list` shows the recovery queue (work that recovery parked instead of dropping);
//! `recovery retry ID` sends a manual item back to automatic recovery; `recovery
//! resolve-as-gap ID` gives up on an item: its slot stays the gap it already is and the
//! parked work is discarded. Every action records the operator (`--actor`, default `$USER`).
//! `cleanup` runs the cleanup service: one cycle with `--once`, or until Ctrl-C.

use std::time::Duration;

use seqlease::cleanup::{CleanupConfig, CycleReport, LoadLevel};
use seqlease::core::{ParkedAction, ParkedCommand, ParkedQuery, ParkedState, Reply};
use seqlease::{DEFAULT_URL, Engine, SpaceName};
use serde_json::json;

/// Arguments of `seqlease recovery`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The store: memory, sqlite://PATH, postgres://USER@HOST/DB.
    #[arg(long, env = "SEQLEASE_DB", default_value = DEFAULT_URL, global = true)]
    db: String,
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// List the recovery queue, oldest first.
    List {
        /// Only this space.
        #[arg(long)]
        space: Option<String>,
        /// Only items in this state: parked, manual, resequenced, discarded.
        #[arg(long)]
        state: Option<String>,
        /// Most items.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Send a manual item back to automatic recovery.
    Retry {
        /// Queue id.
        id: u64,
        /// Who does it (recorded with the item).
        #[arg(long, env = "USER", default_value = "operator")]
        actor: String,
    },
    /// Give up on an item: its slot stays a gap, the parked work is discarded.
    ResolveAsGap {
        /// Queue id.
        id: u64,
        /// Who does it (recorded with the item).
        #[arg(long, env = "USER", default_value = "operator")]
        actor: String,
    },
}

fn parse_state(s: &str) -> anyhow::Result<ParkedState> {
    Ok(match s {
        "parked" => ParkedState::Parked,
        "manual" => ParkedState::Manual,
        "resequenced" => ParkedState::Resequenced,
        "discarded" => ParkedState::Discarded,
        other => {
            anyhow::bail!("unknown state {other:?}: use parked, manual, resequenced or discarded")
        }
    })
}

pub async fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    let engine = Engine::open(&args.db).await?;
    let store = engine.store();
    match args.action {
        Action::List {
            space,
            state,
            limit,
            json,
        } => {
            let query = ParkedQuery {
                space: space.as_deref().map(SpaceName::new).transpose()?,
                states: state
                    .as_deref()
                    .map(parse_state)
                    .transpose()?
                    .into_iter()
                    .collect(),
                limit,
            };
            let items = store.parked(&query).await?;
            if !json {
                println!(
                    "{:>6} {:<12} {:<24} {:>10} {:<32} {:>8} NOTE",
                    "ID", "STATE", "SPACE", "SEQ", "OPERATION", "ATTEMPTS"
                );
            }
            for item in &items {
                if json {
                    println!(
                        "{}",
                        json!({
                            "id": item.id, "state": item.state.as_str(), "space": item.space.as_str(),
                            "original_seq": item.original_seq, "operation_id": item.operation_id,
                            "projection_type": item.projection_type, "attempts": item.attempts,
                            "has_partial": item.partial.is_some(), "has_result": item.result.is_some(),
                            "resequenced_at_seq": item.resequenced_at_seq, "note": item.note,
                        })
                    );
                } else {
                    println!(
                        "{:>6} {:<12} {:<24} {:>10} {:<32} {:>8} {}",
                        item.id,
                        item.state.as_str(),
                        item.space.as_str(),
                        item.original_seq,
                        item.operation_id,
                        item.attempts,
                        item.note.as_deref().unwrap_or("")
                    );
                }
            }
            if items.is_empty() && !json {
                println!("(the recovery queue is empty)");
            }
        }
        Action::Retry { id, actor } => settle(&engine, id, ParkedAction::Retry, actor).await?,
        Action::ResolveAsGap { id, actor } => {
            settle(&engine, id, ParkedAction::Discard, actor).await?
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn settle(
    engine: &Engine,
    id: u64,
    action: ParkedAction,
    actor: String,
) -> anyhow::Result<()> {
    let outcome = engine
        .store()
        .settle_parked(vec![ParkedCommand { id, action, actor }])
        .await?;
    match outcome.replies.into_iter().next() {
        Some(Ok(Reply::Parked(item))) => {
            println!(
                "item {id}: now {} ({})",
                item.state.as_str(),
                item.note.unwrap_or_default()
            );
            Ok(())
        }
        Some(Err(e)) => Err(e.into()),
        other => anyhow::bail!("unexpected answer from the store: {other:?}"),
    }
}

/// Arguments of `seqlease cleanup`.
#[derive(clap::Args, Debug)]
pub struct CleanupArgs {
    /// The store: memory, sqlite://PATH, postgres://USER@HOST/DB.
    #[arg(long, env = "SEQLEASE_DB", default_value = DEFAULT_URL)]
    db: String,
    /// Run one cycle, print what it did, and exit.
    #[arg(long)]
    once: bool,
    /// Seconds between cycles.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Spaces a cycle cleans side by side (1..=256; 1: one after another).
    #[arg(long, default_value_t = CleanupConfig::default().spaces_at_once)]
    spaces_at_once: usize,
    /// With `--once`: print the cycle's report as one JSON object.
    #[arg(long, requires = "once")]
    json: bool,
}

pub async fn cleanup(args: CleanupArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::ensure!(
        args.interval.is_finite() && args.interval > 0.0 && args.interval <= 3600.0,
        "--interval must be in (0, 3600] seconds"
    );
    anyhow::ensure!(
        (1..=256).contains(&args.spaces_at_once),
        "--spaces-at-once must be in 1..=256"
    );
    let engine = Engine::open(&args.db).await?;
    let config = CleanupConfig {
        interval: Duration::from_secs_f64(args.interval),
        spaces_at_once: args.spaces_at_once,
        ..CleanupConfig::default()
    };
    let cleanup = engine
        .cleanup()
        .config(config)
        // Running for hours, it says what it did, and stays quiet while nothing expires.
        .on_cycle(|report| {
            if report.did_work() {
                println!("{}", report_line(report));
            }
        })
        .build()
        .await?;
    if args.once {
        let report = cleanup.run_once().await?;
        if args.json {
            println!("{}", report_json(&report));
        } else {
            println!("{}", report_line(&report));
        }
        return Ok(std::process::ExitCode::SUCCESS);
    }
    eprintln!(
        "cleanup: running every {} s on {}; a line for each cycle that does something; Ctrl-C to stop",
        args.interval, args.db
    );
    let handle = cleanup.start();
    tokio::signal::ctrl_c().await?;
    handle.stop().await;
    Ok(std::process::ExitCode::SUCCESS)
}

/// One cycle's report for an operator: what was found, and what became of it.
fn report_line(report: &CycleReport) -> String {
    let recovered = report
        .recovered
        .iter()
        .map(|(step, n)| format!("{step} {n}"))
        .collect::<Vec<_>>();
    let recovered = if recovered.is_empty() {
        "0".to_owned()
    } else {
        format!("{} ({})", report.recovered_total(), recovered.join(", "))
    };
    format!(
        "cleanup: load {}{}; {} expired, {} claimed, {} recovered, {} gapped ({} with work \
         parked), {} superseded, {} claims lost; parked work: {} re-sequenced, {} failed \
         {}; {} resource leases expired; {} history events pruned; {} pauses",
        report.level.map_or("unknown", LoadLevel::as_str),
        if report.recovery_mode {
            ", recovery mode"
        } else {
            ""
        },
        report.backlog,
        report.claimed,
        recovered,
        report.gapped,
        report.parked,
        report.duplicates,
        report.claims_lost,
        report.resequenced,
        report.parked_failures,
        if report.parked_failures == 1 {
            "attempt"
        } else {
            "attempts"
        },
        report.resources_expired,
        report.history_pruned,
        report.pauses,
    )
}

fn report_json(report: &CycleReport) -> serde_json::Value {
    let recovered: serde_json::Map<String, serde_json::Value> = report
        .recovered
        .iter()
        .map(|(step, n)| ((*step).to_owned(), json!(n)))
        .collect();
    json!({
        "level": report.level.map(LoadLevel::as_str),
        "recovery_mode": report.recovery_mode,
        "backlog": report.backlog,
        "claimed": report.claimed,
        "recovered": recovered,
        "gapped": report.gapped,
        "parked": report.parked,
        "superseded": report.duplicates,
        "claims_lost": report.claims_lost,
        "resequenced": report.resequenced,
        "parked_failures": report.parked_failures,
        "resources_expired": report.resources_expired,
        "history_pruned": report.history_pruned,
        "pauses": report.pauses,
    })
}
