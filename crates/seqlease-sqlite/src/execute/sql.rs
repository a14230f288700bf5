//! The statements of the write path: load what a batch touches, write back what it changed.
//!
//! Every statement runs on the write connection's own thread (see `writer`), where running
//! a prepared statement costs microseconds, so the writes go one row per statement, each a
//! primary-key lookup; all statements are prepared once and kept in the connection's cache
//! (`prepare_cached`). The load is one query per space: the list of seqs to load is bound
//! as one JSON array and expanded with `json_each`, so its SQL text is constant too.
//!
//! Every value is bound; no SQL text is put together at run time.

use rusqlite::{Connection, params};
use seqlease_core::{Fence, OperationBody, SpaceName, StoreError, Timestamp, Token};

use super::plan::{Plan, Resolution, Slot, Space};
use crate::codec::{
    epoch_from_column, epoch_to_column, seq_param, slot_state, state, to_u32, to_u64,
};
use crate::error::{BACKEND, WriteError, corrupt_value};
use crate::history::INSERT_OWNER_EVENT;

/// A space's row joined with each of the requested slots that exists (slot columns NULL
/// when none does), each LEASED one with the seq where its operation id is already
/// committed, if it is (I6). The seqs drive the join (`json_each`, then a primary-key
/// lookup each): written as `seq IN (SELECT … json_each)` SQLite first built a temporary
/// index of the list, a B-tree opened and freed on every batch.
const LOAD_SPACE: &str = "SELECT sp.id, sp.last_seq, sp.watermark, sp.in_flight, sp.capacity, \
     s.seq, s.state, s.token, s.expires_at, s.gap_reason, s.operation_id, \
     (s.partial IS NOT NULL OR s.result_kind IS NOT NULL) AS has_work, s.renewals, \
     CASE WHEN s.state = 0 THEN (SELECT c.seq FROM slots c \
         WHERE c.space_id = sp.id AND c.committed_op_id = s.operation_id) END AS committed_seq, \
     s.fence_resource, s.fence_epoch \
     FROM spaces sp LEFT JOIN json_each(?2) LEFT JOIN slots s \
     ON s.space_id = sp.id AND s.seq = json_each.value \
     WHERE sp.name = ?1";

/// What [`load_space`] found: the space's row and the requested slots that exist, each
/// with the seq where its operation id is already committed (LEASED slots only).
pub(crate) struct Loaded {
    pub space: Space,
    pub slots: Vec<(u64, Slot, Option<u64>)>,
}

/// Read a space's row and its slots `seqs` in one query; `None` when the space does not
/// exist.
pub(crate) fn load_space(
    conn: &Connection,
    name: &SpaceName,
    seqs: &[i64],
) -> Result<Option<Loaded>, WriteError> {
    let mut stmt = conn.prepare_cached(LOAD_SPACE)?;
    let mut rows = stmt.query((name.as_str(), json_array(seqs.into())))?;
    let mut loaded: Option<Loaded> = None;
    while let Some(row) = rows.next()? {
        let loaded = match &mut loaded {
            Some(loaded) => loaded,
            None => loaded.insert(Loaded {
                space: Space {
                    name: name.clone(),
                    id: row.get(0)?,
                    last_seq: to_u64("last_seq", row.get(1)?)?,
                    watermark: to_u64("watermark", row.get(2)?)?,
                    in_flight: to_u32("in_flight", row.get(3)?)?,
                    capacity: to_u32("capacity", row.get(4)?)?,
                    dirty: false,
                    freed: false,
                },
                slots: Vec::with_capacity(seqs.len()),
            }),
        };
        // No slot joined: the space exists but none of the requested slots does.
        let Some(seq) = row.get::<_, Option<i64>>(5)? else {
            continue;
        };
        let token = row.get_ref(7)?.as_blob()?;
        let gap_reason = row.get_ref(9)?.as_str_or_null()?;
        let slot = Slot {
            granted: None,
            state: slot_state(row.get(6)?, gap_reason)?,
            token: Token::from_slice(token)
                .ok_or_else(|| corrupt_value("token length", token.len()))?,
            operation_id: row.get(10)?,
            fence: match (
                row.get::<_, Option<String>>(14)?,
                row.get::<_, Option<i64>>(15)?,
            ) {
                (Some(resource), Some(epoch)) => Some(Fence {
                    resource,
                    epoch: epoch_from_column(epoch),
                }),
                _ => None,
            },
            expires_at: Timestamp(row.get(8)?),
            renewals: to_u32("renewals", row.get(12)?)?,
            has_work: row.get(11)?,
            lease_changed: false,
            partial: None,
            result: None,
            resolution: None,
        };
        let committed_seq = row
            .get::<_, Option<i64>>(13)?
            .map(|c| to_u64("seq", c))
            .transpose()?;
        loaded
            .slots
            .push((to_u64("seq", seq)?, slot, committed_seq));
    }
    Ok(loaded)
}

