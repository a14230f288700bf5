//! The conformance checks, one function per property. Each takes a [`Harness`] and panics
//! with a message naming the guarantee when the store breaks it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use seqlease::{
    CommitStatus, Engine, EngineConfig, EntryContent, Error, GapReason, Grant, LeaseError,
    OperationBody, ReleaseOutcome, SlotState, Space, SpaceConfig,
};
use seqlease_core::{Command, LeaseKey, Reply, Token};

use crate::harness::{Harness, test_config};

/// Generous bound for anything that should happen "at once".
const SOON: Duration = Duration::from_secs(20);
const TTL: Duration = Duration::from_secs(30);
const TASKS: usize = 16;

fn body(n: impl std::fmt::Display) -> OperationBody {
    OperationBody::new("update", format!("{{\"ids\":[{n}]}}")).with_source_event(format!("evt-{n}"))
}

async fn space(engine: &Engine, name: &str) -> Space {
    engine.space(name).await.expect("space opens")
}

pub(crate) async fn lease_err<T: std::fmt::Debug>(r: Result<T, Error>) -> LeaseError {
    match r {
        Err(Error::Lease(e)) => e,
        other => panic!("expected a lease error, got {other:?}"),
    }
}

/// Read the whole log up to the watermark.
async fn read_all(space: &Space) -> Vec<seqlease::Entry> {
    let engine = space.engine();
    let mut out = Vec::new();
    let mut from = 1;
    loop {
        let page = engine
            .store()
            .read(space.name(), from, 500)
            .await
            .expect("read");
        let Some(last) = page.last() else { break };
        from = last.seq + 1;
        out.extend(page);
    }
    out
}

/// I1: seqs are allocated once each, contiguously from 1.
pub async fn i1_seqs_are_contiguous_from_one(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let s = space(&engine, "i1").await;
    let mut seqs = Vec::new();
    for i in 0..20 {
        let mut l = s.grant(Grant::new(format!("op-{i}"), "t")).await.unwrap();
        seqs.push(l.seq());
        l.commit(body(i)).await.unwrap();
    }
    let many = s
        .grant_many(
            (20..30)
                .map(|i| Grant::new(format!("op-{i}"), "t"))
                .collect(),
        )
        .await
        .unwrap();
    for l in many {
        let mut l = l.unwrap();
        seqs.push(l.seq());
        l.commit(body(l.seq())).await.unwrap();
    }
    assert_eq!(
        seqs,
        (1..=30).collect::<Vec<_>>(),
        "I1: seqs must be 1, 2, 3, … in grant order"
    );
    let info = s.info().await.unwrap();
    assert_eq!((info.last_seq, info.watermark, info.in_flight), (30, 30, 0));
}

/// I1 under concurrency: many tasks granting at once never get the same seq.
pub async fn i1_concurrent_grants_never_repeat_a_seq(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let s = space(&engine, "i1-concurrent").await;
    let per_task = 40;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..per_task {
                let mut l = s.grant(Grant::new(format!("t{t}-{i}"), "t")).await.unwrap();
                seqs.push(l.seq());
                l.commit(body(i)).await.unwrap();
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let n = (TASKS * per_task) as u64;
    let unique: HashSet<u64> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "I1: a seq was granted twice");
    assert_eq!(
        unique,
        (1..=n).collect::<HashSet<_>>(),
        "I1: seqs must be contiguous from 1"
    );
    assert_eq!(s.wait_for(n, SOON).await.unwrap(), n);
}

/// I1 across engines: two engines (as two processes would) share one counter.
pub async fn i1_two_engines_on_one_store_share_the_counter(h: &dyn Harness) {
    let fx = h.fresh().await;
    let (a, b) = (fx.engine().await, fx.engine().await);
    let (sa, sb) = (space(&a, "shared").await, space(&b, "shared").await);
    let mut tasks = Vec::new();
    for (t, s) in [
        (0, sa.clone()),
        (1, sb.clone()),
        (2, sa.clone()),
        (3, sb.clone()),
    ] {
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..25 {
                let mut l = s.grant(Grant::new(format!("e{t}-{i}"), "t")).await.unwrap();
                seqs.push(l.seq());
                l.commit(body(i)).await.unwrap();
            }
            seqs
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        for seq in t.await.unwrap() {
            assert!(all.insert(seq), "I1: seq {seq} granted by two engines");
        }
    }
    assert_eq!(all, (1..=100).collect::<HashSet<_>>());
    assert_eq!(sb.info().await.unwrap().watermark, 100);
}

/// I2: once resolved, nothing changes a slot.
pub async fn i2_resolved_slot_never_changes(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let s = space(&engine, "i2").await;
    let mut l = s.grant(Grant::new("op-a", "t")).await.unwrap();
    let first = l.commit(body("a")).await.unwrap();
    assert_eq!(first.status, CommitStatus::Committed);
    // A retry of the same commit answers without writing; another body does not replace it.
    let again = l.commit(body("other")).await.unwrap();
    assert_eq!(
        again,
        seqlease::CommitOutcome {
            seq: 1,
            status: CommitStatus::AlreadyCommitted
        }
    );
    assert!(matches!(
        lease_err(l.renew(None).await).await,
        LeaseError::Resolved {
            seq: 1,
            state: SlotState::Committed,
            ..
        }
    ));
    assert!(matches!(
        lease_err(l.record_partial(b"x".to_vec()).await).await,
        LeaseError::Resolved { .. }
    ));
    assert!(matches!(
        lease_err(l.release(None).await).await,
        LeaseError::Resolved { .. }
    ));

    let l2 = s.grant(Grant::new("op-b", "t")).await.unwrap();
    let token = l2.token();
    assert_eq!(
        l2.release(Some("no work".into())).await.unwrap(),
        ReleaseOutcome::Gap
    );
    // Commit after release, through the raw store command (the handle is gone).
    let key = LeaseKey {
        space: s.name().clone(),
        seq: 2,
        token,
    };
    let out = engine
        .store()
        .execute(vec![Command::Commit {
            key,
            body: body("late"),
        }])
        .await
        .unwrap();
    assert!(matches!(
        out.replies[0],
        Err(LeaseError::Resolved {
            seq: 2,
            state: SlotState::Gap(GapReason::Released),
            ..
        })
    ));

    let log = read_all(&s).await;
    assert_eq!(log.len(), 2);
    assert_eq!(
        log[0].operation().unwrap().body,
        body("a"),
        "I2: the committed body changed"
    );
    let gap = log[1].gap().expect("slot 2 is a gap");
    assert_eq!(
        (gap.reason, gap.detail.as_deref()),
        (GapReason::Released, Some("no work"))
    );
}

