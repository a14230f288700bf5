//! Consumers and retention in the PostgreSQL store (migration 0005; see
//! `seqlease_core::consumer` for the concepts).
//!
//! A checkpoint moves by compare-and-swap on its row: the transaction locks the consumer's
//! row (`SELECT … FOR UPDATE`), checks it with the same rules as every store, and updates
//! it. A prune locks every consumer row of its space first, then checks the retaining
//! checkpoints, deletes and audits, so a concurrent reset or checkpoint is ordered entirely
//! before or after it. Processes running the same consumer queue on its row lock; the loser
//! of a race gets [`ConsumerError::Conflict`].
//!
//! [`apply_exactly_once`] is the transactional apply: the application's function gets the
//! transaction's connection, so its writes to a read model in this database commit together
//! with the checkpoint, or not at all (an error, a panic or a dropped future rolls back).

use std::future::Future;
use std::pin::Pin;

use seqlease_core::consumer::{check_prune, check_reset, check_save, pruned_error};
use seqlease_core::{
    ConsumerError, ConsumerState, Entry, RetentionEvent, RetentionEventKind, SpaceName, StoreError,
    Timestamp,
};
use sqlx::Row;
use sqlx::postgres::{PgConnection, PgRow};

use crate::error::{corrupt_value, map_sqlx};
use crate::read::to_u64;
use crate::{Inner, NOW_SQL};

/// The error of the application's apply function.
pub type ApplyError = Box<dyn std::error::Error + Send + Sync>;

/// What an exactly-once apply function returns: a boxed future borrowing the connection
/// (write `|conn, entries| Box::pin(async move { … })`).
pub type ApplyFuture<'c> = Pin<Box<dyn Future<Output = Result<(), ApplyError>> + Send + 'c>>;

/// Which consumer: the space and the name.
type Key<'a> = (&'a SpaceName, &'a str);

struct Ctx<'a> {
    inner: &'a Inner,
}

