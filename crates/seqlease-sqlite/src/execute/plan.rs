//! The contract of `seqlease_core::store`, applied to an in-memory copy of what a batch
//! touches.
//!
//! [`Plan`] starts from the rows loaded inside the write transaction (the spaces, the slots
//! the commands name, the committed operation ids they could clash with) and applies the
//! commands one by one, in order, exactly as the contract says. It runs no SQL: every check
//! is made against the copy, every change is recorded on it, and the caller writes the
//! changes back afterwards with a handful of bulk statements. Because the copy is updated as
//! commands run, later commands of a batch see what earlier ones did (a grant frees no
//! capacity, a commit does; a second commit of the same operation is a duplicate).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use seqlease_core::{
    BatchOutcome, Command, CommitOutcome, CommitStatus, Fence, GapReason, GrantRequest, LeaseError,
    LeaseKey, LeaseRecord, OperationBody, ReleaseOutcome, Reply, SlotEventKind, SlotState,
    SpaceName, Timestamp, Token,
};

/// A space's row, as loaded and as changed by the batch.
#[derive(Debug)]
pub(crate) struct Space {
    pub name: SpaceName,
    pub id: i64,
    pub last_seq: u64,
    pub watermark: u64,
    pub in_flight: u32,
    pub capacity: u32,
    /// Grants allocated seqs or slots left LEASED: write the counters back.
    pub dirty: bool,
    /// A slot left LEASED: recompute the watermark.
    pub freed: bool,
}

/// What a granted slot carries that is only written once, on insert.
#[derive(Debug)]
pub(crate) struct Granted {
    pub projection_type: String,
    pub owner: String,
    pub fence: Option<Fence>,
    pub leased_at: Timestamp,
}

/// How a slot resolved in this batch.
#[derive(Debug)]
pub(crate) enum Resolution {
    /// COMMITTED with this body (id and projection type come from the lease).
    Committed(OperationBody),
    /// A gap.
    Gap {
        reason: GapReason,
        superseded_by: Option<u64>,
        detail: Option<String>,
    },
}

/// A slot as loaded (or granted) and as changed by the batch.
#[derive(Debug)]
pub(crate) struct Slot {
    /// `Some` when the slot was granted in this batch: it is inserted, not updated.
    pub granted: Option<Granted>,
    pub state: SlotState,
    pub token: Token,
    pub operation_id: String,
    /// The fence the lease was granted under, checked at commit (I9).
    pub fence: Option<Fence>,
    pub expires_at: Timestamp,
    pub renewals: u32,
    /// Partial work or a result is recorded (stored or recorded in this batch).
    pub has_work: bool,
    /// `expires_at` / `renewals` changed in this batch.
    pub lease_changed: bool,
    /// Partial work recorded in this batch.
    pub partial: Option<Vec<u8>>,
    /// A result recorded in this batch.
    pub result: Option<OperationBody>,
    /// Set when the slot resolved in this batch.
    pub resolution: Option<Resolution>,
}

/// Identifies a slot in the plan: the index of its space in [`Plan::spaces`] and its seq.
pub(crate) type SlotId = (usize, u64);

/// The batch applied to the in-memory copy.
pub(crate) struct Plan {
    now: Timestamp,
    /// The spaces the batch names that exist.
    pub spaces: Vec<Space>,
    /// The slots the batch names that exist, and the ones it grants, in seq order.
    pub slots: BTreeMap<SlotId, Slot>,
    /// Committed operation ids per space (I6): loaded ones and the ones committed here.
    committed: HashMap<(usize, String), u64>,
    /// Current epochs of the resources the batch's fences name (absent: never held, 0).
    epochs: HashMap<String, u64>,
    /// History events the slot rows cannot show (renewals, hand-overs), in order; the
    /// actor is the slot's owner.
    pub events: Vec<Event>,
    pub outcome: BatchOutcome,
}

/// A recorded history event of this batch, written with the slot's owner as actor.
#[derive(Debug)]
pub(crate) struct Event {
    pub slot: SlotId,
    pub kind: SlotEventKind,
    pub detail: Option<String>,
}

