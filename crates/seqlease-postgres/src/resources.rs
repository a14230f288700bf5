//! Resource leases in the PostgreSQL store (migration `0003_resources.sql`): exclusive,
//! TTL-bound ownership of a named resource, with an epoch that only ever grows (I9).
//!
//! Every resource ever acquired has one row in `resources` that is never deleted, so its
//! epoch survives release, expiry and restarts. A call to [`Store::resources`] is one
//! transaction: it creates the rows of resources being acquired for the first time
//! (`INSERT … ON CONFLICT DO NOTHING`), locks the rows its commands name (`SELECT … FOR
//! UPDATE`, in name order, so two calls never deadlock), reads the store clock once after the
//! locks are held, decides every command in memory with the in-memory store's
//! compare-and-swap rules, and writes the changed rows and the audit events
//! (`resource_events`) back with set-based statements. `ReleaseAll` and `ExpireStale` lock
//! the rows they match when they run.
//!
//! The fence check of fenced sequence leases (commit and grant) lives in the batch
//! transaction (`execute`), which reads the resource rows `FOR SHARE`: a commit and a change
//! of holder serialize on the row, so a commit never passes with an epoch that is already
//! stale.
//!
//! [`Store::resources`]: seqlease_core::Store::resources

use std::collections::BTreeMap;

use seqlease_core::time::duration_micros;
use seqlease_core::{
    BatchOutcome, LeaseError, Reply, ResourceCommand, ResourceEvent, ResourceEventKind,
    ResourceLease, ResourceQuery, ResourceReply, StoreError, Timestamp,
};
use sqlx::Row;
use sqlx::postgres::{PgConnection, PgRow};

use crate::error::{corrupt_value, map_sqlx};
use crate::read::{to_u32, to_u64};
use crate::recovery::clock;
use crate::{Inner, NOW_SQL};

/// A resource's row as a transaction sees it.
#[derive(Clone, Debug)]
struct Record {
    epoch: u64,
    /// The current or last lease (`None`: never held).
    lease: Option<ResourceLease>,
    released: bool,
    dirty: bool,
}

impl Record {
    fn live(&self, now: i64) -> Option<&ResourceLease> {
        self.lease
            .as_ref()
            .filter(|l| !self.released && l.expires_at.as_micros() > now)
    }
}

const COLUMNS: &str =
    "name, epoch, holder, acquired_at, expires_at, renewals, max_renewals, metadata, released";

fn record_of(row: &PgRow, target: &str) -> Result<(String, Record), StoreError> {
    let get = |e| map_sqlx(e, target);
    let name: String = row.try_get(0).map_err(get)?;
    let epoch = to_u64("resource epoch", row.try_get(1).map_err(get)?)?;
    let holder: Option<String> = row.try_get(2).map_err(get)?;
    let lease = match holder {
        Some(holder) => {
            let acquired_at: Option<i64> = row.try_get(3).map_err(get)?;
            let expires_at: Option<i64> = row.try_get(4).map_err(get)?;
            let renewals: i32 = row.try_get(5).map_err(get)?;
            let max_renewals: Option<i32> = row.try_get(6).map_err(get)?;
            Some(ResourceLease {
                resource: name.clone(),
                holder,
                epoch,
                acquired_at: Timestamp(acquired_at.unwrap_or_default()),
                expires_at: Timestamp(expires_at.unwrap_or_default()),
                renewals: to_u32("renewals", i64::from(renewals))?,
                max_renewals: max_renewals
                    .map(|m| to_u32("max_renewals", i64::from(m)))
                    .transpose()?,
                metadata: row.try_get(7).map_err(get)?,
            })
        }
        None => None,
    };
    let released: bool = row.try_get(8).map_err(get)?;
    Ok((
        name,
        Record {
            epoch,
            lease,
            released,
            dirty: false,
        },
    ))
}

/// One resources transaction.
struct Tx {
    now: i64,
    records: BTreeMap<String, Record>,
    events: Vec<ResourceEvent>,
}