/// I2 under races: a commit and a release with the same token, sent concurrently from many
/// tasks, resolve each slot exactly once.
pub async fn i2_racing_commit_and_release_resolve_once(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let s = space(&engine, "i2-race").await;
    let slots = 32;
    let leases = s
        .grant_many(
            (0..slots)
                .map(|i| Grant::new(format!("op-{i}"), "t"))
                .collect(),
        )
        .await
        .unwrap();
    let keys: Vec<LeaseKey> = leases
        .into_iter()
        .map(|l| {
            let l = l.unwrap();
            let key = LeaseKey {
                space: l.space().clone(),
                seq: l.seq(),
                token: l.token(),
            };
            l.abandon(); // the raw commands below own these slots
            key
        })
        .collect();
    let mut tasks = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        for attempt in 0..4 {
            let store = engine.store().clone();
            let key = key.clone();
            let cmd = if (i + attempt) % 2 == 0 {
                Command::Commit {
                    key,
                    body: body(attempt),
                }
            } else {
                Command::Release { key, detail: None }
            };
            tasks.push(tokio::spawn(async move {
                store.execute(vec![cmd]).await.unwrap().replies.remove(0)
            }));
        }
    }
    let mut winners: HashMap<u64, usize> = HashMap::new();
    for (n, t) in tasks.into_iter().enumerate() {
        let seq = keys[n / 4].seq;
        match t.await.unwrap() {
            Ok(Reply::Committed(o)) if o.status == CommitStatus::Committed => {
                *winners.entry(seq).or_default() += 1
            }
            Ok(Reply::Released(ReleaseOutcome::Gap)) => *winners.entry(seq).or_default() += 1,
            Ok(Reply::Committed(o)) => assert_eq!(o.status, CommitStatus::AlreadyCommitted),
            Err(LeaseError::Resolved { .. }) => {}
            other => panic!("unexpected reply {other:?}"),
        }
    }
    for key in &keys {
        assert_eq!(
            winners.get(&key.seq),
            Some(&1),
            "I2: slot {} must resolve exactly once",
            key.seq
        );
    }
    assert_eq!(s.info().await.unwrap().watermark, slots as u64);
}

/// I3: a wrong token or unknown slot is refused and writes nothing.
pub async fn i3_wrong_token_and_unknown_slot_write_nothing(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let s = space(&engine, "i3").await;
    let mut l = s.grant(Grant::new("op", "t")).await.unwrap();
    let store = engine.store();
    let forged = LeaseKey {
        space: s.name().clone(),
        seq: 1,
        token: Token([7; 16]),
    };
    let unknown = LeaseKey {
        space: s.name().clone(),
        seq: 99,
        token: l.token(),
    };
    let zero = LeaseKey {
        space: s.name().clone(),
        seq: 0,
        token: l.token(),
    };
    let other_space = LeaseKey {
        space: seqlease::SpaceName::new("nope").unwrap(),
        seq: 1,
        token: l.token(),
    };
    let out = store
        .execute(vec![
            Command::Commit {
                key: forged.clone(),
                body: body(1),
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
                key: unknown,
                body: body(1),
            },
            Command::Commit {
                key: zero,
                body: body(1),
            },
            Command::Commit {
                key: other_space,
                body: body(1),
            },
        ])
        .await
        .unwrap();
    for r in &out.replies[..3] {
        assert!(
            matches!(r, Err(LeaseError::WrongToken { seq: 1, .. })),
            "I3: forged token accepted: {r:?}"
        );
    }
    assert!(matches!(
        out.replies[3],
        Err(LeaseError::UnknownSlot { seq: 99, .. })
    ));
    assert!(matches!(
        out.replies[4],
        Err(LeaseError::UnknownSlot { seq: 0, .. })
    ));
    assert!(matches!(
        out.replies[5],
        Err(LeaseError::UnknownSpace { .. })
    ));
    let view = store.slot(s.name(), 1).await.unwrap().unwrap();
    assert_eq!(
        view.state,
        SlotState::Leased,
        "I3: a refused command changed the slot"
    );
    assert_eq!(view.lease.renewals, 0);
    assert_eq!(
        view.lease.token,
        Token([0; 16]),
        "inspection must not reveal the token"
    );
    l.commit(body(1))
        .await
        .expect("the real holder can still commit");
}

/// I3: after expiry by the store's clock, commit (and renew, record, release) is refused.
pub async fn i3_commit_after_expiry_is_refused(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let s = space(&engine, "i3-expiry").await;
    let mut l = s.grant(Grant::new("op", "t").ttl(TTL)).await.unwrap();
    let mut l2 = s.grant(Grant::new("op2", "t").ttl(TTL)).await.unwrap();
    fx.advance(TTL + Duration::from_secs(1));
    let e = lease_err(l.commit(body(1)).await).await;
    assert!(
        matches!(e, LeaseError::Expired { seq: 1, .. }),
        "I3: commit after expiry accepted: {e:?}"
    );
    assert!(
        e.to_string().contains("i3-expiry/1"),
        "error names space/seq: {e}"
    );
    assert!(matches!(
        lease_err(l2.renew(None).await).await,
        LeaseError::Expired { .. }
    ));
    assert!(matches!(
        lease_err(l2.record_result(body(2)).await).await,
        LeaseError::Expired { .. }
    ));
    let view = engine.store().slot(s.name(), 1).await.unwrap().unwrap();
    assert_eq!(
        view.state,
        SlotState::Leased,
        "I3: the refused commit wrote something"
    );
    assert_eq!(s.info().await.unwrap().watermark, 0);
    assert!(read_all(&s).await.is_empty());
}

