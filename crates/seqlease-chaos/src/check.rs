//! The checker: the guarantees of DESIGN §3 verified over what a run left behind.
//!
//! Inputs, all in one store's run directory: `manifest.json` (the store, the run's
//! settings), `journals/*.jsonl` (what every worker process was told, [`crate::journal`]),
//! `faults.jsonl` (what the orchestrator did, and when), `watermark.jsonl` (the watermark
//! sampled during the run) and the store itself: the log read through a
//! [`LogReader`](seqlease::LogReader), each slot's lease, the lease history of every slot,
//! the recovery queue and the resource-lease audit history.
//!
//! | check | guarantee |
//! |---|---|
//! | the log holds exactly seqs `1..=W`, `W` = last allocated seq, nothing in flight | I1, I2, I10 (every slot resolved once the owners are gone and a cleaner runs) |
//! | every `committed` journal line is in the log at its seq with its operation id; every `duplicate` line points at the operation's one seq, and its own slot is a superseded gap pointing there | I4, I6 |
//! | no operation id is committed at two seqs | I6 |
//! | a commit the store refused (stale epoch, expired, resolved) did not land anyway; an operation whose fenced grant was refused is nowhere | I3, I9 |
//! | every committed fenced entry carries an epoch its own process acquired, committed before the next epoch of the resource was acquired (audit history) | I9 |
//! | resource epochs never go down in the audit history, and each acquisition raises them | I9 |
//! | every acknowledged recorded result ends committed or parked in the recovery queue | I5 |
//! | the sampled watermark never went down; reading `1..=W` twice gives the same entries; nothing is readable above `W` | I7 |
//! | a slot a cleaner resolved was not resolved before a lower slot that had already expired when it was claimed (lease history: claims, expiry, resolution times) | I8 |
//!
//! It also measures, for each `SIGKILL`ed worker process, how long after the kill the last
//! of its slots in flight was resolved (I10), from the entries' `resolved_at` (the store's
//! clock; PostgreSQL's and the processes' clocks are the same machine's).
//!
//! The fence check compares the commit's `resolved_at` with the time the next epoch was
//! acquired (audit history). Both stores read a batch's clock once the batch holds its locks
//! (PostgreSQL: the rows it touches; SQLite: the file's write lock), so the stamps follow the
//! order in which the transactions ran and no skew is allowed. (This harness found the
//! SQLite store reading it *before* waiting for the write lock; a batch of a process paused
//! or queued there was stamped seconds early.)
//!
//! Tolerance: the I8 check allows 250 ms between a lower slot's expiry and the higher
//! slot's claim, because on PostgreSQL a dead-owner probe may set `expires_at` in a
//! transaction that commits while a claim's snapshot is already taken.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use seqlease::core::recovery::ParkedQuery;
use seqlease::core::{HistoryQuery, ResourceEventKind, SlotEventKind};
use seqlease::{Entry, EntryContent, GapReason, Space};
use serde::{Deserialize, Serialize};

use crate::journal::{self, FaultRecord, Kind, Line, WatermarkSample};
use crate::summary::Summary;
use crate::{ChaosError, SPACE, store};

/// What the orchestrator records about a store's run for the checker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// `sqlite` or `postgres`.
    pub store: String,
    /// The store URL the checker uses (PostgreSQL: the server, not the proxy).
    pub db: String,
    /// Length of the fault phase, seconds.
    pub duration_s: u64,
    /// Worker processes at a time.
    pub processes: u32,
    /// Worker tasks per process.
    pub workers: u32,
    /// The run's seed.
    pub seed: u64,
}

/// One broken guarantee.
pub type Violation = String;

/// How much later than a lower slot's expiry a higher slot's claim must be before resolving
/// the higher one first counts against I8 (see the module docs).
const I8_TOLERANCE_MICROS: i64 = 250_000;

/// Paths inside a store's run directory.
pub fn manifest_path(dir: &Path) -> PathBuf {
    dir.join("manifest.json")
}

