//! Core of seqlease: the vocabulary (spaces, slots, leases, operations, gaps), the errors,
//! the store clock, and the [`Store`] trait that the in-memory, SQLite and PostgreSQL
//! backends implement.
//!
//! Applications embed the `seqlease` crate, which re-exports what they need from here; store
//! authors implement [`Store`] and prove it with the `seqlease-conformance` suite.

#![warn(missing_docs)]

pub mod columns;
pub mod command;
pub mod consumer;
pub mod error;
pub mod history;
pub mod late;
pub mod name;
pub mod recovery;
pub mod resource;
pub mod snapshot;
pub mod store;
pub mod time;
pub mod types;

pub use command::{
    BatchOutcome, Command, CommitOutcome, CommitStatus, LeaseKey, OneOutcome, ReleaseOutcome,
    Reply, SpaceProgress,
};
pub use consumer::{
    ConsumerError, ConsumerState, RetentionEvent, RetentionEventKind, validate_consumer,
};
pub use error::{InvalidInput, LeaseError, StoreError};
pub use history::{HistoryQuery, SlotEvent, SlotEventKind};
pub use late::{LateCommit, LateOutcome};
pub use name::{SpaceName, validate_id, validate_name};
pub use recovery::{
    ClaimKey, ClaimRequest, ExpiredSlot, ParkedAction, ParkedCommand, ParkedQuery, ParkedState,
    ParkedWork, Placement, Resolution, Resolve, ResolveOutcome,
};
pub use resource::{
    ResourceCommand, ResourceEvent, ResourceEventKind, ResourceLease, ResourceQuery, ResourceReply,
};
pub use snapshot::SnapshotMap;
pub use store::{
    BatchingHint, GrantNow, InlineStore, ProgressListener, SlotView, Store, commit_then_grant_now,
};
pub use time::{Clock, ManualClock, SystemClock, TimeControl, Timestamp};
pub use types::{
    Entry, EntryContent, Fence, Gap, GapReason, GrantRequest, LeaseRecord, Operation,
    OperationBody, RecoveryInfo, RecoveryType, SlotState, SpaceConfig, SpaceInfo, Token,
};
