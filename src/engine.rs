//! The engine: one store, its settings, and the machinery every handle shares.
//!
//! An application builds one [`Engine`] per store (two engines in one process are fine:
//! nothing is global), opens [`Space`]s on it, and hands out the engine by cloning it (it is
//! an `Arc` inside).

use std::sync::Arc;

use seqlease_core::{
    Clock, Command, GrantRequest, InvalidInput, LeaseError, LeaseKey, OperationBody, Reply,
    SpaceConfig, SpaceInfo, SpaceName, Store, StoreError, SystemClock, Timestamp, validate_id,
};

use crate::barrier::Spaces;
use crate::config::EngineConfig;
use crate::error::{Error, Result};
use crate::group_commit::{Dispatcher, GrantedNow, Now, PairNow};
use crate::open::open_store;
use crate::space::Space;
use crate::telemetry::{AlertThresholds, EngineTelemetry, Telemetry};

/// The handle applications hold. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<EngineInner>,
}

pub(crate) struct EngineInner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) config: EngineConfig,
    pub(crate) spaces: Arc<Spaces>,
    pub(crate) dispatcher: Dispatcher,
    /// Set by the cleanup service during cascades: new leases get longer TTLs.
    pub(crate) recovery_mode: crate::cleanup::RecoveryMode,
    /// Woken when a resource lease is released through this engine (waiting acquirers).
    pub(crate) resource_released: tokio::sync::Notify,
    /// Metrics, gauges' state and the alert evaluator.
    pub(crate) telemetry: Arc<EngineTelemetry>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("backend", &self.inner.store.backend())
            .field("owner", &self.inner.config.owner)
            .finish()
    }
}

impl Engine {
    /// Start configuring an engine.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// An engine with default settings on the store named by `url`
    /// (`memory`, `sqlite://PATH`, `postgres://USER@HOST/DB`).
    pub async fn open(url: &str) -> Result<Engine> {
        Engine::builder().url(url).build().await
    }

    /// The store behind this engine.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Open `name`, creating it with the engine's default capacity if it does not exist.
    /// An existing space keeps its settings.
    pub async fn space(&self, name: &str) -> Result<Space> {
        let name = SpaceName::new(name)?;
        let info = match self.inner.store.space_info(&name).await? {
            Some(info) => info,
            None => {
                let config = SpaceConfig {
                    capacity: self.inner.config.default_capacity,
                };
                self.inner.store.ensure_space(&name, &config).await?
            }
        };
        Ok(self.space_handle(info))
    }

    /// Open `name` if the store has it, `None` if it does not: nothing is created. For
    /// tools that inspect or administer spaces, where a mistyped name must not create one.
    pub async fn existing_space(&self, name: &str) -> Result<Option<Space>> {
        let name = SpaceName::new(name)?;
        let info = self.inner.store.space_info(&name).await?;
        Ok(info.map(|info| self.space_handle(info)))
    }

    /// Open `name` with explicit settings, creating it or updating its settings.
    pub async fn space_with(&self, name: &str, config: SpaceConfig) -> Result<Space> {
        let name = SpaceName::new(name)?;
        if config.capacity == 0 {
            return Err(InvalidInput::Setting {
                setting: "capacity",
                reason: format!("space {name}: capacity must be at least 1"),
            }
            .into());
        }
        let info = self.inner.store.ensure_space(&name, &config).await?;
        Ok(self.space_handle(info))
    }

    fn space_handle(&self, info: SpaceInfo) -> Space {
        let signals = self.inner.spaces.signals(&info.name, info.watermark);
        let telemetry = self.inner.telemetry.refresh(&info);
        Space::new(self.clone(), info.name, signals, telemetry)
    }

    /// Every space in the store.
    pub async fn spaces(&self) -> Result<Vec<SpaceInfo>, StoreError> {
        self.inner.store.list_spaces().await
    }

    /// Every consumer of every space, with checkpoints and lag (watermark − checkpoint).
    pub async fn consumers(&self) -> Result<Vec<seqlease_core::ConsumerState>, StoreError> {
        self.inner.store.list_consumers(None).await
    }

