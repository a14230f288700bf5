//! The write thread's life, and its checkpoint thread's: each open store has one of each,
//! `close()` ends them, and so does dropping the last clone of a store that was never
//! closed (no leaked threads).
//!
//! Threads are counted by name in `/proc/self/task` (Linux), so this file holds a single
//! test: no other test's stores run in its process.
#![cfg(target_os = "linux")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use seqlease_core::{ManualClock, Reply, SpaceConfig, SpaceName, Store, StoreError};
use seqlease_sqlite::{SqliteOptions, SqliteStore};
use support::grant;

/// Threads of this process named `name` (Linux keeps the first 15 bytes).
fn threads(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task lists this process's threads")
        .filter_map(Result::ok)
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.trim_end() == &name[..name.len().min(15)])
        })
        .count()
}

/// (write threads, checkpoint threads).
fn store_threads() -> (usize, usize) {
    (threads("sqlite-writer"), threads("sqlite-checkpoint"))
}

/// Wait until `expected` stores' threads are left: a thread ends just after it
/// acknowledged the close or saw its channel close. Generous bound, no timing assertion.
async fn until_threads(expected: usize) {
    for _ in 0..1000 {
        if store_threads() == (expected, expected) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "expected {expected} sqlite write and checkpoint threads, found {:?}",
        store_threads()
    );
}

#[tokio::test]
async fn close_and_drop_end_the_write_thread() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let path = dir.path().join("threads.db");
    let options = || SqliteOptions {
        clock: Arc::new(ManualClock::new()),
        ..SqliteOptions::default()
    };
    assert_eq!(store_threads(), (0, 0));
    let a = SqliteStore::open(&path, options()).await.expect("open a");
    let b = SqliteStore::open(&path, options()).await.expect("open b");
    // A new thread shows its parent's name until it sets its own: wait for the names.
    until_threads(2).await; // one write and one checkpoint thread per open store

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
    assert_eq!(store_threads(), (1, 1), "a clone keeps the store open");
    drop(clone);
    until_threads(0).await;
}
