//! A differentially private aggregate next to the same aggregate under a plain group
//! threshold, in one process and one run.
//!
//! `cargo bench --bench privacy -- --scale 10 --runs 7` (`--query ID` for one query, e.g.
//! under a profiler): the demo city at that scale
//! (generated once under `target/bench-data/demo-s<scale>`). The statistician of the demo
//! reads health.visits twice over: under the repository's grant `visits-civil-statistics-dp`
//! (noise, contribution bounds, the ledger charged and synced per query; its budget raised
//! so the runs do not exhaust it) and under the same grant without `[grant.privacy]` (a
//! plain `min_group = 5` threshold). Each query runs `--runs` times alternately on both,
//! after one warm-up each. Prints a markdown table (medians, the ratio) and writes
//! `target/bench-privacy.json`. Target: DP / threshold <= 1.3 at scale 10.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use exchange::{Exchange, ExchangeConfig};

type Error = Box<dyn std::error::Error>;

const DEMO_SEED: u64 = 20261126;
const WHO: &str = "civil_statistician";
const WHY: &str = "elderly_care_planning";

const QUERIES: &[(&str, &str)] = &[
    ("count", "SELECT count(*) FROM health.visits"),
    (
        "by-hospital",
        "SELECT hospital, count(*) AS visits, avg(cost) AS avg_cost FROM health.visits GROUP BY hospital",
    ),
    (
        "by-year-chronic",
        "SELECT visit_date, chronic, count(*) AS visits, sum(cost) AS cost FROM health.visits GROUP BY visit_date, chronic",
    ),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn data(scale: f64) -> Result<PathBuf, Error> {
    let dir = repo().join(format!("target/bench-data/demo-s{scale}"));
    if !dir.join(".complete").exists() {
        eprintln!(
            "generating the demo city at scale {scale} in {}",
            dir.display()
        );
        let _ = std::fs::remove_dir_all(&dir);
        exchange::demo::generate(&dir, scale, DEMO_SEED)?;
        std::fs::write(dir.join(".complete"), "")?;
    }
    Ok(dir)
}

/// The repository's schemas and policies in `to`, the health grants file rewritten by `edit`.
fn config_copy(to: &Path, edit: impl Fn(&str) -> String) -> Result<(), Error> {
    for dir in ["schemas", "policies", "policies/grants"] {
        std::fs::create_dir_all(to.join(dir))?;
        for e in std::fs::read_dir(repo().join(dir))? {
            let e = e?;
            if e.path().is_file() {
                std::fs::copy(e.path(), to.join(dir).join(e.file_name()))?;
            }
        }
    }
    let grants = to.join("policies/grants/health.toml");
    let text = std::fs::read_to_string(&grants)?;
    std::fs::write(&grants, edit(&text))?;
    Ok(())
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v.get(v.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut scale = 10.0;
    let mut runs = 7usize;
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--scale" => scale = args.next().ok_or("--scale S")?.parse()?,
            "--runs" => runs = args.next().ok_or("--runs N")?.parse()?,
            "--query" => only = Some(args.next().ok_or("--query ID")?),
            "--bench" => {}
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let data_dir = data(scale)?;
    let work = tempfile::tempdir()?;
    let (dp_dir, plain_dir) = (work.path().join("dp"), work.path().join("plain"));
    config_copy(&dp_dir, |t| {
        t.replacen("budget = 10.0", "budget = 1000.0", 1)
            .replacen("cap = 40.0", "cap = 1000.0", 1)
    })?;
    config_copy(&plain_dir, |t| {
        // The same grant, its [grant.privacy] table left out: a plain threshold.
        let mut out = String::new();
        let mut skipping = false;
        for line in t.lines() {
            if line.starts_with("[grant.privacy]") {
                skipping = true;
                continue;
            }
            if skipping && (line.starts_with('[') || line.trim().is_empty()) {
                skipping = false;
            }
            if !skipping {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    })?;
    let open = |config: &Path, state: &str| -> Result<Exchange, Error> {
        let keys = work.path().join("keys");
        exchange::keys::ensure(&keys)?;
        Ok(Exchange::open(
            ExchangeConfig::new(
                config.to_path_buf(),
                data_dir.clone(),
                work.path().join(state),
            )
            .with_key_dir(keys),
        )?)
    };
    let dp = open(&dp_dir, "dp-state")?;
    let plain = open(&plain_dir, "plain-state")?;
    println!("\nDifferential privacy vs a plain threshold, demo city scale {scale}, {runs} runs\n");
    println!("| query | threshold ms | DP ms | DP / threshold |");
    println!("|---|---:|---:|---:|");
    let mut json = Vec::new();
    for (id, sql) in QUERIES {
        if only.as_deref().is_some_and(|o| o != *id) {
            continue;
        }
        dp.execute(WHO, Some(WHY), sql).await?;
        plain.execute(WHO, Some(WHY), sql).await?;
        let (mut t_dp, mut t_plain) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let t = Instant::now();
            plain.execute(WHO, Some(WHY), sql).await?;
            t_plain.push(t.elapsed());
            let t = Instant::now();
            dp.execute(WHO, Some(WHY), sql).await?;
            t_dp.push(t.elapsed());
        }
        let (p, d) = (median(t_plain), median(t_dp));
        println!("| {id} | {p:.1} | {d:.1} | {:.2} |", d / p.max(1e-9));
        json.push(serde_json::json!({
            "query": id, "threshold_ms": p, "dp_ms": d, "ratio": d / p.max(1e-9),
        }));
    }
    let out = repo().join("target/bench-privacy.json");
    std::fs::write(&out, serde_json::to_string_pretty(&json)?)?;
    println!("\nwritten {}", out.display());
    Ok(())
}