impl Ctx<'_> {
    fn err(&self) -> impl Fn(sqlx::Error) -> StoreError + '_ {
        move |e| map_sqlx(e, &self.inner.target)
    }

    async fn now(&self, conn: &mut PgConnection) -> Result<Timestamp, StoreError> {
        let (pinned, offset) = self.inner.clock.params();
        let now: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT {NOW_SQL}")))
            .bind(pinned)
            .bind(offset)
            .fetch_one(&mut *conn)
            .await
            .map_err(self.err())?;
        Ok(Timestamp(now))
    }

    /// `(id, watermark)` of the space, optionally locking the space row.
    async fn space(
        &self,
        conn: &mut PgConnection,
        space: &SpaceName,
    ) -> Result<Option<(i64, u64)>, StoreError> {
        let row: Option<(i64, i64)> =
            sqlx::query_as("SELECT id, watermark FROM spaces WHERE name = $1")
                .bind(space.as_str())
                .fetch_optional(&mut *conn)
                .await
                .map_err(self.err())?;
        row.map(|(id, w)| Ok((id, to_u64("watermark", w)?)))
            .transpose()
    }

    fn state(
        &self,
        space: &SpaceName,
        watermark: u64,
        row: &PgRow,
    ) -> Result<ConsumerState, StoreError> {
        Ok(ConsumerState {
            space: space.clone(),
            name: row.try_get(0).map_err(self.err())?,
            checkpoint: to_u64("checkpoint", row.try_get(1).map_err(self.err())?)?,
            retain: row.try_get(2).map_err(self.err())?,
            updated_at: Timestamp(row.try_get(3).map_err(self.err())?),
            watermark,
        })
    }

    /// The consumers of a space (`name = None`: all, locked when `lock`).
    async fn consumers(
        &self,
        conn: &mut PgConnection,
        space: &SpaceName,
        (space_id, watermark): (i64, u64),
        name: Option<&str>,
        lock: bool,
    ) -> Result<Vec<ConsumerState>, StoreError> {
        let sql = if lock {
            "SELECT name, checkpoint, retain, updated_at FROM consumers \
             WHERE space_id = $1 AND ($2::text IS NULL OR name = $2) ORDER BY name FOR UPDATE"
        } else {
            "SELECT name, checkpoint, retain, updated_at FROM consumers \
             WHERE space_id = $1 AND ($2::text IS NULL OR name = $2) ORDER BY name"
        };
        let rows = sqlx::query(sql)
            .bind(space_id)
            .bind(name)
            .fetch_all(&mut *conn)
            .await
            .map_err(self.err())?;
        rows.iter()
            .map(|r| self.state(space, watermark, r))
            .collect()
    }

    /// The space and the locked row of an existing consumer, or the refusal.
    async fn existing(
        &self,
        conn: &mut PgConnection,
        (space, name): Key<'_>,
    ) -> Result<(i64, ConsumerState), ConsumerError> {
        let Some(row) = self.space(conn, space).await? else {
            return Err(ConsumerError::UnknownSpace {
                space: space.clone(),
            });
        };
        let found = self.consumers(conn, space, row, Some(name), true).await?;
        match found.into_iter().next() {
            Some(state) => Ok((row.0, state)),
            None => Err(ConsumerError::UnknownConsumer {
                space: space.clone(),
                consumer: name.to_string(),
            }),
        }
    }

    async fn set_checkpoint(
        &self,
        conn: &mut PgConnection,
        space_id: i64,
        state: &ConsumerState,
        seq: u64,
        now: Timestamp,
    ) -> Result<ConsumerState, StoreError> {
        sqlx::query(
            "UPDATE consumers SET checkpoint = $3, updated_at = $4 \
             WHERE space_id = $1 AND name = $2",
        )
        .bind(space_id)
        .bind(&state.name)
        .bind(seq_col(seq)?)
        .bind(now.as_micros())
        .execute(&mut *conn)
        .await
        .map_err(self.err())?;
        Ok(ConsumerState {
            checkpoint: seq,
            updated_at: now,
            ..state.clone()
        })
    }

    async fn audit(
        &self,
        conn: &mut PgConnection,
        space_id: i64,
        event: &RetentionEvent,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO retention_events \
             (space_id, kind, consumer, from_seq, to_seq, entries, actor, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(space_id)
        .bind(event.kind.as_str())
        .bind(&event.consumer)
        .bind(seq_col(event.from)?)
        .bind(seq_col(event.to)?)
        .bind(seq_col(event.entries)?)
        .bind(&event.actor)
        .bind(event.at.as_micros())
        .execute(&mut *conn)
        .await
        .map_err(self.err())?;
        Ok(())
    }

    /// The newest prune of the space: `(to_seq, actor, at)`.
    async fn last_prune(
        &self,
        conn: &mut PgConnection,
        space: &SpaceName,
    ) -> Result<Option<RetentionEvent>, StoreError> {
        let row: Option<(i64, String, i64)> = sqlx::query_as(
            "SELECT e.to_seq, e.actor, e.at FROM spaces sp \
             JOIN retention_events e ON e.space_id = sp.id AND e.kind = 'pruned' \
             WHERE sp.name = $1 ORDER BY e.id DESC LIMIT 1",
        )
        .bind(space.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(self.err())?;
        row.map(|(to, actor, at)| {
            Ok(RetentionEvent {
                space: space.clone(),
                kind: RetentionEventKind::Pruned,
                consumer: None,
                from: 1,
                to: to_u64("to_seq", to)?,
                entries: 0,
                actor,
                at: Timestamp(at),
            })
        })
        .transpose()
    }
}

fn seq_col(seq: u64) -> Result<i64, StoreError> {
    i64::try_from(seq).map_err(|_| corrupt_value("seq", seq))
}

async fn begin(inner: &Inner) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
    inner
        .pool
        .begin()
        .await
        .map_err(|e| map_sqlx(e, &inner.target))
}

async fn commit(
    inner: &Inner,
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
) -> Result<(), StoreError> {
    tx.commit().await.map_err(|e| map_sqlx(e, &inner.target))
}

pub(crate) async fn register(
    inner: &Inner,
    (space, name): Key<'_>,
    retain: bool,
) -> Result<ConsumerState, ConsumerError> {
    let ctx = Ctx { inner };
    let mut tx = begin(inner).await?;
    let Some(row) = ctx.space(&mut tx, space).await? else {
        return Err(ConsumerError::UnknownSpace {
            space: space.clone(),
        });
    };
    let now = ctx.now(&mut tx).await?;
    sqlx::query(
        "INSERT INTO consumers (space_id, name, retain, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $4) \
         ON CONFLICT (space_id, name) DO UPDATE SET retain = excluded.retain",
    )
    .bind(row.0)
    .bind(name)
    .bind(retain)
    .bind(now.as_micros())
    .execute(&mut *tx)
    .await
    .map_err(ctx.err())?;
    let state = ctx
        .consumers(&mut tx, space, row, Some(name), false)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| corrupt_value("consumer row just written", name))?;
    commit(inner, tx).await?;
    Ok(state)
}

