//! Masking functions as DataFusion scalar UDFs: type coercion, return types, and the
//! dispatch from a [`MaskFn`] and its literal parameters to its kernel.

use arrow::array::{ArrayRef, new_null_array};
use arrow::datatypes::DataType;
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use super::functions::{self, AddressLevel, MASK_CHAR};
use super::kernels::{
    age_band, bucket, bucket_edges_of, map_strings, round_num, scalar_int, scalar_str,
    top_bottom_code, trunc_date, type_default, usize_param,
};
use super::spec::{MaskFn, ValueKind};

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
            (MaskFn::YearOnly, []) => trunc_date(&array, "year")?,
            (MaskFn::RoundNum, [k]) => round_num(&array, scalar_int(k, func)?)?,
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
            (MaskFn::AgeBand, [w]) => age_band(&array, scalar_int(w, func)?)?,
            (MaskFn::TopBottomCode, [lo, hi]) => {
                top_bottom_code(&array, scalar_int(lo, func)?, scalar_int(hi, func)?)?
            }
            (MaskFn::TruncDate, [unit]) => trunc_date(&array, &scalar_str(unit, func)?)?,
            (MaskFn::Bucket, edges) if !edges.is_empty() => {
                bucket(&array, &bucket_edges_of(edges, func)?)?
            }
            (MaskFn::Nullify, []) => new_null_array(array.data_type(), array.len()),
            (MaskFn::TypeDefault, []) => type_default(&array)?,
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
    use super::super::kernels::{round_decimal, round_to, year_start};
    use super::super::spec::MaskArg;
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
