//! The SQLite store from its public API: opening files (good, corrupt, unopenable, newer),
//! durability across reopen, several stores on one file, and the batch semantics of
//! `execute` (the generic conformance suite covers the rest of the contract).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use seqlease_core::{
    Command, CommitOutcome, CommitStatus, EntryContent, Fence, GapReason, GrantRequest, LeaseError,
    LeaseKey, LeaseRecord, ManualClock, OperationBody, ReleaseOutcome, Reply, ResourceCommand,
    ResourceReply, SlotState, SpaceConfig, SpaceName, Store, StoreError, TimeControl, Token,
};
use seqlease_sqlite::{SqliteOptions, SqliteStore};
use sqlx::{Connection, SqliteConnection};
use tempfile::TempDir;

const TTL: Duration = Duration::from_secs(30);

fn space(name: &str) -> SpaceName {
    SpaceName::new(name).expect("valid space name")
}

fn options(clock: &Arc<ManualClock>) -> SqliteOptions {
    SqliteOptions {
        clock: clock.clone(),
        read_connections: 2,
        ..SqliteOptions::default()
    }
}

async fn open(path: &Path, clock: &Arc<ManualClock>) -> SqliteStore {
    SqliteStore::open(path, options(clock))
        .await
        .expect("open store")
}

/// A fresh store in a temporary directory with one space of the given capacity.
async fn fixture(capacity: u32) -> (TempDir, Arc<ManualClock>, SqliteStore, SpaceName) {
    let dir = TempDir::new().expect("temp dir");
    let clock = Arc::new(ManualClock::new());
    let store = open(&dir.path().join("seq.db"), &clock).await;
    let name = space("orders");
    store
        .ensure_space(&name, &SpaceConfig { capacity })
        .await
        .expect("ensure space");
    (dir, clock, store, name)
}

fn grant(space: &SpaceName, op: &str) -> Command {
    Command::Grant(GrantRequest {
        space: space.clone(),
        operation_id: op.to_string(),
        projection_type: "orders-view".to_string(),
        owner: "worker-1".to_string(),
        ttl: TTL,
        fence: None,
    })
}

fn key(lease: &LeaseRecord) -> LeaseKey {
    LeaseKey {
        space: lease.space.clone(),
        seq: lease.seq,
        token: lease.token,
    }
}

fn commit(lease: &LeaseRecord, payload: &str) -> Command {
    Command::Commit {
        key: key(lease),
        body: OperationBody::new("update", payload.as_bytes()),
    }
}

fn granted(reply: &Result<Reply, LeaseError>) -> LeaseRecord {
    match reply {
        Ok(Reply::Granted(lease)) => (**lease).clone(),
        other => panic!("expected a grant, got {other:?}"),
    }
}

fn committed(reply: &Result<Reply, LeaseError>) -> CommitOutcome {
    match reply {
        Ok(Reply::Committed(outcome)) => *outcome,
        other => panic!("expected a commit, got {other:?}"),
    }
}

async fn grant_one(store: &SqliteStore, space: &SpaceName, op: &str) -> LeaseRecord {
    let out = store
        .execute(vec![grant(space, op)])
        .await
        .expect("grant batch");
    granted(&out.replies[0])
}

async fn run_one(store: &SqliteStore, command: Command) -> Result<Reply, LeaseError> {
    let mut out = store.execute(vec![command]).await.expect("batch");
    assert_eq!(out.replies.len(), 1);
    out.replies.remove(0)
}

// ---------------------------------------------------------------------------------------
// Opening files
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn committed_entries_survive_close_and_reopen() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("persist.db");
    let clock = Arc::new(ManualClock::new());
    let name = space("persist");

    let store = open(&path, &clock).await;
    store
        .ensure_space(&name, &SpaceConfig { capacity: 8 })
        .await
        .unwrap();
    let lease = grant_one(&store, &name, "op-1").await;
    let body =
        OperationBody::new("insert", br#"{"ids":[1,2,3]}"#.to_vec()).with_source_event("ev-9");
    let out = store
        .execute(vec![Command::Commit {
            key: key(&lease),
            body: body.clone(),
        }])
        .await
        .unwrap();
    assert_eq!(committed(&out.replies[0]).status, CommitStatus::Committed);
    store.close().await;

    let reopened = open(&path, &clock).await;
    let info = reopened
        .space_info(&name)
        .await
        .unwrap()
        .expect("space persisted");
    assert_eq!(
        (info.last_seq, info.watermark, info.in_flight, info.capacity),
        (1, 1, 0, 8)
    );
    let entries = reopened.read(&name, 1, 10).await.unwrap();
    assert_eq!(entries.len(), 1);
    let entry = &entries[0];
    assert_eq!(entry.seq, 1);
    assert_eq!(entry.lease_operation_id, "op-1");
    assert_eq!(entry.owner, "worker-1");
    assert_eq!(entry.resolved_at, clock_now(&clock));
    let op = entry.operation().expect("an operation");
    assert_eq!(op.operation_id, "op-1");
    assert_eq!(op.projection_type, "orders-view");
    assert_eq!(op.body, body);
    assert_eq!(op.recovery, None);
    reopened.close().await;
}

fn clock_now(clock: &Arc<ManualClock>) -> seqlease_core::Timestamp {
    seqlease_core::Clock::now(clock.as_ref())
}

