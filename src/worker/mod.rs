//! The projection worker runtime: events in, one committed operation per event out, in
//! input order, with renewal, retries, panics, cancellation and shutdown handled.
//!
//! Using the lease API by hand, a worker grants a slot, does its work, renews the lease if
//! the work is slow, records checkpoints, commits, and must not leave the slot stuck when it
//! fails, panics or is cancelled. A [`WorkerRuntime`] does all of that around a
//! [`Projection`] — the application's handler, which turns one input event into one
//! operation:
//!
//! 1. **Leasing in input order.** Events are taken from a stream in order; each gets a slot
//!    in that order (events that are ready together are leased in one store call). The
//!    operation id comes from the event ([`Projection::operation_id`]), so feeding the same
//!    event again never commits a second operation (I6: the second slot becomes a
//!    superseded gap pointing at the first).
//! 2. **Concurrency.** A run has `concurrency` lanes (tasks), each running one handler at
//!    a time. A free lane takes the next leased event; when none is left it leases the next
//!    events for itself and the lanes waiting behind it, so a slot is leased only when a
//!    lane is free to take its event.
//! 3. **Recording.** Through its [`WorkContext`] a handler records partial work
//!    ([`WorkContext::checkpoint`]) and its completed result; if the worker dies, the
//!    cleanup service finishes that work (DESIGN §4).
//! 4. **Heartbeat.** One task per worker renews *all* the worker's leases in one store
//!    batch per tick (a third of the TTL by default), so a slow handler keeps its slot. A
//!    renewal the store refuses marks the lease lost: its result is not committed (the
//!    store would refuse it) and is reported as [`OutcomeKind::Lost`].
//! 5. **Errors.** A handler error goes through the [`ErrorPolicy`]: retry with backoff on
//!    the same slot, then release the slot to a gap that carries the error; or release at
//!    once.
//! 6. **Panics and cancellation.** A panicking handler's slot is released to a gap that
//!    carries the panic message (not retried: a panic is a bug). Dropping a `run` future
//!    aborts its handler tasks, whose lease handles release their slots. In both cases
//!    recorded work goes to recovery instead of being dropped (I5).
//! 7. **Shutdown.** [`WorkerRuntime::shutdown`] stops taking events, lets in-flight handlers
//!    finish until a deadline (their operations are committed) and releases the slots of
//!    those still running then.
//!
//! ```
//! use futures::stream;
//! use seqlease::{Engine, OperationBody};
//! use seqlease::worker::{HandlerError, Projection, WorkContext, WorkerRuntime};
//!
//! struct Upper;
//!
//! impl Projection for Upper {
//!     type Event = (u32, String);
//!     fn projection_type(&self) -> &str { "upper" }
//!     fn operation_id(&self, event: &(u32, String)) -> String { format!("evt-{}", event.0) }
//!     async fn handle(&self, event: (u32, String), _ctx: &mut WorkContext<'_>)
//!         -> Result<OperationBody, HandlerError> {
//!         Ok(OperationBody::new("set", event.1.to_uppercase()))
//!     }
//! }
//!
//! # async fn demo() -> Result<(), seqlease::Error> {
//! let engine = Engine::open("memory").await?;
//! let space = engine.space("names").await?;
//! let worker = WorkerRuntime::builder(&space, Upper).concurrency(8).build()?;
//! let events = stream::iter([(1, "ada".to_string()), (2, "grace".to_string())]);
//! let report = worker.run(events).await;
//! assert_eq!(report.committed, 2);
//! assert_eq!(space.watermark(), 2);
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```

mod feed;
mod heartbeat;
mod projection;
mod runtime;

pub use feed::{EventSender, EventStream, SendError, channel};
pub use heartbeat::Beat;
pub use projection::{HandlerError, Projection, WorkContext};
pub use runtime::{Backoff, ErrorPolicy, WorkerRuntime, WorkerRuntimeBuilder};

use seqlease_core::{CommitOutcome, CommitStatus, LeaseError, OperationBody, ReleaseOutcome};

use crate::error::Error;

/// What became of one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The event's operation id.
    pub operation_id: String,
    /// Its slot (`None` when no slot was leased).
    pub seq: Option<u64>,
    /// Handler attempts made (0 when the handler never ran).
    pub attempts: u32,
    /// What happened.
    pub kind: OutcomeKind,
}

/// The kinds of [`Outcome`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutcomeKind {
    /// The operation was committed (or, for a re-fed event, found already committed at
    /// `outcome.seq`: [`CommitStatus::Duplicate`]).
    Committed(CommitOutcome),
    /// The handler failed and the error policy gave up; the slot was released with the
    /// error as its gap detail (`release`: how; `None` if the release itself failed and the
    /// slot is left to expire into recovery).
    Failed {
        /// The handler's last error.
        error: String,
        /// How the slot was released.
        release: Option<ReleaseOutcome>,
    },
    /// The handler panicked; the slot was released with the panic message.
    Panicked {
        /// The panic message.
        message: String,
        /// How the slot was released.
        release: Option<ReleaseOutcome>,
    },
    /// The lease was lost before the commit (a renewal or the commit was refused: it
    /// expired, or its fence moved). Nothing was committed by this worker; the cleanup
    /// service resolves the slot, recovering recorded partial work or results.
    Lost {
        /// The store's refusal.
        error: LeaseError,
        /// The operation the handler produced, if it finished (to hand on as late work).
        body: Option<OperationBody>,
    },
    /// Shutdown's deadline passed while the handler ran; its slot was released.
    Cancelled {
        /// How the slot was released.
        release: Option<ReleaseOutcome>,
    },
    /// The commit failed without a verdict from the store (it was unreachable). The slot
    /// resolves through recovery when its lease expires; re-feed the event to redo it.
    CommitFailed {
        /// The failure.
        error: Error,
        /// The operation that was not committed.
        body: OperationBody,
    },
    /// No slot was leased for the event (a bad operation id, the space stayed at capacity,
    /// the store was unreachable). Re-feed the event to process it.
    NotLeased {
        /// Why.
        error: Error,
    },
}

/// What one [`WorkerRuntime::run`] did, counted by outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Events taken from the input.
    pub received: u64,
    /// Slots leased for them.
    pub leased: u64,
    /// Operations committed by this run.
    pub committed: u64,
    /// Events whose operation was already committed (re-fed events, I6).
    pub duplicates: u64,
    /// Handler retries made.
    pub retries: u64,
    /// Slots released because the handler kept failing.
    pub failed: u64,
    /// Slots released because the handler panicked.
    pub panicked: u64,
    /// Leases lost before commit.
    pub lost: u64,
    /// Slots released at the shutdown deadline.
    pub cancelled: u64,
    /// Commits that failed without a verdict.
    pub commit_failed: u64,
    /// Events that got no slot.
    pub not_leased: u64,
    /// Whether the run ended by shutdown (rather than the end of its input).
    pub shutdown: bool,
}

impl RunReport {
    fn add(&mut self, other: &RunReport) {
        self.received += other.received;
        self.leased += other.leased;
        self.committed += other.committed;
        self.duplicates += other.duplicates;
        self.retries += other.retries;
        self.failed += other.failed;
        self.panicked += other.panicked;
        self.lost += other.lost;
        self.cancelled += other.cancelled;
        self.commit_failed += other.commit_failed;
        self.not_leased += other.not_leased;
    }

    fn count(&mut self, kind: &OutcomeKind) {
        match kind {
            OutcomeKind::Committed(CommitOutcome {
                status: CommitStatus::Duplicate { .. },
                ..
            }) => self.duplicates += 1,
            OutcomeKind::Committed(_) => self.committed += 1,
            OutcomeKind::Failed { .. } => self.failed += 1,
            OutcomeKind::Panicked { .. } => self.panicked += 1,
            OutcomeKind::Lost { .. } => self.lost += 1,
            OutcomeKind::Cancelled { .. } => self.cancelled += 1,
            OutcomeKind::CommitFailed { .. } => self.commit_failed += 1,
            OutcomeKind::NotLeased { .. } => self.not_leased += 1,
        }
    }
}

/// A worker's heartbeat counters (see [`WorkerRuntime::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Heartbeats that reached the store: one store batch each, renewing every lease the
    /// worker held then.
    pub heartbeats: u64,
    /// Lease renewals those heartbeats made.
    pub renewed: u64,
    /// Renewals the store refused (leases lost).
    pub lost: u64,
    /// Heartbeats that failed to reach the store (retried next tick).
    pub failed_heartbeats: u64,
    /// Leases held by running handlers now.
    pub in_flight: usize,
}

#[doc = include_str!("../../docs/worker.md")]
#[cfg(doctest)]
pub struct WorkerGuideDoctests;