impl Tx {
    fn epoch(&self, resource: &str) -> u64 {
        self.records.get(resource).map_or(0, |r| r.epoch)
    }

    fn audit(
        &mut self,
        resource: &str,
        kind: ResourceEventKind,
        agent: &str,
        actor: &str,
        epoch: u64,
    ) {
        self.events.push(ResourceEvent {
            resource: resource.into(),
            kind,
            agent: agent.into(),
            actor: actor.into(),
            epoch,
            at: Timestamp(self.now),
        });
    }

    /// Apply one command (the rules of `Store::resources`, as the in-memory store has them).
    fn apply(&mut self, command: ResourceCommand) -> Result<ResourceReply, LeaseError> {
        let now = self.now;
        match command {
            ResourceCommand::Acquire {
                resource,
                agent,
                ttl,
                max_renewals,
                metadata,
            } => {
                let record = self.records.entry(resource.clone()).or_insert(Record {
                    epoch: 0,
                    lease: None,
                    released: true,
                    dirty: true,
                });
                if let Some(live) = record.live(now) {
                    let (holder, epoch, expires_at) =
                        (live.holder.clone(), live.epoch, live.expires_at);
                    if holder != agent {
                        self.audit(
                            &resource,
                            ResourceEventKind::Conflict,
                            &agent,
                            &agent,
                            epoch,
                        );
                        return Err(LeaseError::ResourceHeld {
                            resource,
                            holder,
                            epoch,
                            expires_at,
                        });
                    }
                    return self.apply(ResourceCommand::Renew {
                        resource,
                        agent,
                        epoch,
                        ttl,
                    });
                }
                // An expired previous holder is audited as expired first.
                let stale = record
                    .lease
                    .as_ref()
                    .filter(|_| !record.released)
                    .map(|l| (l.holder.clone(), l.epoch));
                record.epoch += 1;
                record.released = false;
                record.dirty = true;
                let lease = ResourceLease {
                    resource: resource.clone(),
                    holder: agent.clone(),
                    epoch: record.epoch,
                    acquired_at: Timestamp(now),
                    expires_at: Timestamp(now.saturating_add(duration_micros(ttl))),
                    renewals: 0,
                    max_renewals,
                    metadata,
                };
                record.lease = Some(lease.clone());
                if let Some((holder, epoch)) = stale {
                    self.audit(
                        &resource,
                        ResourceEventKind::Expired,
                        &holder,
                        "store",
                        epoch,
                    );
                }
                self.audit(
                    &resource,
                    ResourceEventKind::Acquired,
                    &agent,
                    &agent,
                    lease.epoch,
                );
                Ok(ResourceReply::Held(lease))
            }
            ResourceCommand::Renew {
                resource,
                agent,
                epoch,
                ttl,
            } => {
                let current = self.epoch(&resource);
                let not_held = || LeaseError::ResourceNotHeld {
                    resource: resource.clone(),
                    agent: agent.clone(),
                    epoch,
                    current,
                };
                let Some(record) = self.records.get_mut(&resource) else {
                    return Err(not_held());
                };
                let live = record
                    .live(now)
                    .is_some_and(|l| l.holder == agent && l.epoch == epoch);
                let Some(lease) = record.lease.as_mut().filter(|_| live) else {
                    return Err(not_held());
                };
                if let Some(max) = lease.max_renewals.filter(|max| lease.renewals >= *max) {
                    return Err(LeaseError::MaxRenewals { resource, max });
                }
                lease.renewals += 1;
                lease.expires_at = Timestamp(now.saturating_add(duration_micros(ttl)));
                let lease = lease.clone();
                record.dirty = true;
                self.audit(&resource, ResourceEventKind::Renewed, &agent, &agent, epoch);
                Ok(ResourceReply::Held(lease))
            }
            ResourceCommand::Release {
                resource,
                agent,
                epoch,
            } => {
                let current = self.epoch(&resource);
                let record = self.records.get_mut(&resource).filter(|r| {
                    !r.released
                        && r.lease
                            .as_ref()
                            .is_some_and(|l| l.holder == agent && l.epoch == epoch)
                });
                let Some(record) = record else {
                    return Err(LeaseError::ResourceNotHeld {
                        resource,
                        agent,
                        epoch,
                        current,
                    });
                };
                record.released = true;
                record.dirty = true;
                self.audit(
                    &resource,
                    ResourceEventKind::Released,
                    &agent,
                    &agent,
                    epoch,
                );
                Ok(ResourceReply::Released)
            }
            ResourceCommand::ReleaseAll { agent, actor } => {
                let mut held = Vec::new();
                for (name, r) in self.records.iter_mut() {
                    if !r.released && r.lease.as_ref().is_some_and(|l| l.holder == agent) {
                        r.released = true;
                        r.dirty = true;
                        held.push((name.clone(), r.epoch));
                    }
                }
                let kind = if actor == agent {
                    ResourceEventKind::Released
                } else {
                    ResourceEventKind::ForceReleased
                };
                for (resource, epoch) in &held {
                    self.audit(resource, kind, &agent, &actor, *epoch);
                }
                Ok(ResourceReply::Count(held.len() as u64))
            }
            ResourceCommand::ExpireStale => {
                let mut expired = Vec::new();
                for (name, r) in self.records.iter_mut() {
                    if let Some(l) = r
                        .lease
                        .as_ref()
                        .filter(|l| !r.released && l.expires_at.as_micros() <= now)
                    {
                        expired.push((name.clone(), l.holder.clone(), r.epoch));
                        r.released = true;
                        r.dirty = true;
                    }
                }
                for (resource, holder, epoch) in &expired {
                    self.audit(
                        resource,
                        ResourceEventKind::Expired,
                        holder,
                        "store",
                        *epoch,
                    );
                }
                Ok(ResourceReply::Count(expired.len() as u64))
            }
        }
    }

