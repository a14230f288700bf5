//! The SQLite store of seqlease: the embedded default.
//!
//! One database file holds every space and slot. [`SqliteStore`] implements
//! [`seqlease_core::Store`]: it applies each batch of commands from the engine in one
//! `BEGIN IMMEDIATE` transaction on a single write connection, and serves reads from a
//! separate pool of read connections. The file is in WAL mode, so readers and the writer do
//! not block each other, and several processes may open the same file: their write
//! transactions queue on SQLite's lock (up to the busy timeout) and never allocate the same
//! seq twice.
//!
//! Two drivers share the work, both on the one bundled SQLite library (`libsqlite3-sys`):
//! sqlx opens and validates the file, applies the migrations (`migrations/sqlite/`) and
//! serves the read pool; the write transactions run on a `rusqlite` connection owned by a
//! dedicated thread, one hand-off per batch. sqlx's SQLite driver hands every statement to
//! a worker thread and back, and a batch is a handful of statements, so on sqlx the
//! hand-offs, not SQLite, were the cost of a batch (see `execute` for the measurements).
//!
//! Effect of moving the write path to one hand-off per batch, on a shared 2-core machine
//! (WAL, `synchronous = NORMAL`), before → after, each figure a median and each ratio
//! against the baseline measured in the same run (one single-row `INSERT` per transaction
//! in a plain loop, through sqlx):
//!
//! | command | before | after |
//! |---|---|---|
//! | `cargo bench -p seqlease-sqlite --bench execute_batch` (16 grants + 16 commits per batch; 3 runs) | 531 µs per batch, 2.5× baseline | 343 µs per batch (≈ 47 000 cycles/s), 3.2× baseline |
//! | `seqlease bench --db sqlite:///tmp/b.db --workers 16 --duration 5 --baseline` (5 runs) | 13 900 cycles/s, 0.70× baseline, p50 425 µs | 23 600 cycles/s, 0.89× baseline, p50 163 µs |
//!
//! Through the engine the batches are small, 14.4 commands on average (about 7 grants and
//! 7 commits), so the fixed cost of a batch (the hand-off, `BEGIN IMMEDIATE`, the WAL
//! append at `COMMIT`) is paid every 7 cycles.
//!
//! Expiry is decided with the store's clock, which for SQLite is the process clock behind
//! [`SqliteOptions::clock`]; tests inject a [`seqlease_core::ManualClock`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), seqlease_core::StoreError> {
//! use seqlease_sqlite::{SqliteOptions, SqliteStore};
//!
//! let store = SqliteStore::open("seqlease.db".as_ref(), SqliteOptions::default()).await?;
//! // hand `store` to the engine …
//! store.close().await;
//! # Ok(()) }
//! ```
//!
//! The modules: `open` (connections, pragmas, migrations), `writer` (the write thread),
//! `checkpoint` (WAL checkpoints on a thread of their own, off the write path),
//! `execute` (the batch transaction), `read` (the ordered log and slots), `spaces` (space
//! rows), `recovery` (claims on expired slots, resolving them, the queue of parked work),
//! `resources` (resource leases with epochs; their fences are checked by `execute`),
//! `history` (the lease history: recorded events merged with the slot rows), `codec`
//! (column encodings) and `error` (mapping SQLite failures to [`StoreError`]).

#![warn(missing_docs)]

mod checkpoint;
mod codec;
mod consumers;
mod error;
mod execute;
mod history;
mod open;
mod read;
mod recovery;
mod resources;
mod spaces;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use seqlease_core::{
    BatchOutcome, BatchingHint, ClaimRequest, Clock, Command, Entry, ExpiredSlot, HistoryQuery,
    LateCommit, ParkedCommand, ParkedQuery, ParkedWork, Resolve, ResourceCommand, ResourceEvent,
    ResourceLease, ResourceQuery, SlotEvent, SlotView, SpaceConfig, SpaceInfo, SpaceName, Store,
    StoreError, SystemClock, Timestamp,
};
use sqlx::sqlite::SqlitePool;

