//! Engine settings with production defaults.

use std::time::Duration;

/// Settings of an [`Engine`](crate::Engine). Every field has a sane default.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The worker id recorded on leases when a grant does not name one.
    pub owner: String,
    /// TTL of a grant that does not name one.
    pub default_ttl: Duration,
    /// Shortest TTL accepted.
    pub min_ttl: Duration,
    /// Longest TTL accepted.
    pub max_ttl: Duration,
    /// Largest payload (operation payload, partial work) accepted, in bytes.
    pub max_payload_bytes: usize,
    /// Capacity of spaces this engine creates.
    pub default_capacity: u32,
    /// How often waiters re-read the store in case another process moved a space forward
    /// (in-process progress wakes them at once; this is only the cross-process fallback).
    pub external_poll_interval: Duration,
    /// Entries fetched per store round trip by a log reader.
    pub read_page: usize,
    /// Override the store's group-commit hint (`None`: follow the store).
    pub group_commit: Option<bool>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            owner: format!("worker-{}", std::process::id()),
            default_ttl: Duration::from_secs(30),
            min_ttl: Duration::from_millis(10),
            max_ttl: Duration::from_secs(24 * 3600),
            max_payload_bytes: 1024 * 1024,
            default_capacity: 10_000,
            external_poll_interval: Duration::from_millis(250),
            read_page: 1024,
            group_commit: None,
        }
    }
}

impl EngineConfig {
    /// The local safety margin for a lease of `ttl`: the handle stops believing it holds
    /// the lease this long before the store would expire it, to absorb the request's
    /// travel time and clock-rate differences.
    pub fn safety_margin(&self, ttl: Duration) -> Duration {
        (ttl / 10).clamp(Duration::from_millis(1), Duration::from_secs(2))
    }
}
