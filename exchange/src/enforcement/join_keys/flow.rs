//! Where each token of a physical plan goes, and whether it is ever anything but compared
//! in a hash join with another token of its domain.
//!
//! One walk, bottom-up: each node's output columns are mapped to the token source they
//! carry unchanged, if any. A source is a `join_key(x, domain)` or `pseudonym(x, domain)`
//! call in a projection that stands on a governed scan. Nodes that only move, slice, filter
//! or reorder batches carry their input's columns (in a distributed plan, the boundaries
//! between stages too); a projection carries a bare column; a hash join carries both
//! sides' columns into its output. Any other use taints the source: a reference in an
//! expression (filter predicate, computed column, hash partitioning, join filter, a join
//! key outside a collect-left hash join), any node the walk does not know, and the plan's
//! output itself. Sources compared in a collect-left hash join are joined into one class;
//! a class whose members are all untainted, of one domain and key set, and of one raw type
//! may compare raw values, since nothing else sees them.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{JoinSide, Result, ScalarValue};
use datafusion::logical_expr::ScalarUDF;
use datafusion::physical_expr::expressions::{Column, Literal};
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::utils::build_join_schema;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, Partitioning};
use datafusion_distributed::{
    BroadcastExec, DistributedExec, NetworkBroadcastExec, NetworkCoalesceExec, NetworkShuffleExec,
};

use super::super::barrier::BarrierExec;
use super::super::batches::BatchSplitExec;
use crate::masking::TokenUdf;

/// Identity of a plan node for the walk: its address (the plan is not changed meanwhile).
pub(super) type NodeId = usize;

pub(super) fn node_id(plan: &Arc<dyn ExecutionPlan>) -> NodeId {
    Arc::as_ptr(plan).cast::<()>() as usize
}

/// A `join_key` or `pseudonym` call in a projection over a governed scan.
struct Source {
    udf: ScalarUDF,
    domain: String,
    raw_type: DataType,
}

/// What the walk found: the tokens that may become raw values, and the joins that then
/// compare them.
#[derive(Debug, Default)]
pub(super) struct Untokenise {
    /// Per projection node, the indices of its expressions to replace by their raw argument.
    pub projections: HashMap<NodeId, Vec<usize>>,
    /// Hash joins whose keys change: rebuilt without runtime state (no dynamic filter).
    pub joins: Vec<NodeId>,
}

#[derive(Default)]
struct Walk {
    sources: Vec<Source>,
    /// (projection node, expression index) of each source, by source index.
    at: Vec<(NodeId, usize)>,
    by_site: HashMap<(NodeId, usize), usize>,
    tainted: Vec<bool>,
    /// Whether a hash join compares the source with another.
    compared: Vec<bool>,
    parent: Vec<usize>,
    /// Hash joins with the source pairs their keys compare.
    joins: Vec<(NodeId, Vec<(usize, usize)>)>,
}

/// Per output column, the source it carries.
type Flows = Vec<Option<usize>>;

/// The tokens of `plan` that may be compared raw.
pub(super) fn analyse(plan: &Arc<dyn ExecutionPlan>) -> Result<Untokenise> {
    let mut walk = Walk::default();
    let out = walk.visit(plan)?;
    walk.taint_all(&out);
    Ok(walk.finish())
}

impl Walk {
    fn visit(&mut self, plan: &Arc<dyn ExecutionPlan>) -> Result<Flows> {
        if let Some(p) = plan.downcast_ref::<ProjectionExec>() {
            return self.projection(plan, p);
        }
        if let Some(f) = plan.downcast_ref::<FilterExec>() {
            let input = self.visit(f.input())?;
            self.taint_expr(f.predicate(), &input);
            return Ok(match f.projection() {
                Some(p) => p.iter().map(|&i| input.get(i).copied().flatten()).collect(),
                None => input,
            });
        }
        if let Some(r) = plan.downcast_ref::<RepartitionExec>() {
            let input = self.visit(r.input())?;
            if let Partitioning::Hash(exprs, _) = r.partitioning() {
                for e in exprs {
                    self.taint_expr(e, &input);
                }
            }
            return Ok(input);
        }
        if carries_its_input(plan)
            && let [child] = plan.children().as_slice()
        {
            let input = self.visit(child)?;
            if input.len() != plan.schema().fields().len() {
                self.taint_all(&input);
                return Ok(vec![None; plan.schema().fields().len()]);
            }
            // A shuffle between stages partitions by its expressions, as a hash repartition.
            if let Partitioning::Hash(exprs, _) = plan.properties().output_partitioning() {
                for e in exprs {
                    self.taint_expr(e, &input);
                }
            }
            return Ok(input);
        }
        if let Some(j) = plan.downcast_ref::<HashJoinExec>() {
            return self.hash_join(plan, j);
        }
        // Anything else may use every column it is given.
        for child in plan.children() {
            let flows = self.visit(child)?;
            self.taint_all(&flows);
        }
        Ok(vec![None; plan.schema().fields().len()])
    }

