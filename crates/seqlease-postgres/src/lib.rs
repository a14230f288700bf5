//! The PostgreSQL store of seqlease: many processes and machines on one database.
//!
//! [`PgStore`] implements [`seqlease_core::Store`]. Every engine, in every process, that
//! points at the same database (and schema) shares the same spaces, counters and slots:
//!
//! - **Atomicity.** Each batch of commands from the engine's group commit is one
//!   transaction. It locks the rows of the spaces it touches (`SELECT … FOR UPDATE`, in name
//!   order, so batches never deadlock), reads the slots its commands name, decides every
//!   command in memory exactly as the contract says, and writes all grants, slot changes and
//!   counters back in **one** set-based statement (`INSERT … SELECT unnest(…)`,
//!   `UPDATE … FROM unnest(…)`). Grants are compare-and-swap on the locked counter; commits
//!   and releases are compare-and-swap on the slot's state, token and expiry.
//! - **One round trip for the common batch.** A batch of plain grants and commits of one
//!   space this process has written before runs as one autocommitted statement that holds
//!   the row lock only for its own work and checks, as it writes, that the space row is as
//!   this process left it and that each committed slot is a live lease under its token. A
//!   failed check writes nothing and the batch runs on the general path, which decides it
//!   from the rows; the answers are the same either way (`one_statement`).
//! - **Time.** Every expiry decision uses the database clock (`now()`), read once per batch,
//!   never a client's clock. Tests shift or pin it with a [`PgClock`], which is also the
//!   [`seqlease_core::TimeControl`] of the conformance suite.
//! - **Wake-ups across processes.** A batch that resolves slots sends
//!   `pg_notify(channel, 'space:watermark:freed')` in the same transaction (delivered on
//!   commit); a background `LISTEN` task per store feeds the engine's waiters
//!   ([`seqlease_core::Store::listen`]). The engine's slow re-read covers missed
//!   notifications.
//! - **Crash detection.** An engine owner registered with
//!   [`Store::register_owner`](seqlease_core::Store::register_owner) holds a session-level
//!   advisory lock on a dedicated connection. When its process dies, PostgreSQL ends the
//!   session and releases the lock; [`Store::expire_dead_owners`](seqlease_core::Store::expire_dead_owners)
//!   (run by a background probe) expires that owner's leases at once instead of after their
//!   TTL. See `docs/postgres.md` for the mechanism and its limits (poolers, partitions).
//!
//! ```no_run
//! # async fn demo() -> Result<(), seqlease_core::StoreError> {
//! use seqlease_postgres::{PgOptions, PgStore};
//!
//! let store = PgStore::connect("postgres://app@db.internal/app", PgOptions::default()).await?;
//! // hand `store` to the engine …
//! store.close().await;
//! # Ok(()) }
//! ```
//!
//! The modules: `connect` (pool, migrations, schema and privilege checks), `execute` (the
//! batch transaction), `one_statement` (the one-round-trip path for plain batches), `read` (spaces, the ordered log and slots), `notify` (LISTEN task),
//! `liveness` (owner locks and the dead-owner probe), `recovery` (claims, resolution and
//! the queue of parked work), `history` (lease history: recorded events merged with the
//! transitions the slot rows show), `resources` (resource leases, epochs and their audit
//! history) and `error` (mapping PostgreSQL
//! failures to [`StoreError`]).

#![warn(missing_docs)]

mod connect;
mod consumers;
mod error;
mod execute;
mod history;
mod liveness;
mod notify;
mod one_statement;
mod read;
mod recovery;
mod resources;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use seqlease_core::time::duration_micros;
use seqlease_core::{
    BatchOutcome, BatchingHint, ClaimRequest, Command, Entry, ExpiredSlot, HistoryQuery,
    LateCommit, ParkedCommand, ParkedQuery, ParkedWork, ProgressListener, Resolve, ResourceCommand,
    ResourceEvent, ResourceLease, ResourceQuery, SlotEvent, SlotView, SpaceConfig, SpaceInfo,
    SpaceName, Store, StoreError, TimeControl, Timestamp,
};
use sqlx::postgres::{PgConnectOptions, PgPool};
use tokio::sync::watch;

pub use consumers::{ApplyError, ApplyFuture};
pub use error::BACKEND;
pub use one_statement::PathCounts;
use seqlease_core::{ConsumerError, ConsumerState, RetentionEvent, validate_consumer, validate_id};
/// The sqlx version the store uses: an exactly-once apply ([`PgStore::apply_exactly_once`])
/// gets a `sqlx::PgConnection` inside the checkpoint's transaction.
pub use sqlx;

