//! Recovery-mode pacing shared by the spaces one cleanup cycle cleans at once.
//!
//! In recovery mode the service pauses after every `batch_size` slots it claims, counted
//! across spaces, so a cascade does not starve live traffic. A pause holds back every space
//! of the cycle, not only the one whose batch crossed the mark: each waits out the pause
//! before its next claim.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// Slots claimed and pauses taken in one cycle.
#[derive(Debug)]
pub(crate) struct Pacer {
    active: bool,
    every: usize,
    pause: Duration,
    state: Mutex<Paced>,
}

#[derive(Debug, Default)]
struct Paced {
    /// Slots claimed since the last pause (carried over from the previous cycle).
    since_pause: usize,
    /// While a pause lasts: when it ends.
    resume_at: Option<Instant>,
    pauses: u64,
}

impl Pacer {
    /// Pause for `pause` every `every` slots when `active`; `since_pause` slots were
    /// claimed since the last pause.
    pub(crate) fn new(active: bool, every: usize, pause: Duration, since_pause: usize) -> Self {
        Pacer {
            active,
            every: every.max(1),
            pause,
            state: Mutex::new(Paced {
                since_pause,
                ..Paced::default()
            }),
        }
    }

    /// Before a claim: wait out a pause another space's batch may have started.
    pub(crate) async fn wait(&self) {
        let resume_at = self.state.lock().resume_at;
        if let Some(at) = resume_at {
            tokio::time::sleep_until(at).await;
        }
    }

    /// After a batch of `n` claimed slots: start a pause if the count crossed the mark.
    pub(crate) fn claimed(&self, n: usize) {
        let mut state = self.state.lock();
        state.since_pause += n;
        if self.active && state.since_pause >= self.every {
            state.since_pause = 0;
            state.pauses += 1;
            state.resume_at = Some(Instant::now() + self.pause);
        }
    }

    /// Slots claimed since the last pause, and the pauses taken.
    pub(crate) fn finish(self) -> (usize, u64) {
        let state = self.state.into_inner();
        (state.since_pause, state.pauses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_pause_every_so_many_slots_holds_back_every_space() {
        let pacer = Pacer::new(true, 100, Duration::from_millis(10), 40);
        pacer.claimed(50);
        let before = Instant::now();
        pacer.wait().await;
        assert_eq!(Instant::now(), before, "no pause below the mark");
        pacer.claimed(20); // 110 since the last pause
        pacer.wait().await;
        assert_eq!(Instant::now() - before, Duration::from_millis(10));
        pacer.claimed(99);
        assert_eq!(pacer.finish(), (99, 1));
    }

    #[test]
    fn outside_recovery_mode_nothing_pauses() {
        let pacer = Pacer::new(false, 10, Duration::from_secs(1), 0);
        pacer.claimed(25);
        assert_eq!(pacer.finish(), (25, 0));
    }
}