    fn projection(&mut self, plan: &Arc<dyn ExecutionPlan>, p: &ProjectionExec) -> Result<Flows> {
        let input = self.visit(p.input())?;
        let mut out = Vec::with_capacity(p.expr().len());
        for (i, e) in p.expr().iter().enumerate() {
            if let Some(c) = e.expr.downcast_ref::<Column>() {
                out.push(input.get(c.index()).copied().flatten());
                continue;
            }
            self.taint_expr(&e.expr, &input);
            out.push(self.source(plan, p, i, &e.expr)?);
        }
        Ok(out)
    }

    /// The source `expr` (expression `index` of projection `p`) starts, if it is one.
    fn source(
        &mut self,
        plan: &Arc<dyn ExecutionPlan>,
        p: &ProjectionExec,
        index: usize,
        expr: &Arc<dyn PhysicalExpr>,
    ) -> Result<Option<usize>> {
        let Some(f) = expr.downcast_ref::<ScalarFunctionExpr>() else {
            return Ok(None);
        };
        let Some(udf) = f.fun().inner().downcast_ref::<TokenUdf>() else {
            return Ok(None);
        };
        let [arg, domain] = f.args() else {
            return Ok(None);
        };
        let Some(ScalarValue::Utf8(Some(domain))) =
            domain.downcast_ref::<Literal>().map(Literal::value)
        else {
            return Ok(None);
        };
        // Where the token would fail (no key for the domain), keep it and its error.
        if !udf.equal_exactly_when_values_are()
            || !udf.has_domain(domain)
            || !stands_on_barrier(p.input())
        {
            return Ok(None);
        }
        let site = (node_id(plan), index);
        if let Some(&s) = self.by_site.get(&site) {
            return Ok(Some(s));
        }
        let s = self.sources.len();
        self.sources.push(Source {
            udf: f.fun().clone(),
            domain: domain.clone(),
            raw_type: arg.data_type(&p.input().schema())?,
        });
        self.at.push(site);
        self.by_site.insert(site, s);
        self.tainted.push(false);
        self.compared.push(false);
        self.parent.push(s);
        Ok(Some(s))
    }

    fn hash_join(&mut self, plan: &Arc<dyn ExecutionPlan>, j: &HashJoinExec) -> Result<Flows> {
        let left = self.visit(j.left())?;
        let right = self.visit(j.right())?;
        // One shared build table: nothing is partitioned by the keys' values, and the output
        // follows the probe side and the build side's order, not the values.
        let collect_left = j.mode == PartitionMode::CollectLeft;
        let mut pairs = Vec::new();
        for (l, r) in j.on() {
            let carried = l
                .downcast_ref::<Column>()
                .zip(r.downcast_ref::<Column>())
                .and_then(|(l, r)| {
                    let a = left.get(l.index()).copied().flatten()?;
                    let b = right.get(r.index()).copied().flatten()?;
                    Some((a, b))
                });
            match carried {
                Some((a, b)) if collect_left && self.comparable(a, b) => {
                    self.union(a, b);
                    for s in [a, b] {
                        if let Some(c) = self.compared.get_mut(s) {
                            *c = true;
                        }
                    }
                    pairs.push((a, b));
                }
                _ => {
                    self.taint_expr(l, &left);
                    self.taint_expr(r, &right);
                }
            }
        }
        if !pairs.is_empty() {
            self.joins.push((node_id(plan), pairs));
        }
        if let Some(filter) = j.filter() {
            for c in filter.column_indices() {
                let side = match c.side {
                    JoinSide::Left => &left,
                    JoinSide::Right => &right,
                    JoinSide::None => continue,
                };
                if let Some(s) = side.get(c.index).copied().flatten() {
                    self.taint(s);
                }
            }
        }
        let (_, columns) =
            build_join_schema(&j.left().schema(), &j.right().schema(), j.join_type());
        let all: Flows = columns
            .iter()
            .map(|c| match c.side {
                JoinSide::Left => left.get(c.index).copied().flatten(),
                JoinSide::Right => right.get(c.index).copied().flatten(),
                JoinSide::None => None,
            })
            .collect();
        Ok(match &j.projection {
            Some(p) => p.iter().map(|&i| all.get(i).copied().flatten()).collect(),
            None => all,
        })
    }

