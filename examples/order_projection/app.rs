//! The order-projection example: an order-management read model kept in SQLite by a
//! projection that explodes bulk updates into concrete order ids, with crashes injected
//! into its workers, rebuilt from the log at the end and compared row by row.
//!
//! Shared by `examples/order_projection/main.rs` (the example) and
//! `tests/example_order_projection.rs` (which runs it small under `cargo test`).
//!
//! ## Why the ids are exploded, and where
//!
//! An event like "mark all packed orders in region 7 as shipped" is a where-clause. Its
//! answer depends on what came before it, so the projection evaluates it against the read
//! model **as of the event's slot in the log**: the handler waits until the live consumer
//! has applied every slot below its own (`checkpoint == seq − 1`; nothing above can be
//! applied yet, because its own slot is still open) and then queries the `orders` table.
//! The operation it commits names the concrete ids. The log fixes them from then on:
//! replay applies the ids and never evaluates the where-clause again, so a rebuild is
//! identical to the live read model whatever crashed, stalled or was retried on the way.
//!
//! ## The pieces
//!
//! - a feeder: a seeded, deterministic stream of events (orders created in regions, single
//!   status changes, bulk status changes), a few fed twice (redelivered);
//! - a `WorkerRuntime` running the `OrderView` projection (16 handlers at once), whose
//!   handlers panic, fail once and are retried, fail permanently, or crash right after
//!   checkpointing their exploded ids, as the event's injected fault says;
//! - "frozen" workers on the raw lease API: they lease a slot, record the exploded ids as
//!   partial work (or the finished operation as a result), stop renewing past their TTL,
//!   and come back later with `commit_late`;
//! - the cleanup service, which recovers the frozen and crashed slots (the projection's
//!   resolver finishes recorded ids; recorded results are committed as they are);
//! - the live consumer `orders-live`: exactly-once apply into `orders` in the store's
//!   SQLite file, in the transaction that moves its checkpoint;
//! - at the end, the consumer `orders-rebuild`, reset to 0, rebuilds `orders_rebuilt` from
//!   the whole log, and the two tables are compared row by row.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use seqlease::cleanup::{CleanupConfig, PartialWorkResolver};
use seqlease::core::ExpiredSlot;
use seqlease::rusqlite::{self, Connection, Transaction};
use seqlease::worker::{
    Backoff, ErrorPolicy, HandlerError, Projection, RunReport, WorkContext, WorkerRuntime,
};
use seqlease::{
    CommitStatus, Consumer, Engine, Entry, EntryContent, Error, Grant, LateOutcome, LeaseError,
    OperationBody, Space, SqliteOptions, SqliteStore,
};
use serde_json::{Value, json};
use tokio::sync::watch;

/// Any error of the example.
pub type AnyError = Box<dyn std::error::Error + Send + Sync>;

/// Every injected panic and error message starts with this.
pub const INJECTED: &str = "injected";

/// Keep the injected panics out of the output (the worker runtime records each one on the
/// released slot's gap, and the summary counts them); other panics print as usual.
pub fn quiet_injected_panics() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let injected = info
            .payload()
            .downcast_ref::<String>()
            .is_some_and(|m| m.starts_with(INJECTED));
        if !injected {
            default_hook(info);
        }
    }));
}

/// The projection-type label on every lease and operation.
const PROJECTION_TYPE: &str = "order-view";

/// The order life cycle; status changes move along it.
const STATUSES: [&str; 5] = ["new", "paid", "packed", "shipped", "delivered"];

/// Regions orders are created in.
const REGIONS: u64 = 8;

/// How the example runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Synthetic events to generate (redelivered copies come on top).
    pub events: u64,
    /// Seed of the event stream and of the injected faults.
    pub seed: u64,
    /// The SQLite file to create; `None`: a file in a temporary directory.
    pub db: Option<PathBuf>,
    /// Lease TTL of every worker.
    pub ttl: Duration,
    /// Workers that freeze past their TTL (spread evenly over the stream).
    pub stalls: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            events: 2000,
            seed: 42,
            db: None,
            ttl: Duration::from_secs(1),
            stalls: 3,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The synthetic event stream
