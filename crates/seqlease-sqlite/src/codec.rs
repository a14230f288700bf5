//! How core values are stored in SQLite columns, and back.
//!
//! SQLite integers are `i64`. Seqs, counters and capacities are `u64`/`u32` in the core;
//! they are range-checked both ways, and a stored value that does not fit is reported as
//! [`StoreError::Corrupt`]. Slot states are small integers (see [`state`]) so the partial
//! index on LEASED slots stays a cheap integer comparison; gap reasons are their stable
//! lowercase names ([`GapReason::as_str`]).

use seqlease_core::{GapReason, SlotState, StoreError};

use crate::error::corrupt_value;

/// Stored values of `slots.state`.
pub(crate) mod state {
    /// Granted and not resolved (includes expired leases that recovery has not resolved yet).
    pub const LEASED: i64 = 0;
    /// Resolved with an operation.
    pub const COMMITTED: i64 = 1;
    /// Resolved as a gap; `gap_reason` says why.
    pub const GAP: i64 = 2;
}

/// The core [`SlotState`] of a stored `state` / `gap_reason` pair.
pub(crate) fn slot_state(code: i64, gap_reason: Option<&str>) -> Result<SlotState, StoreError> {
    match code {
        state::LEASED => Ok(SlotState::Leased),
        state::COMMITTED => Ok(SlotState::Committed),
        state::GAP => Ok(SlotState::Gap(gap_reason_of(gap_reason)?)),
        other => Err(corrupt_value("slot state", other)),
    }
}

/// Parse a stored gap reason.
pub(crate) fn gap_reason_of(stored: Option<&str>) -> Result<GapReason, StoreError> {
    let stored = stored.unwrap_or("");
    GapReason::parse(stored).ok_or_else(|| corrupt_value("gap reason", format!("{stored:?}")))
}

/// A stored non-negative integer as `u64`.
pub(crate) fn to_u64(what: &str, v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| corrupt_value(what, v))
}

/// A stored non-negative integer as `u32`.
pub(crate) fn to_u32(what: &str, v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| corrupt_value(what, v))
}

/// A seq as a column value; `None` when it is beyond anything SQLite can hold, which means
/// no such slot can exist.
pub(crate) fn seq_param(seq: u64) -> Option<i64> {
    i64::try_from(seq).ok()
}

pub(crate) use seqlease_core::columns::{epoch_from_column, epoch_to_column};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_round_trip_bit_for_bit() {
        for e in [0, 1, 42, i64::MAX as u64, u64::MAX] {
            assert_eq!(epoch_from_column(epoch_to_column(e)), e);
        }
    }

    #[test]
    fn states_decode_and_reject_unknown_codes() {
        assert_eq!(slot_state(state::LEASED, None).unwrap(), SlotState::Leased);
        assert_eq!(
            slot_state(state::COMMITTED, None).unwrap(),
            SlotState::Committed
        );
        assert_eq!(
            slot_state(state::GAP, Some("superseded")).unwrap(),
            SlotState::Gap(GapReason::Superseded)
        );
        assert!(matches!(
            slot_state(7, None),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            slot_state(state::GAP, Some("bogus")),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(to_u64("seq", -1), Err(StoreError::Corrupt { .. })));
        assert_eq!(seq_param(u64::MAX), None);
    }
}
