//! Hash joins of two join keys compare the raw values (`enforcement::RawJoinKeys`): same
//! rows as the raw data gives, tokens kept wherever the rewrite does not apply.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;

use common::{cells, ok, open};

async fn physical_plan(
    ex: &exchange::Exchange,
    principal: &str,
    purpose: &str,
    sql: &str,
) -> String {
    let session = ex.session(principal, Some(purpose)).unwrap();
    let df = session.ctx.sql(sql).await.unwrap();
    let physical = df.create_physical_plan().await.unwrap();
    datafusion::physical_plan::displayable(physical.as_ref())
        .indent(true)
        .to_string()
}

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

#[tokio::test]
async fn join_of_two_join_keys_compares_raw_values_with_the_same_result() {
    let (ex, _state) = open();
    let sql = "SELECT t.category, r.district, count(*) AS tickets
               FROM hotline.tickets t JOIN police.residents r ON t.caller_key = r.phone
               GROUP BY t.category, r.district";
    let plan = physical_plan(&ex, "hotline_analyst", "complaint_handling", sql).await;
    assert!(plan.contains("HashJoinExec: mode=CollectLeft"), "{plan}");
    assert!(
        !plan.contains("join_key("),
        "tokens still computed:\n{plan}"
    );
    let got: BTreeSet<Vec<String>> = cells(
        &ok(&ex, "hotline_analyst", "complaint_handling", sql)
            .await
            .batches,
    )
    .into_iter()
    .collect();
    let truth = raw("SELECT t.category, r.district, count(*) AS tickets
                     FROM tickets t JOIN residents r ON t.caller_phone = r.phone
                     GROUP BY t.category, r.district")
    .await;
    assert!(!truth.is_empty());
    assert_eq!(got, truth);
}

#[tokio::test]
async fn civil_join_keys_through_a_row_filter_give_the_raw_result() {
    let (ex, _state) = open();
    let sql = "SELECT r.gender, count(*) AS n
               FROM civil.elderly_care e JOIN police.residents r ON e.person_key = r.person_id
               GROUP BY r.gender";
    let plan = physical_plan(&ex, "civil_analyst", "elderly_care_planning", sql).await;
    assert!(!plan.contains("join_key("), "{plan}");
    let got: BTreeSet<Vec<String>> = cells(
        &ok(&ex, "civil_analyst", "elderly_care_planning", sql)
            .await
            .batches,
    )
    .into_iter()
    .collect();
    // The residents grant filters the civil analyst's own district.
    let truth = raw("SELECT r.gender, count(*) AS n
                     FROM elderly_care e JOIN residents r ON e.person_id = r.person_id
                     WHERE r.district = 'hexi' GROUP BY r.gender")
    .await;
    assert!(!truth.is_empty());
    assert_eq!(got, truth);
}

#[tokio::test]
async fn outer_join_of_two_join_keys_gives_the_raw_result() {
    let (ex, _state) = open();
    let sql = "SELECT r.district, count(t.ticket_id) AS tickets, count(*) AS n
               FROM police.residents r LEFT JOIN hotline.tickets t ON t.caller_key = r.phone
               GROUP BY r.district";
    let plan = physical_plan(&ex, "hotline_analyst", "complaint_handling", sql).await;
    assert!(!plan.contains("join_key("), "{plan}");
    let got: BTreeSet<Vec<String>> = cells(
        &ok(&ex, "hotline_analyst", "complaint_handling", sql)
            .await
            .batches,
    )
    .into_iter()
    .collect();
    let truth = raw(
        "SELECT r.district, count(t.ticket_id) AS tickets, count(*) AS n
                     FROM residents r LEFT JOIN tickets t ON t.caller_phone = r.phone
                     GROUP BY r.district",
    )
    .await;
    assert!(!truth.is_empty());
    assert_eq!(got, truth);
}

#[tokio::test]
async fn semi_joins_keep_their_tokens() {
    // Only inner and outer hash joins that drop the keys are rewritten.
    let (ex, _state) = open();
    let sql = "SELECT count(*) AS n FROM hotline.tickets t
               WHERE t.caller_key IN (SELECT phone FROM police.residents)";
    let plan = physical_plan(&ex, "hotline_analyst", "complaint_handling", sql).await;
    assert!(plan.contains("join_key("), "{plan}");
    let got = cells(
        &ok(&ex, "hotline_analyst", "complaint_handling", sql)
            .await
            .batches,
    );
    let truth: Vec<Vec<String>> = raw("SELECT count(*) AS n FROM tickets t
                                       WHERE t.caller_phone IN (SELECT phone FROM residents)")
    .await
    .into_iter()
    .collect();
    assert_eq!(got, truth);
}
