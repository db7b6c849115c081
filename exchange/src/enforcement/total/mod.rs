//! Which expressions can fail on a value.
//!
//! On the way to an aggregate over a `min_group` table, an error is an oracle: whether the
//! query fails tells whether some row reached the failing expression, and which rows are
//! evaluated depends on hidden data in ways no analyst can see (a hash join does not read its
//! probe side when the build side is empty, AND evaluates its right side on some batches
//! only, CASE evaluates a branch on the rows that select it, the optimizer copies filters
//! across join keys). So every expression anywhere in such a plan (both sides of every join,
//! subqueries included) must be total: a value, never an error, for every input.
//!
//! What is total was read off the DataFusion 55.2 and arrow 59.3 sources: integer `+ - *`
//! wrap, `/` fails on zero; CAST fails on unparsable text and on narrowing; dates before
//! 1677 fail to become nanosecond timestamps; `substr` fails on a negative length; and so
//! on. Anything not known to be total is refused. Constant subexpressions are folded here,
//! as the optimizer will fold them: either they fold, or the query is refused.

use arrow::datatypes::DataType;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::expr::{AggregateFunction, ScalarFunction, WindowFunction};
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::{
    BinaryExpr, Cast, Expr, ExprSchemable, Like, LogicalPlan, Operator, TryCast, Volatility,
    WindowFunctionDefinition,
};
use datafusion::optimizer::simplify_expressions::ExprSimplifier;

use super::tables::RawTable;
use crate::masking::{MaskArg, MaskUdf, TokenUdf, ValidatorUdf};

mod allowlist;
mod casts;

use allowlist::{DATE_PARTS, TOTAL_FUNCTIONS, TOTAL_WINDOW_FUNCTIONS, UNBOUNDED, total_aggregate};
pub(crate) use casts::cast_total;
use casts::try_cast_total;

