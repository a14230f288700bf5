//! The in-memory seqlease store: every space lives in a map behind a mutex.
//!
//! It is the reference implementation of the [`Store`] contract (simple enough to read in
//! one sitting), the store of choice for tests and for single-process applications that do
//! not need durability, and the baseline the other stores are benchmarked against. Time
//! comes from an injectable [`Clock`], so tests drive expiry with a [`ManualClock`].
//!
//! Nothing survives the process: use the SQLite store for durability.
//!
//! [`ManualClock`]: seqlease_core::ManualClock

#![warn(missing_docs)]

mod committed;
mod consumers;
mod history;
mod leased;
mod lock;
mod recovery;
mod resources;
mod slot;
mod space;
mod spare;

use std::sync::Arc;

use async_trait::async_trait;
use seqlease_core::{
    BatchOutcome, BatchingHint, ClaimRequest, Clock, Command, Entry, ExpiredSlot, GrantNow,
    GrantRequest, HistoryQuery, InlineStore, LateCommit, LeaseError, LeaseKey, OneOutcome,
    OperationBody, ParkedAction, ParkedCommand, ParkedQuery, ParkedWork, Reply, Resolve,
    ResourceCommand, ResourceEvent, ResourceLease, ResourceQuery, SlotEvent, SlotEventKind,
    SlotView, SpaceConfig, SpaceInfo, SpaceName, Store, StoreError, SystemClock, Timestamp,
};
use seqlease_core::{ConsumerError, ConsumerState, RetentionEvent, SnapshotMap, validate_consumer};

use crate::lock::Mutex;
use space::{Granting, PreparedGrant, Progress, SpaceState};

/// A store that keeps everything in process memory.
#[derive(Debug)]
pub struct MemoryStore {
    clock: Arc<dyn Clock>,
    /// Read on every command, written only when a space is made: readers take a snapshot
    /// without writing to a line both cores share (an `RwLock`'s reader count).
    spaces: SnapshotMap<SpaceName, Arc<Mutex<SpaceState>>>,
    /// The recovery queue; an item's id is its index + 1.
    parked: Mutex<Vec<ParkedWork>>,
    /// Resource leases and their epochs. Lock order: a space, then this.
    resources: Mutex<resources::Resources>,
    /// The next chunk of slots for whichever space fills its current one.
    spare: spare::SpareChunk,
}

impl MemoryStore {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// An empty store whose expiry decisions use `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        MemoryStore {
            clock,
            spaces: SnapshotMap::default(),
            parked: Mutex::new(Vec::new()),
            resources: Mutex::new(resources::Resources::default()),
            spare: spare::SpareChunk::default(),
        }
    }

    fn space(&self, name: &SpaceName) -> Option<Arc<Mutex<SpaceState>>> {
        self.spaces.load().get(name).cloned()
    }

    /// The space for a consumer call, with the consumer name validated.
    fn consumer_space(
        &self,
        name: &SpaceName,
        consumer: &str,
    ) -> Result<Arc<Mutex<SpaceState>>, ConsumerError> {
        validate_consumer(consumer)?;
        self.space(name).ok_or_else(|| ConsumerError::UnknownSpace {
            space: name.clone(),
        })
    }

    /// Apply one command to `space`, preparing it before the space's lock is taken.
    fn apply(
        &self,
        space: &Mutex<SpaceState>,
        command: Command,
        now: Timestamp,
        outcome: &mut impl Progress,
    ) -> Result<Reply, LeaseError> {
        let command = space::Prepared::new(command, now);
        self.spare.prepare();
        let epoch_of = |r: &str| self.epoch_of(r);
        space
            .lock()
            .apply(command, now, outcome, &epoch_of, &self.spare)
    }

    /// The current epoch of `resource`, for fence checks (I9) under a space's lock.
    fn epoch_of(&self, resource: &str) -> u64 {
        self.resources.lock().epoch(resource)
    }
}

