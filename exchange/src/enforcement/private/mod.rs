//! Differentially private aggregates (grants with `[grant.privacy]`, issue 18).
//!
//! The policy rule rewrites an aggregate over such a table into two steps:
//! 1. a projection of the rows (the hidden entity column is the privacy unit): the person,
//!    the group keys, the values the statistics count or add (clamped row by row to the
//!    grant's bounds);
//! 2. [`DpAggregate`] over it: each person keeps at most `max_groups` of their groups (chosen
//!    by a keyed hash of their own rows, never by other persons' data) and at most
//!    `max_rows` rows' worth in each; the groups' totals get discrete Laplace noise scaled
//!    to those bounds, drawn from ring's `SystemRandom`; a group is released only when its
//!    noisy count of persons passes a threshold set by the grant's delta (a query without
//!    GROUP BY has one public group, always released); the query's epsilon is charged to
//!    the ledger, durably, before its one batch leaves.
//!
//! Noise is added once per released value inside the operator: nothing above it (the
//! analyst's projections, repeated references to a column) can draw the noise again.

mod bound;
mod budget_fn;
mod exec;
mod runtime;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchemaRef, Result, internal_err};
use datafusion::logical_expr::{Expr, LogicalPlan, UserDefinedLogicalNodeCore};

pub(crate) use budget_fn::budget_fn;
pub(crate) use exec::DpAggregateExec;
pub use runtime::PrivacyRuntime;

use crate::policy::{Privacy, show_epsilon};

/// What one noisy statistic measures, per group, over the rows of step 1.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Measure {
    /// Distinct persons.
    Units,
    /// Rows (COUNT(*)).
    Rows,
    /// Rows where a column of step 1 is not null (COUNT(column), the values behind an AVG).
    Count {
        /// Its column in step 1's output.
        column: usize,
    },
    /// A sum of clamped values: a Float64 column of step 1, already clamped row by row (a
    /// person's share beyond `max_rows` values is scaled down to `max_rows` values' worth).
    Sum {
        /// Its column in step 1's output.
        column: usize,
    },
}

/// One noisy statistic of every group.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Stat {
    /// What it measures.
    pub measure: Measure,
    /// As the query wrote it, for EXPLAIN.
    pub label: String,
    /// The discrete Laplace scale, `num / den`.
    pub scale: (u128, u128),
}

impl Stat {
    /// The noise scale as a decimal, for EXPLAIN and result metadata.
    pub fn scale_text(&self) -> String {
        let (n, d) = self.scale;
        let s = n as f64 / d.max(1) as f64;
        if s >= 100.0 {
            format!("{s:.0}")
        } else {
            format!("{s:.3}")
        }
    }
}

/// How an output column of the aggregate is made from the noisy statistics.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Release {
    /// A count (Int64).
    Count(usize),
    /// A sum, as the aggregate's type (Int64 or Float64).
    Sum(usize),
    /// A mean: noisy sum over noisy count (Float64; NULL when the noisy count is not positive).
    Avg {
        /// The sum statistic.
        sum: usize,
        /// The count statistic.
        count: usize,
    },
}

/// Everything the operator needs, fixed at planning.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mechanism {
    /// `agency.table`.
    pub dataset: String,
    /// The grant's privacy.
    pub privacy: Privacy,
    /// Group key columns (step 1's columns 1..=groups; column 0 is the person).
    pub groups: usize,
    /// The noisy statistics of each group.
    pub stats: Vec<Stat>,
    /// The aggregate's output columns after the group keys.
    pub releases: Vec<Release>,
    /// With GROUP BY: the statistic of persons, and the noisy count a group must reach.
    pub threshold: Option<(usize, i64)>,
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "differential privacy on {}: discrete Laplace noise, epsilon {} for the query split over {} statistic(s)",
            self.dataset,
            show_epsilon(self.privacy.epsilon),
            self.stats.len()
        )?;
        for s in &self.stats {
            write!(f, "; {} noise scale {}", s.label, s.scale_text())?;
        }
        match self.threshold {
            Some((_, t)) => write!(
                f,
                "; a group is released when its noisy count of persons is at least {t}"
            )?,
            None => write!(f, "; one group (no GROUP BY), always released")?,
        }
        write!(f, "; {}", self.privacy)
    }
}

/// The noisy aggregate node: its input is step 1, its schema the analyst's aggregate's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DpAggregate {
    /// The mechanism.
    pub mechanism: Arc<Mechanism>,
    /// Step 1.
    pub input: LogicalPlan,
    /// The aggregate's output schema.
    pub schema: DFSchemaRef,
}

impl PartialOrd for DpAggregate {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        match self.mechanism.partial_cmp(&other.mechanism) {
            Some(std::cmp::Ordering::Equal) => self.input.partial_cmp(&other.input),
            o => o,
        }
    }
}

impl UserDefinedLogicalNodeCore for DpAggregate {
    fn name(&self) -> &str {
        "DpAggregate"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "DpAggregate: {}", self.mechanism)
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        match inputs.pop() {
            Some(input) if inputs.is_empty() => Ok(Self {
                mechanism: Arc::clone(&self.mechanism),
                input,
                schema: Arc::clone(&self.schema),
            }),
            _ => internal_err!("DpAggregate takes one input"),
        }
    }
}

/// The differentially private aggregates of an enforced plan (subqueries included), as
/// EXPLAIN and the audit record describe them.
pub fn privacy_applied(plan: &LogicalPlan) -> Vec<Arc<Mechanism>> {
    let mut out: Vec<Arc<Mechanism>> = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::Extension(e) = node
            && let Some(d) = e.node.as_any().downcast_ref::<DpAggregate>()
        {
            out.push(Arc::clone(&d.mechanism));
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}
