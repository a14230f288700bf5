//! Every instrument the engine records, in one table, and the struct that holds them.
//!
//! [`INSTRUMENTS`] is the single source of truth: the engine creates its instruments from
//! it (meter `seqlease`), `docs/telemetry.md` documents it, and a test checks that every
//! metric named in the docs, the alert rules and the dashboard is in it. Names follow the
//! OpenTelemetry conventions (dotted lowercase, a unit per instrument, annotations such as
//! `{lease}` for counted things); [`InstrumentSpec::prometheus_name`] gives the name a
//! Prometheus server sees after the usual OTLP → Prometheus translation (dots become
//! underscores, the unit becomes a suffix, counters end in `_total`).

use opentelemetry::metrics::{Counter, Histogram, Meter};

/// What kind of instrument a spec describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstrumentKind {
    /// A monotonic counter (Prometheus: `_total`).
    Counter,
    /// A histogram (Prometheus: `_bucket`, `_sum`, `_count`).
    Histogram,
    /// An observable gauge, read when metrics are collected.
    Gauge,
}

impl InstrumentKind {
    /// The lowercase name, for docs.
    pub fn as_str(self) -> &'static str {
        match self {
            InstrumentKind::Counter => "counter",
            InstrumentKind::Histogram => "histogram",
            InstrumentKind::Gauge => "gauge",
        }
    }
}

/// One instrument: its OpenTelemetry name, kind, unit, attributes and meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstrumentSpec {
    /// The OpenTelemetry name (`seqlease.lease.granted`).
    pub name: &'static str,
    /// Counter, histogram or gauge.
    pub kind: InstrumentKind,
    /// The UCUM unit (`s`, `{lease}`).
    pub unit: &'static str,
    /// The attribute keys every data point carries.
    pub attributes: &'static [&'static str],
    /// What it measures.
    pub description: &'static str,
}

impl InstrumentSpec {
    /// The metric name after the OTLP → Prometheus translation of the OpenTelemetry
    /// Collector's `prometheus` exporter (and Prometheus' own OTLP receiver) with its
    /// defaults: non-alphanumerics become `_`, a unit in braces is dropped, `s` becomes
    /// `_seconds`, and counters get `_total`.
    pub fn prometheus_name(&self) -> String {
        let mut name = self.name.replace(['.', '-'], "_");
        let unit = match self.unit {
            "s" => Some("seconds"),
            "ms" => Some("milliseconds"),
            "By" => Some("bytes"),
            "1" if self.kind == InstrumentKind::Gauge => Some("ratio"),
            _ => None, // "{lease}" and other annotations are dropped
        };
        if let Some(unit) = unit
            && !name.ends_with(unit)
        {
            name.push('_');
            name.push_str(unit);
        }
        if self.kind == InstrumentKind::Counter {
            name.push_str("_total");
        }
        name
    }

    /// The series names Prometheus stores for this instrument (histograms have three).
    pub fn prometheus_series(&self) -> Vec<String> {
        let base = self.prometheus_name();
        match self.kind {
            InstrumentKind::Histogram => ["_bucket", "_sum", "_count"]
                .iter()
                .map(|s| format!("{base}{s}"))
                .collect(),
            _ => vec![base],
        }
    }
}

/// The name of the meter every instrument is created on.
pub const METER_NAME: &str = "seqlease";

macro_rules! spec {
    ($id:ident, $name:literal, $kind:ident, $unit:literal, [$($attr:literal),*], $desc:literal) => {
        #[doc = $desc]
        pub const $id: InstrumentSpec = InstrumentSpec {
            name: $name,
            kind: InstrumentKind::$kind,
            unit: $unit,
            attributes: &[$($attr),*],
            description: $desc,
        };
    };
}

