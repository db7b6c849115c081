//! Optimization barriers around policy operators.
//!
//! DataFusion's optimizers move predicates: logically (`push_down_filter` merges a HAVING
//! into the filter below it) and physically (filter pushdown merges a parent FilterExec
//! into the row-filter FilterExec, dynamic join filters reach the file scan). Any such move
//! could evaluate an analyst's expression on a row or group the policy hides, and an error
//! from it (a failed cast, a division by zero) would reveal that value. A barrier keeps
//! every analyst predicate above the policy operator it wraps: the logical node prevents
//! pushdown through it and plans to [`BarrierExec`], which accepts no pushed filters.

use std::fmt;
use std::sync::Arc;

use arrow::array::{RecordBatch, RecordBatchOptions, UInt64Array};
use arrow::datatypes::{DataType, Field, FieldRef, Schema};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchemaRef, Result, Statistics, internal_err};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{
    Expr, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildStats, DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties,
    PlanProperties, ReplaceChildrenOptions, StatisticsArgs,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use futures::StreamExt;

/// A logical node nothing is pushed through.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub struct PolicyBarrier {
    /// What it protects, for plans.
    pub label: String,
    /// Tables (`agency.table`) whose distinct entities every row of `input` covers at
    /// least the policy's minimum of: the rows are groups of such a threshold.
    pub thresholded: Vec<String>,
    /// The group thresholds it applies, for audit and EXPLAIN: (table or column, k).
    pub thresholds: Vec<(String, u32)>,
    /// Whether nothing below may fail on a value (the rows of a `min_group` table flow
    /// here): checked again on the optimized plan, which may have rewritten expressions.
    pub total: bool,
    /// The protected plan.
    pub input: LogicalPlan,
}

impl PolicyBarrier {
    /// Wrap `input`, an aggregate whose groups below the minimum size of `tables` are
    /// suppressed (by `thresholds`); `total` when everything below must be total.
    pub fn threshold(
        tables: Vec<String>,
        thresholds: Vec<(String, u32)>,
        total: bool,
        input: LogicalPlan,
    ) -> LogicalPlan {
        LogicalPlan::Extension(datafusion::logical_expr::Extension {
            node: Arc::new(PolicyBarrier {
                label: "minimum group size".into(),
                thresholded: tables,
                thresholds,
                total,
                input,
            }),
        })
    }
}

