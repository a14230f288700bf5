//! The conformance suite on the PostgreSQL store: once through group commit (its default),
//! once with every command sent as its own batch by concurrent tasks, so many transactions
//! race on the same space rows and slots (the compare-and-swap path under contention).
//!
//! Server: `DATABASE_URL` when set, otherwise a throwaway cluster started from the installed
//! PostgreSQL binaries (`seqlease_conformance::postgres`). Each fixture gets its own schema
//! in that database, so fixtures are isolated while sharing one server. Time is driven by a
//! pinned [`PgClock`]: the database applies it in SQL, so expiry is still decided by the
//! store, and a check sees exactly the instants it set, as on the other stores.

use std::sync::Arc;

use async_trait::async_trait;
use seqlease::core::{Clock, Store};
use seqlease::{ManualClock, PgClock, PgOptions, PgStore};
use seqlease_conformance::postgres::{database_url, unique_name};
use seqlease_conformance::{Fixture, Harness, conformance_suite};

struct Postgres {
    group_commit: Option<bool>,
}

#[async_trait]
impl Harness for Postgres {
    async fn fresh(&self) -> Fixture {
        let url = database_url();
        let clock = Arc::new(PgClock::pinned_at(ManualClock::new().now()));
        let opts = PgOptions {
            clock: clock.clone(),
            schema: Some(unique_name("conf")),
            max_connections: 8,
            ..PgOptions::default()
        };
        let store = PgStore::connect(&url, opts.clone())
            .await
            .expect("connect to the test PostgreSQL");
        Fixture {
            store: Arc::new(store),
            time: clock,
            reopen: Some(Box::new(move || {
                let (url, opts) = (url.clone(), opts.clone());
                Box::pin(async move {
                    let store = PgStore::connect(&url, opts).await.expect("reopen");
                    Arc::new(store) as Arc<dyn Store>
                })
            })),
            guard: None,
            group_commit: self.group_commit,
        }
    }
}

mod group_commit {
    use super::*;
    conformance_suite!(Postgres { group_commit: None });
}

mod direct {
    use super::*;
    conformance_suite!(Postgres {
        group_commit: Some(false)
    });
}

mod recovery {
    use super::*;
    seqlease_conformance::recovery_suite!(Postgres { group_commit: None });
}

mod resources {
    use super::*;
    seqlease_conformance::resource_suite!(Postgres { group_commit: None });
}

mod history {
    use super::*;
    seqlease_conformance::history_suite!(Postgres { group_commit: None });
}

mod consumers {
    use super::*;
    seqlease_conformance::consumer_suite!(Postgres { group_commit: None });
}

mod worker {
    use super::*;
    seqlease_conformance::worker_suite!(Postgres { group_commit: None });
}
