//! Criterion benchmarks of the hot path: one grant→commit cycle through the engine, per store.
//!
//! End-to-end throughput under concurrency is measured by `seqlease bench` (see
//! docs/benchmarks.md); these isolate the per-cycle cost of one worker, so regressions in the
//! engine or a store show up as a change in a single number.
//!
//! Run: `cargo bench --bench hot_path` (add `SEQLEASE_BENCH_PG=postgres://…` for the
//! PostgreSQL keeper figure).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use seqlease::{Acquire, Engine, Grant, OperationBody, Space, SpaceConfig};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

async fn space(url: &str) -> Space {
    let engine = Engine::open(url).await.expect("engine");
    engine
        .space_with(
            "bench",
            SpaceConfig {
                capacity: 1_000_000,
            },
        )
        .await
        .expect("space")
}

fn cycle(c: &mut Criterion, name: &str, url: String) {
    let rt = runtime();
    let space = rt.block_on(space(&url));
    let n = Arc::new(AtomicU64::new(0));
    let payload = vec![b'x'; 64];
    c.bench_function(name, |b| {
        b.to_async(&rt).iter(|| {
            let (space, n, payload) = (space.clone(), n.clone(), payload.clone());
            async move {
                let i = n.fetch_add(1, Ordering::Relaxed);
                let mut lease = space
                    .grant(Grant::new(format!("op-{i}"), "bench"))
                    .await
                    .expect("grant");
                lease
                    .commit(OperationBody::new("bench", payload))
                    .await
                    .expect("commit")
            }
        })
    });
}

/// `ensure` of a held resource lease: answered from the keeper's local cache.
fn keeper_ensure(c: &mut Criterion) {
    let rt = runtime();
    let keeper = rt.block_on(async {
        let engine = Engine::open("memory").await.expect("engine");
        let keeper = engine.lease_keeper("bench").await.expect("keeper");
        keeper
            .acquire(Acquire::new("orders-0"))
            .await
            .expect("acquire");
        keeper
    });
    c.bench_function("keeper_ensure/held", |b| {
        b.iter(|| keeper.ensure("orders-0").expect("held"))
    });
    c.bench_function("keeper_validate/held", |b| {
        b.iter(|| keeper.validate("orders-0", 1))
    });
}

/// One renewal cycle of 1,000 held resource leases: one batched store call.
fn keeper_renew_1000(c: &mut Criterion, name: &str, url: String) {
    let rt = runtime();
    let keeper = rt.block_on(async {
        let engine = Engine::open(&url).await.expect("engine");
        let keeper = engine.lease_keeper("bench").await.expect("keeper");
        for i in 0..1000 {
            keeper
                .acquire(Acquire::new(format!("shard-{i}")))
                .await
                .expect("acquire");
        }
        keeper
    });
    c.bench_function(name, |b| {
        b.to_async(&rt).iter(|| {
            let keeper = keeper.clone();
            async move { assert_eq!(keeper.renew_now().await.expect("renew"), 1000) }
        })
    });
}

fn benches(c: &mut Criterion) {
    keeper_ensure(c);
    keeper_renew_1000(c, "keeper_renew_1000/memory", "memory".into());
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("keeper.db").display());
    keeper_renew_1000(c, "keeper_renew_1000/sqlite", url);
    // PostgreSQL needs a server: SEQLEASE_BENCH_PG=postgres://… to include it.
    if let Ok(url) = std::env::var("SEQLEASE_BENCH_PG") {
        keeper_renew_1000(c, "keeper_renew_1000/postgres", url);
    }
    cycle(c, "grant_commit_cycle/memory", "memory".into());
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    cycle(c, "grant_commit_cycle/sqlite", url);
}

criterion_group! {
    name = hot_path;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = benches
}
criterion_main!(hot_path);
