//! Group commit: concurrent commands coalesced into one store transaction.
//!
//! Every grant, renewal, record, commit and release of every lease handle goes through the
//! [`Dispatcher`]. For stores that pay per transaction (SQLite, PostgreSQL) a single
//! dispatcher task drains whatever has queued while the previous batch was in the store and
//! sends it as the next batch: under load batches grow by themselves, and one fsync serves
//! many commits. For the in-memory store, where a batch saves nothing, commands go straight
//! to the store, and a store that answers without I/O ([`Store::inline`]) answers on the
//! caller's thread, without a future.
//!
//! Callers may be cancelled at any time: the batch runs on the dispatcher task, so a dropped
//! caller never leaves a transaction half-done; it just never sees its reply.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::BoxFuture;
use seqlease_core::{
    BatchOutcome, Command, GrantNow, GrantRequest, InlineStore, LeaseError, LeaseKey, OneOutcome,
    OperationBody, Reply, Store, StoreError,
};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::barrier::Spaces;
use crate::error::{Error, Result};
use crate::telemetry::EngineTelemetry;

type ReplyTx = oneshot::Sender<Result<Reply>>;
type RunReplies = std::result::Result<Vec<std::result::Result<Reply, LeaseError>>, StoreError>;

/// A caller's request in the queue: one command, or a run of commands (`Space::grant_many`,
/// a heartbeat's renewals) that is never split across batches, so a run of grants gets
/// consecutive seqs and one store transaction.
enum Pending {
    One(Command, ReplyTx),
    Run(Vec<Command>, oneshot::Sender<RunReplies>),
}

/// Where a batch's replies go, in command order.
enum Sender {
    One(ReplyTx),
    /// The next `n` replies, as one answer.
    Run(usize, oneshot::Sender<RunReplies>),
}

impl Pending {
    fn commands(&self) -> usize {
        match self {
            Pending::One(..) => 1,
            Pending::Run(commands, _) => commands.len(),
        }
    }

    fn into_commands(self) -> Vec<Command> {
        match self {
            Pending::One(command, _) => vec![command],
            Pending::Run(commands, _) => commands,
        }
    }
}

