//! Consumers and retention in the SQLite store (migration 0004; see
//! `seqlease_core::consumer` for the concepts).
//!
//! Every consumer call runs on the write connection in one `BEGIN IMMEDIATE` transaction:
//! the stored checkpoint, the watermark and the retaining consumers are read and the change
//! is written under SQLite's write lock, so a compare-and-swap cannot interleave with another
//! process's. Consumer rows are few and small; reading them on the write thread keeps one
//! copy of their decoding. The ordered log itself is read on the read pool (`read`), which
//! asks [`pruned_floor`] only when a read does not start where it was asked to.
//!
//! [`apply_exactly_once`] is the transactional apply: the application's function runs on
//! the write thread inside the transaction that moves the checkpoint, so its writes to a
//! read model in the same file commit together with the checkpoint, or not at all.

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use seqlease_core::consumer::{check_prune, check_reset, check_save, pruned_error};
use seqlease_core::{
    ConsumerError, ConsumerState, Entry, RetentionEvent, RetentionEventKind, SpaceName, StoreError,
    Timestamp,
};
use sqlx::Row;
use sqlx::sqlite::SqlitePool;

use crate::codec::{seq_param, to_u64};
use crate::error::{WriteError, corrupt_value, map_sqlx};

/// What a consumer job answers: the store's verdict, or SQLite's failure.
pub(crate) type Verdict<T> = Result<Result<T, ConsumerError>, WriteError>;

/// The error of the application's apply function.
pub type ApplyError = Box<dyn std::error::Error + Send + Sync>;

fn begin(conn: &mut Connection) -> Result<Transaction<'_>, WriteError> {
    Ok(conn.transaction_with_behavior(TransactionBehavior::Immediate)?)
}

fn seq_col(seq: u64) -> Result<i64, WriteError> {
    seq_param(seq).ok_or_else(|| WriteError::Store(corrupt_value("seq", seq)))
}

/// `(id, watermark)` of the space, `None` if it does not exist.
fn space_row(tx: &Transaction<'_>, space: &SpaceName) -> Result<Option<(i64, u64)>, WriteError> {
    let row: Option<(i64, i64)> = tx
        .prepare_cached("SELECT id, watermark FROM spaces WHERE name = ?1")?
        .query_row([space.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    row.map(|(id, w)| Ok((id, to_u64("watermark", w)?)))
        .transpose()
}

fn consumer_of(
    space: &SpaceName,
    watermark: u64,
    (name, checkpoint, retain, updated_at): (String, i64, bool, i64),
) -> Result<ConsumerState, WriteError> {
    Ok(ConsumerState {
        space: space.clone(),
        name,
        checkpoint: to_u64("checkpoint", checkpoint)?,
        retain,
        updated_at: Timestamp(updated_at),
        watermark,
    })
}

type ConsumerRow = (String, i64, bool, i64);

fn row_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<ConsumerRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn load(
    tx: &Transaction<'_>,
    space: &SpaceName,
    space_id: i64,
    watermark: u64,
    name: &str,
) -> Result<Option<ConsumerState>, WriteError> {
    let row = tx
        .prepare_cached(
            "SELECT name, checkpoint, retain, updated_at FROM consumers \
             WHERE space_id = ?1 AND name = ?2",
        )?
        .query_row(params![space_id, name], row_of)
        .optional()?;
    row.map(|r| consumer_of(space, watermark, r)).transpose()
}

fn all(
    tx: &Transaction<'_>,
    space: &SpaceName,
    space_id: i64,
    watermark: u64,
) -> Result<Vec<ConsumerState>, WriteError> {
    let mut stmt = tx.prepare_cached(
        "SELECT name, checkpoint, retain, updated_at FROM consumers \
         WHERE space_id = ?1 ORDER BY name",
    )?;
    let rows = stmt.query_map([space_id], row_of)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(consumer_of(space, watermark, row?)?);
    }
    Ok(out)
}

/// The space and an existing consumer, or the refusal.
fn existing(tx: &Transaction<'_>, space: &SpaceName, name: &str) -> Verdict<(i64, ConsumerState)> {
    let Some((space_id, watermark)) = space_row(tx, space)? else {
        return Ok(Err(ConsumerError::UnknownSpace {
            space: space.clone(),
        }));
    };
    Ok(match load(tx, space, space_id, watermark, name)? {
        Some(state) => Ok((space_id, state)),
        None => Err(ConsumerError::UnknownConsumer {
            space: space.clone(),
            consumer: name.to_string(),
        }),
    })
}

fn set_checkpoint(
    tx: &Transaction<'_>,
    space_id: i64,
    state: &ConsumerState,
    seq: u64,
    now: Timestamp,
) -> Result<ConsumerState, WriteError> {
    tx.prepare_cached(
        "UPDATE consumers SET checkpoint = ?3, updated_at = ?4 WHERE space_id = ?1 AND name = ?2",
    )?
    .execute(params![
        space_id,
        state.name,
        seq_col(seq)?,
        now.as_micros()
    ])?;
    Ok(ConsumerState {
        checkpoint: seq,
        updated_at: now,
        ..state.clone()
    })
}

fn audit(tx: &Transaction<'_>, space_id: i64, event: &RetentionEvent) -> Result<(), WriteError> {
    tx.prepare_cached(
        "INSERT INTO retention_events \
         (space_id, kind, consumer, from_seq, to_seq, entries, actor, at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        space_id,
        event.kind.as_str(),
        event.consumer,
        seq_col(event.from)?,
        seq_col(event.to)?,
        seq_col(event.entries)?,
        event.actor,
        event.at.as_micros()
    ])?;
    Ok(())
}

