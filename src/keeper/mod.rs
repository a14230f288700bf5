//! Resource leases for applications: acquire, hold, renew, fence, release.
//!
//! A [`LeaseKeeper`] acts for one agent (a worker process, a shard owner). It acquires
//! resources (non-blocking, or waiting up to a timeout, woken when the resource is released
//! in this process and re-checked when the holder's lease is due to expire), keeps a local
//! cache of what it holds with a safe local deadline — so [`LeaseKeeper::ensure`] and
//! [`LeaseKeeper::validate`] cost no round trip — renews everything it holds in **one**
//! store call per cycle at a third of the shortest TTL, tells the application the moment a
//! lease is lost ([`LeaseKeeper::lost`]), and releases everything on
//! [`LeaseKeeper::shutdown`].
//!
//! The epoch of a held resource is a fencing token: grant sequence leases with
//! [`Grant::fence`](crate::Grant::fence) and their commits are refused once another agent
//! has taken the resource over (I9), however long this agent was paused.

use std::sync::Arc;
use std::time::Duration;

use seqlease_core::{
    InvalidInput, LeaseError, Reply, ResourceCommand, ResourceEvent, ResourceLease, ResourceQuery,
    ResourceReply, validate_id, validate_name,
};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

pub(crate) mod held;

use held::{Held, HeldLeases};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::space::unreachable_reply;

/// How to acquire a resource.
#[derive(Clone, Debug)]
pub struct Acquire {
    resource: String,
    ttl: Duration,
    wait: Option<Duration>,
    max_renewals: Option<u32>,
    metadata: Option<String>,
}

impl Acquire {
    /// Acquire `resource` for 30 s, renewed by the keeper.
    pub fn new(resource: impl Into<String>) -> Self {
        Acquire {
            resource: resource.into(),
            ttl: Duration::from_secs(30),
            wait: None,
            max_renewals: None,
            metadata: None,
        }
    }

    /// Lease TTL (the keeper renews at a third of it).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// If another agent holds it, wait up to `timeout` for it.
    pub fn wait(mut self, timeout: Duration) -> Self {
        self.wait = Some(timeout);
        self
    }

    /// Give the resource up after this many renewals.
    pub fn max_renewals(mut self, max: u32) -> Self {
        self.max_renewals = Some(max);
        self
    }

    /// Keep `metadata` (JSON by convention) on the lease.
    pub fn metadata(mut self, metadata: impl Into<String>) -> Self {
        self.metadata = Some(metadata.into());
        self
    }
}

/// Why a held resource was lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostLease {
    /// The resource.
    pub resource: String,
    /// The epoch that is no longer ours.
    pub epoch: u64,
    /// What happened.
    pub reason: String,
}

/// Holds resource leases for one agent. Cheap to clone.
#[derive(Clone)]
pub struct LeaseKeeper {
    inner: Arc<KeeperInner>,
}

struct KeeperInner {
    engine: Engine,
    agent: String,
    /// Shared with the renewal task.
    held: Arc<HeldLeases>,
    lost: broadcast::Sender<LostLease>,
    stop: watch::Sender<bool>,
}

impl Drop for KeeperInner {
    fn drop(&mut self) {
        // Dropped without shutdown: stop the renewal task (the leases run out by TTL).
        let _ = self.stop.send(true);
    }
}

impl Engine {
    /// A lease keeper acting for `agent`; starts its renewal task. Fails when the store has
    /// no resource leases.
    pub async fn lease_keeper(&self, agent: &str) -> Result<LeaseKeeper> {
        validate_id("agent", agent)?;
        self.store().resource_epoch("seqlease.probe").await?; // surfaces Unsupported at once
        let (lost, _) = broadcast::channel(256);
        let (stop, stopped) = watch::channel(false);
        let keeper = LeaseKeeper {
            inner: Arc::new(KeeperInner {
                engine: self.clone(),
                agent: agent.into(),
                held: Arc::default(),
                lost,
                stop,
            }),
        };
        tokio::spawn(renew_loop(
            Arc::downgrade(&keeper.inner),
            keeper.inner.held.clone(),
            stopped,
        ));
        Ok(keeper)
    }

    /// Release every resource lease of `agent` (a crashed agent), recording `actor`.
    pub async fn force_release(&self, agent: &str, actor: &str) -> Result<u64> {
        let command = ResourceCommand::ReleaseAll {
            agent: agent.into(),
            actor: actor.into(),
        };
        let n = match one(self, command).await? {
            ResourceReply::Count(n) => n,
            other => return unreachable_reply("release all", Reply::Resource(other)),
        };
        self.inner.resource_released.notify_waiters();
        Ok(n)
    }