    /// Lock and load the rows matching `filter` (`$1` is bound to `arg`) that this
    /// transaction does not hold yet. Rows already loaded keep their in-transaction state.
    async fn load_matching(
        &mut self,
        conn: &mut PgConnection,
        target: &str,
        filter: &str,
        arg: Option<i64>,
        agent: Option<&str>,
    ) -> Result<(), StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM resources WHERE NOT released AND {filter} \
             ORDER BY name FOR UPDATE"
        )))
        .bind(arg)
        .bind(agent)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| map_sqlx(e, target))?;
        for row in &rows {
            let (name, record) = record_of(row, target)?;
            self.records.entry(name).or_insert(record);
        }
        Ok(())
    }
}

fn i64_of(what: &str, v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| corrupt_value(what, v))
}

/// Apply resource-lease commands in one transaction; see the module docs.
pub(crate) async fn resources(
    inner: &Inner,
    commands: Vec<ResourceCommand>,
) -> Result<BatchOutcome, StoreError> {
    let mut outcome = BatchOutcome::default();
    if commands.is_empty() {
        return Ok(outcome);
    }
    let target = inner.target.as_str();
    let get = |e| map_sqlx(e, target);
    let mut acquired: Vec<&str> = Vec::new();
    let mut named: Vec<&str> = Vec::new();
    for c in &commands {
        match c {
            ResourceCommand::Acquire { resource, .. } => {
                acquired.push(resource);
                named.push(resource);
            }
            ResourceCommand::Renew { resource, .. } | ResourceCommand::Release { resource, .. } => {
                named.push(resource)
            }
            ResourceCommand::ReleaseAll { .. } | ResourceCommand::ExpireStale => {}
        }
    }
    acquired.sort_unstable();
    acquired.dedup();
    named.sort_unstable();
    named.dedup();
    let mut tx = inner.pool.begin().await.map_err(get)?;
    if !acquired.is_empty() {
        // The record of a resource acquired for the first time (epoch 0, nobody holds it).
        sqlx::query(
            "INSERT INTO resources (name) SELECT n FROM unnest($1::text[]) AS n ORDER BY n \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&acquired)
        .execute(&mut *tx)
        .await
        .map_err(get)?;
    }
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM resources WHERE name = ANY($1::text[]) ORDER BY name FOR UPDATE"
    )))
    .bind(&named)
    .fetch_all(&mut *tx)
    .await
    .map_err(get)?;
    let mut records = BTreeMap::new();
    for row in &rows {
        let (name, record) = record_of(row, target)?;
        records.insert(name, record);
    }
    let now = clock(&mut tx, inner).await?;
    let mut state = Tx {
        now,
        records,
        events: Vec::new(),
    };
    for command in commands {
        match &command {
            ResourceCommand::ReleaseAll { agent, .. } => {
                state
                    .load_matching(
                        &mut tx,
                        target,
                        "holder = $2 AND $1::bigint IS NULL",
                        None,
                        Some(agent),
                    )
                    .await?;
            }
            ResourceCommand::ExpireStale => {
                state
                    .load_matching(
                        &mut tx,
                        target,
                        "expires_at <= $1 AND $2::text IS NULL",
                        Some(now),
                        None,
                    )
                    .await?;
            }
            _ => {}
        }
        let reply = state.apply(command).map(Reply::Resource);
        outcome.replies.push(reply);
    }

    // Write the changed rows, then the audit events in order.
    let mut names = Vec::new();
    let mut epochs = Vec::new();
    let mut holders = Vec::new();
    let mut acquired_ats = Vec::new();
    let mut expires_ats = Vec::new();
    let mut renewals = Vec::new();
    let mut max_renewals = Vec::new();
    let mut metadata = Vec::new();
    let mut released = Vec::new();
    for (name, r) in state.records.iter().filter(|(_, r)| r.dirty) {
        let lease = r.lease.as_ref();
        names.push(name.as_str());
        epochs.push(i64_of("resource epoch", r.epoch)?);
        holders.push(lease.map(|l| l.holder.clone()));
        acquired_ats.push(lease.map(|l| l.acquired_at.as_micros()));
        expires_ats.push(lease.map(|l| l.expires_at.as_micros()));
        renewals.push(lease.map_or(0, |l| i32::try_from(l.renewals).unwrap_or(i32::MAX)));
        max_renewals.push(
            lease
                .and_then(|l| l.max_renewals)
                .map(|m| i32::try_from(m).unwrap_or(i32::MAX)),
        );
        metadata.push(lease.and_then(|l| l.metadata.clone()));
        released.push(r.released);
    }
    if !names.is_empty() {
        sqlx::query(
            "UPDATE resources r SET epoch = u.epoch, holder = u.holder,
                    acquired_at = u.acquired_at, expires_at = u.expires_at,
                    renewals = u.renewals, max_renewals = u.max_renewals,
                    metadata = u.metadata, released = u.released
             FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[],
                         $6::int[], $7::int[], $8::text[], $9::bool[])
                  AS u(name, epoch, holder, acquired_at, expires_at, renewals, max_renewals,
                       metadata, released)
             WHERE r.name = u.name",
        )
        .bind(&names)
        .bind(&epochs)
        .bind(&holders)
        .bind(&acquired_ats)
        .bind(&expires_ats)
        .bind(&renewals)
        .bind(&max_renewals)
        .bind(&metadata)
        .bind(&released)
        .execute(&mut *tx)
        .await
        .map_err(get)?;
    }
    if !state.events.is_empty() {
        let resource: Vec<&str> = state.events.iter().map(|e| e.resource.as_str()).collect();
        let kind: Vec<&str> = state.events.iter().map(|e| e.kind.as_str()).collect();
        let agent: Vec<&str> = state.events.iter().map(|e| e.agent.as_str()).collect();
        let actor: Vec<&str> = state.events.iter().map(|e| e.actor.as_str()).collect();
        let epoch = state
            .events
            .iter()
            .map(|e| i64_of("resource epoch", e.epoch))
            .collect::<Result<Vec<_>, _>>()?;
        sqlx::query(
            "INSERT INTO resource_events (resource, kind, agent, actor, epoch, at)
             SELECT e.resource, e.kind, e.agent, e.actor, e.epoch, $6
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[])
                  WITH ORDINALITY AS e(resource, kind, agent, actor, epoch, ord)
             ORDER BY e.ord",
        )
        .bind(&resource)
        .bind(&kind)
        .bind(&agent)
        .bind(&actor)
        .bind(&epoch)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(get)?;
    }
    tx.commit().await.map_err(get)?;
    Ok(outcome)
}

