//! The policy analyzer rule.
//!
//! One bottom-up pass over the analyzed logical plan (subqueries included) that
//! 1. replaces every scan of a [`GovernedTable`] with its grant's fragment: raw scan, row
//!    filter on raw values, then treatments, requalified as the scan was;
//! 2. gives every output column of every node a usage tag ([`Tag`]) and refuses any use
//!    that its treatment forbids;
//! 3. rewrites aggregates over protected tables (`aggregate/`): each row counted once
//!    per group, arguments from the table alone, groups below their minimum suppressed.
//!
//! Any plan node it does not know, and any table provider the exchange did not create, is
//! refused: unknown means unprotected.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, Result};
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::{
    Distinct, Expr, Filter, LogicalPlan, Projection, Subquery, TableScan,
};
use datafusion::optimizer::AnalyzerRule;

mod combine;
mod hidden;
#[cfg(test)]
mod tests;

use combine::{join, merge_union};
pub(in crate::enforcement) use hidden::min_group_rows;
use hidden::{strip_hidden, strip_hidden_keeping};

use super::spec::{BaseTag, GovernedSpec};
use super::tables::{GovernedTable, RawTable};
use super::tags::{Ctx, ScanId, Scope, Tag, is_bare, refuse, refuse_constrained};

/// The analyzer rule; registered last, after DataFusion's type coercion.
#[derive(Debug, Default)]
pub struct PolicyRule {
    /// Keep the subjects of `export_k` tables at the output (exports).
    subjects: bool,
}

/// Prefix of the output columns that carry a row's subjects in an export.
pub const SUBJECT: &str = "__exchange_subject";

impl PolicyRule {
    /// The rule; with `subjects`, outputs keep the subject columns of `export_k` tables
    /// (named [`SUBJECT`]`N`). What it applied travels on the plan (the barriers'
    /// thresholds), not beside it.
    pub fn new(subjects: bool) -> Self {
        Self { subjects }
    }
}

impl AnalyzerRule for PolicyRule {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        let mut enforcer = Enforcer::default();
        let (plan, tags) = enforcer.node(plan, &[])?;
        for (field, tag) in plan.schema().columns().iter().zip(&tags) {
            refuse_constrained(tag, &format!("the query's output column {}", field.name))?;
        }
        let at_root = |id: usize| {
            tags.iter()
                .any(|t| matches!(t, Tag::Entity { scan } if scan.0 == id))
        };
        // Counting per person is sound only when every scan that could describe a person
        // carries its person to the output: a person whose rows were aggregated away, next
        // to decoy persons joined in, would otherwise hide in the decoys' class (review 6).
        // Without that, no subjects: the guard counts rows, each a class of all its columns.
        let every_subject_kept = enforcer
            .scans
            .iter()
            .enumerate()
            .all(|(id, s)| !s.subject || at_root(id));
        let subjects: Vec<usize> = if self.subjects && every_subject_kept {
            tags.iter()
                .enumerate()
                .filter(|(_, t)| {
                    matches!(t, Tag::Entity { scan } if enforcer.scans.get(scan.0).is_some_and(|s| s.subject))
                })
                .map(|(i, _)| i)
                .collect()
        } else {
            vec![]
        };
        let plan = strip_hidden_keeping(
            plan,
            &tags,
            &enforcer.scans,
            "the query's output",
            &subjects,
        )?;
        if let Some(why) = super::size::oversized(&plan) {
            return refuse(why);
        }
        Ok(plan)
    }

    fn name(&self) -> &str {
        "exchange_policy"
    }
}

