//! Hash joins of two join keys compare the raw values (`enforcement::RawJoinKeys`): same
//! rows as the raw data gives, tokens kept wherever the rewrite does not apply.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;

use common::{cells, ok, open, physical_plan_text};

const HOTLINE: (&str, &str) = ("hotline_analyst", "complaint_handling");
const CIVIL: (&str, &str) = ("civil_analyst", "elderly_care_planning");
const HRSS: (&str, &str) = ("hrss_analyst", "new_employment_services");

/// Rows of `sql` over the raw demo files, with plain DataFusion, `residents` without the
/// residents who object to `purpose` (police.objections).
async fn raw(purpose: &str, sql: &str) -> BTreeSet<Vec<String>> {
    let ctx = common::raw_session(common::data_root(), purpose).await;
    cells(&ctx.sql(sql).await.unwrap().collect().await.unwrap())
        .into_iter()
        .collect()
}

/// Run `sql` as `who`; check whether its plan still computes join keys and that its rows
/// equal `raw_sql`'s over the raw files.
async fn check(who: (&str, &str), sql: &str, tokens_kept: bool, raw_sql: &str) {
    let (ex, _state) = open();
    let plan = physical_plan_text(&ex, who.0, who.1, sql).await;
    let tokens = plan.contains("join_key(") || plan.contains("pseudonym(");
    assert_eq!(tokens, tokens_kept, "{plan}");
    let got: BTreeSet<Vec<String>> = cells(&ok(&ex, who.0, who.1, sql).await.batches)
        .into_iter()
        .collect();
    let truth = raw(who.1, raw_sql).await;
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
async fn a_join_key_carried_through_another_join_compares_raw_values() {
    // t1.caller_key reaches its join with residents through the tickets self-join on
    // ticket_id, which only carries it.
    check(
        HOTLINE,
        "SELECT t2.category, r.district, count(*) AS n
         FROM hotline.tickets t1 JOIN hotline.tickets t2 ON t1.ticket_id = t2.ticket_id
         JOIN police.residents r ON t1.caller_key = r.phone
         GROUP BY t2.category, r.district",
        false,
        "SELECT t2.category, r.district, count(*) AS n
         FROM tickets t1 JOIN tickets t2 ON t1.ticket_id = t2.ticket_id
         JOIN residents r ON t1.caller_phone = r.phone
         GROUP BY t2.category, r.district",
    )
    .await;
}

#[tokio::test]
async fn a_carried_join_key_in_an_outer_join_gives_the_raw_result() {
    // Residents without tickets keep a NULL category; the key crosses an inner join first.
    check(
        HOTLINE,
        "SELECT r.district, t.category, count(*) AS n
         FROM police.residents r LEFT JOIN (
           SELECT t1.caller_key, t2.category
           FROM hotline.tickets t1 JOIN hotline.tickets t2 ON t1.ticket_id = t2.ticket_id
         ) t ON t.caller_key = r.phone
         GROUP BY r.district, t.category",
        false,
        "SELECT r.district, t.category, count(*) AS n
         FROM residents r LEFT JOIN (
           SELECT t1.caller_phone, t2.category
           FROM tickets t1 JOIN tickets t2 ON t1.ticket_id = t2.ticket_id
         ) t ON t.caller_phone = r.phone
         GROUP BY r.district, t.category",
    )
    .await;
}

#[tokio::test]
async fn a_carried_join_key_meets_a_row_filtered_side() {
    // e1.person_key crosses the self-join on the plain person_id; residents are filtered to
    // the civil analyst's district.
    check(
        CIVIL,
        "SELECT r.gender, e2.care_level, count(*) AS n
         FROM civil.elderly_care e1 JOIN civil.elderly_care e2 ON e1.person_id = e2.person_id
         JOIN police.residents r ON e1.person_key = r.person_id
         GROUP BY r.gender, e2.care_level",
        false,
        "SELECT r.gender, e2.care_level, count(*) AS n
         FROM elderly_care e1 JOIN elderly_care e2 ON e1.person_id = e2.person_id
         JOIN residents r ON e1.person_id = r.person_id
         WHERE r.district = 'hexi' GROUP BY r.gender, e2.care_level",
    )
    .await;
}

#[tokio::test]
async fn semi_joins_compare_raw_values() {
    check(
        HOTLINE,
        "SELECT count(*) AS n FROM hotline.tickets t
         WHERE t.caller_key IN (SELECT phone FROM police.residents WHERE district = 'hexi')",
        false,
        "SELECT count(*) AS n FROM tickets t
         WHERE t.caller_phone IN (SELECT phone FROM residents WHERE district = 'hexi')",
    )
    .await;
}

#[tokio::test]
async fn anti_joins_compare_raw_values() {
    check(
        HOTLINE,
        "SELECT t.category, count(*) AS n FROM hotline.tickets t
         WHERE t.caller_key NOT IN (SELECT phone FROM police.residents WHERE district = 'hexi')
         GROUP BY t.category",
        false,
        "SELECT t.category, count(*) AS n FROM tickets t
         WHERE t.caller_phone NOT IN (SELECT phone FROM residents WHERE district = 'hexi')
         GROUP BY t.category",
    )
    .await;
}

#[tokio::test]
async fn tokens_stay_where_they_cross_a_node_the_rewrite_does_not_follow() {
    // A union mixes two tables' keys in one column; the rewrite follows a key only through
    // nodes that carry one source, so both keep their tokens, and the result is the raw one.
    check(
        HOTLINE,
        "SELECT r.district, count(*) AS n
         FROM (SELECT caller_key AS k FROM hotline.tickets
               UNION ALL SELECT phone FROM police.residents WHERE district = 'hexi') u
         JOIN police.residents r ON u.k = r.phone GROUP BY r.district",
        true,
        "SELECT r.district, count(*) AS n
         FROM (SELECT caller_phone AS k FROM tickets
               UNION ALL SELECT phone FROM residents WHERE district = 'hexi') u
         JOIN residents r ON u.k = r.phone GROUP BY r.district",
    )
    .await;
    // A sort with a limit carries the key but is not followed either.
    check(
        HOTLINE,
        "SELECT r.district, count(*) AS n
         FROM (SELECT caller_key FROM hotline.tickets ORDER BY ticket_id LIMIT 100) u
         JOIN police.residents r ON u.caller_key = r.phone GROUP BY r.district",
        true,
        "SELECT r.district, count(*) AS n
         FROM (SELECT caller_phone FROM tickets ORDER BY ticket_id LIMIT 100) u
         JOIN residents r ON u.caller_phone = r.phone GROUP BY r.district",
    )
    .await;
}

#[tokio::test]
async fn a_join_on_pseudonyms_that_are_not_shown_compares_raw_values() {
    check(
        HRSS,
        "SELECT r.district, count(*) AS workers, median(e.monthly_wage) AS wage
         FROM hrss.employment e JOIN police.residents r ON e.person_pseudonym = r.person_id
         WHERE e.job_type IN ('platform_delivery', 'ride_hailing')
         GROUP BY r.district",
        false,
        "SELECT r.district, count(*) AS workers, median(e.monthly_wage) AS wage
         FROM employment e JOIN residents r ON e.person_id = r.person_id
         WHERE e.job_type IN ('platform_delivery', 'ride_hailing')
         GROUP BY r.district",
    )
    .await;
}

#[tokio::test]
async fn a_join_on_pseudonyms_that_are_shown_keeps_them() {
    // The pseudonym is a visible value: shown, it is computed on both sides and compared as
    // such; the rows are those of the raw join.
    let sql = "SELECT e.person_pseudonym, r.district
               FROM hrss.employment e JOIN police.residents r ON e.person_pseudonym = r.person_id
               WHERE e.job_type = 'ride_hailing'";
    let (ex, _state) = open();
    let plan = physical_plan_text(&ex, HRSS.0, HRSS.1, sql).await;
    assert_eq!(plan.matches("pseudonym(").count(), 2, "{plan}");
    let got = cells(&ok(&ex, HRSS.0, HRSS.1, sql).await.batches);
    let truth = raw(
        HRSS.1,
        "SELECT e.person_id, r.district
         FROM employment e JOIN residents r ON e.person_id = r.person_id
         WHERE e.job_type = 'ride_hailing'",
    )
    .await;
    assert!(!truth.is_empty());
    assert_eq!(got.len(), truth.len());
    let districts = |rows: Vec<Vec<String>>| -> Vec<String> {
        let mut d: Vec<String> = rows.into_iter().map(|r| r[1].clone()).collect();
        d.sort();
        d
    };
    assert_eq!(districts(got), districts(truth.into_iter().collect()));
}
