//! The error type of the engine API.
//!
//! Every failure is one of: bad input (nothing was sent), a refusal by the store for this
//! lease (nothing was written), a store failure (the batch was rolled back), or a wait that
//! timed out. All messages name the space and seq involved and say what to do.

use std::time::Duration;

use seqlease_core::SpaceName;
pub use seqlease_core::{ConsumerError, InvalidInput, LeaseError, StoreError};
use thiserror::Error;

/// Errors returned by the engine.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    /// The request was malformed; nothing was sent to the store.
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// The store refused this command; nothing was written for it.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// The store failed; the batch was rolled back.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A consumer or retention request was refused (checkpoint conflict, prune held back by
    /// a consumer, an apply that failed, …); nothing was written.
    #[error(transparent)]
    Consumer(ConsumerError),
    /// A wait ran out of time.
    #[error(
        "timed out after {waited:?} waiting for {what} in space {space}; the store may be overloaded or a slot stuck: check `seqlease status`"
    )]
    Timeout {
        /// The space.
        space: SpaceName,
        /// What was awaited.
        what: &'static str,
        /// How long.
        waited: Duration,
    },
    /// Waiting to acquire a resource lease ran out of time.
    #[error(
        "timed out after {waited:?} waiting to acquire {resource}: another agent still holds it; check `engine.resource_lease` for the holder"
    )]
    AcquireTimeout {
        /// The resource.
        resource: String,
        /// How long.
        waited: Duration,
    },
    /// The engine's group-commit task is gone (its tokio runtime is shutting down).
    #[error(
        "the engine's group-commit task has stopped (is the tokio runtime shutting down?); build a new engine on a running runtime"
    )]
    Closed,
}

impl Error {
    /// The store's refusal, if that is what this is.
    pub fn lease_error(&self) -> Option<&LeaseError> {
        match self {
            Error::Lease(e) => Some(e),
            _ => None,
        }
    }

    /// Whether the same call may succeed if retried later.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Store(e) => e.is_transient(),
            Error::Timeout { .. } | Error::AcquireTimeout { .. } => true,
            Error::Lease(LeaseError::AtCapacity { .. }) => true,
            _ => false,
        }
    }
}

impl From<ConsumerError> for Error {
    /// Store failures and bad input keep their own variants, whichever call reported them.
    fn from(e: ConsumerError) -> Self {
        match e {
            ConsumerError::Store(e) => Error::Store(e),
            ConsumerError::Invalid(e) => Error::Invalid(e),
            other => Error::Consumer(other),
        }
    }
}

/// Result alias for the engine API.
pub type Result<T, E = Error> = std::result::Result<T, E>;
