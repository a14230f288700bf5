//! Schedule exploration of the in-process concurrency with [shuttle](https://docs.rs/shuttle).
//!
//! Three parts guard shared state between tasks: the barrier (watermark and capacity
//! wake-ups, [`barrier`]), the group-commit dispatcher (its queue, batches and in-flight
//! limit, [`group_commit`]) and the lease keeper (its cache of held resources against its
//! renewal task, [`keeper`]). Each check runs the real code as shuttle tasks under many
//! random schedules and asserts the part's contract; each comes with seeded bugs that some
//! schedule must expose, kept as tests, which shows the check can see that kind of bug.
//!
//! Shuttle switches tasks only where a task yields or blocks, so each tokio `watch`,
//! `Notify`, `mpsc` or `Semaphore` call is one atomic step here; a store round trip is a
//! yield ([`SlowStore`]), which is where real tasks interleave.

mod barrier;
mod group_commit;
mod keeper;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use seqlease_core::{
    BatchOutcome, BatchingHint, Command, ConsumerError, ConsumerState, Entry, ResourceCommand,
    RetentionEvent, SlotView, SpaceConfig, SpaceInfo, SpaceName, Store, StoreError, Timestamp,
};
use seqlease_memory::MemoryStore;
use shuttle::future::yield_now;

/// Schedules per test: enough for shuttle's random scheduler to hit the seeded bugs every
/// run (measured: within the first few dozen), cheap enough for every `cargo test`.
const SCHEDULES: usize = 2000;

fn name() -> SpaceName {
    SpaceName::new("orders").expect("a valid space name")
}

/// The in-memory store behind a round trip: every batch yields before and after it runs,
/// so other tasks interleave while it is "in the database", as they do with SQLite or
/// PostgreSQL. Records what the dispatcher's contract bounds.
struct SlowStore {
    inner: MemoryStore,
    hint: BatchingHint,
    running: AtomicUsize,
    /// Most batches in the store at once.
    max_running: AtomicUsize,
    /// Largest batch.
    max_batch: AtomicUsize,
    /// Fail the next batch, applying nothing (a dropped connection).
    fail_next: AtomicBool,
    /// The operation ids of every batch's grants, in order.
    grant_batches: std::sync::Mutex<Vec<Vec<String>>>,
}

impl SlowStore {
    fn new(max_batch: usize, max_in_flight: usize) -> Self {
        SlowStore {
            inner: MemoryStore::new(),
            hint: BatchingHint {
                group_commit: true,
                max_batch,
                max_in_flight,
            },
            running: AtomicUsize::new(0),
            max_running: AtomicUsize::new(0),
            max_batch: AtomicUsize::new(0),
            fail_next: AtomicBool::new(false),
            grant_batches: std::sync::Mutex::default(),
        }
    }

    async fn round_trip<T>(&self, len: usize, work: impl Future<Output = T>) -> T {
        self.max_batch.fetch_max(len, Ordering::SeqCst);
        let running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(running, Ordering::SeqCst);
        yield_now().await;
        let out = work.await;
        yield_now().await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        out
    }
}

#[async_trait]
impl Store for SlowStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn batching(&self) -> BatchingHint {
        self.hint
    }

    async fn now(&self) -> Result<Timestamp, StoreError> {
        self.inner.now().await
    }

    async fn ensure_space(
        &self,
        space: &SpaceName,
        config: &SpaceConfig,
    ) -> Result<SpaceInfo, StoreError> {
        self.inner.ensure_space(space, config).await
    }

    async fn space_info(&self, space: &SpaceName) -> Result<Option<SpaceInfo>, StoreError> {
        self.inner.space_info(space).await
    }

    async fn list_spaces(&self) -> Result<Vec<SpaceInfo>, StoreError> {
        self.inner.list_spaces().await
    }

    async fn execute(&self, commands: Vec<Command>) -> Result<BatchOutcome, StoreError> {
        let len = commands.len();
        let grants = commands.iter().filter_map(|c| match c {
            Command::Grant(g) => Some(g.operation_id.clone()),
            _ => None,
        });
        self.grant_batches
            .lock()
            .expect("not poisoned")
            .push(grants.collect());
        if self.fail_next.swap(false, Ordering::SeqCst) {
            return self
                .round_trip(len, async {
                    Err(StoreError::Unavailable {
                        backend: "memory",
                        detail: "the connection dropped (injected)".into(),
                    })
                })
                .await;
        }
        self.round_trip(len, self.inner.execute(commands)).await
    }

    async fn read(
        &self,
        space: &SpaceName,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.inner.read(space, from, limit).await
    }

    async fn slot(&self, space: &SpaceName, seq: u64) -> Result<Option<SlotView>, StoreError> {
        self.inner.slot(space, seq).await
    }

    async fn resources(&self, commands: Vec<ResourceCommand>) -> Result<BatchOutcome, StoreError> {
        self.round_trip(commands.len(), self.inner.resources(commands))
            .await
    }

    async fn register_consumer(
        &self,
        space: &SpaceName,
        name: &str,
        retain: bool,
    ) -> Result<ConsumerState, ConsumerError> {
        self.inner.register_consumer(space, name, retain).await
    }

    async fn consumer(
        &self,
        space: &SpaceName,
        name: &str,
    ) -> Result<Option<ConsumerState>, StoreError> {
        self.inner.consumer(space, name).await
    }

    async fn save_checkpoint(
        &self,
        space: &SpaceName,
        name: &str,
        expected: u64,
        seq: u64,
    ) -> Result<ConsumerState, ConsumerError> {
        self.inner.save_checkpoint(space, name, expected, seq).await
    }

    async fn reset_consumer(
        &self,
        space: &SpaceName,
        name: &str,
        to: u64,
        actor: &str,
    ) -> Result<ConsumerState, ConsumerError> {
        self.inner.reset_consumer(space, name, to, actor).await
    }

    async fn remove_consumer(
        &self,
        space: &SpaceName,
        name: &str,
        actor: &str,
    ) -> Result<ConsumerState, ConsumerError> {
        self.inner.remove_consumer(space, name, actor).await
    }

    async fn list_consumers(
        &self,
        space: Option<&SpaceName>,
    ) -> Result<Vec<ConsumerState>, StoreError> {
        self.inner.list_consumers(space).await
    }

    async fn prune_entries(
        &self,
        space: &SpaceName,
        below: u64,
        actor: &str,
    ) -> Result<RetentionEvent, ConsumerError> {
        self.inner.prune_entries(space, below, actor).await
    }

    async fn retention_history(
        &self,
        space: &SpaceName,
    ) -> Result<Vec<RetentionEvent>, StoreError> {
        self.inner.retention_history(space).await
    }
}

/// Never: the in-process wake-up is the only way on, so a lost one blocks for good.
fn no_fallback() -> impl Future<Output = Result<(), ()>> {
    std::future::pending()
}

/// Run `scenario` under `SCHEDULES` random schedules; `Err` if some schedule failed.
fn explore(scenario: impl Fn() + Send + Sync + 'static) -> std::thread::Result<()> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        shuttle::check_random(scenario, SCHEDULES)
    }))
}
