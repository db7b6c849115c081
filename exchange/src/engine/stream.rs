//! A statement's result as a stream of batches, audited at both ends.
//!
//! The started record (principal, purpose, statement, tables, raw columns, grants,
//! thresholds) is durable before [`Exchange::start`](super::Exchange::start) returns, so
//! before the first batch can leave. The completion record (rows, keyed digest computed
//! batch by batch, duration, how it ended) is written when the stream ends, fails, is cut or
//! is dropped, before the consumer sees the end, and made durable by the next fsync of the
//! log (its loss in a crash reads as what happened: the stream was cut off by the crash).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use futures::{Stream, StreamExt};

use super::digest::Digest;
use super::errors::run_error;
use super::outcome::redact_values;
use super::threads::{self, Lingering};
use super::{FailureKind, QueryError, QueryOutput};
use crate::audit::{AuditLog, Decision, Durability, Entry, StreamStatus, TableUse};

/// Where the batches come from.
enum Source {
    /// A physical plan: executed when first polled, so that a result waiting to be fetched
    /// holds no running query.
    Plan { run: Run, governed: bool },
    /// A result the exchange made itself (EXPLAIN, DESCRIBE), recorded whole in one record.
    Ready(std::vec::IntoIter<RecordBatch>),
}

/// A plan not yet executed, or its stream.
enum Run {
    NotYet(Arc<dyn ExecutionPlan>, Arc<TaskContext>),
    Going(SendableRecordBatchStream),
}

/// The open end of a started statement: what its completion record needs.
pub(super) struct Open {
    audit: Arc<AuditLog>,
    /// The started record's sequence number.
    seq: u64,
    /// Principal, agency, purpose and kind, as the started record states them.
    head: Entry,
    started: Instant,
    digest: Digest,
    /// Arrow bytes delivered, against `cap`.
    bytes: u64,
    cap: Option<u64>,
    /// The workers a distributed statement's stages are routed to, as they are.
    workers: Option<Arc<crate::distributed::WorkersUsed>>,
    /// What its noisy aggregates spent of privacy budgets.
    privacy: Option<Arc<crate::enforcement::PrivacyRuntime>>,
}

/// A statement's result: its schema, what it touched, and its batches as a stream of
/// `Result<RecordBatch, QueryError>`. Dropping it before the end records it `cancelled`.
pub struct QueryStream {
    schema: SchemaRef,
    tables: Vec<TableUse>,
    thresholds: Vec<String>,
    source: Source,
    open: Option<Open>,
    rows: u64,
    digest: Option<String>,
    done: bool,
    /// Handed to the statement's threads when it runs ([`threads`]).
    linger: Option<Lingering>,
}

impl std::fmt::Debug for QueryStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryStream")
            .field("schema", &self.schema)
            .field("rows", &self.rows)
            .field("done", &self.done)
            .finish()
    }
}

impl Open {
    /// The open end of started record `seq` in `audit`; `head` states principal, agency,
    /// purpose and kind for the completion record.
    pub(super) fn new(
        audit: Arc<AuditLog>,
        seq: u64,
        head: Entry,
        started: Instant,
        digest: Digest,
        workers: Option<Arc<crate::distributed::WorkersUsed>>,
        privacy: Option<Arc<crate::enforcement::PrivacyRuntime>>,
    ) -> Self {
        Self {
            privacy,
            audit,
            seq,
            head,
            started,
            digest,
            bytes: 0,
            cap: None,
            workers,
        }
    }
}

impl QueryStream {
    /// A stream over `plan`, its started record written.
    pub(super) fn running(
        plan: Arc<dyn ExecutionPlan>,
        task: Arc<TaskContext>,
        governed: bool,
        tables: Vec<TableUse>,
        thresholds: Vec<String>,
        open: Open,
    ) -> Self {
        let schema = plan.schema();
        Self {
            digest: None,
            open: Some(open),
            schema,
            tables,
            thresholds,
            source: Source::Plan {
                run: Run::NotYet(plan, task),
                governed,
            },
            rows: 0,
            done: false,
            linger: None,
        }
    }

