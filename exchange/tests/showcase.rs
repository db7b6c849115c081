//! The six showcase queries return the treated shape their policies promise, and their
//! refused counterparts fail with reasons.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;

use common::{column, ok, open, raw_strings, refused};
use exchange::demo::{SHOWCASE, refusals};

#[tokio::test]
async fn every_showcase_query_runs_as_its_principal() {
    let (ex, _state) = open();
    // As in the demo: refusals first, so the auditor has some to find.
    for r in refusals() {
        refused(&ex, r.principal, r.purpose, r.sql).await;
    }
    for show in SHOWCASE {
        for q in show.queries {
            let out = ok(&ex, show.principal, show.purpose, q.sql).await;
            assert!(
                out.rows > 0,
                "{}: {} returned no rows",
                show.principal,
                q.title
            );
        }
    }
}

#[tokio::test]
async fn every_refusal_names_its_reason() {
    let (ex, _state) = open();
    for r in refusals() {
        let reason = refused(&ex, r.principal, r.purpose, r.sql).await;
        assert!(
            reason.contains(r.expect),
            "{}: {} -> {reason}",
            r.principal,
            r.sql
        );
    }
}

fn is_masked_name(s: &str) -> bool {
    let chars: Vec<char> = s.chars().collect();
    let stars = chars.iter().rev().take_while(|c| **c == '*').count();
    stars >= 1 && chars.len() - stars <= 2 && chars.len() - stars >= 1
}

#[tokio::test]
async fn hrss_sees_masked_names_phones_years_and_pseudonyms() {
    let (ex, _state) = open();
    let out = ok(
        &ex,
        "hrss_analyst",
        "new_employment_services",
        "SELECT person_id, name, phone, birth_date FROM police.residents",
    )
    .await;
    let raw_ids: HashSet<String> = raw_strings("police/residents.parquet", "person_id")
        .into_iter()
        .collect();
    for id in column(&out.batches, "person_id") {
        assert_eq!(id.len(), 32, "pseudonym {id}");
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(!raw_ids.contains(&id));
    }
    for n in column(&out.batches, "name") {
        assert!(is_masked_name(&n), "name {n}");
    }
    for p in column(&out.batches, "phone") {
        assert_eq!(p.len(), 11, "phone {p}");
        assert_eq!(&p[3..7], "****", "phone {p}");
        assert!(
            p[..3]
                .chars()
                .chain(p[7..].chars())
                .all(|c| c.is_ascii_digit())
        );
    }
    for d in column(&out.batches, "birth_date") {
        assert!(d.ends_with("-01-01"), "birth date {d}");
    }
}

#[tokio::test]
async fn pseudonyms_are_stable_within_an_agency_and_join() {
    let (ex, _state) = open();
    let sql = "SELECT person_id FROM police.residents ORDER BY person_id";
    let a = ok(&ex, "hrss_analyst", "new_employment_services", sql).await;
    let b = ok(&ex, "hrss_analyst", "new_employment_services", sql).await;
    assert_eq!(
        column(&a.batches, "person_id"),
        column(&b.batches, "person_id")
    );
    // hrss's own employment carries the same pseudonym for the same person.
    let own: HashSet<String> = column(
        &ok(
            &ex,
            "hrss_analyst",
            "new_employment_services",
            "SELECT person_pseudonym FROM hrss.employment",
        )
        .await
        .batches,
        "person_pseudonym",
    )
    .into_iter()
    .collect();
    let residents: HashSet<String> = column(&a.batches, "person_id").into_iter().collect();
    // All but the employed residents who object to the purpose (police.objections), whose
    // rows of police.residents are excluded at source.
    let objecting = objectors("new_employment_services");
    let employed_objecting: HashSet<String> =
        common::raw_strings("hrss/employment.parquet", "person_id")
            .into_iter()
            .filter(|p| objecting.contains(p))
            .collect();
    assert!(!own.is_empty() && !employed_objecting.is_empty());
    assert_eq!(own.difference(&residents).count(), employed_objecting.len());
}

