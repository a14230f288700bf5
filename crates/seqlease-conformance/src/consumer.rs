//! Consumer checks: checkpoints, restarts, redelivery, lag, retention and deterministic
//! replay, through the public `Consumer` API. Every store invokes
//! [`consumer_suite!`](crate::consumer_suite).

use std::collections::BTreeMap;
use std::time::Duration;

use seqlease::{
    ConsumerError, Engine, Entry, Error, Grant, OperationBody, RetentionEventKind, Space,
    StoreError,
};

use crate::harness::{Fixture, Harness, test_config};
use crate::recovery::{IdsResolver, abandon_with_work, config};

const TTL: Duration = Duration::from_secs(30);

fn body(n: impl std::fmt::Display) -> OperationBody {
    OperationBody::new("update", format!("{{\"ids\":[{n}]}}"))
}

async fn commit_n(s: &Space, prefix: &str, n: u64) {
    for i in 0..n {
        let mut l = s
            .grant(Grant::new(format!("{prefix}-{i}"), "t").ttl(TTL))
            .await
            .unwrap();
        l.commit(body(i)).await.unwrap();
    }
}

fn consumer_err<T: std::fmt::Debug>(r: Result<T, Error>) -> ConsumerError {
    match r {
        Err(Error::Consumer(e)) => e,
        other => panic!("expected a consumer refusal, got {other:?}"),
    }
}

/// A read model that is a pure function of the entries applied: seq → what the entry says.
/// Applying an entry twice changes nothing (idempotent), as an at-least-once model must be.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Model {
    rows: BTreeMap<u64, String>,
}

impl Model {
    fn apply(&mut self, e: &Entry) {
        // Everything a reader sees of the entry, metadata included: it must be identical on
        // every read (I7).
        let summary = format!(
            "{} {} {} {:?}",
            e.lease_operation_id, e.owner, e.resolved_at, e.content
        );
        self.rows.insert(e.seq, summary);
    }
}

/// Another engine on the same database (memory: the same store), as a restarted process.
async fn restart(fx: &Fixture) -> Engine {
    let reopen = fx.reopen.as_ref().expect("every harness provides reopen");
    Engine::builder()
        .store(reopen().await)
        .config(test_config())
        .build()
        .await
        .expect("engine on the reopened store")
}

/// Checkpoints are compare-and-swap: stale expectations, backwards moves and seqs above the
/// watermark are refused with typed errors naming the consumer, and change nothing.
pub async fn checkpoint_is_compare_and_swap(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let s = engine.space("cas").await.unwrap();
    commit_n(&s, "op", 5).await;
    let store = engine.store();
    let c = s.consumer("view").open().await.unwrap();
    assert_eq!((c.checkpoint(), c.state().await.unwrap().lag()), (0, 5));
    let state = store.save_checkpoint(s.name(), "view", 0, 3).await.unwrap();
    assert_eq!((state.checkpoint, state.watermark, state.lag()), (3, 5, 2));
    let stale = store.save_checkpoint(s.name(), "view", 0, 4).await;
    assert!(
        matches!(&stale, Err(ConsumerError::Conflict { expected: 0, current: 3, consumer, .. }) if consumer == "view"),
        "{stale:?}"
    );
    let back = store.save_checkpoint(s.name(), "view", 3, 2).await;
    assert!(
        matches!(back, Err(ConsumerError::Backwards { .. })),
        "{back:?}"
    );
    let above = store.save_checkpoint(s.name(), "view", 3, 6).await;
    assert!(
        matches!(
            above,
            Err(ConsumerError::AboveWatermark { watermark: 5, .. })
        ),
        "{above:?}"
    );
    let unknown = store.save_checkpoint(s.name(), "nobody", 0, 1).await;
    assert!(
        matches!(unknown, Err(ConsumerError::UnknownConsumer { .. })),
        "{unknown:?}"
    );
    let no_space = seqlease::SpaceName::new("missing").unwrap();
    let r = store.register_consumer(&no_space, "view", true).await;
    assert!(
        matches!(r, Err(ConsumerError::UnknownSpace { .. })),
        "{r:?}"
    );
    let bad = s.consumer("bad name!").open().await;
    assert!(matches!(bad, Err(Error::Invalid(_))), "{bad:?}");
    assert_eq!(
        store
            .consumer(s.name(), "view")
            .await
            .unwrap()
            .unwrap()
            .checkpoint,
        3,
        "refused saves change nothing"
    );
    // The same consumer saved from a second handle: the stale handle loses and reloads.
    let mut stale = s.consumer("view").open().await.unwrap();
    let mut fresh = s.consumer("view").open().await.unwrap();
    let batch = fresh.next_batch().await.unwrap();
    fresh.commit(&batch).await.unwrap();
    let old = stale.next_batch().await.unwrap();
    assert!(matches!(
        consumer_err(stale.commit(&old).await),
        ConsumerError::Conflict { current: 5, .. }
    ));
    assert_eq!(stale.reload().await.unwrap(), 5);
}

