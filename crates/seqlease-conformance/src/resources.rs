//! Resource-lease checks: exclusive ownership, epochs that only grow, fencing (I9), the
//! lease keeper. Stores that implement resource leases invoke
//! [`resource_suite!`](crate::resource_suite).

use std::collections::HashSet;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use seqlease::cleanup::CleanupConfig;
use seqlease::{Acquire, Error, GapReason, Grant, LeaseError, OperationBody, RecoveryType};
use seqlease_core::{
    ParkedQuery, ParkedState, Placement, Reply, ResourceCommand, ResourceEventKind, ResourceReply,
};

use crate::harness::Harness;
use crate::recovery::{IdsResolver, config as recovery_config};

const TTL: Duration = Duration::from_secs(30);
const SOON: Duration = Duration::from_secs(20);

/// Many agents compete for one resource: exactly one wins.
pub async fn one_of_many_agents_wins(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let mut tasks = Vec::new();
    for a in 0..16 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let keeper = engine.lease_keeper(&format!("agent-{a}")).await.unwrap();
            keeper.acquire(Acquire::new("orders-0").ttl(TTL)).await
        }));
    }
    let mut winners = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(lease) => {
                winners += 1;
                assert_eq!(lease.epoch, 1);
            }
            Err(Error::Lease(LeaseError::ResourceHeld { epoch: 1, .. })) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(winners, 1, "exactly one agent holds the resource");
    let history = engine
        .resource_history(Some("orders-0"), 100)
        .await
        .unwrap();
    assert_eq!(
        history
            .iter()
            .filter(|e| e.kind == ResourceEventKind::Conflict)
            .count(),
        15
    );
}

/// Failover after expiry and after release: the epoch grows with every new holder, the old
/// holder can neither renew nor release, and renewals keep the epoch.
pub async fn failover_grows_the_epoch(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let (a, b) = (
        engine.lease_keeper("a").await.unwrap(),
        engine.lease_keeper("b").await.unwrap(),
    );
    assert_eq!(
        a.acquire(Acquire::new("shard-1").ttl(TTL))
            .await
            .unwrap()
            .epoch,
        1
    );
    fx.advance(TTL / 2);
    assert_eq!(a.renew_now().await.unwrap(), 1);
    assert_eq!(a.ensure("shard-1").unwrap(), 1, "renewal keeps the epoch");
    fx.advance(TTL);
    let b1 = b.acquire(Acquire::new("shard-1").ttl(TTL)).await.unwrap();
    assert_eq!(b1.epoch, 2, "failover after expiry");
    let mut lost = a.lost();
    assert_eq!(a.renew_now().await.unwrap(), 0, "a lost it");
    assert_eq!(lost.recv().await.unwrap().epoch, 1);
    assert!(a.ensure("shard-1").is_err());
    b.release("shard-1").await.unwrap();
    assert!(!engine.is_locked("shard-1").await.unwrap());
    assert_eq!(
        a.acquire(Acquire::new("shard-1").ttl(TTL))
            .await
            .unwrap()
            .epoch,
        3,
        "failover after release"
    );
    assert!(engine.has_lease("a", "shard-1").await.unwrap());
    assert_eq!(engine.store().resource_epoch("shard-1").await.unwrap(), 3);
    assert_eq!(
        engine.store().resource_epoch("never-held").await.unwrap(),
        0
    );
    // A stale release is refused.
    let stale = engine
        .store()
        .resources(vec![ResourceCommand::Release {
            resource: "shard-1".into(),
            agent: "b".into(),
            epoch: 2,
        }])
        .await
        .unwrap();
    assert!(matches!(
        stale.replies[0],
        Err(LeaseError::ResourceNotHeld { current: 3, .. })
    ));
}

