//! The figures of one checked run, and the table that shows them side by side per store.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What the checker found for one store.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// `sqlite` or `postgres`.
    pub store: String,
    /// Length of the fault phase, seconds.
    pub duration_s: u64,
    /// Worker processes at a time, and worker tasks in each.
    pub processes: u32,
    /// Worker tasks per process.
    pub workers: u32,
    /// The seed of the fault schedule and the workers' choices.
    pub seed: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, u64>,
    /// Slots allocated (the final `last_seq`).
    pub slots: u64,
    /// Entries holding an operation.
    pub committed_entries: u64,
    /// Of those, committed by recovery (the worker's recorded result).
    pub recovered_entries: u64,
    /// Gaps, by reason.
    pub gaps: BTreeMap<String, u64>,
    /// Commits the workers were acknowledged (`Committed` / `AlreadyCommitted`).
    pub commits_acknowledged: u64,
    /// Second commits of an operation answered with the seq where it lives.
    pub duplicates_acknowledged: u64,
    /// Acknowledged commits or duplicates not found in the log where the store said (I4).
    pub lost: u64,
    /// Operation ids committed more than once (I6).
    pub duplicated: u64,
    /// Writes the store refused for a stale lease or epoch, by reason (`stale_epoch`,
    /// `expired`, `resolved`, …) and call (`grant`/`commit`).
    pub stale_writes_rejected: BTreeMap<String, u64>,
    /// Writes from a stale lease or epoch that the log holds anyway (I3, I9).
    pub stale_writes_accepted: u64,
    /// Commits whose outcome the worker never learned (connection lost past its retries).
    pub ambiguous: u64,
    /// Results recorded under a lease (acknowledged), and of those neither committed nor
    /// parked at the end (I5).
    pub results_recorded: u64,
    /// Recorded results lost (I5).
    pub results_lost: u64,
    /// Watermark samples taken during the run, and how often one was below the one before.
    pub watermark_samples: u64,
    /// Watermark regressions (I7).
    pub watermark_regressions: u64,
    /// Resolution time of each killed owner's slots: (owner, slots in flight, ms from the
    /// kill until the last was resolved).
    pub resolutions: Vec<(String, u64, f64)>,
    /// Every violation found, in words.
    pub violations: Vec<String>,
}

impl Summary {
    /// Resolution-time percentile (ms) over the killed owners that had slots in flight.
    pub fn resolution_percentile(&self, p: f64) -> Option<f64> {
        let mut ms: Vec<f64> = self
            .resolutions
            .iter()
            .filter(|r| r.1 > 0)
            .map(|r| r.2)
            .collect();
        if ms.is_empty() {
            return None;
        }
        ms.sort_by(f64::total_cmp);
        let rank = ((p / 100.0) * ms.len() as f64).ceil() as usize;
        Some(ms[rank.clamp(1, ms.len()) - 1])
    }
}

fn join(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "0".into();
    }
    let total: u64 = map.values().sum();
    let parts: Vec<String> = map.iter().map(|(k, v)| format!("{k} {v}")).collect();
    format!("{total} ({})", parts.join(", "))
}

fn ms(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{:.0} ms", v))
}

/// How one row of the table shows a summary.
type Row = Box<dyn Fn(&Summary) -> String>;

/// A Markdown table, one column per store.
pub fn table(summaries: &[Summary]) -> String {
    let rows: Vec<(&str, Row)> = vec![
        (
            "processes × workers, duration",
            Box::new(|s| format!("{} × {}, {} s", s.processes, s.workers, s.duration_s)),
        ),
        ("faults injected", Box::new(|s| join(&s.faults))),
        ("slots allocated", Box::new(|s| s.slots.to_string())),
        (
            "entries: committed (recovered) / gaps",
            Box::new(|s| {
                format!(
                    "{} ({}) / {}",
                    s.committed_entries,
                    s.recovered_entries,
                    join(&s.gaps)
                )
            }),
        ),
        (
            "commits acknowledged",
            Box::new(|s| s.commits_acknowledged.to_string()),
        ),
        (
            "duplicate commits answered with the existing seq",
            Box::new(|s| s.duplicates_acknowledged.to_string()),
        ),
        (
            "acknowledged commits lost",
            Box::new(|s| s.lost.to_string()),
        ),
        (
            "operations committed twice",
            Box::new(|s| s.duplicated.to_string()),
        ),
        (
            "stale writes rejected",
            Box::new(|s| join(&s.stale_writes_rejected)),
        ),
        (
            "stale writes accepted",
            Box::new(|s| s.stale_writes_accepted.to_string()),
        ),
        (
            "ambiguous commits (outcome unknown to the worker)",
            Box::new(|s| s.ambiguous.to_string()),
        ),
        (
            "recorded results / lost",
            Box::new(|s| format!("{} / {}", s.results_recorded, s.results_lost)),
        ),
        (
            "watermark samples / regressions",
            Box::new(|s| format!("{} / {}", s.watermark_samples, s.watermark_regressions)),
        ),
        (
            "killed owners with slots in flight",
            Box::new(|s| {
                let with = s.resolutions.iter().filter(|r| r.1 > 0).count();
                let slots: u64 = s.resolutions.iter().map(|r| r.1).sum();
                format!("{with} of {} ({slots} slots)", s.resolutions.len())
            }),
        ),
        (
            "resolution time p50 / p99 / max",
            Box::new(|s| {
                format!(
                    "{} / {} / {}",
                    ms(s.resolution_percentile(50.0)),
                    ms(s.resolution_percentile(99.0)),
                    ms(s.resolution_percentile(100.0))
                )
            }),
        ),
        ("violations", Box::new(|s| s.violations.len().to_string())),
    ];
    let mut out = String::from("| |");
    for s in summaries {
        out.push_str(&format!(" {} |", s.store));
    }
    out.push_str("\n|---|");
    for _ in summaries {
        out.push_str("---|");
    }
    out.push('\n');
    for (name, f) in rows {
        out.push_str(&format!("| {name} |"));
        for s in summaries {
            out.push_str(&format!(" {} |", f(s)));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_skip_owners_without_slots_in_flight() {
        let s = Summary {
            resolutions: vec![
                ("a".into(), 3, 100.0),
                ("b".into(), 0, 0.0),
                ("c".into(), 1, 300.0),
                ("d".into(), 2, 200.0),
            ],
            ..Summary::default()
        };
        assert_eq!(s.resolution_percentile(50.0), Some(200.0));
        assert_eq!(s.resolution_percentile(100.0), Some(300.0));
        assert_eq!(Summary::default().resolution_percentile(50.0), None);
        assert!(
            table(&[s]).contains("| resolution time p50 / p99 / max | 200 ms / 300 ms / 300 ms |")
        );
    }
}
