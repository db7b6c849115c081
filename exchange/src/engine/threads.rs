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
//! principal's lingering statements count against that principal alone.

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

/// Execute `plan` on threads of its own; `linger` is dropped once they have all exited.
pub(crate) fn execute(
    plan: Arc<dyn ExecutionPlan>,
    task: Arc<TaskContext>,
    linger: Option<Lingering>,
) -> Result<SendableRecordBatchStream, DataFusionError> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = task.session_config().target_partitions().clamp(1, cores);
    let alive = Arc::new(Mutex::new(Alive {
        tids: HashSet::new(),
        shut: false,
        linger,
    }));
    let (started, stopped) = (Arc::clone(&alive), Arc::clone(&alive));
    let runtime = Builder::new_multi_thread()
        .worker_threads(threads)
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
    let schema = plan.schema();
    let (tx, rx) = mpsc::channel(AHEAD);
    runtime.spawn(async move {
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
    let threads = Threads {
        runtime: Some(runtime),
        alive,
    };
    Ok(Box::pin(RecordBatchStreamAdapter::new(
        schema,
        Receiving {
            rx,
            ended: false,
            _threads: threads,
        },
    )))
}

/// The runtime, shut down (and its busy threads demoted) when the consumer lets go.
struct Threads {
    runtime: Option<Runtime>,
    alive: Arc<Mutex<Alive>>,
}

impl Drop for Threads {
    fn drop(&mut self) {
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
        if let Some(r) = self.runtime.take() {
            // Does not wait: a thread inside a long poll finishes it, demoted, and exits.
            r.shutdown_background();
        }
    }
}

/// The consumer's end.
struct Receiving {
    rx: mpsc::Receiver<Msg>,
    ended: bool,
    _threads: Threads,
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
                std::panic::resume_unwind(panic)
            }
            Some(Msg::End) => {
                self.ended = true;
                Poll::Ready(None)
            }
            // Never a silent end: a result cut short must not read as complete.
            None => {
                self.ended = true;
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

    #[tokio::test]
    async fn batches_arrive_and_lingering_is_released_after_the_threads_exit() {
        let ctx = SessionContext::new();
        let df = ctx
            .sql("SELECT * FROM (VALUES (1), (2), (3)) AS t(x)")
            .await
            .unwrap();
        let plan = df.create_physical_plan().await.unwrap();
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        struct Signal(Option<tokio::sync::oneshot::Sender<()>>);
        impl Drop for Signal {
            fn drop(&mut self) {
                if let Some(s) = self.0.take() {
                    let _ = s.send(());
                }
            }
        }
        let mut stream = execute(plan, ctx.task_ctx(), Some(Box::new(Signal(Some(tx))))).unwrap();
        let mut rows = 0;
        while let Some(b) = stream.next().await {
            rows += b.unwrap().num_rows();
        }
        assert_eq!(rows, 3);
        // Held while the stream (and so its threads) lives; released once they are gone.
        assert!(matches!(
            rx.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty)
        ));
        drop(stream);
        tokio::time::timeout(std::time::Duration::from_secs(10), rx)
            .await
            .expect("released")
            .unwrap();
    }

    #[tokio::test]
    async fn an_operator_error_ends_the_stream_with_it() {
        let ctx = SessionContext::new();
        let df = ctx
            .sql("SELECT CAST(x AS INT) FROM (VALUES ('a')) AS t(x)")
            .await
            .unwrap();
        let plan = df.create_physical_plan().await.unwrap();
        let mut stream = execute(plan, ctx.task_ctx(), None).unwrap();
        assert!(matches!(stream.next().await, Some(Err(_))));
        assert!(stream.next().await.is_none());
    }
}
