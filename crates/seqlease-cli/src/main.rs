//! `seqlease`: the operator CLI. A thin binary over the library: it parses arguments,
//! opens the store named by `--db`, calls the engine and prints.

mod bench;
mod bench_recovery;
mod consumers;
mod demo;
mod process_cpu;
mod progress;
mod recovery;
mod status;

use clap::{Parser, Subcommand};

// The engine allocates a few small strings and records per lease; mimalloc serves them
// from per-thread pages instead of glibc's arenas (measured in docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sequence-leasing projection engine: run the demo, benchmark a store, inspect spaces.
#[derive(Parser, Debug)]
#[command(name = "seqlease", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Workers turn a synthetic event stream into operations through leases while a reader
    /// follows the ordered log; ends by verifying the log. Exit status 0 only if verified.
    Demo(demo::Args),
    /// End-to-end load: grant→commit cycles with N concurrent workers.
    Bench(bench::Args),
    /// Recovery latency: expiry→resolution of abandoned leases, and a cascade's drain time.
    BenchRecovery(bench_recovery::Args),
    /// Show every space: allocated seqs, watermark, in-flight leases, capacity.
    Status(status::Args),
    /// The recovery queue: list parked work, retry it, or resolve it as a gap.
    Recovery(recovery::Args),
    /// Run the cleanup service (expired leases become recovered work or gaps).
    Cleanup(recovery::CleanupArgs),
    /// List consumers: checkpoint, watermark, lag, whether they hold back retention.
    Consumers(consumers::ListArgs),
    /// Act on one consumer: reset its checkpoint (replay), remove it. Audited.
    Consumer(consumers::ConsumerArgs),
    /// Delete entries below a seq (retention). Refused above the watermark or above a
    /// retaining consumer's checkpoint; audited with the actor.
    Prune(consumers::PruneArgs),
    /// Replay speed: a consumer rebuilds from seq 1 into a no-op apply (median of runs).
    BenchReplay(consumers::BenchReplayArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SEQLEASE_LOG")
                // Warnings, and the schema upgrade a store announces before a long wait.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new("warn,seqlease::migrate=info")
                }),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo(args) => demo::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::BenchRecovery(args) => bench_recovery::run(args).await,
            Command::Status(args) => status::run(args).await,
            Command::Recovery(args) => recovery::run(args).await,
            Command::Cleanup(args) => recovery::cleanup(args).await,
            Command::Consumers(args) => consumers::list(args).await,
            Command::Consumer(args) => consumers::consumer(args).await,
            Command::Prune(args) => consumers::prune(args).await,
            Command::BenchReplay(args) => consumers::bench_replay(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
