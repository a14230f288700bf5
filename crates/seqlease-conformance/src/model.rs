//! Model test: random command sequences, applied to the store and to a reference model.
//!
//! The model is the contract of `seqlease_core::store` written as plain code over a vector.
//! Proptest generates sequences of grants, renewals, records, commits (with the right or a
//! forged token), releases and clock advances, groups them into batches of 1–4 commands, and
//! checks after every batch that each reply matches the model; at the end the whole log, the
//! watermark and the counters must match too. A failure shrinks to a minimal sequence.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use seqlease_core::{
    Command, CommitStatus, EntryContent, GapReason, GrantRequest, LeaseError, LeaseKey,
    OperationBody, ReleaseOutcome, Reply, SpaceConfig, SpaceName, Token,
};

use crate::harness::Harness;

const CAPACITY: u32 = 6;

/// One step of a generated sequence. `lease` picks a granted slot (modulo how many exist).
#[derive(Clone, Debug)]
pub enum Step {
    /// Grant a slot for operation `op` (a small alphabet, so duplicates happen).
    Grant { op: u8, ttl_s: u8 },
    /// Commit with the slot's token.
    Commit { lease: u8, tag: u8 },
    /// Commit with a forged token.
    ForgedCommit { lease: u8 },
    /// Release with the slot's token.
    Release { lease: u8 },
    /// Renew with the slot's token.
    Renew { lease: u8, ttl_s: u8 },
    /// Record a result.
    RecordResult { lease: u8 },
    /// Record partial work.
    RecordPartial { lease: u8 },
    /// Move the store clock forward.
    Advance { secs: u8 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..6, 1u8..6).prop_map(|(op, ttl_s)| Step::Grant { op, ttl_s }),
        4 => (any::<u8>(), any::<u8>()).prop_map(|(lease, tag)| Step::Commit { lease, tag }),
        1 => any::<u8>().prop_map(|lease| Step::ForgedCommit { lease }),
        1 => any::<u8>().prop_map(|lease| Step::Release { lease }),
        1 => (any::<u8>(), 1u8..6).prop_map(|(lease, ttl_s)| Step::Renew { lease, ttl_s }),
        1 => any::<u8>().prop_map(|lease| Step::RecordResult { lease }),
        1 => any::<u8>().prop_map(|lease| Step::RecordPartial { lease }),
        2 => (1u8..4).prop_map(|secs| Step::Advance { secs }),
    ]
}

#[derive(Clone, Debug, PartialEq)]
enum State {
    Leased,
    Committed(OperationBody),
    Gap(GapReason, Option<u64>),
}

#[derive(Debug)]
struct Slot {
    op: String,
    token: Token,
    expires_s: i64,
    renewals: u32,
    work: bool,
    state: State,
}

/// The reference model of one space.
#[derive(Debug, Default)]
struct Model {
    now_s: i64,
    slots: Vec<Slot>,
    committed: HashMap<String, u64>,
}

/// A reply reduced to what the model can predict on every store.
#[derive(Debug, PartialEq)]
enum Seen {
    Granted(u64),
    Renewed(u32),
    Recorded,
    Committed(u64, CommitStatus),
    Released(ReleaseOutcome),
    Refused(&'static str, u64),
}

fn seen(r: &Result<Reply, LeaseError>) -> Seen {
    match r {
        Ok(Reply::Granted(l)) => Seen::Granted(l.seq),
        Ok(Reply::Renewed { renewals, .. }) => Seen::Renewed(*renewals),
        Ok(Reply::Recorded) => Seen::Recorded,
        Ok(Reply::Committed(o)) => Seen::Committed(o.seq, o.status),
        Ok(Reply::Released(o)) => Seen::Released(*o),
        Ok(
            other @ (Reply::Resolved(_) | Reply::Parked(_) | Reply::Resource(_) | Reply::Late(_)),
        ) => {
            panic!("execute never answers with a recovery reply: {other:?}")
        }
        Err(e) => match e {
            LeaseError::UnknownSlot { seq, .. } => Seen::Refused("unknown", *seq),
            LeaseError::WrongToken { seq, .. } => Seen::Refused("token", *seq),
            LeaseError::Expired { seq, .. } => Seen::Refused("expired", *seq),
            LeaseError::Resolved { seq, .. } => Seen::Refused("resolved", *seq),
            LeaseError::AtCapacity { .. } => Seen::Refused("capacity", 0),
            other => panic!("model does not expect {other:?}"),
        },
    }
}

impl Model {
    fn in_flight(&self) -> u32 {
        self.slots
            .iter()
            .filter(|s| s.state == State::Leased)
            .count() as u32
    }

