//! The write path: one batch of commands, one transaction, four statements.
//!
//! The engine coalesces concurrent grants, commits and the rest into a batch (group
//! commit). Applying it command by command would cost one or two statements per command;
//! instead a batch is decided in memory against rows it has locked, and written back with
//! one set-based statement:
//!
//! 1. `SELECT … FROM spaces WHERE name = ANY($names) ORDER BY name FOR UPDATE` locks the
//!    rows of every space the batch touches and reads their counters and the store clock. Every writer of a space's slots takes this lock first,
//!    in name order, so concurrent batches of all processes serialize per space and never
//!    deadlock.
//! 2. One `SELECT` reads the slots the lease commands name (state, token, expiry, whether
//!    work was recorded) and, for each, the seq where its operation id is already
//!    committed (I6). Under the space lock, nothing of this can change before commit. It
//!    also reads the database clock again (`clock_timestamp()`, once): the batch's `now` is
//!    taken after its locks are held, so time spent waiting for another batch's lock never
//!    makes an expired lease look live.
//! 3. The commands are decided in order, in memory, exactly as the contract in
//!    `seqlease_core::store` says: each grant is a compare-and-swap on the locked counter
//!    and capacity, each commit or release a compare-and-swap on the slot's state, token
//!    and expiry. Later commands see the effects of earlier ones (capacity freed by a
//!    release, an operation id committed by an earlier commit).
//! 4. One statement writes it all: `INSERT … SELECT FROM unnest(…)` for the granted slots,
//!    `UPDATE slots … FROM unnest(…)` for the changed ones, `UPDATE spaces` with the new
//!    counters and watermark (recomputed once per space, with `MIN(seq)` over the partial
//!    index of LEASED slots), and `pg_notify` for every space where a slot resolved, which
//!    PostgreSQL delivers when the transaction commits.
//!
//! Batches of plain grants and commits usually skip this path: `one_statement` writes them
//! in a single round trip and hands them here only when its checks fail. This is the
//! general path, and the reference for what that one must answer.
//!
//! A refused command ([`LeaseError`]) writes nothing and does not affect the others; any
//! database error rolls the whole batch back. The unique index on committed operation ids
//! backs I6 up: a bug here would fail the batch rather than duplicate an operation.

use std::collections::HashMap;
use std::time::Duration;

use seqlease_core::time::duration_micros;
use seqlease_core::{
    BatchOutcome, Command, CommitOutcome, CommitStatus, Fence, GapReason, GrantRequest, LeaseError,
    LeaseKey, LeaseRecord, OperationBody, ReleaseOutcome, Reply, SlotEventKind, SlotState,
    SpaceName, StoreError, Timestamp, Token,
};
use sqlx::Row;
use sqlx::postgres::PgConnection;

use crate::Inner;
use crate::error::{corrupt_value, map_sqlx};
use crate::history::Events;
use crate::read::{epoch_from_column, epoch_to_column, slot_state, state, to_u32, to_u64};

type CommandResult = Result<Reply, LeaseError>;

/// Apply `commands` in one transaction; see the module docs.
pub(crate) async fn execute(
    inner: &Inner,
    commands: Vec<Command>,
) -> Result<BatchOutcome, StoreError> {
    let target = inner.target.as_str();
    let map = |e| map_sqlx(e, target);
    let mut tx = inner.pool.begin().await.map_err(map)?;
    let mut batch = Batch::default();
    batch.lock_spaces(&mut tx, inner, &commands).await?;
    batch
        .load_slots(&mut tx, target, &inner.clock, &commands)
        .await?;
    batch.load_epochs(&mut tx, target, &commands).await?;
    let mut outcome = BatchOutcome::default();
    outcome.replies.reserve(commands.len());
    for command in commands {
        let reply = batch.apply(command, &mut outcome)?;
        outcome.replies.push(reply);
    }
    batch.write(&mut tx, inner, &mut outcome).await?;
    batch.events.write(&mut tx, target).await?;
    tx.commit().await.map_err(map)?;
    for space in &batch.spaces {
        inner.spaces.remember(
            &space.name,
            space.id,
            space.last_seq,
            space.in_flight,
            space.capacity,
        );
    }
    Ok(outcome)
}

/// A space's row as locked for this batch.
struct SpaceRow {
    name: SpaceName,
    id: i64,
    last_seq: u64,
    in_flight: u32,
    capacity: u32,
    /// Counters changed: write the row back.
    dirty: bool,
    /// Slots that left LEASED in this batch.
    freed: u32,
}