/// A JSON array for `json_each`. Numbers and strings always serialize.
fn json_array(items: serde_json::Value) -> String {
    items.to_string()
}

/// Write everything the plan changed: new slots, changed leases, resolutions, watermarks
/// and space counters.
pub(crate) fn write(conn: &Connection, plan: &mut Plan, now: Timestamp) -> Result<(), WriteError> {
    insert_granted(conn, plan)?;
    update_leases(conn, plan)?;
    record_events(conn, plan, now)?;
    resolve(conn, plan, now)?;
    for index in 0..plan.spaces.len() {
        let space = &plan.spaces[index];
        if !space.dirty {
            continue;
        }
        let watermark = write_space_counters(
            conn,
            space.id,
            space.last_seq,
            space.in_flight,
            space.watermark,
        )?;
        plan.set_watermark(index, watermark);
    }
    Ok(())
}

/// A space's watermark after a write: `W` = (lowest LEASED seq) − 1, or `last_seq` (?1)
/// when nothing is LEASED. Only slots above the current watermark (?3) can be LEASED, and
/// the partial index `slots_leased` makes the lookup one index seek (`INDEXED BY`
/// guarantees that plan, or fails loudly). `MAX` keeps `W` monotonic (I7).
pub(crate) const NEXT_WATERMARK: &str = "SELECT MAX(?3, COALESCE((SELECT MIN(seq) \
     FROM slots INDEXED BY slots_leased WHERE space_id = ?2 AND state = 0 AND seq > ?3) - 1, ?1))";

/// A space's counters, written back.
pub(crate) const UPDATE_SPACE: &str =
    "UPDATE spaces SET last_seq = ?1, in_flight = ?2, watermark = ?3 WHERE id = ?4";

/// Write a space's counters and its recomputed watermark, which it returns. `watermark` is
/// the one loaded in this transaction (under the write lock, so still the row's).
///
/// Two statements, not one `UPDATE … RETURNING`: SQLite buffers RETURNING rows in a
/// temporary B-tree, opened and torn down on every batch (~7 % of the write thread's
/// time in a profile of `seqlease bench`).
pub(crate) fn write_space_counters(
    conn: &Connection,
    id: i64,
    last_seq: u64,
    in_flight: u32,
    watermark: u64,
) -> Result<u64, WriteError> {
    let last_seq = seq_column("last_seq", last_seq)?;
    let next: i64 = conn.prepare_cached(NEXT_WATERMARK)?.query_row(
        params![last_seq, id, seq_column("watermark", watermark)?],
        |row| row.get(0),
    )?;
    conn.prepare_cached(UPDATE_SPACE)?.execute(params![
        last_seq,
        i64::from(in_flight),
        next,
        id
    ])?;
    Ok(to_u64("watermark", next)?)
}

/// A slot granted in this batch, as it stands before any resolution.
const INSERT_SLOT: &str = "INSERT INTO slots (space_id, seq, state, token, operation_id, \
     projection_type, owner, fence_resource, fence_epoch, leased_at, expires_at, renewals, \
     partial, result_kind, result_payload, result_source_event) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)";

/// A renewal or a lease expired on hand-over to recovery.
const UPDATE_EXPIRY: &str =
    "UPDATE slots SET expires_at = ?1, renewals = ?2 WHERE space_id = ?3 AND seq = ?4";

/// Partial work recorded under a lease.
const UPDATE_PARTIAL: &str = "UPDATE slots SET partial = ?1 WHERE space_id = ?2 AND seq = ?3";

