//! `seqlease bench-recovery`: how long after its expiry an abandoned lease is resolved, and
//! how fast a cascade drains.
//!
//! Workers grant leases at a steady rate and abandon them (as crashed workers would; every
//! other one with a recorded result, so recovery has work to commit). The cleanup service
//! runs at `--interval`. Each slot's delay is `resolved_at − expires_at`, both read from the
//! store's clock, so the figure is free of client clock effects. Then a cascade: `--cascade`
//! leases expire at once and one cleanup cycle resolves them; its duration is reported.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use seqlease::cleanup::CleanupConfig;
use seqlease::{DEFAULT_URL, Engine, Grant, OperationBody, SpaceConfig};
use serde_json::json;

/// Arguments of `seqlease bench-recovery`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The store: memory, sqlite://PATH, postgres://USER@HOST/DB.
    #[arg(long, env = "SEQLEASE_DB", default_value = DEFAULT_URL)]
    db: String,
    /// Leases to abandon for the expiry→resolution measurement.
    #[arg(long, default_value_t = 600)]
    leases: u64,
    /// Their TTL, seconds.
    #[arg(long, default_value_t = 30.0)]
    ttl: f64,
    /// Cleanup interval, seconds.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Seconds over which the leases are granted (spreads their expiries).
    #[arg(long, default_value_t = 10.0)]
    spread: f64,
    /// Slots the cleanup service claims and resolves per store transaction.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Expired leases in the cascade measurement (0: skip it).
    #[arg(long, default_value_t = 10_000)]
    cascade: u64,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    for (name, v) in [
        ("--ttl", args.ttl),
        ("--interval", args.interval),
        ("--spread", args.spread),
    ] {
        anyhow::ensure!(
            v.is_finite() && v > 0.0 && v <= 3600.0,
            "{name} must be in (0, 3600] seconds"
        );
    }
    let engine = Engine::builder()
        .url(&args.db)
        .owner("bench-recovery")
        .build()
        .await?;
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let capacity = (args.leases + args.cascade).max(1) as u32 + 100;
    let space = engine
        .space_with(&format!("bench-recovery-{ms}"), SpaceConfig { capacity })
        .await?;
    let config = CleanupConfig {
        interval: Duration::from_secs_f64(args.interval),
        ..CleanupConfig::default()
    };
    let cleanup = engine.cleanup().config(config.clone()).build().await?;

    // 1. Expiry → resolution under a running service.
    let ttl = Duration::from_secs_f64(args.ttl);
    let handle = cleanup.start();
    let gap = Duration::from_secs_f64(args.spread) / args.leases.max(1) as u32;
    eprintln!(
        "bench-recovery: abandoning {} leases (TTL {:.1} s) over {:.1} s; cleanup every {:.1} s",
        args.leases, args.ttl, args.spread, args.interval
    );
    let mut expiries = Vec::with_capacity(args.leases as usize);
    for i in 0..args.leases {
        let mut lease = space
            .grant(Grant::new(format!("abandoned-{i}"), "bench").ttl(ttl))
            .await?;
        if i % 2 == 0 {
            lease
                .record_result(OperationBody::new("bench", b"recovered".to_vec()))
                .await?;
        }
        expiries.push((lease.seq(), lease.expires_at()));
        lease.abandon();
        tokio::time::sleep(gap).await;
    }
    let last = expiries.last().map_or(0, |(seq, _)| *seq);
    let waited = space
        .wait_for(
            last,
            ttl + Duration::from_secs_f64(args.interval * 5.0) + Duration::from_secs(60),
        )
        .await;
    handle.stop().await;
    waited?;
    let mut delay = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let entries = engine
        .store()
        .read(space.name(), 1, expiries.len() + 10)
        .await?;
    for ((seq, expires_at), entry) in expiries.iter().zip(&entries) {
        anyhow::ensure!(entry.seq == *seq, "log and leases out of step at seq {seq}");
        delay.saturating_record(entry.resolved_at.since(*expires_at).as_micros() as u64);
    }

    // 2. A cascade: many leases expire at once; one cycle resolves them.
    let mut cascade_ms = None;
    if args.cascade > 0 {
        eprintln!("bench-recovery: cascade of {} expired leases", args.cascade);
        let short = Duration::from_millis(200);
        let mut left = args.cascade;
        while left > 0 {
            let n = left.min(1000);
            let grants = (0..n)
                .map(|i| Grant::new(format!("cascade-{left}-{i}"), "bench").ttl(short))
                .collect();
            for lease in space.grant_many(grants).await? {
                lease?.abandon();
            }
            left -= n;
        }
        tokio::time::sleep(short + Duration::from_millis(50)).await;
        let started = Instant::now();
        let mut resolved = 0;
        while resolved < args.cascade {
            let report = cleanup.run_once().await?;
            resolved += report.recovered_total() + report.gapped + report.duplicates;
            if report.claimed == 0 {
                break;
            }
        }
        cascade_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            resolved >= args.cascade,
            "cascade: only {resolved} of {} resolved",
            args.cascade
        );
    }

    let summary = json!({
        "store": engine.store().backend(),
        "leases": args.leases,
        "ttl_s": args.ttl,
        "interval_s": args.interval,
        "expiry_to_resolution_ms": {
            "p50": delay.value_at_quantile(0.5) as f64 / 1000.0,
            "p99": delay.value_at_quantile(0.99) as f64 / 1000.0,
            "max": delay.max() as f64 / 1000.0,
        },
        "cascade": args.cascade,
        "cascade_resolved_ms": cascade_ms.map(|ms| (ms * 10.0).round() / 10.0),
    });
    if args.json {
        println!("{summary}");
    } else {
        println!("store                      {}", summary["store"]);
        println!(
            "expiry → resolution (ms)   {}",
            summary["expiry_to_resolution_ms"]
        );
        println!(
            "cascade of {:<6}           {} ms",
            args.cascade, summary["cascade_resolved_ms"]
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}
