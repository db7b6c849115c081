//! Built-in functions whose output can be far larger than their input (`repeat`, padding,
//! ranges, array repetition, replacements), each wrapped so that a call first bounds the
//! bytes it would make and fails when that passes [`MAX_OUTPUT_BYTES`].
//!
//! Their buffers are allocated outside any memory pool, in one piece, and a failed
//! allocation aborts the process: `repeat(x, 100000000000)` took the server down with its
//! audit log and no record of the statement, during constant folding (review 22). The bound
//! is computed from the arguments (string lengths and counts) before the inner function
//! runs; the refusal says which function and how much, never a value.

use arrow::array::{Array, ArrayRef, Int64Array};
use arrow::compute::kernels::length::length;
use arrow::datatypes::{DataType, FieldRef};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature,
};
use datafusion::prelude::SessionContext;

/// Largest output one call may make over one batch: 256 MiB.
pub const MAX_OUTPUT_BYTES: u128 = 256 << 20;

/// How a guarded function's output is bounded from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Bound {
    /// `repeat(s, n)`: len(s) * n.
    Repeat,
    /// `lpad(s, n[, fill])`: n characters, 4 bytes each at most.
    Pad,
    /// `array_repeat(v, n)`, `array_resize(a, n[, v])`: n elements (16 bytes each counted).
    Elements,
    /// `range`/`generate_series(stop)`, `(start, stop[, step])`, integers or times.
    Range,
    /// `replace(s, from, to)`, `regexp_replace(s, pattern, to[, flags])`: every position
    /// replaced at worst.
    Replace,
}

const GUARDED: &[(&str, Bound)] = &[
    ("repeat", Bound::Repeat),
    ("lpad", Bound::Pad),
    ("rpad", Bound::Pad),
    ("array_repeat", Bound::Elements),
    ("array_resize", Bound::Elements),
    ("range", Bound::Range),
    ("generate_series", Bound::Range),
    ("replace", Bound::Replace),
    ("regexp_replace", Bound::Replace),
];

/// Replace the session's amplifying built-ins by guarded ones (same names and aliases).
pub fn guard_amplifiers(ctx: &SessionContext) {
    for (name, bound) in GUARDED {
        if let Ok(inner) = ctx.udf(name) {
            let guarded = Guarded {
                inner: inner.as_ref().clone(),
                bound: *bound,
            };
            ctx.register_udf(ScalarUDF::new_from_impl(guarded));
        }
    }
}

/// A built-in that bounds its output before it runs.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Guarded {
    inner: ScalarUDF,
    bound: Bound,
}

/// Per-row values of an argument as i64 (None: null or not convertible).
fn ints(v: &ColumnarValue, rows: usize) -> Result<Vec<Option<i64>>> {
    let array = v.to_array(rows.max(1))?;
    let array = match array.data_type() {
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _) => arrow::compute::cast(
            &arrow::compute::cast(
                &array,
                &DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
            )?,
            &DataType::Int64,
        )?,
        _ => arrow::compute::cast(&array, &DataType::Int64)?,
    };
    let Some(a) = array.as_any().downcast_ref::<Int64Array>() else {
        return Ok(vec![None; rows.max(1)]);
    };
    Ok((0..a.len())
        .map(|i| (!a.is_null(i)).then(|| a.value(i)))
        .collect())
}

/// Per-row byte lengths of a string argument.
fn lengths(v: &ColumnarValue, rows: usize) -> Result<Vec<Option<i64>>> {
    let array: ArrayRef = v.to_array(rows.max(1))?;
    match array.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let bytes = length(&array)?;
            ints(&ColumnarValue::Array(bytes), rows)
        }
        // Not a string: the inner function refuses it.
        _ => Ok(vec![Some(0); rows.max(1)]),
    }
}

/// Microseconds of a step argument (times are compared in microseconds): an interval
/// scalar exactly, anything else as its integer value.
fn step_of(v: &ColumnarValue, rows: usize) -> Result<Vec<Option<i64>>> {
    const DAY: i128 = 86_400_000_000;
    let nanos = |n: i128| Some(i64::try_from(n.unsigned_abs().max(1)).unwrap_or(i64::MAX));
    match v {
        ColumnarValue::Scalar(ScalarValue::IntervalMonthDayNano(Some(i))) => Ok(vec![
            nanos(
                i128::from(i.months) * 30 * DAY
                    + i128::from(i.days) * DAY
                    + i128::from(i.nanoseconds) / 1000
            );
            rows.max(1)
        ]),
        ColumnarValue::Scalar(ScalarValue::IntervalDayTime(Some(i))) => Ok(vec![
            nanos(
                i128::from(i.days) * DAY + i128::from(i.milliseconds) * 1000
            );
            rows.max(1)
        ]),
        ColumnarValue::Scalar(ScalarValue::IntervalYearMonth(Some(m))) => {
            Ok(vec![nanos(i128::from(*m) * 30 * DAY); rows.max(1)])
        }
        _ => ints(v, rows),
    }
}

fn positive(x: Option<i64>) -> u128 {
    x.map_or(0, |v| u128::try_from(v.max(0)).unwrap_or(0))
}

