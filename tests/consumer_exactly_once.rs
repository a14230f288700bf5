//! Exactly-once apply on the stores where the read model can live in the store's database
//! (SQLite and PostgreSQL), against at-least-once on the same database.
//!
//! The read model is a table `view (seq PRIMARY KEY, applied)` whose `applied` column counts
//! how often each entry was applied. A crash is injected between the apply and the
//! checkpoint — the apply fails after writing, or (PostgreSQL) the process stops while the
//! transaction is open, simulated by dropping the future — and the consumer is restarted on
//! a reopened store. Exactly-once ends with every entry applied once; at-least-once with the
//! crashed batch applied twice.

use std::sync::Arc;
use std::time::Duration;

use seqlease::{
    ConsumerError, Engine, Entry, Error, Grant, ManualClock, OperationBody, Space, SqliteOptions,
    SqliteStore,
};

const TTL: Duration = Duration::from_secs(30);

async fn commit_n(s: &Space, n: u64) {
    for i in 0..n {
        let mut l = s
            .grant(Grant::new(format!("op-{i}"), "t").ttl(TTL))
            .await
            .unwrap();
        l.commit(OperationBody::new("update", format!("{i}")))
            .await
            .unwrap();
    }
}

async fn engine_on(store: Arc<dyn seqlease::core::Store>) -> Engine {
    Engine::builder().store(store).build().await.unwrap()
}

fn apply_failed(r: Result<usize, Error>) -> ConsumerError {
    match r {
        Err(Error::Consumer(e @ ConsumerError::Apply { .. })) => e,
        other => panic!("expected the injected apply failure, got {other:?}"),
    }
}

mod sqlite {
    use super::*;
    use seqlease::rusqlite;

    fn upsert(tx: &rusqlite::Transaction<'_>, table: &str, seq: u64) -> rusqlite::Result<()> {
        let sql = match table {
            "view" => {
                "INSERT INTO view (seq, applied) VALUES (?1, 1) \
                 ON CONFLICT (seq) DO UPDATE SET applied = applied + 1"
            }
            _ => {
                "INSERT INTO alo_view (seq, applied) VALUES (?1, 1) \
                 ON CONFLICT (seq) DO UPDATE SET applied = applied + 1"
            }
        };
        tx.execute(sql, [seq as i64])?;
        Ok(())
    }

    fn counts(path: &std::path::Path, table: &str) -> Vec<(u64, u32)> {
        let conn = rusqlite::Connection::open(path).unwrap();
        let sql = if table == "view" {
            "SELECT seq, applied FROM view ORDER BY seq"
        } else {
            "SELECT seq, applied FROM alo_view ORDER BY seq"
        };
        let mut stmt = conn.prepare(sql).unwrap();
        stmt.query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    async fn open(path: &std::path::Path, clock: &Arc<ManualClock>) -> SqliteStore {
        let opts = SqliteOptions {
            clock: clock.clone(),
            ..SqliteOptions::default()
        };
        SqliteStore::open(path, opts).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exactly_once_survives_a_crash_between_apply_and_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("eo.db");
        let clock = Arc::new(ManualClock::new());
        let store = open(&path, &clock).await;
        {
            // The application's read models live in the same file.
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE view (seq INTEGER PRIMARY KEY, applied INTEGER NOT NULL);
                 CREATE TABLE alo_view (seq INTEGER PRIMARY KEY, applied INTEGER NOT NULL);",
            )
            .unwrap();
        }
        let engine = engine_on(Arc::new(store.clone())).await;
        let s = engine.space("orders").await.unwrap();
        commit_n(&s, 10).await;

        let mut eo = s.consumer("view").batch_size(4).open().await.unwrap();
        let n = eo
            .run_once_sqlite(&store, |tx, e| Ok(upsert(tx, "view", e.seq)?))
            .await
            .unwrap();
        assert_eq!((n, eo.checkpoint()), (4, 4));
        // Crash between apply and checkpoint: the apply wrote 5 and 6, then failed.
        let err = apply_failed(
            eo.run_once_sqlite(&store, |tx, e| {
                upsert(tx, "view", e.seq)?;
                if e.seq == 6 {
                    return Err("injected crash after writing".into());
                }
                Ok(())
            })
            .await,
        );
        assert!(err.to_string().contains("injected crash"), "{err}");
        assert_eq!(eo.checkpoint(), 4);
        assert_eq!(
            counts(&path, "view"),
            (1..=4).map(|s| (s, 1)).collect::<Vec<_>>(),
            "the failed batch's writes were rolled back with its checkpoint"
        );

        // The same crash for an at-least-once consumer writing to the same file.
        let mut alo = s.consumer("alo").batch_size(4).open().await.unwrap();
        let batch = alo.next_batch().await.unwrap();
        {
            let mut conn = rusqlite::Connection::open(&path).unwrap();
            let tx = conn.transaction().unwrap();
            for e in batch.entries() {
                upsert(&tx, "alo", e.seq).unwrap();
            }
            tx.commit().unwrap();
        } // crash: applied, never checkpointed

        // Restart: a new process opens the file again.
        drop((eo, alo, s, engine));
        store.close().await;
        let store = open(&path, &clock).await;
        let engine = engine_on(Arc::new(store.clone())).await;
        let s = engine.space("orders").await.unwrap();
        let mut eo = s.consumer("view").batch_size(4).open().await.unwrap();
        assert_eq!(eo.checkpoint(), 4, "restart from the stored checkpoint");
        let n = eo
            .catch_up_sqlite(&store, |tx, e: &Entry| Ok(upsert(tx, "view", e.seq)?))
            .await
            .unwrap();
        assert_eq!((n, eo.checkpoint()), (6, 10));
        assert_eq!(
            counts(&path, "view"),
            (1..=10).map(|s| (s, 1)).collect::<Vec<_>>(),
            "exactly once: every entry applied once despite the crash"
        );

        let mut alo = s.consumer("alo").batch_size(4).open().await.unwrap();
        let batch = alo.next_batch().await.unwrap();
        assert_eq!(
            batch.after(),
            0,
            "at-least-once: the crashed batch comes again"
        );
        let conn = rusqlite::Connection::open(&path).unwrap();
        for e in batch.entries() {
            conn.execute(
                "INSERT INTO alo_view (seq, applied) VALUES (?1, 1) \
                 ON CONFLICT (seq) DO UPDATE SET applied = applied + 1",
                [e.seq as i64],
            )
            .unwrap();
        }
        alo.commit(&batch).await.unwrap();
        assert_eq!(
            counts(&path, "alo"),
            (1..=4).map(|s| (s, 2)).collect::<Vec<_>>(),
            "at-least-once applied the crashed batch twice"
        );
        // A stale expectation is refused before anything is applied.
        let stale = store
            .apply_exactly_once(s.name(), "view", 3, Vec::new(), |_, _| {
                panic!("must not run")
            })
            .await;
        assert!(
            matches!(stale, Err(ConsumerError::Conflict { current: 10, .. })),
            "{stale:?}"
        );
        store.close().await;
    }
}