impl Plan {
    /// A plan over `spaces` at store time `now`.
    pub fn new(now: Timestamp, spaces: Vec<Space>, commands: usize) -> Plan {
        let mut outcome = BatchOutcome::default();
        outcome.replies.reserve(commands);
        Plan {
            now,
            spaces,
            slots: BTreeMap::new(),
            committed: HashMap::new(),
            epochs: HashMap::new(),
            events: Vec::new(),
            outcome,
        }
    }

    /// The index of the space called `name`, if it exists.
    pub fn space_index(&self, name: &SpaceName) -> Option<usize> {
        self.spaces.iter().position(|s| &s.name == name)
    }

    /// Add a slot loaded from the database.
    pub fn add_slot(&mut self, id: SlotId, slot: Slot) {
        self.slots.insert(id, slot);
    }

    /// Add an operation id already committed in the database at `seq`.
    pub fn add_committed(&mut self, space: usize, operation_id: String, seq: u64) {
        self.committed.insert((space, operation_id), seq);
    }

    /// Record a resource's current epoch, read in the batch's transaction.
    pub fn set_epoch(&mut self, resource: String, epoch: u64) {
        self.epochs.insert(resource, epoch);
    }

    /// Refuse a write whose fence epoch is no longer the resource's current epoch (I9).
    fn check_fence(&self, fence: &Fence) -> Result<(), LeaseError> {
        let current = self.epochs.get(&fence.resource).copied().unwrap_or(0);
        if current != fence.epoch {
            return Err(LeaseError::StaleEpoch {
                resource: fence.resource.clone(),
                current,
                attempted: fence.epoch,
            });
        }
        Ok(())
    }

    /// Apply one command and record its reply.
    pub fn apply(&mut self, command: Command) {
        let reply = match command {
            Command::Grant(req) => self.grant(req),
            Command::Renew { key, ttl } => self.renew(&key, ttl),
            Command::RecordPartial { key, data } => self.live(&key).map(|slot| {
                slot.partial = Some(data);
                slot.has_work = true;
                Reply::Recorded
            }),
            Command::RecordResult { key, body } => self.live(&key).map(|slot| {
                slot.result = Some(body);
                slot.has_work = true;
                Reply::Recorded
            }),
            Command::Commit { key, body } => self.commit(&key, body),
            Command::Release { key, detail } => self.release(&key, detail),
        };
        self.outcome.replies.push(reply);
    }

    fn grant(&mut self, req: GrantRequest) -> Result<Reply, LeaseError> {
        let Some(index) = self.space_index(&req.space) else {
            return Err(LeaseError::UnknownSpace { space: req.space });
        };
        if let Some(fence) = &req.fence {
            self.check_fence(fence)?;
        }
        let space = &mut self.spaces[index];
        if space.in_flight >= space.capacity {
            return Err(LeaseError::AtCapacity {
                space: req.space,
                capacity: space.capacity,
            });
        }
        space.last_seq += 1;
        space.in_flight += 1;
        space.dirty = true;
        let lease = LeaseRecord {
            space: req.space,
            seq: space.last_seq,
            token: Token::random(),
            operation_id: req.operation_id,
            projection_type: req.projection_type,
            owner: req.owner,
            fence: req.fence,
            leased_at: self.now,
            expires_at: self.now.plus(req.ttl),
            renewals: 0,
        };
        self.slots.insert(
            (index, lease.seq),
            Slot {
                granted: Some(Granted {
                    projection_type: lease.projection_type.clone(),
                    owner: lease.owner.clone(),
                    fence: lease.fence.clone(),
                    leased_at: lease.leased_at,
                }),
                state: SlotState::Leased,
                token: lease.token,
                operation_id: lease.operation_id.clone(),
                fence: lease.fence.clone(),
                expires_at: lease.expires_at,
                renewals: 0,
                has_work: false,
                lease_changed: false,
                partial: None,
                result: None,
                resolution: None,
            },
        );
        Ok(Reply::Granted(Box::new(lease)))
    }

