//! # seqlease-chaos
//!
//! A fault-injection harness for seqlease. The `seqlease-chaos` binary is four programs:
//!
//! - `run` ([`run`]) is the orchestrator. For each store under test (SQLite: one file shared
//!   by every process; PostgreSQL: a throwaway cluster reached through a TCP proxy the
//!   orchestrator controls) it starts several **worker** processes with several worker
//!   tasks each and two **cleaner** processes, then injects faults at random: `SIGKILL` of a
//!   worker process, `SIGSTOP` past the TTL and `SIGCONT` (the zombie must be fenced off),
//!   `SIGKILL` of a cleaner (mid-recovery when there is a backlog), a restart of the
//!   PostgreSQL server, and dropped connections (the proxy cuts every open connection).
//!   It samples the watermark throughout, lets every slot resolve at the end, runs the
//!   checker and prints a summary table.
//! - `worker` ([`worker`]) grants, records, commits, releases, abandons and re-commits
//!   operations (some under a fenced resource lease), and journals every answer of the store
//!   ([`journal`]) the moment it gets it.
//! - `cleaner` ([`cleaner`]) runs the cleanup service.
//! - `check` ([`check`]) verifies the guarantees I1–I10 over the final log, the journals, the
//!   fault log and the audit history, and measures how long each killed owner's slots took
//!   to resolve. It exits non-zero on any violation.
//!
//! See docs/fault-injection.md for what each check means and the figures of a long run.

#![warn(missing_docs)]

pub mod check;
pub mod cleaner;
pub mod journal;
pub mod proxy;
pub mod run;
pub mod store;
pub mod summary;
pub mod worker;

use std::path::Path;

/// The space every process of a run works in.
pub const SPACE: &str = "chaos";

/// Errors of the harness itself (not findings: those are [`check::Violation`]s).
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// A file of the run directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A JSON record could not be encoded or decoded.
    #[error("JSON: {0}")]
    Json(String),
    /// The engine or store failed where the harness cannot carry on.
    #[error(transparent)]
    Engine(#[from] seqlease::Error),
    /// The store failed where the harness cannot carry on.
    #[error(transparent)]
    Store(#[from] seqlease::StoreError),
    /// The harness could not set the run up (a process, the cluster, the proxy).
    #[error("{0}")]
    Setup(String),
}

impl ChaosError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> ChaosError {
        ChaosError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    pub(crate) fn json(e: serde_json::Error) -> ChaosError {
        ChaosError::Json(e.to_string())
    }
}
