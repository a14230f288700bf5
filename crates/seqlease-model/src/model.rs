//! The transitions: what workers, cleaners and the clock can do, and how the store answers.
//!
//! Each store transition is one atomic step, as one command of a store batch is (the memory
//! store applies each command under the space lock; the SQL stores run a batch in one
//! transaction, which only removes interleavings). The store's answers follow
//! `seqlease-memory` (`space.rs`, `recovery.rs`, `resources.rs`) line by line where the
//! protocol is decided; a [`Mutation`] changes exactly one of those decisions.

use stateright::{Model, Property};

use crate::properties;
use crate::state::{
    Claim, ClaimedSlot, Cleaner, Content, Epoch, GapReason, Monitor, Outcome, Owner, Parked,
    Refusal, Resource, Seq, Slot, State, Time, Worker,
};

/// How big a world to check. Every behaviour within it is explored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bound {
    /// Projection workers; each takes at most one sequence lease.
    pub workers: u8,
    /// How many of the workers (the last ones) hold the resource and fence their lease.
    pub fenced_workers: u8,
    /// Distinct operation ids; worker `w` works on operation `w % operations`, so workers
    /// share operation ids when `operations < workers` (the I6 case).
    pub operations: u8,
    /// Cleaners (cleanup services in different processes).
    pub cleaners: u8,
    /// Faults the cleaners may suffer in all while holding claims: a crash (the cleaner
    /// restarts empty-handed) or a stall (it resolves after its claims ran out).
    pub cleaner_faults: u8,
    /// Slots the space may allocate (grants and new-sequence placements beyond it are not
    /// explored).
    pub max_slots: u8,
    /// Workers act up to this instant; after it, only cleaners act and the clock runs to
    /// [`Bound::settle_time`].
    pub max_time: Time,
    /// Sequence lease TTL.
    pub lease_ttl: Time,
    /// Cleaner claim TTL.
    pub claim_ttl: Time,
    /// Resource lease TTL.
    pub resource_ttl: Time,
    /// Most slots one claim takes (`CleanupConfig::batch_size`).
    pub claim_limit: u8,
    /// A cleaner that crashed comes back under the *same* cleaner id (a fixed
    /// `CleanupConfig::cleaner`). `false` models the default id, which is random per
    /// instance, so a restarted cleaner is a new cleaner to the store.
    pub cleaner_id_survives_restart: bool,
}

impl Bound {
    /// The bound the default `cargo test` checks exhaustively: 3 workers (2 fenced, 2
    /// operation ids), 2 cleaners that may each crash once, 4 slots, worker activity up to
    /// t = 3.
    pub const DEFAULT: Bound = Bound {
        workers: 3,
        fenced_workers: 2,
        operations: 2,
        cleaners: 2,
        cleaner_faults: 1,
        max_slots: 4,
        max_time: 3,
        lease_ttl: 2,
        claim_ttl: 1,
        resource_ttl: 2,
        claim_limit: 2,
        cleaner_id_survives_restart: false,
    };

    /// Until when the clock may run once every worker has stopped: long enough for the
    /// last lease to expire and for every cleaner crash to cost one claim TTL. The bounded
    /// liveness property (I10) says every slot is resolved by then.
    pub fn settle_time(&self) -> Time {
        let crashes = self.cleaner_faults;
        self.max_time + self.lease_ttl + self.claim_ttl * (crashes + 1)
    }

    /// Whether worker `w` is fenced.
    pub fn is_fenced(&self, w: u8) -> bool {
        w >= self.workers - self.fenced_workers
    }

    /// Worker `w`'s operation id.
    pub fn operation_of(&self, w: u8) -> u8 {
        w % self.operations
    }
}

