//! The alert evaluator: the conditions an operator must hear about, checked in-process.
//!
//! The engine keeps plain cumulative counts (grants, expirations, recovery outcomes, gaps,
//! resource conflicts, renewals) next to its OpenTelemetry instruments, so alerts work even
//! with no exporter. The evaluator **samples** those counts, stamped with the engine's clock
//! (the store's clock: a `ManualClock` in tests), at every cleanup cycle and every
//! [`Engine::health`](crate::Engine::health) call, keeps the samples of the last window, and
//! compares the newest sample with the one at the start of the window. An alert is active
//! while its condition holds at the latest evaluation and clears by itself when it no longer
//! does; its `since` is when it was first seen active in a row.
//!
//! The same conditions are shipped as Prometheus rules in `docs/telemetry/prometheus-alerts.yaml`
//! for fleets; this evaluator answers for one process. The cleanup heartbeat in particular is
//! in-process: it fires when a cleanup service was started in *this* engine and has not
//! finished a cycle for longer than the threshold.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use seqlease_core::{SpaceName, Timestamp};

/// Thresholds and windows of the alert evaluator; every field has an operator-friendly
/// default.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertThresholds {
    /// The window rates and counts are taken over.
    pub window: Duration,
    /// Expired / granted leases in the window above this fires `ExpirationRateHigh`.
    pub expiration_rate: f64,
    /// More expired slots than this at one cleanup cycle fires `ExpiredAtOnce`.
    pub expired_at_once: u64,
    /// Failed / all recovery outcomes in the window above this fires `RecoveryFailureRateHigh`.
    pub recovery_failure_rate: f64,
    /// More gaps than this in the window fires `GapsHigh`.
    pub gaps_per_window: u64,
    /// Resource-lease conflicts per second (over the window) above this fires `LeaseConflictRateHigh`.
    pub conflicts_per_second: f64,
    /// Failed / all renewals in the window above this fires `RenewalFailureRateHigh`.
    pub renewal_failure_rate: f64,
    /// A watermark that has not moved for longer than this while slots above it are
    /// pending fires `WatermarkStalled`.
    pub watermark_stall: Duration,
    /// A cleanup service started in this engine that has not finished a cycle for longer
    /// than this fires `CleanupStopped`.
    pub cleanup_heartbeat: Duration,
}

impl Default for AlertThresholds {
    fn default() -> Self {
        AlertThresholds {
            window: Duration::from_secs(300),
            expiration_rate: 0.05,
            expired_at_once: 10,
            recovery_failure_rate: 0.01,
            gaps_per_window: 100,
            conflicts_per_second: 0.01,
            renewal_failure_rate: 0.10,
            watermark_stall: Duration::from_secs(120),
            cleanup_heartbeat: Duration::from_secs(60),
        }
    }
}

/// The conditions the evaluator checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AlertKind {
    /// Too many leases expire instead of being committed or released.
    ExpirationRateHigh,
    /// Many leases expired at once (a crashed worker or node, a stalled store).
    ExpiredAtOnce,
    /// Recovery steps fail.
    RecoveryFailureRateHigh,
    /// Many gaps are being written.
    GapsHigh,
    /// Agents keep colliding on resource leases.
    LeaseConflictRateHigh,
    /// Renewals fail (leases are being lost).
    RenewalFailureRateHigh,
    /// A space's watermark is stuck while slots above it are pending.
    WatermarkStalled,
    /// The cleanup service stopped running cycles.
    CleanupStopped,
}

impl AlertKind {
    /// Every kind, in report order.
    pub const ALL: [AlertKind; 8] = [
        AlertKind::ExpirationRateHigh,
        AlertKind::ExpiredAtOnce,
        AlertKind::RecoveryFailureRateHigh,
        AlertKind::GapsHigh,
        AlertKind::LeaseConflictRateHigh,
        AlertKind::RenewalFailureRateHigh,
        AlertKind::WatermarkStalled,
        AlertKind::CleanupStopped,
    ];

