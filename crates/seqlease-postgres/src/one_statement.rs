//! The one-statement path: a batch of plain grants and commits of one space, written by a
//! single autocommitted statement that checks what the client assumed.
//!
//! The general path ([`crate::execute`]) runs BEGIN, lock, load, write and COMMIT: five
//! round trips, all with the space's row lock held, so the batches of a space serialize on
//! round-trip latency rather than on the database's work (measured: ~3 ms per batch of ~27
//! commands, ~1.7 ms of it in statements, the machine 45 % idle). Most batches of a busy
//! worker are nothing but grants and commits of leases this process holds, and their outcome
//! is known in advance when nothing unusual happened: every grant gets the next seq, every
//! commit commits. This path sends that outcome as one statement which holds the row lock
//! only for its own work and the commit, and verifies the assumptions as it writes:
//!
//! - **The space row is as this process last left it** (`last_seq`, `in_flight`), checked
//!   on the row's latest version once its lock is held. Every transaction that adds a slot
//!   or changes a slot's state also changes these counters, so when they match, the
//!   statement's snapshot already holds every such change: what the general path gets by
//!   reading after the lock. Otherwise (another process or the cleanup wrote) the statement
//!   writes nothing and returns no row. The pair never repeats (`in_flight` only grows with
//!   `last_seq`), and every writer of slot states (`execute`, `recovery`) updates the space
//!   row in the same transaction: a writer that did not would break this check.
//! - **The grants fit under the capacity** as it stands before the batch's commits (so each
//!   grant would succeed on the general path too); otherwise, again, nothing is written.
//! - **Each committed slot is LEASED, unfenced, under the command's token and not expired**
//!   at the clock read after the lock. The commit `UPDATE` re-checks this on each row's
//!   latest version; if any slot fails, [`REFUSED`] is raised and the statement, with all
//!   it wrote, rolls back.
//! - **Its operation id is not committed yet** (I6): the unique index refuses a duplicate,
//!   which rolls the statement back too.
//!
//! A refused batch then runs on the general path, which decides every command from the rows,
//! so no command is ever answered differently than the general path would answer it. After
//! a refusal the space takes the general path for its next [`BACKOFF`] batches, so processes
//! that share a space do not pay two round trips per batch.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use seqlease_core::time::duration_micros;
use seqlease_core::{
    BatchOutcome, Command, CommitOutcome, CommitStatus, LeaseRecord, Reply, SpaceName, StoreError,
    Timestamp, Token,
};
use sqlx::Row;

use crate::Inner;
use crate::error::map_sqlx;
use crate::read::{state, to_u64};

/// The SQLSTATE `seqlease_refuse_batch` raises (migration 0007).
const REFUSED: &str = "SL001";
/// A unique violation: an operation id already committed (I6).
const UNIQUE_VIOLATION: &str = "23505";
/// TTLs from here up (about 36,000 years) take the general path.
const MAX_TTL_MICROS: i64 = 1 << 60;
/// Batches of a space that take the general path after a refusal.
const BACKOFF: u32 = 16;

/// What this process last knew of a space's row: its id and the counters it last wrote or
/// read under the row lock.
#[derive(Clone, Copy, Debug)]
struct Known {
    id: i64,
    last_seq: u64,
    in_flight: u32,
    capacity: u32,
    /// General-path batches to run before trying this path again.
    backoff: u32,
}

/// The spaces this process has written, and how often each path ran.
#[derive(Debug, Default)]
pub(crate) struct SpaceCache {
    known: Mutex<HashMap<SpaceName, Known>>,
    fast: AtomicU64,
    refused: AtomicU64,
}

/// How many batches took the one-statement path, and how many it refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathCounts {
    /// Batches written by one statement.
    pub one_statement: u64,
    /// Batches the statement refused (they ran on the general path).
    pub refused: u64,
}

impl SpaceCache {
    /// Record a space's row as a committed general-path batch left it.
    pub(crate) fn remember(
        &self,
        name: &SpaceName,
        id: i64,
        last_seq: u64,
        in_flight: u32,
        capacity: u32,
    ) {
        let mut known = self.known.lock();
        let backoff = known.get(name).map_or(0, |k| k.backoff);
        known.insert(
            name.clone(),
            Known {
                id,
                last_seq,
                in_flight,
                capacity,
                backoff,
            },
        );
    }

