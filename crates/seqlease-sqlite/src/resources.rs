//! Resource leases in the SQLite store (migration `0003_resources.sql`): the
//! compare-and-swap rules of `Store::resources`, with epochs that only ever grow.
//!
//! A batch of resource commands is one job on the write thread and one `BEGIN IMMEDIATE`
//! transaction: each command reads the resource's row, decides exactly as the in-memory
//! reference store does, and writes the row and its audit events back before the next
//! command runs, so later commands of a batch see what earlier ones did. The row of a
//! resource is never deleted, so its epoch survives release, expiry and restarts (I9); the
//! write path reads it in its own transaction to refuse stale fences.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use seqlease_core::{
    BatchOutcome, LeaseError, Reply, ResourceCommand, ResourceEvent, ResourceEventKind,
    ResourceLease, ResourceQuery, ResourceReply, StoreError, Timestamp,
};
use sqlx::Row;
use sqlx::sqlite::SqlitePool;

use crate::codec::{epoch_from_column, epoch_to_column, to_u32};
use crate::error::{WriteError, corrupt_value, map_sqlx};

/// A resource's row as a command sees it.
struct Record {
    epoch: u64,
    /// The current or last lease.
    lease: Option<ResourceLease>,
    released: bool,
}

impl Record {
    fn live(&self, now: Timestamp) -> Option<&ResourceLease> {
        self.lease
            .as_ref()
            .filter(|l| !self.released && l.expires_at > now)
    }
}

const LEASE_COLUMNS: &str =
    "name, epoch, holder, acquired_at, expires_at, renewals, max_renewals, metadata";

fn load(conn: &Connection, resource: &str) -> Result<Option<Record>, WriteError> {
    let row = conn
        .prepare_cached(
            "SELECT epoch, holder, acquired_at, expires_at, renewals, max_renewals, metadata, \
             released FROM resources WHERE name = ?1",
        )?
        .query_row([resource], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Option<i64>>(5)?,
                r.get::<_, Option<String>>(6)?,
                r.get::<_, bool>(7)?,
            ))
        })
        .optional()?;
    let Some((epoch, holder, acquired_at, expires_at, renewals, max_renewals, metadata, released)) =
        row
    else {
        return Ok(None);
    };
    let epoch = epoch_from_column(epoch);
    let lease = match holder {
        Some(holder) => Some(ResourceLease {
            resource: resource.to_string(),
            holder,
            epoch,
            acquired_at: Timestamp(acquired_at.unwrap_or_default()),
            expires_at: Timestamp(expires_at.unwrap_or_default()),
            renewals: to_u32("renewals", renewals)?,
            max_renewals: max_renewals
                .map(|m| to_u32("max_renewals", m))
                .transpose()?,
            metadata,
        }),
        None => None,
    };
    Ok(Some(Record {
        epoch,
        lease,
        released,
    }))
}

/// The current epoch of `resource` (0 if never held), in the caller's transaction.
pub(crate) fn epoch_in(conn: &Connection, resource: &str) -> Result<u64, WriteError> {
    let epoch: Option<i64> = conn
        .prepare_cached("SELECT epoch FROM resources WHERE name = ?1")?
        .query_row([resource], |r| r.get(0))
        .optional()?;
    Ok(epoch.map_or(0, epoch_from_column))
}

fn audit(
    conn: &Connection,
    resource: &str,
    kind: ResourceEventKind,
    agent: &str,
    actor: &str,
    epoch: u64,
    at: Timestamp,
) -> Result<(), WriteError> {
    conn.prepare_cached(
        "INSERT INTO resource_events (resource, kind, agent, actor, epoch, at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        resource,
        kind.as_str(),
        agent,
        actor,
        epoch_to_column(epoch),
        at.as_micros()
    ])?;
    Ok(())
}

/// Apply resource commands in one transaction, in order; one reply per command.
pub(crate) fn resources(
    conn: &mut Connection,
    clock: &dyn seqlease_core::Clock,
    commands: Vec<ResourceCommand>,
) -> Result<BatchOutcome, WriteError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = clock.now(); // under the write lock (see `execute`)
    let mut replies = Vec::with_capacity(commands.len());
    for command in commands {
        replies.push(apply(&tx, command, now)?.map(Reply::Resource));
    }
    tx.commit()?;
    Ok(BatchOutcome {
        replies,
        progress: Vec::new(),
    })
}

