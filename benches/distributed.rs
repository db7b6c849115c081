//! Scale-out: TPC-H under the governed policy in one process, next to a hub whose plans run
//! on 2 and on 4 workers of the same machine, in one run (issue 15).
//!
//! `cargo bench --bench distributed -- --sf 1 --runs 3`: TPC-H at that scale factor
//! (generated once under `target/bench-data/tpch-sf<F>`, as the governed bench does), the
//! policy of `benches/tpch`, the queries `tpch-join-agg`, `tpch-detail` and
//! `tpch-pseudonym-join` of the governed bench. Each configuration runs each query `--runs`
//! times after a warm-up, alternating; the workers run in this process on loopback, so all
//! of them share this machine's cores with the hub: the ratio measures what distribution
//! costs (plan encoding, Arrow Flight between stages, tokens compared instead of raw keys),
//! not a speedup. Per query and configuration it prints the median, the ratio to one
//! process, the stages, and the rows and Arrow bytes that crossed network boundaries
//! (datafusion-distributed's metrics), and writes `target/bench-distributed.json`.
//! `--compression none|lz4|zstd` (default lz4) sets how data crosses between stages;
//! `--query ID` runs one query, `--workers 2,4` chooses the hubs, `--plans` prints each
//! configuration's plan (with the metrics of its last run).
//! A statement that does not end within `STALL`, or whose workers' metrics do not arrive
//! within it after the result, is reported (which of the two) instead of waited for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::metrics::MetricValue;
use datafusion_distributed::{DistributedMetricsFormat, NetworkBoundaryExt};
use exchange::distributed::LocalWorker;
use exchange::{Exchange, ExchangeConfig};
use futures::StreamExt;

#[path = "governed/data.rs"]
#[allow(dead_code)]
mod data;
#[path = "governed/queries.rs"]
#[allow(dead_code)]
mod queries;

use data::*;
use queries::*;

type Error = Box<dyn std::error::Error + Send + Sync>;

const DEMO_SEED: u64 = 20261126;
/// How long a statement (or the metrics after it) may go without finishing before the run
/// is reported as stalled rather than left hanging.
const STALL: Duration = Duration::from_secs(120);
const MEASURED: &[&str] = &["tpch-join-agg", "tpch-detail", "tpch-pseudonym-join"];

fn config(setup: &Setup, state: &Path) -> ExchangeConfig {
    ExchangeConfig::new(
        setup.config_dir.clone(),
        setup.data_dir.clone(),
        state.to_path_buf(),
    )
    .with_key_dir(setup.key_dir.clone())
}

/// Rows and Arrow bytes that crossed the plan's network boundaries, and its stages.
#[derive(Default, Clone, Copy)]
struct Moved {
    stages: usize,
    rows: usize,
    bytes: usize,
}

/// What moved in `plan`, a plan carrying its run's metrics (as
/// `rewrite_distributed_plan_with_metrics` gives it).
fn moved(plan: Arc<dyn ExecutionPlan>) -> Moved {
    let mut m = Moved::default();
    let mut stack = vec![plan];
    while let Some(p) = stack.pop() {
        if p.is_network_boundary() {
            m.stages += 1;
            if let Some(metrics) = p.metrics() {
                m.rows += metrics.output_rows().unwrap_or(0);
                for metric in metrics.iter() {
                    match metric.value() {
                        MetricValue::Count { name, count }
                            if name.as_ref() == "bytes_transferred" =>
                        {
                            m.bytes += count.value()
                        }
                        MetricValue::Custom { name, value }
                            if name.as_ref() == "bytes_transferred" =>
                        {
                            m.bytes += value.as_usize()
                        }
                        _ => {}
                    }
                }
            }
        }
        stack.extend(p.children().into_iter().cloned());
    }
    m
}

