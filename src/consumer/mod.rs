//! Consumers: named readers of a space that remember how far they got.
//!
//! The ordered log is only useful once something applies it: a read model, a search index,
//! an outbound feed. A [`Consumer`] is such an application of one space under a name. It
//! keeps a **checkpoint** in the store — the last seq it applied, 0 at first — reads from
//! `checkpoint + 1` in batches, applies the entries **in order** (operations *and* gaps: a
//! gap says why a seq holds nothing, and a read model may want to know), and then moves its
//! checkpoint to the batch's last seq. A restarted consumer continues from its stored
//! checkpoint. Several consumers read one space, each at its own pace; each one's **lag**
//! (watermark − checkpoint) is listed by [`Space::consumers`], [`Engine::consumers`] and
//! `seqlease consumers`.
//!
//! # At-least-once and exactly-once
//!
//! The checkpoint is saved *after* the batch is applied. If the process dies in between, the
//! batch is delivered again after the restart: **at-least-once** ([`Consumer::run_once`],
//! [`Consumer::catch_up`], [`Consumer::run`]). Make the apply idempotent (upserts keyed by
//! entity, or skip seqs the read model already holds) and that is all a read model needs.
//!
//! When the read model lives in the store's own database, the apply can run **inside the
//! transaction that moves the checkpoint**: both commit, or neither does, so every entry is
//! applied **exactly once** however the process dies. That is [`Consumer::run_once_sqlite`]
//! (the apply gets the SQLite write transaction) and [`Consumer::run_once_postgres`] (the
//! apply gets the PostgreSQL transaction's connection).
//!
//! Saving a checkpoint is a compare-and-swap: it succeeds only if the stored checkpoint is
//! still the one this run read. Two processes running the same consumer cannot both advance
//! it; the loser gets [`ConsumerError::Conflict`] and should reload ([`Consumer::reload`]).
//!
//! # Replay and rebuild
//!
//! Entries at or below the watermark never change (I7), so applying the log again from the
//! start always builds the same read model. [`Consumer::reset`] moves the checkpoint back
//! (audited, with an actor) and [`Consumer::rebuild`] resets and replays to the current
//! watermark with progress reports.
//!
//! # Retention
//!
//! A consumer that **retains** (the default) holds back pruning: `Store::prune_entries`
//! (`seqlease prune`) never deletes an entry it has not applied. Open best-effort consumers
//! with [`ConsumerBuilder::retain`]`(false)`; if a prune overtakes them their reads fail with
//! [`StoreError::Pruned`](crate::StoreError::Pruned), which names the prune and the seq to
//! reset to.
//!
//! ```
//! use seqlease::{Engine, Grant, OperationBody};
//!
//! # async fn demo() -> Result<(), seqlease::Error> {
//! let engine = Engine::open("memory").await?;
//! let orders = engine.space("orders").await?;
//! let mut lease = orders.grant(Grant::new("evt-1", "order-status")).await?;
//! lease.commit(OperationBody::new("update", b"{}".to_vec())).await?;
//!
//! let mut consumer = orders.consumer("order-view").batch_size(1000).open().await?;
//! let mut seen = Vec::new();
//! consumer
//!     .catch_up(async |entry: &seqlease::Entry| {
//!         seen.push(entry.seq);
//!         Ok::<(), std::convert::Infallible>(())
//!     })
//!     .await?;
//! assert_eq!(seen, [1]);
//! assert_eq!(consumer.checkpoint(), 1);
//! assert_eq!(orders.consumers().await?[0].lag(), 0);
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```

mod exactly_once;

use std::fmt::Display;
use std::time::{Duration, Instant};

use seqlease_core::{ConsumerError, ConsumerState, Entry, validate_consumer};

use crate::error::{Error, Result};
use crate::space::Space;

#[cfg(doc)]
use crate::Engine;

/// Entries read per batch unless set with [`ConsumerBuilder::batch_size`].
pub const DEFAULT_BATCH: usize = 1000;

/// Configures a [`Consumer`]; from [`Space::consumer`].
#[derive(Clone, Debug)]
pub struct ConsumerBuilder {
    space: Space,
    name: String,
    batch_size: usize,
    retain: bool,
}

impl ConsumerBuilder {
    pub(crate) fn new(space: Space, name: &str) -> Self {
        ConsumerBuilder {
            space,
            name: name.to_string(),
            batch_size: DEFAULT_BATCH,
            retain: true,
        }
    }

    /// Most entries per batch (and per checkpoint). Larger batches replay faster; a crash
    /// redelivers at most one batch to an at-least-once consumer.
    pub fn batch_size(mut self, entries: usize) -> Self {
        self.batch_size = entries;
        self
    }

    /// Whether this consumer holds back retention (default: yes). Prunes never delete an
    /// entry a retaining consumer has not applied.
    pub fn retain(mut self, retain: bool) -> Self {
        self.retain = retain;
        self
    }

    /// Register the consumer in the store (checkpoint 0 when new; an existing one keeps its
    /// checkpoint and gets this `retain` flag) and load its checkpoint.
    pub async fn open(self) -> Result<Consumer> {
        validate_consumer(&self.name)?;
        if self.batch_size == 0 {
            return Err(crate::InvalidInput::Setting {
                setting: "batch_size",
                reason: format!("consumer {}: a batch holds at least one entry", self.name),
            }
            .into());
        }
        let state = self
            .space
            .engine()
            .store()
            .register_consumer(self.space.name(), &self.name, self.retain)
            .await?;
        Ok(Consumer {
            space: self.space,
            name: self.name,
            batch_size: self.batch_size,
            checkpoint: state.checkpoint,
        })
    }
}

/// A batch of entries that follow a checkpoint, from [`Consumer::next_batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    after: u64,
    entries: Vec<Entry>,
}

