//! Hash joins of join keys (and pseudonyms) on the values the tokens stand for.
//!
//! A join key is `join_key(CAST(x AS Utf8), domain)`: an HMAC of the raw value under the
//! consumer agency's key for the domain; a pseudonym is the same under the agency's
//! pseudonym key. Two tokens of one kind and domain under one key are equal exactly when
//! the raw texts are (up to a 2^-128 collision), and NULL exactly when the raw value is, so
//! a hash join that only compares them finds the same rows when it compares
//! `CAST(x AS Utf8)` instead, without an HMAC per row on both sides and without hashing and
//! comparing 32-character tokens. A pseudonym is a visible value, so it qualifies only where
//! it is not shown: a join on pseudonyms whose result shows them keeps them.
//!
//! The rewrite is physical, applied only where nothing can observe the difference
//! ([`flow`] follows every token from the projection computing it to each of its uses):
//! - every use of the token is a key of a hash join in `CollectLeft` mode (one shared hash
//!   table: no partitioning by key value; the output follows the probe side and the build
//!   side's order, not the key values), compared with another such token;
//! - on its way the token is only carried: through nodes that move, slice, filter or
//!   repartition batches by other columns, bare-column projections, and hash joins that carry
//!   it into their output (the lineitem-orders join carrying `o_custkey` to customers) or
//!   compare it as above. It is never in the plan's output, a filter, a join filter, a
//!   computed column, a partitioning, or any other node;
//! - every token compared with it, directly or through other comparisons, meets the same
//!   conditions and has the same kind, domain, keys and raw type (the policy rule already
//!   refused equalities of join keys of different domains, and of join keys with anything
//!   else);
//! - each token projection stands on a governed scan's `BarrierExec` (through nodes that
//!   only move, filter or compute from batches);
//! - every join whose keys change is rebuilt without runtime state, so it has no dynamic
//!   filter, and a copy of the old one pushed below a projection is never filled and stays
//!   `true`.
//!
//! It runs after DataFusion's physical optimizer rules. One thing it changes that a principal
//! could in principle observe: the build side's memory now depends on the raw keys' lengths
//! rather than on fixed 32-character tokens, so a query failing on the per-query memory limit
//! says something about the total length of the keys it joined (documented in the README).

mod flow;

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::{Result, internal_err};
use datafusion::physical_expr::ScalarFunctionExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::joins::HashJoinExec;
use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};
use datafusion::physical_plan::{ChildrenPropertiesMode, ExecutionPlan, ReplaceChildrenOptions};

use flow::{Untokenise, analyse, node_id};

/// The physical rule; registered after DataFusion's own.
#[derive(Debug, Default)]
pub struct RawJoinKeys;

impl PhysicalOptimizerRule for RawJoinKeys {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let found = analyse(&plan)?;
        if found.projections.is_empty() {
            return Ok(plan);
        }
        rebuild(&plan, &found)
    }

    fn name(&self) -> &str {
        "exchange_raw_join_keys"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `plan` with the tokens found replaced by their raw argument, every node above them
/// rebuilt (schemas recomputed), and the joins comparing them without runtime state.
fn rebuild(plan: &Arc<dyn ExecutionPlan>, found: &Untokenise) -> Result<Arc<dyn ExecutionPlan>> {
    let id = node_id(plan);
    let old: Vec<Arc<dyn ExecutionPlan>> = plan.children().into_iter().cloned().collect();
    let mut children = Vec::with_capacity(old.len());
    for c in &old {
        children.push(rebuild(c, found)?);
    }
    let changed = old.iter().zip(&children).any(|(a, b)| !Arc::ptr_eq(a, b));
    if let Some(indices) = found.projections.get(&id) {
        let Some(projection) = plan.downcast_ref::<ProjectionExec>() else {
            return internal_err!("join keys to compare raw are not in a projection");
        };
        let Some(input) = children.into_iter().next() else {
            return internal_err!("a projection without input");
        };
        let mut exprs: Vec<ProjectionExpr> = projection.expr().to_vec();
        for &i in indices {
            let arg = exprs
                .get(i)
                .and_then(|e| e.expr.downcast_ref::<ScalarFunctionExpr>())
                .and_then(|f| f.args().first().cloned());
            match (arg, exprs.get_mut(i)) {
                (Some(arg), Some(e)) => e.expr = arg,
                _ => return internal_err!("join key {i} to compare raw is not a token"),
            }
        }
        return Ok(Arc::new(ProjectionExec::try_new(exprs, input)?));
    }
    if found.joins.contains(&id) {
        let Some(join) = plan.downcast_ref::<HashJoinExec>() else {
            return internal_err!("join keys to compare raw are not in a hash join");
        };
        // A fresh join: no dynamic filter or hash table shared with the token-comparing one.
        return join
            .builder()
            .reset_state()
            .recompute_properties()
            .with_new_children(children)?
            .build_exec();
    }
    if !changed {
        return Ok(plan.clone());
    }
    plan.clone().replace_children(
        children,
        ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
    )
}
