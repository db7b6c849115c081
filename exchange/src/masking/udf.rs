//! Masking functions as DataFusion scalar UDFs.
//!
//! A treatment `mask(keep_first_last, 3, 4)` becomes the expression
//! `keep_first_last(col, 3, 4)`: parameters travel as literal arguments so that plans and
//! EXPLAIN name them, and they are checked when the policy loads ([`MaskFn::check_args`]).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Date32Array, Decimal128Array, Float64Array, Int64Array,
    LargeStringBuilder, StringArray, StringBuilder, StringViewBuilder, make_array, new_null_array,
};
use arrow::datatypes::{DataType, Decimal128Type};
use datafusion::common::cast::{as_date32_array, as_float64_array, as_int64_array};
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use super::functions::{self, AddressLevel, MASK_CHAR};

/// A literal parameter of a masking function, as written in a policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MaskArg {
    /// An integer parameter, e.g. the `3` of `keep_first_last(3, 4)`.
    Int(i64),
    /// A string parameter, e.g. the `'district'` of `address_cn('district')`.
    Str(String),
}

impl MaskArg {
    /// The literal passed to the UDF.
    pub fn to_scalar(&self) -> ScalarValue {
        match self {
            MaskArg::Int(i) => ScalarValue::Int64(Some(*i)),
            MaskArg::Str(s) => ScalarValue::Utf8(Some(s.clone())),
        }
    }
}

impl std::fmt::Display for MaskArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaskArg::Int(i) => write!(f, "{i}"),
            MaskArg::Str(s) => write!(f, "'{s}'"),
        }
    }
}

/// The masking functions the exchange offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MaskFn {
    /// keep_first_last(n, m): replace chars in [n, len-m).
    KeepFirstLast,
    /// mask_first_last(n, m): replace the first n and last m chars.
    MaskFirstLast,
    /// name_cn: keep the surname.
    NameCn,
    /// id_cn(profile): resident ID, 'display' (1+1) or 'operator' (6+4).
    IdCn,
    /// phone_cn: mobile 3+4, landline area code + last 2.
    PhoneCn,
    /// address_cn(level): cut to 'province', 'city' or 'district'.
    AddressCn,
    /// year_only: a date becomes January 1st of its year.
    YearOnly,
    /// round_num(k): round to the nearest multiple of k.
    RoundNum,
    /// keep_range(x, y): keep chars at 0-based inclusive positions [x, y].
    KeepRange,
    /// mask_range(x, y): mask chars at 0-based inclusive positions [x, y].
    MaskRange,
    /// mask_before(sep): mask what precedes the first sep.
    MaskBefore,
    /// mask_after(sep): mask what follows the first sep.
    MaskAfter,
    /// fixed_mask(k): k mask chars whatever the value (hides length).
    FixedMask,
    /// redact: letters to x/X, digits to 0 (Ranger MASK).
    Redact,
    /// bank_card: keep BIN (6) and last 4.
    BankCard,
    /// plate_cn: keep the first 3 chars and the last.
    PlateCn,
    /// email: first char of the local part and the domain.
    Email,
    /// ipv4: to the /24 network.
    Ipv4,
    /// ipv6: to the /48 network.
    Ipv6,
    /// hash_sha256(salt?): hex SHA-256 (compatibility only: brute-forceable).
    HashSha256,
    /// age_band(w): 37 -> '30-39' for w = 10.
    AgeBand,
    /// top_bottom_code(lo, hi): clamp to [lo, hi].
    TopBottomCode,
    /// trunc_date(unit): 'year', 'month' or 'day'.
    TruncDate,
    /// nullify: NULL of the column's type.
    Nullify,
    /// type_default: '' / 0 / false / 1970-01-01 for present values, NULL stays NULL.
    TypeDefault,
    /// bucket(e1, e2, ...): a number becomes the label of its interval between the edges.
    Bucket,
}

/// What kind of value a masking function takes and returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// Strings in, strings out.
    Text,
    /// Dates in, dates out.
    Date,
    /// Numbers in, numbers of the same type out.
    Number,
    /// Numbers in, text labels out.
    NumberLabel,
    /// Any type in, the same type out.
    Any,
}

