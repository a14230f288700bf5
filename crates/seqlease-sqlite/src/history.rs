//! Lease history in the SQLite store: recorded events in `slot_events`, merged at query time
//! with the transitions the slot row itself shows (see `seqlease_core::history`).
//!
//! The write path records only what a slot row cannot show: a renewal, a hand-over to
//! recovery, the expiry and each claim, parking, a re-sequencing and an operator's action,
//! each one `INSERT` in the transaction that made the change. The grant and the resolution
//! are read back from the slot row (`leased_at`, `resolved_at`, the state and recovery
//! metadata), so the hot path (grant, commit) writes nothing extra. Pruning drops recorded
//! events by age; the derived ones live as long as the slot.

use rusqlite::{Connection, params};
use seqlease_core::columns::recovery_from_json;
use seqlease_core::{
    GapReason, HistoryQuery, SlotEvent, SlotEventKind, SpaceName, StoreError, Timestamp,
};
use sqlx::Row;
use sqlx::sqlite::SqlitePool;

use crate::codec::{gap_reason_of, seq_param, state, to_u64};
use crate::error::{BACKEND, WriteError, corrupt_value, map_sqlx};

/// Record one event of slot `seq` of the space with row id `space_id`.
const INSERT_EVENT: &str = "INSERT INTO slot_events (space_id, seq, at, kind, actor, detail) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// Record an event whose actor is the slot's owner (renewal, hand-over): one statement.
pub(crate) const INSERT_OWNER_EVENT: &str = "INSERT INTO slot_events \
     (space_id, seq, at, kind, actor, detail) \
     SELECT space_id, seq, ?3, ?4, owner, ?5 FROM slots WHERE space_id = ?1 AND seq = ?2";

/// Record an event the slot row cannot show, in the caller's transaction.
pub(crate) fn record(
    conn: &Connection,
    space_id: i64,
    seq: i64,
    at: Timestamp,
    kind: SlotEventKind,
    actor: &str,
    detail: Option<&str>,
) -> Result<(), WriteError> {
    conn.prepare_cached(INSERT_EVENT)?.execute(params![
        space_id,
        seq,
        at.as_micros(),
        kind.as_str(),
        actor,
        detail
    ])?;
    Ok(())
}

/// Every kind, to parse stored names.
const KINDS: [SlotEventKind; 12] = [
    SlotEventKind::Granted,
    SlotEventKind::Renewed,
    SlotEventKind::HandedToRecovery,
    SlotEventKind::Expired,
    SlotEventKind::Claimed,
    SlotEventKind::Recovered,
    SlotEventKind::Parked,
    SlotEventKind::Committed,
    SlotEventKind::Released,
    SlotEventKind::Gapped,
    SlotEventKind::Superseded,
    SlotEventKind::Manual,
];

fn kind_of(stored: &str) -> Result<SlotEventKind, StoreError> {
    KINDS
        .into_iter()
        .find(|k| k.as_str() == stored)
        .ok_or_else(|| corrupt_value("history event kind", format!("{stored:?}")))
}

/// The history of one slot, or of the slots from `from_seq`, in time order per slot.
pub(crate) async fn slot_history(
    readers: &SqlitePool,
    query: &HistoryQuery,
) -> Result<Vec<SlotEvent>, StoreError> {
    let (first, count) = match query.seq {
        Some(seq) => (seq, 1),
        None => (query.from_seq.max(1), query.limit),
    };
    let Some(first) = seq_param(first) else {
        return Ok(Vec::new());
    };
    if query.limit == 0 {
        return Ok(Vec::new());
    }
    // Every slot has at least one event (its grant or its resolution): `limit` slots are
    // enough. One read transaction, so the slots and their events are one snapshot.
    let mut conn = readers.begin().await.map_err(map_sqlx)?;
    let rows = sqlx::query(
        "SELECT s.seq, s.leased_at, s.expires_at, s.owner, s.state, s.resolved_at, \
         s.recovery, s.gap_reason, s.superseded_by, s.gap_detail, sp.id \
         FROM spaces sp JOIN slots s ON s.space_id = sp.id \
         WHERE sp.name = ?1 AND s.seq >= ?2 ORDER BY s.seq LIMIT ?3",
    )
    .bind(query.space.as_str())
    .bind(first)
    .bind(i64::try_from(count).unwrap_or(i64::MAX))
    .fetch_all(&mut *conn)
    .await
    .map_err(map_sqlx)?;
    let Some(last) = rows.last() else {
        return Ok(Vec::new());
    };
    let last_seq: i64 = last.try_get(0).map_err(map_sqlx)?;
    let space_id: i64 = last.try_get(10).map_err(map_sqlx)?;
    let recorded = sqlx::query(
        "SELECT seq, at, kind, actor, detail FROM slot_events \
         WHERE space_id = ?1 AND seq >= ?2 AND seq <= ?3 ORDER BY seq, id",
    )
    .bind(space_id)
    .bind(first)
    .bind(last_seq)
    .fetch_all(&mut *conn)
    .await
    .map_err(map_sqlx)?;
    conn.commit().await.map_err(map_sqlx)?;

    let mut recorded = recorded.iter().peekable();
    let mut out = Vec::new();
    for (expected, row) in (first..).zip(rows.iter()) {
        let seq: i64 = row.try_get(0).map_err(map_sqlx)?;
        if seq != expected {
            break; // seqs are contiguous; stop where the memory store would
        }
        let mut events = derived(&query.space, row)?;
        while let Some(r) = recorded.next_if(|r| r.try_get::<i64, _>(0).ok() == Some(seq)) {
            let kind: String = r.try_get(2).map_err(map_sqlx)?;
            events.push(SlotEvent {
                space: query.space.clone(),
                seq: to_u64("seq", seq)?,
                at: Timestamp(r.try_get(1).map_err(map_sqlx)?),
                kind: kind_of(&kind)?,
                actor: r.try_get(3).map_err(map_sqlx)?,
                detail: r.try_get(4).map_err(map_sqlx)?,
            });
        }
        // Derived first, then recorded in insertion order; a stable sort keeps that order
        // among events at the same instant and of the same kind.
        events.sort_by_key(|e| (e.at, e.kind));
        out.extend(events);
        if out.len() >= query.limit {
            out.truncate(query.limit);
            break;
        }
    }
    Ok(out)
}

