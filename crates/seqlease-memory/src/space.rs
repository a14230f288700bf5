//! One space of the in-memory store: its slots and the rules of the slot life cycle.

use std::time::Duration;

use crate::committed::CommittedIndex;
use crate::leased::LeasedSeqs;
use crate::slot::{Content, Labels, Slot, SlotLease};
use crate::spare::{CHUNK, SpareChunk};

use seqlease_core::{
    BatchOutcome, Command, CommitOutcome, CommitStatus, Entry, Fence, GapReason, GrantRequest,
    LeaseError, LeaseKey, LeaseRecord, OperationBody, ReleaseOutcome, Reply, SlotEventKind,
    SlotState, SlotView, SpaceConfig, SpaceInfo, SpaceName, SpaceProgress, Timestamp, Token,
};

/// Room for slots a space's first chunk starts with.
const FIRST_CHUNK: usize = 16;

#[derive(Debug)]
pub(crate) struct SpaceState {
    pub(crate) name: SpaceName,
    pub(crate) capacity: u32,
    pub(crate) watermark: u64,
    /// The LEASED seqs, ascending (their count is the in-flight count).
    pub(crate) leased: LeasedSeqs,
    /// Every slot, seqs contiguous from 1.
    pub(crate) slots: Slots,
    /// operation id → seq of its committed entry (I6).
    pub(crate) committed: CommittedIndex,
    /// The owners, projection types and kinds the slots share.
    pub(crate) labels: Labels,
    /// Recorded history events per seq (the derivable ones are not stored).
    pub(crate) events: std::collections::BTreeMap<u64, Vec<seqlease_core::SlotEvent>>,
    /// Consumers by name: checkpoint, retain flag, last change.
    pub(crate) consumers: std::collections::BTreeMap<String, crate::consumers::ConsumerRow>,
    /// Audited prunes, resets and removals, oldest first.
    pub(crate) retention: Vec<seqlease_core::RetentionEvent>,
}

impl SpaceState {
    pub(crate) fn new(name: SpaceName, config: &SpaceConfig) -> Self {
        SpaceState {
            name,
            capacity: config.capacity,
            watermark: 0,
            leased: LeasedSeqs::default(),
            events: Default::default(),
            slots: Slots::default(),
            committed: CommittedIndex::default(),
            labels: Labels::default(),
            consumers: Default::default(),
            retention: Vec::new(),
        }
    }

    pub(crate) fn info(&self) -> SpaceInfo {
        SpaceInfo {
            name: self.name.clone(),
            last_seq: self.slots.len(),
            watermark: self.watermark,
            in_flight: self.leased.len() as u32,
            capacity: self.capacity,
        }
    }

    /// Apply one command. `epoch_of` reads a resource's current epoch, for fences (I9);
    /// a grant that starts a new chunk of the log takes it from `spare`.
    pub(crate) fn apply(
        &mut self,
        command: Prepared,
        now: Timestamp,
        outcome: &mut impl Progress,
        epoch_of: &dyn Fn(&str) -> u64,
        spare: &SpareChunk,
    ) -> Result<Reply, LeaseError> {
        let command = match command {
            Prepared::Grant(grant) => return self.grant(grant, epoch_of, spare).into_reply(),
            Prepared::Other(command) => command,
        };
        match command {
            // `Prepared::new` never leaves a grant here; if one arrives anyway it takes the
            // same path, fence check included.
            Command::Grant(req) => self
                .grant(PreparedGrant::new(req, now), epoch_of, spare)
                .into_reply(),
            Command::Renew { key, ttl } => self.renew(&key, ttl, now),
            Command::RecordPartial { key, data } => {
                self.live_slot(&key, now)?.work_mut().partial = Some(data);
                Ok(Reply::Recorded)
            }
            Command::RecordResult { key, body } => {
                self.live_slot(&key, now)?.work_mut().result = Some(body);
                Ok(Reply::Recorded)
            }
            Command::Commit { key, body } => self.commit(&key, body, now, outcome, epoch_of),
            Command::Release { key, detail } => self.release(&key, detail, now, outcome),
        }
    }