mod postgres {
    use super::*;
    use seqlease::sqlx::{self, PgConnection};
    use seqlease::{PgClock, PgOptions, PgStore};
    use seqlease_conformance::postgres::{database_url, unique_name};
    use tokio::sync::Notify;

    async fn upsert(conn: &mut PgConnection, seq: u64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO view (seq, applied) VALUES ($1, 1) \
             ON CONFLICT (seq) DO UPDATE SET applied = view.applied + 1",
        )
        .bind(seq as i64)
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn counts(store: &PgStore) -> Vec<(u64, u32)> {
        let rows: Vec<(i64, i32)> = sqlx::query_as("SELECT seq, applied FROM view ORDER BY seq")
            .fetch_all(store.pool())
            .await
            .unwrap();
        rows.into_iter()
            .map(|(s, a)| (s as u64, a as u32))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exactly_once_survives_a_crash_between_apply_and_checkpoint() {
        let url = database_url();
        let opts = PgOptions {
            clock: Arc::new(PgClock::pinned_at(seqlease::core::Clock::now(
                &ManualClock::new(),
            ))),
            schema: Some(unique_name("eo")),
            max_connections: 4,
            ..PgOptions::default()
        };
        let store = PgStore::connect(&url, opts.clone()).await.unwrap();
        sqlx::query("CREATE TABLE view (seq BIGINT PRIMARY KEY, applied INT NOT NULL)")
            .execute(store.pool())
            .await
            .unwrap();
        let engine = engine_on(Arc::new(store.clone())).await;
        let s = engine.space("orders").await.unwrap();
        commit_n(&s, 10).await;

        let mut eo = s.consumer("view").batch_size(4).open().await.unwrap();
        let n = eo
            .run_once_postgres(&store, |conn, e| {
                Box::pin(async move { Ok(upsert(conn, e.seq).await?) })
            })
            .await
            .unwrap();
        assert_eq!((n, eo.checkpoint()), (4, 4));

        // Crash 1: the apply wrote, then failed.
        let err = apply_failed(
            eo.run_once_postgres(&store, |conn, e| {
                Box::pin(async move {
                    upsert(conn, e.seq).await?;
                    if e.seq == 6 {
                        return Err("injected crash after writing".into());
                    }
                    Ok(())
                })
            })
            .await,
        );
        assert!(err.to_string().contains("injected crash"), "{err}");

        // Crash 2: the process stops while the transaction is open (after the writes,
        // before the checkpoint): the future is dropped mid-apply.
        let written = Arc::new(Notify::new());
        {
            let signal = written.clone();
            let run = eo.run_once_postgres(&store, move |conn, e| {
                let signal = signal.clone();
                Box::pin(async move {
                    upsert(conn, e.seq).await?;
                    if e.seq == 7 {
                        signal.notify_one();
                        std::future::pending::<()>().await;
                    }
                    Ok(())
                })
            });
            tokio::select! {
                r = run => panic!("the apply never finishes, got {r:?}"),
                _ = written.notified() => {}
            }
        }
        assert_eq!(eo.checkpoint(), 4);
        assert_eq!(
            counts(&store).await,
            (1..=4).map(|s| (s, 1)).collect::<Vec<_>>(),
            "the crashed batches' writes were rolled back with their checkpoints"
        );

        // Restart on a new connection pool.
        drop((eo, s, engine));
        store.close().await;
        let store = PgStore::connect(&url, opts).await.unwrap();
        let engine = engine_on(Arc::new(store.clone())).await;
        let s = engine.space("orders").await.unwrap();
        let mut eo = s.consumer("view").batch_size(4).open().await.unwrap();
        assert_eq!(eo.checkpoint(), 4, "restart from the stored checkpoint");
        let n = eo
            .catch_up_postgres(&store, |conn, e| {
                Box::pin(async move { Ok(upsert(conn, e.seq).await?) })
            })
            .await
            .unwrap();
        assert_eq!((n, eo.checkpoint()), (6, 10));
        assert_eq!(
            counts(&store).await,
            (1..=10).map(|s| (s, 1)).collect::<Vec<_>>(),
            "exactly once: every entry applied once despite both crashes"
        );
        store.close().await;
    }
}
