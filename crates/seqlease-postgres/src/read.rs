//! The read side (spaces, the ordered log, single slots) and the column encodings.
//!
//! Each read is one statement and so sees one snapshot: [`read`] compares seqs with the
//! watermark stored in the same snapshot, so a reader never sees an entry above `W` (I7);
//! entries at or below `W` are resolved and never change, so reading `1..=W` again gives the
//! same entries. Reads take no locks and never wait for writers.
//!
//! Encodings: seqs, counters and capacities are `BIGINT`, range-checked both ways (a stored
//! value that does not fit the core's `u64`/`u32` is [`StoreError::Corrupt`]); slot states
//! are small integers (see [`state`]); gap reasons are their stable lowercase names; fence
//! epochs are stored bit for bit in a `BIGINT`.

use seqlease_core::columns::recovery_from_json;
pub(crate) use seqlease_core::columns::{epoch_from_column, epoch_to_column};
use seqlease_core::{
    Entry, EntryContent, Fence, Gap, GapReason, LeaseRecord, Operation, OperationBody, SlotState,
    SlotView, SpaceConfig, SpaceInfo, SpaceName, StoreError, Timestamp, Token,
};
use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::error::{BACKEND, corrupt_value, map_sqlx};
use crate::{Inner, NOW_SQL};

/// Stored values of `slots.state`.
pub(crate) mod state {
    /// Granted and not resolved (includes expired leases not yet resolved by recovery).
    pub const LEASED: i16 = 0;
    /// Resolved with an operation.
    pub const COMMITTED: i16 = 1;
    /// Resolved as a gap; `gap_reason` says why.
    pub const GAP: i16 = 2;
}

/// The core [`SlotState`] of a stored `state` / `gap_reason` pair.
pub(crate) fn slot_state(code: i16, gap_reason: Option<&str>) -> Result<SlotState, StoreError> {
    match code {
        state::LEASED => Ok(SlotState::Leased),
        state::COMMITTED => Ok(SlotState::Committed),
        state::GAP => Ok(SlotState::Gap(gap_reason_of(gap_reason)?)),
        other => Err(corrupt_value("slot state", other)),
    }
}

fn gap_reason_of(stored: Option<&str>) -> Result<GapReason, StoreError> {
    let stored = stored.unwrap_or("");
    GapReason::parse(stored).ok_or_else(|| corrupt_value("gap reason", format!("{stored:?}")))
}

/// A stored non-negative integer as `u64`.
pub(crate) fn to_u64(what: &str, v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| corrupt_value(what, v))
}

/// A stored non-negative integer as `u32`.
pub(crate) fn to_u32(what: &str, v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| corrupt_value(what, v))
}

/// The store clock.
pub(crate) async fn now(inner: &Inner) -> Result<Timestamp, StoreError> {
    let (pinned, offset) = inner.clock.params();
    let now: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT {NOW_SQL}")))
        .bind(pinned)
        .bind(offset)
        .fetch_one(&inner.pool)
        .await
        .map_err(|e| map_sqlx(e, &inner.target))?;
    Ok(Timestamp(now))
}

const SPACE_COLUMNS: &str = "name, last_seq, watermark, in_flight, capacity";

fn space_info_of(row: &PgRow, target: &str) -> Result<SpaceInfo, StoreError> {
    let get = |e| map_sqlx(e, target);
    let name: String = row.try_get(0).map_err(get)?;
    let name = SpaceName::new(&name).map_err(|e| StoreError::Corrupt {
        backend: BACKEND,
        detail: format!("stored space name is invalid: {e}"),
    })?;
    Ok(SpaceInfo {
        name,
        last_seq: to_u64("last_seq", row.try_get(1).map_err(get)?)?,
        watermark: to_u64("watermark", row.try_get(2).map_err(get)?)?,
        in_flight: to_u32("in_flight", row.try_get(3).map_err(get)?)?,
        capacity: to_u32("capacity", row.try_get(4).map_err(get)?)?,
    })
}

/// Create `space` if missing and set its capacity (one upsert).
pub(crate) async fn ensure_space(
    inner: &Inner,
    space: &SpaceName,
    config: &SpaceConfig,
) -> Result<SpaceInfo, StoreError> {
    let (pinned, offset) = inner.clock.params();
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO spaces (name, capacity, created_at) VALUES ($3, $4, {NOW_SQL}) \
         ON CONFLICT (name) DO UPDATE SET capacity = excluded.capacity \
         RETURNING {SPACE_COLUMNS}"
    )))
    .bind(pinned)
    .bind(offset)
    .bind(space.as_str())
    .bind(i64::from(config.capacity))
    .fetch_one(&inner.pool)
    .await
    .map_err(|e| map_sqlx(e, &inner.target))?;
    space_info_of(&row, &inner.target)
}

