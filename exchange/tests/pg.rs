//! `exchange serve --pg-listen` driven by real Postgres clients: psql (Debian's
//! postgresql-client) here, and psycopg (tests/python/pg_client_suite.py) against the same
//! running server: logins, purposes, the catalog as each principal sees it, the showcase in
//! both protocols equal to the in-process results, refusals with SQLSTATE 42501, what
//! DBeaver, Metabase, psql, Grafana and pgAdmin send, a 16 x 20 load, and every statement
//! audited.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use exchange::audit::{Decision, StatementKind};

use common::config_copy;
use common::serve::{credentials, expected, fresh_dirs, password, python, start};

/// psql as `user` (its password from the test's credentials) for `purpose`: (success,
/// stdout, stderr). Unaligned, tuples only, errors verbose (with their SQLSTATE).
fn psql(addr: &str, user: &str, purpose: Option<&str>, command: &str) -> (bool, String, String) {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let mut cmd = Command::new("psql");
    cmd.args([
        "-h", host, "-p", port, "-U", user, "-d", "exchange", "-X", "-A", "-t",
    ])
    .args([
        "-v",
        "VERBOSITY=verbose",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        command,
    ])
    .env("PGPASSWORD", password(user))
    .env("PGCONNECT_TIMEOUT", "20")
    .env_remove("PGOPTIONS");
    if let Some(p) = purpose {
        cmd.env("PGOPTIONS", format!("-c exchange.purpose={p}"));
    }
    let out = cmd.output().expect("psql (postgresql-client) is installed");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `schema|table` pairs `\dt` lists.
fn listed(out: &str) -> BTreeSet<String> {
    out.lines()
        .filter_map(|l| {
            let mut f = l.split('|');
            Some(format!("{}.{}", f.next()?, f.next()?))
        })
        .collect()
}

/// The tables a principal may read for a purpose, asked of the exchange in-process.
fn granted(config: &Path, principal: &str, purpose: &str) -> BTreeSet<String> {
    let (ex, _state) = common::open_config(config);
    let rt = tokio::runtime::Handle::current();
    ex.governance()
        .catalog
        .datasets()
        .iter()
        .map(|d| format!("{}.{}", d.agency, d.name))
        .filter(|t| {
            tokio::task::block_in_place(|| {
                rt.block_on(ex.execute(principal, Some(purpose), &format!("DESCRIBE {t}")))
            })
            .is_ok()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_clients_psql_and_psycopg() {
    let config = config_copy();
    let token = credentials(config.path());
    // market_trader, a service, logs in with its API token only.
    let file = config.path().join("policies/principals.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let mut block = "";
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            if let Some(name) = l.strip_prefix("name = ") {
                block = name;
            }
            !(block == "\"market_trader\"" && l.starts_with("password_hash"))
        })
        .collect();
    std::fs::write(&file, kept.join("\n")).unwrap();
    let (_tmp, keys, state) = fresh_dirs();
    let server = start(
        config.path(),
        &keys,
        &state,
        &["--pg-listen", "127.0.0.1:0", "--max-concurrent", "8"],
    );
    let pg = server.pg.clone().unwrap();

    // \dt: each principal's granted tables, nothing else; none without a purpose.
    for (principal, purpose) in [
        ("hotline_analyst", "complaint_handling"),
        ("health_analyst", "public_health_statistics"),
    ] {
        let (ok, out, err) = psql(&pg, principal, Some(purpose), "\\dt");
        assert!(ok, "{err}");
        let want = granted(config.path(), principal, purpose);
        assert!(!want.is_empty());
        assert_eq!(listed(&out), want, "{principal}: {out}");
    }
    let (ok, out, err) = psql(&pg, "hotline_analyst", None, "\\dt");
    assert!(ok, "{err}");
    assert_eq!(listed(&out), BTreeSet::new(), "{out}");

    // \d: the visible columns, in the form the principal sees them; hidden ones absent.
    let dir = tempfile::tempdir().unwrap();
    expected(config.path(), &keys, dir.path(), &token);
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("index.json")).unwrap())
            .unwrap();
    let visible: Vec<String> = index["visible"]["police.residents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let (ok, out, err) = psql(
        &pg,
        "hrss_analyst",
        Some("new_employment_services"),
        "\\d police.residents",
    );
    assert!(ok, "{err}");
    let columns: Vec<String> = out
        .lines()
        .filter_map(|l| l.split('|').next().map(str::to_string))
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(columns, visible, "{out}");

    // A refusal: SQLSTATE 42501 and the reason; a wrong password: refused at login.
    let (ok, _, err) = psql(
        &pg,
        "hotline_analyst",
        Some("complaint_handling"),
        "SELECT phone FROM police.residents",
    );
    assert!(!ok);
    assert!(err.contains("42501") && err.contains("join key"), "{err}");
    // Review 54: the budget function answers over Postgres too (it reads no table, yet it
    // is the exchange's, not the catalog's).
    let (ok, out, err) = psql(
        &pg,
        "civil_statistician",
        Some("elderly_care_planning"),
        "SELECT privacy_budget('health.visits')",
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim().parse::<f64>().ok(), Some(10.0), "{out}{err}");
    // Several statements in one request: the results before a failed one, then its error.
    let (ok, out, err) = psql(
        &pg,
        "hotline_analyst",
        Some("complaint_handling"),
        "SELECT count(*) AS n FROM hotline.tickets; SELECT phone FROM police.residents",
    );
    assert!(!ok);
    assert!(out.trim().parse::<u64>().is_ok_and(|n| n > 0), "{out}");
    assert!(err.contains("42501"), "{err}");
    let mut cmd = Command::new("psql");
    let (host, port) = pg.rsplit_once(':').unwrap();
    let out = cmd
        .args([
            "-h",
            host,
            "-p",
            port,
            "-U",
            "hotline_analyst",
            "-d",
            "exchange",
        ])
        .args(["-X", "-c", "SELECT 1"])
        .env("PGPASSWORD", "not the password")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("password authentication failed"), "{err}");

    // psycopg: the showcase in both protocols, parameters, purposes, logins, what BI tools
    // send, the load run.
    let clients = common::repo_root().join("exchange/tests/fixtures/pg_clients/queries.json");
    let suite = common::repo_root().join("exchange/tests/python/pg_client_suite.py");
    let out = Command::new(python())
        .arg(&suite)
        .arg(dir.path())
        .arg(&pg)
        .arg(&clients)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    assert!(server.stop().success());

    // Every statement sent is in the audit log, and the load run's 320 completed.
    let records =
        exchange::audit::statements(exchange::audit::read_all(&state.join("audit")).unwrap());
    let audited: BTreeSet<&str> = records.iter().map(|r| r.entry.statement.as_str()).collect();
    let sent: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("sent.json")).unwrap())
            .unwrap();
    for s in &sent {
        let s = s.trim().trim_end_matches(';');
        // psycopg sends `%s` as `$1`.
        let s = s.replace("%s", "$1");
        assert!(audited.contains(s.as_str()), "not audited: {s}");
    }
    let load = records
        .iter()
        .filter(|r| {
            r.entry.statement.contains("'load-")
                && r.entry.decision == Decision::Allowed
                && r.entry.kind == StatementKind::Query
        })
        .count();
    assert_eq!(load, 320);
    // Parameters are audited with their statement; catalog and session statements by kind.
    assert!(
        records
            .iter()
            .any(|r| r.entry.params == vec!["hexi".to_string()])
    );
    assert!(
        records
            .iter()
            .any(|r| r.entry.kind == StatementKind::Catalog)
    );
    assert!(
        records
            .iter()
            .any(|r| r.entry.kind == StatementKind::Session)
    );
    assert!(
        records
            .iter()
            .any(|r| r.entry.kind == StatementKind::Auth && r.entry.principal == "(unknown)")
    );
}

