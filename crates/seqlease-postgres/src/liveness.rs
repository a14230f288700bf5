//! Crash detection sooner than the TTL: owner locks and the dead-owner probe.
//!
//! A lease's TTL is the slow, always-correct way to learn that its worker is gone. On
//! PostgreSQL the store can tell sooner: while a process lives, each engine owner it
//! registered ([`Store::register_owner`](seqlease_core::Store::register_owner)) holds a
//! **session-level advisory lock** (`pg_advisory_lock_shared(CLASS, key(owner))`) on a
//! dedicated connection, and a row in the `owners` table names the key. When the process
//! dies (crash, `SIGKILL`, OOM kill, machine power-off), its TCP connection closes or times
//! out, PostgreSQL ends the session and releases its locks.
//!
//! The probe ([`expire_dead_owners`], run every [`PgOptions::dead_owner_probe`] by a
//! background task of every store) looks for registered owners whose lock no session holds
//! (`pg_locks`) and that still have live LEASED slots, and sets those slots'
//! `expires_at = now` under the space row lock, exactly as an expiry by TTL would look:
//! the recovery chain then resolves them, and their worker could not have committed anyway.
//!
//! Limits (see docs/postgres.md): a pooler in transaction mode (PgBouncer) does not keep
//! session locks, so point seqlease at the server or a session-mode pool; a process cut off
//! by a network partition keeps its lock until the server notices the dead connection (TCP
//! keepalive), and is then treated as dead although it may still run: its commits are
//! refused as expired, nothing is lost or duplicated; and when the lock connection itself
//! drops while the process lives, its owners look dead until it reconnects (within about a
//! second) and re-takes the locks. Owners named per grant (`Grant::owner`) that were never
//! registered are never probed: their leases expire by TTL only.
//!
//! [`PgOptions::dead_owner_probe`]: crate::PgOptions::dead_owner_probe

use std::collections::BTreeSet;
use std::sync::Weak;
use std::time::Duration;

use seqlease_core::StoreError;
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tokio::sync::watch;

use crate::error::map_sqlx;
use crate::{Inner, NOW_SQL, PgStore};

/// First key of every seqlease owner lock (two-key advisory locks), so they do not collide
/// with the application's own advisory locks on single `bigint` keys.
pub const LOCK_CLASS: i32 = 99_163_813;

/// The registered owners of one store and the connection that holds their locks.
#[derive(Default)]
pub(crate) struct Owners {
    state: tokio::sync::Mutex<OwnerConn>,
}

#[derive(Default)]
struct OwnerConn {
    conn: Option<PgConnection>,
    owners: BTreeSet<String>,
    keeper: bool,
}

impl Owners {
    /// Close the lock connection: the owners' locks are released.
    pub(crate) async fn close(&self) {
        let mut state = self.state.lock().await;
        state.owners.clear();
        if let Some(conn) = state.conn.take() {
            let _ = conn.close().await;
        }
    }
}

/// The second lock key of `owner` in `schema`: FNV-1a, 31 bits (stable across builds and
/// machines; a collision only makes detection more conservative).
pub(crate) fn lock_key(schema: Option<&str>, owner: &str) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in schema
        .unwrap_or("")
        .bytes()
        .chain(std::iter::once(b'/'))
        .chain(owner.bytes())
    {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h & 0x7fff_ffff) as i32
}

async fn take_lock(conn: &mut PgConnection, key: i32) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_lock_shared($1, $2)")
        .bind(LOCK_CLASS)
        .bind(key)
        .execute(conn)
        .await
        .map(|_| ())
}

/// Register `owner`: hold its lock for as long as this store lives, and record it.
pub(crate) async fn register_owner(store: &PgStore, owner: &str) -> Result<(), StoreError> {
    let inner = store.inner();
    let target = inner.target.as_str();
    let key = lock_key(inner.opts.schema.as_deref(), owner);
    let mut state = inner.owners.state.lock().await;
    if state.owners.contains(owner) && state.conn.is_some() {
        return Ok(());
    }
    if state.conn.is_none() {
        let conn = connect(&inner.connect, inner.opts.connect_timeout, target).await?;
        state.conn = Some(conn);
    }
    let conn = state
        .conn
        .as_mut()
        .expect("the lock connection was opened just above");
    // Lock first, then the row: a row whose lock nobody holds always means a dead owner.
    take_lock(conn, key)
        .await
        .map_err(|e| map_sqlx(e, target))?;
    let (pinned, offset) = inner.clock.params();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO owners (owner, lock_key, registered_at) VALUES ($3, $4, {NOW_SQL}) \
         ON CONFLICT (owner) DO UPDATE SET lock_key = excluded.lock_key"
    )))
    .bind(pinned)
    .bind(offset)
    .bind(owner)
    .bind(key)
    .execute(&inner.pool)
    .await
    .map_err(|e| map_sqlx(e, target))?;
    state.owners.insert(owner.to_string());
    if !state.keeper {
        state.keeper = true;
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(keep_locks(
                store.downgrade(),
                inner.shutdown.subscribe(),
                Duration::from_secs(1),
            ));
        }
    }
    Ok(())
}

