//! Query results as principals, compared with committed snapshots.
//!
//! The test city and the secret key are fixed, so results (pseudonyms included) are
//! reproducible. Regenerate after an intended change with
//! `UPDATE_SNAPSHOTS=1 cargo test --test snapshots`, and review the diff.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fmt::Write;
use std::path::PathBuf;

use exchange::Exchange;
use exchange::demo::SHOWCASE;

fn snapshot_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(name)
}

fn check(name: &str, actual: &str) {
    let path = snapshot_path(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "missing snapshot {}; run with UPDATE_SNAPSHOTS=1",
            path.display()
        )
    });
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "snapshot {name} differs at line {}:\n  expected: {:?}\n  actual:   {:?}",
            first + 1,
            expected.lines().nth(first),
            actual.lines().nth(first)
        );
    }
}

/// An exchange whose secret key is fixed, so pseudonyms are reproducible.
fn fixed_key_exchange() -> (Exchange, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let config = common::test_config(&common::repo_root(), common::data_root(), state.path());
    // Replace the fresh HMAC secret by a fixed one (the signing key does not matter here).
    let key = config.key_dir.join(exchange::keys::SECRET_FILE);
    std::fs::remove_file(&key).unwrap();
    std::fs::write(&key, "5e".repeat(32)).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let ex = Exchange::open(config).unwrap();
    (ex, state)
}

#[tokio::test]
async fn showcase_results_match_snapshot() {
    let (ex, _state) = fixed_key_exchange();
    let mut text = String::new();
    for show in SHOWCASE.iter().filter(|s| s.principal != "auditor") {
        for q in show.queries {
            let out = common::ok(&ex, show.principal, show.purpose, q.sql).await;
            writeln!(
                text,
                "## {} / {}: {}",
                show.principal, show.purpose, q.title
            )
            .unwrap();
            for t in &out.tables {
                writeln!(
                    text,
                    "# {} via {} reading {}",
                    t.table,
                    t.grant,
                    t.columns.join(",")
                )
                .unwrap();
                if let Some(register) = &t.objections {
                    writeln!(text, "#   excluding residents who object ({register})").unwrap();
                }
            }
            for th in &out.thresholds {
                writeln!(text, "# threshold {th}").unwrap();
            }
            writeln!(
                text,
                "{}",
                arrow::util::pretty::pretty_format_batches(&out.batches).unwrap()
            )
            .unwrap();
        }
    }
    check("showcase.txt", &text);
}

#[tokio::test]
async fn describe_and_explain_match_snapshot() {
    let (ex, _state) = fixed_key_exchange();
    let mut text = String::new();
    for (p, purpose, sql) in [
        (
            "civil_analyst",
            "elderly_care_planning",
            "DESCRIBE police.residents",
        ),
        (
            "hrss_analyst",
            "new_employment_services",
            "DESCRIBE police.residents",
        ),
        (
            "hotline_analyst",
            "complaint_handling",
            "DESCRIBE hotline.tickets",
        ),
        (
            "market_trader",
            "data_product",
            "DESCRIBE market.enterprises",
        ),
        (
            "civil_analyst",
            "elderly_care_planning",
            "EXPLAIN SELECT r.district, avg(v.cost) FROM police.residents r JOIN health.visits v ON r.person_id = v.person_id GROUP BY r.district",
        ),
    ] {
        let out = common::ok(&ex, p, purpose, sql).await;
        writeln!(text, "## {p}: {sql}").unwrap();
        for row in common::cells(&out.batches) {
            writeln!(text, "{}", row.join(" | ")).unwrap();
        }
    }
    check("describe_explain.txt", &text);
}
