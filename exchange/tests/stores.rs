//! Datasets on an S3-compatible object store: a real server (s3s-fs, signature-checking,
//! file-backed) on loopback holds the test city; every showcase gives the same result as
//! over local files; wrong or missing credentials fail the query as unreadable data without
//! a secret in any error, plan or audit record; an emptied prefix is an error, not an empty
//! table.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use exchange::catalog::StoreSettings;
use exchange::demo::SHOWCASE;
use exchange::{Exchange, ExchangeConfig};

const ACCESS_KEY: &str = "exchange-test-access";
const SECRET_KEY: &str = "s3cr3t-never-printed-4711";
const BUCKET: &str = "city";

/// The S3 server: $EXCHANGE_S3_SERVER (set by .ci/run), else target/tools/bin/s3s-fs,
/// installed from crates.io when missing.
fn s3_server_binary() -> PathBuf {
    if let Ok(p) = std::env::var("EXCHANGE_S3_SERVER") {
        return PathBuf::from(p);
    }
    let root = common::repo_root().join("target/tools");
    let bin = root.join("bin/s3s-fs");
    if !bin.exists() {
        let ok = Command::new(env!("CARGO"))
            .args([
                "install",
                "--locked",
                "--quiet",
                "s3s-fs@0.14.1",
                "--features",
                "binary",
                "--root",
            ])
            .arg(&root)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "could not install s3s-fs into {}", root.display());
    }
    bin
}

