//! Counters that every grant and commit bumps, on every core, and that only collection
//! reads.
//!
//! One atomic that all the runtime's threads add to is one cache line that moves between
//! the cores on every add. The lease counters are bumped several times per grant→commit
//! cycle, so on the memory bench (8 workers, 2 cores, one space) they cost ~9 % of
//! throughput (docs/benchmarks.md). Here each thread adds to a line of its own (threads
//! take the stripes in turn); a read sums, or takes the maximum of, all the stripes.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// More stripes than the runtime usually has threads; threads beyond share stripes.
const STRIPES: usize = 8;

/// One value on a cache line (and its neighbour, which x86 prefetches in pairs) of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Line<T>(T);

/// The stripe of the calling thread.
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

/// One `u64` per stripe; the calling thread writes its own.
#[derive(Debug, Default)]
struct Stripes([Line<AtomicU64>; STRIPES]);

impl Stripes {
    /// The calling thread's stripe.
    fn mine(&self) -> &AtomicU64 {
        &self.0[stripe()].0
    }

    fn values(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.iter().map(|l| l.0.load(Ordering::Relaxed))
    }

    /// `first` in the first stripe, zero in the others.
    fn reset(&self, first: u64) {
        for (i, l) in self.0.iter().enumerate() {
            l.0.store(if i == 0 { first } else { 0 }, Ordering::Relaxed);
        }
    }
}

/// A sum of `u64` additions.
#[derive(Debug, Default)]
pub(crate) struct StripedSum(Stripes);

impl StripedSum {
    pub(crate) fn add(&self, n: u64) {
        self.0.mine().fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.values().fold(0u64, u64::wrapping_add)
    }
}

/// A signed level moved up and down from many threads, and reset now and then. Kept as a
/// [`StripedSum`] of two's-complement values: wrapping adds of `-1` sum correctly.
#[derive(Debug, Default)]
pub(crate) struct StripedLevel(StripedSum);

impl StripedLevel {
    pub(crate) fn add(&self, n: i64) {
        self.0.add(n as u64);
    }

    /// Set the level to `v`. An add racing the reset lands before or after it, as with
    /// a single atomic's store.
    pub(crate) fn set(&self, v: i64) {
        self.0.0.reset(v as u64);
    }

    pub(crate) fn get(&self) -> i64 {
        self.0.get() as i64
    }
}

/// The highest of the values offered.
#[derive(Debug, Default)]
pub(crate) struct StripedMax(Stripes);

impl StripedMax {
    pub(crate) fn offer(&self, v: u64) {
        self.0.mine().fetch_max(v, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.values().max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn every_thread_is_counted() {
        let (sum, level, max) = (
            Arc::new(StripedSum::default()),
            Arc::new(StripedLevel::default()),
            Arc::new(StripedMax::default()),
        );
        // More threads than stripes, so some share one.
        let threads: Vec<_> = (0..STRIPES as u64 * 2)
            .map(|t| {
                let (sum, level, max) = (sum.clone(), level.clone(), max.clone());
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        sum.add(1);
                        level.add(if i % 2 == 0 { 1 } else { -1 });
                        max.offer(t * 1000 + i);
                    }
                    level.add(1);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(sum.get(), STRIPES as u64 * 2 * 1000);
        assert_eq!(level.get(), STRIPES as i64 * 2);
        assert_eq!(max.get(), (STRIPES as u64 * 2 - 1) * 1000 + 999);
        level.set(5);
        assert_eq!(level.get(), 5);
    }
}
