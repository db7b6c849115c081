//! `exchange scan` finds every PII column of the demo city.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use exchange::catalog::PiiType;
use exchange::catalog::discover::scan_file;

/// Expected PII type per column of one file.
type Expectation = (&'static str, &'static [(&'static str, Option<PiiType>)]);

#[test]
fn scan_identifies_the_demo_city_pii_columns() {
    let expected: &[Expectation] = &[
        (
            "police/residents.parquet",
            &[
                ("person_id", Some(PiiType::ResidentId)),
                ("name", Some(PiiType::Name)),
                ("gender", None),
                ("birth_date", Some(PiiType::BirthDate)),
                ("phone", Some(PiiType::Phone)),
                ("address", Some(PiiType::Address)),
                ("district", None),
                ("household_size", None),
            ],
        ),
        (
            "hrss/employment.parquet",
            &[
                ("person_id", Some(PiiType::ResidentId)),
                ("employer_uscc", Some(PiiType::Uscc)),
                ("job_type", None),
                ("monthly_wage", Some(PiiType::Financial)),
            ],
        ),
        (
            "health/visits.parquet",
            &[
                ("visit_id", None),
                ("person_id", Some(PiiType::ResidentId)),
                ("hospital", None),
                ("diagnosis_code", Some(PiiType::Health)),
            ],
        ),
        (
            "civil/elderly_care.parquet",
            &[
                ("person_id", Some(PiiType::ResidentId)),
                ("disability_grade", Some(PiiType::Health)),
            ],
        ),
        (
            "market/enterprises.parquet",
            &[
                ("uscc", Some(PiiType::Uscc)),
                ("legal_rep_id", Some(PiiType::ResidentId)),
                ("district", None),
            ],
        ),
        (
            "hotline/tickets.parquet",
            &[("caller_phone", Some(PiiType::Phone)), ("category", None)],
        ),
    ];
    for (file, columns) in expected {
        let findings = scan_file(&common::data_root().join(file), 500).unwrap();
        for (name, pii) in *columns {
            let f = findings.iter().find(|f| f.name == *name).unwrap();
            assert_eq!(f.pii, *pii, "{file}: {name}");
            if pii.is_some() {
                assert!(f.share >= 0.8, "{file}: {name} share {}", f.share);
            }
        }
    }
}

#[test]
fn scan_cli_prints_a_schema_snippet_that_loads() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_exchange"))
        .arg("--config-dir")
        .arg(common::repo_root())
        .arg("--data-root")
        .arg(common::data_root())
        .arg("--state-dir")
        .arg(dir.path())
        .args(["scan", "police.residents", "--format", "schema"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("pii = \"resident_id\""), "{text}");
    // The snippet is a valid schema file.
    let mut catalog = exchange::catalog::Catalog::default();
    catalog
        .add_file(std::path::Path::new("scanned.toml"), &text)
        .unwrap();
    assert_eq!(catalog.datasets()[0].entity.as_deref(), Some("person_id"));
}

#[test]
fn scan_of_a_declared_table_suggests_within_its_declared_levels() {
    let config = common::config_copy();
    let schema = config.path().join("schemas/police.toml");
    // gender (general-2, no PII) declared important; name (general-3) declared core.
    common::edit(
        &schema,
        "name = \"gender\"\ntype = \"utf8\"\nlevel = \"general-2\"",
        "name = \"gender\"\ntype = \"utf8\"\nlevel = \"important\"",
    );
    common::edit(
        &schema,
        "name = \"name\"\ntype = \"utf8\"\npii = \"name\"\nlevel = \"general-3\"",
        "name = \"name\"\ntype = \"utf8\"\npii = \"name\"\nlevel = \"core\"",
    );
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_exchange"))
        .arg("--config-dir")
        .arg(config.path())
        .arg("--data-root")
        .arg(common::data_root())
        .arg("--state-dir")
        .arg(dir.path())
        .args(["scan", "police.residents"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let line = |column: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(column))
            .unwrap_or_else(|| panic!("no line for {column}:\n{text}"))
            .to_string()
    };
    let gender = line("gender");
    assert!(
        gender.contains("important") && gender.contains("aggregate_only(5)"),
        "{gender}"
    );
    let name = line("name");
    assert!(
        name.contains("core") && name.contains("never leaves its agency"),
        "{name}"
    );
    // Undeclared stricter levels are not invented: phone keeps its suggestion.
    let phone = line("phone");
    assert!(
        phone.contains("general-3") && phone.contains("mask(phone_cn)"),
        "{phone}"
    );
}
