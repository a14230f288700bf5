//! What a keeper holds, shared between the application's calls and the renewal task.
//!
//! Both sides change the same entries: the application acquires and releases, the renewal
//! task extends deadlines and drops what it failed to renew. A renewal is in flight for a
//! whole store round trip, and meanwhile the resource may have been released and acquired
//! again at a new epoch; so every change the renewal makes names the epoch it renewed and
//! leaves a newer one alone. `src/schedules/keeper.rs` checks this under shuttle.

use std::time::Duration;

use dashmap::DashMap;
use seqlease_core::{ResourceCommand, Store, StoreError};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::LostLease;

#[derive(Clone, Copy, Debug)]
pub(crate) struct Held {
    pub(crate) epoch: u64,
    pub(crate) ttl: Duration,
    /// Past this instant we no longer believe we hold it (request time + TTL − margin).
    pub(crate) local_deadline: Instant,
    /// When the last acquire or renewal was requested; the next renewal is due a third of
    /// the TTL later.
    pub(crate) renewed_at: Instant,
}

impl Held {
    /// Held at `epoch` from a request made at `requested_at`, believed until `margin` before
    /// the store's deadline.
    pub(crate) fn new(epoch: u64, ttl: Duration, requested_at: Instant, margin: Duration) -> Self {
        Held {
            epoch,
            ttl,
            local_deadline: requested_at + ttl - margin,
            renewed_at: requested_at,
        }
    }

    fn due(&self) -> Instant {
        self.renewed_at + self.ttl / 3
    }
}

/// The outcome of renewing everything held in one store call.
#[derive(Debug, Default)]
pub(crate) struct Renewal {
    /// Leases renewed.
    pub(crate) renewed: u64,
    /// Leases lost, now forgotten.
    pub(crate) lost: Vec<LostLease>,
    /// The store call failed (nothing renewed; what passed its local deadline is lost).
    pub(crate) failed: Option<StoreError>,
}

/// The resources a keeper holds, by name.
#[derive(Default)]
pub(crate) struct HeldLeases {
    map: DashMap<String, Held, foldhash::fast::RandomState>,
    /// Wakes the renewal task when something new is held (it may be due sooner).
    acquired: Notify,
    /// A seeded bug the schedule checks must find.
    #[cfg(test)]
    mutation: Option<Mutation>,
}

/// Seeded bugs for the schedule checks (`src/schedules/keeper.rs`); outside tests no field
/// holds one, and the checks for them compile away.
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mutation {
    /// A lost or renewed lease is looked up by name only, not by name and epoch.
    IgnoreEpoch,
    /// The renewal task reads what is held before arming its wake-up, and an acquisition
    /// wakes only a task already waiting.
    LateArm,
}

impl HeldLeases {
    /// Holding nothing, with `mutation` seeded.
    #[cfg(test)]
    pub(crate) fn seeded(mutation: Option<Mutation>) -> Self {
        HeldLeases {
            mutation,
            ..HeldLeases::default()
        }
    }

    #[cfg(test)]
    fn mutated(&self, mutation: Mutation) -> bool {
        self.mutation == Some(mutation)
    }

    #[cfg(not(test))]
    fn mutated(&self, _: Mutation) -> bool {
        false
    }

    /// Hold `resource`; wakes the renewal task.
    pub(crate) fn remember(&self, resource: String, held: Held) {
        self.map.insert(resource, held);
        if self.mutated(Mutation::LateArm) {
            self.acquired.notify_waiters();
        } else {
            self.acquired.notify_one();
        }
    }

    /// The epoch of `resource` if held and believed live at `now`; otherwise `Err` with the
    /// epoch we last held (0 if never).
    pub(crate) fn live_epoch(&self, resource: &str, now: Instant) -> Result<u64, u64> {
        match self.map.get(resource) {
            Some(h) if now < h.local_deadline => Ok(h.epoch),
            held => Err(held.map_or(0, |h| h.epoch)),
        }
    }

