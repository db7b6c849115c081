//! Which casts return a value for every input (DataFusion casts with `safe = false`).

use arrow::datatypes::{DataType, TimeUnit};

/// Whether `CAST(from AS to)` returns a value for every input (DataFusion casts with
/// `safe = false`).
pub(crate) fn cast_total(from: &DataType, to: &DataType) -> bool {
    use DataType as T;
    let is_text = |t: &DataType| matches!(t, T::Utf8 | T::LargeUtf8 | T::Utf8View);
    let int_digits = |t: &DataType| -> Option<i32> {
        Some(match t {
            T::Int8 | T::UInt8 => 3,
            T::Int16 | T::UInt16 => 5,
            T::Int32 | T::UInt32 => 10,
            T::Int64 => 19,
            T::UInt64 => 20,
            _ => return None,
        })
    };
    let rank = |t: &DataType| -> Option<(bool, u8)> {
        Some(match t {
            T::Int8 => (true, 1),
            T::Int16 => (true, 2),
            T::Int32 => (true, 4),
            T::Int64 => (true, 8),
            T::UInt8 => (false, 1),
            T::UInt16 => (false, 2),
            T::UInt32 => (false, 4),
            T::UInt64 => (false, 8),
            _ => return None,
        })
    };
    if from == to || *from == T::Null {
        return true;
    }
    match (from, to) {
        // Integer widening (unsigned into a wider signed type too).
        (a, b) if rank(a).is_some() && rank(b).is_some() => {
            let ((sa, wa), (sb, wb)) = (rank(a).unwrap_or_default(), rank(b).unwrap_or_default());
            (sa == sb && wb >= wa) || (!sa && sb && wb > wa)
        }
        (a, T::Float32 | T::Float64) if a.is_integer() || a.is_floating() => true,
        (a, T::Boolean) if a.is_integer() || a.is_floating() => true,
        (T::Boolean, b) if b.is_integer() || b.is_floating() || is_text(b) => true,
        (a, b) if is_text(b) && (a.is_integer() || a.is_floating()) => true,
        (T::Decimal128(..), b) if is_text(b) || b.is_floating() => true,
        (T::Timestamp(TimeUnit::Nanosecond, _), b) if is_text(b) => true,
        (a, b) if is_text(a) && is_text(b) => true,
        (a, T::Decimal128(p, s)) if a.is_integer() => {
            int_digits(a).is_some_and(|d| i32::from(*p) - i32::from(*s) >= d)
        }
        (T::Decimal128(p1, s1), T::Decimal128(p2, s2)) => {
            let (p1, s1, p2, s2) = (
                i32::from(*p1),
                i32::from(*s1),
                i32::from(*p2),
                i32::from(*s2),
            );
            if s2 >= s1 {
                p1 + (s2 - s1) <= p2
            } else {
                p1 - (s1 - s2) < p2
            }
        }
        (T::Date32, T::Date64) => true,
        (T::Date32, T::Timestamp(TimeUnit::Second | TimeUnit::Millisecond, None)) => true,
        (T::Timestamp(TimeUnit::Nanosecond, None), T::Date32) => true,
        (T::Timestamp(a, tz_a), T::Timestamp(b, tz_b)) => {
            unit_rank(a) >= unit_rank(b) && (tz_a == tz_b || tz_b.is_none())
        }
        // Not Int32 to Date32: it makes dates outside chrono's range, which later fail.
        (T::Date32, T::Int32 | T::Int64) => true,
        _ => false,
    }
}

fn unit_rank(u: &TimeUnit) -> u8 {
    match u {
        TimeUnit::Second => 0,
        TimeUnit::Millisecond => 1,
        TimeUnit::Microsecond => 2,
        TimeUnit::Nanosecond => 3,
    }
}

/// Whether `TRY_CAST(from AS to)` returns a value (or NULL) for every input: some temporal
/// conversions ignore the safe mode and fail anyway.
pub(super) fn try_cast_total(from: &DataType, to: &DataType) -> bool {
    use DataType as T;
    let is_text = matches!(to, T::Utf8 | T::LargeUtf8 | T::Utf8View);
    let temporal = matches!(
        from,
        T::Date32 | T::Date64 | T::Timestamp(..) | T::Time32(_) | T::Time64(_)
    );
    let ns = matches!(from, T::Timestamp(TimeUnit::Nanosecond, _));
    !((temporal && !ns && (is_text || matches!(to, T::Date32 | T::Time32(_) | T::Time64(_))))
        || (matches!(from, T::Timestamp(..)) && matches!(to, T::Time32(_) | T::Time64(_))))
}
