//! Connecting: the pool, the schema check, migrations and the privilege check.
//!
//! Connecting is where misconfiguration shows, so every step turns its failure into an error
//! that says what to do: the URL must parse ([`StoreError::BadUrl`]); the server must answer
//! within the connect timeout ([`StoreError::Unavailable`], naming `host:port`); the
//! credentials must be accepted ([`StoreError::Permission`]); the schema must be this
//! binary's or older (a newer one is refused, [`StoreError::Schema`]); and the role must be
//! allowed to read and write seqlease's tables ([`StoreError::Permission`] with the `GRANT`
//! to run).
//!
//! Migrations (`migrations/postgres`, embedded at compile time by `sqlx::migrate!`) run
//! under sqlx's advisory lock, so many processes starting at once on a new database apply
//! them once.

use std::collections::BTreeSet;
use std::str::FromStr;

use seqlease_core::StoreError;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Row};

use crate::PgOptions;
use crate::error::{BACKEND, map_sqlx};

/// The schema migrations, embedded in the binary.
pub(crate) static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/postgres");

/// The tables seqlease reads and writes.
const TABLES: [&str; 9] = [
    "spaces",
    "slots",
    "owners",
    "parked",
    "resources",
    "resource_events",
    "slot_events",
    "consumers",
    "retention_events",
];

/// A connected, migrated pool.
pub(crate) struct Connected {
    pub pool: PgPool,
    pub options: PgConnectOptions,
    pub target: String,
}

/// Check that `schema` is a plain lowercase identifier (it is quoted into DDL and
/// `search_path`, which cannot be bound).
pub(crate) fn validate_schema(schema: &str) -> Result<(), StoreError> {
    let ok = !schema.is_empty()
        && schema.len() <= 40
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !schema.as_bytes()[0].is_ascii_digit()
        && !schema.starts_with("pg_");
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadOption {
            backend: BACKEND,
            option: "PgOptions::schema",
            reason: format!(
                "{schema:?} is not a schema name of 1-40 characters from [a-z0-9_], not starting with a digit or pg_"
            ),
        })
    }
}

/// Parse `url` and apply the options that every connection of the store shares.
pub(crate) fn connect_options(url: &str, opts: &PgOptions) -> Result<PgConnectOptions, StoreError> {
    let mut options = PgConnectOptions::from_str(url).map_err(|e| StoreError::BadUrl {
        url: redact(url),
        reason: e.to_string(),
    })?;
    if let Some(schema) = &opts.schema {
        validate_schema(schema)?;
        options = options.options([("search_path", schema.as_str())]);
    }
    // The batch statements take arrays whose length changes with every batch; a custom plan
    // per execution costs more than the statement itself, and the generic plan is as good.
    options = options.options([("plan_cache_mode", "force_generic_plan")]);
    // Every statement of the store is a keyed lookup. A generic plan made while `slots` was
    // small (a new database, before its first ANALYZE) would keep hash-joining a batch's keys
    // against a full scan of the table for the life of the connection: on a fresh database
    // throughput halved within 10 s. Without these the planner can only use the indexes.
    options = options.options([
        ("enable_seqscan", "off"),
        ("enable_hashjoin", "off"),
        ("enable_mergejoin", "off"),
    ]);
    // A process paused (SIGSTOP, a debugger, a VM freeze) inside one of our millisecond
    // transactions would hold its space or resource row locks and stall every other process;
    // the server ends such a session instead, rolling its transaction back.
    if let Some(idle) = opts.idle_in_transaction_timeout {
        let ms = idle.as_millis().max(1).to_string();
        options = options.options([("idle_in_transaction_session_timeout", ms.as_str())]);
    }
    if options.get_application_name().is_none() {
        options = options.application_name("seqlease");
    }
    Ok(options.disable_statement_logging())
}

/// `host:port/database` of `options`, for messages (never the password).
pub(crate) fn target_of(options: &PgConnectOptions) -> String {
    let host = match options.get_socket() {
        Some(socket) => socket.display().to_string(),
        None => options.get_host().to_string(),
    };
    format!(
        "{}:{}/{}",
        host,
        options.get_port(),
        options.get_database().unwrap_or(options.get_username())
    )
}

