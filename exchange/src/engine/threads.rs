//! Each statement's plan runs on threads of its own.
//!
//! DataFusion's operators yield to their task between batches, and some loop inside one
//! poll for minutes without making one: a nested-loop join whose filter rejects nearly
//! every pair, a median over a wide sliding window (review 20). On threads shared with
//! other statements such a poll held them past its deadline and shut every other statement
//! out. So every statement's plan runs on a runtime of its own (a thread per partition, at
//! most one per core) and hands its batches through a channel to the statement's consumer,
//! whose deadline then fires on time whatever the plan does.
//!
//! When the consumer drops the stream (at the end, or cut, or cancelled) the runtime is
//! shut down. A thread still inside a poll cannot be stopped, so it is demoted to the idle
//! scheduling class: it runs only on cores nothing else wants until its poll returns, and
//! then exits. What was handed in to linger (the server hands the principal's share of
//! query slots) is released only once every thread of the statement has exited, so one
//! principal's lingering statements count against that principal alone. A runtime whose
//! statement ended with nothing of it left running is kept for the next statement (a few
//! are kept): starting threads would cost about half a millisecond a statement.

use std::any::Any;
use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use arrow::array::RecordBatch;
use datafusion::common::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream, execute_stream};
use futures::{FutureExt, Stream, StreamExt};
use tokio::runtime::{Builder, Runtime};
use tokio::sync::mpsc;

/// Held until every thread of a statement has exited.
pub(crate) type Lingering = Box<dyn Any + Send>;

/// Batches computed ahead of the consumer.
const AHEAD: usize = 2;

/// What the statement's threads hand over.
enum Msg {
    Batch(RecordBatch),
    Error(DataFusionError),
    /// An operator panicked: re-raised where the consumer polls, which records it.
    Panicked(Box<dyn Any + Send>),
    End,
}

/// The statement's live threads, and what waits for them to be gone.
struct Alive {
    tids: HashSet<i64>,
    shut: bool,
    linger: Option<Lingering>,
}

fn lock(alive: &Mutex<Alive>) -> MutexGuard<'_, Alive> {
    // Nothing panics while holding it; were it poisoned, the set is still right.
    alive.lock().unwrap_or_else(|e| e.into_inner())
}

/// A statement's runtime and the ids of its live threads.
struct Threads {
    runtime: Runtime,
    alive: Arc<Mutex<Alive>>,
    count: usize,
}

/// Runtimes whose last statement ended with nothing left running, kept for the next:
/// starting threads costs about half a millisecond a statement.
static IDLE: Mutex<Vec<Threads>> = Mutex::new(Vec::new());

/// Idle runtimes kept at most.
const MAX_IDLE: usize = 8;

/// Stack of a statement's threads. Parsing, planning and dropping a statement recurse once
/// per nesting level, and the statement cap (1 MiB of SQL) allows some 500,000 levels of
/// `1+1+...`: at tokio's default 2 MiB a 30,000-term sum overflowed the stack and aborted
/// the server (review 23 N4); 64 MiB holds the cap with room. Reserved, not committed:
/// untouched pages cost no memory.
const STACK_BYTES: usize = 64 << 20;