/// What to do with a column of recorded work when writing a slot back.
#[derive(Clone, Debug, Default)]
enum Work<T> {
    /// Leave the stored value.
    #[default]
    Keep,
    /// Replace it.
    Set(T),
    /// Drop it (the slot resolved).
    Clear,
}

impl<T> Work<T> {
    fn code(&self) -> i16 {
        match self {
            Work::Keep => 0,
            Work::Set(_) => 1,
            Work::Clear => 2,
        }
    }
}

/// A slot as this batch sees it: loaded (or granted here), then changed by commands.
struct Slot {
    space: usize,
    seq: u64,
    /// Granted in this batch: inserted instead of updated.
    new: bool,
    /// Changed by this batch.
    dirty: bool,
    state: i16,
    gap_reason: Option<GapReason>,
    token: Token,
    operation_id: String,
    expires_at: i64,
    renewals: i32,
    has_work: bool,
    partial: Work<Vec<u8>>,
    result: Work<OperationBody>,
    resolved_at: Option<i64>,
    committed: Option<OperationBody>,
    superseded_by: Option<i64>,
    gap_detail: Option<String>,
    /// Set for slots granted here (the insert needs the whole lease).
    grant: Option<GrantRequest>,
    leased_at: i64,
    /// The lease's fence (I9): checked against the resource's epoch at commit.
    fence: Option<Fence>,
    /// The lease's owner (the actor of its history events).
    owner: String,
}

/// The state of one batch.
#[derive(Default)]
struct Batch {
    now: i64,
    spaces: Vec<SpaceRow>,
    /// (space index, seq) → slot.
    slots: HashMap<(usize, u64), Slot>,
    /// (space index, operation id) → committed seq (I6), as known to this batch.
    committed: HashMap<(usize, String), u64>,
    /// Current epochs of the resources that fences in this batch name (0: never held).
    epochs: HashMap<String, u64>,
    /// Lease-history events of this batch (renewals, hand-overs to recovery).
    events: Events,
}

impl Batch {
    fn space_index(&self, name: &SpaceName) -> Option<usize> {
        self.spaces.iter().position(|s| &s.name == name)
    }

