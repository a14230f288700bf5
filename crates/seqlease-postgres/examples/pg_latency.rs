//! Cross-process latency figures of the PostgreSQL store (docs/postgres.md):
//!
//! - `wake`: this process commits slots one at a time; a second process (this binary again)
//!   follows the log with a reader whose fallback re-read is an hour away, so only
//!   LISTEN/NOTIFY wakes it. Reported: commit acknowledged here → reader woken there
//!   (both read CLOCK_REALTIME on the same machine), p50/p99/max.
//! - `kill`: a child process takes leases with a 30 s TTL and is killed with SIGKILL;
//!   reported: kill → this process sees every one of those leases expired, per round.
//!
//! ```text
//! cargo run --release -p seqlease-postgres --example pg_latency -- wake postgres://postgres@127.0.0.1/bench 2000
//! cargo run --release -p seqlease-postgres --example pg_latency -- kill postgres://postgres@127.0.0.1/bench 20
//! ```

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use seqlease::core::Store;
use seqlease::{Engine, EngineConfig, Grant, OperationBody, PgOptions, PgStore};

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn opts(schema: &str) -> PgOptions {
    PgOptions {
        schema: Some(schema.to_string()),
        ..PgOptions::default()
    }
}

async fn engine(url: &str, schema: &str, owner: &str) -> Engine {
    let store = PgStore::connect(url, opts(schema)).await.expect("connect");
    Engine::builder()
        .store(Arc::new(store))
        .config(EngineConfig {
            owner: owner.into(),
            external_poll_interval: Duration::from_secs(3600),
            ..EngineConfig::default()
        })
        .build()
        .await
        .expect("engine")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("wake");
    let url = args
        .get(2)
        .cloned()
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let n: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let schema = std::env::var("PG_LATENCY_SCHEMA")
        .unwrap_or_else(|_| format!("lat_{}", std::process::id()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match mode {
        "wake" => rt.block_on(wake(&url, &schema, n)),
        "reader" => rt.block_on(reader(&url, &schema, n)),
        "kill" => rt.block_on(kill(&url, &schema, n)),
        "holder" => rt.block_on(holder(&url, &schema, n)),
        other => panic!("unknown mode {other}: wake | kill"),
    }
}

fn child(mode: &str, url: &str, schema: &str, n: usize) -> std::process::Child {
    Command::new(std::env::current_exe().expect("own executable"))
        .args([mode, url, &n.to_string()])
        .env("PG_LATENCY_SCHEMA", schema)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child")
}

fn report(name: &str, h: &Histogram<u64>) {
    println!(
        "{name}: n={} p50={:.2} ms p90={:.2} ms p99={:.2} ms max={:.2} ms",
        h.len(),
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.9) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
}

/// Commit `n` slots one by one, 5 ms apart, while a reader process follows.
async fn wake(url: &str, schema: &str, n: usize) {
    let e = engine(url, schema, "committer").await;
    let space = e.space("wake").await.expect("space");
    let mut reader = child("reader", url, schema, n);
    let mut lines = BufReader::new(reader.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().expect("reader ready").expect("line"), "ready");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut acked = Vec::with_capacity(n);
    for i in 0..n {
        let mut l = space
            .grant(Grant::new(format!("op-{i}"), "t"))
            .await
            .expect("grant");
        l.commit(OperationBody::new("update", vec![1]))
            .await
            .expect("commit");
        acked.push(unix_micros());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut h = Histogram::<u64>::new(3).expect("histogram");
    for line in lines {
        let line = line.expect("line");
        let mut parts = line.split(' ');
        let (Some(seq), Some(woken)) = (parts.next(), parts.next()) else {
            continue;
        };
        let (seq, woken): (usize, u64) = (seq.parse().expect("seq"), woken.parse().expect("t"));
        h.record(woken.saturating_sub(acked[seq - 1]).max(1))
            .expect("record");
    }
    reader.wait().expect("reader exit");
    report(
        "commit acknowledged in one process -> reader woken in another",
        &h,
    );
}

async fn reader(url: &str, schema: &str, n: usize) {
    let e = engine(url, schema, "reader").await;
    let space = e.space("wake").await.expect("space");
    let mut r = space.reader(1);
    println!("ready");
    let mut out = std::io::stdout().lock();
    for _ in 0..n {
        let entry = tokio::time::timeout(Duration::from_secs(30), r.next())
            .await
            .expect("woken")
            .expect("entry");
        writeln!(out, "{} {}", entry.seq, unix_micros()).expect("stdout");
    }
}

/// `rounds` times: a child takes leases (TTL 30 s) and is SIGKILLed; time until expired.
async fn kill(url: &str, schema: &str, rounds: usize) {
    let store = PgStore::connect(url, opts(schema)).await.expect("connect");
    let mut h = Histogram::<u64>::new(3).expect("histogram");
    for round in 0..rounds {
        let mut c = child("holder", url, schema, round);
        let mut lines = BufReader::new(c.stdout.take().expect("stdout")).lines();
        let seqs: Vec<u64> = lines
            .next()
            .expect("holder ready")
            .expect("line")
            .split(' ')
            .map(|s| s.parse().expect("seq"))
            .collect();
        c.kill().expect("SIGKILL");
        let killed = Instant::now();
        c.wait().expect("reap");
        let space = seqlease::SpaceName::new("kill").expect("name");
        loop {
            let now = store.now().await.expect("now");
            let mut live = 0;
            for &seq in &seqs {
                let v = store.slot(&space, seq).await.expect("slot").expect("slot");
                if v.lease.expires_at > now {
                    live += 1;
                }
            }
            if live == 0 {
                break;
            }
            assert!(killed.elapsed() < Duration::from_secs(60), "never expired");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        h.record(killed.elapsed().as_micros() as u64)
            .expect("record");
    }
    report(
        "SIGKILL -> leases seen expired (TTL 30 s, probe every 250 ms)",
        &h,
    );
}

async fn holder(url: &str, schema: &str, round: usize) {
    let e = engine(url, schema, &format!("holder-{round}")).await;
    let space = e.space("kill").await.expect("space");
    let mut seqs = Vec::new();
    for i in 0..4 {
        let l = space
            .grant(Grant::new(format!("r{round}-{i}"), "t").ttl(Duration::from_secs(30)))
            .await
            .expect("grant");
        seqs.push(l.seq().to_string());
        std::mem::forget(l);
    }
    println!("{}", seqs.join(" "));
    std::io::stdout().flush().expect("flush");
    futures::future::pending::<()>().await;
}