/// A consumer restarted (a new process on the same database) continues from its stored
/// checkpoint; several consumers keep separate checkpoints and show their own lag.
pub async fn consumer_restarts_from_checkpoint(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let s = engine.space("restart").await.unwrap();
    commit_n(&s, "op", 10).await;
    let mut fast = s.consumer("fast").batch_size(4).open().await.unwrap();
    let mut slow = s.consumer("slow").batch_size(3).open().await.unwrap();
    let mut seen = Vec::new();
    let apply = async |e: &Entry| {
        seen.push(e.seq);
        Ok::<(), String>(())
    };
    let mut apply = apply;
    assert_eq!(fast.run_once(&mut apply).await.unwrap(), 4);
    assert_eq!(fast.run_once(&mut apply).await.unwrap(), 4);
    assert_eq!(
        slow.run_once(async |_: &Entry| Ok::<(), String>(()))
            .await
            .unwrap(),
        3
    );
    assert_eq!(seen, (1..=8).collect::<Vec<_>>());
    drop((fast, slow));

    let engine2 = restart(&fx).await;
    let s2 = engine2.space("restart").await.unwrap();
    let lags: Vec<(String, u64, u64)> = s2
        .consumers()
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.name.clone(), c.checkpoint, c.lag()))
        .collect();
    assert_eq!(
        lags,
        [("fast".to_string(), 8, 2), ("slow".to_string(), 3, 7)],
        "each consumer at its own pace, lag = watermark - checkpoint"
    );
    assert_eq!(engine2.consumers().await.unwrap().len(), 2);
    let mut fast = s2.consumer("fast").batch_size(4).open().await.unwrap();
    assert_eq!(fast.checkpoint(), 8, "restart from the stored checkpoint");
    let mut rest = Vec::new();
    let n = fast
        .catch_up(async |e: &Entry| {
            rest.push(e.seq);
            Ok::<(), String>(())
        })
        .await
        .unwrap();
    assert_eq!(
        (n, rest),
        (2, vec![9, 10]),
        "no entry skipped, none repeated"
    );
    // A new entry wakes a waiting consumer.
    let waiter = {
        let s2 = s2.clone();
        tokio::spawn(async move {
            let mut c = s2.consumer("fast").open().await.unwrap();
            c.wait_batch(Duration::from_secs(20)).await.unwrap()
        })
    };
    commit_n(&s2, "late", 1).await;
    let batch = waiter.await.unwrap();
    assert_eq!(batch.entries().first().map(|e| e.seq), Some(11));
}

/// At-least-once: a crash between the apply and the checkpoint (or an apply that fails)
/// redelivers the batch after the restart; nothing is lost.
pub async fn at_least_once_redelivers_after_a_crash(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let s = engine.space("alo").await.unwrap();
    commit_n(&s, "op", 6).await;
    let mut applied: BTreeMap<u64, u32> = BTreeMap::new();
    {
        let mut c = s.consumer("view").batch_size(4).open().await.unwrap();
        let batch = c.next_batch().await.unwrap();
        for e in batch.entries() {
            *applied.entry(e.seq).or_default() += 1;
        }
        // The process dies here: applied, not checkpointed.
    }
    let engine2 = restart(&fx).await;
    let s2 = engine2.space("alo").await.unwrap();
    let mut c = s2.consumer("view").batch_size(4).open().await.unwrap();
    assert_eq!(c.checkpoint(), 0);
    // An apply that fails half-way: an Apply error naming the batch, nothing checkpointed.
    let err = consumer_err(
        c.run_once(async |e: &Entry| {
            *applied.entry(e.seq).or_default() += 1;
            if e.seq == 2 { Err("disk full") } else { Ok(()) }
        })
        .await,
    );
    assert!(
        matches!(&err, ConsumerError::Apply { from: 1, to: 4, detail, .. } if detail.contains("disk full")),
        "{err}"
    );
    assert_eq!(c.checkpoint(), 0);
    c.catch_up(async |e: &Entry| {
        *applied.entry(e.seq).or_default() += 1;
        Ok::<(), String>(())
    })
    .await
    .unwrap();
    assert_eq!(c.checkpoint(), 6);
    let counts: Vec<(u64, u32)> = applied.into_iter().collect();
    assert_eq!(
        counts,
        [(1, 3), (2, 3), (3, 2), (4, 2), (5, 1), (6, 1)],
        "the crashed batch was delivered again (at-least-once); later entries once"
    );
}