/// I3: `expires_at` itself is already expired; just before it is not.
pub async fn i3_expiry_boundary_uses_store_clock(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let s = space(&engine, "i3-boundary").await;
    let mut a = s
        .grant(Grant::new("a", "t").ttl(Duration::from_secs(10)))
        .await
        .unwrap();
    let mut b = s
        .grant(Grant::new("b", "t").ttl(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(
        a.expires_at().as_micros() - engine.now().await.unwrap().as_micros(),
        10_000_000
    );
    fx.advance(Duration::from_secs(10) - Duration::from_millis(1));
    a.commit(body("a"))
        .await
        .expect("1 ms before expiry the lease is live");
    fx.advance(Duration::from_millis(1));
    assert!(matches!(
        lease_err(b.commit(body("b")).await).await,
        LeaseError::Expired { .. }
    ));
}

/// I3: renewal moves the store's expiry and counts renewals.
pub async fn i3_renew_extends_and_counts(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let s = space(&engine, "renew").await;
    let mut l = s
        .grant(Grant::new("op", "t").ttl(Duration::from_secs(10)))
        .await
        .unwrap();
    for _ in 0..3 {
        fx.advance(Duration::from_secs(8));
        l.renew(Some(Duration::from_secs(10))).await.unwrap();
    }
    assert_eq!(l.renewals(), 3);
    fx.advance(Duration::from_secs(8)); // 32 s after grant: alive only thanks to renewals
    assert_eq!(
        l.commit(body(1)).await.unwrap().status,
        CommitStatus::Committed
    );
}

/// I4: every acknowledged commit is readable at its seq with its body.
pub async fn i4_acknowledged_commits_are_readable(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let s = space(&engine, "i4").await;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..30 {
                let mut l = s
                    .grant(Grant::new(format!("t{t}-{i}"), "orders"))
                    .await
                    .unwrap();
                let b = body(format!("{t}{i:03}"));
                if i % 7 == 3 {
                    l.release(None).await.unwrap();
                    continue;
                }
                let out = l.commit(b.clone()).await.unwrap();
                acked.push((out.seq, format!("t{t}-{i}"), b));
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    let n = (TASKS * 30) as u64;
    s.wait_for(n, SOON).await.unwrap();
    let log: BTreeMap<u64, seqlease::Entry> =
        read_all(&s).await.into_iter().map(|e| (e.seq, e)).collect();
    assert_eq!(log.len() as u64, n);
    for (seq, op_id, b) in acked {
        let op = log[&seq]
            .operation()
            .unwrap_or_else(|| panic!("I4: acknowledged commit at {seq} missing"));
        assert_eq!(
            (&op.operation_id, &op.body, op.projection_type.as_str()),
            (&op_id, &b, "orders")
        );
    }
}

/// I4 across restarts: what was acknowledged is there after reopening (persistent stores).
pub async fn i4_commits_survive_reopen(h: &dyn Harness) {
    let fx = h.fresh().await;
    let reopen = fx
        .reopen
        .as_ref()
        .expect("every harness provides reopen (memory: the same store)");
    let engine = fx.engine().await;
    let s = space(&engine, "i4-reopen").await;
    let mut acked = Vec::new();
    for i in 0..20 {
        let mut l = s.grant(Grant::new(format!("op-{i}"), "t")).await.unwrap();
        acked.push((l.commit(body(i)).await.unwrap().seq, body(i)));
    }
    let _open = s.grant(Grant::new("still-open", "t")).await.unwrap();
    let store = reopen().await;
    let engine2 = Engine::builder()
        .store(store)
        .config(test_config())
        .build()
        .await
        .unwrap();
    assert_eq!(engine2.store().backend(), engine.store().backend());
    let s2 = space(&engine2, "i4-reopen").await;
    let info = s2.info().await.unwrap();
    assert_eq!((info.last_seq, info.watermark, info.in_flight), (21, 20, 1));
    let log = read_all(&s2).await;
    for (seq, b) in acked {
        assert_eq!(
            log[(seq - 1) as usize].operation().unwrap().body,
            b,
            "I4: lost at {seq} after reopen"
        );
    }
    let mut l = s2.grant(Grant::new("after", "t")).await.unwrap();
    assert_eq!(l.seq(), 22, "I1: the counter survives a reopen");
    l.commit(body("after")).await.unwrap();
}

/// I5: releasing a lease with recorded work hands it to recovery instead of dropping it.
pub async fn i5_release_with_recorded_work_goes_to_recovery(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let s = space(&engine, "i5").await;
    let mut with_result = s.grant(Grant::new("with-result", "t")).await.unwrap();
    with_result.record_result(body("done")).await.unwrap();
    let mut with_partial = s.grant(Grant::new("with-partial", "t")).await.unwrap();
    with_partial
        .record_partial(b"{\"ids\":[1,2]}".to_vec())
        .await
        .unwrap();
    with_partial
        .record_partial(b"{\"ids\":[1,2,3]}".to_vec())
        .await
        .unwrap();
    assert_eq!(
        with_result.release(None).await.unwrap(),
        ReleaseOutcome::HandedToRecovery
    );
    assert_eq!(
        with_partial.release(None).await.unwrap(),
        ReleaseOutcome::HandedToRecovery
    );
    let store = engine.store();
    let r = store.slot(s.name(), 1).await.unwrap().unwrap();
    assert_eq!(
        (r.state, r.result),
        (SlotState::Leased, Some(body("done"))),
        "I5: recorded result lost"
    );
    let p = store.slot(s.name(), 2).await.unwrap().unwrap();
    assert_eq!(
        p.partial.as_deref(),
        Some(&b"{\"ids\":[1,2,3]}"[..]),
        "I5: latest partial work kept"
    );
    let now = engine.now().await.unwrap();
    assert!(
        r.lease.expires_at <= now && p.lease.expires_at <= now,
        "handed-over leases are expired"
    );
    assert_eq!(
        s.info().await.unwrap().watermark,
        0,
        "no gap was written over recorded work"
    );
}

/// I6: committing an operation id that is already committed returns the existing seq.
pub async fn i6_duplicate_operation_points_to_existing_seq(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let s = space(&engine, "i6").await;
    let mut a = s.grant(Grant::new("same-op", "t")).await.unwrap();
    let mut b = s.grant(Grant::new("same-op", "t")).await.unwrap();
    assert_eq!(
        a.commit(body(1)).await.unwrap(),
        seqlease::CommitOutcome {
            seq: 1,
            status: CommitStatus::Committed
        }
    );
    let dup = b.commit(body(2)).await.unwrap();
    assert_eq!(
        dup,
        seqlease::CommitOutcome {
            seq: 1,
            status: CommitStatus::Duplicate { slot: 2 }
        }
    );
    let log = read_all(&s).await;
    assert_eq!(log.len(), 2);
    let gap = log[1].gap().expect("I6: the duplicate's slot is a gap");
    assert_eq!(
        (gap.reason, gap.superseded_by),
        (GapReason::Superseded, Some(1))
    );
    // The same operation id in another space is independent.
    let other = space(&engine, "i6-other").await;
    let mut c = other.grant(Grant::new("same-op", "t")).await.unwrap();
    assert_eq!(
        c.commit(body(3)).await.unwrap().status,
        CommitStatus::Committed
    );
}

/// I6 under concurrency: many tasks committing a few operation ids commit each exactly once.
pub async fn i6_concurrent_duplicates_commit_once(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let s = space(&engine, "i6-concurrent").await;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for i in 0..12 {
                let op = format!("op-{}", (t + i) % 8);
                let mut l = s.grant(Grant::new(op.clone(), "t")).await.unwrap();
                seen.push((op, l.commit(body(t)).await.unwrap()));
            }
            seen
        }));
    }
    let mut claimed: HashMap<String, u64> = HashMap::new();
    for t in tasks {
        for (op, out) in t.await.unwrap() {
            let prev = *claimed.entry(op.clone()).or_insert(out.seq);
            assert_eq!(prev, out.seq, "I6: {op} reported at two seqs");
        }
    }
    let log = read_all(&s).await;
    assert_eq!(log.len(), TASKS * 12);
    let mut committed: HashMap<String, u64> = HashMap::new();
    for e in &log {
        match &e.content {
            EntryContent::Operation(op) => {
                assert!(
                    committed.insert(op.operation_id.clone(), e.seq).is_none(),
                    "I6: {} twice",
                    op.operation_id
                );
            }
            EntryContent::Gap(g) => assert_eq!(g.reason, GapReason::Superseded),
        }
    }
    assert_eq!(
        committed, claimed,
        "every commit answer points at the one committed entry"
    );
    for e in &log {
        if let Some(g) = e.gap() {
            let target = g.superseded_by.expect("superseded gaps point somewhere");
            assert_eq!(Some(&target), committed.get(&e.lease_operation_id));
        }
    }
}

