//! PostgreSQL-specific behaviour beyond the conformance suite: bad input at connect (each a
//! clear error that says what to do), wake-ups across store instances through
//! LISTEN/NOTIFY, and crash detection through owner locks.
//!
//! Server: `DATABASE_URL`, or the throwaway cluster of `seqlease_conformance::postgres`.
//! Every test works in schemas of its own.

use std::sync::Arc;
use std::time::Duration;

use seqlease::core::{Store, StoreError};
use seqlease::{Engine, EngineConfig, Grant, OperationBody, PgClock, PgOptions, PgStore};
use seqlease_conformance::postgres::{PASSWORD_ROLE, server, unique_name};
use sqlx::postgres::PgPool;

const SOON: Duration = Duration::from_secs(20);

fn opts(schema: &str) -> PgOptions {
    PgOptions {
        schema: Some(schema.to_string()),
        max_connections: 4,
        connect_timeout: Duration::from_secs(5),
        ..PgOptions::default()
    }
}

async fn admin() -> PgPool {
    PgPool::connect(&server().url)
        .await
        .expect("admin connection")
}

/// A URL for `user` (and `password`) on the test server's database.
fn url_as(user: &str, password: Option<&str>) -> String {
    let s = server();
    let db = s
        .url
        .rsplit('/')
        .next()
        .and_then(|d| d.split('?').next())
        .unwrap_or("postgres");
    match password {
        Some(p) => format!("postgres://{user}:{p}@{}:{}/{db}", s.host, s.port),
        None => format!("postgres://{user}@{}:{}/{db}", s.host, s.port),
    }
}

fn engine_config(owner: &str) -> EngineConfig {
    EngineConfig {
        owner: owner.into(),
        min_ttl: Duration::from_millis(1),
        external_poll_interval: Duration::from_secs(3600),
        ..EngineConfig::default()
    }
}

async fn engine(store: &PgStore, owner: &str) -> Engine {
    Engine::builder()
        .store(Arc::new(store.clone()))
        .config(engine_config(owner))
        .build()
        .await
        .expect("engine")
}

#[tokio::test]
async fn unreachable_server_is_unavailable_and_names_host_and_port() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let o = PgOptions {
        connect_timeout: Duration::from_secs(3),
        ..PgOptions::default()
    };
    let e = PgStore::connect(&url, o).await.unwrap_err();
    assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");
    assert!(e.is_transient());
    let msg = e.to_string();
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
    assert!(msg.contains("check"), "says what to do: {msg}");
}

#[tokio::test]
async fn tls_connections_work() {
    let s = server();
    assert!(
        s.tls || !s.throwaway,
        "the throwaway cluster runs TLS when openssl is installed (apt-get install -y openssl)"
    );
    let sep = if s.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}sslmode=require", s.url);
    match PgStore::connect(&url, opts(&unique_name("tls"))).await {
        Ok(store) => {
            let ssl: bool =
                sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                    .fetch_one(store.pool())
                    .await
                    .unwrap();
            assert!(ssl, "sslmode=require must give an encrypted session");
            let e = engine(&store, "tls").await;
            let space = e.space("tls").await.unwrap();
            let mut l = space.grant(Grant::new("op", "t")).await.unwrap();
            l.commit(OperationBody::new("update", vec![1]))
                .await
                .unwrap();
        }
        Err(e) => {
            // Only a server without TLS (a DATABASE_URL one) may refuse, and it must say so.
            assert!(!s.tls, "the throwaway cluster has TLS on: {e}");
            assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");
        }
    }
}

