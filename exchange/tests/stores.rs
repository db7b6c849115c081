//! Datasets on an S3-compatible object store: a real server (s3s-fs, signature-checking,
//! file-backed) on loopback holds the test city; every showcase gives the same result as
//! over local files; wrong or missing credentials fail the query as unreadable data without
//! a secret in any error, plan or audit record; an emptied prefix is an error, not an empty
//! table.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;

use exchange::demo::SHOWCASE;

use common::s3::*;

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

/// The store's cache (ranges keyed by object and ETag) serves repeated statements, and a
/// replaced object is read again at the next statement: never the old version's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_object_is_read_again_at_the_next_statement() {
    let s3 = start_s3();
    let config = s3_config();
    let (ex, _state) = open_s3(config.path(), &s3, SECRET_KEY);
    let sql =
        "SELECT category, count(*) AS n FROM hotline.tickets GROUP BY category ORDER BY category";
    let total = |cells: Vec<Vec<String>>| -> u64 {
        cells.iter().map(|r| r[1].parse::<u64>().unwrap()).sum()
    };
    let run = || async {
        total(common::cells(
            &common::ok(&ex, "hotline_analyst", "complaint_handling", sql)
                .await
                .batches,
        ))
    };
    let first = run().await;
    assert_eq!(run().await, first, "a cached read gives the same result");
    assert!(first > 10);

    // Replace the object with its first ten rows (s3s-fs keeps objects as files).
    let path = s3.root.path().join(BUCKET).join("hotline/tickets.parquet");
    let file = std::fs::File::open(&path).unwrap();
    let mut reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let batch = reader.next().unwrap().unwrap().slice(0, 10);
    let tmp = path.with_extension("tmp");
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&tmp).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    std::fs::rename(&tmp, &path).unwrap();

    assert_eq!(
        run().await,
        10,
        "the new version, not cached bytes of the old"
    );
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

/// `exchange scan` of a dataset on an object store samples it through its agency's store
/// (it read local paths only).
#[test]
fn scan_reads_remote_datasets_through_their_agencys_store() {
    let s3 = start_s3();
    let config = s3_config();
    let state = tempfile::tempdir().unwrap();
    let toml = state.path().join("exchange.toml");
    std::fs::write(
        &toml,
        format!(
            "[stores.police]\nendpoint = \"{}\"\nmax_retries = 0\n",
            s3.endpoint
        ),
    )
    .unwrap();
    let run = |secret: &str| {
        Command::new(env!("CARGO_BIN_EXE_exchange"))
            .arg("--config")
            .arg(&toml)
            .arg("--config-dir")
            .arg(config.path())
            .arg("--state-dir")
            .arg(state.path().join("state"))
            .args(["scan", "police.residents", "--sample", "200"])
            .env("EXCHANGE_POLICE_ACCESS_KEY_ID", ACCESS_KEY)
            .env("EXCHANGE_POLICE_SECRET_ACCESS_KEY", secret)
            .output()
            .unwrap()
    };
    let good = run(SECRET_KEY);
    let out = String::from_utf8_lossy(&good.stdout);
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(
        out.contains("person_id") && out.contains("resident_id"),
        "{out}"
    );
    let wrong = run("wrong-secret-0815");
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(2), "{err}");
    assert!(err.contains("police.residents"), "{err}");
    assert!(
        !err.contains("wrong-secret-0815") && !err.contains(ACCESS_KEY),
        "{err}"
    );
}

/// An export to `s3://` is written through the exporting agency's store, its manifest
/// beside it, and verifies like a local one; an export never replaces an object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_are_written_to_the_object_store_with_their_manifest() {
    let s3 = start_s3();
    let config = s3_config();
    let (ex, _state) = open_s3(config.path(), &s3, SECRET_KEY);
    let req = exchange::export::ExportRequest {
        principal: "hrss_analyst".into(),
        purpose: Some("new_employment_services".into()),
        recipient: "research-s3".into(),
        out: format!("s3://{BUCKET}/exports/employment.parquet").into(),
        sql: "SELECT district, count(*) AS n FROM police.residents GROUP BY district".into(),
        expires: None,
    };
    let summary = exchange::export::export(&ex, &req, &mut |_, _| {})
        .await
        .unwrap();
    assert_eq!(
        summary.manifest_path.to_string_lossy(),
        format!("s3://{BUCKET}/exports/employment.parquet.manifest.json")
    );
    // The store is file-backed: what it holds verifies with the exchange's public key.
    let file = s3
        .root
        .path()
        .join(BUCKET)
        .join("exports/employment.parquet");
    let verified = exchange::export::verify(&file, &ex.signer().public_key());
    assert!(verified.is_ok(), "{verified:?}");
    // Again under the same name: refused, the first file intact.
    let before = std::fs::read(&file).unwrap();
    let e = exchange::export::export(&ex, &req, &mut |_, _| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("never replaces"), "{e}");
    assert_eq!(std::fs::read(&file).unwrap(), before);
}