    /// The alert's name, the same as the Prometheus rule's `alert:` name.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::ExpirationRateHigh => "SeqleaseExpirationRateHigh",
            AlertKind::ExpiredAtOnce => "SeqleaseExpiredAtOnce",
            AlertKind::RecoveryFailureRateHigh => "SeqleaseRecoveryFailureRateHigh",
            AlertKind::GapsHigh => "SeqleaseGapsHigh",
            AlertKind::LeaseConflictRateHigh => "SeqleaseLeaseConflictRateHigh",
            AlertKind::RenewalFailureRateHigh => "SeqleaseRenewalFailureRateHigh",
            AlertKind::WatermarkStalled => "SeqleaseWatermarkStalled",
            AlertKind::CleanupStopped => "SeqleaseCleanupStopped",
        }
    }
}

impl std::fmt::Display for AlertKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One active alert.
#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    /// Which condition.
    pub kind: AlertKind,
    /// The space, for per-space conditions (the stalled watermark).
    pub space: Option<SpaceName>,
    /// The measured value (a rate, a count, or seconds).
    pub value: f64,
    /// The threshold it crossed.
    pub threshold: f64,
    /// Since when it has been active (engine clock).
    pub since: Timestamp,
    /// What happened, for humans; the runbook in docs/telemetry.md says what to do.
    pub message: String,
}

/// The cumulative counts the evaluator samples (relaxed atomics; grants are counted by the
/// lease counts, see `Shared::snapshot`).
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) expired: AtomicU64,
    pub(crate) recovery_ok: AtomicU64,
    pub(crate) recovery_failed: AtomicU64,
    pub(crate) gaps: AtomicU64,
    pub(crate) conflicts: AtomicU64,
    pub(crate) renewals_ok: AtomicU64,
    pub(crate) renewals_failed: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// A point-in-time copy of [`Counts`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Snapshot {
    granted: u64,
    expired: u64,
    recovery_ok: u64,
    recovery_failed: u64,
    gaps: u64,
    conflicts: u64,
    renewals_ok: u64,
    renewals_failed: u64,
}

impl Counts {
    /// The totals, with `granted` (summed from the lease counts by the caller).
    pub(crate) fn snapshot(&self, granted: u64) -> Snapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            granted,
            expired: r(&self.expired),
            recovery_ok: r(&self.recovery_ok),
            recovery_failed: r(&self.recovery_failed),
            gaps: r(&self.gaps),
            conflicts: r(&self.conflicts),
            renewals_ok: r(&self.renewals_ok),
            renewals_failed: r(&self.renewals_failed),
        }
    }
}

impl Snapshot {
    fn minus(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            granted: self.granted.saturating_sub(earlier.granted),
            expired: self.expired.saturating_sub(earlier.expired),
            recovery_ok: self.recovery_ok.saturating_sub(earlier.recovery_ok),
            recovery_failed: self.recovery_failed.saturating_sub(earlier.recovery_failed),
            gaps: self.gaps.saturating_sub(earlier.gaps),
            conflicts: self.conflicts.saturating_sub(earlier.conflicts),
            renewals_ok: self.renewals_ok.saturating_sub(earlier.renewals_ok),
            renewals_failed: self.renewals_failed.saturating_sub(earlier.renewals_failed),
        }
    }
}

/// What the evaluator is told about the rest of the engine at a sample.
#[derive(Clone, Debug, Default)]
pub(crate) struct Observed {
    /// Per space: (watermark, highest allocated seq).
    pub(crate) spaces: Vec<(SpaceName, u64, u64)>,
    /// Expired slots at the last cleanup cycle (`None`: no cycle ran here).
    pub(crate) last_backlog: Option<u64>,
    /// When a cleanup service of this engine last finished a cycle, or was started
    /// (`None`: no cleanup service runs in this engine).
    pub(crate) cleanup_heartbeat: Option<Timestamp>,
}

