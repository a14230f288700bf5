//! The write path as data: commands a store applies in one transaction.
//!
//! The engine coalesces concurrent grants, renewals, records, commits and releases into one
//! `Vec<Command>` and hands it to [`Store::execute`](crate::Store::execute) (group commit).
//! Each command gets its own reply: a refusal of one command ([`LeaseError`]) does not
//! affect the others.

use std::time::Duration;

use crate::error::LeaseError;
use crate::name::SpaceName;
use crate::time::Timestamp;
use crate::types::{GrantRequest, LeaseRecord, OperationBody, Token};

/// Identifies a held lease: the slot and the secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseKey {
    /// The space.
    pub space: SpaceName,
    /// The slot.
    pub seq: u64,
    /// The lease's secret.
    pub token: Token,
}

/// One write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Allocate the next seq of the space and lease it.
    Grant(GrantRequest),
    /// Extend a live lease to `now + ttl`.
    Renew {
        /// The lease.
        key: LeaseKey,
        /// New TTL from the store's now.
        ttl: Duration,
    },
    /// Record partial work (a checkpoint) under a live lease, replacing any earlier one.
    RecordPartial {
        /// The lease.
        key: LeaseKey,
        /// Opaque checkpoint bytes.
        data: Vec<u8>,
    },
    /// Record the completed result under a live lease, replacing any earlier one.
    RecordResult {
        /// The lease.
        key: LeaseKey,
        /// The finished operation.
        body: OperationBody,
    },
    /// Commit an operation into a live lease's slot.
    Commit {
        /// The lease.
        key: LeaseKey,
        /// The operation.
        body: OperationBody,
    },
    /// Give the slot up.
    Release {
        /// The lease.
        key: LeaseKey,
        /// Why, kept on the gap.
        detail: Option<String>,
    },
}

impl Command {
    /// The space this command touches.
    pub fn space(&self) -> &SpaceName {
        match self {
            Command::Grant(g) => &g.space,
            Command::Renew { key, .. }
            | Command::RecordPartial { key, .. }
            | Command::RecordResult { key, .. }
            | Command::Commit { key, .. }
            | Command::Release { key, .. } => &key.space,
        }
    }
}

/// How a commit landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitStatus {
    /// This call resolved the slot with the operation.
    Committed,
    /// The same lease had already committed (a retry after an ambiguous failure).
    AlreadyCommitted,
    /// The operation id was already committed at another seq (I6): this slot became
    /// `GAP(superseded → seq)` and nothing was duplicated.
    Duplicate {
        /// The slot the call was made for (now a superseded gap).
        slot: u64,
    },
}

/// The answer to a commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitOutcome {
    /// Where the operation lives.
    pub seq: u64,
    /// How it got there.
    pub status: CommitStatus,
}

/// The answer to a release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// The slot became `GAP(released)`.
    Gap,
    /// Work was recorded under the lease, so instead of dropping it the lease was expired
    /// at once and the slot left to the recovery chain (I5).
    HandedToRecovery,
}

/// One command's successful result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A lease. Boxed: a reply travels through several hands before it becomes a
    /// lease handle, and each move of an unboxed record was a 160-byte copy.
    Granted(Box<LeaseRecord>),
    /// The new expiry.
    Renewed {
        /// New expiry (store clock).
        expires_at: Timestamp,
        /// Renewals so far.
        renewals: u32,
    },
    /// Partial work or a result was recorded.
    Recorded,
    /// The commit.
    Committed(CommitOutcome),
    /// The release.
    Released(ReleaseOutcome),
    /// A claimed slot resolved by recovery.
    Resolved(crate::recovery::ResolveOutcome),
    /// A recovery-queue action applied; the item's new state. Boxed: it is the largest
    /// reply by far and rare, and every reply is moved through several layers.
    Parked(Box<crate::recovery::ParkedWork>),
    /// A resource-lease operation succeeded.
    Resource(crate::resource::ResourceReply),
    /// Late work landed (or was found already committed).
    Late(crate::late::LateOutcome),
}

/// How a batch moved one space forward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpaceProgress {
    /// The space.
    pub space: SpaceName,
    /// Its watermark after the batch.
    pub watermark: u64,
    /// Slots that left LEASED in this batch (capacity freed).
    pub freed: u32,
}

/// The result of [`Store::execute`](crate::Store::execute).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// One reply per command, in order.
    pub replies: Vec<Result<Reply, LeaseError>>,
    /// Every space in which a slot resolved, with its new watermark.
    pub progress: Vec<SpaceProgress>,
}

/// The result of [`Store::execute_one`](crate::Store::execute_one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OneOutcome {
    /// The command's reply.
    pub reply: Result<Reply, LeaseError>,
    /// The space's progress, when the command resolved a slot.
    pub progress: Option<SpaceProgress>,
}

impl BatchOutcome {
    /// Count one slot of `space` that left LEASED in this batch. Stores call this as they
    /// resolve slots, then fill in each space's final watermark with [`Self::set_watermark`].
    pub fn note_freed(&mut self, space: &SpaceName) {
        self.progress_of(space).freed += 1;
    }

    /// Count one freed slot of `space` and record its watermark now (for stores that know
    /// the watermark as they go, like the in-memory one).
    pub fn note_freed_at(&mut self, space: &SpaceName, watermark: u64) {
        let p = self.progress_of(space);
        p.freed += 1;
        p.watermark = p.watermark.max(watermark);
    }

    /// Record that the watermark of `space` moved to `watermark` without freeing capacity
    /// (a slot appended already resolved, as recovery does).
    pub fn note_watermark(&mut self, space: &SpaceName, watermark: u64) {
        let p = self.progress_of(space);
        p.watermark = p.watermark.max(watermark);
    }

    fn progress_of(&mut self, space: &SpaceName) -> &mut SpaceProgress {
        let i = match self.progress.iter().position(|p| &p.space == space) {
            Some(i) => i,
            None => {
                let fresh = SpaceProgress {
                    space: space.clone(),
                    watermark: 0,
                    freed: 0,
                };
                self.progress.push(fresh);
                self.progress.len() - 1
            }
        };
        &mut self.progress[i]
    }

    /// Record the watermark of `space` after the batch.
    pub fn set_watermark(&mut self, space: &SpaceName, watermark: u64) {
        if let Some(p) = self.progress.iter_mut().find(|p| &p.space == space) {
            p.watermark = watermark;
        }
    }
}