/// One seeded protocol bug. Each must make the checker find a counterexample to the
/// guarantee named by [`Mutation::breaks`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mutation {
    /// A commit does not check `expires_at > now`.
    CommitIgnoresExpiry,
    /// A commit does not compare its fence epoch with the resource's current epoch.
    FenceNotChecked,
    /// Cleaners claim the highest expired seq first.
    CleanerSkipsOrder,
    /// A cleaner may claim in a space where another cleaner holds live claims.
    CleanersNotExclusive,
    /// A resolve does not check that its claim is still live and the slot still LEASED
    /// (a dead cleaner's late resolve is applied).
    DoubleResolve,
    /// Recovery's gap drops recorded work instead of parking it.
    GapDropsWork,
    /// A release with recorded work writes `GAP(released)` instead of handing the slot to
    /// recovery.
    ReleaseDropsWork,
    /// A commit does not consult the operation index (no duplicate detection).
    CommitSkipsOperationIndex,
    /// The watermark jumps to the highest resolved seq, over open slots.
    WatermarkSkipsOpenSlots,
    /// A grant reuses the seq of a released slot instead of allocating a new one.
    GrantReusesReleasedSeq,
    /// Taking a resource over from an expired holder keeps the old epoch.
    EpochKeptOnTakeover,
}

impl Mutation {
    /// Every mutation.
    pub const ALL: [Mutation; 11] = [
        Mutation::CommitIgnoresExpiry,
        Mutation::FenceNotChecked,
        Mutation::CleanerSkipsOrder,
        Mutation::CleanersNotExclusive,
        Mutation::DoubleResolve,
        Mutation::GapDropsWork,
        Mutation::ReleaseDropsWork,
        Mutation::CommitSkipsOperationIndex,
        Mutation::WatermarkSkipsOpenSlots,
        Mutation::GrantReusesReleasedSeq,
        Mutation::EpochKeptOnTakeover,
    ];

    /// The property the checker must find violated.
    pub fn breaks(self) -> &'static str {
        match self {
            Mutation::CommitIgnoresExpiry => properties::I3,
            Mutation::FenceNotChecked => properties::I9,
            Mutation::CleanerSkipsOrder | Mutation::CleanersNotExclusive => properties::I8,
            Mutation::DoubleResolve => properties::I2,
            Mutation::GapDropsWork | Mutation::ReleaseDropsWork => properties::I5,
            Mutation::CommitSkipsOperationIndex => properties::I6,
            Mutation::WatermarkSkipsOpenSlots => properties::I7,
            Mutation::GrantReusesReleasedSeq => properties::I1,
            Mutation::EpochKeptOnTakeover => properties::I9,
        }
    }
}

/// How a cleaner resolves the slot at the head of its batch (the recovery chain's verdict
/// and the configured placement; the model explores every verdict the chain could give).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Choice {
    /// Recovered work committed into the slot itself.
    RecoverInPlace,
    /// Recovered work committed at a fresh seq; the slot becomes a superseded gap.
    RecoverNewSeq,
    /// `GAP(expired)`, recorded work parked (a skipped or failed step).
    GapAndPark,
    /// `GAP(expired)` with nothing recorded.
    Gap,
}

/// One step of the system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// The store clock advances by one.
    Tick,
    /// Fenced worker acquires the resource (waiting while another holds it live).
    Acquire(u8),
    /// Fenced worker renews its resource lease (the keeper's renewal).
    RenewResource(u8),
    /// Worker is granted the next slot (fenced at its epoch when fenced).
    Grant(u8),
    /// Worker renews its sequence lease.
    Renew(u8),
    /// Worker records partial work.
    RecordPartial(u8),
    /// Worker records its completed result.
    RecordResult(u8),
    /// Worker commits.
    Commit(u8),
    /// Worker releases its lease.
    Release(u8),
    /// Worker crashes, abandoning its lease.
    Crash(u8),
    /// Cleaner claims expired slots.
    Claim(u8),
    /// Cleaner resolves the first slot of its batch.
    Resolve(u8, Choice),
    /// Cleaner crashes, dropping its batch (its claims run out).
    CrashCleaner(u8),
    /// Cleaner stalls (a long pause) holding its batch: the clock may pass its claims'
    /// expiry, and it resolves late.
    StallCleaner(u8),
    /// Cleaner re-sequences parked item `i`.
    Resequence(u8, u8),
}

