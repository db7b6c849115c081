//! Hash joins of two join keys compare the raw values (`enforcement::RawJoinKeys`): same
//! rows as the raw data gives, tokens kept wherever the rewrite does not apply.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;

use common::{cells, ok, open, physical_plan_text};

const HOTLINE: (&str, &str) = ("hotline_analyst", "complaint_handling");
const CIVIL: (&str, &str) = ("civil_analyst", "elderly_care_planning");

/// Rows of `sql` over the raw demo files, with plain DataFusion.
async fn raw(sql: &str) -> BTreeSet<Vec<String>> {
    let ctx = datafusion::prelude::SessionContext::new();
    let root = common::data_root();
    for (name, file) in [
        ("tickets", "hotline/tickets.parquet"),
        ("residents", "police/residents.parquet"),
        ("elderly_care", "civil/elderly_care.parquet"),
    ] {
        ctx.register_parquet(name, root.join(file).to_str().unwrap(), Default::default())
            .await
            .unwrap();
    }
    cells(&ctx.sql(sql).await.unwrap().collect().await.unwrap())
        .into_iter()
        .collect()
}

/// Run `sql` as `who`; check whether its plan still computes join keys and that its rows
/// equal `raw_sql`'s over the raw files.
async fn check(who: (&str, &str), sql: &str, tokens_kept: bool, raw_sql: &str) {
    let (ex, _state) = open();
    let plan = physical_plan_text(&ex, who.0, who.1, sql).await;
    assert_eq!(plan.contains("join_key("), tokens_kept, "{plan}");
    let got: BTreeSet<Vec<String>> = cells(&ok(&ex, who.0, who.1, sql).await.batches)
        .into_iter()
        .collect();
    let truth = raw(raw_sql).await;
    assert!(!truth.is_empty());
    assert_eq!(got, truth);
}

#[tokio::test]
async fn join_of_two_join_keys_compares_raw_values_with_the_same_result() {
    let sql = "SELECT t.category, r.district, count(*) AS tickets
               FROM hotline.tickets t JOIN police.residents r ON t.caller_key = r.phone
               GROUP BY t.category, r.district";
    let (ex, _state) = open();
    let plan = physical_plan_text(&ex, HOTLINE.0, HOTLINE.1, sql).await;
    assert!(plan.contains("HashJoinExec: mode=CollectLeft"), "{plan}");
    check(
        HOTLINE,
        sql,
        false,
        "SELECT t.category, r.district, count(*) AS tickets
         FROM tickets t JOIN residents r ON t.caller_phone = r.phone
         GROUP BY t.category, r.district",
    )
    .await;
}

#[tokio::test]
async fn civil_join_keys_through_a_row_filter_give_the_raw_result() {
    // The residents grant filters the civil analyst's own district.
    check(
        CIVIL,
        "SELECT r.gender, count(*) AS n
         FROM civil.elderly_care e JOIN police.residents r ON e.person_key = r.person_id
         GROUP BY r.gender",
        false,
        "SELECT r.gender, count(*) AS n
         FROM elderly_care e JOIN residents r ON e.person_id = r.person_id
         WHERE r.district = 'hexi' GROUP BY r.gender",
    )
    .await;
}

#[tokio::test]
async fn outer_join_of_two_join_keys_gives_the_raw_result() {
    check(
        HOTLINE,
        "SELECT r.district, count(t.ticket_id) AS tickets, count(*) AS n
         FROM police.residents r LEFT JOIN hotline.tickets t ON t.caller_key = r.phone
         GROUP BY r.district",
        false,
        "SELECT r.district, count(t.ticket_id) AS tickets, count(*) AS n
         FROM residents r LEFT JOIN tickets t ON t.caller_phone = r.phone
         GROUP BY r.district",
    )
    .await;
}

#[tokio::test]
async fn semi_joins_keep_their_tokens() {
    // Only inner and outer hash joins that drop the keys are rewritten.
    check(
        HOTLINE,
        "SELECT count(*) AS n FROM hotline.tickets t
         WHERE t.caller_key IN (SELECT phone FROM police.residents)",
        true,
        "SELECT count(*) AS n FROM tickets t
         WHERE t.caller_phone IN (SELECT phone FROM residents)",
    )
    .await;
}
