//! The adaptive strategy: how loaded the system is, and which recovery steps that allows.
//!
//! A [`LoadClassifier`] turns signals — expired backlog, in-flight leases against capacity,
//! store latency, recovery-step latency — into [`LoadLevel`]s, and the policy picks the
//! steps: all of them at `Low`, only cheap ones at `Medium`, none at `High` (gap at once).
//! Work a cheaper strategy skipped is parked and re-sequenced when load is `Low` again: the
//! level changes *when* work is recovered, never *whether*.

use std::time::Duration;

/// How loaded the system is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LoadLevel {
    /// Run every recovery step; re-sequence parked work.
    Low,
    /// Skip expensive steps (their work is parked).
    Medium,
    /// Gap at once (recorded work is parked).
    High,
}

impl LoadLevel {
    /// The stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            LoadLevel::Low => "low",
            LoadLevel::Medium => "medium",
            LoadLevel::High => "high",
        }
    }
}

/// What the classifier looks at.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LoadSignals {
    /// Expired, unresolved slots across spaces.
    pub expired_backlog: u64,
    /// LEASED slots / capacity, worst space (0..=1).
    pub utilisation: f64,
    /// Recent store call latency.
    pub store_latency: Duration,
    /// Recent recovery-step latency (per slot).
    pub step_latency: Duration,
}

/// Thresholds of the classifier. A signal at or above its `high` mark makes the level High;
/// at or above `medium`, Medium.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadThresholds {
    /// Backlog marks.
    pub backlog: (u64, u64),
    /// Utilisation marks.
    pub utilisation: (f64, f64),
    /// Store latency marks.
    pub store_latency: (Duration, Duration),
    /// Step latency marks.
    pub step_latency: (Duration, Duration),
}

impl Default for LoadThresholds {
    fn default() -> Self {
        LoadThresholds {
            backlog: (1_000, 20_000),
            utilisation: (0.8, 0.95),
            store_latency: (Duration::from_millis(50), Duration::from_millis(250)),
            step_latency: (Duration::from_millis(100), Duration::from_secs(1)),
        }
    }
}

/// Classifies [`LoadSignals`] into a [`LoadLevel`]: the worst signal decides.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadClassifier {
    /// The marks.
    pub thresholds: LoadThresholds,
}

impl LoadClassifier {
    /// The level these signals call for.
    pub fn classify(&self, s: &LoadSignals) -> LoadLevel {
        let t = &self.thresholds;
        let level = |value: f64, (medium, high): (f64, f64)| {
            if value >= high {
                LoadLevel::High
            } else if value >= medium {
                LoadLevel::Medium
            } else {
                LoadLevel::Low
            }
        };
        let secs = |(a, b): (Duration, Duration)| (a.as_secs_f64(), b.as_secs_f64());
        [
            level(
                s.expired_backlog as f64,
                (t.backlog.0 as f64, t.backlog.1 as f64),
            ),
            level(s.utilisation, t.utilisation),
            level(s.store_latency.as_secs_f64(), secs(t.store_latency)),
            level(s.step_latency.as_secs_f64(), secs(t.step_latency)),
        ]
        .into_iter()
        .max()
        .unwrap_or(LoadLevel::Low)
    }
}

/// What a level allows: (any steps at all, expensive steps too).
pub(crate) fn allowed(level: LoadLevel) -> (bool, bool) {
    match level {
        LoadLevel::Low => (true, true),
        LoadLevel::Medium => (true, false),
        LoadLevel::High => (false, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_signal_decides() {
        let c = LoadClassifier::default();
        assert_eq!(c.classify(&LoadSignals::default()), LoadLevel::Low);
        let busy = LoadSignals {
            expired_backlog: 5_000,
            ..LoadSignals::default()
        };
        assert_eq!(c.classify(&busy), LoadLevel::Medium);
        let slow = LoadSignals {
            store_latency: Duration::from_millis(300),
            ..busy
        };
        assert_eq!(c.classify(&slow), LoadLevel::High);
        let full = LoadSignals {
            utilisation: 0.96,
            ..LoadSignals::default()
        };
        assert_eq!(c.classify(&full), LoadLevel::High);
    }

    #[test]
    fn levels_allow_fewer_steps_as_load_grows() {
        assert_eq!(allowed(LoadLevel::Low), (true, true));
        assert_eq!(allowed(LoadLevel::Medium), (true, false));
        assert_eq!(allowed(LoadLevel::High), (false, false));
    }
}
