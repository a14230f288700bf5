//! One slot as the in-memory store keeps it.
//!
//! A log keeps millions of slots for as long as it is retained, and every byte of a new
//! slot is memory the kernel first has to zero (a quarter of a single-threaded bench
//! profile was `clear_page`), so a slot is kept small:
//! - a committed operation's id and projection type are the lease's (a slot only ever holds
//!   the operation it was granted for), so they are not stored a second time; nor are the
//!   space and the seq, which are where the slot is kept;
//! - the labels every slot repeats (owner, projection type, operation kind) are kept once,
//!   in the space's [`Labels`]; a slot holds 4-byte [`Label`]s (no shared count to bump,
//!   which would move a cache line between cores on every grant);
//! - work recorded while leased, a cleaner's claim, a fence, a gap's explanation and
//!   recovery details are rare, so they are boxed.

use indexmap::IndexSet;

use seqlease_core::{
    EntryContent, Fence, Gap, GapReason, LeaseRecord, Operation, OperationBody, RecoveryInfo,
    SlotState, SpaceName, Timestamp, Token,
};

#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) lease: SlotLease,
    /// Work recorded while leased, and a cleaner's claim; dropped when the slot resolves.
    work: Option<Box<Work>>,
    /// Set once, when the slot resolves.
    resolved: Option<(Timestamp, Content)>,
}

/// A slot's lease, as the slot keeps it.
#[derive(Debug)]
pub(crate) struct SlotLease {
    pub(crate) token: Token,
    pub(crate) operation_id: Box<str>,
    pub(crate) projection_type: Label,
    pub(crate) owner: Label,
    pub(crate) fence: Option<Box<Fence>>,
    pub(crate) leased_at: Timestamp,
    pub(crate) expires_at: Timestamp,
    pub(crate) renewals: u32,
    /// How many times a cleaner claimed the slot once the lease expired. Kept here, in
    /// what was the lease's padding, rather than in the slot: 8 bytes less per slot.
    pub(crate) attempts: u32,
}

impl SlotLease {
    /// Keep `record` (its operation id already copied into `operation_id`).
    pub(crate) fn new(record: &LeaseRecord, operation_id: Box<str>, labels: &mut Labels) -> Self {
        SlotLease {
            token: record.token,
            operation_id,
            projection_type: labels.intern(Role::ProjectionType, &record.projection_type),
            owner: labels.intern(Role::Owner, &record.owner),
            fence: record.fence.clone().map(Box::new),
            leased_at: record.leased_at,
            expires_at: record.expires_at,
            renewals: record.renewals,
            attempts: 0,
        }
    }

    /// The lease record of the slot `seq` of `space`, whose labels are `labels`.
    pub(crate) fn record(&self, space: &SpaceName, seq: u64, labels: &Labels) -> LeaseRecord {
        LeaseRecord {
            space: space.clone(),
            seq,
            token: self.token,
            operation_id: self.operation_id.to_string(),
            projection_type: labels.text(self.projection_type).to_owned(),
            owner: labels.text(self.owner).to_owned(),
            fence: self.fence.as_deref().cloned(),
            leased_at: self.leased_at,
            expires_at: self.expires_at,
            renewals: self.renewals,
        }
    }
}

/// One of a space's [`Labels`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Label(u32);

/// The labels a log repeats on every slot (owners, projection types, operation kinds),
/// each kept once. A table of one space only grows: an application that makes every
/// owner unique pays one entry per distinct owner, as it would pay a copy per slot, and
/// the table's doubling (a copy of its entries) then happens under the space's lock, as
/// the committed index's did before it was split into shards.
///
/// Successive slots mostly repeat the labels of the one before (one projection type, one
/// operation kind, the engine's owner), so each role remembers its last label and compares
/// with it before hashing: a hash lookup was ~130 instructions, three per cycle.
#[derive(Debug, Default)]
pub(crate) struct Labels {
    known: IndexSet<Box<str>, foldhash::fast::RandomState>,
    last: [Option<Label>; 3],
}

