//! Upper bounds of the bytes a built-in function's call makes, computed from its arguments
//! before it runs.
//!
//! Amplifiers (`repeat`, padding, ranges, array repetition, replacements) are sized from
//! their counts and lengths; every other function that returns strings, binaries or nested
//! values is bounded by its arguments' sizes (rows times a scalar argument's size, since a
//! scalar is repeated on every row) times how much it can grow them (case mapping triples
//! some characters, hex doubles, `string_to_array` gives every character an offset), plus a
//! small per-row allowance (hashes, formatted dates). Functions of fixed-width results make
//! nothing worth bounding.

use arrow::array::{Array, ArrayRef, Int64Array};
use arrow::compute::kernels::length::length;
use arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::ColumnarValue;

/// How an amplifier's output is bounded from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Bound {
    /// `repeat(s, n)`: len(s) * n.
    Repeat,
    /// `lpad(s, n[, fill])`: n characters, 4 bytes each at most.
    Pad,
    /// `array_repeat(v, n)`: n elements of the value's size.
    Elements,
    /// `array_resize(a, n[, v])`: the list, and n elements of the value's size.
    Resize,
    /// `range`/`generate_series(stop)`, `(start, stop[, step])`, integers or times.
    Range,
    /// `replace(s, from, to)`, `regexp_replace(s, pattern, to[, flags])`: every position
    /// replaced at worst.
    Replace,
    /// `array_to_string(a, sep[, null])`: the separator once per element.
    Join,
}

const AMPLIFIERS: &[(&str, Bound)] = &[
    ("repeat", Bound::Repeat),
    ("lpad", Bound::Pad),
    ("rpad", Bound::Pad),
    ("array_repeat", Bound::Elements),
    ("list_repeat", Bound::Elements),
    ("array_resize", Bound::Resize),
    ("list_resize", Bound::Resize),
    ("range", Bound::Range),
    ("generate_series", Bound::Range),
    ("replace", Bound::Replace),
    ("regexp_replace", Bound::Replace),
    ("array_to_string", Bound::Join),
    ("array_join", Bound::Join),
    ("list_to_string", Bound::Join),
    ("list_join", Bound::Join),
];

/// Bytes per row any function may make beyond its arguments' sizes (a digest in hex, a
/// formatted date, a UUID).
const PER_ROW: u128 = 128;

/// An upper bound of the bytes `name(args)` makes over `rows` rows returning `returns`.
pub(super) fn output_bytes(
    name: &str,
    args: &[ColumnarValue],
    rows: usize,
    returns: &DataType,
) -> Result<u128> {
    if let Some((_, bound)) = AMPLIFIERS.iter().find(|(n, _)| *n == name) {
        return amplified(*bound, args, rows);
    }
    let rows_u = rows.max(1) as u128;
    let fixed = fixed_list_bytes(returns).saturating_mul(rows_u);
    if !variable_width(returns) {
        return Ok(fixed);
    }
    let factor: u128 = match name {
        "upper" | "lower" | "initcap" => 3,
        "translate" => 4,
        "to_hex" | "encode" => 2,
        "string_to_array" | "string_to_list" => 6,
        _ => 1,
    };
    let mut total: u128 = 0;
    for a in args {
        total = total.saturating_add(broadcast_bytes(a, rows));
    }
    if matches!(name, "concat_ws") {
        // The separator (first argument) once between every two others on every row.
        if let Some(sep) = args.first() {
            let others = args.len().saturating_sub(2) as u128;
            total = total.saturating_add(broadcast_bytes(sep, rows).saturating_mul(others));
        }
    }
    Ok(total
        .saturating_mul(factor)
        .saturating_add(rows_u.saturating_mul(PER_ROW))
        .saturating_add(fixed))
}

/// Whether values of the type can be of any size.
fn variable_width(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::List(_)
            | DataType::LargeList(_)
            | DataType::ListView(_)
            | DataType::LargeListView(_)
            | DataType::FixedSizeList(_, _)
            | DataType::Struct(_)
            | DataType::Map(_, _)
            | DataType::Union(_, _)
            | DataType::Dictionary(_, _)
            | DataType::RunEndEncoded(_, _)
    )
}

/// Bytes of one value of a type made of fixed-size parts, which a cast allocates whole even
/// for a NULL (`arrow_cast(NULL, 'FixedSizeList(1000000000, Int64)')`, review 23).
pub(super) fn fixed_list_bytes(t: &DataType) -> u128 {
    match t {
        DataType::FixedSizeList(f, n) => {
            let n = u128::try_from((*n).max(0)).unwrap_or(0);
            n.saturating_mul(fixed_list_bytes(f.data_type()).max(16))
        }
        DataType::FixedSizeBinary(n) => u128::try_from((*n).max(0)).unwrap_or(0),
        DataType::Struct(fields) => fields
            .iter()
            .map(|f| fixed_list_bytes(f.data_type()))
            .fold(0, u128::saturating_add),
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::Map(f, _) => fixed_list_bytes(f.data_type()),
        DataType::Dictionary(_, v) => fixed_list_bytes(v),
        _ => 0,
    }
}