/// The last pruned seq of the space (0: none), on the write connection.
fn floor(tx: &Transaction<'_>, space_id: i64) -> Result<u64, WriteError> {
    let to: Option<i64> = tx
        .prepare_cached(
            "SELECT to_seq FROM retention_events WHERE space_id = ?1 AND kind = 'pruned' \
             ORDER BY id DESC LIMIT 1",
        )?
        .query_row([space_id], |r| r.get(0))
        .optional()?;
    Ok(to.map(|t| to_u64("to_seq", t)).transpose()?.unwrap_or(0))
}

pub(crate) fn register(
    conn: &mut Connection,
    now: Timestamp,
    space: &SpaceName,
    name: &str,
    retain: bool,
) -> Verdict<ConsumerState> {
    let tx = begin(conn)?;
    let Some((space_id, watermark)) = space_row(&tx, space)? else {
        return Ok(Err(ConsumerError::UnknownSpace {
            space: space.clone(),
        }));
    };
    tx.prepare_cached(
        "INSERT INTO consumers (space_id, name, retain, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?4) \
         ON CONFLICT (space_id, name) DO UPDATE SET retain = excluded.retain",
    )?
    .execute(params![space_id, name, retain, now.as_micros()])?;
    let state = load(&tx, space, space_id, watermark, name)?
        .ok_or_else(|| WriteError::Store(corrupt_value("consumer row just written", name)))?;
    tx.commit()?;
    Ok(Ok(state))
}

pub(crate) fn consumer(
    conn: &mut Connection,
    space: &SpaceName,
    name: &str,
) -> Result<Option<ConsumerState>, WriteError> {
    let tx = conn.transaction()?;
    let Some((space_id, watermark)) = space_row(&tx, space)? else {
        return Ok(None);
    };
    load(&tx, space, space_id, watermark, name)
}

pub(crate) fn save(
    conn: &mut Connection,
    now: Timestamp,
    space: &SpaceName,
    name: &str,
    expected: u64,
    seq: u64,
) -> Verdict<ConsumerState> {
    let tx = begin(conn)?;
    let (space_id, state) = match existing(&tx, space, name)? {
        Ok(found) => found,
        Err(e) => return Ok(Err(e)),
    };
    if let Err(e) = check_save(&state, expected, seq) {
        return Ok(Err(e));
    }
    let state = set_checkpoint(&tx, space_id, &state, seq, now)?;
    tx.commit()?;
    Ok(Ok(state))
}

