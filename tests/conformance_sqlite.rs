//! The conformance suite on the SQLite store: a fresh database file per check, reopened from
//! the same file for the durability checks.

use std::sync::Arc;

use async_trait::async_trait;
use futures::FutureExt;
use seqlease::{ManualClock, SqliteOptions, SqliteStore};
use seqlease_conformance::{Fixture, Harness, conformance_suite};
use seqlease_core::Store;

struct Sqlite;

#[async_trait]
impl Harness for Sqlite {
    async fn fresh(&self) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("conformance.db");
        let clock = Arc::new(ManualClock::new());
        let options = {
            let clock = clock.clone();
            move || SqliteOptions {
                clock: clock.clone(),
                ..SqliteOptions::default()
            }
        };
        let store = SqliteStore::open(&path, options())
            .await
            .expect("sqlite store opens");
        let reopen = move || {
            let (path, options) = (path.clone(), options.clone());
            async move {
                let store = SqliteStore::open(&path, options())
                    .await
                    .expect("sqlite store reopens");
                Arc::new(store) as Arc<dyn Store>
            }
            .boxed()
        };
        Fixture {
            store: Arc::new(store),
            time: clock,
            reopen: Some(Box::new(reopen)),
            guard: Some(Box::new(dir)),
            group_commit: None,
        }
    }
}

conformance_suite!(Sqlite);

mod recovery {
    use super::*;
    seqlease_conformance::recovery_suite!(Sqlite);
}

mod history {
    use super::*;
    seqlease_conformance::history_suite!(Sqlite);
}

mod resources {
    use super::*;
    seqlease_conformance::resource_suite!(Sqlite);
}

mod consumers {
    use super::*;
    seqlease_conformance::consumer_suite!(Sqlite);
}

mod worker {
    use super::*;
    seqlease_conformance::worker_suite!(Sqlite);
}