/// The URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Connect, check and migrate; see the module docs.
pub(crate) async fn connect(url: &str, opts: &PgOptions) -> Result<Connected, StoreError> {
    let options = connect_options(url, opts)?;
    let target = target_of(&options);
    let timeout = opts.connect_timeout;

    // Open one connection first, outside the pool, so a connect failure reports the
    // server's own answer (refused, wrong password, no such database) instead of a pool
    // timeout.
    let first = tokio::time::timeout(timeout, options.connect()).await;
    let mut first = match first {
        Err(_) => {
            return Err(StoreError::Unavailable {
                backend: BACKEND,
                detail: format!(
                    "no answer from PostgreSQL at {target} within {timeout:?}; check the host and port, that the server runs, and firewalls"
                ),
            });
        }
        Ok(Err(e)) => return Err(map_sqlx(e, &target)),
        Ok(Ok(conn)) => conn,
    };
    if let Some(schema) = &opts.schema
        && opts.migrate
    {
        // CREATE SCHEMA checks the CREATE privilege on the database even with IF NOT
        // EXISTS, so only a missing schema is created.
        let exists: bool = sqlx::query_scalar("SELECT to_regnamespace($1) IS NOT NULL")
            .bind(schema)
            .fetch_one(&mut first)
            .await
            .map_err(|e| map_sqlx(e, &target))?;
        if !exists {
            // Validated above: a plain lowercase identifier, quoted here because DDL
            // cannot bind names.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
            )))
            .execute(&mut first)
            .await
            .map_err(|e| schema_error(e, &target, schema))?;
        }
    }
    prepare_schema(&mut first, opts, &target).await?;
    let _ = sqlx::Connection::close(first).await;

    let pool = PgPoolOptions::new()
        .max_connections(opts.max_connections.max(2))
        .min_connections(0)
        .acquire_timeout(timeout)
        // Every batch would pay a round trip for the ping; a broken connection instead fails
        // one batch with Unavailable (transient) and is replaced.
        .test_before_acquire(false)
        .connect_lazy_with(options.clone());
    tracing::debug!(%target, schema = ?opts.schema, "connected postgres store");
    Ok(Connected {
        pool,
        options,
        target,
    })
}

fn schema_error(e: sqlx::Error, target: &str, schema: &str) -> StoreError {
    match map_sqlx(e, target) {
        StoreError::Permission { backend, detail } => StoreError::Permission {
            backend,
            detail: format!(
                "cannot create schema {schema}: {detail}; create it as an administrator (CREATE SCHEMA {schema} AUTHORIZATION role) or grant CREATE on the database"
            ),
        },
        other => other,
    }
}

/// Where the database's schema stands relative to this binary's migrations.
#[derive(Debug, PartialEq, Eq)]
enum SchemaState {
    /// Some (or all) of this binary's migrations are still to be applied.
    Behind,
    /// Every migration this binary knows is applied, and nothing else.
    Current,
}

/// Check the schema, migrate when allowed, then check privileges.
async fn prepare_schema(
    conn: &mut sqlx::PgConnection,
    opts: &PgOptions,
    target: &str,
) -> Result<(), StoreError> {
    let where_ = match &opts.schema {
        Some(s) => format!("schema {s} of {target}"),
        None => format!("the default schema of {target}"),
    };
    if schema_state(conn, &where_).await? == SchemaState::Behind {
        if !opts.migrate {
            return Err(StoreError::Schema {
                backend: BACKEND,
                detail: format!(
                    "{where_} has no current seqlease schema and migrations are off; connect once with migrations on (PgOptions::migrate) as a role that may create tables there"
                ),
            });
        }
        // `run_direct` on the connection we hold: `run` is generic over `Acquire<'a>`, which
        // keeps the future of `connect` from being `Send` (rustc higher-ranked auto traits).
        if let Err(e) = MIGRATOR.run_direct(None, &mut *conn, false).await {
            // Another process may have applied the same migrations meanwhile.
            if schema_state(conn, &where_).await? != SchemaState::Current {
                return Err(map_migrate(e, target, &where_));
            }
        }
    }
    check_privileges(conn, target).await
}

