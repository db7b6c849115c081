//! The `exchange` command line: demo, query, repl, explain, policy check, audit verify.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

/// Print a line for a person, with terminal controls in it shown escaped (`crate::text`).
macro_rules! say {
    ($($t:tt)*) => {
        println!("{}", $crate::text::escape(&format!($($t)*)))
    };
}

/// Print a line on standard error, with terminal controls in it shown escaped.
macro_rules! complain {
    ($($t:tt)*) => {
        eprintln!("{}", $crate::text::escape(&format!($($t)*)))
    };
}

mod admin;
mod args;
mod demo_cmd;
mod output;
mod repl;
mod scan;

pub use args::*;
use demo_cmd::run_demo;
pub use output::{describe_treatments, render};
use output::{print_lines, write_output};
use repl::repl;
use scan::run_scan;

use crate::demo;
use crate::engine::{Exchange, ExchangeConfig, absolute};

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // DataFusion recurses over plans and expressions: room beyond the statement limits.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(8 << 20)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            complain!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(run(cli))
}

pub(super) fn config(cli: &Cli) -> ExchangeConfig {
    let config = ExchangeConfig::new(
        absolute(&cli.config_dir),
        absolute(&cli.data_root),
        absolute(&cli.state_dir),
    );
    match &cli.key_dir {
        Some(k) => config.with_key_dir(absolute(k)),
        None => config,
    }
}

pub(super) fn open(cli: &Cli) -> Result<Exchange, ExitCode> {
    Exchange::open(config(cli)).map_err(|e| {
        complain!("error: {e}");
        ExitCode::from(2)
    })
}

async fn run(cli: Cli) -> ExitCode {
    match &cli.command {
        Command::Demo {
            scale,
            seed,
            regenerate,
        } => run_demo(&cli, *scale, *seed, *regenerate).await,
        Command::Generate { scale, seed } => {
            let root = absolute(&cli.data_root);
            match demo::generate(&root, *scale, *seed) {
                Ok(n) => {
                    say!(
                        "generated the demo city ({n} residents) under {}",
                        root.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    complain!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Query {
            principal,
            purpose,
            format,
            output,
            sql,
        } => {
            let ex = match open(&cli) {
                Ok(e) => e,
                Err(c) => return c,
            };
            match ex.execute(principal, purpose.as_deref(), sql).await {
                Ok(out) => match write_output(&out, *format, output.as_ref()) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        complain!("error: {e}");
                        ExitCode::from(2)
                    }
                },
                Err(e) => {
                    complain!("{e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Explain {
            principal,
            purpose,
            verbose,
            sql,
        } => {
            let ex = match open(&cli) {
                Ok(e) => e,
                Err(c) => return c,
            };
            let stmt = format!("EXPLAIN {}{sql}", if *verbose { "VERBOSE " } else { "" });
            match ex.execute(principal, purpose.as_deref(), &stmt).await {
                Ok(out) => {
                    print_lines(&out);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    complain!("{e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Repl { principal, purpose } => {
            let ex = match open(&cli) {
                Ok(e) => e,
                Err(c) => return c,
            };
            repl(&ex, principal, purpose.as_deref()).await
        }
        Command::Scan {
            target,
            sample,
            format,
        } => run_scan(&cli, target, *sample, *format),
        Command::Policy {
            command: PolicyCommand::Check,
        } => {
            let report = crate::engine::check(&config(&cli));
            for f in &report.findings {
                say!("{f}");
            }
            let (t, p, u, g) = report.counts;
            let errors = report
                .findings
                .iter()
                .filter(|f| f.severity == crate::engine::Severity::Error)
                .count();
            let warnings = report.findings.len() - errors;
            say!(
                "{t} tables, {p} principals, {u} purposes, {g} grants: {errors} errors, {warnings} warnings"
            );
            if report.has_errors() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Audit {
            command: AuditCommand::Verify { public_key },
        } => admin::audit_verify(&config(&cli), public_key.as_deref()),
        Command::Audit {
            command: AuditCommand::Report { since, principal },
        } => admin::audit_report(&config(&cli), since.as_deref(), principal.as_deref()),
        Command::Keys {
            command: KeysCommand::Init,
        } => admin::keys_init(&config(&cli)),
        Command::Auth { command } => admin::auth(&config(&cli), command),
        Command::Serve {
            listen,
            tls_cert,
            tls_key,
            max_concurrent,
            queue_wait,
            query_timeout,
            memory_limit_mib,
            max_result_mib,
            token_ttl,
        } => {
            let mut cfg = config(&cli);
            cfg.memory_limit = Some(memory_limit_mib.saturating_mul(1 << 20));
            let ex = match Exchange::open(cfg) {
                Ok(e) => e,
                Err(e) => {
                    complain!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let options = crate::server::ServeOptions {
                listen: *listen,
                tls: tls_cert.clone().zip(tls_key.clone()),
                limits: crate::server::Limits {
                    max_concurrent: *max_concurrent,
                    queue_wait: std::time::Duration::from_secs(*queue_wait),
                    query_timeout: std::time::Duration::from_secs(*query_timeout),
                    result_ttl: std::time::Duration::from_secs(600),
                    max_result_bytes: max_result_mib.saturating_mul(1 << 20),
                },
                token_ttl: std::time::Duration::from_secs(*token_ttl),
            };
            let tls = options.tls.is_some();
            let result = crate::server::serve(ex, options, |addr| {
                say!(
                    "exchange Flight SQL server listening on {}://{addr}",
                    if tls { "grpc+tls" } else { "grpc" }
                );
                let _ = std::io::stdout().flush();
            })
            .await;
            match result {
                Ok(()) => {
                    let _ = writeln!(
                        std::io::stdout(),
                        "exchange server stopped; audit log sealed"
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    complain!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Export {
            command: Some(ExportCommand::Verify { file, public_key }),
            ..
        } => admin::export_verify(&config(&cli), file, public_key.as_deref()),
        Command::Export {
            command: Some(ExportCommand::Trace { file }),
            ..
        } => {
            let ex = match open(&cli) {
                Ok(e) => e,
                Err(c) => return c,
            };
            admin::export_trace(&ex, file).await
        }
        Command::Export {
            command: None,
            args,
        } => {
            let ex = match open(&cli) {
                Ok(e) => e,
                Err(c) => return c,
            };
            admin::export_run(&ex, args).await
        }
        Command::Keys {
            command: KeysCommand::Public { out },
        } => admin::keys_public(&config(&cli), out.as_deref()),
    }
}