/// Check the run in `dir`; the summary's `violations` lists what is broken.
pub async fn check(dir: &Path) -> Result<Summary, ChaosError> {
    let text = std::fs::read_to_string(manifest_path(dir))
        .map_err(|e| ChaosError::io(&manifest_path(dir), e))?;
    let manifest: Manifest = serde_json::from_str(&text).map_err(ChaosError::json)?;
    let mut s = Summary {
        store: manifest.store.clone(),
        duration_s: manifest.duration_s,
        processes: manifest.processes,
        workers: manifest.workers,
        seed: manifest.seed,
        ..Summary::default()
    };
    let engine = store::engine(
        &manifest.db,
        store::config("chaos-checker", Duration::from_secs(5)),
    )
    .await?;
    let space = engine.space(SPACE).await?;
    let store = engine.store().clone();
    let info = space.info().await?;
    s.slots = info.last_seq;
    let w = info.watermark;
    if w != info.last_seq || info.in_flight != 0 {
        s.violations.push(format!(
            "I2/I10: not every slot resolved at the end: watermark {w}, last seq {}, {} in flight",
            info.last_seq, info.in_flight
        ));
    }

    // The log, twice (I7: deterministic replay), and nothing above W.
    let entries = read_log(&space, w).await?;
    if read_log(&space, w).await? != entries {
        s.violations
            .push("I7: reading 1..=W twice gave different entries".into());
    }
    if !store.read(space.name(), w + 1, 10).await?.is_empty() {
        s.violations
            .push(format!("I7: an entry above the watermark {w} is readable"));
    }
    let seqs_ok = entries.iter().zip(1..).all(|(e, n)| e.seq == n) && entries.len() as u64 == w;
    if !seqs_ok {
        s.violations.push(format!(
            "I1: the log does not hold exactly seqs 1..={w} ({} entries)",
            entries.len()
        ));
    }
    let by_seq: HashMap<u64, &Entry> = entries.iter().map(|e| (e.seq, e)).collect();
    let mut committed_at: HashMap<&str, Vec<u64>> = HashMap::new();
    for e in &entries {
        match &e.content {
            EntryContent::Operation(op) => {
                s.committed_entries += 1;
                if op.recovery.is_some() {
                    s.recovered_entries += 1;
                }
                committed_at
                    .entry(op.operation_id.as_str())
                    .or_default()
                    .push(e.seq);
            }
            EntryContent::Gap(g) => *s.gaps.entry(g.reason.as_str().into()).or_default() += 1,
        }
    }
    for (op, seqs) in &committed_at {
        if seqs.len() > 1 {
            s.duplicated += 1;
            s.violations
                .push(format!("I6: operation {op} committed at seqs {seqs:?}"));
        }
    }
    let is_at = |op: &str, seq: u64| committed_at.get(op).is_some_and(|v| v.contains(&seq));
    let worker_commit_at = |op: &str, seq: u64| {
        by_seq
            .get(&seq)
            .and_then(|e| e.operation())
            .is_some_and(|o| o.operation_id == op && o.recovery.is_none())
    };

    // The journals.
    let parked = store
        .parked(&ParkedQuery {
            space: Some(space.name().clone()),
            states: Vec::new(),
            limit: 1_000_000,
        })
        .await?;
    let parked_ops: HashSet<&str> = parked
        .iter()
        .filter(|p| {
            matches!(
                p.state,
                seqlease::core::recovery::ParkedState::Parked
                    | seqlease::core::recovery::ParkedState::Manual
            )
        })
        .map(|p| p.operation_id.as_str())
        .collect();
    for line in journal_lines(dir)? {
        let op = line.op.as_deref().unwrap_or("");
        let seq = line.seq.unwrap_or(0);
        match line.kind {
            Kind::Committed => {
                s.commits_acknowledged += 1;
                if !is_at(op, seq) {
                    s.lost += 1;
                    s.violations.push(format!(
                        "I4: acknowledged commit of {op} at seq {seq} is not in the log there (found at {:?})",
                        committed_at.get(op)
                    ));
                }
            }
            Kind::Duplicate => {
                s.duplicates_acknowledged += 1;
                if !is_at(op, seq) {
                    s.lost += 1;
                    s.violations.push(format!(
                        "I4/I6: duplicate of {op} was pointed at seq {seq}, which does not hold it"
                    ));
                }
                let slot = line.slot.unwrap_or(0);
                let superseded = by_seq.get(&slot).and_then(|e| e.gap()).is_some_and(|g| {
                    g.reason == GapReason::Superseded && g.superseded_by == Some(seq)
                });
                if !superseded {
                    s.violations.push(format!(
                        "I6: the slot {slot} of a duplicate commit of {op} is not a gap superseded by {seq}"
                    ));
                }
            }
            Kind::Recorded => {
                s.results_recorded += 1;
                if !committed_at.contains_key(op) && !parked_ops.contains(op) {
                    s.results_lost += 1;
                    s.violations.push(format!(
                        "I5: the result recorded for {op} under seq {seq} is neither committed nor parked"
                    ));
                }
            }
            Kind::Rejected => {
                let during = line.during.as_deref().unwrap_or("?");
                let reason = line.reason.as_deref().unwrap_or("?");
                *s.stale_writes_rejected
                    .entry(format!("{reason} at {during}"))
                    .or_default() += 1;
                let landed = match during {
                    "commit" => worker_commit_at(op, seq),
                    _ => line.op.is_some() && committed_at.contains_key(op),
                };
                if landed {
                    s.stale_writes_accepted += 1;
                    s.violations.push(format!(
                        "I3/I9: {during} of {op} (seq {seq}) was refused ({reason}) but the log holds it"
                    ));
                }
            }
            Kind::Ambiguous => s.ambiguous += 1,
            Kind::Abandoned | Kind::Acquired => {}
        }
    }

    // Fenced entries against the resource audit history (I9).
    let audit = engine.resource_history(None, 10_000_000).await?;
    let mut acquired: HashMap<&str, Vec<(u64, i64, &str)>> = HashMap::new();
    let mut last_epoch: HashMap<&str, u64> = HashMap::new();
    for ev in &audit {
        let last = last_epoch.entry(ev.resource.as_str()).or_insert(0);
        let grew = ev.epoch > *last;
        if ev.epoch < *last || (ev.kind == ResourceEventKind::Acquired && !grew) {
            s.violations.push(format!(
                "I9: resource {} went from epoch {last} to {} ({})",
                ev.resource,
                ev.epoch,
                ev.kind.as_str()
            ));
        }
        *last = (*last).max(ev.epoch);
        if ev.kind == ResourceEventKind::Acquired {
            acquired.entry(ev.resource.as_str()).or_default().push((
                ev.epoch,
                ev.at.as_micros(),
                ev.agent.as_str(),
            ));
        }
    }
    for e in &entries {
        let Some(op) = e.operation() else { continue };
        if op.projection_type != "fenced" {
            continue;
        }
        let Some(view) = store.slot(space.name(), e.seq).await? else {
            continue;
        };
        let Some(fence) = view.lease.fence else {
            s.violations
                .push(format!("fenced entry {} has no fence", e.seq));
            continue;
        };
        let history = acquired
            .get(fence.resource.as_str())
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let own = history.iter().find(|a| a.0 == fence.epoch);
        if !own.is_some_and(|a| a.2.starts_with(&format!("{}w", e.owner))) {
            s.stale_writes_accepted += 1;
            s.violations.push(format!(
                "I9: entry {} committed under {}@{} which its owner {} never acquired ({own:?})",
                e.seq, fence.resource, fence.epoch, e.owner
            ));
        }
        if let Some(next) = history.iter().find(|a| a.0 > fence.epoch)
            && next.1 < e.resolved_at.as_micros()
        {
            s.stale_writes_accepted += 1;
            s.violations.push(format!(
                "I9: entry {} committed{} at {} under {}@{}, after epoch {} was acquired at {}",
                e.seq,
                if op.recovery.is_some() {
                    " by recovery"
                } else {
                    ""
                },
                e.resolved_at.as_micros(),
                fence.resource,
                fence.epoch,
                next.0,
                next.1
            ));
        }
    }

    // Watermark samples (I7).
    let samples: Vec<WatermarkSample> = journal::read(&dir.join("watermark.jsonl"))?;
    s.watermark_samples = samples.len() as u64;
    for pair in samples.windows(2) {
        if pair[1].watermark < pair[0].watermark {
            s.watermark_regressions += 1;
            s.violations.push(format!(
                "I7: watermark went from {} to {} at {}",
                pair[0].watermark, pair[1].watermark, pair[1].at
            ));
        }
    }
    if let Some(last) = samples.last()
        && last.watermark > w
    {
        s.violations.push(format!(
            "I7: a sample saw watermark {} above the final {w}",
            last.watermark
        ));
    }

    // Faults and resolution times (I10).
    let faults: Vec<FaultRecord> = journal::read(&dir.join("faults.jsonl"))?;
    for f in &faults {
        *s.faults.entry(f.kind.clone()).or_default() += 1;
        if f.kind != "sigkill" {
            continue;
        }
        let Some(owner) = &f.target else { continue };
        let mut n = 0;
        let mut last = f.at;
        for e in entries.iter().filter(|e| &e.owner == owner) {
            if e.resolved_at.as_micros() >= f.at {
                n += 1;
                last = last.max(e.resolved_at.as_micros());
            }
        }
        s.resolutions
            .push((owner.clone(), n, (last - f.at) as f64 / 1000.0));
    }

    check_ordered_recovery(&space, &by_seq, &mut s).await?;
    Ok(s)
}