/// Samples, stall tracking, and which alerts are active since when.
#[derive(Debug)]
pub(crate) struct Evaluator {
    pub(crate) thresholds: AlertThresholds,
    samples: VecDeque<(Timestamp, Snapshot)>,
    /// Per space: the watermark last seen and since when it has not moved.
    stalls: HashMap<SpaceName, (u64, Timestamp), foldhash::fast::RandomState>,
    active: HashMap<(AlertKind, Option<SpaceName>), Timestamp>,
}

/// Samples kept at most (a cleanup every 100 ms over a 5-minute window stays well below).
const MAX_SAMPLES: usize = 8192;

impl Evaluator {
    pub(crate) fn new(thresholds: AlertThresholds) -> Self {
        Evaluator {
            thresholds,
            samples: VecDeque::new(),
            stalls: HashMap::default(),
            active: HashMap::new(),
        }
    }

    /// Record the counts at `now` and update the watermark-stall bookkeeping.
    pub(crate) fn sample(&mut self, now: Timestamp, counts: Snapshot, observed: &Observed) {
        if let Some((last, _)) = self.samples.back()
            && now < *last
        {
            // The clock stepped back: start the window again rather than mix time lines.
            self.samples.clear();
        }
        self.samples.push_back((now, counts));
        // Keep one sample at or before the window's start as the baseline.
        let start = now.minus(self.thresholds.window);
        while self.samples.len() > 2 && self.samples[1].0 <= start {
            self.samples.pop_front();
        }
        while self.samples.len() > MAX_SAMPLES {
            self.samples.pop_front();
        }
        for (space, watermark, last_seq) in &observed.spaces {
            // Every space, every cycle: look up before cloning the name for an insert.
            let Some(entry) = self.stalls.get_mut(space) else {
                self.stalls.insert(space.clone(), (*watermark, now));
                continue;
            };
            // Nothing pending, or progress: the stall clock restarts.
            if *watermark != entry.0 || last_seq <= watermark {
                *entry = (*watermark, now);
            }
        }
    }