pub use consumers::ApplyError;
/// The rusqlite version the store's write connection uses: the transaction handed to an
/// exactly-once apply ([`SqliteStore::apply_exactly_once`]) is a `rusqlite::Transaction`.
pub use rusqlite;
use seqlease_core::{ConsumerError, ConsumerState, RetentionEvent, validate_consumer, validate_id};

/// How to open a [`SqliteStore`].
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// The store's clock: every expiry decision uses it. [`SystemClock`] in production, a
    /// [`seqlease_core::ManualClock`] in tests.
    pub clock: Arc<dyn Clock>,
    /// Size of the read pool (at least 1).
    pub read_connections: u32,
    /// How long a write waits for another connection or process holding the write lock
    /// before it fails with [`StoreError::Unavailable`].
    pub busy_timeout: Duration,
    /// `synchronous = FULL` (every commit is fsynced: survives power loss) instead of the
    /// default `NORMAL` (survives a crash of the process; the last commits may be lost on
    /// power loss).
    pub synchronous_full: bool,
    /// The page size of a file this open creates (SQLite's `page_size`: a power of two
    /// from 512 to 65536). A file that exists keeps the size it was made with. 4096 is
    /// SQLite's default. Smaller pages mean fewer bytes in the WAL per commit. On this
    /// project's bench, 1024 made commits of 1 KB operations 33–55 % faster. Commits of
    /// 64-byte operations were ~3 % faster, 4 KB operations 1–13 % slower, and replays ~25 %
    /// slower (docs/benchmarks.md, "SQLite page size").
    pub page_size: u32,
}

impl Default for SqliteOptions {
    /// The system clock, 4 read connections, a 5 s busy timeout, `synchronous = NORMAL`,
    /// 4096-byte pages.
    fn default() -> Self {
        SqliteOptions {
            clock: Arc::new(SystemClock),
            read_connections: 4,
            busy_timeout: Duration::from_secs(5),
            synchronous_full: false,
            page_size: 4096,
        }
    }
}