/// I7: the watermark stops at the lowest unresolved slot.
pub async fn i7_watermark_waits_for_the_lowest_open_slot(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let s = space(&engine, "i7").await;
    let mut ls = Vec::new();
    for i in 0..4 {
        ls.push(s.grant(Grant::new(format!("op-{i}"), "t")).await.unwrap());
    }
    ls[3].commit(body(4)).await.unwrap();
    ls[1].commit(body(2)).await.unwrap();
    assert_eq!(s.watermark(), 0);
    assert!(
        read_all(&s).await.is_empty(),
        "I7: a reader saw an entry above the watermark"
    );
    ls[0].commit(body(1)).await.unwrap();
    assert_eq!(s.watermark(), 2);
    assert_eq!(read_all(&s).await.len(), 2);
    ls.remove(2).release(None).await.unwrap();
    assert_eq!(s.watermark(), 4);
    assert_eq!(s.info().await.unwrap().watermark, 4);
}

/// I7: the watermark never goes back, whatever the concurrency.
pub async fn i7_watermark_is_monotonic_under_concurrency(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let s = space(&engine, "i7-mono").await;
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (s, stop) = (s.clone(), stop.clone());
        tokio::spawn(async move {
            let mut last = 0;
            let mut samples = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let w = s.info().await.unwrap().watermark.max(s.watermark());
                assert!(w >= last, "I7: watermark went back from {last} to {w}");
                last = w;
                samples += 1;
                tokio::task::yield_now().await;
            }
            samples
        })
    };
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                let mut l = s.grant(Grant::new(format!("{t}-{i}"), "t")).await.unwrap();
                if (t + i) % 5 == 0 {
                    tokio::task::yield_now().await;
                }
                l.commit(body(i)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    assert!(watcher.await.unwrap() > 0);
    assert_eq!(
        s.wait_for(TASKS as u64 * 25, SOON).await.unwrap(),
        TASKS as u64 * 25
    );
}

/// I7: reading `1..=W` gives the same entries every time, and never more.
pub async fn i7_reads_are_deterministic_and_bounded_by_watermark(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let s = space(&engine, "i7-replay").await;
    let mut open = Vec::new();
    for i in 0..40 {
        let mut l = s.grant(Grant::new(format!("op-{i}"), "t")).await.unwrap();
        match i % 4 {
            0 => drop(l.commit(body(i)).await.unwrap()),
            1 => drop(l.release(Some(format!("skip {i}"))).await.unwrap()),
            2 if i > 30 => open.push(l),
            _ => drop(l.commit(body(i)).await.unwrap()),
        }
    }
    let w = s.info().await.unwrap().watermark;
    assert_eq!(w, 34, "slot 35 is still open");
    let first = read_all(&s).await;
    assert_eq!(first.len() as u64, w);
    let second = read_all(&s).await;
    assert_eq!(first, second, "I7: replay of 1..=W differs");
    let tail = engine.store().read(s.name(), 30, 100).await.unwrap();
    assert_eq!(
        tail.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (30..=34).collect::<Vec<_>>()
    );
    let beyond = engine.store().read(s.name(), 35, 100).await.unwrap();
    assert!(
        beyond.is_empty(),
        "I7: read above the watermark returned {beyond:?}"
    );
    assert_eq!(
        engine.store().read(s.name(), 1, 3).await.unwrap().len(),
        3,
        "limit honoured"
    );
    drop(open);
}

