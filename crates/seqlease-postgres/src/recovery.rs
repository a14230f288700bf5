//! Recovery in the PostgreSQL store: claiming expired slots, resolving them, and the queue
//! of parked work (migration `0002_recovery.sql`).
//!
//! A lease whose `expires_at` has passed by the store clock belongs to recovery. A cleaner
//! first **claims** such slots: under the space row lock (the same `SELECT … FOR UPDATE` that
//! every batch takes first, so claims serialize with grants and commits), it checks that no
//! other cleaner holds a live claim in the space, then stamps up to `limit` claimable slots,
//! lowest seq first, with a fresh claim token and expiry in one `UPDATE … FROM (SELECT …
//! ORDER BY seq LIMIT n FOR UPDATE SKIP LOCKED)`. The scan walks the partial index of LEASED
//! slots in seq order.
//!
//! **Resolving** claimed slots is one transaction: lock the spaces (name order), read the
//! clock after the locks are held, load the named slots with the seq where each operation id
//! is already committed (I6) and the current epoch of every resource their fences name (`FOR
//! SHARE`, as commits read them: a change of holder waits for this transaction, I9), decide
//! every item in memory exactly as the in-memory reference store does (a stale fence parks
//! the work for an operator instead of committing it, `check_recovery_fence`), then write with set-based statements: one `UPDATE … FROM unnest(…)` for the
//! resolved slots, one `INSERT` for slots allocated already committed (placement at a new
//! seq), one `INSERT … RETURNING id` into `parked`, and one `UPDATE spaces` that recomputes
//! the watermark and sends `pg_notify` like a batch does.
//!
//! The cleanup service calls these back to back and measures their latency: they hand their
//! connection back to the pool before returning (`return_to_pool`, which pings it), so the
//! next call finds it idle instead of opening a new connection while the previous one is
//! still being returned in the background.
//!
//! **Settling** parked work (re-sequence, failed attempt, retry, discard) locks the spaces of
//! the items, then the items, and applies the actions in order with the state machine of
//! `seqlease_core::recovery` (`check_parked`, `apply_parked`) that every store shares.

use seqlease_core::columns::{body_from_columns, fence_from_columns, recovery_to_json};
use std::collections::HashMap;

use seqlease_core::recovery::{action_name, apply_parked, check_parked, check_recovery_fence};
use seqlease_core::time::duration_micros;
use seqlease_core::{
    BatchOutcome, ClaimKey, ClaimRequest, ExpiredSlot, Fence, GapReason, LeaseError, LeaseRecord,
    OperationBody, ParkedAction, ParkedCommand, ParkedQuery, ParkedState, ParkedWork, Placement,
    RecoveryInfo, Reply, Resolution, Resolve, ResolveOutcome, SlotEventKind, SpaceName, StoreError,
    Timestamp, Token,
};
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::{Connection, Row};

use crate::error::{BACKEND, corrupt_value, map_sqlx};
use crate::history::Events;
use crate::read::{epoch_from_column, epoch_to_column, state, to_u32, to_u64};
use crate::{CLOCK_SQL, Inner, NOW_SQL};

mod late;
pub(crate) use late::commit_late;

/// Tell the one-statement path the counters a committed recovery transaction left, so the
/// owner's next plain batch is not refused for a change this process made itself.
fn remember_counters(inner: &Inner, spaces: &[LockedSpace]) {
    for space in spaces.iter().filter(|s| s.dirty) {
        inner
            .spaces
            .update_counters(&space.name, space.last_seq, space.in_flight);
    }
}

/// A space row locked by a recovery transaction.
pub(crate) struct LockedSpace {
    pub(crate) id: i64,
    pub(crate) name: SpaceName,
    pub(crate) last_seq: u64,
    pub(crate) in_flight: u32,
    /// Slots that left LEASED here.
    pub(crate) freed: u32,
    /// Counters or slots changed: recompute the watermark.
    pub(crate) dirty: bool,
}

/// Lock the rows of the spaces named `names` (in name order, like batches), then read the
/// store clock: `now` is taken after the locks are held.
pub(crate) async fn lock_spaces(
    conn: &mut PgConnection,
    inner: &Inner,
    names: &[String],
) -> Result<(Vec<LockedSpace>, i64), StoreError> {
    let target = inner.target.as_str();
    let get = |e| map_sqlx(e, target);
    let mut sorted: Vec<&str> = names.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let rows = sqlx::query(
        "SELECT id, name, last_seq, in_flight FROM spaces WHERE name = ANY($1::text[]) \
         ORDER BY name FOR UPDATE",
    )
    .bind(&sorted)
    .fetch_all(&mut *conn)
    .await
    .map_err(get)?;
    let mut spaces = Vec::with_capacity(rows.len());
    for row in rows {
        let name: String = row.try_get(1).map_err(get)?;
        spaces.push(LockedSpace {
            id: row.try_get(0).map_err(get)?,
            name: space_name(&name)?,
            last_seq: to_u64("last_seq", row.try_get(2).map_err(get)?)?,
            in_flight: to_u32("in_flight", row.try_get(3).map_err(get)?)?,
            freed: 0,
            dirty: false,
        });
    }
    let now = clock(conn, inner).await?;
    Ok((spaces, now))
}

/// The store clock, read now (`clock_timestamp()`).
pub(crate) async fn clock(conn: &mut PgConnection, inner: &Inner) -> Result<i64, StoreError> {
    let (pinned, offset) = inner.clock.params();
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT {CLOCK_SQL}")))
        .bind(pinned)
        .bind(offset)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| map_sqlx(e, &inner.target))
}

