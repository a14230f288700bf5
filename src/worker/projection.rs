//! What an application registers with the worker runtime: a [`Projection`].
//!
//! A projection names its kind (the `projection_type` label on every lease and operation),
//! derives an idempotency key from each input event (the `operation_id`: feeding the same
//! event twice never commits two operations, I6), and turns one event into one operation in
//! [`Projection::handle`]. While it works, the handler may record **partial work** through its
//! [`WorkContext`] (a checkpoint the recovery chain can finish if the worker dies) and the
//! **completed result** before returning it. A projection that can finish partial work
//! offers a [`PartialWorkResolver`]; [`CleanupBuilder::projection`] registers it with the
//! cleanup service for the projection's type.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use seqlease_core::{ExpiredSlot, OperationBody, SpaceName, Timestamp};
use tokio::time::Instant;

use super::heartbeat::Registry;
use crate::cleanup::{CleanupBuilder, PartialWorkResolver};
use crate::error::Result;
use crate::lease::Lease;

/// A projection the worker runtime runs: one input event → one operation in one slot.
///
/// ```
/// use seqlease::OperationBody;
/// use seqlease::worker::{HandlerError, Projection, WorkContext};
///
/// #[derive(Clone)]
/// struct OrderShipped { event_id: String, order: u64 }
///
/// struct OrderStatus;
///
/// impl Projection for OrderStatus {
///     type Event = OrderShipped;
///
///     fn projection_type(&self) -> &str { "order-status" }
///
///     fn operation_id(&self, event: &OrderShipped) -> String {
///         format!("{}/order-status", event.event_id)
///     }
///
///     async fn handle(
///         &self,
///         event: OrderShipped,
///         ctx: &mut WorkContext<'_>,
///     ) -> Result<OperationBody, HandlerError> {
///         // The where-clause result, recorded so recovery can finish the update.
///         let ids = format!("{{\"ids\":[{}]}}", event.order);
///         ctx.checkpoint(ids.clone()).await?;
///         Ok(OperationBody::new("update", ids).with_source_event(event.event_id))
///     }
/// }
/// ```
pub trait Projection: Send + Sync + 'static {
    /// The input event. Cloned once per attempt that may be retried (wrap large events in
    /// an `Arc`).
    type Event: Clone + Send + 'static;

    /// The projection-type label on leases and operations; selects the recovery resolver.
    fn projection_type(&self) -> &str;

    /// The idempotency key of the operation `event` becomes (unique per space, I6).
    fn operation_id(&self, event: &Self::Event) -> String;

    /// Turn `event` into the operation to commit. An `Err` is handled by the runtime's
    /// [`ErrorPolicy`](super::ErrorPolicy); a panic releases the slot with the message.
    fn handle(
        &self,
        event: Self::Event,
        ctx: &mut WorkContext<'_>,
    ) -> impl Future<Output = std::result::Result<OperationBody, HandlerError>> + Send;

    /// A resolver that turns this projection's partial work into an operation during
    /// recovery; registered by [`CleanupBuilder::projection`]. `None`: partial work of
    /// this type is parked for an operator when its lease expires.
    fn resolver(&self) -> Option<Arc<dyn PartialWorkResolver>> {
        None
    }
}

/// Why a handler did not produce an operation.
///
/// Any `std::error::Error` converts into it with `?` (a retryable error, subject to the
/// runtime's [`ErrorPolicy`](super::ErrorPolicy)); [`HandlerError::permanent`] skips the
/// retries. The message is kept on the released slot's gap.
pub struct HandlerError {
    message: String,
    permanent: bool,
}

impl HandlerError {
    /// A failure the runtime may retry (per its error policy).
    pub fn new(message: impl Into<String>) -> Self {
        HandlerError {
            message: message.into(),
            permanent: false,
        }
    }