// ---------------------------------------------------------------------------------------

/// One input event.
#[derive(Clone, Debug)]
struct OrderEvent {
    /// Unique per generated event; a redelivered copy keeps it (so it is a duplicate).
    id: String,
    kind: EventKind,
    fault: Fault,
}

#[derive(Clone, Debug)]
enum EventKind {
    /// A new order.
    Created {
        order: u64,
        region: u64,
        status: usize,
    },
    /// One order's status changes.
    StatusSet { order: u64, status: usize },
    /// "Mark all `from` orders in `region` as `to`": a where-clause to explode.
    BulkStatus { region: u64, from: usize, to: usize },
}

/// What goes wrong while the event is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    /// The handler panics before doing anything: the slot becomes `GAP(released)`.
    Panic,
    /// The handler checkpoints its exploded ids, then panics: the slot goes to recovery and
    /// the projection's resolver commits the checkpoint.
    PanicAfterCheckpoint,
    /// The first attempt fails with a retryable error; the retry succeeds.
    ErrorOnce,
    /// The handler fails with a permanent error: `GAP(released)` with the message.
    PermanentError,
    /// A frozen worker records the exploded ids as partial work and stops renewing.
    StallWithPartial,
    /// A frozen worker records the finished operation as a result and stops renewing.
    StallWithResult,
    /// A frozen worker records nothing and stops renewing: its slot becomes
    /// `GAP(expired)`, and its operation arrives later as re-sequenced late work.
    StallWithNothing,
}

impl Fault {
    fn frozen(self) -> bool {
        matches!(
            self,
            Fault::StallWithPartial | Fault::StallWithResult | Fault::StallWithNothing
        )
    }
}

/// The seeded stream: `events` generated events plus a few redelivered copies (with no
/// fault of their own). `stalls` events, spread evenly, go to frozen workers, which record
/// partial work, a result, or nothing, in turn; the ones recording partial work get bulk
/// events, so what they record is an exploded where-clause.
fn generate(events: u64, seed: u64, stalls: u64) -> Vec<OrderEvent> {
    let mut rng = StdRng::seed_from_u64(seed);
    let stall_at: Vec<u64> = (1..=stalls).map(|k| k * events / (stalls + 1)).collect();
    let mut orders = 0u64;
    let mut out: Vec<OrderEvent> = Vec::with_capacity(events as usize + events as usize / 40);
    for i in 0..events {
        let stall = stall_at.iter().position(|&at| at == i);
        let bulk = |rng: &mut StdRng| {
            let from = rng.random_range(0..STATUSES.len() - 2);
            EventKind::BulkStatus {
                region: rng.random_range(0..REGIONS),
                from,
                to: from + 1,
            }
        };
        let roll: f64 = rng.random();
        let kind = if stall.is_some_and(|k| k % 3 == 0) {
            bulk(&mut rng)
        } else if orders == 0 || roll < 0.40 {
            orders += 1;
            EventKind::Created {
                order: 1000 + orders,
                region: rng.random_range(0..REGIONS),
                status: rng.random_range(0..3),
            }
        } else if roll < 0.85 {
            EventKind::StatusSet {
                order: 1000 + rng.random_range(1..=orders),
                status: rng.random_range(0..STATUSES.len()),
            }
        } else {
            bulk(&mut rng)
        };
        let roll: f64 = rng.random();
        let fault = match stall {
            Some(k) if k % 3 == 0 => Fault::StallWithPartial,
            Some(k) if k % 3 == 1 => Fault::StallWithResult,
            Some(_) => Fault::StallWithNothing,
            None if roll < 0.02 => Fault::Panic,
            None if roll < 0.03 => Fault::PanicAfterCheckpoint,
            None if roll < 0.06 => Fault::ErrorOnce,
            None if roll < 0.07 => Fault::PermanentError,
            None => Fault::None,
        };
        out.push(OrderEvent {
            id: format!("evt-{i}"),
            kind,
            fault,
        });
        // A redelivery: an event from a little earlier arrives again.
        if i > 0 && stall.is_none() && rng.random_bool(0.02) {
            let back = rng.random_range(1..=i.min(30)) as usize;
            let mut copy = out[out.len() - 1 - back.min(out.len() - 1)].clone();
            if !copy.fault.frozen() {
                copy.fault = Fault::None;
                out.push(copy);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The read model
// ---------------------------------------------------------------------------------------

/// The two read-model tables: the live one and the one rebuilt from the log. Table names
/// are fixed in the SQL text; values are always bound.
#[derive(Clone, Copy, Debug)]
enum Table {
    Live,
    Rebuilt,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Live => "orders",
            Table::Rebuilt => "orders_rebuilt",
        }
    }

    fn insert(self) -> &'static str {
        match self {
            Table::Live => {
                "INSERT INTO orders (id, region, status, version, updated_seq) \
                 VALUES (?1, ?2, ?3, 1, ?4)"
            }
            Table::Rebuilt => {
                "INSERT INTO orders_rebuilt (id, region, status, version, updated_seq) \
                 VALUES (?1, ?2, ?3, 1, ?4)"
            }
        }
    }

    fn update(self) -> &'static str {
        match self {
            Table::Live => {
                "UPDATE orders SET status = ?1, version = version + 1, updated_seq = ?2 \
                 WHERE id = ?3"
            }
            Table::Rebuilt => {
                "UPDATE orders_rebuilt SET status = ?1, version = version + 1, updated_seq = ?2 \
                 WHERE id = ?3"
            }
        }
    }

    fn rows(self) -> &'static str {
        match self {
            Table::Live => {
                "SELECT id, region, status, version, updated_seq FROM orders ORDER BY id"
            }
            Table::Rebuilt => {
                "SELECT id, region, status, version, updated_seq FROM orders_rebuilt ORDER BY id"
            }
        }
    }
}