fn space_name(stored: &str) -> Result<SpaceName, StoreError> {
    SpaceName::new(stored).map_err(|e| StoreError::Corrupt {
        backend: BACKEND,
        detail: format!("stored space name is invalid: {e}"),
    })
}

fn to_i64(what: &str, v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| corrupt_value(what, v))
}

/// Expired, unclaimed LEASED slots per space (claims that expired count as unclaimed).
pub(crate) async fn expired_backlog(inner: &Inner) -> Result<Vec<(SpaceName, u64)>, StoreError> {
    let target = inner.target.as_str();
    let get = |e| map_sqlx(e, target);
    let (pinned, offset) = inner.clock.params();
    let mut conn = inner.pool.acquire().await.map_err(get)?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH clk AS MATERIALIZED (SELECT {NOW_SQL} AS now) \
         SELECT sp.name, count(*) FROM clk, spaces sp JOIN slots s ON s.space_id = sp.id \
         WHERE s.state = 0 AND s.expires_at <= clk.now \
           AND (s.claim_expires_at IS NULL OR s.claim_expires_at <= clk.now) \
         GROUP BY sp.name ORDER BY sp.name"
    )))
    .bind(pinned)
    .bind(offset)
    .fetch_all(&mut *conn)
    .await
    .map_err(get)?;
    conn.return_to_pool().await;
    rows.iter()
        .map(|row| {
            let name: String = row.try_get(0).map_err(get)?;
            let n: i64 = row.try_get(1).map_err(get)?;
            Ok((space_name(&name)?, to_u64("backlog", n)?))
        })
        .collect()
}

/// Claim up to `limit` expired slots of a space; see the module docs.
pub(crate) async fn claim_expired(
    inner: &Inner,
    req: &ClaimRequest,
) -> Result<Vec<ExpiredSlot>, StoreError> {
    let target = inner.target.as_str();
    let get = |e| map_sqlx(e, target);
    let limit = i64::try_from(req.limit).unwrap_or(i64::MAX);
    if limit == 0 {
        return Ok(Vec::new());
    }
    let mut conn = inner.pool.acquire().await.map_err(get)?;
    let mut tx = conn.begin().await.map_err(get)?;
    let (spaces, now) = lock_spaces(&mut tx, inner, &[req.space.as_str().to_string()]).await?;
    let Some(space) = spaces.first() else {
        return Ok(Vec::new());
    };
    // One cleaner per space at a time keeps recovery ordered (I8).
    let busy: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM slots WHERE space_id = $1 AND state = 0 \
           AND claim_expires_at > $2 AND claimed_by <> $3)",
    )
    .bind(space.id)
    .bind(now)
    .bind(&req.cleaner)
    .fetch_one(&mut *tx)
    .await
    .map_err(get)?;
    if busy {
        return Ok(Vec::new());
    }
    let claim_expires_at = now.saturating_add(duration_micros(req.ttl));
    // `seq = ANY(ARRAY(…))`, not a join with the picked rows: the generic plan of a
    // prepared statement, planned while the table was small, joined them with a nested
    // loop over every slot of the space (O(backlog × batch), 1.5 s per batch of 500 on a
    // 10,000-slot cascade). An array of keys is always an index lookup.
    let rows = sqlx::query(
        "UPDATE slots s SET claim_token = uuid_send(gen_random_uuid()), claimed_by = $3,
                claim_expires_at = $5, attempts = s.attempts + 1
         WHERE s.space_id = $1 AND s.seq = ANY(ARRAY(
           SELECT seq FROM slots
            WHERE space_id = $1 AND state = 0 AND expires_at <= $2
              AND (claim_expires_at IS NULL OR claim_expires_at <= $2 OR claimed_by = $3)
            ORDER BY seq LIMIT $4 FOR UPDATE SKIP LOCKED))
         RETURNING s.seq, s.operation_id, s.projection_type, s.owner, s.fence_resource,
                   s.fence_epoch, s.leased_at, s.expires_at, s.renewals, s.partial,
                   s.result_kind, s.result_payload, s.result_source_event, s.attempts,
                   s.claim_token",
    )
    .bind(space.id)
    .bind(now)
    .bind(&req.cleaner)
    .bind(limit)
    .bind(claim_expires_at)
    .fetch_all(&mut *tx)
    .await
    .map_err(get)?;
    let mut claimed = rows
        .iter()
        .map(|row| expired_slot(&space.name, row, claim_expires_at, target))
        .collect::<Result<Vec<_>, _>>()?;
    claimed.sort_by_key(|s| s.lease.seq);
    // Lease history: the expiry (at the first claim) and the claim.
    let mut events = Events::default();
    for slot in &claimed {
        let seq = to_i64("seq", slot.lease.seq)?;
        if slot.attempts == 1 {
            let at = slot.lease.expires_at.as_micros();
            events.push(
                space.id,
                seq,
                at,
                SlotEventKind::Expired,
                &slot.lease.owner,
                None,
            );
        }
        let detail = Some(format!("attempt {}", slot.attempts));
        events.push(
            space.id,
            seq,
            now,
            SlotEventKind::Claimed,
            &req.cleaner,
            detail,
        );
    }
    events.write(&mut tx, target).await?;
    tx.commit().await.map_err(get)?;
    conn.return_to_pool().await;
    Ok(claimed)
}