#[tokio::test]
async fn garbage_file_is_reported_as_corrupt_naming_the_path() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("garbage.db");
    // Deterministic noise that cannot be mistaken for a SQLite header.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let bytes: Vec<u8> = (0..8192)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    std::fs::write(&path, bytes).unwrap();

    let err = SqliteStore::open(&path, SqliteOptions::default())
        .await
        .unwrap_err();
    match &err {
        StoreError::Corrupt { backend, detail } => {
            assert_eq!(*backend, "sqlite");
            assert!(detail.contains(&path.display().to_string()), "{detail}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(
        err.to_string().contains("restore it from a backup"),
        "{err}"
    );
}

#[tokio::test]
async fn missing_directory_is_a_clear_error() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("no-such-dir").join("seq.db");
    let err = SqliteStore::open(&path, SqliteOptions::default())
        .await
        .unwrap_err();
    match &err {
        StoreError::Unavailable { backend, detail } => {
            assert_eq!(*backend, "sqlite");
            assert!(detail.contains(&path.display().to_string()), "{detail}");
            assert!(detail.contains("does not exist"), "{detail}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(!path.exists());
}

async fn page_size_of(path: &Path) -> i64 {
    let mut conn = SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("connect");
    let (size,): (i64,) = sqlx::query_as("PRAGMA page_size")
        .fetch_one(&mut conn)
        .await
        .expect("page size");
    size
}

#[tokio::test]
async fn a_new_file_takes_the_page_size_and_an_old_one_keeps_its_own() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("pages.db");
    let clock = Arc::new(ManualClock::new());
    let with_pages = |page_size| SqliteOptions {
        page_size,
        ..options(&clock)
    };
    let store = SqliteStore::open(&path, with_pages(1024))
        .await
        .expect("open");
    let space = space("pages");
    store
        .ensure_space(&space, &SpaceConfig { capacity: 8 })
        .await
        .expect("space");
    let lease = grant_one(&store, &space, "op-1").await;
    committed(&run_one(&store, commit(&lease, "{}")).await);
    store.close().await;
    assert_eq!(page_size_of(&path).await, 1024);

    // Reopened with another size: the file keeps 1024 and its entry.
    let store = SqliteStore::open(&path, with_pages(8192))
        .await
        .expect("reopen");
    assert_eq!(page_size_of(&path).await, 1024);
    let entries = store.read(&space, 1, 10).await.expect("read");
    assert_eq!(entries.len(), 1);
    store.close().await;
}

#[tokio::test]
async fn a_page_size_sqlite_would_ignore_is_refused() {
    let dir = TempDir::new().unwrap();
    for bad in [0, 256, 1000, 131_072] {
        let path = dir.path().join(format!("bad-{bad}.db"));
        let opts = SqliteOptions {
            page_size: bad,
            ..SqliteOptions::default()
        };
        let err = SqliteStore::open(&path, opts).await.unwrap_err();
        match &err {
            StoreError::BadOption { option, reason, .. } => {
                assert_eq!(*option, "SqliteOptions::page_size");
                assert!(reason.starts_with(&format!("{bad} ")), "{reason}");
                assert!(
                    err.to_string().contains("SqliteOptions::page_size"),
                    "{err}"
                );
            }
            other => panic!("expected BadOption for page size {bad}, got {other:?}"),
        }
        assert!(!path.exists(), "no file is created for page size {bad}");
    }
}

#[tokio::test]
async fn a_directory_is_not_a_database_file() {
    let dir = TempDir::new().unwrap();
    let err = SqliteStore::open(dir.path(), SqliteOptions::default())
        .await
        .unwrap_err();
    match &err {
        StoreError::Unavailable { detail, .. } => {
            assert!(detail.contains("is a directory"), "{detail}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn database_from_a_newer_seqlease_is_refused() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("newer.db");
    let store = SqliteStore::open(&path, SqliteOptions::default())
        .await
        .unwrap();
    store.close().await;

    let mut conn = SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99990101000000, 'from the future', TRUE, x'00', 0)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();

    let err = SqliteStore::open(&path, SqliteOptions::default())
        .await
        .unwrap_err();
    match &err {
        StoreError::Schema { backend, detail } => {
            assert_eq!(*backend, "sqlite");
            assert!(detail.contains("newer seqlease"), "{detail}");
            assert!(detail.contains("upgrade"), "{detail}");
            assert!(detail.contains(&path.display().to_string()), "{detail}");
        }
        other => panic!("expected Schema, got {other:?}"),
    }
}

#[tokio::test]
async fn database_of_another_application_is_refused() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("other.db");
    let mut conn = SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .unwrap();
    sqlx::query("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();

    let err = SqliteStore::open(&path, SqliteOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Schema { detail, .. } if detail.contains("another application")),
        "{err:?}"
    );
}

#[tokio::test]
async fn file_is_in_wal_mode() {
    let (dir, _clock, store, _) = fixture(4).await;
    let path = dir.path().join("seq.db");
    let mut conn = SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    conn.close().await.unwrap();
    store.close().await;
}

#[tokio::test]
async fn open_url_accepts_both_sqlite_forms_and_rejects_others() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("url.db");
    let store = SqliteStore::open_url(
        &format!("sqlite://{}", path.display()),
        SqliteOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(store.path(), path);
    store.close().await;
    let store = SqliteStore::open_url(
        &format!("sqlite:{}", path.display()),
        SqliteOptions::default(),
    )
    .await
    .unwrap();
    store.close().await;
    // Parameters reach the file: a new file gets the page size the URL asks for.
    let small = dir.path().join("small-pages.db");
    let store = SqliteStore::open_url(
        &format!(
            "sqlite://{}?page_size=1024&synchronous=full",
            small.display()
        ),
        SqliteOptions::default(),
    )
    .await
    .unwrap();
    store.close().await;
    let page_size: u32 = seqlease_sqlite::rusqlite::Connection::open(&small)
        .unwrap()
        .query_row("PRAGMA page_size", [], |row| row.get(0))
        .unwrap();
    assert_eq!(page_size, 1024);
    for bad in [
        "postgres://localhost/db",
        "sqlite::memory:",
        "sqlite://",
        "sqlite://x.db?journal_mode=delete",
    ] {
        let err = SqliteStore::open_url(bad, SqliteOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::BadUrl { .. }), "{bad}: {err:?}");
    }
}

#[tokio::test]
async fn closed_store_is_unavailable() {
    let (_dir, _clock, store, name) = fixture(4).await;
    store.close().await;
    let err = store.execute(vec![grant(&name, "op")]).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert!(err.is_transient());
    let err = store.read(&name, 1, 10).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
}

#[tokio::test]
async fn two_stores_on_one_file_never_allocate_the_same_seq() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("shared.db");
    let clock = Arc::new(ManualClock::new());
    let a = open(&path, &clock).await;
    let b = open(&path, &clock).await;
    let name = space("shared");
    a.ensure_space(&name, &SpaceConfig { capacity: 100_000 })
        .await
        .unwrap();

    const TASKS: usize = 4;
    const BATCHES: usize = 25;
    const PER_BATCH: usize = 8;
    let mut handles = Vec::new();
    for t in 0..TASKS {
        for (which, store) in [("a", a.clone()), ("b", b.clone())] {
            let name = name.clone();
            handles.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for batch in 0..BATCHES {
                    let commands = (0..PER_BATCH)
                        .map(|i| grant(&name, &format!("{which}-{t}-{batch}-{i}")))
                        .collect();
                    let out = store.execute(commands).await.expect("batch");
                    let leases: Vec<_> = out.replies.iter().map(granted).collect();
                    let commits = leases.iter().map(|l| commit(l, "{}")).collect();
                    let out = store.execute(commits).await.expect("commit batch");
                    for (lease, reply) in leases.iter().zip(&out.replies) {
                        assert_eq!(committed(reply).status, CommitStatus::Committed);
                        seqs.push(lease.seq);
                    }
                }
                seqs
            }));
        }
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all.sort_unstable();
    let total = (TASKS * 2 * BATCHES * PER_BATCH) as u64;
    assert_eq!(
        all,
        (1..=total).collect::<Vec<_>>(),
        "every seq granted exactly once, contiguously"
    );

    let info = b.space_info(&name).await.unwrap().unwrap();
    assert_eq!(
        (info.last_seq, info.watermark, info.in_flight),
        (total, total, 0)
    );
    let entries = a.read(&name, 1, usize::MAX).await.unwrap();
    assert_eq!(entries.len() as u64, total);
    a.close().await;
    b.close().await;
}

