//! Cross-process wake-ups: LISTEN/NOTIFY.
//!
//! Every batch that resolves slots in a space sends, in its own transaction,
//! `pg_notify(channel, 'space:watermark:freed')`; PostgreSQL delivers it to every listening
//! session when (and only if) the transaction commits. The first engine that registers a
//! listener on a [`PgStore`] starts one background task with its own connection that
//! `LISTEN`s on the store's channel and hands each notification to the registered
//! listeners as a [`SpaceProgress`], which wakes readers and capacity waiters in this
//! process.
//!
//! Notifications can be missed: while the listening connection is down (it reconnects
//! after a pause and listens again), or if the server's notification queue overflows. The
//! engine's slow fallback re-read of the space (`external_poll_interval`) covers that.
//!
//! The channel is per schema (`seqlease_progress`, or `seqlease_progress_<schema>`), so two
//! seqlease installations in one database do not wake each other.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use seqlease_core::{ProgressListener, SpaceName, SpaceProgress};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::watch;

use crate::PgStore;

/// The NOTIFY channel of a store in `schema`.
pub(crate) fn channel_name(schema: Option<&str>) -> String {
    match schema {
        Some(s) => format!("seqlease_progress_{s}"),
        None => "seqlease_progress".to_string(),
    }
}

/// Register `listener`; start the LISTEN task on first use. `false` outside a tokio
/// runtime (no task can be started; the engine falls back to re-reading).
pub(crate) fn register(store: &PgStore, listener: ProgressListener) -> bool {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return false;
    };
    let inner = store.inner();
    inner.listeners.lock().push(listener);
    let mut listening = inner.listening.lock();
    if !*listening {
        *listening = true;
        let task = ListenTask {
            options: inner.connect.clone(),
            channel: inner.channel.clone(),
            listeners: inner.listeners.clone(),
            shutdown: inner.shutdown.subscribe(),
            target: inner.target.clone(),
            connect_timeout: inner.opts.connect_timeout,
        };
        handle.spawn(task.run());
    }
    true
}

/// Parse `space:watermark:freed`; `None` for anything else (never sent by seqlease).
pub(crate) fn parse(payload: &str) -> Option<SpaceProgress> {
    let mut parts = payload.rsplitn(3, ':');
    let freed = parts.next()?.parse().ok()?;
    let watermark = parts.next()?.parse().ok()?;
    let space = SpaceName::new(parts.next()?).ok()?;
    Some(SpaceProgress {
        space,
        watermark,
        freed,
    })
}

struct ListenTask {
    options: PgConnectOptions,
    channel: String,
    listeners: Arc<Mutex<Vec<ProgressListener>>>,
    shutdown: watch::Receiver<()>,
    target: String,
    connect_timeout: Duration,
}

impl ListenTask {
    async fn run(mut self) {
        loop {
            match self.listen().await {
                Ok(()) => return, // the store was dropped
                Err(e) => {
                    tracing::warn!(target = %self.target, error = %e, "LISTEN connection failed; reconnecting in 1 s (waiters fall back to re-reading meanwhile)");
                }
            }
            tokio::select! {
                _ = self.shutdown.changed() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Listen until the store is dropped (`Ok`) or the connection fails (`Err`).
    async fn listen(&mut self) -> Result<(), sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(self.connect_timeout)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(self.options.clone());
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(&self.channel).await?;
        loop {
            tokio::select! {
                _ = self.shutdown.changed() => return Ok(()),
                next = listener.try_recv() => {
                    let Some(first) = next? else {
                        // The connection dropped and was re-established (listening again);
                        // whatever was sent meanwhile is covered by the fallback re-read.
                        continue;
                    };
                    let mut progress: Vec<SpaceProgress> = parse(first.payload()).into_iter().collect();
                    while let Some(more) = listener.next_buffered() {
                        progress.extend(parse(more.payload()));
                    }
                    if progress.is_empty() {
                        continue;
                    }
                    let listeners: Vec<ProgressListener> = self.listeners.lock().clone();
                    for l in listeners {
                        l(&progress);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip() {
        let p = parse("orders-1.x:42:3").unwrap();
        assert_eq!(
            (p.space.as_str(), p.watermark, p.freed),
            ("orders-1.x", 42, 3)
        );
        assert!(parse("nope").is_none());
        assert!(parse("a:b:c").is_none());
        assert!(parse("bad space:1:1").is_none());
    }

    #[test]
    fn channels_are_per_schema() {
        assert_eq!(channel_name(None), "seqlease_progress");
        assert_eq!(channel_name(Some("t1")), "seqlease_progress_t1");
    }
}