/// What a label names; each role remembers its last label (see [`Labels`]).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Role {
    ProjectionType = 0,
    Owner = 1,
    Kind = 2,
}

impl Labels {
    pub(crate) fn intern(&mut self, role: Role, label: &str) -> Label {
        let last = &mut self.last[role as usize];
        if let Some(known) = *last
            && *self.known[known.0 as usize] == *label
        {
            return known;
        }
        let index = match self.known.get_index_of(label) {
            Some(index) => index,
            None => self.known.insert_full(label.into()).0,
        };
        let label =
            Label(u32::try_from(index).expect("fewer than 2^32 distinct labels in one space"));
        *last = Some(label);
        label
    }

    pub(crate) fn text(&self, label: Label) -> &str {
        &self.known[label.0 as usize]
    }
}

/// An operation body as a resolved slot keeps it.
#[derive(Debug)]
pub(crate) struct StoredBody {
    kind: Label,
    payload: Box<[u8]>,
    source_event_id: Option<Box<str>>,
}

impl StoredBody {
    pub(crate) fn new(body: OperationBody, labels: &mut Labels) -> Self {
        StoredBody {
            kind: labels.intern(Role::Kind, &body.kind),
            payload: body.payload.into_boxed_slice(),
            source_event_id: body.source_event_id.map(String::into_boxed_str),
        }
    }

    fn body(&self, labels: &Labels) -> OperationBody {
        OperationBody {
            kind: labels.text(self.kind).to_owned(),
            payload: self.payload.to_vec(),
            source_event_id: self.source_event_id.as_deref().map(str::to_owned),
        }
    }
}

/// What a leased slot may carry besides its lease.
#[derive(Debug, Default)]
pub(crate) struct Work {
    pub(crate) partial: Option<Vec<u8>>,
    pub(crate) result: Option<OperationBody>,
    pub(crate) claim: Option<Claim>,
}

/// A cleaner's claim on an expired slot.
#[derive(Debug)]
pub(crate) struct Claim {
    pub(crate) token: Token,
    pub(crate) cleaner: String,
    pub(crate) expires_at: Timestamp,
}

/// What a resolved slot holds, without what its lease already says.
#[derive(Debug)]
pub(crate) enum Content {
    Committed {
        body: StoredBody,
        /// Present when recovery, not the worker, committed it.
        recovery: Option<Box<RecoveryInfo>>,
    },
    Gap(Box<Gap>),
}

impl Content {
    pub(crate) fn committed(body: OperationBody, labels: &mut Labels) -> Self {
        Content::Committed {
            body: StoredBody::new(body, labels),
            recovery: None,
        }
    }

    pub(crate) fn recovered(
        body: OperationBody,
        recovery: RecoveryInfo,
        labels: &mut Labels,
    ) -> Self {
        Content::Committed {
            body: StoredBody::new(body, labels),
            recovery: Some(Box::new(recovery)),
        }
    }

    pub(crate) fn gap(
        reason: GapReason,
        superseded_by: Option<u64>,
        detail: Option<String>,
    ) -> Self {
        Content::Gap(Box::new(Gap {
            reason,
            superseded_by,
            detail,
        }))
    }

    fn state(&self) -> SlotState {
        match self {
            Content::Committed { .. } => SlotState::Committed,
            Content::Gap(g) => SlotState::Gap(g.reason),
        }
    }
}

impl Slot {
    /// A freshly granted slot.
    pub(crate) fn leased(lease: SlotLease) -> Self {
        Slot {
            lease,
            work: None,
            resolved: None,
        }
    }

    /// A slot resolved the moment it is appended (work re-sequenced by recovery).
    pub(crate) fn resolved(lease: SlotLease, at: Timestamp, content: Content) -> Self {
        Slot {
            lease,
            work: None,
            resolved: Some((at, content)),
        }
    }

    pub(crate) fn partial(&self) -> Option<&Vec<u8>> {
        self.work.as_ref()?.partial.as_ref()
    }

    pub(crate) fn result(&self) -> Option<&OperationBody> {
        self.work.as_ref()?.result.as_ref()
    }