// ---------------------------------------------------------------------------------------
// execute() semantics
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn grant_allocates_contiguous_seqs_with_fresh_tokens() {
    let (_dir, clock, store, name) = fixture(10).await;
    let now = clock_now(&clock);
    // A fenced grant needs the fence to be the resource's current epoch (I9).
    let held = store
        .resources(vec![ResourceCommand::Acquire {
            resource: "orders-0".to_string(),
            agent: "a".to_string(),
            ttl: TTL,
            max_renewals: None,
            metadata: None,
        }])
        .await
        .unwrap();
    let Ok(Reply::Resource(ResourceReply::Held(held))) = &held.replies[0] else {
        panic!("acquire: {:?}", held.replies[0]);
    };
    let fence = Fence {
        resource: "orders-0".to_string(),
        epoch: held.epoch,
    };
    let mut fenced = grant(&name, "op-3");
    if let Command::Grant(req) = &mut fenced {
        req.fence = Some(fence.clone());
    }
    let out = store
        .execute(vec![grant(&name, "op-1"), grant(&name, "op-2"), fenced])
        .await
        .unwrap();
    let leases: Vec<_> = out.replies.iter().map(granted).collect();
    assert_eq!(
        leases.iter().map(|l| l.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_ne!(leases[0].token, leases[1].token);
    assert_eq!(leases[0].leased_at, now);
    assert_eq!(leases[0].expires_at, now.plus(TTL));
    assert_eq!(leases[0].renewals, 0);
    assert!(
        out.progress.is_empty(),
        "nothing left LEASED: {:?}",
        out.progress
    );

    let view = store.slot(&name, 3).await.unwrap().expect("slot 3");
    assert_eq!(view.state, SlotState::Leased);
    assert_eq!(
        view.lease.token,
        Token([0; 16]),
        "slot() never shows the token"
    );
    assert_eq!(view.lease.fence, Some(fence));
    assert_eq!(view.lease.operation_id, "op-3");
    assert_eq!(store.slot(&name, 4).await.unwrap(), None);

    let info = store.space_info(&name).await.unwrap().unwrap();
    assert_eq!((info.last_seq, info.watermark, info.in_flight), (3, 0, 3));
}

#[tokio::test]
async fn grant_refuses_unknown_space_and_full_space() {
    let (_dir, _clock, store, name) = fixture(2).await;
    let out = store
        .execute(vec![
            grant(&space("nope"), "x"),
            grant(&name, "a"),
            grant(&name, "b"),
            grant(&name, "c"),
        ])
        .await
        .unwrap();
    assert!(
        matches!(&out.replies[0], Err(LeaseError::UnknownSpace { space }) if space.as_str() == "nope")
    );
    let a = granted(&out.replies[1]);
    granted(&out.replies[2]);
    assert!(matches!(
        &out.replies[3],
        Err(LeaseError::AtCapacity { capacity: 2, .. })
    ));

    // A commit earlier in the same batch frees capacity for a later grant.
    let out = store
        .execute(vec![commit(&a, "{}"), grant(&name, "c")])
        .await
        .unwrap();
    committed(&out.replies[0]);
    assert_eq!(granted(&out.replies[1]).seq, 3);
}

#[tokio::test]
async fn commit_resolves_and_moves_the_watermark_in_order() {
    let (_dir, _clock, store, name) = fixture(10).await;
    let out = store
        .execute(vec![grant(&name, "op-1"), grant(&name, "op-2")])
        .await
        .unwrap();
    let (l1, l2) = (granted(&out.replies[0]), granted(&out.replies[1]));

    // Slot 2 first: it resolves, but the watermark waits for slot 1.
    let out = store.execute(vec![commit(&l2, "two")]).await.unwrap();
    assert_eq!(
        committed(&out.replies[0]),
        CommitOutcome {
            seq: 2,
            status: CommitStatus::Committed
        }
    );
    assert_eq!(out.progress.len(), 1);
    assert_eq!((out.progress[0].watermark, out.progress[0].freed), (0, 1));
    assert!(
        store.read(&name, 1, 10).await.unwrap().is_empty(),
        "nothing above the watermark is visible"
    );

    let out = store.execute(vec![commit(&l1, "one")]).await.unwrap();
    assert_eq!(committed(&out.replies[0]).status, CommitStatus::Committed);
    assert_eq!((out.progress[0].watermark, out.progress[0].freed), (2, 1));
    let entries = store.read(&name, 1, 10).await.unwrap();
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(store.read(&name, 2, 10).await.unwrap().len(), 1);
    assert_eq!(store.read(&name, 1, 1).await.unwrap().len(), 1);
    assert!(store.read(&name, 3, 10).await.unwrap().is_empty());
    assert!(store.read(&name, 1, 0).await.unwrap().is_empty());
    let info = store.space_info(&name).await.unwrap().unwrap();
    assert_eq!((info.watermark, info.in_flight), (2, 0));
}

#[tokio::test]
async fn commit_retry_with_same_token_is_already_committed() {
    let (_dir, clock, store, name) = fixture(10).await;
    let lease = grant_one(&store, &name, "op-1").await;
    let out = store
        .execute(vec![commit(&lease, "a"), commit(&lease, "a")])
        .await
        .unwrap();
    assert_eq!(committed(&out.replies[0]).status, CommitStatus::Committed);
    assert_eq!(
        committed(&out.replies[1]),
        CommitOutcome {
            seq: 1,
            status: CommitStatus::AlreadyCommitted
        }
    );
    assert_eq!(out.progress[0].freed, 1, "the retry frees nothing");

    // Still a retry after the TTL has passed: resolved comes before expired.
    clock.advance(TTL * 2);
    let reply = run_one(&store, commit(&lease, "different")).await;
    assert_eq!(committed(&reply).status, CommitStatus::AlreadyCommitted);
    let entries = store.read(&name, 1, 10).await.unwrap();
    assert_eq!(
        entries[0].operation().unwrap().body.payload,
        b"a",
        "a resolved slot never changes"
    );

    // Other commands on a committed slot are refused.
    let reply = run_one(
        &store,
        Command::Renew {
            key: key(&lease),
            ttl: TTL,
        },
    )
    .await;
    assert!(
        matches!(
            reply,
            Err(LeaseError::Resolved {
                seq: 1,
                state: SlotState::Committed,
                ..
            })
        ),
        "{reply:?}"
    );
}

#[tokio::test]
async fn duplicate_operation_becomes_superseded_gap() {
    let (_dir, _clock, store, name) = fixture(10).await;
    let out = store
        .execute(vec![
            grant(&name, "same-op"),
            grant(&name, "same-op"),
            grant(&name, "same-op"),
        ])
        .await
        .unwrap();
    let leases: Vec<_> = out.replies.iter().map(granted).collect();

    let reply = run_one(&store, commit(&leases[0], "first")).await;
    assert_eq!(committed(&reply).status, CommitStatus::Committed);
    // Across batches…
    let reply = run_one(&store, commit(&leases[2], "third")).await;
    assert_eq!(
        committed(&reply),
        CommitOutcome {
            seq: 1,
            status: CommitStatus::Duplicate { slot: 3 }
        }
    );
    // …and after it, within one batch with another duplicate.
    let out = store
        .execute(vec![commit(&leases[1], "second")])
        .await
        .unwrap();
    assert_eq!(
        committed(&out.replies[0]),
        CommitOutcome {
            seq: 1,
            status: CommitStatus::Duplicate { slot: 2 }
        }
    );
    assert_eq!(out.progress[0].watermark, 3);

    let entries = store.read(&name, 1, 10).await.unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0].operation().unwrap().body.payload, b"first");
    for entry in &entries[1..] {
        let gap = entry.gap().expect("a gap");
        assert_eq!(gap.reason, GapReason::Superseded);
        assert_eq!(gap.superseded_by, Some(1));
        assert_eq!(entry.lease_operation_id, "same-op");
    }
    assert_eq!(
        store.slot(&name, 2).await.unwrap().unwrap().state,
        SlotState::Gap(GapReason::Superseded)
    );
    // A commit retry on the superseded slot is refused: it holds no operation.
    let reply = run_one(&store, commit(&leases[1], "again")).await;
    assert!(
        matches!(reply, Err(LeaseError::Resolved { seq: 2, .. })),
        "{reply:?}"
    );
}

