//! Hash joins of two join keys on the values the keys stand for.
//!
//! A join key is `join_key(CAST(x AS Utf8), domain)`: an HMAC of the raw value under the
//! consumer agency's key for the domain. Two join keys of one domain under one key are
//! equal exactly when the raw texts are (up to a 2^-128 collision), so a hash join that
//! only compares them, and does not return them, finds the same rows when it compares
//! `CAST(x AS Utf8)` instead, without an HMAC per row on both sides and without hashing and
//! comparing 32-character tokens.
//!
//! The rewrite is physical and local, applied only where nothing can observe the difference:
//! - a hash join in `CollectLeft` mode (one shared hash table: no partitioning by key value,
//!   and output order follows the probe side, not the key values);
//! - both keys computed by a projection right under the join, or under nodes that only move
//!   batches (coalescing, round-robin repartitioning);
//! - both tokens under the same keys and domain (the policy rule already refused equalities
//!   of join keys of different domains);
//! - neither key is in the join's output or in its residual filter; the policy rule refuses
//!   join keys in any output anyway;
//! - each token projection stands on a governed scan's `BarrierExec` (through nodes that only
//!   move, filter or compute from batches); the rebuilt join resets its runtime state, so it
//!   has no dynamic filter, and a copy of the old one pushed below the projection is never
//!   filled and stays `true`.
//!
//! It runs after DataFusion's physical optimizer rules. One thing it changes that a principal
//! could in principle observe: the build side's memory now depends on the raw keys' lengths
//! rather than on fixed 32-character tokens, so a query failing on the per-query memory limit
//! says something about the total length of the keys it joined (documented in the README).

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{JoinSide, Result, ScalarValue, internal_err};
use datafusion::logical_expr::JoinType;
use datafusion::physical_expr::ScalarFunctionExpr;
use datafusion::physical_expr::expressions::{Column, Literal};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::Partitioning;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ChildrenPropertiesMode, ExecutionPlan, ReplaceChildrenOptions};

use super::barrier::BarrierExec;
use crate::masking::TokenUdf;

/// The physical rule; registered after DataFusion's own.
#[derive(Debug, Default)]
pub struct RawJoinKeys;

impl PhysicalOptimizerRule for RawJoinKeys {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(join) = node.downcast_ref::<HashJoinExec>() else {
                return Ok(Transformed::no(node));
            };
            Ok(match rewrite(join)? {
                Some(new) => Transformed::yes(new),
                None => Transformed::no(node),
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "exchange_raw_join_keys"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// A join-key token computed by a projection: the UDF and its domain.
struct Token<'a> {
    udf: &'a TokenUdf,
    domain: String,
}

/// The token that column `index` of `plan` carries, looking through nodes that only move
/// batches; None if it is anything else.
fn token_at(plan: &Arc<dyn ExecutionPlan>, index: usize) -> Option<Token<'_>> {
    if plan.is::<CoalescePartitionsExec>() || is_round_robin(plan) {
        return token_at(plan.children().first()?, index);
    }
    let projection = plan.downcast_ref::<ProjectionExec>()?;
    if !stands_on_barrier(projection.input()) {
        return None;
    }
    let expr = &projection.expr().get(index)?.expr;
    let f = expr.downcast_ref::<ScalarFunctionExpr>()?;
    let udf = f.fun().inner().downcast_ref::<TokenUdf>()?;
    if !udf.is_join_key() {
        return None;
    }
    let [_, domain] = f.args() else {
        return None;
    };
    let domain = match domain.downcast_ref::<Literal>()?.value() {
        ScalarValue::Utf8(Some(d)) => d.clone(),
        _ => return None,
    };
    // Where the token would fail (no key for the domain), keep it and its error.
    if !udf.has_domain(&domain) {
        return None;
    }
    Some(Token { udf, domain })
}

/// Whether `plan` is a governed scan's `BarrierExec`, under nodes that only move, filter
/// or compute from batches.
fn stands_on_barrier(plan: &Arc<dyn ExecutionPlan>) -> bool {
    if plan.is::<BarrierExec>() {
        return true;
    }
    // Projections below the tokens (DataFusion puts a shared CAST in its own) compute values
    // the token projection reads; none of them sees a token.
    if plan.is::<CoalescePartitionsExec>()
        || plan.is::<FilterExec>()
        || plan.is::<ProjectionExec>()
        || is_round_robin(plan)
    {
        return plan
            .children()
            .first()
            .is_some_and(|c| stands_on_barrier(c));
    }
    false
}

fn is_round_robin(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.downcast_ref::<RepartitionExec>()
        .is_some_and(|r| matches!(r.partitioning(), Partitioning::RoundRobinBatch(_)))
}

/// `plan` with column `index` of the projection found by [`token_at`] replaced by the
/// token's raw argument.
fn untokenise(plan: &Arc<dyn ExecutionPlan>, indices: &[usize]) -> Result<Arc<dyn ExecutionPlan>> {
    if let Some(projection) = plan.downcast_ref::<ProjectionExec>() {
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
        let new = ProjectionExec::try_new(exprs, projection.input().clone())?;
        return Ok(Arc::new(new));
    }
    let Some(child) = plan.children().first().map(|c| (*c).clone()) else {
        return Ok(plan.clone());
    };
    plan.clone()
        .replace_children(vec![untokenise(&child, indices)?], recompute())
}

fn recompute() -> ReplaceChildrenOptions {
    ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute)
}