/// The group thresholds an enforced plan applies (subqueries included), each once, in plan
/// order: read off its barriers, so they travel with the plan they describe.
pub fn thresholds_applied(plan: &LogicalPlan) -> Vec<(String, u32)> {
    let mut out: Vec<(String, u32)> = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::Extension(e) = node
            && let Some(b) = e.node.as_any().downcast_ref::<PolicyBarrier>()
        {
            for t in &b.thresholds {
                if !out.contains(t) {
                    out.push(t.clone());
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

impl UserDefinedLogicalNodeCore for PolicyBarrier {
    fn name(&self) -> &str {
        "PolicyBarrier"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        self.input.schema()
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "PolicyBarrier: {}", self.label)
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        match inputs.pop() {
            Some(input) if inputs.is_empty() => Ok(Self {
                label: self.label.clone(),
                thresholded: self.thresholded.clone(),
                thresholds: self.thresholds.clone(),
                total: self.total,
                input,
            }),
            _ => internal_err!("PolicyBarrier takes one input"),
        }
    }
}

/// The physical barrier: passes batches through, accepts no pushed-down filter.
///
/// Over a governed scan it can also number the rows: a `UInt64` column, unique within the
/// scan for one execution (partition in the high bits, position within the partition in
/// the low ones), by which an aggregate counts every row of a protected table once
/// however often a join repeated it.
#[derive(Debug)]
pub struct BarrierExec {
    input: Arc<dyn ExecutionPlan>,
    /// Where the row number goes in the output, if it is asked for.
    row_at: Option<usize>,
    /// The output's properties when a row number is added (else the input's).
    numbered: Option<Arc<PlanProperties>>,
}

/// Bits of a row number that count rows within one partition.
const ROW_BITS: u32 = 40;

impl BarrierExec {
    /// Wrap a physical plan.
    pub fn wrap(input: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
        Arc::new(Self {
            input,
            row_at: None,
            numbered: None,
        })
    }

    /// Wrap a physical plan and insert a row number column named `name` at `at`.
    pub fn wrap_numbered(
        input: Arc<dyn ExecutionPlan>,
        at: usize,
        name: &str,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let in_schema = input.schema();
        if at > in_schema.fields().len() {
            return internal_err!("row number position out of range");
        }
        let mut fields: Vec<FieldRef> = in_schema.fields().iter().cloned().collect();
        fields.insert(at, Arc::new(Field::new(name, DataType::UInt64, false)));
        let schema = Arc::new(Schema::new(fields));
        let partitions = input.output_partitioning().partition_count();
        let props = (**input.properties())
            .clone()
            .with_eq_properties(EquivalenceProperties::new(schema))
            .with_partitioning(Partitioning::UnknownPartitioning(partitions));
        Ok(Arc::new(Self {
            input,
            row_at: Some(at),
            numbered: Some(Arc::new(props)),
        }))
    }
}

impl BarrierExec {
    /// The position and name of its row number, if it numbers rows (for the codec that
    /// sends it to workers).
    pub fn numbered(&self) -> Option<(usize, String)> {
        self.row_at
            .map(|at| (at, self.schema().field(at).name().clone()))
    }
}

impl DisplayAs for BarrierExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        match self.row_at {
            Some(_) => write!(f, "BarrierExec: numbered rows"),
            None => write!(f, "BarrierExec"),
        }
    }
}

impl ExecutionPlan for BarrierExec {
    fn name(&self) -> &str {
        "BarrierExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        match &self.numbered {
            Some(p) => p,
            None => self.input.properties(),
        }
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
        let task = datafusion_distributed::DistributedTaskContext::from_ctx(&context);
        let stream = self.input.execute(partition, context)?;
        let Some(at) = self.row_at else {
            return Ok(stream);
        };
        let schema = self.schema();
        let out = schema.clone();
        // Distributed, every task runs the scan's partitions 0..n over its own share of the
        // files: the task's index keeps numbers unique across tasks (single-node: task 0 of 1).
        let partitions = self.properties().partitioning.partition_count();
        let slot = task
            .task_index
            .saturating_mul(partitions)
            .saturating_add(partition);
        let mut next = u64::try_from(slot).unwrap_or(u64::MAX) << ROW_BITS;
        let numbered = stream.map(move |batch| {
            let batch = batch?;
            let n = batch.num_rows() as u64;
            let ids = UInt64Array::from_iter_values(next..next + n);
            next += n;
            let mut columns = batch.columns().to_vec();
            columns.insert(at, Arc::new(ids));
            let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
            Ok(RecordBatch::try_new_with_options(
                out.clone(),
                columns,
                &options,
            )?)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, numbered)))
    }

    /// Only the size passes, and only as an estimate: enough for the planner to hash the
    /// smaller side of a join, never enough to answer COUNT (which needs an exact count)
    /// and nothing about any column's values (min, max, nulls and distinct counts stay
    /// unknown).
    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        let mut stats = Statistics::new_unknown(&self.schema());
        if let [input] = input_stats {
            stats.num_rows = input.num_rows.to_inexact();
            stats.total_byte_size = input.total_byte_size.to_inexact();
        }
        Ok(Arc::new(stats))
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
            Some(input) if children.is_empty() => match self.row_at {
                Some(at) => {
                    let name = self.schema().field(at).name().clone();
                    Self::wrap_numbered(input, at, &name)
                }
                None => Ok(Self::wrap(input)),
            },
            _ => internal_err!("BarrierExec takes one input"),
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

/// Plans [`PolicyBarrier`] nodes.
#[derive(Debug, Default)]
struct BarrierPlanner;

#[async_trait]
impl ExtensionPlanner for BarrierPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _planning_ctx: &datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        if let Some(dp) = node.as_any().downcast_ref::<super::private::DpAggregate>() {
            let [input] = physical_inputs else {
                return internal_err!("DpAggregate takes one input");
            };
            let input: Arc<dyn ExecutionPlan> = if input.output_partitioning().partition_count() > 1
            {
                Arc::new(
                    datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec::new(
                        Arc::clone(input),
                    ),
                )
            } else {
                Arc::clone(input)
            };
            return Ok(Some(Arc::new(super::private::DpAggregateExec::new(
                Arc::clone(&dp.mechanism),
                input,
                Arc::new(dp.schema.as_arrow().clone()),
            ))));
        }
        if node.as_any().downcast_ref::<PolicyBarrier>().is_none() {
            return Ok(None);
        }
        match physical_inputs {
            [input] => Ok(Some(BarrierExec::wrap(input.clone()))),
            _ => internal_err!("PolicyBarrier takes one input"),
        }
    }
}

/// The exchange's query planner: DataFusion's, plus barriers.
#[derive(Debug, Default)]
pub struct ExchangeQueryPlanner;

#[async_trait]
impl QueryPlanner for ExchangeQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(BarrierPlanner)])
            .create_physical_plan(logical_plan, session)
            .await
    }
}