    /// Record the counters a committed recovery transaction left in a space this process
    /// already knows (recovery does not read the capacity).
    pub(crate) fn update_counters(&self, name: &SpaceName, last_seq: u64, in_flight: u32) {
        if let Some(k) = self.known.lock().get_mut(name) {
            k.last_seq = last_seq;
            k.in_flight = in_flight;
        }
    }

    pub(crate) fn counts(&self) -> PathCounts {
        PathCounts {
            one_statement: self.fast.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    fn refused(&self, name: &SpaceName) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        if let Some(k) = self.known.lock().get_mut(name) {
            k.backoff = BACKOFF;
        }
    }
}

/// The batch as the statement's bound arrays.
#[derive(Default)]
struct Arrays {
    g_token: Vec<Vec<u8>>,
    g_operation: Vec<String>,
    g_projection: Vec<String>,
    g_owner: Vec<String>,
    g_ttl: Vec<i64>,
    c_seq: Vec<i64>,
    c_token: Vec<Vec<u8>>,
    c_kind: Vec<String>,
    c_payload: Vec<Vec<u8>>,
    c_source: Vec<Option<String>>,
    /// The space id, once per commit.
    c_space: Vec<i64>,
    /// The state each committed slot must be in: LEASED, once per commit.
    c_leased: Vec<i16>,
}

/// The batch's shape when this path can take it: one space this process knows, grants
/// without fences, commits of distinct existing seqs. `None`: the general path.
/// Also returns the grants' tokens, in order.
fn plan(commands: &[Command], known: &Known) -> Option<(Arrays, Vec<Token>)> {
    let mut arrays = Arrays::default();
    let mut tokens = Vec::new();
    let space = commands.first()?.space();
    for command in commands {
        if command.space() != space {
            return None;
        }
        match command {
            // An absurd TTL would overflow `now + ttl` in SQL; the general path saturates.
            Command::Grant(req)
                if req.fence.is_none() && duration_micros(req.ttl) < MAX_TTL_MICROS =>
            {
                let token = Token::random();
                arrays.g_token.push(token.as_bytes().to_vec());
                arrays.g_operation.push(req.operation_id.clone());
                arrays.g_projection.push(req.projection_type.clone());
                arrays.g_owner.push(req.owner.clone());
                arrays.g_ttl.push(duration_micros(req.ttl));
                tokens.push(token);
            }
            Command::Commit { key, body } => {
                let seq = i64::try_from(key.seq).ok()?;
                if key.seq == 0 || key.seq > known.last_seq || arrays.c_seq.contains(&seq) {
                    return None;
                }
                arrays.c_seq.push(seq);
                arrays.c_token.push(key.token.as_bytes().to_vec());
                arrays.c_kind.push(body.kind.clone());
                arrays.c_payload.push(body.payload.clone());
                arrays.c_source.push(body.source_event_id.clone());
                arrays.c_space.push(known.id);
                arrays.c_leased.push(state::LEASED);
            }
            _ => return None,
        }
    }
    let grants = arrays.g_token.len() as u64;
    (u64::from(known.in_flight) + grants <= u64::from(known.capacity)).then_some((arrays, tokens))
}

/// Run `commands` as one statement if this path can take them. `Ok(None)`: it cannot, or
/// the statement refused them; run them on the general path.
pub(crate) async fn try_execute(
    inner: &Inner,
    commands: &[Command],
) -> Result<Option<BatchOutcome>, StoreError> {
    let Some(space) = commands.first().map(|c| c.space().clone()) else {
        return Ok(None);
    };
    let known = {
        let mut cache = inner.spaces.known.lock();
        let Some(known) = cache.get_mut(&space) else {
            return Ok(None);
        };
        if known.backoff > 0 {
            known.backoff -= 1;
            return Ok(None);
        }
        *known
    };
    let Some((arrays, tokens)) = plan(commands, &known) else {
        return Ok(None);
    };
    let grants = arrays.g_token.len() as i64;
    let commits = arrays.c_seq.len() as i64;
    let (pinned, offset) = inner.clock.params();
    // fetch_all, not fetch_optional: the statement commits at the protocol's Sync, after its
    // row was sent, and only the end of the exchange says the commit succeeded.
    let result = sqlx::query(STATEMENT.as_str())
        .bind(pinned)
        .bind(offset)
        .bind(known.id)
        .bind(grants)
        .bind(commits)
        .bind(known.last_seq as i64)
        .bind(i64::from(known.in_flight))
        .bind(&arrays.g_token)
        .bind(&arrays.g_operation)
        .bind(&arrays.g_projection)
        .bind(&arrays.g_owner)
        .bind(&arrays.g_ttl)
        .bind(&arrays.c_seq)
        .bind(&arrays.c_token)
        .bind(&arrays.c_kind)
        .bind(&arrays.c_payload)
        .bind(&arrays.c_source)
        .bind(&inner.channel)
        .bind(&arrays.c_space)
        .bind(&arrays.c_leased)
        .fetch_all(&inner.pool)
        .await;
    let rows = match result {
        Ok(rows) => rows,
        Err(sqlx::Error::Database(db)) if rolled_back_to_retry(db.code().as_deref()) => {
            inner.spaces.refused(&space);
            return Ok(None);
        }
        Err(e) => return Err(map_sqlx(e, &inner.target)),
    };
    let Some(row) = rows.first() else {
        // The space row changed under this process, or the grants do not fit.
        inner.spaces.refused(&space);
        return Ok(None);
    };
    let get = |e| map_sqlx(e, &inner.target);
    let watermark = to_u64("watermark", row.try_get(0).map_err(get)?)?;
    let base = to_u64("last_seq", row.try_get(1).map_err(get)?)?;
    let now: i64 = row.try_get(2).map_err(get)?;
    inner.spaces.fast.fetch_add(1, Ordering::Relaxed);
    {
        let mut cache = inner.spaces.known.lock();
        if let Some(k) = cache.get_mut(&space) {
            k.last_seq = base + grants as u64;
            k.in_flight = (i64::from(known.in_flight) + grants - commits) as u32;
        }
    }
    Ok(Some(outcome(
        commands, tokens, &space, base, now, watermark,
    )))
}

/// Whether an error means the statement rolled back and the general path should decide the
/// batch: a refusal, a duplicate operation id, or a transaction-rollback error (class 40:
/// serialization failure, deadlock).
fn rolled_back_to_retry(code: Option<&str>) -> bool {
    matches!(code, Some(REFUSED | UNIQUE_VIOLATION)) || code.is_some_and(|c| c.starts_with("40"))
}

/// The replies and progress of a batch the statement wrote.
fn outcome(
    commands: &[Command],
    tokens: Vec<Token>,
    space: &SpaceName,
    base: u64,
    now: i64,
    watermark: u64,
) -> BatchOutcome {
    let mut outcome = BatchOutcome::default();
    outcome.replies.reserve(commands.len());
    let mut tokens = tokens.into_iter();
    let mut seq = base;
    for command in commands {
        let reply = match command {
            Command::Grant(req) => {
                seq += 1;
                Reply::Granted(Box::new(LeaseRecord {
                    space: space.clone(),
                    seq,
                    token: tokens.next().expect("plan() drew a token per grant"),
                    operation_id: req.operation_id.clone(),
                    projection_type: req.projection_type.clone(),
                    owner: req.owner.clone(),
                    fence: None,
                    leased_at: Timestamp(now),
                    expires_at: Timestamp(now.saturating_add(duration_micros(req.ttl))),
                    renewals: 0,
                }))
            }
            Command::Commit { key, .. } => {
                outcome.note_freed(space);
                Reply::Committed(CommitOutcome {
                    seq: key.seq,
                    status: CommitStatus::Committed,
                })
            }
            _ => unreachable!("plan() takes only grants and commits"),
        };
        outcome.replies.push(Ok(reply));
    }
    outcome.set_watermark(space, watermark);
    outcome
}

/// The statement (`CASE`, not `OR`: only `CASE` fixes the order of evaluation, so the
/// refusal runs only when a check fails). `$1, $2`: the clock ([`crate::CLOCK_SQL`]); `$3` space id; `$4` grants,
/// `$5` commits; `$6, $7` the expected `last_seq` and `in_flight`; `$8…$12` the grants
/// (token, operation id, projection type, owner, TTL µs); `$13…$17` the commits (seq,
/// token, kind, payload, source event); `$18` the NOTIFY channel; `$19` the space id once
/// per commit; `$20` the LEASED state code once per commit.
///
/// The space `UPDATE` comes first in every plan: the other writes join its one row, so none
/// of them touches a slot before the space row is locked (the lock order of the general
/// path: space, then slots). Its watermark is computed as the general path's is: the lowest
/// LEASED slot above the stored watermark that this batch does not commit, or the first
/// slot granted here, minus one.
///
/// The commits' `UPDATE` must look each slot up by its key, with the bound arrays on the
/// outside of the join. The generic plan is made once per connection, often while `slots`
/// is still nearly empty, and then any other order looks as cheap: joined to `sp.id`, it
/// scanned every slot of the space against every commit; with the literal `state = 0`, it
/// scanned the whole partial index of LEASED slots against every commit (seen: 7 ms for
/// 128 commits, and kept for the connection's life). So both key columns come from the
/// arrays, and so does the LEASED code, which keeps the partial index out of reach.
static STATEMENT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH sp AS (
  UPDATE spaces p SET
    last_seq = p.last_seq + $4,
    in_flight = p.in_flight + $4 - $5,
    watermark = CASE WHEN $5 = 0 THEN p.watermark ELSE GREATEST(p.watermark, COALESCE(
      LEAST(
        (SELECT s.seq FROM slots s
          WHERE s.space_id = p.id AND s.state = 0 AND s.seq > p.watermark
            AND s.seq <> ALL($13::bigint[])
          ORDER BY s.seq LIMIT 1),
        CASE WHEN $4 > 0 THEN p.last_seq + 1 END) - 1,
      p.last_seq + $4)) END
  WHERE p.id = $3 AND p.last_seq = $6 AND p.in_flight = $7 AND p.in_flight + $4 <= p.capacity
  RETURNING p.id, p.name, p.watermark, p.last_seq - $4 AS base, {clock} AS now
), ins AS (
  INSERT INTO slots (space_id, seq, state, token, operation_id, projection_type, owner,
                     leased_at, expires_at, renewals)
  SELECT sp.id, sp.base + g.n, {leased}, g.token, g.op, g.projection, g.owner, sp.now,
         sp.now + g.ttl, 0
  FROM sp, unnest($8::bytea[], $9::text[], $10::text[], $11::text[], $12::bigint[])
           WITH ORDINALITY AS g(token, op, projection, owner, ttl, n)
), upd AS (
  UPDATE slots s SET
    state = {committed}, resolved_at = sp.now, committed_op_id = s.operation_id,
    op_kind = c.kind, op_payload = c.payload, op_source_event = c.source,
    partial = NULL, result_kind = NULL, result_payload = NULL, result_source_event = NULL
  FROM sp, unnest($19::bigint[], $13::bigint[], $14::bytea[], $15::text[], $16::bytea[],
                  $17::text[], $20::smallint[])
           AS c(space_id, seq, token, kind, payload, source, leased)
  WHERE s.space_id = c.space_id AND s.seq = c.seq AND s.state = c.leased AND s.token = c.token
    AND s.expires_at > sp.now AND s.fence_resource IS NULL
  RETURNING 1
)
SELECT sp.watermark, sp.base, sp.now,
       CASE WHEN (SELECT count(*) FROM upd) <> $5
            THEN seqlease_refuse_batch('a committed slot is not a live unfenced lease under its token') END,
       (CASE WHEN $5 > 0 THEN pg_notify($18, sp.name || ':' || sp.watermark || ':' || $5) END)
         IS NULL
FROM sp",
        clock = crate::CLOCK_SQL,
        leased = state::LEASED,
        committed = state::COMMITTED,
    )
});
