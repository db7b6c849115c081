//! DoGet: a started statement's batches as Flight data.
//!
//! The statement runs in a task of its own that hands batches to the response through a
//! channel of two. The deadline bounds the whole delivery, the client's reading included:
//! a client that stops reading is cut when it passes, and the server's slot freed (review
//! 16: the deadline was checked only when the client asked for more, so a stalled reader
//! held its slot for as long as it liked); the principal's share comes back when the
//! statement's threads have stopped. A client that goes away stops the statement (recorded
//! `cancelled`, with the rows handed to the channel).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use futures::{StreamExt, TryStreamExt};
use tonic::Status;

use super::slots::Slot;
use super::{DataStream, status_of};
use crate::engine::QueryStream;

/// Batches handed over at most ahead of the client.
const AHEAD: usize = 2;

/// Deliver `stream` within `timeout`, holding the server's part of `slot` until it ends and
/// the principal's until the statement's threads have exited ([`crate::engine`] runs each
/// plan on threads of its own, so the deadline here fires on time whatever the plan does;
/// a cut statement's operator may finish its step after, demoted, on the principal's
/// account).
pub(crate) fn deliver(stream: QueryStream, slot: Slot, timeout: Duration) -> DataStream {
    let (slot, share) = slot.split();
    let stream = stream.linger_with(Box::new(share));
    let schema = stream.schema();
    let deadline = tokio::time::Instant::now() + timeout;
    let (tx, rx) = tokio::sync::mpsc::channel::<RecordBatch>(AHEAD);
    // How the statement ended when it did not complete: set before the sender is dropped,
    // so the response reads it once the channel is drained.
    let failure: Arc<Mutex<Option<Status>>> = Arc::new(Mutex::new(None));
    let failed = Arc::clone(&failure);
    tokio::spawn(async move {
        let _slot = slot;
        let mut q = stream;
        let timed_out = || format!("timed out after {timeout:?}");
        let end = loop {
            let next = tokio::select! {
                _ = tx.closed() => break None, // the client went away: dropping q cancels
                n = tokio::time::timeout_at(deadline, q.next()) => n,
            };
            let batch = match next {
                Err(_) => break Some(cut(q, timed_out())),
                Ok(None) => break None,
                Ok(Some(Err(e))) => break Some(status_of(e)),
                // A batch that took past the deadline to compute (an operator that did not
                // yield meanwhile) is not sent: the statement is cut (review 20).
                Ok(Some(Ok(_))) if tokio::time::Instant::now() >= deadline => {
                    break Some(cut(q, timed_out()));
                }
                Ok(Some(Ok(b))) => b,
            };
            match tokio::time::timeout_at(deadline, tx.send(batch)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break None,
                Err(_) => {
                    break Some(cut(
                        q,
                        format!("{}: the client stopped reading", timed_out()),
                    ));
                }
            }
        };
        if let (Some(status), Ok(mut f)) = (end, failed.lock()) {
            *f = Some(status);
        }
        drop(tx);
    });
    let batches = tokio_stream_of(rx).map(Ok::<_, Status>).chain(
        futures::stream::once(
            async move { failure.lock().ok().and_then(|mut f| f.take()).map(Err) },
        )
        .filter_map(|x| async move { x }),
    );
    let encoded = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(batches.map_err(FlightError::from))
        .map_err(Status::from);
    Box::pin(encoded)
}

/// Cut the stream (recorded `cut`); the status the client gets.
fn cut(q: QueryStream, reason: String) -> Status {
    match q.cut(&reason) {
        Ok(()) => Status::deadline_exceeded(reason),
        Err(e) => status_of(e),
    }
}

fn tokio_stream_of<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
