//! The read side: the ordered log and single slots.
//!
//! Reads run on the read pool, so they never wait for the writer (WAL). Each query is one
//! statement and therefore sees one consistent snapshot: [`read`] compares seqs with the
//! watermark stored in the same snapshot, so a reader never sees an entry above `W` (I7),
//! and entries at or below `W` are resolved and never change, so reading `1..=W` again gives
//! the same entries.

use seqlease_core::columns::recovery_from_json;
use seqlease_core::{
    Entry, EntryContent, Fence, Gap, LeaseRecord, Operation, OperationBody, SlotState, SlotView,
    SpaceName, StoreError, Timestamp, Token,
};
use sqlx::Row;
use sqlx::sqlite::{SqlitePool, SqliteRow};

use crate::codec::{
    epoch_from_column, gap_reason_of, seq_param, slot_state, state, to_u32, to_u64,
};
use crate::error::{BACKEND, corrupt_value, map_sqlx};

/// Resolved entries of `space` with `from <= seq <= watermark`, ascending, at most `limit`.
pub(crate) async fn read(
    readers: &SqlitePool,
    space: &SpaceName,
    from: u64,
    limit: usize,
) -> Result<Vec<Entry>, StoreError> {
    let Some(from) = seq_param(from) else {
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
         WHERE sp.name = ?1 AND s.seq >= ?2 AND s.seq <= sp.watermark \
         ORDER BY s.seq LIMIT ?3",
    )
    .bind(space.as_str())
    .bind(from.max(1))
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(readers)
    .await
    .map_err(map_sqlx)?;
    // Seqs are contiguous: a read that does not start where it was asked either is caught
    // up (no rows) or ran into pruned entries; only then is the prune record consulted.
    let first: Option<i64> = rows
        .first()
        .map(|r| r.try_get(0))
        .transpose()
        .map_err(map_sqlx)?;
    if first != Some(from.max(1)) {
        crate::consumers::check_read(readers, space, from.max(1).cast_unsigned()).await?;
    }
    rows.iter().map(|row| entry(space, row)).collect()
}

fn entry(space: &SpaceName, row: &SqliteRow) -> Result<Entry, StoreError> {
    let seq = to_u64("seq", row.try_get(0).map_err(map_sqlx)?)?;
    let code: i64 = row.try_get(1).map_err(map_sqlx)?;
    let resolved_at: Option<i64> = row.try_get(4).map_err(map_sqlx)?;
    let content = match code {
        state::COMMITTED => {
            let recovery: Option<String> = row.try_get(10).map_err(map_sqlx)?;
            let recovery = recovery
                .map(|json| recovery_from_json(&json, BACKEND, &format!("{space}/{seq}")))
                .transpose()?;
            let operation_id: Option<String> = row.try_get(5).map_err(map_sqlx)?;
            let kind: Option<String> = row.try_get(7).map_err(map_sqlx)?;
            let payload: Option<Vec<u8>> = row.try_get(8).map_err(map_sqlx)?;
            EntryContent::Operation(Operation {
                operation_id: operation_id
                    .ok_or_else(|| corrupt_value("operation id of committed slot", seq))?,
                projection_type: row.try_get(6).map_err(map_sqlx)?,
                body: OperationBody {
                    kind: kind.unwrap_or_default(),
                    payload: payload.unwrap_or_default(),
                    source_event_id: row.try_get(9).map_err(map_sqlx)?,
                },
                recovery,
            })
        }
        state::GAP => {
            let reason: Option<String> = row.try_get(11).map_err(map_sqlx)?;
            let superseded_by: Option<i64> = row.try_get(12).map_err(map_sqlx)?;
            EntryContent::Gap(Gap {
                reason: gap_reason_of(reason.as_deref())?,
                superseded_by: superseded_by
                    .map(|s| to_u64("superseded_by", s))
                    .transpose()?,
                detail: row.try_get(13).map_err(map_sqlx)?,
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
        lease_operation_id: row.try_get(2).map_err(map_sqlx)?,
        owner: row.try_get(3).map_err(map_sqlx)?,
        resolved_at: Timestamp(
            resolved_at.ok_or_else(|| corrupt_value("resolved_at of slot", seq))?,
        ),
        content,
    })
}

/// One slot of `space`, whatever its state, with the token zeroed.
pub(crate) async fn slot(
    readers: &SqlitePool,
    space: &SpaceName,
    seq: u64,
) -> Result<Option<SlotView>, StoreError> {
    let Some(seq_col) = seq_param(seq) else {
        return Ok(None);
    };
    let row = sqlx::query(
        "SELECT s.state, s.gap_reason, s.operation_id, s.projection_type, s.owner, \
         s.fence_resource, s.fence_epoch, s.leased_at, s.expires_at, s.renewals, s.partial, \
         s.result_kind, s.result_payload, s.result_source_event \
         FROM spaces sp JOIN slots s ON s.space_id = sp.id \
         WHERE sp.name = ?1 AND s.seq = ?2",
    )
    .bind(space.as_str())
    .bind(seq_col)
    .fetch_optional(readers)
    .await
    .map_err(map_sqlx)?;
    let Some(row) = row else { return Ok(None) };

    let code: i64 = row.try_get(0).map_err(map_sqlx)?;
    let gap_reason: Option<String> = row.try_get(1).map_err(map_sqlx)?;
    let state: SlotState = slot_state(code, gap_reason.as_deref())?;
    let fence_resource: Option<String> = row.try_get(5).map_err(map_sqlx)?;
    let fence_epoch: Option<i64> = row.try_get(6).map_err(map_sqlx)?;
    let fence = match (fence_resource, fence_epoch) {
        (Some(resource), Some(epoch)) => Some(Fence {
            resource,
            epoch: epoch_from_column(epoch),
        }),
        _ => None,
    };
    let result_kind: Option<String> = row.try_get(11).map_err(map_sqlx)?;
    let result = match result_kind {
        Some(kind) => {
            let payload: Option<Vec<u8>> = row.try_get(12).map_err(map_sqlx)?;
            Some(OperationBody {
                kind,
                payload: payload.unwrap_or_default(),
                source_event_id: row.try_get(13).map_err(map_sqlx)?,
            })
        }
        None => None,
    };
    Ok(Some(SlotView {
        lease: LeaseRecord {
            space: space.clone(),
            seq,
            token: Token([0; 16]),
            operation_id: row.try_get(2).map_err(map_sqlx)?,
            projection_type: row.try_get(3).map_err(map_sqlx)?,
            owner: row.try_get(4).map_err(map_sqlx)?,
            fence,
            leased_at: Timestamp(row.try_get(7).map_err(map_sqlx)?),
            expires_at: Timestamp(row.try_get(8).map_err(map_sqlx)?),
            renewals: to_u32("renewals", row.try_get(9).map_err(map_sqlx)?)?,
        },
        state,
        partial: row.try_get(10).map_err(map_sqlx)?,
        result,
    }))
}