#[tokio::test]
async fn duplicate_within_one_batch() {
    let (_dir, _clock, store, name) = fixture(10).await;
    let out = store
        .execute(vec![grant(&name, "op"), grant(&name, "op")])
        .await
        .unwrap();
    let (a, b) = (granted(&out.replies[0]), granted(&out.replies[1]));
    let out = store
        .execute(vec![commit(&b, "b"), commit(&a, "a")])
        .await
        .unwrap();
    assert_eq!(
        committed(&out.replies[0]),
        CommitOutcome {
            seq: 2,
            status: CommitStatus::Committed
        }
    );
    assert_eq!(
        committed(&out.replies[1]),
        CommitOutcome {
            seq: 2,
            status: CommitStatus::Duplicate { slot: 1 }
        }
    );
    assert_eq!((out.progress[0].watermark, out.progress[0].freed), (2, 2));
}

#[tokio::test]
async fn wrong_token_and_unknown_slot_are_refused_without_writing() {
    let (_dir, _clock, store, name) = fixture(10).await;
    let lease = grant_one(&store, &name, "op-1").await;
    let mut forged = key(&lease);
    forged.token = Token([7; 16]);
    let out = store
        .execute(vec![
            Command::Commit {
                key: forged.clone(),
                body: OperationBody::new("update", b"x".to_vec()),
            },
            Command::Release {
                key: forged.clone(),
                detail: None,
            },
            Command::Renew {
                key: forged,
                ttl: TTL,
            },
            Command::Commit {
                key: LeaseKey {
                    space: name.clone(),
                    seq: 42,
                    token: lease.token,
                },
                body: OperationBody::default(),
            },
            Command::Commit {
                key: LeaseKey {
                    space: space("elsewhere"),
                    seq: 1,
                    token: lease.token,
                },
                body: OperationBody::default(),
            },
            Command::Commit {
                key: LeaseKey {
                    space: name.clone(),
                    seq: u64::MAX,
                    token: lease.token,
                },
                body: OperationBody::default(),
            },
        ])
        .await
        .unwrap();
    for reply in &out.replies[..3] {
        assert!(
            matches!(reply, Err(LeaseError::WrongToken { seq: 1, .. })),
            "{reply:?}"
        );
    }
    assert!(matches!(
        &out.replies[3],
        Err(LeaseError::UnknownSlot { seq: 42, .. })
    ));
    assert!(matches!(
        &out.replies[4],
        Err(LeaseError::UnknownSpace { space }) if space.as_str() == "elsewhere"
    ));
    assert!(matches!(
        &out.replies[5],
        Err(LeaseError::UnknownSlot { seq: u64::MAX, .. })
    ));
    assert!(out.progress.is_empty());

    let view = store.slot(&name, 1).await.unwrap().unwrap();
    assert_eq!(view.state, SlotState::Leased);
    assert_eq!(view.lease.renewals, 0);
    // The real holder can still commit.
    let reply = run_one(&store, commit(&lease, "ok")).await;
    assert_eq!(committed(&reply).status, CommitStatus::Committed);
}

