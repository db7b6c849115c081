//! The k-anonymity guard of exports: whether a result reads quasi-identifiers anywhere,
//! which of its columns carry them (by lineage over the governed logical plan, through
//! expressions, and through any predicate that connects a column with one), and the
//! equivalence classes over those columns.

use std::collections::BTreeSet;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema};
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{Expr, JoinType, LogicalPlan};

use crate::catalog::{Catalog, KAction};
use crate::enforcement::{GovernedTable, PolicyBarrier, RawTable, SUBJECT};

/// Source columns (`agency.table`, column) an output column is computed from.
pub(super) type Sources = BTreeSet<(String, String)>;

/// What the guard checks for one export.
#[derive(Debug, Clone)]
pub struct GuardSpec {
    /// Output columns that form the equivalence classes: those carrying quasi-identifier
    /// information (by lineage, or by a predicate connecting them with one), and constants.
    /// Empty: the whole result is one class.
    pub columns: Vec<usize>,
    /// Their names, for messages.
    pub names: Vec<String>,
    /// Minimum rows per class.
    pub k: u32,
    /// What happens to smaller classes.
    pub action: KAction,
    /// The result's rows are groups of an aggregation whose policy threshold counts the
    /// entities of every table whose quasi-identifiers the query reads: each group then
    /// covers at least that many people, so the guard does not count its rows.
    pub aggregated: bool,
    /// Output columns carrying the rows' subjects (never written to the file).
    pub subjects: Vec<usize>,
    /// Whether a row's quasi-identifier values come from its subjects' own records only, so
    /// that classes can be counted per person. Not when an aggregate, a window or a
    /// subquery reads quasi-identifiers: one row then says something about other people
    /// (`array_agg(...) OVER ()` put every resident in every row, review 7).
    pub per_person: bool,
}

/// The table and its `export_k` rule, if `(table, column)` is a quasi-identifier of a table
/// that declares one.
pub(super) fn quasi(
    catalog: &Catalog,
    (table, column): &(String, String),
) -> Option<(String, crate::catalog::ExportK)> {
    let (agency, name) = table.split_once('.')?;
    let d = catalog.dataset(agency, name)?;
    let rule = d.export_k?;
    d.column(column)
        .filter(|c| c.quasi_identifier)
        .map(|_| (table.clone(), rule))
}