fn expired_slot(
    space: &SpaceName,
    row: &PgRow,
    claim_expires_at: i64,
    target: &str,
) -> Result<ExpiredSlot, StoreError> {
    let get = |e| map_sqlx(e, target);
    let seq = to_u64("seq", row.try_get(0).map_err(get)?)?;
    let renewals: i32 = row.try_get(8).map_err(get)?;
    let attempts: i32 = row.try_get(13).map_err(get)?;
    let token: Vec<u8> = row.try_get(14).map_err(get)?;
    Ok(ExpiredSlot {
        lease: LeaseRecord {
            space: space.clone(),
            seq,
            token: Token([0; 16]),
            operation_id: row.try_get(1).map_err(get)?,
            projection_type: row.try_get(2).map_err(get)?,
            owner: row.try_get(3).map_err(get)?,
            fence: fence_from_columns(row.try_get(4).map_err(get)?, row.try_get(5).map_err(get)?),
            leased_at: Timestamp(row.try_get(6).map_err(get)?),
            expires_at: Timestamp(row.try_get(7).map_err(get)?),
            renewals: to_u32("renewals", i64::from(renewals))?,
        },
        claim: ClaimKey {
            space: space.clone(),
            seq,
            token: Token::from_slice(&token)
                .ok_or_else(|| corrupt_value("claim token length", token.len()))?,
        },
        claim_expires_at: Timestamp(claim_expires_at),
        partial: row.try_get(9).map_err(get)?,
        result: body_from_columns(
            row.try_get(10).map_err(get)?,
            row.try_get(11).map_err(get)?,
            row.try_get(12).map_err(get)?,
        ),
        attempts: to_u32("attempts", i64::from(attempts))?,
    })
}

/// A claimed slot as a resolve transaction sees it.
struct Claimed {
    space: usize,
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

/// A resolved slot to write back.
#[derive(Default)]
struct Resolved {
    space_id: Vec<i64>,
    seq: Vec<i64>,
    state: Vec<i16>,
    committed_op: Vec<Option<String>>,
    op_kind: Vec<Option<String>>,
    op_payload: Vec<Option<Vec<u8>>>,
    op_source: Vec<Option<String>>,
    recovery: Vec<Option<String>>,
    gap_reason: Vec<Option<String>>,
    superseded_by: Vec<Option<i64>>,
    gap_detail: Vec<Option<String>>,
}

impl Resolved {
    fn gap(
        &mut self,
        space_id: i64,
        seq: i64,
        reason: GapReason,
        by: Option<i64>,
        detail: Option<String>,
    ) {
        self.space_id.push(space_id);
        self.seq.push(seq);
        self.state.push(state::GAP);
        self.committed_op.push(None);
        self.op_kind.push(None);
        self.op_payload.push(None);
        self.op_source.push(None);
        self.recovery.push(None);
        self.gap_reason.push(Some(reason.as_str().to_string()));
        self.superseded_by.push(by);
        self.gap_detail.push(detail);
    }

    fn committed(
        &mut self,
        space_id: i64,
        seq: i64,
        op: String,
        body: OperationBody,
        recovery: String,
    ) {
        self.space_id.push(space_id);
        self.seq.push(seq);
        self.state.push(state::COMMITTED);
        self.committed_op.push(Some(op));
        self.op_kind.push(Some(body.kind));
        self.op_payload.push(Some(body.payload));
        self.op_source.push(body.source_event_id);
        self.recovery.push(Some(recovery));
        self.gap_reason.push(None);
        self.superseded_by.push(None);
        self.gap_detail.push(None);
    }
}

/// Slots allocated already COMMITTED (placement at a new seq, re-sequenced work).
#[derive(Default)]
pub(crate) struct Appended {
    space_id: Vec<i64>,
    seq: Vec<i64>,
    token: Vec<Vec<u8>>,
    operation_id: Vec<String>,
    projection_type: Vec<String>,
    owner: Vec<String>,
    fence_resource: Vec<Option<String>>,
    fence_epoch: Vec<Option<i64>>,
    kind: Vec<String>,
    payload: Vec<Vec<u8>>,
    source: Vec<Option<String>>,
    recovery: Vec<String>,
}

impl Appended {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        space_id: i64,
        seq: i64,
        operation_id: String,
        projection_type: String,
        owner: String,
        fence: Option<&Fence>,
        body: OperationBody,
        recovery: String,
    ) {
        self.space_id.push(space_id);
        self.seq.push(seq);
        self.token.push(Token::random().as_bytes().to_vec());
        self.operation_id.push(operation_id);
        self.projection_type.push(projection_type);
        self.owner.push(owner);
        self.fence_resource.push(fence.map(|f| f.resource.clone()));
        self.fence_epoch
            .push(fence.map(|f| epoch_to_column(f.epoch)));
        self.kind.push(body.kind);
        self.payload.push(body.payload);
        self.source.push(body.source_event_id);
        self.recovery.push(recovery);
    }

