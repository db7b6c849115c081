//! `exchange serve --http-listen`: the web console in a real browser (headless Chromium
//! driven by selenium, tests/python/console_browser.py): the auditor's activity chart and
//! refusal table show the records the test just made, drill-down, CSV, "verify now"; an
//! analyst gets 403 on auditor and steward pages and sees only their own history; a
//! steward sees only their agency; CSRF, origin and cookie checks over raw HTTP. Every page
//! view is then found in the audit log as the viewer's statement. Screenshots of each page
//! are kept in target/console-screenshots (the README's pictures are copies of them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;

use exchange::audit::{Decision, StatementKind};

use common::config_copy;
use common::serve::{PRINCIPALS, credentials, fresh_dirs, password, python, start};

/// The browser and its driver: $EXCHANGE_CHROMIUM / $EXCHANGE_CHROMEDRIVER, else Debian's.
fn chromium() -> (String, String) {
    let browser = std::env::var("EXCHANGE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let driver =
        std::env::var("EXCHANGE_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
    assert!(
        Path::new(&browser).exists() && Path::new(&driver).exists(),
        "Chromium and chromedriver are needed ({browser}, {driver}): apt-get install chromium chromium-driver (.ci/run does)"
    );
    (browser, driver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_browser() {
    let (browser, driver) = chromium();
    let config = config_copy();
    credentials(config.path());
    let (tmp, keys, state) = fresh_dirs();
    let server = start(
        config.path(),
        &keys,
        &state,
        &["--pg-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"],
    );
    let shots = common::repo_root().join("target/console-screenshots");
    let passwords: serde_json::Map<String, serde_json::Value> = PRINCIPALS
        .iter()
        .map(|p| (p.to_string(), password(p).into()))
        .collect();
    let cfg = tmp.path().join("console.json");
    std::fs::write(
        &cfg,
        serde_json::json!({
            "console": format!("http://{}", server.http.clone().unwrap()),
            "pg": server.pg.clone().unwrap(),
            "passwords": passwords,
            "screenshots": shots,
            "chromium": browser,
            "chromedriver": driver,
        })
        .to_string(),
    )
    .unwrap();
    let out = Command::new(python())
        .arg(common::repo_root().join("exchange/tests/python/console_browser.py"))
        .arg(&cfg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "console_browser.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(seen["activity_total"].as_u64().unwrap() >= 2, "{seen}");
    assert!(seen["refusals"].as_u64().unwrap() >= 1, "{seen}");
    for page in [
        "home-auditor",
        "audit-activity",
        "audit-refusals",
        "audit-record",
        "audit-access",
        "audit-exports",
        "audit-statements",
        "audit-log",
        "me-history",
        "me-access",
        "steward-grants",
        "steward-reads",
    ] {
        let png = shots.join(format!("{page}.png"));
        let bytes = std::fs::read(&png).unwrap_or_default();
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 5_000,
            "screenshot {}",
            png.display()
        );
    }
    assert!(server.stop().success());

    // Every page view is the viewer's statement in the log, allowed or refused.
    let records = exchange::audit::read_all(&state.join("audit")).unwrap();
    let console: Vec<_> = records
        .iter()
        .filter(|r| r.entry.kind == StatementKind::Console)
        .collect();
    let has = |principal: &str, statement: &str, decision: Decision| {
        console.iter().any(|r| {
            r.entry.principal == principal
                && r.entry.statement == statement
                && r.entry.decision == decision
        })
    };
    assert!(has("auditor", "POST /login", Decision::Allowed));
    assert!(has("auditor", "GET /audit/activity", Decision::Allowed));
    assert!(has(
        "auditor",
        "GET /audit/refusals?format=csv&table=refusals",
        Decision::Allowed
    ));
    assert!(has("auditor", "POST /audit/verify", Decision::Allowed));
    assert!(has("auditor", "POST /logout", Decision::Allowed));
    assert!(has(
        "civil_analyst",
        "GET /audit/activity",
        Decision::Refused
    ));
    assert!(has("civil_analyst", "GET /me/access", Decision::Allowed));
    assert!(has(
        "police_steward",
        "GET /steward/grants",
        Decision::Allowed
    ));
    assert!(has("police_steward", "GET /audit/log", Decision::Refused));
    // Page views carry the viewer's agency and purpose.
    assert!(
        console
            .iter()
            .all(|r| { r.entry.agency.is_some() && r.entry.purpose.is_some() })
    );
    let refused_page = console
        .iter()
        .find(|r| r.entry.principal == "civil_analyst" && r.entry.decision == Decision::Refused)
        .unwrap();
    assert!(
        refused_page
            .entry
            .reason
            .as_deref()
            .unwrap()
            .contains("auditor role"),
        "{:?}",
        refused_page.entry.reason
    );
    // HEAD is recorded as what it was.
    assert!(has("auditor", "HEAD /audit/activity", Decision::Allowed));
    // 25 failed logins of unknown names: ten records, the tenth saying the rest are counted.
    let unknown: Vec<_> = records
        .iter()
        .filter(|r| {
            r.entry.kind == StatementKind::Auth
                && r.entry.principal == "(unknown)"
                && r.entry.statement == "(console login)"
        })
        .collect();
    assert_eq!(unknown.len(), 10, "{unknown:?}");
    // The other 15 were counted, and told before the log was sealed.
    assert!(records.iter().any(|r| {
        r.entry.principal == "(unknown)"
            && r.entry.statement == "(authentication)"
            && r.entry.reason.as_deref()
                == Some("15 more failed logins were counted, not recorded one by one")
    }));
    assert!(
        unknown[9]
            .entry
            .reason
            .as_deref()
            .unwrap()
            .contains("counted, not recorded one by one"),
        "{:?}",
        unknown[9].entry.reason
    );
    // The wrong password was an authentication failure of the console.
    assert!(records.iter().any(|r| {
        r.entry.kind == StatementKind::Auth
            && r.entry.principal == "auditor"
            && r.entry.statement == "(console login)"
            && r.entry.decision == Decision::Refused
    }));
    // The log the console verified is whole.
    let key = exchange::keys::PublicKey::read(&keys.join("signing.pub")).unwrap();
    let summary = exchange::audit::verify(&state.join("audit"), &key).unwrap();
    assert!(summary.sealed);
    assert!(summary.records >= seen["verified_records"].as_u64().unwrap());
}