    /// Step 1: lock the spaces' rows (in name order) and read the clock.
    async fn lock_spaces(
        &mut self,
        conn: &mut PgConnection,
        inner: &Inner,
        commands: &[Command],
    ) -> Result<(), StoreError> {
        let mut names: Vec<&str> = commands.iter().map(|c| c.space().as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let (pinned, offset) = inner.clock.params();
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT id, name, last_seq, in_flight, capacity, {} AS now \
             FROM spaces WHERE name = ANY($3::text[]) ORDER BY name FOR UPDATE",
            crate::NOW_SQL
        )))
        .bind(pinned)
        .bind(offset)
        .bind(&names)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| map_sqlx(e, &inner.target))?;
        for row in rows {
            let get = |e| map_sqlx(e, &inner.target);
            let name: String = row.try_get(1).map_err(get)?;
            let name = SpaceName::new(&name).map_err(|e| StoreError::Corrupt {
                backend: crate::BACKEND,
                detail: format!("stored space name is invalid: {e}"),
            })?;
            self.now = row.try_get(5).map_err(get)?;
            self.spaces.push(SpaceRow {
                name,
                id: row.try_get(0).map_err(get)?,
                last_seq: to_u64("last_seq", row.try_get(2).map_err(get)?)?,
                in_flight: to_u32("in_flight", row.try_get(3).map_err(get)?)?,
                capacity: to_u32("capacity", row.try_get(4).map_err(get)?)?,
                dirty: false,
                freed: 0,
            });
        }
        Ok(())
    }

    /// Step 2: read every existing slot a lease command names, with its operation's
    /// committed seq.
    async fn load_slots(
        &mut self,
        conn: &mut PgConnection,
        target: &str,
        clock: &crate::PgClock,
        commands: &[Command],
    ) -> Result<(), StoreError> {
        let mut space_ids = Vec::new();
        let mut seqs = Vec::new();
        let mut index_of_id = HashMap::new();
        for command in commands {
            let key = match command {
                Command::Grant(_) => continue,
                Command::Renew { key, .. }
                | Command::RecordPartial { key, .. }
                | Command::RecordResult { key, .. }
                | Command::Commit { key, .. }
                | Command::Release { key, .. } => key,
            };
            let Some(i) = self.space_index(&key.space) else {
                continue;
            };
            let space = &self.spaces[i];
            if key.seq == 0 || key.seq > space.last_seq {
                continue;
            }
            let seq = i64::try_from(key.seq).map_err(|_| corrupt_value("seq", key.seq))?;
            if space_ids
                .iter()
                .zip(&seqs)
                .any(|(id, s)| *id == space.id && *s == seq)
            {
                continue;
            }
            index_of_id.insert(space.id, i);
            space_ids.push(space.id);
            seqs.push(seq);
        }
        if seqs.is_empty() {
            return Ok(());
        }
        let (pinned, offset) = clock.params();
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH clk AS MATERIALIZED (SELECT {} AS now) \
             SELECT s.space_id, s.seq, s.state, s.gap_reason, s.token, s.operation_id, \
                    s.expires_at, s.renewals, \
                    (s.partial IS NOT NULL OR s.result_kind IS NOT NULL) AS has_work, \
                    (SELECT c.seq FROM slots c \
                      WHERE c.space_id = s.space_id AND c.committed_op_id = s.operation_id) AS existing, \
                    clk.now, s.fence_resource, s.fence_epoch, s.owner \
             FROM unnest($3::bigint[], $4::bigint[]) AS k(space_id, seq) \
             JOIN slots s ON s.space_id = k.space_id AND s.seq = k.seq \
             CROSS JOIN clk",
            crate::CLOCK_SQL
        )))
        .bind(pinned)
        .bind(offset)
        .bind(&space_ids)
        .bind(&seqs)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| map_sqlx(e, target))?;
        for row in rows {
            let get = |e| map_sqlx(e, target);
            let space_id: i64 = row.try_get(0).map_err(get)?;
            let space = *index_of_id
                .get(&space_id)
                .ok_or_else(|| corrupt_value("space id of a loaded slot", space_id))?;
            let seq = to_u64("seq", row.try_get(1).map_err(get)?)?;
            let code: i16 = row.try_get(2).map_err(get)?;
            let gap_reason: Option<String> = row.try_get(3).map_err(get)?;
            let token: Vec<u8> = row.try_get(4).map_err(get)?;
            let operation_id: String = row.try_get(5).map_err(get)?;
            let existing: Option<i64> = row.try_get(9).map_err(get)?;
            // The clock read after this batch holds its locks: the lease checks use it.
            self.now = self.now.max(row.try_get(10).map_err(get)?);
            if let Some(e) = existing {
                self.committed
                    .insert((space, operation_id.clone()), to_u64("seq", e)?);
            }
            let gap_reason = match slot_state(code, gap_reason.as_deref())? {
                SlotState::Gap(r) => Some(r),
                _ => None,
            };
            self.slots.insert(
                (space, seq),
                Slot {
                    space,
                    seq,
                    new: false,
                    dirty: false,
                    state: code,
                    gap_reason,
                    token: Token::from_slice(&token)
                        .ok_or_else(|| corrupt_value("token length", token.len()))?,
                    operation_id,
                    expires_at: row.try_get(6).map_err(get)?,
                    renewals: row.try_get(7).map_err(get)?,
                    has_work: row.try_get(8).map_err(get)?,
                    owner: row.try_get(13).map_err(get)?,
                    partial: Work::Keep,
                    result: Work::Keep,
                    resolved_at: None,
                    committed: None,
                    superseded_by: None,
                    gap_detail: None,
                    grant: None,
                    leased_at: 0,
                    fence: match (row.try_get(11).map_err(get)?, row.try_get(12).map_err(get)?) {
                        (Some(resource), Some(epoch)) => Some(Fence {
                            resource,
                            epoch: epoch_from_column(epoch),
                        }),
                        _ => None,
                    },
                },
            );
        }
        Ok(())
    }

    /// Step 2b: read the current epoch of every resource a fence of this batch names (the
    /// fenced grants, the fenced slots being committed), `FOR SHARE`: a change of holder
    /// waits for this batch, or this batch sees its new epoch (I9).
    async fn load_epochs(
        &mut self,
        conn: &mut PgConnection,
        target: &str,
        commands: &[Command],
    ) -> Result<(), StoreError> {
        let mut names: Vec<&str> = Vec::new();
        for command in commands {
            match command {
                Command::Grant(req) => {
                    if let Some(f) = &req.fence {
                        names.push(&f.resource);
                    }
                }
                Command::Commit { key, .. } => {
                    if let Some(i) = self.space_index(&key.space)
                        && let Some(f) =
                            self.slots.get(&(i, key.seq)).and_then(|s| s.fence.as_ref())
                    {
                        names.push(&f.resource);
                    }
                }
                _ => {}
            }
        }
        if names.is_empty() {
            return Ok(());
        }
        names.sort_unstable();
        names.dedup();
        let rows = sqlx::query(
            "SELECT name, epoch FROM resources WHERE name = ANY($1::text[]) \
             ORDER BY name FOR SHARE",
        )
        .bind(&names)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| map_sqlx(e, target))?;
        for row in rows {
            let get = |e| map_sqlx(e, target);
            let name: String = row.try_get(0).map_err(get)?;
            let epoch = to_u64("resource epoch", row.try_get(1).map_err(get)?)?;
            self.epochs.insert(name, epoch);
        }
        Ok(())
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

    /// Step 3: decide one command.
    fn apply(
        &mut self,
        command: Command,
        outcome: &mut BatchOutcome,
    ) -> Result<CommandResult, StoreError> {
        match command {
            Command::Grant(req) => self.grant(req),
            Command::Renew { key, ttl } => Ok(self.renew(&key, ttl)),
            Command::RecordPartial { key, data } => Ok(self.live(&key).map(|slot| {
                slot.partial = Work::Set(data);
                slot.has_work = true;
                slot.dirty = true;
                Reply::Recorded
            })),
            Command::RecordResult { key, body } => Ok(self.live(&key).map(|slot| {
                slot.result = Work::Set(body);
                slot.has_work = true;
                slot.dirty = true;
                Reply::Recorded
            })),
            Command::Commit { key, body } => Ok(self.commit(&key, body, outcome)),
            Command::Release { key, detail } => Ok(self.release(&key, detail, outcome)),
        }
    }

    fn grant(&mut self, req: GrantRequest) -> Result<CommandResult, StoreError> {
        let Some(i) = self.space_index(&req.space) else {
            return Ok(Err(LeaseError::UnknownSpace { space: req.space }));
        };
        if let Some(fence) = &req.fence
            && let Err(e) = self.check_fence(fence)
        {
            return Ok(Err(e));
        }
        let now = self.now;
        let space = &mut self.spaces[i];
        if space.in_flight >= space.capacity {
            return Ok(Err(LeaseError::AtCapacity {
                space: req.space,
                capacity: space.capacity,
            }));
        }
        let seq = space.last_seq + 1;
        i64::try_from(seq).map_err(|_| corrupt_value("last_seq", space.last_seq))?;
        space.last_seq = seq;
        space.in_flight += 1;
        space.dirty = true;
        let token = Token::random();
        let expires_at = now.saturating_add(duration_micros(req.ttl));
        let record = LeaseRecord {
            space: req.space.clone(),
            seq,
            token,
            operation_id: req.operation_id.clone(),
            projection_type: req.projection_type.clone(),
            owner: req.owner.clone(),
            fence: req.fence.clone(),
            leased_at: Timestamp(now),
            expires_at: Timestamp(expires_at),
            renewals: 0,
        };
        self.slots.insert(
            (i, seq),
            Slot {
                space: i,
                seq,
                new: true,
                dirty: true,
                state: state::LEASED,
                gap_reason: None,
                token,
                operation_id: req.operation_id.clone(),
                expires_at,
                renewals: 0,
                has_work: false,
                partial: Work::Keep,
                result: Work::Keep,
                resolved_at: None,
                committed: None,
                superseded_by: None,
                gap_detail: None,
                fence: req.fence.clone(),
                owner: req.owner.clone(),
                grant: Some(req),
                leased_at: now,
            },
        );
        Ok(Ok(Reply::Granted(Box::new(record))))
    }

    /// Find the slot of `key` and run the lease checks in contract order. `Ok(Err(..))`
    /// when the slot is committed under this token (the commit retry).
    fn check(&mut self, key: &LeaseKey) -> Result<Result<&mut Slot, ()>, LeaseError> {
        let Some(i) = self.space_index(&key.space) else {
            return Err(LeaseError::UnknownSpace {
                space: key.space.clone(),
            });
        };
        let now = self.now;
        let Some(slot) = self.slots.get_mut(&(i, key.seq)) else {
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
        match slot.state {
            state::LEASED => {}
            state::COMMITTED => return Ok(Err(())),
            _ => {
                return Err(LeaseError::Resolved {
                    space: key.space.clone(),
                    seq: key.seq,
                    state: SlotState::Gap(slot.gap_reason.unwrap_or(GapReason::Manual)),
                });
            }
        }
        if slot.expires_at <= now {
            return Err(LeaseError::Expired {
                space: key.space.clone(),
                seq: key.seq,
                expired_at: Timestamp(slot.expires_at),
                now: Timestamp(now),
            });
        }
        Ok(Ok(slot))
    }

    /// The lease checks for renew, record and release: a committed slot is `Resolved`.
    fn live(&mut self, key: &LeaseKey) -> Result<&mut Slot, LeaseError> {
        match self.check(key)? {
            Ok(slot) => Ok(slot),
            Err(()) => Err(LeaseError::Resolved {
                space: key.space.clone(),
                seq: key.seq,
                state: SlotState::Committed,
            }),
        }
    }

    fn renew(&mut self, key: &LeaseKey, ttl: Duration) -> CommandResult {
        let now = self.now;
        let slot = self.live(key)?;
        slot.expires_at = now.saturating_add(duration_micros(ttl));
        slot.renewals += 1;
        slot.dirty = true;
        let (space, expires_at, renewals) = (slot.space, slot.expires_at, slot.renewals);
        let owner = slot.owner.clone();
        let until = format!("until {}", Timestamp(expires_at));
        self.record(space, key.seq, SlotEventKind::Renewed, &owner, Some(until));
        Ok(Reply::Renewed {
            expires_at: Timestamp(expires_at),
            renewals: u32::try_from(renewals).unwrap_or(u32::MAX),
        })
    }

    fn commit(
        &mut self,
        key: &LeaseKey,
        body: OperationBody,
        outcome: &mut BatchOutcome,
    ) -> CommandResult {
        let now = self.now;
        let slot = match self.check(key)? {
            Ok(slot) => slot,
            Err(()) => {
                return Ok(Reply::Committed(CommitOutcome {
                    seq: key.seq,
                    status: CommitStatus::AlreadyCommitted,
                }));
            }
        };
        let space = slot.space;
        let op = (space, slot.operation_id.clone());
        if let Some(fence) = slot.fence.clone() {
            self.check_fence(&fence)?;
        }
        let existing = self.committed.get(&op).copied();
        let slot = self
            .slots
            .get_mut(&(space, key.seq))
            .expect("check() found this slot");
        slot.dirty = true;
        slot.resolved_at = Some(now);
        slot.partial = Work::Clear;
        slot.result = Work::Clear;
        slot.has_work = false;
        let reply = if let Some(existing) = existing {
            slot.state = state::GAP;
            slot.gap_reason = Some(GapReason::Superseded);
            slot.superseded_by = Some(existing as i64);
            CommitOutcome {
                seq: existing,
                status: CommitStatus::Duplicate { slot: key.seq },
            }
        } else {
            slot.state = state::COMMITTED;
            slot.committed = Some(body);
            self.committed.insert(op, key.seq);
            CommitOutcome {
                seq: key.seq,
                status: CommitStatus::Committed,
            }
        };
        self.left_leased(space, outcome);
        Ok(Reply::Committed(reply))
    }

    fn release(
        &mut self,
        key: &LeaseKey,
        detail: Option<String>,
        outcome: &mut BatchOutcome,
    ) -> CommandResult {
        let now = self.now;
        let slot = self.live(key)?;
        slot.dirty = true;
        if slot.has_work {
            // Recorded work is never dropped (I5): the slot stays LEASED, expired now, and
            // the recovery chain commits the work or parks it.
            slot.expires_at = now;
            let (space, owner) = (slot.space, slot.owner.clone());
            self.record(
                space,
                key.seq,
                SlotEventKind::HandedToRecovery,
                &owner,
                detail,
            );
            return Ok(Reply::Released(ReleaseOutcome::HandedToRecovery));
        }
        slot.state = state::GAP;
        slot.gap_reason = Some(GapReason::Released);
        slot.gap_detail = detail;
        slot.resolved_at = Some(now);
        slot.partial = Work::Clear;
        slot.result = Work::Clear;
        let space = slot.space;
        self.left_leased(space, outcome);
        Ok(Reply::Released(ReleaseOutcome::Gap))
    }

    /// Record a transition the slot row cannot show (lease history).
    fn record(
        &mut self,
        space: usize,
        seq: u64,
        kind: SlotEventKind,
        actor: &str,
        detail: Option<String>,
    ) {
        let space_id = self.spaces[space].id;
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        self.events
            .push(space_id, seq, self.now, kind, actor, detail);
    }

    fn left_leased(&mut self, space: usize, outcome: &mut BatchOutcome) {
        let row = &mut self.spaces[space];
        row.in_flight = row.in_flight.saturating_sub(1);
        row.freed += 1;
        row.dirty = true;
        outcome.note_freed(&row.name);
    }

    /// Step 4: write every change in one statement and fill in the watermarks.
    async fn write(
        &self,
        conn: &mut PgConnection,
        inner: &Inner,
        outcome: &mut BatchOutcome,
    ) -> Result<(), StoreError> {
        if !self.spaces.iter().any(|s| s.dirty) && !self.slots.values().any(|s| s.dirty) {
            return Ok(());
        }
        let mut w = Columns::default();
        let mut slots: Vec<&Slot> = self.slots.values().filter(|s| s.dirty).collect();
        slots.sort_by_key(|s| (s.space, s.seq));
        // Lowest seq still LEASED among the slots granted here, per space.
        let mut min_new_leased: Vec<Option<i64>> = vec![None; self.spaces.len()];
        for slot in slots {
            let space_id = self.spaces[slot.space].id;
            let seq = slot.seq as i64;
            if slot.new {
                if slot.state == state::LEASED {
                    let m = &mut min_new_leased[slot.space];
                    *m = Some(m.map_or(seq, |m| m.min(seq)));
                }
                w.push_insert(space_id, slot, self.now)?;
            } else {
                if slot.state != state::LEASED {
                    w.resolved_space.push(space_id);
                    w.resolved_seq.push(seq);
                }
                w.push_update(space_id, slot);
            }
        }
        let mut ids = Vec::new();
        let mut last_seqs = Vec::new();
        let mut in_flights = Vec::new();
        let mut freeds = Vec::new();
        let mut min_news = Vec::new();
        for (i, space) in self.spaces.iter().enumerate() {
            if !space.dirty {
                continue;
            }
            ids.push(space.id);
            last_seqs.push(space.last_seq as i64);
            in_flights.push(i64::from(space.in_flight));
            freeds.push(i32::try_from(space.freed).unwrap_or(i32::MAX));
            min_news.push(min_new_leased[i]);
        }
        let rows = sqlx::query(WRITE_SQL)
            // Inserted slots.
            .bind(&w.i_space)
            .bind(&w.i_seq)
            .bind(&w.i_state)
            .bind(&w.i_token)
            .bind(&w.i_operation)
            .bind(&w.i_projection)
            .bind(&w.i_owner)
            .bind(&w.i_fence_resource)
            .bind(&w.i_fence_epoch)
            .bind(&w.i_leased_at)
            .bind(&w.i_expires_at)
            .bind(&w.i_renewals)
            .bind(&w.i_partial)
            .bind(&w.i_result_kind)
            .bind(&w.i_result_payload)
            .bind(&w.i_result_source)
            .bind(&w.i_resolved_at)
            .bind(&w.i_committed_op)
            .bind(&w.i_op_kind)
            .bind(&w.i_op_payload)
            .bind(&w.i_op_source)
            .bind(&w.i_gap_reason)
            .bind(&w.i_superseded_by)
            .bind(&w.i_gap_detail)
            // Updated slots ($25…).
            .bind(&w.u_space)
            .bind(&w.u_seq)
            .bind(&w.u_state)
            .bind(&w.u_expires_at)
            .bind(&w.u_renewals)
            .bind(&w.u_partial_act)
            .bind(&w.u_partial)
            .bind(&w.u_result_act)
            .bind(&w.u_result_kind)
            .bind(&w.u_result_payload)
            .bind(&w.u_result_source)
            .bind(&w.u_resolved_at)
            .bind(&w.u_committed_op)
            .bind(&w.u_op_kind)
            .bind(&w.u_op_payload)
            .bind(&w.u_op_source)
            .bind(&w.u_gap_reason)
            .bind(&w.u_superseded_by)
            .bind(&w.u_gap_detail)
            // Resolved pre-existing slots ($44, $45).
            .bind(&w.resolved_space)
            .bind(&w.resolved_seq)
            // Spaces ($46…).
            .bind(&ids)
            .bind(&last_seqs)
            .bind(&in_flights)
            .bind(&freeds)
            .bind(&min_news)
            .bind(&inner.channel)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| map_sqlx(e, &inner.target))?;
        for row in rows {
            let get = |e| map_sqlx(e, &inner.target);
            let id: i64 = row.try_get(0).map_err(get)?;
            let watermark = to_u64("watermark", row.try_get(1).map_err(get)?)?;
            if let Some(space) = self.spaces.iter().find(|s| s.id == id)
                && space.freed > 0
            {
                outcome.set_watermark(&space.name, watermark);
            }
        }
        Ok(())
    }
}