    /// Grant the next slot; at capacity the grant comes back with the refusal.
    pub(crate) fn grant(
        &mut self,
        grant: PreparedGrant,
        epoch_of: &dyn Fn(&str) -> u64,
        spare: &SpareChunk,
    ) -> Granting {
        if let Some(fence) = &grant.reply.fence
            && let Err(stale) = check_fence(fence, epoch_of)
        {
            return Granting::Answered(Err(stale));
        }
        if self.leased.len() as u32 >= self.capacity {
            let refusal = LeaseError::AtCapacity {
                space: self.name.clone(),
                capacity: self.capacity,
            };
            return Granting::AtCapacity(grant, refusal);
        }
        let PreparedGrant {
            mut reply,
            operation_id,
            ..
        } = grant;
        let seq = self.slots.len() + 1;
        reply.seq = seq;
        let lease = SlotLease::new(&reply, operation_id, &mut self.labels);
        if self.slots.wants_full_chunk()
            && let Some(chunk) = spare.take()
        {
            self.slots.add_chunk(chunk);
        }
        self.slots.push(Slot::leased(lease));
        self.leased.push_newest(seq);
        Granting::Answered(Ok(Reply::Granted(reply)))
    }

    fn renew(
        &mut self,
        key: &LeaseKey,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Reply, LeaseError> {
        let slot = self.live_slot(key, now)?;
        slot.lease.expires_at = now.plus(ttl);
        slot.lease.renewals += 1;
        let (expires_at, renewals) = (slot.lease.expires_at, slot.lease.renewals);
        let owner = slot.lease.owner;
        self.record_owner(
            key.seq,
            now,
            SlotEventKind::Renewed,
            owner,
            Some(format!("until {expires_at}")),
        );
        Ok(Reply::Renewed {
            expires_at,
            renewals,
        })
    }

    fn commit(
        &mut self,
        key: &LeaseKey,
        body: OperationBody,
        now: Timestamp,
        outcome: &mut impl Progress,
        epoch_of: &dyn Fn(&str) -> u64,
    ) -> Result<Reply, LeaseError> {
        let slot = self.slot_with_token(key)?;
        if slot.state() == SlotState::Committed {
            // The same holder retrying after an ambiguous failure: answer, change nothing.
            let status = CommitStatus::AlreadyCommitted;
            return Ok(Reply::Committed(CommitOutcome {
                seq: key.seq,
                status,
            }));
        }
        if let Some(fence) = &self.live_slot(key, now)?.lease.fence {
            check_fence(fence, epoch_of)?;
        }
        let seq = key.seq;
        let operation_id = &self
            .slots
            .get(seq)
            .expect("checked above")
            .lease
            .operation_id;
        if let Some(existing) = self.committed.get(operation_id, &self.slots) {
            let gap = Content::gap(GapReason::Superseded, Some(existing), None);
            self.close_slot(seq, gap, now, outcome);
            let status = CommitStatus::Duplicate { slot: seq };
            return Ok(Reply::Committed(CommitOutcome {
                seq: existing,
                status,
            }));
        }
        self.committed.insert(operation_id, seq);
        let content = Content::committed(body, &mut self.labels);
        self.close_slot(seq, content, now, outcome);
        Ok(Reply::Committed(CommitOutcome {
            seq,
            status: CommitStatus::Committed,
        }))
    }

    fn release(
        &mut self,
        key: &LeaseKey,
        detail: Option<String>,
        now: Timestamp,
        outcome: &mut impl Progress,
    ) -> Result<Reply, LeaseError> {
        let slot = self.live_slot(key, now)?;
        if slot.has_recorded_work() {
            // Recorded work is never dropped (I5): expire now, recovery takes it from here.
            slot.lease.expires_at = now;
            let owner = slot.lease.owner;
            self.record_owner(key.seq, now, SlotEventKind::HandedToRecovery, owner, detail);
            return Ok(Reply::Released(ReleaseOutcome::HandedToRecovery));
        }
        let gap = Content::gap(GapReason::Released, None, detail);
        self.close_slot(key.seq, gap, now, outcome);
        Ok(Reply::Released(ReleaseOutcome::Gap))
    }

    pub(crate) fn close_slot(
        &mut self,
        seq: u64,
        content: Content,
        now: Timestamp,
        outcome: &mut impl Progress,
    ) {
        self.slots
            .get_mut(seq)
            .expect("resolve is called on a granted slot")
            .resolve(now, content);
        self.leased.remove(seq);
        while self
            .slots
            .get(self.watermark + 1)
            .is_some_and(Slot::is_resolved)
        {
            self.watermark += 1;
        }
        outcome.freed_at(&self.name, self.watermark);
    }

    /// The slot if it exists and the token matches.
    pub(crate) fn slot_with_token(&mut self, key: &LeaseKey) -> Result<&mut Slot, LeaseError> {
        token_checked(&self.name, &mut self.slots, key)
    }

    /// The slot if the key holds a live lease on it (the lease checks of the contract).
    fn live_slot(&mut self, key: &LeaseKey, now: Timestamp) -> Result<&mut Slot, LeaseError> {
        // Borrowed apart from the slots, the name is cloned only for a refusal: a clone
        // bumps the name's shared count.
        let name = &self.name;
        let slot = token_checked(name, &mut self.slots, key)?;
        if slot.state() != SlotState::Leased {
            return Err(LeaseError::Resolved {
                space: name.clone(),
                seq: key.seq,
                state: slot.state(),
            });
        }
        if slot.lease.expires_at <= now {
            let expired_at = slot.lease.expires_at;
            return Err(LeaseError::Expired {
                space: name.clone(),
                seq: key.seq,
                expired_at,
                now,
            });
        }
        Ok(slot)
    }

    pub(crate) fn read(&self, from: u64, limit: usize) -> Vec<Entry> {
        let from = from.max(1);
        (from..=self.watermark)
            .take(limit)
            .map(|seq| {
                let slot = self.slots.get(seq).expect("seq <= watermark <= last seq");
                let (resolved_at, content) = slot
                    .entry_content(&self.labels)
                    .expect("every slot at or below the watermark is resolved");
                Entry {
                    space: self.name.clone(),
                    seq,
                    lease_operation_id: slot.lease.operation_id.to_string(),
                    owner: self.labels.text(slot.lease.owner).to_owned(),
                    resolved_at,
                    content,
                }
            })
            .collect()
    }

    pub(crate) fn view(&self, seq: u64) -> Option<SlotView> {
        let slot = self.slots.get(seq)?;
        let mut lease = slot.lease.record(&self.name, seq, &self.labels);
        lease.token = Token([0; 16]);
        Some(SlotView {
            lease,
            state: slot.state(),
            partial: slot.partial().cloned(),
            result: slot.result().cloned(),
        })
    }
}

/// Where resolving a slot notes the space's progress: a batch's outcome, or the one
/// command of `InlineStore::execute_now`, whose progress needs no vector.
pub(crate) trait Progress {
    /// A slot of `space` left LEASED; the space's watermark is now `watermark`.
    fn freed_at(&mut self, space: &SpaceName, watermark: u64);
}

impl Progress for BatchOutcome {
    fn freed_at(&mut self, space: &SpaceName, watermark: u64) {
        self.note_freed_at(space, watermark);
    }
}

impl Progress for Option<SpaceProgress> {
    fn freed_at(&mut self, space: &SpaceName, watermark: u64) {
        let progress = self.get_or_insert_with(|| SpaceProgress {
            space: space.clone(),
            watermark,
            freed: 0,
        });
        progress.freed += 1;
        progress.watermark = progress.watermark.max(watermark);
    }
}

/// A command made ready for [`SpaceState::apply`] before the space's lock is taken.
pub(crate) enum Prepared {
    /// A grant with its records already built.
    Grant(PreparedGrant),
    Other(Command),
}

impl Prepared {
    /// Do what needs no lock now (a grant's token and the copies of its strings), so the
    /// space's lock is held only for the decision and the write.
    pub(crate) fn new(command: Command, now: Timestamp) -> Self {
        match command {
            Command::Grant(req) => Prepared::Grant(PreparedGrant::new(req, now)),
            other => Prepared::Other(other),
        }
    }
}

/// What [`SpaceState::grant`] did.
pub(crate) enum Granting {
    Answered(Result<Reply, LeaseError>),
    /// No capacity: the grant, untouched, and the refusal.
    AtCapacity(PreparedGrant, LeaseError),
}

impl Granting {
    fn into_reply(self) -> Result<Reply, LeaseError> {
        match self {
            Granting::Answered(reply) => reply,
            Granting::AtCapacity(_, refusal) => Err(refusal),
        }
    }
}

/// A grant's lease record (the reply) and the slot's own copy of its operation id. The seq
/// is set under the lock.
pub(crate) struct PreparedGrant {
    /// Boxed before the lock is taken: the reply is handed on boxed (`Reply::Granted`).
    reply: Box<LeaseRecord>,
    operation_id: Box<str>,
    /// As requested, to give the request back unchanged when there is no capacity.
    ttl: Duration,
}

impl PreparedGrant {
    /// The request this grant was prepared from.
    pub(crate) fn into_request(self) -> GrantRequest {
        let LeaseRecord {
            space,
            operation_id,
            projection_type,
            owner,
            fence,
            ..
        } = *self.reply;
        GrantRequest {
            space,
            operation_id,
            projection_type,
            owner,
            ttl: self.ttl,
            fence,
        }
    }

