//! Review 65: a hostile analyst on the scale-out hub (every join keeps one shared, broadcast
//! hash table), each statement compared with one process over the same data and keys, and
//! the hub's plan (and one process's) read by the auditor of tests/distributed_attacks.rs
//! (copied here, unchanged). Classes: who controls row multiplicity (self and cross joins,
//! VALUES, UNNEST, UNION ALL) against min_group and row filters; aggregate arguments on
//! aggregate-only columns; error text; plan shape (EXPLAIN, EXPLAIN ANALYZE, DESCRIBE, SET,
//! SHOW); lineage of join keys through subqueries, CTEs and unions into a raw comparison.
//! Every statement tried agreed with one process and every plan passed the audit: no
//! finding, so no test here is ignored.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use datafusion::common::JoinSide;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::physical_expr::expressions::{CastExpr, Column};
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::utils::build_join_schema;
use datafusion::physical_plan::joins::{
    CrossJoinExec, HashJoinExec, NestedLoopJoinExec, PartitionMode, SortMergeJoinExec,
};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::{ExecutionPlan, Partitioning};
use exchange::Exchange;

use common::cells;
use common::cluster::{Cluster, cluster, outcome};

/// The hub's plan of `sql`, as datafusion-distributed displays it, and the plan itself.
async fn hub_plan(
    ex: &Exchange,
    who: (&str, &str),
    sql: &str,
) -> Option<(String, Arc<dyn ExecutionPlan>)> {
    let plan = ex.plan(who.0, Some(who.1), sql).await.ok()?.physical;
    Some((
        datafusion_distributed::display_plan_ascii(plan.as_ref(), false),
        plan,
    ))
}

// ---------------------------------------------------------------------------------------
// An independent auditor of a (distributed) physical plan: where does each stored column of
// a governed scan go, unchanged? A join key's stored column (raw value) may only be carried
// and compared as a key of a CollectLeft hash join; anything else is a finding.

#[derive(Clone, Debug, PartialEq)]
enum Origin {
    /// A stored column of a governed scan (table file, column), unchanged.
    Raw(String, String),
    /// A join_key / pseudonym token.
    Token,
    Other,
}

const TABLES: &[&str] = &[
    "hotline/tickets",
    "police/residents",
    "police/objections",
    "civil/elderly_care",
    "hrss/employment",
    "health/visits",
];

fn table_of(barrier: &Arc<dyn ExecutionPlan>) -> String {
    let text = datafusion::physical_plan::displayable(barrier.as_ref())
        .indent(true)
        .to_string();
    TABLES
        .iter()
        .find(|t| text.contains(&format!("{t}.parquet")))
        .map(|t| t.to_string())
        .unwrap_or_else(|| "?".into())
}

fn expr_origin(e: &Arc<dyn PhysicalExpr>, input: &Arc<dyn ExecutionPlan>) -> Origin {
    if let Some(c) = e.downcast_ref::<Column>() {
        return origin(input, c.index());
    }
    if let Some(c) = e.downcast_ref::<CastExpr>() {
        return expr_origin(c.expr(), input);
    }
    if let Some(f) = e.downcast_ref::<ScalarFunctionExpr>()
        && (f.name() == "join_key" || f.name() == "pseudonym")
    {
        return Origin::Token;
    }
    Origin::Other
}

fn join_columns(
    left: &Arc<dyn ExecutionPlan>,
    right: &Arc<dyn ExecutionPlan>,
    jt: &datafusion::common::JoinType,
    projection: Option<&[usize]>,
    idx: usize,
) -> Origin {
    let (_, cols) = build_join_schema(&left.schema(), &right.schema(), jt);
    let i = match projection {
        Some(p) => match p.get(idx) {
            Some(&i) => i,
            None => return Origin::Other,
        },
        None => idx,
    };
    match cols.get(i) {
        Some(c) if c.side == JoinSide::Left => origin(left, c.index),
        Some(c) if c.side == JoinSide::Right => origin(right, c.index),
        _ => Origin::Other,
    }
}

/// Whether `plan` is a governed scan's barrier (raw scan, owner's row filter, objections):
/// a `BarrierExec` with none below it. (A group threshold's barrier, above an aggregate,
/// has a scan's below it.)
fn is_scan_barrier(plan: &Arc<dyn ExecutionPlan>) -> bool {
    fn any_barrier(p: &Arc<dyn ExecutionPlan>) -> bool {
        p.children()
            .iter()
            .any(|c| c.name() == "BarrierExec" || any_barrier(c))
    }
    plan.name() == "BarrierExec" && !any_barrier(plan)
}