/// With --tls-cert and --tls-key the Postgres port speaks TLS: psql with
/// `sslmode=require` logs in over TLS and queries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls() {
    let config = config_copy();
    credentials(config.path());
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl makes a test certificate");
    assert!(made.status.success(), "{made:?}");
    let keys = tmp.path().join("keys");
    exchange::keys::init(&keys).unwrap();
    let state = tmp.path().join("state");
    let (cert_s, key_s) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let server = start(
        config.path(),
        &keys,
        &state,
        &[
            "--pg-listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert_s,
            "--tls-key",
            key_s,
        ],
    );
    let pg = server.pg.clone().unwrap();
    let (host, port) = pg.rsplit_once(':').unwrap();
    let out = Command::new("psql")
        .arg(format!(
            "host={host} port={port} user=hotline_analyst dbname=exchange sslmode=require"
        ))
        .args(["-X", "-A", "-t", "-c", "\\conninfo"])
        .args(["-c", "SELECT count(*) AS n FROM hotline.tickets"])
        .env("PGPASSWORD", password("hotline_analyst"))
        .env("PGOPTIONS", "-c exchange.purpose=complaint_handling")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("SSL connection"), "{stdout}\n{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.trim().parse::<u64>().is_ok_and(|n| n > 0)),
        "{stdout}\n{stderr}"
    );
    // A client without TLS still logs in with SCRAM: the password never crosses the wire.
    let out = Command::new("psql")
        .arg(format!(
            "host={host} port={port} user=hotline_analyst dbname=exchange sslmode=disable"
        ))
        .args(["-X", "-A", "-t", "-c", "SELECT 1 AS one"])
        .env("PGPASSWORD", password("hotline_analyst"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(server.stop().success());
}
