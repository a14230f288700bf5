//! What a store provides to be tested: a fresh store and control over its clock.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use seqlease::{Engine, EngineConfig};
use seqlease_core::{Store, TimeControl};

/// Reopens the same database (persistent stores only), as a restarted process would.
pub type Reopen = Box<dyn Fn() -> BoxFuture<'static, Arc<dyn Store>> + Send + Sync>;

/// A fresh, empty store under test.
pub struct Fixture {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Moves the store's clock.
    pub time: Arc<dyn TimeControl>,
    /// For persistent stores: open the same database again.
    pub reopen: Option<Reopen>,
    /// Anything that must live as long as the store (a temp dir).
    pub guard: Option<Box<dyn std::any::Any + Send + Sync>>,
    /// Force group commit on or off (`None`: follow the store's hint).
    pub group_commit: Option<bool>,
}

impl Fixture {
    /// An engine on this store with test-friendly settings: short minimum TTL and a
    /// cross-process poll interval long enough that a test only passes through wake-ups.
    pub async fn engine(&self) -> Engine {
        self.engine_with(test_config()).await
    }

    /// An engine on this store with `config`.
    pub async fn engine_with(&self, mut config: EngineConfig) -> Engine {
        config.group_commit = config.group_commit.or(self.group_commit);
        Engine::builder()
            .store(self.store.clone())
            .config(config)
            .build()
            .await
            .expect("engine builds")
    }

    /// Move the store's clock forward.
    pub fn advance(&self, by: Duration) {
        self.time.advance(by);
    }

    /// Step the store's clock back.
    pub fn step_back(&self, by: Duration) {
        self.time.step_back(by);
    }
}

/// The engine settings the suite uses unless a check needs others.
pub fn test_config() -> EngineConfig {
    EngineConfig {
        owner: "conformance".into(),
        min_ttl: Duration::from_millis(1),
        external_poll_interval: Duration::from_secs(3600),
        read_page: 64,
        ..EngineConfig::default()
    }
}

/// How the suite gets stores. Implement it once per backend.
#[async_trait]
pub trait Harness: Send + Sync {
    /// A fresh, empty store.
    async fn fresh(&self) -> Fixture;
}
