//! Values a statement makes outside its memory pool, bounded before they are made.
//!
//! Built-in functions allocate their output in one piece, outside any memory pool, and a
//! failed allocation aborts the process with its audit log and no record of the statement:
//! `repeat(x, 100000000000)` during constant folding (review 22), then sums of calls each
//! under a per-call bound, `array_repeat` of a large value, casts to huge fixed-size lists
//! and wide batches (review 23). So every built-in scalar function of the session is wrapped:
//! before it runs, the bytes it could make are bounded from its arguments
//! ([`estimate::output_bytes`]) and checked against [`MAX_OUTPUT_BYTES`] per call and against
//! the process's [`Budget`]; after it ran, its actual output is checked again. String
//! concatenation (`||`), an operator rather than a function, is planned as a guarded function
//! too ([`concat`]). A refusal fails the statement as out of resources (audited) and names
//! the function and the sizes, never a value.

mod concat;
mod estimate;
mod rule;

use arrow::datatypes::{DataType, FieldRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ExpressionPlacement, ReturnFieldArgs, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature,
};
use datafusion::prelude::SessionContext;

pub(crate) use rule::GuardOutputs;

use crate::engine::Budget;

/// Largest output one call may make over one batch: 256 MiB.
pub const MAX_OUTPUT_BYTES: u128 = 256 << 20;

/// Largest value a call of constants may make: as large as the statement's text may be.
/// Constants folded while planning are copied into plans, printed into column names and
/// copied onto every row; a 200 MB one aborted the server through each (review 25 H1-H3).
pub const MAX_CONSTANT_BYTES: u128 = 1 << 20;

/// Functions left as they are: they make no values of their own (field access, struct
/// building over their arguments' arrays, file metadata) and DataFusion recognises them by
/// type when it plans.
const UNWRAPPED: &[&str] = &[
    "get_field",
    "named_struct",
    "struct",
    "input_file_name",
    "file_row_index",
    "log",
    "power",
];

/// Wrap every built-in scalar function of the session (call before the exchange registers
/// its own) so that its calls are bounded and budgeted; the returned analyzer rule does the
/// same for calls that do not come from the registry (add it after the policy rule).
pub(crate) fn guard_functions(ctx: &SessionContext, budget: Budget) -> GuardOutputs {
    let state = ctx.state();
    let builtins: Vec<_> = state.scalar_functions().values().cloned().collect();
    let mut names = std::collections::HashSet::new();
    for inner in builtins {
        if UNWRAPPED.contains(&inner.name()) {
            continue;
        }
        names.insert(inner.name().to_string());
        names.extend(inner.aliases().iter().cloned());
        ctx.register_udf(ScalarUDF::new_from_impl(Guarded {
            inner: inner.as_ref().clone(),
            budget,
        }));
    }
    GuardOutputs::new(names, budget)
}

/// `||` of strings as a guarded function (workers register it: fragments name it).
pub(crate) fn string_concat(budget: Budget) -> std::sync::Arc<ScalarUDF> {
    concat::udf(budget)
}

/// Refuse a call of constants (every argument a scalar) whose one value, `value_bytes`
/// (from [`estimate::output_bytes`] over one row), would be over [`MAX_CONSTANT_BYTES`].
fn admit_constant(
    what: &str,
    args: &[ColumnarValue],
    value_bytes: impl FnOnce() -> Result<u128>,
) -> Result<()> {
    let constant = args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
    if !constant {
        return Ok(());
    }
    let bytes = value_bytes()?;
    crate::engine::charge_constant(bytes)?;
    if bytes > MAX_CONSTANT_BYTES {
        return Err(DataFusionError::ResourcesExhausted(format!(
            "{what} of constants would make a value of up to {} MiB; a constant may be at most {} MiB, as large as a statement",
            bytes.div_ceil(1 << 20),
            MAX_CONSTANT_BYTES >> 20
        )));
    }
    Ok(())
}