/// The protocol model: a bound, and optionally one seeded bug.
#[derive(Clone, Debug)]
pub struct ProtocolModel {
    /// The world to explore.
    pub bound: Bound,
    /// A seeded bug, or `None` for the protocol as built.
    pub mutation: Option<Mutation>,
}

impl ProtocolModel {
    /// The protocol as built, within `bound`.
    pub fn new(bound: Bound) -> Self {
        ProtocolModel {
            bound,
            mutation: None,
        }
    }

    /// The protocol with one seeded bug.
    pub fn mutated(bound: Bound, mutation: Mutation) -> Self {
        ProtocolModel {
            bound,
            mutation: Some(mutation),
        }
    }

    fn mutated_by(&self, m: Mutation) -> bool {
        self.mutation == Some(m)
    }

    /// The clock's limit in `state`: `max_time` while a worker is active, then settle time.
    fn time_limit(&self, state: &State) -> Time {
        if self.workers_active(state) {
            self.bound.max_time
        } else {
            self.bound.settle_time()
        }
    }

    /// Whether the clock may advance: below its limit; once every worker has stopped, only
    /// while a slot still waits for recovery; and never while a cleaner that has not
    /// stalled holds claims (a running cleaner resolves its batch within its claim TTL: one
    /// tick of the model; a stalled one lets its claims run out). Once every worker has
    /// stopped, an idle cleaner with something to claim claims it before the clock moves
    /// (the cleanup interval is shorter than a tick); before that, cleaners may lag.
    fn may_tick(&self, s: &State) -> bool {
        let workers_done = !self.workers_active(s);
        let settling = workers_done
            && (0..self.bound.cleaners).any(|c| {
                s.cleaners[usize::from(c)].batch.is_empty() && !self.claim(s, c).is_empty()
            });
        s.now < self.time_limit(s)
            && (!workers_done || s.slots.iter().any(Slot::is_leased))
            && !settling
            && s.cleaners.iter().all(|c| c.batch.is_empty() || c.stalled)
    }

    /// A worker holds a lease, or may still start one (before `max_time`).
    fn workers_active(&self, s: &State) -> bool {
        s.workers.iter().any(|w| match w {
            Worker::Holding { .. } => true,
            Worker::Idle | Worker::Fenced { .. } => s.now < self.bound.max_time,
            Worker::Done(_) => false,
        })
    }

    fn can_allocate(&self, state: &State) -> bool {
        state.slots.len() < usize::from(self.bound.max_slots)
    }
}

/// The lease checks of the contract (`space.rs::live_slot`): token, LEASED, unexpired.
fn live_check(slot: &Slot, token: u8, now: Time) -> Result<(), Refusal> {
    if slot.token != token {
        return Err(Refusal::WrongToken);
    }
    if !slot.is_leased() {
        return Err(Refusal::Resolved);
    }
    if slot.expires_at <= now {
        return Err(Refusal::Expired);
    }
    Ok(())
}

impl ProtocolModel {
    /// `space.rs::close_slot`: resolve a slot and move the watermark over resolved slots.
    fn close_slot(&self, s: &mut State, seq: Seq, content: Content) {
        let slot = s.slot_mut(seq);
        slot.resolved = Some(content);
        slot.first.get_or_insert(content);
        slot.partial = false;
        slot.result = false;
        slot.claim = None;
        if self.mutated_by(Mutation::WatermarkSkipsOpenSlots) {
            s.watermark = s.watermark.max(seq);
        }
        advance_watermark(s);
    }

    /// `recovery.rs::append_committed`: a fresh slot, born COMMITTED with recovered work.
    fn append_committed(&self, s: &mut State, op: u8) -> Seq {
        let content = Content::Op {
            op,
            recovered: true,
        };
        s.slots.push(Slot {
            op,
            owner: Owner::Recovery,
            token: 0,
            expires_at: s.now,
            fence: None,
            partial: false,
            result: false,
            resolved: Some(content),
            claim: None,
            attempts: 0,
            grants: 1,
            had_work: false,
            first: Some(content),
            expired_below_at_claim: 0,
        });
        let n = s.last_seq();
        s.committed[usize::from(op)] = Some(n);
        advance_watermark(s);
        n
    }