/// An aggregate's group columns come from their expressions; min, max, first and last
/// values pass a column's values on too (the exchange's own row-wise aggregates do).
fn aggregate_origin(a: &AggregateExec, idx: usize) -> Origin {
    let groups = a.group_expr().expr();
    if let Some((e, _)) = groups.get(idx) {
        return expr_origin(e, a.input());
    }
    let passes = |f: &str| matches!(f, "min" | "max" | "first_value" | "last_value");
    let j = idx - groups.len();
    match a.mode() {
        AggregateMode::Final | AggregateMode::FinalPartitioned => {
            // The input is the partial aggregate's output: groups, then each one's state.
            let Some(f) = a.aggr_expr().get(j) else {
                return Origin::Other;
            };
            if !passes(f.fun().name()) {
                return Origin::Other;
            }
            let mut at = groups.len();
            for g in a.aggr_expr().iter().take(j) {
                at += g.state_fields().map_or(1, |s| s.len());
            }
            origin(a.input(), at)
        }
        _ => {
            // Partial output: each aggregate's state; one state for min/max/first/last.
            let mut at = groups.len();
            for f in a.aggr_expr() {
                let n = f.state_fields().map_or(1, |s| s.len());
                if idx < at + n {
                    return match (passes(f.fun().name()), f.expressions().first()) {
                        (true, Some(e)) if idx == at => expr_origin(e, a.input()),
                        _ => Origin::Other,
                    };
                }
                at += n;
            }
            Origin::Other
        }
    }
}

/// Where column `idx` of `plan`'s output comes from.
fn origin(plan: &Arc<dyn ExecutionPlan>, idx: usize) -> Origin {
    if is_scan_barrier(plan) {
        return match plan.schema().fields().get(idx) {
            Some(f) => Origin::Raw(table_of(plan), f.name().clone()),
            None => Origin::Other,
        };
    }
    if let Some(p) = plan.downcast_ref::<ProjectionExec>() {
        return match p.expr().get(idx) {
            Some(e) => expr_origin(&e.expr, p.input()),
            None => Origin::Other,
        };
    }
    if let Some(f) = plan.downcast_ref::<FilterExec>() {
        let i = match f.projection() {
            Some(p) => match p.get(idx) {
                Some(&i) => i,
                None => return Origin::Other,
            },
            None => idx,
        };
        return origin(f.input(), i);
    }
    if let Some(j) = plan.downcast_ref::<HashJoinExec>() {
        return join_columns(
            j.left(),
            j.right(),
            j.join_type(),
            j.projection.as_deref(),
            idx,
        );
    }
    if let Some(j) = plan.downcast_ref::<NestedLoopJoinExec>() {
        return join_columns(
            j.left(),
            j.right(),
            j.join_type(),
            j.projection().as_deref(),
            idx,
        );
    }
    if let Some(j) = plan.downcast_ref::<SortMergeJoinExec>() {
        return join_columns(j.left(), j.right(), &j.join_type(), None, idx);
    }
    if let Some(j) = plan.downcast_ref::<CrossJoinExec>() {
        let n = j.left().schema().fields().len();
        return if idx < n {
            origin(j.left(), idx)
        } else {
            origin(j.right(), idx - n)
        };
    }
    if let Some(a) = plan.downcast_ref::<AggregateExec>() {
        return aggregate_origin(a, idx);
    }
    let children = plan.children();
    let name = plan.schema().fields().get(idx).map(|f| f.name().clone());
    // Unions (and the like): any child's column of that position.
    if children.len() > 1 {
        if plan.name().contains("Union") {
            for c in &children {
                let o = origin(c, idx);
                if o != Origin::Other {
                    return o;
                }
            }
            return Origin::Other;
        }
        if plan.name() == "ScalarSubqueryExec" {
            return origin(children[0], idx);
        }
        return Origin::Other;
    }
    if let [child] = children.as_slice()
        && child.schema().fields().get(idx).map(|f| f.name().clone()) == name
    {
        return origin(child, idx);
    }
    Origin::Other
}

fn guard_names() -> Vec<String> {
    let mut v: Vec<String> = exchange::masking::MaskFn::ALL
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    v.push("join_key".into());
    v.push("pseudonym".into());
    v
}

/// Columns of `e` not under a treatment function.
fn unguarded(e: &Arc<dyn PhysicalExpr>, guards: &[String], out: &mut Vec<usize>) {
    if let Some(c) = e.downcast_ref::<Column>() {
        out.push(c.index());
        return;
    }
    if let Some(f) = e.downcast_ref::<ScalarFunctionExpr>()
        && guards.iter().any(|g| g == f.name())
    {
        return;
    }
    for c in e.children() {
        unguarded(c, guards, out);
    }
}

struct Auditor<'a> {
    sensitive: &'a [(&'a str, &'a str)],
    guards: Vec<String>,
    found: Vec<String>,
    unknown: std::collections::BTreeSet<String>,
    /// Scan barriers reached: the audit covered the plan down to its scans.
    scans: usize,
}