/// Starts a background task: `tokio::spawn` in the engine; the schedule checks
/// (`src/schedules`) pass shuttle's, so they run this very code under shuttle's scheduler.
pub(crate) type Spawn = fn(BoxFuture<'static, ()>);

fn tokio_spawn(task: BoxFuture<'static, ()>) {
    tokio::spawn(task);
}

/// What [`Dispatcher::grant_now`] did with a grant.
pub(crate) enum GrantedNow {
    /// The store answered on the caller's thread.
    Answered(Result<Reply>),
    /// The store had no capacity: the request is back, with the refusal.
    AtCapacity(GrantRequest, LeaseError),
    /// It must go through [`Dispatcher::one`], as [`Now::Later`].
    Later(GrantRequest),
}

/// What [`Dispatcher::commit_and_grant_now`] did with a commit and the grant after it.
pub(crate) enum PairNow {
    /// The store applied both on the caller's thread: the commit's reply, and the grant's.
    Answered(Result<Reply>, GrantedNow),
    /// They must go through [`Dispatcher::many`], as one run.
    Later(LeaseKey, OperationBody, GrantRequest),
}

/// What [`Dispatcher::one_now`] did with a command.
pub(crate) enum Now {
    /// The store applied it on the caller's thread.
    Answered(Result<Reply>),
    /// It must go through [`Dispatcher::one`]: the store does I/O, or group commit is on.
    Later(Command),
}

/// Routes commands to the store, batching them when the store benefits.
pub(crate) struct Dispatcher {
    store: Arc<dyn Store>,
    spaces: Arc<Spaces>,
    queue: Option<mpsc::UnboundedSender<Pending>>,
    pub(crate) stats: Arc<BatchStats>,
}

impl Dispatcher {
    /// A dispatcher for `store`; spawns the batching task when `group_commit` is on.
    pub(crate) fn new(
        store: Arc<dyn Store>,
        spaces: Arc<Spaces>,
        group_commit: bool,
        telemetry: Arc<EngineTelemetry>,
    ) -> Self {
        Self::with_spawn(store, spaces, group_commit, telemetry, tokio_spawn)
    }

    /// As [`Dispatcher::new`], starting its tasks with `spawn`.
    pub(crate) fn with_spawn(
        store: Arc<dyn Store>,
        spaces: Arc<Spaces>,
        group_commit: bool,
        telemetry: Arc<EngineTelemetry>,
        spawn: Spawn,
    ) -> Self {
        Self::start(store, spaces, group_commit, telemetry, spawn, |_| {})
    }

    /// A group-commit dispatcher with a seeded bug, for the schedule checks.
    #[cfg(test)]
    pub(crate) fn seeded(
        store: Arc<dyn Store>,
        spaces: Arc<Spaces>,
        telemetry: Arc<EngineTelemetry>,
        spawn: Spawn,
        mutation: Mutation,
    ) -> Self {
        Self::start(store, spaces, true, telemetry, spawn, |task| {
            task.mutation = Some(mutation);
        })
    }

    fn start(
        store: Arc<dyn Store>,
        spaces: Arc<Spaces>,
        group_commit: bool,
        telemetry: Arc<EngineTelemetry>,
        spawn: Spawn,
        adjust: impl FnOnce(&mut BatchTask),
    ) -> Self {
        let hint = store.batching();
        let stats = Arc::new(BatchStats::default());
        let queue = group_commit.then(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let mut task = BatchTask {
                store: store.clone(),
                spaces: spaces.clone(),
                max_batch: hint.max_batch.max(1),
                in_flight: Arc::new(Semaphore::new(hint.max_in_flight.max(1))),
                inline: hint.max_in_flight <= 1,
                stats: stats.clone(),
                telemetry,
                spawn,
                #[cfg(test)]
                mutation: None,
            };
            adjust(&mut task);
            spawn(Box::pin(task.run(rx)));
            tx
        });
        Dispatcher {
            store,
            spaces,
            queue,
            stats,
        }
    }

    /// Apply one command, coalesced with concurrent ones when group commit is on. A store
    /// with a synchronous path is better served by [`Dispatcher::one_now`] first.
    pub(crate) async fn one(&self, command: Command) -> Result<Reply> {
        match &self.queue {
            Some(queue) => {
                let (tx, rx) = oneshot::channel();
                queue
                    .send(Pending::One(command, tx))
                    .map_err(|_| Error::Closed)?;
                rx.await.map_err(|_| Error::Closed)?
            }
            None => {
                let outcome = self.store.execute_one(command).await;
                self.answer(outcome)
            }
        }
    }

    /// Apply one command on the caller's thread, without a future, when the store can
    /// (it offers [`Store::inline`]) and group commit is off; otherwise hand it back for
    /// [`Dispatcher::one`]. The hot path of the in-memory store: every layer of future
    /// between the caller and the store is a move of the command and of its reply.
    pub(crate) fn one_now(&self, command: Command) -> Now {
        match self.inline() {
            Some(store) => Now::Answered(self.answer(store.execute_now(command))),
            None => Now::Later(command),
        }
    }

    /// [`Dispatcher::one_now`] for a grant, except that a grant refused for capacity comes
    /// back with the refusal (see [`InlineStore::grant_now`]).
    pub(crate) fn grant_now(&self, request: GrantRequest) -> GrantedNow {
        match self.inline() {
            Some(store) => self.granted(store.grant_now(request)),
            None => GrantedNow::Later(request),
        }
    }

    /// A commit followed by a grant, both applied on the caller's thread when the store can
    /// (see [`InlineStore::commit_and_grant_now`]); otherwise handed back for
    /// [`Dispatcher::many`].
    pub(crate) fn commit_and_grant_now(
        &self,
        key: LeaseKey,
        body: OperationBody,
        request: GrantRequest,
    ) -> PairNow {
        let Some(store) = self.inline() else {
            return PairNow::Later(key, body, request);
        };
        match store.commit_and_grant_now(key, body, request) {
            Ok((committed, granted)) => {
                PairNow::Answered(self.answer(Ok(committed)), self.granted(Ok(granted)))
            }
            Err(e) => {
                let e = Error::from(e);
                PairNow::Answered(Err(e.clone()), GrantedNow::Answered(Err(e)))
            }
        }
    }

    /// What the store's synchronous grant did, as [`Dispatcher::grant_now`] answers it.
    fn granted(&self, granted: std::result::Result<GrantNow, StoreError>) -> GrantedNow {
        match granted {
            Ok(GrantNow::AtCapacity { request, refusal }) => {
                GrantedNow::AtCapacity(request, refusal)
            }
            Ok(GrantNow::Answered(outcome)) => GrantedNow::Answered(self.answer(Ok(outcome))),
            Err(e) => GrantedNow::Answered(Err(e.into())),
        }
    }

    /// The store's synchronous path, when commands go to it one at a time.
    fn inline(&self) -> Option<&dyn InlineStore> {
        match self.queue {
            Some(_) => None,
            None => self.store.inline(),
        }
    }

    /// A single command's reply, once the barrier has seen the progress it made.
    fn answer(&self, outcome: std::result::Result<OneOutcome, StoreError>) -> Result<Reply> {
        let outcome = outcome?;
        self.spaces.apply_progress(outcome.progress.as_slice());
        Ok(outcome.reply?)
    }

    /// Apply `commands` together, in one store transaction. With group commit on they join
    /// the queue as one run, so concurrent runs and single commands share batches instead of
    /// each run queueing on the space's row lock as a transaction of its own.
    pub(crate) async fn many(&self, commands: Vec<Command>) -> RunReplies {
        let Some(queue) = self.queue.as_ref().filter(|_| !commands.is_empty()) else {
            return self.direct(commands).await;
        };
        let (tx, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(pending)) = queue.send(Pending::Run(commands, tx)) {
            // The batching task is gone: apply the run directly, as without group commit.
            return self.direct(pending.into_commands()).await;
        }
        rx.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable {
                backend: self.store.backend(),
                detail: "the engine's group-commit task stopped before answering (is the tokio runtime shutting down?)".into(),
            })
        })
    }

    async fn direct(&self, commands: Vec<Command>) -> RunReplies {
        let outcome = self.store.execute(commands).await?;
        self.spaces.apply_progress(&outcome.progress);
        Ok(outcome.replies)
    }
}

