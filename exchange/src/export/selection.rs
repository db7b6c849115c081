//! Quasi-identifiers an export selects rows by without showing them.
//!
//! Classes are counted over what the file shows. A condition on a quasi-identifier the file
//! does not show (`WHERE (gender = 'F' AND birth year 1933 AND district = 'heping') OR
//! (gender = 'M' AND ...)`, its columns left out) puts a rare person into a class of common
//! ones, and a second export without the rare branch, to the same recipient, subtracts to
//! that person (review 11). Shown as a plain column, the quasi-identifier splits the
//! classes the way the condition did, and the rare person is a class of their own.
//!
//! Checked on the plan as the analyst wrote it (over the governed tables, before policy),
//! so that the owner's row filters, which the analyst does not choose, are not counted.

use std::collections::BTreeSet;

use datafusion::common::DFSchema;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::{Expr, LogicalPlan};

use super::guard::{Sources, lineage, quasi, references};
use crate::catalog::Catalog;
use crate::enforcement::GovernedTable;

/// Quasi-identifiers (`agency.table.column`) of `export_k` tables that the written plan
/// reads (subqueries included) to select, join, order, group or limit its rows, but that no
/// output column shows as itself. Empty: every such condition is visible in the file's
/// classes.
pub(super) fn unshown_quasi_identifiers(written: &LogicalPlan, catalog: &Catalog) -> Vec<String> {
    let mut read = Sources::new();
    let _ = written.apply_with_subqueries(|node| {
        if !matches!(
            node,
            LogicalPlan::Projection(_) | LogicalPlan::TableScan(_) | LogicalPlan::SubqueryAlias(_)
        ) {
            let inputs = node.inputs();
            let mut schema = DFSchema::empty();
            let mut of: Vec<Sources> = Vec::new();
            for input in &inputs {
                schema.merge(input.schema());
                of.extend(lineage(input));
            }
            for e in node.expressions() {
                read.extend(sources_of(&e, &schema, &of));
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    let shown: BTreeSet<(String, String)> = (0..written.schema().fields().len())
        .filter_map(|i| origin(written, i))
        .collect();
    read.into_iter()
        .filter(|s| quasi(catalog, s).is_some() && !shown.contains(s))
        .map(|(t, c)| format!("{t}.{c}"))
        .collect()
}

/// The sources an expression over `schema` (whose columns reveal `of`) reads.
fn sources_of(e: &Expr, schema: &DFSchema, of: &[Sources]) -> Sources {
    let (columns, mut read) = references(e, schema);
    for i in columns {
        if let Some(s) = of.get(i) {
            read.extend(s.iter().cloned());
        }
    }
    read
}

/// The governed column output column `i` is, unchanged (through aliases, filters, joins,
/// sorts and limits only), if any.
fn origin(plan: &LogicalPlan, i: usize) -> Option<(String, String)> {
    match plan {
        LogicalPlan::TableScan(scan) => {
            let provider = source_as_provider(&scan.source).ok()?;
            let governed = provider.downcast_ref::<GovernedTable>()?;
            let field = scan.projected_schema.fields().get(i)?;
            Some((
                governed.spec().dataset.qualified_name(),
                field.name().clone(),
            ))
        }
        LogicalPlan::Projection(p) => {
            let Expr::Column(c) = unalias(p.expr.get(i)?) else {
                return None;
            };
            origin(&p.input, p.input.schema().index_of_column(c).ok()?)
        }
        LogicalPlan::Join(j) => {
            let left = j.left.schema().fields().len();
            match j.join_type {
                datafusion::logical_expr::JoinType::Inner
                | datafusion::logical_expr::JoinType::Left
                | datafusion::logical_expr::JoinType::Right
                | datafusion::logical_expr::JoinType::Full => {
                    if i < left {
                        origin(&j.left, i)
                    } else {
                        origin(&j.right, i - left)
                    }
                }
                datafusion::logical_expr::JoinType::LeftSemi
                | datafusion::logical_expr::JoinType::LeftAnti => origin(&j.left, i),
                datafusion::logical_expr::JoinType::RightSemi
                | datafusion::logical_expr::JoinType::RightAnti => origin(&j.right, i),
                _ => None,
            }
        }
        // A group key that is a column shows it; a window keeps its input's columns.
        LogicalPlan::Aggregate(a) => {
            let Expr::Column(c) = unalias(a.group_expr.get(i)?) else {
                return None;
            };
            origin(&a.input, a.input.schema().index_of_column(c).ok()?)
        }
        LogicalPlan::Window(w) if i < w.input.schema().fields().len() => origin(&w.input, i),
        // Every branch must show the same column there.
        LogicalPlan::Union(u) => {
            let mut branches = u.inputs.iter().map(|b| origin(b, i));
            let first = branches.next()??;
            branches
                .all(|b| b.as_ref() == Some(&first))
                .then_some(first)
        }
        LogicalPlan::Filter(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::Limit(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Repartition(_)
        | LogicalPlan::Distinct(datafusion::logical_expr::Distinct::All(_)) => {
            origin(plan.inputs().first()?, i)
        }
        _ => None,
    }
}

fn unalias(mut e: &Expr) -> &Expr {
    while let Expr::Alias(a) = e {
        e = &a.expr;
    }
    e
}