    pub(crate) fn claim(&self) -> Option<&Claim> {
        self.work.as_ref()?.claim.as_ref()
    }

    /// Whether a partial or a result was recorded (work recovery must not drop, I5).
    pub(crate) fn has_recorded_work(&self) -> bool {
        self.partial().is_some() || self.result().is_some()
    }

    pub(crate) fn work_mut(&mut self) -> &mut Work {
        self.work.get_or_insert_default()
    }

    pub(crate) fn is_resolved(&self) -> bool {
        self.resolved.is_some()
    }

    /// LEASED until it resolves; then what its content says.
    pub(crate) fn state(&self) -> SlotState {
        self.resolved
            .as_ref()
            .map_or(SlotState::Leased, |(_, content)| content.state())
    }

    /// Resolve the slot (once, I2): its state follows the content; recorded work and any
    /// claim are dropped with the lease's life.
    pub(crate) fn resolve(&mut self, at: Timestamp, content: Content) {
        debug_assert!(self.resolved.is_none(), "a slot resolves once (I2)");
        self.work = None;
        self.resolved = Some((at, content));
    }

    pub(crate) fn resolution(&self) -> Option<(Timestamp, &Content)> {
        self.resolved.as_ref().map(|(at, content)| (*at, content))
    }

    /// The operation id, if the slot holds a committed operation.
    pub(crate) fn committed_operation_id(&self) -> Option<&str> {
        match &self.resolved {
            Some((_, Content::Committed { .. })) => Some(&self.lease.operation_id),
            _ => None,
        }
    }

    /// The content as readers see it, with the lease's strings filled back in.
    pub(crate) fn entry_content(&self, labels: &Labels) -> Option<(Timestamp, EntryContent)> {
        let (at, content) = self.resolved.as_ref()?;
        let content = match content {
            Content::Committed { body, recovery } => EntryContent::Operation(Operation {
                operation_id: self.lease.operation_id.to_string(),
                projection_type: labels.text(self.lease.projection_type).to_owned(),
                body: body.body(labels),
                recovery: recovery.as_deref().cloned(),
            }),
            Content::Gap(gap) => EntryContent::Gap((**gap).clone()),
        };
        Some((*at, content))
    }
}

/// A lease of slot `seq` of a space named "s", for tests.
#[cfg(test)]
pub(crate) fn test_lease(seq: u64, operation_id: &str) -> SlotLease {
    let record = LeaseRecord {
        space: SpaceName::new("s").unwrap(),
        seq,
        token: Token::random(),
        operation_id: operation_id.into(),
        projection_type: "p".into(),
        owner: "o".into(),
        fence: None,
        leased_at: Timestamp(0),
        expires_at: Timestamp(1),
        renewals: 0,
    };
    SlotLease::new(&record, operation_id.into(), &mut Labels::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_stays_small() {
        // The log keeps one of these per seq, for as long as it is retained.
        let budget = 144;
        assert!(
            std::mem::size_of::<Slot>() <= budget,
            "Slot is {} bytes, budget {budget}",
            std::mem::size_of::<Slot>()
        );
    }

    #[test]
    fn labels_are_kept_once_and_read_back() {
        let mut labels = Labels::default();
        let a = labels.intern(Role::Owner, "worker-1");
        assert_eq!(
            a,
            labels.intern(Role::Owner, "worker-1"),
            "the role's last label"
        );
        let b = labels.intern(Role::Owner, "worker-2");
        assert_ne!(a, b);
        assert_eq!(
            a,
            labels.intern(Role::Owner, "worker-1"),
            "found by its hash"
        );
        assert_eq!(
            a,
            labels.intern(Role::Kind, "worker-1"),
            "one table for every role"
        );
        let c = labels.intern(Role::Kind, "worker-3");
        assert_eq!(b, labels.intern(Role::ProjectionType, "worker-2"));
        assert_eq!(
            (labels.text(a), labels.text(b), labels.text(c)),
            ("worker-1", "worker-2", "worker-3")
        );
        assert_eq!(labels.known.len(), 3);
    }
}
