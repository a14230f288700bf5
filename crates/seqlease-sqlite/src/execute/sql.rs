//! The statements of the write path: load what a batch touches, write back what it changed.
//!
//! Each statement handles many rows so that a batch costs a fixed handful of round trips
//! to the connection, not a few per command:
//!
//! - The list of seqs to load is bound as one JSON array and expanded with `json_each`, so
//!   the SQL text is constant and its prepared statement is cached.
//! - Row sets (granted slots, commits, gaps) are bound into a multi-row `VALUES` list. The
//!   list is padded with all-NULL rows to the next power of two (at most [`MAX_ROWS`] rows),
//!   so only a few distinct statements exist and all stay in the statement cache; padding
//!   rows match nothing (`NULL = x` is never true) and are filtered out of inserts.
//!
//! Every value is bound; the only text put together at run time is the list of
//! placeholders of a `VALUES` template and the state codes of [`state`] (constants).

use std::sync::OnceLock;

use seqlease_core::{GapReason, OperationBody, SpaceName, StoreError, Timestamp, Token};
use sqlx::SqliteConnection;
use sqlx::sqlite::{Sqlite, SqliteArguments};

use super::plan::{Granted, Plan, Resolution, Slot, SlotId, Space};
use crate::codec::{epoch_param, seq_param, slot_state, state, to_u32, to_u64};
use crate::error::{BACKEND, corrupt_value, map_sqlx};

/// Most rows bound into one statement.
pub(crate) const MAX_ROWS: usize = 128;

type Query<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments>;

/// A space's row joined with one of the requested slots (slot columns NULL when none of
/// the requested slots exists).
#[derive(sqlx::FromRow)]
struct SpaceSlotRow {
    id: i64,
    last_seq: i64,
    watermark: i64,
    in_flight: i64,
    capacity: i64,
    seq: Option<i64>,
    state: Option<i64>,
    token: Option<Vec<u8>>,
    expires_at: Option<i64>,
    gap_reason: Option<String>,
    operation_id: Option<String>,
    has_work: Option<bool>,
    renewals: Option<i64>,
    /// Where the slot's operation id is already committed, for LEASED slots (I6).
    committed_seq: Option<i64>,
}

const LOAD_SPACE: &str = "SELECT sp.id, sp.last_seq, sp.watermark, sp.in_flight, sp.capacity, \
     s.seq, s.state, s.token, s.expires_at, s.gap_reason, s.operation_id, \
     (s.partial IS NOT NULL OR s.result_kind IS NOT NULL) AS has_work, s.renewals, \
     CASE WHEN s.state = 0 THEN (SELECT c.seq FROM slots c \
         WHERE c.space_id = sp.id AND c.committed_op_id = s.operation_id) END AS committed_seq \
     FROM spaces sp LEFT JOIN slots s \
     ON s.space_id = sp.id AND s.seq IN (SELECT value FROM json_each(?2)) \
     WHERE sp.name = ?1";

/// What [`load_space`] found: the space's row and the requested slots that exist, each
/// with the seq where its operation id is already committed (LEASED slots only).
pub(crate) struct Loaded {
    pub space: Space,
    pub slots: Vec<(u64, Slot, Option<u64>)>,
}

/// Read a space's row and its slots `seqs` in one query; `None` when the space does not
/// exist.
pub(crate) async fn load_space(
    conn: &mut SqliteConnection,
    name: &SpaceName,
    seqs: &[i64],
) -> Result<Option<Loaded>, StoreError> {
    let rows: Vec<SpaceSlotRow> = sqlx::query_as(LOAD_SPACE)
        .bind(name.as_str())
        .bind(json_array(seqs.into()))
        .fetch_all(&mut *conn)
        .await
        .map_err(map_sqlx)?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let space = Space {
        name: name.clone(),
        id: first.id,
        last_seq: to_u64("last_seq", first.last_seq)?,
        watermark: to_u64("watermark", first.watermark)?,
        in_flight: to_u32("in_flight", first.in_flight)?,
        capacity: to_u32("capacity", first.capacity)?,
        dirty: false,
        freed: false,
    };
    let mut slots = Vec::with_capacity(rows.len());
    for row in rows {
        let (Some(seq), Some(code), Some(token), Some(expires_at), Some(operation_id)) = (
            row.seq,
            row.state,
            row.token,
            row.expires_at,
            row.operation_id,
        ) else {
            continue;
        };
        let slot = Slot {
            granted: None,
            state: slot_state(code, row.gap_reason.as_deref())?,
            token: Token::from_slice(&token)
                .ok_or_else(|| corrupt_value("token length", token.len()))?,
            operation_id,
            expires_at: Timestamp(expires_at),
            renewals: to_u32("renewals", row.renewals.unwrap_or(0))?,
            has_work: row.has_work.unwrap_or(false),
            lease_changed: false,
            partial: None,
            result: None,
            resolution: None,
        };
        let committed_seq = row.committed_seq.map(|c| to_u64("seq", c)).transpose()?;
        slots.push((to_u64("seq", seq)?, slot, committed_seq));
    }
    Ok(Some(Loaded { space, slots }))
}