    /// (resource, epoch) of everything held, sorted.
    pub(crate) fn list(&self) -> Vec<(String, u64)> {
        let mut held: Vec<_> = self
            .map
            .iter()
            .map(|e| (e.key().clone(), e.epoch))
            .collect();
        held.sort();
        held
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Stop holding `resource` (a release), returning what was held.
    pub(crate) fn take(&self, resource: &str) -> Option<Held> {
        self.map.remove(resource).map(|(_, h)| h)
    }

    pub(crate) fn clear(&self) {
        self.map.clear();
    }

    /// Renew everything held in one `store` call, as `agent`; `margin` is the safety margin
    /// for a TTL. Epoch by epoch: a resource released and acquired again while the call was
    /// in flight keeps its newer epoch whatever the call answered for the older one.
    pub(crate) async fn renew_all(
        &self,
        agent: &str,
        store: &dyn Store,
        margin: impl Fn(Duration) -> Duration,
    ) -> Renewal {
        let held: Vec<(String, Held)> = self
            .map
            .iter()
            .map(|e| (e.key().clone(), *e.value()))
            .collect();
        if held.is_empty() {
            return Renewal::default();
        }
        let requested_at = Instant::now();
        let commands = held
            .iter()
            .map(|(resource, h)| ResourceCommand::Renew {
                resource: resource.clone(),
                agent: agent.into(),
                epoch: h.epoch,
                ttl: h.ttl,
            })
            .collect();
        let replies = match store.resources(commands).await {
            Ok(outcome) => outcome.replies,
            Err(e) => {
                // Unreachable store: whatever passes its local deadline is lost.
                let now = Instant::now();
                let lost = held
                    .into_iter()
                    .filter(|(resource, h)| now >= h.local_deadline && self.forget(resource, h))
                    .map(|(resource, h)| LostLease {
                        resource,
                        epoch: h.epoch,
                        reason: format!("could not renew before the local deadline: {e}"),
                    })
                    .collect();
                return Renewal {
                    renewed: 0,
                    lost,
                    failed: Some(e),
                };
            }
        };
        let mut renewal = Renewal::default();
        for ((resource, h), reply) in held.into_iter().zip(replies) {
            match reply {
                Ok(_) => {
                    renewal.renewed += 1;
                    let renewed = Held::new(h.epoch, h.ttl, requested_at, margin(h.ttl));
                    self.extend(&resource, renewed);
                }
                Err(e) => {
                    if self.forget(&resource, &h) {
                        renewal.lost.push(LostLease {
                            resource,
                            epoch: h.epoch,
                            reason: e.to_string(),
                        });
                    }
                }
            }
        }
        renewal
    }

    /// Extend `resource` to `renewed` if it is still held at that epoch.
    fn extend(&self, resource: &str, renewed: Held) {
        if let Some(mut entry) = self.map.get_mut(resource)
            && (entry.epoch == renewed.epoch || self.mutated(Mutation::IgnoreEpoch))
        {
            *entry = renewed;
        }
    }

    /// Forget `resource` if it is still held at `held`'s epoch; a newer acquisition stays.
    fn forget(&self, resource: &str, held: &Held) -> bool {
        let ignore_epoch = self.mutated(Mutation::IgnoreEpoch);
        self.map
            .remove_if(resource, |_, h| h.epoch == held.epoch || ignore_epoch)
            .is_some()
    }

    /// Wait until the first held lease is due for renewal (`true`), or until something new
    /// is held, which may be due sooner (`false`). `sleep_until(None)`: nothing is held.
    pub(crate) async fn until_due<F: Future<Output = ()>>(
        &self,
        sleep_until: impl FnOnce(Option<Instant>) -> F,
    ) -> bool {
        // The seeded bug reads what is held first, with a gap before it registers.
        let read_early = if self.mutated(Mutation::LateArm) {
            let due = self.next_due();
            tokio::task::yield_now().await;
            Some(due)
        } else {
            None
        };
        // Registered before reading what is held: an acquisition in between still wakes us.
        let mut acquired = std::pin::pin!(self.acquired.notified());
        acquired.as_mut().enable();
        let due = read_early.unwrap_or_else(|| self.next_due());
        tokio::select! {
            biased;
            _ = acquired => false,
            _ = sleep_until(due) => true,
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.map.iter().map(|e| e.due()).min()
    }
}
