//! Feeding a worker from other tasks: a bounded channel whose receiving end is the stream
//! [`WorkerRuntime::run`](super::WorkerRuntime::run) consumes.
//!
//! Events are leased in the order the channel delivers them (per sender, the order they
//! were sent). The run ends once every [`EventSender`] is dropped and the handlers are done.
//! The bound is backpressure: a sender waits while the worker is `capacity` events behind.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;

pub use tokio::sync::mpsc::error::SendError;

/// A channel of events for a worker: send on the [`EventSender`] (clone it freely), pass
/// the [`EventStream`] to `run`.
pub fn channel<E>(capacity: usize) -> (EventSender<E>, EventStream<E>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (EventSender(tx), EventStream(rx))
}

/// The sending half of [`channel`].
#[derive(Debug)]
pub struct EventSender<E>(mpsc::Sender<E>);

impl<E> Clone for EventSender<E> {
    fn clone(&self) -> Self {
        EventSender(self.0.clone())
    }
}

impl<E> EventSender<E> {
    /// Queue `event`, waiting while the channel is full. Fails (handing the event back)
    /// once the stream was dropped (the run ended or was cancelled).
    pub async fn send(&self, event: E) -> Result<(), SendError<E>> {
        self.0.send(event).await
    }
}

/// The receiving half of [`channel`]: a stream of events in arrival order.
#[derive(Debug)]
pub struct EventStream<E>(mpsc::Receiver<E>);

impl<E> Stream for EventStream<E> {
    type Item = E;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<E>> {
        self.get_mut().0.poll_recv(cx)
    }
}