    /// Insert the appended slots (`leased_at = expires_at = resolved_at = now`).
    async fn write(
        &self,
        conn: &mut PgConnection,
        now: i64,
        target: &str,
    ) -> Result<(), StoreError> {
        if self.seq.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO slots (space_id, seq, state, token, operation_id, projection_type, owner,
                                fence_resource, fence_epoch, leased_at, expires_at, renewals,
                                resolved_at, committed_op_id, op_kind, op_payload,
                                op_source_event, recovery)
             SELECT a.space_id, a.seq, 1, a.token, a.operation_id, a.projection_type, a.owner,
                    a.fence_resource, a.fence_epoch, $13, $13, 0, $13, a.operation_id, a.kind,
                    a.payload, a.source, a.recovery
             FROM unnest($1::bigint[], $2::bigint[], $3::bytea[], $4::text[], $5::text[],
                         $6::text[], $7::text[], $8::bigint[], $9::text[], $10::bytea[],
                         $11::text[], $12::text[])
                  AS a(space_id, seq, token, operation_id, projection_type, owner,
                       fence_resource, fence_epoch, kind, payload, source, recovery)",
        )
        .bind(&self.space_id)
        .bind(&self.seq)
        .bind(&self.token)
        .bind(&self.operation_id)
        .bind(&self.projection_type)
        .bind(&self.owner)
        .bind(&self.fence_resource)
        .bind(&self.fence_epoch)
        .bind(&self.kind)
        .bind(&self.payload)
        .bind(&self.source)
        .bind(&self.recovery)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_sqlx(e, target))?;
        Ok(())
    }
}

/// Write the counters of the changed spaces, recompute their watermarks (after the slot
/// writes, which this statement sees), notify, and report progress.
pub(crate) async fn write_spaces(
    conn: &mut PgConnection,
    inner: &Inner,
    spaces: &[LockedSpace],
    outcome: &mut BatchOutcome,
) -> Result<(), StoreError> {
    let target = inner.target.as_str();
    let get = |e| map_sqlx(e, target);
    let dirty: Vec<&LockedSpace> = spaces.iter().filter(|s| s.dirty).collect();
    if dirty.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = dirty.iter().map(|s| s.id).collect();
    let last_seqs = dirty
        .iter()
        .map(|s| to_i64("last_seq", s.last_seq))
        .collect::<Result<Vec<_>, _>>()?;
    let in_flights: Vec<i64> = dirty.iter().map(|s| i64::from(s.in_flight)).collect();
    let freeds: Vec<i32> = dirty
        .iter()
        .map(|s| i32::try_from(s.freed).unwrap_or(i32::MAX))
        .collect();
    let rows = sqlx::query(
        "WITH sp AS (
           UPDATE spaces p SET
             last_seq = x.last_seq,
             in_flight = x.in_flight,
             watermark = GREATEST(p.watermark, COALESCE(
               (SELECT min(s.seq) FROM slots s WHERE s.space_id = p.id AND s.state = 0
                                                  AND s.seq > p.watermark) - 1,
               x.last_seq))
           FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::int[])
                AS x(id, last_seq, in_flight, freed),
                (SELECT id, watermark AS before FROM spaces WHERE id = ANY($1::bigint[])) AS o
           WHERE p.id = x.id AND o.id = x.id
           RETURNING p.id, p.name, p.watermark, x.freed, o.before)
         SELECT id, watermark,
                (CASE WHEN freed > 0 OR watermark > before
                      THEN pg_notify($5, name || ':' || watermark || ':' || freed) END) IS NULL
         FROM sp",
    )
    .bind(&ids)
    .bind(&last_seqs)
    .bind(&in_flights)
    .bind(&freeds)
    .bind(&inner.channel)
    .fetch_all(&mut *conn)
    .await
    .map_err(get)?;
    for row in rows {
        let id: i64 = row.try_get(0).map_err(get)?;
        let watermark = to_u64("watermark", row.try_get(1).map_err(get)?)?;
        if let Some(space) = spaces.iter().find(|s| s.id == id) {
            if space.freed > 0 {
                outcome.set_watermark(&space.name, watermark);
            } else {
                outcome.note_watermark(&space.name, watermark);
            }
        }
    }
    Ok(())
}

