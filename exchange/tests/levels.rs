//! Classification levels with effect in `exchange policy check`: each level's rule with a
//! grant that breaks it, the same grant with an approval reference (a warning, and the
//! reference in the audit record of every statement under it), and the demo city clean.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{config_copy, edit};

/// `exchange policy check` on a config dir: (exit code, output).
fn check(config: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_exchange"))
        .arg("--config-dir")
        .arg(config)
        .arg("--data-root")
        .arg(common::data_root())
        .args(["policy", "check"])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn police_grants(config: &Path) -> std::path::PathBuf {
    config.join("policies/grants/police.toml")
}

#[test]
fn the_demo_city_keeps_its_levels() {
    let config = config_copy();
    let (code, out) = check(config.path());
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("leaves its agency"), "{out}");
}

#[test]
fn identifying_pi_given_plain_is_an_error_unless_approved_and_then_audited() {
    let config = config_copy();
    let grants = police_grants(config.path());
    edit(
        &grants,
        "phone = \"mask(keep_first_last, 3, 4)\"",
        "phone = \"plain\"",
    );
    let (code, out) = check(config.path());
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("police.toml:")
            && out.contains("grant 'residents-hrss-employment' gives police.residents.phone (general-3) as plain to role analyst, agency hrss: identifying personal information (general-3) leaves its agency only masked, pseudonymised, as a join key or aggregated"),
        "{out}"
    );
    edit(
        &grants,
        "id = \"residents-hrss-employment\"",
        "id = \"residents-hrss-employment\"\napproval = \"DSB-2026-031\"",
    );
    let (code, out) = check(config.path());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("allowed by approval DSB-2026-031"), "{out}");
    // Every statement under the grant records the approval with the grant.
    let (ex, state) = common::open_config(config.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(ex.execute(
        "hrss_analyst",
        Some("new_employment_services"),
        "SELECT phone FROM police.residents LIMIT 1",
    ))
    .unwrap();
    drop(ex);
    let records = exchange::audit::read_all(&state.path().join("audit")).unwrap();
    let grant = &records
        .iter()
        .find(|r| r.entry.statement.starts_with("SELECT phone") && !r.entry.tables.is_empty())
        .unwrap_or_else(|| panic!("{records:?}"))
        .entry
        .tables[0]
        .grant;
    assert!(
        grant.starts_with("police/residents-hrss-employment@")
            && grant.ends_with(" (approval DSB-2026-031)"),
        "{grant}"
    );
}

#[test]
fn core_never_leaves_and_important_only_in_groups() {
    let config = config_copy();
    let schema = config.path().join("schemas/police.toml");
    let text = std::fs::read_to_string(&schema).unwrap();
    // household_size becomes core, gender important.
    let text = text
        .replacen(
            "name = \"household_size\"\ntype = \"int32\"\nlevel = \"general-2\"",
            "name = \"household_size\"\ntype = \"int32\"\nlevel = \"core\"",
            1,
        )
        .replacen(
            "name = \"gender\"\ntype = \"utf8\"\nlevel = \"general-2\"",
            "name = \"gender\"\ntype = \"utf8\"\nlevel = \"important\"",
            1,
        );
    std::fs::write(&schema, &text).unwrap();
    assert!(
        text.contains("level = \"core\"") && text.contains("level = \"important\""),
        "the schema changed: {text}"
    );
    let (code, out) = check(config.path());
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("grant 'residents-civil-elderly' gives police.residents.household_size (core) as plain to role analyst, agency civil: core data never leaves its agency"),
        "{out}"
    );
    assert!(
        out.contains("grant 'residents-hrss-employment' gives police.residents.gender (important) as plain to role analyst, agency hrss: important data leaves its agency only aggregated, in groups of at least 5"),
        "{out}"
    );
    // Within the agency, a level does not restrict: the police's own grants are not named.
    assert!(!out.contains("to agency police"), "{out}");
}