/// Tables whose entities the root aggregate's policy threshold counts, if the plan's rows
/// are its groups (through projections, filters, sorts, limits and aliases only).
fn root_thresholds(plan: &LogicalPlan) -> Option<&[String]> {
    match plan {
        LogicalPlan::Projection(_)
        | LogicalPlan::Filter(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::Limit(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Repartition(_) => plan.inputs().first().and_then(|p| root_thresholds(p)),
        LogicalPlan::Extension(e) => e
            .node
            .as_any()
            .downcast_ref::<PolicyBarrier>()
            .map(|b| b.thresholded.as_slice()),
        _ => None,
    }
}

impl GuardSpec {
    /// The guard of a plan, if it reads (anywhere: output, filter, join, subquery)
    /// quasi-identifiers of a table that declares `export_k`: the strictest k and action of
    /// those tables.
    pub fn of(plan: &LogicalPlan, catalog: &Catalog) -> Option<Self> {
        let quasi = |s: &(String, String)| quasi(catalog, s);
        let mut tables: BTreeSet<String> = BTreeSet::new();
        let mut spec: Option<GuardSpec> = None;
        for source in read_anywhere(plan) {
            let Some((table, rule)) = quasi(&source) else {
                continue;
            };
            tables.insert(table);
            let s = spec.get_or_insert(GuardSpec {
                columns: vec![],
                names: vec![],
                k: rule.k,
                action: rule.action,
                aggregated: false,
                subjects: vec![],
                per_person: false,
            });
            s.k = s.k.max(rule.k);
            if rule.action == KAction::Refuse {
                s.action = KAction::Refuse;
            }
        }
        let mut spec = spec?;
        let names: Vec<String> = plan
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        // When a quasi-identifier shapes the rows (not just selects and shows them), its
        // values can travel in any column (a count of rows a join multiplied by the birth
        // year, a constant per UNION branch): every column is part of the class.
        let shaped = shapes_rows(plan, &|s| quasi(s).is_some());
        for (i, sources) in lineage(plan).iter().enumerate() {
            if names.get(i).is_some_and(|n| n.starts_with(SUBJECT)) {
                spec.subjects.push(i);
                continue;
            }
            // Constants say something about every row when a filter pinned a
            // quasi-identifier (`SELECT 'F' ... WHERE gender = 'F'`).
            if shaped || sources.is_empty() || sources.iter().any(|s| quasi(s).is_some()) {
                spec.columns.push(i);
                spec.names.push(names.get(i).cloned().unwrap_or_default());
            }
        }
        spec.aggregated =
            root_thresholds(plan).is_some_and(|t| tables.iter().all(|q| t.contains(q)));
        spec.per_person = !spec.subjects.is_empty() && !mixes_people(plan, &|s| quasi(s).is_some());
        Some(spec)
    }
}

impl GuardSpec {
    /// What the classes are over, for messages.
    pub fn over(&self) -> String {
        if self.names.is_empty() {
            "(the whole result, one class)".into()
        } else {
            format!("({})", self.names.join(", "))
        }
    }
}

/// Whether a quasi-identifier (by `is_qi`) shapes the plan's rows: a join condition, a
/// grouping or aggregate argument, a window, an ordering, DISTINCT, or a UNION branch reads
/// one. Selecting rows by one (WHERE) and projecting it do not.
fn shapes_rows(plan: &LogicalPlan, is_qi: &dyn Fn(&(String, String)) -> bool) -> bool {
    let tainted = |of: &[Sources], schema: &DFSchema, exprs: &[Expr]| -> bool {
        reads_qi(exprs, schema, of, is_qi)
    };
    let mut shaped = false;
    let _ = plan.apply_with_subqueries(|node| {
        shaped = match node {
            LogicalPlan::Join(j) => {
                let of: Vec<Sources> = lineage(&j.left)
                    .into_iter()
                    .chain(lineage(&j.right))
                    .collect();
                let mut exprs: Vec<Expr> =
                    j.on.iter()
                        .flat_map(|(l, r)| [l.clone(), r.clone()])
                        .collect();
                exprs.extend(j.filter.iter().cloned());
                // Rows of the side an outer join pads (or a mark join tests) become a
                // value of the other side's rows: present or not, by a quasi-identifier.
                let padded = match j.join_type {
                    JoinType::Left | JoinType::LeftMark => vec![&j.right],
                    JoinType::Right | JoinType::RightMark => vec![&j.left],
                    JoinType::Full => vec![&j.left, &j.right],
                    _ => vec![],
                };
                padded
                    .iter()
                    .any(|side| read_anywhere(side).iter().any(is_qi))
                    || j.left
                        .schema()
                        .join(j.right.schema())
                        .map_or(true, |both| tainted(&of, &both, &exprs))
            }
            LogicalPlan::Aggregate(_)
            | LogicalPlan::Window(_)
            | LogicalPlan::Sort(_)
            | LogicalPlan::Unnest(_) => node
                .inputs()
                .first()
                .is_some_and(|input| tainted(&lineage(input), input.schema(), &node.expressions())),
            LogicalPlan::Distinct(_) => node
                .inputs()
                .first()
                .is_some_and(|input| lineage(input).iter().any(|s| s.iter().any(is_qi))),
            LogicalPlan::Union(u) => u
                .inputs
                .iter()
                .any(|branch| read_anywhere(branch).iter().any(is_qi)),
            // A condition mixing a quasi-identifier with anything else selects people by
            // both: over repeated rows it keeps some copies of a person's row and drops
            // others, and on one scan (`(gender = 'F' AND ...) OR phone IN (decoys)`) the
            // other column tells the pinned person from the decoys, through any copy of the
            // record joined back on identity (review 10). Either way every column is part
            // of the class.
            LogicalPlan::Filter(f) => {
                let of = lineage(&f.input);
                split_conjunction(&f.predicate).into_iter().any(|c| {
                    let (columns, read) = references(c, f.input.schema());
                    let reads_qi = read.iter().any(is_qi)
                        || columns
                            .iter()
                            .any(|i| of.get(*i).is_some_and(|s| s.iter().any(is_qi)));
                    let only_qi = columns.iter().all(|i| {
                        of.get(*i)
                            .is_some_and(|s| !s.is_empty() && s.iter().all(is_qi))
                    });
                    reads_qi && !only_qi
                })
            }
            _ => false,
        };
        Ok(if shaped {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    shaped
}

/// Whether some row's values, or whether it is there at all, can depend on quasi-identifiers
/// of records other than its own: an aggregate or a window over them, a subquery reading
/// them, or an outer, semi or anti join whose tested side reads them, anywhere in the plan.
fn mixes_people(plan: &LogicalPlan, is_qi: &dyn Fn(&(String, String)) -> bool) -> bool {
    plan.exists(|node| {
        let input_reads_qi = |exprs: &[Expr]| {
            node.inputs()
                .first()
                .is_some_and(|input| reads_qi(exprs, input.schema(), &lineage(input), is_qi))
        };
        let mut schema = DFSchema::empty();
        for input in node.inputs() {
            schema.merge(input.schema());
        }
        let subquery_reads_qi = node
            .expressions()
            .iter()
            .any(|e| references(e, &schema).1.iter().any(is_qi));
        Ok(subquery_reads_qi
            || match node {
                LogicalPlan::Aggregate(_) | LogicalPlan::Window(_) => {
                    input_reads_qi(&node.expressions())
                }
                LogicalPlan::Subquery(s) => read_anywhere(&s.subquery).iter().any(is_qi),
                // Whether a row keeps the other side's person (or survives at all) can
                // depend on that side's quasi-identifiers: `LEFT JOIN residents r2 ON
                // r2.person_id = <target> AND r2.gender = 'F'` dropped exactly the rows that
                // carried two people, so the survivors spelled out the target (review 9).
                LogicalPlan::Join(j) => {
                    let tested: Vec<&LogicalPlan> = match j.join_type {
                        JoinType::Inner => vec![],
                        JoinType::Left
                        | JoinType::LeftSemi
                        | JoinType::LeftAnti
                        | JoinType::LeftMark => vec![&j.right],
                        JoinType::Right
                        | JoinType::RightSemi
                        | JoinType::RightAnti
                        | JoinType::RightMark => vec![&j.left],
                        JoinType::Full => vec![&j.left, &j.right],
                    };
                    tested
                        .iter()
                        .any(|side| read_anywhere(side).iter().any(is_qi))
                }
                _ => false,
            })
    })
    .unwrap_or(true)
}

/// Whether any of `exprs` (over `schema`, whose columns reveal `of`) reads a
/// quasi-identifier, directly, through a column's lineage, or in a subquery.
fn reads_qi(
    exprs: &[Expr],
    schema: &DFSchema,
    of: &[Sources],
    is_qi: &dyn Fn(&(String, String)) -> bool,
) -> bool {
    exprs.iter().any(|e| {
        let (columns, read) = references(e, schema);
        read.iter().any(is_qi)
            || columns
                .iter()
                .any(|i| of.get(*i).is_some_and(|s| s.iter().any(is_qi)))
    })
}

/// Every source column the plan reads, anywhere (subqueries included).
fn read_anywhere(plan: &LogicalPlan) -> Sources {
    let mut out = Sources::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && source_as_provider(&scan.source)
                .ok()
                .is_some_and(|p| p.downcast_ref::<RawTable>().is_some())
        {
            let table = scan.table_name.to_string();
            for f in scan.projected_schema.fields() {
                out.insert((table.clone(), f.name().clone()));
            }
            for f in &scan.filters {
                for c in f.column_refs() {
                    out.insert((table.clone(), c.name.clone()));
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

/// Columns of `schema` an expression refers to (its subqueries' outer references included),
/// and what its subqueries read.
pub(super) fn references(expr: &Expr, schema: &DFSchema) -> (Vec<usize>, Sources) {
    let mut columns = Vec::new();
    let mut read = Sources::new();
    let mut add = |c: &Column| {
        if let Ok(i) = schema.index_of_column(c)
            && !columns.contains(&i)
        {
            columns.push(i);
        }
    };
    for c in expr.column_refs() {
        add(c);
    }
    let _ = expr.apply(|e| {
        let sub = match e {
            Expr::ScalarSubquery(sq) => Some(sq),
            Expr::Exists(x) => Some(&x.subquery),
            Expr::InSubquery(x) => Some(&x.subquery),
            Expr::SetComparison(x) => Some(&x.subquery),
            _ => None,
        };
        if let Some(sq) = sub {
            read.extend(read_anywhere(&sq.subquery));
            for o in &sq.outer_ref_columns {
                for c in o.column_refs() {
                    add(c);
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    (columns, read)
}

/// A predicate connects the columns it mentions: each may reveal the others (a join on
/// `r.gender = g.v` makes `g.v` a copy of the gender). Every column of a conjunct gets the
/// sources of all of them, until nothing changes.
fn connect(of: &mut [Sources], schema: &DFSchema, conjuncts: &[Expr]) {
    let refs: Vec<(Vec<usize>, Sources)> =
        conjuncts.iter().map(|c| references(c, schema)).collect();
    loop {
        let mut changed = false;
        for (columns, read) in &refs {
            let mut all = read.clone();
            for i in columns {
                if let Some(s) = of.get(*i) {
                    all.extend(s.iter().cloned());
                }
            }
            for i in columns {
                if let Some(s) = of.get_mut(*i)
                    && s.len() < all.len()
                {
                    s.extend(all.iter().cloned());
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
}

/// Per output column, the source columns its values may reveal: those it is computed from,
/// and those a filter or join condition connected it with. Nodes the walk does not know
/// give every output column every source below them (over-approximate: the guard errs
/// towards checking a column, never towards skipping one).
pub fn lineage(plan: &LogicalPlan) -> Vec<Sources> {
    let width = plan.schema().fields().len();
    let inputs: Vec<Vec<Sources>> = plan.inputs().iter().map(|p| lineage(p)).collect();
    let by_column = |expr: &Expr, input: &LogicalPlan, of: &[Sources]| -> Sources {
        let (columns, mut out) = references(expr, input.schema());
        for i in columns {
            if let Some(s) = of.get(i) {
                out.extend(s.iter().cloned());
            }
        }
        out
    };
    let all = |inputs: &[Vec<Sources>]| -> Sources {
        inputs
            .iter()
            .flatten()
            .flat_map(|s| s.iter().cloned())
            .collect()
    };
    match plan {
        LogicalPlan::TableScan(scan) => {
            // The enforced plan reads raw tables; the plan as written, governed ones.
            let table = source_as_provider(&scan.source).ok().and_then(|p| {
                if p.downcast_ref::<RawTable>().is_some() {
                    Some(scan.table_name.to_string())
                } else {
                    p.downcast_ref::<GovernedTable>()
                        .map(|g| g.spec().dataset.qualified_name())
                }
            });
            scan.projected_schema
                .fields()
                .iter()
                .map(|f| match &table {
                    Some(t) => Sources::from([(t.clone(), f.name().clone())]),
                    None => Sources::new(),
                })
                .collect()
        }
        LogicalPlan::Projection(p) => {
            let of = inputs.first().cloned().unwrap_or_default();
            p.expr.iter().map(|e| by_column(e, &p.input, &of)).collect()
        }
        LogicalPlan::Filter(f) => {
            let mut of = inputs.first().cloned().unwrap_or_default();
            connect(
                &mut of,
                f.input.schema(),
                &split_conjunction(&f.predicate)
                    .into_iter()
                    .cloned()
                    .collect::<Vec<_>>(),
            );
            of
        }
        LogicalPlan::Join(j) => {
            let mut of: Vec<Sources> = inputs.iter().flatten().cloned().collect();
            let mut conjuncts: Vec<Expr> =
                j.on.iter().map(|(l, r)| l.clone().eq(r.clone())).collect();
            if let Some(f) = &j.filter {
                conjuncts.extend(split_conjunction(f).into_iter().cloned());
            }
            if let Ok(both) = j.left.schema().join(j.right.schema()) {
                connect(&mut of, &both, &conjuncts);
            }
            let left = j.left.schema().fields().len();
            match j.join_type {
                JoinType::LeftSemi | JoinType::LeftAnti => of.truncate(left),
                JoinType::RightSemi | JoinType::RightAnti => {
                    of.drain(..left);
                }
                JoinType::LeftMark => {
                    let mark = all(&inputs);
                    of.truncate(left);
                    of.push(mark);
                }
                JoinType::RightMark => {
                    let mark = all(&inputs);
                    of.drain(..left);
                    of.push(mark);
                }
                _ => {}
            }
            if of.len() == width {
                of
            } else {
                vec![all(&inputs); width]
            }
        }
        LogicalPlan::Aggregate(a) => {
            let of = inputs.first().cloned().unwrap_or_default();
            a.group_expr
                .iter()
                .chain(a.aggr_expr.iter())
                .map(|e| by_column(e, &a.input, &of))
                .collect::<Vec<_>>()
                .into_iter()
                .chain(std::iter::repeat_with(|| all(&inputs)))
                .take(width)
                .collect()
        }
        LogicalPlan::Window(w) => {
            let of = inputs.first().cloned().unwrap_or_default();
            of.iter()
                .cloned()
                .chain(w.window_expr.iter().map(|e| by_column(e, &w.input, &of)))
                .collect()
        }
        LogicalPlan::Union(_) => (0..width)
            .map(|i| {
                inputs
                    .iter()
                    .filter_map(|l| l.get(i))
                    .flat_map(|s| s.iter().cloned())
                    .collect()
            })
            .collect(),
        _ => {
            // Sorts, limits, aliases and the policy barrier pass theirs through. Anything
            // else: everything.
            let concat: Vec<Sources> = inputs.iter().flatten().cloned().collect();
            if concat.len() == width {
                concat
            } else if let Some(first) = inputs.first()
                && first.len() == width
            {
                first.clone()
            } else {
                vec![all(&inputs); width]
            }
        }
    }
}
