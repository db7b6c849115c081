//! Review 24's attacks on remote datasets, each a test that failed before its fix:
//! a store's error body quoting the access key id and session token (F1), a redirect to
//! another host (F2), files lacking declared columns (F3), locations escaping their prefix
//! (F4), endpoints object_store cannot use (F5), a TLS client talking to a plain-HTTP port
//! (F6).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use exchange::catalog::StoreSettings;
use exchange::{Exchange, ExchangeConfig};

const KEY_ID: &str = "AKIDEXCHANGETEST4711";
const TOKEN: &str = "TOKENVALUEsessABCXYZ";
const SECRET: &str = "secretNEVERshown0815";

/// A hostile HTTP server on loopback answering every request with `response`; the heads of
/// the requests it got.
fn hostile(response: String) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
                if head.len() > 1 << 16 {
                    break;
                }
            }
            log.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&head).into_owned());
            let _ = conn.write_all(response.as_bytes());
        }
    });
    (format!("http://{addr}"), seen)
}

fn http_response(status: &str, headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// schemas/ with every dataset at s3://city/..., and credentials (with a session token)
/// of every agency for `endpoint`.
fn remote(endpoint: &str) -> (tempfile::TempDir, tempfile::TempDir, ExchangeConfig) {
    use std::os::unix::fs::PermissionsExt;
    let config = common::s3::s3_config();
    let state = tempfile::tempdir().unwrap();
    let creds = state.path().join("creds.toml");
    std::fs::write(
        &creds,
        format!(
            "access_key_id = \"{KEY_ID}\"\nsecret_access_key = \"{SECRET}\"\nsession_token = \"{TOKEN}\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut c = common::test_config(config.path(), Path::new("/nonexistent"), state.path());
    for agency in ["police", "civil", "health", "hrss", "hotline", "market"] {
        c.stores.insert(
            agency.to_string(),
            StoreSettings {
                endpoint: Some(endpoint.to_string()),
                credentials_file: Some(creds.clone()),
                max_retries: 0,
                timeout_secs: 5,
                ..StoreSettings::default()
            },
        );
    }
    (config, state, c)
}

fn audit_text(state: &Path) -> String {
    let mut text = String::new();
    if let Ok(dir) = std::fs::read_dir(state.join("audit")) {
        for f in dir {
            text.push_str(&String::from_utf8_lossy(
                &std::fs::read(f.unwrap().path()).unwrap(),
            ));
        }
    }
    text
}

fn check_messages(c: &ExchangeConfig) -> String {
    exchange::check(c)
        .findings
        .iter()
        .map(|f| f.message.clone())
        .collect::<Vec<_>>()
        .join("\n")
}

/// F1: an AWS-style SignatureDoesNotMatch body quotes the key id and, in the canonical
/// request, the session token. Nobody is shown it: not the table's own agency reading plain
/// columns, not the audit log, not `policy check`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stores_error_body_is_never_repeated() {
    let body = format!(
        "<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code><AWSAccessKeyId>{KEY_ID}</AWSAccessKeyId><CanonicalRequest>GET /city\nx-amz-security-token:{TOKEN}\n</CanonicalRequest></Error>"
    );
    let (endpoint, seen) = hostile(http_response(
        "403 Forbidden",
        "Content-Type: application/xml\r\n",
        &body,
    ));
    let (_config, state, c) = remote(&endpoint);
    let ex = Exchange::open(c.clone()).unwrap();
    let mut shown = String::new();
    for (who, purpose, sql) in [
        (
            "police_officer",
            "law_enforcement",
            "SELECT district, count(*) AS n FROM police.residents GROUP BY district",
        ),
        (
            "hotline_analyst",
            "complaint_handling",
            "SELECT category, count(*) AS n FROM hotline.tickets GROUP BY category",
        ),
    ] {
        let e = ex.execute(who, Some(purpose), sql).await.unwrap_err();
        let said = e.to_string();
        assert!(said.contains("object store"), "{said}");
        shown.push_str(&said);
    }
    assert!(!seen.lock().unwrap().is_empty(), "the store was asked");
    shown.push_str(&audit_text(state.path()));
    shown.push_str(&check_messages(&c));
    for secret in [KEY_ID, TOKEN, SECRET] {
        assert!(!shown.contains(secret), "{secret} shown in: {shown}");
    }
    assert!(shown.contains("denied"), "the kind is told: {shown}");
}

/// F2: a store that redirects is not followed: the other host gets no request (and no
/// session token), and the query fails instead of reading its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_never_followed() {
    let (elsewhere, asked_elsewhere) = hostile(http_response("200 OK", "", "PAR1"));
    let (endpoint, _seen) = hostile(http_response(
        "307 Temporary Redirect",
        &format!("Location: {elsewhere}/city/police/residents.parquet\r\n"),
        "",
    ));
    let (_config, _state, c) = remote(&endpoint);
    let ex = Exchange::open(c).unwrap();
    let e = ex
        .execute(
            "police_officer",
            Some("law_enforcement"),
            "SELECT count(*) AS n FROM police.residents",
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("object store"), "{e}");
    assert!(
        asked_elsewhere.lock().unwrap().is_empty(),
        "followed to {elsewhere}: {:?}",
        asked_elsewhere.lock().unwrap()
    );
}

/// F4: a location whose text and meaning differ (`..`, encoded dots, credentials, a query)
/// is refused by `policy check` and never read.
#[test]
fn locations_escaping_their_prefix_are_refused() {
    let (endpoint, seen) = hostile(http_response("404 Not Found", "", ""));
    for (location, why) in [
        ("s3://city/hotline/../police/residents.parquet", "segments"),
        (
            "s3://city/hotline/%2e%2e/police/residents.parquet",
            "encoded",
        ),
        ("s3://user:pw@city/police/residents.parquet", "credentials"),
        ("s3://city/police/residents.parquet?versionId=1", "query"),
    ] {
        let (config, _state, c) = remote(&endpoint);
        common::edit(
            &config.path().join("schemas/hotline.toml"),
            "location = \"s3://city/hotline/tickets.parquet\"",
            &format!("location = \"{location}\""),
        );
        let found = check_messages(&c);
        assert!(
            found.contains("hotline.tickets") && found.contains(why),
            "{location}: {found}"
        );
        assert!(!found.contains(":pw@"), "{found}");
    }
    // The police's own dataset was checked once per round; hotline's location never read.
    let residents = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.contains("residents"))
        .count();
    assert_eq!(residents, 4);
}

