//! The `exchange` command line: demo, query, repl, explain, policy check, audit verify.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Print a line for a person, with terminal controls in it shown escaped (`crate::text`).
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(
            $crate::cli::output::Stdout,
            "{}",
            $crate::text::escape(&format!($($t)*))
        );
    }};
}

/// Print a line on standard error, with terminal controls in it shown escaped.
macro_rules! complain {
    ($($t:tt)*) => {
        // Once stdout's reader has gone, the failure that follows is not news.
        if !$crate::cli::output::pipe_closed() {
            eprintln!("{}", $crate::text::escape(&format!($($t)*)))
        }
    };
}

mod admin;
mod args;
mod budget;
mod demo_cmd;
mod federated;
mod output;
mod policy_diff;
mod policy_reload;
mod repl;
mod scan;

pub use args::*;
use demo_cmd::run_demo;
use output::{WriteFailure, print_lines, write_stream};
pub use output::{describe_treatments, render};
use repl::repl;
use scan::run_scan;

use crate::config::{ConfigError, ExchangeConfig, Settings, absolute};
use crate::demo;
use crate::engine::Exchange;

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
    let code = runtime.block_on(run(cli));
    // The exchange is closed (its log sealed) by now.
    if output::pipe_closed() {
        return ExitCode::from(141);
    }
    code
}

/// The effective settings: `exchange.toml` (from `--config`, else the working directory),
/// then `EXCHANGE_*` variables and flags over it.
fn settings(cli: &Cli) -> Result<(Settings, Option<PathBuf>), ConfigError> {
    let (mut s, file) = Settings::discover(cli.config.as_deref())?;
    let set = |target: &mut PathBuf, flag: &Option<PathBuf>| {
        if let Some(p) = flag {
            *target = absolute(p);
        }
    };
    set(&mut s.paths.config_dir, &cli.config_dir);
    set(&mut s.paths.data_root, &cli.data_root);
    set(&mut s.paths.state_dir, &cli.state_dir);
    if let Some(k) = &cli.key_dir {
        s.paths.key_dir = Some(absolute(k));
    }
    if let Command::Serve {
        listen,
        tls_cert,
        tls_key,
        max_concurrent,
        queue_wait,
        query_timeout,
        memory_limit_mib,
        max_result_mib,
        token_ttl,
        result_ttl,
        pg_listen,
        http_listen,
        watch_policies,
    } = &cli.command
    {
        let v = &mut s.serve;
        v.watch_policies_secs = watch_policies.unwrap_or(v.watch_policies_secs);
        v.listen = listen.unwrap_or(v.listen);
        v.pg_listen = pg_listen.or(v.pg_listen);
        v.http_listen = http_listen.or(v.http_listen);
        if tls_cert.is_some() {
            v.tls_cert = tls_cert.as_deref().map(absolute);
            v.tls_key = tls_key.as_deref().map(absolute);
        }
        v.max_concurrent = max_concurrent.unwrap_or(v.max_concurrent);
        v.queue_wait_secs = queue_wait.unwrap_or(v.queue_wait_secs);
        v.query_timeout_secs = query_timeout.unwrap_or(v.query_timeout_secs);
        v.memory_limit_mib = memory_limit_mib.unwrap_or(v.memory_limit_mib);
        v.max_result_mib = max_result_mib.unwrap_or(v.max_result_mib);
        v.token_ttl_secs = token_ttl.unwrap_or(v.token_ttl_secs);
        v.result_ttl_secs = result_ttl.unwrap_or(v.result_ttl_secs);
    }
    let origin = file
        .as_ref()
        .map(|f| format!("{} with flags", f.display()))
        .unwrap_or_else(|| "flags".into());
    s.validate(&origin)?;
    Ok((s, file))
}

pub(super) fn config(settings: &Settings) -> ExchangeConfig {
    settings.exchange_config()
}

pub(super) fn open(settings: &Settings) -> Result<Exchange, ExitCode> {
    Exchange::open(config(settings)).map_err(|e| {
        complain!("error: {e}");
        ExitCode::from(2)
    })
}