#[tokio::test]
async fn expired_lease_is_refused_by_the_store_clock() {
    let (_dir, clock, store, name) = fixture(10).await;
    let lease = grant_one(&store, &name, "op-1").await;

    // One microsecond before expiry the lease is live and can be renewed…
    clock.advance(TTL - Duration::from_micros(1));
    let reply = run_one(
        &store,
        Command::Renew {
            key: key(&lease),
            ttl: TTL,
        },
    )
    .await;
    let now = clock_now(&clock);
    assert_eq!(
        reply,
        Ok(Reply::Renewed {
            expires_at: now.plus(TTL),
            renewals: 1
        })
    );

    // …and exactly at expires_at it is expired.
    clock.advance(TTL);
    let out = store
        .execute(vec![
            commit(&lease, "late"),
            Command::Renew {
                key: key(&lease),
                ttl: TTL,
            },
            Command::RecordPartial {
                key: key(&lease),
                data: b"p".to_vec(),
            },
            Command::Release {
                key: key(&lease),
                detail: None,
            },
        ])
        .await
        .unwrap();
    for reply in &out.replies {
        match reply {
            Err(LeaseError::Expired {
                seq: 1,
                expired_at,
                now: at,
                ..
            }) => {
                assert_eq!(*expired_at, now.plus(TTL));
                assert_eq!(*at, clock_now(&clock));
            }
            other => panic!("expected Expired, got {other:?}"),
        }
    }
    let view = store.slot(&name, 1).await.unwrap().unwrap();
    assert_eq!(
        view.state,
        SlotState::Leased,
        "an expired slot is left to recovery"
    );
    assert_eq!(view.partial, None);
    let info = store.space_info(&name).await.unwrap().unwrap();
    assert_eq!(
        (info.in_flight, info.watermark),
        (1, 0),
        "expired slots still count against capacity"
    );
}

