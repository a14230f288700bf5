//! Errors, one enum per kind of failure.
//!
//! - [`InvalidInput`]: the caller's request is malformed; nothing was sent to the store.
//! - [`LeaseError`]: the store refused one command (wrong token, expired, already resolved,
//!   at capacity, …); nothing was written for that command, other commands of the same
//!   batch are unaffected.
//! - [`StoreError`]: the backend itself failed (unreachable, corrupt, wrong schema); the
//!   whole batch was rolled back.
//!
//! Messages name the space, seq, resource and epoch, and say what to do next.

use std::time::Duration;

use thiserror::Error;

use crate::name::SpaceName;
use crate::time::Timestamp;
use crate::types::SlotState;

/// A request that was rejected before it reached the store.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidInput {
    /// A name or identifier failed validation.
    #[error(
        "invalid {what} {name:?}: {reason}; use 1-128 characters from [A-Za-z0-9_.-] for names, 1-512 printable characters for ids"
    )]
    Name {
        /// Which field ("space", "projection type", "operation id", …).
        what: &'static str,
        /// The offending value (truncated for display).
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A TTL outside the configured bounds.
    #[error(
        "invalid TTL {ttl:?}: it must be between {min:?} and {max:?}; pick a TTL a little longer than the work takes and renew for longer work"
    )]
    Ttl {
        /// The TTL asked for.
        ttl: Duration,
        /// The smallest accepted.
        min: Duration,
        /// The largest accepted.
        max: Duration,
    },
    /// A payload larger than the configured limit.
    #[error(
        "{what} of {size} bytes exceeds the limit of {limit} bytes; store large data elsewhere and commit a reference, or raise the engine's max_payload_bytes"
    )]
    PayloadTooLarge {
        /// What was too large ("operation payload", "partial work").
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A capacity of zero, or another bad setting.
    #[error("invalid setting {setting}: {reason}")]
    Setting {
        /// The setting.
        setting: &'static str,
        /// Why.
        reason: String,
    },
}

/// The store refused one command. Nothing was written for it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LeaseError {
    /// The space has not been created in this store.
    #[error("space {space} does not exist in this store; open it with Engine::space() first")]
    UnknownSpace {
        /// The space.
        space: SpaceName,
    },
    /// No slot with this seq was ever granted.
    #[error("slot {space}/{seq} was never granted; check the seq you were given by grant")]
    UnknownSlot {
        /// The space.
        space: SpaceName,
        /// The seq.
        seq: u64,
    },
    /// The token does not match the slot's lease.
    #[error(
        "wrong token for slot {space}/{seq}: this lease belongs to another holder; only the worker that was granted the slot may act on it"
    )]
    WrongToken {
        /// The space.
        space: SpaceName,
        /// The seq.
        seq: u64,
    },
    /// The lease expired by the store's clock; the cleanup service owns the slot now.
    #[error(
        "lease on {space}/{seq} expired at {expired_at} (store clock now {now}); the slot belongs to recovery now: renew earlier or use a longer TTL"
    )]
    Expired {
        /// The space.
        space: SpaceName,
        /// The seq.
        seq: u64,
        /// When it expired.
        expired_at: Timestamp,
        /// The store's clock at the check.
        now: Timestamp,
    },
    /// The slot is already resolved; a resolved slot never changes (I2).
    #[error("slot {space}/{seq} is already {state}; a resolved slot never changes")]
    Resolved {
        /// The space.
        space: SpaceName,
        /// The seq.
        seq: u64,
        /// What it resolved to.
        state: SlotState,
    },
    /// The space has as many in-flight leases as its capacity allows.
    #[error(
        "space {space} is at capacity ({capacity} leases in flight); wait for slots to resolve (grant with a wait timeout) or raise the space's capacity"
    )]
    AtCapacity {
        /// The space.
        space: SpaceName,
        /// Its capacity.
        capacity: u32,
    },
    /// The cleaner's claim on the slot expired or was taken over by another cleaner.
    #[error(
        "claim on {space}/{seq} was lost (expired or taken over by another cleaner); nothing was written, the slot is recovered by whoever holds it now"
    )]
    ClaimLost {
        /// The space.
        space: SpaceName,
        /// The seq.
        seq: u64,
    },
    /// No item with this id in the recovery queue, or not in a state that allows the action.
    #[error("recovery queue item {id} cannot be {action}: {reason}")]
    Parked {
        /// Queue id.
        id: u64,
        /// The action attempted.
        action: &'static str,
        /// Why not.
        reason: String,
    },
    /// The resource is held by another agent.
    #[error(
        "resource {resource} is held by {holder} (epoch {epoch}) until {expires_at}; wait for it (acquire with a timeout) or pick another resource"
    )]
    ResourceHeld {
        /// The resource.
        resource: String,
        /// Its holder.
        holder: String,
        /// The holder's epoch.
        epoch: u64,
        /// When the holder's lease expires unless renewed.
        expires_at: Timestamp,
    },
    /// The agent does not hold the resource at that epoch (never did, released, expired, or
    /// another holder took over).
    #[error(
        "{agent} does not hold {resource} at epoch {epoch} (current epoch {current}); the lease was lost: stop working on the resource and acquire it again"
    )]
    ResourceNotHeld {
        /// The resource.
        resource: String,
        /// The agent.
        agent: String,
        /// The epoch it claimed.
        epoch: u64,
        /// The resource's current epoch (0: never held).
        current: u64,
    },
    /// The holder has renewed as often as allowed.
    #[error(
        "lease on {resource} reached its maximum of {max} renewals; release it and acquire again so others get a turn"
    )]
    MaxRenewals {
        /// The resource.
        resource: String,
        /// The limit.
        max: u32,
    },
    /// The fence epoch is no longer current (I9).
    #[error(
        "stale epoch rejected for {resource}: current {current}, attempted {attempted}; another holder owns the resource now, stop writing"
    )]
    StaleEpoch {
        /// The resource.
        resource: String,
        /// Its current epoch.
        current: u64,
        /// The epoch the write carried.
        attempted: u64,
    },
    /// Late work was refused (see `crate::late`); nothing was written.
    #[error("late work for {space}/{seq} refused: {reason}")]
    LateRefused {
        /// The space.
        space: SpaceName,
        /// The slot the lease was granted.
        seq: u64,
        /// Why, and what to do instead.
        reason: &'static str,
    },
}

