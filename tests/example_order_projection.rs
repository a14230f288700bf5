//! Runs the order-projection example (examples/order_projection, docs/example.md) small,
//! so `cargo test` checks it: a read model built live while workers crash, stall and are
//! retried must equal the one rebuilt from the log, and the comparison must notice when
//! they differ.
//!
//! The example's core is compiled into this test from its own file. It uses real time: its
//! frozen workers stop renewing 1 s leases that the cleanup service then recovers (the
//! waiting lives in the example; this file only waits for the run to finish). No assertion
//! depends on timing: the faults come from the seeded plan, and every recovery path ends in
//! the same comparison.

#[path = "../examples/order_projection/app.rs"]
mod app;

use std::time::Duration;

fn small(db: std::path::PathBuf) -> app::Config {
    app::Config {
        events: 300,
        seed: 7,
        db: Some(db),
        ttl: Duration::from_secs(1),
        stalls: 3,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilt_read_model_equals_the_live_one_despite_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orders.db");
    app::quiet_injected_panics();
    let s = app::run(&small(path.clone())).await.unwrap();

    assert!(
        s.identical(),
        "rebuilt read model differs: {:?}",
        s.comparison
    );
    assert!(s.comparison.rows.0 > 50, "too few orders: {s:?}");

    // Every slot is accounted for: an operation or an explained gap.
    let gaps: u64 = s.gaps.values().map(|(n, _)| n).sum();
    assert_eq!(s.committed + gaps, s.slots, "{s:?}");
    assert!(s.fed > s.events, "the plan redelivers some events: {s:?}");

    // The injected faults happened, and each took its path.
    assert!(
        s.run.panicked > 0 && s.run.retries > 0 && s.run.failed > 0,
        "{s:?}"
    );
    assert!(
        s.run.duplicates > 0,
        "redelivered events are superseded: {s:?}"
    );
    let released = &s.gaps["released"];
    assert!(
        released.0 > 0 && released.1.contains(app::INJECTED),
        "{s:?}"
    );
    assert!(s.gaps["superseded"].0 > 0, "{s:?}");
    // Checkpointed ids finished by the resolver (handler crashed after its checkpoint, or a
    // frozen worker's partial work), a frozen worker's recorded result, and one frozen
    // worker's late work re-sequenced or found committed.
    assert!(
        s.recovered.get("partial_work").copied().unwrap_or(0) >= 1,
        "{s:?}"
    );
    assert_eq!(s.frozen.len(), 3, "{s:?}");
    assert!(s.bulk_updates.0 > 0, "{s:?}");

    // The comparison notices a difference: corrupt one rebuilt row.
    let conn = seqlease::rusqlite::Connection::open(&path).unwrap();
    let changed = conn
        .execute(
            "UPDATE orders_rebuilt SET status = 'lost' \
             WHERE id = (SELECT min(id) FROM orders_rebuilt)",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    let c = app::compare(&path).unwrap();
    assert!(!c.identical());
    assert_eq!(c.mismatches, 1);
    assert!(c.first.unwrap().contains("lost"));
}

#[tokio::test]
async fn refuses_an_existing_database_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orders.db");
    std::fs::write(&path, b"not mine").unwrap();
    let err = app::run(&small(path.clone())).await.unwrap_err();
    assert!(err.to_string().contains("exists"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"not mine");
}
