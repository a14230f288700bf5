//! Resource leases: exclusive, TTL-bound ownership of a named resource (a partition, a
//! projection shard, a file) with an epoch that fences stale holders (I9).
//!
//! Acquire is a compare-and-swap in the store: it succeeds when nobody holds the resource
//! (never held, released, or expired by the store's clock), and every change of holder
//! increments the resource's **epoch**. The epoch never goes back: it survives release,
//! expiry, deletion of the lease and store restarts. Renewal by the holder keeps the epoch.
//! A sequence lease granted under a resource lease carries `(resource, epoch)`; its commit is
//! refused once the resource's epoch has moved on.

use std::time::Duration;

use crate::time::Timestamp;

/// A resource lease as the store holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceLease {
    /// The resource.
    pub resource: String,
    /// The agent holding it.
    pub holder: String,
    /// The fencing token: grows on every change of holder.
    pub epoch: u64,
    /// When this holder acquired it (store clock).
    pub acquired_at: Timestamp,
    /// When it expires unless renewed.
    pub expires_at: Timestamp,
    /// Renewals by this holder.
    pub renewals: u32,
    /// Renewals allowed before the holder must let go (`None`: unlimited).
    pub max_renewals: Option<u32>,
    /// Application metadata (JSON by convention).
    pub metadata: Option<String>,
}

/// One resource-lease operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResourceCommand {
    /// Take the resource if nobody holds it. A holder acquiring again renews instead.
    Acquire {
        /// The resource.
        resource: String,
        /// Who wants it.
        agent: String,
        /// How long.
        ttl: Duration,
        /// Renewals allowed.
        max_renewals: Option<u32>,
        /// Metadata kept on the lease.
        metadata: Option<String>,
    },
    /// Extend a held lease to `now + ttl`, keeping the epoch.
    Renew {
        /// The resource.
        resource: String,
        /// The holder.
        agent: String,
        /// The epoch the holder was given.
        epoch: u64,
        /// New TTL from now.
        ttl: Duration,
    },
    /// Let go of a held lease (the epoch stays; the next holder gets epoch + 1).
    Release {
        /// The resource.
        resource: String,
        /// The holder.
        agent: String,
        /// The epoch the holder was given.
        epoch: u64,
    },
    /// Release every lease `agent` holds (shutdown, or an operator for a crashed agent).
    ReleaseAll {
        /// The agent.
        agent: String,
        /// Who does it: the agent itself, or an operator (recorded in the audit history).
        actor: String,
    },
    /// Mark every expired lease as released (audit: `expired`).
    ExpireStale,
}

/// A successful resource-lease operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResourceReply {
    /// The lease as it now is (acquire, renew).
    Held(ResourceLease),
    /// Released (one lease).
    Released,
    /// How many leases were released or expired (release all, expire stale).
    Count(u64),
}

/// What happened to a resource, for the audit history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResourceEventKind {
    /// A new holder took it (epoch grew).
    Acquired,
    /// The holder renewed.
    Renewed,
    /// The holder let go.
    Released,
    /// It expired and was marked released.
    Expired,
    /// An operator (or the agent's shutdown) released it for the agent.
    ForceReleased,
    /// An acquire found it held by someone else.
    Conflict,
}

impl ResourceEventKind {
    /// The stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceEventKind::Acquired => "acquired",
            ResourceEventKind::Renewed => "renewed",
            ResourceEventKind::Released => "released",
            ResourceEventKind::Expired => "expired",
            ResourceEventKind::ForceReleased => "force_released",
            ResourceEventKind::Conflict => "conflict",
        }
    }
}

/// One entry of a resource's audit history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceEvent {
    /// The resource.
    pub resource: String,
    /// What happened.
    pub kind: ResourceEventKind,
    /// The agent concerned (the holder, or who asked).
    pub agent: String,
    /// Who did it (differs from the agent for operator actions).
    pub actor: String,
    /// The epoch at the time.
    pub epoch: u64,
    /// When (store clock).
    pub at: Timestamp,
}

/// Which resource leases to list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResourceQuery {
    /// The live lease on one resource, if any.
    Resource(String),
    /// Live leases held by this agent.
    Agent(String),
    /// Every live lease.
    Active,
}