/// A holder paused past its TTL comes back and commits under its old fence: refused with
/// a stale-epoch error naming resource, current and attempted epoch; nothing written (I9).
pub async fn paused_holder_is_fenced_off(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    if !engine.store().checks_fences() {
        panic!("resource_suite! needs a store that checks fences");
    }
    let space = engine.space("fenced").await.unwrap();
    let (a, b) = (
        engine.lease_keeper("a").await.unwrap(),
        engine.lease_keeper("b").await.unwrap(),
    );
    let held = a.acquire(Acquire::new("orders-0").ttl(TTL)).await.unwrap();
    let mut slot = space
        .grant(
            Grant::new("op-1", "orders")
                .fence("orders-0", held.epoch)
                .ttl(TTL * 4),
        )
        .await
        .unwrap();
    let mut fine = space
        .grant(
            Grant::new("op-0", "orders")
                .fence("orders-0", held.epoch)
                .ttl(TTL * 4),
        )
        .await
        .unwrap();
    fine.commit(OperationBody::new("update", b"ok".to_vec()))
        .await
        .expect("a current fence commits");
    fx.advance(TTL * 2); // a is paused for a minute
    assert_eq!(
        b.acquire(Acquire::new("orders-0").ttl(TTL))
            .await
            .unwrap()
            .epoch,
        2
    );
    let e = slot
        .commit(OperationBody::new("update", b"late".to_vec()))
        .await
        .unwrap_err();
    match &e {
        Error::Lease(LeaseError::StaleEpoch {
            resource,
            current: 2,
            attempted: 1,
        }) => assert_eq!(resource, "orders-0"),
        other => panic!("expected a stale epoch, got {other}"),
    }
    assert!(
        e.to_string()
            .contains("stale epoch rejected for orders-0: current 2, attempted 1"),
        "{e}"
    );
    let view = engine.store().slot(space.name(), 1).await.unwrap().unwrap();
    assert_eq!(
        view.state,
        seqlease::SlotState::Leased,
        "nothing written for the stale commit"
    );
    let zombie = slot
        .commit_late(OperationBody::new("update", b"late".to_vec()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            zombie,
            Error::Lease(LeaseError::StaleEpoch {
                current: 2,
                attempted: 1,
                ..
            })
        ),
        "late work carrying a stale fence is refused too (I9): {zombie}"
    );
    let late = space
        .grant(Grant::new("op-2", "orders").fence("orders-0", 1))
        .await
        .unwrap_err();
    assert!(
        matches!(late, Error::Lease(LeaseError::StaleEpoch { .. })),
        "stale fences are refused at grant too"
    );
}

