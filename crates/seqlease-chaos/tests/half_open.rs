//! A half-open partition between the engine and PostgreSQL: every connection stays open
//! and nothing gets through (a firewall or NAT dropping the flow without a reset). Without
//! a limit, a batch would wait until TCP gave up, about 15 minutes, with every command of
//! the engine queued behind it. With `PgOptions::call_timeout`, calls fail in time with a
//! transient error that says what happened; once the path heals the engine goes on, the
//! lease whose commit was cut off commits, and nothing acknowledged is lost or doubled.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use seqlease::{CommitStatus, Engine, Error, Grant, OperationBody, PgOptions, PgStore, StoreError};
use seqlease_chaos::proxy::Proxy;
use seqlease_conformance::postgres::{server, unique_name};

/// Far beyond the call timeout: only a call that never gives up reaches it.
const HANG: Duration = Duration::from_secs(120);

fn body(i: u32) -> OperationBody {
    OperationBody::new("update", format!("{{\"ids\":[{i}]}}").into_bytes())
}

fn unavailable(result: &Result<impl std::fmt::Debug, Error>) -> bool {
    matches!(result, Err(Error::Store(StoreError::Unavailable { .. })))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_partition_fails_calls_in_time_and_heals() {
    let server = server();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port).into())
        .await
        .expect("proxy");
    let direct = format!("{}:{}", server.host, server.port);
    let url = server
        .url
        .replacen(&direct, &format!("127.0.0.1:{}", proxy.port()), 1);
    assert_ne!(url, server.url, "the test URL goes through the proxy");
    let opts = PgOptions {
        schema: Some(unique_name("half_open")),
        call_timeout: Some(Duration::from_secs(2)),
        connect_timeout: Duration::from_secs(2),
        // This check is about calls; the owner-liveness session and LISTEN, which a
        // partition also cuts, are the chaos run's business.
        dead_owner_probe: None,
        listen: false,
        ..PgOptions::default()
    };
    let store = PgStore::connect(&url, opts).await.expect("connect");
    let engine = Engine::builder()
        .store(Arc::new(store.clone()))
        .build()
        .await
        .expect("engine");
    let space = engine.space("half-open").await.unwrap();
    let mut acknowledged = BTreeMap::new();
    let mut first = space.grant(Grant::new("before", "t")).await.unwrap();
    acknowledged.insert("before", first.commit(body(0)).await.unwrap().seq);
    let mut cut_off = space.grant(Grant::new("cut-off", "t")).await.unwrap();

    proxy.partition();
    let commit = tokio::time::timeout(HANG, cut_off.commit(body(1)))
        .await
        .expect("the commit gave up by itself");
    assert!(unavailable(&commit), "a transient store error: {commit:?}");
    let message = commit.unwrap_err().to_string();
    assert!(
        message.contains("no answer") && message.contains("call_timeout"),
        "the error says what happened and which setting decides: {message}"
    );
    let grant = tokio::time::timeout(HANG, space.grant(Grant::new("during", "t")))
        .await
        .expect("the grant gave up by itself");
    assert!(unavailable(&grant), "{grant:?}");

    proxy.heal();
    // The cut-off batch may or may not have reached the server; either way the lease's
    // retry settles it. The first call after the heal may still meet a connection the
    // partition left behind.
    let mut retried = None;
    for _ in 0..3 {
        match cut_off.commit(body(1)).await {
            Ok(outcome) => {
                retried = Some(outcome);
                break;
            }
            Err(Error::Store(e)) if e.is_transient() => continue,
            Err(e) => panic!("the retried commit: {e:?}"),
        }
    }
    let retried = retried.expect("the path healed");
    assert!(
        matches!(
            retried.status,
            CommitStatus::Committed | CommitStatus::AlreadyCommitted
        ),
        "{retried:?}"
    );
    acknowledged.insert("cut-off", retried.seq);
    let mut after = space.grant(Grant::new("after", "t")).await.unwrap();
    acknowledged.insert("after", after.commit(body(2)).await.unwrap().seq);

    let log = engine.store().read(space.name(), 1, 100).await.unwrap();
    let committed: BTreeMap<&str, u64> = log
        .iter()
        .filter_map(|e| e.operation().map(|op| (op.operation_id.as_str(), e.seq)))
        .collect();
    assert_eq!(committed, acknowledged, "I4 and I6 across the partition");
    drop(space);
    drop(engine);
    store.close().await;
}