struct S3 {
    child: Child,
    endpoint: String,
    root: tempfile::TempDir,
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The server, with the test city under s3://city/<agency>/.
fn start_s3() -> S3 {
    let root = tempfile::tempdir().unwrap();
    common::copy_dir(common::data_root(), &root.path().join(BUCKET));
    let port = free_port();
    let child = Command::new(s3_server_binary())
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .arg(root.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start s3s-fs");
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    S3 {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
        root,
    }
}

/// A copy of schemas/ and policies/ whose datasets are at s3://city/...
fn s3_config() -> tempfile::TempDir {
    let config = common::config_copy();
    for e in std::fs::read_dir(config.path().join("schemas")).unwrap() {
        let path = e.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let moved = text.replace("location = \"", &format!("location = \"s3://{BUCKET}/"));
        std::fs::write(&path, moved).unwrap();
    }
    config
}

/// Credentials files of every agency, readable by the owner only.
fn credentials(dir: &Path, secret: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("s3-credentials.toml");
    std::fs::write(
        &path,
        format!("access_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{secret}\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn with_stores(config: &mut ExchangeConfig, endpoint: &str, credentials_file: &Path) {
    for agency in [
        "police", "civil", "health", "hrss", "hotline", "market", "trade",
    ] {
        config.stores.insert(
            agency.to_string(),
            StoreSettings {
                endpoint: Some(endpoint.to_string()),
                credentials_file: Some(credentials_file.to_path_buf()),
                max_retries: 0,
                ..StoreSettings::default()
            },
        );
    }
}

fn open_s3(config: &Path, s3: &S3, secret: &str) -> (Exchange, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let creds = credentials(state.path(), secret);
    let mut c = common::test_config(config, Path::new("/nonexistent"), state.path());
    with_stores(&mut c, &s3.endpoint, &creds);
    (Exchange::open(c).unwrap(), state)
}

/// The same exchange over the local files, with `remote`'s keys (the same pseudonyms).
fn open_local(remote: &Exchange) -> (Exchange, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let c = common::test_config(&common::repo_root(), common::data_root(), state.path())
        .with_key_dir(remote.config().key_dir.clone());
    (Exchange::open(c).unwrap(), state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_showcase_reads_the_same_from_the_object_store_as_from_local_files() {
    let s3 = start_s3();
    let config = s3_config();
    let (remote, _state) = open_s3(config.path(), &s3, SECRET_KEY);
    let (local, _local_state) = open_local(&remote);
    let mut compared = 0;
    for show in SHOWCASE.iter().filter(|s| s.principal != "auditor") {
        for q in show.queries {
            let want = common::ok(&local, show.principal, show.purpose, q.sql).await;
            let got = common::ok(&remote, show.principal, show.purpose, q.sql).await;
            assert_eq!(
                common::cells(&got.batches),
                common::cells(&want.batches),
                "{} / {}",
                show.principal,
                q.title
            );
            assert!(!want.batches.is_empty());
            compared += 1;
        }
    }
    assert!(compared >= 5, "{compared}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_fail_as_unreadable_data_and_the_secret_is_never_shown() {
    let s3 = start_s3();
    let config = s3_config();
    let wrong = "wrong-secret-0815";
    let (ex, state) = open_s3(config.path(), &s3, wrong);
    let sql = "SELECT category, count(*) AS n FROM hotline.tickets GROUP BY category";
    let e = ex
        .execute("hotline_analyst", Some("complaint_handling"), sql)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("could not be read") || e.contains("cannot be read"),
        "{e}"
    );
    let explained = ex
        .execute(
            "hotline_analyst",
            Some("complaint_handling"),
            &format!("EXPLAIN VERBOSE {sql}"),
        )
        .await;
    let mut shown = e.clone();
    if let Ok(out) = explained {
        shown.push_str(&common::cells(&out.batches).concat().join("\n"));
    }
    let mut audit = String::new();
    for f in std::fs::read_dir(state.path().join("audit")).unwrap() {
        audit.push_str(&String::from_utf8_lossy(
            &std::fs::read(f.unwrap().path()).unwrap(),
        ));
    }
    assert!(
        audit.contains("hotline.tickets"),
        "the statement is audited"
    );
    for text in [&shown, &audit] {
        assert!(!text.contains(wrong), "secret shown: {text}");
        assert!(!text.contains(SECRET_KEY));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_prefix_is_an_error_not_an_empty_table() {
    let s3 = start_s3();
    let config = s3_config();
    let (ex, _state) = open_s3(config.path(), &s3, SECRET_KEY);
    std::fs::remove_file(s3.root.path().join(BUCKET).join("hotline/tickets.parquet")).unwrap();
    let e = ex
        .execute(
            "hotline_analyst",
            Some("complaint_handling"),
            "SELECT count(*) AS n FROM hotline.tickets",
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("hotline.tickets"), "{e}");
    assert!(e.contains("cannot be read"), "{e}");
}

/// The CLI takes each agency's credentials from its environment variables and the
/// endpoint from `[stores.<agency>]` of exchange.toml.
#[test]
fn the_cli_reads_credentials_from_the_environment() {
    let s3 = start_s3();
    let config = s3_config();
    let state = tempfile::tempdir().unwrap();
    let keys = state.path().join("keys");
    exchange::keys::init(&keys).unwrap();
    let toml = state.path().join("exchange.toml");
    std::fs::write(
        &toml,
        format!(
            "[stores.hotline]\nendpoint = \"{}\"\nmax_retries = 0\n",
            s3.endpoint
        ),
    )
    .unwrap();
    let run = |secret: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_exchange"));
        cmd.arg("--config")
            .arg(&toml)
            .arg("--config-dir")
            .arg(config.path())
            .arg("--state-dir")
            .arg(state.path().join("state"))
            .arg("--key-dir")
            .arg(&keys)
            .args(["query", "--as", "hotline_analyst", "--purpose", "complaint_handling"])
            .arg("SELECT category, count(*) AS n FROM hotline.tickets GROUP BY category ORDER BY category")
            .env_remove("EXCHANGE_HOTLINE_ACCESS_KEY_ID")
            .env_remove("EXCHANGE_HOTLINE_SECRET_ACCESS_KEY");
        if let Some(s) = secret {
            cmd.env("EXCHANGE_HOTLINE_ACCESS_KEY_ID", ACCESS_KEY)
                .env("EXCHANGE_HOTLINE_SECRET_ACCESS_KEY", s);
        }
        cmd.output().unwrap()
    };
    let good = run(Some(SECRET_KEY));
    let out = String::from_utf8_lossy(&good.stdout);
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(out.lines().count() > 3, "{out}");
    let none = run(None);
    assert!(!none.status.success());
    let err = String::from_utf8_lossy(&none.stderr);
    assert!(err.contains("hotline.tickets"), "{err}");
    let wrong = run(Some("not-the-secret-42"));
    assert!(!wrong.status.success());
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(!err.contains("not-the-secret-42"), "{err}");
}

/// `exchange policy check` lists every remote dataset and reads its first file's footer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_check_reads_the_footers_of_remote_datasets() {
    let s3 = start_s3();
    let config = s3_config();
    let state = tempfile::tempdir().unwrap();
    let checked = |secret: &str| {
        let creds = credentials(state.path(), secret);
        let mut c = common::test_config(config.path(), Path::new("/nonexistent"), state.path());
        with_stores(&mut c, &s3.endpoint, &creds);
        exchange::check(&c)
    };
    let report = checked(SECRET_KEY);
    assert!(!report.has_errors(), "{:#?}", report.findings);
    let errors = |r: &exchange::CheckReport| -> Vec<String> {
        r.findings
            .iter()
            .filter(|f| f.severity == exchange::Severity::Error)
            .map(|f| f.message.clone())
            .collect()
    };
    // Wrong credentials: every remote dataset is unreadable, the secret is not shown.
    let report = checked("wrong-secret-0815");
    let wrong = errors(&report);
    assert!(wrong.len() >= 6, "{wrong:#?}");
    assert!(
        wrong.iter().all(|e| !e.contains("wrong-secret-0815")),
        "{wrong:#?}"
    );
    // A declared column of another type, and an emptied prefix, are named.
    common::edit(
        &config.path().join("schemas/hotline.toml"),
        "location = \"s3://city/hotline/tickets.parquet\"",
        "location = \"s3://city/hotline/\"",
    );
    std::fs::remove_file(s3.root.path().join(BUCKET).join("hotline/tickets.parquet")).unwrap();
    let report = checked(SECRET_KEY);
    let found = errors(&report);
    assert!(
        found
            .iter()
            .any(|e| e.contains("hotline.tickets") && e.contains("no .parquet files")),
        "{found:#?}"
    );
}
