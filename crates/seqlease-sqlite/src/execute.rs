//! The write path: one batch of commands, one `BEGIN IMMEDIATE` transaction.
//!
//! The engine coalesces concurrent grants and commits into a batch (group commit); this
//! module applies it exactly as the contract in `seqlease_core::store` says. The
//! transaction starts with `BEGIN IMMEDIATE`, which takes the database's write lock at once:
//! several processes sharing one file then queue on the lock (waiting up to the busy
//! timeout) instead of deadlocking when a reader tries to upgrade to a writer.
//!
//! Throughput comes from doing little per command:
//!
//! - The store clock is read once per batch.
//! - Each space touched is read once (its id, counters and capacity) into a [`SpaceRow`],
//!   updated in memory as commands run, and written back once at the end.
//! - A grant is one `INSERT`. A commit is one guarded `UPDATE OR IGNORE` that only matches a
//!   live lease with the right token; the unique index on committed operation ids makes a
//!   duplicate operation (I6) miss the update instead of failing the transaction. Only when
//!   the guarded update misses does the commit load the slot to find out why, in the
//!   contract's order.
//! - The watermark is recomputed once per space, and only if a slot of it left LEASED, with
//!   `MIN(seq)` over the partial index of LEASED slots.
//!
//! A slot that resolves drops its recorded partial work and result: the operation or gap
//! it resolved to is what remains.
//!
//! A refused command ([`LeaseError`]) writes nothing and does not affect the others; any
//! database error aborts the batch, and dropping the transaction rolls everything back.

use std::time::Duration;

use seqlease_core::{
    BatchOutcome, Command, CommitOutcome, CommitStatus, GapReason, GrantRequest, LeaseError,
    LeaseKey, LeaseRecord, OperationBody, ReleaseOutcome, Reply, SlotState, SpaceName, StoreError,
    Timestamp, Token,
};
use sqlx::SqliteConnection;
use sqlx::sqlite::SqlitePool;

use crate::codec::{epoch_param, seq_param, slot_state, state, to_u32, to_u64};
use crate::error::{corrupt_value, map_sqlx};

/// Apply `commands` in one transaction on the write pool; see the module docs.
pub(crate) async fn execute(
    writer: &SqlitePool,
    now: Timestamp,
    commands: Vec<Command>,
) -> Result<BatchOutcome, StoreError> {
    let mut tx = writer
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(map_sqlx)?;
    let mut batch = Batch {
        now,
        spaces: Vec::new(),
        outcome: BatchOutcome::default(),
    };
    batch.outcome.replies.reserve(commands.len());
    for command in commands {
        let reply = batch.apply(&mut tx, command).await?;
        batch.outcome.replies.push(reply);
    }
    batch.finish(&mut tx).await?;
    tx.commit().await.map_err(map_sqlx)?;
    Ok(batch.outcome)
}

/// A space's row, read once per batch and written back once.
struct SpaceRow {
    id: i64,
    last_seq: u64,
    watermark: u64,
    in_flight: u32,
    capacity: u32,
    /// Counters changed: write the row back.
    dirty: bool,
    /// A slot left LEASED: recompute the watermark.
    freed: bool,
}

/// A space as cached for this batch; `row` is `None` when the space does not exist.
struct CachedSpace {
    name: SpaceName,
    row: Option<SpaceRow>,
}

/// The state of one batch: the clock reading, the spaces touched and the replies so far.
struct Batch {
    now: Timestamp,
    spaces: Vec<CachedSpace>,
    outcome: BatchOutcome,
}

/// A slot's lease columns, loaded to find out why a command cannot proceed or what to do.
#[derive(sqlx::FromRow)]
struct LeaseRow {
    state: i64,
    token: Vec<u8>,
    expires_at: i64,
    gap_reason: Option<String>,
    operation_id: String,
    has_work: bool,
}

/// What the lease checks found.
enum Check {
    /// The lease is live: the command may act.
    Live,
    /// The slot is committed and the token matches: a commit retry.
    AlreadyCommitted,
    /// The command is refused.
    Refused(LeaseError),
}

/// Where a lease command's slot lives: the index of its space in the batch cache and the
/// seq as a column value.
struct Target {
    space: usize,
    seq: i64,
}

type CommandResult = Result<Reply, LeaseError>;

