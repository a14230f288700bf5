//! The one-statement write path answers every batch exactly as the general path would.
//!
//! A seeded random schedule of batches (grants, commits with right and wrong tokens, double
//! commits, duplicate operation ids, releases, recorded work, renewals, clock steps that
//! expire leases, capacity running out) goes to two store instances on one schema, the way
//! two processes share a space, in runs, so that each instance's picture of the space goes
//! stale and its one-statement batches are refused. Every batch is also applied to the
//! in-memory store, the reference implementation of the contract, on a clock moved in
//! lockstep: each reply, each batch's watermark and the space's counters must match. Half
//! the runs are quiet (what a healthy worker sends: grants and commits of its own leases),
//! so that the one-statement path also runs, and is checked, many times.
//!
//! Server: `DATABASE_URL`, or the throwaway cluster of `seqlease_conformance::postgres`.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use seqlease::core::{
    ClaimRequest, Clock, Command, GrantRequest, LeaseKey, Reply, Resolution, Resolve, Store,
};
use seqlease::{
    ManualClock, MemoryStore, OperationBody, PgClock, PgOptions, PgStore, SlotState, SpaceConfig,
    SpaceName, TimeControl, Timestamp, Token,
};
use seqlease_conformance::postgres::{server, unique_name};

const START: Timestamp = Timestamp(1_767_225_600_000_000);
const CAPACITY: u32 = 24;

/// A slot as the schedule knows it: its seq and its token in each store.
struct Granted {
    seq: u64,
    pg: Token,
    memory: Token,
}

/// A reply without what differs between stores by design (tokens).
fn normalized(reply: &Result<Reply, seqlease::LeaseError>) -> String {
    match reply {
        Ok(Reply::Granted(r)) => format!(
            "granted {} until {} op {}",
            r.seq, r.expires_at, r.operation_id
        ),
        Ok(other) => format!("{other:?}"),
        Err(e) => format!("error {e:?}"),
    }
}

fn key(space: &SpaceName, seq: u64, token: Token) -> LeaseKey {
    LeaseKey {
        space: space.clone(),
        seq,
        token,
    }
}

/// One random batch, as the commands for each store.
fn batch(
    rng: &mut StdRng,
    space: &SpaceName,
    granted: &[&Granted],
    step: usize,
    quiet: bool,
) -> (Vec<Command>, Vec<Command>) {
    let mut pg = Vec::new();
    let mut memory = Vec::new();
    for i in 0..rng.random_range(1..=8) {
        let pick = (!granted.is_empty()).then(|| granted[rng.random_range(0..granted.len())]);
        // Quiet runs are what a healthy worker sends: grants and commits of its leases.
        let roll = rng.random_range(0..if quiet { 80 } else { 100 });
        match (roll, pick) {
            (0..40, _) | (_, None) => {
                // A few operation ids repeat, so that some commits are duplicates (I6).
                let operation_id = if !quiet && rng.random_range(0..10) == 0 {
                    format!("op-{}", rng.random_range(0..4))
                } else {
                    format!("op-{step}-{i}")
                };
                let request = GrantRequest {
                    space: space.clone(),
                    operation_id,
                    projection_type: "diff".into(),
                    owner: "diff-worker".into(),
                    ttl: Duration::from_secs(rng.random_range(1..=4)),
                    fence: None,
                };
                pg.push(Command::Grant(request.clone()));
                memory.push(Command::Grant(request));
            }
            (40..80, Some(g)) => {
                let body = OperationBody::new("diff", format!("payload {step}-{i}"));
                // Now and then the token is wrong.
                let (pt, mt) = if !quiet && rng.random_range(0..12) == 0 {
                    (Token([7; 16]), Token([7; 16]))
                } else {
                    (g.pg, g.memory)
                };
                pg.push(Command::Commit {
                    key: key(space, g.seq, pt),
                    body: body.clone(),
                });
                memory.push(Command::Commit {
                    key: key(space, g.seq, mt),
                    body,
                });
            }
            (80..88, Some(g)) => {
                pg.push(Command::Release {
                    key: key(space, g.seq, g.pg),
                    detail: None,
                });
                memory.push(Command::Release {
                    key: key(space, g.seq, g.memory),
                    detail: None,
                });
            }
            (88..94, Some(g)) => {
                pg.push(Command::RecordPartial {
                    key: key(space, g.seq, g.pg),
                    data: b"half".to_vec(),
                });
                memory.push(Command::RecordPartial {
                    key: key(space, g.seq, g.memory),
                    data: b"half".to_vec(),
                });
            }
            (_, Some(g)) => {
                let ttl = Duration::from_secs(3);
                pg.push(Command::Renew {
                    key: key(space, g.seq, g.pg),
                    ttl,
                });
                memory.push(Command::Renew {
                    key: key(space, g.seq, g.memory),
                    ttl,
                });
            }
        }
    }
    (pg, memory)
}

