//! The runtime statements plan and run on, apart from the one that serves calls.
//!
//! DataFusion's operators run on the threads that poll them, and a CPU-bound one can run
//! for seconds between two points where a task yields. On the runtime that also answers
//! logins, catalog calls and other principals' streams, one analyst's cross join froze the
//! server well past the query deadline (review 17). Statements get threads of their own;
//! the operating system shares the cores between the two, so calls are answered while a
//! statement computes. A statement is cut only where it yields; every join's output yields
//! every 128 batches (`enforcement/batches.rs`), so an aggregate over a cross join is cut at
//! its deadline and leaves the threads to other statements by turns.

use tokio::runtime::{Builder, Handle, Runtime};

/// A dedicated multi-threaded runtime, shut down in the background when dropped (dropping
/// a runtime from async code would panic).
pub(crate) struct QueryRuntime {
    runtime: Option<Runtime>,
    handle: Handle,
}

impl QueryRuntime {
    /// One worker thread per core.
    pub(crate) fn new() -> std::io::Result<Self> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let runtime = Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("exchange-query")
            .enable_all()
            .build()?;
        Ok(Self {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    /// Where statements are spawned.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for QueryRuntime {
    fn drop(&mut self) {
        if let Some(r) = self.runtime.take() {
            r.shutdown_background();
        }
    }
}
