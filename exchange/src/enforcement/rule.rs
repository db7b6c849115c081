//! The policy analyzer rule.
//!
//! One bottom-up pass over the analyzed logical plan (subqueries included) that
//! 1. replaces every scan of a [`GovernedTable`] with its grant's fragment: raw scan, row
//!    filter on raw values, then treatments, requalified as the scan was;
//! 2. gives every output column of every node a usage tag (after SecretFlow SCQL's column
//!    control lists) and refuses any use that its treatment forbids;
//! 3. rewrites aggregates that consume `aggregate_only` columns so that groups covering
//!    fewer than k distinct entities are suppressed.
//!
//! Any plan node it does not know, and any table provider the exchange did not create, is
//! refused: unknown means unprotected.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, DFSchemaRef, DataFusionError, Result};
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::expr::{AggregateFunction, Alias, InSubquery};
use datafusion::logical_expr::{
    Aggregate, BinaryExpr, Distinct, Expr, Filter, Join, JoinType, LogicalPlan, Operator,
    Projection, Subquery, TableScan, lit,
};
use datafusion::optimizer::AnalyzerRule;

use super::spec::{BaseTag, GovernedSpec, HIDDEN_ENTITY};
use super::tables::{GovernedTable, RawTable};
use super::violation::Violation;

/// Usage tag of one output column of a plan node.
#[derive(Debug, Clone, PartialEq)]
pub enum Tag {
    /// No constraint: raw, masked or pseudonymised.
    Free,
    /// A join key: equi-joins with the same domain only.
    JoinKey {
        /// Identity domain.
        domain: String,
        /// `agency.table.column`, for messages.
        column: String,
        /// The scan it comes from.
        scan: usize,
    },
    /// Aggregate input only, in groups of at least `k` distinct entities.
    AggOnly {
        /// Minimum group size.
        k: u32,
        /// The scan it comes from.
        scan: usize,
        /// `agency.table.column`, for messages.
        column: String,
    },
    /// A value computed (not merely passed through) from rows of a `min_group` table before
    /// aggregation: usable as a group key, never as an aggregate's argument.
    Computed {
        /// The table whose rows it was computed from.
        table: String,
    },
    /// The hidden entity column of a scan, used to count distinct entities.
    Entity {
        /// The scan.
        scan: usize,
    },
}

/// What one scan contributed to a plan, for audit and EXPLAIN.
#[derive(Debug, Clone)]
pub struct ScanUse {
    /// `agency.table`.
    pub table: String,
    /// The grant applied.
    pub grant_ref: String,
}

/// What the rule did to the last plan it saw.
#[derive(Debug, Clone, Default)]
pub struct EnforcementReport {
    /// Every governed scan, in plan order.
    pub scans: Vec<ScanUse>,
    /// Group thresholds applied: (column, k).
    pub thresholds: Vec<(String, u32)>,
}

/// The analyzer rule; registered last, after DataFusion's type coercion.
#[derive(Debug, Default)]
pub struct PolicyRule {
    report: Arc<Mutex<EnforcementReport>>,
}

impl PolicyRule {
    /// A rule writing its report to `report`.
    pub fn new(report: Arc<Mutex<EnforcementReport>>) -> Self {
        Self { report }
    }
}

impl AnalyzerRule for PolicyRule {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        let mut enforcer = Enforcer::default();
        let (plan, tags) = enforcer.node(plan, &[])?;
        for (field, tag) in plan.schema().columns().iter().zip(&tags) {
            refuse_constrained(tag, &format!("the query's output column {}", field.name))?;
        }
        let plan = strip_hidden(plan, &tags, &enforcer.min_group, "the query's output")?;
        if let Ok(mut r) = self.report.lock() {
            *r = enforcer.report;
        }
        Ok(plan)
    }

    fn name(&self) -> &str {
        "exchange_policy"
    }
}

fn refuse<T>(message: String) -> Result<T> {
    Err(DataFusionError::External(Box::new(Violation::new(message))))
}