    pub(crate) fn new(req: GrantRequest, now: Timestamp) -> Self {
        let reply = Box::new(LeaseRecord {
            space: req.space,
            seq: 0,
            token: Token::random(),
            operation_id: req.operation_id,
            projection_type: req.projection_type,
            owner: req.owner,
            fence: req.fence,
            leased_at: now,
            expires_at: now.plus(req.ttl),
            renewals: 0,
        });
        PreparedGrant {
            operation_id: reply.operation_id.as_str().into(),
            reply,
            ttl: req.ttl,
        }
    }
}

/// The slot of `key` in `slots` if it exists and the token matches.
fn token_checked<'a>(
    name: &SpaceName,
    slots: &'a mut Slots,
    key: &LeaseKey,
) -> Result<&'a mut Slot, LeaseError> {
    let slot = slots
        .get_mut(key.seq)
        .ok_or_else(|| LeaseError::UnknownSlot {
            space: name.clone(),
            seq: key.seq,
        })?;
    if slot.lease.token != key.token {
        return Err(LeaseError::WrongToken {
            space: name.clone(),
            seq: key.seq,
        });
    }
    Ok(slot)
}

/// Refuse a write whose fence epoch is no longer the resource's current epoch (I9).
fn check_fence(fence: &Fence, epoch_of: &dyn Fn(&str) -> u64) -> Result<(), LeaseError> {
    let current = epoch_of(&fence.resource);
    if current != fence.epoch {
        return Err(LeaseError::StaleEpoch {
            resource: fence.resource.clone(),
            current,
            attempted: fence.epoch,
        });
    }
    Ok(())
}

