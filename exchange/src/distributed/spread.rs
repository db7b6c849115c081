//! Large joins partitioned by their keys in a distributed session.
//!
//! One process builds one shared hash table per join (`tuning.rs`: no join repartitioning,
//! since on a few cores repartitioning both sides costs more than it parallelises).
//! Distributed, datafusion-distributed broadcasts a shared table: every task of the probe
//! stage receives the whole build side and builds its own table from it, so a large build
//! side costs its size times the probe tasks, in bytes on the network and in memory and
//! CPU on every worker. [`SpreadJoins`] makes a join whose build side is estimated at more
//! rows than `[distributed] broadcast_rows` (default DataFusion's own limit for a shared
//! table, `datafusion.optimizer.hash_join_single_partition_threshold_rows`; no estimate
//! counts as more) a partitioned one, as DataFusion's join selection does with join
//! repartitioning on, and each side is then shuffled once.
//!
//! It is a physical rule placed right after DataFusion's `JoinSelection`, before
//! `EnsureRequirements`: it only changes the join's mode, and `EnsureRequirements` then
//! places the hash repartitions both sides need and whatever the nodes above the join
//! require of its (now hash-partitioned, unordered) output, as for any partitioned join
//! DataFusion plans. (Changing the mode after that rule, as a first version did, left
//! aggregates, windows and sorts above the join relying on a partitioning and order it no
//! longer had: review 63.)
//!
//! Joins that `RawJoinKeys` would let compare raw values stay shared: partitioned by key,
//! they must compare tokens (`enforcement/join_keys`: partitions by raw value would order
//! rows by a function of the values), an HMAC per row of both sides, which costs more than
//! the broadcast. The choice changes how rows travel, never which rows meet: `RawJoinKeys`
//! runs again on the distributed plan and decides on the joins as they are then.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::common::Result;
use datafusion::common::config::ConfigOptions;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_optimizer::optimizer::PhysicalOptimizer;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::{
    ChildrenPropertiesMode, ExecutionPlan, ReplaceChildrenOptions, StatisticsArgs,
    StatisticsContext,
};

use crate::enforcement::joins_compared_raw;
use crate::federation::RemoteExec;

/// The physical rule; see the module documentation.
#[derive(Debug)]
pub(super) struct SpreadJoins {
    /// Most rows a build side broadcast may have (None: DataFusion's limit).
    pub(super) broadcast_rows: Option<usize>,
}

impl SpreadJoins {
    /// DataFusion's physical rules with this one right after its join selection (which
    /// picks each join's build side), so that the distribution and order every node needs
    /// are placed afterwards.
    pub(super) fn within_defaults(self) -> Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> {
        let mut rules = PhysicalOptimizer::new().rules;
        let at = rules
            .iter()
            .position(|r| r.name() == "join_selection")
            .map_or(0, |i| i + 1);
        rules.insert(at, Arc::new(self));
        rules
    }
}

impl PhysicalOptimizerRule for SpreadJoins {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // A statement reading an agency node runs on the hub alone (`hub.rs`), where one
        // shared table is the faster plan, as in one process.
        if config.execution.target_partitions < 2 || reads_a_node(&plan) {
            return Ok(plan);
        }
        let limit = self
            .broadcast_rows
            .unwrap_or(config.optimizer.hash_join_single_partition_threshold_rows);
        let keep: HashSet<usize> = joins_compared_raw(&plan)?.into_iter().collect();
        spread(&plan, &keep, limit)
    }

    fn name(&self) -> &str {
        "exchange_spread_joins"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

fn spread(
    plan: &Arc<dyn ExecutionPlan>,
    keep: &HashSet<usize>,
    limit: usize,
) -> Result<Arc<dyn ExecutionPlan>> {
    let old: Vec<Arc<dyn ExecutionPlan>> = plan.children().into_iter().cloned().collect();
    let mut children = Vec::with_capacity(old.len());
    for c in &old {
        children.push(spread(c, keep, limit)?);
    }
    let changed = old.iter().zip(&children).any(|(a, b)| !Arc::ptr_eq(a, b));
    // Identity of the join as `joins_compared_raw` saw it: the node before any rebuild.
    let id = Arc::as_ptr(plan).cast::<()>() as usize;
    if let Some(join) = plan.downcast_ref::<HashJoinExec>()
        && join.mode == PartitionMode::CollectLeft
        && !join.null_aware
        && !keep.contains(&id)
        && estimated_rows(join.left()).is_none_or(|rows| rows > limit)
    {
        // A fresh join: no dynamic filter or hash table shared with the collecting one.
        return join
            .builder()
            .with_partition_mode(PartitionMode::Partitioned)
            .reset_state()
            .recompute_properties()
            .with_new_children(children)?
            .build_exec();
    }
    if !changed {
        return Ok(Arc::clone(plan));
    }
    Arc::clone(plan).replace_children(
        children,
        ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
    )
}

fn reads_a_node(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.is::<RemoteExec>() || plan.children().into_iter().any(reads_a_node)
}

/// The planner's estimate of `plan`'s rows, if it has one.
fn estimated_rows(plan: &Arc<dyn ExecutionPlan>) -> Option<usize> {
    let stats = StatisticsContext::new()
        .compute(plan.as_ref(), &StatisticsArgs::new())
        .ok()?;
    stats.num_rows.get_value().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placed_after_join_selection_and_before_distribution() {
        let rules = SpreadJoins {
            broadcast_rows: None,
        }
        .within_defaults();
        let names: Vec<&str> = rules.iter().map(|r| r.name()).collect();
        let at = |n: &str| names.iter().position(|x| *x == n);
        let spread = at("exchange_spread_joins");
        assert!(spread.is_some(), "{names:?}");
        assert_eq!(at("join_selection").map(|i| i + 1), spread, "{names:?}");
        assert!(at("EnsureRequirements") > spread, "{names:?}");
    }
}