/// I7: a reader at the barrier follows commits made in any order and sees them in seq order.
pub async fn i7_reader_follows_out_of_order_commits(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let s = space(&engine, "i7-reader").await;
    let n = 200u64;
    let reader = {
        let s = s.clone();
        tokio::spawn(async move {
            let mut r = s.reader(1);
            let mut seqs = Vec::new();
            while seqs.len() < n as usize {
                let e = tokio::time::timeout(SOON, r.next())
                    .await
                    .expect("reader woken")
                    .unwrap();
                seqs.push(e.seq);
            }
            seqs
        })
    };
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut held = Vec::new();
            for i in 0..(n as usize / TASKS + 1) {
                if s.info().await.unwrap().last_seq >= n {
                    break;
                }
                held.push(s.grant(Grant::new(format!("{t}-{i}"), "t")).await.unwrap());
                if held.len() == 3 {
                    // Commit newest first, so slots resolve out of order.
                    while let Some(mut l) = held.pop() {
                        l.commit(body(i)).await.unwrap();
                    }
                }
            }
            for mut l in held.into_iter().rev() {
                l.commit(body(t)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let seqs = reader.await.unwrap();
    assert_eq!(
        seqs,
        (1..=n).collect::<Vec<_>>(),
        "I7: reader must see 1, 2, 3, … in order"
    );
}

/// `wait_for` gives up with a typed timeout.
pub async fn i7_wait_for_times_out(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let s = space(&engine, "wait").await;
    let _held = s.grant(Grant::new("op", "t")).await.unwrap();
    let e = s.wait_for(1, Duration::from_millis(20)).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Timeout {
                what: "the watermark",
                ..
            }
        ),
        "{e:?}"
    );
    let mut r = s.reader(1);
    assert!(
        r.next_timeout(Duration::from_millis(20))
            .await
            .unwrap()
            .is_none()
    );
}

/// Capacity: at capacity a grant fails fast, or waits and is woken by a release.
pub async fn capacity_fails_fast_or_waits_to_be_woken(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let s = engine
        .space_with("cap", SpaceConfig { capacity: 2 })
        .await
        .unwrap();
    let a = s.grant(Grant::new("a", "t")).await.unwrap();
    let mut b = s.grant(Grant::new("b", "t")).await.unwrap();
    let e = lease_err(s.grant(Grant::new("c", "t")).await).await;
    assert_eq!(
        e,
        LeaseError::AtCapacity {
            space: s.name().clone(),
            capacity: 2
        }
    );
    let timed_out = s
        .grant(Grant::new("c", "t").wait(Duration::from_millis(20)))
        .await
        .unwrap_err();
    assert!(matches!(
        timed_out,
        Error::Timeout {
            what: "capacity",
            ..
        }
    ));
    // A waiter is woken by the release (the poll fallback is an hour in tests).
    let waiter = {
        let s = s.clone();
        tokio::spawn(async move { s.grant(Grant::new("c", "t").wait(SOON)).await })
    };
    tokio::task::yield_now().await;
    a.release(None).await.unwrap();
    let mut c = waiter
        .await
        .unwrap()
        .expect("woken waiter gets the freed capacity");
    assert_eq!(c.seq(), 3);
    c.commit(body(3)).await.unwrap();
    b.commit(body(2)).await.unwrap();
    assert_eq!(s.info().await.unwrap().in_flight, 0);
    // Expired-but-unresolved leases still hold capacity until recovery resolves them.
    let _x = s
        .grant(Grant::new("x", "t").ttl(Duration::from_secs(1)))
        .await
        .unwrap();
    let _y = s
        .grant(Grant::new("y", "t").ttl(Duration::from_secs(1)))
        .await
        .unwrap();
    fx.advance(Duration::from_secs(5));
    assert!(matches!(
        lease_err(s.grant(Grant::new("z", "t")).await).await,
        LeaseError::AtCapacity { .. }
    ));
    let zero = engine
        .space_with("cap0", SpaceConfig { capacity: 0 })
        .await
        .unwrap_err();
    assert!(matches!(zero, Error::Invalid(_)));
}

/// Capacity and barrier wake-ups under contention, on a multi-threaded runtime: at
/// capacity 2, `TASKS` granters that wait for capacity (each commit or release frees a
/// slot for them) and readers waiting at the barrier for every seventh seq. The poll
/// fallback is an hour in tests, so every waiter here is served by a wake-up, and all of
/// them must be. This is the real engine on a real store under load; it cannot show a
/// single lost wake-up that a later one covers (measured on the memory store: with the
/// grant's second try removed it still passes), which is what the shuttle schedules in
/// `src/schedules/barrier.rs` check.
pub async fn capacity_and_barrier_waiters_under_contention_are_all_woken(h: &dyn Harness) {
    const ROUNDS: usize = 12;
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let s = engine
        .space_with("wake-storm", SpaceConfig { capacity: 2 })
        .await
        .unwrap();
    let total = (TASKS * ROUNDS) as u64;
    let readers: Vec<_> = (1..=total)
        .step_by(7)
        .map(|seq| {
            let s = s.clone();
            tokio::spawn(async move { s.wait_for(seq, SOON).await })
        })
        .collect();
    let granters: Vec<_> = (0..TASKS)
        .map(|t| {
            let s = s.clone();
            tokio::spawn(async move {
                for i in 0..ROUNDS {
                    let grant = Grant::new(format!("storm-{t}-{i}"), "t").wait(SOON);
                    let mut lease = s.grant(grant).await.expect("woken for capacity");
                    if (t + i) % 3 == 0 {
                        tokio::task::yield_now().await;
                    }
                    if (t + i) % 4 == 0 {
                        lease.release(None).await.unwrap();
                    } else {
                        lease.commit(body(i)).await.unwrap();
                    }
                }
            })
        })
        .collect();
    for g in granters {
        g.await.unwrap();
    }
    for (r, seq) in readers.into_iter().zip((1..=total).step_by(7)) {
        let w = r.await.unwrap().expect("reader woken at the barrier");
        assert!(w >= seq, "reader for {seq} woke at watermark {w}");
    }
    let info = s.info().await.unwrap();
    assert_eq!(
        (info.last_seq, info.watermark, info.in_flight),
        (total, total, 0)
    );
}