spec!(
    LEASE_GRANTED,
    "seqlease.lease.granted",
    Counter,
    "{lease}",
    ["space", "projection_type"],
    "Sequence leases granted (slots allocated) by this engine."
);
spec!(
    LEASE_COMMITTED,
    "seqlease.lease.committed",
    Counter,
    "{lease}",
    ["space", "projection_type"],
    "Leases whose commit this engine got accepted (committed, or superseded by an existing commit of the same operation)."
);
spec!(
    LEASE_RELEASED,
    "seqlease.lease.released",
    Counter,
    "{lease}",
    ["space", "projection_type"],
    "Leases released by their worker (explicitly, or by dropping the handle)."
);
spec!(
    LEASE_EXPIRED,
    "seqlease.lease.expired",
    Counter,
    "{lease}",
    ["space", "projection_type"],
    "Expired leases found by this engine's cleanup service (counted once, at the first claim)."
);
spec!(
    LEASE_RENEWALS,
    "seqlease.lease.renewals",
    Counter,
    "{renewal}",
    ["space", "result"],
    "Sequence-lease renewals by result (renewed, failed)."
);
spec!(
    LEASE_OVERRUN,
    "seqlease.lease.overrun",
    Histogram,
    "s",
    ["space", "projection_type"],
    "How long past its expiry an expired slot stayed unresolved before a cleaner claimed it."
);
spec!(
    LEASE_IN_FLIGHT,
    "seqlease.lease.in_flight",
    Gauge,
    "{lease}",
    ["space"],
    "LEASED (unresolved) slots per space: the store's count at the last refresh, adjusted by this engine's grants and resolutions since."
);
spec!(
    LEASE_EXPIRED_BACKLOG,
    "seqlease.lease.expired_backlog",
    Gauge,
    "{slot}",
    ["space"],
    "Expired, unclaimed slots per space at the last cleanup cycle."
);
spec!(
    GRANT_DURATION,
    "seqlease.grant.duration",
    Histogram,
    "s",
    ["space"],
    "Grant latency: call to return, group-commit wait included (monotonic clock)."
);
spec!(
    COMMIT_DURATION,
    "seqlease.commit.duration",
    Histogram,
    "s",
    ["space"],
    "Commit latency: call to return, group-commit wait included (monotonic clock)."
);
spec!(
    GROUP_COMMIT_BATCH_SIZE,
    "seqlease.group_commit.batch.size",
    Histogram,
    "{command}",
    ["store"],
    "Commands per group-commit store transaction."
);
spec!(
    STORE_BATCHES,
    "seqlease.store.batches",
    Counter,
    "{batch}",
    ["store", "path"],
    "Write batches by the path the store took; PostgreSQL only: one_statement, or one_statement_refused when that path declined the batch and it ran as a general transaction."
);
spec!(
    RECOVERY_OUTCOMES,
    "seqlease.recovery.outcomes",
    Counter,
    "{slot}",
    ["step", "outcome", "projection_type"],
    "Recovery outcomes by step (partial_work, retry, custom steps, gap, resequence) and result (success, failure)."
);
spec!(
    GAPS_CREATED,
    "seqlease.gaps.created",
    Counter,
    "{gap}",
    ["space", "reason"],
    "Gaps written through this engine, by reason (expired, released, superseded)."
);
spec!(
    RECOVERY_QUEUE_SIZE,
    "seqlease.recovery.queue.size",
    Gauge,
    "{item}",
    ["state"],
    "Recovery-queue items by state (parked, manual), refreshed by cleanup housekeeping; capped at 1,000 per state."
);
spec!(
    WATERMARK,
    "seqlease.watermark",
    Gauge,
    "{seq}",
    ["space"],
    "The watermark W of each space: every slot 1..=W is resolved."
);
spec!(
    WATERMARK_LAG,
    "seqlease.watermark.lag",
    Gauge,
    "{slot}",
    ["space"],
    "Distance from the highest allocated seq to the watermark (slots not yet resolved in order)."
);
spec!(
    LOAD_LEVEL,
    "seqlease.cleanup.load_level",
    Gauge,
    "{level}",
    [],
    "The cleanup service's load level at its last cycle: 0 low, 1 medium, 2 high."
);
spec!(
    RECOVERY_MODE,
    "seqlease.cleanup.recovery_mode",
    Gauge,
    "{mode}",
    [],
    "1 while the cleanup service is in recovery mode (a cascade), else 0."
);
spec!(
    CLEANUP_CYCLES,
    "seqlease.cleanup.cycles",
    Counter,
    "{cycle}",
    ["result"],
    "Cleanup cycles run by this engine, by result (ok, error): its heartbeat."
);
spec!(
    RESOURCE_ACQUISITIONS,
    "seqlease.resource.acquisitions",
    Counter,
    "{acquisition}",
    ["result"],
    "Resource-lease acquisition attempts by result (acquired, conflict)."
);
spec!(
    RESOURCE_RENEWALS,
    "seqlease.resource.renewals",
    Counter,
    "{renewal}",
    ["result"],
    "Resource-lease renewals by result (renewed, lost, error)."
);
spec!(
    EPOCH_CONFLICTS,
    "seqlease.epoch.conflicts",
    Counter,
    "{write}",
    ["resource"],
    "Writes rejected because their fence epoch was stale (I9)."
);
spec!(
    STORE_ERRORS,
    "seqlease.store.errors",
    Counter,
    "{error}",
    ["store", "error.type"],
    "Store failures seen by the engine (the batch was rolled back), by kind."
);

/// Every instrument the engine records.
pub const INSTRUMENTS: &[InstrumentSpec] = &[
    LEASE_GRANTED,
    LEASE_COMMITTED,
    LEASE_RELEASED,
    LEASE_EXPIRED,
    LEASE_RENEWALS,
    LEASE_OVERRUN,
    LEASE_IN_FLIGHT,
    LEASE_EXPIRED_BACKLOG,
    GRANT_DURATION,
    COMMIT_DURATION,
    GROUP_COMMIT_BATCH_SIZE,
    STORE_BATCHES,
    RECOVERY_OUTCOMES,
    GAPS_CREATED,
    RECOVERY_QUEUE_SIZE,
    WATERMARK,
    WATERMARK_LAG,
    LOAD_LEVEL,
    RECOVERY_MODE,
    CLEANUP_CYCLES,
    RESOURCE_ACQUISITIONS,
    RESOURCE_RENEWALS,
    EPOCH_CONFLICTS,
    STORE_ERRORS,
];