/// What the rule knows of one scan of a governed table.
#[derive(Debug, Clone)]
pub(super) struct ScanInfo {
    /// `agency.table`.
    pub(super) table: String,
    /// Rows leave only aggregated, in groups of at least this many entities.
    pub(super) min_group: Option<u32>,
    /// Whether the fragment carries a hidden entity column.
    pub(super) has_entity: bool,
    /// Whether value statistics of its aggregate-only columns are allowed.
    pub(super) value_statistics: bool,
    /// Whether its entity is a subject an export's output carries.
    pub(super) subject: bool,
    /// Differential privacy of its grant: rows leave only through noisy aggregates.
    pub(super) privacy: Option<Arc<crate::policy::Privacy>>,
    /// Its visible columns that show the person (the privacy unit), by name.
    pub(super) units: Vec<String>,
}

#[derive(Default)]
pub(super) struct Enforcer {
    /// Output tags of processed subqueries, by plan address.
    subquery_tags: HashMap<usize, Vec<Tag>>,
    /// Every governed scan, by scan id.
    pub(super) scans: Vec<ScanInfo>,
    /// Unions seen, to name the relations they make.
    unions: usize,
    /// Protected tables an aggregate of this statement already summarises.
    pub(super) released: Vec<String>,
}

/// Relation ids of unions start here, far from scan ids.
const UNION_RELATIONS: usize = 1 << 40;

impl Enforcer {
    /// Process a plan node: returns the rewritten node and a tag per output column.
    fn node(&mut self, plan: LogicalPlan, outer: &[Scope]) -> Result<(LogicalPlan, Vec<Tag>)> {
        if let LogicalPlan::TableScan(scan) = plan {
            return self.scan(scan);
        }
        // Subqueries in this node's expressions see this node's inputs as their outer scope.
        let mut scopes: Vec<Scope> = plan
            .inputs()
            .iter()
            .map(|_| Scope {
                schema: Arc::new(datafusion::common::DFSchema::empty()),
                tags: vec![],
            })
            .collect();
        let inputs: Vec<LogicalPlan> = plan.inputs().into_iter().cloned().collect();
        let mut new_inputs = Vec::with_capacity(inputs.len());
        let mut input_tags = Vec::with_capacity(inputs.len());
        for (i, child) in inputs.into_iter().enumerate() {
            let (p, t) = self.node(child, outer)?;
            if let Some(s) = scopes.get_mut(i) {
                *s = Scope {
                    schema: p.schema().clone(),
                    tags: t.clone(),
                };
            }
            new_inputs.push(p);
            input_tags.push(t);
        }
        scopes.extend(outer.iter().cloned());
        let plan = plan
            .map_subqueries(|sub| {
                let LogicalPlan::Subquery(sq) = sub else {
                    return Ok(Transformed::no(sub));
                };
                let (inner, tags) = self.node(Arc::unwrap_or_clone(sq.subquery), &scopes)?;
                let inner = strip_hidden(inner, &tags, &self.scans, "a subquery")?;
                let inner = Arc::new(inner);
                self.subquery_tags
                    .insert(Arc::as_ptr(&inner) as usize, tags);
                Ok(Transformed::yes(LogicalPlan::Subquery(Subquery {
                    subquery: inner,
                    outer_ref_columns: sq.outer_ref_columns,
                    spans: sq.spans,
                })))
            })?
            .data;
        let sub = std::mem::take(&mut self.subquery_tags);
        let ctx = Ctx {
            scopes: &scopes,
            sub: &sub,
        };
        let result = self.rewrite(plan, new_inputs, input_tags, &ctx);
        self.subquery_tags = sub;
        result
    }

