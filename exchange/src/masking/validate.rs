//! Validators of Chinese identifiers and common formats (masking.md, "Validation
//! algorithms"): recognise values, check digits, and generate valid test data.

/// GB 11643 weights of the first 17 digits of a resident ID.
const ID_WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const ID_CHECK: &[u8; 11] = b"10X98765432";

/// Province prefixes of resident IDs (71 Taiwan, 81 Hong Kong, 82 Macao, 83 special).
fn valid_province(code: u32) -> bool {
    matches!(code, 11..=15 | 21..=23 | 31..=37 | 41..=46 | 50..=54 | 61..=65 | 71 | 81 | 82 | 83)
}

fn valid_date(year: u32, month: u32, day: u32) -> bool {
    chrono::NaiveDate::from_ymd_opt(year as i32, month, day).is_some()
}

fn digits(s: &[u8]) -> Option<u32> {
    s.iter().try_fold(0u32, |acc, b| {
        b.is_ascii_digit().then(|| acc * 10 + u32::from(b - b'0'))
    })
}

/// The check char of the first 17 digits of a resident ID.
pub fn id_check_char(first17: &[u8]) -> Option<u8> {
    if first17.len() != 17 {
        return None;
    }
    let mut sum = 0u32;
    for (b, w) in first17.iter().zip(ID_WEIGHTS) {
        if !b.is_ascii_digit() {
            return None;
        }
        sum += u32::from(b - b'0') * w;
    }
    Some(ID_CHECK[(sum % 11) as usize])
}

/// A resident ID (GB 11643-1999): 18 chars with a valid date, province and check char (a
/// lower-case x is accepted), or a 15-digit legacy number with a valid date.
pub fn is_valid_id_cn(s: &str) -> bool {
    let b = s.as_bytes();
    match b.len() {
        18 => {
            let Some(province) = digits(&b[0..2]) else {
                return false;
            };
            let (Some(_), Some(year), Some(month), Some(day), Some(_)) = (
                digits(&b[2..6]),
                digits(&b[6..10]),
                digits(&b[10..12]),
                digits(&b[12..14]),
                digits(&b[14..17]),
            ) else {
                return false;
            };
            let check = b[17].to_ascii_uppercase();
            b[0] != b'0'
                && valid_province(province)
                && (1800..2100).contains(&year)
                && valid_date(year, month, day)
                && id_check_char(&b[..17]) == Some(check)
        }
        15 => {
            let (Some(province), Some(year), Some(month), Some(day)) = (
                digits(&b[0..2]),
                digits(&b[6..8]),
                digits(&b[8..10]),
                digits(&b[10..12]),
            ) else {
                return false;
            };
            b.iter().all(u8::is_ascii_digit)
                && b[0] != b'0'
                && valid_province(province)
                && valid_date(1900 + year, month, day)
        }
        _ => false,
    }
}

/// Upgrade a 15-digit legacy ID to 18 digits (insert "19", append the check char).
pub fn id15_to_18(s: &str) -> Option<String> {
    if s.len() != 15 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let first17 = format!("{}19{}", &s[..6], &s[6..]);
    let check = id_check_char(first17.as_bytes())?;
    Some(format!("{first17}{}", char::from(check)))
}

/// The charset of unified social credit codes (value = index).
pub const USCC_CHARSET: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
const USCC_WEIGHTS: [u32; 17] = [
    1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28,
];

/// The check char of the first 17 chars of a USCC.
pub fn uscc_check_char(first17: &[u8]) -> Option<u8> {
    if first17.len() != 17 {
        return None;
    }
    let mut sum = 0u32;
    for (b, w) in first17.iter().zip(USCC_WEIGHTS) {
        let v = USCC_CHARSET.iter().position(|c| c == b)? as u32;
        sum += v * w;
    }
    let c = (31 - sum % 31) % 31;
    Some(USCC_CHARSET[c as usize])
}

/// A unified social credit code (GB 32100-2015).
pub fn is_valid_uscc(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 18
        && matches!(b[0], b'1'..=b'9' | b'A'..=b'H' | b'J'..=b'N' | b'P'..=b'R' | b'T' | b'U' | b'W'..=b'Y')
        && b[2..8].iter().all(u8::is_ascii_digit)
        && uscc_check_char(&b[..17]) == Some(b[17])
}

/// A mainland mobile number, optionally with +86 / 86 / 0086.
pub fn is_valid_mobile_cn(s: &str) -> bool {
    let rest = s
        .strip_prefix("+86")
        .or_else(|| s.strip_prefix("0086"))
        .or_else(|| s.strip_prefix("86").filter(|r| r.len() == 11))
        .unwrap_or(s);
    let b = rest.as_bytes();
    b.len() == 11
        && b[0] == b'1'
        && (b'3'..=b'9').contains(&b[1])
        && b.iter().all(u8::is_ascii_digit)
}

