//! Batches of at most `batch_size` rows into every join.
//!
//! A join repeats values across its probe batch: a cross join writes a build row's text once
//! per probe row, into one array with 32-bit offsets. Most operators emit batches of at most
//! `batch_size` rows, but a window over a whole relation (and VALUES) emits all of its rows in
//! one batch, so a 16 KiB value joined to 262,144 analyst-made rows overflowed arrow's offsets,
//! exactly when the chosen person's visit supplied that value (review 8). With every join
//! input sliced to `batch_size` rows (slices share the buffers: nothing is copied), a join's
//! output batch holds at most `batch_size` copies of a value, within the value bounds of
//! `size.rs`. What a join collects into its build side is not bounded this way: its memory
//! is the documented resource limit.
//!
//! Every join's (and unnest's) output also goes through DataFusion's `CooperativeExec`, which
//! spends a unit of the task's scheduling budget per batch. A join can write many batches
//! per input batch (a cross join: one per slice of the build side per probe row), and the
//! aggregate above it pulls them in a loop that, without this, never returned to the
//! runtime: one analyst's cross join took every query thread for minutes, ran 23x past its
//! deadline and kept computing after it was cut (review 18). Now the task yields every 128
//! batches, where deadlines, cancellation and other statements get their turn.

use std::fmt;
use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Result, Statistics, internal_err};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::joins::{
    CrossJoinExec, HashJoinExec, NestedLoopJoinExec, SortMergeJoinExec, SymmetricHashJoinExec,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::unnest::UnnestExec;
use datafusion::physical_plan::{
    ChildStats, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties,
    ReplaceChildrenOptions, StatisticsArgs,
};
use futures::StreamExt;

/// Passes its input's batches on, slicing those over `rows` rows.
#[derive(Debug)]
pub struct BatchSplitExec {
    input: Arc<dyn ExecutionPlan>,
    rows: usize,
}

impl BatchSplitExec {
    /// `input` in batches of at most `rows` rows.
    pub fn new(input: Arc<dyn ExecutionPlan>, rows: usize) -> Self {
        Self {
            input,
            rows: rows.max(1),
        }
    }
}

impl BatchSplitExec {
    /// Rows per batch at most.
    pub fn rows(&self) -> usize {
        self.rows
    }
}

impl DisplayAs for BatchSplitExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "BatchSplitExec: rows={}", self.rows)
    }
}

impl ExecutionPlan for BatchSplitExec {
    fn name(&self) -> &str {
        "BatchSplitExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let stream = self.input.execute(partition, context)?;
        let schema = self.schema();
        let rows = self.rows;
        let split = stream.flat_map(move |batch| {
            let slices: Vec<Result<_>> = match batch {
                Ok(b) if b.num_rows() > rows => (0..b.num_rows())
                    .step_by(rows)
                    .map(|at| Ok(b.slice(at, rows.min(b.num_rows() - at))))
                    .collect(),
                other => vec![other],
            };
            futures::stream::iter(slices)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, split)))
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        match input_stats {
            [input] => Ok(input.clone()),
            _ => Ok(Arc::new(Statistics::new_unknown(&self.schema()))),
        }
    }

    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        vec![ChildStats::At(partition)]
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match children.pop() {
            Some(input) if children.is_empty() => Ok(Arc::new(Self::new(input, self.rows))),
            _ => internal_err!("BatchSplitExec takes one input"),
        }
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(
                datafusion::physical_plan::ChildrenPropertiesMode::Recompute,
            ),
        )
    }
}

/// Bytes of constants one batch may repeat on each of its rows: a projection (or a CASE in
/// it) copies its constants onto every row of a batch, and a join copies one side's row
/// onto each matching row of the other's: a 200 MB constant over 40 rows asked for 8 GB
/// at once and aborted the server (review 25 H1). Batches are sliced so that rows times
/// the constants' bytes stay under this.
const BROADCAST_BYTES: u128 = 64 << 20;

