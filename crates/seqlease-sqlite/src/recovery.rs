//! Recovery in the SQLite store: claiming expired slots, resolving them, and the queue of
//! parked work (migration `0002_recovery.sql`).
//!
//! A lease whose `expires_at` has passed by the store clock belongs to recovery. A cleaner
//! first **claims** such slots: in one `BEGIN IMMEDIATE` transaction on the write
//! connection (so claims serialize with every batch), it checks that no other cleaner holds
//! a live claim in the space, then stamps up to `limit` claimable slots, lowest seq first,
//! with a fresh claim token (`randomblob(16)`) and expiry in one `UPDATE … RETURNING` whose
//! scan walks the partial index of LEASED slots in seq order. The expiry (on the first
//! claim) and the claim are recorded in the lease history.
//!
//! **Resolving** claimed slots is one transaction too: each item is checked and written in
//! order, exactly as the in-memory reference store does it (the claim is live by the store
//! clock, the operation id is not committed elsewhere (I6), a fenced lease's epoch is still
//! current or its work is parked for an operator instead (I9, `check_recovery_fence`), then
//! recover in place, at a new seq, or gap and park), and each touched space's counters and
//! watermark are written back
//! at the end with the statement the batches use.
//!
//! **Settling** parked work (re-sequence, failed attempt, retry, discard) applies the
//! actions in order with the state machine of `seqlease_core::recovery` (`check_parked`,
//! `apply_parked`) that every store shares.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use seqlease_core::columns::{body_from_columns, fence_from_columns, recovery_to_json};
use seqlease_core::recovery::{action_name, apply_parked, check_parked, check_recovery_fence};
use seqlease_core::{
    BatchOutcome, ClaimKey, ClaimRequest, ExpiredSlot, Fence, GapReason, LeaseError, LeaseRecord,
    OperationBody, ParkedAction, ParkedCommand, ParkedQuery, ParkedState, ParkedWork, Placement,
    RecoveryInfo, RecoveryType, Reply, Resolution, Resolve, ResolveOutcome, SlotEventKind,
    SpaceName, StoreError, Timestamp, Token,
};
use sqlx::Row;
use sqlx::sqlite::SqlitePool;

use crate::codec::{epoch_to_column, seq_param, state, to_u32, to_u64};
use crate::error::{BACKEND, WriteError, corrupt_value, map_sqlx};
use crate::execute::sql::write_space_counters;
use crate::history::record;
use crate::resources::epoch_in;

mod late;
pub(crate) use late::commit_late;

fn space_name(stored: &str) -> Result<SpaceName, StoreError> {
    SpaceName::new(stored).map_err(|e| StoreError::Corrupt {
        backend: BACKEND,
        detail: format!("stored space name is invalid: {e}"),
    })
}

fn seq_column(what: &str, v: u64) -> Result<i64, StoreError> {
    seq_param(v).ok_or_else(|| corrupt_value(what, v))
}

// ---- backlog and claims ----

/// Expired, unclaimed LEASED slots per space (claims that expired count as unclaimed).
pub(crate) async fn expired_backlog(
    readers: &SqlitePool,
    now: Timestamp,
) -> Result<Vec<(SpaceName, u64)>, StoreError> {
    let rows = sqlx::query(
        "SELECT sp.name, count(*) FROM spaces sp JOIN slots s INDEXED BY slots_leased \
         ON s.space_id = sp.id AND s.state = 0 \
         WHERE s.expires_at <= ?1 AND (s.claim_expires_at IS NULL OR s.claim_expires_at <= ?1) \
         GROUP BY sp.name ORDER BY sp.name",
    )
    .bind(now.as_micros())
    .fetch_all(readers)
    .await
    .map_err(map_sqlx)?;
    rows.iter()
        .map(|row| {
            let name: String = row.try_get(0).map_err(map_sqlx)?;
            let n: i64 = row.try_get(1).map_err(map_sqlx)?;
            Ok((space_name(&name)?, to_u64("backlog", n)?))
        })
        .collect()
}

/// Whether another cleaner holds a live claim in the space (then nobody else may claim).
const OTHER_CLEANER_BUSY: &str = "SELECT EXISTS (SELECT 1 FROM slots INDEXED BY slots_leased \
     WHERE space_id = ?1 AND state = 0 AND claim_expires_at > ?2 AND claimed_by <> ?3)";