/// Resolve claimed slots in one transaction; see the module docs.
pub(crate) async fn resolve(
    inner: &Inner,
    items: Vec<Resolve>,
) -> Result<BatchOutcome, StoreError> {
    let mut outcome = BatchOutcome::default();
    if items.is_empty() {
        return Ok(outcome);
    }
    let target = inner.target.as_str();
    let get = |e| map_sqlx(e, target);
    let mut conn = inner.pool.acquire().await.map_err(get)?;
    let mut tx = conn.begin().await.map_err(get)?;
    let names: Vec<String> = items
        .iter()
        .map(|i| i.claim.space.as_str().to_string())
        .collect();
    let (mut spaces, now) = lock_spaces(&mut tx, inner, &names).await?;

    // Load the named slots and where their operations are already committed.
    let mut space_ids = Vec::new();
    let mut seqs = Vec::new();
    for item in &items {
        if let Some(space) = spaces.iter().find(|s| s.name == item.claim.space)
            && let Ok(seq) = i64::try_from(item.claim.seq)
        {
            space_ids.push(space.id);
            seqs.push(seq);
        }
    }
    let rows = sqlx::query(
        "SELECT s.space_id, s.seq, s.state, s.claim_token, s.claim_expires_at, s.operation_id,
                s.projection_type, s.owner, s.fence_resource, s.fence_epoch, s.partial,
                s.result_kind, s.result_payload, s.result_source_event,
                (SELECT c.seq FROM slots c
                  WHERE c.space_id = s.space_id AND c.committed_op_id = s.operation_id)
         FROM (SELECT DISTINCT * FROM unnest($1::bigint[], $2::bigint[])) AS k(space_id, seq)
         JOIN slots s ON s.space_id = k.space_id AND s.seq = k.seq",
    )
    .bind(&space_ids)
    .bind(&seqs)
    .fetch_all(&mut *tx)
    .await
    .map_err(get)?;
    let mut slots: HashMap<(usize, u64), Claimed> = HashMap::with_capacity(rows.len());
    let mut committed: HashMap<(usize, String), u64> = HashMap::new();
    for row in rows {
        let space_id: i64 = row.try_get(0).map_err(get)?;
        let space = spaces
            .iter()
            .position(|s| s.id == space_id)
            .ok_or_else(|| corrupt_value("space id of a loaded slot", space_id))?;
        let seq = to_u64("seq", row.try_get(1).map_err(get)?)?;
        let code: i16 = row.try_get(2).map_err(get)?;
        let operation_id: String = row.try_get(5).map_err(get)?;
        let existing: Option<i64> = row.try_get(14).map_err(get)?;
        if let Some(e) = existing {
            committed.insert((space, operation_id.clone()), to_u64("seq", e)?);
        }
        slots.insert(
            (space, seq),
            Claimed {
                space,
                leased: code == state::LEASED,
                claim_token: row.try_get(3).map_err(get)?,
                claim_expires_at: row.try_get(4).map_err(get)?,
                operation_id,
                projection_type: row.try_get(6).map_err(get)?,
                owner: row.try_get(7).map_err(get)?,
                fence: fence_from_columns(
                    row.try_get(8).map_err(get)?,
                    row.try_get(9).map_err(get)?,
                ),
                partial: row.try_get(10).map_err(get)?,
                result: body_from_columns(
                    row.try_get(11).map_err(get)?,
                    row.try_get(12).map_err(get)?,
                    row.try_get(13).map_err(get)?,
                ),
            },
        );
    }

    // The current epoch of every fenced resource, locked against a change of holder.
    let epochs = load_epochs(&mut tx, target, slots.values()).await?;

    // Decide every item in order.
    let mut resolved = Resolved::default();
    let mut appended = Appended::default();
    let mut park = ParkRows::default();
    // Replies waiting for the id of their parked row: (reply index, parked row index).
    let mut awaiting_id: Vec<(usize, usize)> = Vec::new();
    for item in items {
        let name = item.claim.space.clone();
        let seq = item.claim.seq;
        let Some(si) = spaces.iter().position(|s| s.name == name) else {
            outcome
                .replies
                .push(Err(LeaseError::UnknownSpace { space: name }));
            continue;
        };
        let Some(slot) = slots.get_mut(&(si, seq)) else {
            outcome
                .replies
                .push(Err(LeaseError::UnknownSlot { space: name, seq }));
            continue;
        };
        let holds = slot.leased
            && slot.claim_token.as_deref() == Some(&item.claim.token.as_bytes()[..])
            && slot.claim_expires_at.is_some_and(|at| at > now);
        if !holds {
            outcome
                .replies
                .push(Err(LeaseError::ClaimLost { space: name, seq }));
            continue;
        }
        slot.leased = false;
        let space_id = spaces[si].id;
        let seq_col = to_i64("seq", seq)?;
        let op = (slot.space, slot.operation_id.clone());
        let reply = if let Some(&existing) = committed.get(&op) {
            resolved.gap(
                space_id,
                seq_col,
                GapReason::Superseded,
                Some(to_i64("seq", existing)?),
                None,
            );
            ResolveOutcome::Duplicate { existing }
        } else {
            let current_epoch = slot
                .fence
                .as_ref()
                .map_or(0, |f| epochs.get(f.resource.as_str()).copied().unwrap_or(0));
            let checked = check_recovery_fence(item.resolution, slot.fence.as_ref(), current_epoch);
            match checked.resolution {
                Resolution::Recover {
                    body,
                    recovery_type,
                    placement,
                } => {
                    let info = recovery_to_json(
                        &RecoveryInfo {
                            original_seq: seq,
                            original_operation_id: slot.operation_id.clone(),
                            recovered_at: Timestamp(now),
                            recovery_type,
                        },
                        BACKEND,
                    )?;
                    match placement {
                        Placement::InPlace => {
                            resolved.committed(
                                space_id,
                                seq_col,
                                slot.operation_id.clone(),
                                body,
                                info,
                            );
                            committed.insert(op, seq);
                            ResolveOutcome::Recovered { seq }
                        }
                        Placement::NewSeq => {
                            let space = &mut spaces[si];
                            let n = space.last_seq + 1;
                            space.last_seq = n;
                            let n_col = to_i64("last_seq", n)?;
                            appended.push(
                                space_id,
                                n_col,
                                slot.operation_id.clone(),
                                slot.projection_type.clone(),
                                slot.owner.clone(),
                                slot.fence.as_ref(),
                                body,
                                info,
                            );
                            committed.insert(op, n);
                            resolved.gap(
                                space_id,
                                seq_col,
                                GapReason::Superseded,
                                Some(n_col),
                                None,
                            );
                            ResolveOutcome::Recovered { seq: n }
                        }
                    }
                }
                Resolution::Gap {
                    detail,
                    park: wants,
                } => {
                    let recorded = slot.partial.is_some() || slot.result.is_some();
                    if wants && recorded {
                        awaiting_id.push((outcome.replies.len(), park.seq.len()));
                        park.push(space_id, seq_col, slot, checked.park_state, detail.clone());
                    }
                    resolved.gap(space_id, seq_col, GapReason::Expired, None, detail);
                    ResolveOutcome::Gapped { parked: None }
                }
            }
        };
        let space = &mut spaces[si];
        space.in_flight = space.in_flight.saturating_sub(1);
        space.freed += 1;
        space.dirty = true;
        outcome.note_freed(&space.name);
        outcome.replies.push(Ok(Reply::Resolved(reply)));
    }

    // Write.
    if !resolved.seq.is_empty() {
        sqlx::query(
            "UPDATE slots s SET
               state = u.state, resolved_at = $12, committed_op_id = u.committed_op,
               op_kind = u.op_kind, op_payload = u.op_payload, op_source_event = u.op_source,
               recovery = u.recovery, gap_reason = u.gap_reason,
               superseded_by = u.superseded_by, gap_detail = u.gap_detail,
               partial = NULL, result_kind = NULL, result_payload = NULL,
               result_source_event = NULL,
               claim_token = NULL, claimed_by = NULL, claim_expires_at = NULL
             FROM unnest($1::bigint[], $2::bigint[], $3::smallint[], $4::text[], $5::text[],
                         $6::bytea[], $7::text[], $8::text[], $9::text[], $10::bigint[],
                         $11::text[])
                  AS u(space_id, seq, state, committed_op, op_kind, op_payload, op_source,
                       recovery, gap_reason, superseded_by, gap_detail)
             WHERE s.space_id = u.space_id AND s.seq = u.seq",
        )
        .bind(&resolved.space_id)
        .bind(&resolved.seq)
        .bind(&resolved.state)
        .bind(&resolved.committed_op)
        .bind(&resolved.op_kind)
        .bind(&resolved.op_payload)
        .bind(&resolved.op_source)
        .bind(&resolved.recovery)
        .bind(&resolved.gap_reason)
        .bind(&resolved.superseded_by)
        .bind(&resolved.gap_detail)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(get)?;
    }
    appended.write(&mut tx, now, target).await?;
    let ids = park.write(&mut tx, now, target).await?;
    let mut events = Events::default();
    for (reply, row) in awaiting_id {
        let id = *ids
            .get(row)
            .ok_or_else(|| corrupt_value("parked rows inserted", ids.len()))?;
        let (space_id, seq) = (park.space_id[row], park.seq[row]);
        let detail = Some(format!("recovery queue item {id}"));
        events.push(
            space_id,
            seq,
            now,
            SlotEventKind::Parked,
            "recovery",
            detail,
        );
        outcome.replies[reply] = Ok(Reply::Resolved(ResolveOutcome::Gapped { parked: Some(id) }));
    }
    events.write(&mut tx, target).await?;
    write_spaces(&mut tx, inner, &spaces, &mut outcome).await?;
    tx.commit().await.map_err(get)?;
    remember_counters(inner, &spaces);
    conn.return_to_pool().await;
    Ok(outcome)
}