pub(crate) fn reset(
    conn: &mut Connection,
    now: Timestamp,
    space: &SpaceName,
    name: &str,
    to: u64,
    actor: &str,
) -> Verdict<ConsumerState> {
    let tx = begin(conn)?;
    let (space_id, state) = match existing(&tx, space, name)? {
        Ok(found) => found,
        Err(e) => return Ok(Err(e)),
    };
    if let Err(e) = check_reset(&state, to, floor(&tx, space_id)?) {
        return Ok(Err(e));
    }
    let event = RetentionEvent {
        space: space.clone(),
        kind: RetentionEventKind::ConsumerReset,
        consumer: Some(name.to_string()),
        from: state.checkpoint,
        to,
        entries: 0,
        actor: actor.to_string(),
        at: now,
    };
    audit(&tx, space_id, &event)?;
    let state = set_checkpoint(&tx, space_id, &state, to, now)?;
    tx.commit()?;
    Ok(Ok(state))
}

pub(crate) fn remove(
    conn: &mut Connection,
    now: Timestamp,
    space: &SpaceName,
    name: &str,
    actor: &str,
) -> Verdict<ConsumerState> {
    let tx = begin(conn)?;
    let (space_id, state) = match existing(&tx, space, name)? {
        Ok(found) => found,
        Err(e) => return Ok(Err(e)),
    };
    tx.prepare_cached("DELETE FROM consumers WHERE space_id = ?1 AND name = ?2")?
        .execute(params![space_id, name])?;
    let event = RetentionEvent {
        space: space.clone(),
        kind: RetentionEventKind::ConsumerRemoved,
        consumer: Some(name.to_string()),
        from: state.checkpoint,
        to: state.checkpoint,
        entries: 0,
        actor: actor.to_string(),
        at: now,
    };
    audit(&tx, space_id, &event)?;
    tx.commit()?;
    Ok(Ok(state))
}

