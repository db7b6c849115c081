//! Federated vs single-node: the demo showcase through a hub whose six agency nodes serve
//! on loopback, next to one exchange reading the same files, in one process and one run.
//!
//! `cargo bench --bench federation -- --scale 10 --runs 5`: the demo city at that scale
//! (generated once under `target/bench-data/demo-s<scale>`), each showcase query (the
//! auditor's, which read the audit log, left out) run `--runs` times alternately on both,
//! after one warm-up each. Prints a markdown table (medians, the ratio federated /
//! single-node, Arrow IPC bytes the hub received from nodes per query) and writes
//! `target/bench-federation.json`. Nodes run in this process: the ratio counts Flight
//! encoding, loopback gRPC and decoding, and the work federation moves (tokens at every
//! node for every row sent, joins on tokens at the hub), not a network.
//!
//! Then S3 vs local files, single-node: the same queries over the same files served by
//! s3s-fs on loopback (the server the tests use, `target/tools/bin/s3s-fs`; skipped when
//! absent), the first run and the median of the runs after.
//!
//! `--query TEXT` runs only the queries whose title contains TEXT, `--no-s3` skips the
//! second part (e.g. under `perf`), `--plans` prints each query's physical plan on both
//! sides first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use exchange::federation::{LocalNode, NodeSettings, bytes_received};
use exchange::{Exchange, ExchangeConfig};

type Error = Box<dyn std::error::Error>;

const DEMO_SEED: u64 = 20261126;

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

/// `--query TEXT` keeps the showcase queries whose title contains TEXT (e.g. to profile one).
fn selected(only: Option<&str>, title: &str) -> bool {
    only.is_none_or(|t| title.contains(t))
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v.get(v.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut scale = 10.0;
    let mut runs = 5usize;
    let (mut only, mut skip_s3, mut plans) = (None::<String>, false, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--scale" => scale = args.next().ok_or("--scale S")?.parse()?,
            "--runs" => runs = args.next().ok_or("--runs N")?.parse()?,
            "--query" => only = Some(args.next().ok_or("--query TEXT")?),
            "--no-s3" => skip_s3 = true,
            "--plans" => plans = true,
            "--bench" => {}
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let data_dir = data(scale)?;
    let state = tempfile::tempdir()?;
    let node_keys = state.path().join("node-keys");
    let hub_keys = state.path().join("hub-keys");
    exchange::keys::ensure(&node_keys)?;
    exchange::keys::ensure(&hub_keys)?;
    let hub_pub = std::fs::read_to_string(hub_keys.join("signing.pub"))?;
    let config = |dir: &str, keys: &Path| {
        ExchangeConfig::new(repo(), data_dir.clone(), state.path().join(dir))
            .with_key_dir(keys.to_path_buf())
    };
    let single = Exchange::open(config("single", &node_keys))?;
    let mut agencies: Vec<String> = single
        .governance()
        .catalog
        .datasets()
        .iter()
        .map(|d| d.agency.clone())
        .collect();
    agencies.dedup();
    let mut running = Vec::new();
    let mut nodes = BTreeMap::new();
    for a in &agencies {
        let mut c = config(&format!("node-{a}"), &node_keys);
        c.federation.hubs = BTreeMap::from([("hub".to_string(), hub_pub.trim().to_string())]);
        let node = LocalNode::start(Exchange::open(c)?, a).await?;
        nodes.insert(
            a.clone(),
            NodeSettings {
                url: node.url.clone(),
            },
        );
        running.push(node);
    }
    let mut hub_config = config("hub", &hub_keys);
    hub_config.federation.nodes = nodes;
    let hub = Exchange::open(hub_config)?;

    println!(
        "## Federated vs single-node: demo showcase, scale {scale} ({} residents), {runs} runs, medians\n",
        scale * 100_000.0
    );
    println!("| query | single-node ms | federated ms | federated / single | MiB from nodes |");
    println!("|---|---:|---:|---:|---:|");
    let mut json = Vec::new();
    for show in exchange::demo::SHOWCASE {
        for q in show.queries {
            if q.sql.contains("audit.events") || !selected(only.as_deref(), q.title) {
                continue;
            }
            let (p, purpose) = (show.principal, Some(show.purpose));
            if plans {
                for (name, ex) in [("single", &single), ("hub", &hub)] {
                    let plan = ex.plan(p, purpose, q.sql).await?;
                    println!(
                        "--- {name}\n{}",
                        datafusion::physical_plan::displayable(plan.physical.as_ref())
                            .indent(false)
                    );
                }
            }
            // Warm-up: sessions built, footers cached, on both.
            single.execute(p, purpose, q.sql).await?;
            hub.execute(p, purpose, q.sql).await?;
            let (mut s_times, mut f_times, mut bytes) = (Vec::new(), Vec::new(), 0u64);
            for _ in 0..runs {
                let t = Instant::now();
                single.execute(p, purpose, q.sql).await?;
                s_times.push(t.elapsed());
                let before = bytes_received();
                let t = Instant::now();
                hub.execute(p, purpose, q.sql).await?;
                f_times.push(t.elapsed());
                bytes = bytes_received() - before;
            }
            let (s, f) = (median(s_times), median(f_times));
            let mib = bytes as f64 / (1 << 20) as f64;
            println!(
                "| {} | {s:.1} | {f:.1} | {:.2} | {mib:.1} |",
                q.title,
                f / s
            );
            json.push(serde_json::json!({
                "principal": p, "query": q.title, "single_ms": s, "federated_ms": f,
                "ratio": f / s, "bytes_from_nodes": bytes,
            }));
        }
    }
    drop(hub);
    drop(single);
    for node in running {
        node.stop().await?;
    }
    if !skip_s3 {
        s3_vs_local(&data_dir, runs, only.as_deref(), &mut json).await?;
    }
    let out = repo().join("target/bench-federation.json");
    std::fs::write(&out, serde_json::to_string_pretty(&json)?)?;
    println!("\nwritten {}", out.display());
    Ok(())
}

/// The S3 server the tests use (target/tools/bin/s3s-fs, installed by `.ci/run`), if present.
fn s3_server() -> Option<PathBuf> {
    std::env::var_os("EXCHANGE_S3_SERVER")
        .map(PathBuf::from)
        .or_else(|| Some(repo().join("target/tools/bin/s3s-fs")))
        .filter(|p| p.exists())
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), target)?;
        }
    }
    Ok(())
}