impl MaskFn {
    /// Every masking function, for registration and documentation.
    pub const ALL: &'static [MaskFn] = &[
        MaskFn::KeepFirstLast,
        MaskFn::MaskFirstLast,
        MaskFn::NameCn,
        MaskFn::IdCn,
        MaskFn::PhoneCn,
        MaskFn::AddressCn,
        MaskFn::YearOnly,
        MaskFn::RoundNum,
        MaskFn::KeepRange,
        MaskFn::MaskRange,
        MaskFn::MaskBefore,
        MaskFn::MaskAfter,
        MaskFn::FixedMask,
        MaskFn::Redact,
        MaskFn::BankCard,
        MaskFn::PlateCn,
        MaskFn::Email,
        MaskFn::Ipv4,
        MaskFn::Ipv6,
        MaskFn::HashSha256,
        MaskFn::AgeBand,
        MaskFn::TopBottomCode,
        MaskFn::TruncDate,
        MaskFn::Nullify,
        MaskFn::TypeDefault,
        MaskFn::Bucket,
    ];

    /// The function's SQL and policy name.
    pub fn name(self) -> &'static str {
        match self {
            MaskFn::KeepFirstLast => "keep_first_last",
            MaskFn::MaskFirstLast => "mask_first_last",
            MaskFn::NameCn => "name_cn",
            MaskFn::IdCn => "id_cn",
            MaskFn::PhoneCn => "phone_cn",
            MaskFn::AddressCn => "address_cn",
            MaskFn::YearOnly => "year_only",
            MaskFn::RoundNum => "round_num",
            MaskFn::KeepRange => "keep_range",
            MaskFn::MaskRange => "mask_range",
            MaskFn::MaskBefore => "mask_before",
            MaskFn::MaskAfter => "mask_after",
            MaskFn::FixedMask => "fixed_mask",
            MaskFn::Redact => "redact",
            MaskFn::BankCard => "bank_card",
            MaskFn::PlateCn => "plate_cn",
            MaskFn::Email => "email",
            MaskFn::Ipv4 => "ipv4",
            MaskFn::Ipv6 => "ipv6",
            MaskFn::HashSha256 => "hash_sha256",
            MaskFn::AgeBand => "age_band",
            MaskFn::TopBottomCode => "top_bottom_code",
            MaskFn::TruncDate => "trunc_date",
            MaskFn::Nullify => "nullify",
            MaskFn::TypeDefault => "type_default",
            MaskFn::Bucket => "bucket",
        }
    }

    /// Look a function up by name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|f| f.name() == name)
    }

    /// The kind of value the function applies to.
    pub fn value_kind(self) -> ValueKind {
        match self {
            MaskFn::YearOnly | MaskFn::TruncDate => ValueKind::Date,
            MaskFn::RoundNum | MaskFn::TopBottomCode => ValueKind::Number,
            MaskFn::AgeBand | MaskFn::Bucket => ValueKind::NumberLabel,
            MaskFn::Nullify | MaskFn::TypeDefault => ValueKind::Any,
            _ => ValueKind::Text,
        }
    }

    /// Check a policy's parameters; the message says what is expected.
    pub fn check_args(self, args: &[MaskArg]) -> std::result::Result<(), String> {
        let usage = match self {
            MaskFn::KeepFirstLast | MaskFn::MaskFirstLast => "(n, m) with n, m >= 0",
            MaskFn::KeepRange | MaskFn::MaskRange => "(x, y) with 0 <= x <= y",
            MaskFn::NameCn
            | MaskFn::PhoneCn
            | MaskFn::YearOnly
            | MaskFn::Redact
            | MaskFn::BankCard
            | MaskFn::PlateCn
            | MaskFn::Email
            | MaskFn::Ipv4
            | MaskFn::Ipv6
            | MaskFn::Nullify
            | MaskFn::TypeDefault => "no parameters",
            MaskFn::Bucket => "(e1, e2, ...) with 1 to 32 strictly increasing integer edges",
            MaskFn::IdCn => "('display' | 'operator')",
            MaskFn::AddressCn => "('province' | 'city' | 'district')",
            MaskFn::RoundNum => "(k) with k > 0",
            MaskFn::MaskBefore | MaskFn::MaskAfter => "('separator')",
            MaskFn::FixedMask => "(k) with 1 <= k <= 64",
            MaskFn::HashSha256 => "() or ('salt')",
            MaskFn::AgeBand => "(width) with width > 0",
            MaskFn::TopBottomCode => "(lo, hi) with lo <= hi",
            MaskFn::TruncDate => "('year' | 'month' | 'day')",
        };
        let ok = match (self, args) {
            (MaskFn::KeepFirstLast, [MaskArg::Int(n), MaskArg::Int(m)]) => *n >= 0 && *m >= 0,
            (MaskFn::MaskFirstLast, [MaskArg::Int(n), MaskArg::Int(m)]) => {
                *n >= 0 && *m >= 0 && (*n >= 1 || *m >= 1)
            }
            (MaskFn::NameCn | MaskFn::PhoneCn | MaskFn::YearOnly, []) => true,
            (MaskFn::IdCn, [MaskArg::Str(p)]) => functions::id_cn_keep(p).is_some(),
            (MaskFn::AddressCn, [MaskArg::Str(l)]) => AddressLevel::parse(l).is_some(),
            (MaskFn::RoundNum, [MaskArg::Int(k)]) => *k > 0,
            (MaskFn::KeepRange | MaskFn::MaskRange, [MaskArg::Int(x), MaskArg::Int(y)]) => {
                *x >= 0 && x <= y
            }
            (
                MaskFn::Redact
                | MaskFn::BankCard
                | MaskFn::PlateCn
                | MaskFn::Email
                | MaskFn::Ipv4
                | MaskFn::Ipv6
                | MaskFn::Nullify
                | MaskFn::TypeDefault,
                [],
            ) => true,
            (MaskFn::Bucket, edges) => bucket_edges(edges).is_some(),
            (MaskFn::MaskBefore | MaskFn::MaskAfter, [MaskArg::Str(s)]) => !s.is_empty(),
            (MaskFn::FixedMask, [MaskArg::Int(k)]) => (1..=64).contains(k),
            (MaskFn::HashSha256, []) | (MaskFn::HashSha256, [MaskArg::Str(_)]) => true,
            (MaskFn::AgeBand, [MaskArg::Int(w)]) => *w > 0,
            (MaskFn::TopBottomCode, [MaskArg::Int(lo), MaskArg::Int(hi)]) => lo <= hi,
            (MaskFn::TruncDate, [MaskArg::Str(u)]) => {
                matches!(u.as_str(), "year" | "month" | "day")
            }
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            let given: Vec<String> = args.iter().map(ToString::to_string).collect();
            Err(format!(
                "{} takes {usage}, got ({})",
                self.name(),
                given.join(", ")
            ))
        }
    }

    /// The scalar UDF implementing this function.
    pub fn udf(self) -> Arc<ScalarUDF> {
        Arc::new(ScalarUDF::new_from_impl(MaskUdf::new(self)))
    }
}

