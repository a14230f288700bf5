//! Column codecs shared by the SQL stores.
//!
//! SQLite and PostgreSQL keep the same values in the same shapes: epochs as a signed 64-bit
//! column, an operation body as three nullable columns, a fence as two, recovery metadata as
//! JSON. One copy of those conversions here keeps the stores from drifting apart.

use crate::error::StoreError;
use crate::types::{Fence, OperationBody, RecoveryInfo};

/// An epoch as a column value. Epochs are only compared for equality, so the `u64` is stored
/// bit for bit in the signed column.
pub fn epoch_to_column(epoch: u64) -> i64 {
    i64::from_ne_bytes(epoch.to_ne_bytes())
}

/// A stored epoch (inverse of [`epoch_to_column`]).
pub fn epoch_from_column(stored: i64) -> u64 {
    u64::from_ne_bytes(stored.to_ne_bytes())
}

/// An operation body from its columns; `None` when no body is stored (`kind` is NULL).
pub fn body_from_columns(
    kind: Option<String>,
    payload: Option<Vec<u8>>,
    source_event_id: Option<String>,
) -> Option<OperationBody> {
    kind.map(|kind| OperationBody {
        kind,
        payload: payload.unwrap_or_default(),
        source_event_id,
    })
}

/// A fence from its columns; `None` unless both are stored.
pub fn fence_from_columns(resource: Option<String>, epoch: Option<i64>) -> Option<Fence> {
    match (resource, epoch) {
        (Some(resource), Some(epoch)) => Some(Fence {
            resource,
            epoch: epoch_from_column(epoch),
        }),
        _ => None,
    }
}

/// Recovery metadata as the JSON stored with a recovered operation.
pub fn recovery_to_json(info: &RecoveryInfo, backend: &'static str) -> Result<String, StoreError> {
    serde_json::to_string(info).map_err(|e| StoreError::Backend {
        backend,
        detail: format!("recovery metadata does not encode: {e}"),
    })
}

/// Stored recovery metadata; `what` names the slot in the error ("orders/17").
pub fn recovery_from_json(
    json: &str,
    backend: &'static str,
    what: &str,
) -> Result<RecoveryInfo, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        backend,
        detail: format!("recovery metadata of {what} does not decode: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Timestamp;
    use crate::types::RecoveryType;

    #[test]
    fn epochs_round_trip_bit_for_bit() {
        for e in [0, 1, 42, i64::MAX as u64, u64::MAX - 1, u64::MAX] {
            assert_eq!(epoch_from_column(epoch_to_column(e)), e);
        }
    }

    #[test]
    fn bodies_and_fences_need_their_key_column() {
        assert_eq!(body_from_columns(None, Some(vec![1]), None), None);
        let body = body_from_columns(Some("update".into()), None, Some("e1".into())).unwrap();
        assert_eq!(
            (body.payload.len(), body.source_event_id.as_deref()),
            (0, Some("e1"))
        );
        assert_eq!(fence_from_columns(Some("r".into()), None), None);
        assert_eq!(
            fence_from_columns(Some("r".into()), Some(3)).unwrap().epoch,
            3
        );
    }

    #[test]
    fn recovery_json_round_trips_and_names_the_slot_when_corrupt() {
        let info = RecoveryInfo {
            original_seq: 7,
            original_operation_id: "op".into(),
            recovered_at: Timestamp(5),
            recovery_type: RecoveryType::Retry,
        };
        let json = recovery_to_json(&info, "sqlite").unwrap();
        assert_eq!(recovery_from_json(&json, "sqlite", "s/7").unwrap(), info);
        let err = recovery_from_json("{", "sqlite", "s/7").unwrap_err();
        assert!(
            err.to_string().contains("recovery metadata of s/7"),
            "{err}"
        );
    }
}
