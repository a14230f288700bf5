//! The barrier's wake-ups.
//!
//! Readers wait for the watermark and grants wait for freed capacity without polling: a
//! store batch's progress raises the watermark and notifies capacity waiters
//! ([`Spaces::apply_progress`]). The danger in such code is a *lost wake-up*: a waiter that
//! checks, misses a raise that lands before it starts waiting, and then sleeps until its
//! timeout. These tests run the real [`SpaceSignals::wait_watermark`], the
//! [`Wakeup`](crate::barrier::Wakeup)s and [`Spaces::apply_progress`] as shuttle tasks under many
//! random schedules; shuttle fails a schedule in which every task is blocked (a lost
//! wake-up), so each test would catch one. The seeded variants show it does: the same
//! protocol with the wait registered *after* the check deadlocks in some schedule.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use seqlease_core::{SpaceName, SpaceProgress};
use shuttle::future::{block_on, spawn, yield_now};

use super::{SCHEDULES, name, no_fallback};
use crate::barrier::{SpaceSignals, Spaces};

fn progress(space: &SpaceName, watermark: u64, freed: u32) -> Vec<SpaceProgress> {
    vec![SpaceProgress {
        space: space.clone(),
        watermark,
        freed,
    }]
}

/// Batches finishing out of order raise the watermark concurrently with readers waiting for
/// each seq: every reader wakes, and the watermark ends at the highest raise (never lower).
fn watermark_scenario(wait: fn(Arc<SpaceSignals>, u64) -> shuttle::future::JoinHandle<u64>) {
    block_on(async move {
        let spaces = Arc::new(Spaces::default());
        let space = name();
        let signals = spaces.signals(&space, 0);
        let readers: Vec<_> = (1..=3)
            .map(|seq| (seq, wait(signals.clone(), seq)))
            .collect();
        let batches: Vec<_> = [2, 3, 1]
            .into_iter()
            .map(|w| {
                let (spaces, p) = (spaces.clone(), progress(&space, w, 1));
                spawn(async move { spaces.apply_progress(&p) })
            })
            .collect();
        for b in batches {
            b.await.expect("batch task");
        }
        for (seq, r) in readers {
            let w = r.await.expect("reader task");
            assert!(w >= seq, "reader for {seq} woke at watermark {w}");
        }
        assert_eq!(signals.watermark(), 3, "I7: the watermark never goes back");
    });
}

#[test]
fn shuttle_watermark_readers_never_miss_a_raise() {
    shuttle::check_random(
        || {
            watermark_scenario(|signals, seq| {
                spawn(async move {
                    signals
                        .wait_watermark(seq, no_fallback)
                        .await
                        .expect("no fallback error")
                })
            })
        },
        SCHEDULES,
    );
}

/// The seeded bug: read the watermark, then arm the wake-up and wait (the order reversed).
/// A raise in between lands before the arming, and the reader sleeps forever.
#[test]
fn shuttle_finds_the_seeded_watermark_lost_wakeup() {
    let found = std::panic::catch_unwind(|| {
        shuttle::check_random(
            || {
                watermark_scenario(|signals, seq| {
                    spawn(async move {
                        loop {
                            let w = signals.watermark();
                            if w >= seq {
                                return w;
                            }
                            yield_now().await; // the gap between the check and the wait
                            signals.raised.armed().await;
                        }
                    })
                })
            },
            SCHEDULES,
        )
    });
    assert!(found.is_err(), "shuttle should find the lost wake-up");
}

/// A space of capacity 1 with its slot taken: a granter waits for capacity while the
/// holder commits and the batch frees the slot. `arm_first` is the real order of
/// `Space::grant` (try; then arm, try again, wait); `false` seeds the bug (try, then arm
/// and wait without trying again).
fn capacity_scenario(arm_first: bool) {
    block_on(async move {
        let spaces = Arc::new(Spaces::default());
        let space = name();
        let signals = spaces.signals(&space, 0);
        let in_flight = Arc::new(AtomicU32::new(1));
        let try_grant = |n: &AtomicU32| {
            n.compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        };
        let granter = {
            let (signals, in_flight) = (signals.clone(), in_flight.clone());
            spawn(async move {
                if try_grant(&in_flight) {
                    return;
                }
                yield_now().await; // the store round trip that answered AtCapacity
                loop {
                    let freed = signals.freed.armed();
                    if arm_first {
                        if try_grant(&in_flight) {
                            return;
                        }
                        yield_now().await; // the second round trip
                    }
                    freed.await;
                    if !arm_first && try_grant(&in_flight) {
                        return;
                    }
                }
            })
        };
        let holder = {
            let (spaces, in_flight) = (spaces.clone(), in_flight.clone());
            let p = progress(&space, 1, 1);
            spawn(async move {
                yield_now().await;
                in_flight.fetch_sub(1, Ordering::SeqCst); // the commit's batch frees the slot
                spaces.apply_progress(&p);
            })
        };
        holder.await.expect("holder task");
        granter.await.expect("granter task");
        assert_eq!(
            in_flight.load(Ordering::SeqCst),
            1,
            "the granter got the slot"
        );
    });
}

#[test]
fn shuttle_capacity_waiters_never_miss_a_freed_slot() {
    shuttle::check_random(|| capacity_scenario(true), SCHEDULES);
}

#[test]
fn shuttle_finds_the_seeded_capacity_lost_wakeup() {
    let found =
        std::panic::catch_unwind(|| shuttle::check_random(|| capacity_scenario(false), SCHEDULES));
    assert!(found.is_err(), "shuttle should find the lost wake-up");
}