/// Recovery honours fences (I9): a fenced lease abandoned with recorded work (partial work
/// for a resolver, a finished result) whose resource was taken over before a cleaner got to
/// it is not committed, in place or at a new seq; its slot becomes `GAP(expired)` saying why
/// and the work waits in the recovery queue for an operator (`manual`, never re-sequenced
/// automatically, I5). A fenced lease whose epoch is still current is recovered as usual.
pub async fn stale_fenced_work_is_parked_not_recovered(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let space = engine.space("fenced-recovery").await.unwrap();
    let store = engine.store();
    let keepers = [
        engine.lease_keeper("a").await.unwrap(),
        engine.lease_keeper("b").await.unwrap(),
        engine.lease_keeper("c").await.unwrap(),
    ];
    // Two rounds: in place, then at a new seq. Each holder leaves two fenced leases with
    // recorded work behind, pauses past every TTL, and the next agent takes the resource.
    let first = keepers[0]
        .acquire(Acquire::new("orders-0").ttl(TTL))
        .await
        .unwrap();
    assert_eq!(first.epoch, 1);
    let mut seq = 0;
    for (round, placement) in [Placement::InPlace, Placement::NewSeq]
        .into_iter()
        .enumerate()
    {
        let epoch = round as u64 + 1; // held by keepers[round]
        let mut partial = space
            .grant(
                Grant::new(format!("partial-{epoch}"), "orders")
                    .fence("orders-0", epoch)
                    .ttl(TTL),
            )
            .await
            .unwrap();
        partial
            .record_partial(format!("{{\"ids\":[{epoch}]}}").into_bytes())
            .await
            .unwrap();
        let mut result = space
            .grant(
                Grant::new(format!("result-{epoch}"), "orders")
                    .fence("orders-0", epoch)
                    .ttl(TTL),
            )
            .await
            .unwrap();
        let finished = OperationBody::new("update", format!("zombie {epoch}"));
        result.record_result(finished.clone()).await.unwrap();
        partial.abandon();
        result.abandon();
        fx.advance(TTL * 2);
        let next = keepers[round + 1]
            .acquire(Acquire::new("orders-0").ttl(TTL))
            .await
            .unwrap();
        assert_eq!(next.epoch, epoch + 1, "the resource changed hands");

        let cleanup = engine
            .cleanup()
            .config(CleanupConfig {
                placement,
                ..recovery_config("fence-cleaner")
            })
            .resolver("orders", IdsResolver)
            .build()
            .await
            .unwrap();
        let report = cleanup.run_once().await.unwrap();
        assert_eq!(
            (
                report.claimed,
                report.recovered_total(),
                report.gapped,
                report.parked
            ),
            (2, 0, 2, 2),
            "{placement:?}: a stale fence recovers nothing and parks both"
        );
        seq += 2;
        assert_eq!(space.wait_for(seq, SOON).await.unwrap(), seq);
        let log = store.read(space.name(), 1, 1_000).await.unwrap();
        assert_eq!(
            log.len() as u64,
            seq,
            "{placement:?}: no new seq was appended"
        );
        let detail = format!(
            "recovery refused: stale epoch for orders-0 (current {}, lease had {epoch}); \
             work parked for an operator",
            epoch + 1
        );
        for entry in &log[seq as usize - 2..] {
            let gap = entry
                .gap()
                .expect("nothing of the stale holder is committed");
            assert_eq!(gap.reason, GapReason::Expired);
            assert_eq!(
                gap.detail.as_deref(),
                Some(detail.as_str()),
                "{placement:?}"
            );
        }
        let manual = store
            .parked(&ParkedQuery {
                states: vec![ParkedState::Manual],
                limit: 100,
                ..ParkedQuery::default()
            })
            .await
            .unwrap();
        let this_round: Vec<_> = manual
            .iter()
            .filter(|p| p.original_seq > seq - 2)
            .map(|p| {
                (
                    p.original_seq,
                    p.operation_id.clone(),
                    p.partial.clone(),
                    p.result.clone(),
                )
            })
            .collect();
        assert_eq!(
            this_round,
            vec![
                (
                    seq - 1,
                    format!("partial-{epoch}"),
                    Some(format!("{{\"ids\":[{epoch}]}}").into_bytes()),
                    None
                ),
                (seq, format!("result-{epoch}"), None, Some(finished)),
            ],
            "I5: the work waits for an operator"
        );
        // Automatic recovery leaves manual work alone: nothing is re-sequenced later.
        cleanup.run_once().await.unwrap();
        let automatic = store
            .parked(&ParkedQuery {
                states: vec![ParkedState::Parked, ParkedState::Resequenced],
                limit: 100,
                ..ParkedQuery::default()
            })
            .await
            .unwrap();
        assert!(automatic.is_empty(), "{automatic:?}");
        let log = store.read(space.name(), 1, 1_000).await.unwrap();
        assert_eq!(log.len() as u64, seq);
        assert!(log.iter().all(|e| e.operation().is_none()), "{log:?}");
    }

    // The current holder (c, epoch 3): its abandoned fenced work is recovered normally.
    let mut current = space
        .grant(
            Grant::new("current", "orders")
                .fence("orders-0", 3)
                .ttl(TTL),
        )
        .await
        .unwrap();
    let finished = OperationBody::new("update", "current holder");
    current.record_result(finished.clone()).await.unwrap();
    current.abandon();
    fx.advance(TTL * 2);
    let cleanup = engine
        .cleanup()
        .config(recovery_config("fence-cleaner"))
        .build()
        .await
        .unwrap();
    let report = cleanup.run_once().await.unwrap();
    assert_eq!(
        (report.claimed, report.recovered_total(), report.parked),
        (1, 1, 0)
    );
    seq += 1;
    assert_eq!(space.wait_for(seq, SOON).await.unwrap(), seq);
    let log = store.read(space.name(), seq, 1).await.unwrap();
    let op = log[0].operation().expect("a current fence is recovered");
    assert_eq!((op.operation_id.as_str(), &op.body), ("current", &finished));
    assert_eq!(
        op.recovery.as_ref().map(|r| r.recovery_type),
        Some(RecoveryType::Retry)
    );
}

/// Maximum renewals: the holder must let go after that many renewals.
pub async fn max_renewals_are_enforced(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let a = engine.lease_keeper("a").await.unwrap();
    a.acquire(Acquire::new("file-7").ttl(TTL).max_renewals(2))
        .await
        .unwrap();
    assert_eq!(a.renew_now().await.unwrap(), 1);
    assert_eq!(a.renew_now().await.unwrap(), 1);
    let mut lost = a.lost();
    assert_eq!(a.renew_now().await.unwrap(), 0);
    assert!(
        lost.recv()
            .await
            .unwrap()
            .reason
            .contains("maximum of 2 renewals")
    );
}

