//! The kernels of the masking functions over Arrow arrays, and their parameter helpers.
//! Masks never fail on a value (a failure would tell something about it): out of range
//! gives NULL or a clamped value.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Date32Array, Decimal128Array, Float64Array, Int64Array,
    LargeStringBuilder, StringArray, StringBuilder, StringViewBuilder, make_array,
};
use arrow::datatypes::{DataType, Decimal128Type};
use datafusion::common::cast::{as_date32_array, as_float64_array, as_int64_array};
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::ColumnarValue;

use super::functions;
use super::spec::{MaskArg, MaskFn, bucket_edges};

pub(super) fn scalar_int(v: &ColumnarValue, func: MaskFn) -> Result<i64> {
    match v {
        ColumnarValue::Scalar(ScalarValue::Int64(Some(i))) => Ok(*i),
        _ => plan_err!("{}: parameters must be integer constants", func.name()),
    }
}

pub(super) fn scalar_str(v: &ColumnarValue, func: MaskFn) -> Result<String> {
    match v {
        ColumnarValue::Scalar(ScalarValue::Utf8(Some(s))) => Ok(s.clone()),
        _ => plan_err!("{}: parameters must be string constants", func.name()),
    }
}

pub(super) fn usize_param(v: &ColumnarValue, func: MaskFn) -> Result<usize> {
    let i = scalar_int(v, func)?;
    usize::try_from(i).map_err(|_| {
        DataFusionError::Plan(format!("{}: parameters must not be negative", func.name()))
    })
}

/// Run `f` over every present value with one reused buffer; NULL stays NULL.
fn each_string<'a>(
    values: impl Iterator<Item = Option<&'a str>>,
    f: &impl Fn(&str, &mut String),
    mut emit: impl FnMut(Option<&str>),
) {
    let mut buf = String::with_capacity(64);
    for value in values {
        match value {
            None => emit(None),
            Some(s) => {
                buf.clear();
                f(s, &mut buf);
                emit(Some(&buf));
            }
        }
    }
}

/// Apply a char-level mask to each string of a Utf8, LargeUtf8 or Utf8View array, into
/// an array of the same type. Outputs are sized from the input (masks keep or shorten the
/// byte length in the common case), so builders rarely grow.
pub(super) fn map_strings(array: &ArrayRef, f: impl Fn(&str, &mut String)) -> Result<ArrayRef> {
    Ok(match array.data_type() {
        DataType::Utf8 => {
            let strings = array.as_string::<i32>();
            let mut b = StringBuilder::with_capacity(strings.len(), strings.value_data().len());
            each_string(strings.iter(), &f, |v| b.append_option(v));
            Arc::new(b.finish())
        }
        DataType::LargeUtf8 => {
            let strings = array.as_string::<i64>();
            let mut b =
                LargeStringBuilder::with_capacity(strings.len(), strings.value_data().len());
            each_string(strings.iter(), &f, |v| b.append_option(v));
            Arc::new(b.finish())
        }
        DataType::Utf8View => {
            let strings = array.as_string_view();
            let mut b = StringViewBuilder::with_capacity(strings.len());
            each_string(strings.iter(), &f, |v| b.append_option(v));
            Arc::new(b.finish())
        }
        other => return exec_err!("expected a string array, got {other}"),
    })
}

const DAYS_0000_TO_1970: i32 = 719_163;

pub(super) fn year_start(days: i32) -> i32 {
    use chrono::{Datelike, NaiveDate};
    days.checked_add(DAYS_0000_TO_1970)
        .and_then(NaiveDate::from_num_days_from_ce_opt)
        .and_then(|d| NaiveDate::from_ymd_opt(d.year(), 1, 1))
        .map(|d| d.num_days_from_ce() - DAYS_0000_TO_1970)
        .unwrap_or(0)
}

pub(super) fn month_start(days: i32) -> i32 {
    use chrono::{Datelike, NaiveDate};
    days.checked_add(DAYS_0000_TO_1970)
        .and_then(NaiveDate::from_num_days_from_ce_opt)
        .and_then(|d| NaiveDate::from_ymd_opt(d.year(), d.month(), 1))
        .map(|d| d.num_days_from_ce() - DAYS_0000_TO_1970)
        .unwrap_or(0)
}

/// `v` rounded to a multiple of `k` (half up); `None` when that multiple is outside `i64`.
pub(super) fn round_to(v: i64, k: i64) -> Option<i64> {
    let (v, k) = (i128::from(v), i128::from(k));
    let r = v.rem_euclid(k);
    let base = v - r;
    let rounded = if r >= k / 2 && k > 1 { base + k } else { base };
    i64::try_from(rounded).ok()
}

pub(super) fn bucket_edges_of(params: &[ColumnarValue], func: MaskFn) -> Result<Vec<i64>> {
    let args = params
        .iter()
        .map(|p| scalar_int(p, func).map(MaskArg::Int))
        .collect::<Result<Vec<_>>>()?;
    match bucket_edges(&args) {
        Some(edges) => Ok(edges),
        None => plan_err!("bucket: edges must be 1 to 32 strictly increasing integers"),
    }
}

/// Labels of `bucket`: `<e1`, `e1-e2` (integers: inclusive, `e1-(e2-1)`), ..., `>=en`.
pub(super) fn bucket_labels(edges: &[i64], integers: bool) -> Vec<String> {
    let mut labels = Vec::with_capacity(edges.len() + 1);
    if let Some(first) = edges.first() {
        labels.push(format!("<{first}"));
    }
    for w in edges.windows(2) {
        labels.push(if integers {
            if w[1] - 1 == w[0] {
                w[0].to_string()
            } else {
                format!("{}-{}", w[0], w[1] - 1)
            }
        } else {
            format!("[{}, {})", w[0], w[1])
        });
    }
    if let Some(last) = edges.last() {
        labels.push(format!(">={last}"));
    }
    labels
}