#[tokio::test]
async fn pseudonyms_differ_across_consumer_agencies() {
    // A second consumer agency with a pseudonym grant on the same column.
    let config = common::config_copy();
    common::edit(
        &config.path().join("policies/grants/police.toml"),
        "[[grant]]",
        "[[grant]]\nid = \"residents-health-pseudonym\"\ntable = \"residents\"\nto = { principal = \"health_analyst\" }\npurposes = [\"public_health_statistics\"]\n[grant.columns]\nperson_id = \"pseudonym(person)\"\n\n[[grant]]",
    );
    let (ex, _state) = common::open_config(config.path());
    let sql = "SELECT person_id FROM police.residents";
    let hrss: HashSet<String> = column(
        &ok(&ex, "hrss_analyst", "new_employment_services", sql)
            .await
            .batches,
        "person_id",
    )
    .into_iter()
    .collect();
    let health: HashSet<String> = column(
        &ok(&ex, "health_analyst", "public_health_statistics", sql)
            .await
            .batches,
        "person_id",
    )
    .into_iter()
    .collect();
    // Each without the residents who object to its purpose.
    assert_eq!(
        hrss.len() + objectors("new_employment_services").len(),
        health.len() + objectors("public_health_statistics").len()
    );
    assert!(
        hrss.is_disjoint(&health),
        "two agencies' pseudonyms must not link"
    );
}

#[tokio::test]
async fn civil_row_filter_holds() {
    let (ex, _state) = open();
    let out = ok(
        &ex,
        "civil_analyst",
        "elderly_care_planning",
        "SELECT district, count(*) AS n FROM police.residents GROUP BY district",
    )
    .await;
    assert_eq!(column(&out.batches, "district"), vec!["hexi"]);
    let raw = raw_strings("police/residents.parquet", "district");
    let expected = raw.iter().filter(|d| *d == "hexi").count();
    assert_eq!(column(&out.batches, "n"), vec![expected.to_string()]);
    // Through a subquery and a CTE the filter holds too.
    let out = ok(
        &ex,
        "civil_analyst",
        "elderly_care_planning",
        "WITH r AS (SELECT * FROM police.residents) SELECT count(*) AS n FROM (SELECT district FROM r WHERE district <> 'hexi') x",
    )
    .await;
    assert_eq!(column(&out.batches, "n"), vec!["0"]);
}

#[tokio::test]
async fn civil_sees_generalised_addresses_and_masked_names() {
    let (ex, _state) = open();
    let out = ok(
        &ex,
        "civil_analyst",
        "elderly_care_planning",
        "SELECT name, birth_date, address FROM police.residents",
    )
    .await;
    for a in column(&out.batches, "address") {
        assert_eq!(a, "天津市河西区");
    }
    for n in column(&out.batches, "name") {
        assert!(is_masked_name(&n), "{n}");
    }
}