/// What a cleaner does to expired slots: claim a few, write them as gaps (parking any
/// recorded work); the same in both stores.
async fn clean(pg: &PgStore, memory: &MemoryStore, space: &SpaceName, step: usize) {
    let request = ClaimRequest {
        space: space.clone(),
        cleaner: "diff-cleaner".into(),
        ttl: Duration::from_secs(30),
        limit: 8,
    };
    let pg_claimed = pg.claim_expired(&request).await.expect("claim");
    let memory_claimed = memory.claim_expired(&request).await.expect("claim");
    let seqs =
        |c: &[seqlease::core::ExpiredSlot]| c.iter().map(|s| s.lease.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(&pg_claimed),
        seqs(&memory_claimed),
        "step {step}: claims"
    );
    let resolve = |claimed: Vec<seqlease::core::ExpiredSlot>| {
        claimed
            .into_iter()
            .map(|slot| Resolve {
                claim: slot.claim,
                resolution: Resolution::Gap {
                    detail: None,
                    park: true,
                },
            })
            .collect::<Vec<_>>()
    };
    let pg_out = pg.resolve(resolve(pg_claimed)).await.expect("resolve");
    let memory_out = memory
        .resolve(resolve(memory_claimed))
        .await
        .expect("resolve");
    let replies =
        |o: &seqlease::core::BatchOutcome| o.replies.iter().map(normalized).collect::<Vec<_>>();
    assert_eq!(
        replies(&pg_out),
        replies(&memory_out),
        "step {step}: resolve"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_statement_batches_answer_as_the_reference_store() {
    let schema = unique_name("diff");
    let pg_clock = Arc::new(PgClock::pinned_at(START));
    let opts = PgOptions {
        schema: Some(schema),
        max_connections: 4,
        clock: pg_clock.clone(),
        dead_owner_probe: None,
        ..PgOptions::default()
    };
    let url = &server().url;
    let instances = [
        PgStore::connect(url, opts.clone()).await.expect("store a"),
        PgStore::connect(url, opts).await.expect("store b"),
    ];
    let memory_clock = Arc::new(ManualClock::starting_at(START));
    let memory = MemoryStore::with_clock(memory_clock.clone());
    let space = SpaceName::new("diff-space").expect("name");
    let config = SpaceConfig { capacity: CAPACITY };
    instances[0]
        .ensure_space(&space, &config)
        .await
        .expect("space");
    memory.ensure_space(&space, &config).await.expect("space");

    let mut rng = StdRng::seed_from_u64(0x5e91ea5e);
    let mut granted: Vec<Granted> = Vec::new();
    let mut current = 0;
    let mut run = 0;
    let mut quiet = false;
    for step in 0..600 {
        if run == 0 {
            current = rng.random_range(0..instances.len());
            run = rng.random_range(1..40);
            quiet = rng.random_bool(0.5);
        }
        run -= 1;
        if !quiet && rng.random_range(0..10) == 0 {
            let by = Duration::from_millis(rng.random_range(0..2500));
            pg_clock.advance(by);
            memory_clock.advance(by);
        }
        if !quiet && rng.random_range(0..4) == 0 {
            clean(&instances[current], &memory, &space, step).await;
        }
        // Quiet runs commit only live leases; the others any slot they were granted.
        let mut candidates = Vec::new();
        for g in &granted {
            let view = memory
                .slot(&space, g.seq)
                .await
                .expect("slot")
                .expect("granted");
            let live =
                view.state == SlotState::Leased && view.lease.expires_at > memory_clock.now();
            if live || !quiet {
                candidates.push(g);
            }
        }
        let (pg_batch, memory_batch) = batch(&mut rng, &space, &candidates, step, quiet);
        let context = format!("step {step} on instance {current}: {memory_batch:?}");
        let pg_out = instances[current]
            .execute(pg_batch)
            .await
            .unwrap_or_else(|e| panic!("{context}: {e}"));
        let memory_out = memory.execute(memory_batch).await.expect("memory");
        assert_eq!(pg_out.replies.len(), memory_out.replies.len(), "{context}");
        for (p, m) in pg_out.replies.iter().zip(&memory_out.replies) {
            assert_eq!(normalized(p), normalized(m), "{context}");
            if let (Ok(Reply::Granted(p)), Ok(Reply::Granted(m))) = (p, m) {
                granted.push(Granted {
                    seq: p.seq,
                    pg: p.token,
                    memory: m.token,
                });
            }
        }
        let watermarks = |o: &seqlease::core::BatchOutcome| {
            o.progress
                .iter()
                .map(|p| (p.watermark, p.freed))
                .collect::<Vec<_>>()
        };
        assert_eq!(watermarks(&pg_out), watermarks(&memory_out), "{context}");
        let pg_info = instances[current]
            .space_info(&space)
            .await
            .expect("info")
            .expect("space");
        let memory_info = memory
            .space_info(&space)
            .await
            .expect("info")
            .expect("space");
        assert_eq!(
            (pg_info.last_seq, pg_info.watermark, pg_info.in_flight),
            (
                memory_info.last_seq,
                memory_info.watermark,
                memory_info.in_flight
            ),
            "{context}"
        );
        // Keep the schedule on live slots: forget the ones the reference resolved.
        granted.retain(|g| memory_info.watermark < g.seq);
    }
    let paths: Vec<_> = instances.iter().map(|s| s.batch_paths()).collect();
    for (i, p) in paths.iter().enumerate() {
        assert!(
            p.one_statement > 20 && p.refused > 0,
            "instance {i} took both paths: {paths:?}"
        );
    }
}