/// Bad input: each gets a typed, actionable error, and nothing committed changes.
pub async fn bad_input_is_refused_and_changes_nothing(h: &dyn Harness) {
    let fx = h.fresh().await;
    let config = EngineConfig {
        max_payload_bytes: 1024,
        max_ttl: Duration::from_secs(3600),
        ..test_config()
    };
    let engine = fx.engine_with(config).await;
    let s = space(&engine, "bad").await;
    let mut ok = s.grant(Grant::new("kept", "t")).await.unwrap();
    ok.commit(body("kept")).await.unwrap();
    let before = read_all(&s).await;

    for name in ["", "has space", "x;drop table slots", &"n".repeat(129)] {
        let e = engine.space(name).await.unwrap_err();
        assert!(
            matches!(e, Error::Invalid(_)) && e.to_string().contains("space name"),
            "{e}"
        );
    }
    for ttl in [Duration::ZERO, Duration::from_secs(3601), Duration::MAX] {
        let e = s.grant(Grant::new("t", "t").ttl(ttl)).await.unwrap_err();
        assert!(
            matches!(e, Error::Invalid(seqlease::InvalidInput::Ttl { .. })),
            "{e}"
        );
    }
    assert!(matches!(
        s.grant(Grant::new("", "t")).await.unwrap_err(),
        Error::Invalid(_)
    ));
    assert!(matches!(
        s.grant(Grant::new("op", "bad type!")).await.unwrap_err(),
        Error::Invalid(_)
    ));
    assert!(matches!(
        s.grant(Grant::new("op", "t").owner("")).await.unwrap_err(),
        Error::Invalid(_)
    ));
    assert!(matches!(
        s.grant(Grant::new("op", "t").fence("bad resource", 1))
            .await
            .unwrap_err(),
        Error::Invalid(_)
    ));
    // A store that cannot check fences refuses fenced grants instead of pretending; one
    // that can refuses a fence whose epoch is not the resource's current one.
    let fenced = s
        .grant(Grant::new("op", "t").fence("orders-0", 1))
        .await
        .unwrap_err();
    if engine.store().checks_fences() {
        assert!(
            matches!(
                fenced,
                Error::Lease(LeaseError::StaleEpoch {
                    current: 0,
                    attempted: 1,
                    ..
                })
            ),
            "{fenced}"
        );
    } else {
        assert!(
            matches!(fenced, Error::Invalid(_)) && fenced.to_string().contains("fence"),
            "{fenced}"
        );
    }

    let mut l = s.grant(Grant::new("big", "t")).await.unwrap();
    let e = l
        .commit(OperationBody::new("update", vec![b'x'; 1025]))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("exceeds the limit of 1024 bytes"),
        "{e}"
    );
    assert!(l.record_partial(vec![0u8; 2048]).await.is_err());
    assert!(matches!(
        l.renew(Some(Duration::ZERO)).await.unwrap_err(),
        Error::Invalid(_)
    ));
    l.commit(OperationBody::new("update", vec![b'x'; 1024]))
        .await
        .expect("exactly the limit is fine");

    let mut double = s.grant(Grant::new("double", "t")).await.unwrap();
    double.commit(body("first")).await.unwrap();
    assert_eq!(
        double.commit(body("second")).await.unwrap().status,
        CommitStatus::AlreadyCommitted
    );

    let after = read_all(&s).await;
    assert_eq!(
        after[..before.len()],
        before[..],
        "committed entries changed"
    );
    assert_eq!(after[2].operation().unwrap().body, body("first"));
}

/// Dropping (panic) or cancelling a task that holds an uncommitted lease releases the slot.
pub async fn dropped_or_cancelled_lease_releases_its_slot(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let s = space(&engine, "drop").await;
    let panicking = {
        let s = s.clone();
        tokio::spawn(async move {
            let _l = s.grant(Grant::new("p", "t")).await.unwrap();
            panic!("worker bug (expected by the test)");
        })
    };
    assert!(panicking.await.is_err());
    let (granted_tx, granted_rx) = tokio::sync::oneshot::channel();
    let stuck = {
        let s = s.clone();
        tokio::spawn(async move {
            let _l = s.grant(Grant::new("c", "t")).await.unwrap();
            granted_tx.send(()).unwrap();
            futures::future::pending::<()>().await;
        })
    };
    granted_rx.await.unwrap();
    stuck.abort();
    assert_eq!(
        s.wait_for(2, SOON).await.unwrap(),
        2,
        "dropped leases must resolve before their TTL"
    );
    for e in read_all(&s).await {
        assert_eq!(
            e.gap().map(|g| g.reason),
            Some(GapReason::Released),
            "seq {}",
            e.seq
        );
    }
    // A dropped handle with recorded work is handed to recovery, not turned into a gap (I5).
    let worked = {
        let s = s.clone();
        tokio::spawn(async move {
            let mut l = s.grant(Grant::new("w", "t")).await.unwrap();
            l.record_result(body("finished")).await.unwrap();
            let seq = l.seq();
            drop(l);
            seq
        })
        .await
        .unwrap()
    };
    let store = engine.store().clone();
    let handed_over = async {
        loop {
            let v = store.slot(s.name(), worked).await.unwrap().unwrap();
            if v.lease.expires_at <= engine.now().await.unwrap() {
                return v;
            }
            tokio::task::yield_now().await;
        }
    };
    let v = tokio::time::timeout(SOON, handed_over)
        .await
        .expect("dropped lease handed to recovery");
    assert_eq!(
        (v.state, v.result),
        (SlotState::Leased, Some(body("finished")))
    );
}

/// Grants (and more) in one store batch.
pub async fn grant_many_in_one_batch(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let s = engine
        .space_with("many", SpaceConfig { capacity: 5 })
        .await
        .unwrap();
    let leases = s
        .grant_many((0..8).map(|i| Grant::new(format!("op-{i}"), "t")).collect())
        .await
        .unwrap();
    let (ok, refused): (Vec<_>, Vec<_>) = leases.into_iter().partition(|l| l.is_ok());
    assert_eq!(
        (ok.len(), refused.len()),
        (5, 3),
        "capacity applies within one batch"
    );
    for r in refused {
        assert!(matches!(
            r,
            Err(Error::Lease(LeaseError::AtCapacity { .. }))
        ));
    }
    for l in ok {
        let mut l = l.unwrap();
        l.commit(body(l.seq())).await.unwrap();
    }
    assert_eq!(s.info().await.unwrap().watermark, 5);
}

/// The handle's local deadline never lies beyond the store's expiry.
pub async fn local_deadline_is_never_after_store_expiry(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let s = space(&engine, "deadline").await;
    let ttl = Duration::from_secs(10);
    let l = s.grant(Grant::new("op", "t").ttl(ttl)).await.unwrap();
    assert!(l.is_live());
    assert!(l.remaining() <= ttl - engine.config().safety_margin(ttl));
    let store_left = l.expires_at().since(engine.now().await.unwrap());
    assert!(
        l.remaining() <= store_left,
        "local {:?} > store {:?}",
        l.remaining(),
        store_left
    );
}

