//! Opening a store file: connections, pragmas and migrations.
//!
//! A SQLite database allows one writer at a time, so the store keeps exactly **one write
//! connection** (see `writer`; a `rusqlite` connection on a thread of its own) and a
//! separate **read pool** (sqlx). In WAL mode readers never block the writer and the writer
//! never blocks readers; readers see the last committed state.
//!
//! Opening goes in three steps. First a sqlx connection creates the file if it is missing,
//! turns on WAL (a persistent property of the file) and brings the schema up to date with
//! the migrations in `migrations/sqlite/`, embedded at compile time; it is closed again.
//! Then the read pool connects, and last the write connection opens the migrated file.
//!
//! Every connection gets `busy_timeout` (a writer in another process holding the lock is
//! waited for, not reported at once) and `foreign_keys = ON`. The write connection runs with
//! `synchronous = NORMAL`, or `FULL` when asked: with NORMAL a commit survives a crash of
//! the process but the last commits may be lost on a power failure; FULL also survives
//! that, at the cost of an fsync per transaction. Read connections are `query_only`.
//!
//! A database touched by a newer seqlease (it has applied migrations this binary does not
//! know) is refused with [`StoreError::Schema`] rather than written to, and so is a SQLite
//! file that belongs to some other application.

use std::collections::BTreeSet;
use std::path::Path;

use seqlease_core::StoreError;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Row};

use crate::SqliteOptions;
use crate::error::{BACKEND, map_open};
use crate::writer::Writer;

/// The schema migrations, embedded in the binary.
static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/sqlite");

/// The connections of an open store.
pub(crate) struct Pools {
    /// One connection on its own thread; every write transaction goes through it.
    pub writer: Writer,
    /// `read_connections` query-only connections.
    pub readers: SqlitePool,
}

/// Turn a store URL into a file path: `sqlite://PATH` or `sqlite:PATH`.
pub(crate) fn path_from_url(url: &str) -> Result<&Path, StoreError> {
    let bad = |reason: &str| StoreError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| bad("a SQLite store URL starts with sqlite://"))?;
    if rest.is_empty() {
        return Err(bad("the URL names no database file"));
    }
    if rest == ":memory:" || rest.starts_with("file:") {
        return Err(bad(
            "in-memory SQLite databases are not supported; use a file or the memory store",
        ));
    }
    Ok(Path::new(rest))
}

/// Split a store URL into the file path and the settings its parameters ask for, applied
/// over `opts`: `?synchronous=normal|full` and `?page_size=N` (joined with `&`). Anything
/// else is refused: a misspelt parameter must not be ignored.
pub(crate) fn from_url(
    url: &str,
    mut opts: SqliteOptions,
) -> Result<(&Path, SqliteOptions), StoreError> {
    let bad = |reason: String| StoreError::BadUrl {
        url: url.to_string(),
        reason,
    };
    let (file, query) = url.split_once('?').unwrap_or((url, ""));
    let path = path_from_url(file).map_err(|e| match e {
        // Name the whole URL the operator gave, parameters included.
        StoreError::BadUrl { reason, .. } => bad(reason),
        other => other,
    })?;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match (key, value) {
            ("synchronous", "normal" | "NORMAL") => opts.synchronous_full = false,
            ("synchronous", "full" | "FULL") => opts.synchronous_full = true,
            ("synchronous", other) => {
                return Err(bad(format!("synchronous={other:?}: use normal or full")));
            }
            ("page_size", n) => {
                opts.page_size = n.parse().map_err(|_| {
                    bad(format!(
                        "page_size={n:?}: use a power of two from 512 to 65536"
                    ))
                })?;
            }
            (other, _) => {
                return Err(bad(format!(
                    "unknown parameter {other:?}: the parameters are synchronous and page_size"
                )));
            }
        }
    }
    Ok((path, opts))
}

/// SQLite would ignore a page size that is not a power of two in 512..=65536 without a
/// word; refuse it instead.
fn check_page_size(page_size: u32) -> Result<(), StoreError> {
    if page_size.is_power_of_two() && (512..=65536).contains(&page_size) {
        return Ok(());
    }
    Err(StoreError::BadOption {
        backend: BACKEND,
        option: "SqliteOptions::page_size",
        reason: format!(
            "{page_size} is not a power of two from 512 to 65536 (4096 is the default)"
        ),
    })
}

