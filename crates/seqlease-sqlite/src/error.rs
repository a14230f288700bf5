//! Turning SQLite and sqlx failures into [`StoreError`]s an operator can act on.
//!
//! SQLite reports failures as numeric result codes; the primary code is the low byte of the
//! extended code that sqlx (opening, migrations, reads) or rusqlite (the write connection)
//! gives us. Both drivers wrap the same SQLite library, so the codes are the same. The ones that mean something to an operator get their own
//! [`StoreError`] variant:
//!
//! | primary code | meaning | error |
//! |---|---|---|
//! | `SQLITE_NOTADB` (26), `SQLITE_CORRUPT` (11) | not a database, or damaged | [`StoreError::Corrupt`] |
//! | `SQLITE_CANTOPEN` (14) | the file cannot be opened or created | [`StoreError::Unavailable`] or [`StoreError::Permission`] |
//! | `SQLITE_PERM` (3), `SQLITE_READONLY` (8), `SQLITE_AUTH` (23) | not allowed | [`StoreError::Permission`] |
//! | `SQLITE_BUSY` (5), `SQLITE_LOCKED` (6) | another writer held the lock past the busy timeout | [`StoreError::Unavailable`] (transient) |
//! | `SQLITE_FULL` (13), `SQLITE_IOERR` (10) | the disk is full, or a read or write of the file failed | [`StoreError::Unavailable`] (transient once space is freed or the disk recovers) |
//!
//! A closed pool, a crashed connection worker and I/O errors are [`StoreError::Unavailable`];
//! everything else is [`StoreError::Backend`] with the driver's message.

use std::path::Path;

use seqlease_core::StoreError;

/// The backend name used in every error, log line and metric.
pub(crate) const BACKEND: &str = "sqlite";

const SQLITE_PERM: i32 = 3;
const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;
const SQLITE_READONLY: i32 = 8;
const SQLITE_IOERR: i32 = 10;
const SQLITE_CORRUPT: i32 = 11;
const SQLITE_FULL: i32 = 13;
const SQLITE_CANTOPEN: i32 = 14;
const SQLITE_AUTH: i32 = 23;
const SQLITE_NOTADB: i32 = 26;

/// The primary SQLite result code of a database error, if `e` is one.
fn primary_code(e: &sqlx::Error) -> Option<i32> {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .map(|extended| extended & 0xff),
        _ => None,
    }
}

/// Map a failure during normal operation (the file is already open).
pub(crate) fn map_sqlx(e: sqlx::Error) -> StoreError {
    classify(e, None)
}

/// Map a failure while opening the database at `path`; the error names the path.
pub(crate) fn map_open(e: sqlx::Error, path: &Path) -> StoreError {
    classify(e, Some(path))
}

/// A stored value that does not decode into the core types: the file holds data this binary
/// did not write.
pub(crate) fn corrupt_value(what: &str, value: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        backend: BACKEND,
        detail: format!("stored {what} {value} is out of range"),
    }
}

fn classify(e: sqlx::Error, path: Option<&Path>) -> StoreError {
    if let Some(code) = primary_code(&e) {
        return by_code(code, &e, path);
    }
    let at = at(path);
    match e {
        sqlx::Error::PoolClosed => StoreError::Unavailable {
            backend: BACKEND,
            detail: "the store was closed".to_string(),
        },
        sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed | sqlx::Error::Io(_) => {
            StoreError::Unavailable {
                backend: BACKEND,
                detail: format!("{e}{at}"),
            }
        }
        other => StoreError::Backend {
            backend: BACKEND,
            detail: format!("{other}{at}"),
        },
    }
}

/// Map a failure of the write connection (`rusqlite`) on the database at `path`. Corrupt
/// files and lock time-outs name the path; other failures carry SQLite's message.
pub(crate) fn map_rusqlite(e: rusqlite::Error, path: &Path) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(failure, _) => {
            by_code(failure.extended_code & 0xff, &e, Some(path))
        }
        _ => StoreError::Backend {
            backend: BACKEND,
            detail: e.to_string(),
        },
    }
}

/// A failure on the write connection: SQLite's own, mapped with the store's path by
/// [`crate::writer::Writer::run`], or one already decided (a stored value out of range, a
/// row count that does not add up). `?` converts both.
#[derive(Debug)]
pub(crate) enum WriteError {
    /// SQLite refused a statement.
    Sqlite(rusqlite::Error),
    /// The write path's own verdict.
    Store(StoreError),
}

impl From<rusqlite::Error> for WriteError {
    fn from(e: rusqlite::Error) -> Self {
        WriteError::Sqlite(e)
    }
}