/// The store clock of a [`PgStore`].
///
/// In production it is the database's clock (`now()`), unchanged: [`PgClock::database`].
/// Tests move it without sleeping: [`PgClock::database`] plus [`TimeControl::advance`] adds
/// an offset to the database clock (time still flows); [`PgClock::pinned_at`] freezes it at
/// an instant that only moves when advanced, like the in-memory store's manual clock. The
/// adjustment is sent with every statement and applied inside SQL, so even a shifted or
/// pinned clock is applied identically by every check of a batch.
#[derive(Debug, Default)]
pub struct PgClock {
    pinned: bool,
    micros: AtomicI64,
}

impl PgClock {
    /// The database clock, no offset (production).
    pub fn database() -> Self {
        PgClock::default()
    }

    /// A clock frozen at `at`, moved only by [`TimeControl`] (tests).
    pub fn pinned_at(at: Timestamp) -> Self {
        PgClock {
            pinned: true,
            micros: AtomicI64::new(at.as_micros()),
        }
    }

    /// `(pinned instant, offset)` as bound to `$1, $2` of [`NOW_SQL`].
    pub(crate) fn params(&self) -> (Option<i64>, i64) {
        let m = self.micros.load(Ordering::SeqCst);
        if self.pinned { (Some(m), 0) } else { (None, m) }
    }
}

impl TimeControl for PgClock {
    fn advance(&self, by: Duration) {
        self.micros.fetch_add(duration_micros(by), Ordering::SeqCst);
    }

    fn step_back(&self, by: Duration) {
        self.micros.fetch_sub(duration_micros(by), Ordering::SeqCst);
    }
}

/// The store clock in SQL, in microseconds since the epoch; `$1` is the pinned instant
/// (NULL in production) and `$2` the offset (0 in production).
pub(crate) const NOW_SQL: &str =
    "(COALESCE($1::bigint, (extract(epoch FROM now()) * 1000000)::bigint) + $2::bigint)";

/// [`NOW_SQL`] read at the moment the statement evaluates it (`clock_timestamp()`), not at
/// the start of the transaction: a batch reads it once, after it holds its locks.
pub(crate) const CLOCK_SQL: &str = "(COALESCE($1::bigint, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint) + $2::bigint)";

/// How to connect a [`PgStore`].
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// The store clock ([`PgClock::database`] in production).
    pub clock: Arc<PgClock>,
    /// Most pooled connections for batches and reads (at least 2).
    pub max_connections: u32,
    /// How long to wait for a connection (connect or pool checkout) before failing with
    /// [`StoreError::Unavailable`].
    pub connect_timeout: Duration,
    /// Apply missing schema migrations at connect (needs a role that may create tables).
    /// Off: a database without the current schema is refused with [`StoreError::Schema`].
    pub migrate: bool,
    /// Keep seqlease's tables in this schema (created if missing) instead of the role's
    /// default `search_path`. Lowercase letters, digits and `_`, at most 40 characters.
    pub schema: Option<String>,
    /// Batches the engine may run at once. Batches of one space queue on its row lock, which
    /// is held until the commit is flushed, so with one space 1 is fastest: the next batch
    /// gathers everything that queued meanwhile (measured in docs/postgres.md). With more,
    /// a second batch of the same space is also refused by the one-statement path, since it
    /// expects counters the first has not written yet. Raise it when the engine's load
    /// spreads over many spaces.
    pub max_in_flight: usize,
    /// How often the background probe expires the leases of owners whose process died
    /// (`None`: no probe; [`Store::expire_dead_owners`] can still be called).
    pub dead_owner_probe: Option<Duration>,
    /// Run the LISTEN task when an engine registers a listener.
    pub listen: bool,
    /// End a session that sits idle inside a transaction this long (`None`: never). The
    /// store's transactions take milliseconds; one left open means its process is paused or
    /// stuck while holding row locks that every other process needs.
    pub idle_in_transaction_timeout: Option<Duration>,
    /// Longest a store call (a batch, a read, a claim, a checkpoint…) waits for the server
    /// before failing with [`StoreError::Unavailable`] (`None`: no limit). A network path
    /// that fails without closing the connection (a half-open partition: a firewall or NAT
    /// that drops the flow) otherwise leaves the call waiting until TCP gives up, about 15
    /// minutes on Linux, with every command of the engine queued behind it. A batch that
    /// timed out may still have been applied; a retried commit answers `AlreadyCommitted`.
    /// Operator prunes (`prune_entries`, `prune_slot_history`) are not limited.
    pub call_timeout: Option<Duration>,
}

