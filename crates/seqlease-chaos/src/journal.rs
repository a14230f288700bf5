//! Journals: what each worker process was told by the store, one JSON line per answer.
//!
//! A worker appends a line the moment the store acknowledges something (a commit, a
//! duplicate, a recorded result) or refuses it (a stale epoch, an expired lease), and the
//! line is handed to the kernel with one `write` before the worker goes on. A `SIGKILL`
//! therefore cannot lose an acknowledged line: the kernel already has it (only a power loss
//! could, which this harness does not inject). A line cut short by a kill is at the very
//! end of the file and is skipped by [`read`], as it acknowledged nothing.
//!
//! The orchestrator writes the same kind of files for the faults it injected
//! ([`FaultRecord`]) and the watermarks it sampled ([`WatermarkSample`]).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ChaosError;

/// Wall-clock time in microseconds since the Unix epoch (the unit of store timestamps).
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// What the store answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A commit was acknowledged: the operation lives at `seq`.
    Committed,
    /// A second commit of an operation id was answered with the seq where it already lives.
    Duplicate,
    /// A completed result was recorded under the lease at `seq` (recovery must not lose it).
    Recorded,
    /// The worker walked away from the lease at `seq` after recording a result.
    Abandoned,
    /// The store refused a grant or commit (`reason` says why).
    Rejected,
    /// A commit whose outcome is unknown: the connection failed and the retries ran out.
    Ambiguous,
    /// A resource lease was acquired at `epoch`.
    Acquired,
}

/// One journal line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// Wall-clock time of the answer (µs since the Unix epoch).
    pub at: i64,
    /// The engine owner of the process (`p<n>g<generation>`).
    pub owner: String,
    /// The worker task within the process.
    pub worker: u32,
    /// What happened.
    pub kind: Kind,
    /// The slot concerned (for `Duplicate`: where the operation already lives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The operation id (unique per attempt, except for deliberate duplicates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    /// The slot the duplicate attempt was granted (for `Duplicate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u64>,
    /// The fence resource, for fenced work and acquisitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// The fence epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// Why the store refused (`stale_epoch`, `expired`, `resolved`, …), or the error text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Which call was refused: `grant` or `commit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub during: Option<String>,
}

impl Line {
    /// A line of `kind` by `owner`/`worker`, stamped now; fill the rest with the fields.
    pub fn new(owner: &str, worker: u32, kind: Kind) -> Line {
        Line {
            at: now_micros(),
            owner: owner.to_string(),
            worker,
            kind,
            seq: None,
            op: None,
            slot: None,
            resource: None,
            epoch: None,
            reason: None,
            during: None,
        }
    }
}

/// A fault the orchestrator injected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRecord {
    /// When (µs since the Unix epoch).
    pub at: i64,
    /// `sigkill`, `sigstop`, `pg_restart`, `connections_cut`, `cleaner_kill`.
    pub kind: String,
    /// The engine owner (or cleaner id) hit, if the fault hit one process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Details: the pause length, the restart mode, how many connections were cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One sample of the watermark, read by the orchestrator from the store during the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatermarkSample {
    /// When (µs since the Unix epoch).
    pub at: i64,
    /// The watermark read.
    pub watermark: u64,
}

/// An append-only JSON-lines file shared by the tasks of one process.
#[derive(Debug)]
pub struct Journal {
    file: Mutex<File>,
}

impl Journal {
    /// Open (create or append to) the journal at `path`.
    pub fn open(path: &Path) -> Result<Journal, ChaosError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| ChaosError::io(path, e))?;
        Ok(Journal {
            file: Mutex::new(file),
        })
    }

    /// Append one record as a line, in one `write` (unbuffered: in the kernel on return).
    pub fn append<T: Serialize>(&self, record: &T) -> Result<(), ChaosError> {
        let mut line = serde_json::to_vec(record).map_err(ChaosError::json)?;
        line.push(b'\n');
        let mut file = self
            .file
            .lock()
            .map_err(|_| ChaosError::Setup("journal lock poisoned".into()))?;
        file.write_all(&line)
            .map_err(|e| ChaosError::Setup(format!("journal write failed: {e}")))
    }
}

/// Every complete line of the JSON-lines file at `path` (none if it does not exist). A
/// line that does not parse must be the last one, cut short by a kill; anywhere else it is
/// an error.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, ChaosError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ChaosError::io(path, e)),
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str(line) {
            Ok(v) => out.push(v),
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {}
            Err(e) => {
                return Err(ChaosError::Setup(format!(
                    "{}: line {} does not parse: {e}",
                    path.display(),
                    i + 1
                )));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_cut_short_at_the_end_is_skipped_and_elsewhere_refused() {
        let dir = std::env::temp_dir().join(format!("chaos-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("j.jsonl");
        let journal = Journal::open(&path).unwrap();
        let mut line = Line::new("p0g0", 1, Kind::Committed);
        line.seq = Some(7);
        journal.append(&line).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"at\":1,\"own")
            .unwrap();
        let lines: Vec<Line> = read(&path).unwrap();
        assert_eq!(lines, vec![line]);
        std::fs::write(&path, "{\"at\":1,\"own\n{}\n").unwrap();
        assert!(read::<Line>(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