/// Stamp up to `?5` claimable slots, lowest seq first, with a fresh claim.
const CLAIM: &str = "UPDATE slots SET claim_token = randomblob(16), claimed_by = ?3, \
     claim_expires_at = ?4, attempts = attempts + 1 \
     WHERE space_id = ?1 AND seq IN (SELECT seq FROM slots INDEXED BY slots_leased \
         WHERE space_id = ?1 AND state = 0 AND expires_at <= ?2 \
           AND (claim_expires_at IS NULL OR claim_expires_at <= ?2 OR claimed_by = ?3) \
         ORDER BY seq LIMIT ?5) \
     RETURNING seq, operation_id, projection_type, owner, fence_resource, fence_epoch, \
         leased_at, expires_at, renewals, partial, result_kind, result_payload, \
         result_source_event, attempts, claim_token";

/// Claim up to `limit` expired slots of a space; see the module docs.
pub(crate) fn claim_expired(
    conn: &mut Connection,
    clock: &dyn seqlease_core::Clock,
    req: &ClaimRequest,
) -> Result<Vec<ExpiredSlot>, WriteError> {
    let limit = i64::try_from(req.limit).unwrap_or(i64::MAX);
    if limit == 0 {
        return Ok(Vec::new());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = clock.now(); // under the write lock (see `execute`)
    let space_id: Option<i64> = tx
        .prepare_cached("SELECT id FROM spaces WHERE name = ?1")?
        .query_row([req.space.as_str()], |r| r.get(0))
        .optional()?;
    let Some(space_id) = space_id else {
        return Ok(Vec::new());
    };
    // One cleaner per space at a time keeps recovery ordered (I8).
    let busy: bool = tx.prepare_cached(OTHER_CLEANER_BUSY)?.query_row(
        params![space_id, now.as_micros(), req.cleaner.as_str()],
        |r| r.get(0),
    )?;
    if busy {
        return Ok(Vec::new());
    }
    let claim_expires_at = now.plus(req.ttl);
    let mut claimed = Vec::new();
    {
        let mut stmt = tx.prepare_cached(CLAIM)?;
        let mut rows = stmt.query(params![
            space_id,
            now.as_micros(),
            req.cleaner.as_str(),
            claim_expires_at.as_micros(),
            limit
        ])?;
        while let Some(row) = rows.next()? {
            let seq = to_u64("seq", row.get(0)?)?;
            let token: Vec<u8> = row.get(14)?;
            claimed.push(ExpiredSlot {
                lease: LeaseRecord {
                    space: req.space.clone(),
                    seq,
                    token: Token([0; 16]),
                    operation_id: row.get(1)?,
                    projection_type: row.get(2)?,
                    owner: row.get(3)?,
                    fence: fence_from_columns(row.get(4)?, row.get(5)?),
                    leased_at: Timestamp(row.get(6)?),
                    expires_at: Timestamp(row.get(7)?),
                    renewals: to_u32("renewals", row.get(8)?)?,
                },
                claim: ClaimKey {
                    space: req.space.clone(),
                    seq,
                    token: Token::from_slice(&token)
                        .ok_or_else(|| corrupt_value("claim token length", token.len()))?,
                },
                claim_expires_at,
                partial: row.get(9)?,
                result: body_from_columns(row.get(10)?, row.get(11)?, row.get(12)?),
                attempts: to_u32("attempts", row.get(13)?)?,
            });
        }
    }
    claimed.sort_by_key(|s| s.lease.seq);
    for slot in &claimed {
        let seq = seq_column("seq", slot.lease.seq)?;
        if slot.attempts == 1 {
            let (at, owner) = (slot.lease.expires_at, slot.lease.owner.as_str());
            record(&tx, space_id, seq, at, SlotEventKind::Expired, owner, None)?;
        }
        let detail = format!("attempt {}", slot.attempts);
        let cleaner = req.cleaner.as_str();
        record(
            &tx,
            space_id,
            seq,
            now,
            SlotEventKind::Claimed,
            cleaner,
            Some(&detail),
        )?;
    }
    tx.commit()?;
    Ok(claimed)
}

// ---- the spaces a recovery transaction touches ----

/// A space row as a recovery transaction changes it.
struct TouchedSpace {
    id: i64,
    name: SpaceName,
    last_seq: u64,
    in_flight: u32,
    watermark: u64,
    /// Slots that left LEASED here, or slots appended already resolved.
    dirty: bool,
}

/// The spaces of one recovery transaction, loaded on first use.
#[derive(Default)]
struct Spaces(Vec<TouchedSpace>);

impl Spaces {
    /// The index of the space called `name`, loading its row; `None` when it does not exist.
    fn get(&mut self, conn: &Connection, name: &SpaceName) -> Result<Option<usize>, WriteError> {
        if let Some(i) = self.0.iter().position(|s| &s.name == name) {
            return Ok(Some(i));
        }
        let row: Option<(i64, i64, i64, i64)> = conn
            .prepare_cached(
                "SELECT id, last_seq, in_flight, watermark FROM spaces WHERE name = ?1",
            )?
            .query_row([name.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()?;
        let Some((id, last_seq, in_flight, watermark)) = row else {
            return Ok(None);
        };
        self.0.push(TouchedSpace {
            id,
            name: name.clone(),
            last_seq: to_u64("last_seq", last_seq)?,
            in_flight: to_u32("in_flight", in_flight)?,
            watermark: to_u64("watermark", watermark)?,
            dirty: false,
        });
        Ok(Some(self.0.len() - 1))
    }

    /// Write back each changed space's counters and recomputed watermark, and record the
    /// watermark in `outcome` (also for spaces where a slot was only appended).
    fn write(self, conn: &Connection, outcome: &mut BatchOutcome) -> Result<(), WriteError> {
        for space in self.0.into_iter().filter(|s| s.dirty) {
            let watermark = write_space_counters(
                conn,
                space.id,
                space.last_seq,
                space.in_flight,
                space.watermark,
            )?;
            if outcome.progress.iter().any(|p| p.space == space.name) {
                outcome.set_watermark(&space.name, watermark);
            } else {
                outcome.note_watermark(&space.name, watermark);
            }
        }
        Ok(())
    }
}

/// The seq where `operation_id` is committed in the space, if it is (I6).
fn committed_at(
    conn: &Connection,
    space_id: i64,
    operation_id: &str,
) -> Result<Option<u64>, WriteError> {
    let seq: Option<i64> = conn
        .prepare_cached("SELECT seq FROM slots WHERE space_id = ?1 AND committed_op_id = ?2")?
        .query_row(params![space_id, operation_id], |r| r.get(0))
        .optional()?;
    Ok(seq.map(|s| to_u64("seq", s)).transpose()?)
}

/// A LEASED slot becomes COMMITTED with recovered work; its recorded work and claim go.
const RECOVER_IN_PLACE: &str = "UPDATE slots SET state = 1, resolved_at = ?1, \
     committed_op_id = operation_id, op_kind = ?2, op_payload = ?3, op_source_event = ?4, \
     recovery = ?5, partial = NULL, result_kind = NULL, result_payload = NULL, \
     result_source_event = NULL, claim_token = NULL, claim_expires_at = NULL \
     WHERE space_id = ?6 AND seq = ?7 AND state = 0";

/// A LEASED slot becomes a gap; its recorded work and claim go.
const GAP: &str = "UPDATE slots SET state = 2, resolved_at = ?1, gap_reason = ?2, \
     superseded_by = ?3, gap_detail = ?4, partial = NULL, result_kind = NULL, \
     result_payload = NULL, result_source_event = NULL, claim_token = NULL, \
     claim_expires_at = NULL \
     WHERE space_id = ?5 AND seq = ?6 AND state = 0";

/// A slot allocated already COMMITTED (placement at a new seq, re-sequenced work):
/// `leased_at = expires_at = resolved_at = now`.
const APPEND_COMMITTED: &str = "INSERT INTO slots (space_id, seq, state, token, operation_id, \
     projection_type, owner, fence_resource, fence_epoch, leased_at, expires_at, renewals, \
     resolved_at, committed_op_id, op_kind, op_payload, op_source_event, recovery) \
     VALUES (?1, ?2, 1, randomblob(16), ?3, ?4, ?5, ?6, ?7, ?8, ?8, 0, ?8, ?3, ?9, ?10, ?11, ?12)";

fn expect_one(what: &str, changed: usize) -> Result<(), StoreError> {
    if changed == 1 {
        return Ok(());
    }
    Err(StoreError::Backend {
        backend: BACKEND,
        detail: format!(
            "{what}: expected to write 1 row, wrote {changed}; the transaction was rolled back"
        ),
    })
}

/// Turn a LEASED slot into a gap and free its capacity.
#[allow(clippy::too_many_arguments)]
fn close_as_gap(
    conn: &Connection,
    spaces: &mut Spaces,
    index: usize,
    seq: i64,
    now: Timestamp,
    reason: GapReason,
    superseded_by: Option<u64>,
    detail: Option<&str>,
    outcome: &mut BatchOutcome,
) -> Result<(), WriteError> {
    let space = &mut spaces.0[index];
    let by = superseded_by
        .map(|s| seq_column("superseded_by", s))
        .transpose()?;
    let changed = conn.prepare_cached(GAP)?.execute(params![
        now.as_micros(),
        reason.as_str(),
        by,
        detail,
        space.id,
        seq
    ])?;
    expect_one("resolve a claimed slot", changed)?;
    space.in_flight = space.in_flight.saturating_sub(1);
    space.dirty = true;
    outcome.note_freed(&space.name);
    Ok(())
}

/// What an appended slot holds.
struct Append<'a> {
    operation_id: &'a str,
    projection_type: &'a str,
    owner: &'a str,
    fence: Option<&'a Fence>,
    body: &'a OperationBody,
    recovery: &'a RecoveryInfo,
}

/// Allocate the next seq of the space already COMMITTED; returns it.
fn append_committed(
    conn: &Connection,
    spaces: &mut Spaces,
    index: usize,
    now: Timestamp,
    a: Append<'_>,
) -> Result<u64, WriteError> {
    let space = &mut spaces.0[index];
    let n = space.last_seq + 1;
    let inserted = conn.prepare_cached(APPEND_COMMITTED)?.execute(params![
        space.id,
        seq_column("seq", n)?,
        a.operation_id,
        a.projection_type,
        a.owner,
        a.fence.map(|f| f.resource.as_str()),
        a.fence.map(|f| epoch_to_column(f.epoch)),
        now.as_micros(),
        a.body.kind.as_str(),
        a.body.payload.as_slice(),
        a.body.source_event_id.as_deref(),
        recovery_to_json(a.recovery, BACKEND)?,
    ])?;
    expect_one("append a recovered slot", inserted)?;
    space.last_seq = n;
    space.dirty = true;
    Ok(n)
}

// ---- resolve ----

/// Resolve claimed slots in one transaction, in order; see the module docs.
pub(crate) fn resolve(
    conn: &mut Connection,
    clock: &dyn seqlease_core::Clock,
    items: Vec<Resolve>,
) -> Result<BatchOutcome, WriteError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = clock.now(); // under the write lock (see `execute`)
    let mut outcome = BatchOutcome::default();
    outcome.replies.reserve(items.len());
    let mut spaces = Spaces::default();
    for item in items {
        let reply = resolve_one(&tx, now, item, &mut spaces, &mut outcome)?;
        outcome.replies.push(reply);
    }
    spaces.write(&tx, &mut outcome)?;
    tx.commit()?;
    Ok(outcome)
}

/// A claimed slot as loaded for resolving.
struct ClaimedSlot {
    leased: bool,
    claim_token: Option<Vec<u8>>,
    claim_expires_at: Option<i64>,
    operation_id: String,
    projection_type: String,
    owner: String,
    fence: Option<Fence>,
    partial: Option<Vec<u8>>,
    result: Option<OperationBody>,
}

const LOAD_CLAIMED: &str = "SELECT state, claim_token, claim_expires_at, operation_id, \
     projection_type, owner, fence_resource, fence_epoch, partial, result_kind, \
     result_payload, result_source_event FROM slots WHERE space_id = ?1 AND seq = ?2";

fn resolve_one(
    conn: &Connection,
    now: Timestamp,
    item: Resolve,
    spaces: &mut Spaces,
    outcome: &mut BatchOutcome,
) -> Result<Result<Reply, LeaseError>, WriteError> {
    let name = item.claim.space.clone();
    let seq = item.claim.seq;
    let Some(index) = spaces.get(conn, &name)? else {
        return Ok(Err(LeaseError::UnknownSpace { space: name }));
    };
    let space_id = spaces.0[index].id;
    let unknown = || LeaseError::UnknownSlot {
        space: name.clone(),
        seq,
    };
    let Some(seq_col) = seq_param(seq) else {
        return Ok(Err(unknown()));
    };
    let slot = conn
        .prepare_cached(LOAD_CLAIMED)?
        .query_row(params![space_id, seq_col], |r| {
            Ok(ClaimedSlot {
                leased: r.get::<_, i64>(0)? == state::LEASED,
                claim_token: r.get(1)?,
                claim_expires_at: r.get(2)?,
                operation_id: r.get(3)?,
                projection_type: r.get(4)?,
                owner: r.get(5)?,
                fence: fence_from_columns(r.get(6)?, r.get(7)?),
                partial: r.get(8)?,
                result: body_from_columns(r.get(9)?, r.get(10)?, r.get(11)?),
            })
        })
        .optional()?;
    let Some(slot) = slot else {
        return Ok(Err(unknown()));
    };
    let holds = slot.leased
        && slot.claim_token.as_deref() == Some(&item.claim.token.as_bytes()[..])
        && slot.claim_expires_at.is_some_and(|t| t > now.as_micros());
    if !holds {
        return Ok(Err(LeaseError::ClaimLost { space: name, seq }));
    }
    if let Some(existing) = committed_at(conn, space_id, &slot.operation_id)? {
        let superseded = GapReason::Superseded;
        close_as_gap(
            conn,
            spaces,
            index,
            seq_col,
            now,
            superseded,
            Some(existing),
            None,
            outcome,
        )?;
        return Ok(Ok(Reply::Resolved(ResolveOutcome::Duplicate { existing })));
    }
    // The fence is read under this transaction's write lock: no holder change can slip
    // between the check and the write (I9).
    let current_epoch = match &slot.fence {
        Some(f) => epoch_in(conn, &f.resource)?,
        None => 0,
    };
    let checked = check_recovery_fence(item.resolution, slot.fence.as_ref(), current_epoch);
    let resolved = match checked.resolution {
        Resolution::Recover {
            body,
            recovery_type,
            placement,
        } => {
            let recovery = RecoveryInfo {
                original_seq: seq,
                original_operation_id: slot.operation_id.clone(),
                recovered_at: now,
                recovery_type,
            };
            let at = match placement {
                Placement::InPlace => {
                    let changed = conn.prepare_cached(RECOVER_IN_PLACE)?.execute(params![
                        now.as_micros(),
                        body.kind.as_str(),
                        body.payload.as_slice(),
                        body.source_event_id.as_deref(),
                        recovery_to_json(&recovery, BACKEND)?,
                        space_id,
                        seq_col,
                    ])?;
                    expect_one("recover a claimed slot", changed)?;
                    let space = &mut spaces.0[index];
                    space.in_flight = space.in_flight.saturating_sub(1);
                    space.dirty = true;
                    outcome.note_freed(&space.name);
                    seq
                }
                Placement::NewSeq => {
                    let append = Append {
                        operation_id: &slot.operation_id,
                        projection_type: &slot.projection_type,
                        owner: &slot.owner,
                        fence: slot.fence.as_ref(),
                        body: &body,
                        recovery: &recovery,
                    };
                    let n = append_committed(conn, spaces, index, now, append)?;
                    let superseded = GapReason::Superseded;
                    close_as_gap(
                        conn,
                        spaces,
                        index,
                        seq_col,
                        now,
                        superseded,
                        Some(n),
                        None,
                        outcome,
                    )?;
                    n
                }
            };
            ResolveOutcome::Recovered { seq: at }
        }
        Resolution::Gap { detail, park } => {
            let parked = if park && (slot.partial.is_some() || slot.result.is_some()) {
                let (kind, payload, source) = match &slot.result {
                    Some(b) => (
                        Some(b.kind.as_str()),
                        Some(b.payload.as_slice()),
                        b.source_event_id.as_deref(),
                    ),
                    None => (None, None, None),
                };
                let id: i64 = conn
                    .prepare_cached(
                        "INSERT INTO parked (space_id, original_seq, operation_id, \
                         projection_type, partial, result_kind, result_payload, \
                         result_source_event, attempts, state, note, parked_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, ?9, ?10, ?11) \
                         RETURNING id",
                    )?
                    .query_row(
                        params![
                            space_id,
                            seq_col,
                            slot.operation_id.as_str(),
                            slot.projection_type.as_str(),
                            slot.partial.as_deref(),
                            kind,
                            payload,
                            source,
                            checked.park_state.as_str(),
                            detail.as_deref(),
                            now.as_micros(),
                        ],
                        |r| r.get(0),
                    )?;
                let id = to_u64("parked id", id)?;
                let note = format!("recovery queue item {id}");
                let kind = SlotEventKind::Parked;
                record(conn, space_id, seq_col, now, kind, "recovery", Some(&note))?;
                Some(id)
            } else {
                None
            };
            let expired = GapReason::Expired;
            close_as_gap(
                conn,
                spaces,
                index,
                seq_col,
                now,
                expired,
                None,
                detail.as_deref(),
                outcome,
            )?;
            ResolveOutcome::Gapped { parked }
        }
    };
    Ok(Ok(Reply::Resolved(resolved)))
}

// ---- the recovery queue ----

/// The columns of a parked item, joined with its space's name.
const PARKED_COLUMNS: &str = "p.id, sp.name, p.space_id, p.original_seq, p.operation_id, \
     p.projection_type, p.partial, p.result_kind, p.result_payload, p.result_source_event, \
     p.attempts, p.state, p.note, p.parked_at, p.resequenced_at_seq";

/// A parked row as stored, whichever driver read it.
struct RawParked {
    id: i64,
    space: String,
    space_id: i64,
    original_seq: i64,
    operation_id: String,
    projection_type: String,
    partial: Option<Vec<u8>>,
    result_kind: Option<String>,
    result_payload: Option<Vec<u8>>,
    result_source_event: Option<String>,
    attempts: i64,
    state: String,
    note: Option<String>,
    parked_at: i64,
    resequenced_at_seq: Option<i64>,
}

fn parked_state(stored: &str) -> Result<ParkedState, StoreError> {
    [
        ParkedState::Parked,
        ParkedState::Manual,
        ParkedState::Resequenced,
        ParkedState::Discarded,
    ]
    .into_iter()
    .find(|s| s.as_str() == stored)
    .ok_or_else(|| corrupt_value("recovery queue state", format!("{stored:?}")))
}

impl RawParked {
    fn decode(self) -> Result<(i64, ParkedWork), StoreError> {
        let work = ParkedWork {
            id: to_u64("parked id", self.id)?,
            space: space_name(&self.space)?,
            original_seq: to_u64("original_seq", self.original_seq)?,
            operation_id: self.operation_id,
            projection_type: self.projection_type,
            partial: self.partial,
            result: body_from_columns(
                self.result_kind,
                self.result_payload,
                self.result_source_event,
            ),
            attempts: to_u32("attempts", self.attempts)?,
            state: parked_state(&self.state)?,
            note: self.note,
            parked_at: Timestamp(self.parked_at),
            resequenced_at_seq: self
                .resequenced_at_seq
                .map(|s| to_u64("resequenced_at_seq", s))
                .transpose()?,
        };
        Ok((self.space_id, work))
    }

    fn from_rusqlite(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawParked> {
        Ok(RawParked {
            id: r.get(0)?,
            space: r.get(1)?,
            space_id: r.get(2)?,
            original_seq: r.get(3)?,
            operation_id: r.get(4)?,
            projection_type: r.get(5)?,
            partial: r.get(6)?,
            result_kind: r.get(7)?,
            result_payload: r.get(8)?,
            result_source_event: r.get(9)?,
            attempts: r.get(10)?,
            state: r.get(11)?,
            note: r.get(12)?,
            parked_at: r.get(13)?,
            resequenced_at_seq: r.get(14)?,
        })
    }

    fn from_sqlx(r: &sqlx::sqlite::SqliteRow) -> Result<RawParked, sqlx::Error> {
        Ok(RawParked {
            id: r.try_get(0)?,
            space: r.try_get(1)?,
            space_id: r.try_get(2)?,
            original_seq: r.try_get(3)?,
            operation_id: r.try_get(4)?,
            projection_type: r.try_get(5)?,
            partial: r.try_get(6)?,
            result_kind: r.try_get(7)?,
            result_payload: r.try_get(8)?,
            result_source_event: r.try_get(9)?,
            attempts: r.try_get(10)?,
            state: r.try_get(11)?,
            note: r.try_get(12)?,
            parked_at: r.try_get(13)?,
            resequenced_at_seq: r.try_get(14)?,
        })
    }
}

/// List recovery-queue items, oldest first.
pub(crate) async fn parked(
    readers: &SqlitePool,
    query: &ParkedQuery,
) -> Result<Vec<ParkedWork>, StoreError> {
    let states = (!query.states.is_empty()).then(|| {
        serde_json::Value::from(query.states.iter().map(|s| s.as_str()).collect::<Vec<_>>())
            .to_string()
    });
    let limit = if query.limit == 0 {
        i64::MAX
    } else {
        i64::try_from(query.limit).unwrap_or(i64::MAX)
    };
    let sql = format!(
        "SELECT {PARKED_COLUMNS} FROM parked p JOIN spaces sp ON sp.id = p.space_id \
         WHERE (?1 IS NULL OR sp.name = ?1) \
           AND (?2 IS NULL OR p.state IN (SELECT value FROM json_each(?2))) \
         ORDER BY p.id LIMIT ?3"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(query.space.as_ref().map(|s| s.as_str()))
        .bind(states)
        .bind(limit)
        .fetch_all(readers)
        .await
        .map_err(map_sqlx)?;
    rows.iter()
        .map(|row| {
            RawParked::from_sqlx(row)
                .map_err(map_sqlx)?
                .decode()
                .map(|(_, w)| w)
        })
        .collect()
}

/// Apply actions to recovery-queue items in one transaction, in order.
pub(crate) fn settle_parked(
    conn: &mut Connection,
    clock: &dyn seqlease_core::Clock,
    commands: Vec<ParkedCommand>,
) -> Result<BatchOutcome, WriteError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = clock.now(); // under the write lock (see `execute`)
    let mut outcome = BatchOutcome::default();
    outcome.replies.reserve(commands.len());
    let mut spaces = Spaces::default();
    let load = format!(
        "SELECT {PARKED_COLUMNS} FROM parked p JOIN spaces sp ON sp.id = p.space_id \
         WHERE p.id = ?1"
    );
    for command in commands {
        let raw = match i64::try_from(command.id) {
            Ok(id) => tx
                .prepare_cached(&load)?
                .query_row([id], RawParked::from_rusqlite)
                .optional()?,
            Err(_) => None,
        };
        let Some(raw) = raw else {
            outcome.replies.push(Err(LeaseError::Parked {
                id: command.id,
                action: action_name(&command.action),
                reason: "no such item in the recovery queue".into(),
            }));
            continue;
        };
        let (space_id, mut item) = raw.decode()?;
        if let Err(e) = check_parked(&item, &command) {
            outcome.replies.push(Err(e));
            continue;
        }
        let original_seq = seq_column("original_seq", item.original_seq)?;
        if let ParkedAction::Resequence {
            body,
            recovery_type,
        } = &command.action
        {
            let Some(index) = spaces.get(&tx, &item.space)? else {
                outcome.replies.push(Err(LeaseError::UnknownSpace {
                    space: item.space.clone(),
                }));
                continue;
            };
            let at = resequence(&tx, &mut spaces, index, &item, body, *recovery_type, now)?;
            item.state = ParkedState::Resequenced;
            item.resequenced_at_seq = Some(at);
            item.note = Some(format!("re-sequenced by {}", command.actor));
            let detail = format!("parked work re-sequenced at seq {at}");
            let kind = SlotEventKind::Recovered;
            record(
                &tx,
                space_id,
                original_seq,
                now,
                kind,
                &command.actor,
                Some(&detail),
            )?;
        } else {
            apply_parked(&mut item, &command);
            if matches!(command.action, ParkedAction::Retry | ParkedAction::Discard) {
                let kind = SlotEventKind::Manual;
                let detail = item.note.as_deref();
                record(
                    &tx,
                    space_id,
                    original_seq,
                    now,
                    kind,
                    &command.actor,
                    detail,
                )?;
            }
        }
        let updated = tx
            .prepare_cached(
                "UPDATE parked SET attempts = ?2, state = ?3, note = ?4, \
                 resequenced_at_seq = ?5 WHERE id = ?1",
            )?
            .execute(params![
                i64::try_from(item.id).map_err(|_| corrupt_value("parked id", item.id))?,
                i64::from(item.attempts),
                item.state.as_str(),
                item.note.as_deref(),
                item.resequenced_at_seq
                    .map(|s| seq_column("resequenced_at_seq", s))
                    .transpose()?,
            ])?;
        expect_one("update a recovery queue item", updated)?;
        outcome.replies.push(Ok(Reply::Parked(Box::new(item))));
    }
    spaces.write(&tx, &mut outcome)?;
    tx.commit()?;
    Ok(outcome)
}

/// Commit parked work at a fresh seq (or find its operation already committed); returns
/// where it lives.
fn resequence(
    conn: &Connection,
    spaces: &mut Spaces,
    index: usize,
    item: &ParkedWork,
    body: &OperationBody,
    recovery_type: RecoveryType,
    now: Timestamp,
) -> Result<u64, WriteError> {
    let space_id = spaces.0[index].id;
    if let Some(existing) = committed_at(conn, space_id, &item.operation_id)? {
        return Ok(existing);
    }
    let recovery = RecoveryInfo {
        original_seq: item.original_seq,
        original_operation_id: item.operation_id.clone(),
        recovered_at: now,
        recovery_type,
    };
    let append = Append {
        operation_id: &item.operation_id,
        projection_type: &item.projection_type,
        owner: "recovery",
        fence: None,
        body,
        recovery: &recovery,
    };
    append_committed(conn, spaces, index, now, append)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use seqlease_core::ManualClock;

    use super::*;
    use crate::history::INSERT_OWNER_EVENT;
    use crate::{SqliteOptions, SqliteStore};

    /// Every statement recovery runs on the write connection per slot or per space.
    const STATEMENTS: [&str; 7] = [
        OTHER_CLEANER_BUSY,
        CLAIM,
        LOAD_CLAIMED,
        RECOVER_IN_PLACE,
        GAP,
        INSERT_OWNER_EVENT,
        "SELECT seq FROM slots WHERE space_id = ?1 AND committed_op_id = ?2",
    ];

    /// Recovery finds its rows through indexes: no statement scans the slots table, which
    /// grows without bound (the claim scan walks the partial index of LEASED slots).
    #[tokio::test]
    async fn recovery_never_scans_the_slots_table() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let opts = SqliteOptions {
            clock: Arc::new(ManualClock::new()),
            ..SqliteOptions::default()
        };
        let store = SqliteStore::open(&dir.path().join("plan.db"), opts)
            .await
            .expect("open");
        let plans = store
            .inner
            .writer
            .run(|conn| {
                let mut plans = Vec::new();
                for sql in STATEMENTS {
                    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                    let mut rows = stmt.raw_query();
                    let mut steps = Vec::new();
                    while let Some(row) = rows.next()? {
                        steps.push(row.get::<_, String>(3)?);
                    }
                    plans.push((sql, steps));
                }
                Ok(plans)
            })
            .await
            .expect("explain");
        for (sql, steps) in &plans {
            let full_scan = |s: &String| s.starts_with("SCAN slots") && !s.contains("slots_leased");
            assert!(!steps.iter().any(full_scan), "{sql}\n{steps:#?}");
            assert!(
                steps.iter().any(|s| s.starts_with("SEARCH ")),
                "{sql}\n{steps:#?}"
            );
        }
        store.close().await;
    }
}