/// One run: its time, rows, what moved between stages, and (if `show`) its plan with the
/// run's metrics, rendered after the clock stopped.
async fn run(
    ex: &Exchange,
    q: &Query,
    show: bool,
) -> Result<(Duration, u64, Moved, Option<String>), Error> {
    let started = Instant::now();
    let mut stream = ex.start(q.principal, Some(q.purpose), q.governed).await?;
    let plan = stream.plan();
    let mut rows = 0u64;
    let drained = tokio::time::timeout(STALL, async {
        while let Some(b) = stream.next().await {
            let b: RecordBatch = b?;
            rows += b.num_rows() as u64;
        }
        Ok::<_, Error>(())
    })
    .await;
    match drained {
        Ok(r) => r?,
        Err(_) => {
            return Err(format!(
                "{}: no end of the result after {STALL:?} ({rows} rows read): the statement stalled",
                q.id
            )
            .into());
        }
    }
    let elapsed = started.elapsed();
    let Some(plan) = plan else {
        return Ok((elapsed, rows, Moved::default(), None));
    };
    let plan = match tokio::time::timeout(
        STALL,
        datafusion_distributed::rewrite_distributed_plan_with_metrics(
            plan,
            DistributedMetricsFormat::Aggregated,
        ),
    )
    .await
    {
        Ok(Ok(plan)) => plan,
        Ok(Err(e)) => {
            eprintln!("{}: no metrics from the workers: {e}", q.id);
            return Ok((elapsed, rows, Moved::default(), None));
        }
        Err(_) => {
            eprintln!(
                "{}: the workers' metrics did not arrive within {STALL:?} after the result",
                q.id
            );
            return Ok((elapsed, rows, Moved::default(), None));
        }
    };
    let shown = show.then(|| datafusion_distributed::display_plan_ascii(plan.as_ref(), true));
    Ok((elapsed, rows, moved(plan), shown))
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v.get(v.len() / 2).map_or(0.0, |d| d.as_secs_f64())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut sf = 1.0;
    let mut runs = 3usize;
    let mut counts = vec![2usize, 4];
    let mut compression = "lz4".to_string();
    let mut only: Option<String> = None;
    let mut plans = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--sf" => sf = args.next().ok_or("--sf F")?.parse()?,
            "--runs" => runs = args.next().ok_or("--runs N")?.parse()?,
            "--workers" => {
                counts = args
                    .next()
                    .ok_or("--workers 2,4")?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--compression" => compression = args.next().ok_or("--compression lz4|zstd|none")?,
            "--query" => only = Some(args.next().ok_or("--query ID")?),
            "--plans" => plans = true,
            "--bench" => {}
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let setup = prepare_tpch(sf)?;
    let state = tempfile::tempdir()?;
    let keys = state.path().join("keys");

    // Configurations: one process, then a hub per worker count (each worker its own
    // signing key and the hub's secret).
    let mut names = vec!["1 process".to_string()];
    let single = Exchange::open(config(&setup, &state.path().join("single")))?;
    let mut exchanges = vec![single];
    let mut workers: Vec<LocalWorker> = Vec::new();
    let hub_pub = exchange::keys::PublicKey::read(&setup.key_dir.join("signing.pub"))?.to_hex();
    for &n in &counts {
        let mut urls = Vec::new();
        let mut peers = Vec::new();
        for i in 0..n {
            let dir = keys.join(format!("w{n}-{i}"));
            exchange::keys::ensure(&dir)?;
            std::fs::copy(setup.key_dir.join("secret.key"), dir.join("secret.key"))?;
            peers.push(exchange::keys::PublicKey::read(&dir.join("signing.pub"))?.to_hex());
        }
        for i in 0..n {
            let mut c = config(&setup, &state.path().join(format!("w{n}-{i}")));
            c.key_dir = keys.join(format!("w{n}-{i}"));
            c.distributed.hub = Some(hub_pub.clone());
            c.distributed.peers = peers.clone();
            let w = LocalWorker::start(c).await?;
            urls.push(w.url.clone());
            workers.push(w);
        }
        let mut c = config(&setup, &state.path().join(format!("hub{n}")));
        c.distributed.workers = urls;
        c.distributed.compression = Some(compression.clone());
        exchanges.push(Exchange::open(c)?);
        names.push(format!("hub + {n} workers"));
    }

    println!(
        "# Scale-out: TPC-H SF {sf} ({:.0} MB of Parquet), governed, {runs} runs, {compression} between stages\n",
        setup.parquet_bytes as f64 / 1e6
    );
    println!(
        "| query | configuration | rows | median s | / 1 process | stages | rows between stages | MB between stages |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut json = BTreeMap::new();
    for id in MEASURED
        .iter()
        .filter(|id| only.as_deref().is_none_or(|o| o == **id))
    {
        let Some(q) = QUERIES.iter().find(|q| q.id == *id) else {
            return Err(format!("no query {id}").into());
        };
        let mut times: Vec<Vec<Duration>> = vec![Vec::new(); exchanges.len()];
        let mut last: Vec<(u64, Moved, Option<String>)> =
            vec![(0, Moved::default(), None); exchanges.len()];
        for ex in &exchanges {
            run(ex, q, false).await?; // warm-up
        }
        for _ in 0..runs {
            for (i, ex) in exchanges.iter().enumerate() {
                let (t, rows, m, shown) = run(ex, q, plans).await?;
                times[i].push(t);
                // A run whose workers' metrics did not come keeps the previous run's figures.
                let m = if m.stages == 0 { last[i].1 } else { m };
                last[i] = (rows, m, shown);
            }
        }
        if plans {
            for ((_, _, shown), name) in last.iter().zip(&names) {
                eprintln!(
                    "## {id}, {name}\n{}",
                    shown.as_deref().unwrap_or("(no plan)")
                );
            }
        }
        let base = median(times[0].clone());
        for (i, name) in names.iter().enumerate() {
            let med = median(times[i].clone());
            let (rows, m, _) = &last[i];
            println!(
                "| {id} | {name} | {rows} | {med:.3} | {:.2} | {} | {} | {:.1} |",
                med / base,
                m.stages,
                m.rows,
                m.bytes as f64 / 1e6
            );
            json.insert(
                format!("{id}/{name}"),
                serde_json::json!({
                    "median_s": med, "ratio": med / base, "rows": rows,
                    "stages": m.stages, "rows_moved": m.rows, "bytes_moved": m.bytes,
                }),
            );
        }
    }
    let out: PathBuf = repo().join("target/bench-distributed.json");
    std::fs::write(&out, serde_json::to_string_pretty(&json)?)?;
    eprintln!("wrote {}", out.display());
    for w in workers {
        w.stop().await;
    }
    Ok(())
}
