//! The write path: one batch of commands, one `BEGIN IMMEDIATE` transaction.
//!
//! The engine coalesces concurrent grants, commits and the rest into a batch (group
//! commit); this module applies it exactly as the contract in `seqlease_core::store` says.
//! The transaction starts with `BEGIN IMMEDIATE`, which takes the database's write lock at
//! once: several processes sharing one file queue on the lock (waiting up to the busy
//! timeout) instead of deadlocking when a reader tries to become a writer. Holding the lock
//! also means nothing changes under the batch between reading and writing.
//!
//! The whole transaction runs as one job on the write thread (see `writer`), on a `rusqlite`
//! connection: the caller pays one hand-off to that thread per batch, and each statement
//! inside costs what SQLite itself costs (a few microseconds for a cached primary-key
//! write). That is why the write path is not on sqlx, which the rest of the crate uses:
//! sqlx's SQLite driver runs every statement as a hand-off to the connection's worker
//! thread and back (measured here: ~9 µs idle, `SELECT 1` in a loop 21.6 µs, an `INSERT`
//! inside an open transaction 46 µs on a loaded 2-core machine), so a batch cost a
//! multiple of its statement count in hand-offs and an engine with 16 workers topped out
//! near 10 000 grant→commit cycles/s. Both drivers link the same bundled SQLite
//! (`libsqlite3-sys`), so the file, its locks and its WAL are shared as before. The
//! figures after the switch are in the crate docs.
//!
//! A batch runs in three steps:
//!
//! 1. **Load** ([`sql`]): one query per space named returns its row (id, counters,
//!    capacity) joined with the slots the lease commands name, each LEASED one with the seq
//!    where its operation id is already committed, if it is (I6).
//! 2. **Plan** ([`plan`]): apply the commands in order to that in-memory copy, with the
//!    store clock read once for the whole batch. Each command gets its reply here; a refused
//!    command changes nothing.
//! 3. **Write** ([`sql`]): insert the granted slots, write lease changes, resolve committed
//!    and gap slots (one cached statement per row), and write each changed space's
//!    counters back, recomputing its watermark in the same statement.
//!
//! Any database error aborts the batch: the transaction is dropped and rolled back (the
//! write thread also checks that no transaction is left open), and the caller gets a
//! [`StoreError`](seqlease_core::StoreError) for all of it.

mod plan;
pub(crate) mod sql;

use rusqlite::{Connection, TransactionBehavior};
use seqlease_core::{BatchOutcome, Command, LeaseKey, SpaceName, Timestamp};

use crate::codec::seq_param;
use crate::error::WriteError;
use crate::resources;
use plan::Plan;

/// Apply `commands` in one transaction on the write connection; see the module docs.
pub(crate) fn execute(
    writer: &mut Connection,
    clock: &dyn seqlease_core::Clock,
    commands: Vec<Command>,
) -> Result<BatchOutcome, WriteError> {
    // Dropped without commit (any error below), the transaction rolls back.
    let tx = writer.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Read under the write lock: a batch that waited for another process's transaction
    // judges expiry, and stamps what it writes, at the time it runs.
    let now = clock.now();
    let mut plan = load(&tx, now, &commands)?;
    for command in commands {
        plan.apply(command);
    }
    sql::write(&tx, &mut plan, now)?;
    tx.commit()?;
    Ok(plan.outcome)
}

/// Step 1: read everything the batch can touch into a [`Plan`]: one query per space named.
///
/// Slots granted by this batch need no I6 lookup: their tokens are only known once the batch
/// has answered, so no command of this batch can commit them (and the unique index on
/// committed operation ids would refuse a duplicate anyway).
fn load(conn: &Connection, now: Timestamp, commands: &[Command]) -> Result<Plan, WriteError> {
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
        if let Some(loaded) = sql::load_space(conn, name, &seqs)? {
            spaces.push(loaded.space);
            slots.push(loaded.slots);
        }
    }
    // Fences (I9): the current epoch of every resource a grant or a loaded lease names,
    // read in this transaction. Batches without fences read nothing more.
    let mut fenced: Vec<&str> = commands
        .iter()
        .filter_map(|c| match c {
            Command::Grant(g) => g.fence.as_ref().map(|f| f.resource.as_str()),
            _ => None,
        })
        .chain(
            slots
                .iter()
                .flatten()
                .filter_map(|(_, slot, _)| slot.fence.as_ref().map(|f| f.resource.as_str())),
        )
        .collect();
    fenced.sort_unstable();
    fenced.dedup();
    let epochs = fenced
        .into_iter()
        .map(|r| Ok((r.to_string(), resources::epoch_in(conn, r)?)))
        .collect::<Result<Vec<_>, WriteError>>()?;
    let mut plan = Plan::new(now, spaces, commands.len());
    for (resource, epoch) in epochs {
        plan.set_epoch(resource, epoch);
    }
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