impl Batch {
    async fn apply(
        &mut self,
        conn: &mut SqliteConnection,
        command: Command,
    ) -> Result<CommandResult, StoreError> {
        match command {
            Command::Grant(req) => self.grant(conn, req).await,
            Command::Renew { key, ttl } => self.renew(conn, key, ttl).await,
            Command::RecordPartial { key, data } => self.record_partial(conn, key, data).await,
            Command::RecordResult { key, body } => self.record_result(conn, key, body).await,
            Command::Commit { key, body } => self.commit(conn, key, body).await,
            Command::Release { key, detail } => self.release(conn, key, detail).await,
        }
    }

    /// Renew: `expires_at = now + ttl`, one more renewal.
    async fn renew(
        &mut self,
        conn: &mut SqliteConnection,
        key: LeaseKey,
        ttl: Duration,
    ) -> Result<CommandResult, StoreError> {
        let (target, _) = match self.live_lease(conn, &key).await? {
            Ok(live) => live,
            Err(refused) => return Ok(Err(refused)),
        };
        let expires_at = self.now.plus(ttl);
        let renewals: i64 = sqlx::query_scalar(
            "UPDATE slots SET expires_at = ?1, renewals = renewals + 1 \
             WHERE space_id = ?2 AND seq = ?3 RETURNING renewals",
        )
        .bind(expires_at.as_micros())
        .bind(self.space_id(&target))
        .bind(target.seq)
        .fetch_one(&mut *conn)
        .await
        .map_err(map_sqlx)?;
        Ok(Ok(Reply::Renewed {
            expires_at,
            renewals: to_u32("renewals", renewals)?,
        }))
    }

    /// RecordPartial: store the checkpoint bytes, replacing earlier ones.
    async fn record_partial(
        &mut self,
        conn: &mut SqliteConnection,
        key: LeaseKey,
        data: Vec<u8>,
    ) -> Result<CommandResult, StoreError> {
        let (target, _) = match self.live_lease(conn, &key).await? {
            Ok(live) => live,
            Err(refused) => return Ok(Err(refused)),
        };
        sqlx::query("UPDATE slots SET partial = ?1 WHERE space_id = ?2 AND seq = ?3")
            .bind(data)
            .bind(self.space_id(&target))
            .bind(target.seq)
            .execute(&mut *conn)
            .await
            .map_err(map_sqlx)?;
        Ok(Ok(Reply::Recorded))
    }

    /// RecordResult: store the completed result, replacing an earlier one.
    async fn record_result(
        &mut self,
        conn: &mut SqliteConnection,
        key: LeaseKey,
        body: OperationBody,
    ) -> Result<CommandResult, StoreError> {
        let (target, _) = match self.live_lease(conn, &key).await? {
            Ok(live) => live,
            Err(refused) => return Ok(Err(refused)),
        };
        sqlx::query(
            "UPDATE slots SET result_kind = ?1, result_payload = ?2, result_source_event = ?3 \
             WHERE space_id = ?4 AND seq = ?5",
        )
        .bind(body.kind)
        .bind(body.payload)
        .bind(body.source_event_id)
        .bind(self.space_id(&target))
        .bind(target.seq)
        .execute(&mut *conn)
        .await
        .map_err(map_sqlx)?;
        Ok(Ok(Reply::Recorded))
    }

    /// Release: `GAP(released)`, or, when work was recorded, expire the lease at once and
    /// leave the slot to recovery.
    async fn release(
        &mut self,
        conn: &mut SqliteConnection,
        key: LeaseKey,
        detail: Option<String>,
    ) -> Result<CommandResult, StoreError> {
        let (target, row) = match self.live_lease(conn, &key).await? {
            Ok(live) => live,
            Err(refused) => return Ok(Err(refused)),
        };
        if row.has_work {
            // Recorded work is never dropped (I5): the slot stays LEASED, now expired, and
            // the recovery chain commits the work or parks it.
            sqlx::query("UPDATE slots SET expires_at = ?1 WHERE space_id = ?2 AND seq = ?3")
                .bind(self.now.as_micros())
                .bind(self.space_id(&target))
                .bind(target.seq)
                .execute(&mut *conn)
                .await
                .map_err(map_sqlx)?;
            return Ok(Ok(Reply::Released(ReleaseOutcome::HandedToRecovery)));
        }
        sqlx::query(
            "UPDATE slots SET state = ?1, gap_reason = ?2, gap_detail = ?3, resolved_at = ?4, \
             partial = NULL, result_kind = NULL, result_payload = NULL, result_source_event = NULL \
             WHERE space_id = ?5 AND seq = ?6",
        )
        .bind(state::GAP)
        .bind(GapReason::Released.as_str())
        .bind(detail)
        .bind(self.now.as_micros())
        .bind(self.space_id(&target))
        .bind(target.seq)
        .execute(&mut *conn)
        .await
        .map_err(map_sqlx)?;
        self.left_leased(target.space);
        Ok(Ok(Reply::Released(ReleaseOutcome::Gap)))
    }

