//! Lease history in the PostgreSQL store (migration `0004_history.sql`).
//!
//! Most transitions of a slot are already on its row: the grant (`leased_at`, `owner`) and
//! the resolution (`resolved_at`, state, gap reason, recovery metadata). Those are derived at
//! query time and never written twice, so grants and commits cost nothing extra. What the
//! row cannot show — renewals, hand-overs to recovery, expiry and claims, parking,
//! re-sequencing and operator actions — is inserted into `slot_events` by the transaction
//! that makes the transition (only when there is any, with one set-based `INSERT`). The
//! query merges both per slot in time order, exactly as the in-memory store does; pruning
//! deletes recorded events older than a cut-off, derived ones live as long as the slot.

use seqlease_core::columns::recovery_from_json;
use seqlease_core::{
    GapReason, HistoryQuery, SlotEvent, SlotEventKind, SlotState, StoreError, Timestamp,
};
use sqlx::Row;
use sqlx::postgres::PgConnection;

use crate::Inner;
use crate::error::{BACKEND, corrupt_value, map_sqlx};
use crate::read::{slot_state, to_u64};

/// An event to record: (space id, seq, at, kind, actor, detail).
#[derive(Debug, Default)]
pub(crate) struct Events {
    space_id: Vec<i64>,
    seq: Vec<i64>,
    at: Vec<i64>,
    kind: Vec<&'static str>,
    actor: Vec<String>,
    detail: Vec<Option<String>>,
}

impl Events {
    /// Add one event.
    pub(crate) fn push(
        &mut self,
        space_id: i64,
        seq: i64,
        at: i64,
        kind: SlotEventKind,
        actor: &str,
        detail: Option<String>,
    ) {
        self.space_id.push(space_id);
        self.seq.push(seq);
        self.at.push(at);
        self.kind.push(kind.as_str());
        self.actor.push(actor.to_string());
        self.detail.push(detail);
    }

    /// Insert them in order (nothing when empty).
    pub(crate) async fn write(
        &self,
        conn: &mut PgConnection,
        target: &str,
    ) -> Result<(), StoreError> {
        if self.seq.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO slot_events (space_id, seq, at, kind, actor, detail)
             SELECT e.space_id, e.seq, e.at, e.kind, e.actor, e.detail
             FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::text[],
                         $6::text[])
                  WITH ORDINALITY AS e(space_id, seq, at, kind, actor, detail, ord)
             ORDER BY e.ord",
        )
        .bind(&self.space_id)
        .bind(&self.seq)
        .bind(&self.at)
        .bind(&self.kind)
        .bind(&self.actor)
        .bind(&self.detail)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_sqlx(e, target))?;
        Ok(())
    }
}

fn kind_of(stored: &str) -> Result<SlotEventKind, StoreError> {
    use SlotEventKind as K;
    Ok(match stored {
        "granted" => K::Granted,
        "renewed" => K::Renewed,
        "handed_to_recovery" => K::HandedToRecovery,
        "expired" => K::Expired,
        "claimed" => K::Claimed,
        "recovered" => K::Recovered,
        "parked" => K::Parked,
        "committed" => K::Committed,
        "released" => K::Released,
        "gapped" => K::Gapped,
        "superseded" => K::Superseded,
        "manual" => K::Manual,
        other => return Err(corrupt_value("slot event kind", format!("{other:?}"))),
    })
}

