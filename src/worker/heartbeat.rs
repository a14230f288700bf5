//! The heartbeat: one renewal task per worker, renewing every lease the worker holds in one
//! store batch per tick.
//!
//! A handler that runs longer than its lease's TTL would lose the slot to recovery. Instead
//! of one renewal timer per lease (N leases, N store calls per interval), the runtime keeps
//! a [`Registry`] of the leases its handlers hold — the slot and the secret token — and one
//! task renews them all each tick (by default at a third of the TTL) with one batch of
//! `Renew` commands: one store transaction per tick, however many handlers are running.
//!
//! The handler task keeps its [`Lease`](crate::Lease) handle; the heartbeat renews *by
//! token* and writes the new expiry into the registry. Before the handler task uses its
//! handle again (a checkpoint, the commit) it adopts the newest renewal, so the handle's
//! local safe deadline moves only by renewals the store granted, computed from the moment
//! the renewal was *requested* (DESIGN §6: a handle never believes it holds a lease the
//! store may consider expired).
//!
//! A renewal the store refuses (the lease expired, the slot is gone, its fence moved) marks
//! the lease **lost**: the runtime will not commit the handler's result under it, and the
//! cleanup service owns the slot (recovering recorded work). A store that cannot be reached
//! is not a loss: the next tick tries again, and the store still decides any commit.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use seqlease_core::{
    Command, LeaseError, LeaseKey, Reply, SpaceName, StoreError, Timestamp, Token,
};
use tokio::time::Instant;

use crate::engine::Engine;

/// A renewal the store granted, as the lease handle will adopt it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Renewal {
    pub(crate) expires_at: Timestamp,
    pub(crate) renewals: u32,
    /// Request start + TTL − safety margin.
    pub(crate) local_deadline: Instant,
}

/// Where a tracked lease stands, as far as the heartbeat knows.
#[derive(Clone, Debug)]
pub(crate) struct Standing {
    /// The newest renewal, if the heartbeat renewed it.
    pub(crate) renewal: Option<Renewal>,
    /// The store refused a renewal: the lease is no longer this worker's.
    pub(crate) lost: Option<LeaseError>,
}

struct Tracked {
    token: Token,
    standing: Standing,
}

/// The leases a worker's handlers hold right now, by seq (one space per worker).
pub(crate) struct Registry {
    space: SpaceName,
    slots: Mutex<HashMap<u64, Tracked, foldhash::fast::RandomState>>,
}

impl Registry {
    pub(crate) fn new(space: SpaceName) -> Self {
        Registry {
            space,
            slots: Mutex::default(),
        }
    }

    /// Track the leases `(seq, token)`; the returned guards stop tracking when finished or
    /// dropped (a cancelled task never leaves a lease renewed forever).
    pub(crate) fn track_all(
        self: &Arc<Self>,
        leases: impl IntoIterator<Item = (u64, Token)>,
    ) -> Vec<Tracking> {
        let mut slots = self.slots.lock();
        leases
            .into_iter()
            .map(|(seq, token)| {
                slots.insert(
                    seq,
                    Tracked {
                        token,
                        standing: Standing {
                            renewal: None,
                            lost: None,
                        },
                    },
                );
                Tracking {
                    registry: self.clone(),
                    seq,
                    done: false,
                }
            })
            .collect()
    }

    /// The standing of `seq` (`None` when not tracked).
    pub(crate) fn standing(&self, seq: u64) -> Option<Standing> {
        self.slots.lock().get(&seq).map(|t| t.standing.clone())
    }

    /// Leases in flight.
    pub(crate) fn len(&self) -> usize {
        self.slots.lock().len()
    }

    fn snapshot(&self) -> Vec<LeaseKey> {
        self.slots
            .lock()
            .iter()
            .filter(|(_, t)| t.standing.lost.is_none())
            .map(|(seq, t)| LeaseKey {
                space: self.space.clone(),
                seq: *seq,
                token: t.token,
            })
            .collect()
    }
}

/// A lease tracked by the heartbeat; untracked by [`Tracking::finish`] or on drop.
pub(crate) struct Tracking {
    registry: Arc<Registry>,
    seq: u64,
    done: bool,
}

impl Tracking {
    /// The registry this lease is tracked in.
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Stop renewing the lease (before committing or releasing it) and say where it stands.
    pub(crate) fn finish(mut self) -> Standing {
        self.done = true;
        self.registry
            .slots
            .lock()
            .remove(&self.seq)
            .map(|t| t.standing)
            .unwrap_or(Standing {
                renewal: None,
                lost: None,
            })
    }
}