/// A JSON array for `json_each`. Numbers and strings always serialize.
fn json_array(items: serde_json::Value) -> String {
    items.to_string()
}

/// Write everything the plan changed: new slots, changed leases, resolutions, watermarks
/// and space counters.
pub(crate) async fn write(
    conn: &mut SqliteConnection,
    plan: &mut Plan,
    now: Timestamp,
) -> Result<(), StoreError> {
    insert_granted(conn, plan).await?;
    update_leases(conn, plan).await?;
    write_commits(conn, plan, now).await?;
    write_gaps(conn, plan, now).await?;
    for index in 0..plan.spaces.len() {
        let space = &plan.spaces[index];
        if !space.dirty {
            continue;
        }
        let watermark: i64 = sqlx::query_scalar(UPDATE_SPACE)
            .bind(seq_column("last_seq", space.last_seq)?)
            .bind(i64::from(space.in_flight))
            .bind(space.id)
            .bind(seq_column("watermark", space.watermark)?)
            .fetch_one(&mut *conn)
            .await
            .map_err(map_sqlx)?;
        plan.set_watermark(index, to_u64("watermark", watermark)?);
    }
    Ok(())
}

/// Write a space's counters and recompute its watermark: `W` = (lowest LEASED seq) − 1, or
/// `last_seq` when nothing is LEASED. Only slots above the current watermark can be
/// LEASED, and the partial index `slots_leased` makes the lookup one index seek
/// (`INDEXED BY` guarantees that plan, or fails loudly). `MAX` keeps `W` monotonic (I7).
const UPDATE_SPACE: &str = "UPDATE spaces SET last_seq = ?1, in_flight = ?2, \
     watermark = MAX(watermark, COALESCE((SELECT MIN(seq) FROM slots INDEXED BY slots_leased \
         WHERE space_id = ?3 AND state = 0 AND seq > ?4) - 1, ?1)) \
     WHERE id = ?3 RETURNING watermark";

fn seq_column(what: &str, v: u64) -> Result<i64, StoreError> {
    seq_param(v).ok_or_else(|| corrupt_value(what, v))
}

