//! The conformance suite on the in-memory store: once with direct calls (its default), once
//! with group commit forced on, so the batching path is held to the same guarantees.

use std::sync::Arc;

use async_trait::async_trait;
use seqlease::{ManualClock, MemoryStore};
use seqlease_conformance::{Fixture, Harness, conformance_suite};

struct Memory {
    group_commit: Option<bool>,
}

#[async_trait]
impl Harness for Memory {
    async fn fresh(&self) -> Fixture {
        let clock = Arc::new(ManualClock::new());
        Fixture {
            store: Arc::new(MemoryStore::with_clock(clock.clone())),
            time: clock,
            reopen: None,
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