impl From<rusqlite::types::FromSqlError> for WriteError {
    /// A stored value of the wrong type: the file holds data this binary did not write.
    fn from(e: rusqlite::types::FromSqlError) -> Self {
        WriteError::Store(StoreError::Corrupt {
            backend: BACKEND,
            detail: format!("a stored value does not decode: {e}"),
        })
    }
}

impl From<StoreError> for WriteError {
    fn from(e: StoreError) -> Self {
        WriteError::Store(e)
    }
}

impl WriteError {
    /// The [`StoreError`] to report for the database at `path`.
    pub(crate) fn into_store(self, path: &Path) -> StoreError {
        match self {
            WriteError::Sqlite(e) => map_rusqlite(e, path),
            WriteError::Store(e) => e,
        }
    }
}

/// ` (PATH)` when the path is known.
fn at(path: Option<&Path>) -> String {
    match path {
        Some(p) => format!(" ({})", p.display()),
        None => String::new(),
    }
}

/// The [`StoreError`] for SQLite primary result code `code`; see the module docs.
fn by_code(code: i32, e: &dyn std::fmt::Display, path: Option<&Path>) -> StoreError {
    let at = at(path);
    match code {
        SQLITE_NOTADB | SQLITE_CORRUPT => StoreError::Corrupt {
            backend: BACKEND,
            detail: format!("{e}{at}"),
        },
        SQLITE_CANTOPEN => match path {
            Some(p) => cannot_open(p, e),
            None => StoreError::Unavailable {
                backend: BACKEND,
                detail: format!("{e}: the database file cannot be opened"),
            },
        },
        SQLITE_PERM | SQLITE_READONLY | SQLITE_AUTH => StoreError::Permission {
            backend: BACKEND,
            detail: format!("{e}{at}"),
        },
        SQLITE_BUSY | SQLITE_LOCKED => StoreError::Unavailable {
            backend: BACKEND,
            detail: format!(
                "{e}{at}: another connection held the write lock longer than the busy timeout"
            ),
        },
        SQLITE_FULL => StoreError::Unavailable {
            backend: BACKEND,
            detail: format!(
                "{e}{at}: the disk is full; free space on it. The failed transaction was rolled back; everything acknowledged before it is kept"
            ),
        },
        SQLITE_IOERR => StoreError::Unavailable {
            backend: BACKEND,
            detail: format!(
                "{e}{at}: the file system refused a read or write; check the disk, its free space and the process's file-size limit (ulimit -f). A write that failed was rolled back (a read changes nothing); everything acknowledged before it is kept"
            ),
        },
        _ => StoreError::Backend {
            backend: BACKEND,
            detail: format!("{e}{at}"),
        },
    }
}

/// `SQLITE_CANTOPEN` says only "unable to open database file"; look at the file system to
/// say why.
fn cannot_open(path: &Path, e: &dyn std::fmt::Display) -> StoreError {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return StoreError::Unavailable {
            backend: BACKEND,
            detail: format!(
                "cannot create database file {}: directory {} does not exist; create it or choose another path",
                path.display(),
                parent.display()
            ),
        };
    }
    if path.is_dir() {
        return StoreError::Unavailable {
            backend: BACKEND,
            detail: format!(
                "cannot open database file {}: it is a directory; point the store at a file",
                path.display()
            ),
        };
    }
    let denied = if path.exists() {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .err()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
    } else {
        // Probe whether the file could be created; remove the probe if it could.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
        {
            Ok(_) => {
                let _ = std::fs::remove_file(path);
                false
            }
            Err(io) => io.kind() == std::io::ErrorKind::PermissionDenied,
        }
    };
    if denied {
        return StoreError::Permission {
            backend: BACKEND,
            detail: format!(
                "cannot open database file {} for reading and writing ({e}); give the process write access to the file and its directory",
                path.display()
            ),
        };
    }
    StoreError::Unavailable {
        backend: BACKEND,
        detail: format!("cannot open database file {} ({e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full disk (`ENOSPC` gives `SQLITE_FULL`) and a refused write (`EFBIG` and other
    /// I/O errors give `SQLITE_IOERR`, with an extended code in the high bits) are
    /// transient and say what to do; tests/sqlite_disk_full.rs meets the second for real.
    #[test]
    fn a_full_disk_and_a_failed_write_are_transient_and_name_the_file() {
        let path = Path::new("/data/app.db");
        for code in [SQLITE_FULL, SQLITE_IOERR, (3 << 8) | SQLITE_IOERR] {
            let e = map_rusqlite(
                rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None),
                path,
            );
            assert!(e.is_transient(), "{code}: {e:?}");
            let text = e.to_string();
            assert!(
                text.contains("/data/app.db") && text.contains("rolled back"),
                "{code}: {text}"
            );
        }
    }
}