fn unknown_space(name: &SpaceName) -> LeaseError {
    LeaseError::UnknownSpace {
        space: name.clone(),
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

/// Every command is a few map operations under the space's lock: the engine applies them on
/// the caller's thread.
impl InlineStore for MemoryStore {
    fn execute_now(&self, command: Command) -> Result<OneOutcome, StoreError> {
        let now = self.clock.now();
        // Set only by a command that resolves a slot.
        let mut progress = None;
        let reply = match self.spaces.load().get(command.space()) {
            Some(space) => self.apply(space, command, now, &mut progress),
            None => Err(unknown_space(command.space())),
        };
        Ok(OneOutcome { reply, progress })
    }

    fn grant_now(&self, request: GrantRequest) -> Result<GrantNow, StoreError> {
        let now = self.clock.now();
        let spaces = self.spaces.load();
        let Some(space) = spaces.get(&request.space) else {
            let reply = Err(unknown_space(&request.space));
            return Ok(GrantNow::Answered(OneOutcome {
                reply,
                progress: None,
            }));
        };
        let grant = PreparedGrant::new(request, now);
        self.spare.prepare();
        let granting = space
            .lock()
            .grant(grant, &|r| self.epoch_of(r), &self.spare);
        Ok(granted_now(granting))
    }

    /// Both under one hold of the space's lock when the lease and the grant share a space
    /// (the worker loop): one lock transfer between cores per cycle instead of two.
    fn commit_and_grant_now(
        &self,
        key: LeaseKey,
        body: OperationBody,
        request: GrantRequest,
    ) -> Result<(OneOutcome, GrantNow), StoreError> {
        if key.space != request.space {
            return seqlease_core::commit_then_grant_now(self, key, body, request);
        }
        let now = self.clock.now();
        let spaces = self.spaces.load();
        let Some(space) = spaces.get(&request.space) else {
            let unknown = || OneOutcome {
                reply: Err(unknown_space(&request.space)),
                progress: None,
            };
            return Ok((unknown(), GrantNow::Answered(unknown())));
        };
        let commit = space::Prepared::new(Command::Commit { key, body }, now);
        let grant = PreparedGrant::new(request, now);
        self.spare.prepare();
        let epoch_of = |r: &str| self.epoch_of(r);
        let mut progress = None;
        let (reply, granting) = {
            let mut state = space.lock();
            let reply = state.apply(commit, now, &mut progress, &epoch_of, &self.spare);
            (reply, state.grant(grant, &epoch_of, &self.spare))
        };
        Ok((OneOutcome { reply, progress }, granted_now(granting)))
    }
}

/// A grant's answer as [`InlineStore::grant_now`] gives it.
fn granted_now(granting: Granting) -> GrantNow {
    match granting {
        // A grant resolves nothing: no progress to report.
        Granting::Answered(reply) => GrantNow::Answered(OneOutcome {
            reply,
            progress: None,
        }),
        Granting::AtCapacity(grant, refusal) => GrantNow::AtCapacity {
            request: grant.into_request(),
            refusal,
        },
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn batching(&self) -> BatchingHint {
        // A batch saves no I/O here; direct calls are faster than coalescing.
        BatchingHint {
            group_commit: false,
            max_batch: 1024,
            max_in_flight: 1,
        }
    }

    async fn now(&self) -> Result<Timestamp, StoreError> {
        Ok(self.clock.now())
    }

    async fn ensure_space(
        &self,
        name: &SpaceName,
        config: &SpaceConfig,
    ) -> Result<SpaceInfo, StoreError> {
        let space = self.spaces.get_or_insert_with(name, || {
            Arc::new(Mutex::new(SpaceState::new(name.clone(), config)))
        });
        let mut state = space.lock();
        state.capacity = config.capacity;
        Ok(state.info())
    }

    async fn space_info(&self, name: &SpaceName) -> Result<Option<SpaceInfo>, StoreError> {
        Ok(self.space(name).map(|s| s.lock().info()))
    }

    async fn list_spaces(&self) -> Result<Vec<SpaceInfo>, StoreError> {
        let spaces: Vec<_> = self.spaces.load().values().cloned().collect();
        let mut infos: Vec<SpaceInfo> = spaces.iter().map(|s| s.lock().info()).collect();
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(infos)
    }

    async fn execute(&self, commands: Vec<Command>) -> Result<BatchOutcome, StoreError> {
        let now = self.clock.now();
        let mut outcome = BatchOutcome {
            replies: Vec::with_capacity(commands.len()),
            progress: Vec::new(),
        };
        // Commands of one batch usually target one space: look it up once per run of
        // commands. Each command takes the space lock on its own; nothing in memory can fail
        // half-way, so per-command atomicity is all a batch needs here. The map snapshot
        // is held across the batch instead of cloning the space's `Arc` per command (a
        // write to a line every core shares).
        let spaces = self.spaces.load();
        let mut current: Option<(&SpaceName, &Mutex<SpaceState>)> = None;
        for command in commands {
            let name = command.space();
            if current.is_none_or(|(n, _)| n != name) {
                current = spaces.get_key_value(name).map(|(n, s)| (n, &**s));
            }
            let reply = match current {
                Some((_, space)) => self.apply(space, command, now, &mut outcome),
                None => Err(unknown_space(name)),
            };
            outcome.replies.push(reply);
        }
        drop(spaces);
        Ok(outcome)
    }

    async fn execute_one(&self, command: Command) -> Result<OneOutcome, StoreError> {
        self.execute_now(command)
    }

    fn inline(&self) -> Option<&dyn InlineStore> {
        Some(self)
    }

    async fn read(
        &self,
        name: &SpaceName,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let Some(space) = self.space(name) else {
            return Ok(Vec::new());
        };
        let space = space.lock();
        space.check_read(from.max(1))?;
        Ok(space.read(from, limit))
    }

    async fn slot(&self, name: &SpaceName, seq: u64) -> Result<Option<SlotView>, StoreError> {
        Ok(self.space(name).and_then(|s| s.lock().view(seq)))
    }

    async fn expired_backlog(&self) -> Result<Vec<(SpaceName, u64)>, StoreError> {
        let now = self.clock.now();
        let spaces: Vec<_> = self.spaces.load().values().cloned().collect();
        let mut backlog: Vec<(SpaceName, u64)> = spaces
            .iter()
            .map(|s| {
                let s = s.lock();
                (s.name.clone(), s.expired_backlog(now))
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        backlog.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(backlog)
    }

    async fn claim_expired(&self, request: &ClaimRequest) -> Result<Vec<ExpiredSlot>, StoreError> {
        let now = self.clock.now();
        Ok(self
            .space(&request.space)
            .map(|s| s.lock().claim(request, now))
            .unwrap_or_default())
    }

    async fn resolve(&self, items: Vec<Resolve>) -> Result<BatchOutcome, StoreError> {
        let now = self.clock.now();
        let mut outcome = BatchOutcome::default();
        let mut parked = self.parked.lock();
        for item in items {
            let reply = match self.space(&item.claim.space) {
                Some(space) => {
                    let mut space = space.lock();
                    // Held while the slot is resolved: no holder change can slip between
                    // the fence check and the write (I9). Lock order: space, then resources.
                    let resources = self.resources.lock();
                    space.resolve_claimed(
                        item,
                        now,
                        &|r| resources.epoch(r),
                        &mut outcome,
                        &mut |mut work| {
                            work.id = parked.len() as u64 + 1;
                            parked.push(work);
                            parked.len() as u64
                        },
                    )
                }
                None => Err(LeaseError::UnknownSpace {
                    space: item.claim.space.clone(),
                }),
            };
            outcome.replies.push(reply);
        }
        Ok(outcome)
    }

    async fn parked(&self, query: &ParkedQuery) -> Result<Vec<ParkedWork>, StoreError> {
        let parked = self.parked.lock();
        let limit = if query.limit == 0 {
            usize::MAX
        } else {
            query.limit
        };
        Ok(parked
            .iter()
            .filter(|w| query.space.as_ref().is_none_or(|s| &w.space == s))
            .filter(|w| query.states.is_empty() || query.states.contains(&w.state))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn settle_parked(
        &self,
        commands: Vec<ParkedCommand>,
    ) -> Result<BatchOutcome, StoreError> {
        let now = self.clock.now();
        let mut outcome = BatchOutcome::default();
        let mut parked = self.parked.lock();
        for command in commands {
            let reply = (|| {
                let index = usize::try_from(command.id)
                    .ok()
                    .and_then(|i| i.checked_sub(1));
                let item =
                    index
                        .and_then(|i| parked.get_mut(i))
                        .ok_or_else(|| LeaseError::Parked {
                            id: command.id,
                            action: seqlease_core::recovery::action_name(&command.action),
                            reason: "no such item in the recovery queue".into(),
                        })?;
                seqlease_core::recovery::check_parked(item, &command)?;
                if let ParkedAction::Resequence {
                    body,
                    recovery_type,
                } = &command.action
                {
                    let space =
                        self.space(&item.space)
                            .ok_or_else(|| LeaseError::UnknownSpace {
                                space: item.space.clone(),
                            })?;
                    let mut space = space.lock();
                    space.resequence(item, body.clone(), *recovery_type, now, &mut outcome);
                    item.note = Some(format!("re-sequenced by {}", command.actor));
                    let detail = item
                        .resequenced_at_seq
                        .map(|n| format!("parked work re-sequenced at seq {n}"));
                    space.record(
                        item.original_seq,
                        now,
                        SlotEventKind::Recovered,
                        &command.actor,
                        detail,
                    );
                } else {
                    seqlease_core::recovery::apply_parked(item, &command);
                    if matches!(command.action, ParkedAction::Retry | ParkedAction::Discard)
                        && let Some(space) = self.space(&item.space)
                    {
                        let detail = item.note.clone();
                        space.lock().record(
                            item.original_seq,
                            now,
                            SlotEventKind::Manual,
                            &command.actor,
                            detail,
                        );
                    }
                }
                Ok(Reply::Parked(Box::new(item.clone())))
            })();
            outcome.replies.push(reply);
        }
        Ok(outcome)
    }

    async fn commit_late(&self, items: Vec<LateCommit>) -> Result<BatchOutcome, StoreError> {
        let now = self.clock.now();
        let mut outcome = BatchOutcome::default();
        for item in items {
            let reply = match self.space(&item.key.space) {
                Some(space) => {
                    space
                        .lock()
                        .commit_late(item, now, &|r| self.epoch_of(r), &mut outcome)
                }
                None => Err(LeaseError::UnknownSpace {
                    space: item.key.space.clone(),
                }),
            };
            outcome.replies.push(reply);
        }
        Ok(outcome)
    }

    fn checks_fences(&self) -> bool {
        true
    }

    async fn resources(&self, commands: Vec<ResourceCommand>) -> Result<BatchOutcome, StoreError> {
        let now = self.clock.now();
        let mut resources = self.resources.lock();
        let replies = commands
            .into_iter()
            .map(|c| resources.apply(c, now).map(Reply::Resource))
            .collect();
        Ok(BatchOutcome {
            replies,
            progress: Vec::new(),
        })
    }

    async fn resource_leases(
        &self,
        query: &ResourceQuery,
    ) -> Result<Vec<ResourceLease>, StoreError> {
        Ok(self.resources.lock().query(query, self.clock.now()))
    }

    async fn resource_epoch(&self, resource: &str) -> Result<u64, StoreError> {
        Ok(self.epoch_of(resource))
    }

    async fn resource_history(
        &self,
        resource: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ResourceEvent>, StoreError> {
        Ok(self.resources.lock().history(resource, limit))
    }

    async fn slot_history(&self, query: &HistoryQuery) -> Result<Vec<SlotEvent>, StoreError> {
        Ok(self
            .space(&query.space)
            .map(|s| s.lock().history(query))
            .unwrap_or_default())
    }

    async fn prune_slot_history(&self, before: Timestamp) -> Result<u64, StoreError> {
        let spaces: Vec<_> = self.spaces.load().values().cloned().collect();
        Ok(spaces.iter().map(|s| s.lock().prune_history(before)).sum())
    }

    async fn register_consumer(
        &self,
        space: &SpaceName,
        name: &str,
        retain: bool,
    ) -> Result<ConsumerState, ConsumerError> {
        let s = self.consumer_space(space, name)?;
        let now = self.clock.now();
        Ok(s.lock().register_consumer(name, retain, now))
    }

    async fn consumer(
        &self,
        space: &SpaceName,
        name: &str,
    ) -> Result<Option<ConsumerState>, StoreError> {
        Ok(self.space(space).and_then(|s| s.lock().consumer(name)))
    }

    async fn save_checkpoint(
        &self,
        space: &SpaceName,
        name: &str,
        expected: u64,
        seq: u64,
    ) -> Result<ConsumerState, ConsumerError> {
        let s = self.consumer_space(space, name)?;
        let now = self.clock.now();
        s.lock().save_checkpoint(name, expected, seq, now)
    }

    async fn reset_consumer(
        &self,
        space: &SpaceName,
        name: &str,
        to: u64,
        actor: &str,
    ) -> Result<ConsumerState, ConsumerError> {
        seqlease_core::validate_id("actor", actor)?;
        let s = self.consumer_space(space, name)?;
        let now = self.clock.now();
        s.lock().reset_consumer(name, to, actor, now)
    }

    async fn remove_consumer(
        &self,
        space: &SpaceName,
        name: &str,
        actor: &str,
    ) -> Result<ConsumerState, ConsumerError> {
        seqlease_core::validate_id("actor", actor)?;
        let s = self.consumer_space(space, name)?;
        let now = self.clock.now();
        s.lock().remove_consumer(name, actor, now)
    }

    async fn list_consumers(
        &self,
        space: Option<&SpaceName>,
    ) -> Result<Vec<ConsumerState>, StoreError> {
        let mut spaces: Vec<_> = match space {
            Some(name) => self.space(name).into_iter().collect(),
            None => self.spaces.load().values().cloned().collect(),
        };
        spaces.sort_by(|a, b| a.lock().name.cmp(&b.lock().name));
        Ok(spaces
            .iter()
            .flat_map(|s| s.lock().list_consumers())
            .collect())
    }

    async fn prune_entries(
        &self,
        space: &SpaceName,
        below: u64,
        actor: &str,
    ) -> Result<RetentionEvent, ConsumerError> {
        seqlease_core::validate_id("actor", actor)?;
        let s = self
            .space(space)
            .ok_or_else(|| ConsumerError::UnknownSpace {
                space: space.clone(),
            })?;
        let now = self.clock.now();
        s.lock().prune(below, actor, now)
    }

    async fn retention_history(
        &self,
        space: &SpaceName,
    ) -> Result<Vec<RetentionEvent>, StoreError> {
        Ok(self
            .space(space)
            .map(|s| s.lock().retention.clone())
            .unwrap_or_default())
    }
}