struct BatchTask {
    store: Arc<dyn Store>,
    spaces: Arc<Spaces>,
    max_batch: usize,
    in_flight: Arc<Semaphore>,
    /// One batch at a time: run it on this task instead of spawning.
    inline: bool,
    stats: Arc<BatchStats>,
    telemetry: Arc<EngineTelemetry>,
    spawn: Spawn,
    /// A seeded bug the schedule checks must find.
    #[cfg(test)]
    mutation: Option<Mutation>,
}

/// Seeded bugs for the schedule checks (`src/schedules/group_commit.rs`): each must make
/// some schedule fail, which shows the checks can see that kind of bug.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mutation {
    /// Give the in-flight permit back when the batch is handed off instead of when it
    /// finishes: more batches than the store allows run at once.
    PermitReleasedAtSpawn,
    /// Top the batch up with a waiting `recv` instead of `try_recv`: the batch in hand
    /// waits for a command that may never come.
    DrainWaits,
}

/// Counters of the group-commit path, for `Engine::stats` and benchmarks.
#[derive(Debug, Default)]
pub(crate) struct BatchStats {
    batches: AtomicU64,
    commands: AtomicU64,
}

impl BatchStats {
    fn record(&self, commands: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.commands.fetch_add(commands as u64, Ordering::Relaxed);
    }

    /// (batches, commands) so far.
    pub(crate) fn totals(&self) -> (u64, u64) {
        (
            self.batches.load(Ordering::Relaxed),
            self.commands.load(Ordering::Relaxed),
        )
    }
}

