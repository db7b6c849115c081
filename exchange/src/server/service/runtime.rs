//! The runtime statements are planned on, apart from the one that serves calls.
//!
//! On the runtime that also answers logins, catalog calls and other principals' streams,
//! one analyst's cross join froze the server well past the query deadline (review 17).
//! Planning gets threads of its own here; each statement's plan then runs on threads of
//! its own ([`crate::engine`]), since some operators compute for minutes inside one poll
//! (review 20) and no shared thread can be taken back from them.

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