/// Inspect `_sqlx_migrations` and the table list without changing anything.
async fn schema_state(
    conn: &mut sqlx::PgConnection,
    where_: &str,
) -> Result<SchemaState, StoreError> {
    let row = sqlx::query(
        "SELECT to_regclass('_sqlx_migrations') IS NOT NULL, to_regclass('spaces') IS NOT NULL",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| map_sqlx(e, where_))?;
    let has_history: bool = row.try_get(0).map_err(|e| map_sqlx(e, where_))?;
    let has_spaces: bool = row.try_get(1).map_err(|e| map_sqlx(e, where_))?;
    if !has_history {
        if has_spaces {
            return Err(StoreError::Schema {
                backend: BACKEND,
                detail: format!(
                    "{where_} has a table named spaces but no seqlease migration history: it belongs to another application; give seqlease its own schema (PgOptions::schema, or ?options=-csearch_path%3Dseqlease in the URL)"
                ),
            });
        }
        return Ok(SchemaState::Behind);
    }
    let rows = sqlx::query("SELECT version, success FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| map_sqlx(e, where_))?;
    let known: BTreeSet<i64> = MIGRATOR.iter().map(|m| m.version).collect();
    let newest_known = known.last().copied().unwrap_or(0);
    let mut applied = BTreeSet::new();
    for row in rows {
        let version: i64 = row.try_get(0).map_err(|e| map_sqlx(e, where_))?;
        let success: bool = row.try_get(1).map_err(|e| map_sqlx(e, where_))?;
        if !known.contains(&version) {
            let detail = if version > newest_known {
                format!(
                    "{where_} was migrated by a newer seqlease (schema migration {version}; this binary knows up to {newest_known}); upgrade the seqlease binary"
                )
            } else {
                format!(
                    "{where_} has schema migration {version} applied, which this binary does not know; it was written by a different seqlease build"
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
                    "{where_}: schema migration {version} failed part-way earlier; repair it by hand or restore a backup"
                ),
            });
        }
        applied.insert(version);
    }
    Ok(if applied == known {
        SchemaState::Current
    } else {
        SchemaState::Behind
    })
}

/// Refuse a role that cannot read and write seqlease's tables, before the first batch.
async fn check_privileges(conn: &mut sqlx::PgConnection, target: &str) -> Result<(), StoreError> {
    let rows = sqlx::query(
        // A list of privileges is true when *any* is held: ask for each.
        "SELECT t, has_table_privilege(t, 'SELECT') AND has_table_privilege(t, 'INSERT') \
                   AND has_table_privilege(t, 'UPDATE') \
         FROM unnest($1::text[]) AS t",
    )
    .bind(&TABLES[..])
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| map_sqlx(e, target))?;
    let mut missing = Vec::new();
    for row in rows {
        let table: String = row.try_get(0).map_err(|e| map_sqlx(e, target))?;
        let ok: bool = row.try_get(1).map_err(|e| map_sqlx(e, target))?;
        if !ok {
            missing.push(table);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| map_sqlx(e, target))?;
    Err(StoreError::Permission {
        backend: BACKEND,
        detail: format!(
            "role {user} lacks SELECT, INSERT or UPDATE on {} at {target}; run GRANT SELECT, INSERT, UPDATE ON spaces, slots, owners, parked, resources, resource_events, slot_events, consumers, retention_events TO {user} (and DELETE ON slot_events for history pruning, DELETE ON slots and consumers for retention)",
            missing.join(", ")
        ),
    })
}

fn map_migrate(e: MigrateError, target: &str, where_: &str) -> StoreError {
    match e {
        MigrateError::Execute(inner) => map_sqlx(inner, target),
        MigrateError::ExecuteMigration(inner, version) => match map_sqlx(inner, target) {
            StoreError::Permission { backend, detail } => StoreError::Permission {
                backend,
                detail: format!(
                    "applying schema migration {version} to {where_} failed: {detail}; grant the role CREATE on the schema, or have an administrator connect once to migrate"
                ),
            },
            other => StoreError::Schema {
                backend: BACKEND,
                detail: format!("{where_}: schema migration {version} failed: {other}"),
            },
        },
        other => StoreError::Schema {
            backend: BACKEND,
            detail: format!("{where_}: migrating the schema failed: {other}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for ok in ["seqlease", "t_1", "a"] {
            assert!(validate_schema(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1a", "Upper", "a-b", "a\"b", "pg_x", &"x".repeat(41)] {
            assert!(validate_schema(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://u:secret@h:5/d"),
            "postgres://u:***@h:5/d"
        );
        assert_eq!(redact("postgres://u@h/d"), "postgres://u@h/d");
    }

    #[test]
    fn migrations_are_embedded() {
        assert!(MIGRATOR.iter().count() >= 1);
    }
}