impl Threads {
    /// An idle runtime of `count` threads (at most one per core), or a new one.
    fn take(count: usize) -> Result<Self, DataFusionError> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let count = count.clamp(1, cores);
        let idle = {
            let mut idle = IDLE.lock().unwrap_or_else(|e| e.into_inner());
            idle.iter()
                .position(|t| t.count == count)
                .map(|i| idle.swap_remove(i))
        };
        match idle {
            Some(t) => Ok(t),
            None => Self::start(count),
        }
    }

    fn start(count: usize) -> Result<Self, DataFusionError> {
        let alive = Arc::new(Mutex::new(Alive {
            tids: HashSet::new(),
            shut: false,
            linger: None,
        }));
        let (started, stopped) = (Arc::clone(&alive), Arc::clone(&alive));
        let runtime = Builder::new_multi_thread()
            .worker_threads(count)
            .thread_stack_size(STACK_BYTES)
            .thread_name("exchange-statement")
            .enable_all()
            .on_thread_start(move || {
                lock(&started).tids.insert(thread_id());
            })
            .on_thread_stop(move || {
                let released = {
                    let mut a = lock(&stopped);
                    a.tids.remove(&thread_id());
                    if a.shut && a.tids.is_empty() {
                        a.linger.take()
                    } else {
                        None
                    }
                };
                drop(released);
            })
            .build()
            .map_err(|e| {
                DataFusionError::ResourcesExhausted(format!("no threads for the statement: {e}"))
            })?;
        Ok(Self {
            runtime,
            alive,
            count,
        })
    }

    /// Give the runtime back after its statement: kept for another if the statement
    /// `ended` and nothing of it is left on the runtime (tasks of a failed statement's other
    /// partitions may still be inside a poll), else retired.
    fn release(self, ended: bool) {
        if ended && self.runtime.metrics().num_alive_tasks() == 0 {
            self.reuse();
        } else {
            self.retire();
        }
    }

    /// The statement is over and nothing of it runs: release what lingers and keep the
    /// runtime for another statement.
    fn reuse(self) {
        let released = lock(&self.alive).linger.take();
        drop(released);
        let mut idle = IDLE.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(self);
        } else {
            drop(idle);
            self.retire();
        }
    }

    /// Shut the runtime down without waiting: a thread inside a long poll finishes it,
    /// demoted, and exits; what lingers is released when the last thread has.
    fn retire(self) {
        let released = {
            let mut a = lock(&self.alive);
            a.shut = true;
            // Under the lock: a thread leaves the set before it exits, so no id here is
            // reused by another thread yet.
            for tid in &a.tids {
                demote(*tid);
            }
            if a.tids.is_empty() {
                a.linger.take()
            } else {
                None
            }
        };
        drop(released);
        self.runtime.shutdown_background();
    }
}

/// Run `work` (a statement's planning, which folds constants and can compute for as long
/// as the statement likes) on threads of its own, within `timeout`: None if it did not
/// finish, its threads then retired and `linger` released once they have exited.
pub(crate) async fn run_within<T, F>(
    work: F,
    timeout: std::time::Duration,
    linger: Lingering,
) -> Result<Option<Result<T, tokio::task::JoinError>>, DataFusionError>
where
    T: Send + 'static,
    F: std::future::Future<Output = T> + Send + 'static,
{
    let threads = Threads::take(usize::MAX)?;
    lock(&threads.alive).linger = Some(linger);
    let task = threads.runtime.spawn(work);
    let abort = task.abort_handle();
    match tokio::time::timeout(timeout, task).await {
        Ok(done) => {
            threads.release(done.is_ok());
            Ok(Some(done))
        }
        Err(_) => {
            abort.abort();
            threads.retire();
            Ok(None)
        }
    }
}

/// Execute `plan` on threads of its own; `linger` is dropped once nothing of the statement
/// runs any more.
pub(crate) fn execute(
    plan: Arc<dyn ExecutionPlan>,
    task: Arc<TaskContext>,
    linger: Option<Lingering>,
) -> Result<SendableRecordBatchStream, DataFusionError> {
    let threads = Threads::take(task.session_config().target_partitions())?;
    lock(&threads.alive).linger = linger;
    let schema = plan.schema();
    let (tx, rx) = mpsc::channel(AHEAD);
    threads.runtime.spawn(async move {
        let run = async {
            let mut stream = match execute_stream(plan, task) {
                Ok(s) => s,
                Err(e) => return Msg::Error(e),
            };
            loop {
                match stream.next().await {
                    None => return Msg::End,
                    Some(Err(e)) => return Msg::Error(e),
                    Some(Ok(b)) => {
                        if tx.send(Msg::Batch(b)).await.is_err() {
                            return Msg::End; // the consumer is gone
                        }
                    }
                }
            }
        };
        let last = match AssertUnwindSafe(run).catch_unwind().await {
            Ok(m) => m,
            Err(panic) => Msg::Panicked(panic),
        };
        let _ = tx.send(last).await;
    });
    Ok(Box::pin(RecordBatchStreamAdapter::new(
        schema,
        Receiving {
            rx,
            ended: false,
            threads: Some(threads),
        },
    )))
}

/// The consumer's end.
struct Receiving {
    rx: mpsc::Receiver<Msg>,
    /// The threads said the statement ended (complete, or failed).
    ended: bool,
    threads: Option<Threads>,
}

impl Drop for Receiving {
    fn drop(&mut self) {
        let Some(threads) = self.threads.take() else {
            return;
        };
        threads.release(self.ended);
    }
}

