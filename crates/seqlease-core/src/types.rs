//! The vocabulary of DESIGN §1 as data: leases, operations, entries and gaps.
//!
//! A slot is one `seq` in a space. It is granted once (a [`LeaseRecord`]), may collect
//! partial work and a completed result while LEASED, and resolves exactly once into an
//! [`Entry`]: either a committed [`Operation`] or a [`Gap`] that says why it is empty.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::name::SpaceName;
use crate::time::Timestamp;

/// The secret that proves a caller holds a lease. 128 random bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token(pub [u8; 16]);

impl Token {
    /// A fresh random token: 16 bytes of the thread's CSPRNG (`rand::rng`, ChaCha).
    pub fn random() -> Token {
        // `rand::random::<[u8; 16]>()` would draw a u32 for each byte: four times the
        // generator's output, and sixteen calls.
        let mut bytes = [0; 16];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
        Token(bytes)
    }

    /// The raw bytes (stored as a 16-byte blob).
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Rebuild a token from stored bytes; `None` when the length is wrong.
    pub fn from_slice(b: &[u8]) -> Option<Token> {
        <[u8; 16]>::try_from(b).ok().map(Token)
    }
}

impl fmt::Debug for Token {
    // Never print a secret in full: the first 4 hex digits are enough to correlate logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

/// A fencing token: the resource a sequence lease was granted under and its epoch then.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fence {
    /// The resource name.
    pub resource: String,
    /// The epoch the holder was given.
    pub epoch: u64,
}

/// What a worker asks for when it wants a slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantRequest {
    /// The space to allocate in.
    pub space: SpaceName,
    /// The caller's idempotency key for the operation this slot will hold.
    pub operation_id: String,
    /// A label for the kind of projection (selects the recovery resolver).
    pub projection_type: String,
    /// The worker that will fill the slot.
    pub owner: String,
    /// How long the lease lasts without renewal.
    pub ttl: Duration,
    /// Optional fence checked at commit.
    pub fence: Option<Fence>,
}

/// A granted sequence lease as the store recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The space.
    pub space: SpaceName,
    /// The slot.
    pub seq: u64,
    /// The secret that authorises commit, renew, record and release.
    pub token: Token,
    /// The caller's idempotency key.
    pub operation_id: String,
    /// The projection-type label.
    pub projection_type: String,
    /// The worker id.
    pub owner: String,
    /// The fence, if granted under a resource lease.
    pub fence: Option<Fence>,
    /// When the store granted it.
    pub leased_at: Timestamp,
    /// When the store will consider it expired.
    pub expires_at: Timestamp,
    /// How often it was renewed.
    pub renewals: u32,
}

/// What a worker commits: the body of an operation. Its id and projection type come from
/// the lease, so a slot can never hold an operation it was not granted for.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OperationBody {
    /// What the operation does ("update", "insert", …).
    pub kind: String,
    /// The payload: by convention JSON, e.g. the concrete entity ids an update touched.
    pub payload: Vec<u8>,
    /// The event this operation was derived from.
    pub source_event_id: Option<String>,
}

impl OperationBody {
    /// A body of `kind` with `payload`.
    pub fn new(kind: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        OperationBody {
            kind: kind.into(),
            payload: payload.into(),
            source_event_id: None,
        }
    }

    /// Record the event this operation came from.
    pub fn with_source_event(mut self, id: impl Into<String>) -> Self {
        self.source_event_id = Some(id.into());
        self
    }
}

/// How recovered work was recovered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryType {
    /// A resolver turned recorded partial work into an operation.
    PartialWork,
    /// A recorded completed result was committed by the cleaner.
    Retry,
    /// Work that arrived after its slot was closed, re-sequenced.
    Late,
}

impl RecoveryType {
    /// The stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryType::PartialWork => "partial_work",
            RecoveryType::Retry => "retry",
            RecoveryType::Late => "late",
        }
    }
}

/// Metadata carried by an operation that was committed by recovery, not by its worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryInfo {
    /// The slot the work was originally leased for.
    pub original_seq: u64,
    /// The operation id of the original lease.
    pub original_operation_id: String,
    /// When recovery committed it (store clock).
    pub recovered_at: Timestamp,
    /// Which step recovered it.
    pub recovery_type: RecoveryType,
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(self.0)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        i64::deserialize(d).map(Timestamp)
    }
}

