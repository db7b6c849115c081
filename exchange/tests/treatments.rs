//! Treatments beyond the demo policy: suppress, nullify, type_default and bucket in a grant,
//! checked against the raw data as its owner sees it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;

use exchange::ExchangeConfig;

use common::{cells, config_copy, edit, ok, open_config};

const HRSS: (&str, &str) = ("hrss_analyst", "new_employment_services");

/// The hrss grant on residents rewritten with the treatments under test.
fn config() -> tempfile::TempDir {
    let c = config_copy();
    let file = c.path().join("policies/grants/police.toml");
    edit(
        &file,
        "gender = \"plain\"\nbirth_date = \"mask(year_only)\"\nphone = \"mask(keep_first_last, 3, 4)\"\ndistrict = \"plain\"",
        "gender = \"mask(nullify)\"\nbirth_date = \"mask(type_default)\"\nphone = \"suppress\"\ndistrict = \"plain\"\nhousehold_size = \"mask(bucket, 2, 4)\"",
    );
    c
}

#[tokio::test]
async fn suppress_nullify_type_default_and_bucket_apply_as_written() {
    let c = config();
    let (ex, _state) = open_config(c.path());

    // Suppressed: not in the schema, so not selectable and not described.
    let describe = ok(&ex, HRSS.0, HRSS.1, "DESCRIBE police.residents").await;
    let described: Vec<String> = cells(&describe.batches)
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert!(!described.contains(&"phone".to_string()), "{described:?}");
    assert!(described.contains(&"household_size".to_string()));
    let err = ex
        .execute(HRSS.0, Some(HRSS.1), "SELECT phone FROM police.residents")
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("phone"), "{err}");

    let got = ok(
        &ex,
        HRSS.0,
        HRSS.1,
        "SELECT person_id, gender, birth_date, household_size FROM police.residents ORDER BY person_id",
    )
    .await;
    let truth = ok(
        &ex,
        "police_officer",
        "law_enforcement",
        // hrss does not see the residents who object to its purpose (police.objections).
        "SELECT person_id, household_size FROM police.residents WHERE person_id NOT IN \
         (SELECT person_id FROM police.objections WHERE purpose = 'new_employment_services')",
    )
    .await;
    let raw_sizes: BTreeMap<String, i64> = cells(&truth.batches)
        .into_iter()
        .map(|r| (r[0].clone(), r[1].parse::<i64>().unwrap()))
        .collect();
    let rows = cells(&got.batches);
    assert_eq!(rows.len(), raw_sizes.len());
    let mut histogram: BTreeMap<String, usize> = BTreeMap::new();
    for r in &rows {
        assert_eq!(r[1], "NULL", "nullify: {r:?}");
        assert_eq!(r[2], "1970-01-01", "type_default: {r:?}");
        *histogram.entry(r[3].clone()).or_default() += 1;
    }
    // The buckets partition the raw sizes exactly.
    let expected = |label: &str| {
        raw_sizes
            .values()
            .filter(|&&v| match label {
                "<2" => v < 2,
                "2-3" => (2..4).contains(&v),
                ">=4" => v >= 4,
                _ => false,
            })
            .count()
    };
    for (label, n) in &histogram {
        assert_eq!(*n, expected(label), "bucket {label}");
    }
    assert!(
        histogram
            .keys()
            .all(|l| ["<2", "2-3", ">=4"].contains(&l.as_str()))
    );
}

#[test]
fn suppress_is_a_rule_for_the_checker_and_rejects_derived_columns() {
    let c = config();
    let cfg = |dir: &std::path::Path| {
        ExchangeConfig::new(
            dir.to_path_buf(),
            common::data_root().to_path_buf(),
            dir.join("state"),
        )
    };
    let report = exchange::check(&cfg(c.path()));
    assert!(!report.has_errors(), "{:?}", report.findings);

    // The only other rule on residents.phone is the hotline's join key: drop it, and
    // hrss's `suppress` still counts as a decision, so no "no grant has a rule" warning.
    let file = c.path().join("policies/grants/police.toml");
    edit(&file, "phone = \"join_key(phone)\"\n", "");
    let text: Vec<String> = exchange::check(&cfg(c.path()))
        .findings
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        !text.iter().any(|t| t.contains("residents.phone is tagged")),
        "{text:?}"
    );
    // Without the suppress line the warning appears.
    edit(&file, "phone = \"suppress\"\n", "");
    let text: Vec<String> = exchange::check(&cfg(c.path()))
        .findings
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        text.iter().any(|t| t.contains("residents.phone is tagged")),
        "{text:?}"
    );

    // An address names its district: unmarked in a table with export_k, it is reported.
    let c = config();
    let schema = c.path().join("schemas/police.toml");
    let carries = |dir: &std::path::Path| -> bool {
        exchange::check(&cfg(dir)).findings.iter().any(|f| {
            f.to_string()
                .contains("residents.address carries a quasi-identifier")
        })
    };
    assert!(!carries(c.path()));
    edit(
        &schema,
        "pii = \"address\"\nlevel = \"general-3\"\n# An address names its district: a quasi-identifier like the district itself.\nquasi_identifier = true\n",
        "pii = \"address\"\nlevel = \"general-3\"\n",
    );
    assert!(carries(c.path()));

    let c = config();
    let file = c.path().join("policies/grants/police.toml");
    edit(
        &file,
        "phone = \"suppress\"",
        "phone_hidden = { from = \"phone\", treatment = \"suppress\" }",
    );
    let report = exchange::check(&cfg(c.path()));
    let text: Vec<String> = report.findings.iter().map(ToString::to_string).collect();
    assert!(
        text.iter()
            .any(|t| t.contains("police.toml:") && t.contains("cannot be suppressed")),
        "{text:?}"
    );
}