impl Default for PgOptions {
    /// The database clock, 16 connections, a 5 s connect timeout, migrations on, the
    /// default schema, 1 batch in flight, a 250 ms dead-owner probe, LISTEN on, idle
    /// transactions ended after 5 s, calls given up after 30 s without an answer.
    fn default() -> Self {
        PgOptions {
            clock: Arc::new(PgClock::database()),
            max_connections: 16,
            connect_timeout: Duration::from_secs(5),
            migrate: true,
            schema: None,
            max_in_flight: 1,
            dead_owner_probe: Some(Duration::from_millis(250)),
            listen: true,
            idle_in_transaction_timeout: Some(Duration::from_secs(5)),
            call_timeout: Some(Duration::from_secs(30)),
        }
    }
}

/// A seqlease store in a PostgreSQL database. Cheap to clone: clones share the pool.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pool: PgPool,
    connect: PgConnectOptions,
    clock: Arc<PgClock>,
    /// The NOTIFY channel: one per schema, so two installations in one database do not
    /// wake each other.
    channel: String,
    /// `host:port/database` for messages.
    target: String,
    opts: PgOptions,
    listeners: Arc<Mutex<Vec<ProgressListener>>>,
    listening: Mutex<bool>,
    owners: Arc<liveness::Owners>,
    /// What this process knows of the spaces it writes (for one-statement batches).
    spaces: one_statement::SpaceCache,
    /// Dropped with the store: background tasks watch it and stop.
    shutdown: watch::Sender<()>,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.inner.target)
            .field("schema", &self.inner.opts.schema)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connect to the database at `url` (`postgres://USER:PASSWORD@HOST:PORT/DB`, with the
    /// usual `sslmode=…` parameters for TLS), check the schema and privileges, and apply the
    /// migrations in `migrations/postgres` when [`PgOptions::migrate`] is on.
    ///
    /// Fails with [`StoreError::BadUrl`] for a URL that does not parse,
    /// [`StoreError::Unavailable`] when the server cannot be reached in
    /// [`PgOptions::connect_timeout`] or the database does not exist,
    /// [`StoreError::Permission`] for wrong credentials or missing privileges, and
    /// [`StoreError::Schema`] when the schema is missing (migrations off) or newer than this
    /// binary. Every message names the server and says what to do.
    pub async fn connect(url: &str, opts: PgOptions) -> Result<PgStore, StoreError> {
        let connected = connect::connect(url, &opts).await?;
        let (shutdown, shutdown_rx) = watch::channel(());
        let owners = Arc::new(liveness::Owners::default());
        let channel = notify::channel_name(opts.schema.as_deref());
        let store = PgStore {
            inner: Arc::new(Inner {
                pool: connected.pool,
                connect: connected.options,
                clock: opts.clock.clone(),
                channel,
                target: connected.target,
                opts,
                listeners: Arc::new(Mutex::new(Vec::new())),
                listening: Mutex::new(false),
                owners,
                spaces: one_statement::SpaceCache::default(),
                shutdown,
            }),
        };
        if let Some(every) = store.inner.opts.dead_owner_probe {
            liveness::spawn_probe(&store, every, shutdown_rx);
        }
        Ok(store)
    }

    /// `host:port/database` of the server.
    pub fn target(&self) -> &str {
        &self.inner.target
    }

    /// How many write batches ran as one statement, and how many that path refused (see
    /// the crate docs' write path).
    pub fn batch_paths(&self) -> PathCounts {
        self.inner.spaces.counts()
    }

    /// The connection pool (for operators' queries and tests).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Close every connection, waiting for running calls to finish. Later calls fail with
    /// [`StoreError::Unavailable`]; registered owners' locks are released, so their leases
    /// count as expired for the other processes.
    pub async fn close(&self) {
        self.inner.owners.close().await;
        self.inner.pool.close().await;
    }

    /// Apply `entries` of consumer `consumer` **exactly once**: in one transaction, lock the
    /// consumer's row, check that its checkpoint is still `expected`, run `apply` on the
    /// transaction's connection, then move the checkpoint to the last entry's seq. The
    /// application's read model lives in the same database, so its writes commit together
    /// with the checkpoint or not at all: an error, a panic or a crash (the future dropped,
    /// the connection lost) between the apply and the checkpoint leaves neither.
    ///
    /// Fails with [`ConsumerError::Apply`] when `apply` fails (everything rolled back),
    /// [`ConsumerError::Conflict`] when another run moved the checkpoint first, and the
    /// other refusals of [`Store::save_checkpoint`]. `entries` must be the ones that follow
    /// `expected` (as [`Store::read`] returns them).
    pub async fn apply_exactly_once<F>(
        &self,
        space: &SpaceName,
        consumer: &str,
        expected: u64,
        entries: &[seqlease_core::Entry],
        apply: F,
    ) -> Result<ConsumerState, ConsumerError>
    where
        F: for<'c> FnOnce(
                &'c mut sqlx::PgConnection,
                &'c [seqlease_core::Entry],
            ) -> ApplyFuture<'c>
            + Send,
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
        consumers::apply_exactly_once(&self.inner, (space, consumer), expected, entries, apply)
            .await
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    fn downgrade(&self) -> std::sync::Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    /// Run one store call, or fail with [`StoreError::Unavailable`] when the server has not
    /// answered within [`PgOptions::call_timeout`]. The call is dropped with its connection
    /// mid-statement. sqlx pings a connection before it returns to the pool and closes it if
    /// that fails; on a half-open path the ping itself waits until TCP gives up, so each
    /// connection cut off this way keeps its place in the pool until then
    /// ([`PgOptions::max_connections`] bounds how many).
    async fn bounded<T, E: From<StoreError>>(
        &self,
        what: &'static str,
        call: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let Some(limit) = self.inner.opts.call_timeout else {
            return call.await;
        };
        tokio::time::timeout(limit, call)
            .await
            .unwrap_or_else(|_| Err(no_answer(&self.inner.target, what, limit).into()))
    }
}

