//! The noisy aggregate operator: bounds each person's contribution, totals the groups, charges
//! the budget, adds discrete Laplace noise and releases the groups past the noisy threshold.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, RecordBatchOptions,
};
use arrow::datatypes::{DataType, Float64Type, Int64Type, SchemaRef};
use arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, internal_err};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use futures::StreamExt;

use super::runtime::{PrivacyRuntime, budget_message};
use super::{Measure, Mechanism, Release};
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
        let input = self.input.execute(0, context)?;
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
            let batches: Vec<RecordBatch> = input
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<_>>()?;
            exact_and_noisy(&mechanism, &in_schema, &batches, &runtime, &out)
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::once(fut),
        )))
    }
}

/// The exact totals of one group, and where its key is.
struct Group {
    /// None without GROUP BY.
    key: Option<OwnedRow>,
    totals: Vec<i128>,
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
    exact_and_noisy(m, in_schema, batches, runtime, schema)
}

/// Steps 2 and 3 over step 1's batches: bound, total, add noise, threshold.
fn exact_and_noisy(
    m: &Mechanism,
    in_schema: &SchemaRef,
    batches: &[RecordBatch],
    runtime: &PrivacyRuntime,
    schema: &SchemaRef,
) -> Result<RecordBatch> {
    let cap = i128::from(m.privacy.max_rows);
    if in_schema.fields().len() <= m.groups {
        return internal_err!("DpAggregateExec: step 1 lacks its group keys");
    }
    let unit_conv =
        RowConverter::new(vec![SortField::new(in_schema.field(0).data_type().clone())])?;
    let group_conv = if m.groups == 0 {
        None
    } else {
        Some(RowConverter::new(
            (1..=m.groups)
                .map(|i| SortField::new(in_schema.field(i).data_type().clone()))
                .collect(),
        )?)
    };
    // Which of each person's groups count: at most `max_groups`, those of the lowest keyed
    // hash of (person, group), a choice that depends on that person's own rows only.
    let hasher = std::collections::hash_map::RandomState::new();
    let mut unit_ids: HashMap<Box<[u8]>, u32> = HashMap::new();
    let mut pairs: Vec<(u32, u64, u32, u32)> = Vec::new();
    let mut group_rows = Vec::with_capacity(batches.len());
    for (b, batch) in batches.iter().enumerate() {
        let units = unit_conv.convert_columns(&[Arc::clone(batch.column(0))])?;
        let groups = match &group_conv {
            Some(conv) => Some(conv.convert_columns(&batch.columns()[1..=m.groups])?),
            None => None,
        };
        for r in 0..batch.num_rows() {
            let unit = units.row(r);
            let id = match unit_ids.get(unit.as_ref()) {
                Some(id) => *id,
                None => {
                    let next = u32::try_from(unit_ids.len()).unwrap_or(u32::MAX);
                    unit_ids.insert(unit.as_ref().into(), next);
                    next
                }
            };
            let mut h = hasher.build_hasher();
            h.write(unit.as_ref());
            if let Some(g) = &groups {
                h.write(g.row(r).as_ref());
            }
            pairs.push((id, h.finish(), b as u32, r as u32));
        }
        group_rows.push(groups);
    }
    pairs.sort_unstable();
    let mut groups: Vec<Group> = Vec::new();
    if group_conv.is_none() {
        // No GROUP BY: one group, which exists even over no rows.
        groups.push(Group {
            key: None,
            totals: vec![0; m.stats.len()],
        });
    }
    let mut index: HashMap<Box<[u8]>, usize> = HashMap::new();
    let mut last_unit = None;
    let mut kept = 0u32;
    for (unit, _, b, r) in pairs {
        if last_unit != Some(unit) {
            last_unit = Some(unit);
            kept = 0;
        }
        if kept >= m.privacy.max_groups {
            continue;
        }
        kept += 1;
        let (b, r) = (b as usize, r as usize);
        let (Some(batch), Some(rows)) = (batches.get(b), group_rows.get(b)) else {
            return internal_err!("DpAggregateExec lost a row");
        };
        let g = match rows {
            None => 0,
            Some(rows) => {
                let key = rows.row(r);
                match index.get(key.as_ref()) {
                    Some(g) => *g,
                    None => {
                        groups.push(Group {
                            key: Some(key.owned()),
                            totals: vec![0; m.stats.len()],
                        });
                        index.insert(key.as_ref().into(), groups.len() - 1);
                        groups.len() - 1
                    }
                }
            }
        };
        let Some(group) = groups.get_mut(g) else {
            return internal_err!("DpAggregateExec lost a group");
        };
        for (total, stat) in group.totals.iter_mut().zip(&m.stats) {
            *total += contribution(&stat.measure, batch, r, cap)?;
        }
    }
    noisy(m, groups, group_conv.as_ref(), runtime, schema)
}

/// One person's contribution to one statistic of one group, bounded.
fn contribution(measure: &Measure, batch: &RecordBatch, r: usize, cap: i128) -> Result<i128> {
    let count = |column: usize| -> Result<i128> {
        let a = batch
            .column(column)
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| {
                DataFusionError::Internal("DpAggregateExec: a count is not Int64".into())
            })?;
        Ok(if a.is_null(r) {
            0
        } else {
            i128::from(a.value(r))
        })
    };
    Ok(match measure {
        Measure::Units => 1,
        Measure::Count { column } => count(*column)?.clamp(0, cap),
        Measure::Sum { column, count: n } => {
            let n = count(*n)?;
            let a = batch
                .column(*column)
                .as_primitive_opt::<Float64Type>()
                .ok_or_else(|| {
                    DataFusionError::Internal("DpAggregateExec: a sum is not Float64".into())
                })?;
            if n <= 0 || a.is_null(r) || !a.value(r).is_finite() {
                0
            } else {
                // More than `max_rows` values: their mean, `max_rows` times. Each value is
                // within the bounds, so the share is within `max_rows` times them.
                let s = a.value(r) * (cap.min(n) as f64 / n as f64);
                s.round() as i128
            }
        }
    })
}

/// Add noise, keep the groups past the threshold, and make the batch.
fn noisy(
    m: &Mechanism,
    groups: Vec<Group>,
    conv: Option<&RowConverter>,
    runtime: &PrivacyRuntime,
    schema: &SchemaRef,
) -> Result<RecordBatch> {
    // Released in key order: the order groups were met in follows the first persons read,
    // which would tell of them (review 53).
    let mut groups = groups;
    groups.sort_by(|a, b| {
        a.key
            .as_ref()
            .map(|k| k.row())
            .cmp(&b.key.as_ref().map(|k| k.row()))
    });
    let mut keys = Vec::new();
    let mut values: Vec<Vec<i128>> = Vec::new();
    for g in groups {
        let mut noisy = Vec::with_capacity(g.totals.len());
        for (total, stat) in g.totals.iter().zip(&m.stats) {
            let scale = Rational::new(stat.scale.0, stat.scale.1)
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            let noise = runtime
                .draw(|rng| discrete_laplace(rng, scale))
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            noisy.push(total + i128::from(noise));
        }
        if let Some((units, threshold)) = m.threshold
            && noisy.get(units).is_none_or(|n| *n < i128::from(threshold))
        {
            continue;
        }
        keys.push(g.key);
        values.push(noisy);
    }
    let mut columns: Vec<ArrayRef> = match conv {
        Some(conv) => conv.convert_rows(keys.iter().flatten().map(|k| k.row()))?,
        None => vec![],
    };
    for (i, release) in m.releases.iter().enumerate() {
        let field = schema.field(m.groups + i);
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