pub(crate) fn list(
    conn: &mut Connection,
    space: Option<&SpaceName>,
) -> Result<Vec<ConsumerState>, WriteError> {
    let tx = conn.transaction()?;
    let spaces: Vec<(i64, String, i64)> = {
        let mut stmt = tx.prepare_cached(
            "SELECT id, name, watermark FROM spaces WHERE ?1 IS NULL OR name = ?1 ORDER BY name",
        )?;
        let rows = stmt.query_map([space.map(SpaceName::as_str)], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    let mut out = Vec::new();
    for (id, name, watermark) in spaces {
        let name = SpaceName::new(&name).map_err(|e| {
            WriteError::Store(corrupt_value("space name", format!("{name:?}: {e}")))
        })?;
        out.extend(all(&tx, &name, id, to_u64("watermark", watermark)?)?);
    }
    Ok(out)
}

pub(crate) fn prune(
    conn: &mut Connection,
    now: Timestamp,
    space: &SpaceName,
    below: u64,
    actor: &str,
) -> Verdict<RetentionEvent> {
    let tx = begin(conn)?;
    let Some((space_id, watermark)) = space_row(&tx, space)? else {
        return Ok(Err(ConsumerError::UnknownSpace {
            space: space.clone(),
        }));
    };
    let consumers = all(&tx, space, space_id, watermark)?;
    let through = match check_prune(space, below, watermark, &consumers) {
        Ok(t) => t,
        Err(e) => return Ok(Err(e)),
    };
    let last = seq_col(through)?;
    let entries = tx
        .prepare_cached("DELETE FROM slots WHERE space_id = ?1 AND seq <= ?2")?
        .execute(params![space_id, last])?;
    tx.prepare_cached("DELETE FROM slot_events WHERE space_id = ?1 AND seq <= ?2")?
        .execute(params![space_id, last])?;
    let event = RetentionEvent {
        space: space.clone(),
        kind: RetentionEventKind::Pruned,
        consumer: None,
        from: 1,
        to: through.max(floor(&tx, space_id)?),
        entries: entries as u64,
        actor: actor.to_string(),
        at: now,
    };
    audit(&tx, space_id, &event)?;
    tx.commit()?;
    Ok(Ok(event))
}

/// The retention audit of a space, oldest first (read pool).
pub(crate) async fn history(
    readers: &SqlitePool,
    space: &SpaceName,
) -> Result<Vec<RetentionEvent>, StoreError> {
    let rows = sqlx::query(
        "SELECT e.kind, e.consumer, e.from_seq, e.to_seq, e.entries, e.actor, e.at \
         FROM spaces sp JOIN retention_events e ON e.space_id = sp.id \
         WHERE sp.name = ?1 ORDER BY e.id",
    )
    .bind(space.as_str())
    .fetch_all(readers)
    .await
    .map_err(map_sqlx)?;
    rows.iter()
        .map(|r| {
            let kind: String = r.try_get(0).map_err(map_sqlx)?;
            Ok(RetentionEvent {
                space: space.clone(),
                kind: RetentionEventKind::parse(&kind)
                    .ok_or_else(|| corrupt_value("retention event kind", &kind))?,
                consumer: r.try_get(1).map_err(map_sqlx)?,
                from: to_u64("from_seq", r.try_get(2).map_err(map_sqlx)?)?,
                to: to_u64("to_seq", r.try_get(3).map_err(map_sqlx)?)?,
                entries: to_u64("entries", r.try_get(4).map_err(map_sqlx)?)?,
                actor: r.try_get(5).map_err(map_sqlx)?,
                at: Timestamp(r.try_get(6).map_err(map_sqlx)?),
            })
        })
        .collect()
}

/// [`StoreError::Pruned`] if a read from `from` runs into pruned entries (read pool).
pub(crate) async fn check_read(
    readers: &SqlitePool,
    space: &SpaceName,
    from: u64,
) -> Result<(), StoreError> {
    let row = sqlx::query(
        "SELECT e.to_seq, e.actor, e.at FROM spaces sp \
         JOIN retention_events e ON e.space_id = sp.id AND e.kind = 'pruned' \
         WHERE sp.name = ?1 ORDER BY e.id DESC LIMIT 1",
    )
    .bind(space.as_str())
    .fetch_optional(readers)
    .await
    .map_err(map_sqlx)?;
    let Some(row) = row else { return Ok(()) };
    let through = to_u64("to_seq", row.try_get(0).map_err(map_sqlx)?)?;
    if from > through {
        return Ok(());
    }
    Err(pruned_error(&RetentionEvent {
        space: space.clone(),
        kind: RetentionEventKind::Pruned,
        consumer: None,
        from: 1,
        to: through,
        entries: 0,
        actor: row.try_get(1).map_err(map_sqlx)?,
        at: Timestamp(row.try_get(2).map_err(map_sqlx)?),
    }))
}

/// The exactly-once step: in one transaction, check that the consumer's checkpoint is still
/// `expected`, run `apply` with the transaction and the entries, and move the checkpoint to
/// the last entry's seq. An error from `apply` (or a panic) rolls everything back.
pub(crate) fn apply_exactly_once<F>(
    conn: &mut Connection,
    now: Timestamp,
    space: &SpaceName,
    name: &str,
    expected: u64,
    entries: &[Entry],
    apply: F,
) -> Verdict<ConsumerState>
where
    F: FnOnce(&Transaction<'_>, &[Entry]) -> Result<(), ApplyError>,
{
    let tx = begin(conn)?;
    let (space_id, state) = match existing(&tx, space, name)? {
        Ok(found) => found,
        Err(e) => return Ok(Err(e)),
    };
    let seq = entries.last().map_or(expected, |e| e.seq);
    if let Err(e) = check_save(&state, expected, seq) {
        return Ok(Err(e));
    }
    if let Err(e) = apply(&tx, entries) {
        // Dropping `tx` rolls back whatever the apply wrote.
        return Ok(Err(ConsumerError::Apply {
            space: space.clone(),
            consumer: name.to_string(),
            from: entries.first().map_or(expected + 1, |e| e.seq),
            to: seq,
            detail: e.to_string(),
        }));
    }
    let state = set_checkpoint(&tx, space_id, &state, seq, now)?;
    tx.commit()?;
    Ok(Ok(state))
}
