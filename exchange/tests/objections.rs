//! Residents' objections (PIPL art. 44): the Public Security Bureau's register
//! (police.objections) excludes, at source, the rows of its other tables about residents who
//! object to a statement's purpose: in queries, joins, aggregates and subqueries, for that
//! purpose and not another, from the next statement on. A register that cannot be read
//! refuses what it covers. The register itself is the bureau's; auditors see counts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Date32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use exchange::audit::read_all;

use common::{cells, column, config_copy, copy_dir, edit, ok, open, refused, test_config};

const REGISTER: &str = "police/objections.parquet";
const HRSS: (&str, &str) = ("hrss_analyst", "new_employment_services");
const HEALTH: (&str, &str) = ("health_analyst", "public_health_statistics");
const POLICE: (&str, &str) = ("police_officer", "law_enforcement");

/// Residents the test city's register lists as objecting to `purpose`.
fn objectors(purpose: &str) -> BTreeSet<String> {
    let ids = common::raw_strings(REGISTER, "person_id");
    let purposes = common::raw_strings(REGISTER, "purpose");
    ids.into_iter()
        .zip(purposes)
        .filter(|(_, p)| p == purpose)
        .map(|(id, _)| id)
        .collect()
}

/// An exchange over a copy of the test city, whose register a test may rewrite.
fn private_city() -> (exchange::Exchange, tempfile::TempDir, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    copy_dir(common::data_root(), data.path());
    let state = tempfile::tempdir().unwrap();
    let ex = exchange::Exchange::open(test_config(&common::repo_root(), data.path(), state.path()))
        .unwrap();
    (ex, data, state)
}

/// Run and expect an error (a refusal, or a table that cannot be read); returns its text.
async fn fails(ex: &exchange::Exchange, principal: &str, purpose: &str, sql: &str) -> String {
    match ex.execute(principal, Some(purpose), sql).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("{principal}: {sql} answered"),
    }
}

fn count(batches: &[RecordBatch]) -> i64 {
    cells(batches)[0][0].parse().unwrap()
}

/// Write a register of `(person_id, purpose)` rows, atomically.
fn write_register(path: &Path, rows: &[(String, String)]) {
    let rows: Vec<(Option<&str>, Option<&str>)> = rows
        .iter()
        .map(|(a, b)| (Some(a.as_str()), Some(b.as_str())))
        .collect();
    write_register_with_nulls(path, &rows);
}

/// Write a register whose cells may be null, atomically.
fn write_register_with_nulls(path: &Path, rows: &[(Option<&str>, Option<&str>)]) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("person_id", DataType::Utf8, true),
        Field::new("purpose", DataType::Utf8, true),
        Field::new("recorded_on", DataType::Date32, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.1))),
            Arc::new(Date32Array::from(vec![20_000; rows.len()])),
        ],
    )
    .unwrap();
    let tmp = path.with_extension("tmp");
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&tmp).unwrap(), schema, None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    std::fs::rename(tmp, path).unwrap();
}