/// A seqlease store in a SQLite file. Cheap to clone: clones share the connections.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    writer: writer::Writer,
    readers: SqlitePool,
    bulk: Arc<read::BulkReaders>,
    clock: Arc<dyn Clock>,
    path: PathBuf,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Open the store in the file at `path`, creating the file if it is missing, switching
    /// it to WAL and applying the schema migrations.
    ///
    /// Fails with [`StoreError::Corrupt`] when the file is not a SQLite database or is
    /// damaged, [`StoreError::Unavailable`] or [`StoreError::Permission`] when it cannot be
    /// opened or created, and [`StoreError::Schema`] when it was written by a newer seqlease
    /// or belongs to another application. Every error names the path.
    pub async fn open(path: &Path, opts: SqliteOptions) -> Result<SqliteStore, StoreError> {
        let pools = open::open(path, &opts).await?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                writer: pools.writer,
                readers: pools.readers,
                bulk: Arc::new(read::BulkReaders::new(path, opts.busy_timeout)),
                clock: opts.clock,
                path: path.to_path_buf(),
            }),
        })
    }

    /// Open the store named by a URL: `sqlite://PATH` or `sqlite:PATH`
    /// (`sqlite:///abs/path.db` for an absolute path). Two parameters override `opts`:
    /// `?synchronous=full` (or `normal`) and `?page_size=N`, as in
    /// `sqlite://app.db?synchronous=full&page_size=1024`; any other is refused with
    /// [`StoreError::BadUrl`]. See [`SqliteStore::open`].
    pub async fn open_url(url: &str, opts: SqliteOptions) -> Result<SqliteStore, StoreError> {
        let (path, opts) = open::from_url(url, opts)?;
        SqliteStore::open(path, opts).await
    }

    /// The database file a store URL names, parameters aside; the URL is checked as
    /// [`SqliteStore::open_url`] checks it. Nothing is opened or created.
    pub fn file_of_url(url: &str) -> Result<&Path, StoreError> {
        open::from_url(url, SqliteOptions::default()).map(|(path, _)| path)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Apply `entries` of consumer `consumer` **exactly once**: in one write transaction,
    /// check that the consumer's checkpoint is still `expected`, run `apply` with that
    /// transaction (on the store's write thread), then move the checkpoint to the last
    /// entry's seq. The application's read model lives in the same database file, so its
    /// writes commit together with the checkpoint or not at all: a crash or an error
    /// between the apply and the checkpoint leaves neither, and the entries are applied again
    /// from the old checkpoint as if for the first time.
    ///
    /// Fails with [`ConsumerError::Apply`] when `apply` fails (everything rolled back),
    /// [`ConsumerError::Conflict`] when another run moved the checkpoint first, and the other
    /// refusals of [`Store::save_checkpoint`]. `entries` must be the ones that follow
    /// `expected` (as [`Store::read`] returns them).
    pub async fn apply_exactly_once<F>(
        &self,
        space: &SpaceName,
        consumer: &str,
        expected: u64,
        entries: Vec<Entry>,
        apply: F,
    ) -> Result<ConsumerState, ConsumerError>
    where
        F: FnOnce(&rusqlite::Transaction<'_>, &[Entry]) -> Result<(), ApplyError> + Send + 'static,
    {
        validate_consumer(consumer)?;
        if let Some(first) = entries.first()
            && first.seq != expected + 1
        {
            return Err(ConsumerError::Invalid(
                seqlease_core::InvalidInput::Setting {
                    setting: "entries",
                    reason: format!(
                        "consumer {consumer} of {space}: the batch starts at {} but the checkpoint is {expected}; pass the entries that follow the checkpoint",
                        first.seq
                    ),
                },
            ));
        }
        let (space, consumer, clock) = (
            space.clone(),
            consumer.to_string(),
            self.inner.clock.clone(),
        );
        self.inner
            .writer
            .run(move |conn| {
                consumers::apply_exactly_once(
                    conn,
                    clock.now(),
                    &space,
                    &consumer,
                    expected,
                    &entries,
                    apply,
                )
            })
            .await?
    }

    /// Close every connection, waiting for running calls to finish. Later calls on this
    /// store (or its clones) fail with [`StoreError::Unavailable`].
    pub async fn close(&self) {
        self.inner.writer.close().await;
        self.inner.bulk.close();
        self.inner.readers.close().await;
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        error::BACKEND
    }

    fn batching(&self) -> BatchingHint {
        // One writer: one batch at a time, as large as the engine can gather.
        BatchingHint {
            group_commit: true,
            max_batch: 512,
            max_in_flight: 1,
        }
    }

    async fn now(&self) -> Result<Timestamp, StoreError> {
        Ok(self.inner.clock.now())
    }

    async fn ensure_space(
        &self,
        space: &SpaceName,
        config: &SpaceConfig,
    ) -> Result<SpaceInfo, StoreError> {
        let (space, config, clock) = (space.clone(), config.clone(), self.inner.clock.clone());
        self.inner
            .writer
            .run(move |conn| spaces::ensure_space(conn, &space, &config, clock.now()))
            .await
    }

    async fn space_info(&self, space: &SpaceName) -> Result<Option<SpaceInfo>, StoreError> {
        spaces::space_info(&self.inner.readers, space).await
    }

    async fn list_spaces(&self) -> Result<Vec<SpaceInfo>, StoreError> {
        spaces::list_spaces(&self.inner.readers).await
    }

    async fn execute(&self, commands: Vec<Command>) -> Result<BatchOutcome, StoreError> {
        if commands.is_empty() {
            return Ok(BatchOutcome::default());
        }
        let clock = self.inner.clock.clone();
        // The clock is read once per batch, on the write thread once the batch holds the
        // database's write lock: a batch that waited behind others (in this process or
        // another) judges expiry at the time it runs.
        self.inner
            .writer
            .run(move |conn| execute::execute(conn, &*clock, commands))
            .await
    }

    async fn read(
        &self,
        space: &SpaceName,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        read::read(&self.inner.readers, &self.inner.bulk, space, from, limit).await
    }

    async fn slot(&self, space: &SpaceName, seq: u64) -> Result<Option<SlotView>, StoreError> {
        read::slot(&self.inner.readers, space, seq).await
    }

    async fn expired_backlog(&self) -> Result<Vec<(SpaceName, u64)>, StoreError> {
        recovery::expired_backlog(&self.inner.readers, self.inner.clock.now()).await
    }

    async fn claim_expired(&self, request: &ClaimRequest) -> Result<Vec<ExpiredSlot>, StoreError> {
        let (request, clock) = (request.clone(), self.inner.clock.clone());
        self.inner
            .writer
            .run(move |conn| recovery::claim_expired(conn, &*clock, &request))
            .await
    }

    async fn resolve(&self, items: Vec<Resolve>) -> Result<BatchOutcome, StoreError> {
        if items.is_empty() {
            return Ok(BatchOutcome::default());
        }
        let clock = self.inner.clock.clone();
        self.inner
            .writer
            .run(move |conn| recovery::resolve(conn, &*clock, items))
            .await
    }

    async fn parked(&self, query: &ParkedQuery) -> Result<Vec<ParkedWork>, StoreError> {
        recovery::parked(&self.inner.readers, query).await
    }

    async fn settle_parked(
        &self,
        commands: Vec<ParkedCommand>,
    ) -> Result<BatchOutcome, StoreError> {
        if commands.is_empty() {
            return Ok(BatchOutcome::default());
        }
        let clock = self.inner.clock.clone();
        self.inner
            .writer
            .run(move |conn| recovery::settle_parked(conn, &*clock, commands))
            .await
    }

    async fn commit_late(&self, items: Vec<LateCommit>) -> Result<BatchOutcome, StoreError> {
        if items.is_empty() {
            return Ok(BatchOutcome::default());
        }
        let clock = self.inner.clock.clone();
        self.inner
            .writer
            .run(move |conn| recovery::commit_late(conn, &*clock, items))
            .await
    }

    fn checks_fences(&self) -> bool {
        true
    }

    async fn resources(&self, commands: Vec<ResourceCommand>) -> Result<BatchOutcome, StoreError> {
        if commands.is_empty() {
            return Ok(BatchOutcome::default());
        }
        let clock = self.inner.clock.clone();
        self.inner
            .writer
            .run(move |conn| resources::resources(conn, &*clock, commands))
            .await
    }

    async fn resource_leases(
        &self,
        query: &ResourceQuery,
    ) -> Result<Vec<ResourceLease>, StoreError> {
        resources::resource_leases(&self.inner.readers, query, self.inner.clock.now()).await
    }

    async fn resource_epoch(&self, resource: &str) -> Result<u64, StoreError> {
        resources::resource_epoch(&self.inner.readers, resource).await
    }

    async fn resource_history(
        &self,
        resource: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ResourceEvent>, StoreError> {
        resources::resource_history(&self.inner.readers, resource, limit).await
    }

    async fn slot_history(&self, query: &HistoryQuery) -> Result<Vec<SlotEvent>, StoreError> {
        history::slot_history(&self.inner.readers, query).await
    }

    async fn prune_slot_history(&self, before: Timestamp) -> Result<u64, StoreError> {
        self.inner
            .writer
            .run(move |conn| history::prune(conn, before))
            .await
    }

    async fn register_consumer(
        &self,
        space: &SpaceName,
        name: &str,
        retain: bool,
    ) -> Result<ConsumerState, ConsumerError> {
        validate_consumer(name)?;
        let (space, name, clock) = (space.clone(), name.to_string(), self.inner.clock.clone());
        self.inner
            .writer
            .run(move |conn| consumers::register(conn, clock.now(), &space, &name, retain))
            .await?
    }

    async fn consumer(
        &self,
        space: &SpaceName,
        name: &str,
    ) -> Result<Option<ConsumerState>, StoreError> {
        let (space, name) = (space.clone(), name.to_string());
        self.inner
            .writer
            .run(move |conn| consumers::consumer(conn, &space, &name))
            .await
    }

    async fn save_checkpoint(
        &self,
        space: &SpaceName,
        name: &str,
        expected: u64,
        seq: u64,
    ) -> Result<ConsumerState, ConsumerError> {
        let (space, name, clock) = (space.clone(), name.to_string(), self.inner.clock.clone());
        self.inner
            .writer
            .run(move |conn| consumers::save(conn, clock.now(), &space, &name, expected, seq))
            .await?
    }

    async fn reset_consumer(
        &self,
        space: &SpaceName,
        name: &str,
        to: u64,
        actor: &str,
    ) -> Result<ConsumerState, ConsumerError> {
        validate_id("actor", actor)?;
        let (space, name, clock) = (space.clone(), name.to_string(), self.inner.clock.clone());
        let actor = actor.to_string();
        self.inner
            .writer
            .run(move |conn| consumers::reset(conn, clock.now(), &space, &name, to, &actor))
            .await?
    }

    async fn remove_consumer(
        &self,
        space: &SpaceName,
        name: &str,
        actor: &str,
    ) -> Result<ConsumerState, ConsumerError> {
        validate_id("actor", actor)?;
        let (space, name, clock) = (space.clone(), name.to_string(), self.inner.clock.clone());
        let actor = actor.to_string();
        self.inner
            .writer
            .run(move |conn| consumers::remove(conn, clock.now(), &space, &name, &actor))
            .await?
    }

    async fn list_consumers(
        &self,
        space: Option<&SpaceName>,
    ) -> Result<Vec<ConsumerState>, StoreError> {
        let space = space.cloned();
        self.inner
            .writer
            .run(move |conn| consumers::list(conn, space.as_ref()))
            .await
    }

    async fn prune_entries(
        &self,
        space: &SpaceName,
        below: u64,
        actor: &str,
    ) -> Result<RetentionEvent, ConsumerError> {
        validate_id("actor", actor)?;
        let (space, clock, actor) = (space.clone(), self.inner.clock.clone(), actor.to_string());
        self.inner
            .writer
            .run(move |conn| consumers::prune(conn, clock.now(), &space, below, &actor))
            .await?
    }

    async fn retention_history(
        &self,
        space: &SpaceName,
    ) -> Result<Vec<RetentionEvent>, StoreError> {
        consumers::history(&self.inner.readers, space).await
    }
}

#[cfg(test)]
mod send_tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// The engine opens stores inside spawned tasks and `async_trait` futures: the futures of
    /// the public async API must be `Send`.
    #[test]
    fn public_futures_are_send() {
        let open = SqliteStore::open(Path::new("unused.db"), SqliteOptions::default());
        assert_send(&open);
        let open_url = SqliteStore::open_url("sqlite://unused.db", SqliteOptions::default());
        assert_send(&open_url);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The write connection's `PRAGMA synchronous`: 1 for NORMAL, 2 for FULL.
    async fn synchronous_of(store: &SqliteStore) -> i64 {
        store
            .inner
            .writer
            .run(|conn| Ok(conn.pragma_query_value(None, "synchronous", |r| r.get(0))?))
            .await
            .unwrap()
    }

    /// `synchronous` is a property of a connection, not of the file: only the write
    /// connection itself can say whether a URL's `?synchronous=` reached it.
    #[tokio::test]
    async fn the_write_connection_runs_with_the_synchronous_level_the_url_names() {
        let dir = tempfile::TempDir::new().unwrap();
        let file = dir.path().join("sync.db");
        for (parameters, level) in [
            ("", 1),
            ("?synchronous=full", 2),
            ("?synchronous=normal", 1),
        ] {
            let url = format!("sqlite://{}{parameters}", file.display());
            let store = SqliteStore::open_url(&url, SqliteOptions::default())
                .await
                .unwrap();
            assert_eq!(synchronous_of(&store).await, level, "{url}");
            store.close().await;
        }
        let full = SqliteOptions {
            synchronous_full: true,
            ..SqliteOptions::default()
        };
        let store = SqliteStore::open(&file, full).await.unwrap();
        assert_eq!(
            synchronous_of(&store).await,
            2,
            "SqliteOptions::synchronous_full"
        );
        store.close().await;
    }
}
