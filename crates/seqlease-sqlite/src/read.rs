//! The read side: the ordered log and single slots. The log is read with rusqlite on a
//! blocking thread ([`BulkReaders`]), single slots through the sqlx read pool.
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
use sqlx::sqlite::SqlitePool;

use crate::codec::{
    epoch_from_column, gap_reason_of, seq_param, slot_state, state, to_u32, to_u64,
};
use crate::error::{BACKEND, corrupt_value, map_sqlx};

/// Resolved entries of `space` with `from <= seq <= watermark`, ascending, at most `limit`
/// (through [`BulkReaders`]).
pub(crate) async fn read(
    readers: &SqlitePool,
    bulk: &std::sync::Arc<BulkReaders>,
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
    let from = from.max(1);
    let entries = bulk.read(space, from, limit).await?;
    // Seqs are contiguous: a read that does not start where it was asked either is caught
    // up (no rows) or ran into pruned entries; only then is the prune record consulted.
    if entries.first().map(|e| e.seq) != Some(from.cast_unsigned()) {
        crate::consumers::check_read(readers, space, from.cast_unsigned()).await?;
    }
    Ok(entries)
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

/// The ordered log read through `rusqlite` on a blocking thread: the path consumers and
/// replays take. sqlx's SQLite driver hands every row from its worker thread to the caller
/// and copies each value on the way; a replay reads millions of rows, so that hand-off, not
/// SQLite, was the cost (about 12 µs per entry). Here a batch is one `spawn_blocking` call on
/// a pooled read-only connection with a cached statement, and each row is decoded straight
/// from SQLite's buffers.
pub(crate) struct BulkReaders {
    path: std::path::PathBuf,
    busy_timeout: std::time::Duration,
    /// `None` once closed.
    idle: std::sync::Mutex<Option<Vec<rusqlite::Connection>>>,
}

const READ_SQL: &str = "SELECT s.seq, s.state, s.operation_id, s.owner, s.resolved_at, \
     s.committed_op_id, s.projection_type, s.op_kind, s.op_payload, s.op_source_event, \
     s.recovery, s.gap_reason, s.superseded_by, s.gap_detail \
     FROM spaces sp JOIN slots s ON s.space_id = sp.id \
     WHERE sp.name = ?1 AND s.seq >= ?2 AND s.seq <= sp.watermark \
     ORDER BY s.seq LIMIT ?3";

impl BulkReaders {
    pub(crate) fn new(path: &std::path::Path, busy_timeout: std::time::Duration) -> Self {
        BulkReaders {
            path: path.to_path_buf(),
            busy_timeout,
            idle: std::sync::Mutex::new(Some(Vec::new())),
        }
    }

    fn connection(&self) -> Result<rusqlite::Connection, StoreError> {
        let pooled = match self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_mut()
        {
            Some(idle) => idle.pop(),
            None => {
                return Err(StoreError::Unavailable {
                    backend: BACKEND,
                    detail: "the store was closed".to_string(),
                });
            }
        };
        if let Some(conn) = pooled {
            return Ok(conn);
        }
        let map = |e| crate::error::map_rusqlite(e, &self.path);
        let conn = rusqlite::Connection::open_with_flags(
            &self.path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(map)?;
        conn.busy_timeout(self.busy_timeout).map_err(map)?;
        Ok(conn)
    }

    /// Close the idle connections; later reads fail with [`StoreError::Unavailable`].
    pub(crate) fn close(&self) {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
    }

    /// Resolved entries of `space` with `from <= seq <= watermark`, ascending, at most
    /// `limit` (the contract of `Store::read`, prune check excepted).
    pub(crate) async fn read(
        self: &std::sync::Arc<Self>,
        space: &SpaceName,
        from: i64,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let (this, space) = (self.clone(), space.clone());
        tokio::task::spawn_blocking(move || {
            let conn = this.connection()?;
            let entries =
                bulk_read(&conn, &space, from, limit).map_err(|e| e.into_store(&this.path));
            if let Some(idle) = this
                .idle
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .as_mut()
            {
                idle.push(conn);
            }
            entries
        })
        .await
        .map_err(|e| StoreError::Backend {
            backend: BACKEND,
            detail: format!("the sqlite read task failed: {e}"),
        })?
    }
}

fn bulk_read(
    conn: &rusqlite::Connection,
    space: &SpaceName,
    from: i64,
    limit: usize,
) -> Result<Vec<Entry>, crate::error::WriteError> {
    let mut stmt = conn.prepare_cached(READ_SQL)?;
    let limit_col = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut rows = stmt.query(rusqlite::params![space.as_str(), from, limit_col])?;
    let mut out = Vec::with_capacity(limit.min(65_536));
    while let Some(row) = rows.next()? {
        out.push(bulk_entry(space, row)?);
    }
    Ok(out)
}

fn bulk_entry(
    space: &SpaceName,
    row: &rusqlite::Row<'_>,
) -> Result<Entry, crate::error::WriteError> {
    let seq = to_u64("seq", row.get(0)?)?;
    let code: i64 = row.get(1)?;
    let resolved_at: Option<i64> = row.get(4)?;
    let content = match code {
        state::COMMITTED => {
            let recovery: Option<String> = row.get(10)?;
            let recovery = recovery
                .map(|json| recovery_from_json(&json, BACKEND, &format!("{space}/{seq}")))
                .transpose()?;
            let operation_id: Option<String> = row.get(5)?;
            let kind: Option<String> = row.get(7)?;
            let payload: Option<Vec<u8>> = row.get(8)?;
            EntryContent::Operation(Operation {
                operation_id: operation_id
                    .ok_or_else(|| corrupt_value("operation id of committed slot", seq))?,
                projection_type: row.get(6)?,
                body: OperationBody {
                    kind: kind.unwrap_or_default(),
                    payload: payload.unwrap_or_default(),
                    source_event_id: row.get(9)?,
                },
                recovery,
            })
        }
        state::GAP => {
            let reason: Option<String> = row.get(11)?;
            let superseded_by: Option<i64> = row.get(12)?;
            EntryContent::Gap(Gap {
                reason: gap_reason_of(reason.as_deref())?,
                superseded_by: superseded_by
                    .map(|s| to_u64("superseded_by", s))
                    .transpose()?,
                detail: row.get(13)?,
            })
        }
        other => {
            return Err(corrupt_value("state of a slot at or below the watermark", other).into());
        }
    };
    Ok(Entry {
        space: space.clone(),
        seq,
        lease_operation_id: row.get(2)?,
        owner: row.get(3)?,
        resolved_at: Timestamp(
            resolved_at.ok_or_else(|| corrupt_value("resolved_at of slot", seq))?,
        ),
        content,
    })
}
