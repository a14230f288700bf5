//! Late commits in the SQLite store (see `seqlease_core::late`): one `BEGIN IMMEDIATE`
//! transaction on the write connection loads each slot with its token, fence and the seq
//! where its operation is committed, lets the shared planner decide, and appends the
//! re-sequenced operation with the statement recovery uses for new-seq placement.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use seqlease_core::columns::fence_from_columns;
use seqlease_core::late::{LatePlan, LateSlot, plan_late};
use seqlease_core::{
    BatchOutcome, Fence, LateCommit, LateOutcome, LeaseError, RecoveryInfo, RecoveryType, Reply,
    SlotEventKind, Timestamp,
};

use super::{Append, Spaces, append_committed, committed_at};
use crate::codec::{seq_param, slot_state};
use crate::error::WriteError;
use crate::history::record;
use crate::resources::epoch_in;

/// A slot row as a late commit needs it.
struct Row {
    token: Vec<u8>,
    state: i64,
    gap_reason: Option<String>,
    expires_at: i64,
    operation_id: String,
    projection_type: String,
    owner: String,
    fence: Option<Fence>,
}

const LOAD: &str = "SELECT token, state, gap_reason, expires_at, operation_id, \
     projection_type, owner, fence_resource, fence_epoch FROM slots \
     WHERE space_id = ?1 AND seq = ?2";

/// Apply late commits in one transaction, in order.
pub(crate) fn commit_late(
    conn: &mut Connection,
    clock: &dyn seqlease_core::Clock,
    items: Vec<LateCommit>,
) -> Result<BatchOutcome, WriteError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = clock.now(); // under the write lock (see `execute`)
    let mut outcome = BatchOutcome::default();
    let mut spaces = Spaces::default();
    for item in items {
        let reply = one(&tx, &mut spaces, now, item)?;
        outcome.replies.push(reply);
    }
    spaces.write(&tx, &mut outcome)?;
    tx.commit()?;
    Ok(outcome)
}

fn one(
    conn: &Connection,
    spaces: &mut Spaces,
    now: Timestamp,
    item: LateCommit,
) -> Result<Result<Reply, LeaseError>, WriteError> {
    let key = &item.key;
    let Some(index) = spaces.get(conn, &key.space)? else {
        return Ok(Err(LeaseError::UnknownSpace {
            space: key.space.clone(),
        }));
    };
    let space_id = spaces.0[index].id;
    let unknown = || LeaseError::UnknownSlot {
        space: key.space.clone(),
        seq: key.seq,
    };
    let Some(seq) = seq_param(key.seq) else {
        return Ok(Err(unknown()));
    };
    let row = conn
        .prepare_cached(LOAD)?
        .query_row(params![space_id, seq], |r| {
            Ok(Row {
                token: r.get(0)?,
                state: r.get(1)?,
                gap_reason: r.get(2)?,
                expires_at: r.get(3)?,
                operation_id: r.get(4)?,
                projection_type: r.get(5)?,
                owner: r.get(6)?,
                fence: fence_from_columns(r.get(7)?, r.get(8)?),
            })
        })
        .optional()?;
    let Some(row) = row else {
        return Ok(Err(unknown()));
    };
    if row.token.as_slice() != key.token.0.as_slice() {
        return Ok(Err(LeaseError::WrongToken {
            space: key.space.clone(),
            seq: key.seq,
        }));
    }
    let current_epoch = match &row.fence {
        Some(f) => epoch_in(conn, &f.resource)?,
        None => 0,
    };
    let facts = LateSlot {
        state: slot_state(row.state, row.gap_reason.as_deref())?,
        expires_at: Timestamp(row.expires_at),
        fence: row.fence.as_ref(),
        current_epoch,
        committed_at: committed_at(conn, space_id, &row.operation_id)?,
    };
    match plan_late(key, facts, now) {
        Err(refused) => return Ok(Err(refused)),
        Ok(LatePlan::Answer(answer)) => return Ok(Ok(Reply::Late(answer))),
        Ok(LatePlan::Resequence) => {}
    }
    let recovery = RecoveryInfo {
        original_seq: key.seq,
        original_operation_id: row.operation_id.clone(),
        recovered_at: now,
        recovery_type: RecoveryType::Late,
    };
    let append = Append {
        operation_id: &row.operation_id,
        projection_type: &row.projection_type,
        owner: &row.owner,
        fence: row.fence.as_ref(),
        body: &item.body,
        recovery: &recovery,
    };
    let at = append_committed(conn, spaces, index, now, append)?;
    let detail = format!("late work re-sequenced at seq {at}");
    let kind = SlotEventKind::Recovered;
    record(conn, space_id, seq, now, kind, &row.owner, Some(&detail))?;
    Ok(Ok(Reply::Late(LateOutcome::Resequenced {
        seq: at,
        original_seq: key.seq,
    })))
}