    /// Rewrite one node whose inputs are already processed.
    fn rewrite(
        &mut self,
        plan: LogicalPlan,
        new_inputs: Vec<LogicalPlan>,
        input_tags: Vec<Vec<Tag>>,
        ctx: &Ctx<'_>,
    ) -> Result<(LogicalPlan, Vec<Tag>)> {
        match plan {
            LogicalPlan::Projection(p) => {
                let input = one(new_inputs)?;
                let tags_in = input_tags.concat();
                let mut exprs = Vec::with_capacity(p.expr.len());
                let mut tags = Vec::with_capacity(p.expr.len());
                let rows_of = min_group_rows(&tags_in, &self.scans)
                    .first()
                    .map(|(_, _, table)| table.to_string());
                for e in p.expr {
                    let mut t = ctx.tag(&e, "a SELECT expression")?;
                    if !is_bare(&e) && t.is_free() {
                        // A computed value belongs to no table: an aggregate over a
                        // protected table's rows cannot take it as an argument.
                        t = match &rows_of {
                            Some(table) => Tag::Computed {
                                table: table.clone(),
                            },
                            None => Tag::Free,
                        };
                    }
                    tags.push(t);
                    exprs.push(e);
                }
                // Hidden columns travel up until an aggregate consumes them.
                for ((q, f), t) in input.schema().iter().zip(&tags_in) {
                    if t.is_hidden() {
                        exprs.push(Expr::Column(Column::new(q.cloned(), f.name())));
                        tags.push(t.clone());
                    }
                }
                let plan =
                    Projection::try_new(exprs, Arc::new(input)).map(LogicalPlan::Projection)?;
                Ok((plan, tags))
            }
            LogicalPlan::Filter(f) => {
                let input = one(new_inputs)?;
                ctx.predicate(&f.predicate, "a WHERE or HAVING condition")?;
                let plan =
                    Filter::try_new(f.predicate, Arc::new(input)).map(LogicalPlan::Filter)?;
                Ok((plan, input_tags.concat()))
            }
            LogicalPlan::Join(j) => join(j, new_inputs, input_tags, ctx, &self.scans),
            LogicalPlan::Aggregate(a) => {
                let input = one(new_inputs)?;
                let tags_in = input_tags.concat();
                self.aggregate(a, input, tags_in, ctx)
            }
            LogicalPlan::Sort(_)
            | LogicalPlan::Limit(_)
            | LogicalPlan::SubqueryAlias(_)
            | LogicalPlan::Repartition(_)
            | LogicalPlan::Window(_) => {
                let place = match &plan {
                    LogicalPlan::Sort(_) => "ORDER BY",
                    LogicalPlan::Limit(_) => "LIMIT or OFFSET",
                    LogicalPlan::Window(_) => "a window function",
                    _ => "a partitioning expression",
                };
                let mut tags = input_tags.concat();
                if let Some((_, k, table)) = min_group_rows(&tags, &self.scans).first() {
                    let why = match &plan {
                        LogicalPlan::Window(_) => {
                            Some("window functions over them are not allowed")
                        }
                        // Which rows a LIMIT keeps is chosen row by row, not by the group.
                        LogicalPlan::Limit(_) => Some("LIMIT and OFFSET over them are not allowed"),
                        _ => None,
                    };
                    if let Some(why) = why {
                        return refuse(format!(
                            "rows of {table} may only be used aggregated, in groups of at least {k} entities: {why}"
                        ));
                    }
                }
                for e in plan.expressions() {
                    let t = ctx.tag(&e, place)?;
                    refuse_constrained(&t, place)?;
                    if matches!(plan, LogicalPlan::Window(_)) {
                        tags.push(Tag::Free);
                    }
                }
                let plan = with_new_inputs(&plan, new_inputs)?;
                check_len(&plan, &tags)?;
                Ok((plan, tags))
            }
            LogicalPlan::Distinct(_) | LogicalPlan::Union(_) | LogicalPlan::Unnest(_) => {
                let place = match &plan {
                    // DISTINCT ON reads every column of its input, written or not (review
                    // 57 F3: a refusal named a join key the statement did not select).
                    LogicalPlan::Distinct(Distinct::On(_)) => {
                        "DISTINCT ON (which reads every column of its input: select the columns in a subquery first)"
                    }
                    LogicalPlan::Distinct(_) => "DISTINCT",
                    LogicalPlan::Union(_) => "UNION, INTERSECT or EXCEPT",
                    _ => "UNNEST",
                };
                for e in plan.expressions() {
                    let t = ctx.tag(&e, place)?;
                    refuse_constrained(&t, place)?;
                }
                let mut stripped = Vec::with_capacity(new_inputs.len());
                let mut stripped_tags = Vec::with_capacity(new_inputs.len());
                for (p, t) in new_inputs.into_iter().zip(input_tags) {
                    stripped_tags.push(
                        t.iter()
                            .filter(|t| !t.is_hidden())
                            .cloned()
                            .collect::<Vec<_>>(),
                    );
                    stripped.push(strip_hidden(p, &t, &self.scans, place)?);
                }
                let tags = match &plan {
                    LogicalPlan::Union(_) => {
                        self.unions += 1;
                        merge_union(&stripped_tags, ScanId(UNION_RELATIONS + self.unions))?
                    }
                    LogicalPlan::Distinct(Distinct::All(_)) => {
                        let t = stripped_tags.concat();
                        for tag in &t {
                            refuse_constrained(tag, place)?;
                        }
                        t
                    }
                    _ => {
                        for tag in stripped_tags.concat() {
                            refuse_constrained(&tag, place)?;
                        }
                        vec![Tag::Free; plan.schema().fields().len()]
                    }
                };
                let plan = with_new_inputs(&plan, stripped)?;
                check_len(&plan, &tags)?;
                Ok((plan, tags))
            }
            LogicalPlan::Values(_) | LogicalPlan::EmptyRelation(_) => {
                let n = plan.schema().fields().len();
                Ok((plan, vec![Tag::Free; n]))
            }
            LogicalPlan::RecursiveQuery(_) => refuse("recursive queries are not supported".into()),
            LogicalPlan::Explain(_) | LogicalPlan::Analyze(_) => {
                refuse("EXPLAIN is answered by the exchange itself, not inside a query".into())
            }
            LogicalPlan::Extension(e) if e.node.as_any().is::<super::barrier::PolicyBarrier>() => {
                let tags = input_tags.concat();
                let plan = LogicalPlan::Extension(e).with_new_exprs(vec![], new_inputs)?;
                check_len(&plan, &tags)?;
                Ok((plan, tags))
            }
            LogicalPlan::Extension(_) => {
                refuse("the plan contains an extension node the exchange does not know".into())
            }
            LogicalPlan::Subquery(_) => refuse("unexpected subquery node".into()),
            LogicalPlan::TableScan(_) => refuse("unexpected table scan".into()),
            LogicalPlan::Statement(_)
            | LogicalPlan::Dml(_)
            | LogicalPlan::Ddl(_)
            | LogicalPlan::Copy(_)
            | LogicalPlan::DescribeTable(_) => {
                refuse("only queries (SELECT, WITH, VALUES) may run".into())
            }
        }
    }

