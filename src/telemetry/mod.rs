//! Telemetry: OpenTelemetry metrics, traces, and in-process alerts.
//!
//! Operating a sequence-leasing system means watching a few things: are leases committed
//! or do they expire, does recovery keep up and succeed, does each space's watermark move,
//! are agents fighting over resources. The engine records all of it through the
//! `opentelemetry` API on a meter named `seqlease` (the instruments are listed once, in
//! [`INSTRUMENTS`]), exports it over OTLP when configured ([`Telemetry`], [`OtlpExport`]),
//! emits `tracing` spans for grant, commit, claim and recovery (install
//! [`tracing_layer`] to send them over OTLP), and evaluates the alert conditions an
//! operator needs in-process ([`Engine::health`](crate::Engine::health)).
//!
//! Nothing is global: each [`Engine`](crate::Engine) owns its `SdkMeterProvider`, so two
//! engines in one process record and export independently, and the library never installs
//! a global meter provider or tracing subscriber.
//!
//! The hot path pays for a relaxed atomic add (the lease counters, read by observable
//! counters at collection: `lease_counts`) and a histogram record per grant and commit,
//! with attribute sets built once per space and projection type and reused; latency comes
//! from the monotonic clock. Gauges (watermark, lag, in-flight, backlog, queue sizes, load
//! level) are read from values the engine already keeps when the exporter collects; they
//! cost no store round trip. docs/telemetry.md has the reference table, the export
//! settings, the alert rules and a runbook per alert.

mod alerts;
mod export;
mod health;
pub mod instruments;
mod lease_counts;
mod striped;
mod trace;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{MeterProvider as _, ObservableCounter, ObservableGauge};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use seqlease_core::{
    CommitOutcome, CommitStatus, InvalidInput, LeaseError, ReleaseOutcome, SnapshotMap, SpaceInfo,
    SpaceName, Store, StoreError, Timestamp,
};
use tokio::time::Instant;

pub use alerts::{Alert, AlertKind, AlertThresholds};
pub use export::{OtlpExport, OtlpProtocol, Telemetry};
pub use health::HealthReport;
pub use instruments::{INSTRUMENTS, InstrumentKind, InstrumentSpec, METER_NAME};
pub use trace::tracing_layer;

use crate::barrier::{SpaceSignals, Spaces};
use crate::error::Error;
use alerts::{Counts, Evaluator, Observed, Snapshot, bump};
use instruments::Instruments;
use lease_counts::TypeCounts;
use striped::{StripedLevel, StripedMax};

type Map<K, V> = DashMap<K, V, foldhash::fast::RandomState>;

const UNSET_U8: u8 = u8::MAX;
const UNSET_U64: u64 = u64::MAX;
const UNSET_I64: i64 = i64::MIN;

/// Projection types a space counts leases for apart; later ones are counted together.
pub const MAX_PROJECTION_TYPES: usize = 256;

/// The `projection_type` attribute of the types beyond [`MAX_PROJECTION_TYPES`]. No
/// projection type can be called this: names have no parentheses.
pub const OTHER_PROJECTION_TYPES: &str = "(other)";

/// What the engine knows about one space, for gauges and alerts, with its attribute sets
/// built once.
pub(crate) struct SpaceTelemetry {
    name: SpaceName,
    space_kv: [KeyValue; 1],
    signals: Arc<SpaceSignals>,
    /// Highest allocated seq seen (grants here, the store's count at refreshes).
    last_seq: StripedMax,
    /// LEASED slots: the store's count at the last refresh, adjusted by this engine since.
    in_flight: StripedLevel,
    /// Expired slots at the last cleanup cycle (`UNSET_U64`: none ran here).
    backlog: AtomicU64,
    /// Attributes and lease counters per projection type. Looked up by every grant and
    /// written only for a new type: a snapshot, so a lookup writes no line the cores share
    /// (a `DashMap` shard's lock word).
    by_type: SnapshotMap<String, Arc<TypeCounts>>,
    /// `[space, reason]` for expired, released, superseded.
    gap_kv: [[KeyValue; 2]; 3],
    /// `[space, result]` for renewed, failed.
    renew_kv: [[KeyValue; 2]; 2],
}

/// The gap reasons the engine writes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum GapKind {
    Expired = 0,
    Released = 1,
    Superseded = 2,
}