    fn grant(&self, s: &mut State, w: u8, fence: Option<Epoch>) {
        let op = self.bound.operation_of(w);
        s.grants += 1;
        let fresh = Slot {
            op,
            owner: Owner::Worker(w),
            token: s.grants,
            expires_at: s.now + self.bound.lease_ttl,
            fence,
            partial: false,
            result: false,
            resolved: None,
            claim: None,
            attempts: 0,
            grants: 1,
            had_work: false,
            first: None,
            expired_below_at_claim: 0,
        };
        let reused = self
            .mutated_by(Mutation::GrantReusesReleasedSeq)
            .then(|| {
                s.slots.iter().position(|x| {
                    x.resolved
                        == Some(Content::Gap {
                            reason: GapReason::Released,
                            superseded_by: None,
                        })
                })
            })
            .flatten();
        let seq = match reused {
            Some(i) => {
                let old = &s.slots[i];
                let slot = Slot {
                    grants: old.grants + 1,
                    first: old.first,
                    ..fresh
                };
                s.slots[i] = slot;
                i as Seq + 1
            }
            None => {
                s.slots.push(fresh);
                s.last_seq()
            }
        };
        s.workers[usize::from(w)] = Worker::Holding {
            seq,
            token: s.grants,
        };
    }

    fn commit(&self, s: &mut State, w: u8, seq: Seq, token: u8) {
        let now = s.now;
        let slot = s.slot(seq).clone();
        let done = |s: &mut State, o: Outcome| s.workers[usize::from(w)] = Worker::Done(o);
        if slot.token != token {
            return done(s, Outcome::Refused(Refusal::WrongToken));
        }
        if matches!(slot.resolved, Some(Content::Op { .. })) {
            // The holder retrying, or recovery committed its work in place first.
            return done(s, Outcome::AlreadyCommitted);
        }
        if !slot.is_leased() {
            return done(s, Outcome::Refused(Refusal::Resolved));
        }
        if slot.expires_at <= now && !self.mutated_by(Mutation::CommitIgnoresExpiry) {
            return done(s, Outcome::Refused(Refusal::Expired));
        }
        let current = s.resource.epoch;
        if let Some(epoch) = slot.fence
            && epoch != current
            && !self.mutated_by(Mutation::FenceNotChecked)
        {
            return done(s, Outcome::Refused(Refusal::StaleEpoch));
        }
        // Accepted: the monitor writes down any authority the write lacked (I3, I9).
        if slot.expires_at <= now {
            s.monitor.unauthorised_commit = Some((seq, "lease expired by the store clock"));
        }
        if let Some(epoch) = slot.fence
            && epoch != current
        {
            s.monitor.unauthorised_commit = Some((seq, "fence epoch not current"));
            s.monitor.stale_fence_accepted = Some((seq, epoch, current));
        }
        let existing = s.committed[usize::from(slot.op)]
            .filter(|_| !self.mutated_by(Mutation::CommitSkipsOperationIndex));
        if let Some(existing) = existing {
            let gap = Content::Gap {
                reason: GapReason::Superseded,
                superseded_by: Some(existing),
            };
            self.close_slot(s, seq, gap);
            return done(s, Outcome::Duplicate);
        }
        s.committed[usize::from(slot.op)] = Some(seq);
        let op = Content::Op {
            op: slot.op,
            recovered: false,
        };
        self.close_slot(s, seq, op);
        done(s, Outcome::Committed)
    }

    /// The id cleaner `c` claims under: its index, and its incarnation unless ids survive
    /// restarts.
    fn cleaner_id(&self, s: &State, c: u8) -> u8 {
        let incarnation = if self.bound.cleaner_id_survives_restart {
            0
        } else {
            s.cleaners[usize::from(c)].restarts
        };
        c * 16 + incarnation
    }