/// The transitions a slot row shows: its grant and its resolution.
fn derived(space: &SpaceName, row: &sqlx::sqlite::SqliteRow) -> Result<Vec<SlotEvent>, StoreError> {
    let seq = to_u64("seq", row.try_get(0).map_err(map_sqlx)?)?;
    let leased_at = Timestamp(row.try_get(1).map_err(map_sqlx)?);
    let expires_at = Timestamp(row.try_get(2).map_err(map_sqlx)?);
    let owner: String = row.try_get(3).map_err(map_sqlx)?;
    let code: i64 = row.try_get(4).map_err(map_sqlx)?;
    let resolved_at: Option<i64> = row.try_get(5).map_err(map_sqlx)?;
    let recovery: Option<String> = row.try_get(6).map_err(map_sqlx)?;
    let recovery = recovery
        .map(|json| recovery_from_json(&json, BACKEND, &format!("{space}/{seq}")))
        .transpose()?;
    let event = |at, kind, actor: &str, detail: Option<String>| SlotEvent {
        space: space.clone(),
        seq,
        at,
        kind,
        actor: actor.into(),
        detail,
    };
    let mut events = Vec::with_capacity(2);
    // A slot allocated already committed by recovery was never granted to anyone.
    let appended =
        code == state::COMMITTED && recovery.as_ref().is_some_and(|r| r.original_seq != seq);
    if !appended {
        let until = format!("until {expires_at}");
        events.push(event(
            leased_at,
            SlotEventKind::Granted,
            &owner,
            Some(until),
        ));
    }
    let Some(at) = resolved_at.map(Timestamp) else {
        return Ok(events);
    };
    match code {
        state::COMMITTED => events.push(match &recovery {
            None => event(at, SlotEventKind::Committed, &owner, None),
            Some(r) => {
                let detail = format!(
                    "{} recovery of seq {}",
                    r.recovery_type.as_str(),
                    r.original_seq
                );
                event(at, SlotEventKind::Recovered, "recovery", Some(detail))
            }
        }),
        state::GAP => {
            let reason: Option<String> = row.try_get(7).map_err(map_sqlx)?;
            let superseded_by: Option<i64> = row.try_get(8).map_err(map_sqlx)?;
            let detail: Option<String> = row.try_get(9).map_err(map_sqlx)?;
            events.push(match gap_reason_of(reason.as_deref())? {
                GapReason::Released => event(at, SlotEventKind::Released, &owner, detail),
                GapReason::Expired => event(at, SlotEventKind::Gapped, "recovery", detail),
                GapReason::Superseded => {
                    let detail = superseded_by.map(|n| format!("work at seq {n}"));
                    event(at, SlotEventKind::Superseded, &owner, detail)
                }
                GapReason::Manual => event(at, SlotEventKind::Manual, "operator", detail),
            });
        }
        _ => {}
    }
    Ok(events)
}

/// Drop recorded events older than `before`; returns how many. One transaction.
pub(crate) fn prune(conn: &mut Connection, before: Timestamp) -> Result<u64, WriteError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let pruned = tx
        .prepare_cached("DELETE FROM slot_events WHERE at < ?1")?
        .execute([before.as_micros()])?;
    tx.commit()?;
    Ok(pruned as u64)
}