/// A landline: area code (010, 02x, 0[3-9]xx), optional '-', 6 to 8 digits.
pub fn is_valid_landline_cn(s: &str) -> bool {
    let b = s.as_bytes();
    if b.first() != Some(&b'0') || b.len() < 2 {
        return false;
    }
    let area = if s.starts_with("010") || (b[1] == b'2') {
        3
    } else if (b'3'..=b'9').contains(&b[1]) {
        4
    } else {
        return false;
    };
    if b.len() < area || !b[..area].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let rest = &b[area..];
    let rest = rest.strip_prefix(b"-").unwrap_or(rest);
    (6..=8).contains(&rest.len()) && rest.iter().all(u8::is_ascii_digit)
}

/// Whether the digits pass the Luhn check.
pub fn luhn_ok(digits: &[u8]) -> bool {
    match digits.split_last() {
        Some((last, payload)) => luhn_check_digit(payload) == *last,
        None => false,
    }
}

/// The Luhn check digit to append to `payload`.
pub fn luhn_check_digit(payload: &[u8]) -> u8 {
    let mut sum = 0u32;
    for (i, b) in payload.iter().rev().enumerate() {
        let mut d = u32::from(b - b'0');
        if i % 2 == 0 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    b'0' + ((10 - sum % 10) % 10) as u8
}

/// A bank card: 13 to 19 digits passing Luhn.
pub fn is_valid_bank_card(s: &str) -> bool {
    let b = s.as_bytes();
    (13..=19).contains(&b.len()) && b.iter().all(u8::is_ascii_digit) && luhn_ok(b)
}

const PLATE_PROVINCES: &str = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼";

fn plate_char(c: char) -> bool {
    (c.is_ascii_uppercase() && c != 'I' && c != 'O') || c.is_ascii_digit()
}

/// A licence plate, ordinary (7 chars) or new-energy (8 chars).
pub fn is_valid_plate_cn(s: &str) -> bool {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() < 7 || !PLATE_PROVINCES.contains(chars[0]) || !chars[1].is_ascii_uppercase() {
        return false;
    }
    let rest = &chars[2..];
    match rest.len() {
        5 => {
            rest[..4].iter().all(|c| plate_char(*c))
                && (plate_char(rest[4]) || "挂学警港澳".contains(rest[4]))
        }
        6 => {
            let energy = |c: char| "DABCEFGHJK".contains(c);
            (energy(rest[0]) && plate_char(rest[1]) && rest[2..].iter().all(char::is_ascii_digit))
                || (rest[..5].iter().all(char::is_ascii_digit) && energy(rest[5]))
        }
        _ => false,
    }
}

/// An e-mail address: a local part and a dotted domain.
pub fn is_valid_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._%+-".contains(c));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        && labels
            .last()
            .is_some_and(|t| t.len() >= 2 && t.chars().all(|c| c.is_ascii_alphabetic()));
    local_ok && domain_ok
}

/// An IPv4 address in dotted decimal.
pub fn is_valid_ipv4(s: &str) -> bool {
    s.parse::<std::net::Ipv4Addr>().is_ok()
}

/// An IPv6 address.
pub fn is_valid_ipv6(s: &str) -> bool {
    s.parse::<std::net::Ipv6Addr>().is_ok()
}

/// The validators, as SQL functions analysts may call: `is_valid_id_cn(x)` and so on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Validator {
    /// Resident ID.
    IdCn,
    /// Unified social credit code.
    Uscc,
    /// Mobile phone.
    MobileCn,
    /// Landline phone.
    LandlineCn,
    /// Bank card (Luhn).
    BankCard,
    /// Licence plate.
    PlateCn,
    /// E-mail.
    Email,
    /// IPv4.
    Ipv4,
    /// IPv6.
    Ipv6,
}

impl Validator {
    /// Every validator.
    pub const ALL: &'static [Validator] = &[
        Validator::IdCn,
        Validator::Uscc,
        Validator::MobileCn,
        Validator::LandlineCn,
        Validator::BankCard,
        Validator::PlateCn,
        Validator::Email,
        Validator::Ipv4,
        Validator::Ipv6,
    ];

    /// SQL name.
    pub fn name(self) -> &'static str {
        match self {
            Validator::IdCn => "is_valid_id_cn",
            Validator::Uscc => "is_valid_uscc",
            Validator::MobileCn => "is_valid_mobile_cn",
            Validator::LandlineCn => "is_valid_landline_cn",
            Validator::BankCard => "is_valid_bank_card",
            Validator::PlateCn => "is_valid_plate_cn",
            Validator::Email => "is_valid_email",
            Validator::Ipv4 => "is_valid_ipv4",
            Validator::Ipv6 => "is_valid_ipv6",
        }
    }

    /// Check one value.
    pub fn check(self, s: &str) -> bool {
        match self {
            Validator::IdCn => is_valid_id_cn(s),
            Validator::Uscc => is_valid_uscc(s),
            Validator::MobileCn => is_valid_mobile_cn(s),
            Validator::LandlineCn => is_valid_landline_cn(s),
            Validator::BankCard => is_valid_bank_card(s),
            Validator::PlateCn => is_valid_plate_cn(s),
            Validator::Email => is_valid_email(s),
            Validator::Ipv4 => is_valid_ipv4(s),
            Validator::Ipv6 => is_valid_ipv6(s),
        }
    }

    /// The scalar UDF.
    pub fn udf(self) -> std::sync::Arc<datafusion::logical_expr::ScalarUDF> {
        std::sync::Arc::new(datafusion::logical_expr::ScalarUDF::new_from_impl(
            ValidatorUdf {
                validator: self,
                signature: datafusion::logical_expr::Signature::user_defined(
                    datafusion::logical_expr::Volatility::Immutable,
                ),
            },
        ))
    }
}