    fn renew(&mut self, key: &LeaseKey, ttl: Duration) -> Result<Reply, LeaseError> {
        let expires_at = self.now.plus(ttl);
        let slot = self.live(key)?;
        slot.expires_at = expires_at;
        slot.renewals = slot.renewals.saturating_add(1);
        slot.lease_changed = true;
        let renewals = slot.renewals;
        self.events.push(Event {
            slot: (self.space_of(key), key.seq),
            kind: SlotEventKind::Renewed,
            detail: Some(format!("until {expires_at}")),
        });
        Ok(Reply::Renewed {
            expires_at,
            renewals,
        })
    }

    fn commit(&mut self, key: &LeaseKey, body: OperationBody) -> Result<Reply, LeaseError> {
        let (id, slot) = self.with_token(key)?;
        if slot.state == SlotState::Committed {
            // The same holder retrying after an ambiguous failure: answer, change nothing.
            let outcome = CommitOutcome {
                seq: key.seq,
                status: CommitStatus::AlreadyCommitted,
            };
            return Ok(Reply::Committed(outcome));
        }
        self.live(key)?;
        if let Some(fence) = &self.slots[&id].fence {
            self.check_fence(fence)?;
        }
        let operation_id = self.slots[&id].operation_id.clone();
        let committed_key = (id.0, operation_id);
        if let Some(&existing) = self.committed.get(&committed_key) {
            // I6: the operation already lives at `existing`; this slot points there.
            self.resolve(
                id,
                SlotState::Gap(GapReason::Superseded),
                Resolution::Gap {
                    reason: GapReason::Superseded,
                    superseded_by: Some(existing),
                    detail: None,
                },
            );
            let status = CommitStatus::Duplicate { slot: key.seq };
            return Ok(Reply::Committed(CommitOutcome {
                seq: existing,
                status,
            }));
        }
        self.committed.insert(committed_key, key.seq);
        self.resolve(id, SlotState::Committed, Resolution::Committed(body));
        Ok(Reply::Committed(CommitOutcome {
            seq: key.seq,
            status: CommitStatus::Committed,
        }))
    }

    fn release(&mut self, key: &LeaseKey, detail: Option<String>) -> Result<Reply, LeaseError> {
        let now = self.now;
        let slot = self.live(key)?;
        if slot.has_work {
            // Recorded work is never dropped (I5): expire the lease now and leave the slot
            // LEASED for the recovery chain.
            slot.expires_at = now;
            slot.lease_changed = true;
            self.events.push(Event {
                slot: (self.space_of(key), key.seq),
                kind: SlotEventKind::HandedToRecovery,
                detail,
            });
            return Ok(Reply::Released(ReleaseOutcome::HandedToRecovery));
        }
        let id = (self.space_of(key), key.seq);
        self.resolve(
            id,
            SlotState::Gap(GapReason::Released),
            Resolution::Gap {
                reason: GapReason::Released,
                superseded_by: None,
                detail,
            },
        );
        Ok(Reply::Released(ReleaseOutcome::Gap))
    }

    /// The slot leaves LEASED: record how, free its capacity.
    fn resolve(&mut self, id: SlotId, state: SlotState, resolution: Resolution) {
        let slot = self
            .slots
            .get_mut(&id)
            .expect("resolve is called for slots that passed the lease checks");
        slot.state = state;
        slot.resolution = Some(resolution);
        // Recorded work is dropped with the lease: the slot's entry is what remains.
        slot.partial = None;
        slot.result = None;
        slot.has_work = false;
        let space = &mut self.spaces[id.0];
        space.in_flight = space.in_flight.saturating_sub(1);
        space.dirty = true;
        space.freed = true;
        self.outcome.note_freed(&space.name);
    }

    /// Index of the key's space; only called after [`Self::with_token`] found the slot.
    fn space_of(&self, key: &LeaseKey) -> usize {
        self.space_index(&key.space)
            .expect("the slot's space was found by the lease checks")
    }