/// Retention: a prune stops at the lowest retaining checkpoint and at the watermark, is
/// audited, and reads of pruned seqs fail with a typed error naming the prune; a lagging
/// non-retaining consumer must be reset past it.
pub async fn prune_respects_retaining_consumers(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let s = engine.space("retention").await.unwrap();
    commit_n(&s, "op", 10).await;
    let _open = s.grant(Grant::new("open", "t").ttl(TTL)).await.unwrap();
    let store = engine.store().clone();
    let mut keeper = s.consumer("keeper").open().await.unwrap();
    let mut feed = s.consumer("feed").retain(false).open().await.unwrap();
    store
        .save_checkpoint(s.name(), "keeper", 0, 5)
        .await
        .unwrap();
    keeper.reload().await.unwrap();

    let held = s.prune(7, "ops-alice").await;
    let held = consumer_err(held);
    assert!(
        matches!(&held, ConsumerError::Retained { consumer, checkpoint: 5, through: 6, .. } if consumer == "keeper"),
        "{held}"
    );
    let above = consumer_err(s.prune(12, "ops-alice").await);
    assert!(
        matches!(above, ConsumerError::AboveWatermark { watermark: 10, .. }),
        "{above}"
    );
    assert!(matches!(
        s.prune(3, "bad actor\n").await,
        Err(Error::Invalid(_))
    ));
    assert_eq!(
        store.read(s.name(), 1, 100).await.unwrap().len(),
        10,
        "refused prunes delete nothing"
    );

    let pruned = s.prune(6, "ops-alice").await.unwrap();
    assert_eq!(
        (
            pruned.kind,
            pruned.from,
            pruned.to,
            pruned.entries,
            pruned.actor.as_str()
        ),
        (RetentionEventKind::Pruned, 1, 5, 5, "ops-alice")
    );
    match store.read(s.name(), 3, 100).await {
        Err(StoreError::Pruned {
            through: 5, actor, ..
        }) => assert_eq!(actor, "ops-alice"),
        other => panic!("reading a pruned seq must fail with Pruned, got {other:?}"),
    }
    let msg = store.read(s.name(), 1, 1).await.unwrap_err().to_string();
    assert!(msg.contains("ops-alice") && msg.contains("6"), "{msg}");
    let tail = store.read(s.name(), 6, 100).await.unwrap();
    assert_eq!(
        tail.first().map(|e| e.seq),
        Some(6),
        "entries above the prune stay"
    );
    assert_eq!(tail.len(), 5);

    // The retaining consumer carries on; the non-retaining one fell behind the prune.
    assert_eq!(keeper.next_batch().await.unwrap().entries()[0].seq, 6);
    assert!(matches!(
        feed.next_batch().await,
        Err(Error::Store(StoreError::Pruned { through: 5, .. }))
    ));
    let into = consumer_err(feed.reset(2, "ops-bob").await);
    assert!(
        matches!(
            into,
            ConsumerError::ResetIntoPruned {
                pruned_through: 5,
                ..
            }
        ),
        "{into}"
    );
    feed.reset(5, "ops-bob").await.unwrap();
    assert_eq!(feed.next_batch().await.unwrap().entries()[0].seq, 6);

    // Pruning below what is gone deletes nothing, and is audited all the same.
    assert_eq!(s.prune(3, "ops-alice").await.unwrap().entries, 0);
    let removed = feed.remove("ops-bob").await.unwrap();
    assert_eq!(removed.name, "feed");
    let audit: Vec<_> = s
        .retention_history()
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.consumer, e.from, e.to, e.entries, e.actor))
        .collect();
    assert_eq!(
        audit,
        [
            (
                RetentionEventKind::Pruned,
                None,
                1,
                5,
                5,
                "ops-alice".to_string()
            ),
            (
                RetentionEventKind::ConsumerReset,
                Some("feed".to_string()),
                0,
                5,
                0,
                "ops-bob".to_string()
            ),
            (
                RetentionEventKind::Pruned,
                None,
                1,
                5,
                0,
                "ops-alice".to_string()
            ),
            (
                RetentionEventKind::ConsumerRemoved,
                Some("feed".to_string()),
                5,
                5,
                0,
                "ops-bob".to_string()
            ),
        ]
    );
    // New slots still get fresh seqs after a prune.
    let mut l = s
        .grant(Grant::new("after-prune", "t").ttl(TTL))
        .await
        .unwrap();
    assert_eq!(l.seq(), 12);
    l.commit(body("after")).await.unwrap();
}

