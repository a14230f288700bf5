//! Exactly-once apply: the read model is updated in the transaction that moves the
//! checkpoint, on the stores where the read model can live in the same database.
//!
//! - SQLite ([`Consumer::run_once_sqlite`]): the apply function runs on the store's write
//!   thread with the `rusqlite::Transaction` that then updates the checkpoint. It is a
//!   plain (synchronous) function: keep it to SQL on that transaction.
//! - PostgreSQL ([`Consumer::run_once_postgres`]): the apply function gets the transaction's
//!   `PgConnection` and returns a boxed future (`Box::pin(async move { … })`).
//!
//! Pass the same store object the engine was built on (or a clone of it): the consumer's
//! checkpoint lives there.

#[cfg(any(feature = "sqlite", feature = "postgres"))]
use super::{Batch, Consumer};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
use crate::error::Result;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
use seqlease_core::Entry;

#[cfg(feature = "sqlite")]
impl Consumer {
    /// Apply one batch exactly once on a SQLite store: `apply` runs for each entry, in order,
    /// inside the write transaction that then moves the checkpoint; an error from it rolls
    /// back its writes and the checkpoint together. Returns how many entries were applied
    /// (0: caught up).
    pub async fn run_once_sqlite<F>(
        &mut self,
        store: &seqlease_sqlite::SqliteStore,
        apply: F,
    ) -> Result<usize>
    where
        F: Fn(
                &seqlease_sqlite::rusqlite::Transaction<'_>,
                &Entry,
            ) -> std::result::Result<(), seqlease_sqlite::ApplyError>
            + Send
            + 'static,
    {
        let batch = self.next_batch().await?;
        if batch.is_empty() {
            return Ok(0);
        }
        let Batch { after, entries } = batch;
        let n = entries.len();
        let state = store
            .apply_exactly_once(
                self.space.name(),
                &self.name,
                after,
                entries,
                move |tx, es| es.iter().try_for_each(|e| apply(tx, e)),
            )
            .await?;
        self.checkpoint = state.checkpoint;
        Ok(n)
    }

    /// [`Consumer::run_once_sqlite`] until caught up; returns how many entries.
    pub async fn catch_up_sqlite<F>(
        &mut self,
        store: &seqlease_sqlite::SqliteStore,
        apply: F,
    ) -> Result<u64>
    where
        F: Fn(
                &seqlease_sqlite::rusqlite::Transaction<'_>,
                &Entry,
            ) -> std::result::Result<(), seqlease_sqlite::ApplyError>
            + Clone
            + Send
            + 'static,
    {
        let mut total = 0;
        loop {
            match self.run_once_sqlite(store, apply.clone()).await? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    }
}

#[cfg(feature = "postgres")]
impl Consumer {
    /// Apply one batch exactly once on a PostgreSQL store: `apply` runs for each entry, in
    /// order, on the connection of the transaction that then moves the checkpoint; an
    /// error, a panic or a dropped future rolls back its writes and the checkpoint
    /// together. Returns how many entries were applied (0: caught up).
    pub async fn run_once_postgres<F>(
        &mut self,
        store: &seqlease_postgres::PgStore,
        apply: F,
    ) -> Result<usize>
    where
        F: for<'c> Fn(
                &'c mut seqlease_postgres::sqlx::PgConnection,
                &'c Entry,
            ) -> seqlease_postgres::ApplyFuture<'c>
            + Send
            + Sync
            + 'static,
    {
        self.run_once_postgres_shared(store, &std::sync::Arc::new(apply))
            .await
    }

    async fn run_once_postgres_shared<F>(
        &mut self,
        store: &seqlease_postgres::PgStore,
        apply: &std::sync::Arc<F>,
    ) -> Result<usize>
    where
        F: for<'c> Fn(
                &'c mut seqlease_postgres::sqlx::PgConnection,
                &'c Entry,
            ) -> seqlease_postgres::ApplyFuture<'c>
            + Send
            + Sync
            + 'static,
    {
        let batch = self.next_batch().await?;
        if batch.is_empty() {
            return Ok(0);
        }
        let apply = apply.clone();
        let state = store
            .apply_exactly_once(
                self.space.name(),
                &self.name,
                batch.after,
                batch.entries(),
                move |conn, entries| {
                    Box::pin(async move {
                        for entry in entries {
                            apply(&mut *conn, entry).await?;
                        }
                        Ok(())
                    })
                },
            )
            .await?;
        self.checkpoint = state.checkpoint;
        Ok(batch.len())
    }

    /// [`Consumer::run_once_postgres`] until caught up; returns how many entries.
    pub async fn catch_up_postgres<F>(
        &mut self,
        store: &seqlease_postgres::PgStore,
        apply: F,
    ) -> Result<u64>
    where
        F: for<'c> Fn(
                &'c mut seqlease_postgres::sqlx::PgConnection,
                &'c Entry,
            ) -> seqlease_postgres::ApplyFuture<'c>
            + Send
            + Sync
            + 'static,
    {
        let apply = std::sync::Arc::new(apply);
        let mut total = 0;
        loop {
            match self.run_once_postgres_shared(store, &apply).await? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    }
}
