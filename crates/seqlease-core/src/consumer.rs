//! Consumers, checkpoints and retention: how the ordered log is *used* once it is written.
//!
//! A **consumer** is a named reader of one space that remembers how far it got. Its
//! **checkpoint** is the last seq it has applied (0: nothing yet); it reads from
//! `checkpoint + 1`, applies entries in order (operations and gaps alike), and then moves its
//! checkpoint forward with a compare-and-swap ([`Store::save_checkpoint`]): the store
//! accepts the new checkpoint only if the stored one is still the one the consumer started
//! from, so two processes running the same consumer cannot both advance it, and a
//! checkpoint never moves backwards except by an explicit, audited **reset**. Several
//! consumers read one space, each at its own pace; a consumer's **lag** is the space's
//! watermark minus its checkpoint.
//!
//! **Retention.** Entries are kept until an operator prunes them
//! ([`Store::prune_entries`]). A prune removes entries `1..=through` and is refused when
//! `through` is above the watermark or above the checkpoint of any consumer that
//! **retains** (the default for consumers: it must see every entry). Consumers that do not
//! retain (dashboards, best-effort feeds) do not hold retention back; if they fall behind a
//! prune, their reads fail with [`StoreError::Pruned`] and they must be reset past it. Every
//! prune, reset and removal is kept in the space's retention history
//! ([`Store::retention_history`]) with the actor and the store time.
//!
//! [`Store::save_checkpoint`]: crate::Store::save_checkpoint
//! [`Store::prune_entries`]: crate::Store::prune_entries
//! [`Store::retention_history`]: crate::Store::retention_history

use thiserror::Error;

use crate::error::{InvalidInput, StoreError};
use crate::name::{SpaceName, validate_name};
use crate::time::Timestamp;

/// Validate a consumer name (same rules as space names).
pub fn validate_consumer(name: &str) -> Result<(), InvalidInput> {
    validate_name("consumer", name)
}

/// A consumer as the store keeps it, with the space's watermark read in the same snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerState {
    /// The space it reads.
    pub space: SpaceName,
    /// Its name, unique within the space.
    pub name: String,
    /// The last seq it applied (0: none). It reads from `checkpoint + 1`.
    pub checkpoint: u64,
    /// Whether it holds back retention (prunes never remove entries it has not applied).
    pub retain: bool,
    /// When the checkpoint last changed (store clock).
    pub updated_at: Timestamp,
    /// The space's watermark when this was read.
    pub watermark: u64,
}

impl ConsumerState {
    /// Entries resolved but not yet applied: `watermark - checkpoint`.
    pub fn lag(&self) -> u64 {
        self.watermark.saturating_sub(self.checkpoint)
    }
}

/// What an operator did to a space's log or its consumers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RetentionEventKind {
    /// Entries `from..=to` were pruned (`entries` of them were still stored).
    Pruned,
    /// A consumer's checkpoint was reset from `from` to `to`.
    ConsumerReset,
    /// A consumer was removed; its checkpoint was `from`.
    ConsumerRemoved,
}

impl RetentionEventKind {
    /// The stable lowercase name (stored by the SQL stores).
    pub fn as_str(self) -> &'static str {
        match self {
            RetentionEventKind::Pruned => "pruned",
            RetentionEventKind::ConsumerReset => "consumer_reset",
            RetentionEventKind::ConsumerRemoved => "consumer_removed",
        }
    }

    /// Parse a stored name.
    pub fn parse(s: &str) -> Option<RetentionEventKind> {
        Some(match s {
            "pruned" => RetentionEventKind::Pruned,
            "consumer_reset" => RetentionEventKind::ConsumerReset,
            "consumer_removed" => RetentionEventKind::ConsumerRemoved,
            _ => return None,
        })
    }
}

/// One audited retention action (see [`crate::Store::retention_history`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionEvent {
    /// The space.
    pub space: SpaceName,
    /// What happened.
    pub kind: RetentionEventKind,
    /// The consumer, for resets and removals.
    pub consumer: Option<String>,
    /// Pruned: the first seq of the range (1). Reset: the old checkpoint. Removed: its
    /// checkpoint.
    pub from: u64,
    /// Pruned: the last pruned seq. Reset: the new checkpoint. Removed: equal to `from`.
    pub to: u64,
    /// Pruned: how many entries were deleted by this prune. Otherwise 0.
    pub entries: u64,
    /// Who asked for it.
    pub actor: String,
    /// When (store clock).
    pub at: Timestamp,
}