/// The optimizer rewrites expressions after the policy rule checked them (it merges
/// projections, inlining a subquery's constant into an expression over it, and copies
/// filters across join keys), so the optimized plan is checked again: below every threshold
/// over `min_group` rows, everything must still be total. Returns why not, if not.
pub fn recheck_optimized(plan: &LogicalPlan) -> Option<String> {
    let mut found = None;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::Extension(e) = node
            && let Some(b) = e.node.as_any().downcast_ref::<super::barrier::PolicyBarrier>()
            && b.total
            && fallible_plan(&b.input).is_some()
        {
            // Not which expression: after optimization it may be one the optimizer merged
            // with a grant's fragment, printing treatments over stored columns (review 58 F3).
            found = Some(format!(
                "rows of {} may only be used aggregated, and nothing evaluated on the way to their aggregate may fail on a value, since a failure would tell whether a row exists; after optimization an expression that can fail (a cast, a division, a function that rejects some values) runs on the way to the aggregate: compute it after the aggregate instead",
                b.thresholded.join(", ")
            ));
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// Why evaluating `plan` could fail on some value, if it could.
pub(super) fn fallible_plan(plan: &LogicalPlan) -> Option<String> {
    let mut found = None;
    let _ = plan.apply_with_subqueries(|node| {
        // A grant's own fragment (treatments over the raw scan) was checked at policy load.
        if let LogicalPlan::Projection(p) = node
            && let LogicalPlan::TableScan(scan) = p.input.as_ref()
            && source_as_provider(&scan.source).is_ok_and(|s| s.is::<RawTable>())
        {
            return Ok(TreeNodeRecursion::Jump);
        }
        let mut schema = DFSchema::empty();
        for input in node.inputs() {
            schema.merge(input.schema());
        }
        // Filters the optimizer pushed into a scan are over the table's columns.
        if let LogicalPlan::TableScan(scan) = node
            && let Ok(table) =
                DFSchema::try_from_qualified_schema(scan.table_name.clone(), &scan.source.schema())
        {
            schema.merge(&table);
        }
        for e in node.expressions() {
            if let Some(why) = fallible(&e, &schema) {
                found = Some(why);
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// Why `e` could fail on some value, if it could.
fn fallible(e: &Expr, schema: &DFSchema) -> Option<String> {
    if let Some(outcome) = constant(e) {
        return outcome;
    }
    if let Some(why) = node_fallible(e, schema) {
        return Some(why);
    }
    let mut found = None;
    let _ = e.apply_children(|child| {
        found = fallible(child, schema);
        Ok(if found.is_some() {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    found
}

/// For a constant expression (no columns, no subquery, nothing volatile or unbounded):
/// `Some(None)` if it folds to a value, `Some(Some(why))` if folding fails. `None` if the
/// expression is not constant.
fn constant(e: &Expr) -> Option<Option<String>> {
    if let Expr::Literal(v, _) = e {
        return Some(oversized_literal(v));
    }
    let mut constant = true;
    let _ = e.apply(|x| {
        let stop = match x {
            Expr::Column(_)
            | Expr::OuterReferenceColumn(..)
            | Expr::ScalarSubquery(_)
            | Expr::Exists(_)
            | Expr::InSubquery(_)
            | Expr::SetComparison(_)
            | Expr::AggregateFunction(_)
            | Expr::WindowFunction(_)
            | Expr::Placeholder(_)
            | Expr::Unnest(_)
            | Expr::GroupingSet(_) => true,
            Expr::ScalarFunction(f) => {
                UNBOUNDED.contains(&f.func.name())
                    || f.func.signature().volatility == Volatility::Volatile
            }
            _ => false,
        };
        if stop {
            constant = false;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    if !constant {
        return None;
    }
    let simplifier = ExprSimplifier::new(SimplifyContext::builder().with_current_time().build());
    Some(match simplifier.simplify(e.clone()) {
        Ok(Expr::Literal(v, _)) => oversized_literal(&v),
        _ => Some(format!("the constant expression {e} fails")),
    })
}

/// Why this node of an expression (not its children) could fail, if it could.
fn node_fallible(e: &Expr, schema: &DFSchema) -> Option<String> {
    let type_of = |x: &Expr| x.get_type(schema).ok();
    match e {
        Expr::Literal(v, _) => oversized_literal(v),
        Expr::Column(_)
        | Expr::OuterReferenceColumn(..)
        | Expr::Alias(_)
        | Expr::Not(_)
        | Expr::IsNull(_)
        | Expr::IsNotNull(_)
        | Expr::IsTrue(_)
        | Expr::IsFalse(_)
        | Expr::IsUnknown(_)
        | Expr::IsNotTrue(_)
        | Expr::IsNotFalse(_)
        | Expr::IsNotUnknown(_)
        | Expr::Between(_)
        | Expr::InList(_)
        | Expr::Case(_)
        | Expr::ScalarSubquery(_)
        | Expr::Exists(_)
        | Expr::InSubquery(_)
        | Expr::SetComparison(_)
        | Expr::GroupingSet(_)
        | Expr::Unnest(_) => None,
        Expr::BinaryExpr(b) => binary(b, type_of(&b.left), type_of(&b.right)),
        Expr::Negative(inner) => match type_of(inner) {
            Some(t) if t.is_floating() || matches!(t, DataType::Decimal128(..)) => None,
            // Arrays of integers negate wrapping, but a scalar is checked, and the physical
            // optimizer turns a column into a scalar by inlining a constant it came from.
            _ => Some(format!(
                "the negation {e} can overflow; write 0 - x, which wraps"
            )),
        },
        Expr::Like(Like { pattern, .. }) => match pattern.as_ref() {
            Expr::Literal(ScalarValue::Utf8(Some(p)), _) if p.chars().count() <= 1000 => None,
            _ => Some(format!(
                "{e} needs a constant LIKE pattern (of at most 1000 characters)"
            )),
        },
        Expr::SimilarTo(_) => Some(format!(
            "{e} compiles its pattern as a regular expression, which can fail; use LIKE"
        )),
        Expr::Cast(Cast { expr, field }) => {
            let to = field.data_type();
            match type_of(expr) {
                Some(from) if cast_total(&from, to) => None,
                Some(from) => Some(format!(
                    "CAST from {from} to {to} fails on some values (in {e}); use TRY_CAST or compare values of the same type"
                )),
                None => Some(format!("the type of {expr} is unknown")),
            }
        }
        Expr::TryCast(TryCast { expr, field }) => {
            let to = field.data_type();
            match type_of(expr) {
                Some(from) if try_cast_total(&from, to) => None,
                _ => Some(format!(
                    "TRY_CAST to {to} still fails on some values (in {e})"
                )),
            }
        }
        Expr::ScalarFunction(f) => function(f, e, schema),
        Expr::AggregateFunction(f) => aggregate(f, schema),
        Expr::WindowFunction(w) => window(w, schema),
        _ => Some(format!("{e} is not known to be safe on every value")),
    }
}

/// Bytes a text or binary constant may hold below a `min_group` aggregate. Arrow holds a
/// column's text in one buffer with 32-bit offsets: a join repeats a constant once per row of
/// a batch (8,192), and values may grow 16 times (`size.rs`), so larger constants could
/// overflow that buffer exactly when a protected row reaches them.
const MAX_CONSTANT_BYTES: usize = 1024;

fn oversized_literal(v: &ScalarValue) -> Option<String> {
    let len = match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => s.len(),
        ScalarValue::Binary(Some(b))
        | ScalarValue::LargeBinary(Some(b))
        | ScalarValue::BinaryView(Some(b))
        | ScalarValue::FixedSizeBinary(_, Some(b)) => b.len(),
        // Lists, structs and maps (a folded `make_array` of text constants): their memory,
        // which bounds what they hold (review 6).
        ScalarValue::List(_)
        | ScalarValue::LargeList(_)
        | ScalarValue::FixedSizeList(_)
        | ScalarValue::ListView(_)
        | ScalarValue::LargeListView(_)
        | ScalarValue::Struct(_)
        | ScalarValue::Map(_)
        | ScalarValue::Union(..)
        | ScalarValue::Dictionary(..) => v.size().saturating_sub(std::mem::size_of_val(v)),
        _ => return None,
    };
    (len > MAX_CONSTANT_BYTES).then(|| {
        format!(
            "a constant of {len} bytes is larger than {MAX_CONSTANT_BYTES} (repeated over a batch of rows it could overflow arrow's buffers)"
        )
    })
}

/// The value of a literal, seen through the casts type coercion puts around it.
fn literal(e: &Expr) -> Option<ScalarValue> {
    match e {
        Expr::Literal(v, _) => Some(v.clone()),
        Expr::Cast(Cast { expr, field }) => literal(expr)?.cast_to(field.data_type()).ok(),
        Expr::Alias(a) => literal(&a.expr),
        _ => None,
    }
}

fn literal_i64(e: &Expr) -> Option<i64> {
    literal(e)?
        .cast_to(&DataType::Int64)
        .ok()
        .and_then(|v| match v {
            ScalarValue::Int64(Some(i)) => Some(i),
            _ => None,
        })
}

fn literal_str(e: &Expr) -> Option<String> {
    match literal(e)? {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Some(s),
        _ => None,
    }
}

/// A literal that is neither NULL nor zero (nor -1 when `minus_one` is excluded too).
fn safe_divisor(e: &Expr, exclude_minus_one: bool) -> bool {
    let Some(v) = literal(e) else { return false };
    let t = v.data_type();
    if v.is_null() {
        return false;
    }
    let zero = ScalarValue::new_zero(&t).ok();
    let minus_one = ScalarValue::new_negative_one(&t).ok();
    Some(&v) != zero.as_ref() && !(exclude_minus_one && Some(&v) == minus_one.as_ref())
}

fn binary(b: &BinaryExpr, left: Option<DataType>, right: Option<DataType>) -> Option<String> {
    use Operator as O;
    let (Some(l), Some(r)) = (left, right) else {
        return Some(format!("the types of {b} are unknown"));
    };
    let ints = l.is_integer() && r.is_integer();
    let floats = l.is_floating() && r.is_floating();
    let ok = match b.op {
        O::Eq
        | O::NotEq
        | O::Lt
        | O::LtEq
        | O::Gt
        | O::GtEq
        | O::IsDistinctFrom
        | O::IsNotDistinctFrom
        | O::And
        | O::Or
        | O::BitwiseAnd
        | O::BitwiseOr
        | O::BitwiseXor
        | O::BitwiseShiftLeft
        | O::BitwiseShiftRight
        | O::StringConcat => true,
        O::LikeMatch | O::ILikeMatch | O::NotLikeMatch | O::NotILikeMatch => {
            literal_str(&b.right).is_some_and(|p| p.chars().count() <= 1000)
        }
        // Integers wrap, floats give infinities; decimals are checked against i128.
        O::Plus | O::Minus | O::Multiply => {
            ints || floats
                || (b.op == O::Minus && l == DataType::Date32 && r == DataType::Date32)
                || match (&l, &r) {
                    (DataType::Decimal128(p1, s1), DataType::Decimal128(p2, s2)) => {
                        let (p1, s1, p2, s2) = (
                            i32::from(*p1),
                            i32::from(*s1),
                            i32::from(*p2),
                            i32::from(*s2),
                        );
                        if b.op == O::Multiply {
                            p1 + p2 <= 38 && s1 + s2 <= 38
                        } else {
                            s1.max(s2) + (p1 - s1).max(p2 - s2) < 38
                        }
                    }
                    _ => false,
                }
        }
        O::Divide | O::IntegerDivide => floats || (ints && safe_divisor(&b.right, true)),
        O::Modulo => floats || (ints && safe_divisor(&b.right, false)),
        _ => false,
    };
    if ok {
        None
    } else {
        Some(match b.op {
            O::Divide | O::IntegerDivide | O::Modulo => format!(
                "{b} fails when the divisor is zero; divide by a non-zero constant, or by NULLIF(x, 0) as a DOUBLE"
            ),
            O::RegexMatch | O::RegexIMatch | O::RegexNotMatch | O::RegexNotIMatch => {
                format!("{b} compiles a regular expression, which can fail; use LIKE")
            }
            _ => format!("{b} ({l} {} {r}) fails on some values", b.op),
        })
    }
}

fn function(f: &ScalarFunction, e: &Expr, schema: &DFSchema) -> Option<String> {
    let inner = f.func.inner().as_ref();
    if inner.is::<ValidatorUdf>() || inner.is::<TokenUdf>() {
        return None;
    }
    if let Some(mask) = inner.downcast_ref::<MaskUdf>() {
        // Masks never fail on a value; their parameters must be valid constants.
        let params: Option<Vec<MaskArg>> = f
            .args
            .iter()
            .skip(1)
            .map(|a| match literal(a)? {
                ScalarValue::Int64(Some(i)) => Some(MaskArg::Int(i)),
                v => literal_str(&Expr::Literal(v, None)).map(MaskArg::Str),
            })
            .collect();
        return match params {
            Some(p) if mask.mask_fn().check_args(&p).is_ok() => None,
            _ => Some(format!("{e} needs valid constant parameters")),
        };
    }
    let name = f.func.name();
    if TOTAL_FUNCTIONS.contains(&name) {
        return None;
    }
    let arg = |i: usize| f.args.get(i);
    let first_type = arg(0).and_then(|a| a.get_type(schema).ok());
    let ok = match name {
        "power" => arg(1)
            .and_then(literal)
            .and_then(|v| v.cast_to(&DataType::Float64).ok())
            .is_some_and(|v| matches!(v, ScalarValue::Float64(Some(x)) if x >= 0.0 || x.is_nan())),
        "round" => arg(1).is_none_or(|a| literal_i64(a).is_some_and(|d| d >= 0)),
        "abs" => first_type.is_some_and(|t| !t.is_signed_integer()),
        "ceil" | "floor" => {
            first_type.is_some_and(|t| !matches!(t, DataType::Decimal128(_, s) if s > 0))
        }
        "split_part" => arg(2).and_then(literal_i64).is_some_and(|n| n != 0),
        "substr" => {
            arg(1).and_then(literal_i64).is_some_and(|s| s > i64::MIN)
                && arg(2).is_none_or(|a| literal_i64(a).is_some_and(|n| n >= 0))
        }
        "date_part" => {
            arg(0)
                .and_then(literal_str)
                .is_some_and(|p| DATE_PARTS.contains(&p.to_lowercase().as_str()))
                && arg(1)
                    .and_then(|a| a.get_type(schema).ok())
                    .is_some_and(|t| {
                        matches!(
                            t,
                            DataType::Date32 | DataType::Date64 | DataType::Timestamp(..)
                        )
                    })
        }
        "encode" => arg(1)
            .and_then(literal_str)
            .is_some_and(|x| matches!(x.to_lowercase().as_str(), "base64" | "hex")),
        "array_element" => arg(1)
            .and_then(literal_i64)
            .is_some_and(|i| i32::try_from(i).is_ok()),
        "array_position" => f.args.len() == 2,
        _ => false,
    };
    if ok {
        None
    } else {
        Some(format!(
            "{e} can fail on some values ({name}() is not on the list of functions known to be safe on every value, or its constant arguments are out of range)"
        ))
    }
}

fn aggregate(f: &AggregateFunction, schema: &DFSchema) -> Option<String> {
    let name = f.func.name();
    if !total_aggregate(name) {
        return Some(format!("{name}() is not known to be safe on every value"));
    }
    if matches!(name, "avg" | "mean")
        && let Some(DataType::Decimal128(p, _)) =
            f.params.args.first().and_then(|a| a.get_type(schema).ok())
        && p > 34
    {
        return Some(format!(
            "avg() of a decimal with precision {p} can overflow"
        ));
    }
    None
}

fn window(w: &WindowFunction, schema: &DFSchema) -> Option<String> {
    match &w.fun {
        WindowFunctionDefinition::AggregateUDF(udaf) => {
            let name = udaf.name();
            if !total_aggregate(name) {
                return Some(format!("{name}() is not known to be safe on every value"));
            }
            let _ = schema;
            None
        }
        WindowFunctionDefinition::WindowUDF(udwf) => {
            let name = udwf.name();
            if TOTAL_WINDOW_FUNCTIONS.contains(&name) {
                None
            } else {
                Some(format!("{name}() is not known to be safe on every value"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn list_of(values: &[ScalarValue]) -> ScalarValue {
        ScalarValue::List(ScalarValue::new_list(values, &values[0].data_type(), true))
    }

    #[test]
    fn nested_constants_count_what_they_hold() {
        let small = list_of(&[
            ScalarValue::Int64(Some(1)),
            ScalarValue::Int64(Some(2)),
            ScalarValue::Int64(Some(3)),
        ]);
        assert_eq!(oversized_literal(&small), None);
        let kib = ScalarValue::Utf8(Some("x".repeat(1000)));
        assert_eq!(oversized_literal(&kib), None);
        let big = list_of(&vec![kib; 16]);
        let why = oversized_literal(&big).unwrap();
        assert!(why.contains("larger than 1024"), "{why}");
    }
}
