//! The command line's arguments and subcommands (clap).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::demo;

/// A governed, federated SQL exchange for cross-agency data sharing.
#[derive(Debug, Parser)]
#[command(name = "exchange", version, about)]
pub struct Cli {
    /// Configuration file [default: ./exchange.toml when present]; flags override its keys.
    #[arg(long, global = true, env = "EXCHANGE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory holding schemas/ and policies/ [default: paths.config_dir, else .].
    #[arg(long, global = true, env = "EXCHANGE_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// Root of relative dataset locations [default: paths.data_root, else demo-data].
    #[arg(long, global = true, env = "EXCHANGE_DATA_ROOT")]
    pub data_root: Option<PathBuf>,
    /// Directory of the audit log and REPL history [default: paths.state_dir, else .exchange].
    #[arg(long, global = true, env = "EXCHANGE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Directory of the keys [default: paths.key_dir, else <config-dir>/keys].
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
        /// Start one agency node per agency and a hub on loopback ports, run the showcase
        /// through the hub and compare every result with single-node mode.
        #[arg(long)]
        federated: bool,
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
        /// Address to listen on; port 0: any free port, printed on start [default: serve.listen, else 127.0.0.1:50051].
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// PEM certificate chain, for TLS [default: serve.tls_cert].
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key, for TLS [default: serve.tls_key].
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Queries running at once, at most half of them (rounded up) one principal's; more wait up to --queue-wait, then get RESOURCE_EXHAUSTED [default: serve.max_concurrent, else 8].
        #[arg(long)]
        max_concurrent: Option<usize>,
        /// Seconds an excess query waits for a slot [default: serve.queue_wait_secs, else 10].
        #[arg(long)]
        queue_wait: Option<u64>,
        /// Seconds a query may run, its client's reading included; DEADLINE_EXCEEDED after [default: serve.query_timeout_secs, else 300].
        #[arg(long)]
        query_timeout: Option<u64>,
        /// Memory limit of each query, in MiB [default: serve.memory_limit_mib, else 2048].
        #[arg(long)]
        memory_limit_mib: Option<usize>,
        /// Largest result sent to a client, in MiB of Arrow data: a larger one is cut [default: serve.max_result_mib, else 4096].
        #[arg(long)]
        max_result_mib: Option<usize>,
        /// Seconds a login's bearer token stays valid, at most a week [default: serve.token_ttl_secs, else 3600].
        #[arg(long)]
        token_ttl: Option<u64>,
        /// Seconds a started statement waits for its DoGet before it is dropped, recorded cancelled [default: serve.result_ttl_secs, else 600].
        #[arg(long)]
        result_ttl: Option<u64>,
        /// Also serve the Postgres wire protocol (psql, DBeaver, psycopg...) on this address; port 0: any free port, printed on start [default: serve.pg_listen, else off].
        #[arg(long)]
        pg_listen: Option<std::net::SocketAddr>,
        /// Also serve the web console (auditors, stewards, analysts; log in with a password) on this address; port 0: any free port, printed on start [default: serve.http_listen, else off].
        #[arg(long)]
        http_listen: Option<std::net::SocketAddr>,
        /// Seconds between looks at schemas/ and policies/ for changes to reload; 0: reload on SIGHUP or `exchange policy reload` only [default: serve.watch_policies_secs, else 2].
        #[arg(long)]
        watch_policies: Option<u64>,
    },
    /// Serve one agency's tables to the hubs pinned in [federation.hubs] (an agency node),
    /// until Ctrl-C or SIGTERM.
    Node {
        /// The agency whose tables this node serves.
        #[arg(long)]
        agency: String,
        /// Address to listen on; port 0: any free port, printed on start.
        #[arg(long, default_value = "127.0.0.1:50061")]
        listen: std::net::SocketAddr,
    },
    /// Run plan fragments of the hub named in [distributed] hub (a scale-out worker),
    /// until Ctrl-C or SIGTERM.
    Worker {
        /// Address to listen on; port 0: any free port, printed on start.
        #[arg(long, default_value = "127.0.0.1:50071")]
        listen: std::net::SocketAddr,
        /// The address the hub and other workers reach this worker at, as the hub lists
        /// it in [distributed] workers [default: http://<listen>].
        #[arg(long)]
        url: Option<String>,
    },
    /// Print the effective configuration (exchange.toml, then environment and flags).
    Config,
    /// What a principal has spent of its privacy budgets this period (tables it reads under
    /// differential privacy); works while a server runs
    Budget {
        /// The principal.
        #[arg(long = "as")]
        principal: String,
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
    /// Print this node's X25519 transport public key (created on first use), to which
    /// other nodes seal domain keys.
    Transport,
    /// Keys of identity domains (join keys and pseudonyms), held by the agency nodes of a
    /// domain and never by the hub.
    Domain {
        /// What to do.
        #[command(subcommand)]
        command: DomainCommand,
    },
}

