//! The contribution model of aggregates over protected rows (health.visits is `min_group = 5`
//! with cost, hospital, diagnosis and chronic aggregate-only for civil_analyst): arguments from
//! the protected table alone, each row once per group, nothing on the way that can fail,
//! order statistics only where granted. Each attack class of issue 11 with its variants.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;

mod model;
mod totality;

use std::collections::BTreeSet;

use common::{cells, data_root, open, refused};

const CIVIL: (&str, &str) = ("civil_analyst", "elderly_care_planning");

/// A raw DataFusion session over the demo files, for ground truth.
async fn raw() -> datafusion::prelude::SessionContext {
    let ctx = datafusion::prelude::SessionContext::new();
    for (name, file) in [
        ("visits", "health/visits.parquet"),
        ("elderly", "civil/elderly_care.parquet"),
        ("residents", "police/residents.parquet"),
    ] {
        ctx.register_parquet(
            name,
            data_root().join(file).to_str().unwrap(),
            Default::default(),
        )
        .await
        .unwrap();
    }
    ctx
}

async fn raw_rows(sql: &str) -> BTreeSet<Vec<String>> {
    let batches = raw().await.sql(sql).await.unwrap().collect().await.unwrap();
    cells(&batches).into_iter().collect()
}

/// An elderly resident (known to the civil analyst) with visits in several years.
async fn target() -> String {
    let rows = raw_rows(
        "SELECT e.person_id FROM elderly e JOIN visits v ON v.person_id = e.person_id
         GROUP BY e.person_id HAVING count(DISTINCT date_part('year', v.visit_date)) >= 2
         ORDER BY e.person_id LIMIT 1",
    )
    .await;
    rows.into_iter().next().expect("a target with visits")[0].clone()
}

async fn rows(ex: &exchange::Exchange, sql: &str) -> BTreeSet<Vec<String>> {
    let out = common::ok(ex, CIVIL.0, CIVIL.1, sql).await;
    cells(&out.batches).into_iter().collect()
}

async fn refused_with(ex: &exchange::Exchange, sql: &str, expect: &str) {
    let reason = refused(ex, CIVIL.0, Some(CIVIL.1), sql).await;
    assert!(
        reason.contains(expect),
        "{sql}\n  -> {reason}\n  expected to mention: {expect}"
    );
}

/// Per year: visits and their total cost of civil's elderly, as the policy releases them.
const BASE: &str =
    "SELECT v.visit_date AS yr, count(*) AS n, round(sum(v.cost), 2) AS s, count(v.hospital) AS h
    FROM civil.elderly_care e JOIN health.visits v ON v.person_id = e.person_key GROUP BY 1";

/// Five elderly residents with visits, other than `x`, as a SQL list.
async fn five_known_with_visits(x: &str) -> String {
    let rows = raw_rows(&format!(
        "SELECT DISTINCT e.person_id FROM elderly e JOIN visits v ON v.person_id = e.person_id
         WHERE e.person_id <> '{x}' ORDER BY 1 LIMIT 5"
    ))
    .await;
    rows.into_iter()
        .map(|r| format!("'{}'", r[0]))
        .collect::<Vec<_>>()
        .join(", ")
}