fn rewrite(join: &HashJoinExec) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    if join.mode != PartitionMode::CollectLeft
        || !matches!(
            join.join_type(),
            JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full
        )
    {
        return Ok(None);
    }
    let Some(projection) = &join.projection else {
        return Ok(None);
    };
    let left_len = join.left().schema().fields().len();
    let mut left_cols = Vec::new();
    let mut right_cols = Vec::new();
    for (l, r) in join.on() {
        // Join keys reach a hash join as columns; anything else leaves the join as it is.
        let (Some(l), Some(r)) = (l.downcast_ref::<Column>(), r.downcast_ref::<Column>()) else {
            return Ok(None);
        };
        let (Some(lt), Some(rt)) = (
            token_at(join.left(), l.index()),
            token_at(join.right(), r.index()),
        ) else {
            continue;
        };
        if !lt.udf.same_keys(rt.udf) || lt.domain != rt.domain {
            continue;
        }
        let in_output =
            projection.contains(&l.index()) || projection.contains(&(left_len + r.index()));
        let in_filter = join.filter().is_some_and(|f| {
            f.column_indices().iter().any(|c| {
                (c.side == JoinSide::Left && c.index == l.index())
                    || (c.side == JoinSide::Right && c.index == r.index())
            })
        });
        if in_output || in_filter {
            continue;
        }
        left_cols.push(l.index());
        right_cols.push(r.index());
    }
    if left_cols.is_empty() {
        return Ok(None);
    }
    // A token column used by another key pair that is not rewritten keeps its tokens.
    for (l, r) in join.on() {
        let li = l.downcast_ref::<Column>().map(Column::index);
        let ri = r.downcast_ref::<Column>().map(Column::index);
        let pair = li.zip(ri);
        let rewritten = pair.is_some_and(|(a, b)| {
            left_cols
                .iter()
                .zip(&right_cols)
                .any(|(x, y)| *x == a && *y == b)
        });
        if !rewritten
            && (li.is_some_and(|a| left_cols.contains(&a))
                || ri.is_some_and(|b| right_cols.contains(&b)))
        {
            return Ok(None);
        }
    }
    let left = untokenise(join.left(), &left_cols)?;
    let right = untokenise(join.right(), &right_cols)?;
    // A fresh join: no dynamic filter or hash table shared with the token-comparing one.
    join.builder()
        .reset_state()
        .recompute_properties()
        .with_new_children(vec![left, right])?
        .build_exec()
        .map(Some)
}