fn apply(
    conn: &Connection,
    command: ResourceCommand,
    now: Timestamp,
) -> Result<Result<ResourceReply, LeaseError>, WriteError> {
    match command {
        ResourceCommand::Acquire {
            resource,
            agent,
            ttl,
            max_renewals,
            metadata,
        } => {
            let record = load(conn, &resource)?;
            let (mut epoch, mut stale) = (0, None);
            if let Some(record) = &record {
                if let Some(live) = record.live(now) {
                    if live.holder != agent {
                        let kind = ResourceEventKind::Conflict;
                        audit(conn, &resource, kind, &agent, &agent, live.epoch, now)?;
                        return Ok(Err(LeaseError::ResourceHeld {
                            resource,
                            holder: live.holder.clone(),
                            epoch: live.epoch,
                            expires_at: live.expires_at,
                        }));
                    }
                    // The holder acquiring again renews.
                    let epoch = live.epoch;
                    let renew = ResourceCommand::Renew {
                        resource,
                        agent,
                        epoch,
                        ttl,
                    };
                    return apply(conn, renew, now);
                }
                epoch = record.epoch;
                stale = record
                    .lease
                    .as_ref()
                    .filter(|_| !record.released)
                    .map(|l| (l.holder.clone(), l.epoch));
            }
            if let Some((holder, epoch)) = stale {
                let kind = ResourceEventKind::Expired;
                audit(conn, &resource, kind, &holder, "store", epoch, now)?;
            }
            let lease = ResourceLease {
                resource: resource.clone(),
                holder: agent.clone(),
                epoch: epoch
                    .checked_add(1)
                    .ok_or_else(|| WriteError::Store(corrupt_value("epoch of resource", epoch)))?,
                acquired_at: now,
                expires_at: now.plus(ttl),
                renewals: 0,
                max_renewals,
                metadata,
            };
            conn.prepare_cached(
                "INSERT INTO resources (name, epoch, holder, acquired_at, expires_at, \
                 renewals, max_renewals, metadata, released) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?7, 0) \
                 ON CONFLICT (name) DO UPDATE SET epoch = excluded.epoch, \
                 holder = excluded.holder, acquired_at = excluded.acquired_at, \
                 expires_at = excluded.expires_at, renewals = 0, \
                 max_renewals = excluded.max_renewals, metadata = excluded.metadata, \
                 released = 0",
            )?
            .execute(params![
                resource.as_str(),
                epoch_to_column(lease.epoch),
                agent.as_str(),
                now.as_micros(),
                lease.expires_at.as_micros(),
                lease.max_renewals.map(i64::from),
                lease.metadata.as_deref(),
            ])?;
            let kind = ResourceEventKind::Acquired;
            audit(conn, &resource, kind, &agent, &agent, lease.epoch, now)?;
            Ok(Ok(ResourceReply::Held(lease)))
        }
        ResourceCommand::Renew {
            resource,
            agent,
            epoch,
            ttl,
        } => {
            let record = load(conn, &resource)?;
            let current = record.as_ref().map_or(0, |r| r.epoch);
            let held = record
                .as_ref()
                .and_then(|r| r.live(now))
                .filter(|l| l.holder == agent && l.epoch == epoch)
                .cloned();
            let Some(mut lease) = held else {
                return Ok(Err(LeaseError::ResourceNotHeld {
                    resource,
                    agent,
                    epoch,
                    current,
                }));
            };
            if let Some(max) = lease.max_renewals.filter(|max| lease.renewals >= *max) {
                return Ok(Err(LeaseError::MaxRenewals { resource, max }));
            }
            lease.renewals += 1;
            lease.expires_at = now.plus(ttl);
            conn.prepare_cached(
                "UPDATE resources SET renewals = ?2, expires_at = ?3 WHERE name = ?1",
            )?
            .execute(params![
                resource.as_str(),
                i64::from(lease.renewals),
                lease.expires_at.as_micros()
            ])?;
            let kind = ResourceEventKind::Renewed;
            audit(conn, &resource, kind, &agent, &agent, epoch, now)?;
            Ok(Ok(ResourceReply::Held(lease)))
        }
        ResourceCommand::Release {
            resource,
            agent,
            epoch,
        } => {
            let record = load(conn, &resource)?;
            let current = record.as_ref().map_or(0, |r| r.epoch);
            let holds = record.as_ref().is_some_and(|r| {
                !r.released
                    && r.lease
                        .as_ref()
                        .is_some_and(|l| l.holder == agent && l.epoch == epoch)
            });
            if !holds {
                return Ok(Err(LeaseError::ResourceNotHeld {
                    resource,
                    agent,
                    epoch,
                    current,
                }));
            }
            conn.prepare_cached("UPDATE resources SET released = 1 WHERE name = ?1")?
                .execute([resource.as_str()])?;
            let kind = ResourceEventKind::Released;
            audit(conn, &resource, kind, &agent, &agent, epoch, now)?;
            Ok(Ok(ResourceReply::Released))
        }
        ResourceCommand::ReleaseAll { agent, actor } => {
            let mut held: Vec<(String, i64)> = conn
                .prepare_cached(
                    "UPDATE resources SET released = 1 WHERE released = 0 AND holder = ?1 \
                     RETURNING name, epoch",
                )?
                .query_map([agent.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            held.sort();
            let kind = if actor == agent {
                ResourceEventKind::Released
            } else {
                ResourceEventKind::ForceReleased
            };
            for (resource, epoch) in &held {
                audit(
                    conn,
                    resource,
                    kind,
                    &agent,
                    &actor,
                    epoch_from_column(*epoch),
                    now,
                )?;
            }
            Ok(Ok(ResourceReply::Count(held.len() as u64)))
        }
        ResourceCommand::ExpireStale => {
            let mut expired: Vec<(String, Option<String>, i64)> = conn
                .prepare_cached(
                    "UPDATE resources SET released = 1 WHERE released = 0 AND expires_at <= ?1 \
                     RETURNING name, holder, epoch",
                )?
                .query_map([now.as_micros()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            expired.sort();
            for (resource, holder, epoch) in &expired {
                let (kind, holder) = (ResourceEventKind::Expired, holder.as_deref());
                let holder = holder.unwrap_or_default();
                audit(
                    conn,
                    resource,
                    kind,
                    holder,
                    "store",
                    epoch_from_column(*epoch),
                    now,
                )?;
            }
            Ok(Ok(ResourceReply::Count(expired.len() as u64)))
        }
    }
}

/// List live resource leases (see [`ResourceQuery`]), ordered by resource.
pub(crate) async fn resource_leases(
    readers: &SqlitePool,
    query: &ResourceQuery,
    now: Timestamp,
) -> Result<Vec<ResourceLease>, StoreError> {
    let (name, holder) = match query {
        ResourceQuery::Resource(name) => (Some(name.as_str()), None),
        ResourceQuery::Agent(agent) => (None, Some(agent.as_str())),
        ResourceQuery::Active => (None, None),
    };
    let sql = format!(
        "SELECT {LEASE_COLUMNS} FROM resources \
         WHERE released = 0 AND expires_at > ?1 AND (?2 IS NULL OR name = ?2) \
           AND (?3 IS NULL OR holder = ?3) ORDER BY name"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(now.as_micros())
        .bind(name)
        .bind(holder)
        .fetch_all(readers)
        .await
        .map_err(map_sqlx)?;
    rows.iter()
        .map(|r| {
            let renewals: i64 = r.try_get(5).map_err(map_sqlx)?;
            let max_renewals: Option<i64> = r.try_get(6).map_err(map_sqlx)?;
            Ok(ResourceLease {
                resource: r.try_get(0).map_err(map_sqlx)?,
                epoch: epoch_from_column(r.try_get(1).map_err(map_sqlx)?),
                holder: r.try_get(2).map_err(map_sqlx)?,
                acquired_at: Timestamp(r.try_get(3).map_err(map_sqlx)?),
                expires_at: Timestamp(r.try_get(4).map_err(map_sqlx)?),
                renewals: to_u32("renewals", renewals)?,
                max_renewals: max_renewals
                    .map(|m| to_u32("max_renewals", m))
                    .transpose()?,
                metadata: r.try_get(7).map_err(map_sqlx)?,
            })
        })
        .collect()
}

/// The current epoch of `resource` (0 if never held).
pub(crate) async fn resource_epoch(
    readers: &SqlitePool,
    resource: &str,
) -> Result<u64, StoreError> {
    let epoch: Option<i64> = sqlx::query_scalar("SELECT epoch FROM resources WHERE name = ?1")
        .bind(resource)
        .fetch_optional(readers)
        .await
        .map_err(map_sqlx)?;
    Ok(epoch.map_or(0, epoch_from_column))
}

const EVENT_KINDS: [ResourceEventKind; 6] = [
    ResourceEventKind::Acquired,
    ResourceEventKind::Renewed,
    ResourceEventKind::Released,
    ResourceEventKind::Expired,
    ResourceEventKind::ForceReleased,
    ResourceEventKind::Conflict,
];

/// The audit history of `resource` (all when `None`), oldest first, the newest `limit`.
pub(crate) async fn resource_history(
    readers: &SqlitePool,
    resource: Option<&str>,
    limit: usize,
) -> Result<Vec<ResourceEvent>, StoreError> {
    let rows = sqlx::query(
        "SELECT resource, kind, agent, actor, epoch, at FROM ( \
           SELECT id, resource, kind, agent, actor, epoch, at FROM resource_events \
           WHERE (?1 IS NULL OR resource = ?1) ORDER BY id DESC LIMIT ?2) ORDER BY id",
    )
    .bind(resource)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(readers)
    .await
    .map_err(map_sqlx)?;
    rows.iter()
        .map(|r| {
            let kind: String = r.try_get(1).map_err(map_sqlx)?;
            Ok(ResourceEvent {
                resource: r.try_get(0).map_err(map_sqlx)?,
                kind: EVENT_KINDS
                    .into_iter()
                    .find(|k| k.as_str() == kind)
                    .ok_or_else(|| corrupt_value("resource event kind", format!("{kind:?}")))?,
                agent: r.try_get(2).map_err(map_sqlx)?,
                actor: r.try_get(3).map_err(map_sqlx)?,
                epoch: epoch_from_column(r.try_get(4).map_err(map_sqlx)?),
                at: Timestamp(r.try_get(5).map_err(map_sqlx)?),
            })
        })
        .collect()
}
