//! The lease life-cycle counters, kept in the engine and read when the exporter collects.
//!
//! `seqlease.lease.granted`, `.committed` and `.released` move on every grant and commit:
//! the hottest measurements the engine makes. Recorded through the SDK's synchronous
//! counters each add hashes and compares its attribute set and takes the aggregation's
//! locks (measured: ~15 % of in-memory throughput with an OTLP reader attached, two of the
//! four measurements per cycle; docs/benchmarks.md). Here each (space, projection type)
//! keeps striped totals (`striped`) next to its cached attributes, and observable counters
//! report them at collection: the same cumulative monotonic sums to the exporter, for one
//! relaxed add on a line of the thread's own on the hot path.

use std::sync::Arc;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Meter, ObservableCounter};

use super::Shared;
use super::instruments::{
    InstrumentKind, InstrumentSpec, LEASE_COMMITTED, LEASE_GRANTED, LEASE_RELEASED,
};
use super::striped::StripedSum;

/// Totals of one projection type in one space, with its `[space, projection_type]`.
pub(crate) struct TypeCounts {
    pub(crate) kv: [KeyValue; 2],
    pub(crate) granted: StripedSum,
    pub(crate) committed: StripedSum,
    pub(crate) released: StripedSum,
}

impl TypeCounts {
    pub(crate) fn new(kv: [KeyValue; 2]) -> Self {
        TypeCounts {
            kv,
            granted: StripedSum::default(),
            committed: StripedSum::default(),
            released: StripedSum::default(),
        }
    }
}

/// Register the three observable counters on `meter`; keep the handles alive.
pub(super) fn register(meter: &Meter, shared: &Arc<Shared>) -> Vec<ObservableCounter<u64>> {
    let counter = |spec: InstrumentSpec, total: fn(&TypeCounts) -> &StripedSum| {
        debug_assert_eq!(spec.kind, InstrumentKind::Counter);
        let shared = shared.clone();
        meter
            .u64_observable_counter(spec.name)
            .with_unit(spec.unit)
            .with_description(spec.description)
            .with_callback(move |observer| {
                for space in shared.spaces.iter() {
                    for counts in space.by_type.load().values() {
                        // A series starts with its first event, as a synchronous counter's does.
                        let n = total(counts).get();
                        if n > 0 {
                            observer.observe(n, &counts.kv);
                        }
                    }
                }
            })
            .build()
    };
    vec![
        counter(LEASE_GRANTED, |c| &c.granted),
        counter(LEASE_COMMITTED, |c| &c.committed),
        counter(LEASE_RELEASED, |c| &c.released),
    ]
}
