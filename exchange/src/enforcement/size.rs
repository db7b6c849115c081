//! How large and how deep a plan's values and expressions can get.
//!
//! Two things the text of a statement hides grow through a chain of projections (CTEs,
//! subqueries):
//! - value size: `s || s` doubles a string, and 27 levels of it reach arrow's 2 GiB limit, so
//!   whether a query fails (or how much memory it takes) tells whether a row reached the
//!   chain;
//! - expression depth: DataFusion's optimizer merges projections, inlining each level's
//!   expression into the next, and then recurses over the merged expression: a chain of
//!   shallow levels becomes one expression deep enough to overflow the stack and abort.
//!
//! So every column carries a bound on both, and an expression's bound follows from its
//! inputs'. Statements over the limits are refused before the optimizer runs.

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::{BinaryExpr, Expr, LogicalPlan, Operator};

/// At most this many times the largest input value (string bytes, list elements).
pub(super) const MAX_GROWTH: u64 = 16;
/// At most this deep once the optimizer inlines projections into each other.
pub(super) const MAX_INLINED_DEPTH: u64 = 400;
/// At most this many expression nodes once inlined: `x.a + x.a` over 22 CTEs is 4 million
/// nodes, which the optimizer took 100 s to plan (review 8).
pub(super) const MAX_INLINED_NODES: u64 = 10_000;

/// Per column: how many times an input value it can be, and how deep its expression is with
/// every projection below inlined.
#[derive(Debug, Clone, Copy)]
struct Bound {
    growth: u64,
    depth: u64,
    nodes: u64,
}

const UNIT: Bound = Bound {
    growth: 1,
    depth: 1,
    nodes: 1,
};

/// Why the plan's values or expressions could grow past the limits, if they could.
pub(super) fn oversized(plan: &LogicalPlan) -> Option<String> {
    bounds(plan).err()
}

fn bounds(plan: &LogicalPlan) -> Result<Vec<Bound>, String> {
    let inputs: Vec<Vec<Bound>> = plan
        .inputs()
        .iter()
        .map(|p| bounds(p))
        .collect::<Result<_, _>>()?;
    let width = plan.schema().fields().len();
    let mut schema = DFSchema::empty();
    for input in plan.inputs() {
        schema.merge(input.schema());
    }
    let of: Vec<Bound> = inputs.iter().flatten().copied().collect();
    // Every expression the node evaluates is checked, outputs or not (a filter's too).
    let mut evaluated = Vec::new();
    for e in plan.expressions() {
        evaluated.push(expr_bound(&e, &schema, &of)?);
    }
    Ok(match plan {
        LogicalPlan::Projection(_) | LogicalPlan::Aggregate(_) => {
            let mut out = evaluated;
            out.resize(width, UNIT);
            out
        }
        LogicalPlan::Window(_) => of.into_iter().chain(evaluated).take(width).collect(),
        LogicalPlan::Union(_) => (0..width)
            .map(|i| {
                inputs
                    .iter()
                    .filter_map(|b| b.get(i))
                    .copied()
                    .fold(UNIT, larger)
            })
            .collect(),
        // A VALUES column is as large as its largest row's expression.
        LogicalPlan::Values(v) => {
            let mut out = vec![UNIT; width];
            for row in &v.values {
                for (slot, e) in out.iter_mut().zip(row) {
                    *slot = larger(*slot, expr_bound(e, &schema, &of)?);
                }
            }
            out
        }
        _ if of.len() == width => of,
        _ => match inputs.first().filter(|f| f.len() == width) {
            Some(first) => first.clone(),
            // A node whose columns are not its input's (UNNEST of a struct or a list, ...):
            // each may be as large as the largest value below it, never smaller (review 6:
            // a reset to one input value let a list grow 16x per UNNEST).
            None => vec![of.iter().copied().fold(UNIT, larger); width],
        },
    })
}

fn larger(a: Bound, b: Bound) -> Bound {
    Bound {
        growth: a.growth.max(b.growth),
        depth: a.depth.max(b.depth),
        nodes: a.nodes.max(b.nodes),
    }
}