    /// The lease checks up to the token: the space and slot exist, the token matches.
    fn with_token(&mut self, key: &LeaseKey) -> Result<(SlotId, &mut Slot), LeaseError> {
        let Some(index) = self.space_index(&key.space) else {
            return Err(LeaseError::UnknownSpace {
                space: key.space.clone(),
            });
        };
        let id = (index, key.seq);
        let Some(slot) = self.slots.get_mut(&id) else {
            return Err(LeaseError::UnknownSlot {
                space: key.space.clone(),
                seq: key.seq,
            });
        };
        if slot.token != key.token {
            return Err(LeaseError::WrongToken {
                space: key.space.clone(),
                seq: key.seq,
            });
        }
        Ok((id, slot))
    }

    /// All the lease checks, in the contract's order: the slot exists, the token matches,
    /// the slot is LEASED, `expires_at > now`, the fence is current.
    fn live(&mut self, key: &LeaseKey) -> Result<&mut Slot, LeaseError> {
        let now = self.now;
        let (_, slot) = self.with_token(key)?;
        if slot.state != SlotState::Leased {
            return Err(LeaseError::Resolved {
                space: key.space.clone(),
                seq: key.seq,
                state: slot.state,
            });
        }
        if slot.expires_at <= now {
            return Err(LeaseError::Expired {
                space: key.space.clone(),
                seq: key.seq,
                expired_at: slot.expires_at,
                now,
            });
        }
        // The fence (I9) is checked by grant and commit, after these checks, as the
        // in-memory reference store does.
        Ok(slot)
    }

    /// Record each touched space's new watermark in the outcome.
    pub fn set_watermark(&mut self, index: usize, watermark: u64) {
        let space = &mut self.spaces[index];
        // The watermark only moves forward (I7).
        space.watermark = space.watermark.max(watermark);
        let (name, watermark) = (space.name.clone(), space.watermark);
        self.outcome.set_watermark(&name, watermark);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    fn plan() -> Plan {
        let space = Space {
            name: SpaceName::new("s").unwrap(),
            id: 7,
            last_seq: 0,
            watermark: 0,
            in_flight: 0,
            capacity: 2,
            dirty: false,
            freed: false,
        };
        Plan::new(Timestamp(1_000_000), vec![space], 8)
    }

    fn grant(p: &mut Plan, op: &str) -> LeaseKey {
        p.apply(Command::Grant(GrantRequest {
            space: SpaceName::new("s").unwrap(),
            operation_id: op.into(),
            projection_type: "t".into(),
            owner: "w".into(),
            ttl: TTL,
            fence: None,
        }));
        match p.outcome.replies.last() {
            Some(Ok(Reply::Granted(l))) => LeaseKey {
                space: l.space.clone(),
                seq: l.seq,
                token: l.token,
            },
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_batch_sees_its_own_changes_in_order() {
        let mut p = plan();
        let a = grant(&mut p, "op");
        let b = grant(&mut p, "op");
        p.apply(Command::Grant(GrantRequest {
            space: a.space.clone(),
            operation_id: "c".into(),
            projection_type: "t".into(),
            owner: "w".into(),
            ttl: TTL,
            fence: None,
        }));
        assert!(matches!(
            p.outcome.replies[2],
            Err(LeaseError::AtCapacity { capacity: 2, .. })
        ));
        p.apply(Command::Commit {
            key: b.clone(),
            body: OperationBody::default(),
        });
        p.apply(Command::Commit {
            key: a.clone(),
            body: OperationBody::default(),
        });
        p.apply(Command::Commit {
            key: b.clone(),
            body: OperationBody::default(),
        });
        assert_eq!(
            p.outcome.replies[3..],
            [
                Ok(Reply::Committed(CommitOutcome {
                    seq: 2,
                    status: CommitStatus::Committed
                })),
                Ok(Reply::Committed(CommitOutcome {
                    seq: 2,
                    status: CommitStatus::Duplicate { slot: 1 }
                })),
                Ok(Reply::Committed(CommitOutcome {
                    seq: 2,
                    status: CommitStatus::AlreadyCommitted
                })),
            ]
        );
        assert_eq!(p.spaces[0].in_flight, 0);
        assert_eq!(p.outcome.progress[0].freed, 2);
        assert!(matches!(
            p.slots[&(0, 1)].resolution,
            Some(Resolution::Gap {
                reason: GapReason::Superseded,
                superseded_by: Some(2),
                ..
            })
        ));
    }
}