    /// Replace a governed scan with its grant's fragment; refuse foreign providers.
    fn scan(&mut self, scan: TableScan) -> Result<(LogicalPlan, Vec<Tag>)> {
        let provider = source_as_provider(&scan.source)?;
        if provider.is::<RawTable>()
            || provider.is::<crate::federation::RemoteTable>()
            || provider.is::<crate::audit::AuditEvents>()
        {
            // Already enforced (created by this rule; a node's treated columns), or the
            // auditors' log table.
            let n = scan.projected_schema.fields().len();
            return Ok((LogicalPlan::TableScan(scan), vec![Tag::Free; n]));
        }
        let Some(governed) = provider.downcast_ref::<GovernedTable>() else {
            return refuse(format!(
                "{} is not a table of the exchange; only the exchange's catalog can be read",
                scan.table_name
            ));
        };
        if !scan.filters.is_empty() || scan.fetch.is_some() {
            return refuse(format!(
                "{}: scan arrived with pushed-down filters",
                scan.table_name
            ));
        }
        let spec: &Arc<GovernedSpec> = governed.spec();
        let id = ScanId(self.scans.len());
        self.scans.push(ScanInfo {
            table: spec.dataset.qualified_name(),
            min_group: spec.access.min_group,
            has_entity: spec
                .base_tags
                .iter()
                .any(|t| matches!(t, BaseTag::Entity { .. })),
            value_statistics: spec.access.value_statistics,
            subject: spec.subject,
            privacy: spec.access.privacy.clone(),
            units: spec
                .access
                .columns
                .iter()
                .filter(|c| spec.dataset.entity.as_ref() == Some(&c.source))
                .map(|c| c.name.clone())
                .collect(),
        });
        let all_tags: Vec<Tag> = spec
            .base_tags
            .iter()
            .map(|t| match t {
                BaseTag::Free if spec.protected => Tag::Own { scan: id },
                BaseTag::Free => Tag::Free,
                BaseTag::JoinKey { domain, column } => Tag::JoinKey {
                    domain: domain.clone(),
                    column: column.clone(),
                    scan: id,
                },
                BaseTag::AggOnly { k, column } => Tag::AggOnly {
                    k: *k,
                    scan: id,
                    column: column.clone(),
                },
                BaseTag::Entity { .. } => Tag::Entity { scan: id },
                BaseTag::Row => Tag::Row {
                    scan: id,
                    multiplied: false,
                },
            })
            .collect();
        let fragment = spec.fragment.clone();
        // Keep the visible columns the scan projects, then the hidden ones.
        let visible = spec.visible_schema.fields().len();
        let keep: Vec<usize> = match &scan.projection {
            Some(p) => p.clone(),
            None => (0..visible).collect(),
        };
        let mut exprs = Vec::new();
        let mut tags = Vec::new();
        for (i, (q, f)) in fragment.schema().iter().enumerate() {
            let hidden = i >= visible;
            if hidden || keep.contains(&i) {
                exprs.push(
                    Expr::Column(Column::new(q.cloned(), f.name()))
                        .alias_qualified(Some(scan.table_name.clone()), f.name()),
                );
                tags.push(all_tags.get(i).cloned().unwrap_or(Tag::Free));
            }
        }
        let plan = Projection::try_new(exprs, Arc::new(fragment)).map(LogicalPlan::Projection)?;
        check_len(&plan, &tags)?;
        Ok((plan, tags))
    }
}

