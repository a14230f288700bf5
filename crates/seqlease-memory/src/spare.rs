//! The next chunk of a space's log, allocated and touched outside the space's lock.
//!
//! Appending a slot into a new chunk makes the kernel zero the chunk's fresh pages (here
//! ~2 ns per byte: a quarter of a single-threaded bench profile), and it did so with the
//! space's lock held, while every other worker of the space waited. A grant that takes the
//! last place of a chunk now asks for a spare; the next command prepares it before it takes
//! the lock, and the grant that starts the next chunk takes it ready. Losing a race only
//! means a chunk is allocated under the lock, as before.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::lock::Mutex;

use crate::slot::Slot;

/// Slots per chunk of a space's log.
pub(crate) const CHUNK: usize = 4096;

/// One spare chunk for the whole store (whichever space fills a chunk next takes it).
#[derive(Debug, Default)]
pub(crate) struct SpareChunk {
    wanted: AtomicBool,
    chunk: Mutex<Option<Vec<Slot>>>,
}

impl SpareChunk {
    /// Before a space's lock: prepare a chunk if one was asked for and none is ready.
    pub(crate) fn prepare(&self) {
        if !self.wanted.load(Ordering::Relaxed) {
            return;
        }
        // Another thread preparing it is as good.
        let Some(mut spare) = self.chunk.try_lock() else {
            return;
        };
        if spare.is_none() {
            *spare = Some(touched_chunk());
        }
        self.wanted.store(false, Ordering::Relaxed);
    }

    /// Under a space's lock: the prepared chunk, if there is one; asks for the next.
    pub(crate) fn take(&self) -> Option<Vec<Slot>> {
        self.wanted.store(true, Ordering::Relaxed);
        self.chunk.try_lock()?.take()
    }
}

/// An empty chunk whose pages the kernel has already handed over.
pub(crate) fn touched_chunk() -> Vec<Slot> {
    let mut chunk: Vec<Slot> = Vec::with_capacity(CHUNK);
    let per_page = (4096 / std::mem::size_of::<Slot>()).max(1);
    for place in chunk.spare_capacity_mut().iter_mut().step_by(per_page) {
        *place = MaybeUninit::zeroed();
    }
    // The writes must happen although nothing reads them.
    std::hint::black_box(&mut chunk);
    chunk
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_is_prepared_only_when_asked_for() {
        let spare = SpareChunk::default();
        spare.prepare();
        assert!(spare.take().is_none(), "nothing was asked for yet");
        spare.prepare();
        let chunk = spare.take().expect("prepared after the ask");
        assert!(chunk.is_empty() && chunk.capacity() >= CHUNK);
        assert!(spare.take().is_none(), "one chunk per ask");
    }
}
