//! DoGet: a started statement's batches as Flight data.
//!
//! The response polls the statement itself: its plan runs on threads of its own
//! ([`crate::engine`]), so a poll only takes a batch that is ready, and a batch is counted
//! (rows, digest) when it is handed to the client's stream, not before. The deadline bounds
//! the whole delivery, the client's reading included, and is kept by a timer of its own:
//! when it passes, the statement is cut (recorded `cut`) and its plan and the server's slot
//! released, whether or not the client is reading (review 16: a stalled reader held its
//! slot; review 22: batches already handed over went on being delivered for ten times the
//! deadline, the record saying `complete`). The principal's share of slots is held until
//! the client has let go of the response and the statement's threads have stopped, so one
//! principal's stalled readers hold at most that principal's share of memory (review 22:
//! the batches under a stalled reader's stream outlived the cut, unaccounted, and four of
//! them took the server's memory). A client that goes away stops the statement (recorded
//! `cancelled`).

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use futures::{Stream, TryStreamExt};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tonic::Status;

use super::slots::{ServerSlot, Share, Slot};
use super::{DataStream, status_of};
use crate::engine::QueryStream;

/// A statement being delivered.
struct Live {
    q: QueryStream,
    _slot: ServerSlot,
}

/// What the response and the deadline's timer share.
struct State {
    live: Option<Live>,
    /// How the statement ended early, for the client (once).
    failure: Option<Status>,
    /// The response waiting for a batch, woken by a cut.
    waiting: Option<Waker>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Cut the statement if it still runs (recorded `cut`), telling whether the client was
/// waiting for a batch or a batch was being sent; wake the response to say so.
fn cut(state: &Mutex<State>, reason: &str) {
    let (live, waiting, reason) = {
        let mut s = lock(state);
        let live = s.live.take();
        let waiting = s.waiting.take();
        let reason = if waiting.is_some() {
            reason.to_string()
        } else {
            // The response was busy with a batch: the client was slow to take it, or had
            // stopped reading (review 23: "stopped reading" was said of fast readers too).
            format!("{reason} while a batch was being sent to the client")
        };
        if live.is_some() {
            s.failure = Some(Status::deadline_exceeded(reason.clone()));
        }
        (live, waiting, reason)
    };
    // Recorded outside the lock.
    if let Some(Live { q, _slot }) = live
        && let Err(e) = q.cut(&reason)
    {
        lock(state).failure = Some(status_of(e));
    }
    if let Some(w) = waiting {
        w.wake();
    }
}

/// The response's end of the statement.
struct Delivery {
    state: Arc<Mutex<State>>,
    schema: arrow::datatypes::SchemaRef,
    deadline: Instant,
    reason: String,
    timer: AbortHandle,
    _share: Arc<Share>,
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.timer.abort();
        // A statement still running when the client lets go is recorded `cancelled` as
        // its stream drops.
        let live = lock(&self.state).live.take();
        drop(live);
    }
}

impl Stream for Delivery {
    type Item = Result<RecordBatch, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let mut guard = lock(&this.state);
        let s = &mut *guard;
        s.waiting = None;
        let Some(live) = s.live.as_mut() else {
            return Poll::Ready(s.failure.take().map(Err));
        };
        let item = match Pin::new(&mut live.q).poll_next(cx) {
            Poll::Pending => {
                s.waiting = Some(cx.waker().clone());
                return Poll::Pending;
            }
            Poll::Ready(item) => item,
        };
        match item {
            // A batch that took past the deadline to compute is not sent (review 20).
            Some(Ok(_)) if Instant::now() >= this.deadline => {
                s.waiting = Some(cx.waker().clone());
                drop(guard);
                cut(&this.state, &this.reason);
                Poll::Ready(lock(&this.state).failure.take().map(Err))
            }
            Some(Ok(batch)) => Poll::Ready(Some(Ok(batch))),
            Some(Err(e)) => {
                s.live = None;
                Poll::Ready(Some(Err(status_of(e))))
            }
            None => {
                s.live = None;
                Poll::Ready(None)
            }
        }
    }
}

/// Deliver `stream` within `timeout`, holding the server's part of `slot` until the
/// statement ends, and the principal's until the response is dropped and the statement's
/// threads have stopped.
pub(crate) fn deliver(stream: QueryStream, slot: Slot, timeout: Duration) -> DataStream {
    let (batches, state, deadline, reason) = begin(stream, slot, timeout);
    let schema = batches.schema.clone();
    let mut encoded = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(batches.map_err(FlightError::from))
        .map_err(Status::from);
    // The rest of a batch already handed over is not sent past the deadline either
    // (review 22: three large batches took ten times the deadline to reach a slow reader).
    let mut done = false;
    Box::pin(futures::stream::poll_fn(move |cx| {
        if done {
            return Poll::Ready(None);
        }
        let item = std::task::ready!(Pin::new(&mut encoded).poll_next(cx));
        match item {
            Some(Ok(_)) if Instant::now() >= deadline => {
                done = true;
                cut(&state, &reason);
                let status = lock(&state)
                    .failure
                    .take()
                    .unwrap_or_else(|| Status::deadline_exceeded(reason.clone()));
                Poll::Ready(Some(Err(status)))
            }
            None => {
                done = true;
                Poll::Ready(None)
            }
            other => Poll::Ready(other),
        }
    }))
}

/// [`deliver`] as record batches, for a transport that encodes them itself (the Postgres
/// wire protocol): the same deadline, slot and records.
pub(crate) fn deliver_batches(stream: QueryStream, slot: Slot, timeout: Duration) -> BatchStream {
    Box::pin(begin(stream, slot, timeout).0)
}

/// Record batches of a statement being delivered, or how it ended early.
pub(crate) type BatchStream = Pin<Box<dyn Stream<Item = Result<RecordBatch, Status>> + Send>>;

/// The batches of a statement under its deadline's timer, and what the timer shares.
fn begin(
    stream: QueryStream,
    slot: Slot,
    timeout: Duration,
) -> (Delivery, Arc<Mutex<State>>, Instant, String) {
    let (slot, share) = slot.split();
    let share = Arc::new(share);
    let stream = stream.linger_with(Box::new(Arc::clone(&share)));
    let schema = stream.schema();
    let deadline = Instant::now() + timeout;
    let reason = format!("timed out after {timeout:?}");
    let state = Arc::new(Mutex::new(State {
        live: Some(Live {
            q: stream,
            _slot: slot,
        }),
        failure: None,
        waiting: None,
    }));
    let timer = {
        let state = Arc::clone(&state);
        let reason = reason.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            cut(&state, &reason);
        })
        .abort_handle()
    };
    let batches = Delivery {
        state: Arc::clone(&state),
        deadline,
        reason: reason.clone(),
        timer,
        schema,
        _share: share,
    };
    (batches, state, deadline, reason)
}