/// Live resource leases (see [`ResourceQuery`]), ordered by resource.
pub(crate) async fn resource_leases(
    inner: &Inner,
    query: &ResourceQuery,
) -> Result<Vec<ResourceLease>, StoreError> {
    let target = inner.target.as_str();
    let (pinned, offset) = inner.clock.params();
    let (resource, agent) = match query {
        ResourceQuery::Resource(r) => (Some(r.as_str()), None),
        ResourceQuery::Agent(a) => (None, Some(a.as_str())),
        ResourceQuery::Active => (None, None),
    };
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM resources \
         WHERE NOT released AND holder IS NOT NULL AND expires_at > {NOW_SQL} \
           AND ($3::text IS NULL OR name = $3) AND ($4::text IS NULL OR holder = $4) \
         ORDER BY name"
    )))
    .bind(pinned)
    .bind(offset)
    .bind(resource)
    .bind(agent)
    .fetch_all(&inner.pool)
    .await
    .map_err(|e| map_sqlx(e, target))?;
    let mut leases = Vec::with_capacity(rows.len());
    for row in &rows {
        if let (_, Record { lease: Some(l), .. }) = record_of(row, target)? {
            leases.push(l);
        }
    }
    Ok(leases)
}

/// The current epoch of `resource` (0 if never held).
pub(crate) async fn resource_epoch(inner: &Inner, resource: &str) -> Result<u64, StoreError> {
    let epoch: Option<i64> = sqlx::query_scalar("SELECT epoch FROM resources WHERE name = $1")
        .bind(resource)
        .fetch_optional(&inner.pool)
        .await
        .map_err(|e| map_sqlx(e, &inner.target))?;
    epoch.map_or(Ok(0), |e| to_u64("resource epoch", e))
}