#[tokio::test]
async fn release_without_work_becomes_released_gap() {
    let (_dir, _clock, store, name) = fixture(10).await;
    let lease = grant_one(&store, &name, "op-1").await;
    let out = store
        .execute(vec![Command::Release {
            key: key(&lease),
            detail: Some("nothing to do".to_string()),
        }])
        .await
        .unwrap();
    assert_eq!(out.replies[0], Ok(Reply::Released(ReleaseOutcome::Gap)));
    assert_eq!((out.progress[0].watermark, out.progress[0].freed), (1, 1));
    let entries = store.read(&name, 1, 10).await.unwrap();
    match &entries[0].content {
        EntryContent::Gap(gap) => {
            assert_eq!(gap.reason, GapReason::Released);
            assert_eq!(gap.detail.as_deref(), Some("nothing to do"));
            assert_eq!(gap.superseded_by, None);
        }
        other => panic!("expected a gap, got {other:?}"),
    }
    let reply = run_one(
        &store,
        Command::Release {
            key: key(&lease),
            detail: None,
        },
    )
    .await;
    assert!(matches!(
        reply,
        Err(LeaseError::Resolved {
            state: SlotState::Gap(GapReason::Released),
            ..
        })
    ));
}

#[tokio::test]
async fn release_with_recorded_work_hands_the_slot_to_recovery() {
    let (_dir, clock, store, name) = fixture(10).await;
    let out = store
        .execute(vec![grant(&name, "op-1"), grant(&name, "op-2")])
        .await
        .unwrap();
    let (partial, result) = (granted(&out.replies[0]), granted(&out.replies[1]));
    let body = OperationBody::new("update", b"{\"ids\":[4]}".to_vec());
    let out = store
        .execute(vec![
            Command::RecordPartial {
                key: key(&partial),
                data: b"old".to_vec(),
            },
            Command::RecordPartial {
                key: key(&partial),
                data: b"checkpoint".to_vec(),
            },
            Command::RecordResult {
                key: key(&result),
                body: body.clone(),
            },
        ])
        .await
        .unwrap();
    assert!(
        out.replies.iter().all(|r| r == &Ok(Reply::Recorded)),
        "{:?}",
        out.replies
    );

    let view = store.slot(&name, 1).await.unwrap().unwrap();
    assert_eq!(
        view.partial.as_deref(),
        Some(&b"checkpoint"[..]),
        "a record replaces the earlier one"
    );
    assert_eq!(
        store.slot(&name, 2).await.unwrap().unwrap().result,
        Some(body)
    );

    let out = store
        .execute(vec![
            Command::Release {
                key: key(&partial),
                detail: None,
            },
            Command::Release {
                key: key(&result),
                detail: None,
            },
        ])
        .await
        .unwrap();
    for reply in &out.replies {
        assert_eq!(
            reply,
            &Ok(Reply::Released(ReleaseOutcome::HandedToRecovery))
        );
    }
    assert!(out.progress.is_empty(), "the slots did not leave LEASED");
    let view = store.slot(&name, 1).await.unwrap().unwrap();
    assert_eq!(view.state, SlotState::Leased);
    assert_eq!(view.lease.expires_at, clock_now(&clock), "expired at once");
    let reply = run_one(&store, commit(&partial, "too late")).await;
    assert!(
        matches!(reply, Err(LeaseError::Expired { seq: 1, .. })),
        "{reply:?}"
    );
}

#[tokio::test]
async fn refusals_do_not_abort_the_rest_of_the_batch() {
    let (_dir, _clock, store, name) = fixture(10).await;
    let lease = grant_one(&store, &name, "op-1").await;
    let mut forged = key(&lease);
    forged.token = Token([1; 16]);
    let out = store
        .execute(vec![
            Command::Commit {
                key: forged,
                body: OperationBody::default(),
            },
            grant(&space("missing"), "x"),
            commit(&lease, "ok"),
            grant(&name, "op-2"),
        ])
        .await
        .unwrap();
    assert_eq!(out.replies.len(), 4);
    assert!(out.replies[0].is_err() && out.replies[1].is_err());
    assert_eq!(committed(&out.replies[2]).status, CommitStatus::Committed);
    assert_eq!(granted(&out.replies[3]).seq, 2);
    assert_eq!(out.progress[0].watermark, 1);
}

