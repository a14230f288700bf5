//! Recovery in the in-memory store: claiming expired slots, resolving them, and the queue of
//! parked work. The rules are the contract on `Store::claim_expired`, `Store::resolve` and
//! `Store::settle_parked`, written out plainly.

use seqlease_core::late::{LatePlan, LateSlot, plan_late};
use seqlease_core::recovery::check_recovery_fence;
use seqlease_core::{
    BatchOutcome, ClaimKey, ClaimRequest, ExpiredSlot, GapReason, LateCommit, LateOutcome,
    LeaseError, LeaseRecord, OperationBody, ParkedState, ParkedWork, Placement, RecoveryInfo,
    RecoveryType, Reply, Resolution, Resolve, ResolveOutcome, SlotEventKind, SlotState, Timestamp,
    Token,
};

use crate::slot::{Claim, Content, Slot, SlotLease};
use crate::space::SpaceState;

impl SpaceState {
    /// LEASED slots past their expiry with no live claim, except claims of `cleaner`
    /// (`Some`): a cleaner claims its own unresolved claims again, lowest seq first (I8).
    fn claimable<'a>(
        &'a self,
        now: Timestamp,
        cleaner: Option<&'a str>,
    ) -> impl Iterator<Item = u64> + 'a {
        self.leased.iter().filter(move |&seq| {
            let Some(slot) = self.slots.get(seq) else {
                return false;
            };
            let live_claim = slot
                .claim()
                .is_some_and(|c| c.expires_at > now && Some(c.cleaner.as_str()) != cleaner);
            slot.lease.expires_at <= now && !live_claim
        })
    }

    pub(crate) fn expired_backlog(&self, now: Timestamp) -> u64 {
        self.claimable(now, None).count() as u64
    }

    pub(crate) fn claim(&mut self, req: &ClaimRequest, now: Timestamp) -> Vec<ExpiredSlot> {
        let other_cleaner_busy = self.leased.iter().any(|seq| {
            self.slots
                .get(seq)
                .and_then(Slot::claim)
                .is_some_and(|c| c.expires_at > now && c.cleaner != req.cleaner)
        });
        if other_cleaner_busy {
            return Vec::new(); // one cleaner per space at a time keeps recovery ordered (I8)
        }
        // Its own live claims too: a cleaner restarted under a fixed id picks up where its
        // dead incarnation stopped instead of claiming past those slots (I8).
        let seqs: Vec<u64> = self
            .claimable(now, Some(&req.cleaner))
            .take(req.limit)
            .collect();
        let mut claimed = Vec::with_capacity(seqs.len());
        for seq in seqs {
            let slot = self.slots.get_mut(seq).expect("claimable slots exist");
            let claim = Claim {
                token: Token::random(),
                cleaner: req.cleaner.clone(),
                expires_at: now.plus(req.ttl),
            };
            slot.lease.attempts += 1;
            claimed.push(ExpiredSlot {
                lease: LeaseRecord {
                    token: Token([0; 16]),
                    ..slot.lease.record(&self.name, seq, &self.labels)
                },
                claim: ClaimKey {
                    space: self.name.clone(),
                    seq,
                    token: claim.token,
                },
                claim_expires_at: claim.expires_at,
                partial: slot.partial().cloned(),
                result: slot.result().cloned(),
                attempts: slot.lease.attempts,
            });
            slot.work_mut().claim = Some(claim);
            let (owner, expired_at, attempts) =
                (slot.lease.owner, slot.lease.expires_at, slot.lease.attempts);
            if attempts == 1 {
                self.record_owner(seq, expired_at, SlotEventKind::Expired, owner, None);
            }
            let detail = Some(format!("attempt {attempts}"));
            self.record(seq, now, SlotEventKind::Claimed, &req.cleaner, detail);
        }
        claimed
    }

    /// Resolve one claimed slot; `parked` receives recorded work to park. `epoch_of` reads
    /// a resource's current epoch: a fenced lease's work is committed only while its epoch
    /// is current (I9, `check_recovery_fence`).
    pub(crate) fn resolve_claimed(
        &mut self,
        item: Resolve,
        now: Timestamp,
        epoch_of: &dyn Fn(&str) -> u64,
        outcome: &mut BatchOutcome,
        park: &mut dyn FnMut(ParkedWork) -> u64,
    ) -> Result<Reply, LeaseError> {
        let seq = item.claim.seq;
        let lost = || LeaseError::ClaimLost {
            space: self.name.clone(),
            seq,
        };
        let slot = self.slots.get(seq).ok_or_else(|| LeaseError::UnknownSlot {
            space: self.name.clone(),
            seq,
        })?;
        let holds = slot.state() == SlotState::Leased
            && slot
                .claim()
                .is_some_and(|c| c.token == item.claim.token && c.expires_at > now);
        if !holds {
            return Err(lost());
        }
        let lease = slot.lease.record(&self.name, seq, &self.labels);
        if let Some(existing) = self.committed.get(&lease.operation_id, &self.slots) {
            self.supersede(seq, existing, now, outcome);
            return Ok(Reply::Resolved(ResolveOutcome::Duplicate { existing }));
        }
        let current_epoch = lease.fence.as_ref().map_or(0, |f| epoch_of(&f.resource));
        let checked = check_recovery_fence(item.resolution, lease.fence.as_ref(), current_epoch);
        let outcome_reply = match checked.resolution {
            Resolution::Recover {
                body,
                recovery_type,
                placement,
            } => {
                let recovery = RecoveryInfo {
                    original_seq: seq,
                    original_operation_id: lease.operation_id.clone(),
                    recovered_at: now,
                    recovery_type,
                };
                let at = match placement {
                    Placement::InPlace => {
                        self.committed.insert(&lease.operation_id, seq);
                        let content = Content::recovered(body, recovery, &mut self.labels);
                        self.close_slot(seq, content, now, outcome);
                        seq
                    }
                    Placement::NewSeq => {
                        let n = self.append_committed(&lease, body, recovery, now);
                        self.supersede(seq, n, now, outcome);
                        n
                    }
                };
                ResolveOutcome::Recovered { seq: at }
            }
            Resolution::Gap {
                detail,
                park: wants_park,
            } => {
                let slot = self.slots.get(seq).expect("checked above");
                let parked = (wants_park && slot.has_recorded_work()).then(|| {
                    park(ParkedWork {
                        id: 0,
                        space: self.name.clone(),
                        original_seq: seq,
                        operation_id: lease.operation_id.clone(),
                        projection_type: lease.projection_type.clone(),
                        partial: slot.partial().cloned(),
                        result: slot.result().cloned(),
                        attempts: 0,
                        state: checked.park_state,
                        note: detail.clone(),
                        parked_at: now,
                        resequenced_at_seq: None,
                    })
                });
                if let Some(id) = parked {
                    let detail = Some(format!("recovery queue item {id}"));
                    self.record(seq, now, SlotEventKind::Parked, "recovery", detail);
                }
                let gap = Content::gap(GapReason::Expired, None, detail);
                self.close_slot(seq, gap, now, outcome);
                ResolveOutcome::Gapped { parked }
            }
        };
        Ok(Reply::Resolved(outcome_reply))
    }

    fn supersede(&mut self, seq: u64, by: u64, now: Timestamp, outcome: &mut BatchOutcome) {
        let gap = Content::gap(GapReason::Superseded, Some(by), None);
        self.close_slot(seq, gap, now, outcome);
    }

    /// Allocate the next seq already COMMITTED with recovered work; returns it.
    pub(crate) fn append_committed(
        &mut self,
        lease: &LeaseRecord,
        body: OperationBody,
        recovery: RecoveryInfo,
        now: Timestamp,
    ) -> u64 {
        let n = self.slots.len() + 1;
        let record = LeaseRecord {
            seq: n,
            token: Token::random(),
            leased_at: now,
            expires_at: now,
            renewals: 0,
            ..lease.clone()
        };
        self.committed.insert(&lease.operation_id, n);
        let content = Content::recovered(body, recovery, &mut self.labels);
        let kept = SlotLease::new(
            &record,
            record.operation_id.as_str().into(),
            &mut self.labels,
        );
        self.slots.push(Slot::resolved(kept, now, content));
        // The new slot is resolved at birth; the watermark may pass it once earlier ones are.
        while self
            .slots
            .get(self.watermark + 1)
            .is_some_and(Slot::is_resolved)
        {
            self.watermark += 1;
        }
        n
    }

    /// Commit late work (see `seqlease_core::late`): decide with the shared planner, then
    /// append the operation at a fresh seq; the original slot is left as it is.
    pub(crate) fn commit_late(
        &mut self,
        item: LateCommit,
        now: Timestamp,
        epoch_of: &dyn Fn(&str) -> u64,
        outcome: &mut BatchOutcome,
    ) -> Result<Reply, LeaseError> {
        self.slot_with_token(&item.key)?;
        let slot = self.slots.get(item.key.seq).expect("checked above");
        let lease = slot.lease.record(&self.name, item.key.seq, &self.labels);
        let facts = LateSlot {
            state: slot.state(),
            expires_at: lease.expires_at,
            fence: lease.fence.as_ref(),
            current_epoch: lease.fence.as_ref().map_or(0, |f| epoch_of(&f.resource)),
            committed_at: self.committed.get(&lease.operation_id, &self.slots),
        };
        if let LatePlan::Answer(answer) = plan_late(&item.key, facts, now)? {
            return Ok(Reply::Late(answer));
        }
        let recovery = RecoveryInfo {
            original_seq: lease.seq,
            original_operation_id: lease.operation_id.clone(),
            recovered_at: now,
            recovery_type: RecoveryType::Late,
        };
        let seq = self.append_committed(&lease, item.body, recovery, now);
        outcome.note_watermark(&self.name, self.watermark);
        let detail = Some(format!("late work re-sequenced at seq {seq}"));
        self.record(
            lease.seq,
            now,
            SlotEventKind::Recovered,
            lease.owner.as_str(),
            detail,
        );
        Ok(Reply::Late(LateOutcome::Resequenced {
            seq,
            original_seq: lease.seq,
        }))
    }

    /// Apply a recovery-queue action that needs this space (re-sequencing).
    pub(crate) fn resequence(
        &mut self,
        item: &mut ParkedWork,
        body: OperationBody,
        recovery_type: RecoveryType,
        now: Timestamp,
        outcome: &mut BatchOutcome,
    ) {
        let at = match self.committed.get(&item.operation_id, &self.slots) {
            Some(existing) => existing,
            None => {
                let lease = LeaseRecord {
                    space: self.name.clone(),
                    seq: item.original_seq,
                    token: Token([0; 16]),
                    operation_id: item.operation_id.clone(),
                    projection_type: item.projection_type.clone(),
                    owner: "recovery".into(),
                    fence: None,
                    leased_at: now,
                    expires_at: now,
                    renewals: 0,
                };
                let recovery = RecoveryInfo {
                    original_seq: item.original_seq,
                    original_operation_id: item.operation_id.clone(),
                    recovered_at: now,
                    recovery_type,
                };
                let n = self.append_committed(&lease, body, recovery, now);
                outcome.note_watermark(&self.name, self.watermark);
                n
            }
        };
        item.state = ParkedState::Resequenced;
        item.resequenced_at_seq = Some(at);
    }
}