    /// Grant: allocate `last_seq + 1` and record the lease.
    async fn grant(
        &mut self,
        conn: &mut SqliteConnection,
        req: GrantRequest,
    ) -> Result<CommandResult, StoreError> {
        let Some(index) = self.space(conn, &req.space).await? else {
            return Ok(Err(LeaseError::UnknownSpace { space: req.space }));
        };
        let now = self.now;
        let space = self.row_mut(index);
        if space.in_flight >= space.capacity {
            return Ok(Err(LeaseError::AtCapacity {
                space: req.space,
                capacity: space.capacity,
            }));
        }
        let seq = space.last_seq + 1;
        let seq_col = seq_param(seq).ok_or_else(|| corrupt_value("last_seq", space.last_seq))?;
        let token = Token::random();
        let expires_at = now.plus(req.ttl);
        sqlx::query(
            "INSERT INTO slots (space_id, seq, state, token, operation_id, projection_type, owner, \
             fence_resource, fence_epoch, leased_at, expires_at, renewals) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 0)",
        )
        .bind(space.id)
        .bind(seq_col)
        .bind(state::LEASED)
        .bind(&token.as_bytes()[..])
        .bind(&req.operation_id)
        .bind(&req.projection_type)
        .bind(&req.owner)
        .bind(req.fence.as_ref().map(|f| f.resource.as_str()))
        .bind(req.fence.as_ref().map(|f| epoch_param(f.epoch)))
        .bind(now.as_micros())
        .bind(expires_at.as_micros())
        .execute(&mut *conn)
        .await
        .map_err(map_sqlx)?;
        space.last_seq = seq;
        space.in_flight += 1;
        space.dirty = true;
        Ok(Ok(Reply::Granted(LeaseRecord {
            space: req.space,
            seq,
            token,
            operation_id: req.operation_id,
            projection_type: req.projection_type,
            owner: req.owner,
            fence: req.fence,
            leased_at: now,
            expires_at,
            renewals: 0,
        })))
    }

    /// Commit: the guarded fast path first, the checks in contract order when it misses.
    async fn commit(
        &mut self,
        conn: &mut SqliteConnection,
        key: LeaseKey,
        body: OperationBody,
    ) -> Result<CommandResult, StoreError> {
        let target = match self.locate(conn, &key).await? {
            Ok(target) => target,
            Err(refused) => return Ok(Err(refused)),
        };
        let committed = |status| {
            Ok(Ok(Reply::Committed(CommitOutcome {
                seq: key.seq,
                status,
            })))
        };

        // Fast path: matches only a LEASED, unexpired slot with this token. OR IGNORE turns
        // a clash with the unique index on committed operation ids (I6) into a miss.
        // (When fencing is checked, its condition joins this guard.)
        let hit = sqlx::query(
            "UPDATE OR IGNORE slots SET state = ?1, resolved_at = ?2, committed_op_id = operation_id, \
             partial = NULL, result_kind = NULL, result_payload = NULL, result_source_event = NULL, \
             op_kind = ?3, op_payload = ?4, op_source_event = ?5 \
             WHERE space_id = ?6 AND seq = ?7 AND token = ?8 AND state = ?9 AND expires_at > ?2",
        )
        .bind(state::COMMITTED)
        .bind(self.now.as_micros())
        .bind(&body.kind)
        .bind(&body.payload)
        .bind(&body.source_event_id)
        .bind(self.space_id(&target))
        .bind(target.seq)
        .bind(&key.token.as_bytes()[..])
        .bind(state::LEASED)
        .execute(&mut *conn)
        .await
        .map_err(map_sqlx)?
        .rows_affected();
        if hit == 1 {
            self.left_leased(target.space);
            return committed(CommitStatus::Committed);
        }

        let Some(row) = self.load(conn, &target).await? else {
            return Ok(Err(LeaseError::UnknownSlot {
                space: key.space,
                seq: key.seq,
            }));
        };
        match self.check(&row, &key, true)? {
            Check::Refused(refused) => return Ok(Err(refused)),
            Check::AlreadyCommitted => return committed(CommitStatus::AlreadyCommitted),
            Check::Live => {}
        }

        // The lease is live, so the guarded update missed because of I6 (or, in principle,
        // nothing: then commit plainly below and let any error surface).
        let existing: Option<i64> = sqlx::query_scalar(
            "SELECT seq FROM slots WHERE space_id = ?1 AND committed_op_id = ?2",
        )
        .bind(self.space_id(&target))
        .bind(&row.operation_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_sqlx)?;
        if let Some(existing) = existing {
            sqlx::query(
                "UPDATE slots SET state = ?1, gap_reason = ?2, superseded_by = ?3, resolved_at = ?4, \
                 partial = NULL, result_kind = NULL, result_payload = NULL, result_source_event = NULL \
                 WHERE space_id = ?5 AND seq = ?6",
            )
            .bind(state::GAP)
            .bind(GapReason::Superseded.as_str())
            .bind(existing)
            .bind(self.now.as_micros())
            .bind(self.space_id(&target))
            .bind(target.seq)
            .execute(&mut *conn)
            .await
            .map_err(map_sqlx)?;
            self.left_leased(target.space);
            let existing = to_u64("seq", existing)?;
            return Ok(Ok(Reply::Committed(CommitOutcome {
                seq: existing,
                status: CommitStatus::Duplicate { slot: key.seq },
            })));
        }
        sqlx::query(
            "UPDATE slots SET state = ?1, resolved_at = ?2, committed_op_id = operation_id, \
             partial = NULL, result_kind = NULL, result_payload = NULL, result_source_event = NULL, \
             op_kind = ?3, op_payload = ?4, op_source_event = ?5 WHERE space_id = ?6 AND seq = ?7",
        )
        .bind(state::COMMITTED)
        .bind(self.now.as_micros())
        .bind(&body.kind)
        .bind(&body.payload)
        .bind(&body.source_event_id)
        .bind(self.space_id(&target))
        .bind(target.seq)
        .execute(&mut *conn)
        .await
        .map_err(map_sqlx)?;
        self.left_leased(target.space);
        committed(CommitStatus::Committed)
    }