fn refuse_constrained(tag: &Tag, place: &str) -> Result<()> {
    match tag {
        Tag::JoinKey { column, domain, .. } => refuse(format!(
            "{column} is a join key (domain {domain}): it may only be compared for equality with another join key of domain {domain} in a join, and cannot appear in {place}"
        )),
        Tag::AggOnly { column, k, .. } => refuse(format!(
            "{column} is aggregate-only (k = {k}): it may only be an input of count, sum, avg, min, max and similar aggregates, and cannot appear in {place}"
        )),
        _ => Ok(()),
    }
}

/// The schema and tags of an enclosing query, for outer references in subqueries.
#[derive(Clone)]
struct Scope {
    schema: DFSchemaRef,
    tags: Vec<Tag>,
}

#[derive(Default)]
struct Enforcer {
    next_scan: usize,
    report: EnforcementReport,
    /// Output tags of processed subqueries, by plan address.
    subquery_tags: HashMap<usize, Vec<Tag>>,
    /// Scans whose fragment carries a hidden entity column.
    with_entity: std::collections::HashSet<usize>,
    /// Scans whose rows may only leave aggregated: (k, table).
    min_group: HashMap<usize, (u32, String)>,
}

fn lookup(col: &Column, scopes: &[Scope]) -> Option<Tag> {
    scopes.iter().find_map(|s| {
        s.schema
            .maybe_index_of_column(col)
            .and_then(|i| s.tags.get(i).cloned())
    })
}