/// The error of a call that got no answer in time.
fn no_answer(target: &str, what: &str, limit: Duration) -> StoreError {
    StoreError::Unavailable {
        backend: BACKEND,
        detail: format!(
            "no answer from PostgreSQL at {target} within {limit:?} ({what}): the network path \
             or the server is stuck (PgOptions::call_timeout). A batch that timed out may \
             have been applied: a retried commit answers AlreadyCommitted"
        ),
    }
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn batching(&self) -> BatchingHint {
        BatchingHint {
            group_commit: true,
            max_batch: 256,
            max_in_flight: self.inner.opts.max_in_flight.max(1),
        }
    }

    fn write_paths(&self) -> Vec<(&'static str, u64)> {
        let counts = self.batch_paths();
        vec![
            ("one_statement", counts.one_statement),
            ("one_statement_refused", counts.refused),
        ]
    }

    async fn now(&self) -> Result<Timestamp, StoreError> {
        self.bounded("now", read::now(&self.inner)).await
    }

    async fn ensure_space(
        &self,
        space: &SpaceName,
        config: &SpaceConfig,
    ) -> Result<SpaceInfo, StoreError> {
        self.bounded(
            "ensure space",
            read::ensure_space(&self.inner, space, config),
        )
        .await
    }

    async fn space_info(&self, space: &SpaceName) -> Result<Option<SpaceInfo>, StoreError> {
        self.bounded("space info", read::space_info(&self.inner, space))
            .await
    }

    async fn list_spaces(&self) -> Result<Vec<SpaceInfo>, StoreError> {
        self.bounded("list spaces", read::list_spaces(&self.inner))
            .await
    }

    async fn execute(&self, commands: Vec<Command>) -> Result<BatchOutcome, StoreError> {
        if commands.is_empty() {
            return Ok(BatchOutcome::default());
        }
        self.bounded("a batch", async {
            if let Some(outcome) = one_statement::try_execute(&self.inner, &commands).await? {
                return Ok(outcome);
            }
            execute::execute(&self.inner, commands).await
        })
        .await
    }

    async fn read(
        &self,
        space: &SpaceName,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.bounded("read", read::read(&self.inner, space, from, limit))
            .await
    }

    async fn slot(&self, space: &SpaceName, seq: u64) -> Result<Option<SlotView>, StoreError> {
        self.bounded("slot", read::slot(&self.inner, space, seq))
            .await
    }

    fn listen(&self, listener: ProgressListener) -> bool {
        if !self.inner.opts.listen {
            return false;
        }
        notify::register(self, listener)
    }

    async fn register_owner(&self, owner: &str) -> Result<(), StoreError> {
        self.bounded("register owner", liveness::register_owner(self, owner))
            .await
    }

    async fn expire_dead_owners(&self) -> Result<u64, StoreError> {
        self.bounded(
            "expire dead owners",
            liveness::expire_dead_owners(&self.inner),
        )
        .await
    }

    async fn expired_backlog(&self) -> Result<Vec<(SpaceName, u64)>, StoreError> {
        self.bounded("expired backlog", recovery::expired_backlog(&self.inner))
            .await
    }

    async fn claim_expired(&self, request: &ClaimRequest) -> Result<Vec<ExpiredSlot>, StoreError> {
        self.bounded(
            "claim expired",
            recovery::claim_expired(&self.inner, request),
        )
        .await
    }

    async fn resolve(&self, items: Vec<Resolve>) -> Result<BatchOutcome, StoreError> {
        self.bounded("resolve", recovery::resolve(&self.inner, items))
            .await
    }

    async fn parked(&self, query: &ParkedQuery) -> Result<Vec<ParkedWork>, StoreError> {
        self.bounded("parked", recovery::parked(&self.inner, query))
            .await
    }

    async fn settle_parked(
        &self,
        commands: Vec<ParkedCommand>,
    ) -> Result<BatchOutcome, StoreError> {
        self.bounded(
            "settle parked",
            recovery::settle_parked(&self.inner, commands),
        )
        .await
    }

    async fn commit_late(&self, items: Vec<LateCommit>) -> Result<BatchOutcome, StoreError> {
        self.bounded("commit late", recovery::commit_late(&self.inner, items))
            .await
    }

    fn checks_fences(&self) -> bool {
        // The batch transaction compares fence epochs with the `resources` rows it reads.
        true
    }

    async fn resources(&self, commands: Vec<ResourceCommand>) -> Result<BatchOutcome, StoreError> {
        self.bounded("resources", resources::resources(&self.inner, commands))
            .await
    }

    async fn resource_leases(
        &self,
        query: &ResourceQuery,
    ) -> Result<Vec<ResourceLease>, StoreError> {
        self.bounded(
            "resource leases",
            resources::resource_leases(&self.inner, query),
        )
        .await
    }

    async fn resource_epoch(&self, resource: &str) -> Result<u64, StoreError> {
        self.bounded(
            "resource epoch",
            resources::resource_epoch(&self.inner, resource),
        )
        .await
    }

    async fn slot_history(&self, query: &HistoryQuery) -> Result<Vec<SlotEvent>, StoreError> {
        self.bounded("slot history", history::slot_history(&self.inner, query))
            .await
    }

    async fn prune_slot_history(&self, before: Timestamp) -> Result<u64, StoreError> {
        history::prune(&self.inner, before).await
    }

    async fn resource_history(
        &self,
        resource: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ResourceEvent>, StoreError> {
        self.bounded(
            "resource history",
            resources::resource_history(&self.inner, resource, limit),
        )
        .await
    }

    async fn register_consumer(
        &self,
        space: &SpaceName,
        name: &str,
        retain: bool,
    ) -> Result<ConsumerState, ConsumerError> {
        validate_consumer(name)?;
        self.bounded(
            "register consumer",
            consumers::register(&self.inner, (space, name), retain),
        )
        .await
    }

    async fn consumer(
        &self,
        space: &SpaceName,
        name: &str,
    ) -> Result<Option<ConsumerState>, StoreError> {
        self.bounded(
            "register consumer",
            consumers::consumer(&self.inner, (space, name)),
        )
        .await
    }

    async fn save_checkpoint(
        &self,
        space: &SpaceName,
        name: &str,
        expected: u64,
        seq: u64,
    ) -> Result<ConsumerState, ConsumerError> {
        self.bounded(
            "save checkpoint",
            consumers::save(&self.inner, (space, name), expected, seq),
        )
        .await
    }

    async fn reset_consumer(
        &self,
        space: &SpaceName,
        name: &str,
        to: u64,
        actor: &str,
    ) -> Result<ConsumerState, ConsumerError> {
        validate_id("actor", actor)?;
        self.bounded(
            "reset consumer",
            consumers::reset(&self.inner, (space, name), to, actor),
        )
        .await
    }

    async fn remove_consumer(
        &self,
        space: &SpaceName,
        name: &str,
        actor: &str,
    ) -> Result<ConsumerState, ConsumerError> {
        validate_id("actor", actor)?;
        self.bounded(
            "remove consumer",
            consumers::remove(&self.inner, (space, name), actor),
        )
        .await
    }

    async fn list_consumers(
        &self,
        space: Option<&SpaceName>,
    ) -> Result<Vec<ConsumerState>, StoreError> {
        self.bounded("save checkpoint", consumers::list(&self.inner, space))
            .await
    }

    async fn prune_entries(
        &self,
        space: &SpaceName,
        below: u64,
        actor: &str,
    ) -> Result<RetentionEvent, ConsumerError> {
        validate_id("actor", actor)?;
        consumers::prune(&self.inner, space, below, actor).await
    }

    async fn retention_history(
        &self,
        space: &SpaceName,
    ) -> Result<Vec<RetentionEvent>, StoreError> {
        self.bounded("retention history", consumers::history(&self.inner, space))
            .await
    }
}
