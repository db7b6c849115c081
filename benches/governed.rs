//! What governance costs: governed queries next to raw DataFusion, hand-written masking SQL
//! and DuckDB, measured side by side in one run.
//!
//! Run: `cargo bench --bench governed` (all workloads and scales), or with arguments after
//! `--`: `--workload demo|tpch`, `--scale small|large`, `--runs N`, `--tpch-large-sf F`,
//! `--demo-large-scale S`, `--query ID`, `--set key=value` (a DataFusion setting for the
//! `raw` and `hand` engines, to try one before it goes into `exchange::tuning`). Prints markdown tables and writes
//! `target/bench-governed.json`. For the DuckDB column, run `benches/setup-peers.sh` once
//! (a Python venv with the `duckdb` package under `target/bench-venv`); without it the
//! column is skipped with a note.
//!
//! Workloads (data generated once under `target/bench-data`, reused afterwards):
//! - demo city (scale 1 = 100,000 residents; large = scale 100, about 1 GB of Parquet):
//!   the showcase queries as their principals, and an export-style detail query;
//! - TPC-H (tpchgen, SF 0.1 and SF 1) under `benches/tpch` (a policy of the bench's own):
//!   a masked detail join, a 3-way join-aggregate with a group threshold, and a join on
//!   pseudonymised keys.
//!
//! Engines, each query in its own worker process (this binary with `--worker`, or
//! `benches/duckdb_worker.py`) so that peak RSS is per query and engine:
//! - `exchange`: `Exchange::execute` as the principal (plan, enforce, run, digest, audit);
//! - `raw`: DataFusion on the same files, the same SQL with raw columns and no policy,
//!   with the exchange's tuned settings (`exchange::tuning`);
//! - `df-defaults`: the same as `raw` with DataFusion's default settings;
//! - `hand`: DataFusion with hand-written SQL applying the same masks, row filter and
//!   group threshold with built-in functions; keyed pseudonyms (DataFusion has no HMAC)
//!   through the exchange's pseudonym function registered as a plain UDF, so that its
//!   result must equal the exchange's, which the bench checks;
//! - `duckdb`: DuckDB with the hand-written SQL (SHA-256 of a salted key for the
//!   pseudonym, truncated to the same 32 hex characters).
//!
//! Timing: rounds alternate the engines (rotating which goes first); the first round is
//! a warm-up; median of the remaining runs with min-max. Times are measured inside each
//! worker around planning plus execution plus collecting the whole result as Arrow.
//! Threads: DataFusion and DuckDB both use every core of the machine.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use exchange::{Exchange, ExchangeConfig};

#[path = "governed/data.rs"]
mod data;
#[path = "governed/queries.rs"]
mod queries;
#[path = "governed/worker.rs"]
mod worker;

use data::*;
use queries::*;
use worker::*;

type Error = Box<dyn std::error::Error + Send + Sync>;

const DEMO_SEED: u64 = 20261126;

/// `--set` settings, handed to the workers in `EXCHANGE_BENCH_SET`.
static SETTINGS: std::sync::OnceLock<String> = std::sync::OnceLock::new();