/// The current epoch of every resource the fences of `slots` name, read `FOR SHARE` in the
/// resolving transaction (as commits read them in `execute`): a change of holder waits for
/// this transaction, or this transaction sees the new epoch (I9). Never-held resources are
/// absent (epoch 0).
async fn load_epochs<'a>(
    conn: &mut PgConnection,
    target: &str,
    slots: impl Iterator<Item = &'a Claimed>,
) -> Result<HashMap<String, u64>, StoreError> {
    let mut names: Vec<&str> = slots
        .filter_map(|s| s.fence.as_ref().map(|f| f.resource.as_str()))
        .collect();
    if names.is_empty() {
        return Ok(HashMap::new());
    }
    names.sort_unstable();
    names.dedup();
    let get = |e| map_sqlx(e, target);
    let rows = sqlx::query(
        "SELECT name, epoch FROM resources WHERE name = ANY($1::text[]) \
         ORDER BY name FOR SHARE",
    )
    .bind(&names)
    .fetch_all(&mut *conn)
    .await
    .map_err(get)?;
    let mut epochs = HashMap::with_capacity(rows.len());
    for row in rows {
        let name: String = row.try_get(0).map_err(get)?;
        let epoch: i64 = row.try_get(1).map_err(get)?;
        epochs.insert(name, epoch_from_column(epoch));
    }
    Ok(epochs)
}

/// Rows to insert into `parked`.
#[derive(Default)]
struct ParkRows {
    space_id: Vec<i64>,
    seq: Vec<i64>,
    operation_id: Vec<String>,
    projection_type: Vec<String>,
    partial: Vec<Option<Vec<u8>>>,
    result_kind: Vec<Option<String>>,
    result_payload: Vec<Option<Vec<u8>>>,
    result_source: Vec<Option<String>>,
    state: Vec<String>,
    note: Vec<Option<String>>,
}

impl ParkRows {
    fn push(
        &mut self,
        space_id: i64,
        seq: i64,
        slot: &Claimed,
        state: ParkedState,
        note: Option<String>,
    ) {
        self.space_id.push(space_id);
        self.seq.push(seq);
        self.operation_id.push(slot.operation_id.clone());
        self.projection_type.push(slot.projection_type.clone());
        self.partial.push(slot.partial.clone());
        let result = slot.result.as_ref();
        self.result_kind.push(result.map(|b| b.kind.clone()));
        self.result_payload.push(result.map(|b| b.payload.clone()));
        self.result_source
            .push(result.and_then(|b| b.source_event_id.clone()));
        self.state.push(state.as_str().to_string());
        self.note.push(note);
    }

