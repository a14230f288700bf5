//! Opening the store under test from a process of the harness, surviving an outage.
//!
//! Every process gets the store as a URL: `sqlite://PATH` (the one file all processes
//! share) or `postgres://…` (for workers and cleaners, the orchestrator's proxy; for the
//! orchestrator and the checker, the server itself). A process that starts while the
//! PostgreSQL server is restarting, or whose connections were just cut, retries with
//! backoff instead of failing: the harness tests what happens to the data, not whether a
//! process gives up.

use std::sync::Arc;
use std::time::Duration;

use seqlease::core::Store;
use seqlease::{Engine, EngineConfig, PgOptions, PgStore, SqliteOptions, SqliteStore, StoreError};

use crate::ChaosError;

/// Whether `db` names a PostgreSQL store.
pub fn is_postgres(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

/// Open the store at `db` once.
pub async fn open_once(db: &str) -> Result<Arc<dyn Store>, StoreError> {
    if is_postgres(db) {
        let opts = PgOptions {
            max_connections: 4,
            connect_timeout: Duration::from_secs(3),
            dead_owner_probe: Some(Duration::from_millis(250)),
            ..PgOptions::default()
        };
        return Ok(Arc::new(PgStore::connect(db, opts).await?));
    }
    let path = db
        .strip_prefix("sqlite://")
        .or_else(|| db.strip_prefix("sqlite:"))
        .ok_or_else(|| StoreError::BadUrl {
            url: db.to_string(),
            reason: "the harness runs on sqlite://PATH or postgres://…".into(),
        })?;
    let opts = SqliteOptions {
        read_connections: 2,
        // Longer than any pause the harness injects: a process stopped with SIGSTOP while
        // it holds the write lock stalls every other writer until it is continued.
        busy_timeout: Duration::from_secs(15),
        ..SqliteOptions::default()
    };
    Ok(Arc::new(SqliteStore::open(path.as_ref(), opts).await?))
}

/// Retry `attempt` with backoff (100 ms doubling to 2 s) for at most `patience`, logging
/// each failure under `what`.
pub async fn with_retry<T, E, F, Fut>(
    what: &str,
    patience: Duration,
    mut attempt: F,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    let mut backoff = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() + backoff < deadline => {
                tracing::warn!(error = %e, ?backoff, "{what} failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// An engine on `db` for `owner`, opened with retries (up to a minute).
pub async fn engine(db: &str, config: EngineConfig) -> Result<Engine, ChaosError> {
    let engine = with_retry("opening the store", Duration::from_secs(60), || async {
        let store = open_once(db).await.map_err(seqlease::Error::from)?;
        Engine::builder()
            .store(store)
            .config(config.clone())
            .build()
            .await
    })
    .await?;
    Ok(engine)
}

/// The engine's settings for a process of the harness.
pub fn config(owner: &str, ttl: Duration) -> EngineConfig {
    EngineConfig {
        owner: owner.to_string(),
        default_ttl: ttl,
        external_poll_interval: Duration::from_millis(100),
        ..EngineConfig::default()
    }
}