const SCHEMA: &str = "
CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    region INTEGER NOT NULL,
    status TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_seq INTEGER NOT NULL
);
CREATE INDEX orders_region_status ON orders (region, status);
CREATE TABLE orders_rebuilt (
    id INTEGER PRIMARY KEY,
    region INTEGER NOT NULL,
    status TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_seq INTEGER NOT NULL
);";

/// The where-clause of a bulk event, evaluated against the live table.
const WHERE_CLAUSE: &str = "SELECT id FROM orders WHERE region = ?1 AND status = ?2 ORDER BY id";

type Row = (i64, i64, String, i64, i64);

fn rows(conn: &Connection, table: Table) -> rusqlite::Result<Vec<Row>> {
    let mut stmt = conn.prepare(table.rows())?;
    stmt.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })?
    .collect()
}

fn matching(conn: &Connection, region: i64, status: &str) -> rusqlite::Result<Vec<i64>> {
    let mut stmt = conn.prepare_cached(WHERE_CLAUSE)?;
    stmt.query_map((region, status), |r| r.get(0))?.collect()
}

fn field<'v>(v: &'v Value, key: &str, seq: u64) -> Result<&'v Value, AnyError> {
    v.get(key)
        .ok_or_else(|| format!("seq {seq}: operation payload has no {key:?}: {v}").into())
}

fn int(v: &Value, key: &str, seq: u64) -> Result<i64, AnyError> {
    field(v, key, seq)?
        .as_i64()
        .ok_or_else(|| format!("seq {seq}: {key:?} is not an integer: {v}").into())
}

fn text<'v>(v: &'v Value, key: &str, seq: u64) -> Result<&'v str, AnyError> {
    field(v, key, seq)?
        .as_str()
        .ok_or_else(|| format!("seq {seq}: {key:?} is not a string: {v}").into())
}