    /// Insert the rows in order; their ids, in the same order.
    async fn write(
        &self,
        conn: &mut PgConnection,
        now: i64,
        target: &str,
    ) -> Result<Vec<u64>, StoreError> {
        if self.seq.is_empty() {
            return Ok(Vec::new());
        }
        let get = |e| map_sqlx(e, target);
        let rows = sqlx::query(
            "INSERT INTO parked (space_id, original_seq, operation_id, projection_type, partial,
                                 result_kind, result_payload, result_source_event, attempts,
                                 state, note, parked_at)
             SELECT p.space_id, p.seq, p.operation_id, p.projection_type, p.partial,
                    p.result_kind, p.result_payload, p.result_source, 0, p.state, p.note, $11
             FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::bytea[],
                         $6::text[], $7::bytea[], $8::text[], $9::text[], $10::text[])
                  WITH ORDINALITY AS p(space_id, seq, operation_id, projection_type, partial,
                                       result_kind, result_payload, result_source, state, note,
                                       ord)
             ORDER BY p.ord
             RETURNING id, space_id, original_seq",
        )
        .bind(&self.space_id)
        .bind(&self.seq)
        .bind(&self.operation_id)
        .bind(&self.projection_type)
        .bind(&self.partial)
        .bind(&self.result_kind)
        .bind(&self.result_payload)
        .bind(&self.result_source)
        .bind(&self.state)
        .bind(&self.note)
        .bind(now)
        .fetch_all(&mut *conn)
        .await
        .map_err(get)?;
        // Each slot is parked at most once per transaction: (space, seq) names its row.
        let mut by_slot = HashMap::with_capacity(rows.len());
        for row in rows {
            let id: i64 = row.try_get(0).map_err(get)?;
            let space_id: i64 = row.try_get(1).map_err(get)?;
            let seq: i64 = row.try_get(2).map_err(get)?;
            by_slot.insert((space_id, seq), to_u64("parked id", id)?);
        }
        self.space_id
            .iter()
            .zip(&self.seq)
            .map(|key| {
                by_slot
                    .get(&(*key.0, *key.1))
                    .copied()
                    .ok_or_else(|| corrupt_value("parked row of slot", key.1))
            })
            .collect()
    }
}

const PARKED_COLUMNS: &str = "p.id, sp.name, p.original_seq, p.operation_id, \
    p.projection_type, p.partial, p.result_kind, p.result_payload, p.result_source_event, \
    p.attempts, p.state, p.note, p.parked_at, p.resequenced_at_seq";

fn parked_state(stored: &str) -> Result<ParkedState, StoreError> {
    Ok(match stored {
        "parked" => ParkedState::Parked,
        "manual" => ParkedState::Manual,
        "resequenced" => ParkedState::Resequenced,
        "discarded" => ParkedState::Discarded,
        other => return Err(corrupt_value("parked state", format!("{other:?}"))),
    })
}

fn parked_work(row: &PgRow, target: &str) -> Result<ParkedWork, StoreError> {
    let get = |e| map_sqlx(e, target);
    let id: i64 = row.try_get(0).map_err(get)?;
    let name: String = row.try_get(1).map_err(get)?;
    let attempts: i32 = row.try_get(9).map_err(get)?;
    let state: String = row.try_get(10).map_err(get)?;
    let reseq: Option<i64> = row.try_get(13).map_err(get)?;
    Ok(ParkedWork {
        id: to_u64("parked id", id)?,
        space: space_name(&name)?,
        original_seq: to_u64("original_seq", row.try_get(2).map_err(get)?)?,
        operation_id: row.try_get(3).map_err(get)?,
        projection_type: row.try_get(4).map_err(get)?,
        partial: row.try_get(5).map_err(get)?,
        result: body_from_columns(
            row.try_get(6).map_err(get)?,
            row.try_get(7).map_err(get)?,
            row.try_get(8).map_err(get)?,
        ),
        attempts: to_u32("attempts", i64::from(attempts))?,
        state: parked_state(&state)?,
        note: row.try_get(11).map_err(get)?,
        parked_at: Timestamp(row.try_get(12).map_err(get)?),
        resequenced_at_seq: reseq.map(|s| to_u64("resequenced_at_seq", s)).transpose()?,
    })
}

/// Recovery-queue items, oldest first.
pub(crate) async fn parked(
    inner: &Inner,
    query: &ParkedQuery,
) -> Result<Vec<ParkedWork>, StoreError> {
    let target = inner.target.as_str();
    let states: Vec<&str> = query.states.iter().map(|s| s.as_str()).collect();
    let limit = if query.limit == 0 {
        i64::MAX
    } else {
        i64::try_from(query.limit).unwrap_or(i64::MAX)
    };
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {PARKED_COLUMNS} FROM parked p JOIN spaces sp ON sp.id = p.space_id \
         WHERE ($1::text IS NULL OR sp.name = $1) \
           AND (cardinality($2::text[]) = 0 OR p.state = ANY($2::text[])) \
         ORDER BY p.id LIMIT $3"
    )))
    .bind(query.space.as_ref().map(|s| s.as_str()))
    .bind(&states)
    .bind(limit)
    .fetch_all(&inner.pool)
    .await
    .map_err(|e| map_sqlx(e, target))?;
    rows.iter().map(|r| parked_work(r, target)).collect()
}