impl BatchTask {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Pending>) {
        let this = Arc::new(self);
        let mut buffer: Vec<Pending> = Vec::with_capacity(this.max_batch);
        // Requests that did not fit the last batch, in queue order: they start the next.
        let mut carried: Vec<Pending> = Vec::new();
        loop {
            // `recv_many` takes everything queued (up to max_batch) in one go, waiting only
            // when nothing is queued.
            if carried.is_empty() {
                if rx.recv_many(&mut buffer, this.max_batch).await == 0 {
                    break;
                }
            } else {
                buffer.append(&mut carried);
            }
            let mut commands: usize = buffer.iter().map(Pending::commands).sum();
            if commands < this.max_batch {
                // Callers woken by the previous batch's replies are often still on their way
                // back with their next command: one yield lets those that are ready run
                // first, so the batch takes them too (measured: see docs/benchmarks.md).
                tokio::task::yield_now().await;
                while commands < this.max_batch {
                    #[cfg(test)]
                    if this.mutation == Some(Mutation::DrainWaits) {
                        match rx.recv().await {
                            Some(item) => {
                                commands += item.commands();
                                buffer.push(item);
                            }
                            None => break,
                        }
                        continue;
                    }
                    match rx.try_recv() {
                        Ok(item) => {
                            commands += item.commands();
                            buffer.push(item);
                        }
                        Err(_) => break,
                    }
                }
            }
            // At most max_batch commands (a longer run goes alone): the requests from the
            // first that overflows on wait for the next batch, in order.
            if commands > this.max_batch {
                let mut taken = 0;
                let fit = buffer
                    .iter()
                    .position(|p| {
                        taken += p.commands();
                        taken > this.max_batch
                    })
                    .unwrap_or(buffer.len())
                    .max(1);
                carried = buffer.split_off(fit);
                commands -= carried.iter().map(Pending::commands).sum::<usize>();
            }
            this.stats.record(commands);
            this.telemetry.batch(commands);
            let batch = std::mem::replace(&mut buffer, Vec::with_capacity(this.max_batch));
            if this.inline {
                // Single-writer stores: run inline; the next batch queues up meanwhile.
                this.execute(batch).await;
                continue;
            }
            let permit = this
                .in_flight
                .clone()
                .acquire_owned()
                .await
                .expect("never closed");
            #[cfg(test)]
            let permit = (this.mutation != Some(Mutation::PermitReleasedAtSpawn)).then_some(permit);
            let task = this.clone();
            (this.spawn)(Box::pin(async move {
                task.execute(batch).await;
                drop(permit);
            }));
        }
    }

    async fn execute(&self, batch: Vec<Pending>) {
        let mut commands = Vec::with_capacity(batch.len());
        let mut senders = Vec::with_capacity(batch.len());
        for pending in batch {
            match pending {
                Pending::One(command, tx) => {
                    commands.push(command);
                    senders.push(Sender::One(tx));
                }
                Pending::Run(run, tx) => {
                    senders.push(Sender::Run(run.len(), tx));
                    commands.extend(run);
                }
            }
        }
        match self.store.execute(commands).await {
            Ok(BatchOutcome { replies, progress }) => {
                self.spaces.apply_progress(&progress);
                let mut replies = replies.into_iter();
                // A caller that gave up is no reason to stop serving the others.
                for sender in senders {
                    match sender {
                        Sender::One(tx) => {
                            if let Some(reply) = replies.next() {
                                let _ = tx.send(reply.map_err(Error::from));
                            }
                        }
                        Sender::Run(n, tx) => {
                            let _ = tx.send(Ok(replies.by_ref().take(n).collect()));
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(backend = self.store.backend(), error = %e, "group commit batch failed; every command in it was rolled back");
                for sender in senders {
                    match sender {
                        Sender::One(tx) => {
                            let _ = tx.send(Err(Error::Store(e.clone())));
                        }
                        Sender::Run(_, tx) => {
                            let _ = tx.send(Err(e.clone()));
                        }
                    }
                }
            }
        }
    }
}