impl Auditor<'_> {
    /// Flags a join filter (`what`) that reads a raw join key of either side.
    fn join_filter(
        &mut self,
        plan: &Arc<dyn ExecutionPlan>,
        filter: Option<&datafusion::physical_plan::joins::utils::JoinFilter>,
        left: &Arc<dyn ExecutionPlan>,
        right: &Arc<dyn ExecutionPlan>,
        what: &str,
    ) {
        for c in filter.map(|f| f.column_indices()).unwrap_or_default() {
            let o = match c.side {
                JoinSide::Left => origin(left, c.index),
                JoinSide::Right => origin(right, c.index),
                JoinSide::None => Origin::Other,
            };
            if self.sens(&o) {
                self.flag(plan, &format!("{what} reads a raw join key"), &o);
            }
        }
    }

    fn sens(&self, o: &Origin) -> bool {
        matches!(o, Origin::Raw(t, c) if self.sensitive.iter().any(|(st, sc)| st == t && sc == c))
    }

    fn flag(&mut self, plan: &Arc<dyn ExecutionPlan>, what: &str, o: &Origin) {
        self.found.push(format!("{}: {what} {o:?}", plan.name()));
    }

    fn visit(&mut self, plan: &Arc<dyn ExecutionPlan>) {
        if is_scan_barrier(plan) {
            self.scans += 1;
            return;
        }
        // Hash partitioning of this node's output (repartitions, shuffles).
        if !plan.is::<HashJoinExec>()
            && let Partitioning::Hash(exprs, _) = plan.properties().output_partitioning()
        {
            for e in exprs {
                let mut cols = vec![];
                unguarded(e, &[], &mut cols);
                for i in cols {
                    let o = origin(plan, i);
                    if self.sens(&o) {
                        self.flag(plan, "hash partitioning by a raw join key", &o);
                    }
                }
            }
        }
        if let Some(j) = plan.downcast_ref::<HashJoinExec>() {
            for (l, r) in j.on() {
                let (ol, or) = (expr_origin(l, j.left()), expr_origin(r, j.right()));
                if j.mode != PartitionMode::CollectLeft && (self.sens(&ol) || self.sens(&or)) {
                    let o = if self.sens(&ol) {
                        ol.clone()
                    } else {
                        or.clone()
                    };
                    self.flag(
                        plan,
                        &format!("{:?} join keyed by a raw join key", j.mode),
                        &o,
                    );
                }
                let mixed = (self.sens(&ol) && or == Origin::Token)
                    || (self.sens(&or) && ol == Origin::Token);
                if mixed {
                    self.flag(plan, "a raw value compared with a token", &ol);
                }
            }
            self.join_filter(plan, j.filter(), j.left(), j.right(), "join filter");
        } else if let Some(j) = plan.downcast_ref::<SortMergeJoinExec>() {
            for (l, r) in j.on() {
                for o in [expr_origin(l, j.left()), expr_origin(r, j.right())] {
                    if self.sens(&o) {
                        self.flag(plan, "sort-merge join keyed by a raw join key", &o);
                    }
                }
            }
        } else if let Some(j) = plan.downcast_ref::<NestedLoopJoinExec>() {
            self.join_filter(
                plan,
                j.filter(),
                j.left(),
                j.right(),
                "nested loop join filter",
            );
        } else if let Some(p) = plan.downcast_ref::<ProjectionExec>() {
            for e in p.expr() {
                if e.expr.is::<Column>() || e.expr.is::<CastExpr>() {
                    continue;
                }
                let mut cols = vec![];
                unguarded(&e.expr, &self.guards, &mut cols);
                for i in cols {
                    let o = origin(p.input(), i);
                    if self.sens(&o) {
                        self.flag(
                            plan,
                            &format!("computes {} from a raw join key", e.expr),
                            &o,
                        );
                    }
                }
            }
        } else {
            let children = plan.children();
            // Aggregates read the hidden entity (raw) by design: only their partitioning
            // (checked above) matters here.
            if plan.is::<AggregateExec>() {
            } else if let [child] = children.as_slice() {
                let child = Arc::clone(child);
                let mut cols = vec![];
                let guards = self.guards.clone();
                let _ = plan.apply_expressions(&mut |e| {
                    unguarded(e, &guards, &mut cols);
                    Ok(TreeNodeRecursion::Continue)
                });
                for i in cols {
                    let o = origin(&child, i);
                    if self.sens(&o) {
                        self.flag(plan, "evaluates an expression of a raw join key", &o);
                    }
                }
            } else if children.len() > 1
                && !plan.name().contains("Union")
                && !plan.is::<CrossJoinExec>()
            {
                self.unknown.insert(plan.name().to_string());
            }
        }
        for c in plan.children() {
            self.visit(c);
        }
    }
}

/// Findings of the auditor on `plan` for a principal whose join keys are `sensitive`.
fn audit(plan: &Arc<dyn ExecutionPlan>, sensitive: &[(&str, &str)]) -> Vec<String> {
    let mut a = Auditor {
        sensitive,
        guards: guard_names(),
        found: vec![],
        unknown: Default::default(),
        scans: 0,
    };
    a.visit(plan);
    // Every scan of governed data is under a barrier the audit reached.
    let text = datafusion::physical_plan::displayable(plan.as_ref())
        .indent(true)
        .to_string();
    let sources = text.matches("DataSourceExec").count();
    assert!(
        sources == 0 || a.scans > 0,
        "the auditor reached no scan:\n{text}"
    );
    for i in 0..plan.schema().fields().len() {
        let o = origin(plan, i);
        if a.sens(&o) {
            a.found
                .push(format!("output column {i} is a raw join key {o:?}"));
        }
    }
    if !a.unknown.is_empty() {
        println!("auditor: unknown multi-input nodes {:?}", a.unknown);
    }
    a.found
}

