//! Large joins partitioned by their keys in a distributed session.
//!
//! One process builds one shared hash table per join (`tuning.rs`: no join repartitioning,
//! since on a few cores repartitioning both sides costs more than it parallelises).
//! Distributed, datafusion-distributed broadcasts a shared table: every task of the probe
//! stage receives the whole build side and builds its own table from it, so a large build
//! side costs its size times the probe tasks, in bytes on the network and in memory and
//! CPU on every worker. Here a join whose build side is estimated at more rows than
//! `[distributed] broadcast_rows` (default DataFusion's own limit for a shared table,
//! `datafusion.optimizer.hash_join_single_partition_threshold_rows`; no estimate counts as
//! more) is partitioned by its keys instead, as DataFusion's join selection does with join
//! repartitioning on, and each side is shuffled once.
//!
//! Joins that `RawJoinKeys` would let compare raw values stay shared: partitioned by key,
//! they must compare tokens (`enforcement/join_keys`: partitions by raw value would order
//! rows by a function of the values), an HMAC per row of both sides, which costs more than
//! the broadcast. The choice changes how rows travel, never which rows meet: `RawJoinKeys`
//! runs again on the distributed plan and decides on the joins as they are then.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::Result;
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    ReplaceChildrenOptions, StatisticsArgs, StatisticsContext,
};

use crate::enforcement::{BatchSplitExec, joins_compared_raw};

/// The exchange's planner, then [`spread_joins`]: what datafusion-distributed distributes.
#[derive(Debug)]
pub(super) struct Spread {
    pub(super) local: Arc<dyn QueryPlanner + Send + Sync>,
    /// Most rows a build side broadcast may have (None: DataFusion's limit).
    pub(super) broadcast_rows: Option<usize>,
}

#[async_trait]
impl QueryPlanner for Spread {
    async fn create_physical_plan(
        &self,
        plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let planned = self.local.create_physical_plan(plan, session).await?;
        let config = session.config_options();
        let limit = self
            .broadcast_rows
            .unwrap_or(config.optimizer.hash_join_single_partition_threshold_rows);
        spread_joins(planned, limit, config.execution.target_partitions)
    }
}

/// `plan` with its hash joins whose shared table would hold more than `limit` rows
/// partitioned by their keys into `partitions`, except those comparing join keys raw.
pub(super) fn spread_joins(
    plan: Arc<dyn ExecutionPlan>,
    limit: usize,
    partitions: usize,
) -> Result<Arc<dyn ExecutionPlan>> {
    let keep: HashSet<usize> = joins_compared_raw(&plan)?.into_iter().collect();
    spread(&plan, &keep, limit, partitions.max(1))
}

fn spread(
    plan: &Arc<dyn ExecutionPlan>,
    keep: &HashSet<usize>,
    limit: usize,
    partitions: usize,
) -> Result<Arc<dyn ExecutionPlan>> {
    let old: Vec<Arc<dyn ExecutionPlan>> = plan.children().into_iter().cloned().collect();
    let mut children = Vec::with_capacity(old.len());
    for c in &old {
        children.push(spread(c, keep, limit, partitions)?);
    }
    let node = if old.iter().zip(&children).any(|(a, b)| !Arc::ptr_eq(a, b)) {
        Arc::clone(plan).replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )?
    } else {
        Arc::clone(plan)
    };
    let Some(join) = node.downcast_ref::<HashJoinExec>() else {
        return Ok(node);
    };
    // Identity of the join as `joins_compared_raw` saw it: the node before its rebuild.
    let id = Arc::as_ptr(plan).cast::<()>() as usize;
    if join.mode != PartitionMode::CollectLeft
        || join.null_aware
        || keep.contains(&id)
        || join.right().output_partitioning().partition_count() < 2
        || estimated_rows(join.left()).is_some_and(|rows| rows <= limit)
    {
        return Ok(node);
    }
    partitioned(join, partitions)
}

/// The planner's estimate of `plan`'s rows, if it has one.
fn estimated_rows(plan: &Arc<dyn ExecutionPlan>) -> Option<usize> {
    let stats = StatisticsContext::new()
        .compute(plan.as_ref(), &StatisticsArgs::new())
        .ok()?;
    stats.num_rows.get_value().copied()
}

/// `join` in `Partitioned` mode, both sides hash-partitioned on its keys.
fn partitioned(join: &HashJoinExec, partitions: usize) -> Result<Arc<dyn ExecutionPlan>> {
    let (left_keys, right_keys): (Vec<_>, Vec<_>) = join
        .on()
        .iter()
        .map(|(l, r)| (Arc::clone(l), Arc::clone(r)))
        .unzip();
    let build = uncollected(join.left())?;
    let left = Arc::new(RepartitionExec::try_new(
        build,
        Partitioning::Hash(left_keys, partitions),
    )?);
    let right = Arc::new(RepartitionExec::try_new(
        Arc::clone(join.right()),
        Partitioning::Hash(right_keys, partitions),
    )?);
    Ok(Arc::new(
        join.builder()
            .with_partition_mode(PartitionMode::Partitioned)
            .reset_state()
            .with_new_children(vec![left, right])?
            .build()?,
    ))
}

/// `build` without the `CoalescePartitionsExec` that collects it for a shared table (if it
/// has no limit), directly or under the exchange's batch slicing: left in place, it would
/// gather the whole build side into one task before the shuffle.
fn uncollected(build: &Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    let collected = |p: &Arc<dyn ExecutionPlan>| {
        p.downcast_ref::<CoalescePartitionsExec>()
            .filter(|c| c.fetch().is_none())
            .map(|c| Arc::clone(c.input()))
    };
    if let Some(input) = collected(build) {
        return Ok(input);
    }
    if build.is::<BatchSplitExec>()
        && let [child] = build.children().as_slice()
        && let Some(input) = collected(child)
    {
        return Arc::clone(build).replace_children(
            vec![input],
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        );
    }
    Ok(Arc::clone(build))
}
