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
    hostile_by(move |_| response.clone())
}

/// A hostile HTTP server answering each request by its head.
fn hostile_by(
    respond: impl Fn(&str) -> String + Send + 'static,
) -> (String, Arc<Mutex<Vec<String>>>) {
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
            let head = String::from_utf8_lossy(&head).into_owned();
            let response = respond(&head);
            log.lock().unwrap().push(head);
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
        // Review 24b N3: URL parsing drops tabs and newlines, `.\t.` became `..`.
        ("s3://city/hotline/.\t./police/residents.parquet", "control"),
        ("s3://city/hotline/.\n./police/residents.parquet", "control"),
    ] {
        let (config, _state, c) = remote(&endpoint);
        common::edit(
            &config.path().join("schemas/hotline.toml"),
            "location = \"s3://city/hotline/tickets.parquet\"",
            &format!(
                "location = \"{}\"",
                location.replace('\t', "\\t").replace('\n', "\\n")
            ),
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
    assert_eq!(residents, 6);
}

/// F3/F4 and review 24b N4: a file of a dataset lacking a declared column, holding it twice
/// (the stray copy was served) or in another type (an integer read as a timestamp) fails
/// the scan, as `policy check` reports it, which names the file (not only the first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_not_holding_its_declared_columns_fails_the_scan() {
    use arrow::array::{ArrayRef, Int64Array, RecordBatch};
    use arrow::datatypes::{Field, Schema};
    type Change = fn(&RecordBatch) -> RecordBatch;
    let variants: [(&str, Change, &str); 3] = [
        (
            "lacks",
            |b| {
                let keep: Vec<usize> = (0..b.num_columns())
                    .filter(|i| b.schema().field(*i).name() != "caller_phone")
                    .collect();
                b.project(&keep).unwrap()
            },
            "missing from",
        ),
        (
            "twice",
            |b| {
                let i = b.schema().index_of("caller_phone").unwrap();
                let mut fields: Vec<Field> = b
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone())
                    .collect();
                let mut columns: Vec<ArrayRef> = b.columns().to_vec();
                fields.insert(0, fields[i].clone());
                columns.insert(0, columns[i].clone());
                RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
            },
            "holds it twice",
        ),
        (
            "retyped",
            |b| {
                let i = b.schema().index_of("created_at").unwrap();
                let mut fields: Vec<Field> = b
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone())
                    .collect();
                let mut columns: Vec<ArrayRef> = b.columns().to_vec();
                fields[i] = Field::new("created_at", arrow::datatypes::DataType::Int64, true);
                columns[i] = Arc::new(Int64Array::from(vec![1_700_000_000; b.num_rows()]));
                RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
            },
            "but",
        ),
    ];
    for (what, change, checked) in variants {
        let data = tempfile::tempdir().unwrap();
        common::copy_dir(common::data_root(), data.path());
        let tickets = data.path().join("hotline/tickets.parquet");
        let dir = data.path().join("hotline/tickets");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::rename(&tickets, dir.join("a.parquet")).unwrap();
        rewrite(&dir.join("a.parquet"), &dir.join("zz.parquet"), change);
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
            found.contains("zz.parquet") && found.contains(checked),
            "{what}: {found}"
        );
        let ex = Exchange::open(c).unwrap();
        let e = ex
            .execute(
                "hotline_analyst",
                Some("complaint_handling"),
                "SELECT category, count(*) AS n, min(created_at) AS first FROM hotline.tickets GROUP BY category",
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("hotline.tickets"), "{what}: {e}");
        assert!(e.contains("a data file"), "{what}: {e}");
    }
}

fn rewrite(
    from: &Path,
    to: &PathBuf,
    change: fn(&arrow::array::RecordBatch) -> arrow::array::RecordBatch,
) {
    let file = std::fs::File::open(from).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut writer = None;
    for batch in reader {
        let batch = change(&batch.unwrap());
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

/// Review 24b C1: an upload the store refuses is told by kind: the refusal's body (quoting
/// the key id and the session token) reaches neither the exporter nor the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_export_upload_is_told_by_kind_only() {
    let body = format!(
        "<Error><Code>AccessDenied</Code><AWSAccessKeyId>{KEY_ID}</AWSAccessKeyId><x>x-amz-security-token:{TOKEN}</x></Error>"
    );
    let (endpoint, seen) = hostile_by(move |head| {
        if head.starts_with("HEAD") || head.starts_with("GET") {
            http_response("404 Not Found", "", "")
        } else {
            http_response("403 Forbidden", "Content-Type: application/xml\r\n", &body)
        }
    });
    let (_remote_config, state, remote_c) = remote(&endpoint);
    // Datasets local; the exporter's agency (hrss) writes to the hostile store.
    let mut c = common::test_config(&common::repo_root(), common::data_root(), state.path());
    c.stores = remote_c.stores.clone();
    let ex = Exchange::open(c).unwrap();
    let req = exchange::export::ExportRequest {
        principal: "hrss_analyst".into(),
        purpose: Some("new_employment_services".into()),
        recipient: "research-x".into(),
        out: "s3://city/exports/employment.parquet".into(),
        sql: "SELECT district, count(*) AS n FROM police.residents GROUP BY district".into(),
        expires: None,
    };
    let e = exchange::export::export(&ex, &req, &mut |_, _| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .any(|r| r.starts_with("PUT") || r.starts_with("POST")),
        "an upload was tried: {e}"
    );
    let shown = format!("{e}\n{}", audit_text(state.path()));
    for secret in [KEY_ID, TOKEN, SECRET] {
        assert!(!shown.contains(secret), "{secret} shown in: {shown}");
    }
    assert!(e.contains("could not be published"), "{e}");
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

/// Review 24 F7: a table whose store has no credentials is unreadable data, not a policy
/// refusal, and the operator's fix takes effect at the next statement (the session missing
/// it was kept until the next day).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_credentials_are_unreadable_data_until_fixed() {
    let (endpoint, _seen) = hostile(http_response("403 Forbidden", "", ""));
    let (_config, state, mut c) = remote(&endpoint);
    let creds = state.path().join("creds.toml");
    let moved = state.path().join("creds.away");
    std::fs::rename(&creds, &moved).unwrap();
    for s in c.stores.values_mut() {
        s.credentials_file = Some(creds.clone());
    }
    let ex = Exchange::open(c).unwrap();
    let sql = "SELECT count(*) AS n FROM police.residents";
    let e = ex
        .execute("police_officer", Some("law_enforcement"), sql)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            exchange::QueryError::Run {
                kind: exchange::FailureKind::Unreadable,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("not reachable as configured"), "{e}");
    std::fs::rename(&moved, &creds).unwrap();
    let e = ex
        .execute("police_officer", Some("law_enforcement"), sql)
        .await
        .unwrap_err()
        .to_string();
    // Now the store itself is asked (and, being hostile, refuses).
    assert!(e.contains("denied"), "{e}");
}