impl Guarded {
    /// An upper bound of the bytes the call would make.
    fn output_bytes(&self, args: &[ColumnarValue], rows: usize) -> Result<u128> {
        let arg = |i: usize| args.get(i);
        let mut total: u128 = 0;
        match self.bound {
            Bound::Repeat => {
                if let (Some(s), Some(n)) = (arg(0), arg(1)) {
                    for (l, n) in lengths(s, rows)?.into_iter().zip(ints(n, rows)?) {
                        total = total.saturating_add(positive(l).saturating_mul(positive(n)));
                    }
                }
            }
            Bound::Pad => {
                if let Some(n) = arg(1) {
                    for n in ints(n, rows)? {
                        total = total.saturating_add(positive(n).saturating_mul(4));
                    }
                }
            }
            Bound::Elements => {
                if let Some(n) = arg(1) {
                    for n in ints(n, rows)? {
                        total = total.saturating_add(positive(n).saturating_mul(16));
                    }
                }
            }
            Bound::Range => {
                let (start, stop) = match args.len() {
                    1 => (None, ints(&args[0], rows)?),
                    _ => (Some(ints(&args[0], rows)?), ints(&args[1], rows)?),
                };
                let step = match arg(2) {
                    Some(s) => step_of(s, rows)?,
                    None => vec![Some(1); stop.len()],
                };
                for (i, stop) in stop.iter().enumerate() {
                    let from = start.as_ref().and_then(|s| s[i]).unwrap_or(0);
                    let span = i128::from(stop.unwrap_or(0)) - i128::from(from);
                    let step = i128::from(step.get(i).copied().flatten().unwrap_or(1))
                        .unsigned_abs()
                        .max(1);
                    let elements = span.unsigned_abs() / step + 1;
                    total = total.saturating_add(elements.saturating_mul(8));
                }
            }
            Bound::Replace => {
                if let (Some(s), Some(r)) = (arg(0), arg(2)) {
                    for (l, r) in lengths(s, rows)?.into_iter().zip(lengths(r, rows)?) {
                        let l = positive(l);
                        total = total
                            .saturating_add(l.saturating_add(1).saturating_mul(positive(r).max(1)))
                            .saturating_add(l);
                    }
                }
            }
        }
        Ok(total)
    }
}

impl ScalarUDFImpl for Guarded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn is_strict(&self) -> bool {
        self.inner.inner().is_strict()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let bytes = self.output_bytes(&args.args, args.number_rows)?;
        if bytes > MAX_OUTPUT_BYTES {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{}() would make up to {bytes} bytes in one batch, over the limit of {} MiB per call",
                self.name(),
                MAX_OUTPUT_BYTES >> 20
            )));
        }
        self.inner.invoke_with_args(args)
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.inner.simplify(args, info)
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.output_ordering(inputs)
    }

    fn preserves_lex_ordering(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.preserves_lex_ordering(inputs)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(ctx: &SessionContext, sql: &str) -> Result<usize> {
        let batches = ctx.sql(sql).await?.collect().await?;
        Ok(batches.iter().map(|b| b.num_rows()).sum())
    }

    #[tokio::test]
    async fn amplifiers_refuse_outputs_past_the_limit_and_run_below_it() {
        let ctx = SessionContext::new();
        guard_amplifiers(&ctx);
        for sql in [
            "SELECT length(repeat('x', 100000000000)) AS n",
            "SELECT length(repeat(arrow_cast('x', 'LargeUtf8'), 100000000000)) AS n",
            "SELECT length(lpad('x', 1000000000)) AS n",
            "SELECT length(rpad('x', 1000000000, 'yz')) AS n",
            "SELECT cardinality(array_repeat(1, 100000000000)) AS n",
            "SELECT cardinality(range(1, 100000000000)) AS n",
            "SELECT cardinality(generate_series(1, 100000000000, 2)) AS n",
            "SELECT cardinality(range(TIMESTAMP '1970-01-01 00:00:00', TIMESTAMP '2200-01-01 00:00:00', INTERVAL '1 second')) AS n",
            "SELECT length(replace(repeat('x', 100000), '', repeat('y', 100000))) AS n",
            "SELECT length(regexp_replace(repeat('x', 100000), '', repeat('y', 100000), 'g')) AS n",
            "SELECT length(repeat(x, 100000000)) FROM (VALUES ('abc'), ('de')) AS t(x)",
        ] {
            let e = run(&ctx, sql).await.expect_err(sql).to_string();
            assert!(
                e.contains("over the limit of 256 MiB per call"),
                "{sql}: {e}"
            );
        }
        for sql in [
            "SELECT length(repeat('x', 1000)) AS n",
            "SELECT cardinality(range(1, 1000)) AS n",
            "SELECT cardinality(range(DATE '2020-01-01', DATE '2030-01-01', INTERVAL '1 month')) AS n",
            "SELECT lpad('x', 10) AS n",
            "SELECT replace('abc', 'b', 'zz') AS n",
        ] {
            assert_eq!(run(&ctx, sql).await.unwrap(), 1, "{sql}");
        }
    }
}
