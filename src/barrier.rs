//! The barrier: where readers wait for the next slot, and grants wait for capacity.
//!
//! Each space the engine has opened has a watch channel holding its watermark and a notifier
//! for freed capacity. Every store batch reports how it moved each space forward, and the
//! dispatcher feeds that in here, so in-process waiters wake the moment a slot resolves:
//! nobody polls. Progress made by *other* processes on the same database is picked up by a
//! slow fallback re-read (`external_poll_interval`); stores that can notify across processes
//! make that fallback rare.

use std::pin::Pin;
use std::sync::Arc;

use dashmap::DashMap;
use seqlease_core::{SpaceName, SpaceProgress};
use tokio::sync::futures::Notified;
use tokio::sync::{Notify, watch};

/// What the engine shares about one space between handles, readers and waiters.
#[derive(Debug)]
pub(crate) struct SpaceSignals {
    /// The highest watermark seen; only ever moves up (I7).
    pub(crate) watermark: watch::Sender<u64>,
    /// Woken whenever slots leave LEASED (capacity freed).
    pub(crate) freed: Notify,
}

impl SpaceSignals {
    /// Raise the watermark to `w` if it is higher; wakes readers when it moved.
    pub(crate) fn raise_watermark(&self, w: u64) {
        self.watermark.send_if_modified(|current| {
            if w > *current {
                *current = w;
                true
            } else {
                false
            }
        });
    }
}

impl SpaceSignals {
    /// Wait until the watermark reaches `seq`; returns it. Between wake-ups `fallback`
    /// runs (the slow re-read of other processes' progress, and the deadline): its error
    /// ends the wait.
    ///
    /// The receiver is subscribed *before* the watermark is read, so a raise that lands
    /// between the read and the wait marks the receiver changed and is never missed.
    pub(crate) async fn wait_watermark<E, Fut>(
        &self,
        seq: u64,
        mut fallback: impl FnMut() -> Fut,
    ) -> Result<u64, E>
    where
        Fut: Future<Output = Result<(), E>>,
    {
        let mut rx = self.watermark.subscribe();
        loop {
            let w = *rx.borrow_and_update();
            if w >= seq {
                return Ok(w);
            }
            tokio::select! {
                biased;
                // The sender lives in `self`: it cannot be dropped while we wait.
                _ = rx.changed() => {}
                r = fallback() => r?,
            }
        }
    }

    /// A wake-up for freed capacity, armed now: `notify_waiters` after this call wakes it
    /// even if it is first awaited later. Arm it *before* trying to grant, so a slot freed
    /// between the refusal and the wait is not missed.
    pub(crate) fn freed_waiter(&self) -> Pin<Box<Notified<'_>>> {
        let mut freed = Box::pin(self.freed.notified());
        freed.as_mut().enable();
        freed
    }
}

/// The signals of every space this engine has opened.
#[derive(Debug, Default)]
pub(crate) struct Spaces {
    by_name: DashMap<SpaceName, Arc<SpaceSignals>, foldhash::fast::RandomState>,
}

impl Spaces {
    /// The signals of `space`, created at `watermark` on first use.
    pub(crate) fn signals(&self, space: &SpaceName, watermark: u64) -> Arc<SpaceSignals> {
        let signals = self
            .by_name
            .entry(space.clone())
            .or_insert_with(|| {
                Arc::new(SpaceSignals {
                    watermark: watch::Sender::new(watermark),
                    freed: Notify::new(),
                })
            })
            .clone();
        signals.raise_watermark(watermark);
        signals
    }

    /// Feed a store batch's progress to the waiters.
    pub(crate) fn apply_progress(&self, progress: &[SpaceProgress]) {
        for p in progress {
            if let Some(signals) = self.by_name.get(&p.space) {
                signals.raise_watermark(p.watermark);
                if p.freed > 0 {
                    signals.freed.notify_waiters();
                }
            }
        }
    }
}