/// Bytes of the variable-width constants of one expression.
fn literal_bytes(expr: &Arc<dyn PhysicalExpr>) -> u128 {
    use datafusion::physical_expr::expressions::Literal;
    let mut total: u128 = 0;
    let _ = expr.apply(|e| {
        if let Some(l) = e.downcast_ref::<Literal>() {
            let v = l.value();
            let own = std::mem::size_of::<datafusion::common::ScalarValue>();
            total = total.saturating_add(v.size().saturating_sub(own) as u128);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    total
}

/// The constants one operator evaluates on each row of its input (a projection's, an
/// aggregate's or a window's arguments, a filter's): each becomes an array as long as the
/// batch (review 25b: `count(<1 MiB constant>)` asked for 8 GB).
fn node_constants(node: &Arc<dyn ExecutionPlan>) -> u128 {
    let mut sum: u128 = 0;
    let _ = node.apply_expressions(&mut |e| {
        sum = sum.saturating_add(literal_bytes(e));
        Ok(TreeNodeRecursion::Continue)
    });
    sum
}

/// The largest sum of constants one operator of `plan` puts on each row.
fn constants_per_row(plan: &Arc<dyn ExecutionPlan>) -> u128 {
    let mut most: u128 = 0;
    let _ = plan.apply(|node| {
        most = most.max(node_constants(node));
        Ok(TreeNodeRecursion::Continue)
    });
    most
}

/// Rows per batch under which `bytes` of constants per row stay within [`BROADCAST_BYTES`].
fn rows_for(bytes: u128, batch_size: usize) -> usize {
    if bytes == 0 {
        return batch_size;
    }
    usize::try_from(BROADCAST_BYTES / bytes)
        .unwrap_or(batch_size)
        .clamp(1, batch_size.max(1))
}

fn is_join(node: &Arc<dyn ExecutionPlan>) -> bool {
    node.downcast_ref::<HashJoinExec>().is_some()
        || node.downcast_ref::<CrossJoinExec>().is_some()
        || node.downcast_ref::<NestedLoopJoinExec>().is_some()
        || node.downcast_ref::<SortMergeJoinExec>().is_some()
        || node.downcast_ref::<SymmetricHashJoinExec>().is_some()
}

/// `node` over its one input sliced so that the constants it evaluates make at most
/// [`BROADCAST_BYTES`] a batch; whether it was changed.
fn slice_input(
    node: Arc<dyn ExecutionPlan>,
    rows: usize,
) -> Result<(Arc<dyn ExecutionPlan>, bool)> {
    let bounded = rows_for(node_constants(&node), rows);
    let Some(input) = node.children().first().map(|c| Arc::clone(c)) else {
        return Ok((node, false));
    };
    let split = input
        .downcast_ref::<BatchSplitExec>()
        .is_some_and(|s| s.rows <= bounded);
    if bounded >= rows || split {
        return Ok((node, false));
    }
    let sliced: Arc<dyn ExecutionPlan> = Arc::new(BatchSplitExec::new(input, bounded));
    let node = node.replace_children(
        vec![sliced],
        ReplaceChildrenOptions::new(datafusion::physical_plan::ChildrenPropertiesMode::Keep),
    )?;
    Ok((node, true))
}

/// The physical rule: every join's inputs through a [`BatchSplitExec`] (of fewer rows when
/// the other side carries large constants), every other operator evaluating large
/// constants over batches small enough, and joins' (and unnests') outputs through a
/// `CooperativeExec`.
/// Registered last.
#[derive(Debug, Default)]
pub struct BoundedBatches;

impl PhysicalOptimizerRule for BoundedBatches {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let rows = usize::from(config.execution.batch_size);
        plan.transform_up(|node| {
            let join = is_join(&node);
            // One input evaluated with constants: sliced to bound what they make per batch.
            let (node, sliced) = if !join && node.children().len() == 1 {
                slice_input(node, rows)?
            } else {
                (node, false)
            };
            if node.is::<UnnestExec>() {
                return Ok(Transformed::yes(Arc::new(CooperativeExec::new(node))));
            }
            if !join {
                return Ok(if sliced {
                    Transformed::yes(node)
                } else {
                    Transformed::no(node)
                });
            }
            let originals = node.children();
            // Each side sliced so that the other side's constants, copied onto its rows, stay
            // bounded.
            let constants: Vec<u128> = originals.iter().map(|c| constants_per_row(c)).collect();
            let children: Vec<Arc<dyn ExecutionPlan>> = originals
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let others = constants
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != i)
                        .map(|(_, b)| *b)
                        .max()
                        .unwrap_or(0);
                    let want = rows_for(others, rows);
                    match c.downcast_ref::<BatchSplitExec>() {
                        Some(s) if s.rows <= want => Arc::clone(c),
                        Some(s) => Arc::new(BatchSplitExec::new(Arc::clone(&s.input), want))
                            as Arc<dyn ExecutionPlan>,
                        None => Arc::new(BatchSplitExec::new(Arc::clone(c), want))
                            as Arc<dyn ExecutionPlan>,
                    }
                })
                .collect();
            // Slicing keeps the children's partitioning and ordering.
            let join = node.replace_children(
                children,
                ReplaceChildrenOptions::new(
                    datafusion::physical_plan::ChildrenPropertiesMode::Keep,
                ),
            )?;
            Ok(Transformed::yes(Arc::new(CooperativeExec::new(join))))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "bounded_batches"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn one_large_batch_leaves_in_slices_of_at_most_the_batch_size() {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from_iter_values(0..20_000))],
        )
        .unwrap();
        let source = MemorySourceConfig::try_new_exec(&[vec![batch]], schema, None).unwrap();
        let split = Arc::new(BatchSplitExec::new(source, 8192));
        let out = datafusion::physical_plan::collect(split, SessionContext::new().task_ctx())
            .await
            .unwrap();
        let sizes: Vec<usize> = out.iter().map(RecordBatch::num_rows).collect();
        assert_eq!(sizes, vec![8192, 8192, 3616]);
        let values: Vec<i64> = out
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(values, (0..20_000).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn every_join_input_is_split() {
        let ctx = SessionContext::new();
        let plan = ctx
            .sql(
                "SELECT count(*) FROM (SELECT count(*) OVER () AS w FROM (VALUES (1), (2)) a(i)) u
                 CROSS JOIN (VALUES (3), (4)) b(j) WHERE u.w > 0",
            )
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let plan = BoundedBatches
            .optimize(plan, ctx.state().config_options())
            .unwrap();
        let mut joins = 0;
        plan.apply(|node| {
            if node.downcast_ref::<CrossJoinExec>().is_some() {
                joins += 1;
                for child in node.children() {
                    assert!(child.downcast_ref::<BatchSplitExec>().is_some());
                }
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .unwrap();
        assert_eq!(joins, 1);
    }

    /// Review 25 H1: a projection copies its constants onto every row, a join one side's
    /// row onto the other's rows: batches are sliced so that rows x constant bytes stays
    /// within 64 MiB.
    #[tokio::test]
    async fn constants_are_copied_onto_bounded_batches() {
        let ctx = SessionContext::new();
        let big = "x".repeat(500_000);
        let splits = |plan: &Arc<dyn ExecutionPlan>| {
            let mut rows = vec![];
            plan.apply(|n| {
                if let Some(s) = n.downcast_ref::<BatchSplitExec>() {
                    rows.push(s.rows);
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .unwrap();
            rows
        };
        for (sql, want) in [
            (
                format!("SELECT '{big}' AS v, i FROM (VALUES (1), (2)) a(i)"),
                64 * 1024 * 1024 / 500_000,
            ),
            (
                format!(
                    "SELECT CASE WHEN i > 1 THEN '{big}' ELSE '{big}' END AS v FROM (VALUES (1), (2)) a(i)"
                ),
                64 * 1024 * 1024 / 1_000_000,
            ),
            (
                format!(
                    "SELECT length(u.v) + j AS n FROM (SELECT '{big}' AS v FROM (VALUES (1)) a(i)) u CROSS JOIN (VALUES (3), (4)) b(j)"
                ),
                64 * 1024 * 1024 / 500_000,
            ),
        ] {
            let plan = ctx
                .sql(&sql)
                .await
                .unwrap()
                .create_physical_plan()
                .await
                .unwrap();
            let plan = BoundedBatches
                .optimize(plan, ctx.state().config_options())
                .unwrap();
            let rows = splits(&plan);
            assert!(rows.contains(&want), "{rows:?} for {}", &sql[..40]);
            let out = datafusion::physical_plan::collect(plan, ctx.task_ctx())
                .await
                .unwrap();
            assert_eq!(out.iter().map(RecordBatch::num_rows).sum::<usize>(), 2);
        }
    }
}
