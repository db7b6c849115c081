//! The masking functions the exchange offers: names, parameters and what they apply to.
//!
//! A treatment `mask(keep_first_last, 3, 4)` becomes the expression
//! `keep_first_last(col, 3, 4)`: parameters travel as literal arguments so that plans and
//! EXPLAIN name them, and they are checked when the policy loads ([`MaskFn::check_args`]).

use std::sync::Arc;

use datafusion::common::ScalarValue;
use datafusion::logical_expr::ScalarUDF;

use super::functions::{self, AddressLevel};
use super::udf::MaskUdf;

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

    /// Whether the function takes no parameters.
    fn parameterless(self) -> bool {
        matches!(
            self,
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
                | MaskFn::TypeDefault
        )
    }

    /// Check a policy's parameters; the message says what is expected.
    pub fn check_args(self, args: &[MaskArg]) -> std::result::Result<(), String> {
        let usage = match self {
            MaskFn::KeepFirstLast | MaskFn::MaskFirstLast => "(n, m) with n, m >= 0",
            MaskFn::KeepRange | MaskFn::MaskRange => "(x, y) with 0 <= x <= y",
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
            _ => "no parameters",
        };
        let ok = match (self, args) {
            (MaskFn::KeepFirstLast, [MaskArg::Int(n), MaskArg::Int(m)]) => *n >= 0 && *m >= 0,
            (MaskFn::MaskFirstLast, [MaskArg::Int(n), MaskArg::Int(m)]) => {
                *n >= 0 && *m >= 0 && (*n >= 1 || *m >= 1)
            }
            (f, []) if f.parameterless() => true,
            (MaskFn::IdCn, [MaskArg::Str(p)]) => functions::id_cn_keep(p).is_some(),
            (MaskFn::AddressCn, [MaskArg::Str(l)]) => AddressLevel::parse(l).is_some(),
            (MaskFn::RoundNum, [MaskArg::Int(k)]) => *k > 0,
            (MaskFn::KeepRange | MaskFn::MaskRange, [MaskArg::Int(x), MaskArg::Int(y)]) => {
                *x >= 0 && x <= y
            }
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

/// The edges of `bucket`: 1 to 32 strictly increasing integers.
pub(super) fn bucket_edges(args: &[MaskArg]) -> Option<Vec<i64>> {
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