/// Deterministic replay: a read model built live — with crashed workers (abandoned leases,
/// expiry driven by the store clock, recovery turning them into recovered entries and gaps)
/// and a consumer that crashes between apply and checkpoint — equals the read model rebuilt
/// from the log after a reset, and one built by a fresh consumer on a restarted engine.
pub async fn replay_is_deterministic(h: &dyn Harness) {
    let fx = h.fresh().await;
    let engine = fx.engine().await;
    let s = engine.space("replay").await.unwrap();
    let cleanup = engine
        .cleanup()
        .config(config("replay-cleaner"))
        .resolver("orders", IdsResolver)
        .build()
        .await
        .unwrap();
    let mut live = Model::default();
    let mut deliveries = 0u64;
    let mut next_op = 0u64;
    for round in 0..4u64 {
        // Workers: commits, releases, and crashed workers with and without recorded work.
        for i in 0..12u64 {
            next_op += 1;
            let mut l = s
                .grant(Grant::new(format!("op-{next_op}"), "orders").ttl(TTL))
                .await
                .unwrap();
            match i % 6 {
                0 | 1 => {
                    l.commit(body(next_op)).await.unwrap();
                }
                2 => {
                    l.release(Some("nothing to do".into())).await.unwrap();
                }
                3 => l.abandon(),
                _ => drop(l), // a dropped handle releases its slot
            }
        }
        abandon_with_work(&s, round * 100 + 1000..round * 100 + 1004).await;
        // A duplicate of an already committed operation.
        let mut dup = s
            .grant(Grant::new(format!("op-{}", next_op - 11), "orders").ttl(TTL))
            .await
            .unwrap();
        dup.commit(body("dup")).await.unwrap();
        fx.advance(TTL);
        cleanup.run_once().await.unwrap();

        // The live consumer: one batch checkpointed, then a crash after applying the next.
        let mut c = s.consumer("live").batch_size(7).open().await.unwrap();
        c.run_once(async |e: &Entry| {
            live.apply(e);
            deliveries += 1;
            Ok::<(), String>(())
        })
        .await
        .unwrap();
        let crashed = c.next_batch().await.unwrap();
        for e in crashed.entries() {
            live.apply(e);
            deliveries += 1;
        }
        drop(c);
    }
    let info = s.info().await.unwrap();
    assert_eq!(info.in_flight, 0, "every slot resolved");
    let mut c = s.consumer("live").batch_size(7).open().await.unwrap();
    c.catch_up(async |e: &Entry| {
        live.apply(e);
        deliveries += 1;
        Ok::<(), String>(())
    })
    .await
    .unwrap();
    assert_eq!(c.checkpoint(), info.watermark);
    assert_eq!(live.rows.len() as u64, info.watermark);
    assert!(
        deliveries > info.watermark,
        "the injected crashes redelivered entries ({deliveries} deliveries of {} entries)",
        info.watermark
    );
    let kinds: Vec<_> = live.rows.values().collect();
    for needle in ["Released", "Expired", "Superseded", "recovery: Some"] {
        assert!(
            kinds.iter().any(|k| k.contains(needle)),
            "the workload produced no {needle} entry"
        );
    }

    // Rebuild from 0 into a fresh model, with progress reports.
    let mut rebuilt = Model::default();
    let mut reports = Vec::new();
    let last = c
        .rebuild(
            0,
            "replay-test",
            async |e: &Entry| {
                rebuilt.apply(e);
                Ok::<(), String>(())
            },
            |p| reports.push(*p),
        )
        .await
        .unwrap();
    assert_eq!(
        (last.checkpoint, last.target, last.applied),
        (info.watermark, info.watermark, info.watermark)
    );
    assert!(
        reports.len() >= 2
            && reports
                .windows(2)
                .all(|w| w[0].checkpoint < w[1].checkpoint)
    );
    assert_eq!(rebuilt, live, "I7: a rebuild produces the same read model");

    // And a brand-new consumer in a restarted process builds it again.
    let engine2 = restart(&fx).await;
    let s2 = engine2.space("replay").await.unwrap();
    let mut other = s2.consumer("fresh").batch_size(1000).open().await.unwrap();
    let mut third = Model::default();
    other
        .catch_up(async |e: &Entry| {
            third.apply(e);
            Ok::<(), String>(())
        })
        .await
        .unwrap();
    assert_eq!(
        third, live,
        "I7: replay on another engine gives the same model"
    );
}
