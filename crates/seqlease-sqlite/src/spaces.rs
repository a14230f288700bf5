//! Space rows: create, inspect, list.
//!
//! A space's row holds its counters (`last_seq`, `watermark`, `in_flight`) and its
//! `capacity`. The write path keeps the counters up to date (see `execute`); here spaces are
//! created and reconfigured ([`ensure_space`], on the write connection) and inspected (on
//! the read pool).

use seqlease_core::{SpaceConfig, SpaceInfo, SpaceName, StoreError, Timestamp};
use sqlx::Connection;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnection, SqlitePool, SqliteRow};

use crate::codec::{to_u32, to_u64};
use crate::error::{BACKEND, map_sqlx};

/// Create `space` if it does not exist and set its capacity; one `BEGIN IMMEDIATE`
/// transaction on the write connection.
pub(crate) async fn ensure_space(
    writer: &mut SqliteConnection,
    space: &SpaceName,
    config: &SpaceConfig,
    now: Timestamp,
) -> Result<SpaceInfo, StoreError> {
    let mut tx = writer
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(map_sqlx)?;
    let row = sqlx::query(
        "INSERT INTO spaces (name, capacity, created_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (name) DO UPDATE SET capacity = excluded.capacity \
         RETURNING name, last_seq, watermark, in_flight, capacity",
    )
    .bind(space.as_str())
    .bind(i64::from(config.capacity))
    .bind(now.as_micros())
    .fetch_one(&mut *tx)
    .await
    .map_err(map_sqlx)?;
    let info = space_info_of(&row)?;
    tx.commit().await.map_err(map_sqlx)?;
    Ok(info)
}

/// Decode a row of `name, last_seq, watermark, in_flight, capacity`.
fn space_info_of(row: &SqliteRow) -> Result<SpaceInfo, StoreError> {
    let name: String = row.try_get(0).map_err(map_sqlx)?;
    let name = SpaceName::new(&name).map_err(|e| StoreError::Corrupt {
        backend: BACKEND,
        detail: format!("stored space name is invalid: {e}"),
    })?;
    Ok(SpaceInfo {
        name,
        last_seq: to_u64("last_seq", row.try_get(1).map_err(map_sqlx)?)?,
        watermark: to_u64("watermark", row.try_get(2).map_err(map_sqlx)?)?,
        in_flight: to_u32("in_flight", row.try_get(3).map_err(map_sqlx)?)?,
        capacity: to_u32("capacity", row.try_get(4).map_err(map_sqlx)?)?,
    })
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