const ENGINES: &[&str] = &["exchange", "raw", "df-defaults", "hand", "duckdb"];

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    fn ask(&mut self, line: &str) -> Result<String, Error> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        let mut reply = String::new();
        if self.stdout.read_line(&mut reply)? == 0 {
            return Err("worker exited".into());
        }
        Ok(reply.trim().to_string())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn duckdb_python() -> Option<PathBuf> {
    let candidates = std::env::var_os("EXCHANGE_BENCH_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain([repo().join("target/bench-venv/bin/python")]);
    for python in candidates {
        let ok = Command::new(&python)
            .args(["-c", "import duckdb, pyarrow"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return Some(python);
        }
    }
    None
}

fn spawn(
    engine: &str,
    q: &Query,
    setup: &Setup,
    state: &Path,
    python: Option<&Path>,
) -> Result<Option<Worker>, Error> {
    let mut cmd = match engine {
        "duckdb" => {
            let (Some(python), Some(sql)) = (python, q.duck_sql()) else {
                return Ok(None);
            };
            let tables: BTreeMap<String, String> = raw_tables(setup)?.into_iter().collect();
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            let mut cmd = Command::new(python);
            cmd.arg(repo().join("benches/duckdb_worker.py"))
                .arg(threads.to_string())
                .arg(serde_json::to_string(&tables)?)
                .arg(sql);
            cmd
        }
        "hand" if q.hand_sql().is_none() => return Ok(None),
        _ => {
            let mut cmd = Command::new(std::env::current_exe()?);
            if let Some(settings) = SETTINGS.get() {
                cmd.env("EXCHANGE_BENCH_SET", settings);
            }
            cmd.arg("--worker")
                .arg(engine)
                .arg(q.id)
                .arg(&setup.config_dir)
                .arg(&setup.data_dir)
                .arg(&setup.key_dir)
                .arg(state.join(format!("{}-{engine}", q.id)));
            cmd
        }
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err("worker pipes".into());
    };
    Ok(Some(Worker {
        child,
        stdin,
        stdout: BufReader::new(stdout),
    }))
}

#[derive(Default, serde::Serialize)]
struct Measured {
    times: Vec<f64>,
    rows: Option<u64>,
    digest: Option<String>,
    peak_rss_mib: Option<f64>,
    error: Option<String>,
}

impl Measured {
    fn median(&self) -> Option<f64> {
        let mut v = self.times.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied()
    }
}

fn measure(
    q: &Query,
    setup: &Setup,
    engines: &[&str],
    runs: usize,
    python: Option<&Path>,
) -> Result<BTreeMap<String, Measured>, Error> {
    let state = tempfile::tempdir()?;
    let mut workers: Vec<(String, Worker)> = Vec::new();
    for e in engines {
        if let Some(w) = spawn(e, q, setup, state.path(), python)? {
            workers.push((e.to_string(), w));
        }
    }
    let mut results: BTreeMap<String, Measured> = BTreeMap::new();
    for round in 0..=runs {
        let n = workers.len();
        for i in 0..n {
            let (engine, w) = &mut workers[(i + round) % n];
            let m = results.entry(engine.clone()).or_default();
            if m.error.is_some() {
                continue;
            }
            let reply = w.ask("run")?;
            let mut parts = reply.splitn(4, ' ');
            match parts.next() {
                Some("ok") => {
                    let secs: f64 = parts.next().unwrap_or("0").parse()?;
                    let rows: u64 = parts.next().unwrap_or("0").parse()?;
                    let digest = parts.next().unwrap_or("-");
                    if round == 0 {
                        m.digest = Some(digest.to_string());
                        m.rows = Some(rows);
                    } else {
                        m.times.push(secs);
                    }
                }
                _ => m.error = Some(reply.trim_start_matches("err ").to_string()),
            }
        }
    }
    for (engine, w) in &mut workers {
        if let Ok(reply) = w.ask("quit")
            && let Some(kib) = reply.strip_prefix("rss ")
        {
            let m = results.entry(engine.clone()).or_default();
            m.peak_rss_mib = kib.trim().parse::<f64>().ok().map(|k| k / 1024.0);
        }
    }
    Ok(results)
}

fn fmt_time(m: Option<&Measured>) -> String {
    match m {
        None => "-".into(),
        Some(m) if m.error.is_some() => "error".into(),
        Some(m) => match m.median() {
            None => "-".into(),
            Some(t) => {
                let lo = m.times.iter().copied().fold(f64::MAX, f64::min);
                let hi = m.times.iter().copied().fold(0.0, f64::max);
                format!("{t:.3} ({lo:.3}-{hi:.3})")
            }
        },
    }
}

fn ratio(a: Option<&Measured>, b: Option<&Measured>) -> String {
    match (a.and_then(Measured::median), b.and_then(Measured::median)) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.first().map(String::as_str) == Some("--worker") {
        return runtime.block_on(worker(&args[1..]));
    }
    let mut workloads = vec![Workload::Demo, Workload::Tpch];
    let mut scales = vec!["small", "large"];
    let mut runs = 5usize;
    let mut tpch_large = 1.0f64;
    let mut demo_large = 100.0f64;
    let mut only: Option<String> = None;
    let mut settings: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--workload" => {
                workloads = match value()?.as_str() {
                    "demo" => vec![Workload::Demo],
                    "tpch" => vec![Workload::Tpch],
                    _ => return Err("--workload demo|tpch".into()),
                }
            }
            "--scale" => {
                scales = match value()?.as_str() {
                    "small" => vec!["small"],
                    "large" => vec!["large"],
                    _ => return Err("--scale small|large".into()),
                }
            }
            "--runs" => runs = value()?.parse()?,
            "--tpch-large-sf" => tpch_large = value()?.parse()?,
            "--demo-large-scale" => demo_large = value()?.parse()?,
            "--query" => only = Some(value()?),
            "--set" => settings.push(value()?),
            "--bench" => {}
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if !settings.is_empty() {
        let _ = SETTINGS.set(settings.join(";"));
        println!("raw and hand engines with: {}\n", settings.join(", "));
    }
    let python = duckdb_python();
    if python.is_none() {
        println!(
            "Note: DuckDB column skipped (no Python with duckdb and pyarrow; run \
             benches/setup-peers.sh or set EXCHANGE_BENCH_PYTHON).\n"
        );
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "{cores} cores; median of {runs} alternating runs after a warm-up (min-max), seconds.\n"
    );
    let mut json = Vec::new();
    for workload in &workloads {
        for scale in &scales {
            let setup = match (workload, *scale) {
                (Workload::Demo, "small") => prepare_demo(1.0)?,
                (Workload::Demo, _) => prepare_demo(demo_large)?,
                (Workload::Tpch, "small") => prepare_tpch(0.1)?,
                (Workload::Tpch, _) => prepare_tpch(tpch_large)?,
            };
            println!(
                "### {} ({:.0} MB of Parquet)\n",
                setup.label,
                setup.parquet_bytes as f64 / 1e6
            );
            println!(
                "| query | rows | exchange | raw DF | DF defaults | hand DF | DuckDB | ex/raw | ex/hand | ex/DuckDB | peak RSS MiB ex/raw/hand/DuckDB | same as hand |"
            );
            println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
            for q in QUERIES.iter().filter(|q| q.workload == *workload) {
                if only.as_deref().is_some_and(|o| o != q.id) {
                    continue;
                }
                let r = measure(q, &setup, ENGINES, runs, python.as_deref())?;
                let get = |e: &str| r.get(e);
                let rss = ["exchange", "raw", "hand", "duckdb"]
                    .iter()
                    .map(|e| {
                        get(e)
                            .and_then(|m| m.peak_rss_mib)
                            .map_or("-".into(), |v| format!("{v:.0}"))
                    })
                    .collect::<Vec<_>>()
                    .join("/");
                let same = match (get("exchange"), get("hand"), get("duckdb")) {
                    (Some(a), Some(h), d) if h.error.is_none() => {
                        let digest_ok = a.digest == h.digest;
                        let rows_ok = d.is_none_or(|d| d.rows == a.rows);
                        match (digest_ok, rows_ok) {
                            (true, true) => "yes".to_string(),
                            (false, _) => "NO: values differ".to_string(),
                            (true, false) => "NO: DuckDB row count".to_string(),
                        }
                    }
                    _ => "-".into(),
                };
                println!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    q.id,
                    get("exchange")
                        .and_then(|m| m.rows)
                        .map_or("-".into(), |r| r.to_string()),
                    fmt_time(get("exchange")),
                    fmt_time(get("raw")),
                    fmt_time(get("df-defaults")),
                    fmt_time(get("hand")),
                    fmt_time(get("duckdb")),
                    ratio(get("exchange"), get("raw")),
                    ratio(get("exchange"), get("hand")),
                    ratio(get("exchange"), get("duckdb")),
                    rss,
                    same
                );
                for (engine, m) in &r {
                    if let Some(e) = &m.error {
                        println!("|  | {engine} failed: {e} |||||||||||");
                    }
                }
                json.push(serde_json::json!({
                    "workload": setup.label, "query": q.id, "title": q.title,
                    "principal": q.principal, "engines": r,
                }));
            }
            println!();
        }
    }
    let out = repo().join("target/bench-governed.json");
    std::fs::write(&out, serde_json::to_string_pretty(&json)?)?;
    println!("written {}", out.display());
    Ok(())
}