/// A masking function as a DataFusion UDF: `f(value, params...)`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct MaskUdf {
    func: MaskFn,
    signature: Signature,
}

impl MaskUdf {
    /// The masking function.
    pub fn mask_fn(&self) -> MaskFn {
        self.func
    }

    /// The UDF of `func`.
    pub fn new(func: MaskFn) -> Self {
        Self {
            func,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

fn scalar_int(v: &ColumnarValue, func: MaskFn) -> Result<i64> {
    match v {
        ColumnarValue::Scalar(ScalarValue::Int64(Some(i))) => Ok(*i),
        _ => plan_err!("{}: parameters must be integer constants", func.name()),
    }
}

fn scalar_str(v: &ColumnarValue, func: MaskFn) -> Result<String> {
    match v {
        ColumnarValue::Scalar(ScalarValue::Utf8(Some(s))) => Ok(s.clone()),
        _ => plan_err!("{}: parameters must be string constants", func.name()),
    }
}

fn usize_param(v: &ColumnarValue, func: MaskFn) -> Result<usize> {
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
fn map_strings(array: &ArrayRef, f: impl Fn(&str, &mut String)) -> Result<ArrayRef> {
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

fn year_start(days: i32) -> i32 {
    use chrono::{Datelike, NaiveDate};
    days.checked_add(DAYS_0000_TO_1970)
        .and_then(NaiveDate::from_num_days_from_ce_opt)
        .and_then(|d| NaiveDate::from_ymd_opt(d.year(), 1, 1))
        .map(|d| d.num_days_from_ce() - DAYS_0000_TO_1970)
        .unwrap_or(0)
}

fn month_start(days: i32) -> i32 {
    use chrono::{Datelike, NaiveDate};
    days.checked_add(DAYS_0000_TO_1970)
        .and_then(NaiveDate::from_num_days_from_ce_opt)
        .and_then(|d| NaiveDate::from_ymd_opt(d.year(), d.month(), 1))
        .map(|d| d.num_days_from_ce() - DAYS_0000_TO_1970)
        .unwrap_or(0)
}

/// `v` rounded to a multiple of `k` (half up); `None` when that multiple is outside `i64`.
fn round_to(v: i64, k: i64) -> Option<i64> {
    let (v, k) = (i128::from(v), i128::from(k));
    let r = v.rem_euclid(k);
    let base = v - r;
    let rounded = if r >= k / 2 && k > 1 { base + k } else { base };
    i64::try_from(rounded).ok()
}

/// The edges of `bucket`: 1 to 32 strictly increasing integers.
fn bucket_edges(args: &[MaskArg]) -> Option<Vec<i64>> {
    let edges: Vec<i64> = args
        .iter()
        .map(|a| match a {
            MaskArg::Int(i) => Some(*i),
            MaskArg::Str(_) => None,
        })
        .collect::<Option<_>>()?;
    let increasing = edges.windows(2).all(|w| w[0] < w[1]);
    ((1..=32).contains(&edges.len()) && increasing).then_some(edges)
}

fn bucket_edges_of(params: &[ColumnarValue], func: MaskFn) -> Result<Vec<i64>> {
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
fn bucket_labels(edges: &[i64], integers: bool) -> Vec<String> {
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
fn round_decimal(v: i128, k: i64, scale: i8) -> Option<i128> {
    let step = i128::from(k).checked_mul(10i128.checked_pow(u32::try_from(scale).ok()?)?)?;
    let r = v.rem_euclid(step);
    let base = v - r;
    Some(if r >= step - r {
        base.checked_add(step)?
    } else {
        base
    })
}

impl ScalarUDFImpl for MaskUdf {
    fn name(&self) -> &str {
        self.func.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let Some((first, params)) = arg_types.split_first() else {
            return plan_err!("{} needs a value argument", self.func.name());
        };
        let value = match self.func.value_kind() {
            ValueKind::Text => match first {
                DataType::LargeUtf8 | DataType::Utf8View => first.clone(),
                DataType::Utf8
                | DataType::Null
                | DataType::Int8
                | DataType::Int16
                | DataType::Int32
                | DataType::Int64
                | DataType::UInt8
                | DataType::UInt16
                | DataType::UInt32
                | DataType::UInt64 => DataType::Utf8,
                other => return plan_err!("{} applies to text, not {other}", self.func.name()),
            },
            ValueKind::Date => match first {
                DataType::Date32
                | DataType::Date64
                | DataType::Timestamp(_, _)
                | DataType::Null => DataType::Date32,
                other => return plan_err!("{} applies to dates, not {other}", self.func.name()),
            },
            ValueKind::Any => first.clone(),
            ValueKind::Number | ValueKind::NumberLabel => match first {
                t if t.is_integer() => DataType::Int64,
                DataType::Decimal128(_, _) if self.func.value_kind() == ValueKind::Number => {
                    first.clone()
                }
                t if t.is_floating() || matches!(t, DataType::Decimal128(_, _)) => {
                    DataType::Float64
                }
                DataType::Null => DataType::Int64,
                other => return plan_err!("{} applies to numbers, not {other}", self.func.name()),
            },
        };
        let mut out = vec![value];
        for p in params {
            out.push(match p {
                t if t.is_integer() => DataType::Int64,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
                other => {
                    return plan_err!("{}: unexpected parameter type {other}", self.func.name());
                }
            });
        }
        Ok(out)
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        let first = arg_types.first().cloned().unwrap_or(DataType::Null);
        Ok(match self.func.value_kind() {
            ValueKind::Text => match first {
                DataType::LargeUtf8 | DataType::Utf8View => first,
                _ => DataType::Utf8,
            },
            ValueKind::Any => first,
            ValueKind::Date => DataType::Date32,
            ValueKind::Number => arg_types.first().cloned().unwrap_or(DataType::Int64),
            ValueKind::NumberLabel => DataType::Utf8,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let Some((value, params)) = args.args.split_first() else {
            return exec_err!("{} needs a value argument", self.func.name());
        };
        let func = self.func;
        let array = value.to_array(rows)?;
        let out: ArrayRef = match (func, params) {
            (MaskFn::KeepFirstLast, [n, m]) => {
                let (n, m) = (usize_param(n, func)?, usize_param(m, func)?);
                map_strings(&array, |s, o| {
                    functions::keep_first_last(s, n, m, MASK_CHAR, o)
                })?
            }
            (MaskFn::MaskFirstLast, [n, m]) => {
                let (n, m) = (usize_param(n, func)?, usize_param(m, func)?);
                map_strings(&array, |s, o| {
                    functions::mask_first_last(s, n, m, MASK_CHAR, o)
                })?
            }
            (MaskFn::NameCn, []) => map_strings(&array, functions::name_cn)?,
            (MaskFn::PhoneCn, []) => map_strings(&array, functions::phone_cn)?,
            (MaskFn::IdCn, [profile]) => {
                let profile = scalar_str(profile, func)?;
                let Some((n, m)) = functions::id_cn_keep(&profile) else {
                    return plan_err!("id_cn: unknown profile '{profile}'");
                };
                map_strings(&array, |s, o| {
                    functions::keep_first_last(s, n, m, MASK_CHAR, o)
                })?
            }
            (MaskFn::AddressCn, [level]) => {
                let level_name = scalar_str(level, func)?;
                let Some(level) = AddressLevel::parse(&level_name) else {
                    return plan_err!("address_cn: unknown level '{level_name}'");
                };
                map_strings(&array, |s, o| functions::address_cn(s, level, o))?
            }
            (MaskFn::YearOnly, []) => {
                let dates = as_date32_array(&array)?;
                let out: Date32Array = dates.unary(year_start);
                Arc::new(out)
            }
            (MaskFn::RoundNum, [k]) => {
                let k = scalar_int(k, func)?;
                if k <= 0 {
                    return plan_err!("round_num: k must be positive");
                }
                match array.data_type() {
                    DataType::Int64 => {
                        let out: Int64Array = as_int64_array(&array)?.unary_opt(|v| round_to(v, k));
                        Arc::new(out)
                    }
                    DataType::Decimal128(p, scale) => {
                        let (p, scale) = (*p, *scale);
                        // Out of range gives NULL, never an error: masks must not fail on
                        // a value (a failure would tell something about it).
                        let out: Decimal128Array = array
                            .as_primitive::<Decimal128Type>()
                            .unary_opt(|v| round_decimal(v, k, scale));
                        Arc::new(out.with_precision_and_scale(p, scale)?)
                    }
                    _ => {
                        let kf = k as f64;
                        let out: Float64Array =
                            as_float64_array(&array)?.unary(|v| (v / kf).round() * kf);
                        Arc::new(out)
                    }
                }
            }
            (MaskFn::KeepRange, [x, y]) => {
                let (x, y) = (usize_param(x, func)?, usize_param(y, func)?);
                map_strings(&array, |s, o| functions::keep_range(s, x, y, MASK_CHAR, o))?
            }
            (MaskFn::MaskRange, [x, y]) => {
                let (x, y) = (usize_param(x, func)?, usize_param(y, func)?);
                map_strings(&array, |s, o| functions::mask_range(s, x, y, MASK_CHAR, o))?
            }
            (MaskFn::MaskBefore, [sep]) => {
                let sep = scalar_str(sep, func)?;
                map_strings(&array, |s, o| functions::mask_before(s, &sep, MASK_CHAR, o))?
            }
            (MaskFn::MaskAfter, [sep]) => {
                let sep = scalar_str(sep, func)?;
                map_strings(&array, |s, o| functions::mask_after(s, &sep, MASK_CHAR, o))?
            }
            (MaskFn::FixedMask, [k]) => {
                let k = usize_param(k, func)?;
                map_strings(&array, |_, o| o.extend(std::iter::repeat_n(MASK_CHAR, k)))?
            }
            (MaskFn::Redact, []) => map_strings(&array, functions::redact)?,
            (MaskFn::BankCard, []) => map_strings(&array, functions::bank_card)?,
            (MaskFn::PlateCn, []) => map_strings(&array, functions::plate_cn)?,
            (MaskFn::Email, []) => map_strings(&array, functions::email)?,
            (MaskFn::Ipv4, []) => map_strings(&array, functions::ipv4)?,
            (MaskFn::Ipv6, []) => map_strings(&array, functions::ipv6)?,
            (MaskFn::HashSha256, []) => map_strings(&array, |s, o| functions::sha256(s, "", o))?,
            (MaskFn::HashSha256, [salt]) => {
                let salt = scalar_str(salt, func)?;
                map_strings(&array, |s, o| functions::sha256(s, &salt, o))?
            }
            (MaskFn::AgeBand, [w]) => {
                let w = scalar_int(w, func)?;
                if w <= 0 {
                    return plan_err!("age_band: width must be positive");
                }
                let labels: StringArray = match array.data_type() {
                    DataType::Int64 => as_int64_array(&array)?
                        .iter()
                        .map(|v| v.map(|v| functions::age_band(v, w)))
                        .collect(),
                    _ => as_float64_array(&array)?
                        .iter()
                        .map(|v| v.map(|v| functions::age_band(v.floor() as i64, w)))
                        .collect(),
                };
                Arc::new(labels)
            }
            (MaskFn::TopBottomCode, [lo, hi]) => {
                let (lo, hi) = (scalar_int(lo, func)?, scalar_int(hi, func)?);
                match array.data_type() {
                    DataType::Int64 => {
                        let out: Int64Array =
                            as_int64_array(&array)?.unary(|v| v.clamp(lo, hi.max(lo)));
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
                            i128::from(hi.max(lo)).saturating_mul(unit),
                        );
                        let out: Decimal128Array = array
                            .as_primitive::<Decimal128Type>()
                            .unary(|v| v.clamp(lo, hi));
                        Arc::new(out.with_precision_and_scale(p, scale)?)
                    }
                    _ => {
                        let (lo, hi) = (lo as f64, hi as f64);
                        let out: Float64Array =
                            as_float64_array(&array)?.unary(|v| v.clamp(lo, hi.max(lo)));
                        Arc::new(out)
                    }
                }
            }
            (MaskFn::TruncDate, [unit]) => {
                let unit = scalar_str(unit, func)?;
                let dates = as_date32_array(&array)?;
                let out: Date32Array = match unit.as_str() {
                    "year" => dates.unary(year_start),
                    "month" => dates.unary(month_start),
                    "day" => dates.unary(|d| d),
                    other => return plan_err!("trunc_date: unknown unit '{other}'"),
                };
                Arc::new(out)
            }
            (MaskFn::Bucket, edges) if !edges.is_empty() => {
                let edges = bucket_edges_of(edges, func)?;
                let integers = array.data_type() == &DataType::Int64;
                let labels = bucket_labels(&edges, integers);
                // The bucket of v is the number of edges <= v.
                let label = |i: usize| labels.get(i).map(String::as_str);
                let out: StringArray = if integers {
                    as_int64_array(&array)?
                        .iter()
                        .map(|v| v.and_then(|v| label(edges.partition_point(|e| *e <= v))))
                        .collect()
                } else {
                    as_float64_array(&array)?
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
                Arc::new(out)
            }
            (MaskFn::Nullify, []) => new_null_array(array.data_type(), array.len()),
            (MaskFn::TypeDefault, []) => {
                let default =
                    ScalarValue::new_default(array.data_type())?.to_array_of_size(array.len())?;
                // Present values become the default; NULL stays NULL.
                let data = default
                    .to_data()
                    .into_builder()
                    .nulls(array.nulls().cloned())
                    .build()?;
                make_array(data)
            }
            _ => {
                return plan_err!(
                    "{}: wrong number of parameters ({})",
                    func.name(),
                    params.len()
                );
            }
        };
        Ok(ColumnarValue::Array(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_args_reports_usage() {
        assert!(
            MaskFn::KeepFirstLast
                .check_args(&[MaskArg::Int(3), MaskArg::Int(4)])
                .is_ok()
        );
        let err = MaskFn::KeepFirstLast
            .check_args(&[MaskArg::Int(3)])
            .err()
            .unwrap_or_default();
        assert!(err.contains("takes (n, m)"), "{err}");
        assert!(
            MaskFn::AddressCn
                .check_args(&[MaskArg::Str("street".into())])
                .is_err()
        );
        assert!(MaskFn::RoundNum.check_args(&[MaskArg::Int(0)]).is_err());
    }

    #[test]
    fn year_start_and_rounding() {
        // 2019-05-12 is day 18028 since the epoch; 2019-01-01 is 17897.
        assert_eq!(year_start(18028), 17897);
        assert_eq!(year_start(0), 0);
        assert_eq!(round_to(1234, 100), Some(1200));
        assert_eq!(round_to(1250, 100), Some(1300));
        assert_eq!(round_to(-1250, 100), Some(-1200));
        // Extremes give NULL, never an overflow.
        assert_eq!(round_to(i64::MAX, 1000), None);
        assert_eq!(round_to(i64::MIN + 1, 1000), None);
        assert_eq!(
            super::functions::age_band(i64::MAX, 7),
            "9223372036854775807-9223372036854775813"
        );
    }

    async fn eval(sql: &str) -> Vec<String> {
        let ctx = datafusion::prelude::SessionContext::new();
        for f in MaskFn::ALL {
            ctx.register_udf(f.udf().as_ref().clone());
        }
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let options = arrow::util::display::FormatOptions::default().with_null("NULL");
        let mut out = Vec::new();
        for b in &batches {
            for c in b.columns() {
                let f =
                    arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &options).unwrap();
                for r in 0..b.num_rows() {
                    out.push(f.value(r).to_string());
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn every_function_runs_in_sql_with_null_semantics() {
        let got = eval(
            "SELECT keep_first_last('13812341234', 3, 4), mask_first_last('abcdef', 1, 1),
                    name_cn('欧阳娜娜'), id_cn('110105194912310021', 'display'), phone_cn('13812341234'),
                    address_cn('天津市河西区友谊路10号', 'district'), year_only(DATE '2019-05-12'),
                    round_num(1234, 100), keep_range('abcdef', 1, 2), mask_range('abcdef', 1, 2),
                    mask_before('zs@gov.cn', '@'), mask_after('zs@gov.cn', '@'), fixed_mask('password', 6),
                    redact('Ab-12'), bank_card('6222021234567890123'), plate_cn('苏D4H7K0'),
                    email('zs@gov.cn'), ipv4('10.1.2.3'), ipv6('2001:db8:1:2::3'),
                    age_band(37, 10), top_bottom_code(250, 0, 120), trunc_date(DATE '2019-05-12', 'month'),
                    length(hash_sha256('x', 'salt'))",
        )
        .await;
        assert_eq!(
            got,
            vec![
                "138****1234",
                "*bcde*",
                "欧阳**",
                "1****************1",
                "138****1234",
                "天津市河西区",
                "2019-01-01",
                "1200",
                "*bc***",
                "a**def",
                "**@gov.cn",
                "zs@******",
                "******",
                "Xx-00",
                "622202*********0123",
                "苏D4***0",
                "z***@gov.cn",
                "10.1.2.0",
                "2001:db8:1::",
                "30-39",
                "120",
                "2019-05-01",
                "64",
            ]
        );
        let nulls = eval(
            "SELECT name_cn(CAST(NULL AS VARCHAR)), year_only(CAST(NULL AS DATE)), round_num(CAST(NULL AS BIGINT), 10), email(CAST(NULL AS VARCHAR))",
        )
        .await;
        assert_eq!(nulls, vec!["NULL"; 4]);
    }

    #[tokio::test]
    async fn string_masks_keep_the_string_type() {
        let got = eval(
            "SELECT arrow_typeof(name_cn(arrow_cast('张三丰', 'Utf8View'))),
                    name_cn(arrow_cast('张三丰', 'Utf8View')),
                    arrow_typeof(phone_cn(arrow_cast('13812341234', 'LargeUtf8'))),
                    phone_cn(arrow_cast('13812341234', 'LargeUtf8')),
                    arrow_typeof(keep_first_last('abc', 1, 1)),
                    keep_first_last(arrow_cast('一个非常长的、超过十二字节的字符串值', 'Utf8View'), 2, 2),
                    email(arrow_cast(NULL, 'Utf8View'))",
        )
        .await;
        assert_eq!(
            got,
            vec![
                "Utf8View",
                "张**",
                "LargeUtf8",
                "138****1234",
                "Utf8",
                "一个**************串值",
                "NULL"
            ]
        );
    }

    #[tokio::test]
    async fn nullify_type_default_bucket_and_decimals() {
        let got = eval(
            "SELECT nullify('secret'), nullify(42), type_default('secret'), type_default(42),
                    type_default(true), type_default(DATE '2019-05-12'), type_default(CAST(NULL AS INT)),
                    arrow_typeof(type_default(arrow_cast(7, 'Int16'))), arrow_typeof(nullify(DATE '2019-05-12')),
                    bucket(17, 18, 35, 60), bucket(18, 18, 35, 60), bucket(34, 18, 35, 60),
                    bucket(60, 18, 35, 60), bucket(99, 18, 35, 60), bucket(2.5, 0, 5),
                    bucket(CAST(NULL AS BIGINT), 0, 5), bucket(5, 5, 6, 10),
                    round_num(CAST(1234.56 AS DECIMAL(10, 2)), 100),
                    arrow_typeof(round_num(CAST(1234.56 AS DECIMAL(10, 2)), 100)),
                    top_bottom_code(CAST(250.5 AS DECIMAL(6, 1)), 0, 120)",
        )
        .await;
        assert_eq!(
            got,
            vec![
                "NULL",
                "NULL",
                "",
                "0",
                "false",
                "1970-01-01",
                "NULL",
                "Int16",
                "Date32",
                "<18",
                "18-34",
                "18-34",
                ">=60",
                ">=60",
                "[0, 5)",
                "NULL",
                "5",
                "1200.00",
                "Decimal128(10, 2)",
                "120.0",
            ]
        );
    }

    #[test]
    fn bucket_checks_its_edges() {
        assert!(
            MaskFn::Bucket
                .check_args(&[MaskArg::Int(18), MaskArg::Int(35)])
                .is_ok()
        );
        assert!(MaskFn::Bucket.check_args(&[]).is_err());
        assert!(
            MaskFn::Bucket
                .check_args(&[MaskArg::Int(35), MaskArg::Int(18)])
                .is_err()
        );
        assert!(
            MaskFn::Bucket
                .check_args(&[MaskArg::Int(1), MaskArg::Str("x".into())])
                .is_err()
        );
        assert!(MaskFn::Nullify.check_args(&[MaskArg::Int(1)]).is_err());
        assert_eq!(round_decimal(123_456, 100, 2), Some(120_000));
        assert_eq!(round_decimal(-5_000, 100, 2), Some(0));
    }

    #[test]
    fn new_functions_check_their_parameters() {
        assert!(
            MaskFn::KeepRange
                .check_args(&[MaskArg::Int(3), MaskArg::Int(1)])
                .is_err()
        );
        assert!(MaskFn::FixedMask.check_args(&[MaskArg::Int(0)]).is_err());
        assert!(
            MaskFn::TruncDate
                .check_args(&[MaskArg::Str("week".into())])
                .is_err()
        );
        assert!(MaskFn::HashSha256.check_args(&[]).is_ok());
        assert!(
            MaskFn::TopBottomCode
                .check_args(&[MaskArg::Int(5), MaskArg::Int(1)])
                .is_err()
        );
    }
}
