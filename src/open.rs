//! Opening a store from the one `--db` URL every tool uses.
//!
//! `memory` (or `memory://`) is the in-memory store; `sqlite://PATH` (or `sqlite:PATH`) the
//! embedded SQLite store, created if missing; `postgres://…` or `postgresql://…` the
//! PostgreSQL store (migrated on connect; `sslmode=require` and friends for TLS).

use std::sync::Arc;

use seqlease_core::{Clock, Store, StoreError};
use seqlease_memory::MemoryStore;
#[cfg(feature = "sqlite")]
use seqlease_sqlite::{SqliteOptions, SqliteStore};

/// The store URL used when none is given: a SQLite file in the current directory.
pub const DEFAULT_URL: &str = "sqlite://seqlease.db";

/// Open the store named by `url`, with `clock` for stores that use the process clock.
pub async fn open_store(url: &str, clock: Arc<dyn Clock>) -> Result<Arc<dyn Store>, StoreError> {
    let url = url.trim();
    if url == "memory" || url == "memory://" || url == "memory:" {
        return Ok(Arc::new(MemoryStore::with_clock(clock)));
    }
    #[cfg(feature = "sqlite")]
    if url.starts_with("sqlite:") {
        let opts = SqliteOptions {
            clock,
            ..SqliteOptions::default()
        };
        return Ok(Arc::new(SqliteStore::open_url(url, opts).await?));
    }
    let is_postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
    #[cfg(feature = "postgres")]
    if is_postgres {
        // PostgreSQL decides expiry with the database clock, never a process clock.
        return Ok(Arc::new(
            seqlease_postgres::PgStore::connect(url, seqlease_postgres::PgOptions::default())
                .await?,
        ));
    }
    let reason = if url.starts_with("sqlite:") {
        "this build of seqlease was compiled without the sqlite feature"
    } else if is_postgres {
        "this build of seqlease was compiled without the postgres feature"
    } else {
        "unknown scheme"
    };
    Err(StoreError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    })
}