/// Refuse a call that would make `bytes`, or the process past its budget.
fn admit(what: &str, bytes: u128, budget: Budget) -> Result<()> {
    if bytes > MAX_OUTPUT_BYTES {
        return Err(DataFusionError::ResourcesExhausted(format!(
            "{what} would make up to {} MiB in one batch, over the limit of {} MiB per call",
            bytes.div_ceil(1 << 20),
            MAX_OUTPUT_BYTES >> 20
        )));
    }
    budget.check(bytes, what)
}

/// The refusal of a type whose every value is allocated whole and is too large.
fn fixed_too_long() -> DataFusionError {
    crate::enforcement::Limit::error(format!(
        "types with fixed-size values over {} MiB (FixedSizeList, FixedSizeBinary) are not allowed: every value, NULL included, would be allocated whole",
        estimate::MAX_FIXED_VALUE >> 20
    ))
}

/// Bytes of a call's result.
fn made_bytes(v: &ColumnarValue) -> u128 {
    match v {
        ColumnarValue::Array(a) => estimate::array_bytes(a.as_ref()),
        ColumnarValue::Scalar(s) => estimate::scalar_bytes(s),
    }
}

/// A built-in whose calls are bounded before and checked after they run.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Guarded {
    inner: ScalarUDF,
    budget: Budget,
}

impl ScalarUDFImpl for Guarded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.inner().schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn with_updated_config(&self, config: &ConfigOptions) -> Option<ScalarUDF> {
        // A reconfigured function stays guarded.
        self.inner.inner().with_updated_config(config).map(|inner| {
            ScalarUDF::new_from_impl(Guarded {
                inner,
                budget: self.budget,
            })
        })
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn is_strict(&self) -> bool {
        self.inner.inner().is_strict()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = self.name();
        let bytes = estimate::output_bytes(
            name,
            &args.args,
            args.number_rows,
            args.return_field.data_type(),
        )?;
        let what = format!("{name}()");
        admit_constant(&what, &args.args, || {
            estimate::output_bytes(name, &args.args, 1, args.return_field.data_type())
        })?;
        admit(&what, bytes, self.budget)?;
        let out = self.inner.invoke_with_args(args)?;
        // The bound is an estimate; what was made is checked too (and dropped if over).
        admit(&what, made_bytes(&out), self.budget)?;
        Ok(out)
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        // Some simplifications compute (`concat` of literals joins them): only when what
        // the literals would make is admitted; else the call stays, and is refused when run.
        let literals: Vec<ColumnarValue> = args
            .iter()
            .filter_map(|a| match a {
                Expr::Literal(v, _) => Some(ColumnarValue::Scalar(v.clone())),
                _ => None,
            })
            .collect();
        // `arrow_cast(x, 'FixedSizeList(…)')` becomes a cast here, allocated whole.
        if matches!(self.name(), "arrow_cast" | "arrow_try_cast") {
            for v in &literals {
                if let ColumnarValue::Scalar(
                    ScalarValue::Utf8(Some(t))
                    | ScalarValue::LargeUtf8(Some(t))
                    | ScalarValue::Utf8View(Some(t)),
                ) = v
                    && let Ok(t) = t.parse::<DataType>()
                    && estimate::fixed_list_bytes(&t) > estimate::MAX_FIXED_VALUE
                {
                    return Err(fixed_too_long());
                }
            }
        }
        let bytes = estimate::output_bytes(self.name(), &literals, 1, &DataType::Utf8)?;
        if bytes > MAX_CONSTANT_BYTES || admit(self.name(), bytes, self.budget).is_err() {
            return Ok(ExprSimplifyResult::Original(args));
        }
        self.inner.simplify(args, info)
    }

    fn preimage(
        &self,
        args: &[Expr],
        lit_expr: &Expr,
        info: &SimplifyContext,
    ) -> Result<datafusion::logical_expr::preimage::PreimageResult> {
        self.inner.inner().preimage(args, lit_expr, info)
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn conditional_arguments<'a>(
        &self,
        args: &'a [Expr],
    ) -> Option<(Vec<&'a Expr>, Vec<&'a Expr>)> {
        self.inner.inner().conditional_arguments(args)
    }

    fn evaluate_bounds(&self, input: &[&Interval]) -> Result<Interval> {
        self.inner.evaluate_bounds(input)
    }

