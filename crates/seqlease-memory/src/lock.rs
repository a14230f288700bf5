//! The lock around a space's state (and the store's other shared tables).
//!
//! `std::sync::Mutex`, not `parking_lot`'s: under contention between two cores
//! parking_lot's spin loop falls back to `sched_yield` before it parks, and on a busy
//! space those system calls and the rescheduling they cause were a fifth of the CPU of
//! `seqlease bench --db memory` (perf, 8 workers on 2 threads). The standard mutex spins
//! briefly, then waits on a futex. A panic under the lock leaves the state as it was
//! written (every command checks before it changes anything), so poisoning is ignored.

use std::sync::{MutexGuard, PoisonError};

#[derive(Debug, Default)]
pub(crate) struct Mutex<T>(std::sync::Mutex<T>);

impl<T> Mutex<T> {
    pub(crate) const fn new(value: T) -> Self {
        Mutex(std::sync::Mutex::new(value))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lock if no one holds it now.
    pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        match self.0.try_lock() {
            Ok(guard) => Some(guard),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }
}
