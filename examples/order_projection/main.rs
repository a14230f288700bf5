//! An order-management read model in SQLite, fed through seqlease by synthetic events whose
//! bulk updates are exploded into concrete order ids, with crashes injected into the
//! workers; it ends by rebuilding the read model from the log and checking that both are
//! identical (exit status 1 if not). See docs/example.md.
//!
//! ```sh
//! cargo run --release --example order_projection -- --events 5000 --seed 7
//! ```

mod app;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str =
    "usage: order_projection [--events N] [--seed S] [--db PATH] [--ttl-ms MS] [--stalls N]

  --events N   synthetic events to feed (default 2000)
  --seed S     seed of the event stream and of the injected faults (default 42)
  --db PATH    SQLite file to create (default: a file in a temporary directory);
               refused if it exists
  --ttl-ms MS  lease TTL of the workers (default 1000)
  --stalls N   workers that freeze past their TTL (default 3)";

fn parse(args: impl Iterator<Item = String>) -> Result<app::Config, String> {
    let mut config = app::Config::default();
    let mut args = args.peekable();
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|e| format!("{flag} {v}: not a number ({e})"))
        };
        match flag.as_str() {
            "--events" => config.events = number(&value)?,
            "--seed" => config.seed = number(&value)?,
            "--db" => config.db = Some(PathBuf::from(value)),
            "--ttl-ms" => config.ttl = Duration::from_millis(number(&value)?),
            "--stalls" => config.stalls = number(&value)?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(config)
}

fn main() -> ExitCode {
    let config = match parse(std::env::args().skip(1)) {
        Ok(config) => config,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("order_projection: {message}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    app::quiet_injected_panics();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("order_projection: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::run(&config)) {
        Ok(summary) if summary.identical() => ExitCode::SUCCESS,
        Ok(_) => {
            eprintln!("order_projection: the rebuilt read model differs from the live one");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("order_projection: {e}");
            ExitCode::FAILURE
        }
    }
}
