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
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::{Expr, LogicalPlan};

use super::guard::{Sources, lineage, quasi, references};
use crate::catalog::{Catalog, PiiType};
use crate::enforcement::GovernedTable;
use crate::policy::Treatment;

/// Quasi-identifiers (`agency.table.column`) of `export_k` tables that the written plan
/// reads (subqueries included) other than by showing them as plain output columns: to
/// select, join, order, group or limit its rows, or to compute an output column (a flag
/// `CASE WHEN <rare tuple> OR <common tuple>` splits the rows as a WHERE would, review 12).
/// A resident ID the principal sees raw encodes birth date, gender and region, so reading
/// one other than as a plain output column (a join on it too) reads every quasi-identifier of the
/// `export_k` tables the plan scans (`substr(e.person_id, 7, 4) = '1961'`, review 12).
/// With them, the strictest k of their tables; `None`: every such read is visible in the
/// file's classes (or k is 1).
pub(super) fn unshown_quasi_identifiers(
    written: &LogicalPlan,
    catalog: &Catalog,
) -> Option<(Vec<String>, u32)> {
    let (raw_ids, scanned_qis) = scanned(written, catalog);
    let mut read = Sources::new();
    reads(written, false, &mut read);
    if read.iter().any(|s| raw_ids.contains(s)) {
        read.extend(scanned_qis);
    }
    let shown: BTreeSet<(String, String)> = (0..written.schema().fields().len())
        .filter_map(|i| origin(written, i))
        .collect();
    let mut k = 0;
    let mut unshown = Vec::new();
    for s in read {
        if let Some((_, rule)) = quasi(catalog, &s)
            && !shown.contains(&s)
        {
            k = k.max(rule.k);
            unshown.push(format!("{}.{}", s.0, s.1));
        }
    }
    (k > 1).then_some((unshown, k))
}

/// Adds to `read` the sources `plan` reads other than by passing a column on. Inside a subquery nothing is passed on to the file: what its projection
/// yields, the enclosing expression compares (`'F' IN (SELECT r2.gender ...)`).
fn reads(plan: &LogicalPlan, in_subquery: bool, read: &mut Sources) {
    let _ = plan.apply(|node| {
        if let LogicalPlan::Subquery(sq) = node {
            reads(&sq.subquery, true, read);
            return Ok(TreeNodeRecursion::Jump);
        }
        if matches!(
            node,
            LogicalPlan::TableScan(_) | LogicalPlan::SubqueryAlias(_)
        ) {
            return Ok(TreeNodeRecursion::Continue);
        }
        let mut schema = DFSchema::empty();
        let mut of: Vec<Sources> = Vec::new();
        for input in node.inputs() {
            schema.merge(input.schema());
            of.extend(lineage(input));
        }
        for e in node.expressions() {
            let _ = e.apply(|x| {
                let sub = match x {
                    Expr::ScalarSubquery(sq) => Some(sq),
                    Expr::Exists(x) => Some(&x.subquery),
                    Expr::InSubquery(x) => Some(&x.subquery),
                    Expr::SetComparison(x) => Some(&x.subquery),
                    _ => None,
                };
                if let Some(sq) = sub {
                    reads(&sq.subquery, true, read);
                }
                Ok(TreeNodeRecursion::Continue)
            });
            if in_subquery || !shows(node, &e) {
                read.extend(sources_of(&e, &schema, &of));
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
}

/// Whether `e`, an expression of `node`, only passes a column on: a projection of a bare
/// column, possibly renamed. Join keys are reads like any other (DataFusion hands them over
/// one side at a time, and a key joined with chosen IDs selects by them, review 13).
fn shows(node: &LogicalPlan, e: &Expr) -> bool {
    matches!(node, LogicalPlan::Projection(_)) && matches!(unalias(e), Expr::Column(_))
}

/// Over the governed scans of the written plan: the resident-ID columns the principal sees
/// raw, and the quasi-identifiers of the `export_k` tables scanned.
fn scanned(written: &LogicalPlan, catalog: &Catalog) -> (Sources, Sources) {
    let mut raw_ids = Sources::new();
    let mut qis = Sources::new();
    let _ = written.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Ok(provider) = source_as_provider(&scan.source)
            && let Some(governed) = provider.downcast_ref::<GovernedTable>()
        {
            let spec = governed.spec();
            let table = spec.dataset.qualified_name();
            for c in &spec.dataset.columns {
                let source = (table.clone(), c.name.clone());
                let plain = spec
                    .access
                    .columns
                    .iter()
                    .any(|r| r.name == c.name && r.treatment == Treatment::Plain);
                if plain && c.pii == Some(PiiType::ResidentId) {
                    raw_ids.insert(source.clone());
                }
                if quasi(catalog, &source).is_some() {
                    qis.insert(source);
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    (raw_ids, qis)
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