/// A validator as a DataFusion UDF: text in, boolean out, NULL stays NULL.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ValidatorUdf {
    validator: Validator,
    signature: datafusion::logical_expr::Signature,
}

impl datafusion::logical_expr::ScalarUDFImpl for ValidatorUdf {
    fn name(&self) -> &str {
        self.validator.name()
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn coerce_types(
        &self,
        arg_types: &[arrow::datatypes::DataType],
    ) -> datafusion::common::Result<Vec<arrow::datatypes::DataType>> {
        if arg_types.len() != 1 {
            return datafusion::common::plan_err!("{} takes one argument", self.name());
        }
        Ok(vec![arrow::datatypes::DataType::Utf8])
    }

    fn return_type(
        &self,
        _arg_types: &[arrow::datatypes::DataType],
    ) -> datafusion::common::Result<arrow::datatypes::DataType> {
        Ok(arrow::datatypes::DataType::Boolean)
    }

    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::common::Result<datafusion::logical_expr::ColumnarValue> {
        let [value] = args.args.as_slice() else {
            return datafusion::common::exec_err!("{} takes one argument", self.name());
        };
        let array = value.to_array(args.number_rows)?;
        let strings = datafusion::common::cast::as_string_array(&array)?;
        let out: arrow::array::BooleanArray = strings
            .iter()
            .map(|v| v.map(|s| self.validator.check(s)))
            .collect();
        Ok(datafusion::logical_expr::ColumnarValue::Array(
            std::sync::Arc::new(out),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_ids() {
        assert!(is_valid_id_cn("11010519491231002X"));
        assert!(is_valid_id_cn("11010519491231002x"), "lower-case x");
        assert!(!is_valid_id_cn("110105194912310021"), "wrong check char");
        assert!(!is_valid_id_cn("11010519490230002X"), "no Feb 30");
        assert!(!is_valid_id_cn("99010519491231002X"), "no province 99");
        assert!(!is_valid_id_cn(""));
        assert!(is_valid_id_cn("110105491231002"), "15-digit legacy");
        assert!(!is_valid_id_cn("110105491331002"), "month 13");
        let upgraded = id15_to_18("110105491231002").unwrap();
        assert_eq!(upgraded.len(), 18);
        assert!(is_valid_id_cn(&upgraded));
    }

    #[test]
    fn credit_codes() {
        assert!(is_valid_uscc("91350100M000100Y43"));
        assert!(!is_valid_uscc("91350100M000100Y44"));
        assert!(!is_valid_uscc("91350100M000100Y4"));
        assert!(
            !is_valid_uscc("91350100M0001O0Y43"),
            "O is not in the charset"
        );
    }

    #[test]
    fn phones() {
        assert!(is_valid_mobile_cn("13812341234"));
        assert!(is_valid_mobile_cn("+8613812341234"));
        assert!(is_valid_mobile_cn("008613812341234"));
        assert!(is_valid_mobile_cn("8613812341234"));
        assert!(!is_valid_mobile_cn("12812341234"));
        assert!(!is_valid_mobile_cn("1381234123"));
        assert!(is_valid_landline_cn("022-23456789"));
        assert!(is_valid_landline_cn("01012345678"));
        assert!(is_valid_landline_cn("0571-8888888"));
        assert!(!is_valid_landline_cn("022-123"));
        assert!(!is_valid_landline_cn("13812341234"));
    }

    #[test]
    fn bank_cards() {
        assert!(is_valid_bank_card("4111111111111111"));
        assert!(!is_valid_bank_card("4111111111111112"));
        assert!(!is_valid_bank_card("411111111111"));
        let payload = b"622202123456789012";
        let mut card = payload.to_vec();
        card.push(luhn_check_digit(payload));
        assert!(luhn_ok(&card));
    }

    #[test]
    fn plates_emails_ips() {
        assert!(is_valid_plate_cn("津A12345"));
        assert!(is_valid_plate_cn("苏D4H7K0"));
        assert!(is_valid_plate_cn("京AD12345"), "new energy, small car");
        assert!(is_valid_plate_cn("京A12345D"), "new energy, large car");
        assert!(is_valid_plate_cn("粤B1234学"));
        assert!(!is_valid_plate_cn("津AI2345"), "no I");
        assert!(!is_valid_plate_cn("X津12345"));
        assert!(is_valid_email("zs@gov.cn"));
        assert!(!is_valid_email("zs@gov"));
        assert!(!is_valid_email("@gov.cn"));
        assert!(is_valid_ipv4("10.1.2.3"));
        assert!(!is_valid_ipv4("10.1.2.256"));
        assert!(is_valid_ipv6("2001:db8::1"));
    }
}
