//! The cleanup service: every expired lease becomes recovered work or an explained gap.
//!
//! Any number of processes may run it against one store. Each cycle it reads the expired
//! backlog, classifies the load, and for every space with expired slots claims them in
//! batches, lowest seq first (one cleaner per space at a time, I8), runs each through the
//! recovery chain the load allows, and resolves the whole batch in one store transaction.
//! What the chain recovers is committed (in place by default, or at a new seq); what it
//! could not or was not allowed to recover is parked in the recovery queue with the slot
//! turned into `GAP(expired)`, so readers move on and nothing recorded is lost (I5). When
//! load is low, parked work is re-sequenced; work that keeps failing goes to manual handling.
//!
//! A cleaner that dies between claim and resolve leaves its claim to expire; another cleaner
//! takes the slots over. A claim that expired under a slow cleaner is refused at resolve
//! (`ClaimLost`), so a slot is never resolved twice.
//!
//! ```no_run
//! # async fn demo(engine: seqlease::Engine) -> Result<(), seqlease::Error> {
//! let cleanup = engine.cleanup().build().await?;
//! let handle = cleanup.start();
//! // … the application runs …
//! handle.stop().await;
//! # Ok(()) }
//! ```

mod cascade;
mod chain;
mod pacing;
mod policy;

use std::sync::Arc;
use std::time::Duration;

use seqlease_core::{
    ClaimRequest, ExpiredSlot, LeaseRecord, ParkedAction, ParkedCommand, ParkedQuery, ParkedState,
    ParkedWork, Placement, Reply, Resolution, Resolve, ResolveOutcome, SpaceName, Token,
};
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;

pub(crate) use cascade::RecoveryMode;
pub use cascade::{CascadeConfig, ModeChange};
pub use chain::{PartialWorkResolver, PartialWorkStep, RecoveryStep, RetryStep, StepOutcome};
pub use policy::{LoadClassifier, LoadLevel, LoadSignals, LoadThresholds};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::telemetry::GapKind;
use cascade::Cascade;
use chain::{Chain, Verdict};
use futures::StreamExt;
use pacing::Pacer;
use tracing::Instrument;

/// Settings of the cleanup service.
#[derive(Clone, Debug)]
pub struct CleanupConfig {
    /// Pause between cycles.
    pub interval: Duration,
    /// Slots claimed (and resolved in one transaction) at a time.
    pub batch_size: usize,
    /// Spaces a cycle cleans at once (each space's slots stay in seq order under one
    /// cleaner, I8). A cascade over many spaces costs a claim and a resolve per space,
    /// a few milliseconds each on PostgreSQL: this overlaps them. 1: one after another.
    pub spaces_at_once: usize,
    /// How long a claim holds before another cleaner may take the slots over.
    pub claim_ttl: Duration,
    /// This cleaner's id (recorded on claims and queue actions).
    pub cleaner: String,
    /// Where recovered work goes.
    pub placement: Placement,
    /// Automatic attempts on parked work before it goes to manual handling.
    pub max_attempts: u32,
    /// Parked items re-sequenced per cycle (when load is low).
    pub parked_batch: usize,
    /// The load classifier.
    pub classifier: LoadClassifier,
    /// Cascade handling.
    pub cascade: CascadeConfig,
    /// Recorded lease-history events older than this are pruned (`None`: kept).
    pub history_retention: Option<Duration>,
    /// How often housekeeping runs (expired resource leases released, history pruned): on
    /// the first cycle, then at most this often.
    pub maintenance_interval: Duration,
}

impl Default for CleanupConfig {
    fn default() -> Self {
        CleanupConfig {
            interval: Duration::from_secs(1),
            batch_size: 500,
            spaces_at_once: 8,
            claim_ttl: Duration::from_secs(30),
            cleaner: format!(
                "cleanup-{}-{:04x}",
                std::process::id(),
                rand::random::<u16>()
            ),
            placement: Placement::InPlace,
            max_attempts: 5,
            parked_batch: 100,
            classifier: LoadClassifier::default(),
            cascade: CascadeConfig::default(),
            history_retention: Some(Duration::from_secs(7 * 24 * 3600)),
            maintenance_interval: Duration::from_secs(60),
        }
    }
}