/// F3/F4: a file of a dataset lacking a declared column fails the scan (it was read as
/// NULLs, presented as complete) and `policy check` names the file, not only the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_lacking_a_declared_column_fails_the_scan() {
    let data = tempfile::tempdir().unwrap();
    common::copy_dir(common::data_root(), data.path());
    let tickets = data.path().join("hotline/tickets.parquet");
    let dir = data.path().join("hotline/tickets");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::rename(&tickets, dir.join("a.parquet")).unwrap();
    drop_column(
        &dir.join("a.parquet"),
        "caller_phone",
        &dir.join("zz.parquet"),
    );
    let config = common::config_copy();
    common::edit(
        &config.path().join("schemas/hotline.toml"),
        "location = \"hotline/tickets.parquet\"",
        "location = \"hotline/tickets/\"",
    );
    let state = tempfile::tempdir().unwrap();
    let c = common::test_config(config.path(), data.path(), state.path());
    let found = check_messages(&c);
    assert!(
        found.contains("zz.parquet") && found.contains("caller_phone"),
        "{found}"
    );
    let ex = Exchange::open(c).unwrap();
    let e = ex
        .execute(
            "hotline_analyst",
            Some("complaint_handling"),
            "SELECT category, count(*) AS n FROM hotline.tickets GROUP BY category",
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("lacks a declared column"), "{e}");
    assert!(e.contains("hotline.tickets"), "{e}");
}

fn drop_column(from: &Path, column: &str, to: &PathBuf) {
    let file = std::fs::File::open(from).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut writer = None;
    for batch in reader {
        let batch = batch.unwrap();
        let keep: Vec<usize> = (0..batch.num_columns())
            .filter(|i| batch.schema().field(*i).name() != column)
            .collect();
        let batch = batch.project(&keep).unwrap();
        let w = writer.get_or_insert_with(|| {
            parquet::arrow::ArrowWriter::try_new(
                std::fs::File::create(to).unwrap(),
                batch.schema(),
                None,
            )
            .unwrap()
        });
        w.write(&batch).unwrap();
    }
    writer.unwrap().close().unwrap();
}

fn cli(toml: &Path, config_dir: &Path, state: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_exchange"))
        .arg("--config")
        .arg(toml)
        .arg("--config-dir")
        .arg(config_dir)
        .arg("--state-dir")
        .arg(state.join("state"))
        .arg("--key-dir")
        .arg(state.join("keys"))
        .args(args)
        .env("EXCHANGE_POLICE_ACCESS_KEY_ID", KEY_ID)
        .env("EXCHANGE_POLICE_SECRET_ACCESS_KEY", SECRET)
        .output()
        .unwrap()
}

/// F5: endpoints object_store cannot use (it panicked on them at the first query) or that
/// carry credentials are configuration errors, said at start.
#[test]
fn unusable_endpoints_are_configuration_errors() {
    let config = common::s3::s3_config();
    let state = tempfile::tempdir().unwrap();
    let toml = state.path().join("exchange.toml");
    for endpoint in [
        "http://256.1.1.1:9",
        "not a url",
        "ftp://127.0.0.1:9",
        "http://AKID:SECRETX@127.0.0.1:9",
    ] {
        std::fs::write(
            &toml,
            format!("[stores.police]\nendpoint = \"{endpoint}\"\n"),
        )
        .unwrap();
        let out = cli(&toml, config.path(), state.path(), &["config"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{endpoint}: {err}");
        assert!(
            err.contains("stores.<agency>.endpoint"),
            "{endpoint}: {err}"
        );
        assert!(!err.contains("SECRETX"), "{err}");
    }
}

/// F6: a TLS client talking to a plain-HTTP port got SIGPIPE, and the CLI died silently,
/// unaudited. Now it fails the query with a message, and the statement is recorded.
#[test]
fn a_store_closing_the_connection_does_not_kill_the_cli() {
    let (plain, _seen) = hostile("HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n".into());
    let config = common::s3::s3_config();
    let state = tempfile::tempdir().unwrap();
    exchange::keys::init(&state.path().join("keys")).unwrap();
    let toml = state.path().join("exchange.toml");
    let https = plain.replace("http://", "https://");
    std::fs::write(
        &toml,
        format!("[stores.police]\nendpoint = \"{https}\"\nmax_retries = 0\ntimeout_secs = 5\n"),
    )
    .unwrap();
    let out = cli(
        &toml,
        config.path(),
        state.path(),
        &[
            "query",
            "--as",
            "police_officer",
            "--purpose",
            "law_enforcement",
            "SELECT count(*) AS n FROM police.residents",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code().is_some(), "killed by a signal: {err}");
    assert!(!out.status.success());
    assert!(
        err.contains("police.residents") || err.contains("object store"),
        "{err}"
    );
    assert!(
        audit_text(&state.path().join("state")).contains("police.residents"),
        "recorded"
    );
}