/// What a lease handle carries to record its own events without lookups.
#[derive(Clone)]
pub(crate) struct LeaseTelemetry {
    pub(crate) space: Arc<SpaceTelemetry>,
    counts: Arc<TypeCounts>,
}

impl std::fmt::Debug for SpaceTelemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpaceTelemetry")
            .field("space", &self.name)
            .finish()
    }
}

impl std::fmt::Debug for LeaseTelemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseTelemetry")
            .field("space", &self.space.name)
            .finish()
    }
}

/// State shared with the gauge callbacks.
struct Shared {
    spaces: Map<SpaceName, Arc<SpaceTelemetry>>,
    counts: Counts,
    load_level: AtomicU8,
    recovery_mode: AtomicU8,
    queue_parked: AtomicU64,
    queue_manual: AtomicU64,
    /// Store-clock micros of the heartbeat of a started cleanup service: its start, then
    /// each successful cycle (`UNSET_I64`: no cleanup service runs here).
    cleanup_beat: AtomicI64,
    /// Store-clock micros of the last successful cleanup cycle, started or run by hand.
    last_cycle: AtomicI64,
    last_backlog: AtomicU64,
}

/// An engine's telemetry: instruments, the state gauges read, and the alert evaluator.
pub(crate) struct EngineTelemetry {
    instruments: Option<Instruments>,
    shared: Arc<Shared>,
    barrier: Arc<Spaces>,
    evaluator: parking_lot::Mutex<Evaluator>,
    provider: Option<SdkMeterProvider>,
    /// Whether the engine built the provider (and so shuts it down).
    owns_provider: bool,
    store_kv: [KeyValue; 1],
    _gauges: Vec<ObservableGauge<u64>>,
    _counters: Vec<ObservableCounter<u64>>,
}

impl EngineTelemetry {
    /// Set up telemetry as `config` says. Must run inside a tokio runtime (gRPC export).
    pub(crate) fn new(
        config: Telemetry,
        thresholds: AlertThresholds,
        store: Arc<dyn Store>,
        barrier: Arc<Spaces>,
        now: Timestamp,
    ) -> Result<Self, InvalidInput> {
        let (provider, owns_provider) = match config {
            Telemetry::Off => (None, false),
            Telemetry::NoExport => (Some(SdkMeterProvider::builder().build()), true),
            Telemetry::Provider(p) => (Some(p), false),
            Telemetry::Otlp(export) => (Some(export.meter_provider()?), true),
            Telemetry::FromEnv => match OtlpExport::from_env()? {
                Some(export) => (Some(export.meter_provider()?), true),
                // A provider without a reader is read by no one: record nothing, as `Off`.
                None => (None, false),
            },
        };
        let shared = Arc::new(Shared {
            spaces: Map::default(),
            counts: Counts::default(),
            load_level: AtomicU8::new(UNSET_U8),
            recovery_mode: AtomicU8::new(UNSET_U8),
            queue_parked: AtomicU64::new(UNSET_U64),
            queue_manual: AtomicU64::new(UNSET_U64),
            cleanup_beat: AtomicI64::new(UNSET_I64),
            last_cycle: AtomicI64::new(UNSET_I64),
            last_backlog: AtomicU64::new(UNSET_U64),
        });
        let (instruments, gauges, counters) = match &provider {
            Some(p) => {
                let meter = p.meter(METER_NAME);
                (
                    Some(Instruments::new(&meter)),
                    register_gauges(&meter, &shared),
                    lease_counts::register(&meter, &shared)
                        .into_iter()
                        .chain([register_store_batches(&meter, store.clone())])
                        .collect(),
                )
            }
            None => (None, Vec::new(), Vec::new()),
        };
        let mut evaluator = Evaluator::new(thresholds);
        evaluator.sample(now, shared.snapshot(), &Observed::default());
        Ok(EngineTelemetry {
            instruments,
            shared,
            barrier,
            evaluator: parking_lot::Mutex::new(evaluator),
            provider,
            owns_provider,
            store_kv: [KeyValue::new("store", store.backend())],
            _gauges: gauges,
            _counters: counters,
        })
    }

    /// The meter provider the instruments live on (`None` with [`Telemetry::Off`]).
    pub(crate) fn provider(&self) -> Option<&SdkMeterProvider> {
        self.provider.as_ref()
    }

    /// Whether the engine built (and so shuts down) the provider.
    pub(crate) fn owns_provider(&self) -> bool {
        self.owns_provider
    }