    /// The live lease on `resource`, if anyone holds it.
    pub async fn resource_lease(&self, resource: &str) -> Result<Option<ResourceLease>> {
        let query = ResourceQuery::Resource(resource.into());
        Ok(self
            .store()
            .resource_leases(&query)
            .await?
            .into_iter()
            .next())
    }

    /// Whether someone holds `resource` now.
    pub async fn is_locked(&self, resource: &str) -> Result<bool> {
        Ok(self.resource_lease(resource).await?.is_some())
    }

    /// Whether `agent` holds `resource` now.
    pub async fn has_lease(&self, agent: &str, resource: &str) -> Result<bool> {
        Ok(self
            .resource_lease(resource)
            .await?
            .is_some_and(|l| l.holder == agent))
    }

    /// Live resource leases: of one agent, or all.
    pub async fn resource_leases(&self, agent: Option<&str>) -> Result<Vec<ResourceLease>> {
        let query = agent.map_or(ResourceQuery::Active, |a| ResourceQuery::Agent(a.into()));
        Ok(self.store().resource_leases(&query).await?)
    }

    /// The audit history of a resource (or of all), newest `limit` events, oldest first.
    pub async fn resource_history(
        &self,
        resource: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ResourceEvent>> {
        Ok(self.store().resource_history(resource, limit).await?)
    }
}

/// Send one resource command.
async fn one(engine: &Engine, command: ResourceCommand) -> Result<ResourceReply> {
    let mut out = engine
        .store()
        .resources(vec![command])
        .await
        .inspect_err(|e| engine.inner.telemetry.store_error(e))?;
    match out
        .replies
        .pop()
        .expect("the store answers every command")?
    {
        Reply::Resource(r) => Ok(r),
        other => unreachable_reply("resource command", other),
    }
}

impl LeaseKeeper {
    /// The agent this keeper acts for.
    pub fn agent(&self) -> &str {
        &self.inner.agent
    }