fn sensitive(principal: &str) -> &'static [(&'static str, &'static str)] {
    match principal {
        "hotline_analyst" => &[
            ("hotline/tickets", "caller_phone"),
            ("police/residents", "phone"),
        ],
        // For the civil analyst, health.visits.person_id is a join key too (and the visits'
        // hidden entity, which the k-threshold reads raw by design).
        "civil_analyst" => &[
            ("police/residents", "person_id"),
            ("health/visits", "person_id"),
        ],
        "hrss_analyst" | "health_analyst" => &[("police/residents", "person_id")],
        _ => &[],
    }
}

// ---------------------------------------------------------------------------------------
// The analysts.

const HOTLINE: (&str, &str) = ("hotline_analyst", "complaint_handling");
const CIVIL: (&str, &str) = ("civil_analyst", "elderly_care_planning");
const HRSS: (&str, &str) = ("hrss_analyst", "new_employment_services");
const HEALTH: (&str, &str) = ("health_analyst", "public_health_statistics");

/// What the hub and one process did with one statement.
struct Seen {
    hub: String,
    one: String,
}

/// Runs `sql` on the hub and in one process, asserts they agree (rows, refusal words,
/// failure words) and that the auditor finds nothing in the hub's plan nor in one
/// process's.
async fn agree(c: &Cluster, who: (&str, &str), sql: &str) -> Seen {
    let hub = outcome(&c.hub.execute(who.0, Some(who.1), sql).await);
    let one = outcome(&c.single.execute(who.0, Some(who.1), sql).await);
    assert_eq!(hub, one, "{}: {sql}\nthe hub and one process differ", who.0);
    if let Some((text, plan)) = hub_plan(&c.hub, who, sql).await {
        let found = audit(&plan, sensitive(who.0));
        assert!(
            found.is_empty(),
            "hub: {}: {sql}\n{found:#?}\n{text}",
            who.0
        );
    }
    if let Ok(p) = c.single.plan(who.0, Some(who.1), sql).await {
        let found = audit(&p.physical, sensitive(who.0));
        assert!(
            found.is_empty(),
            "one process: {}: {sql}\n{found:#?}",
            who.0
        );
    }
    Seen { hub, one }
}