pub(crate) async fn consumer(
    inner: &Inner,
    (space, name): Key<'_>,
) -> Result<Option<ConsumerState>, StoreError> {
    let ctx = Ctx { inner };
    let mut conn = inner.pool.acquire().await.map_err(ctx.err())?;
    let Some(row) = ctx.space(&mut conn, space).await? else {
        return Ok(None);
    };
    let found = ctx
        .consumers(&mut conn, space, row, Some(name), false)
        .await?;
    Ok(found.into_iter().next())
}

pub(crate) async fn list(
    inner: &Inner,
    space: Option<&SpaceName>,
) -> Result<Vec<ConsumerState>, StoreError> {
    let ctx = Ctx { inner };
    let mut tx = begin(inner).await?;
    let spaces: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT id, name, watermark FROM spaces WHERE $1::text IS NULL OR name = $1 ORDER BY name",
    )
    .bind(space.map(SpaceName::as_str))
    .fetch_all(&mut *tx)
    .await
    .map_err(ctx.err())?;
    let mut out = Vec::new();
    for (id, name, watermark) in spaces {
        let name = SpaceName::new(&name)
            .map_err(|e| corrupt_value("space name", format!("{name:?}: {e}")))?;
        let row = (id, to_u64("watermark", watermark)?);
        out.extend(ctx.consumers(&mut tx, &name, row, None, false).await?);
    }
    commit(inner, tx).await?;
    Ok(out)
}

pub(crate) async fn save(
    inner: &Inner,
    key: Key<'_>,
    expected: u64,
    seq: u64,
) -> Result<ConsumerState, ConsumerError> {
    let ctx = Ctx { inner };
    let mut tx = begin(inner).await?;
    let (space_id, state) = ctx.existing(&mut tx, key).await?;
    check_save(&state, expected, seq)?;
    let now = ctx.now(&mut tx).await?;
    let state = ctx
        .set_checkpoint(&mut tx, space_id, &state, seq, now)
        .await?;
    commit(inner, tx).await?;
    Ok(state)
}

pub(crate) async fn reset(
    inner: &Inner,
    key: Key<'_>,
    to: u64,
    actor: &str,
) -> Result<ConsumerState, ConsumerError> {
    let ctx = Ctx { inner };
    let mut tx = begin(inner).await?;
    // The consumer's row lock first, then the prune record: a prune that committed while we
    // waited for the lock is seen.
    let (space_id, state) = ctx.existing(&mut tx, key).await?;
    let floor = ctx.last_prune(&mut tx, key.0).await?.map_or(0, |e| e.to);
    check_reset(&state, to, floor)?;
    let now = ctx.now(&mut tx).await?;
    let event = RetentionEvent {
        space: key.0.clone(),
        kind: RetentionEventKind::ConsumerReset,
        consumer: Some(key.1.to_string()),
        from: state.checkpoint,
        to,
        entries: 0,
        actor: actor.to_string(),
        at: now,
    };
    ctx.audit(&mut tx, space_id, &event).await?;
    let state = ctx
        .set_checkpoint(&mut tx, space_id, &state, to, now)
        .await?;
    commit(inner, tx).await?;
    Ok(state)
}

pub(crate) async fn remove(
    inner: &Inner,
    key: Key<'_>,
    actor: &str,
) -> Result<ConsumerState, ConsumerError> {
    let ctx = Ctx { inner };
    let mut tx = begin(inner).await?;
    let (space_id, state) = ctx.existing(&mut tx, key).await?;
    sqlx::query("DELETE FROM consumers WHERE space_id = $1 AND name = $2")
        .bind(space_id)
        .bind(key.1)
        .execute(&mut *tx)
        .await
        .map_err(ctx.err())?;
    let now = ctx.now(&mut tx).await?;
    let event = RetentionEvent {
        space: key.0.clone(),
        kind: RetentionEventKind::ConsumerRemoved,
        consumer: Some(key.1.to_string()),
        from: state.checkpoint,
        to: state.checkpoint,
        entries: 0,
        actor: actor.to_string(),
        at: now,
    };
    ctx.audit(&mut tx, space_id, &event).await?;
    commit(inner, tx).await?;
    Ok(state)
}