/// Round a decimal's unscaled value to a multiple of `k` whole units.
pub(super) fn round_decimal(v: i128, k: i64, scale: i8) -> Option<i128> {
    let step = i128::from(k).checked_mul(10i128.checked_pow(u32::try_from(scale).ok()?)?)?;
    let r = v.rem_euclid(step);
    let base = v - r;
    Some(if r >= step - r {
        base.checked_add(step)?
    } else {
        base
    })
}

/// `round_num(k)`: to the nearest multiple of `k`, in the value's own type.
pub(super) fn round_num(array: &ArrayRef, k: i64) -> Result<ArrayRef> {
    if k <= 0 {
        return plan_err!("round_num: k must be positive");
    }
    Ok(match array.data_type() {
        DataType::Int64 => {
            let out: Int64Array = as_int64_array(array)?.unary_opt(|v| round_to(v, k));
            Arc::new(out)
        }
        DataType::Decimal128(p, scale) => {
            let (p, scale) = (*p, *scale);
            let out: Decimal128Array = array
                .as_primitive::<Decimal128Type>()
                .unary_opt(|v| round_decimal(v, k, scale));
            Arc::new(out.with_precision_and_scale(p, scale)?)
        }
        _ => {
            let kf = k as f64;
            let out: Float64Array = as_float64_array(array)?.unary(|v| (v / kf).round() * kf);
            Arc::new(out)
        }
    })
}

/// `age_band(w)`: 37 becomes '30-39' for w = 10.
pub(super) fn age_band(array: &ArrayRef, w: i64) -> Result<ArrayRef> {
    if w <= 0 {
        return plan_err!("age_band: width must be positive");
    }
    let labels: StringArray = match array.data_type() {
        DataType::Int64 => as_int64_array(array)?
            .iter()
            .map(|v| v.map(|v| functions::age_band(v, w)))
            .collect(),
        _ => as_float64_array(array)?
            .iter()
            .map(|v| v.map(|v| functions::age_band(v.floor() as i64, w)))
            .collect(),
    };
    Ok(Arc::new(labels))
}

/// `top_bottom_code(lo, hi)`: clamp to [lo, hi], in the value's own type.
pub(super) fn top_bottom_code(array: &ArrayRef, lo: i64, hi: i64) -> Result<ArrayRef> {
    let hi = hi.max(lo);
    Ok(match array.data_type() {
        DataType::Int64 => {
            let out: Int64Array = as_int64_array(array)?.unary(|v| v.clamp(lo, hi));
            Arc::new(out)
        }
        DataType::Decimal128(p, scale) => {
            let (p, scale) = (*p, *scale);
            let unit = u32::try_from(scale)
                .ok()
                .and_then(|s| 10i128.checked_pow(s))
                .unwrap_or(1);
            let (lo, hi) = (
                i128::from(lo).saturating_mul(unit),
                i128::from(hi).saturating_mul(unit),
            );
            let out: Decimal128Array = array
                .as_primitive::<Decimal128Type>()
                .unary(|v| v.clamp(lo, hi));
            Arc::new(out.with_precision_and_scale(p, scale)?)
        }
        _ => {
            let (lo, hi) = (lo as f64, hi as f64);
            let out: Float64Array = as_float64_array(array)?.unary(|v| v.clamp(lo, hi));
            Arc::new(out)
        }
    })
}

/// `trunc_date(unit)`: a date to the start of its year or month ('day' keeps it).
pub(super) fn trunc_date(array: &ArrayRef, unit: &str) -> Result<ArrayRef> {
    let dates = as_date32_array(array)?;
    let out: Date32Array = match unit {
        "year" => dates.unary(year_start),
        "month" => dates.unary(month_start),
        "day" => dates.unary(|d| d),
        other => return plan_err!("trunc_date: unknown unit '{other}'"),
    };
    Ok(Arc::new(out))
}

/// `bucket(e1, ...)`: a number becomes the label of its interval between the edges.
pub(super) fn bucket(array: &ArrayRef, edges: &[i64]) -> Result<ArrayRef> {
    let integers = array.data_type() == &DataType::Int64;
    let labels = bucket_labels(edges, integers);
    // The bucket of v is the number of edges <= v.
    let label = |i: usize| labels.get(i).map(String::as_str);
    let out: StringArray = if integers {
        as_int64_array(array)?
            .iter()
            .map(|v| v.and_then(|v| label(edges.partition_point(|e| *e <= v))))
            .collect()
    } else {
        as_float64_array(array)?
            .iter()
            .map(|v| {
                v.and_then(|v| {
                    if v.is_nan() {
                        Some("NaN")
                    } else {
                        label(edges.partition_point(|e| (*e as f64) <= v))
                    }
                })
            })
            .collect()
    };
    Ok(Arc::new(out))
}

/// `type_default`: present values become the type's default; NULL stays NULL.
pub(super) fn type_default(array: &ArrayRef) -> Result<ArrayRef> {
    let default = ScalarValue::new_default(array.data_type())?.to_array_of_size(array.len())?;
    let data = default
        .to_data()
        .into_builder()
        .nulls(array.nulls().cloned())
        .build()?;
    Ok(make_array(data))
}