/// The one write statement of a batch. Data-modifying CTEs all see the snapshot taken when
/// the statement starts, so the watermark subquery excludes the slots this statement
/// resolves ($44/$45) and adds the lowest slot granted here that is still LEASED ($50). It
/// walks the partial index from the stored watermark up (every slot at or below it is
/// resolved) and stops at the first slot still LEASED: the index keeps an entry for every
/// slot ever leased until VACUUM removes it, and `min(seq)` with the anti-join cannot stop
/// early, so it checked every lease in flight against every slot resolved here.
const WRITE_SQL: &str = "\
WITH ins AS (
  INSERT INTO slots (space_id, seq, state, token, operation_id, projection_type, owner,
                     fence_resource, fence_epoch, leased_at, expires_at, renewals, partial,
                     result_kind, result_payload, result_source_event, resolved_at,
                     committed_op_id, op_kind, op_payload, op_source_event, gap_reason,
                     superseded_by, gap_detail)
  SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::smallint[], $4::bytea[], $5::text[],
                       $6::text[], $7::text[], $8::text[], $9::bigint[], $10::bigint[],
                       $11::bigint[], $12::int[], $13::bytea[], $14::text[], $15::bytea[],
                       $16::text[], $17::bigint[], $18::text[], $19::text[], $20::bytea[],
                       $21::text[], $22::text[], $23::bigint[], $24::text[])
), upd AS (
  UPDATE slots s SET
    state = u.state, expires_at = u.expires_at, renewals = u.renewals,
    partial = CASE u.partial_act WHEN 0 THEN s.partial ELSE u.partial END,
    result_kind = CASE u.result_act WHEN 0 THEN s.result_kind ELSE u.result_kind END,
    result_payload = CASE u.result_act WHEN 0 THEN s.result_payload ELSE u.result_payload END,
    result_source_event = CASE u.result_act WHEN 0 THEN s.result_source_event ELSE u.result_source END,
    resolved_at = u.resolved_at, committed_op_id = u.committed_op, op_kind = u.op_kind,
    op_payload = u.op_payload, op_source_event = u.op_source, gap_reason = u.gap_reason,
    superseded_by = u.superseded_by, gap_detail = u.gap_detail
  FROM unnest($25::bigint[], $26::bigint[], $27::smallint[], $28::bigint[], $29::int[],
              $30::smallint[], $31::bytea[], $32::smallint[], $33::text[], $34::bytea[],
              $35::text[], $36::bigint[], $37::text[], $38::text[], $39::bytea[], $40::text[],
              $41::text[], $42::bigint[], $43::text[])
       AS u(space_id, seq, state, expires_at, renewals, partial_act, partial, result_act,
            result_kind, result_payload, result_source, resolved_at, committed_op, op_kind,
            op_payload, op_source, gap_reason, superseded_by, gap_detail)
  WHERE s.space_id = u.space_id AND s.seq = u.seq
), res AS (
  SELECT * FROM unnest($44::bigint[], $45::bigint[]) AS r(space_id, seq)
), sp AS (
  UPDATE spaces p SET
    last_seq = x.last_seq,
    in_flight = x.in_flight,
    watermark = CASE WHEN x.freed = 0 THEN p.watermark ELSE GREATEST(p.watermark, COALESCE(
      LEAST(
        (SELECT s.seq FROM slots s
          WHERE s.space_id = p.id AND s.state = 0 AND s.seq > p.watermark
            AND NOT EXISTS (SELECT 1 FROM res WHERE res.space_id = s.space_id AND res.seq = s.seq)
          ORDER BY s.seq LIMIT 1),
        x.min_new) - 1,
      x.last_seq)) END
  FROM unnest($46::bigint[], $47::bigint[], $48::bigint[], $49::int[], $50::bigint[])
       AS x(id, last_seq, in_flight, freed, min_new)
  WHERE p.id = x.id
  RETURNING p.id, p.name, p.watermark, x.freed
)
SELECT id, watermark,
       (CASE WHEN freed > 0
             THEN pg_notify($51, name || ':' || watermark || ':' || freed) END) IS NULL