const AGGREGATES_RELEASING: &[&str] = &[
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
                let inner = strip_hidden(inner, &tags, &self.min_group, "a subquery")?;
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
                let rows_of = min_group_rows(&tags_in, &self.min_group)
                    .first()
                    .map(|(_, (_, table))| table.clone());
                for e in p.expr {
                    let mut t = ctx.tag(&e, "a SELECT expression")?;
                    if let Some(table) = &rows_of
                        && t == Tag::Free
                        && !is_bare(&e)
                    {
                        t = Tag::Computed {
                            table: table.clone(),
                        };
                    }
                    tags.push(t);
                    exprs.push(e);
                }
                // Hidden entity columns travel up until an aggregate consumes them.
                for ((q, f), t) in input.schema().iter().zip(&tags_in) {
                    if let Tag::Entity { .. } = t {
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
            LogicalPlan::Join(j) => join(j, new_inputs, input_tags, ctx, &self.min_group),
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
                if matches!(plan, LogicalPlan::Window(_))
                    && let Some((_, (k, table))) = min_group_rows(&tags, &self.min_group).first()
                {
                    return refuse(format!(
                        "rows of {table} may only be used aggregated, in groups of at least {k} entities: window functions over them are not allowed"
                    ));
                }
                for e in plan.expressions() {
                    let t = ctx.tag(&e, place)?;
                    refuse_constrained(&t, place)?;
                    if matches!(plan, LogicalPlan::Window(_)) {
                        tags.push(Tag::Free);
                    }
                }
                let plan = plan.with_new_exprs(plan.expressions(), new_inputs)?;
                check_len(&plan, &tags)?;
                Ok((plan, tags))
            }
            LogicalPlan::Distinct(_) | LogicalPlan::Union(_) | LogicalPlan::Unnest(_) => {
                let place = match &plan {
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
                            .filter(|t| !matches!(t, Tag::Entity { .. }))
                            .cloned()
                            .collect::<Vec<_>>(),
                    );
                    stripped.push(strip_hidden(p, &t, &self.min_group, place)?);
                }
                let tags = match &plan {
                    LogicalPlan::Union(_) => merge_union(&stripped_tags)?,
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
                let plan = plan.with_new_exprs(plan.expressions(), stripped)?;
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
        if provider.is::<RawTable>() || provider.is::<crate::audit::AuditEvents>() {
            // Already enforced (created by this rule), or the auditors' log table.
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
        let id = self.next_scan;
        self.next_scan += 1;
        self.report.scans.push(ScanUse {
            table: spec.dataset.qualified_name(),
            grant_ref: spec.access.grant_ref.clone(),
        });
        let all_tags: Vec<Tag> = spec
            .base_tags
            .iter()
            .map(|t| match t {
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
            })
            .collect();
        for t in &spec.base_tags {
            if let BaseTag::Entity { min_group } = t {
                self.with_entity.insert(id);
                if let Some(k) = min_group {
                    self.min_group
                        .insert(id, (*k, spec.dataset.qualified_name()));
                }
            }
        }
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
                let name = if hidden {
                    HIDDEN_ENTITY
                } else {
                    f.name().as_str()
                };
                exprs.push(
                    Expr::Column(Column::new(q.cloned(), f.name()))
                        .alias_qualified(Some(scan.table_name.clone()), name),
                );
                tags.push(all_tags.get(i).cloned().unwrap_or(Tag::Free));
            }
        }
        let plan = Projection::try_new(exprs, Arc::new(fragment)).map(LogicalPlan::Projection)?;
        check_len(&plan, &tags)?;
        Ok((plan, tags))
    }

    fn aggregate(
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
        // (scan, k, column, aggregated argument) of every threshold this aggregate needs.
        let mut needs: Vec<(usize, u32, String, Option<Expr>)> = Vec::new();
        // Rows of min_group tables: each aggregate must summarise the whole group, so only
        // plain arguments of summarising aggregates, no FILTER, no per-aggregate ordering.
        let rows: Vec<(usize, u32, String)> = min_group_rows(&tags_in, &self.min_group)
            .into_iter()
            .map(|(s, (k, t))| (s, *k, t.clone()))
            .collect();
        for e in &a.aggr_expr {
            let inner = match e {
                Expr::Alias(Alias { expr, .. }) => expr.as_ref(),
                other => other,
            };
            let Expr::AggregateFunction(AggregateFunction { func, params }) = inner else {
                let t = ctx.tag(e, "an aggregate expression")?;
                refuse_constrained(&t, "an aggregate expression")?;
                continue;
            };
            if let Some((_, k, table)) = rows.first() {
                let why = |what: &str| {
                    format!(
                        "rows of {table} may only be used aggregated, in groups of at least {k} entities: {what}"
                    )
                };
                if !AGGREGATES_RELEASING.contains(&func.name()) {
                    return refuse(why(&format!("{}() does not summarise them", func.name())));
                }
                if params.filter.is_some() || !params.order_by.is_empty() {
                    return refuse(why("aggregates over them take no FILTER or ORDER BY"));
                }
                for arg in &params.args {
                    if !is_bare(arg) {
                        return refuse(why(
                            "aggregate arguments must be plain columns, not expressions",
                        ));
                    }
                    if let Tag::Computed { .. } = ctx.tag(arg, "an aggregate argument")? {
                        return refuse(why(
                            "an aggregate argument was computed from them row by row",
                        ));
                    }
                    if !matches!(arg, Expr::Literal(..)) {
                        for (scan, k, table) in &rows {
                            needs.push((*scan, *k, table.clone(), Some(arg.clone())));
                        }
                    }
                }
            }
            let mut aggregate_only_input: Option<(u32, String)> = None;
            for arg in &params.args {
                match ctx.tag(arg, "an aggregate argument")? {
                    Tag::JoinKey { column, domain, .. } => {
                        return refuse(format!(
                            "{column} is a join key (domain {domain}): it cannot be aggregated, only compared for equality with another join key of domain {domain} in a join"
                        ));
                    }
                    Tag::AggOnly { k, scan, column } => {
                        if !AGGREGATES_RELEASING.contains(&func.name()) {
                            return refuse(format!(
                                "{column} is aggregate-only (k = {k}): {}() does not summarise it; use count, sum, avg, min, max or similar",
                                func.name()
                            ));
                        }
                        aggregate_only_input = Some((k, column.clone()));
                        needs.push((scan, k, column, Some(arg.clone())));
                    }
                    _ => {}
                }
            }
            if let Some(f) = &params.filter {
                let t = ctx.tag(f, "an aggregate FILTER clause")?;
                refuse_constrained(&t, "an aggregate FILTER clause")?;
                // The group threshold counts the whole group, not the filtered part.
                if let Some((k, column)) = aggregate_only_input {
                    return refuse(format!(
                        "{column} is aggregate-only (k = {k}): its aggregates take no FILTER clause, which would narrow them below the group threshold"
                    ));
                }
            }
            for s in &params.order_by {
                let t = ctx.tag(&s.expr, "an aggregate ORDER BY")?;
                refuse_constrained(&t, "an aggregate ORDER BY")?;
            }
        }
        // Tables whose rows may only leave aggregated are thresholded whatever is computed.
        for t in &tags_in {
            if let Tag::Entity { scan } = t
                && let Some((k, table)) = self.min_group.get(scan)
            {
                needs.push((*scan, *k, table.clone(), None));
            }
        }
        let out_len = a.group_expr.len() + a.aggr_expr.len();
        if needs.is_empty() {
            let plan = Aggregate::try_new(Arc::new(input), a.group_expr, a.aggr_expr)
                .map(LogicalPlan::Aggregate)?;
            let n = plan.schema().fields().len();
            return Ok((plan, vec![Tag::Free; n]));
        }
        if a.group_expr
            .iter()
            .any(|g| matches!(g, Expr::GroupingSet(_)))
        {
            return refuse(format!(
                "{} is aggregate-only: GROUPING SETS, ROLLUP and CUBE over aggregate-only columns are not supported",
                needs.first().map(|n| n.2.as_str()).unwrap_or("a column")
            ));
        }
        for (_, k, column, _) in &needs {
            let entry = (column.clone(), *k);
            if !self.report.thresholds.contains(&entry) {
                self.report.thresholds.push(entry);
            }
        }
        // One threshold per table: count the distinct entities whose rows contribute to every
        // aggregate (all arguments non-NULL) against the largest k. Entities contributing
        // to all aggregates are a subset of those contributing to each, so this never
        // releases a group that a separate count per aggregate would suppress, and it
        // costs one distinct count per table instead of one per aggregate.
        let mut merged: Vec<(usize, u32, String, Vec<Expr>)> = Vec::new();
        for (scan, k, column, arg) in needs {
            let i = match merged.iter().position(|m| m.0 == scan) {
                Some(i) => i,
                None => {
                    merged.push((scan, k, column, Vec::new()));
                    merged.len() - 1
                }
            };
            let m = &mut merged[i];
            m.1 = m.1.max(k);
            if let Some(arg) = arg
                && !m.3.contains(&arg)
            {
                m.3.push(arg);
            }
        }
        // Count the distinct entities that actually contribute (non-NULL inputs); a table
        // without an entity column counts rows instead.
        let mut aggr_expr = a.aggr_expr;
        let mut conditions = Vec::new();
        for (n, (scan, k, column, args)) in merged.iter().enumerate() {
            let entity = input
                .schema()
                .iter()
                .zip(&tags_in)
                .find(|(_, t)| **t == Tag::Entity { scan: *scan })
                .map(|((q, f), _)| Expr::Column(Column::new(q.cloned(), f.name())));
            let entity = match entity {
                Some(e) => e,
                None if !self.with_entity.contains(scan) => lit(1i64),
                None => {
                    return refuse(format!(
                        "{column} is aggregate-only (k = {k}) but its minimum group size cannot be enforced here; aggregate it in the query block that reads its table"
                    ));
                }
            };
            let distinct = self.with_entity.contains(scan);
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
            let name = format!("__exchange_k{n}");
            aggr_expr.push(counter.alias(&name));
            conditions.push(Expr::Column(Column::from_name(&name)).gt_eq(lit(i64::from(*k))));
        }
        let agg = Aggregate::try_new(Arc::new(input), a.group_expr, aggr_expr)
            .map(LogicalPlan::Aggregate)?;
        let original: Vec<Expr> = agg
            .schema()
            .iter()
            .take(out_len)
            .map(|(q, f)| Expr::Column(Column::new(q.cloned(), f.name())))
            .collect();
        let predicate = conditions
            .into_iter()
            .reduce(Expr::and)
            .unwrap_or_else(|| lit(true));
        let filtered = Filter::try_new(predicate, Arc::new(agg)).map(LogicalPlan::Filter)?;
        let plan =
            Projection::try_new(original, Arc::new(filtered)).map(LogicalPlan::Projection)?;
        // Nothing the analyst writes above (HAVING, an outer WHERE) may see a suppressed group.
        let plan = super::barrier::PolicyBarrier::wrap("minimum group size", plan);
        Ok((plan, vec![Tag::Free; out_len]))
    }
}