/// What one cycle did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CycleReport {
    /// The load level the cycle ran at.
    pub level: Option<LoadLevel>,
    /// Whether recovery mode was on.
    pub recovery_mode: bool,
    /// Expired slots at the start.
    pub backlog: u64,
    /// Slots claimed.
    pub claimed: u64,
    /// Slots whose work was recovered and committed, by step name.
    pub recovered: Vec<(&'static str, u64)>,
    /// Slots turned into `GAP(expired)`.
    pub gapped: u64,
    /// Of those, whose recorded work was parked.
    pub parked: u64,
    /// Slots whose operation was already committed elsewhere (superseded gaps).
    pub duplicates: u64,
    /// Claims lost to another cleaner before resolve.
    pub claims_lost: u64,
    /// Parked items re-sequenced into the log.
    pub resequenced: u64,
    /// Parked items whose attempt failed (moved to manual at `max_attempts`).
    pub parked_failures: u64,
    /// Lease-history events pruned by the retention setting.
    pub history_pruned: u64,
    /// Resource leases found expired and released (audited as expired).
    pub resources_expired: u64,
    /// Pauses for live traffic in recovery mode (one per `batch_size` slots claimed,
    /// counted across spaces).
    pub pauses: u64,
}

impl CycleReport {
    /// Slots recovered by any step.
    pub fn recovered_total(&self) -> u64 {
        self.recovered.iter().map(|(_, n)| n).sum()
    }

    /// Whether the cycle changed anything: resolved or re-sequenced a slot, moved parked
    /// work, expired a resource lease or pruned history.
    pub fn did_work(&self) -> bool {
        self.claimed > 0
            || self.resequenced > 0
            || self.parked_failures > 0
            || self.resources_expired > 0
            || self.history_pruned > 0
    }

    fn count_recovered(&mut self, step: &'static str) {
        self.add_recovered(step, 1);
    }

    fn add_recovered(&mut self, step: &'static str, count: u64) {
        match self.recovered.iter_mut().find(|(s, _)| *s == step) {
            Some((_, n)) => *n += count,
            None => self.recovered.push((step, count)),
        }
    }

    /// Add what one space's cleaning did.
    fn absorb(&mut self, space: SpaceCleaning) {
        let part = space.report;
        self.claimed += part.claimed;
        for (step, n) in part.recovered {
            self.add_recovered(step, n);
        }
        self.gapped += part.gapped;
        self.parked += part.parked;
        self.duplicates += part.duplicates;
        self.claims_lost += part.claims_lost;
    }
}

/// What cleaning one space did, and how long its store calls and recovery steps took.
#[derive(Default)]
struct SpaceCleaning {
    report: CycleReport,
    store_latency: Mean,
    step_latency: Mean,
}

/// A mean of durations, for the load classifier's moving averages.
#[derive(Default)]
struct Mean {
    total: Duration,
    count: u32,
}

impl Mean {
    fn add(&mut self, sample: Duration) {
        self.total += sample;
        self.count += 1;
    }

    /// `average` moved by this mean (unchanged if there were no samples).
    fn fold_into(&self, average: Duration) -> Duration {
        if self.count == 0 {
            average
        } else {
            ewma(average, self.total / self.count)
        }
    }
}

type ModeCallback = Arc<dyn Fn(ModeChange) + Send + Sync>;
type CycleCallback = Arc<dyn Fn(&CycleReport) + Send + Sync>;

/// Configures a [`Cleanup`]; from [`Engine::cleanup`].
pub struct CleanupBuilder {
    engine: Engine,
    config: CleanupConfig,
    partial: PartialWorkStep,
    extra: Vec<Arc<dyn RecoveryStep>>,
    on_mode: Option<ModeCallback>,
    on_cycle: Option<CycleCallback>,
}

impl CleanupBuilder {
    pub(crate) fn new(engine: Engine) -> Self {
        CleanupBuilder {
            engine,
            config: CleanupConfig::default(),
            partial: PartialWorkStep::default(),
            extra: Vec::new(),
            on_mode: None,
            on_cycle: None,
        }
    }

    /// Replace the settings.
    pub fn config(mut self, config: CleanupConfig) -> Self {
        self.config = config;
        self
    }

