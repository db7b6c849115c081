//! Aggregates over protected tables: the contribution model.
//!
//! A table is protected in an aggregate when its rows flow into it under a grant with
//! `min_group`, or when the aggregate reads one of its aggregate-only columns. Such an
//! aggregate summarises the protected table's rows, and only them:
//! - its arguments are that table's own columns (or constants): a value of another relation
//!   is chosen per row by the analyst and could single out or weight one entity's rows, and
//!   a value computed row by row could do the same;
//! - each row of the table counts at most once per group, however often a join repeated it,
//!   and the NULL rows an outer join pads in count nothing: the rest of the query decides
//!   which rows are in and in which group, never how much a row weighs;
//! - a row of the table is in one group only: a row a join places in several groups of the
//!   aggregate counts in none (else one aggregate could hold a group with a person and the
//!   same group without, and their difference would be that person);
//! - only summarising aggregates, with no FILTER and no ordering; value statistics of an
//!   aggregate-only column (min, max, median, percentiles return one member's value,
//!   DISTINCT tells whether members' values are equal) only where the grant allows;
//! - one protected table per aggregate, and one aggregate per protected table and statement
//!   (two, combined in one statement, could difference each other out);
//! - groups covering fewer than k distinct entities are suppressed;
//! - for `min_group` tables, nothing evaluated on the way to the aggregate can fail
//!   ([`super::total`]): a failure would tell whether a row exists.

use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, Result};
use datafusion::logical_expr::expr::{AggregateFunction, Alias};
use datafusion::logical_expr::{
    Aggregate, Expr, Filter, LogicalPlan, LogicalPlanBuilder, Projection, Volatility, lit,
};

mod once;
mod private;

use once::once_per_group;
pub(crate) use private::NOISE_SCALE;

use super::barrier::PolicyBarrier;
use super::rule::{Enforcer, ScanInfo, min_group_rows};
use super::tags::{Ctx, ScanId, Tag, is_bare, refuse, refuse_constrained};

/// Aggregate functions that summarise a group (and so may release protected values).
pub(super) const SUMMARISING: &[&str] = &[
    "count",
    "sum",
    "avg",
    "mean",
    "min",
    "max",
    "median",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "var",
    "var_pop",
    "var_samp",
    "var_population",
    "var_sample",
    "approx_median",
    "approx_distinct",
    "approx_percentile_cont",
    "bool_and",
    "bool_or",
];

/// Summarising aggregates whose result is one member's value, or tells whether members'
/// values are equal.
const VALUE_STATISTICS: &[&str] = &[
    "approx_distinct",
    "min",
    "max",
    "median",
    "approx_median",
    "approx_percentile_cont",
    "bool_and",
    "bool_or",
];

/// Prefix of the names of the group keys while an aggregate counts rows once.
const GROUP_KEY: &str = "__exchange_group";

/// The protected table an aggregate summarises, for messages.
struct Protected<'a> {
    scan: ScanId,
    info: &'a ScanInfo,
}

impl Protected<'_> {
    /// A refusal of an aggregate over this table's rows, saying why.
    fn refuse<T>(&self, what: &str) -> Result<T> {
        let table = &self.info.table;
        if self.info.privacy.is_some() {
            return refuse(format!(
                "rows of {table} may only leave through differentially private aggregates: {what}"
            ));
        }
        match self.info.min_group {
            Some(k) => refuse(format!(
                "rows of {table} may only be used aggregated, in groups of at least {k} entities: {what}"
            )),
            None => refuse(format!(
                "this aggregate reads aggregate-only columns of {table}, so it summarises that table's rows: {what}"
            )),
        }
    }
}

/// The aggregate function of an aggregate expression, through its alias.
fn function(e: &Expr) -> Option<&AggregateFunction> {
    match e {
        Expr::Alias(Alias { expr, .. }) => function(expr),
        Expr::AggregateFunction(f) => Some(f),
        _ => None,
    }
}