/// A result recorded under a lease.
const UPDATE_RESULT: &str = "UPDATE slots SET result_kind = ?1, result_payload = ?2, \
     result_source_event = ?3 WHERE space_id = ?4 AND seq = ?5";

/// A LEASED slot becomes COMMITTED; its recorded work goes.
const COMMIT_SLOT: &str = "UPDATE slots SET state = ?1, resolved_at = ?2, \
     committed_op_id = operation_id, op_kind = ?3, op_payload = ?4, op_source_event = ?5, \
     partial = NULL, result_kind = NULL, result_payload = NULL, result_source_event = NULL \
     WHERE space_id = ?6 AND seq = ?7 AND state = ?8";

/// A LEASED slot becomes a gap; its recorded work goes.
const GAP_SLOT: &str = "UPDATE slots SET state = ?1, resolved_at = ?2, gap_reason = ?3, \
     superseded_by = ?4, gap_detail = ?5, \
     partial = NULL, result_kind = NULL, result_payload = NULL, result_source_event = NULL \
     WHERE space_id = ?6 AND seq = ?7 AND state = ?8";

fn seq_column(what: &str, v: u64) -> Result<i64, StoreError> {
    seq_param(v).ok_or_else(|| corrupt_value(what, v))
}

/// Insert the slots granted in this batch, as they stand before any resolution.
fn insert_granted(conn: &Connection, plan: &Plan) -> Result<(), WriteError> {
    let mut insert = None;
    for ((index, seq), slot) in &plan.slots {
        let Some(granted) = &slot.granted else {
            continue;
        };
        let stmt = match &mut insert {
            Some(stmt) => stmt,
            None => insert.insert(conn.prepare_cached(INSERT_SLOT)?),
        };
        let (kind, payload, source) = body_columns(slot.result.as_ref());
        let inserted = stmt.execute(params![
            plan.spaces[*index].id,
            seq_column("seq", *seq)?,
            state::LEASED,
            &slot.token.as_bytes()[..],
            slot.operation_id.as_str(),
            granted.projection_type.as_str(),
            granted.owner.as_str(),
            granted.fence.as_ref().map(|f| f.resource.as_str()),
            granted.fence.as_ref().map(|f| epoch_to_column(f.epoch)),
            granted.leased_at.as_micros(),
            slot.expires_at.as_micros(),
            i64::from(slot.renewals),
            slot.partial.as_deref(),
            kind,
            payload,
            source,
        ])?;
        expect_one("insert a granted slot", inserted)?;
    }
    Ok(())
}

/// Columns of a recorded result: kind, payload, source event.
fn body_columns(body: Option<&OperationBody>) -> (Option<&str>, Option<&[u8]>, Option<&str>) {
    match body {
        Some(b) => (
            Some(b.kind.as_str()),
            Some(b.payload.as_slice()),
            b.source_event_id.as_deref(),
        ),
        None => (None, None, None),
    }
}

/// Write lease changes of stored slots: renewals, expiry on hand-over, recorded work.
fn update_leases(conn: &Connection, plan: &Plan) -> Result<(), WriteError> {
    for ((index, seq), slot) in plan.slots.iter().filter(|(_, s)| s.granted.is_none()) {
        let (space_id, seq) = (plan.spaces[*index].id, seq_column("seq", *seq)?);
        if slot.lease_changed {
            let updated = conn.prepare_cached(UPDATE_EXPIRY)?.execute(params![
                slot.expires_at.as_micros(),
                i64::from(slot.renewals),
                space_id,
                seq,
            ])?;
            expect_one("update a lease", updated)?;
        }
        if let Some(partial) = &slot.partial {
            let updated = conn.prepare_cached(UPDATE_PARTIAL)?.execute(params![
                partial.as_slice(),
                space_id,
                seq,
            ])?;
            expect_one("record partial work", updated)?;
        }
        if let Some(result) = &slot.result {
            let updated = conn.prepare_cached(UPDATE_RESULT)?.execute(params![
                result.kind.as_str(),
                result.payload.as_slice(),
                result.source_event_id.as_deref(),
                space_id,
                seq,
            ])?;
            expect_one("record a result", updated)?;
        }
    }
    Ok(())
}