#[tokio::test]
async fn bad_urls_and_schema_names_are_refused() {
    for url in ["postgres://u@h:notaport/db", "postgres://[::1/db"] {
        let e = PgStore::connect(url, PgOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::BadUrl { .. }), "{url}: {e:?}");
    }
    let e = PgStore::connect(&server().url, opts("Bad-Schema"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::BadOption {
                option: "PgOptions::schema",
                ..
            }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn wrong_credentials_are_a_permission_error() {
    let unknown = unique_name("nobody");
    let e = PgStore::connect(&url_as(&unknown, Some("x")), opts("s"))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Permission { .. }), "{e:?}");
    assert!(e.to_string().contains("user name and password"), "{e}");

    if server().throwaway {
        // The throwaway cluster makes this role log in with a password (scram).
        let admin = admin().await;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DO $$ BEGIN CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD 'right'; \
             EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )))
        .execute(&admin)
        .await
        .unwrap();
        let e = PgStore::connect(&url_as(PASSWORD_ROLE, Some("wrong")), opts("s"))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Permission { .. }), "{e:?}");
        assert!(e.to_string().contains("password"), "{e}");
    }
}

#[tokio::test]
async fn missing_schema_with_migrations_off_says_how_to_migrate() {
    let o = PgOptions {
        migrate: false,
        ..opts(&unique_name("nomig"))
    };
    let e = PgStore::connect(&server().url, o).await.unwrap_err();
    assert!(matches!(e, StoreError::Schema { .. }), "{e:?}");
    assert!(e.to_string().contains("migrations on"), "{e}");
}

#[tokio::test]
async fn newer_schema_is_refused() {
    let schema = unique_name("newer");
    let store = PgStore::connect(&server().url, opts(&schema))
        .await
        .unwrap();
    store.close().await;
    let admin = admin().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {schema}._sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99990101000000, 'from the future', true, '\\x00', 0)"
    )))
    .execute(&admin)
    .await
    .unwrap();
    let e = PgStore::connect(&server().url, opts(&schema))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Schema { .. }), "{e:?}");
    assert!(e.to_string().contains("newer seqlease"), "{e}");
    assert!(e.to_string().contains("upgrade"), "{e}");
}

#[tokio::test]
async fn foreign_tables_are_not_taken_over() {
    let schema = unique_name("foreign");
    let admin = admin().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA {schema}; CREATE TABLE {schema}.spaces (x int)"
    )))
    .execute(&admin)
    .await
    .unwrap();
    let e = PgStore::connect(&server().url, opts(&schema))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Schema { .. }), "{e:?}");
    assert!(e.to_string().contains("another application"), "{e}");
}

/// A login role with no privileges on anything seqlease owns.
async fn plain_role(admin: &PgPool) -> String {
    let role = unique_name("role");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE ROLE {role} LOGIN")))
        .execute(admin)
        .await
        .unwrap();
    role
}

#[tokio::test]
async fn role_that_cannot_create_tables_gets_a_permission_error() {
    let admin = admin().await;
    let role = plain_role(&admin).await;
    let schema = unique_name("nocreate");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA {schema}; GRANT USAGE ON SCHEMA {schema} TO {role}"
    )))
    .execute(&admin)
    .await
    .unwrap();
    let e = PgStore::connect(&url_as(&role, None), opts(&schema))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Permission { .. }), "{e:?}");
    assert!(e.to_string().contains("CREATE"), "{e}");
}

#[tokio::test]
async fn role_without_table_privileges_is_told_what_to_grant() {
    let admin = admin().await;
    let role = plain_role(&admin).await;
    let schema = unique_name("noprivs");
    PgStore::connect(&server().url, opts(&schema))
        .await
        .unwrap()
        .close()
        .await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "GRANT USAGE ON SCHEMA {schema} TO {role}; GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}"
    )))
    .execute(&admin)
    .await
    .unwrap();
    let e = PgStore::connect(&url_as(&role, None), opts(&schema))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Permission { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("GRANT SELECT, INSERT, UPDATE"), "{msg}");
    assert!(msg.contains(&role), "{msg}");

    // Once granted, the same role works.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA {schema} TO {role}"
    )))
    .execute(&admin)
    .await
    .unwrap();
    let store = PgStore::connect(
        &url_as(&role, None),
        PgOptions {
            migrate: false,
            ..opts(&schema)
        },
    )
    .await
    .expect("granted role connects");
    let e = engine(&store, "w").await;
    let s = e.space("granted").await.unwrap();
    let mut l = s.grant(Grant::new("op", "t")).await.unwrap();
    l.commit(OperationBody::new("update", b"{}".to_vec()))
        .await
        .unwrap();
}

