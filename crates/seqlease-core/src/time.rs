//! Time as the store sees it.
//!
//! Every expiry decision in seqlease is made with the *store's* clock, never the caller's
//! (DESIGN §6). PostgreSQL uses the database's `now()`; the in-memory and SQLite stores use
//! the process clock behind the [`Clock`] trait so tests can drive expiry with a
//! [`ManualClock`] instead of sleeping.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A point in time: microseconds since the UNIX epoch, as read from a store's clock.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Microseconds since the UNIX epoch.
    pub fn as_micros(self) -> i64 {
        self.0
    }

    /// This instant plus `d` (saturating).
    pub fn plus(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(duration_micros(d)))
    }

    /// This instant minus `d` (saturating).
    pub fn minus(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_sub(duration_micros(d)))
    }

    /// How long after `earlier` this instant is (zero when it is not later).
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0).max(0) as u64)
    }

    /// Milliseconds since the epoch, for humans and JSON.
    pub fn as_millis(self) -> i64 {
        self.0 / 1000
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({}µs)", self.0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:06}s",
            self.0.div_euclid(1_000_000),
            self.0.rem_euclid(1_000_000)
        )
    }
}

/// A duration in whole microseconds, saturating at `i64::MAX`.
pub fn duration_micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// The source of "now" for stores that do not have a clock of their own.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The process's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(duration_micros(d))
    }
}

/// Lets a test move a store's clock.
///
/// Implemented by [`ManualClock`] for the in-process stores, and by an offset added to the
/// database clock for PostgreSQL, so one conformance suite drives expiry on every store.
pub trait TimeControl: Send + Sync + 'static {
    /// Move the store's notion of "now" forward by `by`.
    fn advance(&self, by: Duration);

    /// Move the store's notion of "now" back by `by`, as a clock step (an NTP correction, a
    /// VM restored from a snapshot) does to a real clock.
    fn step_back(&self, by: Duration);
}

/// A clock that only moves when told to. Starts at a fixed, realistic instant.
#[derive(Debug)]
pub struct ManualClock {
    micros: AtomicI64,
}

impl ManualClock {
    /// A manual clock starting at 2026-01-01T00:00:00Z.
    pub fn new() -> Self {
        Self::starting_at(Timestamp(1_767_225_600_000_000))
    }

    /// A manual clock starting at `start`.
    pub fn starting_at(start: Timestamp) -> Self {
        ManualClock {
            micros: AtomicI64::new(start.0),
        }
    }

    /// Set the clock to `t` (may go backwards, to simulate a clock step).
    pub fn set(&self, t: Timestamp) {
        self.micros.store(t.0, Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.micros.load(Ordering::SeqCst))
    }
}

impl TimeControl for ManualClock {
    fn advance(&self, by: Duration) {
        self.micros.fetch_add(duration_micros(by), Ordering::SeqCst);
    }

    fn step_back(&self, by: Duration) {
        self.micros.fetch_sub(duration_micros(by), Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new();
        let t0 = c.now();
        assert_eq!(c.now(), t0);
        c.advance(Duration::from_millis(1500));
        assert_eq!(c.now().since(t0), Duration::from_millis(1500));
        assert_eq!(t0.since(c.now()), Duration::ZERO);
    }

    #[test]
    fn timestamp_display_is_seconds() {
        assert_eq!(Timestamp(1_500_000).to_string(), "1.500000s");
    }
}