FROM sp";

/// The columns of the write statement, one vector per bound array.
#[derive(Default)]
struct Columns {
    i_space: Vec<i64>,
    i_seq: Vec<i64>,
    i_state: Vec<i16>,
    i_token: Vec<Vec<u8>>,
    i_operation: Vec<String>,
    i_projection: Vec<String>,
    i_owner: Vec<String>,
    i_fence_resource: Vec<Option<String>>,
    i_fence_epoch: Vec<Option<i64>>,
    i_leased_at: Vec<i64>,
    i_expires_at: Vec<i64>,
    i_renewals: Vec<i32>,
    i_partial: Vec<Option<Vec<u8>>>,
    i_result_kind: Vec<Option<String>>,
    i_result_payload: Vec<Option<Vec<u8>>>,
    i_result_source: Vec<Option<String>>,
    i_resolved_at: Vec<Option<i64>>,
    i_committed_op: Vec<Option<String>>,
    i_op_kind: Vec<Option<String>>,
    i_op_payload: Vec<Option<Vec<u8>>>,
    i_op_source: Vec<Option<String>>,
    i_gap_reason: Vec<Option<String>>,
    i_superseded_by: Vec<Option<i64>>,
    i_gap_detail: Vec<Option<String>>,

    u_space: Vec<i64>,
    u_seq: Vec<i64>,
    u_state: Vec<i16>,
    u_expires_at: Vec<i64>,
    u_renewals: Vec<i32>,
    u_partial_act: Vec<i16>,
    u_partial: Vec<Option<Vec<u8>>>,
    u_result_act: Vec<i16>,
    u_result_kind: Vec<Option<String>>,
    u_result_payload: Vec<Option<Vec<u8>>>,
    u_result_source: Vec<Option<String>>,
    u_resolved_at: Vec<Option<i64>>,
    u_committed_op: Vec<Option<String>>,
    u_op_kind: Vec<Option<String>>,
    u_op_payload: Vec<Option<Vec<u8>>>,
    u_op_source: Vec<Option<String>>,
    u_gap_reason: Vec<Option<String>>,
    u_superseded_by: Vec<Option<i64>>,
    u_gap_detail: Vec<Option<String>>,