/// What a statement must do on both.
enum Want {
    /// Answer with exactly these (sorted) rows.
    Rows(&'static str),
    /// Answer with some rows.
    Some,
    /// Be refused in words containing this.
    Refused(&'static str),
    /// Fail while running in words containing this.
    Failed(&'static str),
}

async fn expect(c: &Cluster, who: (&str, &str), sql: &str, want: Want) {
    let Seen { hub, one } = agree(c, who, sql).await;
    let ok = match &want {
        Want::Rows(r) => hub == *r,
        Want::Some => hub.starts_with("[[") && hub != "[]",
        Want::Refused(w) => hub.starts_with("refused: ") && hub.contains(w),
        Want::Failed(w) => hub.starts_with("failed: ") && hub.contains(w),
    };
    assert!(ok, "{}: {sql}\nhub: {hub}\none: {one}", who.0);
}

use Want::{Failed, Refused, Rows, Some as Answers};

const WITHHELD: &str = "details are withheld because the query reads governed data";

/// Row multiplicity chosen by the analyst (cross joins with VALUES and UNNEST, self-joins,
/// UNION ALL of one table with itself, joins of joins) never lets a group of fewer than 5
/// persons out of health.visits, nor rows of other districts out of the civil analyst's
/// row-filtered residents: the hub counts entities, not rows, exactly as one process, and
/// a group of one person (grouped by a column of the analyst's own table joined to visits)
/// is suppressed on the hub although that person's visits are scanned by several tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyst_chosen_multiplicity_never_opens_a_small_group() {
    let c = cluster().await;
    let by_year = r#"[["2024-01-01", "249"], ["2025-01-01", "2764"], ["2026-01-01", "2279"]]"#;
    let statements = [
        (
            "SELECT v.visit_date, count(*) FROM health.visits v CROSS JOIN (VALUES (1),(2),(3),(4),(5),(6)) x GROUP BY v.visit_date",
            Rows(by_year),
        ),
        (
            "SELECT v.visit_date, count(*) FROM health.visits v CROSS JOIN unnest(make_array(1,2,3,4,5,6)) GROUP BY v.visit_date",
            Rows(by_year),
        ),
        // A group per VALUES row or per UNNEST element: the analyst's own column.
        (
            "SELECT x.column1, count(*) FROM health.visits v CROSS JOIN (VALUES (1),(2)) x GROUP BY x.column1",
            Rows("[]"),
        ),
        (
            "SELECT u, count(*) FROM health.visits v CROSS JOIN unnest(make_array(1,2,3)) AS t(u) GROUP BY u",
            Rows("[]"),
        ),
        // One person's visits times five.
        (
            "SELECT e.care_level, count(*) FROM civil.elderly_care e JOIN health.visits v ON v.person_id = e.person_key CROSS JOIN (VALUES (1),(2),(3),(4),(5)) x WHERE e.person_id = (SELECT min(person_id) FROM civil.elderly_care) GROUP BY e.care_level",
            Rows("[]"),
        ),
        // A group per person, and per start date (few persons each).
        (
            "SELECT e.person_id, count(*) FROM health.visits v JOIN civil.elderly_care e ON v.person_id = e.person_key GROUP BY e.person_id",
            Rows("[]"),
        ),
        (
            "SELECT e.since, count(*) FROM health.visits v JOIN civil.elderly_care e ON v.person_id = e.person_key GROUP BY e.since",
            Rows("[]"),
        ),
        (
            "SELECT n, count(*) FROM (SELECT e.person_id, count(*) AS n FROM health.visits v JOIN civil.elderly_care e ON v.person_id = e.person_key GROUP BY e.person_id) GROUP BY n",
            Rows("[]"),
        ),
        (
            "SELECT e.subsidy_monthly, count(*), sum(v.cost) FROM health.visits v JOIN civil.elderly_care e ON v.person_id = e.person_key CROSS JOIN (VALUES (1),(2),(3),(4),(5),(6),(7)) x GROUP BY e.subsidy_monthly",
            Answers,
        ),
        (
            "SELECT a.visit_date, count(*) FROM health.visits a JOIN health.visits b ON a.person_id = b.person_id GROUP BY a.visit_date",
            Refused("reads rows of health.visits and of health.visits"),
        ),
        (
            "SELECT e.disability_grade, count(*) FROM health.visits v JOIN civil.elderly_care e ON v.person_id = e.person_key JOIN health.visits w ON w.person_id = e.person_key GROUP BY e.disability_grade",
            Refused("reads rows of health.visits and of health.visits"),
        ),
        (
            "SELECT visit_date, count(*) FROM (SELECT visit_date, person_id FROM health.visits UNION ALL SELECT visit_date, person_id FROM health.visits UNION ALL SELECT visit_date, person_id FROM health.visits) GROUP BY visit_date",
            Refused("cannot reach UNION"),
        ),
        (
            "SELECT e.care_level, count(*) FROM civil.elderly_care e WHERE e.person_key IN (SELECT person_id FROM health.visits UNION ALL SELECT person_id FROM police.residents) GROUP BY e.care_level",
            Refused("cannot reach UNION"),
        ),
        (
            "SELECT v.person_id, count(*) FROM health.visits v CROSS JOIN (VALUES (1),(2),(3),(4),(5)) x GROUP BY v.person_id",
            Refused("cannot appear in GROUP BY"),
        ),
        (
            "SELECT e.care_level, e.disability_grade, v.visit_date, count(*) FROM health.visits v JOIN civil.elderly_care e ON v.person_id = e.person_key GROUP BY ROLLUP(e.care_level, e.disability_grade, v.visit_date)",
            Refused("ROLLUP"),
        ),
        // The row filter holds on both sides of a self-join and under a cross join.
        (
            "SELECT r.district, count(*) FROM police.residents r CROSS JOIN (VALUES (1),(2)) x GROUP BY r.district",
            Rows(r#"[["hexi", "974"]]"#),
        ),
        (
            "SELECT count(*) FROM police.residents r JOIN police.residents s ON r.district <> s.district",
            Rows(r#"[["0"]]"#),
        ),
    ];
    for (sql, want) in statements {
        expect(&c, CIVIL, sql, want).await;
    }
    c.stop().await;
}

/// Aggregate arguments over aggregate-only columns (DISTINCT, CASE and casts over them,
/// value statistics, FILTER, row-wise aggregates, a join key inside a CASE) are refused on
/// the hub in one process's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregate_arguments_are_refused_in_one_process_words() {
    let c = cluster().await;
    let statements = [
        (
            "SELECT count(DISTINCT v.cost) FROM health.visits v",
            "count(DISTINCT ...) tells whether members' values are equal",
        ),
        (
            "SELECT v.visit_date, sum(CASE WHEN v.cost > 1000 THEN 1 ELSE 0 END) FROM health.visits v GROUP BY v.visit_date",
            "cannot appear in an aggregate argument",
        ),
        (
            "SELECT min(v.cost), max(v.cost) FROM health.visits v",
            "min() returns one member's value",
        ),
        (
            "SELECT approx_distinct(v.diagnosis_code), median(v.cost), stddev(v.cost) FROM health.visits v",
            "value statistics",
        ),
        (
            "SELECT v.visit_date, approx_percentile_cont(v.cost, 0.999) FROM health.visits v GROUP BY v.visit_date",
            "approx_percentile_cont() returns one member's value",
        ),
        (
            "SELECT array_agg(v.hospital) FROM health.visits v",
            "array_agg() does not summarise them",
        ),
        (
            "SELECT count(*) FILTER (WHERE v.diagnosis_code = 'I10') FROM health.visits v",
            "take no FILTER or ORDER BY",
        ),
        (
            "SELECT sum(CASE WHEN v.person_id = e.person_key THEN v.cost END) FROM health.visits v CROSS JOIN civil.elderly_care e",
            "health.visits.person_id is a join key",
        ),
    ];
    for (sql, words) in statements {
        expect(&c, CIVIL, sql, Refused(words)).await;
    }
    c.stop().await;
}

/// Casts, division by zero and overflow: on hidden (aggregate-only, join key) values they
/// are refused before running, in the same words; on values the analyst may compute with
/// (masked, own, row-filtered) a failure while running reads the same on the hub as in one
/// process (the kind of failure, details withheld: no value, worker, task or stage), and
/// wrapping arithmetic wraps alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_read_the_same_on_the_hub() {
    let c = cluster().await;
    let civil = [
        (
            "SELECT sum(CAST(v.hospital AS DOUBLE)) FROM health.visits v",
            Refused("cannot appear in a cast to Float64"),
        ),
        (
            "SELECT sum(CAST(v.diagnosis_code AS INT)) FROM health.visits v",
            Refused("cannot appear in a cast to Int32"),
        ),
        (
            "SELECT sum(1 / (v.cost - v.cost)) FROM health.visits v",
            Refused("cannot appear in an aggregate argument"),
        ),
        (
            "SELECT sum(CAST(v.cost AS BIGINT) * 9223372036854775807) FROM health.visits v",
            Refused("cannot appear in a cast to Int64"),
        ),
        (
            "SELECT sum(arrow_cast(v.cost, 'Int8')) FROM health.visits v",
            Refused("cannot appear in an aggregate argument"),
        ),
        (
            "SELECT count(*) FROM health.visits v JOIN civil.elderly_care e ON v.person_id = e.person_key WHERE CAST(v.person_id AS INT) > 0",
            Refused("cannot appear in a cast to Int32"),
        ),
        (
            "SELECT count(*) FROM police.residents r WHERE 1 / (r.household_size - r.household_size) > 0",
            Failed("(a division by zero)"),
        ),
        (
            "SELECT count(*) FROM civil.elderly_care e JOIN police.residents r ON e.person_key = r.person_id WHERE 10 / (r.household_size - r.household_size) > 0",
            Failed("(a division by zero)"),
        ),
        (
            "SELECT count(*) FROM police.residents r WHERE to_timestamp(r.district) IS NOT NULL",
            Failed("(a value could not be converted)"),
        ),
        (
            "SELECT count(*) FROM police.residents r WHERE CAST(r.address AS INT) > 0",
            Failed("(a value could not be converted)"),
        ),
        (
            "SELECT sum(CAST(e.subsidy_monthly AS BIGINT) * 9223372036854775807) FROM civil.elderly_care e JOIN police.residents r ON e.person_key = r.person_id",
            Rows(r#"[["-75000"]]"#),
        ),
        (
            "SELECT v.visit_date, sum(v.cost) / (count(*) - count(*)) FROM health.visits v GROUP BY v.visit_date",
            Answers,
        ),
    ];
    for (sql, want) in civil {
        expect(&c, CIVIL, sql, want).await;
    }
    let hotline = [
        (
            "SELECT r.district FROM hotline.tickets t JOIN police.residents r ON t.caller_key = r.phone WHERE CAST(r.phone AS BIGINT) > 0",
            Refused("cannot appear in a cast to Int64"),
        ),
        (
            "SELECT sum(CAST(t.caller_phone AS BIGINT)) FROM hotline.tickets t",
            Failed("(a value could not be converted)"),
        ),
    ];
    for (sql, want) in hotline {
        expect(&c, HOTLINE, sql, want).await;
    }
    for sql in [
        "SELECT count(*) FROM police.residents r WHERE 1 / (r.household_size - r.household_size) > 0",
        "SELECT sum(CAST(t.caller_phone AS BIGINT)) FROM hotline.tickets t",
    ] {
        let who = if sql.contains("hotline") {
            HOTLINE
        } else {
            CIVIL
        };
        let hub = outcome(&c.hub.execute(who.0, Some(who.1), sql).await);
        assert!(hub.contains(WITHHELD), "{hub}");
        for w in ["worker", "task", "stage", "http", "127.0.0.1"] {
            assert!(!hub.to_lowercase().contains(w), "{w} in {hub}");
        }
    }
    c.stop().await;
}

/// EXPLAIN (every format), EXPLAIN ANALYZE, DESCRIBE, SET, SHOW, PREPARE and the settings
/// tables: the hub shows one process's logical plan and its fixed distribution note, never
/// stages, tasks, shuffles, partition counts, estimates or metrics; the rest is refused in
/// one process's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_shape_is_not_shown_by_the_hub() {
    let c = cluster().await;
    let sqls = [
        "SELECT r.gender, count(*) FROM police.residents r JOIN civil.elderly_care e ON e.person_key = r.person_id GROUP BY r.gender",
        "SELECT e.care_level, count(*) FROM health.visits v JOIN civil.elderly_care e ON v.person_id = e.person_key GROUP BY e.care_level",
        "SELECT count(*) FROM health.visits v CROSS JOIN (VALUES (1),(2),(3)) x",
        "SELECT count(*) FROM police.residents r",
    ];
    for sql in sqls {
        for prefix in [
            "EXPLAIN",
            "EXPLAIN VERBOSE",
            "EXPLAIN FORMAT TREE",
            "EXPLAIN FORMAT INDENT",
        ] {
            let q = format!("{prefix} {sql}");
            agree(&c, CIVIL, &q).await;
            let out = c.hub.execute(CIVIL.0, Some(CIVIL.1), &q).await.unwrap();
            let text = cells(&out.batches).concat().join("\n");
            assert!(text.contains("the stages are not shown"), "{text}");
            for hidden in [
                "Stage",
                "Network",
                "Broadcast",
                "Shuffle",
                "tasks",
                "partitions",
                "rows=",
                "Statistics",
                "Rows=",
                "elapsed",
                "metrics",
                "mode=",
                "Hash(",
                ".parquet",
                "hexi",
            ] {
                assert!(!text.contains(hidden), "{hidden} in {q}:\n{text}");
            }
        }
        for prefix in ["EXPLAIN ANALYZE", "EXPLAIN ANALYZE VERBOSE"] {
            let q = format!("{prefix} {sql}");
            expect(&c, CIVIL, &q, Refused("EXPLAIN ANALYZE is refused")).await;
        }
    }
    expect(
        &c,
        CIVIL,
        "DESCRIBE police.residents",
        Rows(
            r#"[["address", "Utf8", "mask(address_cn, 'district')"], ["birth_date", "Date32", "mask(year_only)"], ["district", "Utf8", "plain"], ["gender", "Utf8", "plain"], ["household_size", "Int32", "plain"], ["name", "Utf8", "mask(name_cn)"], ["person_id", "Utf8", "join_key(person)"]]"#,
        ),
    )
    .await;
    for (sql, words) in [
        (
            "DESCRIBE SELECT r.gender FROM police.residents r",
            "this EXPLAIN form is not supported",
        ),
        (
            "SET datafusion.explain.show_statistics = true",
            "SET is refused",
        ),
        ("SHOW ALL", "SHOW is not available"),
        ("SHOW TABLES", "SHOW is not available"),
        (
            "SELECT name, value FROM information_schema.df_settings WHERE name LIKE '%distributed%'",
            "not found or not granted",
        ),
        (
            "SELECT * FROM information_schema.columns WHERE table_name = 'visits'",
            "not found or not granted",
        ),
        (
            "PREPARE p AS SELECT count(*) FROM police.residents",
            "only queries",
        ),
    ] {
        expect(&c, CIVIL, sql, Refused(words)).await;
    }
    c.stop().await;
}

/// Join keys carried through CTEs, subqueries (with an ordered LIMIT), UNION ALL, EXISTS
/// and chains of joins into a raw comparison, then grouped, sorted and returned: the hub
/// answers as one process, its plan compares raw keys only in collect-left joins, and every
/// use of a key after the comparison (GROUP BY, ORDER BY, DISTINCT, aggregates, windows,
/// OR and IS NOT DISTINCT FROM conditions) is refused in one process's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_keys_carried_into_raw_comparisons_stay_compared_only() {
    let c = cluster().await;
    let answered = [
        (
            HOTLINE,
            "WITH k AS (SELECT caller_key AS k FROM hotline.tickets) SELECT r.district, count(*) FROM k JOIN police.residents r ON k.k = r.phone GROUP BY r.district",
        ),
        (
            HOTLINE,
            "SELECT r.district, count(*) FROM (SELECT caller_key k FROM hotline.tickets UNION ALL SELECT caller_key FROM hotline.tickets) u JOIN police.residents r ON u.k = r.phone GROUP BY r.district",
        ),
        (
            HOTLINE,
            "SELECT count(*) FROM hotline.tickets t JOIN police.residents r ON t.caller_key = r.phone AND r.district = t.district",
        ),
        (
            HOTLINE,
            "WITH a AS (SELECT caller_key k, district d FROM hotline.tickets), b AS (SELECT a.k, r.district FROM a JOIN police.residents r ON a.k = r.phone) SELECT b.district, a.d, count(*) FROM b JOIN a ON a.k = b.k GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2 LIMIT 5",
        ),
        (
            HOTLINE,
            "SELECT r.district, count(*) FROM (SELECT caller_key k FROM hotline.tickets ORDER BY ticket_id LIMIT 50) u JOIN police.residents r ON u.k = r.phone GROUP BY r.district",
        ),
        (
            CIVIL,
            "WITH v AS (SELECT person_id FROM health.visits), e AS (SELECT person_key FROM civil.elderly_care) SELECT count(*) FROM v JOIN e ON v.person_id = e.person_key",
        ),
        (
            HRSS,
            "SELECT e.job_type, count(*) FROM hrss.employment e JOIN police.residents r ON e.person_pseudonym = r.person_id JOIN police.residents r2 ON r2.person_id = r.person_id GROUP BY e.job_type",
        ),
        (
            HEALTH,
            "WITH k AS (SELECT person_key FROM health.visits UNION ALL SELECT person_key FROM health.visits) SELECT r.gender, count(*) FROM k JOIN police.residents r ON k.person_key = r.person_id GROUP BY r.gender",
        ),
    ];
    for (who, sql) in answered {
        expect(&c, who, sql, Answers).await;
    }
    // Empty on both: no caller lives outside the district of a ticket of theirs.
    expect(
        &c,
        HOTLINE,
        "SELECT t.district, count(*) FROM hotline.tickets t WHERE EXISTS (SELECT 1 FROM police.residents r WHERE r.phone = t.caller_key AND r.district <> t.district) GROUP BY t.district",
        Rows("[]"),
    )
    .await;
    let refused = [
        (
            "SELECT r.phone, count(*) AS n FROM hotline.tickets t JOIN police.residents r ON t.caller_key = r.phone GROUP BY r.phone ORDER BY n DESC, r.phone LIMIT 3",
            "cannot appear in GROUP BY",
        ),
        (
            "SELECT t.caller_key FROM hotline.tickets t JOIN (SELECT phone FROM police.residents UNION ALL SELECT phone FROM police.residents) r ON t.caller_key = r.phone ORDER BY t.caller_key LIMIT 5",
            "cannot appear in ORDER BY",
        ),
        (
            "SELECT x.k, x.d FROM (SELECT t.caller_key k, r.district d FROM hotline.tickets t JOIN police.residents r ON t.caller_key = r.phone) x JOIN police.residents r2 ON x.k = r2.phone ORDER BY x.k, x.d LIMIT 10",
            "cannot appear in ORDER BY",
        ),
        (
            "SELECT r.district, t.caller_key FROM hotline.tickets t JOIN police.residents r ON t.caller_key = r.phone WHERE t.caller_key IN (SELECT phone FROM police.residents WHERE district = 'hexi') ORDER BY t.caller_key, r.district LIMIT 10",
            "cannot appear in ORDER BY",
        ),
        (
            "SELECT r.district FROM hotline.tickets t JOIN police.residents r ON t.caller_key = r.phone ORDER BY t.caller_key = r.phone, r.district LIMIT 5",
            "cannot appear in ORDER BY (inside an expression or function)",
        ),
        (
            "SELECT count(DISTINCT t.caller_key) FROM hotline.tickets t JOIN police.residents r ON t.caller_key = r.phone",
            "cannot be aggregated",
        ),
        (
            "SELECT min(r.phone) FROM hotline.tickets t JOIN police.residents r ON t.caller_key = r.phone",
            "cannot be aggregated",
        ),
        (
            "SELECT t.ticket_id, row_number() OVER (PARTITION BY r.phone ORDER BY t.created_at, t.ticket_id) FROM hotline.tickets t JOIN police.residents r ON t.caller_key = r.phone",
            "cannot appear in a window function",
        ),
        (
            "SELECT t.caller_key = r.phone AS same, count(*) FROM hotline.tickets t CROSS JOIN police.residents r GROUP BY 1",
            "cannot appear in GROUP BY (inside an expression or function)",
        ),
        (
            "SELECT k, count(*) FROM (SELECT caller_key AS k FROM hotline.tickets UNION SELECT phone FROM police.residents) GROUP BY k ORDER BY k LIMIT 3",
            "cannot appear in DISTINCT",
        ),
        (
            "SELECT r.district, count(*) FROM (SELECT caller_key k FROM hotline.tickets UNION SELECT caller_key FROM hotline.tickets) u JOIN police.residents r ON u.k = r.phone GROUP BY r.district",
            "cannot appear in DISTINCT",
        ),
        (
            "SELECT count(*) FROM hotline.tickets t JOIN police.residents r ON t.caller_key = r.phone OR t.district = r.district",
            "cannot appear in a join condition",
        ),
        (
            "SELECT count(*) FROM hotline.tickets t JOIN police.residents r ON t.caller_key IS NOT DISTINCT FROM r.phone",
            "cannot appear in a join condition",
        ),
    ];
    for (sql, words) in refused {
        expect(&c, HOTLINE, sql, Refused(words)).await;
    }
    // A correlated scalar subquery on a key does not plan, on both, in the same words.
    expect(
        &c,
        HOTLINE,
        "SELECT (SELECT count(*) FROM police.residents r WHERE r.phone = t.caller_key) AS n, count(*) FROM hotline.tickets t GROUP BY 1",
        Failed("cannot plan a statement of this shape"),
    )
    .await;
    c.stop().await;
}
