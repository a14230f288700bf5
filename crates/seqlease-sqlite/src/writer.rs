//! The one write connection, shared behind an async mutex.
//!
//! SQLite admits one writer at a time, so the store keeps exactly one write connection and
//! hands it to one task at a time. A plain connection behind a mutex costs less per batch
//! than a pool of one (no acquire bookkeeping, no task spawned to return the connection),
//! and its statement cache stays warm for the life of the store.
//!
//! After a failed call the caller checks the connection with
//! [`WriterGuard::keep_if_alive`]: a connection that no longer answers (its worker thread
//! died, the file went away) is dropped and the next use reconnects. After
//! [`Writer::close`] every use fails with [`StoreError::Unavailable`].

use std::ops::{Deref, DerefMut};
use std::path::Path;

use seqlease_core::StoreError;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::{Mutex, MutexGuard};

use crate::error::{BACKEND, map_open, map_sqlx};

enum Slot {
    Open(SqliteConnection),
    /// Dropped after a failure; reconnect on next use.
    Lost,
    /// [`Writer::close`] was called.
    Closed,
}

/// The store's write connection.
pub(crate) struct Writer {
    slot: Mutex<Slot>,
    options: SqliteConnectOptions,
}

/// Exclusive use of the write connection.
pub(crate) struct WriterGuard<'a> {
    slot: MutexGuard<'a, Slot>,
}

impl Writer {
    /// Connect to `path` with `options`.
    pub async fn connect(options: SqliteConnectOptions, path: &Path) -> Result<Writer, StoreError> {
        let conn = options.connect().await.map_err(|e| map_open(e, path))?;
        Ok(Writer {
            slot: Mutex::new(Slot::Open(conn)),
            options,
        })
    }

    /// Wait for the connection, reconnecting if it was lost.
    pub async fn lock(&self) -> Result<WriterGuard<'_>, StoreError> {
        let mut slot = self.slot.lock().await;
        match &*slot {
            Slot::Open(_) => {}
            Slot::Closed => {
                return Err(StoreError::Unavailable {
                    backend: BACKEND,
                    detail: "the store was closed".to_string(),
                });
            }
            Slot::Lost => {
                let conn = self.options.connect().await.map_err(map_sqlx)?;
                tracing::info!("sqlite write connection re-established");
                *slot = Slot::Open(conn);
            }
        }
        Ok(WriterGuard { slot })
    }

    /// Close the connection, waiting for the current user to finish.
    pub async fn close(&self) {
        let mut slot = self.slot.lock().await;
        if let Slot::Open(conn) = std::mem::replace(&mut *slot, Slot::Closed)
            && let Err(e) = conn.close().await
        {
            tracing::warn!(error = %e, "closing the sqlite write connection failed");
        }
    }
}

impl WriterGuard<'_> {
    /// After a failure: keep the connection if it still answers, otherwise drop it so the
    /// next [`Writer::lock`] reconnects.
    pub async fn keep_if_alive(mut self) {
        if let Slot::Open(conn) = &mut *self.slot
            && let Err(e) = conn.ping().await
        {
            tracing::warn!(error = %e, "sqlite write connection lost; reconnecting on next use");
            *self.slot = Slot::Lost;
        }
    }
}

impl Deref for WriterGuard<'_> {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        match &*self.slot {
            Slot::Open(conn) => conn,
            _ => unreachable!("a WriterGuard is only handed out for an open connection"),
        }
    }
}

impl DerefMut for WriterGuard<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        match &mut *self.slot {
            Slot::Open(conn) => conn,
            _ => unreachable!("a WriterGuard is only handed out for an open connection"),
        }
    }
}