    fn watermark(&self) -> u64 {
        self.slots
            .iter()
            .take_while(|s| s.state != State::Leased)
            .count() as u64
    }

    /// The contract's lease checks; `Ok(index)` when the lease is live.
    fn live(&self, seq: u64, token: Token) -> Result<usize, Seen> {
        let i = (seq as usize)
            .checked_sub(1)
            .filter(|i| *i < self.slots.len());
        let i = i.ok_or(Seen::Refused("unknown", seq))?;
        let s = &self.slots[i];
        if s.token != token {
            return Err(Seen::Refused("token", seq));
        }
        if s.state != State::Leased {
            return Err(Seen::Refused("resolved", seq));
        }
        if s.expires_s <= self.now_s {
            return Err(Seen::Refused("expired", seq));
        }
        Ok(i)
    }

    fn apply(&mut self, cmd: &Command, granted_token: Option<Token>) -> Seen {
        match cmd {
            Command::Grant(g) => {
                if self.in_flight() >= CAPACITY {
                    return Seen::Refused("capacity", 0);
                }
                self.slots.push(Slot {
                    op: g.operation_id.clone(),
                    token: granted_token.expect("a granted reply carries its token"),
                    expires_s: self.now_s + g.ttl.as_secs() as i64,
                    renewals: 0,
                    work: false,
                    state: State::Leased,
                });
                Seen::Granted(self.slots.len() as u64)
            }
            Command::Renew { key, ttl } => match self.live(key.seq, key.token) {
                Ok(i) => {
                    self.slots[i].expires_s = self.now_s + ttl.as_secs() as i64;
                    self.slots[i].renewals += 1;
                    Seen::Renewed(self.slots[i].renewals)
                }
                Err(e) => e,
            },
            Command::RecordPartial { key, .. } | Command::RecordResult { key, .. } => {
                match self.live(key.seq, key.token) {
                    Ok(i) => {
                        self.slots[i].work = true;
                        Seen::Recorded
                    }
                    Err(e) => e,
                }
            }
            Command::Commit { key, body } => {
                let i = key.seq as usize - 1;
                if let Some(s) = self.slots.get(i)
                    && s.token == key.token
                    && matches!(s.state, State::Committed(_))
                {
                    return Seen::Committed(key.seq, CommitStatus::AlreadyCommitted);
                }
                match self.live(key.seq, key.token) {
                    Ok(i) => {
                        let op = self.slots[i].op.clone();
                        if let Some(&e) = self.committed.get(&op) {
                            self.slots[i].state = State::Gap(GapReason::Superseded, Some(e));
                            Seen::Committed(e, CommitStatus::Duplicate { slot: key.seq })
                        } else {
                            self.slots[i].state = State::Committed(body.clone());
                            self.committed.insert(op, key.seq);
                            Seen::Committed(key.seq, CommitStatus::Committed)
                        }
                    }
                    Err(e) => e,
                }
            }
            Command::Release { key, .. } => match self.live(key.seq, key.token) {
                Ok(i) if self.slots[i].work => {
                    self.slots[i].expires_s = self.now_s;
                    Seen::Released(ReleaseOutcome::HandedToRecovery)
                }
                Ok(i) => {
                    self.slots[i].state = State::Gap(GapReason::Released, None);
                    Seen::Released(ReleaseOutcome::Gap)
                }
                Err(e) => e,
            },
        }
    }
}

fn command(step: &Step, space: &SpaceName, keys: &[LeaseKey]) -> Option<Command> {
    let pick = |lease: u8| (!keys.is_empty()).then(|| keys[lease as usize % keys.len()].clone());
    Some(match step {
        Step::Grant { op, ttl_s } => Command::Grant(GrantRequest {
            space: space.clone(),
            operation_id: format!("op-{op}"),
            projection_type: "model".into(),
            owner: "model".into(),
            ttl: Duration::from_secs(*ttl_s as u64),
            fence: None,
        }),
        Step::Commit { lease, tag } => Command::Commit {
            key: pick(*lease)?,
            body: OperationBody::new("update", vec![*tag]).with_source_event(format!("e{tag}")),
        },
        Step::ForgedCommit { lease } => {
            let mut key = pick(*lease)?;
            key.token = Token([0xAB; 16]);
            Command::Commit {
                key,
                body: OperationBody::new("forged", vec![]),
            }
        }
        Step::Release { lease } => Command::Release {
            key: pick(*lease)?,
            detail: None,
        },
        Step::Renew { lease, ttl_s } => Command::Renew {
            key: pick(*lease)?,
            ttl: Duration::from_secs(*ttl_s as u64),
        },
        Step::RecordResult { lease } => Command::RecordResult {
            key: pick(*lease)?,
            body: OperationBody::new("result", vec![1]),
        },
        Step::RecordPartial { lease } => Command::RecordPartial {
            key: pick(*lease)?,
            data: vec![2],
        },
        Step::Advance { .. } => return None,
    })
}

async fn check(
    harness: &dyn Harness,
    steps: Vec<Step>,
    batch_sizes: Vec<u8>,
) -> Result<(), TestCaseError> {
    let fx = harness.fresh().await;
    let store = fx.store.clone();
    let space = SpaceName::new("model").expect("valid");
    store
        .ensure_space(&space, &SpaceConfig { capacity: CAPACITY })
        .await
        .expect("space");
    let mut model = Model::default();
    let mut keys: Vec<LeaseKey> = Vec::new();
    let mut sizes = batch_sizes.into_iter().cycle();
    let mut steps = steps.into_iter().peekable();
    while steps.peek().is_some() {
        let size = sizes.next().unwrap_or(1).max(1);
        let mut batch = Vec::new();
        while batch.len() < size as usize {
            let Some(step) = steps.next() else { break };
            if let Step::Advance { secs } = step {
                fx.advance(Duration::from_secs(secs as u64));
                model.now_s += secs as i64;
                break; // a clock move ends the batch: all of a batch sees one `now`
            }
            if let Some(cmd) = command(&step, &space, &keys) {
                batch.push(cmd);
            }
        }
        if batch.is_empty() {
            continue;
        }
        let out = store
            .execute(batch.clone())
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(out.replies.len(), batch.len());
        for (cmd, reply) in batch.iter().zip(&out.replies) {
            let token = match reply {
                Ok(Reply::Granted(l)) => {
                    keys.push(LeaseKey {
                        space: space.clone(),
                        seq: l.seq,
                        token: l.token,
                    });
                    Some(l.token)
                }
                _ => None,
            };
            let expected = model.apply(cmd, token);
            prop_assert_eq!(seen(reply), expected, "command {:?}", cmd);
        }
        if let Some(p) = out.progress.iter().find(|p| p.space == space) {
            prop_assert_eq!(p.watermark, model.watermark(), "reported watermark");
        }
    }
    let info = store
        .space_info(&space)
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?
        .expect("space");
    prop_assert_eq!(
        (info.last_seq, info.watermark, info.in_flight),
        (
            model.slots.len() as u64,
            model.watermark(),
            model.in_flight()
        )
    );
    let log = store
        .read(&space, 1, 10_000)
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(log.len() as u64, model.watermark());
    for (entry, slot) in log.iter().zip(&model.slots) {
        let actual = match &entry.content {
            EntryContent::Operation(op) => {
                prop_assert_eq!(&op.operation_id, &slot.op);
                State::Committed(op.body.clone())
            }
            EntryContent::Gap(g) => State::Gap(g.reason, g.superseded_by),
        };
        prop_assert_eq!(&actual, &slot.state, "seq {}", entry.seq);
    }
    Ok(())
}

/// Run the model test against `harness` (64 cases by default; `PROPTEST_CASES` overrides).
pub fn run(harness: &dyn Harness) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(64);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        proptest::collection::vec(step(), 1..80),
        proptest::collection::vec(1u8..5, 1..8),
    );
    let result = runner.run(&strategy, |(steps, sizes)| {
        runtime.block_on(check(harness, steps, sizes))
    });
    if let Err(e) = result {
        panic!("model test failed: {e}");
    }
}
