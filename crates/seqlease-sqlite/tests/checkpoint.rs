//! WAL checkpoints run on the store's checkpoint thread, not only when the log reaches the
//! write connection's backstop threshold (10,000 pages).

mod support;

use std::sync::Arc;

use seqlease_core::{ManualClock, SpaceConfig, SpaceName, Store};
use seqlease_sqlite::{SqliteOptions, SqliteStore};
use support::grant;

#[tokio::test]
async fn committed_pages_reach_the_database_file_without_the_writer_checkpointing() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let path = dir.path().join("checkpoint.db");
    let store = SqliteStore::open(
        &path,
        SqliteOptions {
            clock: Arc::new(ManualClock::new()),
            ..SqliteOptions::default()
        },
    )
    .await
    .expect("open");
    let space = SpaceName::new("checkpoints").expect("name");
    store
        .ensure_space(&space, &SpaceConfig { capacity: 100_000 })
        .await
        .expect("space");
    let before = std::fs::metadata(&path).expect("db file").len();
    // 256 transactions of 64 grants: a few thousand WAL pages, well under the backstop.
    for batch in 0..256 {
        let commands = (0..64)
            .map(|i| grant(&space, format!("op-{batch}-{i}")))
            .collect();
        store.execute(commands).await.expect("batch");
    }
    // A reader that sees every commit holds the file open across the store's close, so
    // that close cannot checkpoint by itself (SQLite does so at the last close); a
    // checkpoint still copies every page this reader sees.
    let other = rusqlite::Connection::open(&path).expect("second connection");
    let reader = other.unchecked_transaction().expect("read transaction");
    let _: i64 = reader
        .query_row("SELECT count(*) FROM slots", [], |row| row.get(0))
        .expect("read");
    // Closing joins the checkpoint thread after the checkpoints it was asked for.
    store.close().await;
    let after = std::fs::metadata(&path).expect("db file").len();
    assert!(
        after > before,
        "the database file stayed at {before} bytes: no checkpoint ran"
    );
    drop(reader);
}
