//! The write path: one batch of commands, one `BEGIN IMMEDIATE` transaction.
//!
//! The engine coalesces concurrent grants, commits and the rest into a batch (group
//! commit); this module applies it exactly as the contract in `seqlease_core::store` says.
//! The transaction starts with `BEGIN IMMEDIATE`, which takes the database's write lock at
//! once: several processes sharing one file queue on the lock (waiting up to the busy
//! timeout) instead of deadlocking when a reader tries to become a writer. Holding the lock
//! also means nothing changes under the batch between reading and writing.
//!
//! A batch runs in three steps, so that it costs a fixed handful of statements whatever its
//! size (throughput on SQLite is round trips per batch):
//!
//! 1. **Load** ([`sql`]): one query per space named returns its row (id, counters,
//!    capacity) joined with the slots the lease commands name, each LEASED one with the seq
//!    where its operation id is already committed, if it is (I6).
//! 2. **Plan** ([`plan`]): apply the commands in order to that in-memory copy, with the
//!    store clock read once for the whole batch. Each command gets its reply here; a refused
//!    command changes nothing.
//! 3. **Write** ([`sql`]): insert the granted slots, write lease changes, resolve committed
//!    and gap slots (one multi-row statement each), and write each changed space's counters
//!    back, recomputing its watermark in the same statement.
//!
//! A typical batch of grants and commits is six statements: `BEGIN IMMEDIATE`, load,
//! insert, commit, space update, `COMMIT`.
//!
//! Any database error aborts the batch: the transaction is dropped and rolled back, and the
//! caller gets a [`StoreError`] for all of it.

mod plan;
mod sql;

use seqlease_core::{BatchOutcome, Command, LeaseKey, SpaceName, StoreError, Timestamp};
use sqlx::Connection;
use sqlx::SqliteConnection;

use crate::codec::seq_param;
use crate::error::map_sqlx;
use plan::Plan;

/// Apply `commands` in one transaction on the write connection; see the module docs.
pub(crate) async fn execute(
    writer: &mut SqliteConnection,
    now: Timestamp,
    commands: Vec<Command>,
) -> Result<BatchOutcome, StoreError> {
    let mut tx = writer
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(map_sqlx)?;
    let mut plan = load(&mut tx, now, &commands).await?;
    for command in commands {
        plan.apply(command);
    }
    sql::write(&mut tx, &mut plan, now).await?;
    tx.commit().await.map_err(map_sqlx)?;
    Ok(plan.outcome)
}

/// Step 1: read everything the batch can touch into a [`Plan`]: one query per space named.
///
/// Slots granted by this batch need no I6 lookup: their tokens are only known once the batch
/// has answered, so no command of this batch can commit them (and the unique index on
/// committed operation ids would refuse a duplicate anyway).
async fn load(
    conn: &mut SqliteConnection,
    now: Timestamp,
    commands: &[Command],
) -> Result<Plan, StoreError> {
    let mut names: Vec<&SpaceName> = Vec::new();
    for command in commands {
        if !names.contains(&command.space()) {
            names.push(command.space());
        }
    }
    let mut spaces = Vec::with_capacity(names.len());
    let mut slots = Vec::with_capacity(names.len());
    for name in names {
        let mut seqs: Vec<i64> = lease_keys(commands, name)
            .filter_map(|k| seq_param(k.seq))
            .collect();
        seqs.sort_unstable();
        seqs.dedup();
        if let Some(loaded) = sql::load_space(conn, name, &seqs).await? {
            spaces.push(loaded.space);
            slots.push(loaded.slots);
        }
    }
    let mut plan = Plan::new(now, spaces, commands.len());
    for (index, loaded) in slots.into_iter().enumerate() {
        for (seq, slot, committed_seq) in loaded {
            if let Some(existing) = committed_seq {
                plan.add_committed(index, slot.operation_id.clone(), existing);
            }
            plan.add_slot((index, seq), slot);
        }
    }
    Ok(plan)
}

/// The lease keys of `commands` that name `space`.
fn lease_keys<'a>(
    commands: &'a [Command],
    space: &'a SpaceName,
) -> impl Iterator<Item = &'a LeaseKey> {
    commands.iter().filter_map(move |c| match c {
        Command::Grant(_) => None,
        Command::Renew { key, .. }
        | Command::RecordPartial { key, .. }
        | Command::RecordResult { key, .. }
        | Command::Commit { key, .. }
        | Command::Release { key, .. } => (&key.space == space).then_some(key),
    })
}