/// A committed operation as readers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The caller's idempotency key (unique per space among committed operations, I6).
    pub operation_id: String,
    /// The projection-type label.
    pub projection_type: String,
    /// The body the worker (or recovery) committed.
    pub body: OperationBody,
    /// Present when recovery, not the worker, committed it.
    pub recovery: Option<RecoveryInfo>,
}

/// Why a slot holds no operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GapReason {
    /// The lease expired and nothing was recovered into this slot.
    Expired,
    /// The worker released the lease.
    Released,
    /// The slot's work went to another slot (`superseded_by`).
    Superseded,
    /// An operator resolved the slot by hand.
    Manual,
}

impl GapReason {
    /// The stable lowercase name used in storage, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::Expired => "expired",
            GapReason::Released => "released",
            GapReason::Superseded => "superseded",
            GapReason::Manual => "manual",
        }
    }

    /// Parse a stored name.
    pub fn parse(s: &str) -> Option<GapReason> {
        Some(match s {
            "expired" => GapReason::Expired,
            "released" => GapReason::Released,
            "superseded" => GapReason::Superseded,
            "manual" => GapReason::Manual,
            _ => return None,
        })
    }
}

impl fmt::Display for GapReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The terminal record of an empty slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gap {
    /// Why the slot is empty.
    pub reason: GapReason,
    /// The seq that holds this slot's work, when it went elsewhere.
    pub superseded_by: Option<u64>,
    /// Free-form explanation (an error message, an operator's note).
    pub detail: Option<String>,
}

/// What a resolved slot holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryContent {
    /// A committed operation.
    Operation(Operation),
    /// An explained gap.
    Gap(Gap),
}

/// One resolved slot of the ordered log, as readers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The space.
    pub space: SpaceName,
    /// The slot.
    pub seq: u64,
    /// The operation id the slot was leased for.
    pub lease_operation_id: String,
    /// The worker that held the lease.
    pub owner: String,
    /// When the slot resolved (store clock).
    pub resolved_at: Timestamp,
    /// The operation or the gap.
    pub content: EntryContent,
}

impl Entry {
    /// The committed operation, if this entry holds one.
    pub fn operation(&self) -> Option<&Operation> {
        match &self.content {
            EntryContent::Operation(op) => Some(op),
            EntryContent::Gap(_) => None,
        }
    }

    /// The gap, if this entry is one.
    pub fn gap(&self) -> Option<&Gap> {
        match &self.content {
            EntryContent::Gap(g) => Some(g),
            EntryContent::Operation(_) => None,
        }
    }
}

/// The state of a slot, for inspection and error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SlotState {
    /// Granted; a worker may commit while it has not expired.
    Leased,
    /// Resolved with an operation.
    Committed,
    /// Resolved as a gap.
    Gap(GapReason),
}

impl fmt::Display for SlotState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlotState::Leased => f.write_str("leased"),
            SlotState::Committed => f.write_str("committed"),
            SlotState::Gap(r) => write!(f, "gap ({r})"),
        }
    }
}

/// Per-space settings kept by the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpaceConfig {
    /// Maximum number of LEASED slots at once (expired-but-unresolved ones count).
    pub capacity: u32,
}

impl Default for SpaceConfig {
    fn default() -> Self {
        SpaceConfig { capacity: 10_000 }
    }
}

/// A space's counters as the store reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpaceInfo {
    /// The space.
    pub name: SpaceName,
    /// The highest allocated seq (0 when none).
    pub last_seq: u64,
    /// The watermark W: every slot in `1..=W` is resolved.
    pub watermark: u64,
    /// LEASED slots right now.
    pub in_flight: u32,
    /// The configured capacity.
    pub capacity: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_tokens_differ_in_every_byte_position() {
        let tokens: Vec<Token> = (0..1000).map(|_| Token::random()).collect();
        let distinct: std::collections::HashSet<_> = tokens.iter().collect();
        assert_eq!(distinct.len(), tokens.len());
        for i in 0..16 {
            let values: std::collections::HashSet<u8> = tokens.iter().map(|t| t.0[i]).collect();
            assert!(values.len() > 100, "byte {i} took {} values", values.len());
        }
    }
}
