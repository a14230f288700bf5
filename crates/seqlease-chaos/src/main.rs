//! `seqlease-chaos`: the fault-injection harness (see the library docs and
//! docs/fault-injection.md). This file only parses arguments and sets the exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use seqlease_chaos::{check, cleaner, run, summary, worker};

#[derive(Parser)]
#[command(
    name = "seqlease-chaos",
    about = "Fault injection for seqlease: kill, pause, cut off and restart, then check every guarantee"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Orchestrate a run on each store, check it and print the summary table.
    Run(run::RunArgs),
    /// A worker process (started by `run`).
    Worker(worker::WorkerArgs),
    /// A cleaner process (started by `run`).
    Cleaner(cleaner::CleanerArgs),
    /// Check one store's run directory (e.g. `<run dir>/sqlite`) again.
    Check {
        /// The store's run directory.
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("seqlease-chaos: cannot start a runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Cmd::Run(args) => run::run(args)
                .await
                .map(|s| s.iter().all(|s| s.violations.is_empty())),
            Cmd::Worker(args) => worker::run(args).await.map(|()| true),
            Cmd::Cleaner(args) => cleaner::run(args).await.map(|()| true),
            Cmd::Check { dir } => check::check(&dir).await.map(|s| {
                for v in &s.violations {
                    println!("VIOLATION: {v}");
                }
                println!("{}", summary::table(std::slice::from_ref(&s)));
                s.violations.is_empty()
            }),
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("seqlease-chaos: guarantees violated (see above)");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("seqlease-chaos: {e}");
            ExitCode::from(2)
        }
    }
}