impl Drop for Tracking {
    fn drop(&mut self) {
        if !self.done {
            self.registry.slots.lock().remove(&self.seq);
        }
    }
}

/// Counters of one worker's heartbeat (see [`WorkerStats`](super::WorkerStats)).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct BeatCounters {
    pub(crate) heartbeats: u64,
    pub(crate) renewed: u64,
    pub(crate) lost: u64,
    pub(crate) failed: u64,
}

/// What one heartbeat did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Beat {
    /// Leases renewed.
    pub renewed: usize,
    /// Leases the store refused to renew (now lost).
    pub lost: usize,
}

/// One worker's heartbeat: its registry, the TTL it renews to, and its counters.
pub(crate) struct Heartbeat {
    engine: Engine,
    pub(crate) registry: Arc<Registry>,
    ttl: Duration,
    /// One batch at a time per worker, whether from the timer or `heartbeat_now`.
    one_at_a_time: tokio::sync::Mutex<()>,
    counters: Mutex<BeatCounters>,
    /// Heartbeats that reached the store so far, for those who wait for the next one.
    beats: tokio::sync::watch::Sender<u64>,
}

impl Heartbeat {
    pub(crate) fn new(engine: Engine, space: SpaceName, ttl: Duration) -> Self {
        Heartbeat {
            engine,
            registry: Arc::new(Registry::new(space)),
            ttl,
            one_at_a_time: tokio::sync::Mutex::new(()),
            counters: Mutex::default(),
            beats: tokio::sync::watch::channel(0).0,
        }
    }

    pub(crate) fn counters(&self) -> BeatCounters {
        *self.counters.lock()
    }

    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.beats.subscribe()
    }

    /// Renew every tracked lease in one store batch (split only if the store caps batches
    /// below the number of leases in flight).
    pub(crate) async fn beat(&self) -> Result<Beat, StoreError> {
        let _one = self.one_at_a_time.lock().await;
        let keys = self.registry.snapshot();
        if keys.is_empty() {
            return Ok(Beat::default());
        }
        let max_batch = self.engine.store().batching().max_batch.max(1);
        let margin = self.engine.config().safety_margin(self.ttl);
        let mut beat = Beat::default();
        for chunk in keys.chunks(max_batch) {
            let requested_at = Instant::now();
            let commands = chunk
                .iter()
                .map(|key| Command::Renew {
                    key: key.clone(),
                    ttl: self.ttl,
                })
                .collect();
            let replies = match self.engine.dispatch_many(commands).await {
                Ok(replies) => replies,
                Err(e) => {
                    self.counters.lock().failed += 1;
                    return Err(e);
                }
            };
            let local_deadline = requested_at + self.ttl - margin;
            let mut slots = self.registry.slots.lock();
            for (key, reply) in chunk.iter().zip(replies) {
                // A lease committed or released meanwhile is no longer tracked: its
                // renewal's answer (likely "resolved") means nothing.
                let Some(tracked) = slots.get_mut(&key.seq).filter(|t| t.token == key.token) else {
                    continue;
                };
                match reply {
                    Ok(Reply::Renewed {
                        expires_at,
                        renewals,
                    }) => {
                        tracked.standing.renewal = Some(Renewal {
                            expires_at,
                            renewals,
                            local_deadline,
                        });
                        beat.renewed += 1;
                    }
                    Ok(other) => {
                        tracing::error!(space = %key.space, seq = key.seq, ?other, "store answered a renew with another reply; this is a bug in the store");
                    }
                    Err(e) => {
                        tracing::warn!(space = %key.space, seq = key.seq, error = %e, "heartbeat could not renew a lease: the handler's result will not be committed under it");
                        tracked.standing.lost = Some(e);
                        beat.lost += 1;
                    }
                }
            }
        }
        let heartbeats = {
            let mut counters = self.counters.lock();
            counters.heartbeats += 1;
            counters.renewed += beat.renewed as u64;
            counters.lost += beat.lost as u64;
            counters.heartbeats
        };
        self.beats.send_replace(heartbeats);
        Ok(beat)
    }
}

/// Start the worker's one heartbeat task: a tick every `interval` until the worker is
/// dropped.
pub(crate) fn start(heartbeat: Weak<Heartbeat>, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(heartbeat) = heartbeat.upgrade() else {
                return;
            };
            if let Err(e) = heartbeat.beat().await {
                tracing::warn!(error = %e, "heartbeat failed; retrying next tick (the store still decides every commit)");
            }
        }
    })
}
