//! Reading the ordered log.
//!
//! A [`LogReader`] yields every resolved slot of a space in seq order — committed operations
//! and gaps alike, each with its seq and metadata — starting at any seq. It never sees a slot
//! above the watermark (I7), so what it yields is final and the same on every read. When it
//! has caught up it waits at the barrier and wakes as soon as the watermark moves.

use std::collections::VecDeque;
use std::time::Duration;

use futures::Stream;
use seqlease_core::Entry;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::space::Space;

/// Follows a space's log from a starting seq. See the module docs.
#[derive(Debug)]
pub struct LogReader {
    space: Space,
    next: u64,
    buffer: VecDeque<Entry>,
}

impl LogReader {
    pub(crate) fn new(space: Space, from: u64) -> Self {
        LogReader {
            space,
            next: from.max(1),
            buffer: VecDeque::new(),
        }
    }

    /// The seq the next entry will have.
    pub fn position(&self) -> u64 {
        self.buffer.front().map_or(self.next, |e| e.seq)
    }

    /// The next entry, waiting at the barrier for as long as it takes.
    pub async fn next(&mut self) -> Result<Entry> {
        loop {
            if let Some(entry) = self.buffer.pop_front() {
                return Ok(entry);
            }
            match self.fill(Duration::from_secs(3600)).await {
                // Nothing resolved for an hour: keep waiting, a reader has no deadline.
                Err(Error::Timeout { .. }) => continue,
                other => other?,
            }
        }
    }

    /// The next entry, or `Ok(None)` if none resolves within `timeout`.
    pub async fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Entry>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(entry) = self.buffer.pop_front() {
                return Ok(Some(entry));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.fill(left).await {
                Ok(()) => {}
                Err(Error::Timeout { .. }) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// Entries already resolved from the current position, without waiting (at most one page).
    pub async fn try_next_page(&mut self) -> Result<Vec<Entry>> {
        if self.buffer.is_empty() {
            self.load().await?;
        }
        Ok(self.buffer.drain(..).collect())
    }

    async fn fill(&mut self, timeout: Duration) -> Result<()> {
        if self.space.watermark() < self.next {
            self.space.wait_for(self.next, timeout).await?;
        }
        self.load().await
    }

    async fn load(&mut self) -> Result<()> {
        // The in-memory store reads without yielding; see `Engine::dispatch`.
        tokio::task::consume_budget().await;
        let page = self.space.engine().config().read_page;
        let entries = self
            .space
            .engine()
            .store()
            .read(self.space.name(), self.next, page)
            .await?;
        if let Some(last) = entries.last() {
            self.next = last.seq + 1;
        }
        self.buffer.extend(entries);
        Ok(())
    }

    /// The log as an endless stream (ends only on error).
    pub fn into_stream(self) -> impl Stream<Item = Result<Entry>> {
        futures::stream::unfold(Some(self), |reader| async move {
            let mut reader = reader?;
            match reader.next().await {
                Ok(entry) => Some((Ok(entry), Some(reader))),
                Err(e) => Some((Err(e), None)),
            }
        })
    }
}