    /// Find the slot of `key` and run the lease checks; `Ok` when the lease is live.
    async fn live_lease(
        &mut self,
        conn: &mut SqliteConnection,
        key: &LeaseKey,
    ) -> Result<Result<(Target, LeaseRow), LeaseError>, StoreError> {
        let target = match self.locate(conn, key).await? {
            Ok(target) => target,
            Err(refused) => return Ok(Err(refused)),
        };
        let Some(row) = self.load(conn, &target).await? else {
            return Ok(Err(LeaseError::UnknownSlot {
                space: key.space.clone(),
                seq: key.seq,
            }));
        };
        Ok(match self.check(&row, key, false)? {
            Check::Live => Ok((target, row)),
            Check::Refused(refused) => Err(refused),
            Check::AlreadyCommitted => Err(LeaseError::Resolved {
                space: key.space.clone(),
                seq: key.seq,
                state: SlotState::Committed,
            }),
        })
    }

    /// The contract's lease checks, in order, after the slot was found: token, resolved
    /// (with the commit retry), expiry, fence.
    fn check(
        &self,
        row: &LeaseRow,
        key: &LeaseKey,
        commit_retry: bool,
    ) -> Result<Check, StoreError> {
        let refuse = |e| Ok(Check::Refused(e));
        if row.token.as_slice() != key.token.as_bytes() {
            return refuse(LeaseError::WrongToken {
                space: key.space.clone(),
                seq: key.seq,
            });
        }
        if row.state != state::LEASED {
            if commit_retry && row.state == state::COMMITTED {
                return Ok(Check::AlreadyCommitted);
            }
            let state = slot_state(row.state, row.gap_reason.as_deref())?;
            return refuse(LeaseError::Resolved {
                space: key.space.clone(),
                seq: key.seq,
                state,
            });
        }
        if row.expires_at <= self.now.as_micros() {
            return refuse(LeaseError::Expired {
                space: key.space.clone(),
                seq: key.seq,
                expired_at: Timestamp(row.expires_at),
                now: self.now,
            });
        }
        // Fence (I9): a slot granted under a resource lease may only be written while the
        // fence epoch is the resource's current epoch. Resource leases and their epochs do
        // not exist in this store yet (a later issue adds them, with their table); until
        // then the fence is recorded on the slot (fence_resource, fence_epoch) but cannot be
        // checked here, nor in the commit fast path's guard.
        Ok(Check::Live)
    }

    /// Resolve `key` to a cached space and a seq column value, or refuse: the space does not
    /// exist ([`LeaseError::UnknownSpace`]), or the seq is beyond SQLite's range, so no such
    /// slot can exist ([`LeaseError::UnknownSlot`]).
    async fn locate(
        &mut self,
        conn: &mut SqliteConnection,
        key: &LeaseKey,
    ) -> Result<Result<Target, LeaseError>, StoreError> {
        let unknown = || LeaseError::UnknownSlot {
            space: key.space.clone(),
            seq: key.seq,
        };
        let Some(space) = self.space(conn, &key.space).await? else {
            return Ok(Err(LeaseError::UnknownSpace {
                space: key.space.clone(),
            }));
        };
        Ok(seq_param(key.seq)
            .map(|seq| Target { space, seq })
            .ok_or_else(unknown))
    }