    /// Acquire a resource; see [`Acquire`].
    pub async fn acquire(&self, acquire: Acquire) -> Result<ResourceLease> {
        validate_name("resource", &acquire.resource)?;
        let config = self.inner.engine.config();
        if acquire.ttl < config.min_ttl || acquire.ttl > config.max_ttl {
            return Err(InvalidInput::Ttl {
                ttl: acquire.ttl,
                min: config.min_ttl,
                max: config.max_ttl,
            }
            .into());
        }
        let deadline = acquire.wait.map(|w| Instant::now() + w);
        let telemetry = &self.inner.engine.inner.telemetry;
        // A waiting acquirer counts one conflict per call, not one per re-check.
        let mut conflicted = false;
        loop {
            let released = self.inner.engine.inner.resource_released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let requested_at = Instant::now();
            let command = ResourceCommand::Acquire {
                resource: acquire.resource.clone(),
                agent: self.inner.agent.clone(),
                ttl: acquire.ttl,
                max_renewals: acquire.max_renewals,
                metadata: acquire.metadata.clone(),
            };
            let result = one(&self.inner.engine, command).await;
            if let Err(Error::Lease(LeaseError::ResourceHeld { .. })) = &result
                && !conflicted
            {
                conflicted = true;
                telemetry.acquisition(false);
            }
            match result {
                Ok(ResourceReply::Held(lease)) => {
                    self.remember(&lease, acquire.ttl, requested_at);
                    telemetry.acquisition(true);
                    return Ok(lease);
                }

                Ok(other) => return unreachable_reply("acquire", Reply::Resource(other)),
                Err(Error::Lease(LeaseError::ResourceHeld { expires_at, .. }))
                    if deadline.is_some() =>
                {
                    let deadline = deadline.expect("checked");
                    if Instant::now() >= deadline {
                        return Err(Error::AcquireTimeout {
                            resource: acquire.resource.clone(),
                            waited: acquire.wait.unwrap_or_default(),
                        });
                    }
                    // Woken by a release in this process, or re-check when the holder's
                    // lease is due to expire (or at the cross-process poll interval).
                    let now = self.inner.engine.now().await?;
                    let until_expiry = expires_at.since(now) + Duration::from_millis(1);
                    let poll = config.external_poll_interval.min(until_expiry);
                    tokio::select! {
                        _ = &mut released => {}
                        _ = tokio::time::sleep_until((Instant::now() + poll).min(deadline)) => {}
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn remember(&self, lease: &ResourceLease, ttl: Duration, requested_at: Instant) {
        let margin = self.inner.engine.config().safety_margin(ttl);
        let held = Held::new(lease.epoch, ttl, requested_at, margin);
        self.inner.held.remember(lease.resource.clone(), held);
    }

    /// The epoch of `resource` if this keeper holds it and its local safe deadline has not
    /// passed. No store round trip.
    pub fn ensure(&self, resource: &str) -> Result<u64> {
        self.inner
            .held
            .live_epoch(resource, Instant::now())
            .map_err(|epoch| {
                LeaseError::ResourceNotHeld {
                    resource: resource.into(),
                    agent: self.inner.agent.clone(),
                    epoch,
                    current: epoch,
                }
                .into()
            })
    }

    /// Whether this keeper holds `resource` at `epoch` (local check, no round trip).
    pub fn validate(&self, resource: &str, epoch: u64) -> bool {
        self.ensure(resource).is_ok_and(|e| e == epoch)
    }

    /// Ask the store whether `epoch` is the current epoch of `resource`.
    pub async fn validate_epoch(&self, resource: &str, epoch: u64) -> Result<bool> {
        Ok(self.inner.engine.store().resource_epoch(resource).await? == epoch)
    }

    /// What this keeper holds: (resource, epoch).
    pub fn held(&self) -> Vec<(String, u64)> {
        self.inner.held.list()
    }

    /// Lost leases, as they are lost.
    pub fn lost(&self) -> broadcast::Receiver<LostLease> {
        self.inner.lost.subscribe()
    }

    /// Release `resource`.
    pub async fn release(&self, resource: &str) -> Result<()> {
        let Some(held) = self.inner.held.take(resource) else {
            return Err(LeaseError::ResourceNotHeld {
                resource: resource.into(),
                agent: self.inner.agent.clone(),
                epoch: 0,
                current: 0,
            }
            .into());
        };
        let command = ResourceCommand::Release {
            resource: resource.into(),
            agent: self.inner.agent.clone(),
            epoch: held.epoch,
        };
        let result = one(&self.inner.engine, command).await;
        self.inner.engine.inner.resource_released.notify_waiters();
        result.map(drop)
    }

    /// Renew everything held now, in one store call (the background task does this every
    /// third of the shortest TTL). Returns how many leases are still held.
    pub async fn renew_now(&self) -> Result<usize> {
        renew_once(&self.inner).await
    }

    /// Release everything and stop renewing (graceful shutdown).
    pub async fn shutdown(&self) -> Result<u64> {
        let _ = self.inner.stop.send(true);
        self.inner.held.clear();
        let agent = self.inner.agent.clone();
        let n = match one(
            &self.inner.engine,
            ResourceCommand::ReleaseAll {
                agent: agent.clone(),
                actor: agent,
            },
        )
        .await?
        {
            ResourceReply::Count(n) => n,
            other => return unreachable_reply("release all", Reply::Resource(other)),
        };
        self.inner.engine.inner.resource_released.notify_waiters();
        Ok(n)
    }
}

async fn renew_once(inner: &KeeperInner) -> Result<usize> {
    let config = inner.engine.config();
    let renewal = inner
        .held
        .renew_all(&inner.agent, inner.engine.store().as_ref(), |ttl| {
            config.safety_margin(ttl)
        })
        .await;
    let telemetry = &inner.engine.inner.telemetry;
    if let Some(e) = &renewal.failed {
        telemetry.store_error(e);
        telemetry.resource_renewal("error", (renewal.lost.len() + inner.held.len()) as u64);
    } else {
        telemetry.resource_renewal("renewed", renewal.renewed);
        telemetry.resource_renewal("lost", renewal.lost.len() as u64);
    }
    for lost in renewal.lost {
        tracing::warn!(resource = %lost.resource, epoch = lost.epoch, agent = %inner.agent, reason = %lost.reason, "resource lease lost");
        let _ = inner.lost.send(lost);
    }
    match renewal.failed {
        Some(e) => Err(e.into()),
        None => Ok(inner.held.len()),
    }
}

async fn renew_loop(
    inner: std::sync::Weak<KeeperInner>,
    held: Arc<HeldLeases>,
    mut stopped: watch::Receiver<bool>,
) {
    // Hold the keeper itself only while renewing, so dropping it ends this task.
    let an_hour = Duration::from_secs(3600);
    loop {
        // Sleep until the first held lease is due (a third of its TTL after its last
        // renewal), or until something new is acquired; then renew everything held at once.
        let due = held.until_due(|due| {
            tokio::time::sleep_until(due.unwrap_or_else(|| Instant::now() + an_hour))
        });
        tokio::select! {
            due = due => if !due { continue },
            _ = stopped.wait_for(|s| *s) => return,
        }
        let Some(keeper) = inner.upgrade() else {
            return;
        };
        if let Err(e) = renew_once(&keeper).await {
            tracing::warn!(agent = %keeper.agent, error = %e, "renewing resource leases failed; retrying");
            drop(keeper);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