impl Enforcer {
    /// Check and rewrite an aggregate whose input is already processed.
    pub(super) fn aggregate(
        &mut self,
        a: Aggregate,
        input: LogicalPlan,
        tags_in: Vec<Tag>,
        ctx: &Ctx<'_>,
    ) -> Result<(LogicalPlan, Vec<Tag>)> {
        for g in &a.group_expr {
            let t = ctx.tag(g, "GROUP BY")?;
            refuse_constrained(&t, "GROUP BY")?;
        }
        let Some(scan) = self.protected_scan(&a, &tags_in, ctx)? else {
            plain_aggregate(&a, ctx)?;
            let plan = Aggregate::try_new(Arc::new(input), a.group_expr, a.aggr_expr)
                .map(LogicalPlan::Aggregate)?;
            let n = plan.schema().fields().len();
            return Ok((plan, vec![Tag::Free; n]));
        };
        let info =
            self.scans.get(scan.0).cloned().ok_or_else(|| {
                datafusion::common::DataFusionError::Internal("unknown scan".into())
            })?;
        let p = Protected { scan, info: &info };
        if self.released.contains(&info.table) {
            return p.refuse(
                "one statement may aggregate them once (two aggregates in one statement could be subtracted from each other to single out a person); run each aggregate as its own statement",
            );
        }
        self.released.push(info.table.clone());
        if let Some(privacy) = &info.privacy {
            let a = Aggregate::try_new(Arc::new(input), a.group_expr, a.aggr_expr)?;
            if let Some(why) = super::total::fallible_plan(&LogicalPlan::Aggregate(a.clone())) {
                return p.refuse(&format!(
                    "nothing evaluated on the way to their aggregate may fail on a value, since a failure would tell whether a row exists, but {why}"
                ));
            }
            return private::private_aggregate(a, &p, privacy, &tags_in, ctx);
        }
        // Threshold: the largest k, counting entities whose rows feed every argument.
        let mut k = info.min_group.unwrap_or(0);
        let mut args: Vec<Expr> = Vec::new();
        let mut thresholds: Vec<(String, u32)> = Vec::new();
        if let Some(mk) = info.min_group {
            thresholds.push((info.table.clone(), mk));
        }
        for e in &a.aggr_expr {
            for (column, ck, arg) in protected_aggregate(e, &p, ctx)? {
                k = k.max(ck);
                if !thresholds.contains(&(column.clone(), ck)) {
                    thresholds.push((column, ck));
                }
                if !args.contains(&arg) {
                    args.push(arg);
                }
            }
        }
        if a.group_expr
            .iter()
            .any(|g| matches!(g, Expr::GroupingSet(_)))
        {
            return p.refuse("GROUPING SETS, ROLLUP and CUBE are not supported over them");
        }
        let original = Aggregate::try_new(Arc::new(input), a.group_expr, a.aggr_expr)?;
        // Its group keys are evaluated on the rows too.
        if info.min_group.is_some()
            && let Some(why) =
                super::total::fallible_plan(&LogicalPlan::Aggregate(original.clone()))
        {
            return p.refuse(&format!(
                "nothing evaluated on the way to their aggregate may fail on a value, since a failure would tell whether a row exists, but {why}"
            ));
        }
        let Aggregate {
            input,
            group_expr,
            aggr_expr,
            schema: original,
            ..
        } = original;
        let input = Arc::unwrap_or_clone(input);
        let multiplied = tags_in
            .iter()
            .any(|t| matches!(t, Tag::Row { scan: s, multiplied: true } if *s == scan));
        let (input, tags_in, group) = if multiplied {
            // Group keys computed from the table's own columns alone put each row in one
            // group anyway.
            let own_keys = group_expr
                .iter()
                .all(|g| own_key(g, input.schema(), &tags_in, scan));
            once_per_group(input, &tags_in, scan, &group_expr, &aggr_expr, !own_keys)?
        } else {
            (input, tags_in, group_expr)
        };
        // Count the distinct entities that contribute (all arguments non-NULL); a table
        // without an entity column counts its rows instead.
        let entity = input
            .schema()
            .iter()
            .zip(&tags_in)
            .find(|(_, t)| **t == Tag::Entity { scan })
            .map(|((q, f), _)| Expr::Column(Column::new(q.cloned(), f.name())));
        let (entity, distinct) = match entity {
            Some(e) => (e, true),
            None if !info.has_entity => (lit(1i64), false),
            None => {
                return p.refuse(&format!(
                    "its minimum group size (k = {k}) cannot be enforced here; aggregate it in the query block that reads the table"
                ));
            }
        };
        let filter = args
            .iter()
            .map(|a| a.clone().is_not_null())
            .reduce(Expr::and)
            .map(Box::new);
        let counter = Expr::AggregateFunction(AggregateFunction::new_udf(
            datafusion::functions_aggregate::count::count_udaf(),
            vec![entity],
            distinct,
            filter,
            vec![],
            None,
        ));
        let mut aggr_expr = aggr_expr;
        aggr_expr.push(counter.alias("__exchange_k"));
        let agg =
            Aggregate::try_new(Arc::new(input), group, aggr_expr).map(LogicalPlan::Aggregate)?;
        let condition = Expr::Column(Column::from_name("__exchange_k")).gt_eq(lit(i64::from(k)));
        let filtered = Filter::try_new(condition, Arc::new(agg)).map(LogicalPlan::Filter)?;
        // Back to the aggregate's own output columns, under their original names.
        let names: Vec<Expr> = filtered
            .schema()
            .iter()
            .zip(original.iter())
            .map(|((q, f), (oq, of))| {
                let column = Expr::Column(Column::new(q.cloned(), f.name()));
                if q == oq && f.name() == of.name() {
                    column
                } else {
                    column.alias_qualified(oq.cloned(), of.name())
                }
            })
            .collect();
        let out_len = names.len();
        let plan = Projection::try_new(names, Arc::new(filtered)).map(LogicalPlan::Projection)?;
        // Nothing the analyst writes above (HAVING, an outer WHERE) may see a suppressed group.
        let plan = PolicyBarrier::threshold(
            vec![info.table.clone()],
            thresholds,
            info.min_group.is_some(),
            plan,
        );
        Ok((plan, vec![Tag::Free; out_len]))
    }