/// Record the batch's history events (renewals, hand-overs to recovery): one `INSERT` each,
/// the actor read from the slot row. Grants and commits record nothing.
fn record_events(conn: &Connection, plan: &Plan, now: Timestamp) -> Result<(), WriteError> {
    for event in &plan.events {
        let (index, seq) = event.slot;
        let inserted = conn.prepare_cached(INSERT_OWNER_EVENT)?.execute(params![
            plan.spaces[index].id,
            seq_column("seq", seq)?,
            now.as_micros(),
            event.kind.as_str(),
            event.detail.as_deref(),
        ])?;
        expect_one("record a history event", inserted)?;
    }
    Ok(())
}

/// Resolve the slots committed or turned into gaps in this batch.
fn resolve(conn: &Connection, plan: &Plan, now: Timestamp) -> Result<(), WriteError> {
    let mut commit = None;
    for ((index, seq), slot) in &plan.slots {
        let (space_id, seq) = (plan.spaces[*index].id, seq_column("seq", *seq)?);
        let updated = match &slot.resolution {
            None => continue,
            Some(Resolution::Committed(body)) => {
                let stmt = match &mut commit {
                    Some(stmt) => stmt,
                    None => commit.insert(conn.prepare_cached(COMMIT_SLOT)?),
                };
                stmt.execute(params![
                    state::COMMITTED,
                    now.as_micros(),
                    body.kind.as_str(),
                    body.payload.as_slice(),
                    body.source_event_id.as_deref(),
                    space_id,
                    seq,
                    state::LEASED,
                ])?
            }
            Some(Resolution::Gap {
                reason,
                superseded_by,
                detail,
            }) => {
                let superseded_by = superseded_by
                    .map(|s| seq_column("superseded_by", s))
                    .transpose()?;
                conn.prepare_cached(GAP_SLOT)?.execute(params![
                    state::GAP,
                    now.as_micros(),
                    reason.as_str(),
                    superseded_by,
                    detail.as_deref(),
                    space_id,
                    seq,
                    state::LEASED,
                ])?
            }
        };
        expect_one("resolve a slot", updated)?;
    }
    Ok(())
}

/// The plan checked every row it writes; a different count means the database changed
/// under the write lock, which SQLite rules out. Fail the batch rather than half-write it.
fn expect_one(what: &str, changed: usize) -> Result<(), StoreError> {
    if changed == 1 {
        return Ok(());
    }
    Err(StoreError::Backend {
        backend: BACKEND,
        detail: format!(
            "{what}: expected to write 1 row, wrote {changed}; the batch was rolled back"
        ),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use seqlease_core::ManualClock;

    use super::*;
    use crate::{SqliteOptions, SqliteStore};

    /// Every statement the write path runs.
    const STATEMENTS: [&str; 9] = [
        LOAD_SPACE,
        NEXT_WATERMARK,
        UPDATE_SPACE,
        INSERT_SLOT,
        UPDATE_EXPIRY,
        UPDATE_PARTIAL,
        UPDATE_RESULT,
        COMMIT_SLOT,
        GAP_SLOT,
    ];

    /// Every statement of the write path finds its rows through an index: none scans the
    /// slots table, which grows without bound. The plans are those of the write connection
    /// itself.
    #[tokio::test]
    async fn write_path_never_scans_the_slots_table() {
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
                    // Parameters left unbound are NULL, which does not change the plan.
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
        assert_eq!(plans.len(), STATEMENTS.len());
        for (sql, steps) in &plans {
            // A full scan of a table, or a range over every slot of the space, would grow
            // with the log; scanning the bound key list is fine.
            let bounded_scan = |s: &str| ["json_each", "CONSTANT"].iter().any(|k| s.contains(k));
            let unbounded = |s: &String| {
                (s.starts_with("SCAN ") && !bounded_scan(s)) || s.ends_with("(space_id=?)")
            };
            assert!(!steps.iter().any(unbounded), "{sql}\n{steps:#?}");
            // Everything but the plain INSERT looks its rows up.
            if !sql.starts_with("INSERT") {
                assert!(
                    steps.iter().any(|s| s.starts_with("SEARCH ")),
                    "{sql}\n{steps:#?}"
                );
            }
        }
        store.close().await;
    }
}