/// Open (creating if missing) the database at `path`, migrate it and connect.
pub(crate) async fn open(path: &Path, opts: &SqliteOptions) -> Result<Pools, StoreError> {
    check_page_size(opts.page_size)?;
    let base = SqliteConnectOptions::new()
        .filename(path)
        .busy_timeout(opts.busy_timeout)
        .foreign_keys(true)
        .synchronous(if opts.synchronous_full {
            SqliteSynchronous::Full
        } else {
            SqliteSynchronous::Normal
        })
        // No log line per statement.
        .disable_statement_logging();

    let mut setup = base
        .clone()
        .create_if_missing(true)
        // Only a file created now takes it: WAL mode fixes an existing file's page size.
        .page_size(opts.page_size)
        .journal_mode(SqliteJournalMode::Wal)
        .connect()
        .await
        .map_err(|e| map_open(e, path))?;
    let migrated = migrate(&mut setup, path).await;
    if let Err(e) = setup.close().await {
        tracing::warn!(error = %e, "closing the sqlite setup connection failed");
    }
    migrated?;

    let readers = SqlitePoolOptions::new()
        .max_connections(opts.read_connections.max(1))
        .min_connections(1)
        .test_before_acquire(false)
        .max_lifetime(None)
        .connect_with(base.pragma("query_only", "ON"))
        .await
        .map_err(|e| map_open(e, path))?;
    let writer = match Writer::open(path, opts).await {
        Ok(writer) => writer,
        Err(e) => {
            readers.close().await;
            return Err(e);
        }
    };
    tracing::debug!(path = %path.display(), "opened sqlite store");
    Ok(Pools { writer, readers })
}

/// Where the database's schema stands relative to this binary's migrations.
#[derive(Debug, PartialEq, Eq)]
enum SchemaState {
    /// A new file: every migration is to be applied.
    Empty,
    /// A seqlease file with these migrations still to be applied.
    Behind { pending: Vec<i64> },
    /// Every migration this binary knows is applied, and nothing else.
    Current,
}

/// Apply the embedded migrations, refusing databases that are newer or not ours.
async fn migrate(conn: &mut SqliteConnection, path: &Path) -> Result<(), StoreError> {
    let upgrade = match schema_state(conn, path).await? {
        SchemaState::Current => return Ok(()),
        SchemaState::Empty => None,
        SchemaState::Behind { pending } => Some(pending),
    };
    // An upgrade can rewrite a table (migration 5 copies every slot): say so before the
    // wait, and how long it took after.
    let started = std::time::Instant::now();
    if let Some(pending) = &upgrade {
        tracing::info!(
            target: "seqlease::migrate",
            path = %path.display(),
            ?pending,
            "upgrading the schema; a migration that rebuilds a table takes time in proportion to the log, with the file locked"
        );
    }
    let result = run_migrations(conn, path).await;
    if result.is_ok() && upgrade.is_some() {
        tracing::info!(
            target: "seqlease::migrate",
            path = %path.display(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "schema upgraded"
        );
    }
    result
}

async fn run_migrations(conn: &mut SqliteConnection, path: &Path) -> Result<(), StoreError> {
    // `run_direct` is `Migrator::run` on a connection we already hold. `run` itself is
    // generic over `Acquire<'a>`, which makes the future of `open` fail to be `Send` for all
    // lifetimes (rustc's higher-ranked auto-trait limitation; sqlx keeps `run_direct` public
    // for exactly this). Not skipping, no target: apply everything that is pending.
    match MIGRATOR.run_direct(None, conn, false).await {
        Ok(()) => Ok(()),
        // Another process opening the same new file may have applied the same migrations
        // between our check and our run; then the schema is current and all is well.
        Err(e) => match schema_state(conn, path).await {
            Ok(SchemaState::Current) => Ok(()),
            _ => Err(map_migrate(e, path)),
        },
    }
}

/// Inspect `_sqlx_migrations` (and the table list) without changing anything.
async fn schema_state(conn: &mut SqliteConnection, path: &Path) -> Result<SchemaState, StoreError> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| map_open(e, path))?;

    if !tables.iter().any(|t| t == "_sqlx_migrations") {
        if tables.is_empty() {
            return Ok(SchemaState::Empty);
        }
        return Err(StoreError::Schema {
            backend: BACKEND,
            detail: format!(
                "{} is a SQLite database of another application (it has tables but no seqlease migration history); point the store at a new or seqlease-owned file",
                path.display()
            ),
        });
    }

    let rows = sqlx::query("SELECT version, success FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| map_open(e, path))?;
    let known: BTreeSet<i64> = MIGRATOR.iter().map(|m| m.version).collect();
    let newest_known = known.last().copied().unwrap_or(0);
    let mut applied = BTreeSet::new();
    for row in rows {
        let version: i64 = row.try_get(0).map_err(|e| map_open(e, path))?;
        let success: bool = row.try_get(1).map_err(|e| map_open(e, path))?;
        if !known.contains(&version) {
            let detail = if version > newest_known {
                format!(
                    "{} was written by a newer seqlease (schema migration {version}; this binary knows up to {newest_known}); upgrade the seqlease binary to open it",
                    path.display()
                )
            } else {
                format!(
                    "{} has schema migration {version} applied, which this binary does not know; it was written by a different seqlease build: use that build or restore a backup",
                    path.display()
                )
            };
            return Err(StoreError::Schema {
                backend: BACKEND,
                detail,
            });
        }
        if !success {
            return Err(StoreError::Schema {
                backend: BACKEND,
                detail: format!(
                    "{}: schema migration {version} failed part-way earlier; restore the file from a backup",
                    path.display()
                ),
            });
        }
        applied.insert(version);
    }
    let pending: Vec<i64> = known.difference(&applied).copied().collect();
    Ok(if pending.is_empty() {
        SchemaState::Current
    } else {
        SchemaState::Behind { pending }
    })
}

