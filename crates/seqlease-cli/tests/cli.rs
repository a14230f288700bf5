//! The `seqlease` binary as an operator runs it: every command here starts the real
//! executable, and the checks read its exit status, its JSON and its error messages.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use seqlease::{Engine, Grant, ManualClock};
use serde_json::Value;

fn seqlease(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seqlease"))
        .args(args)
        .current_dir(dir)
        // The defaults under test, not the environment of whoever runs the tests.
        .env_remove("SEQLEASE_DB")
        .env_remove("SEQLEASE_LOG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
        .output()
        .expect("the seqlease binary starts")
}

/// Runs a command that must succeed and print one JSON object.
fn json_of(dir: &Path, args: &[&str]) -> Value {
    let out = seqlease(dir, args);
    assert!(
        out.status.success(),
        "seqlease {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "seqlease {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Runs a command that must fail with exit status 2; returns its stderr.
fn refusal_of(dir: &Path, args: &[&str]) -> String {
    let out = seqlease(dir, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(2),
        "seqlease {args:?} should be refused; stdout: {} stderr: {stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

fn count(value: &Value, key: &str) -> u64 {
    value[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a count in {value}"))
}

/// Runs `seqlease demo` with `extra` arguments and `events` events; checks that it verified
/// its log on `store` and that every slot is an operation or a gap. Returns the summary.
fn verified_demo(dir: &Path, extra: &[&str], store: &str, events: u64) -> Value {
    let events_arg = events.to_string();
    let mut args = vec!["demo", "--events", &events_arg, "--json"];
    args.extend_from_slice(extra);
    let summary = json_of(dir, &args);
    assert_eq!(summary["verified"], true, "{summary}");
    assert_eq!(summary["store"], store);
    assert_eq!(count(&summary, "committed"), events);
    assert_eq!(
        count(&summary, "slots"),
        count(&summary, "committed") + count(&summary, "gaps"),
        "every slot is an operation or a gap: {summary}"
    );
    summary
}

#[test]
fn the_demo_verifies_its_log_in_the_default_sqlite_file_and_status_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let summary = verified_demo(dir.path(), &["--workers", "4"], "sqlite", 300);
    assert!(
        dir.path().join("seqlease.db").exists(),
        "the default file is in the cwd"
    );

    let status = json_of(dir.path(), &["status", "--json"]);
    let spaces = status["spaces"].as_array().unwrap();
    assert_eq!(spaces.len(), 1, "{status}");
    assert_eq!(spaces[0]["space"], summary["space"]);
    assert_eq!(spaces[0]["watermark"], summary["slots"]);
    assert_eq!(count(&spaces[0], "in_flight"), 0);
}

#[test]
fn the_demo_runs_on_the_memory_store() {
    let dir = tempfile::tempdir().unwrap();
    verified_demo(dir.path(), &["--db", "memory"], "memory", 200);
    assert!(
        !dir.path().join("seqlease.db").exists(),
        "memory writes no file"
    );
}

#[test]
fn bench_prints_the_fields_dashboards_read() {
    let dir = tempfile::tempdir().unwrap();
    let report = json_of(
        dir.path(),
        &[
            "bench",
            "--db",
            "memory",
            "--workers",
            "2",
            "--duration",
            "1",
            "--json",
        ],
    );
    assert_eq!(report["store"], "memory");
    assert_eq!(count(&report, "workers"), 2);
    assert!(count(&report, "cycles") > 0, "{report}");
    for key in ["cycles_per_sec", "p50_us", "p99_us", "max_us"] {
        assert!(report[key].is_number(), "{key} missing in {report}");
    }
    assert!(
        report["p50_us"].as_f64() <= report["max_us"].as_f64(),
        "{report}"
    );
    if cfg!(target_os = "linux") {
        let cpu = report["cpu_us_per_cycle"].as_f64();
        assert!(
            cpu.is_some_and(|us| us > 0.0),
            "cpu_us_per_cycle in {report}"
        );
    }
}

/// `bench --pipeline` commits every lease it grants, the last one included: the file it
/// ran on holds one committed entry per cycle it reports, and nothing is left leased.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_bench_commits_every_lease_it_grants() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("pipe.db").display());
    let args = ["bench", "--db", &url, "--workers", "4", "--duration", "1"];
    let report = json_of(dir.path(), &[&args[..], &["--pipeline", "--json"]].concat());
    assert_eq!(report["pipeline"], true, "{report}");
    let cycles = count(&report, "cycles");
    assert!(cycles > 0, "{report}");
    let engine = Engine::builder().url(&url).build().await.unwrap();
    let spaces = engine.store().list_spaces().await.unwrap();
    let [space] = &spaces[..] else {
        panic!("one bench space: {spaces:?}");
    };
    assert_eq!(
        (space.last_seq, space.watermark, space.in_flight),
        (cycles, cycles, 0),
        "{space:?}"
    );
    drop(engine);

    let refused = refusal_of(
        dir.path(),
        &[&args[..], &["--pipeline", "--leases", "2"]].concat(),
    );
    assert!(refused.contains("--leases 1"), "{refused}");
}

/// Leaves two expired leases in a SQLite file, one of them with recorded partial work.
/// The leases are granted on a manual clock that stands at 2026-01-01, so their deadlines
/// have passed for the real clock the CLI runs on: no waiting for a TTL.
async fn abandon_two_leases(url: &str) {
    let engine = Engine::builder()
        .url(url)
        .clock(Arc::new(ManualClock::new()))
        .build()
        .await
        .unwrap();
    let space = engine.space("orders").await.unwrap();
    let ttl = Duration::from_secs(5);
    let plain = space
        .grant(Grant::new("op-1", "order").ttl(ttl))
        .await
        .unwrap();
    let mut with_work = space
        .grant(Grant::new("op-2", "order").ttl(ttl))
        .await
        .unwrap();
    with_work
        .record_partial(br#"{"where_result":[7]}"#.to_vec())
        .await
        .unwrap();
    plain.abandon();
    with_work.abandon();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_resolves_expired_leases_and_an_operator_settles_the_parked_work() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ops.db").display());
    abandon_two_leases(&url).await;
    let dir = dir.path();

    let cycle = json_of(dir, &["cleanup", "--db", &url, "--once", "--json"]);
    assert_eq!(count(&cycle, "backlog"), 2, "{cycle}");
    assert_eq!(count(&cycle, "claimed"), 2, "{cycle}");
    // No resolver for partial work is registered in the CLI: both slots become gaps and
    // the recorded work is parked, not dropped.
    assert_eq!(count(&cycle, "gapped"), 2, "{cycle}");
    assert_eq!(count(&cycle, "parked"), 1, "{cycle}");

    let status = json_of(dir, &["status", "--db", &url, "--json"]);
    assert_eq!(count(&status["spaces"][0], "watermark"), 2, "{status}");

    let listed = seqlease(dir, &["recovery", "--db", &url, "list", "--json"]);
    assert!(listed.status.success());
    let items: Vec<Value> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(items.len(), 1, "{items:?}");
    let item = &items[0];
    assert_eq!(item["space"], "orders");
    assert_eq!(item["operation_id"], "op-2");
    assert_eq!(item["has_partial"], true);
    let id = item["id"].to_string();

    let settled = seqlease(
        dir,
        &[
            "recovery",
            "--db",
            &url,
            "resolve-as-gap",
            &id,
            "--actor",
            "ci",
        ],
    );
    assert!(settled.status.success(), "{settled:?}");
    assert!(
        String::from_utf8_lossy(&settled.stdout).contains("now discarded"),
        "{settled:?}"
    );
    let again = refusal_of(dir, &["recovery", "--db", &url, "retry", &id]);
    assert!(again.contains(&id), "the refusal names the item: {again}");

    let quiet = json_of(dir, &["cleanup", "--db", &url, "--once", "--json"]);
    assert_eq!(count(&quiet, "backlog"), 0, "{quiet}");
    let line = seqlease(dir, &["cleanup", "--db", &url, "--once"]);
    let line = String::from_utf8_lossy(&line.stdout);
    assert!(line.starts_with("cleanup: load "), "{line}");
    assert!(line.contains("0 expired"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_cleanup_service_prints_a_line_for_each_cycle_that_resolves_something() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ops.db").display());
    abandon_two_leases(&url).await;
    let mut service = Command::new(env!("CARGO_BIN_EXE_seqlease"))
        .args(["cleanup", "--db", &url, "--interval", "0.05"])
        .env_remove("SEQLEASE_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = service.stdout.take().unwrap();
    let (lines, printed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let first = printed.recv_timeout(Duration::from_secs(60));
    service.kill().unwrap();
    service.wait().unwrap();
    let first = first.expect("the service printed what its first cycle did");
    assert!(first.starts_with("cleanup: load "), "{first}");
    assert!(first.contains("2 claimed"), "{first}");
    assert!(first.contains("(1 with work parked)"), "{first}");
    // No resolver can rebuild the parked work: the cycle's attempt at it failed.
    assert!(first.contains("1 failed attempt;"), "{first}");
}

#[test]
fn bad_arguments_are_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();

    let stderr = refusal_of(
        dir,
        &[
            "cleanup",
            "--db",
            "memory",
            "--spaces-at-once",
            "0",
            "--once",
        ],
    );
    assert!(stderr.contains("1..=256"), "{stderr}");
    let stderr = refusal_of(
        dir,
        &["cleanup", "--db", "memory", "--interval", "0", "--once"],
    );
    assert!(stderr.contains("--interval"), "{stderr}");
    let stderr = refusal_of(dir, &["cleanup", "--db", "memory", "--json"]);
    assert!(stderr.contains("--once"), "--json needs --once: {stderr}");

    let stderr = refusal_of(dir, &["status", "--db", "mysql://localhost/x"]);
    for scheme in ["memory", "sqlite://", "postgres://"] {
        assert!(
            stderr.contains(scheme),
            "the refusal lists {scheme}: {stderr}"
        );
    }

    let missing = format!("sqlite://{}", dir.join("typo.db").display());
    let stderr = refusal_of(dir, &["status", "--db", &missing]);
    assert!(stderr.contains("no database at"), "{stderr}");
    let stderr = refusal_of(
        dir,
        &["status", "--db", &format!("{missing}?synchronous=full")],
    );
    assert!(stderr.contains("no database at"), "{stderr}");
    assert!(!dir.join("typo.db").exists(), "status creates no file");

    let stderr = refusal_of(dir, &["demo", "--db", &format!("{missing}?sync=full")]);
    assert!(stderr.contains("unknown parameter \"sync\""), "{stderr}");

    let stderr = refusal_of(dir, &["recovery", "list", "--state", "lost"]);
    assert!(stderr.contains("parked, manual"), "{stderr}");
}

#[test]
fn a_corrupt_database_file_is_refused_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corrupt.db");
    let garbage = b"this is not a SQLite database, just bytes an operator pointed at".repeat(64);
    std::fs::write(&path, &garbage).unwrap();
    let url = format!("sqlite://{}", path.display());

    let stderr = refusal_of(dir.path(), &["status", "--db", &url]);
    assert!(
        stderr.contains("corrupt.db"),
        "the refusal names the file: {stderr}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        garbage,
        "the file is untouched"
    );
}

/// Commits operations 1..=`entries` to space `orders` and leaves consumer `read-model`, which
/// holds back retention, with its checkpoint at `checkpoint`.
async fn orders_with_a_retaining_consumer(url: &str, entries: u64, checkpoint: usize) {
    let engine = Engine::open(url).await.unwrap();
    let space = engine.space("orders").await.unwrap();
    for n in 1..=entries {
        let mut lease = space
            .grant(Grant::new(format!("op-{n}"), "order"))
            .await
            .unwrap();
        let body = seqlease::OperationBody::new("update", br#"{"ids":[1]}"#.to_vec());
        lease.commit(body).await.unwrap();
    }
    let mut consumer = space
        .consumer("read-model")
        .batch_size(checkpoint)
        .retain(true)
        .open()
        .await
        .unwrap();
    let batch = consumer.next_batch().await.unwrap();
    consumer.commit(&batch).await.unwrap();
    assert_eq!(consumer.checkpoint(), checkpoint as u64);
}

fn the_consumers(dir: &Path, url: &str) -> Vec<Value> {
    let list = json_of(dir, &["consumers", "--db", url, "--json"]);
    list["consumers"].as_array().unwrap().clone()
}

/// `command` (words split at spaces) with `--db url` appended.
fn on_db<'a>(command: &'a str, url: &'a str) -> Vec<&'a str> {
    command.split(' ').chain(["--db", url]).collect()
}

/// Runs `command` on `url`, which must succeed; returns what it printed.
fn printed(dir: &Path, url: &str, command: &str) -> String {
    let out = seqlease(dir, &on_db(command, url));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "seqlease {command}: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_lists_resets_and_removes_a_consumer_and_prunes_behind_it() {
    let dir = tempfile::tempdir().unwrap();
    let (dir, url) = (
        dir.path(),
        format!("sqlite://{}", dir.path().join("ops.db").display()),
    );
    orders_with_a_retaining_consumer(&url, 10, 4).await;

    let consumers = the_consumers(dir, &url);
    assert_eq!(consumers.len(), 1, "{consumers:?}");
    let c = &consumers[0];
    assert_eq!(
        (c["space"].as_str(), c["consumer"].as_str()),
        (Some("orders"), Some("read-model"))
    );
    assert_eq!(
        (
            count(c, "checkpoint"),
            count(c, "watermark"),
            count(c, "lag")
        ),
        (4, 10, 6)
    );
    assert_eq!(c["retain"], true);

    // The retaining consumer has not read past 4: entries it still needs are not pruned.
    let prune = "prune --space orders --actor ops --below";
    let stderr = refusal_of(dir, &on_db(&format!("{prune} 8"), &url));
    assert!(
        stderr.contains("read-model"),
        "the refusal names the consumer: {stderr}"
    );
    let stdout = printed(dir, &url, &format!("{prune} 5"));
    assert!(stdout.contains("pruned 4 entries of orders"), "{stdout}");

    let consumer = "--space orders --name read-model --actor ops";
    let stdout = printed(dir, &url, &format!("consumer reset {consumer} --to 6"));
    assert!(
        stdout.contains("checkpoint 4 -> 6 (lag 4), reset by ops"),
        "{stdout}"
    );
    assert_eq!(count(&the_consumers(dir, &url)[0], "checkpoint"), 6);
    let stdout = printed(dir, &url, &format!("consumer remove {consumer}"));
    assert!(
        stdout.contains("removed by ops (its checkpoint was 6)"),
        "{stdout}"
    );
    assert!(the_consumers(dir, &url).is_empty());

    // Nothing holds retention back now: everything up to the watermark can go, and the
    // retention history shows each audited step with its actor.
    let stdout = printed(dir, &url, &format!("{prune} 11 --history"));
    assert!(stdout.contains("pruned 6 entries of orders"), "{stdout}");
    let history: Vec<&str> = stdout.lines().skip(1).collect();
    assert_eq!(history.len(), 4, "prune, reset, removal, prune: {stdout}");
    assert!(
        history.iter().all(|line| line.ends_with("by ops")),
        "{stdout}"
    );
}

#[test]
fn consumer_and_retention_commands_refuse_a_space_that_does_not_exist_and_create_none() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    // A store with one space, so `status` has something to list.
    verified_demo(dir, &["--workers", "2"], "sqlite", 20);
    let url = format!("sqlite://{}", dir.join("seqlease.db").display());
    for command in [
        "consumers --space ordres",
        "prune --space ordres --below 2 --actor ops",
        "consumer reset --space ordres --name rm --actor ops",
        "consumer remove --space ordres --name rm --actor ops",
    ] {
        let stderr = refusal_of(dir, &on_db(command, &url));
        assert!(
            stderr.contains("space ordres does not exist") && stderr.contains("seqlease status"),
            "{command}: {stderr}"
        );
    }
    let status = json_of(dir, &["status", "--db", &url, "--json"]);
    let spaces = status["spaces"].as_array().unwrap();
    assert_eq!(spaces.len(), 1, "no space was created: {status}");
}

#[test]
fn bench_replay_and_bench_recovery_print_the_fields_their_targets_read() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let replay = json_of(
        dir.path(),
        &[
            "bench-replay",
            "--db",
            &url,
            "--entries",
            "3000",
            "--batch",
            "500",
            "--runs",
            "1",
            "--json",
        ],
    );
    assert_eq!(replay["store"], "sqlite");
    assert_eq!(count(&replay, "entries"), 3000, "{replay}");
    for key in [
        "replay_entries_per_s",
        "bare_read_entries_per_s",
        "ratio_to_bare_reads",
    ] {
        assert!(
            replay[key].as_f64().is_some_and(|v| v > 0.0),
            "{key} in {replay}"
        );
    }

    let recovery = json_of(
        dir.path(),
        &[
            "bench-recovery",
            "--db",
            &url,
            "--leases",
            "20",
            "--ttl",
            "0.2",
            "--interval",
            "0.05",
            "--spread",
            "0.2",
            "--cascade",
            "200",
            "--json",
        ],
    );
    assert_eq!(count(&recovery, "leases"), 20, "{recovery}");
    let delay = &recovery["expiry_to_resolution_ms"];
    for key in ["p50", "p99", "max"] {
        assert!(
            delay[key].as_f64().is_some_and(|v| v >= 0.0),
            "{key} in {recovery}"
        );
    }
    assert!(delay["p50"].as_f64() <= delay["max"].as_f64(), "{recovery}");
    assert!(
        recovery["cascade_resolved_ms"].as_f64().is_some(),
        "{recovery}"
    );
}
