//! The write thread's life: each open store has one, `close()` ends it, and so does
//! dropping the last clone of a store that was never closed (no leaked threads).
//!
//! Threads are counted by name in `/proc/self/task` (Linux), so this file holds a single
//! test: no other test's stores run in its process.
#![cfg(target_os = "linux")]

use std::sync::Arc;
use std::time::Duration;

use seqlease_core::{
    Command, GrantRequest, ManualClock, Reply, SpaceConfig, SpaceName, Store, StoreError,
};
use seqlease_sqlite::{SqliteOptions, SqliteStore};

/// Threads of this process named like the store's write thread.
fn write_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task lists this process's threads")
        .filter_map(Result::ok)
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.trim_end() == "sqlite-writer")
        })
        .count()
}

/// Wait until `expected` write threads are left: a thread ends just after it acknowledged
/// the close or saw its channel close. Generous bound, no timing assertion.
async fn until_threads(expected: usize) {
    for _ in 0..1000 {
        if write_threads() == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "expected {expected} sqlite write threads, found {}",
        write_threads()
    );
}

fn grant(space: &SpaceName, op: &str) -> Command {
    Command::Grant(GrantRequest {
        space: space.clone(),
        operation_id: op.to_string(),
        projection_type: "t".to_string(),
        owner: "w".to_string(),
        ttl: Duration::from_secs(30),
        fence: None,
    })
}

#[tokio::test]
async fn close_and_drop_end_the_write_thread() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let path = dir.path().join("threads.db");
    let options = || SqliteOptions {
        clock: Arc::new(ManualClock::new()),
        ..SqliteOptions::default()
    };
    assert_eq!(write_threads(), 0);
    let a = SqliteStore::open(&path, options()).await.expect("open a");
    let b = SqliteStore::open(&path, options()).await.expect("open b");
    assert_eq!(write_threads(), 2, "one write thread per open store");

    let space = SpaceName::new("threads").expect("name");
    a.ensure_space(&space, &SpaceConfig { capacity: 10 })
        .await
        .expect("space");

    // close() lets a batch already sent finish, then ends the thread.
    let batch = {
        let (a, space) = (a.clone(), space.clone());
        tokio::spawn(async move { a.execute(vec![grant(&space, "before-close")]).await })
    };
    tokio::task::yield_now().await;
    a.close().await;
    match batch.await.expect("batch task") {
        Ok(out) => assert!(matches!(out.replies[0], Ok(Reply::Granted(_)))),
        // The batch lost the race with close() and was never sent.
        Err(e) => assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}"),
    }
    until_threads(1).await;
    let err = a.execute(vec![grant(&space, "after")]).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    a.close().await; // a second close is harmless

    // Dropping every clone of a store that was never closed ends its thread too.
    let clone = b.clone();
    let out = clone
        .execute(vec![grant(&space, "from-b")])
        .await
        .expect("b still writes");
    assert!(matches!(out.replies[0], Ok(Reply::Granted(_))));
    drop(b);
    assert_eq!(write_threads(), 1, "a clone keeps the store open");
    drop(clone);
    until_threads(0).await;
}
