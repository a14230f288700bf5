//! The recovery chain: small steps, tried in order, that turn an expired slot's recorded
//! work back into an operation.
//!
//! Each step answers for one slot: it recovered an operation, it does not apply (nothing of
//! its kind was recorded), or it failed. Only `Recovered` counts as success; a step that
//! recovered nothing never reports success. Applications add their own steps by
//! implementing [`RecoveryStep`]; the two built in are [`PartialWorkStep`] (a resolver per
//! projection type turns recorded partial work into an operation) and [`RetryStep`] (a
//! recorded completed result is committed as is).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use seqlease_core::{ExpiredSlot, OperationBody, RecoveryType};

/// What one step made of one slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepOutcome {
    /// The step produced the operation to commit.
    Recovered {
        /// The operation.
        body: OperationBody,
        /// How it was recovered (kept in the entry's recovery metadata).
        recovery_type: RecoveryType,
    },
    /// Nothing for this step to do (no recorded work of its kind, no resolver).
    NotApplicable,
    /// The step applied but failed; the work is parked and retried later.
    Failed(String),
}

/// One step of the recovery chain. Called for one slot at a time per space, but for
/// several spaces at once (`CleanupConfig::spaces_at_once`).
#[async_trait]
pub trait RecoveryStep: Send + Sync + 'static {
    /// A stable name, for logs and metrics.
    fn name(&self) -> &'static str;

    /// Expensive steps are skipped under medium load; what they would have recovered is
    /// parked instead, and recovered when load drops.
    fn expensive(&self) -> bool {
        false
    }

    /// Try to recover `slot`.
    async fn recover(&self, slot: &ExpiredSlot) -> StepOutcome;
}

/// Turns recorded partial work into an operation, for one projection type. Like a
/// [`RecoveryStep`], called for several spaces at once.
#[async_trait]
pub trait PartialWorkResolver: Send + Sync + 'static {
    /// Build the operation from the checkpoint `partial` the worker recorded for `slot`.
    async fn resolve(&self, slot: &ExpiredSlot, partial: &[u8]) -> Result<OperationBody, String>;
}

/// Step 1: partial work → operation, through the resolver registered for the slot's
/// projection type.
#[derive(Default, Clone)]
pub struct PartialWorkStep {
    resolvers: HashMap<String, Arc<dyn PartialWorkResolver>>,
}

impl PartialWorkStep {
    /// Register `resolver` for `projection_type`.
    pub fn insert(
        &mut self,
        projection_type: impl Into<String>,
        resolver: Arc<dyn PartialWorkResolver>,
    ) {
        self.resolvers.insert(projection_type.into(), resolver);
    }
}

#[async_trait]
impl RecoveryStep for PartialWorkStep {
    fn name(&self) -> &'static str {
        "partial_work"
    }

    fn expensive(&self) -> bool {
        true // runs application code, possibly I/O
    }

    async fn recover(&self, slot: &ExpiredSlot) -> StepOutcome {
        let (Some(partial), Some(resolver)) = (
            &slot.partial,
            self.resolvers.get(&slot.lease.projection_type),
        ) else {
            return StepOutcome::NotApplicable;
        };
        match resolver.resolve(slot, partial).await {
            Ok(body) => StepOutcome::Recovered {
                body,
                recovery_type: RecoveryType::PartialWork,
            },
            Err(e) => StepOutcome::Failed(format!(
                "resolver for {} failed on {}/{}: {e}",
                slot.lease.projection_type, slot.lease.space, slot.lease.seq
            )),
        }
    }
}

/// Step 2: a recorded completed result is committed as is.
#[derive(Debug, Default, Clone, Copy)]
pub struct RetryStep;

#[async_trait]
impl RecoveryStep for RetryStep {
    fn name(&self) -> &'static str {
        "retry"
    }

    async fn recover(&self, slot: &ExpiredSlot) -> StepOutcome {
        match &slot.result {
            Some(body) => StepOutcome::Recovered {
                body: body.clone(),
                recovery_type: RecoveryType::Retry,
            },
            None => StepOutcome::NotApplicable,
        }
    }
}

/// The verdict of the chain on one slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Commit this operation.
    Recovered {
        body: OperationBody,
        recovery_type: RecoveryType,
        step: &'static str,
    },
    /// Write a gap; park recorded work. `failure` says why when a step failed, and
    /// `failed_step` which step it was.
    Gap {
        skipped: bool,
        failure: Option<String>,
        failed_step: Option<&'static str>,
    },
}

/// The steps in order.
#[derive(Clone)]
pub(crate) struct Chain {
    steps: Vec<Arc<dyn RecoveryStep>>,
}

impl Chain {
    pub(crate) fn new(steps: Vec<Arc<dyn RecoveryStep>>) -> Self {
        Chain { steps }
    }

    /// Run the steps allowed at `level` on `slot`; the first recovery wins.
    pub(crate) async fn run(
        &self,
        slot: &ExpiredSlot,
        allow_expensive: bool,
        allow_any: bool,
    ) -> Verdict {
        let mut skipped = !allow_any;
        let mut failure = None;
        let mut failed_step = None;
        if allow_any {
            for step in &self.steps {
                if step.expensive() && !allow_expensive {
                    skipped = true;
                    continue;
                }
                match step.recover(slot).await {
                    StepOutcome::Recovered {
                        body,
                        recovery_type,
                    } => {
                        return Verdict::Recovered {
                            body,
                            recovery_type,
                            step: step.name(),
                        };
                    }
                    StepOutcome::NotApplicable => {}
                    StepOutcome::Failed(e) => {
                        tracing::warn!(space = %slot.lease.space, seq = slot.lease.seq, step = step.name(), error = %e, "recovery step failed; the work will be parked");
                        failure = Some(e);
                        failed_step = Some(step.name());
                    }
                }
            }
        }
        Verdict::Gap {
            skipped,
            failure,
            failed_step,
        }
    }
}
