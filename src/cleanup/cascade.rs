//! Cascades: many leases expiring at once (a crashed node, a stalled database).
//!
//! Above `threshold` expired slots the service enters **recovery mode**: it works in batches
//! with a pause after every batch's worth of slots, whichever spaces they are in (so
//! recovery does not starve live traffic), new leases get a longer TTL (so live workers do
//! not join the cascade), and the application is told. It leaves recovery mode with
//! hysteresis: only after the backlog stayed below `exit_below` for `exit_after`
//! consecutive cycles.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Settings of cascade handling.
#[derive(Clone, Debug, PartialEq)]
pub struct CascadeConfig {
    /// Enter recovery mode above this many expired slots.
    pub threshold: u64,
    /// Count a cycle as calm when the backlog is below this.
    pub exit_below: u64,
    /// Leave after this many calm cycles in a row.
    pub exit_after: u32,
    /// Pause after every `batch_size` slots claimed in recovery mode (counted across
    /// spaces).
    pub pause: Duration,
    /// New leases' TTL is multiplied by this in recovery mode …
    pub ttl_factor: u32,
    /// … but never beyond this (and never below the requested TTL).
    pub max_extended_ttl: Duration,
}

impl Default for CascadeConfig {
    fn default() -> Self {
        CascadeConfig {
            threshold: 100,
            exit_below: 50,
            exit_after: 3,
            pause: Duration::from_millis(10),
            ttl_factor: 2,
            max_extended_ttl: Duration::from_secs(600),
        }
    }
}

/// Recovery mode as the engine's grants see it.
#[derive(Debug, Default)]
pub(crate) struct RecoveryMode {
    active: AtomicBool,
    factor: std::sync::atomic::AtomicU32,
    cap_ms: std::sync::atomic::AtomicU64,
}

impl RecoveryMode {
    pub(crate) fn set(&self, active: bool, config: &CascadeConfig) {
        self.factor
            .store(config.ttl_factor.max(1), Ordering::Relaxed);
        self.cap_ms.store(
            config.max_extended_ttl.as_millis() as u64,
            Ordering::Relaxed,
        );
        self.active.store(active, Ordering::Release);
    }

    pub(crate) fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// The TTL a grant asking for `ttl` gets: extended in recovery mode, bounded, and
    /// computed from the request each time, so extensions never compound.
    pub(crate) fn extend(&self, ttl: Duration) -> Duration {
        if !self.is_active() {
            return ttl;
        }
        let cap = Duration::from_millis(self.cap_ms.load(Ordering::Relaxed));
        (ttl * self.factor.load(Ordering::Relaxed))
            .min(cap)
            .max(ttl)
    }
}

/// The enter/exit state machine.
#[derive(Debug, Default)]
pub(crate) struct Cascade {
    active: bool,
    calm: u32,
}

/// A change of recovery mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeChange {
    /// Entered recovery mode with this backlog.
    Entered {
        /// Expired slots at the time.
        backlog: u64,
    },
    /// Left recovery mode.
    Exited {
        /// Expired slots at the time.
        backlog: u64,
    },
}

impl Cascade {
    pub(crate) fn observe(&mut self, backlog: u64, config: &CascadeConfig) -> Option<ModeChange> {
        if !self.active {
            if backlog > config.threshold {
                self.active = true;
                self.calm = 0;
                return Some(ModeChange::Entered { backlog });
            }
            return None;
        }
        if backlog < config.exit_below {
            self.calm += 1;
            if self.calm >= config.exit_after {
                self.active = false;
                return Some(ModeChange::Exited { backlog });
            }
        } else {
            self.calm = 0;
        }
        None
    }

    pub(crate) fn active(&self) -> bool {
        self.active
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enters_above_threshold_and_leaves_with_hysteresis() {
        let config = CascadeConfig {
            threshold: 10,
            exit_below: 5,
            exit_after: 2,
            ..CascadeConfig::default()
        };
        let mut c = Cascade::default();
        assert_eq!(c.observe(10, &config), None);
        assert_eq!(
            c.observe(11, &config),
            Some(ModeChange::Entered { backlog: 11 })
        );
        assert_eq!(c.observe(4, &config), None, "one calm cycle is not enough");
        assert_eq!(c.observe(7, &config), None, "a busy cycle resets the count");
        assert_eq!(c.observe(4, &config), None);
        assert_eq!(
            c.observe(0, &config),
            Some(ModeChange::Exited { backlog: 0 })
        );
        assert!(!c.active());
    }

    #[test]
    fn ttl_extension_is_bounded_and_never_compounds() {
        let config = CascadeConfig {
            ttl_factor: 3,
            max_extended_ttl: Duration::from_secs(60),
            ..CascadeConfig::default()
        };
        let mode = RecoveryMode::default();
        assert_eq!(
            mode.extend(Duration::from_secs(10)),
            Duration::from_secs(10)
        );
        mode.set(true, &config);
        assert_eq!(
            mode.extend(Duration::from_secs(10)),
            Duration::from_secs(30)
        );
        assert_eq!(
            mode.extend(Duration::from_secs(30)),
            Duration::from_secs(60),
            "capped"
        );
        assert_eq!(
            mode.extend(Duration::from_secs(90)),
            Duration::from_secs(90),
            "never shortened"
        );
        mode.set(false, &config);
        assert_eq!(
            mode.extend(Duration::from_secs(10)),
            Duration::from_secs(10)
        );
    }
}
