//! Late commits in the PostgreSQL store (see `seqlease_core::late`): one transaction locks
//! the spaces of the items (name order, like every writer of slots), reads the clock after
//! the locks are held, loads each slot with its token and fence, reads the fenced
//! resource's epoch `FOR SHARE` (a change of holder waits for this transaction), lets the
//! shared planner decide, and appends re-sequenced work with the statement recovery uses
//! for new-seq placement.

use seqlease_core::columns::{fence_from_columns, recovery_to_json};
use seqlease_core::late::{LatePlan, LateSlot, plan_late};
use seqlease_core::{
    BatchOutcome, LateCommit, LateOutcome, LeaseError, RecoveryInfo, RecoveryType, Reply,
    SlotEventKind, StoreError, Timestamp,
};
use sqlx::Row;
use sqlx::postgres::PgConnection;

use super::{Appended, lock_spaces, to_i64, write_spaces};
use crate::Inner;
use crate::error::{BACKEND, map_sqlx};
use crate::history::Events;
use crate::read::{epoch_from_column, slot_state, to_u64};

/// Apply late commits in one transaction, in order.
pub(crate) async fn commit_late(
    inner: &Inner,
    items: Vec<LateCommit>,
) -> Result<BatchOutcome, StoreError> {
    let mut outcome = BatchOutcome::default();
    if items.is_empty() {
        return Ok(outcome);
    }
    let target = inner.target.as_str();
    let get = |e| map_sqlx(e, target);
    let mut tx = inner.pool.begin().await.map_err(get)?;
    let names: Vec<String> = items.iter().map(|i| i.key.space.to_string()).collect();
    let (mut spaces, now) = lock_spaces(&mut tx, inner, &names).await?;
    let mut events = Events::default();
    for item in items {
        let key = &item.key;
        let Some(si) = spaces.iter().position(|s| s.name == key.space) else {
            outcome.replies.push(Err(LeaseError::UnknownSpace {
                space: key.space.clone(),
            }));
            continue;
        };
        let space_id = spaces[si].id;
        let Ok(seq) = i64::try_from(key.seq) else {
            outcome.replies.push(Err(LeaseError::UnknownSlot {
                space: key.space.clone(),
                seq: key.seq,
            }));
            continue;
        };
        let Some(slot) = load(&mut tx, space_id, seq, target).await? else {
            outcome.replies.push(Err(LeaseError::UnknownSlot {
                space: key.space.clone(),
                seq: key.seq,
            }));
            continue;
        };
        if slot.token.as_slice() != key.token.0.as_slice() {
            outcome.replies.push(Err(LeaseError::WrongToken {
                space: key.space.clone(),
                seq: key.seq,
            }));
            continue;
        }
        let fence = fence_from_columns(slot.fence_resource.clone(), slot.fence_epoch);
        let current_epoch = match &fence {
            Some(f) => {
                let epoch: Option<i64> =
                    sqlx::query_scalar("SELECT epoch FROM resources WHERE name = $1 FOR SHARE")
                        .bind(&f.resource)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(get)?;
                epoch.map_or(0, epoch_from_column)
            }
            None => 0,
        };
        let committed_at: Option<i64> = sqlx::query_scalar(
            "SELECT seq FROM slots WHERE space_id = $1 AND committed_op_id = $2",
        )
        .bind(space_id)
        .bind(&slot.operation_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(get)?;
        let facts = LateSlot {
            state: slot_state(slot.state, slot.gap_reason.as_deref())?,
            expires_at: Timestamp(slot.expires_at),
            fence: fence.as_ref(),
            current_epoch,
            committed_at: committed_at.map(|s| to_u64("seq", s)).transpose()?,
        };
        match plan_late(key, facts, Timestamp(now)) {
            Err(refused) => {
                outcome.replies.push(Err(refused));
                continue;
            }
            Ok(LatePlan::Answer(answer)) => {
                outcome.replies.push(Ok(Reply::Late(answer)));
                continue;
            }
            Ok(LatePlan::Resequence) => {}
        }
        let space = &mut spaces[si];
        let at = space.last_seq + 1;
        space.last_seq = at;
        space.dirty = true;
        let recovery = RecoveryInfo {
            original_seq: key.seq,
            original_operation_id: slot.operation_id.clone(),
            recovered_at: Timestamp(now),
            recovery_type: RecoveryType::Late,
        };
        let mut appended = Appended::default();
        appended.push(
            space_id,
            to_i64("seq", at)?,
            slot.operation_id.clone(),
            slot.projection_type,
            slot.owner.clone(),
            fence.as_ref(),
            item.body,
            recovery_to_json(&recovery, BACKEND)?,
        );
        appended.write(&mut tx, now, target).await?;
        let detail = Some(format!("late work re-sequenced at seq {at}"));
        events.push(
            space_id,
            seq,
            now,
            SlotEventKind::Recovered,
            &slot.owner,
            detail,
        );
        outcome
            .replies
            .push(Ok(Reply::Late(LateOutcome::Resequenced {
                seq: at,
                original_seq: key.seq,
            })));
    }
    events.write(&mut tx, target).await?;
    write_spaces(&mut tx, inner, &spaces, &mut outcome).await?;
    tx.commit().await.map_err(get)?;
    super::remember_counters(inner, &spaces);
    Ok(outcome)
}

/// A slot row as a late commit needs it.
struct SlotRow {
    token: Vec<u8>,
    state: i16,
    gap_reason: Option<String>,
    expires_at: i64,
    operation_id: String,
    projection_type: String,
    owner: String,
    fence_resource: Option<String>,
    fence_epoch: Option<i64>,
}

async fn load(
    conn: &mut PgConnection,
    space_id: i64,
    seq: i64,
    target: &str,
) -> Result<Option<SlotRow>, StoreError> {
    let get = |e| map_sqlx(e, target);
    let row = sqlx::query(
        "SELECT token, state, gap_reason, expires_at, operation_id, projection_type, owner,
                fence_resource, fence_epoch
         FROM slots WHERE space_id = $1 AND seq = $2",
    )
    .bind(space_id)
    .bind(seq)
    .fetch_optional(&mut *conn)
    .await
    .map_err(get)?;
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(Some(SlotRow {
        token: row.try_get(0).map_err(get)?,
        state: row.try_get(1).map_err(get)?,
        gap_reason: row.try_get(2).map_err(get)?,
        expires_at: row.try_get(3).map_err(get)?,
        operation_id: row.try_get(4).map_err(get)?,
        projection_type: row.try_get(5).map_err(get)?,
        owner: row.try_get(6).map_err(get)?,
        fence_resource: row.try_get(7).map_err(get)?,
        fence_epoch: row.try_get(8).map_err(get)?,
    }))
}