#[tokio::test]
async fn aggregate_only_groups_below_k_are_suppressed() {
    let (ex, _state) = open();
    let out = ok(
        &ex,
        "civil_analyst",
        "elderly_care_planning",
        "SELECT r.gender, r.household_size,
                CAST(date_part('year', r.birth_date) AS BIGINT) / 25 AS era, avg(v.cost) AS a
         FROM health.visits v JOIN police.residents r ON v.person_id = r.person_id
         GROUP BY 1, 2, 3",
    )
    .await;
    assert!(
        out.thresholds
            .iter()
            .any(|t| t.contains("health.visits.cost >= 5")),
        "{:?}",
        out.thresholds
    );
    let got: HashSet<Vec<String>> = common::cells(&out.batches)
        .into_iter()
        .map(|r| r[..3].to_vec())
        .collect();

    // Ground truth from the raw files with plain DataFusion.
    let ctx = datafusion::prelude::SessionContext::new();
    let root = common::data_root();
    ctx.register_parquet(
        "residents",
        root.join("police/residents.parquet").to_str().unwrap(),
        Default::default(),
    )
    .await
    .unwrap();
    ctx.register_parquet(
        "visits",
        root.join("health/visits.parquet").to_str().unwrap(),
        Default::default(),
    )
    .await
    .unwrap();
    let truth = ctx
        .sql(
            "SELECT r.gender, r.household_size,
                    CAST(date_part('year', r.birth_date) AS BIGINT) / 25 AS era,
                    count(DISTINCT v.person_id) AS people
              FROM visits v JOIN residents r ON v.person_id = r.person_id
              WHERE r.district = 'hexi' GROUP BY 1, 2, 3",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let rows = common::cells(&truth);
    let expected: HashSet<Vec<String>> = rows
        .iter()
        .filter(|r| r[3].parse::<i64>().unwrap() >= 5)
        .map(|r| r[..3].to_vec())
        .collect();
    let small = rows.len() - expected.len();
    assert!(small > 0, "the test needs groups below the threshold");
    assert_eq!(got, expected, "exactly the groups of >= 5 people survive");
}

#[tokio::test]
async fn aggregates_over_one_table_share_one_threshold() {
    // One distinct count per thresholded table, over the entities that contribute to every
    // aggregate (all arguments non-NULL), against the largest k: never looser than one
    // count per aggregate, a third of the work for three aggregates.
    let (ex, _state) = open();
    let plan = ex
        .plan(
            "civil_analyst",
            Some("elderly_care_planning"),
            "SELECT r.gender, count(*) AS n, count(v.hospital) AS h, avg(v.cost) AS a
             FROM health.visits v JOIN police.residents r ON v.person_id = r.person_id
             GROUP BY r.gender",
        )
        .await
        .unwrap()
        .logical;
    let text = plan.display_indent().to_string();
    assert_eq!(text.matches("count(DISTINCT").count(), 1, "{text}");
    assert_eq!(
        text.matches("__exchange_k >= Int64(5)").count(),
        1,
        "{text}"
    );
    assert!(text.contains("IS NOT NULL AND"), "{text}");
}

#[tokio::test]
async fn audit_records_every_statement() {
    let (ex, _state) = open();
    ok(
        &ex,
        "market_trader",
        "data_product",
        "SELECT count(*) FROM market.enterprises",
    )
    .await;
    refused(
        &ex,
        "market_trader",
        Some("data_product"),
        "SELECT * FROM police.residents",
    )
    .await;
    refused(&ex, "market_trader", None, "SELECT 1").await;
    // The query streamed: a started record (what it reads, under which grants), durable
    // before any batch left, then its completion (rows, keyed digest); each refusal is one.
    let raw = exchange::audit::read_all(ex.audit().path()).unwrap();
    use exchange::audit::StreamStatus;
    let kinds: Vec<_> = raw
        .iter()
        .map(|r| (r.entry.stream, r.entry.completes))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (Some(StreamStatus::Started), None),
            (Some(StreamStatus::Complete), Some(raw[0].seq)),
            (None, None),
            (None, None),
        ]
    );
    assert!(raw[0].entry.result_digest.is_none() && raw[0].entry.rows.is_none());
    assert_eq!(raw[1].entry.rows, Some(1));
    assert!(raw[1].entry.statement.is_empty() && raw[1].entry.tables.is_empty());
    let records = exchange::audit::statements(raw);
    assert_eq!(records.len(), 3);
    assert_eq!(records[0].entry.stream, Some(StreamStatus::Complete));
    assert_eq!(
        records[0].entry.decision,
        exchange::audit::Decision::Allowed
    );
    assert_eq!(records[0].entry.tables[0].table, "market.enterprises");
    assert!(
        records[0].entry.tables[0]
            .grant
            .contains("enterprises-trade-product@2026-11-01")
    );
    assert!(records[0].entry.result_digest.is_some());
    assert_eq!(
        records[1].entry.decision,
        exchange::audit::Decision::Refused
    );
    assert!(
        records[2]
            .entry
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("no purpose")
    );
    // The auditor sees them as a table.
    let out = ok(
        &ex,
        "auditor",
        "audit_review",
        "SELECT principal, decision FROM audit.events ORDER BY seq",
    )
    .await;
    assert_eq!(
        column(&out.batches, "decision"),
        vec!["allowed", "refused", "refused"]
    );
}

#[tokio::test]
async fn audit_keeps_values_of_failed_statements_and_tables_of_refused_ones() {
    let (ex, _state) = open();
    // The owner sees its own raw error; the log does not keep the value.
    let err = ex
        .execute(
            "police_officer",
            Some("law_enforcement"),
            "SELECT CAST(name AS INT) FROM police.residents",
        )
        .await
        .unwrap_err()
        .to_string();
    let raw_names = raw_strings("police/residents.parquet", "name");
    assert!(raw_names.iter().any(|n| err.contains(n.as_str())), "{err}");
    refused(
        &ex,
        "civil_analyst",
        Some("elderly_care_planning"),
        "SELECT person_id FROM police.residents",
    )
    .await;
    let records =
        exchange::audit::statements(exchange::audit::read_all(ex.audit().path()).unwrap());
    let reason = records[0].entry.reason.clone().unwrap_or_default();
    assert!(
        !raw_names.iter().any(|n| reason.contains(n.as_str())),
        "{reason}"
    );
    assert_eq!(records[1].entry.tables.len(), 1, "{:?}", records[1]);
    assert_eq!(records[1].entry.tables[0].table, "police.residents");
    // Digests are keyed: the same result under another key differs, so guesses cannot be confirmed.
    let a = ok(&ex, "market_trader", "data_product", "SELECT 1 AS x")
        .await
        .digest;
    let (other, _s2) = open();
    let b = ok(&other, "market_trader", "data_product", "SELECT 1 AS x")
        .await
        .digest;
    assert_ne!(a, b);
}