fn map_migrate(e: MigrateError, path: &Path) -> StoreError {
    match e {
        MigrateError::Execute(inner) => map_open(inner, path),
        MigrateError::ExecuteMigration(inner, version) => match map_open(inner, path) {
            corrupt @ StoreError::Corrupt { .. } => corrupt,
            other => StoreError::Schema {
                backend: BACKEND,
                detail: format!(
                    "{}: schema migration {version} failed: {other}",
                    path.display()
                ),
            },
        },
        MigrateError::VersionMissing(version) => StoreError::Schema {
            backend: BACKEND,
            detail: format!(
                "{} was written by a newer seqlease (schema migration {version} is unknown to this binary); upgrade the seqlease binary to open it",
                path.display()
            ),
        },
        MigrateError::VersionMismatch(version) => StoreError::Schema {
            backend: BACKEND,
            detail: format!(
                "{}: schema migration {version} was applied from a different definition than this binary's; it was written by a different seqlease build",
                path.display()
            ),
        },
        other => StoreError::Schema {
            backend: BACKEND,
            detail: format!("{}: migrating the schema failed: {other}", path.display()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_of(url: &str) -> Result<&Path, StoreError> {
        crate::SqliteStore::file_of_url(url)
    }

    #[test]
    fn urls_name_a_file() {
        assert_eq!(
            path_of("sqlite://data/seq.db").unwrap(),
            Path::new("data/seq.db")
        );
        assert_eq!(
            path_of("sqlite:///abs/seq.db").unwrap(),
            Path::new("/abs/seq.db")
        );
        assert_eq!(path_of("sqlite:seq.db").unwrap(), Path::new("seq.db"));
        for bad in ["postgres://x/y", "sqlite://", "sqlite::memory:", "a.db"] {
            assert!(
                matches!(path_of(bad), Err(StoreError::BadUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn url_parameters_set_synchronous_and_the_page_size() {
        let (path, opts) = from_url(
            "sqlite://a.db?synchronous=full&page_size=1024",
            SqliteOptions::default(),
        )
        .unwrap();
        assert_eq!(path, Path::new("a.db"));
        assert!(opts.synchronous_full);
        assert_eq!(opts.page_size, 1024);
        let full = SqliteOptions {
            synchronous_full: true,
            ..SqliteOptions::default()
        };
        let (_, opts) = from_url("sqlite://a.db?synchronous=normal", full).unwrap();
        assert!(!opts.synchronous_full, "the URL overrides the options");

        for (bad, says) in [
            ("sqlite://a.db?mode=ro", "unknown parameter \"mode\""),
            ("sqlite://a.db?synchronous=off", "use normal or full"),
            ("sqlite://a.db?page_size=big", "power of two"),
            ("sqlite://?page_size=1024", "names no database file"),
        ] {
            match from_url(bad, SqliteOptions::default()) {
                Err(StoreError::BadUrl { url, reason }) => {
                    assert_eq!(url, bad, "the error names the whole URL");
                    assert!(reason.contains(says), "{bad}: {reason}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn migrations_are_embedded() {
        assert!(MIGRATOR.iter().count() >= 1);
    }

    /// An upgrade is told apart from a new file, so only an upgrade is announced, with the
    /// migrations it will apply.
    #[tokio::test]
    async fn the_schema_state_names_the_pending_migrations() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let path = dir.path().join("state.db");
        let mut conn = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .connect()
            .await
            .expect("connect");
        assert_eq!(
            schema_state(&mut conn, &path).await.unwrap(),
            SchemaState::Empty
        );
        migrate(&mut conn, &path).await.expect("migrate");
        assert_eq!(
            schema_state(&mut conn, &path).await.unwrap(),
            SchemaState::Current
        );
        let newest = MIGRATOR
            .iter()
            .map(|m| m.version)
            .max()
            .expect("migrations");
        sqlx::query("DELETE FROM _sqlx_migrations WHERE version = ?")
            .bind(newest)
            .execute(&mut conn)
            .await
            .expect("forget the newest migration");
        assert_eq!(
            schema_state(&mut conn, &path).await.unwrap(),
            SchemaState::Behind {
                pending: vec![newest]
            }
        );
    }
}