/// Put every file under `dir` into `store`, under `prefix`.
async fn upload_dir(
    store: &dyn object_store::ObjectStore,
    dir: &Path,
    prefix: &str,
) -> Result<(), Error> {
    use object_store::ObjectStoreExt;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = format!("{prefix}{}", e.file_name().to_string_lossy());
        if e.path().is_dir() {
            Box::pin(upload_dir(store, &e.path(), &format!("{name}/"))).await?;
        } else {
            let bytes = std::fs::read(e.path())?;
            store
                .put(&object_store::path::Path::from(name), bytes.into())
                .await?;
        }
    }
    Ok(())
}

/// S3 (s3s-fs on loopback, signatures checked) vs local files, single-node: the first run of
/// each query (footers and listings fetched) and the median of the runs after.
async fn s3_vs_local(
    data_dir: &Path,
    runs: usize,
    only: Option<&str>,
    json: &mut Vec<serde_json::Value>,
) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let Some(server) = s3_server() else {
        println!("\n(S3 vs local skipped: no s3s-fs; `.ci/run` installs it into target/tools)");
        return Ok(());
    };
    let work = tempfile::tempdir()?;
    // The bucket is filled through the S3 API (below), so that the server stores each
    // object's ETag as S3 does; files copied in would have it recomputed per request.
    std::fs::create_dir_all(work.path().join("bucket/city"))?;
    let config_dir = work.path().join("config");
    copy_dir(&repo().join("schemas"), &config_dir.join("schemas"))?;
    copy_dir(&repo().join("policies"), &config_dir.join("policies"))?;
    for e in std::fs::read_dir(config_dir.join("schemas"))? {
        let path = e?.path();
        let text = std::fs::read_to_string(&path)?;
        std::fs::write(
            &path,
            text.replace("location = \"", "location = \"s3://city/"),
        )?;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let (access, secret) = ("bench-access", "bench-secret-4711");
    let mut child = std::process::Command::new(server)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", access, "--secret-key", secret])
        .arg(work.path().join("bucket"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let upload = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name("city")
        .with_endpoint(format!("http://127.0.0.1:{port}"))
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id(access)
        .with_secret_access_key(secret)
        .build()?;
    upload_dir(&upload, data_dir, "").await?;
    let creds = work.path().join("creds.toml");
    std::fs::write(
        &creds,
        format!("access_key_id = \"{access}\"\nsecret_access_key = \"{secret}\"\n"),
    )?;
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600))?;
    let keys = work.path().join("keys");
    exchange::keys::ensure(&keys)?;
    let mut remote = ExchangeConfig::new(
        config_dir,
        PathBuf::from("/nonexistent"),
        work.path().join("s3-state"),
    )
    .with_key_dir(keys.clone());
    let agencies = [
        "police", "civil", "health", "hrss", "hotline", "market", "trade",
    ];
    for a in agencies {
        remote.stores.insert(
            a.to_string(),
            exchange::catalog::StoreSettings {
                endpoint: Some(format!("http://127.0.0.1:{port}")),
                credentials_file: Some(creds.clone()),
                ..Default::default()
            },
        );
    }
    let s3 = Exchange::open(remote)?;
    let local = Exchange::open(
        ExchangeConfig::new(
            repo(),
            data_dir.to_path_buf(),
            work.path().join("local-state"),
        )
        .with_key_dir(keys),
    )?;
    println!(
        "\n## S3 (s3s-fs on loopback) vs local files, single-node, {runs} runs after the first, medians\n"
    );
    println!("| query | local ms | S3 first run ms | S3 ms | S3 / local |");
    println!("|---|---:|---:|---:|---:|");
    for show in exchange::demo::SHOWCASE {
        for q in show.queries {
            if q.sql.contains("audit.events") || !selected(only, q.title) {
                continue;
            }
            let (p, purpose) = (show.principal, Some(show.purpose));
            let t = Instant::now();
            s3.execute(p, purpose, q.sql).await?;
            let first = t.elapsed().as_secs_f64() * 1000.0;
            local.execute(p, purpose, q.sql).await?;
            let (mut l_times, mut s_times) = (Vec::new(), Vec::new());
            for _ in 0..runs {
                let t = Instant::now();
                local.execute(p, purpose, q.sql).await?;
                l_times.push(t.elapsed());
                let t = Instant::now();
                s3.execute(p, purpose, q.sql).await?;
                s_times.push(t.elapsed());
            }
            let (l, s) = (median(l_times), median(s_times));
            println!(
                "| {} | {l:.1} | {first:.1} | {s:.1} | {:.2} |",
                q.title,
                s / l
            );
            json.push(serde_json::json!({
                "comparison": "s3_vs_local", "principal": p, "query": q.title,
                "local_ms": l, "s3_first_ms": first, "s3_ms": s, "ratio": s / l,
            }));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}