    fn propagate_constraints(
        &self,
        interval: &Interval,
        inputs: &[&Interval],
    ) -> Result<Option<Vec<Interval>>> {
        self.inner.propagate_constraints(interval, inputs)
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.output_ordering(inputs)
    }

    fn preserves_lex_ordering(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.preserves_lex_ordering(inputs)
    }

    fn strictly_order_preserving(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.inner().strictly_order_preserving(inputs)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn struct_field_mapping(
        &self,
        literal_args: &[Option<ScalarValue>],
    ) -> Option<datafusion::logical_expr::StructFieldMapping> {
        self.inner.inner().struct_field_mapping(literal_args)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn placement(&self, args: &[ExpressionPlacement]) -> ExpressionPlacement {
        self.inner.inner().placement(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(ctx: &SessionContext, sql: &str) -> Result<usize> {
        let batches = ctx.sql(sql).await?.collect().await?;
        Ok(batches.iter().map(|b| b.num_rows()).sum())
    }

    fn guarded() -> SessionContext {
        let ctx = SessionContext::new();
        let rule = guard_functions(&ctx, Budget::NONE);
        ctx.add_analyzer_rule(std::sync::Arc::new(rule));
        ctx
    }

    #[tokio::test]
    async fn calls_that_would_make_too_much_are_refused_and_others_run() {
        let ctx = guarded();
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
            // Review 23: the element's size counts, not only how many.
            "SELECT cardinality(array_repeat(repeat('x', 10000000), 100)) AS n",
            "SELECT cardinality(array_resize(['a'], 100, repeat('x', 10000000))) AS n",
            "SELECT length(concat_ws(repeat('x', 1000000), 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63,64,65,66,67,68,69,70,71,72,73,74,75,76,77,78,79,80,81,82,83,84,85,86,87,88,89,90,91,92,93,94,95,96,97,98,99,100,101,102,103,104,105,106,107,108,109,110,111,112,113,114,115,116,117,118,119,120,121,122,123,124,125,126,127,128,129,130,131,132,133,134,135,136,137,138,139,140,141,142,143,144,145,146,147,148,149,150,151,152,153,154,155,156,157,158,159,160,161,162,163,164,165,166,167,168,169,170,171,172,173,174,175,176,177,178,179,180,181,182,183,184,185,186,187,188,189,190,191,192,193,194,195,196,197,198,199,200,201,202,203,204,205,206,207,208,209,210,211,212,213,214,215,216,217,218,219,220,221,222,223,224,225,226,227,228,229,230,231,232,233,234,235,236,237,238,239,240,241,242,243,244,245,246,247,248,249,250,251,252,253,254,255,256,257,258,259,260,261,262,263,264,265,266,267,268,269,270)) AS n",
            "SELECT length(array_to_string(range(1, 1000), repeat('x', 1000000))) AS n",
        ] {
            let e = run(&ctx, sql).await.expect_err(sql).to_string();
            assert!(
                e.contains("MiB per call") || e.contains("a constant may be at most 1 MiB"),
                "{sql}: {e}"
            );
            assert!(!e.contains("xxxx"), "{sql}: {e}");
        }
        for sql in [
            "SELECT arrow_cast(NULL, 'FixedSizeList(1000000000, Int64)') IS NULL AS n",
            "SELECT arrow_cast(NULL, 'FixedSizeBinary(2147483647)') IS NULL AS n",
            "SELECT arrow_try_cast(NULL, 'Struct(\"a\": FixedSizeList(100000000, Int64))') IS NULL AS n",
        ] {
            let e = run(&ctx, sql).await.expect_err(sql).to_string();
            assert!(e.contains("fixed-size values over 1 MiB"), "{sql}: {e}");
            assert!(!e.contains("xxxx"), "{sql}: {e}");
        }
        for sql in [
            "SELECT length(repeat('x', 1000)) AS n",
            "SELECT cardinality(range(1, 1000)) AS n",
            "SELECT cardinality(range(DATE '2020-01-01', DATE '2030-01-01', INTERVAL '1 month')) AS n",
            "SELECT lpad('x', 10) AS n",
            "SELECT replace('abc', 'b', 'zz') AS n",
            "SELECT 'a' || 'b' || NULL AS n",
            "SELECT concat_ws(',', 'a', 'b') AS n",
            "SELECT upper('abc') AS n, to_hex(12345) AS h, to_char(now(), '%Y') AS y",
            "SELECT array_to_string([1, 2, 3], ',') AS n",
            "SELECT array_repeat('ab', 3) AS n",
        ] {
            assert_eq!(run(&ctx, sql).await.unwrap(), 1, "{sql}");
        }
    }

    /// Review 25 H2/H3: constants made while planning are copied into plans and column
    /// names; none may be larger than a statement.
    #[tokio::test]
    async fn calls_of_constants_make_at_most_a_statements_worth() {
        let ctx = guarded();
        for sql in [
            "SELECT length(repeat('x', 2000000)) AS n",
            "SELECT length(repeat('x', 600000) || repeat('y', 600000)) AS n",
            "SELECT length(concat(repeat('x', 600000), repeat('y', 600000))) AS n",
            "SELECT count(*) AS n FROM (VALUES (repeat('a', 2000000)), (repeat('b', 2000000))) AS t(v)",
        ] {
            let e = run(&ctx, sql).await.expect_err(sql).to_string();
            assert!(e.contains("a constant may be at most 1 MiB"), "{sql}: {e}");
        }
        assert_eq!(
            run(&ctx, "SELECT length(repeat('x', 500000)) AS n")
                .await
                .unwrap(),
            1
        );
    }

    #[tokio::test]
    async fn string_concatenation_keeps_its_meaning_and_name() {
        let ctx = guarded();
        let batches = ctx
            .sql("SELECT x || y, x || 'c' AS z FROM (VALUES ('a', 'b'), ('c', NULL)) AS t(x, y)")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let shown = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        assert!(shown.contains("t.x || t.y"), "{shown}");
        assert!(shown.contains("| ab "), "{shown}");
        assert!(shown.contains("|            | cc |"), "{shown}");
    }

    /// Sums of calls each admitted: the sum is bounded too. (This test binary does not
    /// count its heap, so the budget stands for what is left of it.)
    #[tokio::test]
    async fn sums_of_admitted_calls_are_bounded_by_the_budget() {
        let ctx = SessionContext::new();
        let budget = Budget::of(1 << 20);
        let rule = guard_functions(&ctx, budget);
        ctx.add_analyzer_rule(std::sync::Arc::new(rule));
        // Values of a table, so that nothing is folded into a constant.
        let t = "WITH t AS (SELECT * FROM (VALUES ('x', 'y', 'a')) AS v(x, y, a))";
        for sql in [
            "SELECT length(repeat(x, 2000000)) AS n FROM t",
            "SELECT length(concat(repeat(x, 600000), repeat(y, 600000))) AS n FROM t",
            "SELECT length(repeat(x, 600000) || repeat(y, 600000)) AS n FROM t",
            "SELECT length(b || b || b) AS n FROM (SELECT repeat(x, 400000) AS b FROM t) u",
            "SELECT length(encode(encode(repeat(a, 300000), 'hex'), 'hex')) AS n FROM t",
            "SELECT cardinality(string_to_array(repeat(a, 300000), NULL)) AS n FROM t",
            "SELECT length(overlay(repeat(x, 600000) placing repeat(y, 600000) from 2 for 1)) AS n FROM t",
        ] {
            let sql = format!("{t} {sql}");
            let e = run(&ctx, &sql).await.expect_err(&sql).to_string();
            assert!(e.contains("memory budget of 1 MiB"), "{sql}: {e}");
            assert!(!e.contains("xxxx"), "{sql}: {e}");
        }
        for sql in [
            "SELECT length(repeat(x, 600000)) AS n FROM t",
            "SELECT length(b || b) AS n FROM (SELECT repeat(x, 200000) AS b FROM t) u",
        ] {
            let sql = format!("{t} {sql}");
            assert_eq!(run(&ctx, &sql).await.unwrap(), 1, "{sql}");
        }
    }
}