    /// The entry of `space`, created on first use.
    pub(crate) fn space(&self, space: &SpaceName) -> Arc<SpaceTelemetry> {
        if let Some(s) = self.shared.spaces.get(space) {
            return s.clone();
        }
        self.shared
            .spaces
            .entry(space.clone())
            .or_insert_with(|| {
                let kv = |k: &'static str, v: &'static str| {
                    [
                        KeyValue::new("space", space.as_str().to_string()),
                        KeyValue::new(k, v),
                    ]
                };
                Arc::new(SpaceTelemetry {
                    name: space.clone(),
                    space_kv: [KeyValue::new("space", space.as_str().to_string())],
                    signals: self.barrier.signals(space, 0),
                    last_seq: StripedMax::default(),
                    in_flight: StripedLevel::default(),
                    backlog: AtomicU64::new(UNSET_U64),
                    by_type: SnapshotMap::default(),
                    gap_kv: [
                        kv("reason", "expired"),
                        kv("reason", "released"),
                        kv("reason", "superseded"),
                    ],
                    renew_kv: [kv("result", "renewed"), kv("result", "failed")],
                })
            })
            .clone()
    }

    /// Take the store's view of a space (its counters are authoritative across processes).
    pub(crate) fn refresh(&self, info: &SpaceInfo) -> Arc<SpaceTelemetry> {
        let s = self.space(&info.name);
        s.last_seq.offer(info.last_seq);
        s.in_flight.set(i64::from(info.in_flight));
        s.signals.raise_watermark(info.watermark);
        s
    }

    /// The attributes a lease of `projection_type` in `space` records with.
    pub(crate) fn lease(&self, space: &SpaceName, projection_type: &str) -> LeaseTelemetry {
        Self::lease_in(&self.space(space), projection_type)
    }

    /// As [`EngineTelemetry::lease`], for a space handle that holds its space's telemetry
    /// (no lookup by name per grant).
    pub(crate) fn lease_in(space: &Arc<SpaceTelemetry>, projection_type: &str) -> LeaseTelemetry {
        let space = space.clone();
        let known = space.by_type.load().get(projection_type).cloned();
        let counts = known.unwrap_or_else(|| Self::new_type(&space, projection_type));
        LeaseTelemetry { space, counts }
    }

    /// The counts of a projection type the space has not counted yet: its own, or, once
    /// the space counts [`MAX_PROJECTION_TYPES`] apart, the shared [`OTHER_PROJECTION_TYPES`].
    /// The cap bounds the map every grant looks up and the series exported, when an
    /// application puts ids where names belong.
    fn new_type(space: &SpaceTelemetry, projection_type: &str) -> Arc<TypeCounts> {
        let label = if space.by_type.load().len() < MAX_PROJECTION_TYPES {
            projection_type
        } else {
            OTHER_PROJECTION_TYPES
        };
        space.by_type.get_or_insert_with(label, || {
            Arc::new(TypeCounts::new([
                space.space_kv[0].clone(),
                KeyValue::new("projection_type", label.to_string()),
            ]))
        })
    }

    // ---- the lease life cycle (hot path) ----

    // The durations are taken only when an exporter records them: a clock read each.

    pub(crate) fn granted(&self, lease: &LeaseTelemetry, seq: u64, requested_at: Instant) {
        lease.counts.granted.add(1);
        if let Some(i) = &self.instruments {
            let took = requested_at.elapsed().as_secs_f64();
            i.grant_duration.record(took, &lease.space.space_kv);
        }
        lease.space.last_seq.offer(seq);
        lease.space.in_flight.add(1);
    }

    pub(crate) fn committed(
        &self,
        lease: &LeaseTelemetry,
        outcome: &CommitOutcome,
        started: Instant,
    ) {
        if let Some(i) = &self.instruments {
            let took = started.elapsed().as_secs_f64();
            i.commit_duration.record(took, &lease.space.space_kv);
        }
        match outcome.status {
            CommitStatus::AlreadyCommitted => return, // counted by the first commit
            CommitStatus::Duplicate { .. } => self.gap(&lease.space, GapKind::Superseded),
            CommitStatus::Committed => {}
        }
        lease.counts.committed.add(1);
        lease.space.in_flight.add(-1);
    }

    pub(crate) fn released(&self, lease: &LeaseTelemetry, outcome: ReleaseOutcome) {
        lease.counts.released.add(1);
        if outcome == ReleaseOutcome::Gap {
            self.gap(&lease.space, GapKind::Released);
            lease.space.in_flight.add(-1);
        }
    }

