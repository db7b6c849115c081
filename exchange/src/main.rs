//! The `exchange` binary: see [`exchange::cli`].

fn main() -> std::process::ExitCode {
    exchange::cli::main()
}