/// A consumer or retention request the store refused. Nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConsumerError {
    /// The request was malformed.
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// The store failed; nothing was written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The space does not exist.
    #[error("space {space} does not exist in this store; open it with Engine::space() first")]
    UnknownSpace {
        /// The space.
        space: SpaceName,
    },
    /// No consumer of this name in the space.
    #[error(
        "consumer {consumer} of space {space} does not exist; open it with Space::consumer() first (list them with `seqlease consumers`)"
    )]
    UnknownConsumer {
        /// The space.
        space: SpaceName,
        /// The consumer.
        consumer: String,
    },
    /// Another run of the same consumer moved the checkpoint first (compare-and-swap lost).
    #[error(
        "checkpoint of consumer {consumer} on {space} is {current}, not {expected} as this run believed: another process runs the same consumer, or it was reset; reload the checkpoint and continue from there"
    )]
    Conflict {
        /// The space.
        space: SpaceName,
        /// The consumer.
        consumer: String,
        /// What the caller believed.
        expected: u64,
        /// What the store holds.
        current: u64,
    },
    /// A checkpoint may only move forward (resets are explicit).
    #[error(
        "checkpoint of consumer {consumer} on {space} cannot move backwards from {current} to {attempted}; use reset to replay"
    )]
    Backwards {
        /// The space.
        space: SpaceName,
        /// The consumer.
        consumer: String,
        /// The stored checkpoint.
        current: u64,
        /// The requested one.
        attempted: u64,
    },
    /// The requested seq is above the watermark: those entries are not resolved yet.
    #[error(
        "{what} {attempted} of space {space} is above the watermark {watermark}; only resolved entries (up to the watermark) can be {done}"
    )]
    AboveWatermark {
        /// The space.
        space: SpaceName,
        /// "checkpoint", "reset target", "prune bound".
        what: &'static str,
        /// What was asked.
        attempted: u64,
        /// The space's watermark.
        watermark: u64,
        /// "applied", "pruned".
        done: &'static str,
    },
    /// A prune would remove entries a retaining consumer has not applied.
    #[error(
        "cannot prune entries of space {space} up to {through}: consumer {consumer} retains them and has applied only up to {checkpoint}; prune below {checkpoint} + 1, let the consumer catch up, or remove it (or open it with retain(false))"
    )]
    Retained {
        /// The space.
        space: SpaceName,
        /// The last seq the prune would remove.
        through: u64,
        /// The lowest retaining consumer.
        consumer: String,
        /// Its checkpoint.
        checkpoint: u64,
    },
    /// A reset below what was already pruned.
    #[error(
        "cannot reset consumer {consumer} of {space} to {attempted}: entries 1..={pruned_through} were pruned; reset it to {pruned_through} or later (it then reads from {next})",
        next = pruned_through + 1
    )]
    ResetIntoPruned {
        /// The space.
        space: SpaceName,
        /// The consumer.
        consumer: String,
        /// The requested checkpoint.
        attempted: u64,
        /// The last pruned seq.
        pruned_through: u64,
    },
    /// The application's apply function failed; the batch was not checkpointed.
    #[error(
        "consumer {consumer} of {space}: applying entries {from}..={to} failed: {detail}; nothing was checkpointed, the entries will be delivered again"
    )]
    Apply {
        /// The space.
        space: SpaceName,
        /// The consumer.
        consumer: String,
        /// First entry of the batch.
        from: u64,
        /// Last entry of the batch.
        to: u64,
        /// What the apply function said.
        detail: String,
    },
}

/// Check a checkpoint compare-and-swap: the stored checkpoint is `current`, the caller
/// believed `expected` and asks for `seq`. Shared by every store so they answer alike.
pub fn check_save(state: &ConsumerState, expected: u64, seq: u64) -> Result<(), ConsumerError> {
    if state.checkpoint != expected {
        return Err(ConsumerError::Conflict {
            space: state.space.clone(),
            consumer: state.name.clone(),
            expected,
            current: state.checkpoint,
        });
    }
    if seq < state.checkpoint {
        return Err(ConsumerError::Backwards {
            space: state.space.clone(),
            consumer: state.name.clone(),
            current: state.checkpoint,
            attempted: seq,
        });
    }
    if seq > state.watermark {
        return Err(ConsumerError::AboveWatermark {
            space: state.space.clone(),
            what: "checkpoint",
            attempted: seq,
            watermark: state.watermark,
            done: "applied",
        });
    }
    Ok(())
}