    /// Configure the cleanup service for this engine's store.
    pub fn cleanup(&self) -> crate::cleanup::CleanupBuilder {
        crate::cleanup::CleanupBuilder::new(self.clone())
    }

    /// Whether the cleanup service has put this engine in recovery mode (a cascade).
    pub fn in_recovery_mode(&self) -> bool {
        self.inner.recovery_mode.is_active()
    }

    /// Counters of this engine's write path.
    pub fn stats(&self) -> EngineStats {
        let (batches, commands) = self.inner.dispatcher.stats.totals();
        EngineStats {
            group_commit_batches: batches,
            group_commit_commands: commands,
        }
    }

    /// The store's clock.
    pub async fn now(&self) -> Result<Timestamp, StoreError> {
        self.inner.store.now().await
    }

    /// Send one command through group commit.
    pub(crate) async fn dispatch(&self, command: Command) -> Result<Reply> {
        // A store that answers on the caller's thread (memory) never returns `Pending`, so a
        // task looping on it would hold its runtime thread: readers, the cleanup service and
        // other workers queued there would not run. Each call takes a unit of the task's
        // tokio budget, as a channel receive does; the task yields when the budget is spent.
        tokio::task::consume_budget().await;
        match self.dispatch_now(command) {
            Now::Answered(reply) => reply,
            Now::Later(command) => self.dispatch_later(command).await,
        }
    }

    /// [`Engine::dispatch`] for a command [`Engine::dispatch_now`] handed back.
    pub(crate) async fn dispatch_later(&self, command: Command) -> Result<Reply> {
        self.noted(self.inner.dispatcher.one(command).await)
    }

    /// Apply one command on the caller's thread if the store can (see
    /// [`Dispatcher::one_now`]); callers on the hot path try this before building the
    /// future of [`Engine::dispatch`].
    pub(crate) fn dispatch_now(&self, command: Command) -> Now {
        match self.inner.dispatcher.one_now(command) {
            Now::Answered(reply) => Now::Answered(self.noted(reply)),
            later => later,
        }
    }

    /// [`Engine::dispatch_now`] for a grant; see [`Dispatcher::grant_now`].
    pub(crate) fn grant_now(&self, request: GrantRequest) -> GrantedNow {
        match self.inner.dispatcher.grant_now(request) {
            GrantedNow::Answered(reply) => GrantedNow::Answered(self.noted(reply)),
            other => other,
        }
    }

    /// [`Engine::dispatch_now`] for a commit and the grant after it; see
    /// [`Dispatcher::commit_and_grant_now`].
    pub(crate) fn commit_and_grant_now(
        &self,
        key: LeaseKey,
        body: OperationBody,
        request: GrantRequest,
    ) -> PairNow {
        let pair = self
            .inner
            .dispatcher
            .commit_and_grant_now(key, body, request);
        // Counted in place: the answers are large, and every move of them is a copy.
        if let PairNow::Answered(committed, granted) = &pair {
            self.note(committed);
            if let GrantedNow::Answered(granted) = granted {
                self.note(granted);
            }
        }
        pair
    }

    /// A command's reply, its failure counted (stale epochs, store errors).
    fn noted(&self, reply: Result<Reply>) -> Result<Reply> {
        self.note(&reply);
        reply
    }

    fn note(&self, reply: &Result<Reply>) {
        if let Err(e) = reply {
            self.inner.telemetry.command_failed(e);
        }
    }

    /// Send commands as one batch of their own.
    pub(crate) async fn dispatch_many(
        &self,
        commands: Vec<Command>,
    ) -> Result<Vec<Result<Reply, LeaseError>>, StoreError> {
        // See `Engine::dispatch`.
        tokio::task::consume_budget().await;
        let replies = self
            .inner
            .dispatcher
            .many(commands)
            .await
            .inspect_err(|e| self.inner.telemetry.store_error(e))?;
        for reply in &replies {
            if let Err(LeaseError::StaleEpoch { resource, .. }) = reply {
                self.inner.telemetry.epoch_conflict(resource);
            }
        }
        Ok(replies)
    }
}