    pub(crate) fn renewed(&self, lease: &LeaseTelemetry, ok: bool) {
        if let Some(i) = &self.instruments {
            i.lease_renewals
                .add(1, &lease.space.renew_kv[usize::from(!ok)]);
        }
        bump(
            if ok {
                &self.shared.counts.renewals_ok
            } else {
                &self.shared.counts.renewals_failed
            },
            1,
        );
    }

    /// A command came back with an error: count stale epochs and store failures.
    pub(crate) fn command_failed(&self, error: &Error) {
        match error {
            Error::Lease(LeaseError::StaleEpoch { resource, .. }) => self.epoch_conflict(resource),
            Error::Store(e) => self.store_error(e),
            _ => {}
        }
    }

    pub(crate) fn batch(&self, commands: usize) {
        if let Some(i) = &self.instruments {
            i.batch_size.record(commands as u64, &self.store_kv);
        }
    }

    pub(crate) fn gap(&self, space: &SpaceTelemetry, kind: GapKind) {
        if let Some(i) = &self.instruments {
            i.gaps_created.add(1, &space.gap_kv[kind as usize]);
        }
        bump(&self.shared.counts.gaps, 1);
    }

    // ---- recovery ----

    /// A cleaner claimed an expired slot for the first time, `overrun` after its expiry.
    pub(crate) fn expired(&self, lease: &LeaseTelemetry, overrun: Duration) {
        if let Some(i) = &self.instruments {
            i.lease_expired.add(1, &lease.counts.kv);
            i.lease_overrun
                .record(overrun.as_secs_f64(), &lease.counts.kv);
        }
        bump(&self.shared.counts.expired, 1);
    }

    /// One recovery outcome: `step` recovered (`ok`) or failed on work of `projection_type`
    /// in `space`, labelled as the space's lease counts label the type (capped).
    pub(crate) fn recovery(
        &self,
        step: &'static str,
        ok: bool,
        space: &SpaceName,
        projection_type: &str,
    ) {
        if let Some(i) = &self.instruments {
            let [_, projection_type] = self.lease(space, projection_type).counts.kv.clone();
            let attrs = [
                KeyValue::new("step", step),
                KeyValue::new("outcome", if ok { "success" } else { "failure" }),
                projection_type,
            ];
            i.recovery_outcomes.add(1, &attrs);
        }
        bump(
            if ok {
                &self.shared.counts.recovery_ok
            } else {
                &self.shared.counts.recovery_failed
            },
            1,
        );
    }

    /// A slot of `space` left LEASED through recovery.
    pub(crate) fn slot_resolved(&self, space: &SpaceTelemetry) {
        space.in_flight.add(-1);
    }

    /// A cleanup service was started at `now` (the heartbeat starts counting).
    pub(crate) fn cleanup_started(&self, now: Timestamp) {
        self.shared.cleanup_beat.store(now.0, Ordering::Relaxed);
    }

    /// The cleanup service was stopped on purpose: no heartbeat to watch any more.
    pub(crate) fn cleanup_stopped(&self) {
        self.shared.cleanup_beat.store(UNSET_I64, Ordering::Relaxed);
    }

    /// The store's view at the start of a cleanup cycle.
    pub(crate) fn cleanup_observed(&self, spaces: &[SpaceInfo], backlog: &[(SpaceName, u64)]) {
        for info in spaces {
            self.refresh(info);
        }
        // A map, not a scan of `backlog` per space: a cascade over 20,000 spaces spent
        // half of a 1.4 s cycle comparing names here.
        let by_space: HashMap<&SpaceName, u64, foldhash::fast::RandomState> =
            backlog.iter().map(|(s, n)| (s, *n)).collect();
        for entry in self.shared.spaces.iter() {
            let n = by_space.get(entry.key()).copied().unwrap_or(0);
            entry.backlog.store(n, Ordering::Relaxed);
        }
        let total = backlog.iter().map(|(_, n)| n).sum();
        self.shared.last_backlog.store(total, Ordering::Relaxed);
    }