/// A blocking acquire is woken by the release (the poll fallback is an hour in tests).
pub async fn blocking_acquire_is_woken_by_release(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let (a, b) = (
        engine.lease_keeper("a").await.unwrap(),
        engine.lease_keeper("b").await.unwrap(),
    );
    a.acquire(Acquire::new("orders-0").ttl(TTL)).await.unwrap();
    let timed_out = b
        .acquire(
            Acquire::new("orders-0")
                .ttl(TTL)
                .wait(Duration::from_millis(20)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&timed_out, Error::AcquireTimeout { resource, .. } if resource == "orders-0"),
        "{timed_out}"
    );
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            b.acquire(Acquire::new("orders-0").ttl(TTL).wait(SOON))
                .await
        })
    };
    tokio::task::yield_now().await;
    a.release("orders-0").await.unwrap();
    let lease = tokio::time::timeout(SOON, waiter)
        .await
        .expect("woken")
        .unwrap()
        .unwrap();
    assert_eq!((lease.holder.as_str(), lease.epoch), ("b", 2));
}

/// An operator force-releases a crashed agent's leases; the audit history names the actor.
pub async fn force_release_of_a_crashed_agent(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let crashed = engine.lease_keeper("crashed").await.unwrap();
    for r in ["p-1", "p-2", "p-3"] {
        crashed
            .acquire(Acquire::new(r).ttl(TTL).metadata(r#"{"host":"node-7"}"#))
            .await
            .unwrap();
    }
    assert_eq!(
        engine.resource_leases(Some("crashed")).await.unwrap().len(),
        3
    );
    assert_eq!(engine.force_release("crashed", "alice").await.unwrap(), 3);
    assert!(engine.resource_leases(None).await.unwrap().is_empty());
    let history = engine.resource_history(None, 100).await.unwrap();
    let forced: Vec<_> = history
        .iter()
        .filter(|e| e.kind == ResourceEventKind::ForceReleased)
        .collect();
    assert_eq!(forced.len(), 3);
    assert!(
        forced
            .iter()
            .all(|e| e.actor == "alice" && e.agent == "crashed")
    );
    let next = engine.lease_keeper("next").await.unwrap();
    assert_eq!(
        next.acquire(Acquire::new("p-2").ttl(TTL))
            .await
            .unwrap()
            .epoch,
        2
    );
}

/// Graceful shutdown releases everything; expired leases are swept and audited.
pub async fn shutdown_releases_and_stale_leases_expire(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let a = engine.lease_keeper("a").await.unwrap();
    a.acquire(Acquire::new("r-1").ttl(TTL)).await.unwrap();
    a.acquire(Acquire::new("r-2").ttl(TTL)).await.unwrap();
    assert_eq!(a.shutdown().await.unwrap(), 2);
    assert!(a.held().is_empty());
    let b = engine.lease_keeper("b").await.unwrap();
    b.acquire(Acquire::new("r-3").ttl(TTL)).await.unwrap();
    fx.advance(TTL);
    let out = engine
        .store()
        .resources(vec![ResourceCommand::ExpireStale])
        .await
        .unwrap();
    assert!(matches!(
        out.replies[0],
        Ok(Reply::Resource(ResourceReply::Count(1)))
    ));
    // The cleanup service sweeps expired resource leases each cycle (stores with recovery).
    b.acquire(Acquire::new("r-4").ttl(TTL)).await.unwrap();
    fx.advance(TTL);
    if let Ok(cleanup) = engine.cleanup().build().await {
        assert_eq!(cleanup.run_once().await.unwrap().resources_expired, 1);
        assert!(!engine.is_locked("r-4").await.unwrap());
    }
    let history = engine.resource_history(Some("r-3"), 10).await.unwrap();
    assert_eq!(
        history.last().map(|e| e.kind),
        Some(ResourceEventKind::Expired)
    );
}

/// `ensure` and `validate` answer from the local cache.
pub async fn ensure_and_validate_are_local(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let a = engine.lease_keeper("a").await.unwrap();
    let held = a.acquire(Acquire::new("orders-0").ttl(TTL)).await.unwrap();
    assert_eq!(a.ensure("orders-0").unwrap(), held.epoch);
    assert!(a.validate("orders-0", held.epoch));
    assert!(!a.validate("orders-0", held.epoch + 1));
    assert!(a.ensure("orders-1").is_err());
    assert!(a.validate_epoch("orders-0", held.epoch).await.unwrap());
    assert_eq!(a.held(), vec![("orders-0".to_string(), held.epoch)]);
}

#[derive(Clone, Debug)]
enum Step {
    Acquire(u8, u8),
    Renew(u8, u8),
    Release(u8, u8),
    Advance(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0u8..3, 0u8..2).prop_map(|(a, r)| Step::Acquire(a, r)),
        2 => (0u8..3, 0u8..2).prop_map(|(a, r)| Step::Renew(a, r)),
        2 => (0u8..3, 0u8..2).prop_map(|(a, r)| Step::Release(a, r)),
        2 => (1u8..4).prop_map(Step::Advance),
    ]
}

/// Random acquire/renew/release/clock sequences by three agents on two resources, against a
/// reference model: same winners, same epochs, epochs never go back.
pub fn model_matches_reference(h: &dyn Harness) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&proptest::collection::vec(step(), 1..60), |steps| {
        runtime.block_on(async {
            let fx = h.fresh().await;
            let store = fx.store.clone();
            // model: resource -> (epoch, holder, expires_s, released)
            let mut model: [(u64, u8, i64, bool); 2] = [(0, 0, 0, true); 2];
            let mut now: i64 = 0;
            let ttl = 2i64;
            let mut seen_epochs = [0u64; 2];
            for step in steps {
                let (cmd, expect) = match step {
                    Step::Advance(s) => {
                        fx.advance(Duration::from_secs(s as u64));
                        now += s as i64;
                        continue;
                    }
                    Step::Acquire(a, r) => {
                        let m = &mut model[r as usize];
                        let live = !m.3 && m.2 > now;
                        let expect = if live && m.1 != a {
                            Err(())
                        } else if live {
                            m.2 = now + ttl;
                            Ok(m.0)
                        } else {
                            *m = (m.0 + 1, a, now + ttl, false);
                            Ok(m.0)
                        };
                        let cmd = ResourceCommand::Acquire {
                            resource: format!("r{r}"),
                            agent: format!("a{a}"),
                            ttl: Duration::from_secs(ttl as u64),
                            max_renewals: None,
                            metadata: None,
                        };
                        (cmd, expect)
                    }
                    Step::Renew(a, r) => {
                        let m = &mut model[r as usize];
                        let ok = !m.3 && m.2 > now && m.1 == a;
                        if ok {
                            m.2 = now + ttl;
                        }
                        let cmd = ResourceCommand::Renew {
                            resource: format!("r{r}"),
                            agent: format!("a{a}"),
                            epoch: m.0,
                            ttl: Duration::from_secs(ttl as u64),
                        };
                        (cmd, if ok { Ok(m.0) } else { Err(()) })
                    }
                    Step::Release(a, r) => {
                        let m = &mut model[r as usize];
                        let ok = !m.3 && m.1 == a && m.0 > 0;
                        if ok {
                            m.3 = true;
                        }
                        let cmd = ResourceCommand::Release {
                            resource: format!("r{r}"),
                            agent: format!("a{a}"),
                            epoch: m.0,
                        };
                        (cmd, if ok { Ok(m.0) } else { Err(()) })
                    }
                };
                let out = store
                    .resources(vec![cmd.clone()])
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let got = match &out.replies[0] {
                    Ok(Reply::Resource(ResourceReply::Held(l))) => Ok(l.epoch),
                    Ok(Reply::Resource(ResourceReply::Released)) => Ok(expect.unwrap_or(0)),
                    Ok(other) => return Err(TestCaseError::fail(format!("unexpected {other:?}"))),
                    Err(_) => Err(()),
                };
                prop_assert_eq!(got, expect, "{:?}", cmd);
                for r in 0..2 {
                    let e = store
                        .resource_epoch(&format!("r{r}"))
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert!(e >= seen_epochs[r], "I9: epoch of r{} went back", r);
                    prop_assert_eq!(e, model[r].0);
                    seen_epochs[r] = e;
                }
            }
            let epochs: HashSet<u64> = seen_epochs.iter().copied().collect();
            prop_assert!(!epochs.is_empty());
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("resource model test failed: {e}");
    }
}