/// Apply actions to recovery-queue items in one transaction; see the module docs.
pub(crate) async fn settle_parked(
    inner: &Inner,
    commands: Vec<ParkedCommand>,
) -> Result<BatchOutcome, StoreError> {
    let mut outcome = BatchOutcome::default();
    if commands.is_empty() {
        return Ok(outcome);
    }
    let target = inner.target.as_str();
    let get = |e| map_sqlx(e, target);
    let ids: Vec<i64> = commands
        .iter()
        .filter_map(|c| i64::try_from(c.id).ok())
        .collect();
    let mut tx = inner.pool.begin().await.map_err(get)?;
    // Spaces first (name order, like every writer of slots), then the items.
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT sp.name FROM parked p JOIN spaces sp ON sp.id = p.space_id \
         WHERE p.id = ANY($1::bigint[])",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await
    .map_err(get)?;
    let (mut spaces, now) = lock_spaces(&mut tx, inner, &names).await?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {PARKED_COLUMNS}, p.space_id FROM parked p JOIN spaces sp ON sp.id = p.space_id \
         WHERE p.id = ANY($1::bigint[]) ORDER BY p.id FOR UPDATE OF p"
    )))
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await
    .map_err(get)?;
    let mut items: HashMap<u64, (ParkedWork, i64)> = HashMap::with_capacity(rows.len());
    for row in &rows {
        let work = parked_work(row, target)?;
        let space_id: i64 = row.try_get(14).map_err(get)?;
        items.insert(work.id, (work, space_id));
    }
    let mut changed: Vec<u64> = Vec::new();
    let mut events = Events::default();
    for command in commands {
        let Some((item, space_id)) = items.get_mut(&command.id) else {
            outcome.replies.push(Err(LeaseError::Parked {
                id: command.id,
                action: action_name(&command.action),
                reason: "no such item in the recovery queue".into(),
            }));
            continue;
        };
        if let Err(e) = check_parked(item, &command) {
            outcome.replies.push(Err(e));
            continue;
        }
        if let ParkedAction::Resequence {
            body,
            recovery_type,
        } = &command.action
        {
            let Some(si) = spaces.iter().position(|s| s.id == *space_id) else {
                outcome.replies.push(Err(LeaseError::UnknownSpace {
                    space: item.space.clone(),
                }));
                continue;
            };
            let existing: Option<i64> = sqlx::query_scalar(
                "SELECT seq FROM slots WHERE space_id = $1 AND committed_op_id = $2",
            )
            .bind(*space_id)
            .bind(&item.operation_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(get)?;
            let at = match existing {
                Some(e) => to_u64("seq", e)?,
                None => {
                    let space = &mut spaces[si];
                    let n = space.last_seq + 1;
                    space.last_seq = n;
                    space.dirty = true;
                    let info = recovery_to_json(
                        &RecoveryInfo {
                            original_seq: item.original_seq,
                            original_operation_id: item.operation_id.clone(),
                            recovered_at: Timestamp(now),
                            recovery_type: *recovery_type,
                        },
                        BACKEND,
                    )?;
                    let mut appended = Appended::default();
                    appended.push(
                        *space_id,
                        to_i64("last_seq", n)?,
                        item.operation_id.clone(),
                        item.projection_type.clone(),
                        "recovery".into(),
                        None,
                        body.clone(),
                        info,
                    );
                    appended.write(&mut tx, now, target).await?;
                    n
                }
            };
            item.state = ParkedState::Resequenced;
            item.resequenced_at_seq = Some(at);
            item.note = Some(format!("re-sequenced by {}", command.actor));
            let detail = Some(format!("parked work re-sequenced at seq {at}"));
            let seq = to_i64("seq", item.original_seq)?;
            events.push(
                *space_id,
                seq,
                now,
                SlotEventKind::Recovered,
                &command.actor,
                detail,
            );
        } else {
            apply_parked(item, &command);
            if matches!(command.action, ParkedAction::Retry | ParkedAction::Discard) {
                let seq = to_i64("seq", item.original_seq)?;
                let detail = item.note.clone();
                events.push(
                    *space_id,
                    seq,
                    now,
                    SlotEventKind::Manual,
                    &command.actor,
                    detail,
                );
            }
        }
        changed.push(item.id);
        outcome
            .replies
            .push(Ok(Reply::Parked(Box::new(item.clone()))));
    }
    changed.sort_unstable();
    changed.dedup();
    if !changed.is_empty() {
        let mut id_col = Vec::new();
        let mut attempts = Vec::new();
        let mut states = Vec::new();
        let mut notes = Vec::new();
        let mut reseq = Vec::new();
        for id in changed {
            let Some((item, _)) = items.get(&id) else {
                continue;
            };
            id_col.push(to_i64("parked id", id)?);
            attempts.push(i32::try_from(item.attempts).unwrap_or(i32::MAX));
            states.push(item.state.as_str());
            notes.push(item.note.clone());
            reseq.push(
                item.resequenced_at_seq
                    .map(|s| to_i64("seq", s))
                    .transpose()?,
            );
        }
        sqlx::query(
            "UPDATE parked p SET attempts = u.attempts, state = u.state, note = u.note,
                    resequenced_at_seq = u.reseq
             FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[], $5::bigint[])
                  AS u(id, attempts, state, note, reseq)
             WHERE p.id = u.id",
        )
        .bind(&id_col)
        .bind(&attempts)
        .bind(&states)
        .bind(&notes)
        .bind(&reseq)
        .execute(&mut *tx)
        .await
        .map_err(get)?;
    }
    events.write(&mut tx, target).await?;
    write_spaces(&mut tx, inner, &spaces, &mut outcome).await?;
    tx.commit().await.map_err(get)?;
    remember_counters(inner, &spaces);
    Ok(outcome)
}