    /// A cleanup cycle ended at `now`.
    pub(crate) fn cleanup_cycle(
        &self,
        now: Timestamp,
        ok: bool,
        level: Option<crate::cleanup::LoadLevel>,
        recovery_mode: bool,
    ) {
        if let Some(i) = &self.instruments {
            let result = KeyValue::new("result", if ok { "ok" } else { "error" });
            i.cleanup_cycles.add(1, &[result]);
        }
        if let Some(level) = level {
            self.shared.load_level.store(level as u8, Ordering::Relaxed);
        }
        self.shared
            .recovery_mode
            .store(u8::from(recovery_mode), Ordering::Relaxed);
        if ok {
            self.shared.last_cycle.store(now.0, Ordering::Relaxed);
            // Only a started service has a heartbeat; `run_once` by hand does not arm it.
            let beat = &self.shared.cleanup_beat;
            let _ = beat.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b != UNSET_I64).then_some(now.0)
            });
        }
        self.sample(now);
    }

    /// Recovery-queue sizes (each capped by the caller's query limit).
    pub(crate) fn queue_sizes(&self, parked: u64, manual: u64) {
        self.shared.queue_parked.store(parked, Ordering::Relaxed);
        self.shared.queue_manual.store(manual, Ordering::Relaxed);
    }

    // ---- resources and stores ----

    pub(crate) fn acquisition(&self, acquired: bool) {
        if let Some(i) = &self.instruments {
            let result = KeyValue::new("result", if acquired { "acquired" } else { "conflict" });
            i.resource_acquisitions.add(1, &[result]);
        }
        if !acquired {
            bump(&self.shared.counts.conflicts, 1);
        }
    }

    /// A resource-lease renewal: `renewed`, `lost` (refused by the store) or `error`.
    pub(crate) fn resource_renewal(&self, result: &'static str, n: u64) {
        if let Some(i) = &self.instruments {
            i.resource_renewals
                .add(n, &[KeyValue::new("result", result)]);
        }
        bump(
            if result == "renewed" {
                &self.shared.counts.renewals_ok
            } else {
                &self.shared.counts.renewals_failed
            },
            n,
        );
    }

    pub(crate) fn epoch_conflict(&self, resource: &str) {
        if let Some(i) = &self.instruments {
            i.epoch_conflicts
                .add(1, &[KeyValue::new("resource", resource.to_string())]);
        }
    }

    pub(crate) fn store_error(&self, error: &StoreError) {
        if let Some(i) = &self.instruments {
            let kind = match error {
                StoreError::Unavailable { .. } => "unavailable",
                StoreError::Corrupt { .. } => "corrupt",
                StoreError::Schema { .. } => "schema",
                StoreError::Permission { .. } => "permission",
                StoreError::BadUrl { .. } => "bad_url",
                StoreError::BadOption { .. } => "bad_option",
                StoreError::Unsupported { .. } => "unsupported",
                StoreError::Pruned { .. } => "pruned",
                StoreError::Backend { .. } => "backend",
            };
            i.store_errors.add(
                1,
                &[self.store_kv[0].clone(), KeyValue::new("error.type", kind)],
            );
        }
    }

    // ---- alerts ----

    fn observed(&self) -> Observed {
        let spaces = self
            .shared
            .spaces
            .iter()
            .map(|s| {
                let w = s.watermark();
                (s.name.clone(), w, s.last_seq().max(w))
            })
            .collect();
        let beat = self.shared.cleanup_beat.load(Ordering::Relaxed);
        let backlog = self.shared.last_backlog.load(Ordering::Relaxed);
        Observed {
            spaces,
            last_backlog: (backlog != UNSET_U64).then_some(backlog),
            cleanup_heartbeat: (beat != UNSET_I64).then_some(Timestamp(beat)),
        }
    }

    /// Sample the counts at `now` for the alert windows.
    pub(crate) fn sample(&self, now: Timestamp) {
        let observed = self.observed();
        let snapshot = self.shared.snapshot();
        let mut evaluator = self.evaluator.lock();
        evaluator.sample(now, snapshot, &observed);
        evaluator.evaluate(now, &observed);
    }

    /// Sample at `now` and report the active alerts.
    pub(crate) fn health(&self, now: Timestamp) -> HealthReport {
        let observed = self.observed();
        let snapshot = self.shared.snapshot();
        let mut evaluator = self.evaluator.lock();
        evaluator.sample(now, snapshot, &observed);
        let alerts = evaluator.evaluate(now, &observed);
        let last_cycle = self.shared.last_cycle.load(Ordering::Relaxed);
        HealthReport {
            at: now,
            window: evaluator.thresholds.window,
            alerts,
            cleanup_running: observed.cleanup_heartbeat.is_some(),
            last_cleanup_cycle: (last_cycle != UNSET_I64).then_some(Timestamp(last_cycle)),
        }
    }
}