#[tokio::test]
async fn spaces_are_listed_by_name_and_capacity_is_updated() {
    let (_dir, _clock, store, orders) = fixture(10).await;
    let info = store
        .ensure_space(&space("audit"), &SpaceConfig::default())
        .await
        .unwrap();
    assert_eq!(
        (info.last_seq, info.watermark, info.in_flight, info.capacity),
        (0, 0, 0, 10_000)
    );
    grant_one(&store, &orders, "op").await;
    let info = store
        .ensure_space(&orders, &SpaceConfig { capacity: 3 })
        .await
        .unwrap();
    assert_eq!(
        (info.last_seq, info.in_flight, info.capacity),
        (1, 1, 3),
        "counters are kept"
    );
    let names: Vec<_> = store
        .list_spaces()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, vec![space("audit"), orders]);
    assert_eq!(store.space_info(&space("nope")).await.unwrap(), None);
    assert!(store.read(&space("nope"), 1, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn store_reports_its_backend_clock_and_batching() {
    let (_dir, clock, store, _) = fixture(1).await;
    assert_eq!(store.backend(), "sqlite");
    assert_eq!(store.now().await.unwrap(), clock_now(&clock));
    let hint = store.batching();
    assert!(hint.group_commit && hint.max_batch >= 64);
    assert_eq!(hint.max_in_flight, 1);
    // Usable as a trait object, as the engine holds it.
    let dynamic: Arc<dyn Store> = Arc::new(store);
    assert_eq!(dynamic.backend(), "sqlite");
}

#[tokio::test]
async fn resolving_a_slot_drops_its_recorded_work() {
    let (_dir, _clock, store, name) = fixture(10).await;
    let lease = grant_one(&store, &name, "op-1").await;
    let out = store
        .execute(vec![
            Command::RecordPartial {
                key: key(&lease),
                data: b"checkpoint".to_vec(),
            },
            Command::RecordResult {
                key: key(&lease),
                body: OperationBody::new("update", b"r".to_vec()),
            },
            commit(&lease, "final"),
        ])
        .await
        .unwrap();
    assert_eq!(committed(&out.replies[2]).status, CommitStatus::Committed);
    let view = store.slot(&name, 1).await.unwrap().unwrap();
    assert_eq!(
        (view.state, view.partial, view.result),
        (SlotState::Committed, None, None)
    );
    let entries = store.read(&name, 1, 10).await.unwrap();
    assert_eq!(entries[0].operation().unwrap().body.payload, b"final");
}

#[tokio::test]
async fn a_failed_write_rolls_back_the_whole_batch_and_the_store_carries_on() {
    let (dir, _clock, store, name) = fixture(10).await;
    let lease = grant_one(&store, &name, "op-1").await;
    // Make the database refuse one particular grant, as a full disk or I/O error would.
    let path = dir.path().join("seq.db");
    let mut conn = SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::query(
        "CREATE TRIGGER refuse_boom BEFORE INSERT ON slots WHEN NEW.operation_id = 'boom' \
         BEGIN SELECT RAISE(ABORT, 'refused by test trigger'); END",
    )
    .execute(&mut conn)
    .await
    .unwrap();

    let err = store
        .execute(vec![
            commit(&lease, "lost"),
            grant(&name, "fine"),
            grant(&name, "boom"),
        ])
        .await
        .unwrap_err();
    match &err {
        StoreError::Backend { backend, detail } => {
            assert_eq!(*backend, "sqlite");
            assert!(detail.contains("refused by test trigger"), "{detail}");
        }
        other => panic!("expected Backend, got {other:?}"),
    }
    // Nothing of the batch was written.
    let view = store.slot(&name, 1).await.unwrap().unwrap();
    assert_eq!(view.state, SlotState::Leased);
    assert_eq!(store.slot(&name, 2).await.unwrap(), None);
    let info = store.space_info(&name).await.unwrap().unwrap();
    assert_eq!((info.last_seq, info.in_flight, info.watermark), (1, 1, 0));

    // The write connection is not left inside the failed transaction.
    sqlx::query("DROP TRIGGER refuse_boom")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let out = store
        .execute(vec![commit(&lease, "kept"), grant(&name, "boom")])
        .await
        .unwrap();
    assert_eq!(committed(&out.replies[0]).status, CommitStatus::Committed);
    assert_eq!(granted(&out.replies[1]).seq, 2);
    let entries = store.read(&name, 1, 10).await.unwrap();
    assert_eq!(entries[0].operation().unwrap().body.payload, b"kept");
}

#[tokio::test]
async fn one_batch_spans_several_spaces() {
    let (_dir, clock, store, orders) = fixture(10).await;
    let audit = space("audit");
    store
        .ensure_space(&audit, &SpaceConfig { capacity: 10 })
        .await
        .unwrap();
    let out = store
        .execute(vec![
            grant(&orders, "o-1"),
            grant(&audit, "a-1"),
            grant(&orders, "o-2"),
        ])
        .await
        .unwrap();
    let (o1, a1, o2) = (
        granted(&out.replies[0]),
        granted(&out.replies[1]),
        granted(&out.replies[2]),
    );
    assert_eq!((o1.seq, a1.seq, o2.seq), (1, 1, 2));

    // Renew one, commit and release others, across both spaces, in one batch.
    clock.advance(Duration::from_secs(1));
    let out = store
        .execute(vec![
            Command::Renew {
                key: key(&o2),
                ttl: TTL,
            },
            commit(&a1, "audit"),
            Command::Release {
                key: key(&o1),
                detail: Some("not needed".into()),
            },
        ])
        .await
        .unwrap();
    assert!(matches!(
        out.replies[0],
        Ok(Reply::Renewed { renewals: 1, .. })
    ));
    assert_eq!(committed(&out.replies[1]).seq, 1);
    assert_eq!(out.replies[2], Ok(Reply::Released(ReleaseOutcome::Gap)));
    let mut progress = out.progress.clone();
    progress.sort_by(|a, b| a.space.cmp(&b.space));
    assert_eq!(
        progress
            .iter()
            .map(|p| (p.space.as_str(), p.watermark, p.freed))
            .collect::<Vec<_>>(),
        vec![("audit", 1, 1), ("orders", 1, 1)]
    );
    let view = store.slot(&orders, 2).await.unwrap().unwrap();
    assert_eq!(
        (view.lease.renewals, view.lease.expires_at),
        (1, clock_now(&clock).plus(TTL))
    );
    assert_eq!(store.read(&audit, 1, 10).await.unwrap().len(), 1);
    assert_eq!(
        store.read(&orders, 1, 10).await.unwrap()[0]
            .gap()
            .unwrap()
            .reason,
        GapReason::Released
    );
}

#[tokio::test]
async fn a_slot_granted_in_a_batch_cannot_be_committed_by_it() {
    let (_dir, _clock, store, name) = fixture(10).await;
    // The token of seq 1 is only known once the batch answers, so a commit in the same batch
    // cannot carry it.
    let out = store
        .execute(vec![
            grant(&name, "op"),
            Command::Commit {
                key: LeaseKey {
                    space: name.clone(),
                    seq: 1,
                    token: Token([0; 16]),
                },
                body: OperationBody::default(),
            },
        ])
        .await
        .unwrap();
    granted(&out.replies[0]);
    assert!(matches!(
        out.replies[1],
        Err(LeaseError::WrongToken { seq: 1, .. })
    ));
}

// ---------------------------------------------------------------------------------------
// recovery, resource leases and history survive a restart
// ---------------------------------------------------------------------------------------

/// Epochs never go back, even across close and reopen; parked work and recorded history
/// events are in the file too.
#[tokio::test]
async fn epochs_parked_work_and_history_survive_reopen() {
    use seqlease_core::{ClaimRequest, HistoryQuery, ParkedQuery, Resolution, Resolve};

    let dir = TempDir::new().unwrap();
    let path = dir.path().join("durable.db");
    let clock = Arc::new(ManualClock::new());
    let name = space("durable");
    let acquire = |agent: &str| ResourceCommand::Acquire {
        resource: "shard-1".to_string(),
        agent: agent.to_string(),
        ttl: TTL,
        max_renewals: None,
        metadata: None,
    };

    let store = open(&path, &clock).await;
    store
        .ensure_space(&name, &SpaceConfig { capacity: 8 })
        .await
        .unwrap();
    let out = store
        .resources(vec![
            acquire("a"),
            ResourceCommand::Release {
                resource: "shard-1".to_string(),
                agent: "a".to_string(),
                epoch: 1,
            },
        ])
        .await
        .unwrap();
    assert!(out.replies.iter().all(Result::is_ok), "{:?}", out.replies);
    let lease = grant_one(&store, &name, "op-1").await;
    let key = LeaseKey {
        space: name.clone(),
        seq: lease.seq,
        token: lease.token,
    };
    run_one(
        &store,
        Command::RecordPartial {
            key,
            data: b"half".to_vec(),
        },
    )
    .await
    .unwrap();
    clock.advance(TTL);
    let claimed = store
        .claim_expired(&ClaimRequest {
            space: name.clone(),
            cleaner: "c".to_string(),
            ttl: TTL,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let out = store
        .resolve(vec![Resolve {
            claim: claimed[0].claim.clone(),
            resolution: Resolution::Gap {
                detail: Some("no resolver".to_string()),
                park: true,
            },
        }])
        .await
        .unwrap();
    assert!(out.replies[0].is_ok(), "{:?}", out.replies[0]);
    assert_eq!(out.progress[0].watermark, 1);
    store.close().await;

    let store = open(&path, &clock).await;
    assert_eq!(store.resource_epoch("shard-1").await.unwrap(), 1);
    let out = store.resources(vec![acquire("b")]).await.unwrap();
    let Ok(Reply::Resource(ResourceReply::Held(held))) = &out.replies[0] else {
        panic!("{:?}", out.replies[0]);
    };
    assert_eq!(held.epoch, 2, "the epoch survives release and restart");
    let history = store.resource_history(Some("shard-1"), 10).await.unwrap();
    assert_eq!(
        history.len(),
        3,
        "acquired, released, acquired: {history:?}"
    );
    let parked = store.parked(&ParkedQuery::default()).await.unwrap();
    assert_eq!(
        (parked.len(), parked[0].partial.as_deref()),
        (1, Some(&b"half"[..]))
    );
    let events = store
        .slot_history(&HistoryQuery {
            space: name.clone(),
            seq: Some(1),
            from_seq: 1,
            limit: 100,
        })
        .await
        .unwrap();
    let kinds: Vec<_> = events.iter().map(|e| e.kind.as_str()).collect();
    // Parking and the gap happen at the same instant; ties go in `SlotEventKind` order.
    assert_eq!(kinds, ["granted", "expired", "claimed", "parked", "gapped"]);
    store.close().await;
}