fn one(mut inputs: Vec<LogicalPlan>) -> Result<LogicalPlan> {
    match inputs.pop() {
        Some(p) if inputs.is_empty() => Ok(p),
        _ => refuse("unexpected number of plan inputs".into()),
    }
}

pub(super) fn check_len(plan: &LogicalPlan, tags: &[Tag]) -> Result<()> {
    if plan.schema().fields().len() == tags.len() {
        Ok(())
    } else {
        refuse("internal: column usage tracking lost alignment; refusing to be safe".into())
    }
}

/// `plan` over `inputs` instead of its own, its expressions unchanged. DataFusion's
/// `with_new_exprs` panics on a DISTINCT ON with ORDER BY (it takes no sort expressions),
/// so that one is rebuilt here (found while rewording a refusal: the CLI panicked on
/// `SELECT DISTINCT ON (d) n FROM (...) t ORDER BY d`).
pub(super) fn with_new_inputs(plan: &LogicalPlan, inputs: Vec<LogicalPlan>) -> Result<LogicalPlan> {
    if let LogicalPlan::Distinct(Distinct::On(on)) = plan
        && on.sort_expr.is_some()
    {
        let [input]: [LogicalPlan; 1] = inputs.try_into().map_err(|_| {
            datafusion::common::DataFusionError::Internal("DISTINCT ON has one input".into())
        })?;
        return Ok(LogicalPlan::Distinct(Distinct::On(
            datafusion::logical_expr::DistinctOn::try_new(
                on.on_expr.clone(),
                on.select_expr.clone(),
                on.sort_expr.clone(),
                std::sync::Arc::new(input),
            )?,
        )));
    }
    plan.with_new_exprs(plan.expressions(), inputs)
}