#[tokio::test]
async fn rows_of_objecting_residents_are_excluded_for_that_purpose_only() {
    let (ex, _state) = open();
    let all = count(
        &ok(
            &ex,
            POLICE.0,
            POLICE.1,
            "SELECT count(*) FROM police.residents",
        )
        .await
        .batches,
    );
    let employment = objectors(HRSS.1);
    let health = objectors(HEALTH.1);
    assert!(!employment.is_empty() && !health.is_empty());
    assert!(objectors("elderly_care_planning").is_empty());

    // Plain counts, per purpose.
    let sql = "SELECT count(*) FROM police.residents";
    let hrss = count(&ok(&ex, HRSS.0, HRSS.1, sql).await.batches);
    assert_eq!(hrss, all - employment.len() as i64);
    let h = count(&ok(&ex, HEALTH.0, HEALTH.1, sql).await.batches);
    assert_eq!(h, all - health.len() as i64);
    // Nobody objects to elderly care planning: civil sees its district whole.
    let civil = count(
        &ok(&ex, "civil_analyst", "elderly_care_planning", sql)
            .await
            .batches,
    );
    let hexi = count(
        &ok(
            &ex,
            POLICE.0,
            POLICE.1,
            "SELECT count(*) FROM police.residents WHERE district = 'hexi'",
        )
        .await
        .batches,
    );
    assert_eq!(civil, hexi);

    // Grouped: the groups add up to the residents nobody objected for.
    let grouped = ok(
        &ex,
        HRSS.0,
        HRSS.1,
        "SELECT district, count(*) AS n FROM police.residents GROUP BY district",
    )
    .await;
    let sum: i64 = column(&grouped.batches, "n")
        .iter()
        .map(|n| n.parse::<i64>().unwrap())
        .sum();
    assert_eq!(sum, hrss);

    // Joined: hrss's own rows (its own, plain identifiers) keep only residents the bureau
    // may describe for the purpose; no objector's person_id comes back through the join,
    // a semi-join, an EXISTS subquery, a CTE, a self-join or a UNION.
    for sql in [
        "SELECT e.person_id FROM hrss.employment e JOIN police.residents r ON e.person_pseudonym = r.person_id",
        "SELECT person_id FROM hrss.employment WHERE person_pseudonym IN (SELECT person_id FROM police.residents)",
        "SELECT e.person_id FROM hrss.employment e WHERE EXISTS (SELECT 1 FROM police.residents r WHERE r.person_id = e.person_pseudonym)",
        "WITH r AS (SELECT person_id FROM police.residents) SELECT e.person_id FROM hrss.employment e JOIN r ON e.person_pseudonym = r.person_id",
        "SELECT e.person_id FROM hrss.employment e JOIN police.residents a ON e.person_pseudonym = a.person_id JOIN police.residents b ON a.person_id = b.person_id",
        "SELECT e.person_id FROM hrss.employment e JOIN (SELECT person_id FROM police.residents UNION ALL SELECT person_id FROM police.residents) r ON e.person_pseudonym = r.person_id",
    ] {
        let out = ok(&ex, HRSS.0, HRSS.1, sql).await;
        let ids = column(&out.batches, "person_id");
        assert!(!ids.is_empty(), "{sql}");
        let leaked: Vec<_> = ids.iter().filter(|i| employment.contains(*i)).collect();
        assert!(leaked.is_empty(), "{sql}: objectors {leaked:?}");
    }
    // hrss's own table is hrss's: the bureau's register does not reach it.
    let own = ok(&ex, HRSS.0, HRSS.1, "SELECT person_id FROM hrss.employment").await;
    assert!(
        column(&own.batches, "person_id")
            .iter()
            .any(|i| employment.contains(i)),
        "the test city has an objector with a job"
    );

    // Every record names the register applied; EXPLAIN says so too.
    let records = read_all(&_state.path().join("audit")).unwrap();
    let hrss_scans: Vec<_> = records
        .iter()
        .filter(|r| r.entry.principal == HRSS.0)
        .flat_map(|r| r.entry.tables.iter())
        .filter(|t| t.table == "police.residents")
        .collect();
    assert!(!hrss_scans.is_empty());
    assert!(
        hrss_scans
            .iter()
            .all(|t| t.objections.as_deref() == Some("police.objections")
                && t.columns.contains(&"person_id".to_string())),
        "{hrss_scans:?}"
    );
    let explain = ok(
        &ex,
        HRSS.0,
        HRSS.1,
        "EXPLAIN SELECT count(*) FROM police.residents",
    )
    .await;
    let text = cells(&explain.batches).concat().join("\n");
    assert!(
        text.contains(
            "rows about residents who object to new_employment_services are excluded at source (police.objections)"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn an_objection_applies_to_the_next_statement() {
    let (ex, data, _state) = private_city();
    let sql = "SELECT count(*) FROM police.residents";
    let before = count(&ok(&ex, HRSS.0, HRSS.1, sql).await.batches);
    let civil_before = count(
        &ok(&ex, "civil_analyst", "elderly_care_planning", sql)
            .await
            .batches,
    );

    // A resident of hexi (civil's district) objects to employment services and to elderly
    // care planning: the same open exchange, the next statement.
    let resident = cells(
        &ok(
            &ex,
            POLICE.0,
            POLICE.1,
            "SELECT person_id FROM police.residents WHERE district = 'hexi' AND person_id NOT IN (SELECT person_id FROM police.objections) ORDER BY person_id LIMIT 1",
        )
        .await
        .batches,
    )[0][0]
        .clone();
    let register = data.path().join(REGISTER);
    let mut rows: Vec<(String, String)> = common::raw_strings(REGISTER, "person_id")
        .into_iter()
        .zip(common::raw_strings(REGISTER, "purpose"))
        .collect();
    rows.push((resident.clone(), HRSS.1.into()));
    rows.push((resident.clone(), "elderly_care_planning".into()));
    write_register(&register, &rows);
    assert_eq!(
        count(&ok(&ex, HRSS.0, HRSS.1, sql).await.batches),
        before - 1
    );
    assert_eq!(
        count(
            &ok(&ex, "civil_analyst", "elderly_care_planning", sql)
                .await
                .batches
        ),
        civil_before - 1
    );

    // Withdrawn: the resident is back for the next statement.
    rows.pop();
    rows.pop();
    write_register(&register, &rows);
    assert_eq!(count(&ok(&ex, HRSS.0, HRSS.1, sql).await.batches), before);

    // An unreadable register refuses what it covers, for every purpose, naming the
    // register and not a resident; tables it does not cover still answer.
    for broken in [&b"PAR1 not a parquet file"[..], &[]] {
        std::fs::write(&register, broken).unwrap();
        for (p, purpose) in [HRSS, POLICE, ("civil_analyst", "elderly_care_planning")] {
            let why = fails(&ex, p, purpose, sql).await;
            assert!(
                why.contains("police.objections") && why.contains("residents' objections"),
                "{why}"
            );
            assert!(!why.contains(&resident), "{why}");
        }
        ok(&ex, HRSS.0, HRSS.1, "SELECT count(*) FROM hrss.employment").await;
    }
    std::fs::remove_file(&register).unwrap();
    let why = fails(&ex, HRSS.0, HRSS.1, sql).await;
    assert!(
        why.contains("police.objections") && why.contains("missing"),
        "{why}"
    );
    // Restored: answers again.
    write_register(&register, &rows);
    assert_eq!(count(&ok(&ex, HRSS.0, HRSS.1, sql).await.batches), before);
}

#[tokio::test]
async fn the_register_is_the_bureaus_and_auditors_see_counts() {
    let (ex, _state) = open();
    // The bureau reads its register whole.
    let own = ok(
        &ex,
        "police_steward",
        "data_governance",
        "SELECT person_id, purpose FROM police.objections",
    )
    .await;
    assert_eq!(
        column(&own.batches, "person_id").len(),
        common::raw_strings(REGISTER, "person_id").len()
    );
    // Auditors count, per purpose; nobody is named.
    let counts = ok(
        &ex,
        "auditor",
        "audit_review",
        "SELECT purpose, count(*) AS n FROM police.objections GROUP BY purpose ORDER BY purpose",
    )
    .await;
    let row = cells(&counts.batches)
        .into_iter()
        .find(|r| r[0] == HRSS.1)
        .unwrap();
    assert_eq!(row[1], objectors(HRSS.1).len().to_string());
    for sql in [
        "SELECT person_id FROM police.objections",
        "SELECT purpose, recorded_on FROM police.objections",
        "SELECT * FROM police.objections",
    ] {
        let why = fails(&ex, "auditor", "audit_review", sql).await;
        assert!(
            objectors(HRSS.1)
                .iter()
                .all(|id| !why.contains(id.as_str())),
            "{why}"
        );
    }
    // Other agencies do not see it at all.
    let why = refused(
        &ex,
        HRSS.0,
        Some(HRSS.1),
        "SELECT count(*) FROM police.objections",
    )
    .await;
    assert!(why.contains("not found or not granted"), "{why}");
}

fn check(config: &Path) -> (i32, String) {
    common::policy_check(config)
}

#[test]
fn policy_check_keeps_the_register_with_its_agency_and_auditors() {
    let clean = config_copy();
    let (code, out) = check(clean.path());
    assert_eq!(code, 0, "{out}");

    // Given to another agency's analysts: an error no approval lifts.
    let config = config_copy();
    let grants = config.path().join("policies/grants/police.toml");
    edit(
        &grants,
        "to = { role = \"auditor\" }",
        "to = { agency = \"hrss\", role = \"analyst\" }\napproval = \"DSB-2026-001\"",
    );
    let (code, out) = check(config.path());
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(
            "grant 'objections-audit-counts' gives the register of objections police.objections"
        ) && out.contains("not limited to the auditor role"),
        "{out}"
    );

    // To auditors, but with the key column or without min_group.
    let config = config_copy();
    let grants = config.path().join("policies/grants/police.toml");
    edit(
        &grants,
        "purpose = \"plain\"\nrecorded_on",
        "purpose = \"plain\"\nperson_id = \"pseudonym(person)\"\nrecorded_on",
    );
    edit(&grants, "min_group = 1\n", "");
    let (code, out) = check(config.path());
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("does not set min_group") && out.contains("key column person_id"),
        "{out}"
    );

    // A malformed register: the schema file and line, the cause.
    let config = config_copy();
    edit(
        &config.path().join("schemas/police.toml"),
        "name = \"purpose\"\ntype = \"utf8\"",
        "name = \"purpose\"\ntype = \"int32\"",
    );
    let (code, out) = check(config.path());
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("schemas/police.toml:")
            && out.contains("`purpose` column must be of type utf8"),
        "{out}"
    );
}

