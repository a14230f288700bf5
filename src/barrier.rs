//! The barrier: where readers wait for the next slot, and grants wait for capacity.
//!
//! Each space the engine has opened has its watermark and two wake-ups: one for readers
//! (the watermark moved) and one for granters (capacity freed). Every store batch reports
//! how it moved each space forward, and the dispatcher feeds that in here, so in-process waiters wake the moment a slot resolves:
//! nobody polls. Progress made by *other* processes on the same database is picked up by a
//! slow fallback re-read (`external_poll_interval`); stores that can notify across processes
//! make that fallback rare.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};
use std::task::{Context, Poll};

use seqlease_core::{SnapshotMap, SpaceName, SpaceProgress};
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// A [`Notify`] that costs one atomic load to wake while nobody waits.
///
/// Every commit raises a watermark and frees capacity, but most of the time no reader or
/// granter waits on either. `Notify::notify_waiters` takes the notifier's mutex even then,
/// and that mutex's cache line bounced between the cores on every commit (measured: see
/// docs/benchmarks.md). A waiter counts itself in before it arms, so [`Wakeup::wake`] only
/// skips the notify when no waiter can have missed the change: a waker that reads a zero
/// count came before the waiter's increment in the SeqCst order, so the waiter's check
/// sees the change; a waker that reads the count notifies, and if that lands before the
/// waiter's `Notified` exists, the `Notify`'s own lock orders the change before the
/// waiter's check.
#[derive(Debug, Default)]
pub(crate) struct Wakeup {
    notify: Notify,
    waiting: AtomicUsize,
}

impl Wakeup {
    /// A wake-up armed now: a [`Wakeup::wake`] after this call completes it, even if it is
    /// first awaited later. Arm it *before* checking the condition it waits for.
    pub(crate) fn armed(&self) -> Armed<'_> {
        // SeqCst, paired with the fence in `wake`: either the waker sees this count, or
        // the condition check that follows sees the waker's change.
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut notified = Box::pin(self.notify.notified());
        notified.as_mut().enable();
        Armed {
            wakeup: self,
            notified,
        }
    }

    /// Wake every armed waiter. Call it *after* changing the condition they wait for.
    pub(crate) fn wake(&self) {
        fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.notify.notify_waiters();
        }
    }
}

/// An armed [`Wakeup`]: completes at the first wake after it was armed.
pub(crate) struct Armed<'a> {
    wakeup: &'a Wakeup,
    notified: Pin<Box<Notified<'a>>>,
}

impl Future for Armed<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.notified.as_mut().poll(cx)
    }
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        self.wakeup.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the engine shares about one space between handles, readers and waiters.
#[derive(Debug)]
pub(crate) struct SpaceSignals {
    /// The highest watermark seen; only ever moves up (I7).
    watermark: AtomicU64,
    /// Woken when the watermark moves.
    pub(crate) raised: Wakeup,
    /// Woken whenever slots leave LEASED (capacity freed).
    pub(crate) freed: Wakeup,
}

impl SpaceSignals {
    fn new(watermark: u64) -> Self {
        SpaceSignals {
            watermark: AtomicU64::new(watermark),
            raised: Wakeup::default(),
            freed: Wakeup::default(),
        }
    }

    /// The highest watermark this process has seen.
    pub(crate) fn watermark(&self) -> u64 {
        self.watermark.load(Ordering::SeqCst)
    }

    /// Raise the watermark to `w` if it is higher; wakes readers when it moved.
    pub(crate) fn raise_watermark(&self, w: u64) {
        // The plain load first: a batch that did not move the watermark past what another
        // batch already reported writes nothing to the shared line.
        if w > self.watermark.load(Ordering::Relaxed)
            && self.watermark.fetch_max(w, Ordering::SeqCst) < w
        {
            self.raised.wake();
        }
    }

    /// Wait until the watermark reaches `seq`; returns it. Between wake-ups `fallback`
    /// runs (the slow re-read of other processes' progress, and the deadline): its error
    /// ends the wait.
    ///
    /// The wake-up is armed *before* the watermark is read, so a raise that lands between
    /// the read and the wait completes it and is never missed.
    pub(crate) async fn wait_watermark<E, Fut>(
        &self,
        seq: u64,
        mut fallback: impl FnMut() -> Fut,
    ) -> Result<u64, E>
    where
        Fut: Future<Output = Result<(), E>>,
    {
        loop {
            let raised = self.raised.armed();
            let w = self.watermark();
            if w >= seq {
                return Ok(w);
            }
            tokio::select! {
                biased;
                _ = raised => {}
                r = fallback() => r?,
            }
        }
    }
}

/// The signals of every space this engine has opened. Read after every store call that
/// resolved a slot, written only when a space is opened: a snapshot, so a lookup writes no
/// line the cores share (a `DashMap` shard's lock word).
#[derive(Debug, Default)]
pub(crate) struct Spaces {
    by_name: SnapshotMap<SpaceName, Arc<SpaceSignals>>,
}

impl Spaces {
    /// The signals of `space`, created at `watermark` on first use.
    pub(crate) fn signals(&self, space: &SpaceName, watermark: u64) -> Arc<SpaceSignals> {
        let signals = self
            .by_name
            .get_or_insert_with(space, || Arc::new(SpaceSignals::new(watermark)));
        signals.raise_watermark(watermark);
        signals
    }

    /// Feed a store batch's progress to the waiters.
    pub(crate) fn apply_progress(&self, progress: &[SpaceProgress]) {
        if progress.is_empty() {
            return; // most grants resolve nothing
        }
        let by_name = self.by_name.load();
        for p in progress {
            if let Some(signals) = by_name.get(&p.space) {
                signals.raise_watermark(p.watermark);
                if p.freed > 0 {
                    signals.freed.wake();
                }
            }
        }
    }
}