    /// Register the resolver that turns partial work of `projection_type` into an operation.
    pub fn resolver(
        mut self,
        projection_type: impl Into<String>,
        resolver: impl PartialWorkResolver,
    ) -> Self {
        self.partial.insert(projection_type, Arc::new(resolver));
        self
    }

    /// Add a step after the built-in ones (partial work, retry).
    pub fn step(mut self, step: impl RecoveryStep) -> Self {
        self.extra.push(Arc::new(step));
        self
    }

    /// Be told when recovery mode starts and ends.
    pub fn on_recovery_mode(mut self, f: impl Fn(ModeChange) + Send + Sync + 'static) -> Self {
        self.on_mode = Some(Arc::new(f));
        self
    }

    /// Be handed the report of every cycle that [`Cleanup::start`] runs (an operator's
    /// progress line, an application's own log). Called on the service's task: keep it
    /// short. A failed cycle is logged as a warning instead.
    pub fn on_cycle(mut self, f: impl Fn(&CycleReport) + Send + Sync + 'static) -> Self {
        self.on_cycle = Some(Arc::new(f));
        self
    }

    /// Build the service. Fails with a typed error when the store cannot do recovery.
    pub async fn build(self) -> Result<Cleanup> {
        self.engine.store().expired_backlog().await?; // surfaces Unsupported at once
        let mut steps: Vec<Arc<dyn RecoveryStep>> =
            vec![Arc::new(self.partial), Arc::new(RetryStep)];
        steps.extend(self.extra);
        Ok(Cleanup {
            inner: Arc::new(CleanupInner {
                engine: self.engine,
                config: self.config,
                chain: Chain::new(steps),
                on_mode: self.on_mode,
                on_cycle: self.on_cycle,
                state: Mutex::new(State::default()),
            }),
        })
    }
}

/// The cleanup service. [`Cleanup::run_once`] runs one cycle (tests, operators);
/// [`Cleanup::start`] runs cycles in the background.
#[derive(Clone)]
pub struct Cleanup {
    inner: Arc<CleanupInner>,
}

struct CleanupInner {
    engine: Engine,
    config: CleanupConfig,
    chain: Chain,
    on_mode: Option<ModeCallback>,
    on_cycle: Option<CycleCallback>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    cascade: Cascade,
    store_latency: Duration,
    step_latency: Duration,
    /// When housekeeping last ran (`None`: not yet).
    last_maintenance: Option<Instant>,
    /// Slots claimed since the last recovery-mode pause.
    claimed_since_pause: usize,
}