/// A space's counters, `None` if it does not exist.
pub(crate) async fn space_info(
    inner: &Inner,
    space: &SpaceName,
) -> Result<Option<SpaceInfo>, StoreError> {
    let row = sqlx::query(
        "SELECT name, last_seq, watermark, in_flight, capacity FROM spaces WHERE name = $1",
    )
    .bind(space.as_str())
    .fetch_optional(&inner.pool)
    .await
    .map_err(|e| map_sqlx(e, &inner.target))?;
    row.as_ref()
        .map(|r| space_info_of(r, &inner.target))
        .transpose()
}

/// All spaces, ordered by name.
pub(crate) async fn list_spaces(inner: &Inner) -> Result<Vec<SpaceInfo>, StoreError> {
    let mut conn = inner
        .pool
        .acquire()
        .await
        .map_err(|e| map_sqlx(e, &inner.target))?;
    let rows = sqlx::query(
        "SELECT name, last_seq, watermark, in_flight, capacity FROM spaces ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| map_sqlx(e, &inner.target))?;
    // Back to the pool before returning (see `recovery`): the cleanup service calls this
    // right after `expired_backlog`.
    conn.return_to_pool().await;
    rows.iter()
        .map(|r| space_info_of(r, &inner.target))
        .collect()
}

/// Resolved entries of `space` with `from <= seq <= watermark`, ascending, at most `limit`.
pub(crate) async fn read(
    inner: &Inner,
    space: &SpaceName,
    from: u64,
    limit: usize,
) -> Result<Vec<Entry>, StoreError> {
    let Ok(from) = i64::try_from(from) else {
        return Ok(Vec::new());
    };
    if limit == 0 {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "SELECT s.seq, s.state, s.operation_id, s.owner, s.resolved_at, s.committed_op_id, \
         s.projection_type, s.op_kind, s.op_payload, s.op_source_event, s.recovery, \
         s.gap_reason, s.superseded_by, s.gap_detail \
         FROM spaces sp JOIN slots s ON s.space_id = sp.id \
         WHERE sp.name = $1 AND s.seq >= $2 AND s.seq <= sp.watermark \
         ORDER BY s.seq LIMIT $3",
    )
    .bind(space.as_str())
    .bind(from.max(1))
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(&inner.pool)
    .await
    .map_err(|e| map_sqlx(e, &inner.target))?;
    // Seqs are contiguous: a read that does not start where it was asked either is caught
    // up (no rows) or ran into pruned entries; only then is the prune record consulted.
    let first: Option<i64> = rows
        .first()
        .map(|r| r.try_get(0))
        .transpose()
        .map_err(|e| map_sqlx(e, &inner.target))?;
    if first != Some(from.max(1)) {
        crate::consumers::check_read(inner, space, from.max(1).cast_unsigned()).await?;
    }
    rows.iter()
        .map(|row| entry(space, row, &inner.target))
        .collect()
}

fn entry(space: &SpaceName, row: &PgRow, target: &str) -> Result<Entry, StoreError> {
    let get = |e| map_sqlx(e, target);
    let seq = to_u64("seq", row.try_get(0).map_err(get)?)?;
    let code: i16 = row.try_get(1).map_err(get)?;
    let resolved_at: Option<i64> = row.try_get(4).map_err(get)?;
    let content = match code {
        state::COMMITTED => {
            let recovery: Option<String> = row.try_get(10).map_err(get)?;
            let recovery = recovery
                .map(|json| recovery_from_json(&json, BACKEND, &format!("{space}/{seq}")))
                .transpose()?;
            let operation_id: Option<String> = row.try_get(5).map_err(get)?;
            let kind: Option<String> = row.try_get(7).map_err(get)?;
            let payload: Option<Vec<u8>> = row.try_get(8).map_err(get)?;
            EntryContent::Operation(Operation {
                operation_id: operation_id
                    .ok_or_else(|| corrupt_value("operation id of committed slot", seq))?,
                projection_type: row.try_get(6).map_err(get)?,
                body: OperationBody {
                    kind: kind.unwrap_or_default(),
                    payload: payload.unwrap_or_default(),
                    source_event_id: row.try_get(9).map_err(get)?,
                },
                recovery,
            })
        }
        state::GAP => {
            let reason: Option<String> = row.try_get(11).map_err(get)?;
            let superseded_by: Option<i64> = row.try_get(12).map_err(get)?;
            EntryContent::Gap(Gap {
                reason: gap_reason_of(reason.as_deref())?,
                superseded_by: superseded_by
                    .map(|s| to_u64("superseded_by", s))
                    .transpose()?,
                detail: row.try_get(13).map_err(get)?,
            })
        }
        other => {
            return Err(corrupt_value(
                "state of a slot at or below the watermark",
                other,
            ));
        }
    };
    Ok(Entry {
        space: space.clone(),
        seq,
        lease_operation_id: row.try_get(2).map_err(get)?,
        owner: row.try_get(3).map_err(get)?,
        resolved_at: Timestamp(
            resolved_at.ok_or_else(|| corrupt_value("resolved_at of slot", seq))?,
        ),
        content,
    })
}

/// One slot of `space`, whatever its state, with the token zeroed.
pub(crate) async fn slot(
    inner: &Inner,
    space: &SpaceName,
    seq: u64,
) -> Result<Option<SlotView>, StoreError> {
    let Ok(seq_col) = i64::try_from(seq) else {
        return Ok(None);
    };
    let target = inner.target.as_str();
    let get = |e| map_sqlx(e, target);
    let row = sqlx::query(
        "SELECT s.state, s.gap_reason, s.operation_id, s.projection_type, s.owner, \
         s.fence_resource, s.fence_epoch, s.leased_at, s.expires_at, s.renewals, s.partial, \
         s.result_kind, s.result_payload, s.result_source_event \
         FROM spaces sp JOIN slots s ON s.space_id = sp.id \
         WHERE sp.name = $1 AND s.seq = $2",
    )
    .bind(space.as_str())
    .bind(seq_col)
    .fetch_optional(&inner.pool)
    .await
    .map_err(get)?;
    let Some(row) = row else { return Ok(None) };

    let code: i16 = row.try_get(0).map_err(get)?;
    let gap_reason: Option<String> = row.try_get(1).map_err(get)?;
    let state = slot_state(code, gap_reason.as_deref())?;
    let fence_resource: Option<String> = row.try_get(5).map_err(get)?;
    let fence_epoch: Option<i64> = row.try_get(6).map_err(get)?;
    let fence = match (fence_resource, fence_epoch) {
        (Some(resource), Some(epoch)) => Some(Fence {
            resource,
            epoch: epoch_from_column(epoch),
        }),
        _ => None,
    };
    let result_kind: Option<String> = row.try_get(11).map_err(get)?;
    let result = match result_kind {
        Some(kind) => {
            let payload: Option<Vec<u8>> = row.try_get(12).map_err(get)?;
            Some(OperationBody {
                kind,
                payload: payload.unwrap_or_default(),
                source_event_id: row.try_get(13).map_err(get)?,
            })
        }
        None => None,
    };
    let renewals: i32 = row.try_get(9).map_err(get)?;
    Ok(Some(SlotView {
        lease: LeaseRecord {
            space: space.clone(),
            seq,
            token: Token([0; 16]),
            operation_id: row.try_get(2).map_err(get)?,
            projection_type: row.try_get(3).map_err(get)?,
            owner: row.try_get(4).map_err(get)?,
            fence,
            leased_at: Timestamp(row.try_get(7).map_err(get)?),
            expires_at: Timestamp(row.try_get(8).map_err(get)?),
            renewals: to_u32("renewals", i64::from(renewals))?,
        },
        state,
        partial: row.try_get(10).map_err(get)?,
        result,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_round_trip_bit_for_bit() {
        for e in [0, 1, 42, i64::MAX as u64, u64::MAX] {
            assert_eq!(epoch_from_column(epoch_to_column(e)), e);
        }
    }

    #[test]
    fn states_decode_and_reject_unknown_codes() {
        assert_eq!(slot_state(state::LEASED, None).unwrap(), SlotState::Leased);
        assert_eq!(
            slot_state(state::GAP, Some("superseded")).unwrap(),
            SlotState::Gap(GapReason::Superseded)
        );
        assert!(matches!(
            slot_state(7, None),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