    /// `recovery.rs::claim`.
    fn claim(&self, s: &State, c: u8) -> Vec<Seq> {
        let now = s.now;
        let c = self.cleaner_id(s, c);
        let other_busy = s.slots.iter().any(|x| {
            x.is_leased()
                && x.claim
                    .is_some_and(|k| k.expires_at > now && k.cleaner != c)
        });
        if other_busy && !self.mutated_by(Mutation::CleanersNotExclusive) {
            return Vec::new();
        }
        let mut claimable: Vec<Seq> = (1..=s.last_seq())
            .filter(|&q| {
                let x = s.slot(q);
                // Its own live claims too (a restarted same-id cleaner resumes, I8).
                x.is_expired(now)
                    && !x
                        .claim
                        .is_some_and(|k| k.expires_at > now && k.cleaner != c)
            })
            .collect();
        if self.mutated_by(Mutation::CleanerSkipsOrder) {
            claimable.reverse();
        }
        claimable.truncate(usize::from(self.bound.claim_limit));
        claimable
    }

    fn resolve(&self, s: &mut State, c: u8, choice: Choice) {
        let now = s.now;
        let cleaner = &mut s.cleaners[usize::from(c)];
        let item = cleaner.batch.remove(0);
        cleaner.stalled &= !cleaner.batch.is_empty();
        let seq = item.seq;
        let slot = s.slot(seq).clone();
        let holds = slot.is_leased()
            && slot
                .claim
                .is_some_and(|k| k.attempt == item.attempt && k.expires_at > now);
        if !holds && !self.mutated_by(Mutation::DoubleResolve) {
            return; // ClaimLost: writes nothing
        }
        // I8 monitor: was a slot that had expired before this one was claimed left behind?
        let behind = (1..seq).find(|&lower| {
            slot.expired_below_at_claim & (1 << (lower - 1)) != 0 && s.slot(lower).is_leased()
        });
        if let Some(lower) = behind {
            s.monitor.resolved_out_of_order = Some((seq, lower));
        }
        let superseded = |by| Content::Gap {
            reason: GapReason::Superseded,
            superseded_by: Some(by),
        };
        if let Some(existing) = s.committed[usize::from(slot.op)] {
            return self.close_slot(s, seq, superseded(existing));
        }
        match choice {
            Choice::RecoverInPlace => {
                s.committed[usize::from(slot.op)] = Some(seq);
                let op = Content::Op {
                    op: slot.op,
                    recovered: true,
                };
                self.close_slot(s, seq, op);
            }
            Choice::RecoverNewSeq => {
                let n = self.append_committed(s, slot.op);
                self.close_slot(s, seq, superseded(n));
            }
            Choice::GapAndPark | Choice::Gap => {
                let park = choice == Choice::GapAndPark && !self.mutated_by(Mutation::GapDropsWork);
                if park && slot.has_work() {
                    s.parked.push(Parked {
                        slot: seq,
                        op: slot.op,
                        resequenced_at: None,
                    });
                }
                let gap = Content::Gap {
                    reason: GapReason::Expired,
                    superseded_by: None,
                };
                self.close_slot(s, seq, gap);
            }
        }
    }

    /// Ghost bookkeeping after every step: what readers may now read, the highest epoch.
    fn observe(&self, s: &mut State) {
        while s.published.len() < usize::from(s.watermark) {
            let seq = s.published.len() as Seq + 1;
            let content = s.slot(seq).resolved;
            s.published.push(content.unwrap_or(Content::Gap {
                reason: GapReason::Expired,
                superseded_by: Some(0),
            }));
        }
        s.max_epoch = s.max_epoch.max(s.resource.epoch);
    }
}

/// Move the watermark over every resolved slot after it.
fn advance_watermark(s: &mut State) {
    while usize::from(s.watermark) < s.slots.len() && !s.slot(s.watermark + 1).is_leased() {
        s.watermark += 1;
    }
}

