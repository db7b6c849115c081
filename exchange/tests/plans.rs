//! The enforced plans of canonical queries, as principals, snapshotted (insta): a change to
//! the enforcement shows in review as a diff of the plans it produces, the logical plan
//! (policy applied, optimized) and the physical plan.
//!
//! After an intended change: `INSTA_UPDATE=always cargo test --test plans` (or
//! `cargo insta review`), then read the diff of `tests/snapshots/plans__*.snap`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use exchange::demo::SHOWCASE;

const CIVIL: (&str, &str) = ("civil_analyst", "elderly_care_planning");
const HRSS: (&str, &str) = ("hrss_analyst", "new_employment_services");
const HEALTH: (&str, &str) = ("health_analyst", "public_health_statistics");
const HOTLINE: (&str, &str) = ("hotline_analyst", "complaint_handling");
const MARKET: (&str, &str) = ("market_trader", "data_product");

/// Canonical queries beyond the showcase, one per enforcement feature.
const CASES: &[(&str, (&str, &str), &str)] = &[
    (
        "masked_columns",
        HRSS,
        "SELECT name, phone, birth_date, gender FROM police.residents WHERE district = 'hexi' ORDER BY name LIMIT 5",
    ),
    (
        "row_filter_of_the_owner",
        CIVIL,
        "SELECT care_level, count(*) AS n FROM civil.elderly_care GROUP BY care_level",
    ),
    (
        "join_on_join_keys",
        CIVIL,
        "SELECT r.district, count(*) AS n FROM civil.elderly_care e JOIN police.residents r ON e.person_key = r.person_id GROUP BY r.district",
    ),
    (
        "semi_join_on_a_join_key",
        CIVIL,
        "SELECT count(*) AS n FROM police.residents r WHERE r.person_id IN (SELECT person_key FROM civil.elderly_care WHERE lives_alone)",
    ),
    (
        "min_group_aggregate",
        CIVIL,
        "SELECT e.care_level, count(*) AS visits, avg(v.cost) AS avg_cost FROM civil.elderly_care e JOIN health.visits v ON v.person_id = e.person_key GROUP BY e.care_level",
    ),
    (
        "aggregate_only_over_a_cte",
        CIVIL,
        "WITH v AS (SELECT person_id, cost FROM health.visits) SELECT e.lives_alone, sum(v.cost) AS total FROM civil.elderly_care e JOIN v ON v.person_id = e.person_key GROUP BY e.lives_alone",
    ),
    (
        "union_all_of_two_agencies",
        HRSS,
        "SELECT district AS d, count(*) AS n FROM police.residents GROUP BY district UNION ALL SELECT job_type, count(*) FROM hrss.employment GROUP BY job_type",
    ),
    (
        "window_over_visible_columns",
        HRSS,
        "SELECT district, gender, count(*) AS n, rank() OVER (PARTITION BY district ORDER BY count(*) DESC) AS r FROM police.residents GROUP BY district, gender",
    ),
    (
        "left_join_and_distinct",
        HRSS,
        "SELECT DISTINCT r.district, e.job_type FROM police.residents r LEFT JOIN hrss.employment e ON e.person_pseudonym = r.person_id",
    ),
    (
        "pseudonymised_detail",
        HRSS,
        "SELECT e.person_id, e.monthly_wage, e.job_type FROM hrss.employment e ORDER BY e.person_id LIMIT 10",
    ),
    (
        "hotline_tickets_by_caller_district",
        HOTLINE,
        "SELECT t.category, count(*) AS n FROM hotline.tickets t GROUP BY t.category",
    ),
    (
        "health_statistics",
        HEALTH,
        "SELECT date_part('year', visit_date) AS y, count(*) AS visits FROM health.visits GROUP BY 1",
    ),
    (
        "enterprises_as_a_data_product",
        MARKET,
        "SELECT industry, count(*) AS n, sum(registered_capital) AS capital FROM market.enterprises GROUP BY industry",
    ),
];

/// `NOT IN (SET) ([...])` lists (the residents a register of objections excludes, read
/// when the statement is planned) as `<objectors>`: the register, not the plan, says who.
fn objectors_elided(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("NOT IN (SET) ([") {
        let open = at + "NOT IN (SET) ([".len();
        out.push_str(&rest[..open]);
        out.push_str("<objectors>");
        match rest[open..].find("])") {
            Some(end) => rest = &rest[open + end..],
            None => rest = "",
        }
    }
    out.push_str(rest);
    out
}

/// The plans as text, with the test city's location replaced by `<data>` and objectors
/// elided.
async fn plans(ex: &exchange::Exchange, principal: &str, purpose: &str, sql: &str) -> String {
    let plan = ex
        .plan(principal, Some(purpose), sql)
        .await
        .unwrap_or_else(|e| panic!("{principal}: {sql}: {e}"));
    let physical = datafusion::physical_plan::displayable(plan.physical.as_ref())
        .indent(true)
        .to_string();
    let text = format!(
        "-- {principal} / {purpose}\n{sql}\n\n-- logical (policy applied, optimized)\n{}\n\n-- physical\n{physical}",
        plan.logical.display_indent()
    );
    // Logical plans show the path, physical plans the object store's (no leading slash).
    let root = common::data_root().display().to_string();
    objectors_elided(
        &text
            .replace(&root, "<data>")
            .replace(root.trim_start_matches('/'), "<data>"),
    )
}

#[tokio::test]
async fn enforced_plans_of_canonical_queries() {
    // Two partitions whatever the machine, so that physical plans are the same everywhere.
    let (ex, _state) = common::open_with(|c| c.target_partitions = Some(2));
    let mut settings = insta::Settings::clone_current();
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    let _guard = settings.bind_to_scope();
    for show in SHOWCASE.iter().filter(|s| s.principal != "auditor") {
        for (i, q) in show.queries.iter().enumerate() {
            let text = plans(&ex, show.principal, show.purpose, q.sql).await;
            insta::assert_snapshot!(format!("plans__showcase_{}_{i}", show.principal), text);
        }
    }
    for (name, (principal, purpose), sql) in CASES {
        let text = plans(&ex, principal, purpose, sql).await;
        insta::assert_snapshot!(format!("plans__{name}"), text);
    }
}
