//! The process's memory budget: what every statement together may hold.
//!
//! Each statement has a memory pool of its own, but much of what a statement makes is never
//! reserved in a pool: values a function builds in one allocation, constants folded while
//! planning (kept with a prepared plan until it is fetched), result batches. A failed
//! allocation aborts the process, with its audit log and every other statement, and nothing
//! records the statement that did it (review 23: sums of `repeat` calls, wide batches, a
//! dozen unfetched results). So the binary counts the bytes the process holds
//! ([`CountingAllocator`]), and the places where a statement makes memory outside its pool
//! (function calls, string concatenation, pool reservations) first ask the [`Budget`]; past
//! it, the statement fails as out of resources, is audited, and the process goes on.
//!
//! The count is of live heap bytes, one relaxed atomic add per allocation. A library user
//! who does not install the allocator gets per-call bounds but no process budget.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::common::{DataFusionError, Result};
use datafusion::execution::memory_pool::{
    MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};

static LIVE: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting the bytes the process holds. The `exchange` binary
/// installs it (`#[global_allocator]`); [`live_bytes`] reads the count.
#[derive(Debug, Default, Clone, Copy)]
pub struct CountingAllocator;

// SAFETY: every call is forwarded to the system allocator unchanged; the count is a side
// effect that never allocates, panics or unwinds.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on unchanged.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

/// Heap bytes the process holds now, as counted by [`CountingAllocator`] (0 when it is not
/// installed).
pub fn live_bytes() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Bytes the process may hold before statements asking for more fail; `None`: no budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Budget(Option<usize>);

impl Budget {
    /// No budget: only per-statement pools and per-call bounds apply.
    pub const NONE: Budget = Budget(None);

    /// A budget of `bytes`.
    pub fn of(bytes: usize) -> Self {
        Budget(Some(bytes))
    }

    /// Half of what the machine lets this process have: the least of physical memory, the
    /// address-space limit (`ulimit -v`) and the cgroup's `memory.max`. Half, because the
    /// address space also holds thread stacks, allocator arenas and the binary, and the one
    /// allocation a check lets through still has to fit.
    pub fn from_machine() -> Self {
        match machine_limit() {
            Some(limit) => Budget::of(limit / 2),
            None => Budget::NONE,
        }
    }

    /// The budget in bytes, if any.
    pub fn bytes(self) -> Option<usize> {
        self.0
    }

    /// Fail when making `more` bytes would take the process past the budget. `what` names
    /// the maker (a function, an operator), never a value.
    pub fn check(self, more: u128, what: &str) -> Result<()> {
        let Some(budget) = self.0 else {
            return Ok(());
        };
        let live = live_bytes() as u128;
        if live.saturating_add(more) > budget as u128 {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{what} needs {} MiB while the exchange holds {} MiB of its memory budget of {} MiB (shared by every statement running); try again later or ask for less",
                more.div_ceil(1 << 20),
                live >> 20,
                budget >> 20
            )));
        }
        Ok(())
    }
}

/// Bytes of constants planning may make for one statement: they are copied with the plan
/// by every optimizer pass and printed into column names when a call over them is kept
/// (review 25 H2: six 256 MiB constants became a 1.6 GB column name).
pub const MAX_PLAN_CONSTANT_BYTES: u128 = 16 << 20;

tokio::task_local! {
    static PLAN_CONSTANTS: std::cell::Cell<u128>;
}

/// Run `planning` with its own count of the constants it makes.
pub(crate) async fn counting_constants<F: std::future::Future>(planning: F) -> F::Output {
    PLAN_CONSTANTS
        .scope(std::cell::Cell::new(0), planning)
        .await
}

/// Count a constant of `bytes` made while planning; fail past [`MAX_PLAN_CONSTANT_BYTES`].
/// Outside planning (a call of constants while running) nothing is counted.
pub(crate) fn charge_constant(bytes: u128) -> Result<()> {
    PLAN_CONSTANTS
        .try_with(|made| {
            let total = made.get().saturating_add(bytes);
            made.set(total);
            if total > MAX_PLAN_CONSTANT_BYTES {
                return Err(DataFusionError::ResourcesExhausted(format!(
                    "the statement's constants would hold more than {} MiB once computed; compute over a table's rows instead",
                    MAX_PLAN_CONSTANT_BYTES >> 20
                )));
            }
            Ok(())
        })
        .unwrap_or(Ok(()))
}

/// Physical memory, `RLIMIT_AS` and the cgroup limit, the least of those known.
fn machine_limit() -> Option<usize> {
    let mut limits = Vec::new();
    if let Ok(info) = std::fs::read_to_string("/proc/meminfo") {
        let total = info
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok());
        limits.extend(total.map(|kib| kib.saturating_mul(1024)));
    }
    if let Ok(max) = std::fs::read_to_string("/sys/fs/cgroup/memory.max") {
        limits.extend(max.trim().parse::<usize>().ok());
    }
    #[cfg(unix)]
    {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we pass and nothing else.
        if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut r) } == 0
            && r.rlim_cur != libc::RLIM_INFINITY
        {
            limits.push(usize::try_from(r.rlim_cur).unwrap_or(usize::MAX));
        }
    }
    limits.into_iter().min()
}

/// A statement's memory pool that also asks the process budget before it grows, so that
/// statements' pools cannot add up past what the process has.
#[derive(Debug)]
pub(crate) struct BudgetedPool {
    inner: Arc<dyn MemoryPool>,
    budget: Budget,
}

impl BudgetedPool {
    pub(crate) fn new(inner: Arc<dyn MemoryPool>, budget: Budget) -> Self {
        Self { inner, budget }
    }
}

impl fmt::Display for BudgetedPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} within the process budget", self.inner)
    }
}

impl MemoryPool for BudgetedPool {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.inner.register(consumer);
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.inner.unregister(consumer);
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.inner.grow(reservation, additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.inner.shrink(reservation, shrink);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        self.budget
            .check(additional as u128, reservation.consumer().name())?;
        self.inner.try_grow(reservation, additional)
    }

    fn reserved(&self) -> usize {
        self.inner.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        self.inner.memory_limit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_refuses_past_its_bytes_and_names_the_maker_only() {
        let none = Budget::NONE;
        assert!(none.check(u128::MAX, "repeat()").is_ok());
        let tiny = Budget::of(1);
        // The test binary does not install the allocator: live is 0.
        assert!(tiny.check(1, "repeat()").is_ok());
        let e = tiny.check(2 << 20, "repeat()").unwrap_err().to_string();
        assert!(e.contains("repeat() needs 2 MiB"), "{e}");
        assert!(e.contains("budget of 0 MiB"), "{e}");
    }

    #[test]
    fn the_machine_budget_is_known_here() {
        let b = Budget::from_machine().bytes().unwrap();
        assert!(b > 1 << 20, "{b}");
    }
}
