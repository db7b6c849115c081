//! The k-anonymity guard of exports: which result columns carry quasi-identifiers (by
//! lineage over the governed logical plan), and the equivalence classes over them.

use std::collections::{BTreeSet, HashMap};

use arrow::array::{ArrayRef, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::common::Result;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::{Expr, LogicalPlan};

use crate::catalog::{Catalog, KAction};
use crate::enforcement::RawTable;

/// Source columns (`agency.table`, column) an output column is computed from.
type Sources = BTreeSet<(String, String)>;

/// What the guard checks for one export.
#[derive(Debug, Clone)]
pub struct GuardSpec {
    /// Output column indices that carry quasi-identifiers.
    pub columns: Vec<usize>,
    /// Their names, for messages.
    pub names: Vec<String>,
    /// Minimum rows per class.
    pub k: u32,
    /// What happens to smaller classes.
    pub action: KAction,
    /// The result's rows are groups of an aggregation, not records: classes of rows
    /// mean nothing there (minimum group sizes are the grants' `min_group` and
    /// `aggregate_only`), so the guard does not count them.
    pub aggregated: bool,
}

/// Whether the plan's rows come out of an aggregation (through projections, filters,
/// sorts, limits and aliases only).
fn aggregated(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Aggregate(_) => true,
        LogicalPlan::Projection(_)
        | LogicalPlan::Filter(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::Limit(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Repartition(_)
        | LogicalPlan::Extension(_) => plan.inputs().first().is_some_and(|p| aggregated(p)),
        _ => false,
    }
}

impl GuardSpec {
    /// The guard of a plan's output, if it exports quasi-identifiers of a table that
    /// declares `export_k`: the strictest k and action of those tables.
    pub fn of(plan: &LogicalPlan, catalog: &Catalog) -> Option<Self> {
        let lineage = lineage(plan);
        let names: Vec<String> = plan
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let mut spec: Option<GuardSpec> = None;
        for (i, sources) in lineage.iter().enumerate() {
            for (table, column) in sources {
                let Some((agency, name)) = table.split_once('.') else {
                    continue;
                };
                let Some(d) = catalog.dataset(agency, name) else {
                    continue;
                };
                let (Some(rule), Some(c)) = (d.export_k, d.column(column)) else {
                    continue;
                };
                if !c.quasi_identifier {
                    continue;
                }
                let s = spec.get_or_insert(GuardSpec {
                    columns: vec![],
                    names: vec![],
                    k: rule.k,
                    action: rule.action,
                    aggregated: aggregated(plan),
                });
                s.k = s.k.max(rule.k);
                if rule.action == KAction::Refuse {
                    s.action = KAction::Refuse;
                }
                if !s.columns.contains(&i) {
                    s.columns.push(i);
                    s.names.push(names.get(i).cloned().unwrap_or_default());
                }
            }
        }
        spec
    }
}

/// Per output column, the source columns it derives from. Nodes the walk does not know
/// give every output column every source below them (over-approximate: the guard errs
/// towards checking a column, never towards skipping one).
pub fn lineage(plan: &LogicalPlan) -> Vec<Sources> {
    let width = plan.schema().fields().len();
    let inputs: Vec<Vec<Sources>> = plan.inputs().iter().map(|p| lineage(p)).collect();
    let by_column = |expr: &Expr, input: &LogicalPlan, of: &[Sources]| -> Sources {
        let mut out = Sources::new();
        for c in expr.column_refs() {
            if let Ok(i) = input.schema().index_of_column(c)
                && let Some(s) = of.get(i)
            {
                out.extend(s.iter().cloned());
            }
        }
        // Scalar subqueries in the expression contribute all they read.
        let _ = expr.apply(|e| {
            if let Expr::ScalarSubquery(sq) = e {
                for s in lineage(&sq.subquery) {
                    out.extend(s);
                }
            }
            Ok(TreeNodeRecursion::Continue)
        });
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
            let raw = source_as_provider(&scan.source)
                .ok()
                .is_some_and(|p| p.downcast_ref::<RawTable>().is_some());
            scan.projected_schema
                .fields()
                .iter()
                .map(|f| {
                    if raw {
                        Sources::from([(scan.table_name.to_string(), f.name().clone())])
                    } else {
                        Sources::new()
                    }
                })
                .collect()
        }
        LogicalPlan::Projection(p) => {
            let of = inputs.first().cloned().unwrap_or_default();
            p.expr.iter().map(|e| by_column(e, &p.input, &of)).collect()
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
            // Joins concatenate their inputs; filters, sorts, limits, aliases and the
            // policy barrier pass theirs through. Anything else: everything.
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

/// Counts rows per equivalence class over the guarded columns.
pub struct ClassCounter {
    columns: Vec<usize>,
    converter: RowConverter,
    counts: HashMap<OwnedRow, u64>,
}

impl ClassCounter {
    /// A counter over `spec`'s columns of batches shaped like `sample`'s schema.
    pub fn new(spec: &GuardSpec, schema: &arrow::datatypes::Schema) -> Result<Self> {
        let fields = spec
            .columns
            .iter()
            .map(|i| SortField::new(schema.field(*i).data_type().clone()))
            .collect();
        Ok(Self {
            columns: spec.columns.clone(),
            converter: RowConverter::new(fields)?,
            counts: HashMap::new(),
        })
    }

    fn keys(&self, batch: &RecordBatch) -> Result<arrow::row::Rows> {
        let cols: Vec<ArrayRef> = self
            .columns
            .iter()
            .map(|i| batch.column(*i).clone())
            .collect();
        Ok(self.converter.convert_columns(&cols)?)
    }

    /// Count a batch's rows.
    pub fn add(&mut self, batch: &RecordBatch) -> Result<()> {
        let rows = self.keys(batch)?;
        for r in rows.iter() {
            *self.counts.entry(r.owned()).or_default() += 1;
        }
        Ok(())
    }

    /// (classes, rows) below `k`.
    pub fn small(&self, k: u32) -> (u64, u64) {
        self.counts
            .values()
            .filter(|n| **n < u64::from(k))
            .fold((0, 0), |(c, r), n| (c + 1, r + n))
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.counts.len()
    }

    /// The batch without the rows of classes below `k`.
    pub fn suppress(&self, batch: &RecordBatch, k: u32) -> Result<RecordBatch> {
        let rows = self.keys(batch)?;
        let keep: BooleanArray = rows
            .iter()
            .map(|r| {
                Some(
                    self.counts
                        .get(&r.owned())
                        .is_some_and(|n| *n >= u64::from(k)),
                )
            })
            .collect();
        Ok(filter_record_batch(batch, &keep)?)
    }
}
