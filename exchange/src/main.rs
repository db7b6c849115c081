//! The `exchange` binary: see [`exchange::cli_main`].

fn main() -> std::process::ExitCode {
    // Like other Unix command-line tools, stop quietly when the reader of our output goes
    // away (`exchange audit report | head`) instead of failing on every later write.
    // Not for the server: a closed stdout must never stop it before it seals its audit log.
    #[cfg(unix)]
    if !std::env::args().any(|a| a == "serve") {
        // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    exchange::cli_main()
}
