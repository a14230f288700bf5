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
