//! The `exchange` command line: demo, query, repl, explain, policy check, audit verify.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use arrow::array::RecordBatch;
use clap::{Parser, Subcommand, ValueEnum};

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

use crate::demo;
use crate::engine::{Exchange, ExchangeConfig, QueryError, QueryOutput, absolute};
use crate::policy::{self, Treatment};

/// A governed, federated SQL exchange for cross-agency data sharing.
#[derive(Debug, Parser)]
#[command(name = "exchange", version, about)]
pub struct Cli {
    /// Directory holding schemas/ and policies/.
    #[arg(long, global = true, default_value = ".", env = "EXCHANGE_CONFIG_DIR")]
    pub config_dir: PathBuf,
    /// Root of relative dataset locations.
    #[arg(
        long,
        global = true,
        default_value = "demo-data",
        env = "EXCHANGE_DATA_ROOT"
    )]
    pub data_root: PathBuf,
    /// Directory of the audit log and REPL history.
    #[arg(
        long,
        global = true,
        default_value = ".exchange",
        env = "EXCHANGE_STATE_DIR"
    )]
    pub state_dir: PathBuf,
    /// Directory of the keys [default: <config-dir>/keys].
    #[arg(long, global = true, env = "EXCHANGE_KEY_DIR")]
    pub key_dir: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats of query results.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// Aligned table.
    Table,
    /// CSV with a header.
    Csv,
    /// JSON Lines, one object per row.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate the demo city if missing, then run the showcase as each principal.
    Demo {
        /// Scale of generated data (1 = 100,000 residents).
        #[arg(long, default_value_t = demo::DEFAULT_SCALE)]
        scale: f64,
        /// Seed of generated data.
        #[arg(long, default_value_t = demo::DEFAULT_SEED)]
        seed: u64,
        /// Regenerate the data even if present.
        #[arg(long)]
        regenerate: bool,
    },
    /// Generate the demo city's datasets under the data root.
    Generate {
        /// Scale (1 = 100,000 residents).
        #[arg(long, default_value_t = demo::DEFAULT_SCALE)]
        scale: f64,
        /// Seed.
        #[arg(long, default_value_t = demo::DEFAULT_SEED)]
        seed: u64,
    },
    /// Run one SQL statement as a principal.
    Query {
        /// The principal.
        #[arg(long = "as")]
        principal: String,
        /// The declared purpose.
        #[arg(long)]
        purpose: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Write the result here instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
        /// The statement.
        sql: String,
    },
    /// Interactive SQL as a principal.
    Repl {
        /// The principal.
        #[arg(long = "as")]
        principal: String,
        /// The declared purpose.
        #[arg(long)]
        purpose: Option<String>,
    },
    /// Show the governed plan of a query.
    Explain {
        /// The principal.
        #[arg(long = "as")]
        principal: String,
        /// The declared purpose.
        #[arg(long)]
        purpose: Option<String>,
        /// Include types of visible columns.
        #[arg(long)]
        verbose: bool,
        /// The query.
        sql: String,
    },
    /// Discover personal information in a dataset: per column, the PII type detected with the
    /// share of values that validate, a suggested level and treatment.
    Scan {
        /// `agency.table` of the catalog, or the path of a Parquet or CSV file.
        target: String,
        /// Rows to sample.
        #[arg(long, default_value_t = 1000)]
        sample: usize,
        /// `table`, or `schema` for a ready-to-edit schemas/ snippet.
        #[arg(long, value_enum, default_value_t = ScanFormat::Table)]
        format: ScanFormat,
    },
    /// Policy administration.
    Policy {
        /// What to do.
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Audit log administration.
    Audit {
        /// What to do.
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Export a query result for a recipient as a signed Parquet file (pseudonyms keyed for
    /// the recipient); `export verify FILE` and `export trace FILE` check one.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Export {
        /// verify or trace.
        #[command(subcommand)]
        command: Option<ExportCommand>,
        /// The export to run.
        #[command(flatten)]
        args: ExportArgs,
    },
    /// Serve analysts over Arrow Flight SQL until Ctrl-C or SIGTERM.
    Serve {
        /// Address to listen on (port 0: any free port, printed on start).
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: std::net::SocketAddr,
        /// PEM certificate chain, for TLS.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key, for TLS.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Queries running at once; more wait up to --queue-wait, then get RESOURCE_EXHAUSTED.
        #[arg(long, default_value_t = 8)]
        max_concurrent: usize,
        /// Seconds an excess query waits for a slot.
        #[arg(long, default_value_t = 10)]
        queue_wait: u64,
        /// Seconds a query may run (DEADLINE_EXCEEDED after).
        #[arg(long, default_value_t = 300)]
        query_timeout: u64,
        /// Memory limit of each query, in MiB (DataFusion memory pool).
        #[arg(long, default_value_t = 2048)]
        memory_limit_mib: usize,
        /// Largest result kept for a client, in MiB of Arrow data (RESOURCE_EXHAUSTED above).
        #[arg(long, default_value_t = 4096)]
        max_result_mib: usize,
        /// Seconds a login's bearer token stays valid (at most a week).
        #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=604_800))]
        token_ttl: u64,
    },
    /// Credentials of principals for the Flight SQL server.
    Auth {
        /// What to do.
        #[command(subcommand)]
        command: AuthCommand,
    },
    /// Key administration.
    Keys {
        /// What to do.
        #[command(subcommand)]
        command: KeysCommand,
    },
}

/// `exchange export --as P --purpose X --recipient R --out FILE SQL`
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The principal.
    #[arg(long = "as", required = true)]
    pub principal: Option<String>,
    /// The declared purpose.
    #[arg(long)]
    pub purpose: Option<String>,
    /// To whom the file is issued.
    #[arg(long, required = true)]
    pub recipient: Option<String>,
    /// The Parquet file to write (never overwritten); the manifest goes beside it.
    #[arg(long, required = true)]
    pub out: Option<PathBuf>,
    /// Last day of use (YYYY-MM-DD), if earlier than the grants' expiry.
    #[arg(long)]
    pub expires: Option<chrono::NaiveDate>,
    /// The query.
    #[arg(required = true)]
    pub sql: Option<String>,
}