/// Slots in fixed-size chunks: appending never moves what is already stored, so a log of
/// millions of slots grows without ever copying itself.
///
/// The first chunk starts with room for [`FIRST_CHUNK`] slots and grows like any `Vec` up
/// to [`CHUNK`]: a full chunk is ~750 KB, and an application with a space per tenant has
/// many spaces of a few slots each (30,000 such spaces took 23 GB when every first chunk
/// was full-size).
#[derive(Debug, Default)]
pub(crate) struct Slots {
    chunks: Vec<Vec<Slot>>,
    len: u64,
    /// Slots `1..=floor` were pruned: they are gone (whole chunks freed) and never found.
    floor: u64,
}

impl Slots {
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn push(&mut self, slot: Slot) {
        if self.is_full() {
            let room = if self.chunks.is_empty() {
                FIRST_CHUNK
            } else {
                CHUNK
            };
            self.chunks.push(Vec::with_capacity(room));
        }
        self.chunks.last_mut().expect("just ensured").push(slot);
        self.len += 1;
    }

    /// Whether the next push starts a new chunk.
    pub(crate) fn is_full(&self) -> bool {
        self.chunks.last().is_none_or(|c| c.len() == CHUNK)
    }

    /// Whether the next push starts a chunk after a full one (the first chunk starts small).
    pub(crate) fn wants_full_chunk(&self) -> bool {
        !self.chunks.is_empty() && self.is_full()
    }