impl Batch {
    /// The checkpoint the batch follows: its first entry is `after + 1`.
    pub fn after(&self) -> u64 {
        self.after
    }

    /// The entries, in seq order, contiguous.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The checkpoint once the batch is applied (`after` when empty).
    pub fn last_seq(&self) -> u64 {
        self.entries.last().map_or(self.after, |e| e.seq)
    }

    /// Whether the consumer was caught up (no entries).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Where a rebuild stands, reported after every batch by [`Consumer::rebuild`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RebuildProgress {
    /// The consumer's checkpoint now.
    pub checkpoint: u64,
    /// The watermark when the rebuild started: it ends there.
    pub target: u64,
    /// Entries applied so far by this rebuild.
    pub applied: u64,
    /// Time since the rebuild started.
    pub elapsed: Duration,
}

/// A named reader of one space with a stored checkpoint. See the module docs.
#[derive(Debug)]
pub struct Consumer {
    space: Space,
    name: String,
    batch_size: usize,
    checkpoint: u64,
}

impl Consumer {
    /// The consumer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The space it reads.
    pub fn space(&self) -> &Space {
        &self.space
    }

    /// The checkpoint as this handle last loaded or saved it: the last seq applied.
    pub fn checkpoint(&self) -> u64 {
        self.checkpoint
    }

    /// The stored state (checkpoint, retain flag, watermark; `lag()` from them).
    pub async fn state(&self) -> Result<ConsumerState> {
        self.space
            .engine()
            .store()
            .consumer(self.space.name(), &self.name)
            .await?
            .ok_or_else(|| self.unknown())
    }

    fn unknown(&self) -> Error {
        ConsumerError::UnknownConsumer {
            space: self.space.name().clone(),
            consumer: self.name.clone(),
        }
        .into()
    }

    /// Re-read the stored checkpoint (after a [`ConsumerError::Conflict`], or a reset made
    /// elsewhere). Returns it.
    pub async fn reload(&mut self) -> Result<u64> {
        self.checkpoint = self.state().await?.checkpoint;
        Ok(self.checkpoint)
    }

    /// The entries that follow the checkpoint, at most the batch size, without waiting
    /// (empty when caught up). Nothing is checkpointed until [`Consumer::commit`].
    pub async fn next_batch(&mut self) -> Result<Batch> {
        // The in-memory store reads without yielding; see `Engine::dispatch`.
        tokio::task::consume_budget().await;
        let entries = self
            .space
            .engine()
            .store()
            .read(self.space.name(), self.checkpoint + 1, self.batch_size)
            .await?;
        Ok(Batch {
            after: self.checkpoint,
            entries,
        })
    }

    /// Like [`Consumer::next_batch`], but when caught up wait at the barrier up to
    /// `timeout` for the watermark to move (an empty batch when it does not).
    pub async fn wait_batch(&mut self, timeout: Duration) -> Result<Batch> {
        let batch = self.next_batch().await?;
        if !batch.is_empty() {
            return Ok(batch);
        }
        match self.space.wait_for(self.checkpoint + 1, timeout).await {
            Ok(_) => self.next_batch().await,
            Err(Error::Timeout { .. }) => Ok(batch),
            Err(e) => Err(e),
        }
    }