/// The history of one slot, or of the slots from `from_seq` on; see the module docs.
pub(crate) async fn slot_history(
    inner: &Inner,
    query: &HistoryQuery,
) -> Result<Vec<SlotEvent>, StoreError> {
    let target = inner.target.as_str();
    let get = |e| map_sqlx(e, target);
    if query.limit == 0 {
        return Ok(Vec::new());
    }
    let (first, last) = match query.seq {
        Some(seq) => (seq, seq),
        None => (query.from_seq.max(1), u64::MAX),
    };
    let Ok(first) = i64::try_from(first) else {
        return Ok(Vec::new());
    };
    let last = i64::try_from(last).unwrap_or(i64::MAX);
    // Every slot yields at least one event: `limit` slots are enough.
    let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
    let mut tx = inner.pool.begin().await.map_err(get)?;
    let slots = sqlx::query(
        "SELECT s.seq, s.state, s.gap_reason, s.owner, s.leased_at, s.expires_at,
                s.resolved_at, s.recovery, s.superseded_by, s.gap_detail, sp.id
         FROM spaces sp JOIN slots s ON s.space_id = sp.id
         WHERE sp.name = $1 AND s.seq BETWEEN $2 AND $3
         ORDER BY s.seq LIMIT $4",
    )
    .bind(query.space.as_str())
    .bind(first)
    .bind(last)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await
    .map_err(get)?;
    let Some(space_id) = slots
        .first()
        .map(|r| r.try_get::<i64, _>(10))
        .transpose()
        .map_err(get)?
    else {
        return Ok(Vec::new());
    };
    let seqs: Vec<i64> = slots
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(get)?;
    let recorded = sqlx::query(
        "SELECT seq, at, kind, actor, detail FROM slot_events
         WHERE space_id = $1 AND seq = ANY($2::bigint[]) ORDER BY seq, id",
    )
    .bind(space_id)
    .bind(&seqs)
    .fetch_all(&mut *tx)
    .await
    .map_err(get)?;
    tx.commit().await.map_err(get)?;
    let mut recorded = recorded.iter().peekable();
    let mut out = Vec::new();
    let mut expected = first;
    for row in &slots {
        let seq_col: i64 = row.try_get(0).map_err(get)?;
        if seq_col != expected {
            break; // seqs are contiguous; stop where the log ends
        }
        expected = seq_col.saturating_add(1);
        let seq = to_u64("seq", seq_col)?;
        let event = |at: i64, kind, actor: &str, detail: Option<String>| SlotEvent {
            space: query.space.clone(),
            seq,
            at: Timestamp(at),
            kind,
            actor: actor.into(),
            detail,
        };
        let code: i16 = row.try_get(1).map_err(get)?;
        let gap_reason: Option<String> = row.try_get(2).map_err(get)?;
        let state = slot_state(code, gap_reason.as_deref())?;
        let owner: String = row.try_get(3).map_err(get)?;
        let leased_at: i64 = row.try_get(4).map_err(get)?;
        let expires_at: i64 = row.try_get(5).map_err(get)?;
        let resolved_at: Option<i64> = row.try_get(6).map_err(get)?;
        let recovery: Option<String> = row.try_get(7).map_err(get)?;
        let recovery = recovery
            .map(|json| recovery_from_json(&json, BACKEND, &format!("seq {seq}")))
            .transpose()?;
        let superseded_by: Option<i64> = row.try_get(8).map_err(get)?;
        let gap_detail: Option<String> = row.try_get(9).map_err(get)?;

        let mut events = Vec::with_capacity(2);
        let appended = state == SlotState::Committed
            && recovery.as_ref().is_some_and(|r| r.original_seq != seq);
        if !appended {
            let until = format!("until {}", Timestamp(expires_at));
            events.push(event(
                leased_at,
                SlotEventKind::Granted,
                &owner,
                Some(until),
            ));
        }
        if let Some(at) = resolved_at {
            events.extend(match state {
                SlotState::Leased => None,
                SlotState::Committed => Some(match &recovery {
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
                SlotState::Gap(GapReason::Released) => {
                    Some(event(at, SlotEventKind::Released, &owner, gap_detail))
                }
                SlotState::Gap(GapReason::Expired) => {
                    Some(event(at, SlotEventKind::Gapped, "recovery", gap_detail))
                }
                SlotState::Gap(GapReason::Superseded) => {
                    let detail = superseded_by.map(|n| format!("work at seq {n}"));
                    Some(event(at, SlotEventKind::Superseded, &owner, detail))
                }
                SlotState::Gap(GapReason::Manual) => {
                    Some(event(at, SlotEventKind::Manual, "operator", gap_detail))
                }
            });
        }
        while let Some(r) = recorded.next_if(|r| r.try_get::<i64, _>(0).ok() == Some(seq_col)) {
            let kind: String = r.try_get(2).map_err(get)?;
            events.push(event(
                r.try_get(1).map_err(get)?,
                kind_of(&kind)?,
                &r.try_get::<String, _>(3).map_err(get)?,
                r.try_get(4).map_err(get)?,
            ));
        }
        events.sort_by_key(|e| (e.at, e.kind));
        out.extend(events);
        if out.len() >= query.limit {
            out.truncate(query.limit);
            break;
        }
    }
    Ok(out)
}

/// Delete recorded events older than `before`; how many.
pub(crate) async fn prune(inner: &Inner, before: Timestamp) -> Result<u64, StoreError> {
    let done = sqlx::query("DELETE FROM slot_events WHERE at < $1")
        .bind(before.as_micros())
        .execute(&inner.pool)
        .await
        .map_err(|e| map_sqlx(e, &inner.target))?;
    Ok(done.rows_affected())
}