/// `exchange export verify|trace FILE`
#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// Check an export against its manifest: signature, size and SHA-256.
    Verify {
        /// The export file.
        file: PathBuf,
        /// The exchange's public key [default: signing.pub in the key dir].
        #[arg(long)]
        public_key: Option<PathBuf>,
    },
    /// Tell from the pseudonyms in a file alone which recipient it was issued to.
    Trace {
        /// The (leaked) Parquet file.
        file: PathBuf,
    },
}

/// `exchange auth ...`
#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Set a principal's password (read from standard input); only a salted PBKDF2 hash is
    /// stored, in policies/principals.toml.
    SetPassword {
        /// The principal.
        principal: String,
        /// PBKDF2 iterations.
        #[arg(long, default_value_t = crate::server::DEFAULT_ITERATIONS)]
        iterations: u32,
    },
    /// Create a long-lived API token for a service principal; printed once, stored hashed.
    NewToken {
        /// The principal.
        principal: String,
    },
}

/// `exchange keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create the HMAC secret and the Ed25519 signing key (owner-only files) and the public
    /// key for verifiers; refuses to overwrite existing keys.
    Init,
    /// Print (or write) the public key verifiers need.
    Public {
        /// Write it to this file instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Output of `exchange scan`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ScanFormat {
    /// Aligned table.
    Table,
    /// A schemas/ snippet.
    Schema,
}

/// `exchange policy ...`
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate schemas, policies and data files; non-zero exit on errors.
    Check,
}

/// `exchange audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the audit log: chain, sequence, segments and checkpoint signatures.
    Verify {
        /// The exchange's public key [default: signing.pub in the key dir].
        #[arg(long)]
        public_key: Option<PathBuf>,
    },
    /// Summarise the log: statements per principal and purpose, refusals, tables touched.
    Report {
        /// From this date (YYYY-MM-DD) or time (RFC 3339) on.
        #[arg(long)]
        since: Option<String>,
        /// Only this principal.
        #[arg(long)]
        principal: Option<String>,
    },
}

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