    /// Checkpoint an applied batch: compare-and-swap from `batch.after()` to
    /// `batch.last_seq()`.
    pub async fn commit(&mut self, batch: &Batch) -> Result<ConsumerState> {
        let state = self
            .space
            .engine()
            .store()
            .save_checkpoint(self.space.name(), &self.name, batch.after, batch.last_seq())
            .await?;
        self.checkpoint = state.checkpoint;
        Ok(state)
    }

    /// Apply one batch at least once: read it, `apply` each entry in order, checkpoint it.
    /// Returns how many entries were applied (0: caught up). When `apply` fails the batch
    /// is not checkpointed and the error is [`ConsumerError::Apply`]; the next call
    /// delivers the same entries again.
    pub async fn run_once<F, E>(&mut self, mut apply: F) -> Result<usize>
    where
        F: AsyncFnMut(&Entry) -> std::result::Result<(), E>,
        E: Display,
    {
        let batch = self.next_batch().await?;
        if batch.is_empty() {
            return Ok(0);
        }
        for entry in batch.entries() {
            if let Err(e) = apply(entry).await {
                return Err(self.apply_failed(&batch, entry.seq, e));
            }
        }
        self.commit(&batch).await?;
        Ok(batch.len())
    }

    fn apply_failed(&self, batch: &Batch, seq: u64, e: impl Display) -> Error {
        ConsumerError::Apply {
            space: self.space.name().clone(),
            consumer: self.name.clone(),
            from: batch.after + 1,
            to: batch.last_seq(),
            detail: format!("at seq {seq}: {e}"),
        }
        .into()
    }

    /// Apply batches until caught up with the watermark; returns how many entries.
    pub async fn catch_up<F, E>(&mut self, mut apply: F) -> Result<u64>
    where
        F: AsyncFnMut(&Entry) -> std::result::Result<(), E>,
        E: Display,
    {
        let mut total = 0;
        loop {
            let n = self.run_once(&mut apply).await?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    }

    /// Apply the log for as long as the task runs: catch up, wait at the barrier, repeat.
    /// Returns only on an error; stop it by dropping the future (at most the batch in
    /// flight is delivered again).
    pub async fn run<F, E>(&mut self, mut apply: F) -> Result<()>
    where
        F: AsyncFnMut(&Entry) -> std::result::Result<(), E>,
        E: Display,
    {
        loop {
            self.catch_up(&mut apply).await?;
            match self
                .space
                .wait_for(self.checkpoint + 1, Duration::from_secs(3600))
                .await
            {
                Ok(_) | Err(Error::Timeout { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Move the checkpoint to `to` (0: replay everything), audited with `actor`. Refused
    /// above the watermark and below pruned entries.
    pub async fn reset(&mut self, to: u64, actor: &str) -> Result<ConsumerState> {
        let state = self
            .space
            .engine()
            .store()
            .reset_consumer(self.space.name(), &self.name, to, actor)
            .await?;
        self.checkpoint = state.checkpoint;
        Ok(state)
    }

    /// Rebuild the read model: reset to `from` (0 for the whole log; audited with `actor`)
    /// and apply, at least once, every entry up to the watermark as it is now, calling
    /// `progress` after each batch. The caller clears the read model first. Returns the
    /// last progress report.
    pub async fn rebuild<F, E, P>(
        &mut self,
        from: u64,
        actor: &str,
        mut apply: F,
        mut progress: P,
    ) -> Result<RebuildProgress>
    where
        F: AsyncFnMut(&Entry) -> std::result::Result<(), E>,
        E: Display,
        P: FnMut(&RebuildProgress),
    {
        let started = Instant::now();
        let state = self.reset(from, actor).await?;
        let mut report = RebuildProgress {
            checkpoint: state.checkpoint,
            target: state.watermark,
            applied: 0,
            elapsed: Duration::ZERO,
        };
        progress(&report);
        while self.checkpoint < report.target {
            let n = self.run_once(&mut apply).await?;
            if n == 0 {
                break;
            }
            report.checkpoint = self.checkpoint;
            report.applied += n as u64;
            report.elapsed = started.elapsed();
            progress(&report);
        }
        Ok(report)
    }

    /// Remove this consumer from the store (it stops holding back retention), audited with
    /// `actor`.
    pub async fn remove(self, actor: &str) -> Result<ConsumerState> {
        Ok(self
            .space
            .engine()
            .store()
            .remove_consumer(self.space.name(), &self.name, actor)
            .await?)
    }
}