    /// The active alerts at the latest sample.
    pub(crate) fn evaluate(&mut self, now: Timestamp, observed: &Observed) -> Vec<Alert> {
        let t = self.thresholds.clone();
        let mut found: Vec<(AlertKind, Option<SpaceName>, f64, f64, String)> = Vec::new();
        let delta = match (self.samples.front(), self.samples.back()) {
            (Some((_, first)), Some((_, last))) => last.minus(first),
            _ => Snapshot::default(),
        };
        let window_text = format!("{}s", t.window.as_secs());

        if delta.expired > 0 {
            let rate = if delta.granted == 0 {
                f64::INFINITY
            } else {
                delta.expired as f64 / delta.granted as f64
            };
            if rate > t.expiration_rate {
                found.push((
                    AlertKind::ExpirationRateHigh,
                    None,
                    rate,
                    t.expiration_rate,
                    format!(
                        "{} of {} leases granted in the last {window_text} expired ({:.1}%)",
                        delta.expired,
                        delta.granted,
                        rate * 100.0
                    ),
                ));
            }
        }
        if let Some(backlog) = observed.last_backlog
            && backlog > t.expired_at_once
        {
            found.push((
                AlertKind::ExpiredAtOnce,
                None,
                backlog as f64,
                t.expired_at_once as f64,
                format!("{backlog} leases were expired at once at the last cleanup cycle"),
            ));
        }
        let outcomes = delta.recovery_ok + delta.recovery_failed;
        if delta.recovery_failed > 0 {
            let rate = delta.recovery_failed as f64 / outcomes as f64;
            if rate > t.recovery_failure_rate {
                found.push((
                    AlertKind::RecoveryFailureRateHigh,
                    None,
                    rate,
                    t.recovery_failure_rate,
                    format!(
                        "{} of {outcomes} recovery outcomes in the last {window_text} failed; their work is parked",
                        delta.recovery_failed
                    ),
                ));
            }
        }
        if delta.gaps > t.gaps_per_window {
            found.push((
                AlertKind::GapsHigh,
                None,
                delta.gaps as f64,
                t.gaps_per_window as f64,
                format!("{} gaps written in the last {window_text}", delta.gaps),
            ));
        }
        // Per-second rates use the configured window as the denominator (as Prometheus'
        // `increase(...[window]) / window` would), never a shorter span, so a young
        // process does not fire on its first event.
        let window_secs = t.window.as_secs_f64().max(1.0);
        let conflict_rate = delta.conflicts as f64 / window_secs;
        if conflict_rate > t.conflicts_per_second {
            found.push((
                AlertKind::LeaseConflictRateHigh,
                None,
                conflict_rate,
                t.conflicts_per_second,
                format!(
                    "{} resource-lease conflicts in the last {window_text} ({conflict_rate:.3}/s)",
                    delta.conflicts
                ),
            ));
        }
        if delta.renewals_failed > 0 {
            let all = delta.renewals_ok + delta.renewals_failed;
            let rate = delta.renewals_failed as f64 / all as f64;
            if rate > t.renewal_failure_rate {
                found.push((
                    AlertKind::RenewalFailureRateHigh,
                    None,
                    rate,
                    t.renewal_failure_rate,
                    format!(
                        "{} of {all} renewals in the last {window_text} failed",
                        delta.renewals_failed
                    ),
                ));
            }
        }
        for (space, watermark, last_seq) in &observed.spaces {
            if let Some((_, since)) = self.stalls.get(space) {
                let stalled = now.since(*since);
                if last_seq > watermark && stalled > t.watermark_stall {
                    found.push((
                        AlertKind::WatermarkStalled,
                        Some(space.clone()),
                        stalled.as_secs_f64(),
                        t.watermark_stall.as_secs_f64(),
                        format!(
                            "watermark of {space} stuck at {watermark} for {}s with {} slots pending (slot {} unresolved)",
                            stalled.as_secs(),
                            last_seq - watermark,
                            watermark + 1
                        ),
                    ));
                }
            }
        }
        if let Some(beat) = observed.cleanup_heartbeat {
            let silent = now.since(beat);
            if silent > t.cleanup_heartbeat {
                found.push((
                    AlertKind::CleanupStopped,
                    None,
                    silent.as_secs_f64(),
                    t.cleanup_heartbeat.as_secs_f64(),
                    format!(
                        "the cleanup service has not finished a cycle for {}s",
                        silent.as_secs()
                    ),
                ));
            }
        }

        let mut active = HashMap::with_capacity(found.len());
        let mut alerts = Vec::with_capacity(found.len());
        for (kind, space, value, threshold, message) in found {
            let key = (kind, space.clone());
            let since = self.active.get(&key).copied().unwrap_or(now);
            active.insert(key, since);
            alerts.push(Alert {
                kind,
                space,
                value,
                threshold,
                since,
                message,
            });
        }
        for (kind, space) in self.active.keys() {
            if !active.contains_key(&(*kind, space.clone())) {
                tracing::info!(alert = kind.as_str(), space = ?space, "alert cleared");
            }
        }
        for alert in &alerts {
            if !self.active.contains_key(&(alert.kind, alert.space.clone())) {
                tracing::warn!(alert = alert.kind.as_str(), space = ?alert.space, message = %alert.message, "alert firing");
            }
        }
        self.active = active;
        alerts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp(secs * 1_000_000)
    }

    #[test]
    fn rates_are_taken_over_the_window_and_clear_when_it_passes() {
        let mut e = Evaluator::new(AlertThresholds::default());
        let o = Observed::default();
        e.sample(at(0), Snapshot::default(), &o);
        let busy = Snapshot {
            granted: 100,
            expired: 10,
            ..Snapshot::default()
        };
        e.sample(at(10), busy, &o);
        let alerts = e.evaluate(at(10), &o);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].kind, AlertKind::ExpirationRateHigh);
        assert!((alerts[0].value - 0.1).abs() < 1e-9);
        // Nothing new happens for longer than the window: the alert clears.
        e.sample(at(400), busy, &o);
        e.sample(at(500), busy, &o);
        assert!(e.evaluate(at(500), &o).is_empty());
    }
}