impl Model for ProtocolModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let b = &self.bound;
        vec![State {
            now: 0,
            slots: Vec::new(),
            grants: 0,
            watermark: 0,
            committed: vec![None; usize::from(b.operations)],
            parked: Vec::new(),
            resource: Resource {
                epoch: 0,
                holder: None,
                expires_at: 0,
            },
            workers: vec![Worker::Idle; usize::from(b.workers)],
            cleaners: vec![
                Cleaner {
                    batch: Vec::new(),
                    faults: 0,
                    restarts: 0,
                    stalled: false,
                };
                usize::from(b.cleaners)
            ],
            published: Vec::new(),
            max_epoch: 0,
            monitor: Monitor::default(),
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        let b = &self.bound;
        let now = s.now;
        if self.may_tick(s) {
            actions.push(Action::Tick);
        }
        let may_start = now < b.max_time;
        for w in 0..b.workers {
            match s.workers[usize::from(w)] {
                Worker::Idle | Worker::Fenced { .. } if !may_start => {}
                Worker::Idle if b.is_fenced(w) => {
                    if s.resource.live_holder(now).is_none() {
                        actions.push(Action::Acquire(w));
                    }
                }
                Worker::Idle => {
                    if self.can_allocate(s) {
                        actions.push(Action::Grant(w));
                    }
                }
                Worker::Fenced { .. } => {
                    if self.can_allocate(s) {
                        actions.push(Action::Grant(w));
                    }
                    if s.resource.live_holder(now) == Some(w)
                        && now + b.resource_ttl > s.resource.expires_at
                    {
                        actions.push(Action::RenewResource(w));
                    }
                }
                Worker::Holding { seq, token } => {
                    let slot = s.slot(seq);
                    let live = live_check(slot, token, now).is_ok();
                    if !live || now + b.lease_ttl > slot.expires_at {
                        actions.push(Action::Renew(w));
                    }
                    if !live || !slot.partial {
                        actions.push(Action::RecordPartial(w));
                    }
                    if !live || !slot.result {
                        actions.push(Action::RecordResult(w));
                    }
                    actions.push(Action::Commit(w));
                    actions.push(Action::Release(w));
                    actions.push(Action::Crash(w));
                    if b.is_fenced(w)
                        && s.resource.live_holder(now) == Some(w)
                        && now + b.resource_ttl > s.resource.expires_at
                    {
                        actions.push(Action::RenewResource(w));
                    }
                }
                Worker::Done(_) => {}
            }
        }
        for c in 0..b.cleaners {
            let cleaner = &s.cleaners[usize::from(c)];
            match cleaner.batch.first() {
                None => {
                    if !self.claim(s, c).is_empty() {
                        actions.push(Action::Claim(c));
                    }
                    for (i, p) in s.parked.iter().enumerate() {
                        let committed = s.committed[usize::from(p.op)].is_some();
                        if p.resequenced_at.is_none() && (committed || self.can_allocate(s)) {
                            actions.push(Action::Resequence(c, i as u8));
                        }
                    }
                }
                Some(item) => {
                    if item.partial || item.result {
                        actions.push(Action::Resolve(c, Choice::RecoverInPlace));
                        if self.can_allocate(s) {
                            actions.push(Action::Resolve(c, Choice::RecoverNewSeq));
                        }
                        actions.push(Action::Resolve(c, Choice::GapAndPark));
                    } else {
                        actions.push(Action::Resolve(c, Choice::Gap));
                    }
                    let faults: u8 = s.cleaners.iter().map(|c| c.faults).sum();
                    if faults < b.cleaner_faults {
                        actions.push(Action::CrashCleaner(c));
                        if !cleaner.stalled {
                            actions.push(Action::StallCleaner(c));
                        }
                    }
                }
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let b = &self.bound;
        let mut s = last.clone();
        let now = s.now;
        match action {
            Action::Tick => s.now += 1,
            Action::Acquire(w) => {
                // A change of holder (the resource was free or its lease expired).
                let takeover = s.resource.holder.is_some_and(|h| h != w);
                if !(takeover && self.mutated_by(Mutation::EpochKeptOnTakeover)) {
                    s.resource.epoch += 1;
                }
                if takeover && s.resource.epoch <= last.resource.epoch {
                    s.monitor.epoch_not_advanced = Some((last.resource.epoch, s.resource.epoch));
                }
                s.resource.holder = Some(w);
                s.resource.expires_at = now + b.resource_ttl;
                s.workers[usize::from(w)] = Worker::Fenced {
                    epoch: s.resource.epoch,
                };
            }
            Action::RenewResource(_) => s.resource.expires_at = now + b.resource_ttl,
            Action::Grant(w) => match s.workers[usize::from(w)] {
                Worker::Fenced { epoch } if epoch != s.resource.epoch => {
                    s.workers[usize::from(w)] = Worker::Done(Outcome::Refused(Refusal::StaleEpoch));
                }
                Worker::Fenced { epoch } => self.grant(&mut s, w, Some(epoch)),
                _ => self.grant(&mut s, w, None),
            },
            Action::Renew(w) | Action::RecordPartial(w) | Action::RecordResult(w) => {
                let Worker::Holding { seq, token } = s.workers[usize::from(w)] else {
                    return None;
                };
                if let Err(refusal) = live_check(s.slot(seq), token, now) {
                    s.workers[usize::from(w)] = Worker::Done(Outcome::Refused(refusal));
                } else {
                    let slot = s.slot_mut(seq);
                    match action {
                        Action::Renew(_) => slot.expires_at = now + b.lease_ttl,
                        Action::RecordPartial(_) => slot.partial = true,
                        _ => slot.result = true,
                    }
                    slot.had_work |= slot.has_work();
                }
            }
            Action::Commit(w) => {
                let Worker::Holding { seq, token } = s.workers[usize::from(w)] else {
                    return None;
                };
                self.commit(&mut s, w, seq, token);
            }
            Action::Release(w) => {
                let Worker::Holding { seq, token } = s.workers[usize::from(w)] else {
                    return None;
                };
                s.workers[usize::from(w)] = match live_check(s.slot(seq), token, now) {
                    Err(refusal) => Worker::Done(Outcome::Refused(refusal)),
                    Ok(()) => {
                        if s.slot(seq).has_work() && !self.mutated_by(Mutation::ReleaseDropsWork) {
                            // Recorded work is never dropped: expire now, recovery takes over.
                            s.slot_mut(seq).expires_at = now;
                        } else {
                            let gap = Content::Gap {
                                reason: GapReason::Released,
                                superseded_by: None,
                            };
                            self.close_slot(&mut s, seq, gap);
                        }
                        Worker::Done(Outcome::Released)
                    }
                };
            }
            Action::Crash(w) => s.workers[usize::from(w)] = Worker::Done(Outcome::Crashed),
            Action::Claim(c) => {
                let seqs = self.claim(&s, c);
                let id = self.cleaner_id(&s, c);
                let expired_mask = (1..=s.last_seq())
                    .filter(|&q| s.slot(q).is_expired(now))
                    .fold(0u8, |m, q| m | (1 << (q - 1)));
                let mut batch = Vec::with_capacity(seqs.len());
                for seq in seqs {
                    let slot = s.slot_mut(seq);
                    slot.attempts += 1;
                    slot.claim = Some(Claim {
                        cleaner: id,
                        attempt: slot.attempts,
                        expires_at: now + b.claim_ttl,
                    });
                    slot.expired_below_at_claim = expired_mask & ((1u8 << (seq - 1)) - 1);
                    batch.push(ClaimedSlot {
                        seq,
                        attempt: slot.attempts,
                        partial: slot.partial,
                        result: slot.result,
                    });
                }
                s.cleaners[usize::from(c)].batch = batch;
            }
            Action::Resolve(c, choice) => self.resolve(&mut s, c, choice),
            Action::CrashCleaner(c) => {
                let cleaner = &mut s.cleaners[usize::from(c)];
                cleaner.batch.clear();
                cleaner.stalled = false;
                cleaner.faults += 1;
                cleaner.restarts += 1;
            }
            Action::StallCleaner(c) => {
                let cleaner = &mut s.cleaners[usize::from(c)];
                cleaner.stalled = true;
                cleaner.faults += 1;
            }
            Action::Resequence(_, i) => {
                let op = s.parked[usize::from(i)].op;
                let at = match s.committed[usize::from(op)] {
                    Some(existing) => existing,
                    None => self.append_committed(&mut s, op),
                };
                s.parked[usize::from(i)].resequenced_at = Some(at);
            }
        }
        self.observe(&mut s);
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        properties::all()
    }
}