/// `one` committed slot 1 of `name` and reported the space's progress: watermark 1, 1 freed.
fn assert_first_slot_committed(one: seqlease_core::OneOutcome, name: &seqlease::SpaceName) {
    assert!(
        matches!(&one.reply, Ok(Reply::Committed(c)) if c.seq == 1 && c.status == CommitStatus::Committed),
        "commit answered {:?}",
        one.reply
    );
    let progress = one.progress.expect("a commit reports its space's progress");
    assert_eq!(
        (&progress.space, progress.watermark, progress.freed),
        (name, 1, 1)
    );
}

/// A raw grant command of `id` in `space`, for the checks that call the store directly.
fn grant(id: &str, space: &seqlease::SpaceName) -> Command {
    Command::Grant(grant_request(id, space))
}

fn grant_request(id: &str, space: &seqlease::SpaceName) -> seqlease_core::GrantRequest {
    seqlease_core::GrantRequest {
        space: space.clone(),
        operation_id: id.into(),
        projection_type: "t".into(),
        owner: "conformance".into(),
        ttl: TTL,
        fence: None,
    }
}

/// `Store::execute_one` answers a command as a batch of one would, including the space's
/// progress when it resolves a slot (the engine uses it whenever group commit is off).
pub async fn execute_one_answers_as_a_batch_of_one(h: &dyn Harness) {
    let fx = h.fresh().await;
    let name = seqlease::SpaceName::new("one").unwrap();
    fx.store
        .ensure_space(&name, &SpaceConfig { capacity: 4 })
        .await
        .unwrap();
    let one = fx.store.execute_one(grant("op-1", &name)).await.unwrap();
    let Ok(Reply::Granted(first)) = one.reply else {
        panic!("grant answered {:?}", one.reply);
    };
    assert_eq!(
        (first.seq, one.progress),
        (1, None),
        "a grant resolves nothing"
    );
    let batch = fx.store.execute(vec![grant("op-2", &name)]).await.unwrap();
    assert!(matches!(&batch.replies[..], [Ok(Reply::Granted(r))] if r.seq == 2));

    let key = LeaseKey {
        space: name.clone(),
        seq: 1,
        token: first.token,
    };
    let one = fx
        .store
        .execute_one(Command::Commit { key, body: body(1) })
        .await
        .unwrap();
    assert_first_slot_committed(one, &name);

    let unknown = seqlease::SpaceName::new("never-made").unwrap();
    let one = fx.store.execute_one(grant("op-3", &unknown)).await.unwrap();
    assert!(
        matches!(one.reply, Err(LeaseError::UnknownSpace { .. })),
        "unknown space answered {:?}",
        one.reply
    );
}

/// A store's synchronous path ([`seqlease_core::Store::inline`]), where it has one, answers
/// as `execute_one` does: grants, refusals at capacity and of a wrong token, commits with
/// their progress, and unknown spaces. Stores without one (every store that does I/O) pass
/// by answering `None`.
pub async fn inline_execution_answers_as_execute_one(h: &dyn Harness) {
    let fx = h.fresh().await;
    let Some(inline) = fx.store.inline() else {
        return;
    };
    let name = seqlease::SpaceName::new("inline").unwrap();
    fx.store
        .ensure_space(&name, &SpaceConfig { capacity: 2 })
        .await
        .unwrap();
    let one = inline.execute_now(grant("op-1", &name)).unwrap();
    let Ok(Reply::Granted(first)) = one.reply else {
        panic!("grant answered {:?}", one.reply);
    };
    assert_eq!((first.seq, one.progress), (1, None));
    let one = fx.store.execute_one(grant("op-2", &name)).await.unwrap();
    assert!(matches!(&one.reply, Ok(Reply::Granted(r)) if r.seq == 2));
    let full = inline.execute_now(grant("op-3", &name)).unwrap();
    assert!(
        matches!(full.reply, Err(LeaseError::AtCapacity { .. })),
        "a grant at capacity answered {:?}",
        full.reply
    );

    let key = |token| LeaseKey {
        space: name.clone(),
        seq: 1,
        token,
    };
    let wrong = seqlease_core::Token([7; 16]);
    let refused = inline
        .execute_now(Command::Commit {
            key: key(wrong),
            body: body(1),
        })
        .unwrap();
    assert!(
        matches!(refused.reply, Err(LeaseError::WrongToken { seq: 1, .. })),
        "a wrong token answered {:?}",
        refused.reply
    );
    let one = inline
        .execute_now(Command::Commit {
            key: key(first.token),
            body: body(1),
        })
        .unwrap();
    assert_first_slot_committed(one, &name);
    let entry = &fx.store.read(&name, 1, 1).await.unwrap()[0];
    assert_eq!(entry.seq, 1, "the inline commit is in the log");

    let unknown = seqlease::SpaceName::new("never-made").unwrap();
    let one = inline.execute_now(grant("op-4", &unknown)).unwrap();
    assert!(
        matches!(one.reply, Err(LeaseError::UnknownSpace { .. })),
        "unknown space answered {:?}",
        one.reply
    );
}

/// A store's synchronous grant ([`seqlease_core::InlineStore::grant_now`]) answers as
/// `execute_now` does, except that a grant refused for capacity comes back unchanged with
/// the refusal and changes nothing; sent again once a slot is free, it is granted. Stores
/// without a synchronous path pass by answering `None`.
pub async fn inline_grant_hands_back_a_request_refused_for_capacity(h: &dyn Harness) {
    use seqlease_core::GrantNow;
    let fx = h.fresh().await;
    let Some(inline) = fx.store.inline() else {
        return;
    };
    let name = seqlease::SpaceName::new("inline-grant").unwrap();
    fx.store
        .ensure_space(&name, &SpaceConfig { capacity: 1 })
        .await
        .unwrap();
    let granted = |now: GrantNow| match now {
        GrantNow::Answered(one) => match one.reply {
            Ok(Reply::Granted(record)) if one.progress.is_none() => record,
            other => panic!("a grant with capacity answered {other:?}"),
        },
        other => panic!("a grant with capacity answered {other:?}"),
    };
    let first = granted(inline.grant_now(grant_request("op-1", &name)).unwrap());
    assert_eq!((first.seq, first.operation_id.as_str()), (1, "op-1"));

    let sent = grant_request("op-2", &name);
    let request = match inline.grant_now(sent.clone()).unwrap() {
        GrantNow::AtCapacity { request, refusal } => {
            assert!(
                matches!(refusal, LeaseError::AtCapacity { capacity: 1, ref space } if space == &name),
                "the refusal is {refusal:?}"
            );
            request
        }
        other => panic!("a grant at capacity answered {other:?}"),
    };
    assert_eq!(request, sent, "the request comes back as it was sent");
    let info = fx.store.space_info(&name).await.unwrap().unwrap();
    assert_eq!(
        (info.last_seq, info.in_flight),
        (1, 1),
        "the refusal changed nothing"
    );

    let key = LeaseKey {
        space: name.clone(),
        seq: 1,
        token: first.token,
    };
    let one = inline
        .execute_now(Command::Commit { key, body: body(1) })
        .unwrap();
    assert_first_slot_committed(one, &name);
    let second = granted(inline.grant_now(request).unwrap());
    assert_eq!((second.seq, second.operation_id.as_str()), (2, "op-2"));

    let unknown = seqlease::SpaceName::new("never-made").unwrap();
    match inline.grant_now(grant_request("op-3", &unknown)).unwrap() {
        GrantNow::Answered(one) => assert!(
            matches!(one.reply, Err(LeaseError::UnknownSpace { .. })),
            "unknown space answered {:?}",
            one.reply
        ),
        other => panic!("a grant in an unknown space answered {other:?}"),
    }
}

