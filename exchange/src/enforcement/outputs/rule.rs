//! The analyzer rule that puts every value-making call of a plan under the guard.
//!
//! The session's registry holds guarded built-ins, but some calls never go through it:
//! DataFusion plans special syntax (`overlay(s placing t from n)`, `substring(s from n)`,
//! `trim(both …)`, `position`) with its own function instances, and `||` is an operator.
//! After type coercion and after the policy rule (which sees the statement as written), this
//! rule wraps each such built-in call as the registry's are, plans `||` of strings as
//! [`concat::StringConcat`](super::concat), and refuses casts to types whose every value is
//! allocated whole and too large. Column names stay as written.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, Result};

use crate::enforcement::Limit;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{BinaryExpr, Expr, ExprSchemable, LogicalPlan, Operator, ScalarUDF};
use datafusion::optimizer::AnalyzerRule;

use super::{Guarded, concat, estimate, fixed_too_long};
use crate::engine::Budget;

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct GuardOutputs {
    concat: Arc<ScalarUDF>,
    /// Names of the built-ins to wrap (the exchange's own functions are not among them).
    builtins: HashSet<String>,
    budget: Budget,
}

impl GuardOutputs {
    pub(super) fn new(builtins: HashSet<String>, budget: Budget) -> Self {
        Self {
            concat: concat::udf(budget),
            builtins,
            budget,
        }
    }

    fn rewrite(&self, e: Expr, schema: &DFSchema) -> Result<Transformed<Expr>> {
        match e {
            Expr::WindowFunction(ref w) if builds_over_window(&w.fun) => {
                Err(Limit::error(format!(
                    "{}() over a window copies a value built from the whole window onto each of its rows (review 25b: gigabytes from one statement); aggregate with GROUP BY and join the result instead",
                    w.fun.name()
                )))
            }
            Expr::Cast(ref c) if too_large(c.field.data_type()) => Err(fixed_too_long()),
            Expr::TryCast(ref c) if too_large(c.field.data_type()) => Err(fixed_too_long()),
            Expr::ScalarFunction(ref f)
                if self.builtins.contains(f.func.name()) && !f.func.inner().is::<Guarded>() =>
            {
                let Expr::ScalarFunction(f) = e else {
                    return Ok(Transformed::no(e));
                };
                let func = Arc::new(ScalarUDF::new_from_impl(Guarded {
                    inner: f.func.as_ref().clone(),
                    budget: self.budget,
                }));
                Ok(Transformed::yes(Expr::ScalarFunction(
                    ScalarFunction::new_udf(func, f.args),
                )))
            }
            Expr::BinaryExpr(BinaryExpr {
                ref left,
                op: Operator::StringConcat,
                ref right,
            }) => {
                let (Ok(l), Ok(r)) = (left.get_type(schema), right.get_type(schema)) else {
                    // Not typed here (then not planned either): left as written.
                    return Ok(Transformed::no(e));
                };
                if l != r || !concat::concatenable(&l) {
                    return Ok(Transformed::no(e));
                }
                let Expr::BinaryExpr(b) = e else {
                    return Ok(Transformed::no(e));
                };
                Ok(Transformed::yes(Expr::ScalarFunction(
                    ScalarFunction::new_udf(Arc::clone(&self.concat), vec![*b.left, *b.right]),
                )))
            }
            other => Ok(Transformed::no(other)),
        }
    }
}

/// Aggregates whose value grows with the rows they see: as window functions each row of the
/// window gets a copy of the whole window's value.
fn builds_over_window(fun: &datafusion::logical_expr::expr::WindowFunctionDefinition) -> bool {
    matches!(
        fun,
        datafusion::logical_expr::expr::WindowFunctionDefinition::AggregateUDF(f)
            if matches!(f.name(), "array_agg" | "string_agg" | "listagg" | "array_union_agg")
    )
}

fn too_large(t: &arrow::datatypes::DataType) -> bool {
    estimate::fixed_list_bytes(t) > estimate::MAX_FIXED_VALUE
}

impl AnalyzerRule for GuardOutputs {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        let out = plan.transform_up_with_subqueries(|plan| {
            let mut schema = match &plan {
                LogicalPlan::TableScan(scan) => DFSchema::try_from_qualified_schema(
                    scan.table_name.clone(),
                    &scan.source.schema(),
                )?,
                _ => DFSchema::empty(),
            };
            for input in plan.inputs() {
                schema.merge(input.schema());
            }
            let preserver = NamePreserver::new(&plan);
            let rewritten = plan.map_expressions(|e| {
                let name = preserver.save(&e);
                let t = e.transform_up(|e| self.rewrite(e, &schema))?;
                Ok(t.update_data(|e| name.restore(e)))
            })?;
            if rewritten.transformed {
                rewritten.map_data(|p| p.recompute_schema())
            } else {
                Ok(rewritten)
            }
        })?;
        Ok(out.data)
    }

    fn name(&self) -> &str {
        "exchange_guard_outputs"
    }
}
