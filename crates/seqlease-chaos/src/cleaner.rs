//! A cleaner process: the cleanup service, and nothing else, until it is told to stop.
//!
//! Cleaners run in their own processes so the orchestrator can kill one in the middle of a
//! recovery: its claims must expire and another cleaner must take the slots over without
//! resolving any of them twice. Lease history is kept (no retention) because the checker
//! reads it.

use std::time::Duration;

use seqlease::cleanup::CleanupConfig;

use crate::{ChaosError, store};

/// The settings of one cleaner process (the `cleaner` subcommand's flags).
#[derive(Clone, Debug, clap::Args)]
pub struct CleanerArgs {
    /// The store (`sqlite://PATH` or `postgres://…`).
    #[arg(long)]
    pub db: String,
    /// This cleaner's id (`c<n>g<generation>`).
    #[arg(long)]
    pub id: String,
    /// Pause between cleanup cycles, ms.
    #[arg(long, default_value_t = 200)]
    pub interval_ms: u64,
    /// How long a claim holds before another cleaner may take the slots over, ms.
    #[arg(long, default_value_t = 2000)]
    pub claim_ttl_ms: u64,
}

/// Run the cleanup service until SIGTERM or Ctrl-C.
pub async fn run(args: CleanerArgs) -> Result<(), ChaosError> {
    let engine = store::engine(&args.db, store::config(&args.id, Duration::from_secs(5))).await?;
    let config = CleanupConfig {
        interval: Duration::from_millis(args.interval_ms),
        claim_ttl: Duration::from_millis(args.claim_ttl_ms),
        batch_size: 100,
        cleaner: args.id.clone(),
        history_retention: None,
        maintenance_interval: Duration::from_secs(1),
        ..CleanupConfig::default()
    };
    let cleanup = store::with_retry(
        "starting the cleanup service",
        Duration::from_secs(60),
        || engine.cleanup().config(config.clone()).build(),
    )
    .await?;
    let handle = cleanup.start();
    wait_for_stop().await;
    handle.stop().await;
    Ok(())
}

async fn wait_for_stop() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