/// Apply one log entry to `table`, inside the consumer's transaction. Operations name
/// concrete ids; nothing here evaluates a where-clause. Gaps hold nothing to apply.
fn apply(tx: &Transaction<'_>, table: Table, entry: &Entry) -> Result<(), AnyError> {
    let Some(op) = entry.operation() else {
        return Ok(());
    };
    let seq = entry.seq;
    let v: Value = serde_json::from_slice(&op.body.payload)?;
    match text(&v, "op", seq)? {
        "create" => {
            tx.execute(
                table.insert(),
                (
                    int(&v, "id", seq)?,
                    int(&v, "region", seq)?,
                    text(&v, "status", seq)?,
                    seq as i64,
                ),
            )?;
        }
        "set_status" => {
            let status = text(&v, "status", seq)?;
            let ids = field(&v, "ids", seq)?
                .as_array()
                .ok_or_else(|| format!("seq {seq}: \"ids\" is not an array: {v}"))?;
            for id in ids {
                let id = id
                    .as_i64()
                    .ok_or_else(|| format!("seq {seq}: order id {id} is not an integer"))?;
                tx.execute(table.update(), (status, seq as i64, id))?;
            }
        }
        other => return Err(format!("seq {seq}: unknown operation {other:?}").into()),
    }
    Ok(())
}

/// What the projection's handlers read: the live table, and how far the live consumer
/// has applied the log.
struct ReadModel {
    applied: watch::Receiver<u64>,
    conn: Mutex<Connection>,
}

impl ReadModel {
    /// The operation payload for `event` in slot `seq`. A bulk event's where-clause is
    /// evaluated against the read model as of slot `seq − 1`: wait until the live consumer
    /// has applied everything below `seq` (it cannot apply more: slot `seq` is still open).
    async fn explode(&self, event: &OrderEvent, seq: u64) -> Result<Vec<u8>, AnyError> {
        let payload = match &event.kind {
            EventKind::Created {
                order,
                region,
                status,
            } => {
                json!({"op": "create", "id": order, "region": region, "status": STATUSES[*status]})
            }
            EventKind::StatusSet { order, status } => {
                json!({"op": "set_status", "ids": [order], "status": STATUSES[*status]})
            }
            EventKind::BulkStatus { region, from, to } => {
                let mut applied = self.applied.clone();
                applied
                    .wait_for(|checkpoint| checkpoint + 1 >= seq)
                    .await
                    .map_err(|_| format!("slot {seq}: the live consumer stopped"))?;
                // A short indexed query on the handler's thread; a bigger read model would
                // use a connection pool and `spawn_blocking`.
                let ids = {
                    let conn = self.conn.lock().map_err(|_| "read connection poisoned")?;
                    matching(&conn, *region as i64, STATUSES[*from])?
                };
                json!({
                    "op": "set_status",
                    "ids": ids,
                    "status": STATUSES[*to],
                    "where": {"region": region, "status": STATUSES[*from]},
                })
            }
        };
        Ok(serde_json::to_vec(&payload)?)
    }
}

/// The operation a payload becomes: its kind is the payload's `op`.
fn body_for(payload: Vec<u8>, event_id: Option<&str>) -> Result<OperationBody, AnyError> {
    let v: Value = serde_json::from_slice(&payload)?;
    let kind = v
        .get("op")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("operation payload has no \"op\": {v}"))?
        .to_string();
    let body = OperationBody::new(kind, payload);
    Ok(match event_id {
        Some(id) => body.with_source_event(id),
        None => body,
    })
}

// ---------------------------------------------------------------------------------------
// The projection
// ---------------------------------------------------------------------------------------

/// The order read model's projection: one event → one operation naming concrete ids.
struct OrderView {
    model: Arc<ReadModel>,
}

impl Projection for OrderView {
    type Event = OrderEvent;

    fn projection_type(&self) -> &str {
        PROJECTION_TYPE
    }

    fn operation_id(&self, event: &OrderEvent) -> String {
        format!("{}/{PROJECTION_TYPE}", event.id)
    }

    async fn handle(
        &self,
        event: OrderEvent,
        ctx: &mut WorkContext<'_>,
    ) -> Result<OperationBody, HandlerError> {
        match event.fault {
            Fault::Panic => panic!("{INJECTED} crash in the handler of {}", event.id),
            Fault::ErrorOnce if ctx.attempt() == 1 => {
                return Err(HandlerError::new(format!(
                    "{INJECTED} timeout of the inventory service for {}",
                    event.id
                )));
            }
            Fault::PermanentError => {
                return Err(HandlerError::permanent(format!(
                    "{INJECTED} malformed event {}",
                    event.id
                )));
            }
            _ => {}
        }
        let payload = self
            .model
            .explode(&event, ctx.seq())
            .await
            .map_err(|e| HandlerError::new(e.to_string()))?;
        if matches!(event.kind, EventKind::BulkStatus { .. }) {
            // The where-clause result is the expensive part: keep it under the lease.
            ctx.checkpoint(payload.clone()).await?;
        }
        if event.fault == Fault::PanicAfterCheckpoint {
            ctx.checkpoint(payload.clone()).await?;
            panic!("{INJECTED} crash after checkpointing {}", event.id);
        }
        body_for(payload, Some(&event.id)).map_err(|e| HandlerError::permanent(e.to_string()))
    }