    /// A result made and recorded whole already.
    pub(super) fn ready(out: QueryOutput) -> Self {
        Self {
            schema: out.schema,
            tables: out.tables,
            thresholds: out.thresholds,
            source: Source::Ready(out.batches.into_iter()),
            open: None,
            rows: out.rows,
            digest: Some(out.digest),
            done: false,
            linger: None,
        }
    }

    /// Cut the stream once it has delivered more than `bytes` of Arrow data: the next batch
    /// fails with [`FailureKind::Resources`], recorded `cut`.
    pub fn with_cap(mut self, bytes: u64) -> Self {
        if let Some(o) = self.open.as_mut() {
            o.cap = Some(bytes);
        }
        self
    }

    /// Keep `held` until every thread that ran the statement's plan has exited, which can
    /// be after the stream is dropped (a cut statement's operator finishing its step,
    /// demoted: [`threads`]); dropped with the stream if the plan never ran.
    pub(crate) fn linger_with(mut self, held: Lingering) -> Self {
        self.linger = Some(held);
        self
    }

    /// The result schema.
    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    /// The enforced physical plan, before the first batch is asked for (None after, and for
    /// results made whole): for operators' tools such as the benchmarks, which read its
    /// metrics once the statement ended. Holding it holds what its operators keep (a join's
    /// build side) until it is dropped.
    pub fn plan(&self) -> Option<Arc<dyn ExecutionPlan>> {
        match &self.source {
            Source::Plan {
                run: Run::NotYet(plan, _),
                ..
            } => Some(Arc::clone(plan)),
            _ => None,
        }
    }

    /// Tables and raw columns read, with grants.
    pub fn tables(&self) -> &[TableUse] {
        &self.tables
    }

    /// Group thresholds applied.
    pub fn thresholds(&self) -> &[String] {
        &self.thresholds
    }

    /// Rows delivered so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The policy version the statement was decided under, while it runs (None once
    /// whole, or for a result computed at once).
    pub fn policy_version(&self) -> Option<&str> {
        self.open.as_ref()?.head.policy_version.as_deref()
    }

    /// End the stream early, recorded `cut` with `reason` (a deadline, a consumer's cap).
    pub fn cut(mut self, reason: &str) -> Result<(), QueryError> {
        self.end(StreamStatus::Cut, Some(reason.to_string()))
    }

    /// End the stream before it ran or while it runs, recorded `cancelled` with `reason`
    /// (never fetched, turned away for want of a slot).
    pub fn cancel(mut self, reason: &str) -> Result<(), QueryError> {
        self.end(StreamStatus::Cancelled, Some(reason.to_string()))
    }

    /// Every batch, collected; the result digest once complete.
    pub async fn collect(mut self) -> Result<QueryOutput, QueryError> {
        let mut batches = Vec::new();
        while let Some(b) = self.next().await {
            batches.push(b?);
        }
        Ok(QueryOutput {
            schema: Arc::clone(&self.schema),
            batches,
            rows: self.rows,
            tables: std::mem::take(&mut self.tables),
            thresholds: std::mem::take(&mut self.thresholds),
            digest: self.digest.take().unwrap_or_default(),
        })
    }

