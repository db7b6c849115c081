//! The `exchange` binary: see [`exchange::cli`].

fn main() -> std::process::ExitCode {
    // Like other Unix command-line tools, stop quietly when the reader of our output goes
    // away (`exchange audit report | head`) instead of failing on every later write.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    exchange::cli::main()
}