    fn resolver(&self) -> Option<Arc<dyn PartialWorkResolver>> {
        Some(Arc::new(FinishFromCheckpoint))
    }
}

/// Recovery of a checkpoint: it already is the operation's payload, with concrete ids.
struct FinishFromCheckpoint;

#[async_trait::async_trait]
impl PartialWorkResolver for FinishFromCheckpoint {
    async fn resolve(&self, slot: &ExpiredSlot, partial: &[u8]) -> Result<OperationBody, String> {
        body_for(partial.to_vec(), None).map_err(|e| {
            format!(
                "checkpoint of slot {} is not an operation payload: {e}",
                slot.lease.seq
            )
        })
    }
}

/// A worker that takes the event, explodes it, records its work, then freezes: it stops
/// renewing its lease (a GC pause, a partition, a hung process). The cleanup service
/// recovers the slot after the TTL; when the worker wakes up it hands its operation over
/// with `commit_late`, which finds it committed or re-sequences it, never duplicating.
async fn frozen_worker(
    space: Space,
    model: Arc<ReadModel>,
    event: OrderEvent,
    ttl: Duration,
    freeze: Duration,
) -> Result<String, AnyError> {
    let operation_id = format!("{}/{PROJECTION_TYPE}", event.id);
    let mut lease = space
        .grant(
            Grant::new(operation_id, PROJECTION_TYPE)
                .owner("frozen-worker")
                .ttl(ttl),
        )
        .await?;
    let seq = lease.seq();
    // Alive while exploding (which may wait for the slots below): keep renewing.
    let payload = {
        let explode = model.explode(&event, seq);
        tokio::pin!(explode);
        let mut tick = tokio::time::interval(ttl / 3);
        tick.tick().await;
        loop {
            tokio::select! {
                payload = &mut explode => break payload?,
                _ = tick.tick() => lease.renew(Some(ttl)).await?,
            }
        }
    };
    let body = body_for(payload.clone(), Some(&event.id))?;
    let recorded = match event.fault {
        Fault::StallWithPartial => {
            lease.record_partial(payload).await?;
            "recorded its exploded ids as partial work"
        }
        Fault::StallWithResult => {
            lease.record_result(body.clone()).await?;
            "recorded its result"
        }
        _ => "recorded nothing",
    };
    // Frozen: no renewals from here on.
    tokio::time::sleep(freeze).await;
    let woke = match lease.commit(body.clone()).await {
        // Recovery committed the recorded work in place: the store says so.
        Ok(outcome) if matches!(outcome.status, CommitStatus::AlreadyCommitted) => {
            "its commit found the operation committed in place by recovery".to_string()
        }
        Ok(outcome) => format!("committed after all ({:?})", outcome.status),
        Err(Error::Lease(LeaseError::Expired { .. } | LeaseError::Resolved { .. })) => {
            match lease.commit_late(body).await? {
                LateOutcome::AlreadyCommitted { seq } => {
                    format!("commit_late: recovery had already committed it in slot {seq}")
                }
                LateOutcome::Resequenced { seq, original_seq } => {
                    format!("commit_late: re-sequenced from slot {original_seq} to {seq}")
                }
                LateOutcome::Duplicate { existing } => {
                    format!("commit_late: already committed at {existing}")
                }
            }
        }
        Err(e) => return Err(e.into()),
    };
    Ok(format!(
        "slot {seq} ({}): {recorded}, froze past its TTL; {woke}",
        event.id
    ))
}