fn config(cli: &Cli) -> ExchangeConfig {
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

fn open(cli: &Cli) -> Result<Exchange, ExitCode> {
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
            let report = policy::check(&config(&cli));
            for f in &report.findings {
                say!("{f}");
            }
            let (t, p, u, g) = report.counts;
            let errors = report
                .findings
                .iter()
                .filter(|f| f.severity == policy::Severity::Error)
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

fn run_scan(cli: &Cli, target: &str, sample: usize, format: ScanFormat) -> ExitCode {
    use crate::catalog::{Catalog, discover};
    let config = config(cli);
    // A catalog table, or else a path.
    let (agency, table, path) = match target.split_once('.').and_then(|(a, t)| {
        Catalog::load(&config.schemas_dir())
            .ok()
            .and_then(|c| c.dataset(a, t).cloned())
    }) {
        Some(d) => {
            let location = std::path::PathBuf::from(d.resolve_location(&config.data_root));
            let file = if location.is_dir() {
                std::fs::read_dir(&location)
                    .ok()
                    .and_then(|rd| {
                        let mut files: Vec<_> =
                            rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
                        files.sort();
                        files.into_iter().next()
                    })
                    .unwrap_or(location)
            } else {
                location
            };
            (d.agency.clone(), d.name.clone(), file)
        }
        None => {
            let path = absolute(std::path::Path::new(target));
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "table".into());
            ("AGENCY".to_string(), stem, path)
        }
    };
    match discover::scan_file(&path, sample.max(1)) {
        Ok(findings) => {
            match format {
                // Column names come from the file: each line shown escaped.
                ScanFormat::Table => {
                    for line in discover::render_table(&findings).lines() {
                        say!("{line}");
                    }
                }
                ScanFormat::Schema => print!(
                    "{}",
                    discover::render_schema(
                        &agency,
                        &table,
                        &path.display().to_string(),
                        &findings
                    )
                ),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            complain!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn print_lines(out: &QueryOutput) {
    for b in &out.batches {
        if let Some(col) = b
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
        {
            for line in col.iter().flatten() {
                say!("{line}");
            }
        }
    }
}

fn write_output(out: &QueryOutput, format: Format, path: Option<&PathBuf>) -> Result<(), String> {
    let mut sink: Box<dyn Write> = match path {
        Some(p) => Box::new(std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => Box::new(std::io::stdout().lock()),
    };
    render(&mut sink, &out.batches, format).map_err(|e| e.to_string())?;
    sink.flush().map_err(|e| e.to_string())
}

/// Render batches in a format.
pub fn render(
    sink: &mut dyn Write,
    batches: &[RecordBatch],
    format: Format,
) -> Result<(), arrow::error::ArrowError> {
    // Values can hold terminal escapes: every format shows them escaped.
    let escaped = crate::text::escape_batches(batches)?;
    let batches = escaped.as_slice();
    match format {
        Format::Table => {
            writeln!(
                sink,
                "{}",
                arrow::util::pretty::pretty_format_batches(batches)?
            )?;
        }
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(sink);
            // CSV holds flat values: lists, structs and maps as their text.
            for b in &crate::text::flatten_nested(batches)? {
                w.write(b)?;
            }
        }
        Format::Json => {
            let mut w = arrow::json::LineDelimitedWriter::new(sink);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
        }
    }
    Ok(())
}

/// A line per table: grant, row filter and the treatments that changed columns.
pub fn describe_treatments(
    ex: &Exchange,
    principal: &str,
    purpose: &str,
    out: &QueryOutput,
) -> Vec<String> {
    let Ok(session) = ex.session(principal, Some(purpose)) else {
        return vec![];
    };
    let mut lines = Vec::new();
    for t in &out.tables {
        let Some(spec) = session.tables.get(&t.table) else {
            lines.push(format!("{} (grant {})", t.table, t.grant));
            continue;
        };
        let treated: Vec<String> = spec
            .access
            .columns
            .iter()
            .filter(|c| c.treatment != Treatment::Plain)
            .map(|c| format!("{} {}", c.name, c.treatment))
            .collect();
        let rows = if spec.access.row_filter.is_some() {
            "rows filtered by the owner's row filter; "
        } else {
            ""
        };
        let cols = if treated.is_empty() {
            "all visible columns plain".to_string()
        } else {
            treated.join(", ")
        };
        lines.push(format!("{} via {}: {rows}{cols}", t.table, t.grant));
    }
    for th in &out.thresholds {
        lines.push(format!("groups suppressed unless {th}"));
    }
    lines
}

async fn run_demo(cli: &Cli, scale: f64, seed: u64, regenerate: bool) -> ExitCode {
    let root = absolute(&cli.data_root);
    if regenerate || !demo::data_present(&root) {
        say!(
            "Generating the demo city (scale {scale}, seed {seed}) under {} ...",
            root.display()
        );
        match demo::generate(&root, scale, seed) {
            Ok(n) => println!("  {n} residents and their records across six agencies.\n"),
            Err(e) => {
                complain!("error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    // The demo's first run creates its keys; anywhere else that is `exchange keys init`.
    if let Err(e) = crate::keys::ensure(&config(cli).key_dir) {
        complain!("error: {e}");
        return ExitCode::from(2);
    }
    let ex = match open(cli) {
        Ok(e) => e,
        Err(c) => return c,
    };
    let mut failures = 0;
    // Refusals first, so the auditor's showcase has refusals to find.
    let mut refused_lines = Vec::new();
    for r in demo::refusals() {
        match ex.execute(r.principal, r.purpose, r.sql).await {
            Err(QueryError::Refused(reason)) => refused_lines.push((r, reason)),
            other => {
                failures += 1;
                refused_lines.push((r, format!("UNEXPECTED: {other:?}")));
            }
        }
    }
    for (i, show) in demo::SHOWCASE.iter().enumerate() {
        let agency = ex
            .policies()
            .principal(show.principal)
            .map(|p| p.agency.clone())
            .unwrap_or_default();
        say!(
            "━━━ {}. {} ({agency}) · purpose {}",
            i + 1,
            show.principal,
            show.purpose
        );
        for q in show.queries {
            say!("  {}", q.title);
            for l in q.sql.lines() {
                say!("    {l}");
            }
            match ex.execute(show.principal, Some(show.purpose), q.sql).await {
                Ok(out) => {
                    for line in describe_treatments(&ex, show.principal, show.purpose, &out) {
                        say!("  ⤷ {line}");
                    }
                    let mut stdout = std::io::stdout().lock();
                    let _ = render(&mut stdout, &out.batches, Format::Table);
                    say!("  ({} rows)", out.rows);
                }
                Err(e) => {
                    failures += 1;
                    say!("  UNEXPECTED {e}");
                }
            }
        }
        for (r, reason) in refused_lines
            .iter()
            .filter(|(r, _)| r.principal == show.principal)
        {
            say!(
                "  ✗ {} {}",
                r.purpose
                    .map(|p| format!("[purpose {p}]"))
                    .unwrap_or_else(|| "[no purpose]".into()),
                r.sql
            );
            say!("    {reason}");
        }
        println!();
    }
    for (r, reason) in refused_lines
        .iter()
        .filter(|(r, _)| !demo::SHOWCASE.iter().any(|s| s.principal == r.principal))
    {
        say!("  ✗ {} as {}: {reason}", r.sql, r.principal);
    }
    // Showcase 5 leaves as a signed export for a buyer of the trade platform.
    if let Some(q) = demo::SHOWCASE
        .iter()
        .find(|s| s.principal == "market_trader")
        .and_then(|s| s.queries.first())
    {
        let dir = absolute(&cli.state_dir).join("exports");
        let out = dir.join(format!(
            "enterprises-{}.parquet",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
        ));
        let req = crate::export::ExportRequest {
            principal: "market_trader".into(),
            purpose: Some("data_product".into()),
            recipient: "demo-buyer".into(),
            out: out.clone(),
            sql: q.sql.into(),
            expires: None,
        };
        let result = match std::fs::create_dir_all(&dir) {
            Ok(()) => crate::export::export(&ex, &req, &mut |_, _| {})
                .await
                .map_err(|e| e.to_string())
                .and_then(|_| {
                    crate::export::verify(&out, &ex.signer().public_key())
                        .map_err(|e| e.to_string())
                }),
            Err(e) => Err(format!("{}: {e}", dir.display())),
        };
        match result {
            Ok(m) => say!(
                "Export for recipient demo-buyer: {} ({} rows), manifest signed and verified (exchange export verify {}).\n",
                out.display(),
                m.body.rows,
                out.display()
            ),
            Err(e) => {
                failures += 1;
                println!("Export FAILED: {e}\n");
            }
        }
    }
    // Close the exchange (the log is sealed with a signed shutdown checkpoint), then verify
    // it as an auditor would.
    let (audit_dir, public) = (ex.audit().path().to_path_buf(), ex.signer().public_key());
    drop(ex);
    match crate::audit::verify(&audit_dir, &public) {
        Ok(s) => say!(
            "Audit log {}: {} records, hash chain and {} signed checkpoints verified{}.",
            audit_dir.display(),
            s.records,
            s.checkpoints,
            if s.sealed { ", closed cleanly" } else { "" }
        ),
        Err(e) => {
            failures += 1;
            say!("Audit log BROKEN: {e}");
        }
    }
    if failures > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

async fn repl(ex: &Exchange, principal: &str, purpose: Option<&str>) -> ExitCode {
    let session = match ex.session(principal, purpose) {
        Ok(s) => s,
        Err(e) => {
            complain!("{e}");
            return ExitCode::from(1);
        }
    };
    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(e) => e,
        Err(e) => {
            complain!("error: cannot start the line editor: {e}");
            return ExitCode::from(2);
        }
    };
    let history = ex.config().state_dir.join("history");
    let _ = editor.load_history(&history);
    say!(
        "exchange as {principal} ({}), purpose {}. \\d lists tables, \\d TABLE its columns, \\q quits.",
        session.principal.agency,
        session.purpose
    );
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            "exchange> "
        } else {
            "      ..> "
        };
        let line = match editor.readline(prompt) {
            Ok(l) => l,
            Err(rustyline::error::ReadlineError::Interrupted) => {
                buffer.clear();
                continue;
            }
            Err(_) => break,
        };
        let trimmed = line.trim();
        if buffer.is_empty() && trimmed.starts_with('\\') {
            let _ = editor.add_history_entry(trimmed);
            let mut parts = trimmed.split_whitespace();
            match (parts.next(), parts.next()) {
                (Some("\\q"), _) => break,
                (Some("\\d"), None) => {
                    for (name, spec) in &session.tables {
                        say!("  {name:<24} {}", spec.access.grant_ref);
                    }
                    if session
                        .principal
                        .roles
                        .iter()
                        .any(|r| r == crate::enforcement::AUDITOR_ROLE)
                    {
                        say!("  {:<24} the audit log", "audit.events");
                    }
                }
                (Some("\\d"), Some(table)) => {
                    match Exchange::visible_columns(&session, &table.to_lowercase()) {
                        Some(cols) => {
                            for c in cols {
                                say!(
                                    "  {:<20} {:<28} {}",
                                    c.name,
                                    c.data_type.to_string(),
                                    c.treatment
                                );
                            }
                        }
                        None => say!("table {table} is not found or not granted"),
                    }
                }
                _ => say!("commands: \\d, \\d TABLE, \\q"),
            }
            continue;
        }
        buffer.push_str(&line);
        buffer.push('\n');
        if !trimmed.ends_with(';') {
            continue;
        }
        let sql = std::mem::take(&mut buffer);
        let _ = editor.add_history_entry(sql.trim());
        let sql = sql.trim().trim_end_matches(';');
        match ex.execute(principal, purpose, sql).await {
            Ok(out) => {
                let mut stdout = std::io::stdout().lock();
                let _ = render(&mut stdout, &out.batches, Format::Table);
                say!("({} rows)", out.rows);
            }
            Err(e) => say!("{e}"),
        }
    }
    let _ = editor.save_history(&history);
    ExitCode::SUCCESS
}
