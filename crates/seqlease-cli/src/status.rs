//! `seqlease status`: what is in the store.

use seqlease::{DEFAULT_URL, Engine, SqliteStore};

/// Arguments of `seqlease status`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The store: memory, sqlite://PATH, postgres://USER@HOST/DB.
    #[arg(long, env = "SEQLEASE_DB", default_value = DEFAULT_URL)]
    db: String,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    if args.db.trim().starts_with("sqlite:") {
        let path = SqliteStore::file_of_url(args.db.trim())?;
        // Opening creates a missing file; for a status query a typo must not look like an
        // empty store.
        anyhow::ensure!(
            path.exists(),
            "no database at {}: check --db (run `seqlease demo --db {}` to create one)",
            path.display(),
            args.db
        );
    }
    let engine = Engine::open(&args.db).await?;
    let spaces = engine.spaces().await?;
    if args.json {
        let list: Vec<_> = spaces
            .iter()
            .map(|s| {
                serde_json::json!({
                    "space": s.name.as_str(), "last_seq": s.last_seq, "watermark": s.watermark,
                    "pending": s.last_seq - s.watermark, "in_flight": s.in_flight, "capacity": s.capacity,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({ "store": engine.store().backend(), "spaces": list })
        );
        return Ok(std::process::ExitCode::SUCCESS);
    }
    println!(
        "{:<40} {:>12} {:>12} {:>10} {:>10} {:>10}",
        "SPACE", "LAST SEQ", "WATERMARK", "PENDING", "IN FLIGHT", "CAPACITY"
    );
    for s in &spaces {
        println!(
            "{:<40} {:>12} {:>12} {:>10} {:>10} {:>10}",
            s.name.as_str(),
            s.last_seq,
            s.watermark,
            s.last_seq - s.watermark,
            s.in_flight,
            s.capacity
        );
    }
    if spaces.is_empty() {
        println!("(no spaces yet)");
    }
    Ok(std::process::ExitCode::SUCCESS)
}
