//! Consumers and retention in the in-memory store: checkpoints per space, prunes that free
//! whole chunks of slots, and the retention audit (see `seqlease_core::consumer`).
//!
//! Every operation runs under the space's lock, so the checks (stored checkpoint,
//! watermark, retaining consumers) and the change are one atomic step, as they are one
//! transaction in the SQL stores.

use seqlease_core::consumer::{check_prune, check_reset, check_save, pruned_error};
use seqlease_core::{
    ConsumerError, ConsumerState, RetentionEvent, RetentionEventKind, StoreError, Timestamp,
};

use crate::space::SpaceState;

/// A consumer's stored row.
#[derive(Clone, Debug)]
pub(crate) struct ConsumerRow {
    pub(crate) checkpoint: u64,
    pub(crate) retain: bool,
    pub(crate) updated_at: Timestamp,
}

impl SpaceState {
    fn consumer_state(&self, name: &str, row: &ConsumerRow) -> ConsumerState {
        ConsumerState {
            space: self.name.clone(),
            name: name.to_string(),
            checkpoint: row.checkpoint,
            retain: row.retain,
            updated_at: row.updated_at,
            watermark: self.watermark,
        }
    }

    pub(crate) fn consumer(&self, name: &str) -> Option<ConsumerState> {
        self.consumers
            .get(name)
            .map(|row| self.consumer_state(name, row))
    }

    fn existing(&self, name: &str) -> Result<ConsumerState, ConsumerError> {
        self.consumer(name)
            .ok_or_else(|| ConsumerError::UnknownConsumer {
                space: self.name.clone(),
                consumer: name.to_string(),
            })
    }

    pub(crate) fn list_consumers(&self) -> Vec<ConsumerState> {
        self.consumers
            .iter()
            .map(|(name, row)| self.consumer_state(name, row))
            .collect()
    }

    pub(crate) fn register_consumer(
        &mut self,
        name: &str,
        retain: bool,
        now: Timestamp,
    ) -> ConsumerState {
        let row = self
            .consumers
            .entry(name.to_string())
            .or_insert(ConsumerRow {
                checkpoint: 0,
                retain,
                updated_at: now,
            });
        row.retain = retain;
        let row = row.clone();
        self.consumer_state(name, &row)
    }

    pub(crate) fn save_checkpoint(
        &mut self,
        name: &str,
        expected: u64,
        seq: u64,
        now: Timestamp,
    ) -> Result<ConsumerState, ConsumerError> {
        let state = self.existing(name)?;
        check_save(&state, expected, seq)?;
        self.set_checkpoint(name, seq, now)
    }

    fn set_checkpoint(
        &mut self,
        name: &str,
        seq: u64,
        now: Timestamp,
    ) -> Result<ConsumerState, ConsumerError> {
        let row = self
            .consumers
            .get_mut(name)
            .expect("callers checked that the consumer exists");
        row.checkpoint = seq;
        row.updated_at = now;
        self.existing(name)
    }

    pub(crate) fn reset_consumer(
        &mut self,
        name: &str,
        to: u64,
        actor: &str,
        now: Timestamp,
    ) -> Result<ConsumerState, ConsumerError> {
        let state = self.existing(name)?;
        check_reset(&state, to, self.slots.floor())?;
        self.audit(
            RetentionEventKind::ConsumerReset,
            Some(name),
            (state.checkpoint, to, 0),
            actor,
            now,
        );
        self.set_checkpoint(name, to, now)
    }

    pub(crate) fn remove_consumer(
        &mut self,
        name: &str,
        actor: &str,
        now: Timestamp,
    ) -> Result<ConsumerState, ConsumerError> {
        let state = self.existing(name)?;
        self.consumers.remove(name);
        let at = state.checkpoint;
        self.audit(
            RetentionEventKind::ConsumerRemoved,
            Some(name),
            (at, at, 0),
            actor,
            now,
        );
        Ok(state)
    }

    pub(crate) fn prune(
        &mut self,
        below: u64,
        actor: &str,
        now: Timestamp,
    ) -> Result<RetentionEvent, ConsumerError> {
        let through = check_prune(&self.name, below, self.watermark, &self.list_consumers())?;
        let floor = self.slots.floor();
        let mut entries = 0;
        for seq in floor + 1..=through {
            let slot = self.slots.get(seq).expect("seq <= watermark <= last seq");
            if let Some(operation_id) = slot.committed_operation_id() {
                self.committed.remove(operation_id, &self.slots);
            }
            entries += 1;
        }
        self.slots.prune(through);
        self.events = self.events.split_off(&(through + 1));
        Ok(self.audit(
            RetentionEventKind::Pruned,
            None,
            (1, through.max(floor), entries),
            actor,
            now,
        ))
    }

    fn audit(
        &mut self,
        kind: RetentionEventKind,
        consumer: Option<&str>,
        (from, to, entries): (u64, u64, u64),
        actor: &str,
        at: Timestamp,
    ) -> RetentionEvent {
        let event = RetentionEvent {
            space: self.name.clone(),
            kind,
            consumer: consumer.map(str::to_string),
            from,
            to,
            entries,
            actor: actor.to_string(),
            at,
        };
        self.retention.push(event.clone());
        event
    }

    /// The prune that a read from `from` runs into, as an error.
    pub(crate) fn check_read(&self, from: u64) -> Result<(), StoreError> {
        if from <= self.slots.floor()
            && let Some(last) = self
                .retention
                .iter()
                .rev()
                .find(|e| e.kind == RetentionEventKind::Pruned)
        {
            return Err(pruned_error(last));
        }
        Ok(())
    }
}
