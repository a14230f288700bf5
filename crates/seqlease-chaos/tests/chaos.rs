//! The bounded fault-injection run of CI, and proof that its checker can fail.
//!
//! One `seqlease-chaos run` on SQLite (one file, several processes) and on PostgreSQL (a
//! throwaway cluster behind the harness's proxy), 40 s of faults each with TTLs of a few
//! seconds, so recovery happens within the run. The run checks itself; this test then reads
//! each store's `summary.json` and insists that every kind of fault was injected and that
//! the guarantees held. Nothing here asserts on timings: resolution times are reported, and
//! the only time bound is a generous one on the whole run (a hung run fails instead of
//! blocking CI).
//!
//! Then it forges journal lines on the SQLite run (an acknowledgement the store never gave;
//! a refusal of a commit that is in the log) and expects `seqlease-chaos check` to report
//! both and exit non-zero, and to pass again once they are removed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use seqlease_chaos::journal::{Kind, Line};
use seqlease_chaos::summary::Summary;

const BIN: &str = env!("CARGO_BIN_EXE_seqlease-chaos");
/// The whole run takes about two minutes; this only stops a hung one.
const BOUND: Duration = Duration::from_secs(420);

fn run_bounded(cmd: &mut Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start seqlease-chaos");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(BOUND) {
        Ok(out) => out.expect("seqlease-chaos output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("seqlease-chaos did not finish within {BOUND:?}");
        }
    }
}

fn show(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr (tail)\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    )
}

fn summary(dir: &Path) -> Summary {
    let text = std::fs::read_to_string(dir.join("summary.json")).expect("summary.json");
    serde_json::from_str(&text).expect("summary parses")
}

fn check_guarantees(s: &Summary, kinds: &[&str]) {
    let ctx = format!("{s:#?}");
    assert!(s.violations.is_empty(), "violations: {ctx}");
    for kind in kinds {
        assert!(
            s.faults.get(*kind).copied().unwrap_or(0) > 0,
            "no {kind} fault was injected: {ctx}"
        );
    }
    assert!(s.commits_acknowledged > 0, "{ctx}");
    assert!(s.duplicates_acknowledged > 0, "{ctx}");
    assert!(s.results_recorded > 0, "{ctx}");
    assert!(s.recovered_entries > 0, "recovery committed nothing: {ctx}");
    assert!(
        s.stale_writes_rejected.values().sum::<u64>() > 0,
        "no stale write was even attempted: {ctx}"
    );
    assert_eq!(s.lost, 0, "{ctx}");
    assert_eq!(s.duplicated, 0, "{ctx}");
    assert_eq!(s.stale_writes_accepted, 0, "{ctx}");
    assert_eq!(s.results_lost, 0, "{ctx}");
    assert_eq!(s.watermark_regressions, 0, "{ctx}");
    assert!(s.watermark_samples > 0, "{ctx}");
    assert_eq!(
        s.resolutions.len() as u64,
        s.faults["sigkill"],
        "a resolution time for every killed owner: {ctx}"
    );
}

/// Forge two lines the store never said; the checker must catch both.
fn forge(store_dir: &Path) -> PathBuf {
    let journals = store_dir.join("journals");
    let lines: Vec<Line> = std::fs::read_dir(&journals)
        .expect("journals")
        .flatten()
        .flat_map(|f| seqlease_chaos::journal::read::<Line>(&f.path()).expect("journal"))
        .collect();
    // A commit by the worker itself: no result was recorded, so recovery cannot have
    // committed it.
    let recorded: std::collections::HashSet<_> = lines
        .iter()
        .filter(|l| l.kind == Kind::Recorded)
        .map(|l| l.op.clone())
        .collect();
    let real = lines
        .iter()
        .find(|l| l.kind == Kind::Committed && !recorded.contains(&l.op))
        .expect("a committed line")
        .clone();
    let mut lost = Line::new("forged", 0, Kind::Committed);
    lost.op = Some("forged-op-never-committed".into());
    lost.seq = real.seq;
    let mut refused = Line::new("forged", 0, Kind::Rejected);
    refused.op = real.op.clone();
    refused.seq = real.seq;
    refused.reason = Some("expired".into());
    refused.during = Some("commit".into());
    let path = journals.join("forged.jsonl");
    let journal = seqlease_chaos::journal::Journal::open(&path).expect("forged journal");
    journal.append(&lost).expect("append");
    journal.append(&refused).expect("append");
    path
}

#[test]
fn bounded_chaos_run_keeps_every_guarantee_on_sqlite_and_postgres() {
    let dir = std::env::temp_dir().join(format!("seqlease-chaos-ci-{}", std::process::id()));
    let out = run_bounded(
        Command::new(BIN)
            .args(["run", "--store", "all", "--duration", "40"])
            .args([
                "--fault-every-ms",
                "1500",
                "--processes",
                "3",
                "--workers",
                "3",
            ])
            .arg("--dir")
            .arg(&dir),
    );
    println!("{}", show(&out));
    assert!(out.status.success(), "the run failed:\n{}", show(&out));
    check_guarantees(
        &summary(&dir.join("sqlite")),
        &["sigkill", "sigstop", "cleaner_kill"],
    );
    check_guarantees(
        &summary(&dir.join("postgres")),
        &[
            "sigkill",
            "sigstop",
            "cleaner_kill",
            "pg_restart",
            "connections_cut",
        ],
    );

    // The checker is not a rubber stamp.
    let sqlite = dir.join("sqlite");
    let forged = forge(&sqlite);
    let out = run_bounded(Command::new(BIN).arg("check").arg(&sqlite));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        text.contains("I4: acknowledged commit of forged-op-never-committed"),
        "{text}"
    );
    assert!(
        text.contains("was refused (expired) but the log holds it"),
        "{text}"
    );
    std::fs::remove_file(forged).expect("remove forged journal");
    let out = run_bounded(Command::new(BIN).arg("check").arg(&sqlite));
    assert!(out.status.success(), "{}", show(&out));
    let _ = std::fs::remove_dir_all(&dir);
}