/// Largest value of a fixed-size type a statement may name: 1 MiB.
pub(super) const MAX_FIXED_VALUE: u128 = 1 << 20;

/// Bytes an argument stands for over `rows` rows: an array's own (its slice), a scalar's
/// once per row.
pub(super) fn broadcast_bytes(v: &ColumnarValue, rows: usize) -> u128 {
    match v {
        ColumnarValue::Array(a) => array_bytes(a.as_ref()),
        ColumnarValue::Scalar(s) => scalar_bytes(s).saturating_mul(rows.max(1) as u128),
    }
}

/// Bytes of the part of the buffers an array uses.
pub(super) fn array_bytes(a: &dyn Array) -> u128 {
    let data = a.to_data();
    data.get_slice_memory_size()
        .unwrap_or_else(|_| a.get_array_memory_size()) as u128
}

/// Bytes of a scalar's payload (not its enum).
pub(super) fn scalar_bytes(s: &ScalarValue) -> u128 {
    let own = std::mem::size_of::<ScalarValue>();
    (s.size().saturating_sub(own) as u128).max(8)
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

/// The bound of an amplifier's call.
fn amplified(bound: Bound, args: &[ColumnarValue], rows: usize) -> Result<u128> {
    let arg = |i: usize| args.get(i);
    let mut total: u128 = 0;
    match bound {
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
        Bound::Elements | Bound::Resize => {
            // The value repeated: `array_repeat(v, n)`'s first argument,
            // `array_resize(a, n, v)`'s third (or nulls). Each element is as large as
            // the value of its row; over an array of values, the largest count times all
            // of them bounds every row's count times its own.
            let value = if bound == Bound::Resize {
                arg(2)
            } else {
                arg(0)
            };
            if bound == Bound::Resize {
                total = arg(0).map_or(0, |a| broadcast_bytes(a, rows));
            }
            if let Some(n) = arg(1) {
                let counts = ints(n, rows)?;
                let count_sum = counts
                    .iter()
                    .map(|n| positive(*n))
                    .fold(0u128, u128::saturating_add);
                let count_max = counts.iter().map(|n| positive(*n)).max().unwrap_or(0);
                total = total.saturating_add(count_sum.saturating_mul(16));
                match value {
                    Some(ColumnarValue::Scalar(s)) => {
                        total = total.saturating_add(count_sum.saturating_mul(scalar_bytes(s)));
                    }
                    Some(v @ ColumnarValue::Array(_)) => {
                        total = total
                            .saturating_add(count_max.saturating_mul(broadcast_bytes(v, rows)));
                    }
                    None => {}
                }
            }
        }
        Bound::Join => {
            // Every element of every row, and the separator after each.
            if let (Some(ColumnarValue::Array(a)), Some(sep)) = (arg(0), arg(1)) {
                let elements = list_elements(a.as_ref()) as u128;
                let sep = match sep {
                    ColumnarValue::Scalar(s) => scalar_bytes(s),
                    ColumnarValue::Array(_) => broadcast_bytes(sep, rows),
                };
                total = elements
                    .saturating_mul(sep.saturating_add(PER_ROW))
                    .saturating_add(array_bytes(a.as_ref()));
            } else if let (Some(a), Some(sep)) = (arg(0), arg(1)) {
                let a = a.to_array(1)?;
                let elements = list_elements(a.as_ref()) as u128;
                let per_row = elements
                    .saturating_mul(broadcast_bytes(sep, 1).saturating_add(PER_ROW))
                    .saturating_add(array_bytes(a.as_ref()));
                total = per_row.saturating_mul(rows.max(1) as u128);
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

/// Elements under the rows of a list array (all levels' values counted at the top).
fn list_elements(a: &dyn Array) -> usize {
    use arrow::array::{AsArray, GenericListArray, OffsetSizeTrait};
    fn of<O: OffsetSizeTrait>(l: &GenericListArray<O>) -> usize {
        let offsets = l.value_offsets();
        let first = offsets.first().map_or(0, |o| o.as_usize());
        let last = offsets.last().map_or(0, |o| o.as_usize());
        last.saturating_sub(first)
            .max(list_elements(l.values().as_ref()))
    }
    match a.data_type() {
        DataType::List(_) => of(a.as_list::<i32>()),
        DataType::LargeList(_) => of(a.as_list::<i64>()),
        DataType::FixedSizeList(_, _) => {
            let l = a.as_fixed_size_list();
            l.values().len().max(list_elements(l.values().as_ref()))
        }
        _ => a.len(),
    }
}
