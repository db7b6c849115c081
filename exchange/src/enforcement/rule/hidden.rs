//! The hidden columns a plan carries (entities, row numbers): which `min_group` rows flow
//! where, and stripping them before a subquery's or the query's output.

use std::sync::Arc;

use datafusion::common::{Column, Result};
use datafusion::logical_expr::{Expr, LogicalPlan, Projection};

use super::super::tags::{ScanId, Tag, refuse};
use super::{SUBJECT, ScanInfo};

/// The `min_group` scans whose rows flow in `tags` (by their hidden entity columns).
pub(in crate::enforcement) fn min_group_rows<'a>(
    tags: &[Tag],
    scans: &'a [ScanInfo],
) -> Vec<(ScanId, u32, &'a str)> {
    let mut out: Vec<(ScanId, u32, &str)> = Vec::new();
    for t in tags {
        if let Tag::Entity { scan } = t
            && let Some(info) = scans.get(scan.0)
            && let Some(k) = info.min_group
            && !out.iter().any(|(s, _, _)| s == scan)
        {
            out.push((*scan, k, info.table.as_str()));
        }
    }
    out
}

/// Drop hidden columns (at a query's root, subquery roots, DISTINCT and UNION).
///
/// Rows of a table whose grant sets `min_group` may not pass such a point unaggregated: that
/// would list, count or test individual entities.
pub(super) fn strip_hidden(
    plan: LogicalPlan,
    tags: &[Tag],
    scans: &[ScanInfo],
    place: &str,
) -> Result<LogicalPlan> {
    strip_hidden_keeping(plan, tags, scans, place, &[])
}

/// [`strip_hidden`], but the hidden columns at `keep` stay, renamed [`SUBJECT`]`N`.
pub(super) fn strip_hidden_keeping(
    plan: LogicalPlan,
    tags: &[Tag],
    scans: &[ScanInfo],
    place: &str,
    keep: &[usize],
) -> Result<LogicalPlan> {
    if let Some((_, k, table)) = min_group_rows(tags, scans).first() {
        return refuse(format!(
            "rows of {table} may only be used aggregated, in groups of at least {k} entities, and cannot reach {place} row by row"
        ));
    }
    if !tags.iter().any(Tag::is_hidden) {
        return Ok(plan);
    }
    let mut exprs: Vec<Expr> = plan
        .schema()
        .iter()
        .zip(tags)
        .filter(|(_, t)| !t.is_hidden())
        .map(|((q, f), _)| Expr::Column(Column::new(q.cloned(), f.name())))
        .collect();
    for (n, i) in keep.iter().enumerate() {
        let (q, f) = plan.schema().qualified_field(*i);
        exprs.push(Expr::Column(Column::new(q.cloned(), f.name())).alias(format!("{SUBJECT}{n}")));
    }
    Projection::try_new(exprs, Arc::new(plan)).map(LogicalPlan::Projection)
}