    /// Whether tokens `a` and `b` are equal exactly when their raw values are.
    fn comparable(&self, a: usize, b: usize) -> bool {
        let (Some(x), Some(y)) = (self.sources.get(a), self.sources.get(b)) else {
            return false;
        };
        let (Some(ux), Some(uy)) = (
            x.udf.inner().downcast_ref::<TokenUdf>(),
            y.udf.inner().downcast_ref::<TokenUdf>(),
        ) else {
            return false;
        };
        ux.same_keys(uy) && x.domain == y.domain && x.raw_type == y.raw_type
    }

    fn taint_expr(&mut self, expr: &Arc<dyn PhysicalExpr>, input: &Flows) {
        for c in collect_columns(expr) {
            if let Some(s) = input.get(c.index()).copied().flatten() {
                self.taint(s);
            }
        }
    }

    fn taint_all(&mut self, flows: &Flows) {
        for s in flows.iter().flatten() {
            self.taint(*s);
        }
    }

    fn taint(&mut self, s: usize) {
        if let Some(t) = self.tainted.get_mut(s) {
            *t = true;
        }
    }

    fn find(&mut self, mut s: usize) -> usize {
        while let Some(&p) = self.parent.get(s) {
            if p == s {
                break;
            }
            let grand = self.parent.get(p).copied().unwrap_or(p);
            if let Some(slot) = self.parent.get_mut(s) {
                *slot = grand;
            }
            s = p;
        }
        s
    }

    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if let Some(slot) = self.parent.get_mut(ra) {
            *slot = rb;
        }
    }

    fn finish(mut self) -> Untokenise {
        // A class is as tainted as any of its members.
        let mut class_tainted = vec![false; self.sources.len()];
        for s in 0..self.sources.len() {
            let root = self.find(s);
            if self.tainted.get(s).copied().unwrap_or(true)
                && let Some(t) = class_tainted.get_mut(root)
            {
                *t = true;
            }
        }
        let mut raw = vec![false; self.sources.len()];
        for (s, r) in raw.iter_mut().enumerate() {
            let root = self.find(s);
            // A source no join compares stays a token: untokenising it gains nothing.
            *r = self.compared.get(s).copied().unwrap_or(false)
                && !class_tainted.get(root).copied().unwrap_or(true);
        }
        let mut out = Untokenise::default();
        for (s, &(node, index)) in self.at.iter().enumerate() {
            if raw.get(s).copied().unwrap_or(false) {
                out.projections.entry(node).or_default().push(index);
            }
        }
        for (node, pairs) in &self.joins {
            if pairs.iter().any(|&(a, b)| {
                raw.get(a).copied().unwrap_or(false) && raw.get(b).copied().unwrap_or(false)
            }) {
                out.joins.push(*node);
            }
        }
        out
    }
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
        || plan.is::<BatchSplitExec>()
        || is_round_robin(plan)
    {
        return plan
            .children()
            .first()
            .is_some_and(|c| stands_on_barrier(c));
    }
    false
}

/// Whether `plan` passes its one input's columns on unchanged, only moving, slicing or
/// copying batches: coalescing partitions, splitting batches, yielding to the scheduler
/// (DataFusion wraps the head of each distributed stage in one), and, in a distributed plan,
/// the network boundaries between stages, the broadcast of a join's build side to every task
/// of the probe side, and the plan's head. A boundary that shuffles by hash is among them:
/// the walk taints the expressions it partitions by.
fn carries_its_input(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.is::<CoalescePartitionsExec>()
        || plan.is::<BatchSplitExec>()
        || plan.is::<CooperativeExec>()
        || plan.is::<NetworkCoalesceExec>()
        || plan.is::<NetworkBroadcastExec>()
        || plan.is::<NetworkShuffleExec>()
        || plan.is::<BroadcastExec>()
        || plan.is::<DistributedExec>()
}

fn is_round_robin(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.downcast_ref::<RepartitionExec>()
        .is_some_and(|r| matches!(r.partitioning(), Partitioning::RoundRobinBatch(_)))
}