/// Check a reset of `state` to checkpoint `to` when entries `1..=pruned_through` are gone.
pub fn check_reset(
    state: &ConsumerState,
    to: u64,
    pruned_through: u64,
) -> Result<(), ConsumerError> {
    if to > state.watermark {
        return Err(ConsumerError::AboveWatermark {
            space: state.space.clone(),
            what: "reset target",
            attempted: to,
            watermark: state.watermark,
            done: "applied",
        });
    }
    if to < pruned_through {
        return Err(ConsumerError::ResetIntoPruned {
            space: state.space.clone(),
            consumer: state.name.clone(),
            attempted: to,
            pruned_through,
        });
    }
    Ok(())
}

/// Check a prune of entries below `below` (so `1..=below-1`) against the watermark and the
/// retaining consumers; returns the last seq to prune.
pub fn check_prune(
    space: &SpaceName,
    below: u64,
    watermark: u64,
    consumers: &[ConsumerState],
) -> Result<u64, ConsumerError> {
    let through = below.saturating_sub(1);
    if through > watermark {
        return Err(ConsumerError::AboveWatermark {
            space: space.clone(),
            what: "prune bound",
            attempted: through,
            watermark,
            done: "pruned",
        });
    }
    if let Some(lowest) = consumers
        .iter()
        .filter(|c| c.retain)
        .min_by_key(|c| (c.checkpoint, c.name.clone()))
        && lowest.checkpoint < through
    {
        return Err(ConsumerError::Retained {
            space: space.clone(),
            through,
            consumer: lowest.name.clone(),
            checkpoint: lowest.checkpoint,
        });
    }
    Ok(through)
}

/// The error for a read that starts at or below the last prune `latest`.
pub fn pruned_error(latest: &RetentionEvent) -> StoreError {
    StoreError::Pruned {
        space: latest.space.clone(),
        through: latest.to,
        actor: latest.actor.clone(),
        at: latest.at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(checkpoint: u64, retain: bool, name: &str) -> ConsumerState {
        ConsumerState {
            space: SpaceName::new("s").unwrap(),
            name: name.into(),
            checkpoint,
            retain,
            updated_at: Timestamp(0),
            watermark: 10,
        }
    }

    #[test]
    fn save_is_compare_and_swap_forward_only_up_to_the_watermark() {
        let s = state(4, true, "a");
        assert!(check_save(&s, 4, 4).is_ok());
        assert!(check_save(&s, 4, 10).is_ok());
        assert!(matches!(
            check_save(&s, 3, 5),
            Err(ConsumerError::Conflict { current: 4, .. })
        ));
        assert!(matches!(
            check_save(&s, 4, 3),
            Err(ConsumerError::Backwards { .. })
        ));
        assert!(matches!(
            check_save(&s, 4, 11),
            Err(ConsumerError::AboveWatermark { .. })
        ));
        assert_eq!(s.lag(), 6);
    }

    #[test]
    fn prune_stops_at_the_lowest_retaining_checkpoint() {
        let space = SpaceName::new("s").unwrap();
        let cs = [
            state(7, true, "a"),
            state(2, false, "b"),
            state(5, true, "c"),
        ];
        assert_eq!(check_prune(&space, 6, 10, &cs).unwrap(), 5);
        let err = check_prune(&space, 7, 10, &cs).unwrap_err();
        assert!(
            matches!(&err, ConsumerError::Retained { consumer, checkpoint: 5, through: 6, .. } if consumer == "c"),
            "{err}"
        );
        assert!(matches!(
            check_prune(&space, 12, 10, &[]),
            Err(ConsumerError::AboveWatermark { .. })
        ));
        assert_eq!(check_prune(&space, 11, 10, &[]).unwrap(), 10);
        assert_eq!(check_prune(&space, 0, 10, &cs).unwrap(), 0);
    }

    #[test]
    fn reset_refuses_pruned_and_unresolved_targets() {
        let s = state(8, true, "a");
        assert!(check_reset(&s, 0, 0).is_ok());
        assert!(check_reset(&s, 3, 3).is_ok());
        assert!(matches!(
            check_reset(&s, 2, 3),
            Err(ConsumerError::ResetIntoPruned { .. })
        ));
        assert!(matches!(
            check_reset(&s, 11, 0),
            Err(ConsumerError::AboveWatermark { .. })
        ));
    }
}