    /// A failure retrying cannot fix (bad input): the slot is released at once.
    pub fn permanent(message: impl Into<String>) -> Self {
        HandlerError {
            message: message.into(),
            permanent: true,
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the error skips retries.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }
}

impl<E: std::error::Error> From<E> for HandlerError {
    fn from(e: E) -> Self {
        let mut message = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        HandlerError::new(message)
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerError")
            .field("message", &self.message)
            .field("permanent", &self.permanent)
            .finish()
    }
}

/// What a handler knows about the slot it fills, and how it records work under the lease.
///
/// The lease itself stays with the runtime (it commits or releases it); the worker's
/// heartbeat keeps it alive while the handler runs.
pub struct WorkContext<'a> {
    lease: &'a mut Lease,
    registry: &'a Registry,
    attempt: u32,
}

impl<'a> WorkContext<'a> {
    pub(crate) fn new(lease: &'a mut Lease, registry: &'a Registry, attempt: u32) -> Self {
        WorkContext {
            lease,
            registry,
            attempt,
        }
    }

    /// The space.
    pub fn space(&self) -> &SpaceName {
        self.lease.space()
    }

    /// The slot this handler fills.
    pub fn seq(&self) -> u64 {
        self.lease.seq()
    }

    /// The operation id (from [`Projection::operation_id`]).
    pub fn operation_id(&self) -> &str {
        self.lease.operation_id()
    }

    /// The projection type.
    pub fn projection_type(&self) -> &str {
        self.lease.projection_type()
    }

    /// Which attempt this is (1 for the first; retries count up).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When the store will expire the lease unless the heartbeat renews it again.
    pub fn expires_at(&self) -> Timestamp {
        match self.newer_renewal() {
            Some(r) => r.expires_at,
            None => self.lease.expires_at(),
        }
    }

    /// Time left before the lease's local safe deadline (zero once passed or lost).
    pub fn remaining(&self) -> Duration {
        match self.registry.standing(self.seq()) {
            Some(s) if s.lost.is_some() => Duration::ZERO,
            _ => match self.newer_renewal() {
                Some(r) => r.local_deadline.saturating_duration_since(Instant::now()),
                None => self.lease.remaining(),
            },
        }
    }

    /// Whether the worker still holds the lease (by its local safe deadline, and no
    /// renewal was refused). A long handler may check it to stop early.
    pub fn is_live(&self) -> bool {
        !self.remaining().is_zero()
    }

    /// Record a checkpoint of partial work under the lease (replaces any earlier one). If
    /// the worker dies, the resolver registered for the projection type finishes it.
    pub async fn checkpoint(&mut self, partial: impl Into<Vec<u8>>) -> Result<()> {
        self.adopt_renewal();
        self.lease.record_partial(partial).await
    }

    /// Record the finished operation under the lease before returning it. If the commit
    /// never lands (the worker dies, the lease is lost), recovery commits this result.
    pub async fn record_result(&mut self, body: OperationBody) -> Result<()> {
        self.adopt_renewal();
        self.lease.record_result(body).await
    }

    fn newer_renewal(&self) -> Option<super::heartbeat::Renewal> {
        self.registry
            .standing(self.seq())
            .and_then(|s| s.renewal)
            .filter(|r| r.renewals > self.lease.renewals())
    }

    fn adopt_renewal(&mut self) {
        if let Some(r) = self.newer_renewal() {
            self.lease
                .adopt_renewal(r.expires_at, r.renewals, r.local_deadline);
        }
    }
}

/// Hands a shared resolver to the cleanup builder, which takes resolvers by value.
struct Shared(Arc<dyn PartialWorkResolver>);

#[async_trait]
impl PartialWorkResolver for Shared {
    async fn resolve(
        &self,
        slot: &ExpiredSlot,
        partial: &[u8],
    ) -> std::result::Result<OperationBody, String> {
        self.0.resolve(slot, partial).await
    }
}

impl CleanupBuilder {
    /// Register `projection`'s partial-work resolver (if it has one) for its projection
    /// type, so the cleanup service finishes the checkpoints its handlers recorded.
    pub fn projection<P: Projection>(self, projection: &P) -> Self {
        match projection.resolver() {
            Some(resolver) => self.resolver(projection.projection_type(), Shared(resolver)),
            None => self,
        }
    }
}
