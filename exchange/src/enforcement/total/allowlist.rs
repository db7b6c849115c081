//! The allowlists: functions known to be total, read off the DataFusion 55.2 sources.

/// Scalar functions that are total whatever their (total) arguments.
pub(super) const TOTAL_FUNCTIONS: &[&str] = &[
    // `a || b` of strings, as `enforcement/outputs` plans it (the operator is total).
    "string_concat",
    // core
    "coalesce",
    "nvl",
    "ifnull",
    "nvl2",
    "nullif",
    "greatest",
    "least",
    "named_struct",
    "struct",
    "get_field",
    // math over floats (NaN and infinities, never errors)
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "atan2",
    "cbrt",
    "cos",
    "cosh",
    "cot",
    "degrees",
    "exp",
    "ln",
    "log",
    "log2",
    "log10",
    "radians",
    "sin",
    "sinh",
    "tan",
    "tanh",
    "trunc",
    "isnan",
    "iszero",
    "nanvl",
    "signum",
    "pi",
    "random",
    // strings
    "ascii",
    "bit_length",
    "octet_length",
    "lower",
    "upper",
    "btrim",
    "ltrim",
    "rtrim",
    "starts_with",
    "ends_with",
    "contains",
    "to_hex",
    "replace",
    "concat",
    "concat_ws",
    "character_length",
    "reverse",
    "initcap",
    "left",
    "right",
    "strpos",
    "translate",
    "find_in_set",
    "substr_index",
    // time without input
    "now",
    "current_date",
    "current_time",
    // lists
    "make_array",
    "array_append",
    "array_prepend",
    "array_concat",
    "array_has",
    "array_has_all",
    "array_has_any",
    "array_length",
    "cardinality",
    "array_distinct",
    "array_reverse",
    "string_to_array",
];

/// Functions whose size of output an argument controls: never evaluated, not even on
/// constants while checking.
pub(super) const UNBOUNDED: &[&str] = &[
    "repeat",
    "lpad",
    "rpad",
    "array_repeat",
    "array_resize",
    "range",
    "generate_series",
];

/// `date_part` fields that exist for dates and timestamps.
pub(super) const DATE_PARTS: &[&str] = &[
    "year",
    "month",
    "week",
    "day",
    "hour",
    "minute",
    "second",
    "millisecond",
    "microsecond",
    "quarter",
    "doy",
    "dow",
    "isodow",
    "isoyear",
    "epoch",
];

/// Aggregates that never fail on values (memory aside), besides the summarising ones
/// (`aggregate::SUMMARISING`, all total).
pub(super) const OTHER_TOTAL_AGGREGATES: &[&str] = &[
    "corr",
    "covar",
    "covar_samp",
    "covar_pop",
    "bit_and",
    "bit_or",
    "bit_xor",
    "first_value",
    "last_value",
];

pub(super) fn total_aggregate(name: &str) -> bool {
    crate::enforcement::aggregate::SUMMARISING.contains(&name)
        || OTHER_TOTAL_AGGREGATES.contains(&name)
}

/// Window functions that never fail on values.
pub(super) const TOTAL_WINDOW_FUNCTIONS: &[&str] = &[
    "row_number",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "first_value",
    "last_value",
];
