//! The noisy aggregate operator: bounds each person's contribution, totals the groups, charges
//! the budget, adds discrete Laplace noise and releases the groups past the noisy threshold.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, RecordBatchOptions, UInt32Array,
};
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, internal_err};
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use futures::StreamExt;

use super::bound::{self, Exact, exact};
use super::runtime::{PrivacyRuntime, budget_message};
use super::{Mechanism, Release};
use crate::enforcement::violation::Violation;
use crate::privacy::{Rational, discrete_laplace};

/// The physical [`super::DpAggregate`]: one partition in, one batch out.
#[derive(Debug)]
pub(crate) struct DpAggregateExec {
    mechanism: Arc<Mechanism>,
    input: Arc<dyn ExecutionPlan>,
    schema: SchemaRef,
    props: Arc<PlanProperties>,
}

impl DpAggregateExec {
    /// The operator over step 1 (coalesced to one partition by the caller).
    pub(crate) fn new(
        mechanism: Arc<Mechanism>,
        input: Arc<dyn ExecutionPlan>,
        schema: SchemaRef,
    ) -> Self {
        let props = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Self {
            mechanism,
            input,
            schema,
            props: Arc::new(props),
        }
    }
}

impl DisplayAs for DpAggregateExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "DpAggregateExec: {}", self.mechanism.dataset)
    }
}

fn refusal(message: String) -> DataFusionError {
    DataFusionError::External(Box::new(Violation::new(message)))
}

impl ExecutionPlan for DpAggregateExec {
    fn name(&self) -> &str {
        "DpAggregateExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn required_input_distribution(&self) -> Vec<datafusion::physical_plan::Distribution> {
        vec![datafusion::physical_plan::Distribution::SinglePartition]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match children.pop() {
            Some(input) if children.is_empty() => Ok(Arc::new(Self::new(
                Arc::clone(&self.mechanism),
                input,
                Arc::clone(&self.schema),
            ))),
            _ => internal_err!("DpAggregateExec takes one input"),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 || self.input.output_partitioning().partition_count() != 1 {
            return internal_err!("DpAggregateExec runs as one partition over one");
        }
        let Some(runtime) = context.session_config().get_extension::<PrivacyRuntime>() else {
            return Err(refusal(
                "a differentially private aggregate needs the exchange's privacy budget ledger, which this statement does not have".into(),
            ));
        };
        let shards = context.session_config().target_partitions();
        let memory_pool = Arc::clone(context.memory_pool());
        let plan = Arc::clone(&self.input);
        let mechanism = Arc::clone(&self.mechanism);
        let in_schema = self.input.schema();
        let schema = Arc::clone(&self.schema);
        let out = Arc::clone(&schema);
        let fut = async move {
            // Charged before the input is read: a statement over a spent budget reads
            // nothing, so even its duration tells nothing. Never refunded once reading
            // began: whether reading fails (memory, above all) depends on the rows, so a
            // free failure would answer exactly (review 53).
            charge(&mechanism, &runtime)?;
            // Only now started: below a coalesce, starting is already reading (review 54).
            let mut input = plan.execute(0, context)?;
            // Every row is held until bounded: in the session's memory pool, so that a
            // statement past its limit fails (charged) instead of taking the process down.
            let mut reservation = MemoryConsumer::new("DpAggregateExec").register(&memory_pool);
            let mut batches: Vec<RecordBatch> = Vec::new();
            while let Some(batch) = input.next().await {
                let batch = batch?;
                reservation.try_grow(batch.get_array_memory_size())?;
                batches.push(batch);
            }
            let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
            reservation.try_grow(bound::working_memory(&mechanism, rows))?;
            // Bounding and totalling is CPU work over every row: off the async threads, on
            // as many threads as the session has partitions. A blocking task cannot be
            // aborted: it stops at its next check once the statement is dropped (cancelled,
            // timed out), instead of running on for nobody (review 54).
            let stop = Arc::new(AtomicBool::new(false));
            let _stop_on_drop = StopOnDrop(Arc::clone(&stop));
            SpawnedTask::spawn_blocking(move || {
                let exact = exact(
                    &mechanism,
                    &in_schema,
                    batches,
                    shards,
                    &mut reservation,
                    &stop,
                )?;
                let out = noisy(&mechanism, exact, &runtime, &out, &stop);
                drop(reservation);
                out
            })
            .join()
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::once(fut),
        )))
    }
}

/// Sets its flag when dropped: the statement's future is gone, its blocking work may stop.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The error of work stopped because its statement is gone.
pub(super) fn stopped() -> DataFusionError {
    DataFusionError::Execution("the statement was cancelled".into())
}