/// Insert the slots granted in this batch, as they stand before any resolution.
async fn insert_granted(conn: &mut SqliteConnection, plan: &Plan) -> Result<(), StoreError> {
    let rows: Vec<(SlotId, &Slot, &Granted)> = plan
        .slots
        .iter()
        .filter_map(|(id, slot)| slot.granted.as_ref().map(|g| (*id, slot, g)))
        .collect();
    for chunk in rows.chunks(MAX_ROWS) {
        let sql = templates().insert(chunk.len());
        let mut query = sqlx::query(sql);
        for ((index, seq), slot, granted) in chunk {
            let (kind, payload, source) = body_columns(slot.result.as_ref());
            query = query
                .bind(plan.spaces[*index].id)
                .bind(seq_column("seq", *seq)?)
                .bind(state::LEASED)
                .bind(&slot.token.as_bytes()[..])
                .bind(slot.operation_id.as_str())
                .bind(granted.projection_type.as_str())
                .bind(granted.owner.as_str())
                .bind(granted.fence.as_ref().map(|f| f.resource.as_str()))
                .bind(granted.fence.as_ref().map(|f| epoch_param(f.epoch)))
                .bind(granted.leased_at.as_micros())
                .bind(slot.expires_at.as_micros())
                .bind(i64::from(slot.renewals))
                .bind(slot.partial.as_deref())
                .bind(kind)
                .bind(payload)
                .bind(source);
        }
        let query = pad(query, chunk.len(), INSERT_COLUMNS);
        let inserted = query
            .execute(&mut *conn)
            .await
            .map_err(map_sqlx)?
            .rows_affected();
        expect_rows("insert granted slots", chunk.len(), inserted)?;
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
/// These are rare next to grants and commits, so they go one statement per change.
async fn update_leases(conn: &mut SqliteConnection, plan: &Plan) -> Result<(), StoreError> {
    for ((index, seq), slot) in plan.slots.iter().filter(|(_, s)| s.granted.is_none()) {
        let (space_id, seq) = (plan.spaces[*index].id, seq_column("seq", *seq)?);
        if slot.lease_changed {
            sqlx::query(
                "UPDATE slots SET expires_at = ?1, renewals = ?2 WHERE space_id = ?3 AND seq = ?4",
            )
            .bind(slot.expires_at.as_micros())
            .bind(i64::from(slot.renewals))
            .bind(space_id)
            .bind(seq)
            .execute(&mut *conn)
            .await
            .map_err(map_sqlx)?;
        }
        if let Some(partial) = &slot.partial {
            sqlx::query("UPDATE slots SET partial = ?1 WHERE space_id = ?2 AND seq = ?3")
                .bind(partial.as_slice())
                .bind(space_id)
                .bind(seq)
                .execute(&mut *conn)
                .await
                .map_err(map_sqlx)?;
        }
        if let Some(result) = &slot.result {
            sqlx::query(
                "UPDATE slots SET result_kind = ?1, result_payload = ?2, result_source_event = ?3 \
                 WHERE space_id = ?4 AND seq = ?5",
            )
            .bind(result.kind.as_str())
            .bind(result.payload.as_slice())
            .bind(result.source_event_id.as_deref())
            .bind(space_id)
            .bind(seq)
            .execute(&mut *conn)
            .await
            .map_err(map_sqlx)?;
        }
    }
    Ok(())
}

/// Resolve the slots committed in this batch.
async fn write_commits(
    conn: &mut SqliteConnection,
    plan: &Plan,
    now: Timestamp,
) -> Result<(), StoreError> {
    let rows: Vec<(SlotId, &OperationBody)> = plan
        .slots
        .iter()
        .filter_map(|(id, slot)| match &slot.resolution {
            Some(Resolution::Committed(body)) => Some((*id, body)),
            _ => None,
        })
        .collect();
    for chunk in rows.chunks(MAX_ROWS) {
        let mut query = sqlx::query(templates().commit(chunk.len())).bind(now.as_micros());
        for ((index, seq), body) in chunk {
            query = query
                .bind(plan.spaces[*index].id)
                .bind(seq_column("seq", *seq)?)
                .bind(body.kind.as_str())
                .bind(body.payload.as_slice())
                .bind(body.source_event_id.as_deref());
        }
        let query = pad(query, chunk.len(), COMMIT_COLUMNS);
        let updated = query
            .execute(&mut *conn)
            .await
            .map_err(map_sqlx)?
            .rows_affected();
        expect_rows("commit slots", chunk.len(), updated)?;
    }
    Ok(())
}

/// Resolve the slots that became gaps in this batch.
async fn write_gaps(
    conn: &mut SqliteConnection,
    plan: &Plan,
    now: Timestamp,
) -> Result<(), StoreError> {
    type GapRow<'a> = (SlotId, GapReason, Option<u64>, Option<&'a str>);
    let rows: Vec<GapRow<'_>> = plan
        .slots
        .iter()
        .filter_map(|(id, slot)| match &slot.resolution {
            Some(Resolution::Gap {
                reason,
                superseded_by,
                detail,
            }) => Some((*id, *reason, *superseded_by, detail.as_deref())),
            _ => None,
        })
        .collect();
    for chunk in rows.chunks(MAX_ROWS) {
        let mut query = sqlx::query(templates().gap(chunk.len())).bind(now.as_micros());
        for ((index, seq), reason, superseded_by, detail) in chunk {
            let superseded_by = superseded_by
                .map(|s| seq_column("superseded_by", s))
                .transpose()?;
            query = query
                .bind(plan.spaces[*index].id)
                .bind(seq_column("seq", *seq)?)
                .bind(reason.as_str())
                .bind(superseded_by)
                .bind(*detail);
        }
        let query = pad(query, chunk.len(), GAP_COLUMNS);
        let updated = query
            .execute(&mut *conn)
            .await
            .map_err(map_sqlx)?
            .rows_affected();
        expect_rows("resolve slots as gaps", chunk.len(), updated)?;
    }
    Ok(())
}

/// The plan checked every row it writes; a different count means the database changed
/// under the write lock, which SQLite rules out. Fail the batch rather than half-write it.
fn expect_rows(what: &str, expected: usize, actual: u64) -> Result<(), StoreError> {
    if actual == expected as u64 {
        return Ok(());
    }
    Err(StoreError::Backend {
        backend: BACKEND,
        detail: format!(
            "{what}: expected to write {expected} rows, wrote {actual}; the batch was rolled back"
        ),
    })
}

/// Bind all-NULL padding rows up to the template's size.
fn pad(mut query: Query<'_>, rows: usize, columns: usize) -> Query<'_> {
    for _ in 0..(padded(rows) - rows) * columns {
        query = query.bind(None::<i64>);
    }
    query
}

/// The number of rows of the template used for `rows` rows.
fn padded(rows: usize) -> usize {
    rows.next_power_of_two().min(MAX_ROWS)
}

const INSERT_COLUMNS: usize = 16;
const COMMIT_COLUMNS: usize = 5;
const GAP_COLUMNS: usize = 5;

/// The multi-row statements, one per power-of-two row count up to [`MAX_ROWS`].
struct Templates {
    insert: Vec<String>,
    commit: Vec<String>,
    gap: Vec<String>,
}

fn templates() -> &'static Templates {
    static TEMPLATES: OnceLock<Templates> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        let sizes = || (0..=MAX_ROWS.trailing_zeros()).map(|p| 1usize << p);
        Templates {
            // Padding rows are all NULL, and a slot's space_id never is.
            insert: sizes()
                .map(|n| {
                    format!(
                        "INSERT INTO slots (space_id, seq, state, token, operation_id, \
                         projection_type, owner, fence_resource, fence_epoch, leased_at, \
                         expires_at, renewals, partial, result_kind, result_payload, \
                         result_source_event) \
                         SELECT * FROM (VALUES {}) WHERE column1 IS NOT NULL",
                        values(n, INSERT_COLUMNS)
                    )
                })
                .collect(),
            commit: sizes()
                .map(|n| {
                    format!(
                        "UPDATE slots SET state = {committed}, resolved_at = ?, \
                         committed_op_id = operation_id, op_kind = v.column3, \
                         op_payload = v.column4, op_source_event = v.column5, partial = NULL, \
                         result_kind = NULL, result_payload = NULL, result_source_event = NULL \
                         FROM (VALUES {}) AS v \
                         WHERE slots.state = {leased} AND slots.space_id = v.column1 \
                         AND slots.seq = v.column2",
                        values(n, COMMIT_COLUMNS),
                        committed = state::COMMITTED,
                        leased = state::LEASED,
                    )
                })
                .collect(),
            gap: sizes()
                .map(|n| {
                    format!(
                        "UPDATE slots SET state = {gap}, resolved_at = ?, gap_reason = v.column3, \
                         superseded_by = v.column4, gap_detail = v.column5, partial = NULL, \
                         result_kind = NULL, result_payload = NULL, result_source_event = NULL \
                         FROM (VALUES {}) AS v \
                         WHERE slots.state = {leased} AND slots.space_id = v.column1 \
                         AND slots.seq = v.column2",
                        values(n, GAP_COLUMNS),
                        gap = state::GAP,
                        leased = state::LEASED,
                    )
                })
                .collect(),
        }
    })
}