/// `Space::commit_and_grant` commits a lease and leases the next slot in one call. The
/// commit's freed place counts for the grant (capacity 1); the two answers are independent
/// (an expired lease's refused commit still answers the grant, which then waits for
/// capacity with `Grant::wait` and is refused without); an invalid next grant sends
/// nothing; a lease of another space is committed there; and 16 tasks chaining it leave a
/// contiguous log with every operation once (I1, I6, I7).
pub async fn commit_and_grant_chains_leases_in_one_call(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let s = engine
        .space_with("pair", SpaceConfig { capacity: 1 })
        .await
        .unwrap();
    let mut first = s.grant(Grant::new("op-1", "t")).await.unwrap();
    let (committed, next) = s
        .commit_and_grant(&mut first, body(1), Grant::new("op-2", "t"))
        .await
        .unwrap();
    assert_eq!(
        committed.unwrap(),
        seqlease::CommitOutcome {
            seq: 1,
            status: CommitStatus::Committed
        }
    );
    let mut second = next.expect("at capacity 1 the commit's place is the grant's");
    assert_eq!((second.seq(), second.operation_id()), (2, "op-2"));
    assert!(
        matches!(
            s.commit_and_grant(&mut second, body(2), Grant::new("", "t"))
                .await,
            Err(Error::Invalid(_))
        ),
        "an invalid next grant is refused before anything is sent"
    );
    let info = s.info().await.unwrap();
    assert_eq!((info.watermark, info.last_seq), (1, 2), "nothing was sent");
    let (committed, next) = s
        .commit_and_grant(&mut second, body(2), Grant::new("op-3", "t"))
        .await
        .unwrap();
    assert_eq!(committed.unwrap().seq, 2);
    next.unwrap().commit(body(3)).await.unwrap();
    assert_eq!(s.info().await.unwrap().watermark, 3);

    // An expired lease: its commit is refused, its place still taken.
    let s = engine
        .space_with("pair-refused", SpaceConfig { capacity: 2 })
        .await
        .unwrap();
    let mut stale = s.grant(Grant::new("stale", "t").ttl(TTL)).await.unwrap();
    fx.advance(TTL + Duration::from_secs(1));
    let mut live = s.grant(Grant::new("live", "t")).await.unwrap();
    let (committed, next) = s
        .commit_and_grant(&mut stale, body(1), Grant::new("refused", "t"))
        .await
        .unwrap();
    assert!(
        matches!(
            committed,
            Err(Error::Lease(LeaseError::Expired { seq: 1, .. }))
        ),
        "I3: an expired lease's commit: {committed:?}"
    );
    assert!(
        matches!(next, Err(Error::Lease(LeaseError::AtCapacity { .. }))),
        "without a wait the grant is refused for capacity: {next:?}"
    );
    let waiting = s.commit_and_grant(&mut stale, body(1), Grant::new("waited", "t").wait(SOON));
    let (pair, freed) = tokio::join!(waiting, live.commit(body(2)));
    freed.unwrap();
    let (committed, next) = pair.unwrap();
    assert!(matches!(
        committed,
        Err(Error::Lease(LeaseError::Expired { .. }))
    ));
    let mut waited = next.expect("the wait ends when the live lease commits");
    assert_eq!(waited.operation_id(), "waited");
    waited.commit(body(3)).await.unwrap();

    // A lease of another space: committed there, the next lease granted here.
    let other = space(&engine, "pair-other").await;
    let mut elsewhere = other.grant(Grant::new("there", "t")).await.unwrap();
    let (committed, next) = s
        .commit_and_grant(&mut elsewhere, body(4), Grant::new("here", "t"))
        .await
        .unwrap();
    assert_eq!(committed.unwrap().seq, 1);
    assert_eq!(other.info().await.unwrap().watermark, 1);
    let mut here = next.unwrap();
    assert_eq!((here.space(), here.seq()), (s.name(), 4));
    here.commit(body(5)).await.unwrap();

    // Many tasks chaining leases, the space full all along: each task holds one lease, so
    // every grant fits only because its own commit, sent first, freed a place. No wait:
    // a batch that weighed a grant before the commit in front of it fails this.
    let s = engine
        .space_with(
            "pair-chains",
            SpaceConfig {
                capacity: TASKS as u32,
            },
        )
        .await
        .unwrap();
    const LINKS: usize = 10;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut lease = s.grant(Grant::new(format!("c{t}-0"), "t")).await.unwrap();
            for n in 1..=LINKS {
                let next = Grant::new(format!("c{t}-{n}"), "t");
                let (committed, next) =
                    s.commit_and_grant(&mut lease, body(n), next).await.unwrap();
                committed.unwrap();
                lease = next.unwrap();
            }
            lease.commit(body(0)).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = (TASKS * (LINKS + 1)) as u64;
    assert_eq!(s.info().await.unwrap().watermark, total, "I7");
    let entries = read_all(&s).await;
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>(), "I1");
    let ids: HashSet<String> = entries
        .iter()
        .map(|e| match &e.content {
            EntryContent::Operation(op) => op.operation_id.clone(),
            other => panic!("every slot is committed: {other:?}"),
        })
        .collect();
    assert_eq!(ids.len() as u64, total, "I6: each operation once");
}
