//! Migration 5 rebuilds the slots table (its state check without an IN list): a file
//! written under schema 4 keeps every slot, bit for bit, and the store works on it after.

mod support;

use std::path::Path;
use std::sync::Arc;

use seqlease_core::{
    Command, LeaseKey, ManualClock, OperationBody, Reply, SpaceConfig, SpaceName, Store,
};
use seqlease_sqlite::{SqliteOptions, SqliteStore};
use support::grant;

const V5_CHECK: &str = "CHECK (state = 0 OR state = 1 OR state = 2)";
const V1_CHECK: &str = "CHECK (state IN (0, 1, 2))";

async fn open(path: &Path, clock: &Arc<ManualClock>) -> SqliteStore {
    let opts = SqliteOptions {
        clock: clock.clone(),
        ..SqliteOptions::default()
    };
    SqliteStore::open(path, opts).await.expect("open")
}

/// Every slot row, every column, in key order.
fn dump(path: &Path) -> Vec<Vec<String>> {
    let conn = rusqlite::Connection::open(path).expect("connection");
    let mut stmt = conn
        .prepare("SELECT * FROM slots ORDER BY space_id, seq")
        .expect("prepare");
    let columns = stmt.column_count();
    stmt.query_map([], |row| {
        (0..columns)
            .map(|i| Ok(format!("{:?}", row.get_ref(i)?)))
            .collect()
    })
    .expect("query")
    .collect::<Result<_, _>>()
    .expect("rows")
}

fn slots_sql(conn: &rusqlite::Connection) -> String {
    conn.query_row(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'slots'",
        [],
        |row| row.get(0),
    )
    .expect("slots schema")
}

/// Turn a current file back into what schema 4 left: the v1 check, migration 5 unrecorded.
fn back_to_schema_4(path: &Path) {
    let conn = rusqlite::Connection::open(path).expect("connection");
    assert!(slots_sql(&conn).contains(V5_CHECK), "{}", slots_sql(&conn));
    conn.execute_batch(&format!(
        "PRAGMA writable_schema = ON;
         UPDATE sqlite_master SET sql = replace(sql, '{V5_CHECK}', '{V1_CHECK}')
             WHERE type = 'table' AND name = 'slots';
         PRAGMA writable_schema = OFF;
         DELETE FROM _sqlx_migrations WHERE version = 5;"
    ))
    .expect("back to schema 4");
}

#[tokio::test]
async fn a_schema_4_file_keeps_every_slot_through_migration_5() {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let path = dir.path().join("v4.db");
    let clock = Arc::new(ManualClock::new());
    let space = SpaceName::new("orders").expect("name");

    // Slots in every state: committed, released (a gap), leased with a recorded result.
    let store = open(&path, &clock).await;
    store
        .ensure_space(&space, &SpaceConfig { capacity: 16 })
        .await
        .expect("space");
    let granted = store
        .execute((0..3).map(|i| grant(&space, format!("op-{i}"))).collect())
        .await
        .expect("grants");
    let keys: Vec<LeaseKey> = granted
        .replies
        .into_iter()
        .map(|r| match r {
            Ok(Reply::Granted(l)) => LeaseKey {
                space: l.space,
                seq: l.seq,
                token: l.token,
            },
            other => panic!("expected a grant, got {other:?}"),
        })
        .collect();
    let body = OperationBody::new("update", &b"{\"ids\":[7]}"[..]);
    let outcome = store
        .execute(vec![
            Command::Commit {
                key: keys[0].clone(),
                body: body.clone(),
            },
            Command::Release {
                key: keys[1].clone(),
                detail: Some("no longer needed".into()),
            },
            Command::RecordResult {
                key: keys[2].clone(),
                body: body.clone(),
            },
        ])
        .await
        .expect("writes");
    assert!(outcome.replies.iter().all(Result::is_ok), "{outcome:?}");
    store.close().await;
    back_to_schema_4(&path);
    let before = dump(&path);
    assert_eq!(before.len(), 3);

    // Opening applies migration 5.
    let store = open(&path, &clock).await;
    store.close().await;
    let conn = rusqlite::Connection::open(&path).expect("connection");
    assert!(slots_sql(&conn).contains(V5_CHECK), "{}", slots_sql(&conn));
    let indexes: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'slots' ORDER BY name")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("indexes");
    assert!(indexes.contains(&"slots_leased".to_string()), "{indexes:?}");
    assert!(
        indexes.contains(&"slots_committed_operation".to_string()),
        "{indexes:?}"
    );
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity check");
    assert_eq!(check, "ok");
    // The check still refuses a state the life cycle does not have.
    let refused = conn.execute("UPDATE slots SET state = 3 WHERE seq = 1", []);
    assert!(refused.is_err(), "state 3 was accepted");
    drop(conn);
    assert_eq!(dump(&path), before, "the rebuild changed a slot");

    // The store works on the migrated file: the leased slot commits its recorded result's
    // operation, and the duplicate operation id of the committed one is still refused (I6).
    let store = open(&path, &clock).await;
    let outcome = store
        .execute(vec![Command::Commit {
            key: keys[2].clone(),
            body,
        }])
        .await
        .expect("commit after migration");
    assert!(
        matches!(outcome.replies[0], Ok(Reply::Committed(_))),
        "{outcome:?}"
    );
    let entries = store.read(&space, 1, 10).await.expect("read");
    assert_eq!(entries.len(), 3);
    let again = store
        .execute(vec![grant(&space, "op-0")])
        .await
        .expect("grant");
    let Ok(Reply::Granted(lease)) = &again.replies[0] else {
        panic!("expected a grant, got {again:?}");
    };
    let key = LeaseKey {
        space: space.clone(),
        seq: lease.seq,
        token: lease.token,
    };
    let duplicate = store
        .execute(vec![Command::Commit {
            key,
            body: OperationBody::new("update", &b"{}"[..]),
        }])
        .await
        .expect("duplicate commit");
    match &duplicate.replies[0] {
        Ok(Reply::Committed(c)) => assert_eq!(c.seq, 1, "I6: op-0 stays at seq 1"),
        other => panic!("expected a duplicate answer, got {other:?}"),
    }
    store.close().await;
}
