//! Classification levels with effect in `exchange policy check`: each level's rule with a
//! grant that breaks it, the same grant with an approval reference (a warning, and the
//! reference in the audit record of every statement under it), and the demo city clean.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::{config_copy, edit};

fn check(config: &Path) -> (i32, String) {
    common::policy_check(config)
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

/// Exports leave the exchange: a core column read anywhere refuses one, an important one
/// refuses it unless the result is aggregated under a policy threshold of at least 5.
#[test]
fn exports_keep_to_the_levels_of_what_they_read() {
    use exchange::QueryError;
    use exchange::export::{ExportRequest, export};
    let config = config_copy();
    let schema = config.path().join("schemas/health.toml");
    edit(
        &schema,
        "name = \"cost\"\ntype = \"float64\"\npii = \"health\"\nlevel = \"general-4\"",
        "name = \"cost\"\ntype = \"float64\"\npii = \"health\"\nlevel = \"important\"",
    );
    edit(
        &schema,
        "name = \"hospital\"\ntype = \"utf8\"\nlevel = \"general-1\"",
        "name = \"hospital\"\ntype = \"utf8\"\nlevel = \"core\"",
    );
    let (ex, _state) = common::open_config(config.path());
    let out = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut n = 0;
    let mut try_export = |principal: &str, purpose: &str, sql: &str| {
        n += 1;
        let req = ExportRequest {
            principal: principal.into(),
            purpose: Some(purpose.into()),
            recipient: "research-l".into(),
            out: out.path().join(format!("export-{n}.parquet")),
            sql: sql.into(),
            expires: None,
        };
        rt.block_on(export(&ex, &req, &mut |_, _| {}))
    };
    let health = ("health_analyst", "public_health_statistics");
    let civil = ("civil_analyst", "elderly_care_planning");

    // Core: refused even to the owner, even aggregated, even read only in WHERE.
    for sql in [
        "SELECT hospital, count(*) AS n FROM health.visits GROUP BY hospital",
        "SELECT visit_id FROM health.visits WHERE hospital <> 'x'",
    ] {
        match try_export(health.0, health.1, sql) {
            Err(QueryError::Refused(why)) => assert!(
                why.contains("core data (health.visits.hospital)")
                    && why.contains("never leaves its agency"),
                "{why}"
            ),
            other => panic!("{sql}: {other:?}"),
        }
    }
    // Important: the owner's raw rows and its unthresholded sums are refused...
    for sql in [
        "SELECT visit_id, cost FROM health.visits",
        "SELECT sum(cost) AS total FROM health.visits",
    ] {
        match try_export(health.0, health.1, sql) {
            Err(QueryError::Refused(why)) => assert!(
                why.contains("important data (health.visits.cost)")
                    && why.contains("only aggregated"),
                "{why}"
            ),
            other => panic!("{sql}: {other:?}"),
        }
    }
    // ...while civil's sums, in groups of at least 5 residents under its grant, leave.
    let done = try_export(
        civil.0,
        civil.1,
        "SELECT visit_date, sum(cost) AS total FROM health.visits GROUP BY visit_date",
    );
    assert!(done.is_ok(), "{done:?}");
    // Columns of lower levels are exported as before.
    let done = try_export(
        health.0,
        health.1,
        "SELECT visit_id, visit_date FROM health.visits LIMIT 10",
    );
    assert!(done.is_ok(), "{done:?}");
}