/// Counters of an engine's write path (see [`Engine::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Store transactions sent by group commit (0 when the store is called directly).
    pub group_commit_batches: u64,
    /// Commands those transactions carried; divided by the batches, the mean batch size.
    pub group_commit_commands: u64,
}

/// Builds an [`Engine`].
#[derive(Default)]
pub struct EngineBuilder {
    store: Option<Arc<dyn Store>>,
    url: Option<String>,
    clock: Option<Arc<dyn Clock>>,
    config: EngineConfig,
    telemetry: Telemetry,
    alerts: AlertThresholds,
}

impl EngineBuilder {
    /// Use this store.
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Open the store named by `url` (`memory`, `sqlite://PATH`, `postgres://…`) at build time.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// The clock for a store opened by URL (tests inject a `ManualClock`).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Replace all settings.
    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    /// The worker id recorded on leases that do not name one.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.config.owner = owner.into();
        self
    }

    /// How metrics are recorded and exported (default: [`Telemetry::FromEnv`], which
    /// exports over OTLP only when `OTEL_EXPORTER_OTLP_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` is set). See docs/telemetry.md.
    pub fn telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = telemetry;
        self
    }

    /// Record metrics into the application's own meter provider (shorthand for
    /// `telemetry(Telemetry::Provider(provider))`).
    pub fn meter_provider(self, provider: opentelemetry_sdk::metrics::SdkMeterProvider) -> Self {
        self.telemetry(Telemetry::Provider(provider))
    }

    /// Thresholds and window of the alert evaluator behind [`Engine::health`].
    pub fn alert_thresholds(mut self, thresholds: AlertThresholds) -> Self {
        self.alerts = thresholds;
        self
    }

    /// Build the engine. Must run inside a tokio runtime (it starts the group-commit task).
    pub async fn build(self) -> Result<Engine> {
        let config = self.config;
        validate_id("owner", &config.owner)?;
        if config.min_ttl.is_zero() || config.min_ttl > config.max_ttl {
            return Err(InvalidInput::Setting {
                setting: "min_ttl/max_ttl",
                reason: format!(
                    "need 0 < min_ttl <= max_ttl, got {:?}..{:?}",
                    config.min_ttl, config.max_ttl
                ),
            }
            .into());
        }
        let store = match (self.store, self.url) {
            (Some(store), _) => store,
            (None, Some(url)) => {
                open_store(&url, self.clock.unwrap_or_else(|| Arc::new(SystemClock))).await?
            }
            (None, None) => {
                return Err(InvalidInput::Setting {
                    setting: "store",
                    reason: "give the builder a store or a URL".into(),
                }
                .into());
            }
        };
        let spaces = Arc::new(Spaces::default());
        // Weak: a store shared by several engines must not keep a dropped engine's waiters alive.
        let listener_spaces = Arc::downgrade(&spaces);
        let cross_process = store.listen(Arc::new(move |p| {
            if let Some(spaces) = listener_spaces.upgrade() {
                spaces.apply_progress(p);
            }
        }));
        tracing::debug!(backend = store.backend(), cross_process, "engine built");
        // Lets stores that can see a process die (PostgreSQL) expire this engine's leases
        // sooner than their TTL if it crashes.
        store.register_owner(&config.owner).await?;
        let telemetry = Arc::new(EngineTelemetry::new(
            self.telemetry,
            self.alerts,
            store.clone(),
            spaces.clone(),
            store.now().await?,
        )?);
        let group_commit = config.group_commit.unwrap_or(store.batching().group_commit);
        let dispatcher = Dispatcher::new(
            store.clone(),
            spaces.clone(),
            group_commit,
            telemetry.clone(),
        );
        Ok(Engine {
            inner: Arc::new(EngineInner {
                store,
                config,
                spaces,
                dispatcher,
                recovery_mode: Default::default(),
                resource_released: tokio::sync::Notify::new(),
                telemetry,
            }),
        })
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        std::io::Error::other(e)
    }
}
