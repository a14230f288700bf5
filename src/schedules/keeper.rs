//! The lease keeper's cache of held resources against its renewal task.
//!
//! The renewal task renews everything held in one store call and then extends or forgets
//! each entry by what the store answered; meanwhile the application may release a resource
//! and acquire it again at a new epoch. The contract: whatever the renewal answered for the
//! old epoch, the new one stays held with its own deadline, and a loss is reported only for
//! the epoch that was lost. And the renewal task, asleep with nothing due, must wake when
//! something is acquired (else that lease runs out unrenewed). These checks run the real
//! [`HeldLeases`] with the in-memory store behind a round trip.

use std::collections::HashSet;
use std::future::pending;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use seqlease_core::{Reply, ResourceCommand, ResourceReply, Store};
use shuttle::future::{block_on, spawn, yield_now};
use tokio::time::Instant;

use super::{SlowStore, explore};
use crate::keeper::held::{Held, HeldLeases, Mutation};

const AGENT: &str = "agent-1";
const RESOURCE: &str = "partition-7";
const TTL: Duration = Duration::from_secs(30);
const MARGIN: Duration = Duration::from_secs(2);

fn held_leases(mutation: Option<Mutation>) -> Arc<HeldLeases> {
    Arc::new(HeldLeases::seeded(mutation))
}

/// Acquire `RESOURCE` in the store and remember it, as `LeaseKeeper::acquire` does.
async fn acquire(store: &SlowStore, held: &HeldLeases) -> u64 {
    let requested_at = Instant::now();
    let command = ResourceCommand::Acquire {
        resource: RESOURCE.into(),
        agent: AGENT.into(),
        ttl: TTL,
        max_renewals: None,
        metadata: None,
    };
    let mut outcome = store.resources(vec![command]).await.expect("store");
    let epoch = match outcome.replies.pop().expect("one reply") {
        Ok(Reply::Resource(ResourceReply::Held(lease))) => lease.epoch,
        other => panic!("acquire answered {other:?}"),
    };
    held.remember(RESOURCE.into(), Held::new(epoch, TTL, requested_at, MARGIN));
    epoch
}

/// A renewal in flight while the application releases the resource and acquires it again.
/// Returns whether the old epoch was renewed, and whether it was reported lost.
fn renewal_scenario(mutation: Option<Mutation>) -> (bool, bool) {
    block_on(async move {
        let store = Arc::new(SlowStore::new(16, 1));
        let held = held_leases(mutation);
        let first = acquire(&store, &held).await;
        let renewal = {
            let (store, held) = (store.clone(), held.clone());
            spawn(async move { held.renew_all(AGENT, store.as_ref(), |_| MARGIN).await })
        };
        let application = {
            let (store, held) = (store.clone(), held.clone());
            spawn(async move {
                // As `LeaseKeeper::release`: forget it locally, then tell the store.
                let old = held.take(RESOURCE).expect("held");
                let release = ResourceCommand::Release {
                    resource: RESOURCE.into(),
                    agent: AGENT.into(),
                    epoch: old.epoch,
                };
                let outcome = store.resources(vec![release]).await.expect("store");
                assert!(outcome.replies[0].is_ok(), "released");
                acquire(&store, &held).await
            })
        };
        let renewal = renewal.await.expect("renewal task");
        let second = application.await.expect("application task");
        assert!(second > first, "I9: a new holder gets a new epoch");
        assert!(renewal.failed.is_none(), "the store stayed up");
        assert_eq!(
            held.list(),
            vec![(RESOURCE.to_string(), second)],
            "the new epoch is still held, whatever the renewal of the old one answered"
        );
        assert_eq!(held.live_epoch(RESOURCE, Instant::now()), Ok(second));
        for lost in &renewal.lost {
            assert_eq!(
                lost.epoch, first,
                "a loss reported for the epoch still held"
            );
        }
        (renewal.renewed > 0, !renewal.lost.is_empty())
    })
}

#[test]
fn shuttle_keeper_renewal_never_touches_a_newer_epoch() {
    let outcomes = Arc::new(Mutex::new(HashSet::new()));
    let sink = outcomes.clone();
    explore(move || {
        let outcome = renewal_scenario(None);
        sink.lock().insert(outcome);
    })
    .expect("every schedule keeps the keeper's contract");
    // Not vacuous: in some schedules the old epoch's renewal landed in the store first, in
    // others the release did and the renewal was refused. Never a loss: the application
    // had already let the old epoch go.
    let outcomes = outcomes.lock();
    assert_eq!(
        *outcomes,
        HashSet::from([(true, false), (false, false)]),
        "both orders explored"
    );
}

#[test]
fn shuttle_finds_the_seeded_renewal_that_ignores_the_epoch() {
    let found = explore(|| {
        let _ = renewal_scenario(Some(Mutation::IgnoreEpoch));
    });
    assert!(
        found.is_err(),
        "shuttle should find the forgotten new epoch"
    );
}

/// The renewal task waits with nothing held while a lease is acquired.
fn wake_scenario(mutation: Option<Mutation>) {
    block_on(async move {
        let held = held_leases(mutation);
        let renewer = {
            let held = held.clone();
            spawn(async move {
                // With nothing held the real task sleeps an hour; here, for good: only the
                // wake-up from the acquisition can move it on.
                let sleep = |due: Option<Instant>| async move {
                    if due.is_none() {
                        pending::<()>().await;
                    }
                };
                while !held.until_due(sleep).await {}
            })
        };
        let acquirer = {
            let held = held.clone();
            spawn(async move {
                yield_now().await;
                held.remember(RESOURCE.into(), Held::new(1, TTL, Instant::now(), MARGIN));
            })
        };
        acquirer.await.expect("acquirer task");
        renewer.await.expect("renewal task");
    });
}

#[test]
fn shuttle_keeper_renewal_task_wakes_for_a_new_lease() {
    explore(|| wake_scenario(None)).expect("the renewal task always wakes");
}

#[test]
fn shuttle_finds_the_seeded_renewal_task_lost_wakeup() {
    let found = explore(|| wake_scenario(Some(Mutation::LateArm)));
    assert!(found.is_err(), "shuttle should find the lost wake-up");
}