    /// Start the next chunk with `chunk` (empty, room for [`CHUNK`] slots), if it is due.
    pub(crate) fn add_chunk(&mut self, chunk: Vec<Slot>) {
        if self.wants_full_chunk() && chunk.is_empty() && chunk.capacity() >= CHUNK {
            self.chunks.push(chunk);
        }
    }

    fn position(&self, seq: u64) -> Option<(usize, usize)> {
        let i = usize::try_from(seq.checked_sub(1)?).ok()?;
        (seq > self.floor && seq <= self.len).then_some((i / CHUNK, i % CHUNK))
    }

    /// The last pruned seq (0: none).
    pub(crate) fn floor(&self) -> u64 {
        self.floor
    }

    /// Forget slots `1..=through` (freeing every chunk that holds only pruned slots).
    pub(crate) fn prune(&mut self, through: u64) {
        let through = through.min(self.len);
        if through <= self.floor {
            return;
        }
        self.floor = through;
        let whole = usize::try_from(through).unwrap_or(usize::MAX) / CHUNK;
        for chunk in self.chunks.iter_mut().take(whole) {
            *chunk = Vec::new();
        }
    }

    /// The slot with this seq (`None` for 0 or beyond the last).
    pub(crate) fn get(&self, seq: u64) -> Option<&Slot> {
        let (c, i) = self.position(seq)?;
        Some(&self.chunks[c][i])
    }

    pub(crate) fn get_mut(&mut self, seq: u64) -> Option<&mut Slot> {
        let (c, i) = self.position(seq)?;
        Some(&mut self.chunks[c][i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slot::test_lease;
    use crate::spare::touched_chunk;

    fn push(slots: &mut Slots, through: u64) {
        for seq in slots.len() + 1..=through {
            if slots.wants_full_chunk() {
                slots.add_chunk(touched_chunk());
            }
            slots.push(Slot::leased(test_lease(seq, &format!("op-{seq}"))));
        }
    }

    #[test]
    fn a_small_log_keeps_a_small_chunk() {
        let mut slots = Slots::default();
        push(&mut slots, 3);
        assert!(!slots.wants_full_chunk(), "the first chunk is not full");
        assert_eq!(slots.chunks[0].capacity(), FIRST_CHUNK);
    }

    #[test]
    fn every_slot_is_found_across_chunks() {
        let mut slots = Slots::default();
        let last = 2 * CHUNK as u64 + 5;
        push(&mut slots, last);
        assert_eq!(slots.chunks.len(), 3);
        assert!(slots.chunks.iter().take(2).all(|c| c.len() == CHUNK));
        for seq in [1, CHUNK as u64, CHUNK as u64 + 1, last] {
            let slot = slots.get(seq).expect("kept");
            assert_eq!(&*slot.lease.operation_id, format!("op-{seq}"));
        }
        assert!(slots.get(0).is_none() && slots.get(last + 1).is_none());
        slots.prune(CHUNK as u64 + 1);
        assert!(slots.get(CHUNK as u64 + 1).is_none());
        assert!(slots.chunks[0].capacity() == 0, "the pruned chunk is freed");
        assert_eq!(
            &*slots.get(last).expect("kept").lease.operation_id,
            format!("op-{last}")
        );
    }
}
