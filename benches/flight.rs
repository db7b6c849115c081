//! Flight SQL delivery next to in-process collection, in the same run.
//!
//! Run: `cargo bench --bench flight` (prints a markdown table, writes
//! `target/bench-flight.json`). Generates the demo city at scale 1 (100,000 residents) in a
//! temporary directory, starts `exchange serve` in-process on a loopback port, and runs, as
//! police_officer, a query whose result is over 1 GB of Arrow data: in-process streamed
//! (`Exchange::start`, batches dropped as they come) and collected (`Exchange::execute`),
//! and through the arrow-flight Flight SQL client (GetFlightInfo then DoGet of every
//! endpoint). Median of 3 runs after a warm-up, the paths rotating; the peak RSS of each
//! path is the process's high-water mark, reset before it (`/proc/self/clear_refs`): for
//! Flight it holds server and client. Targets: Flight >= 90% of in-process streamed
//! throughput, peak RSS while streaming <= 512 MiB.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_flight::sql::client::FlightSqlServiceClient;
use exchange::server::{Limits, ServeOptions};
use exchange::{Exchange, ExchangeConfig};
use futures::{StreamExt, TryStreamExt};

const COPIES: usize = 80;
const RUNS: usize = 3;

fn config(root: &std::path::Path, state: &str) -> ExchangeConfig {
    ExchangeConfig::new(root.join("config"), root.join("data"), root.join(state))
        .with_key_dir(root.join("keys"))
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), target)?;
        }
    }
    Ok(())
}

/// Reset this process's peak RSS (VmHWM) to its current RSS (Linux).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak RSS (VmHWM) since the last reset, in MiB.
fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    copy_dir(&repo.join("schemas"), &root.join("config/schemas"))?;
    copy_dir(&repo.join("policies"), &root.join("config/policies"))?;
    exchange::server::set_principal_field(
        &root.join("config/policies/principals.toml"),
        "police_officer",
        "password_hash",
        &format!(
            "\"{}\"",
            exchange::server::hash_password("bench-password", 1000)?
        ),
    )?;
    exchange::keys::init(&root.join("keys"))?;
    let residents = exchange::demo::generate(&root.join("data"), 1.0, 42)?;

    let values: Vec<String> = (1..=COPIES).map(|i| format!("({i})")).collect();
    let sql = format!(
        "SELECT r.*, v.n FROM police.residents r CROSS JOIN (VALUES {}) AS v(n)",
        values.join(", ")
    );
    let (principal, purpose) = ("police_officer", "law_enforcement");

    let local = Exchange::open(config(root, "state-local"))?;
    let server = Exchange::open(config(root, "state-server"))?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let options = ServeOptions {
        listen: "127.0.0.1:0".parse()?,
        tls: None,
        limits: Limits {
            max_concurrent: 4,
            queue_wait: Duration::from_secs(10),
            query_timeout: Duration::from_secs(600),
            result_ttl: Duration::from_secs(600),
            max_result_bytes: 16 << 30,
            ..Limits::default()
        },
        token_ttl: Duration::from_secs(3600),
        ..ServeOptions::default()
    };
    let handle = tokio::spawn(exchange::server::serve_until(
        server,
        options,
        move |addr| {
            let _ = addr_tx.send(addr.flight);
        },
        async {
            let _ = rx.await;
        },
    ));
    let addr = addr_rx.await?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = FlightSqlServiceClient::new(channel);
    client.handshake(principal, "bench-password").await?;
    client.set_header("x-exchange-purpose", purpose);

    // (rows, bytes of Arrow data); batches dropped as they arrive.
    let streamed = |local: Arc<Exchange>, sql: String| async move {
        let mut stream = local.start(principal, Some(purpose), &sql).await?;
        let (mut rows, mut bytes) = (0u64, 0usize);
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            rows += batch.num_rows() as u64;
            bytes += batch.get_array_memory_size();
        }
        Ok::<_, Box<dyn std::error::Error>>((rows, bytes))
    };
    let collected = |local: Arc<Exchange>, sql: String| async move {
        let out = local.execute(principal, Some(purpose), &sql).await?;
        let bytes: usize = out.batches.iter().map(|b| b.get_array_memory_size()).sum();
        Ok::<_, Box<dyn std::error::Error>>((out.rows, bytes))
    };
    let local = Arc::new(local);
    let mut times: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut peaks: [Vec<u64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut shape = (0u64, 0usize);
    for run in 0..=RUNS {
        // Rotate which path goes first.
        for k in 0..3 {
            let path = (run + k) % 3;
            reset_peak_rss();
            let start = Instant::now();
            let got = match path {
                0 => streamed(Arc::clone(&local), sql.clone()).await?,
                1 => collected(Arc::clone(&local), sql.clone()).await?,
                _ => {
                    let info = client.execute(sql.clone(), None).await?;
                    let (mut rows, mut bytes) = (0u64, 0usize);
                    for ep in info.endpoint {
                        let Some(ticket) = ep.ticket else { continue };
                        let mut stream = client.do_get(ticket).await?;
                        while let Some(batch) = stream.try_next().await? {
                            rows += batch.num_rows() as u64;
                            bytes += batch.get_array_memory_size();
                        }
                    }
                    (rows, bytes)
                }
            };
            let t = start.elapsed().as_secs_f64();
            if path == 0 {
                shape = got;
            } else {
                assert_eq!(got.0, shape.0, "another row count");
            }
            if run > 0 {
                times[path].push(t);
                peaks[path].push(peak_rss_mib());
            }
        }
    }
    let _ = tx.send(());
    handle.await??;

    let (rows, bytes) = shape;
    let mb = bytes as f64 / 1e6;
    let t: Vec<f64> = times.iter().map(|v| median(v.clone())).collect();
    println!("Result: {rows} rows, {mb:.0} MB of Arrow data ({residents} residents x {COPIES}).\n");
    println!("| path | median s | rows/s | MB/s | min-max s | peak RSS MiB (max of runs) |");
    println!("|---|---|---|---|---|---|");
    let names = [
        "in-process, streamed (Exchange::start)",
        "in-process, collected (Exchange::execute)",
        "Flight SQL on loopback (GetFlightInfo + DoGet), server in this process",
    ];
    for (i, name) in names.iter().enumerate() {
        let v = &times[i];
        let (lo, hi) = (
            v.iter().copied().fold(f64::MAX, f64::min),
            v.iter().copied().fold(0.0, f64::max),
        );
        println!(
            "| {name} | {:.2} | {:.1} M | {:.0} | {lo:.2}-{hi:.2} | {} |",
            t[i],
            rows as f64 / t[i] / 1e6,
            mb / t[i],
            peaks[i].iter().max().copied().unwrap_or(0)
        );
    }
    println!(
        "\nFlight / in-process streamed throughput: {:.0}% (target >= 90%); Flight / collected: {:.0}%",
        100.0 * t[0] / t[2],
        100.0 * t[1] / t[2]
    );
    let json = serde_json::json!({
        "rows": rows, "arrow_bytes": bytes,
        "streamed_s": times[0], "collected_s": times[1], "flight_s": times[2],
        "peak_rss_mib": {"streamed": peaks[0], "collected": peaks[1], "flight": peaks[2]},
        "ratio_streamed": t[0] / t[2],
    });
    let out = repo.join("target/bench-flight.json");
    std::fs::write(&out, json.to_string())?;
    println!("written {}", out.display());
    Ok(())
}
