//! One slot as the in-memory store keeps it.
//!
//! A log keeps millions of slots for as long as it is retained, and every byte of a new
//! slot is memory the kernel first has to zero (a quarter of a single-threaded bench
//! profile was `clear_page`), so a slot is kept small:
//! - a committed operation's id and projection type are the lease's (a slot only ever holds
//!   the operation it was granted for), so they are not stored a second time;
//! - work recorded while leased, a cleaner's claim, a gap's explanation and recovery
//!   details are rare, so they are boxed.

use seqlease_core::{
    EntryContent, Gap, GapReason, LeaseRecord, Operation, OperationBody, RecoveryInfo, SlotState,
    Timestamp, Token,
};

#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) lease: LeaseRecord,
    pub(crate) state: SlotState,
    /// How many times the slot was claimed.
    pub(crate) attempts: u32,
    /// Work recorded while leased, and a cleaner's claim; dropped when the slot resolves.
    work: Option<Box<Work>>,
    /// Set once, when the slot resolves.
    resolved: Option<(Timestamp, Content)>,
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
        body: OperationBody,
        /// Present when recovery, not the worker, committed it.
        recovery: Option<Box<RecoveryInfo>>,
    },
    Gap(Box<Gap>),
}

impl Content {
    pub(crate) fn committed(body: OperationBody) -> Self {
        Content::Committed {
            body,
            recovery: None,
        }
    }

    pub(crate) fn recovered(body: OperationBody, recovery: RecoveryInfo) -> Self {
        Content::Committed {
            body,
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
    pub(crate) fn leased(lease: LeaseRecord) -> Self {
        Slot {
            lease,
            state: SlotState::Leased,
            attempts: 0,
            work: None,
            resolved: None,
        }
    }

    /// A slot resolved the moment it is appended (work re-sequenced by recovery).
    pub(crate) fn resolved(lease: LeaseRecord, at: Timestamp, content: Content) -> Self {
        Slot {
            lease,
            state: content.state(),
            attempts: 0,
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

    /// Resolve the slot (once, I2): its state follows the content; recorded work and any
    /// claim are dropped with the lease's life.
    pub(crate) fn resolve(&mut self, at: Timestamp, content: Content) {
        debug_assert!(self.resolved.is_none(), "a slot resolves once (I2)");
        self.state = content.state();
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
    pub(crate) fn entry_content(&self) -> Option<(Timestamp, EntryContent)> {
        let (at, content) = self.resolved.as_ref()?;
        let content = match content {
            Content::Committed { body, recovery } => EntryContent::Operation(Operation {
                operation_id: self.lease.operation_id.clone(),
                projection_type: self.lease.projection_type.clone(),
                body: body.clone(),
                recovery: recovery.as_deref().cloned(),
            }),
            Content::Gap(gap) => EntryContent::Gap((**gap).clone()),
        };
        Some((*at, content))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_stays_small() {
        // The log keeps one of these per seq; the lease record is most of it.
        let budget = std::mem::size_of::<LeaseRecord>() + 112;
        assert!(
            std::mem::size_of::<Slot>() <= budget,
            "Slot is {} bytes, budget {budget}",
            std::mem::size_of::<Slot>()
        );
    }
}