pub(crate) async fn prune(
    inner: &Inner,
    space: &SpaceName,
    below: u64,
    actor: &str,
) -> Result<RetentionEvent, ConsumerError> {
    let ctx = Ctx { inner };
    let mut tx = begin(inner).await?;
    let Some(row) = ctx.space(&mut tx, space).await? else {
        return Err(ConsumerError::UnknownSpace {
            space: space.clone(),
        });
    };
    let consumers = ctx.consumers(&mut tx, space, row, None, true).await?;
    let through = check_prune(space, below, row.1, &consumers)?;
    let last = seq_col(through)?;
    let entries = sqlx::query("DELETE FROM slots WHERE space_id = $1 AND seq <= $2")
        .bind(row.0)
        .bind(last)
        .execute(&mut *tx)
        .await
        .map_err(ctx.err())?
        .rows_affected();
    sqlx::query("DELETE FROM slot_events WHERE space_id = $1 AND seq <= $2")
        .bind(row.0)
        .bind(last)
        .execute(&mut *tx)
        .await
        .map_err(ctx.err())?;
    let floor = ctx.last_prune(&mut tx, space).await?.map_or(0, |e| e.to);
    let now = ctx.now(&mut tx).await?;
    let event = RetentionEvent {
        space: space.clone(),
        kind: RetentionEventKind::Pruned,
        consumer: None,
        from: 1,
        to: through.max(floor),
        entries,
        actor: actor.to_string(),
        at: now,
    };
    ctx.audit(&mut tx, row.0, &event).await?;
    commit(inner, tx).await?;
    Ok(event)
}

pub(crate) async fn history(
    inner: &Inner,
    space: &SpaceName,
) -> Result<Vec<RetentionEvent>, StoreError> {
    let ctx = Ctx { inner };
    let rows = sqlx::query(
        "SELECT e.kind, e.consumer, e.from_seq, e.to_seq, e.entries, e.actor, e.at \
         FROM spaces sp JOIN retention_events e ON e.space_id = sp.id \
         WHERE sp.name = $1 ORDER BY e.id",
    )
    .bind(space.as_str())
    .fetch_all(&inner.pool)
    .await
    .map_err(ctx.err())?;
    rows.iter()
        .map(|r| {
            let kind: String = r.try_get(0).map_err(ctx.err())?;
            Ok(RetentionEvent {
                space: space.clone(),
                kind: RetentionEventKind::parse(&kind)
                    .ok_or_else(|| corrupt_value("retention event kind", &kind))?,
                consumer: r.try_get(1).map_err(ctx.err())?,
                from: to_u64("from_seq", r.try_get(2).map_err(ctx.err())?)?,
                to: to_u64("to_seq", r.try_get(3).map_err(ctx.err())?)?,
                entries: to_u64("entries", r.try_get(4).map_err(ctx.err())?)?,
                actor: r.try_get(5).map_err(ctx.err())?,
                at: Timestamp(r.try_get(6).map_err(ctx.err())?),
            })
        })
        .collect()
}

/// [`StoreError::Pruned`] if a read from `from` runs into pruned entries.
pub(crate) async fn check_read(
    inner: &Inner,
    space: &SpaceName,
    from: u64,
) -> Result<(), StoreError> {
    let ctx = Ctx { inner };
    let mut conn = inner.pool.acquire().await.map_err(ctx.err())?;
    match ctx.last_prune(&mut conn, space).await? {
        Some(last) if from <= last.to => Err(pruned_error(&last)),
        _ => Ok(()),
    }
}

/// The exactly-once step: lock the consumer's row, check that its checkpoint is still
/// `expected`, run `apply` on the transaction's connection, move the checkpoint to the last
/// entry's seq, commit. An error from `apply`, a panic, or dropping the future (a crash)
/// rolls everything back.
pub(crate) async fn apply_exactly_once<F>(
    inner: &Inner,
    key: Key<'_>,
    expected: u64,
    entries: &[Entry],
    apply: F,
) -> Result<ConsumerState, ConsumerError>
where
    F: for<'c> FnOnce(&'c mut PgConnection, &'c [Entry]) -> ApplyFuture<'c>,
{
    let ctx = Ctx { inner };
    let mut tx = begin(inner).await?;
    let (space_id, state) = ctx.existing(&mut tx, key).await?;
    let seq = entries.last().map_or(expected, |e| e.seq);
    check_save(&state, expected, seq)?;
    if let Err(e) = apply(&mut tx, entries).await {
        // Dropping `tx` rolls back whatever the apply wrote.
        return Err(ConsumerError::Apply {
            space: key.0.clone(),
            consumer: key.1.to_string(),
            from: entries.first().map_or(expected + 1, |e| e.seq),
            to: seq,
            detail: e.to_string(),
        });
    }
    let now = ctx.now(&mut tx).await?;
    let state = ctx
        .set_checkpoint(&mut tx, space_id, &state, seq, now)
        .await?;
    commit(inner, tx).await?;
    Ok(state)
}