async fn run(cli: Cli) -> ExitCode {
    let (settings, file) = match settings(&cli) {
        Ok(s) => s,
        Err(e) => {
            complain!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let cfg = &settings;
    match &cli.command {
        Command::Demo {
            scale,
            seed,
            regenerate,
            federated,
        } => run_demo(cfg, *scale, *seed, *regenerate, *federated).await,
        Command::Generate { scale, seed } => {
            let root = absolute(&cfg.paths.data_root);
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
            let ex = match open(cfg) {
                Ok(e) => e,
                Err(c) => return c,
            };
            let stream = match ex.start(principal, purpose.as_deref(), sql).await {
                Ok(s) => s,
                Err(e) => {
                    complain!("{e}");
                    return ExitCode::from(1);
                }
            };
            match write_stream(stream, *format, output.as_ref()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(WriteFailure::Query(e)) => {
                    complain!("{e}");
                    ExitCode::from(1)
                }
                Err(WriteFailure::Output(e)) => {
                    complain!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Explain {
            principal,
            purpose,
            verbose,
            sql,
        } => {
            let ex = match open(cfg) {
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
            let ex = match open(cfg) {
                Ok(e) => e,
                Err(c) => return c,
            };
            repl(&ex, principal, purpose.as_deref()).await
        }
        Command::Scan {
            target,
            sample,
            format,
        } => run_scan(cfg, target, *sample, *format).await,
        Command::Policy {
            command:
                PolicyCommand::Diff {
                    old,
                    new,
                    format,
                    fail_on,
                    on,
                },
        } => policy_diff::run(&config(cfg), old, new.as_deref(), *format, *fail_on, *on),
        Command::Policy {
            command: PolicyCommand::Reload { wait },
        } => policy_reload::run(&config(cfg), std::time::Duration::from_secs(*wait)),
        Command::Policy {
            command: PolicyCommand::Check,
        } => {
            let report = crate::engine::check(&config(cfg));
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
            if let Ok(v) = crate::engine::version_of(&config(cfg)) {
                say!("policy version {v}");
            }
            if report.has_errors() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Audit {
            command: AuditCommand::Verify { public_key },
        } => admin::audit_verify(&config(cfg), public_key.as_deref()),
        Command::Audit {
            command: AuditCommand::Report { since, principal },
        } => admin::audit_report(&config(cfg), since.as_deref(), principal.as_deref()),
        Command::Audit {
            command:
                AuditCommand::Reconcile {
                    hub_log,
                    node_logs,
                    hub_key,
                },
        } => admin::audit_reconcile(hub_log, node_logs, hub_key.as_deref()),
        Command::Worker { listen, url } => {
            let options = crate::distributed::WorkerOptions {
                listen: *listen,
                url: url.clone(),
            };
            let result = crate::distributed::serve_worker(
                config(cfg),
                options,
                |_, url| {
                    say!("exchange worker listening on {url}");
                    let _ = std::io::stdout().flush();
                },
                crate::server::shutdown_signal(),
            )
            .await;
            match result {
                Ok(()) => {
                    let _ = writeln!(std::io::stdout(), "exchange worker stopped");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    complain!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Node { agency, listen } => {
            let ex = match Exchange::open(config(cfg)) {
                Ok(e) => e,
                Err(e) => {
                    complain!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let options = crate::federation::NodeOptions {
                agency: agency.clone(),
                listen: *listen,
                watch_policies: Some(std::time::Duration::from_secs(
                    cfg.serve.watch_policies_secs,
                )),
                max_concurrent: cfg.serve.max_concurrent,
                queue_wait: std::time::Duration::from_secs(cfg.serve.queue_wait_secs),
            };
            let result = crate::federation::serve_node(
                ex,
                options,
                |addr| {
                    say!("exchange node of agency {agency} listening on http://{addr}");
                    let _ = std::io::stdout().flush();
                },
                crate::server::shutdown_signal(),
            )
            .await;
            match result {
                Ok(()) => {
                    // As `serve`: the reader of the first line may be gone.
                    let _ = writeln!(std::io::stdout(), "exchange node stopped; audit log sealed");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    complain!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Keys {
            command: KeysCommand::Init,
        } => admin::keys_init(&config(cfg)),
        Command::Auth { command } => admin::auth(&config(cfg), command),
        Command::Budget { principal } => budget::run(&config(cfg), principal),
        Command::Config => {
            match &file {
                Some(f) => say!(
                    "# effective configuration: {} with environment and flags over it",
                    f.display()
                ),
                None => say!(
                    "# effective configuration: built-in defaults with environment and flags over them (no exchange.toml)"
                ),
            }
            say!(
                "# keys are files under paths.key_dir; their contents are never part of the configuration"
            );
            for line in cfg.render().lines() {
                say!("{line}");
            }
            ExitCode::SUCCESS
        }
        Command::Serve { .. } => {
            let mut exchange_config = config(cfg);
            exchange_config.memory_limit = Some(cfg.serve.memory_limit_mib.saturating_mul(1 << 20));
            let ex = match Exchange::open(exchange_config) {
                Ok(e) => e,
                Err(e) => {
                    complain!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            // A panic in a connection's task (a protocol library's decoder on a hostile
            // message, review 31) ends that connection only; it is told in one line, so
            // that clients that never logged in cannot fill the log with backtraces.
            std::panic::set_hook(Box::new(|info| {
                let what = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                let at = info
                    .location()
                    .map(|l| format!("{}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                let what: String = what.chars().take(200).collect();
                let _ = writeln!(
                    std::io::stderr(),
                    "warning: a task failed at {at}: {}",
                    crate::text::escape(&what)
                );
            }));
            let options = crate::server::ServeOptions::from_settings(&cfg.serve);
            let tls = options.tls.is_some();
            let result = crate::server::serve(ex, options, |at| {
                say!(
                    "exchange Flight SQL server listening on {}://{}",
                    if tls { "grpc+tls" } else { "grpc" },
                    at.flight
                );
                if let Some(pg) = at.pg {
                    say!(
                        "exchange Postgres server listening on postgres://{pg}{}",
                        if tls { " (sslmode=require)" } else { "" }
                    );
                }
                if let Some(http) = at.http {
                    say!(
                        "exchange console listening on {}://{http}/",
                        if tls { "https" } else { "http" }
                    );
                }
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
        } => admin::export_verify(&config(cfg), file, public_key.as_deref()),
        Command::Export {
            command: Some(ExportCommand::Trace { file }),
            ..
        } => {
            let ex = match open(cfg) {
                Ok(e) => e,
                Err(c) => return c,
            };
            admin::export_trace(&ex, file).await
        }
        Command::Export {
            command: None,
            args,
        } => {
            let ex = match open(cfg) {
                Ok(e) => e,
                Err(c) => return c,
            };
            admin::export_run(&ex, args).await
        }
        Command::Keys {
            command: KeysCommand::Public { out },
        } => admin::keys_public(&config(cfg), out.as_deref()),
        Command::Keys {
            command: KeysCommand::Transport,
        } => admin::keys_transport(&config(cfg)),
        Command::Keys {
            command: KeysCommand::Domain { command },
        } => admin::keys_domain(&config(cfg), command),
    }
}
