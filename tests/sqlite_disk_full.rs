//! A disk that fills up under the SQLite store. The store's files are held to a size limit
//! (`RLIMIT_FSIZE`, what `ulimit -f` sets: writes past it fail as on a full disk) until a
//! commit fails; then the limit is lifted. The failed batch must come back as a typed,
//! transient error that names the file, reads must go on, nothing acknowledged may be lost,
//! and once there is room again the same lease commits, new work goes on and the file is
//! intact.
//!
//! The limit is per process, so this file holds this one test: no other test shares the
//! process while its files are limited.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use seqlease::{
    CommitStatus, Engine, Error, Grant, OperationBody, SqliteOptions, SqliteStore, StoreError,
};

/// Let every file the process writes grow to `bytes` and no further (`RLIM_INFINITY`: no
/// limit). A write past the limit then fails with `EFBIG` instead of raising `SIGXFSZ`,
/// which would kill the process.
fn limit_file_size(bytes: libc::rlim_t) {
    // SAFETY: plain system calls on this process, with valid arguments.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut limit), 0);
        limit.rlim_cur = bytes.min(limit.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
    }
}

/// The size of the largest of the store's files (database, WAL, shared memory).
fn largest_file(db: &Path) -> u64 {
    ["", "-wal", "-shm"]
        .iter()
        .filter_map(|suffix| std::fs::metadata(format!("{}{suffix}", db.display())).ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0)
}

fn body(i: usize) -> OperationBody {
    // Large enough that the WAL reaches the limit in a few dozen commits.
    OperationBody::new("update", vec![b'a' + (i % 26) as u8; 16 * 1024])
}

async fn engine_on(path: &Path) -> (Arc<SqliteStore>, Engine) {
    let store = Arc::new(
        SqliteStore::open(path, SqliteOptions::default())
            .await
            .expect("open"),
    );
    let engine = Engine::builder()
        .store(store.clone())
        .build()
        .await
        .expect("engine");
    (store, engine)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_batch_keeps_what_was_acknowledged_and_heals() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let path = dir.path().join("full.db");
    let (store, engine) = engine_on(&path).await;
    let space = engine.space("disk").await.unwrap();
    // operation id -> seq, for every commit the store acknowledged.
    let mut acknowledged = BTreeMap::new();
    let mut next = 0;
    let mut commit_next = async |acknowledged: &mut BTreeMap<String, u64>| {
        let op = format!("op-{next}");
        next += 1;
        let mut lease = match space.grant(Grant::new(&op, "disk")).await {
            Ok(lease) => lease,
            Err(e) => return Err((None, e)),
        };
        match lease.commit(body(next)).await {
            Ok(outcome) => {
                acknowledged.insert(op, outcome.seq);
                Ok(())
            }
            Err(e) => Err((Some((op, lease)), e)),
        }
    };
    for _ in 0..8 {
        commit_next(&mut acknowledged).await.expect("room to spare");
    }

    limit_file_size(largest_file(&path) + 64 * 1024);
    let mut failure = None;
    for _ in 0..2_000 {
        if let Err(failed) = commit_next(&mut acknowledged).await {
            failure = Some(failed);
            break;
        }
    }
    let (failed_lease, error) = failure.expect("the store's files reached the limit");
    let message = error.to_string();
    assert!(
        matches!(&error, Error::Store(e @ StoreError::Unavailable { .. }) if e.is_transient()),
        "a full disk is a transient store error: {error:?}"
    );
    assert!(
        message.contains("full.db") && message.contains("rolled back"),
        "the error names the file and says what became of the batch: {message}"
    );
    // Reads need no room: everything acknowledged is there while the disk is full.
    let read = engine
        .store()
        .read(space.name(), 1, 10_000)
        .await
        .expect("reads go on while the disk is full");
    for seq in acknowledged.values() {
        assert!(read.iter().any(|e| e.seq == *seq), "I4: seq {seq} was lost");
    }

    limit_file_size(libc::RLIM_INFINITY);
    // Room again: the lease whose commit failed commits (its batch was rolled back, so it
    // is still LEASED), and new work goes on.
    if let Some((op, mut lease)) = failed_lease {
        let outcome = lease
            .commit(body(0))
            .await
            .expect("the failed commit succeeds once there is room");
        assert_eq!(outcome.status, CommitStatus::Committed);
        acknowledged.insert(op, outcome.seq);
    }
    for _ in 0..3 {
        commit_next(&mut acknowledged)
            .await
            .expect("new work once there is room");
    }
    let last = space.info().await.unwrap().last_seq;
    drop(space);
    drop(engine);
    store.close().await;

    // A fresh process finds the file intact and every acknowledged commit exactly once.
    let check = seqlease::rusqlite::Connection::open(&path).expect("open for the check");
    let verdict: String = check
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(verdict, "ok");
    drop(check);
    let (store, engine) = engine_on(&path).await;
    let space = engine.space("disk").await.unwrap();
    assert_eq!(
        space.wait_for(last, Duration::from_secs(60)).await.unwrap(),
        last,
        "every slot resolved (the grant whose batch failed left none behind)"
    );
    let log = engine.store().read(space.name(), 1, 10_000).await.unwrap();
    let committed: BTreeMap<String, u64> = log
        .iter()
        .filter_map(|e| e.operation().map(|op| (op.operation_id.clone(), e.seq)))
        .collect();
    assert_eq!(committed, acknowledged, "I4 and I6 across the full disk");
    drop(space);
    drop(engine);
    store.close().await;
}