    resolved_space: Vec<i64>,
    resolved_seq: Vec<i64>,
}

impl Columns {
    fn push_insert(&mut self, space_id: i64, slot: &Slot, now: i64) -> Result<(), StoreError> {
        let grant = slot
            .grant
            .as_ref()
            .ok_or_else(|| corrupt_value("granted slot without its request", slot.seq))?;
        self.i_space.push(space_id);
        self.i_seq.push(slot.seq as i64);
        self.i_state.push(slot.state);
        self.i_token.push(slot.token.as_bytes().to_vec());
        self.i_operation.push(grant.operation_id.clone());
        self.i_projection.push(grant.projection_type.clone());
        self.i_owner.push(grant.owner.clone());
        self.i_fence_resource
            .push(grant.fence.as_ref().map(|f| f.resource.clone()));
        self.i_fence_epoch
            .push(grant.fence.as_ref().map(|f| epoch_to_column(f.epoch)));
        self.i_leased_at.push(slot.leased_at.min(now));
        self.i_expires_at.push(slot.expires_at);
        self.i_renewals.push(slot.renewals);
        self.i_partial.push(match &slot.partial {
            Work::Set(p) => Some(p.clone()),
            _ => None,
        });
        let result = match &slot.result {
            Work::Set(b) => Some(b),
            _ => None,
        };
        self.i_result_kind.push(result.map(|b| b.kind.clone()));
        self.i_result_payload
            .push(result.map(|b| b.payload.clone()));
        self.i_result_source
            .push(result.and_then(|b| b.source_event_id.clone()));
        self.i_resolved_at.push(slot.resolved_at);
        let op = slot.committed.as_ref();
        self.i_committed_op
            .push(op.map(|_| slot.operation_id.clone()));
        self.i_op_kind.push(op.map(|b| b.kind.clone()));
        self.i_op_payload.push(op.map(|b| b.payload.clone()));
        self.i_op_source
            .push(op.and_then(|b| b.source_event_id.clone()));
        self.i_gap_reason
            .push(slot.gap_reason.map(|r| r.as_str().to_string()));
        self.i_superseded_by.push(slot.superseded_by);
        self.i_gap_detail.push(slot.gap_detail.clone());
        Ok(())
    }