/// Charge the query's epsilon, durably, or refuse.
fn charge(m: &Mechanism, runtime: &PrivacyRuntime) -> Result<()> {
    runtime
        .charge(&m.dataset, &m.privacy)
        .map(|_| ())
        .map_err(|e| refusal(budget_message(&e)))
}

/// Charge, then steps 2 and 3 over step 1's batches.
#[cfg(test)]
pub(super) fn release(
    m: &Mechanism,
    in_schema: &SchemaRef,
    batches: &[RecordBatch],
    runtime: &PrivacyRuntime,
    schema: &SchemaRef,
) -> Result<RecordBatch> {
    charge(m, runtime)?;
    let exact = bound::unbounded(m, in_schema, batches.to_vec(), 2)?;
    noisy(m, exact, runtime, schema, &AtomicBool::new(false))
}

/// Add noise, keep the groups past the threshold, and make the batch.
fn noisy(
    m: &Mechanism,
    exact: Exact,
    runtime: &PrivacyRuntime,
    schema: &SchemaRef,
    stop: &AtomicBool,
) -> Result<RecordBatch> {
    // Released in key order (bound::exact sorts them so): the order groups were met in
    // follows the first persons read, which would tell of them (review 53).
    let Exact { keys, totals } = exact;
    let mut kept: Vec<u32> = Vec::new();
    let mut values: Vec<Vec<i128>> = Vec::new();
    let draw = |total: i128, stat: &super::Stat| -> Result<i128> {
        let scale = Rational::new(stat.scale.0, stat.scale.1)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let noise = runtime
            .draw(|rng| discrete_laplace(rng, scale))
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(total + i128::from(noise))
    };
    for (g, totals) in totals.iter().enumerate() {
        if g % 1024 == 0 && stop.load(Ordering::Relaxed) {
            return Err(stopped());
        }
        // The persons' noise first: a group below the threshold needs no other draw (the
        // same release, for a fraction of the cost where most groups are small).
        let persons = match m.threshold {
            None => None,
            Some((units, threshold)) => {
                let (Some(total), Some(stat)) = (totals.get(units), m.stats.get(units)) else {
                    return internal_err!("DpAggregateExec: no count of persons");
                };
                let n = draw(*total, stat)?;
                if n < i128::from(threshold) {
                    continue;
                }
                Some((units, n))
            }
        };
        let mut noisy = Vec::with_capacity(totals.len());
        for (s, (total, stat)) in totals.iter().zip(&m.stats).enumerate() {
            noisy.push(match persons {
                Some((units, n)) if units == s => n,
                _ => draw(*total, stat)?,
            });
        }
        kept.push(
            u32::try_from(g).map_err(|_| {
                DataFusionError::Internal("DpAggregateExec: too many groups".into())
            })?,
        );
        values.push(noisy);
    }
    let kept = UInt32Array::from(kept);
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (i, key) in keys.iter().enumerate() {
        let column = take(key, &kept, None)?;
        // The group values hand back keys of the step-1 type; the release has the aggregate's.
        let Some(want) = schema.fields().get(i).map(|f| f.data_type()) else {
            return internal_err!("DpAggregateExec: more keys than its schema");
        };
        columns.push(if column.data_type() == want {
            column
        } else {
            cast(&column, want)?
        });
    }
    for (i, release) in m.releases.iter().enumerate() {
        let Some(field) = schema.fields().get(m.groups + i) else {
            return internal_err!("DpAggregateExec: more releases than its schema");
        };
        let at = |s: usize| values.iter().map(move |v| v.get(s).copied().unwrap_or(0));
        let column: ArrayRef = match (release, field.data_type()) {
            (Release::Count(s), DataType::Int64) | (Release::Sum(s), DataType::Int64) => {
                Arc::new(Int64Array::from_iter_values(
                    at(*s).map(|x| x.clamp(i64::MIN as i128, i64::MAX as i128) as i64),
                ))
            }
            (Release::Sum(s), DataType::Float64) => {
                Arc::new(Float64Array::from_iter_values(at(*s).map(|x| x as f64)))
            }
            (Release::Avg { sum, count }, DataType::Float64) => Arc::new(Float64Array::from_iter(
                at(*sum)
                    .zip(at(*count))
                    .map(|(s, n)| (n > 0).then(|| s as f64 / n as f64)),
            )),
            (_, t) => return internal_err!("DpAggregateExec cannot release a {t} column"),
        };
        columns.push(column);
    }
    let options = RecordBatchOptions::new().with_row_count(Some(values.len()));
    Ok(RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &options,
    )?)
}
