//! Turning PostgreSQL and sqlx failures into [`StoreError`]s an operator can act on.
//!
//! PostgreSQL reports failures with a five-character SQLSTATE. The ones that mean something
//! to an operator get their own [`StoreError`] variant:
//!
//! | SQLSTATE | meaning | error |
//! |---|---|---|
//! | `28P01`, `28000` | wrong password / no `pg_hba.conf` entry for this role | [`StoreError::Permission`] |
//! | `42501` | the role lacks a privilege | [`StoreError::Permission`] |
//! | `3D000` | the database does not exist | [`StoreError::Unavailable`] |
//! | `08xxx`, `57P0x`, `53300` | connection lost, server shutting down or full | [`StoreError::Unavailable`] (transient) |
//! | `40001`, `40P01` | serialization failure, deadlock | [`StoreError::Unavailable`] (transient: retry) |
//! | `42P01` | a seqlease table is missing | [`StoreError::Schema`] |
//! | `XX001`, `XX002` | data corrupted | [`StoreError::Corrupt`] |
//!
//! I/O errors, pool timeouts and TLS failures are [`StoreError::Unavailable`] and name the
//! server; everything else is [`StoreError::Backend`] with the driver's message.

use seqlease_core::StoreError;

/// The backend name used in every error, log line and metric.
pub const BACKEND: &str = "postgres";

/// Map a failure of a statement against the server at `target`.
pub(crate) fn map_sqlx(e: sqlx::Error, target: &str) -> StoreError {
    if let sqlx::Error::Database(db) = &e {
        let code = db.code().map(|c| c.to_string()).unwrap_or_default();
        let msg = db.message().to_string();
        return match code.as_str() {
            "28P01" | "28000" => StoreError::Permission {
                backend: BACKEND,
                detail: format!(
                    "{msg} (server {target}); check the user name and password in the URL \
                     (or PGPASSWORD) and the server's pg_hba.conf"
                ),
            },
            "42501" => StoreError::Permission {
                backend: BACKEND,
                detail: format!(
                    "{msg} (server {target}); the role needs SELECT, INSERT and UPDATE on \
                     seqlease's tables (GRANT SELECT, INSERT, UPDATE ON spaces, slots, owners, parked, resources, resource_events, slot_events TO role; DELETE ON slot_events), \
                     and CREATE on the schema to apply migrations"
                ),
            },
            "3D000" => StoreError::Unavailable {
                backend: BACKEND,
                detail: format!(
                    "{msg} (server {target}); create it (createdb) or fix the database name in the URL"
                ),
            },
            "53300" => StoreError::Unavailable {
                backend: BACKEND,
                detail: format!(
                    "{msg} (server {target}); lower PgOptions::max_connections or raise the server's max_connections"
                ),
            },
            "53100" | "58030" => StoreError::Unavailable {
                backend: BACKEND,
                detail: format!(
                    "{msg} (server {target}); the server's disk is full or refused a write: free space on the data directory's disk (and its WAL's). The batch was rolled back; everything acknowledged before it is kept"
                ),
            },
            "40001" | "40P01" => StoreError::Unavailable {
                backend: BACKEND,
                detail: format!("{msg} (server {target}); the batch was rolled back, retry it"),
            },
            "42P01" => StoreError::Schema {
                backend: BACKEND,
                detail: format!(
                    "{msg} (server {target}): the seqlease tables are missing; connect once with \
                     migrations on (PgOptions::migrate) as a role that may create tables"
                ),
            },
            "XX001" | "XX002" => StoreError::Corrupt {
                backend: BACKEND,
                detail: format!("{msg} (server {target})"),
            },
            c if c.starts_with("08") || c.starts_with("57P") => StoreError::Unavailable {
                backend: BACKEND,
                detail: format!("{msg} (server {target})"),
            },
            _ => StoreError::Backend {
                backend: BACKEND,
                detail: format!("{msg} [SQLSTATE {code}] (server {target})"),
            },
        };
    }
    match e {
        sqlx::Error::PoolClosed => StoreError::Unavailable {
            backend: BACKEND,
            detail: format!("the store for {target} was closed"),
        },
        sqlx::Error::PoolTimedOut => StoreError::Unavailable {
            backend: BACKEND,
            detail: format!(
                "timed out waiting for a connection to {target}: the server did not answer in time or every pooled connection is busy"
            ),
        },
        sqlx::Error::Io(io) => StoreError::Unavailable {
            backend: BACKEND,
            detail: format!(
                "cannot reach PostgreSQL at {target}: {io}; check that the server runs and listens on that host and port"
            ),
        },
        sqlx::Error::Tls(tls) => StoreError::Unavailable {
            backend: BACKEND,
            detail: format!(
                "TLS with {target} failed: {tls}; check sslmode, sslrootcert and the server certificate"
            ),
        },
        sqlx::Error::Protocol(p) => StoreError::Unavailable {
            backend: BACKEND,
            detail: format!("protocol error talking to {target}: {p}"),
        },
        sqlx::Error::WorkerCrashed => StoreError::Unavailable {
            backend: BACKEND,
            detail: format!("the connection to {target} failed"),
        },
        other => StoreError::Backend {
            backend: BACKEND,
            detail: format!("{other} (server {target})"),
        },
    }
}

/// A stored value that does not decode into the core types.
pub(crate) fn corrupt_value(what: &str, value: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        backend: BACKEND,
        detail: format!("stored {what} {value} is out of range"),
    }
}