#[tokio::test]
async fn only_auditors_read_the_audit_log() {
    let (ex, _state) = open();
    for (p, purpose) in [
        ("police_officer", "law_enforcement"),
        ("hrss_analyst", "new_employment_services"),
    ] {
        let r = refused(&ex, p, Some(purpose), "SELECT * FROM audit.events").await;
        assert!(r.contains("not found or not granted"), "{r}");
    }
}

#[tokio::test]
async fn audit_records_columns_used_only_in_where() {
    let (ex, _state) = open();
    ok(
        &ex,
        "police_officer",
        "law_enforcement",
        "SELECT count(*) FROM police.residents WHERE household_size > 3",
    )
    .await;
    let records = exchange::audit::read_all(ex.audit().path()).unwrap();
    let cols = &records[0].entry.tables[0].columns;
    assert!(cols.contains(&"household_size".to_string()), "{cols:?}");
}

#[tokio::test]
async fn typed_random_replace_outputs_valid_unlinkable_ids() {
    let config = common::config_copy();
    common::edit(
        &config.path().join("policies/grants/market.toml"),
        "uscc = \"plain\"",
        "uscc = \"typed_random_replace(uscc)\"\nlegal_rep_id = \"typed_random_replace(resident_id)\"",
    );
    let (ex, _state) = common::open_config(config.path());
    let out = ok(
        &ex,
        "market_trader",
        "data_product",
        "SELECT uscc, legal_rep_id FROM market.enterprises",
    )
    .await;
    let raw_ids: HashSet<String> = raw_strings("market/enterprises.parquet", "legal_rep_id")
        .into_iter()
        .collect();
    let raw_prefixes: HashSet<String> = raw_ids.iter().map(|i| i[..14].to_string()).collect();
    let raw_usccs: HashSet<String> = raw_strings("market/enterprises.parquet", "uscc")
        .into_iter()
        .collect();
    let ids = column(&out.batches, "legal_rep_id");
    assert!(!ids.is_empty());
    let mut unchanged = 0;
    for id in &ids {
        assert!(exchange::masking::validate::is_valid_id_cn(id), "{id}");
        assert!(
            raw_prefixes.contains(&id[..14]),
            "region and birth date kept: {id}"
        );
        unchanged += usize::from(raw_ids.contains(id));
    }
    assert!(
        unchanged * 10 < ids.len(),
        "{unchanged} of {} unchanged",
        ids.len()
    );
    for u in column(&out.batches, "uscc") {
        assert!(exchange::masking::validate::is_valid_uscc(&u), "{u}");
        assert!(!raw_usccs.contains(&u), "{u}");
    }
}

#[tokio::test]
async fn sessions_are_reused_but_data_files_are_read_afresh() {
    // Sessions are cached per principal, purpose and day (issue 13): a data file rewritten
    // between two statements must still be read as it is now, rows and statistics.
    let data = tempfile::tempdir().unwrap();
    common::copy_dir(common::data_root(), data.path());
    let state = tempfile::tempdir().unwrap();
    let ex = exchange::Exchange::open(common::test_config(
        &common::repo_root(),
        data.path(),
        state.path(),
    ))
    .unwrap();
    let count = "SELECT count(*) AS n FROM market.enterprises";
    let n = |out: exchange::QueryOutput| column(&out.batches, "n")[0].parse::<usize>().unwrap();
    let before = n(ok(&ex, "market_trader", "data_product", count).await);
    assert!(before > 10);
    // Rewrite the file with its first ten rows.
    let file = data.path().join("market/enterprises.parquet");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&file).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let first = reader.into_iter().next().unwrap().unwrap().slice(0, 10);
    let tmp = data.path().join("market/enterprises.parquet.new");
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&tmp).unwrap(),
        first.schema(),
        None,
    )
    .unwrap();
    w.write(&first).unwrap();
    w.close().unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    assert_eq!(n(ok(&ex, "market_trader", "data_product", count).await), 10);
}

/// Residents the test city's register lists as objecting to `purpose`.
fn objectors(purpose: &str) -> HashSet<String> {
    common::raw_strings("police/objections.parquet", "person_id")
        .into_iter()
        .zip(common::raw_strings("police/objections.parquet", "purpose"))
        .filter(|(_, p)| p == purpose)
        .map(|(id, _)| id)
        .collect()
}
