//! Serving the exchange over Arrow Flight SQL from your own program, and querying it with the
//! Rust Flight SQL client: handshake with a password, the purpose as a header.
//!
//! `cargo run -p exchange-examples --example serve_embedded`

#[path = "common.rs"]
mod common;

use std::time::Duration;

use arrow_flight::sql::client::FlightSqlServiceClient;
use exchange::server::{Limits, ServeOptions};
use futures::TryStreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let state = tempfile::tempdir()?;
    // The password lives in principals.toml as a PBKDF2 hash: work on a copy.
    let config = state.path().join("config");
    for dir in ["schemas", "policies", "policies/grants"] {
        std::fs::create_dir_all(config.join(dir))?;
        for entry in std::fs::read_dir(common::minimal().join(dir))? {
            let path = entry?.path();
            if path.is_file() {
                std::fs::copy(
                    &path,
                    config.join(dir).join(path.file_name().unwrap_or_default()),
                )?;
            }
        }
    }
    let hash = exchange::server::hash_password("a long example passphrase", 10_000)?;
    exchange::server::set_principal_field(
        &config.join("policies/principals.toml"),
        "planner",
        "password_hash",
        &format!("\"{hash}\""),
    )?;
    let keys = state.path().join("keys");
    exchange::keys::ensure(&keys)?;
    let ex = exchange::Exchange::open(
        exchange::ExchangeConfig::new(config, common::minimal().join("data"), state.path().into())
            .with_key_dir(keys),
    )?;

    let options = ServeOptions {
        listen: "127.0.0.1:0".parse()?,
        tls: None,
        limits: Limits {
            max_concurrent: 4,
            queue_wait: Duration::from_secs(5),
            query_timeout: Duration::from_secs(60),
            result_ttl: Duration::from_secs(60),
            max_result_bytes: 64 << 20,
            ..Limits::default()
        },
        token_ttl: Duration::from_secs(600),
        ..ServeOptions::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready, address) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(exchange::server::serve_until(
        ex,
        options,
        move |addr| {
            let _ = ready.send(addr.flight);
        },
        async {
            let _ = stopped.await;
        },
    ));
    let addr = address.await?;
    println!("serving on {addr}");

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = FlightSqlServiceClient::new(channel);
    client
        .handshake("planner", "a long example passphrase")
        .await?;
    client.set_header("x-exchange-purpose", "service_planning");
    let info = client
        .execute(
            "SELECT district, count(*) AS patients, sum(visits) AS visits
             FROM clinic.patients GROUP BY district"
                .into(),
            None,
        )
        .await?;
    let mut rows = 0;
    for endpoint in info.endpoint {
        let Some(ticket) = endpoint.ticket else {
            continue;
        };
        let batches: Vec<_> = client.do_get(ticket).await?.try_collect().await?;
        rows += batches.iter().map(|b| b.num_rows()).sum::<usize>();
        println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?);
    }
    common::check(rows == 2, "two districts over Flight SQL")?;

    // A graceful stop seals the audit log.
    let _ = stop.send(());
    server.await??;
    Ok(())
}
