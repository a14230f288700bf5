//! The barrier: where readers wait for the next slot, and grants wait for capacity.
//!
//! Each space the engine has opened has a watch channel holding its watermark and a notifier
//! for freed capacity. Every store batch reports how it moved each space forward, and the
//! dispatcher feeds that in here, so in-process waiters wake the moment a slot resolves:
//! nobody polls. Progress made by *other* processes on the same database is picked up by a
//! slow fallback re-read (`external_poll_interval`); stores that can notify across processes
//! make that fallback rare.

use std::sync::Arc;

use dashmap::DashMap;
use seqlease_core::{SpaceName, SpaceProgress};
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