    fn push_update(&mut self, space_id: i64, slot: &Slot) {
        self.u_space.push(space_id);
        self.u_seq.push(slot.seq as i64);
        self.u_state.push(slot.state);
        self.u_expires_at.push(slot.expires_at);
        self.u_renewals.push(slot.renewals);
        self.u_partial_act.push(slot.partial.code());
        self.u_partial.push(match &slot.partial {
            Work::Set(p) => Some(p.clone()),
            _ => None,
        });
        self.u_result_act.push(slot.result.code());
        let result = match &slot.result {
            Work::Set(b) => Some(b),
            _ => None,
        };
        self.u_result_kind.push(result.map(|b| b.kind.clone()));
        self.u_result_payload
            .push(result.map(|b| b.payload.clone()));
        self.u_result_source
            .push(result.and_then(|b| b.source_event_id.clone()));
        self.u_resolved_at.push(slot.resolved_at);
        let op = slot.committed.as_ref();
        self.u_committed_op
            .push(op.map(|_| slot.operation_id.clone()));
        self.u_op_kind.push(op.map(|b| b.kind.clone()));
        self.u_op_payload.push(op.map(|b| b.payload.clone()));
        self.u_op_source
            .push(op.and_then(|b| b.source_event_id.clone()));
        self.u_gap_reason
            .push(slot.gap_reason.map(|r| r.as_str().to_string()));
        self.u_superseded_by.push(slot.superseded_by);
        self.u_gap_detail.push(slot.gap_detail.clone());
    }
}