impl Shared {
    /// The engine's totals for the alerts. Grants are summed from the lease counts, which
    /// the hot path keeps anyway, rather than counted a second time.
    fn snapshot(&self) -> Snapshot {
        let granted = self
            .spaces
            .iter()
            .map(|space| {
                let by_type = space.by_type.load();
                by_type.values().map(|c| c.granted.get()).sum::<u64>()
            })
            .sum();
        self.counts.snapshot(granted)
    }
}

impl SpaceTelemetry {
    fn watermark(&self) -> u64 {
        self.signals.watermark()
    }

    fn last_seq(&self) -> u64 {
        self.last_seq.get()
    }
}

/// `seqlease.store.batches`: the store's own counts of its write paths, read when metrics
/// are collected (a store with one path reports none).
fn register_store_batches(
    meter: &opentelemetry::metrics::Meter,
    store: Arc<dyn Store>,
) -> ObservableCounter<u64> {
    let spec = instruments::STORE_BATCHES;
    meter
        .u64_observable_counter(spec.name)
        .with_unit(spec.unit)
        .with_description(spec.description)
        .with_callback(move |observer| {
            for (path, n) in store.write_paths() {
                let attrs = [
                    KeyValue::new("store", store.backend()),
                    KeyValue::new("path", path),
                ];
                observer.observe(n, &attrs);
            }
        })
        .build()
}

/// Reports one gauge value with its attributes.
type Observe<'a> = &'a mut dyn FnMut(u64, &[KeyValue]);
/// Reads a gauge's values from the shared state.
type GaugeFn = Box<dyn Fn(&Shared, Observe<'_>) + Send + Sync>;

/// Register the observable gauges; their callbacks read `shared` when metrics are collected.
fn register_gauges(
    meter: &opentelemetry::metrics::Meter,
    shared: &Arc<Shared>,
) -> Vec<ObservableGauge<u64>> {
    use instruments::*;
    let gauge = |spec: InstrumentSpec, f: GaugeFn| {
        let shared = shared.clone();
        meter
            .u64_observable_gauge(spec.name)
            .with_unit(spec.unit)
            .with_description(spec.description)
            .with_callback(move |observer| f(&shared, &mut |v, attrs| observer.observe(v, attrs)))
            .build()
    };
    vec![
        gauge(
            WATERMARK,
            Box::new(|s, observe| {
                for space in s.spaces.iter() {
                    observe(space.watermark(), &space.space_kv);
                }
            }),
        ),
        gauge(
            WATERMARK_LAG,
            Box::new(|s, observe| {
                for space in s.spaces.iter() {
                    let w = space.watermark();
                    observe(space.last_seq().saturating_sub(w), &space.space_kv);
                }
            }),
        ),
        gauge(
            LEASE_IN_FLIGHT,
            Box::new(|s, observe| {
                for space in s.spaces.iter() {
                    let n = space.in_flight.get().max(0) as u64;
                    observe(n, &space.space_kv);
                }
            }),
        ),
        gauge(
            LEASE_EXPIRED_BACKLOG,
            Box::new(|s, observe| {
                for space in s.spaces.iter() {
                    let n = space.backlog.load(Ordering::Relaxed);
                    if n != UNSET_U64 {
                        observe(n, &space.space_kv);
                    }
                }
            }),
        ),
        gauge(
            RECOVERY_QUEUE_SIZE,
            Box::new(|s, observe| {
                for (state, n) in [("parked", &s.queue_parked), ("manual", &s.queue_manual)] {
                    let n = n.load(Ordering::Relaxed);
                    if n != UNSET_U64 {
                        observe(n, &[KeyValue::new("state", state)]);
                    }
                }
            }),
        ),
        gauge(
            LOAD_LEVEL,
            Box::new(|s, observe| {
                let level = s.load_level.load(Ordering::Relaxed);
                if level != UNSET_U8 {
                    observe(u64::from(level), &[]);
                }
            }),
        ),
        gauge(
            RECOVERY_MODE,
            Box::new(|s, observe| {
                let mode = s.recovery_mode.load(Ordering::Relaxed);
                if mode != UNSET_U8 {
                    observe(u64::from(mode), &[]);
                }
            }),
        ),
    ]
}