/// A running cleanup service; stops when [`CleanupHandle::stop`] is called or it is dropped.
pub struct CleanupHandle {
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl CleanupHandle {
    /// Stop after the current cycle and wait for it.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for CleanupHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl Cleanup {
    /// Run cycles every `interval` until stopped.
    pub fn start(&self) -> CleanupHandle {
        let (stop, mut stopped) = watch::channel(false);
        let this = self.clone();
        let task = tokio::spawn(async move {
            let engine = &this.inner.engine;
            if let Ok(now) = engine.now().await {
                // The heartbeat alert watches this service from now on.
                engine.inner.telemetry.cleanup_started(now);
            }
            loop {
                match this.run_once().await {
                    Ok(report) => {
                        if report.did_work() {
                            tracing::debug!(?report, "cleanup cycle");
                        }
                        if let Some(f) = &this.inner.on_cycle {
                            f(&report);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cleanup cycle failed; retrying next interval")
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(this.inner.config.interval) => {}
                    _ = stopped.wait_for(|s| *s) => break,
                }
            }
            // Stopped on purpose: not a reason to alert.
            engine.inner.telemetry.cleanup_stopped();
        });
        CleanupHandle {
            stop,
            task: Some(task),
        }
    }

    /// Run one cycle: recover or gap every expired slot, then (at low load) re-sequence
    /// parked work.
    pub async fn run_once(&self) -> Result<CycleReport> {
        let result = self.cycle().await;
        let engine = &self.inner.engine;
        let telemetry = &engine.inner.telemetry;
        if let Err(Error::Store(e)) = &result {
            telemetry.store_error(e);
        }
        if let Ok(now) = engine.now().await {
            let level = result.as_ref().ok().and_then(|r| r.level);
            telemetry.cleanup_cycle(now, result.is_ok(), level, engine.in_recovery_mode());
        }
        result
    }

    async fn cycle(&self) -> Result<CycleReport> {
        let inner = &self.inner;
        let store = inner.engine.store();
        let config = &inner.config;
        let mut state = inner.state.lock().await;

        let started = Instant::now();
        let backlog_by_space = store.expired_backlog().await?;
        let spaces = store.list_spaces().await?;
        state.store_latency = ewma(state.store_latency, started.elapsed() / 2);
        let backlog: u64 = backlog_by_space.iter().map(|(_, n)| n).sum();
        let telemetry = &inner.engine.inner.telemetry;
        telemetry.cleanup_observed(&spaces, &backlog_by_space);

        if let Some(change) = state.cascade.observe(backlog, &config.cascade) {
            let active = matches!(change, ModeChange::Entered { .. });
            inner
                .engine
                .inner
                .recovery_mode
                .set(active, &config.cascade);
            tracing::info!(
                ?change,
                "recovery mode {}",
                if active { "entered" } else { "left" }
            );
            if let Some(f) = &inner.on_mode {
                f(change);
            }
        }
        let utilisation = spaces
            .iter()
            .map(|s| s.in_flight as f64 / s.capacity.max(1) as f64)
            .fold(0.0, f64::max);
        let signals = LoadSignals {
            expired_backlog: backlog,
            utilisation,
            store_latency: state.store_latency,
            step_latency: state.step_latency,
        };
        let level = config.classifier.classify(&signals);
        let mut report = CycleReport {
            level: Some(level),
            recovery_mode: state.cascade.active(),
            backlog,
            ..CycleReport::default()
        };

        let pacer = Pacer::new(
            state.cascade.active(),
            config.batch_size,
            config.cascade.pause,
            state.claimed_since_pause,
        );
        let mut spaces = futures::stream::iter(backlog_by_space)
            .map(|(space, _)| self.clean_space(space, level, &pacer))
            .buffer_unordered(config.spaces_at_once.max(1));
        while let Some(cleaned) = spaces.next().await {
            let cleaned = cleaned?;
            state.store_latency = cleaned.store_latency.fold_into(state.store_latency);
            state.step_latency = cleaned.step_latency.fold_into(state.step_latency);
            report.absorb(cleaned);
        }
        drop(spaces);
        (state.claimed_since_pause, report.pauses) = pacer.finish();
        if level == LoadLevel::Low {
            self.resequence_parked(&mut report).await?;
        }
        let due = state
            .last_maintenance
            .is_none_or(|t| t.elapsed() >= config.maintenance_interval);
        if due {
            state.last_maintenance = Some(Instant::now());
            self.maintain(&mut report).await?;
            self.measure_queue().await;
        }
        Ok(report)
    }

    /// Housekeeping that need not run every cycle: release expired resource leases (so
    /// queries and the audit trail say so) and prune old lease history.
    async fn maintain(&self, report: &mut CycleReport) -> Result<()> {
        let inner = &self.inner;
        let store = inner.engine.store();
        match store
            .resources(vec![seqlease_core::ResourceCommand::ExpireStale])
            .await
        {
            Ok(outcome) => {
                if let Some(Ok(Reply::Resource(seqlease_core::ResourceReply::Count(n)))) =
                    outcome.replies.first()
                {
                    report.resources_expired = *n;
                }
            }
            Err(seqlease_core::StoreError::Unsupported { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(retention) = inner.config.history_retention {
            let before = inner.engine.now().await?.minus(retention);
            match store.prune_slot_history(before).await {
                Ok(n) => report.history_pruned = n,
                Err(seqlease_core::StoreError::Unsupported { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Refresh the recovery-queue size gauges (bounded queries, at housekeeping only).
    async fn measure_queue(&self) {
        const CAP: usize = 1000;
        let store = self.inner.engine.store();
        let mut sizes = [0u64; 2];
        for (i, state) in [ParkedState::Parked, ParkedState::Manual]
            .into_iter()
            .enumerate()
        {
            let query = ParkedQuery {
                space: None,
                states: vec![state],
                limit: CAP,
            };
            match store.parked(&query).await {
                Ok(items) => sizes[i] = items.len() as u64,
                Err(e) => {
                    tracing::debug!(error = %e, "could not measure the recovery queue");
                    return;
                }
            }
        }
        self.inner
            .engine
            .inner
            .telemetry
            .queue_sizes(sizes[0], sizes[1]);
    }

    /// Claim, recover and resolve the expired slots of `space`, batch after batch, until
    /// none is left. Runs beside other spaces of the cycle; `pacer` is shared with them.
    async fn clean_space(
        &self,
        space: SpaceName,
        level: LoadLevel,
        pacer: &Pacer,
    ) -> Result<SpaceCleaning> {
        let inner = &self.inner;
        let config = &inner.config;
        let store = inner.engine.store();
        let (allow_any, allow_expensive) = policy::allowed(level);
        let mut cleaned = SpaceCleaning::default();
        let report = &mut cleaned.report;
        loop {
            pacer.wait().await;
            let request = ClaimRequest {
                space: space.clone(),
                cleaner: config.cleaner.clone(),
                ttl: config.claim_ttl,
                limit: config.batch_size,
            };
            let span = tracing::info_span!(target: "seqlease", "seqlease.claim", space = %space, claimed = tracing::field::Empty);
            let claimed = store
                .claim_expired(&request)
                .instrument(span.clone())
                .await?;
            if claimed.is_empty() {
                return Ok(cleaned);
            }
            span.record("claimed", claimed.len());
            report.claimed += claimed.len() as u64;
            let telemetry = &inner.engine.inner.telemetry;
            for slot in claimed.iter().filter(|s| s.attempts == 1) {
                // Counted once, at the first claim; the claim was taken at
                // claim_expires_at - claim_ttl by the store's clock.
                let claimed_at = slot.claim_expires_at.minus(config.claim_ttl);
                let lease = telemetry.lease(&slot.lease.space, &slot.lease.projection_type);
                telemetry.expired(&lease, claimed_at.since(slot.lease.expires_at));
            }
            let mut items = Vec::with_capacity(claimed.len());
            let mut steps = Vec::with_capacity(claimed.len());
            for slot in &claimed {
                let t = Instant::now();
                let span = tracing::info_span!(target: "seqlease", "seqlease.recover", space = %slot.lease.space, seq = slot.lease.seq);
                let verdict = inner
                    .chain
                    .run(slot, allow_expensive, allow_any)
                    .instrument(span)
                    .await;
                cleaned.step_latency.add(t.elapsed());
                let (resolution, step) = match verdict {
                    Verdict::Recovered {
                        body,
                        recovery_type,
                        step,
                    } => (
                        Resolution::Recover {
                            body,
                            recovery_type,
                            placement: config.placement,
                        },
                        Some(step),
                    ),
                    Verdict::Gap {
                        skipped,
                        failure,
                        failed_step,
                    } => {
                        if let Some(step) = failed_step {
                            telemetry.recovery(
                                step,
                                false,
                                &slot.lease.space,
                                &slot.lease.projection_type,
                            );
                        }
                        let recorded = slot.partial.is_some() || slot.result.is_some();
                        let detail = match (failure, skipped, recorded) {
                            (Some(e), _, _) => e,
                            (None, true, true) => format!("recovery deferred under {} load; recorded work parked", level.as_str()),
                            (None, _, true) => "no recovery step applies to the recorded work; parked for an operator".into(),
                            (None, _, false) => format!("lease of {} expired with no recorded work", slot.lease.owner),
                        };
                        (
                            Resolution::Gap {
                                detail: Some(detail),
                                park: recorded,
                            },
                            None,
                        )
                    }
                };
                items.push(Resolve {
                    claim: slot.claim.clone(),
                    resolution,
                });
                steps.push(step);
            }
            let t = Instant::now();
            let outcome = store.resolve(items).await?;
            cleaned.store_latency.add(t.elapsed());
            inner.engine.inner.spaces.apply_progress(&outcome.progress);
            for ((reply, step), slot) in outcome.replies.into_iter().zip(steps).zip(&claimed) {
                let space_t = telemetry.space(&slot.lease.space);
                let projection_type = &slot.lease.projection_type;
                match reply {
                    Ok(Reply::Resolved(ResolveOutcome::Recovered { .. })) => {
                        let step = step.unwrap_or("unknown");
                        report.count_recovered(step);
                        telemetry.recovery(step, true, &slot.lease.space, projection_type);
                        if config.placement == Placement::NewSeq {
                            telemetry.gap(&space_t, GapKind::Superseded);
                        }
                        telemetry.slot_resolved(&space_t);
                    }
                    Ok(Reply::Resolved(ResolveOutcome::Duplicate { .. })) => {
                        report.duplicates += 1;
                        telemetry.gap(&space_t, GapKind::Superseded);
                        telemetry.slot_resolved(&space_t);
                    }
                    Ok(Reply::Resolved(ResolveOutcome::Gapped { parked })) => {
                        report.gapped += 1;
                        report.parked += u64::from(parked.is_some());
                        telemetry.recovery("gap", true, &slot.lease.space, projection_type);
                        telemetry.gap(&space_t, GapKind::Expired);
                        telemetry.slot_resolved(&space_t);
                    }
                    Ok(other) => {
                        tracing::error!(?other, "store answered a resolve with another reply")
                    }
                    Err(e) => {
                        tracing::info!(error = %e, "claim lost before resolve");
                        report.claims_lost += 1;
                    }
                }
            }
            // Pace by slots, not by batches: a backlog spread over many spaces makes a
            // small batch per space, and a pause each made 10,000 spaces of one expired
            // lease take 10,000 pauses (112 s).
            pacer.claimed(claimed.len());
        }
    }

    async fn resequence_parked(&self, report: &mut CycleReport) -> Result<()> {
        let inner = &self.inner;
        let config = &inner.config;
        let store = inner.engine.store();
        let query = ParkedQuery {
            space: None,
            states: vec![ParkedState::Parked],
            limit: config.parked_batch,
        };
        let items = store.parked(&query).await?;
        if items.is_empty() {
            return Ok(());
        }
        let mut commands = Vec::with_capacity(items.len());
        for item in &items {
            let action = match inner.chain.run(&as_expired(item), true, true).await {
                Verdict::Recovered {
                    body,
                    recovery_type,
                    ..
                } => ParkedAction::Resequence {
                    body,
                    recovery_type,
                },
                Verdict::Gap { failure, .. } => ParkedAction::Failed {
                    error: failure.unwrap_or_else(|| "no recovery step applies".into()),
                    max_attempts: config.max_attempts,
                },
            };
            commands.push(ParkedCommand {
                id: item.id,
                action,
                actor: config.cleaner.clone(),
            });
        }
        let outcome = store.settle_parked(commands).await?;
        inner.engine.inner.spaces.apply_progress(&outcome.progress);
        let telemetry = &inner.engine.inner.telemetry;
        for (reply, item) in outcome.replies.into_iter().zip(&items) {
            match reply {
                Ok(Reply::Parked(done)) if done.state == ParkedState::Resequenced => {
                    report.resequenced += 1;
                    telemetry.recovery("resequence", true, &item.space, &item.projection_type);
                }
                Ok(_) => {
                    report.parked_failures += 1;
                    telemetry.recovery("resequence", false, &item.space, &item.projection_type);
                }
                Err(e) => tracing::info!(error = %e, "parked item changed under us"),
            }
        }
        Ok(())
    }
}

/// A parked item dressed as an expired slot, so the same chain can recover it.
fn as_expired(item: &ParkedWork) -> ExpiredSlot {
    let lease = LeaseRecord {
        space: item.space.clone(),
        seq: item.original_seq,
        token: Token([0; 16]),
        operation_id: item.operation_id.clone(),
        projection_type: item.projection_type.clone(),
        owner: "recovery-queue".into(),
        fence: None,
        leased_at: item.parked_at,
        expires_at: item.parked_at,
        renewals: 0,
    };
    ExpiredSlot {
        claim: seqlease_core::ClaimKey {
            space: item.space.clone(),
            seq: item.original_seq,
            token: Token([0; 16]),
        },
        lease,
        claim_expires_at: item.parked_at,
        partial: item.partial.clone(),
        result: item.result.clone(),
        attempts: item.attempts,
    }
}

fn ewma(previous: Duration, sample: Duration) -> Duration {
    if previous.is_zero() {
        sample
    } else {
        (previous * 7 + sample) / 8
    }
}