/// The backend failed; the whole batch was rolled back and nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StoreError {
    /// The backend could not be reached (connection refused, pool closed, timeout).
    #[error("{backend} store unavailable: {detail}; once it is reachable again, retry")]
    Unavailable {
        /// "memory", "sqlite", "postgres".
        backend: &'static str,
        /// What the driver said.
        detail: String,
    },
    /// The database file or server data is not a seqlease database or is damaged.
    #[error(
        "{backend} store is corrupt or not a database: {detail}; restore it from a backup or point --db at the right file"
    )]
    Corrupt {
        /// Backend.
        backend: &'static str,
        /// What the driver said.
        detail: String,
    },
    /// The schema is missing, older than this binary (and migrations are off) or newer.
    #[error("{backend} schema problem: {detail}")]
    Schema {
        /// Backend.
        backend: &'static str,
        /// What is wrong and what to do.
        detail: String,
    },
    /// The connection is not allowed to do what seqlease needs.
    #[error(
        "{backend} permission denied: {detail}; grant the role the privileges listed in docs/postgres.md"
    )]
    Permission {
        /// Backend.
        backend: &'static str,
        /// What the driver said.
        detail: String,
    },
    /// The store URL could not be understood.
    #[error(
        "unsupported store URL {url:?}: {reason}; use memory, sqlite://PATH or postgres://USER@HOST/DB"
    )]
    BadUrl {
        /// The URL given.
        url: String,
        /// Why.
        reason: String,
    },
    /// An option the store was opened with is out of range; nothing was opened or written.
    #[error("{backend} store option {option} is invalid: {reason}")]
    BadOption {
        /// Backend.
        backend: &'static str,
        /// The option, as the application sets it (`SqliteOptions::page_size`).
        option: &'static str,
        /// What is wrong and which values are allowed.
        reason: String,
    },
    /// The store does not implement this capability yet.
    #[error(
        "the {backend} store does not support {what} yet; use a store that does (see docs/stores.md)"
    )]
    Unsupported {
        /// Backend.
        backend: &'static str,
        /// The capability ("recovery", …).
        what: &'static str,
    },
    /// The entries asked for were pruned by an operator (see `Store::prune_entries`).
    #[error(
        "entries 1..={through} of space {space} were pruned by {actor} at {at}; read from {next} or later (reset the consumer to checkpoint {through} or later)",
        next = through + 1
    )]
    Pruned {
        /// The space.
        space: SpaceName,
        /// The last pruned seq.
        through: u64,
        /// Who pruned them.
        actor: String,
        /// When (store clock).
        at: Timestamp,
    },
    /// Any other backend failure.
    #[error("{backend} store error: {detail}")]
    Backend {
        /// Backend.
        backend: &'static str,
        /// What the driver said.
        detail: String,
    },
}

impl StoreError {
    /// Whether retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}