    /// Load the lease columns of a slot.
    async fn load(
        &self,
        conn: &mut SqliteConnection,
        target: &Target,
    ) -> Result<Option<LeaseRow>, StoreError> {
        sqlx::query_as::<_, LeaseRow>(
            "SELECT state, token, expires_at, gap_reason, operation_id, \
             (partial IS NOT NULL OR result_kind IS NOT NULL) AS has_work \
             FROM slots WHERE space_id = ?1 AND seq = ?2",
        )
        .bind(self.space_id(target))
        .bind(target.seq)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_sqlx)
    }

    /// The cache index of `name`, reading the space's row on first use in this batch;
    /// `None` when the space does not exist.
    async fn space(
        &mut self,
        conn: &mut SqliteConnection,
        name: &SpaceName,
    ) -> Result<Option<usize>, StoreError> {
        if let Some(i) = self.spaces.iter().position(|s| &s.name == name) {
            return Ok(self.spaces[i].row.as_ref().map(|_| i));
        }
        let row: Option<(i64, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT id, last_seq, watermark, in_flight, capacity FROM spaces WHERE name = ?1",
        )
        .bind(name.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_sqlx)?;
        let row = match row {
            Some((id, last_seq, watermark, in_flight, capacity)) => Some(SpaceRow {
                id,
                last_seq: to_u64("last_seq", last_seq)?,
                watermark: to_u64("watermark", watermark)?,
                in_flight: to_u32("in_flight", in_flight)?,
                capacity: to_u32("capacity", capacity)?,
                dirty: false,
                freed: false,
            }),
            None => None,
        };
        let exists = row.is_some();
        self.spaces.push(CachedSpace {
            name: name.clone(),
            row,
        });
        Ok(exists.then_some(self.spaces.len() - 1))
    }

    fn row_mut(&mut self, index: usize) -> &mut SpaceRow {
        self.spaces[index]
            .row
            .as_mut()
            .expect("indices handed out by space() point at existing spaces")
    }

    fn space_id(&self, target: &Target) -> i64 {
        self.spaces[target.space]
            .row
            .as_ref()
            .expect("indices handed out by space() point at existing spaces")
            .id
    }

    /// A slot of the space at `index` resolved in this batch (capacity freed).
    fn left_leased(&mut self, index: usize) {
        let space = self.row_mut(index);
        space.in_flight = space.in_flight.saturating_sub(1);
        space.dirty = true;
        space.freed = true;
        let name = self.spaces[index].name.clone();
        self.outcome.note_freed(&name);
    }

    /// Recompute watermarks where slots resolved and write changed space rows back.
    async fn finish(&mut self, conn: &mut SqliteConnection) -> Result<(), StoreError> {
        for cached in &mut self.spaces {
            let Some(space) = cached.row.as_mut() else {
                continue;
            };
            if space.freed {
                let lowest_leased: Option<i64> = sqlx::query_scalar(
                    "SELECT MIN(seq) FROM slots WHERE space_id = ?1 AND state = ?2",
                )
                .bind(space.id)
                .bind(state::LEASED)
                .fetch_one(&mut *conn)
                .await
                .map_err(map_sqlx)?;
                let watermark = match lowest_leased {
                    Some(seq) => to_u64("seq", seq)?.saturating_sub(1),
                    None => space.last_seq,
                };
                // The watermark only moves forward (I7): every slot at or below it was
                // resolved, and resolved slots never change.
                space.watermark = space.watermark.max(watermark);
                self.outcome.set_watermark(&cached.name, space.watermark);
            }
            if space.dirty {
                sqlx::query(
                    "UPDATE spaces SET last_seq = ?1, watermark = ?2, in_flight = ?3 WHERE id = ?4",
                )
                .bind(
                    i64::try_from(space.last_seq)
                        .map_err(|_| corrupt_value("last_seq", space.last_seq))?,
                )
                .bind(
                    i64::try_from(space.watermark)
                        .map_err(|_| corrupt_value("watermark", space.watermark))?,
                )
                .bind(i64::from(space.in_flight))
                .bind(space.id)
                .execute(&mut *conn)
                .await
                .map_err(map_sqlx)?;
            }
        }
        Ok(())
    }
}
