//! No predicate on a treated column reaches the raw file scan (statistics, page indexes,
//! pruning); predicates on plain columns still do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::LogicalPlan;

/// Raw columns referenced by predicates pushed into table scans of the optimized plan.
async fn pushed_columns(principal: &str, purpose: &str, sql: &str) -> Vec<String> {
    let (ex, _state) = common::open();
    let optimized = ex
        .plan(principal, Some(purpose), sql)
        .await
        .unwrap()
        .logical;
    let mut cols = Vec::new();
    optimized
        .apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node {
                for f in &scan.filters {
                    cols.extend(f.column_refs().iter().map(|c| c.name.clone()));
                }
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .unwrap();
    cols
}

#[tokio::test]
async fn predicates_on_treated_columns_stay_above_the_scan() {
    let hrss = ("hrss_analyst", "new_employment_services");
    for sql in [
        "SELECT count(*) FROM police.residents WHERE name = '张*'",
        "SELECT count(*) FROM police.residents WHERE phone LIKE '138%'",
        "SELECT count(*) FROM police.residents WHERE birth_date < DATE '1960-01-01'",
        "SELECT count(*) FROM police.residents WHERE person_id = 'abc'",
    ] {
        let cols = pushed_columns(hrss.0, hrss.1, sql).await;
        assert!(cols.is_empty(), "{sql}: pushed {cols:?}");
    }
    // A plain column may prune.
    let cols = pushed_columns(
        hrss.0,
        hrss.1,
        "SELECT count(*) FROM police.residents WHERE district = 'hexi'",
    )
    .await;
    assert_eq!(cols, vec!["district"]);
}

#[tokio::test]
async fn barrier_passes_an_estimated_row_count_only() {
    use datafusion::common::stats::Precision;
    let (ex, _state) = common::open();
    // A table no row filter or register of objections filters: file statistics reach the
    // barrier exact.
    let physical = common::physical_plan(
        &ex,
        "hrss_analyst",
        "new_employment_services",
        "SELECT person_id, job_type FROM hrss.employment",
    )
    .await;
    let mut barriers = Vec::new();
    let mut stack = vec![physical];
    while let Some(p) = stack.pop() {
        if p.name() == "BarrierExec" {
            barriers.push(p.clone());
        }
        stack.extend(p.children().into_iter().cloned());
    }
    assert!(!barriers.is_empty());
    use datafusion::physical_plan::{StatisticsArgs, StatisticsContext};
    let stats_of = |p: &std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>| {
        StatisticsContext::new()
            .compute(p.as_ref(), &StatisticsArgs::new())
            .unwrap()
    };
    for b in barriers {
        let stats = stats_of(&b);
        // File statistics are collected below the barrier (exact there) ...
        let inner = stats_of(b.children()[0]);
        assert!(
            matches!(inner.num_rows, Precision::Exact(n) if n > 0),
            "{inner:?}"
        );
        // ... and leave it as an estimate of the size only.
        assert!(
            matches!(stats.num_rows, Precision::Inexact(n) if n > 0),
            "{stats:?}"
        );
        for c in &stats.column_statistics {
            assert_eq!(c.min_value, Precision::Absent);
            assert_eq!(c.max_value, Precision::Absent);
            assert_eq!(c.null_count, Precision::Absent);
            assert_eq!(c.distinct_count, Precision::Absent);
        }
    }
}

#[tokio::test]
async fn no_count_from_file_statistics() {
    // Statistics reach the barrier, which passes an estimate only: the plan still scans.
    let (ex, _state) = common::open();
    // hrss sees residents treated but unfiltered: the case statistics could answer.
    let text = common::physical_plan_text(
        &ex,
        "hrss_analyst",
        "new_employment_services",
        "SELECT count(*), max(district) FROM police.residents",
    )
    .await;
    assert!(text.contains("DataSourceExec"), "{text}");
    assert!(
        !text.contains("PlaceholderRowExec"),
        "count answered from statistics:\n{text}"
    );
}

#[tokio::test]
async fn treated_predicates_do_not_reach_the_physical_file_scan() {
    let (ex, _state) = common::open();
    for (p, purpose, sql) in [
        (
            "hrss_analyst",
            "new_employment_services",
            "SELECT count(*) FROM police.residents WHERE name = '张*' AND birth_date > DATE '1950-01-01'",
        ),
        (
            "civil_analyst",
            "elderly_care_planning",
            "SELECT count(*) FROM police.residents WHERE name = '张*'",
        ),
    ] {
        let text = common::physical_plan_text(&ex, p, purpose, sql).await;
        assert!(text.contains("BarrierExec"), "{text}");
        for line in text.lines().filter(|l| l.contains("DataSourceExec")) {
            assert!(
                !line.contains("name_cn") && !line.contains("year_only") && !line.contains("name@"),
                "{line}"
            );
        }
    }
}