fn literal_len(e: &Expr) -> Option<u64> {
    match e {
        Expr::Literal(ScalarValue::Utf8(Some(s)), _)
        | Expr::Literal(ScalarValue::LargeUtf8(Some(s)), _)
        | Expr::Literal(ScalarValue::Utf8View(Some(s)), _) => u64::try_from(s.len()).ok(),
        _ => None,
    }
}

fn expr_bound(e: &Expr, schema: &DFSchema, of: &[Bound]) -> Result<Bound, String> {
    let child = |x: &Expr| expr_bound(x, schema, of);
    let children = || -> Result<Vec<Bound>, String> {
        let mut out = Vec::new();
        let mut failed = None;
        let _ = e.apply_children(|c| {
            match child(c) {
                Ok(b) => out.push(b),
                Err(why) => {
                    failed = Some(why);
                    return Ok(TreeNodeRecursion::Stop);
                }
            }
            Ok(TreeNodeRecursion::Continue)
        });
        match failed {
            Some(why) => Err(why),
            None => Ok(out),
        }
    };
    let b = match e {
        Expr::Column(c) => schema
            .maybe_index_of_column(c)
            .and_then(|i| of.get(i).copied())
            .unwrap_or(UNIT),
        Expr::Literal(..) | Expr::OuterReferenceColumn(..) | Expr::Placeholder(_) => UNIT,
        Expr::ScalarSubquery(sq) => {
            let inner = bounds(&sq.subquery)?;
            inner.first().copied().unwrap_or(UNIT)
        }
        Expr::Exists(x) => {
            bounds(&x.subquery.subquery)?;
            UNIT
        }
        Expr::InSubquery(x) => {
            bounds(&x.subquery.subquery)?;
            child(&x.expr)?
        }
        _ => {
            let kids = children()?;
            let depth = 1 + kids.iter().map(|k| k.depth).max().unwrap_or(0);
            let nodes = kids.iter().fold(1u64, |n, k| n.saturating_add(k.nodes));
            let sum: u64 = kids.iter().map(|k| k.growth).sum();
            let max = kids.iter().map(|k| k.growth).max().unwrap_or(1);
            let growth = match e {
                Expr::BinaryExpr(BinaryExpr {
                    op: Operator::StringConcat,
                    ..
                }) => sum,
                Expr::ScalarFunction(f) => match f.func.name() {
                    "concat" | "string_concat" | "concat_ws" | "make_array" | "array_append"
                    | "array_prepend" | "array_concat" | "named_struct" | "struct" => sum,
                    // Each match of `from` becomes `to`: at most |to| + 1 times the input,
                    // for a constant `to`. A `to` from a column is as long as a value, which
                    // is no multiple of one (review 7: 1 KiB became 1 MiB).
                    "replace" => {
                        let factor = f
                            .args
                            .get(2)
                            .and_then(literal_len)
                            .map_or(MAX_GROWTH + 1, |n| n + 1);
                        kids.first().map_or(1, |k| k.growth).saturating_mul(factor)
                    }
                    // Case mapping can turn one character into three; `translate` one byte
                    // into a 4-byte character.
                    "upper" | "lower" | "initcap" => max.saturating_mul(3),
                    "translate" => max.saturating_mul(4),
                    "to_hex" | "encode" => max.saturating_mul(2),
                    // One element per character, each with its own offset.
                    "string_to_array" => max.saturating_mul(5),
                    _ => max,
                },
                _ => max,
            };
            Bound {
                growth,
                depth,
                nodes,
            }
        }
    };
    if b.growth > MAX_GROWTH {
        let mut shown = e.to_string();
        crate::text::cut(&mut shown, 200, |_| "…".into());
        return Err(format!(
            "values of {shown} could grow to more than {MAX_GROWTH} times an input value (concatenations of concatenations); such a statement could fail on, or reveal by its memory use, rows it should not tell about"
        ));
    }
    if b.nodes > MAX_INLINED_NODES {
        return Err(format!(
            "expressions hold more than {MAX_INLINED_NODES} terms once subqueries and CTEs are combined (each level repeating the one before); split the computation into several statements"
        ));
    }
    if b.depth > MAX_INLINED_DEPTH {
        return Err(format!(
            "expressions nest more than {MAX_INLINED_DEPTH} levels deep once subqueries and CTEs are combined; split the computation into several statements"
        ));
    }
    Ok(b)
}