/// Wait until engine `b` hears NOTIFY from engine `a` (its LISTEN task has started):
/// commit on `a` until `b`'s watermark follows without a re-read.
async fn listening(a: &Engine, b: &Engine) {
    let (sa, sb) = (
        a.space("ready").await.unwrap(),
        b.space("ready").await.unwrap(),
    );
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let mut l = sa
            .grant(Grant::new(unique_name("ping"), "t"))
            .await
            .unwrap();
        let seq = l.seq();
        l.commit(OperationBody::new("ping", vec![])).await.unwrap();
        if sb.wait_for(seq, Duration::from_millis(300)).await.is_ok() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "engine b never heard a NOTIFY"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_store_instance_is_woken_by_notify() {
    let schema = unique_name("notify");
    let a = PgStore::connect(&server().url, opts(&schema))
        .await
        .unwrap();
    let b = PgStore::connect(&server().url, opts(&schema))
        .await
        .unwrap();
    let (ea, eb) = (engine(&a, "a").await, engine(&b, "b").await);
    listening(&ea, &eb).await;
    let sa = ea.space("wake").await.unwrap();
    let sb = eb.space("wake").await.unwrap();
    // Engine b's fallback re-read is an hour away: only a notification can wake it.
    let mut reader = sb.reader(1);
    let waiter = tokio::spawn(async move {
        let mut seqs = Vec::new();
        for _ in 0..3 {
            let e = tokio::time::timeout(SOON, reader.next())
                .await
                .expect("woken by NOTIFY")
                .unwrap();
            seqs.push(e.seq);
        }
        seqs
    });
    for i in 0..3 {
        let mut l = sa.grant(Grant::new(format!("op-{i}"), "t")).await.unwrap();
        l.commit(OperationBody::new("update", vec![i]))
            .await
            .unwrap();
    }
    assert_eq!(waiter.await.unwrap(), vec![1, 2, 3]);
    assert_eq!(sb.wait_for(3, SOON).await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_waiter_in_another_instance_is_woken_by_notify() {
    let schema = unique_name("capwake");
    let a = PgStore::connect(&server().url, opts(&schema))
        .await
        .unwrap();
    let b = PgStore::connect(&server().url, opts(&schema))
        .await
        .unwrap();
    let (ea, eb) = (engine(&a, "a").await, engine(&b, "b").await);
    listening(&ea, &eb).await;
    let sa = ea
        .space_with("cap", seqlease::SpaceConfig { capacity: 1 })
        .await
        .unwrap();
    let sb = eb.space("cap").await.unwrap();
    let held = sa.grant(Grant::new("held", "t")).await.unwrap();
    let waiter = tokio::spawn(async move { sb.grant(Grant::new("next", "t").wait(SOON)).await });
    // Let the waiter try once and go to sleep; if it has not yet, it finds the slot free.
    tokio::time::sleep(Duration::from_millis(100)).await;
    held.release(None).await.unwrap();
    let l = waiter
        .await
        .unwrap()
        .expect("woken by NOTIFY when capacity was freed");
    assert_eq!(l.seq(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_owner_leases_expire_before_their_ttl() {
    let schema = unique_name("dead");
    let no_probe = PgOptions {
        dead_owner_probe: None,
        ..opts(&schema)
    };
    let clock = Arc::new(PgClock::database());
    let doomed = PgStore::connect(
        &server().url,
        PgOptions {
            clock: clock.clone(),
            ..no_probe.clone()
        },
    )
    .await
    .unwrap();
    let survivor = PgStore::connect(&server().url, no_probe.clone())
        .await
        .unwrap();
    let ed = engine(&doomed, "doomed-worker").await;
    let es = engine(&survivor, "survivor").await;
    let sd = ed.space("crash").await.unwrap();
    let ss = es.space("crash").await.unwrap();
    let ttl = Duration::from_secs(3600);
    let mut d1 = sd.grant(Grant::new("d1", "t").ttl(ttl)).await.unwrap();
    let d2 = sd.grant(Grant::new("d2", "t").ttl(ttl)).await.unwrap();
    let foreign = sd
        .grant(Grant::new("f", "t").ttl(ttl).owner("never-registered"))
        .await
        .unwrap();
    let mut s1 = ss.grant(Grant::new("s1", "t").ttl(ttl)).await.unwrap();
    d1.commit(OperationBody::new("update", vec![1]))
        .await
        .unwrap();

    // Everyone alive: nothing to expire.
    assert_eq!(survivor.expire_dead_owners().await.unwrap(), 0);

    // The doomed process "dies": its session ends and its owner lock is released.
    let d2_seq = d2.seq();
    std::mem::forget(d2);
    std::mem::forget(foreign);
    doomed.close().await;

    // The server ends the session (and releases its locks) just after the client closes it.
    let deadline = tokio::time::Instant::now() + SOON;
    let expired = loop {
        let n = survivor.expire_dead_owners().await.unwrap();
        if n > 0 {
            break n;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead owner not detected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        expired, 1,
        "only the dead owner's live LEASED slot is expired"
    );
    let now = survivor.now().await.unwrap();
    let v = survivor.slot(ss.name(), d2_seq).await.unwrap().unwrap();
    assert_eq!(v.state, seqlease::SlotState::Leased, "left to recovery");
    assert!(v.lease.expires_at <= now, "expired long before its 1 h TTL");
    let f = survivor.slot(ss.name(), 3).await.unwrap().unwrap();
    assert!(
        f.lease.expires_at > now,
        "unregistered owners expire by TTL only"
    );
    assert_eq!(
        survivor.expire_dead_owners().await.unwrap(),
        0,
        "idempotent"
    );
    // The survivor's own lease is untouched.
    s1.commit(OperationBody::new("update", vec![2]))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_probe_expires_dead_owner_leases() {
    let schema = unique_name("probe");
    let doomed = PgStore::connect(
        &server().url,
        PgOptions {
            dead_owner_probe: None,
            ..opts(&schema)
        },
    )
    .await
    .unwrap();
    let watcher = PgStore::connect(
        &server().url,
        PgOptions {
            dead_owner_probe: Some(Duration::from_millis(100)),
            ..opts(&schema)
        },
    )
    .await
    .unwrap();
    let ed = engine(&doomed, "probe-victim").await;
    let s = ed.space("probe").await.unwrap();
    let l = s
        .grant(Grant::new("x", "t").ttl(Duration::from_secs(3600)))
        .await
        .unwrap();
    let seq = l.seq();
    std::mem::forget(l);
    doomed.close().await;
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let now = watcher.now().await.unwrap();
        let v = watcher.slot(s.name(), seq).await.unwrap().unwrap();
        if v.lease.expires_at <= now {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the probe never expired the dead owner's lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// No lost update on the counter: 64 connections from 4 store instances grant and commit
/// concurrently, each command its own transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_lost_update_under_64_concurrent_connections() {
    use seqlease::core::{Command, GrantRequest, LeaseKey, Reply};
    let schema = unique_name("counter");
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(
            PgStore::connect(
                &server().url,
                PgOptions {
                    max_connections: 16,
                    ..opts(&schema)
                },
            )
            .await
            .unwrap(),
        );
    }
    let space = seqlease::SpaceName::new("counter").unwrap();
    stores[0]
        .ensure_space(&space, &seqlease::SpaceConfig { capacity: 100_000 })
        .await
        .unwrap();
    let per_task = 15;
    let mut tasks = Vec::new();
    for t in 0..64 {
        let store = stores[t % 4].clone();
        let space = space.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..per_task {
                let grant = Command::Grant(GrantRequest {
                    space: space.clone(),
                    operation_id: format!("t{t}-{i}"),
                    projection_type: "t".into(),
                    owner: "w".into(),
                    ttl: Duration::from_secs(60),
                    fence: None,
                });
                let mut out = store.execute(vec![grant]).await.unwrap();
                let Ok(Reply::Granted(lease)) = out.replies.remove(0) else {
                    panic!("grant refused")
                };
                let key = LeaseKey {
                    space: space.clone(),
                    seq: lease.seq,
                    token: lease.token,
                };
                let commit = Command::Commit {
                    key,
                    body: OperationBody::new("update", vec![1]),
                };
                let mut out = store.execute(vec![commit]).await.unwrap();
                assert!(matches!(out.replies.remove(0), Ok(Reply::Committed(_))));
                seqs.push(lease.seq);
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    let n = 64 * per_task as u64;
    assert_eq!(
        all,
        (1..=n).collect::<Vec<_>>(),
        "every seq once, none lost"
    );
    let info = stores[1].space_info(&space).await.unwrap().unwrap();
    assert_eq!(
        (info.last_seq, info.watermark, info.in_flight),
        (n, n, 0),
        "counters without lost updates"
    );
}

/// Batches that touch several spaces, listed in opposite orders, from two store instances at
/// once: space rows are locked in name order, so none deadlocks (a deadlock would surface
/// as a failed batch) and every counter stays exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multi_space_batches_in_any_order_never_deadlock() {
    use seqlease::core::{Command, GrantRequest, Reply};
    let schema = unique_name("order");
    let a = PgStore::connect(&server().url, opts(&schema))
        .await
        .unwrap();
    let b = PgStore::connect(&server().url, opts(&schema))
        .await
        .unwrap();
    let names: Vec<seqlease::SpaceName> = ["s-a", "s-b", "s-c"]
        .iter()
        .map(|n| seqlease::SpaceName::new(n).unwrap())
        .collect();
    for n in &names {
        a.ensure_space(n, &seqlease::SpaceConfig { capacity: 100_000 })
            .await
            .unwrap();
    }
    let rounds = 25;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = if t % 2 == 0 { a.clone() } else { b.clone() };
        let mut order = names.clone();
        if t % 2 == 1 {
            order.reverse();
        }
        tasks.push(tokio::spawn(async move {
            for i in 0..rounds {
                let batch = order
                    .iter()
                    .map(|space| {
                        Command::Grant(GrantRequest {
                            space: space.clone(),
                            operation_id: format!("t{t}-{i}"),
                            projection_type: "t".into(),
                            owner: "w".into(),
                            ttl: Duration::from_secs(60),
                            fence: None,
                        })
                    })
                    .collect();
                let out = store.execute(batch).await.expect("no deadlock");
                assert!(
                    out.replies
                        .iter()
                        .all(|r| matches!(r, Ok(Reply::Granted(_))))
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for n in &names {
        let info = b.space_info(n).await.unwrap().unwrap();
        assert_eq!(
            (info.last_seq, info.in_flight),
            (8 * rounds, 8 * rounds as u32)
        );
    }
}

/// Every store session ends a transaction left idle past `idle_in_transaction_timeout`, so
/// a paused process cannot hold row locks that the other processes need (found by the
/// fault-injection harness: a SIGSTOPped worker stalled every other process).
#[tokio::test]
async fn idle_transactions_are_bounded_on_every_session() {
    let show = |store: PgStore| async move {
        let value: String = sqlx::query_scalar("SHOW idle_in_transaction_session_timeout")
            .fetch_one(store.pool())
            .await
            .expect("show");
        store.close().await;
        value
    };
    let url = server().url.clone();
    let default = PgStore::connect(&url, opts(&unique_name("idle")))
        .await
        .unwrap();
    assert_eq!(show(default).await, "5s");
    let custom = PgOptions {
        idle_in_transaction_timeout: Some(Duration::from_millis(1500)),
        ..opts(&unique_name("idle"))
    };
    assert_eq!(
        show(PgStore::connect(&url, custom).await.unwrap()).await,
        "1500ms"
    );
    let off = PgOptions {
        idle_in_transaction_timeout: None,
        ..opts(&unique_name("idle"))
    };
    assert_eq!(show(PgStore::connect(&url, off).await.unwrap()).await, "0");
}