/// Every journal line of every worker process.
fn journal_lines(dir: &Path) -> Result<Vec<Line>, ChaosError> {
    let jdir = dir.join("journals");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&jdir) {
        Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
        Err(e) => return Err(ChaosError::io(&jdir, e)),
    };
    files.sort();
    let mut out = Vec::new();
    for f in files {
        out.extend(journal::read::<Line>(&f)?);
    }
    Ok(out)
}

/// The log `1..=w`, through a reader.
async fn read_log(space: &Space, w: u64) -> Result<Vec<Entry>, ChaosError> {
    let mut reader = space.reader(1);
    let mut out = Vec::new();
    while reader.position() <= w {
        let page = reader.try_next_page().await?;
        if page.is_empty() {
            break;
        }
        out.extend(page.into_iter().filter(|e| e.seq <= w));
    }
    Ok(out)
}

/// I8 from the lease history: see the module docs.
async fn check_ordered_recovery(
    space: &Space,
    by_seq: &HashMap<u64, &Entry>,
    s: &mut Summary,
) -> Result<(), ChaosError> {
    let store = space.engine().store();
    // The last claim of every slot a cleaner claimed.
    let mut claimed: BTreeMap<u64, i64> = BTreeMap::new();
    let mut from = 1;
    const PAGE: usize = 20_000;
    loop {
        let query = HistoryQuery {
            space: space.name().clone(),
            seq: None,
            from_seq: from,
            limit: PAGE,
        };
        let mut events = store.slot_history(&query).await?;
        let full = events.len() == PAGE;
        let Some(last_seq) = events.last().map(|e| e.seq) else {
            break;
        };
        if full {
            // The last slot may be cut short: read it again with the next page.
            events.retain(|e| e.seq < last_seq);
            if events.is_empty() {
                return Err(ChaosError::Setup(format!(
                    "slot {last_seq} has more than {PAGE} history events"
                )));
            }
        }
        for ev in &events {
            if ev.kind == SlotEventKind::Claimed {
                let at = claimed.entry(ev.seq).or_insert(i64::MIN);
                *at = (*at).max(ev.at.as_micros());
            }
        }
        if !full {
            break;
        }
        from = last_seq;
    }
    // (seq, expires_at, claimed_at, resolved_at) of every slot a cleaner resolved.
    let mut slots = Vec::with_capacity(claimed.len());
    for (&seq, &claimed_at) in &claimed {
        let (Some(entry), Some(view)) = (by_seq.get(&seq), store.slot(space.name(), seq).await?)
        else {
            continue;
        };
        slots.push((
            seq,
            view.lease.expires_at.as_micros(),
            claimed_at,
            entry.resolved_at.as_micros(),
        ));
    }
    for (i, b) in slots.iter().enumerate() {
        for a in &slots[..i] {
            // a < b by seq; a was expired when b was claimed, yet resolved after b.
            if a.1 + I8_TOLERANCE_MICROS <= b.2 && a.3 > b.3 {
                s.violations.push(format!(
                    "I8: slot {} resolved at {} before slot {} (expired at {}, resolved at {})",
                    b.0, b.3, a.0, a.1, a.3
                ));
            }
        }
    }
    Ok(())
}