/// Whether two tags are join keys that may be equated: same domain, different scans.
fn join_keys_match(a: &Tag, b: &Tag) -> Result<bool> {
    match (a, b) {
        (
            Tag::JoinKey {
                domain: da,
                column: ca,
                scan: sa,
            },
            Tag::JoinKey {
                domain: db,
                column: cb,
                scan: sb,
            },
        ) => {
            if da != db {
                return refuse(format!(
                    "join keys {ca} (domain {da}) and {cb} (domain {db}) belong to different identity domains"
                ));
            }
            if sa == sb {
                return refuse(format!(
                    "{ca} is a join key: it may only be compared with a join key of another table"
                ));
            }
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// An expression that only passes a column (or literal) through.
fn is_bare(e: &Expr) -> bool {
    match e {
        Expr::Column(_) | Expr::OuterReferenceColumn(..) | Expr::Literal(..) => true,
        Expr::Alias(a) => is_bare(&a.expr),
        Expr::Cast(c) => is_bare(&c.expr),
        Expr::TryCast(c) => is_bare(&c.expr),
        _ => false,
    }
}

/// The `min_group` tables whose rows flow in `tags` (by their hidden entity columns).
fn min_group_rows<'a>(
    tags: &[Tag],
    min_group: &'a HashMap<usize, (u32, String)>,
) -> Vec<(usize, &'a (u32, String))> {
    tags.iter()
        .filter_map(|t| match t {
            Tag::Entity { scan } => min_group.get(scan).map(|m| (*scan, m)),
            _ => None,
        })
        .collect()
}

fn one(mut inputs: Vec<LogicalPlan>) -> Result<LogicalPlan> {
    match inputs.pop() {
        Some(p) if inputs.is_empty() => Ok(p),
        _ => refuse("unexpected number of plan inputs".into()),
    }
}

fn check_len(plan: &LogicalPlan, tags: &[Tag]) -> Result<()> {
    if plan.schema().fields().len() == tags.len() {
        Ok(())
    } else {
        refuse("internal: column usage tracking lost alignment; refusing to be safe".into())
    }
}

fn merge_union(branches: &[Vec<Tag>]) -> Result<Vec<Tag>> {
    let mut out: Vec<Tag> = branches.first().cloned().unwrap_or_default();
    for b in branches.iter().skip(1) {
        for (o, t) in out.iter_mut().zip(b) {
            match (&*o, t) {
                (Tag::Free, Tag::Free) => {}
                (a, b) if a == b => {}
                (a, b) => {
                    refuse_constrained(a, "a UNION mixing different column rules")?;
                    refuse_constrained(b, "a UNION mixing different column rules")?;
                }
            }
        }
    }
    Ok(out)
}

fn join(
    j: Join,
    inputs: Vec<LogicalPlan>,
    input_tags: Vec<Vec<Tag>>,
    ctx: &Ctx<'_>,
    min_group: &HashMap<usize, (u32, String)>,
) -> Result<(LogicalPlan, Vec<Tag>)> {
    for (l, r) in &j.on {
        let tl = ctx.tag(l, "a join condition")?;
        let tr = ctx.tag(r, "a join condition")?;
        if join_keys_match(&tl, &tr)? {
            continue;
        }
        match (&tl, &tr) {
            (Tag::JoinKey { .. }, _) => refuse_constrained(
                &tl,
                "a join with a column that is not a join key of the same domain",
            )?,
            (_, Tag::JoinKey { .. }) => refuse_constrained(
                &tr,
                "a join with a column that is not a join key of the same domain",
            )?,
            _ => {
                refuse_constrained(&tl, "a join condition")?;
                refuse_constrained(&tr, "a join condition")?;
            }
        }
    }
    if let Some(f) = &j.filter {
        ctx.predicate(f, "a join condition")?;
    }
    let mut it = input_tags.into_iter();
    let left = it.next().unwrap_or_default();
    let right = it.next().unwrap_or_default();
    // A semi, anti or mark join tests rows of one side for presence and drops them: rows of
    // a min_group table may not be tested that way.
    let dropped = match j.join_type {
        JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => Some(&right),
        JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => Some(&left),
        _ => None,
    };
    if let Some(side) = dropped
        && let Some((_, (k, table))) = min_group_rows(side, min_group).first()
    {
        return refuse(format!(
            "rows of {table} may only be used aggregated, in groups of at least {k} entities, and cannot be tested one by one in a semi or anti join"
        ));
    }
    let tags = match j.join_type {
        JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full => {
            [left, right].concat()
        }
        JoinType::LeftSemi | JoinType::LeftAnti => left,
        JoinType::RightSemi | JoinType::RightAnti => right,
        JoinType::LeftMark => [left, vec![Tag::Free]].concat(),
        JoinType::RightMark => [right, vec![Tag::Free]].concat(),
    };
    let plan = LogicalPlan::Join(j);
    let plan = plan.with_new_exprs(plan.expressions(), inputs)?;
    check_len(&plan, &tags)?;
    Ok((plan, tags))
}

/// Drop hidden entity columns (at a query's root, subquery roots, DISTINCT and UNION).
///
/// Rows of a table whose grant sets `min_group` may not pass such a point unaggregated: that
/// would list, count or test individual entities.
fn strip_hidden(
    plan: LogicalPlan,
    tags: &[Tag],
    min_group: &HashMap<usize, (u32, String)>,
    place: &str,
) -> Result<LogicalPlan> {
    for t in tags {
        if let Tag::Entity { scan } = t
            && let Some((k, table)) = min_group.get(scan)
        {
            return refuse(format!(
                "rows of {table} may only be used aggregated, in groups of at least {k} entities, and cannot reach {place} row by row"
            ));
        }
    }
    if !tags.iter().any(|t| matches!(t, Tag::Entity { .. })) {
        return Ok(plan);
    }
    let exprs: Vec<Expr> = plan
        .schema()
        .iter()
        .zip(tags)
        .filter(|(_, t)| !matches!(t, Tag::Entity { .. }))
        .map(|((q, f), _)| Expr::Column(Column::new(q.cloned(), f.name())))
        .collect();
    Projection::try_new(exprs, Arc::new(plan)).map(LogicalPlan::Projection)
}

/// Expression tagging within one node.
struct Ctx<'a> {
    scopes: &'a [Scope],
    sub: &'a HashMap<usize, Vec<Tag>>,
}

fn lossless_cast(from: &arrow::datatypes::DataType, to: &arrow::datatypes::DataType) -> bool {
    use arrow::datatypes::DataType as T;
    from == to
        || matches!(to, T::Utf8 | T::LargeUtf8 | T::Utf8View)
        || (matches!(to, T::Float64) && (from.is_numeric()))
        || (matches!(to, T::Int64)
            && matches!(
                from,
                T::Int8 | T::Int16 | T::Int32 | T::UInt8 | T::UInt16 | T::UInt32
            ))
        || (matches!(to, T::Decimal128(_, _)) && from.is_integer())
}

impl Ctx<'_> {
    fn subquery_tag(&self, sq: &Subquery) -> Tag {
        self.sub
            .get(&(Arc::as_ptr(&sq.subquery) as usize))
            .and_then(|t| t.first().cloned())
            .unwrap_or(Tag::Free)
    }

    fn column_type(&self, e: &Expr) -> Option<arrow::datatypes::DataType> {
        let col = match e {
            Expr::Column(c) | Expr::OuterReferenceColumn(_, c) => c,
            _ => return None,
        };
        self.scopes.iter().find_map(|s| {
            s.schema
                .maybe_index_of_column(col)
                .map(|i| s.schema.field(i).data_type().clone())
        })
    }

    /// The tag of an expression's value. Constrained columns pass only through aliases and
    /// casts that cannot fail; any other use of them is refused here.
    fn tag(&self, expr: &Expr, place: &str) -> Result<Tag> {
        match expr {
            Expr::Column(c) | Expr::OuterReferenceColumn(_, c) => match lookup(c, self.scopes) {
                Some(t) => Ok(t),
                None => refuse(format!("cannot resolve column {c} for policy checks")),
            },
            Expr::Alias(a) => self.tag(&a.expr, place),
            Expr::Literal(..) | Expr::Placeholder(_) | Expr::ScalarVariable(..) => Ok(Tag::Free),
            Expr::Cast(c) => self.cast_tag(&c.expr, &c.field.data_type().clone(), place),
            Expr::TryCast(c) => self.cast_tag(&c.expr, &c.field.data_type().clone(), place),
            Expr::ScalarSubquery(sq) => Ok(self.subquery_tag(sq)),
            Expr::Exists(_) => Ok(Tag::Free),
            Expr::InSubquery(InSubquery { expr, subquery, .. }) => {
                let te = self.tag(expr, place)?;
                let ts = self.subquery_tag(subquery);
                match join_keys_match(&te, &ts)? {
                    true => Ok(Tag::Free),
                    false => {
                        refuse_constrained(
                            &te,
                            "an IN (subquery) test against anything but a join key of the same domain",
                        )?;
                        refuse_constrained(
                            &ts,
                            "an IN (subquery) test against anything but a join key of the same domain",
                        )?;
                        Ok(Tag::Free)
                    }
                }
            }
            Expr::SetComparison(s) => {
                let te = self.tag(&s.expr, place)?;
                refuse_constrained(&te, "an ANY/ALL comparison")?;
                refuse_constrained(&self.subquery_tag(&s.subquery), "an ANY/ALL comparison")?;
                Ok(Tag::Free)
            }
            other => {
                let mut result = Ok(());
                let _ = other.apply_children(|child| {
                    match self.tag(child, place) {
                        Ok(t) => {
                            if let Err(e) = refuse_constrained(
                                &t,
                                &format!("{place} (inside an expression or function)"),
                            ) {
                                result = Err(e);
                                return Ok(TreeNodeRecursion::Stop);
                            }
                        }
                        Err(e) => {
                            result = Err(e);
                            return Ok(TreeNodeRecursion::Stop);
                        }
                    }
                    Ok(TreeNodeRecursion::Continue)
                });
                result.map(|_| Tag::Free)
            }
        }
    }

    fn cast_tag(&self, inner: &Expr, to: &arrow::datatypes::DataType, place: &str) -> Result<Tag> {
        let t = self.tag(inner, place)?;
        if let Tag::JoinKey { .. } = t {
            use arrow::datatypes::DataType as T;
            if !matches!(to, T::Utf8 | T::LargeUtf8 | T::Utf8View) {
                refuse_constrained(&t, &format!("a cast to {to}"))?;
            }
        }
        if let Tag::AggOnly { .. } = t {
            let safe = self
                .column_type(inner)
                .is_some_and(|from| lossless_cast(&from, to));
            if !safe {
                refuse_constrained(
                    &t,
                    &format!("a cast to {to} (which could fail on raw values)"),
                )?;
            }
        }
        Ok(t)
    }

    /// Check a predicate: each conjunct is unconstrained, or an equality of two join keys
    /// of the same domain.
    fn predicate(&self, predicate: &Expr, place: &str) -> Result<()> {
        for conjunct in split_conjunction(predicate) {
            if let Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Eq,
                right,
            }) = conjunct
            {
                let (tl, tr) = (self.tag(left, place)?, self.tag(right, place)?);
                if join_keys_match(&tl, &tr)? {
                    continue;
                }
            }
            let t = self.tag(conjunct, place)?;
            refuse_constrained(&t, place)?;
        }
        Ok(())
    }
}

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::utils::split_conjunction;