fn event_kind(stored: &str) -> Result<ResourceEventKind, StoreError> {
    Ok(match stored {
        "acquired" => ResourceEventKind::Acquired,
        "renewed" => ResourceEventKind::Renewed,
        "released" => ResourceEventKind::Released,
        "expired" => ResourceEventKind::Expired,
        "force_released" => ResourceEventKind::ForceReleased,
        "conflict" => ResourceEventKind::Conflict,
        other => return Err(corrupt_value("resource event kind", format!("{other:?}"))),
    })
}

/// The audit history, oldest first, at most `limit` of the newest events.
pub(crate) async fn resource_history(
    inner: &Inner,
    resource: Option<&str>,
    limit: usize,
) -> Result<Vec<ResourceEvent>, StoreError> {
    let target = inner.target.as_str();
    let get = |e| map_sqlx(e, target);
    let rows = sqlx::query(
        "SELECT resource, kind, agent, actor, epoch, at FROM (
           SELECT * FROM resource_events WHERE ($1::text IS NULL OR resource = $1)
           ORDER BY id DESC LIMIT $2) AS newest
         ORDER BY id",
    )
    .bind(resource)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(&inner.pool)
    .await
    .map_err(get)?;
    rows.iter()
        .map(|row| {
            let kind: String = row.try_get(1).map_err(get)?;
            Ok(ResourceEvent {
                resource: row.try_get(0).map_err(get)?,
                kind: event_kind(&kind)?,
                agent: row.try_get(2).map_err(get)?,
                actor: row.try_get(3).map_err(get)?,
                epoch: to_u64("resource epoch", row.try_get(4).map_err(get)?)?,
                at: Timestamp(row.try_get(5).map_err(get)?),
            })
        })
        .collect()
}