async fn connect(
    options: &PgConnectOptions,
    timeout: Duration,
    target: &str,
) -> Result<PgConnection, StoreError> {
    use sqlx::ConnectOptions;
    match tokio::time::timeout(timeout, options.connect()).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(map_sqlx(e, target)),
        Err(_) => Err(StoreError::Unavailable {
            backend: crate::BACKEND,
            detail: format!("no answer from PostgreSQL at {target} within {timeout:?}"),
        }),
    }
}

/// Ping the lock connection; when it is gone, reconnect and take every lock again.
async fn keep_locks(store: Weak<Inner>, mut shutdown: watch::Receiver<()>, every: Duration) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let Some(inner) = store.upgrade() else { return };
        let mut state = inner.owners.state.lock().await;
        if state.owners.is_empty() {
            continue;
        }
        let alive = match state.conn.as_mut() {
            Some(conn) => conn.ping().await.is_ok(),
            None => false,
        };
        if alive {
            continue;
        }
        state.conn = None;
        let mut conn = match connect(&inner.connect, inner.opts.connect_timeout, &inner.target)
            .await
        {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "owner lock connection lost; this process's leases look dead to others until it reconnects");
                continue;
            }
        };
        let mut ok = true;
        for owner in &state.owners {
            let key = lock_key(inner.opts.schema.as_deref(), owner);
            if let Err(e) = take_lock(&mut conn, key).await {
                tracing::warn!(error = %e, owner, "re-taking an owner lock failed");
                ok = false;
                break;
            }
        }
        if ok {
            tracing::info!(target = %inner.target, "owner lock connection re-established");
            state.conn = Some(conn);
        }
    }
}

/// Start the background dead-owner probe of `store`.
pub(crate) fn spawn_probe(store: &PgStore, every: Duration, mut shutdown: watch::Receiver<()>) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak = store.downgrade();
    handle.spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let Some(inner) = weak.upgrade() else { return };
            match expire_dead_owners(&inner).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(expired = n, "expired the leases of dead owners"),
                Err(e) => tracing::debug!(error = %e, "dead-owner probe failed"),
            }
        }
    });
}

/// Registered owners whose lock no session holds, among those with live LEASED slots.
const DEAD_OWNERS_SQL: &str = "\
SELECT o.owner FROM owners o
WHERE NOT EXISTS (
        SELECT 1 FROM pg_locks l
        WHERE l.locktype = 'advisory' AND l.granted
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND l.classid = $1::int::oid AND l.objid = o.lock_key::oid AND l.objsubid = 2)
  AND EXISTS (
        SELECT 1 FROM slots s
        WHERE s.state = 0 AND s.owner = o.owner AND s.expires_at > $2)";

/// Expire at once the live LEASED slots of registered owners whose process is gone.
/// Returns how many slots were expired.
pub(crate) async fn expire_dead_owners(inner: &Inner) -> Result<u64, StoreError> {
    let target = inner.target.as_str();
    let map = |e| map_sqlx(e, target);
    let now = crate::read::now(inner).await?.as_micros();
    let dead: Vec<String> = sqlx::query_scalar(DEAD_OWNERS_SQL)
        .bind(LOCK_CLASS)
        .bind(now)
        .fetch_all(&inner.pool)
        .await
        .map_err(map)?;
    if dead.is_empty() {
        return Ok(0);
    }
    let mut tx = inner.pool.begin().await.map_err(map)?;
    // Same protocol as a batch: lock the spaces' rows in name order before touching slots.
    let (pinned, offset) = inner.clock.params();
    let rows: Vec<(i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, {NOW_SQL} FROM spaces \
         WHERE id IN (SELECT s.space_id FROM slots s WHERE s.state = 0 AND s.owner = ANY($3)) \
         ORDER BY name FOR UPDATE"
    )))
    .bind(pinned)
    .bind(offset)
    .bind(&dead)
    .fetch_all(&mut *tx)
    .await
    .map_err(map)?;
    let Some(&(_, now)) = rows.first() else {
        return Ok(0);
    };
    let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let expired = sqlx::query(
        "UPDATE slots SET expires_at = $1 \
         WHERE space_id = ANY($2) AND state = 0 AND owner = ANY($3) AND expires_at > $1",
    )
    .bind(now)
    .bind(&ids)
    .bind(&dead)
    .execute(&mut *tx)
    .await
    .map_err(map)?
    .rows_affected();
    tx.commit().await.map_err(map)?;
    if expired > 0 {
        tracing::warn!(owners = ?dead, expired, "owners' sessions ended: their leases were expired before their TTL");
    }
    Ok(expired)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_stable_and_non_negative() {
        let a = lock_key(None, "worker-1");
        assert_eq!(a, lock_key(None, "worker-1"));
        assert_ne!(a, lock_key(Some("s"), "worker-1"));
        assert!(a >= 0 && lock_key(Some("x"), "y") >= 0);
    }
}