// ---------------------------------------------------------------------------------------
// The live consumer
// ---------------------------------------------------------------------------------------

/// Follow the log into the live table, exactly once, publishing the checkpoint after each
/// catch-up, until `stop` is raised (then one last catch-up).
async fn follow(
    space: Space,
    store: SqliteStore,
    mut consumer: Consumer,
    applied: watch::Sender<u64>,
    mut stop: watch::Receiver<bool>,
) -> Result<Consumer, Error> {
    loop {
        consumer
            .catch_up_sqlite(&store, |tx, entry| apply(tx, Table::Live, entry))
            .await?;
        applied.send_replace(consumer.checkpoint());
        if *stop.borrow() {
            return Ok(consumer);
        }
        tokio::select! {
            // Woken as the watermark moves; the timeout only bounds the wait.
            _ = space.wait_for(consumer.checkpoint() + 1, Duration::from_millis(250)) => {}
            _ = stop.changed() => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------

/// What a run found.
#[derive(Debug, Default)]
pub struct Summary {
    /// Events generated.
    pub events: u64,
    /// Events fed (redelivered copies included).
    pub fed: u64,
    /// Slots in the log.
    pub slots: u64,
    /// Committed operations.
    pub committed: u64,
    /// Operations committed by recovery, by recovery type.
    pub recovered: BTreeMap<String, u64>,
    /// Gaps by reason, with one example detail each.
    pub gaps: BTreeMap<String, (u64, String)>,
    /// Bulk updates in the log, and the order ids they named in all.
    pub bulk_updates: (u64, u64),
    /// Bulk updates whose where-clause, evaluated against the final table, would name other
    /// ids than the log holds.
    pub bulk_drifted: u64,
    /// The worker runtime's counts.
    pub run: RunReport,
    /// What each frozen worker saw when it woke up.
    pub frozen: Vec<String>,
    /// The live table against the rebuilt one.
    pub comparison: Comparison,
}

/// The live table against the rebuilt one, row by row.
#[derive(Debug, Default)]
pub struct Comparison {
    /// Rows in the live table and in the rebuilt one.
    pub rows: (usize, usize),
    /// Rows (by position in id order) that differ.
    pub mismatches: usize,
    /// The first difference, for the message.
    pub first: Option<String>,
}

impl Comparison {
    /// Whether both tables hold the same rows.
    pub fn identical(&self) -> bool {
        self.rows.0 == self.rows.1 && self.mismatches == 0
    }
}

/// Compare `orders` with `orders_rebuilt` in the database `path`, row by row in id order.
pub fn compare(path: &Path) -> Result<Comparison, AnyError> {
    let conn = open_read(path)?;
    let (live, rebuilt) = (rows(&conn, Table::Live)?, rows(&conn, Table::Rebuilt)?);
    let mut comparison = Comparison {
        rows: (live.len(), rebuilt.len()),
        ..Comparison::default()
    };
    for (a, b) in live.iter().zip(&rebuilt) {
        if a != b {
            comparison.mismatches += 1;
            comparison.first.get_or_insert_with(|| {
                let (x, y) = (Table::Live.name(), Table::Rebuilt.name());
                format!("{x} {a:?} vs {y} {b:?}")
            });
        }
    }
    if comparison.first.is_none() && live.len() != rebuilt.len() {
        let n = live.len().min(rebuilt.len());
        comparison.first = Some(format!(
            "row {} (id order) is only in one table: {:?} / {:?}",
            n + 1,
            live.get(n),
            rebuilt.get(n)
        ));
    }
    Ok(comparison)
}

impl Summary {
    /// Whether the rebuilt read model equals the live one, row by row.
    pub fn identical(&self) -> bool {
        self.comparison.identical()
    }

    fn print(&self) {
        println!();
        println!("summary");
        println!(
            "  events        {} generated, {} fed ({} redelivered)",
            self.events,
            self.fed,
            self.fed - self.events
        );
        println!("  slots         {}", self.slots);
        let recovered: u64 = self.recovered.values().sum();
        println!(
            "  committed     {} operations ({recovered} by recovery: {})",
            self.committed,
            join(self.recovered.iter().map(|(k, n)| format!("{k} {n}")))
        );
        let gaps: u64 = self.gaps.values().map(|(n, _)| n).sum();
        println!("  gaps          {gaps}");
        for (reason, (n, detail)) in &self.gaps {
            println!("    {reason:<11} {n:>5}  e.g. {detail}");
        }
        println!(
            "  workers       {} retries, {} failed, {} panicked, {} duplicates, {} lost",
            self.run.retries,
            self.run.failed,
            self.run.panicked,
            self.run.duplicates,
            self.run.lost
        );
        for line in &self.frozen {
            println!("    frozen worker: {line}");
        }
        println!(
            "  bulk updates  {} naming {} order ids; {} would name other ids if their \
             where-clause were evaluated against the final table instead of the log",
            self.bulk_updates.0, self.bulk_updates.1, self.bulk_drifted
        );
        let c = &self.comparison;
        println!(
            "  rows          {} live, {} rebuilt: {}",
            c.rows.0,
            c.rows.1,
            if c.identical() {
                "identical".to_string()
            } else {
                format!(
                    "DIFFERENT ({} rows differ; first: {})",
                    c.mismatches,
                    c.first.as_deref().unwrap_or("-")
                )
            }
        );
    }
}

fn join(items: impl Iterator<Item = String>) -> String {
    let v: Vec<String> = items.collect();
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}

fn open_read(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// Run the example: feed, project with crashes, follow, rebuild, compare. Prints as it
/// goes and returns the summary (check [`Summary::identical`]).
pub async fn run(config: &Config) -> Result<Summary, AnyError> {
    let started = Instant::now();
    let tmp;
    let path = match &config.db {
        Some(path) => {
            if path.exists() {
                return Err(format!(
                    "{} exists; pass a path to a new file (the example creates its tables)",
                    path.display()
                )
                .into());
            }
            path.clone()
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().join("orders.db")
        }
    };
    println!(
        "order_projection: {} events, seed {}, TTL {} ms, {} frozen workers, db {}",
        config.events,
        config.seed,
        config.ttl.as_millis(),
        config.stalls,
        path.display()
    );

    // The store and the read model share one SQLite file.
    let store = SqliteStore::open(&path, SqliteOptions::default()).await?;
    open_read(&path)?.execute_batch(SCHEMA)?;
    let engine = Engine::builder()
        .store(Arc::new(store.clone()))
        .build()
        .await?;
    let space = engine.space("orders-projections").await?;

    let (applied_tx, applied_rx) = watch::channel(0u64);
    let model = Arc::new(ReadModel {
        applied: applied_rx,
        conn: Mutex::new(open_read(&path)?),
    });
    let projection = OrderView {
        model: model.clone(),
    };

    // Recovery: the projection's resolver finishes recorded ids; recorded results are
    // committed as they are.
    let cleanup = engine
        .cleanup()
        .config(CleanupConfig {
            interval: Duration::from_millis(100),
            ..CleanupConfig::default()
        })
        .projection(&projection)
        .build()
        .await?;
    let cleaning = cleanup.start();

    let live = space.consumer("orders-live").batch_size(500).open().await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let following = tokio::spawn(follow(
        space.clone(),
        store.clone(),
        live,
        applied_tx,
        stop_rx,
    ));

    let worker = WorkerRuntime::builder(&space, projection)
        .concurrency(16)
        .ttl(config.ttl)
        .error_policy(ErrorPolicy::Retry {
            max_attempts: 3,
            backoff: Backoff::fixed(Duration::from_millis(20)),
        })
        .build()?;
    let events = generate(config.events, config.seed, config.stalls);
    let (sender, stream) = seqlease::worker::channel(256);
    let running = tokio::spawn({
        let worker = worker.clone();
        async move { worker.run(stream).await }
    });
    // Frozen workers sleep past their TTL and two cleanup intervals.
    let freeze = config.ttl + Duration::from_millis(300);
    let mut frozen = Vec::new();
    let mut sent = 0u64;
    for event in &events {
        if event.fault.frozen() {
            // Take the slot after the events fed before it, as a worker that picked the
            // event up in turn would (the runtime leases only when a handler is free).
            let leased = sent + frozen.len() as u64;
            let deadline = Instant::now() + Duration::from_secs(10);
            while space.info().await?.last_seq < leased && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            frozen.push(tokio::spawn(frozen_worker(
                space.clone(),
                model.clone(),
                event.clone(),
                config.ttl,
                freeze,
            )));
        } else {
            sender
                .send(event.clone())
                .await
                .map_err(|_| "the worker stopped taking events")?;
            sent += 1;
        }
    }
    drop(sender);
    let report = running.await?;
    let mut frozen_lines = Vec::new();
    for task in frozen {
        frozen_lines.push(task.await??);
    }
    let fed_at = started.elapsed();

    // Every slot resolves (the cleanup service takes care of the frozen ones).
    let last = space.info().await?.last_seq;
    space.wait_for(last, Duration::from_secs(60)).await?;
    stop_tx.send_replace(true);
    let live = following.await??;
    cleaning.stop().await;
    println!(
        "live: {} events fed in {:.1} s; {} slots, live consumer at checkpoint {}",
        events.len(),
        fed_at.as_secs_f64(),
        last,
        live.checkpoint()
    );

    // Rebuild a fresh table from the whole log with a second consumer.
    let mut rebuild = space
        .consumer("orders-rebuild")
        .batch_size((last as usize / 8).clamp(100, 10_000))
        .open()
        .await?;
    let target = rebuild
        .reset(0, "order-projection-example")
        .await?
        .watermark;
    let rebuild_started = Instant::now();
    println!("rebuild: consumer orders-rebuild reset to 0; replaying {target} entries");
    while rebuild.checkpoint() < target {
        let n = rebuild
            .run_once_sqlite(&store, |tx, entry| apply(tx, Table::Rebuilt, entry))
            .await?;
        if n == 0 {
            break;
        }
        println!(
            "rebuild: {}/{target} entries, {:.0} ms",
            rebuild.checkpoint(),
            rebuild_started.elapsed().as_secs_f64() * 1000.0
        );
    }

    // Compare, and count what the log holds.
    let conn = open_read(&path)?;
    let mut summary = Summary {
        events: config.events,
        fed: events.len() as u64,
        slots: last,
        run: report,
        frozen: frozen_lines,
        comparison: compare(&path)?,
        ..Summary::default()
    };
    let mut reader = space.reader(1);
    while reader.position() <= last {
        let page = reader.try_next_page().await?;
        if page.is_empty() {
            break;
        }
        for entry in page {
            count(&mut summary, &conn, &entry)?;
        }
    }
    summary.print();
    println!("done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(summary)
}

/// Count one log entry into the summary.
fn count(summary: &mut Summary, conn: &Connection, entry: &Entry) -> Result<(), AnyError> {
    match &entry.content {
        EntryContent::Gap(gap) => {
            let slot = summary
                .gaps
                .entry(gap.reason.as_str().to_string())
                .or_insert((0, String::new()));
            slot.0 += 1;
            if slot.1.is_empty() {
                slot.1 = format!(
                    "slot {}: {}",
                    entry.seq,
                    match (&gap.detail, gap.superseded_by) {
                        (Some(d), _) => d.clone(),
                        (None, Some(by)) => format!("its operation is at slot {by}"),
                        (None, None) => "no detail".to_string(),
                    }
                );
            }
        }
        EntryContent::Operation(op) => {
            summary.committed += 1;
            if let Some(r) = &op.recovery {
                *summary
                    .recovered
                    .entry(r.recovery_type.as_str().to_string())
                    .or_default() += 1;
            }
            let v: Value = serde_json::from_slice(&op.body.payload)?;
            if let Some(w) = v.get("where") {
                let ids: Vec<i64> = serde_json::from_value(field(&v, "ids", entry.seq)?.clone())?;
                summary.bulk_updates.0 += 1;
                summary.bulk_updates.1 += ids.len() as u64;
                let now = matching(
                    conn,
                    int(w, "region", entry.seq)?,
                    text(w, "status", entry.seq)?,
                )?;
                if now != ids {
                    summary.bulk_drifted += 1;
                }
            }
        }
    }
    Ok(())
}