impl Stream for Receiving {
    type Item = Result<RecordBatch, DataFusionError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let msg = match self.rx.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(m) => m,
        };
        match msg {
            Some(Msg::Batch(b)) => Poll::Ready(Some(Ok(b))),
            Some(Msg::Error(e)) => {
                self.ended = true;
                Poll::Ready(Some(Err(e)))
            }
            Some(Msg::Panicked(panic)) => {
                self.ended = true;
                // Retired, not reused: its state after a panic is unknown.
                if let Some(t) = self.threads.take() {
                    t.retire();
                }
                std::panic::resume_unwind(panic)
            }
            Some(Msg::End) => {
                self.ended = true;
                Poll::Ready(None)
            }
            // Never a silent end: a result cut short must not read as complete.
            None => {
                self.ended = true;
                if let Some(t) = self.threads.take() {
                    t.retire();
                }
                Poll::Ready(Some(Err(DataFusionError::Execution(
                    "the statement's threads stopped before its end".into(),
                ))))
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn thread_id() -> i64 {
    // SAFETY: gettid has no preconditions.
    i64::from(unsafe { libc::gettid() })
}

#[cfg(not(target_os = "linux"))]
fn thread_id() -> i64 {
    0
}

/// Move thread `tid` of this process to the idle scheduling class (or, where that is not
/// allowed, to the lowest priority): it keeps running only on cores nothing else wants.
#[cfg(target_os = "linux")]
fn demote(tid: i64) {
    let Ok(tid) = libc::pid_t::try_from(tid) else {
        return;
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `tid` names a live thread of this process (see `Threads::drop`); `param`
    // outlives the call.
    let idle = unsafe { libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param) };
    if idle != 0 {
        // SAFETY: as above; lowering one's own priority is always allowed.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19) };
    }
}

#[cfg(not(target_os = "linux"))]
fn demote(_tid: i64) {}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    struct Signal(Option<tokio::sync::oneshot::Sender<()>>);
    impl Drop for Signal {
        fn drop(&mut self) {
            if let Some(s) = self.0.take() {
                let _ = s.send(());
            }
        }
    }

    async fn plan_of(ctx: &SessionContext, sql: &str) -> Arc<dyn ExecutionPlan> {
        let df = ctx.sql(sql).await.unwrap();
        df.create_physical_plan().await.unwrap()
    }

    #[tokio::test]
    async fn batches_arrive_and_lingering_is_released_when_the_statement_is_over() {
        let ctx = SessionContext::new();
        let plan = plan_of(&ctx, "SELECT * FROM (VALUES (1), (2), (3)) AS t(x)").await;
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let mut stream = execute(plan, ctx.task_ctx(), Some(Box::new(Signal(Some(tx))))).unwrap();
        let mut rows = stream.next().await.unwrap().unwrap().num_rows();
        // Held while the statement runs.
        let now = rx.try_recv();
        assert!(
            matches!(now, Err(tokio::sync::oneshot::error::TryRecvError::Empty)),
            "{now:?}"
        );
        while let Some(b) = stream.next().await {
            rows += b.unwrap().num_rows();
        }
        assert_eq!(rows, 3);
        tokio::time::timeout(std::time::Duration::from_secs(10), rx)
            .await
            .expect("released")
            .unwrap();
    }

    #[tokio::test]
    async fn a_statement_dropped_while_running_is_stopped_and_releases_what_lingers() {
        let ctx = SessionContext::new();
        let plan = plan_of(
            &ctx,
            "SELECT count(*) FROM generate_series(1, 10000000000) a WHERE a.value % 7 = 8",
        )
        .await;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut stream = execute(plan, ctx.task_ctx(), Some(Box::new(Signal(Some(tx))))).unwrap();
        // Running: no batch for a while.
        let first =
            tokio::time::timeout(std::time::Duration::from_millis(200), stream.next()).await;
        assert!(first.is_err(), "{first:?}");
        drop(stream);
        // Its runtime is shut down; its task stops at its next yield and the threads exit.
        tokio::time::timeout(std::time::Duration::from_secs(30), rx)
            .await
            .expect("released once its threads exited")
            .unwrap();
    }

    #[tokio::test]
    async fn an_operator_error_ends_the_stream_with_it() {
        let ctx = SessionContext::new();
        let plan = plan_of(&ctx, "SELECT CAST(x AS INT) FROM (VALUES ('a')) AS t(x)").await;
        let mut stream = execute(plan, ctx.task_ctx(), None).unwrap();
        assert!(matches!(stream.next().await, Some(Err(_))));
        assert!(stream.next().await.is_none());
    }
}
