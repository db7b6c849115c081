//! The `exchange` binary: see [`exchange::cli_main`].

// Counts the heap bytes the process holds, for the memory budget every statement shares
// (exchange::Budget): past it a statement fails, audited, instead of the process aborting.
#[global_allocator]
static ALLOCATOR: exchange::CountingAllocator = exchange::CountingAllocator;

fn main() -> std::process::ExitCode {
    // SIGPIPE stays ignored (Rust's default): a socket closed by a store must not kill a
    // command unaudited; the CLI's standard output ends the process quietly instead when
    // its reader goes away (cli/output.rs).
    exchange::cli_main()
}