/// Latency buckets in seconds: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Overrun buckets in seconds: 10 ms to 1 h.
const OVERRUN_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];
/// Batch-size buckets.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// The synchronous instruments, created once per engine. (Gauges and the lease counters
/// are registered with callbacks by [`super::EngineTelemetry`] and need no handle.)
pub(crate) struct Instruments {
    pub(crate) lease_expired: Counter<u64>,
    pub(crate) lease_renewals: Counter<u64>,
    pub(crate) lease_overrun: Histogram<f64>,
    pub(crate) grant_duration: Histogram<f64>,
    pub(crate) commit_duration: Histogram<f64>,
    pub(crate) batch_size: Histogram<u64>,
    pub(crate) recovery_outcomes: Counter<u64>,
    pub(crate) gaps_created: Counter<u64>,
    pub(crate) cleanup_cycles: Counter<u64>,
    pub(crate) resource_acquisitions: Counter<u64>,
    pub(crate) resource_renewals: Counter<u64>,
    pub(crate) epoch_conflicts: Counter<u64>,
    pub(crate) store_errors: Counter<u64>,
}

fn counter(meter: &Meter, spec: InstrumentSpec) -> Counter<u64> {
    debug_assert_eq!(spec.kind, InstrumentKind::Counter);
    meter
        .u64_counter(spec.name)
        .with_unit(spec.unit)
        .with_description(spec.description)
        .build()
}

fn histogram(meter: &Meter, spec: InstrumentSpec, buckets: &[f64]) -> Histogram<f64> {
    debug_assert_eq!(spec.kind, InstrumentKind::Histogram);
    meter
        .f64_histogram(spec.name)
        .with_unit(spec.unit)
        .with_description(spec.description)
        .with_boundaries(buckets.to_vec())
        .build()
}

impl Instruments {
    /// Create every synchronous instrument of [`INSTRUMENTS`] on `meter`.
    pub(crate) fn new(meter: &Meter) -> Self {
        Instruments {
            lease_expired: counter(meter, LEASE_EXPIRED),
            lease_renewals: counter(meter, LEASE_RENEWALS),
            lease_overrun: histogram(meter, LEASE_OVERRUN, OVERRUN_BUCKETS),
            grant_duration: histogram(meter, GRANT_DURATION, LATENCY_BUCKETS),
            commit_duration: histogram(meter, COMMIT_DURATION, LATENCY_BUCKETS),
            batch_size: meter
                .u64_histogram(GROUP_COMMIT_BATCH_SIZE.name)
                .with_unit(GROUP_COMMIT_BATCH_SIZE.unit)
                .with_description(GROUP_COMMIT_BATCH_SIZE.description)
                .with_boundaries(BATCH_BUCKETS.to_vec())
                .build(),
            recovery_outcomes: counter(meter, RECOVERY_OUTCOMES),
            gaps_created: counter(meter, GAPS_CREATED),
            cleanup_cycles: counter(meter, CLEANUP_CYCLES),
            resource_acquisitions: counter(meter, RESOURCE_ACQUISITIONS),
            resource_renewals: counter(meter, RESOURCE_RENEWALS),
            epoch_conflicts: counter(meter, EPOCH_CONFLICTS),
            store_errors: counter(meter, STORE_ERRORS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_names_follow_the_translation_rules() {
        assert_eq!(
            LEASE_GRANTED.prometheus_name(),
            "seqlease_lease_granted_total"
        );
        assert_eq!(
            COMMIT_DURATION.prometheus_name(),
            "seqlease_commit_duration_seconds"
        );
        assert_eq!(WATERMARK_LAG.prometheus_name(), "seqlease_watermark_lag");
        assert_eq!(
            GROUP_COMMIT_BATCH_SIZE.prometheus_series()[0],
            "seqlease_group_commit_batch_size_bucket"
        );
        assert_eq!(
            STORE_ERRORS.prometheus_name(),
            "seqlease_store_errors_total"
        );
    }

    #[test]
    fn names_are_unique_and_well_formed() {
        let mut names: Vec<_> = INSTRUMENTS.iter().map(|s| s.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), INSTRUMENTS.len());
        for s in INSTRUMENTS {
            assert!(s.name.starts_with("seqlease."), "{}", s.name);
            assert!(
                s.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_'),
                "{}",
                s.name
            );
            assert!(!s.unit.is_empty(), "{} has a unit", s.name);
        }
    }
}
