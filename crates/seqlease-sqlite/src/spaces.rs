//! Space rows: create, inspect, list.
//!
//! A space's row holds its counters (`last_seq`, `watermark`, `in_flight`) and its
//! `capacity`. The write path keeps the counters up to date (see `execute`); here spaces are
//! created and reconfigured ([`ensure_space`], on the write connection, through rusqlite) and inspected (on
//! the read pool).

use rusqlite::{Connection, TransactionBehavior};
use seqlease_core::{SpaceConfig, SpaceInfo, SpaceName, StoreError, Timestamp};
use sqlx::Row;
use sqlx::sqlite::{SqlitePool, SqliteRow};

use crate::codec::{to_u32, to_u64};
use crate::error::{BACKEND, WriteError, map_sqlx};

/// Create `space` if it does not exist and set its capacity; one `BEGIN IMMEDIATE`
/// transaction on the write connection.
pub(crate) fn ensure_space(
    writer: &mut Connection,
    space: &SpaceName,
    config: &SpaceConfig,
    now: Timestamp,
) -> Result<SpaceInfo, WriteError> {
    let tx = writer.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (name, last_seq, watermark, in_flight, capacity) = tx
        .prepare_cached(
            "INSERT INTO spaces (name, capacity, created_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (name) DO UPDATE SET capacity = excluded.capacity \
             RETURNING name, last_seq, watermark, in_flight, capacity",
        )?
        .query_row(
            (space.as_str(), i64::from(config.capacity), now.as_micros()),
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )?;
    // On an error, dropping the transaction rolls it back.
    let info = space_info_from(name, last_seq, watermark, in_flight, capacity)?;
    tx.commit()?;
    Ok(info)
}

/// A [`SpaceInfo`] from the stored `name, last_seq, watermark, in_flight, capacity`.
fn space_info_from(
    name: String,
    last_seq: i64,
    watermark: i64,
    in_flight: i64,
    capacity: i64,
) -> Result<SpaceInfo, StoreError> {
    let name = SpaceName::new(&name).map_err(|e| StoreError::Corrupt {
        backend: BACKEND,
        detail: format!("stored space name is invalid: {e}"),
    })?;
    Ok(SpaceInfo {
        name,
        last_seq: to_u64("last_seq", last_seq)?,
        watermark: to_u64("watermark", watermark)?,
        in_flight: to_u32("in_flight", in_flight)?,
        capacity: to_u32("capacity", capacity)?,
    })
}

/// Decode a row of `name, last_seq, watermark, in_flight, capacity`.
fn space_info_of(row: &SqliteRow) -> Result<SpaceInfo, StoreError> {
    space_info_from(
        row.try_get(0).map_err(map_sqlx)?,
        row.try_get(1).map_err(map_sqlx)?,
        row.try_get(2).map_err(map_sqlx)?,
        row.try_get(3).map_err(map_sqlx)?,
        row.try_get(4).map_err(map_sqlx)?,
    )
}

/// A space's counters, `None` if it does not exist.
pub(crate) async fn space_info(
    readers: &SqlitePool,
    space: &SpaceName,
) -> Result<Option<SpaceInfo>, StoreError> {
    let row = sqlx::query(
        "SELECT name, last_seq, watermark, in_flight, capacity FROM spaces WHERE name = ?1",
    )
    .bind(space.as_str())
    .fetch_optional(readers)
    .await
    .map_err(map_sqlx)?;
    row.as_ref().map(space_info_of).transpose()
}

/// All spaces, ordered by name.
pub(crate) async fn list_spaces(readers: &SqlitePool) -> Result<Vec<SpaceInfo>, StoreError> {
    let rows = sqlx::query(
        "SELECT name, last_seq, watermark, in_flight, capacity FROM spaces ORDER BY name",
    )
    .fetch_all(readers)
    .await
    .map_err(map_sqlx)?;
    rows.iter().map(space_info_of).collect()
}
