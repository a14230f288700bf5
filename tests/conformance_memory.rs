//! The conformance suite on the in-memory store: once with direct calls (its default), once
//! with group commit forced on, so the batching path is held to the same guarantees.

use std::sync::Arc;

use async_trait::async_trait;
use futures::FutureExt;
use seqlease::{ManualClock, MemoryStore};
use seqlease_conformance::{Fixture, Harness, conformance_suite};
use seqlease_core::Store;

struct Memory {
    group_commit: Option<bool>,
}

#[async_trait]
impl Harness for Memory {
    async fn fresh(&self) -> Fixture {
        let clock = Arc::new(ManualClock::new());
        let store: Arc<dyn Store> = Arc::new(MemoryStore::with_clock(clock.clone()));
        // Nothing outlives the process here: "reopening" attaches a second engine to the
        // same store, which is what another component of the same process would do.
        let same = store.clone();
        Fixture {
            store,
            time: clock,
            reopen: Some(Box::new(move || {
                futures::future::ready(same.clone()).boxed()
            })),
            guard: None,
            group_commit: self.group_commit,
        }
    }
}

mod direct {
    use super::*;
    conformance_suite!(Memory { group_commit: None });
}

mod group_commit {
    use super::*;
    conformance_suite!(Memory {
        group_commit: Some(true)
    });
}

mod recovery {
    use super::*;
    seqlease_conformance::recovery_suite!(Memory { group_commit: None });
}

mod resources {
    use super::*;
    seqlease_conformance::resource_suite!(Memory { group_commit: None });
}

mod history {
    use super::*;
    seqlease_conformance::history_suite!(Memory { group_commit: None });
}

mod consumers {
    use super::*;
    seqlease_conformance::consumer_suite!(Memory { group_commit: None });
}

mod worker {
    use super::*;
    seqlease_conformance::worker_suite!(Memory { group_commit: None });
}

/// Spaces made by many tasks at once, several per name, are one space per name: the
/// store's copy-on-write space map must not lose a space another task made meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spaces_made_concurrently_are_one_per_name() {
    use seqlease::{SpaceConfig, SpaceName};
    use seqlease_core::{Command, GrantRequest, Reply};
    let store = Arc::new(MemoryStore::new());
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let name = SpaceName::new(&format!("s{}", i % 8)).unwrap();
                store
                    .ensure_space(&name, &SpaceConfig { capacity: 64 })
                    .await
                    .unwrap();
                let grant = Command::Grant(GrantRequest {
                    space: name,
                    operation_id: format!("op-{i}"),
                    projection_type: "t".into(),
                    owner: "test".into(),
                    ttl: std::time::Duration::from_secs(30),
                    fence: None,
                });
                let one = store.execute_one(grant).await.unwrap();
                assert!(
                    matches!(one.reply, Ok(Reply::Granted(_))),
                    "{:?}",
                    one.reply
                );
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let spaces = store.list_spaces().await.unwrap();
    assert_eq!(spaces.len(), 8);
    assert!(
        spaces.iter().all(|s| s.last_seq == 4 && s.in_flight == 4),
        "{spaces:?}"
    );
}