    /// The protected table this aggregate summarises, if any; two are refused.
    fn protected_scan(
        &self,
        a: &Aggregate,
        tags_in: &[Tag],
        ctx: &Ctx<'_>,
    ) -> Result<Option<ScanId>> {
        let mut found: Vec<(ScanId, String)> = min_group_rows(tags_in, &self.scans)
            .into_iter()
            .map(|(s, _, t)| (s, t.to_string()))
            .collect();
        for e in &a.aggr_expr {
            let Some(f) = function(e) else { continue };
            for arg in &f.params.args {
                if let Tag::AggOnly { scan, .. } = ctx.tag(arg, "an aggregate argument")?
                    && !found.iter().any(|(s, _)| *s == scan)
                {
                    let table = self
                        .scans
                        .get(scan.0)
                        .map(|i| i.table.clone())
                        .unwrap_or_default();
                    found.push((scan, table));
                }
            }
        }
        match found.as_slice() {
            [] => Ok(None),
            [(scan, _)] => Ok(Some(*scan)),
            [(_, a), (_, b), ..] => refuse(format!(
                "one aggregate may summarise the rows of one protected table, but this one reads rows of {a} and of {b}: aggregate each in its own query block and join the results"
            )),
        }
    }
}

/// Whether a group key is a deterministic function of the protected row alone: only its
/// own columns, no subquery, no outer reference, nothing volatile.
fn own_key(g: &Expr, schema: &datafusion::common::DFSchema, tags: &[Tag], scan: ScanId) -> bool {
    let mut own = true;
    let _ = g.apply(|e| {
        own &= match e {
            Expr::Column(c) => schema
                .maybe_index_of_column(c)
                .and_then(|i| tags.get(i))
                .is_some_and(|t| matches!(t, Tag::Own { scan: s } if *s == scan)),
            Expr::ScalarSubquery(_)
            | Expr::Exists(_)
            | Expr::InSubquery(_)
            | Expr::SetComparison(_)
            | Expr::OuterReferenceColumn(..)
            | Expr::Placeholder(_)
            | Expr::ScalarVariable(..) => false,
            Expr::ScalarFunction(f) => f.func.signature().volatility != Volatility::Volatile,
            _ => true,
        };
        Ok(if own {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    });
    own
}

/// Checks of an aggregate over no protected table: constrained columns stay out.
fn plain_aggregate(a: &Aggregate, ctx: &Ctx<'_>) -> Result<()> {
    for e in &a.aggr_expr {
        let Some(AggregateFunction { params, .. }) = function(e) else {
            let t = ctx.tag(e, "an aggregate expression")?;
            refuse_constrained(&t, "an aggregate expression")?;
            continue;
        };
        for arg in &params.args {
            if let Tag::JoinKey { column, domain, .. } = ctx.tag(arg, "an aggregate argument")? {
                return refuse(format!(
                    "{column} is a join key (domain {domain}): it cannot be aggregated, only compared for equality with another join key of domain {domain} in a join"
                ));
            }
        }
        if let Some(f) = &params.filter {
            let t = ctx.tag(f, "an aggregate FILTER clause")?;
            refuse_constrained(&t, "an aggregate FILTER clause")?;
        }
        for s in &params.order_by {
            let t = ctx.tag(&s.expr, "an aggregate ORDER BY")?;
            refuse_constrained(&t, "an aggregate ORDER BY")?;
        }
    }
    Ok(())
}

/// Check one aggregate over a protected table; returns the thresholds its arguments need:
/// (column, k, argument).
fn protected_aggregate(
    e: &Expr,
    p: &Protected<'_>,
    ctx: &Ctx<'_>,
) -> Result<Vec<(String, u32, Expr)>> {
    let Some(AggregateFunction { func, params }) = function(e) else {
        return p.refuse(&format!("{e} is not an aggregate function"));
    };
    let name = func.name();
    if !SUMMARISING.contains(&name) {
        return p.refuse(&format!(
            "{name}() does not summarise them; use count, sum, avg, min, max or similar"
        ));
    }
    if params.filter.is_some() || !params.order_by.is_empty() {
        return p.refuse(
            "aggregates over them take no FILTER or ORDER BY, which would narrow them below the group threshold",
        );
    }
    let mut needs = Vec::new();
    for arg in &params.args {
        if matches!(arg, Expr::Literal(..)) {
            continue;
        }
        let tag = ctx.tag(arg, "an aggregate argument")?;
        if let Tag::JoinKey { column, domain, .. } = &tag {
            return refuse(format!(
                "{column} is a join key (domain {domain}): it cannot be aggregated, only compared for equality with another join key of domain {domain} in a join"
            ));
        }
        if !is_bare(arg) {
            return p.refuse("aggregate arguments must be plain columns, not expressions");
        }
        match tag {
            Tag::Own { scan } if scan == p.scan => {
                if let Some(k) = p.info.min_group {
                    needs.push((p.info.table.clone(), k, arg.clone()));
                }
            }
            Tag::AggOnly { k, scan, column } if scan == p.scan => {
                if (VALUE_STATISTICS.contains(&name) || params.distinct) && !p.info.value_statistics
                {
                    let what = if params.distinct {
                        format!("{name}(DISTINCT ...) tells whether members' values are equal")
                    } else {
                        format!("{name}() returns one member's value")
                    };
                    return refuse(format!(
                        "{column} is aggregate-only (k = {k}): {what}, and the grant does not allow value statistics (value_statistics = true)"
                    ));
                }
                needs.push((column, k, arg.clone()));
            }
            Tag::Computed { .. } => {
                return p.refuse("an aggregate argument was computed from them row by row");
            }
            _ => {
                return p.refuse(&format!(
                    "aggregate arguments must be columns of {} (or constants), but {arg} comes from another relation, whose values could single out or weight some of its rows",
                    p.info.table
                ));
            }
        }
    }
    Ok(needs)
}