#[tokio::test]
async fn a_register_with_a_near_miss_refuses_instead_of_excluding_nobody() {
    // Review 50: a purpose in another case or with a space, a row naming nobody, an ID
    // with a space matched no one and the register excluded nobody.
    let (ex, data, _state) = private_city();
    let sql = "SELECT count(*) FROM police.residents";
    let register = data.path().join(REGISTER);
    let ids = common::raw_strings(REGISTER, "person_id");
    let purposes = common::raw_strings(REGISTER, "purpose");
    let good: Vec<(Option<&str>, Option<&str>)> = ids
        .iter()
        .zip(&purposes)
        .map(|(i, p)| (Some(i.as_str()), Some(p.as_str())))
        .collect();
    let before = count(&ok(&ex, HRSS.0, HRSS.1, sql).await.batches);
    let someone = cells(
        &ok(
            &ex,
            POLICE.0,
            POLICE.1,
            "SELECT person_id FROM police.residents WHERE person_id NOT IN (SELECT person_id FROM police.objections) ORDER BY person_id LIMIT 1",
        )
        .await
        .batches,
    )[0][0]
        .clone();
    let spaced = format!("{someone} ");
    for (row, cause) in [
        (
            (Some(someone.as_str()), Some("NEW_EMPLOYMENT_SERVICES")),
            "purpose",
        ),
        (
            (Some(someone.as_str()), Some("new_employment_services ")),
            "purpose",
        ),
        (
            (Some(someone.as_str()), None),
            "without a resident or a purpose",
        ),
        ((None, Some(HRSS.1)), "without a resident or a purpose"),
        ((Some(spaced.as_str()), Some(HRSS.1)), "does not validate"),
        ((Some("not an id"), Some(HRSS.1)), "does not validate"),
    ] {
        let mut rows = good.clone();
        rows.push(row);
        write_register_with_nulls(&register, &rows);
        for (p, purpose) in [HRSS, ("civil_analyst", "elderly_care_planning")] {
            let why = fails(&ex, p, purpose, sql).await;
            assert!(
                why.contains("police.objections")
                    && why.contains("malformed")
                    && why.contains(cause),
                "{row:?}: {why}"
            );
            assert!(!why.contains(&someone), "{why}");
        }
    }
    // An ID number whose check character is written in lower case is the same resident.
    let x_ended = ids.iter().find(|i| i.ends_with('X')).map(|i| i.to_string());
    let resident_x = match x_ended {
        Some(i) => i,
        None => {
            // Some resident with an X somewhere in the city: find one.
            cells(
                &ok(
                    &ex,
                    POLICE.0,
                    POLICE.1,
                    "SELECT person_id FROM police.residents WHERE person_id LIKE '%X' ORDER BY person_id LIMIT 1",
                )
                .await
                .batches,
            )[0][0]
                .clone()
        }
    };
    let lower = resident_x.to_ascii_lowercase();
    let mut rows: Vec<(Option<&str>, Option<&str>)> = good
        .iter()
        .filter(|r| r.0 != Some(resident_x.as_str()))
        .cloned()
        .collect();
    let without = {
        write_register_with_nulls(&register, &rows);
        count(&ok(&ex, HRSS.0, HRSS.1, sql).await.batches)
    };
    rows.push((Some(lower.as_str()), Some(HRSS.1)));
    write_register_with_nulls(&register, &rows);
    assert_eq!(
        count(&ok(&ex, HRSS.0, HRSS.1, sql).await.batches),
        without - 1
    );
    // A legacy 15-digit number is the resident whose 18-digit number it became (review 51).
    let born_19xx = cells(
        &ok(
            &ex,
            POLICE.0,
            POLICE.1,
            "SELECT person_id FROM police.residents WHERE substr(person_id, 7, 2) = '19' AND person_id NOT IN (SELECT person_id FROM police.objections) ORDER BY person_id LIMIT 1",
        )
        .await
        .batches,
    )[0][0]
        .clone();
    let legacy = format!("{}{}", &born_19xx[..6], &born_19xx[8..17]);
    let mut rows = good.clone();
    rows.push((Some(legacy.as_str()), Some(HRSS.1)));
    write_register_with_nulls(&register, &rows);
    assert_eq!(
        count(&ok(&ex, HRSS.0, HRSS.1, sql).await.batches),
        before - 1
    );

    // A directory where the register's file should be: refused, not read in part.
    std::fs::remove_file(&register).unwrap();
    std::fs::create_dir(&register).unwrap();
    let why = fails(&ex, HRSS.0, HRSS.1, sql).await;
    assert!(why.contains("one Parquet file"), "{why}");
    std::fs::remove_dir(&register).unwrap();

    write_register_with_nulls(&register, &good);
    assert_eq!(count(&ok(&ex, HRSS.0, HRSS.1, sql).await.batches), before);
}

#[test]
fn policy_check_finds_resident_ids_the_register_cannot_match() {
    // Review 50: a police table naming residents by ID outside the register's domain kept
    // objecting residents' rows.
    let config = config_copy();
    edit(
        &config.path().join("schemas/police.toml"),
        "pii = \"resident_id\"\nlevel = \"general-3\"\ndomain = \"person\"",
        "pii = \"resident_id\"\nlevel = \"general-3\"",
    );
    let (code, out) = check(config.path());
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("police.residents.person_id holds what the register of objections police.objections names residents by, outside its domain 'person'"),
        "{out}"
    );
}
