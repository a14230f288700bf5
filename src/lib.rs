//! # seqlease
//!
//! A sequence-leasing projection engine for event-sourced applications.
//!
//! Projection workers turn events into operations in parallel, but the operations must land
//! in one strict order so every read model — and every replay — sees the same history.
//! seqlease hands workers ordered **sequence leases**: the right to fill one slot of an ordered
//! log before a deadline. Workers commit into their slots in any order; readers see the
//! contiguous prefix (the **watermark**) and wait at a barrier for the next slot. A slot whose
//! worker vanished is resolved by recovery into recovered work or an explained **gap**.
//!
//! ```
//! use seqlease::{Engine, Grant, OperationBody};
//!
//! # async fn demo() -> Result<(), seqlease::Error> {
//! let engine = Engine::open("memory").await?;
//! let orders = engine.space("orders-projections").await?;
//!
//! // A worker leases the next slot, does its work, and commits one operation into it.
//! let mut lease = orders.grant(Grant::new("event-17/update", "order-status")).await?;
//! let payload = br#"{"set":{"status":"shipped"},"ids":[101,102]}"#.to_vec();
//! lease.commit(OperationBody::new("update", payload)).await?;
//!
//! // A reader follows the ordered log from the start.
//! let mut reader = orders.reader(1);
//! let entry = reader.next().await?;
//! assert_eq!(entry.seq, 1);
//! assert_eq!(orders.watermark(), 1);
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```
//!
//! The pieces: [`Engine`] (one per store), [`Space`] (one ordered log), [`Lease`] (one slot),
//! [`LogReader`] (the ordered log), [`Consumer`] (a named reader with a stored checkpoint:
//! at-least-once or exactly-once apply, replay, retention), and [`worker::WorkerRuntime`] to
//! run projection handlers over a stream of events with renewal, retries and shutdown
//! handled. Stores: in-memory, SQLite (the embedded default) and
//! PostgreSQL (many processes on many machines); see the
//! `Store` trait in [`core`] to write another.

#![warn(missing_docs)]

mod barrier;
pub mod cleanup;
mod config;
pub mod consumer;
mod engine;
mod error;
mod group_commit;
mod keeper;
pub mod late;
mod lease;
mod open;
mod reader;
#[cfg(test)]
mod schedules;
mod space;
pub mod telemetry;
pub mod worker;

pub use config::EngineConfig;
pub use consumer::{Batch, Consumer, ConsumerBuilder, RebuildProgress};
pub use engine::{Engine, EngineBuilder, EngineStats};
pub use error::{Error, Result};
pub use keeper::{Acquire, LeaseKeeper, LostLease};
pub use lease::Lease;
pub use open::{DEFAULT_URL, open_store};
pub use reader::LogReader;
pub use space::{Grant, Space};

pub use seqlease_core::{
    CommitOutcome, CommitStatus, Entry, EntryContent, Fence, Gap, GapReason, InvalidInput,
    LateOutcome, LeaseError, ManualClock, Operation, OperationBody, RecoveryInfo, RecoveryType,
    ReleaseOutcome, SlotState, SpaceConfig, SpaceInfo, SpaceName, StoreError, SystemClock,
    TimeControl, Timestamp, Token,
};
pub use seqlease_core::{ConsumerError, ConsumerState, RetentionEvent, RetentionEventKind};

/// The core crate: the `Store` trait, commands and types, for store authors and tests.
pub use seqlease_core as core;
/// The in-memory store.
pub use seqlease_memory::MemoryStore;
/// The sqlx version of the PostgreSQL store (exactly-once applies get a `sqlx::PgConnection`).
#[cfg(feature = "postgres")]
pub use seqlease_postgres::sqlx;
/// The PostgreSQL store.
#[cfg(feature = "postgres")]
pub use seqlease_postgres::{PgClock, PgOptions, PgStore};
/// The rusqlite version of the SQLite store (exactly-once applies get a
/// `rusqlite::Transaction`).
#[cfg(feature = "sqlite")]
pub use seqlease_sqlite::rusqlite;
/// The SQLite store.
#[cfg(feature = "sqlite")]
pub use seqlease_sqlite::{SqliteOptions, SqliteStore};

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

#[doc = include_str!("../docs/consumers.md")]
#[cfg(doctest)]
pub struct ConsumersDoctests;
