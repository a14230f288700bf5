//! Criterion benchmark of the SQLite write path: `Store::execute` with a group-commit-sized
//! batch of 32 commands, 16 grants and the 16 commits of the previous batch's grants, on a
//! temporary file (WAL, `synchronous = NORMAL`). Each batch completes 16 grant→commit
//! cycles, so cycles/s = 16 / (time per batch).
//!
//! A baseline is measured in the same run: one single-row `INSERT` per `BEGIN IMMEDIATE`
//! transaction on a file with the same settings, the floor any one-transaction-per-call store
//! sits on. Compare the two rather than quoting absolute numbers from a shared machine.
//!
//! Run: `cargo bench -p seqlease-sqlite --bench execute_batch`.

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use seqlease_core::{
    Command, GrantRequest, LeaseKey, OperationBody, Reply, SpaceConfig, SpaceName, Store,
    SystemClock,
};
use seqlease_sqlite::{SqliteOptions, SqliteStore};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::Mutex;

const PER_BATCH: usize = 16;
const PAYLOAD: &[u8] = br#"{"ids":[101,102,103],"where":"customer_id = 7"}"#;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The store, its space and the leases granted by the previous batch.
struct Pipeline {
    store: SqliteStore,
    space: SpaceName,
    pending: Vec<LeaseKey>,
    next_op: u64,
}

impl Pipeline {
    /// One batch: grant the next 16 slots, commit the 16 granted last time.
    async fn batch(&mut self) {
        let mut commands = Vec::with_capacity(PER_BATCH * 2);
        for _ in 0..PER_BATCH {
            self.next_op += 1;
            commands.push(Command::Grant(GrantRequest {
                space: self.space.clone(),
                operation_id: format!("op-{}", self.next_op),
                projection_type: "bench".into(),
                owner: "bench-worker".into(),
                ttl: Duration::from_secs(600),
                fence: None,
            }));
        }
        for key in self.pending.drain(..) {
            commands.push(Command::Commit {
                key,
                body: OperationBody::new("update", PAYLOAD),
            });
        }
        let outcome = self.store.execute(commands).await.expect("batch");
        for reply in outcome.replies {
            match reply {
                Ok(Reply::Granted(l)) => self.pending.push(LeaseKey {
                    space: l.space,
                    seq: l.seq,
                    token: l.token,
                }),
                Ok(Reply::Committed(_)) => {}
                other => panic!("unexpected reply {other:?}"),
            }
        }
    }
}

fn execute_batch(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::TempDir::new().expect("temp dir");

    let pipeline = rt.block_on(async {
        let opts = SqliteOptions {
            clock: Arc::new(SystemClock),
            ..SqliteOptions::default()
        };
        let store = SqliteStore::open(&dir.path().join("bench.db"), opts)
            .await
            .expect("open");
        let space = SpaceName::new("bench").expect("name");
        store
            .ensure_space(
                &space,
                &SpaceConfig {
                    capacity: 1_000_000,
                },
            )
            .await
            .expect("space");
        let mut p = Pipeline {
            store,
            space,
            pending: Vec::new(),
            next_op: 0,
        };
        p.batch().await; // fill the pipeline
        Arc::new(Mutex::new(p))
    });

    let mut group = c.benchmark_group("sqlite_execute");
    group.throughput(Throughput::Elements(PER_BATCH as u64));
    group.bench_function("batch_16_grants_16_commits", |b| {
        b.to_async(&rt).iter(|| {
            let pipeline = pipeline.clone();
            async move { pipeline.lock().await.batch().await }
        })
    });

    let baseline = rt.block_on(async {
        let mut conn = SqliteConnectOptions::new()
            .filename(dir.path().join("baseline.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .disable_statement_logging()
            .connect()
            .await
            .expect("baseline db");
        sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB)")
            .execute(&mut conn)
            .await
            .expect("baseline table");
        Arc::new(Mutex::new((conn, 0i64)))
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("baseline_one_insert_per_transaction", |b| {
        b.to_async(&rt).iter(|| {
            let baseline = baseline.clone();
            async move {
                let mut guard = baseline.lock().await;
                let (conn, n) = &mut *guard;
                *n += 1;
                let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.expect("begin");
                sqlx::query("INSERT INTO t (id, payload) VALUES (?1, ?2)")
                    .bind(*n)
                    .bind(PAYLOAD)
                    .execute(&mut *tx)
                    .await
                    .expect("insert");
                tx.commit().await.expect("commit");
            }
        })
    });
    group.finish();
    rt.block_on(async { pipeline.lock().await.store.close().await });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(5));
    targets = execute_batch
}
criterion_main!(benches);