impl Templates {
    fn index(rows: usize) -> usize {
        padded(rows).trailing_zeros() as usize
    }
    fn insert(&self, rows: usize) -> &str {
        &self.insert[Self::index(rows)]
    }
    fn commit(&self, rows: usize) -> &str {
        &self.commit[Self::index(rows)]
    }
    fn gap(&self, rows: usize) -> &str {
        &self.gap[Self::index(rows)]
    }
}

/// `(?, ?, …), (?, ?, …), …`: `rows` rows of `columns` placeholders.
fn values(rows: usize, columns: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    vec![row; rows].join(", ")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use seqlease_core::ManualClock;
    use sqlx::AssertSqlSafe;

    use super::*;
    use crate::{SqliteOptions, SqliteStore};

    #[test]
    fn templates_have_one_placeholder_per_bound_value() {
        for rows in [1, 2, 3, 16, 17, MAX_ROWS] {
            let count = |sql: &str| sql.matches('?').count();
            assert_eq!(
                count(templates().insert(rows)),
                padded(rows) * INSERT_COLUMNS
            );
            assert_eq!(
                count(templates().commit(rows)),
                1 + padded(rows) * COMMIT_COLUMNS
            );
            assert_eq!(count(templates().gap(rows)), 1 + padded(rows) * GAP_COLUMNS);
        }
        assert_eq!(padded(3), 4);
        assert_eq!(padded(MAX_ROWS), MAX_ROWS);
    }

    /// Every statement of the write path finds its rows through an index: none scans the
    /// slots table, which grows without bound.
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
        let mut conn = store.inner.writer.lock().await.expect("writer");
        let t = templates();
        for sql in [
            LOAD_SPACE,
            UPDATE_SPACE,
            t.insert(16),
            t.commit(16),
            t.gap(4),
        ] {
            let plan: Vec<(i64, i64, i64, String)> =
                sqlx::query_as(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                    .fetch_all(&mut *conn)
                    .await
                    .expect("explain");
            let steps: Vec<&str> = plan.iter().map(|p| p.3.as_str()).collect();
            // A full scan of a table, or a range over every slot of the space, would grow
            // with the log; scanning the bound key list or VALUES rows is fine.
            let bounded_scan = |s: &str| {
                ["json_each", "VALUES", "CONSTANT"]
                    .iter()
                    .any(|k| s.contains(k))
                    || s == "SCAN v"
            };
            let unbounded = |s: &&str| {
                (s.starts_with("SCAN ") && !bounded_scan(s)) || s.ends_with("(space_id=?)")
            };
            assert!(!steps.iter().any(unbounded), "{sql}\n{steps:#?}");
        }
        drop(conn);
        store.close().await;
    }
}