/// `exchange keys domain ...`: the key ceremony.
#[derive(Debug, Subcommand)]
pub enum DomainCommand {
    /// Create the first key of a domain on this node.
    Create {
        /// The domain (`person`, `enterprise`...).
        domain: String,
    },
    /// Make a new version of a domain's key (the old one is archived); hand it to the
    /// domain's other nodes with `export`/`import`.
    Rotate {
        /// The domain.
        domain: String,
    },
    /// Seal a domain's key to another node's transport public key.
    Export {
        /// The domain.
        domain: String,
        /// The other node's `transport.pub` (a file, or its 64 hex digits).
        #[arg(long)]
        to: String,
        /// Write the sealed key here.
        #[arg(long)]
        out: PathBuf,
    },
    /// Open a sealed domain key with this node's transport key and install it, if it is
    /// signed by the node named with `--from`.
    Import {
        /// The sealed key file.
        file: PathBuf,
        /// The sending node's `signing.pub` (`exchange keys public` there), obtained from
        /// it by a channel you trust: anyone can seal a key to this node's public
        /// transport key, only the named node's signature makes it one to install.
        #[arg(long)]
        from: PathBuf,
    },
    /// The domains with keys of their own here, and their versions.
    List,
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
    /// Ask the running exchange of this configuration (serve or node) to reload schemas
    /// and policies, and tell what it did: exit 0 applied or unchanged, 1 rejected (the
    /// version in force stays), 2 no exchange running or no answer.
    Reload {
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 30)]
        wait: u64,
    },
    /// What a policy change does, per principal, purpose, table and column: gained, lost
    /// or changed, newly exposed plain PII and new identity linkages first. Exit 1 when
    /// the change does what --fail-on names, 2 on errors.
    Diff {
        /// The old version: a directory holding schemas/ and policies/, or a git revision
        /// of the config dir (HEAD, main, a1b2c3d...).
        old: String,
        /// The new version [default: the config dir as it is].
        new: Option<String>,
        /// Output.
        #[arg(long, value_enum, default_value_t = DiffFormat::Text)]
        format: DiffFormat,
        /// When to exit 1 (for CI).
        #[arg(long, value_enum, default_value_t = FailOn::Exposure)]
        fail_on: FailOn,
        /// The day both versions are resolved on (grants expire) [default: today].
        #[arg(long)]
        on: Option<chrono::NaiveDate>,
    },
}

/// Output of `exchange policy diff`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DiffFormat {
    /// One line per change.
    Text,
    /// A markdown table, for a pull-request comment.
    Markdown,
}

/// When `exchange policy diff` exits 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailOn {
    /// Newly exposed plain personal information or a new identity linkage.
    Exposure,
    /// Anything that widens what a principal sees.
    Widening,
    /// Any change.
    Any,
    /// Never (report only).
    Never,
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
    /// Pair a hub's log with its nodes' logs: report node requests no hub statement
    /// explains, and hub statements a node has no record of. Exit 1 if any.
    Reconcile {
        /// The hub's audit log directory.
        hub_log: PathBuf,
        /// Nodes' audit log directories.
        #[arg(required = true)]
        node_logs: Vec<PathBuf>,
        /// The hub's public key: node records naming another signing key are unexplained too.
        #[arg(long)]
        hub_key: Option<PathBuf>,
    },
}