    /// Write the completion record (once).
    fn end(&mut self, status: StreamStatus, reason: Option<String>) -> Result<(), QueryError> {
        self.done = true;
        if let Source::Plan { .. } = self.source {
            // Release the plan (and its memory) before recording.
            self.source = Source::Ready(Vec::new().into_iter());
        }
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        let digest = open.digest.finish();
        self.digest = Some(digest.clone());
        let entry = Entry {
            decision: if status == StreamStatus::Failed {
                Decision::Failed
            } else {
                Decision::Allowed
            },
            // Error texts may quote values; the exchange's own reasons (cut, cancelled) are
            // kept as written.
            reason: if status == StreamStatus::Failed {
                reason.map(|r| redact_values(&r))
            } else {
                reason
            },
            rows: Some(self.rows),
            result_digest: Some(digest),
            stream: Some(status),
            completes: Some(open.seq),
            workers: open.workers.as_ref().map(|w| w.list()).unwrap_or_default(),
            privacy: open.privacy.as_ref().map(|p| p.spent()).unwrap_or_default(),
            ..open.head.timed(open.started)
        };
        // Written before the consumer sees the end, durable with the next record: lost in a
        // crash, it leaves the stream incomplete, as the crash itself would have.
        open.audit
            .append_with(entry, Durability::WithNext)
            .map(|_| ())
            .map_err(|e| QueryError::Audit(e.to_string()))
    }

    fn poll_plan(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<RecordBatch, QueryError>>> {
        let Source::Plan { run, governed } = &mut self.source else {
            return Poll::Ready(None);
        };
        let governed = *governed;
        if let Run::NotYet(plan, task) = run {
            match threads::execute(Arc::clone(plan), Arc::clone(task), self.linger.take()) {
                Ok(stream) => *run = Run::Going(stream),
                Err(e) => return Poll::Ready(Some(Err(self.fail(run_error(governed, e))))),
            }
        }
        let Source::Plan {
            run: Run::Going(stream),
            ..
        } = &mut self.source
        else {
            return Poll::Ready(None);
        };
        // A panic in an operator is a bug; it fails this statement, recorded, and never
        // takes the process down.
        let polled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stream.poll_next_unpin(cx)));
        let item = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(item)) => item,
            Err(_) => {
                let e = QueryError::Failed(
                    "internal error: the exchange failed while running this statement (a bug, recorded in the audit log)".into(),
                );
                return Poll::Ready(Some(Err(self.fail(e))));
            }
        };
        match item {
            None => Poll::Ready(match self.end(StreamStatus::Complete, None) {
                Ok(()) => None,
                Err(e) => Some(Err(e)),
            }),
            Some(Err(e)) => Poll::Ready(Some(Err(self.fail(run_error(governed, e))))),
            Some(Ok(batch)) => {
                let over = self.open.as_mut().and_then(|o| {
                    o.bytes += batch.get_array_memory_size() as u64;
                    o.cap.filter(|cap| o.bytes > *cap)
                });
                if let Some(cap) = over {
                    let message = format!(
                        "the result exceeds the limit of {} MiB per result: aggregate or filter further",
                        cap >> 20
                    );
                    let e = QueryError::Run {
                        kind: FailureKind::Resources,
                        message: message.clone(),
                    };
                    return Poll::Ready(Some(Err(
                        match self.end(StreamStatus::Cut, Some(message)) {
                            Ok(()) => e,
                            Err(audit) => audit,
                        },
                    )));
                }
                self.rows += batch.num_rows() as u64;
                if let Some(o) = self.open.as_mut() {
                    o.digest.add(&batch);
                }
                Poll::Ready(Some(Ok(batch)))
            }
        }
    }

    /// Record a failure; the error the consumer gets (the audit's, if that failed too).
    fn fail(&mut self, e: QueryError) -> QueryError {
        match self.end(StreamStatus::Failed, Some(e.to_string())) {
            Ok(()) => e,
            Err(audit) => audit,
        }
    }
}

impl Stream for QueryStream {
    type Item = Result<RecordBatch, QueryError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match &mut this.source {
            Source::Ready(batches) => {
                let next = batches.next();
                if next.is_none() {
                    this.done = true;
                }
                Poll::Ready(next.map(Ok))
            }
            Source::Plan { .. } => this.poll_plan(cx),
        }
    }
}

impl Drop for QueryStream {
    fn drop(&mut self) {
        if self.open.is_some() {
            // Nobody is left to tell if this fails; the started record stands as incomplete.
            let _ = self.end(
                StreamStatus::Cancelled,
                Some("the result was dropped before its end".into()),
            );
        }
    }
}
