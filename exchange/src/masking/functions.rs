//! Character-level desensitization primitives over `&str`.
//!
//! Everything here works on Unicode scalar values (chars), never bytes, and never returns
//! its input unchanged merely because it is short: when the kept parts would cover the
//! whole value, every char is masked (masking.md, "General rules").

use std::fmt::Write as _;

/// Mask char used when a function is not told otherwise.
pub const MASK_CHAR: char = '*';

/// Compound Chinese surnames kept whole by [`name_cn`].
pub const COMPOUND_SURNAMES: &[&str] = &[
    "欧阳", "司马", "诸葛", "上官", "东方", "皇甫", "尉迟", "公孙", "慕容", "长孙", "宇文", "司徒",
    "夏侯", "轩辕", "令狐", "端木", "独孤", "南宫", "西门", "百里", "呼延", "万俟", "单于", "闻人",
    "申屠", "澹台", "公冶", "太史", "濮阳", "钟离",
];

/// Keep the first `n` and last `m` chars, replace the ones between with `mask`.
/// When `n + m >= len` every char is masked (ShardingSphere returns plaintext there: a leak).
pub fn keep_first_last(input: &str, n: usize, m: usize, mask: char, out: &mut String) {
    if input.is_ascii() {
        // Identifiers are ASCII: slice by bytes instead of walking chars.
        let len = input.len();
        if n.saturating_add(m) >= len {
            out.extend(std::iter::repeat_n(mask, len));
        } else {
            out.push_str(&input[..n]);
            out.extend(std::iter::repeat_n(mask, len - n - m));
            out.push_str(&input[len - m..]);
        }
        return;
    }
    let len = input.chars().count();
    if n.saturating_add(m) >= len {
        out.extend(std::iter::repeat_n(mask, len));
        return;
    }
    for (i, c) in input.chars().enumerate() {
        out.push(if i < n || i >= len - m { c } else { mask });
    }
}

/// Replace the first `n` and last `m` chars with `mask`; when they cover the value (or
/// would mask nothing), mask all.
pub fn mask_first_last(input: &str, n: usize, m: usize, mask: char, out: &mut String) {
    if input.is_ascii() {
        let len = input.len();
        if n.saturating_add(m) >= len || n + m == 0 {
            out.extend(std::iter::repeat_n(mask, len));
        } else {
            out.extend(std::iter::repeat_n(mask, n));
            out.push_str(&input[n..len - m]);
            out.extend(std::iter::repeat_n(mask, m));
        }
        return;
    }
    let len = input.chars().count();
    if n.saturating_add(m) >= len || n + m == 0 {
        out.extend(std::iter::repeat_n(mask, len));
        return;
    }
    for (i, c) in input.chars().enumerate() {
        out.push(if i < n || i >= len - m { mask } else { c });
    }
}

/// Keep the surname (compound surnames whole), mask the given name char by char.
/// A one-char value is masked whole; a value that is only a compound surname keeps its first char.
pub fn name_cn(input: &str, out: &mut String) {
    let len = input.chars().count();
    if len <= 1 {
        out.extend(std::iter::repeat_n(MASK_CHAR, len));
        return;
    }
    let compound = COMPOUND_SURNAMES.iter().any(|s| input.starts_with(s));
    let keep = if compound && len > 2 { 2 } else { 1 };
    for (i, c) in input.chars().enumerate() {
        out.push(if i < keep { c } else { MASK_CHAR });
    }
}

/// Resident ID profiles of `id_cn`: what stays visible.
pub fn id_cn_keep(profile: &str) -> Option<(usize, usize)> {
    match profile {
        "display" => Some((1, 1)),
        "operator" => Some((6, 4)),
        _ => None,
    }
}

/// Chinese phone numbers: mobiles keep 3 + 4; landlines (leading 0) keep the area code and
/// the last 2 digits; anything else is treated like a mobile.
pub fn phone_cn(input: &str, out: &mut String) {
    if input.starts_with('0') && !input.starts_with("0086") {
        let area = if let Some(pos) = input.find('-') {
            input[..pos].chars().count() + 1
        } else if input.starts_with("010") || input.starts_with("02") {
            3
        } else {
            4
        };
        keep_first_last(input, area, 2, MASK_CHAR, out);
        return;
    }
    keep_first_last(input, 3, 4, MASK_CHAR, out);
}

/// Generalisation levels of `address_cn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressLevel {
    /// Province or municipality (天津市).
    Province,
    /// Prefecture-level city (for municipalities, the same as the province).
    City,
    /// District or county.
    District,
}

impl AddressLevel {
    /// Parse `province`, `city` or `district`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "province" => Some(Self::Province),
            "city" => Some(Self::City),
            "district" => Some(Self::District),
            _ => None,
        }
    }
}

const MUNICIPALITIES: &[&str] = &["北京市", "天津市", "上海市", "重庆市"];

/// Cut a Chinese address to the given administrative level. An address whose level cannot
/// be recognised is hidden whole (`***`) rather than returned as it is.
pub fn address_cn(input: &str, level: AddressLevel, out: &mut String) {
    let province_end = if let Some(m) = MUNICIPALITIES.iter().find(|m| input.starts_with(*m)) {
        Some(m.len())
    } else {
        ["省", "自治区", "特别行政区"]
            .iter()
            .filter_map(|suffix| input.find(suffix).map(|p| p + suffix.len()))
            .min()
    };
    let Some(province_end) = province_end else {
        out.push_str("***");
        return;
    };
    let municipality = MUNICIPALITIES.iter().any(|m| input.starts_with(*m));
    let city_end = if municipality {
        Some(province_end)
    } else {
        ["市", "自治州", "地区", "盟"]
            .iter()
            .filter_map(|s| {
                input[province_end..]
                    .find(s)
                    .map(|p| province_end + p + s.len())
            })
            .min()
    };
    let end = match level {
        AddressLevel::Province => Some(province_end),
        AddressLevel::City => city_end,
        AddressLevel::District => city_end.and_then(|c| {
            ["区", "县", "旗", "市"]
                .iter()
                .filter_map(|s| input[c..].find(s).map(|p| c + p + s.len()))
                .min()
        }),
    };
    match end {
        Some(e) => out.push_str(&input[..e]),
        None => out.push_str("***"),
    }
}

/// Keep the chars at 0-based inclusive positions [x, y], mask the others. When the kept
/// range covers the whole value, every char is masked.
pub fn keep_range(input: &str, x: usize, y: usize, mask: char, out: &mut String) {
    let len = input.chars().count();
    if len == 0 || (x == 0 && y + 1 >= len) {
        out.extend(std::iter::repeat_n(mask, len));
        return;
    }
    for (i, c) in input.chars().enumerate() {
        out.push(if i >= x && i <= y { c } else { mask });
    }
}

/// Mask the chars at 0-based inclusive positions [x, y]. When the range misses the value
/// (it is shorter than x), every char is masked rather than returning it unchanged.
pub fn mask_range(input: &str, x: usize, y: usize, mask: char, out: &mut String) {
    let len = input.chars().count();
    if x >= len {
        out.extend(std::iter::repeat_n(mask, len));
        return;
    }
    for (i, c) in input.chars().enumerate() {
        out.push(if i >= x && i <= y { mask } else { c });
    }
}

/// Mask the chars before the first `sep`; without `sep`, or with nothing before it, mask all.
pub fn mask_before(input: &str, sep: &str, mask: char, out: &mut String) {
    match input.find(sep) {
        Some(p) if p > 0 && !sep.is_empty() => {
            out.extend(std::iter::repeat_n(mask, input[..p].chars().count()));
            out.push_str(&input[p..]);
        }
        _ => out.extend(std::iter::repeat_n(mask, input.chars().count())),
    }
}

/// Mask the chars after the first `sep`; without `sep`, or with nothing after it, mask all.
pub fn mask_after(input: &str, sep: &str, mask: char, out: &mut String) {
    match input.find(sep) {
        Some(p) if p + sep.len() < input.len() && !sep.is_empty() => {
            let end = p + sep.len();
            out.push_str(&input[..end]);
            out.extend(std::iter::repeat_n(mask, input[end..].chars().count()));
        }
        _ => out.extend(std::iter::repeat_n(mask, input.chars().count())),
    }
}

/// Ranger's MASK: lower-case letters become x, upper-case X, digits 0; other letters
/// (CJK included) become the mask char; punctuation and spaces are kept.
pub fn redact(input: &str, out: &mut String) {
    for c in input.chars() {
        out.push(if c.is_ascii_lowercase() {
            'x'
        } else if c.is_ascii_uppercase() {
            'X'
        } else if c.is_ascii_digit() {
            '0'
        } else if c.is_alphanumeric() {
            MASK_CHAR
        } else {
            c
        });
    }
}

/// Bank card: keep the BIN (first 6) and the last 4.
pub fn bank_card(input: &str, out: &mut String) {
    keep_first_last(input, 6, 4, MASK_CHAR, out);
}

/// Licence plate: keep the province char, the authority letter, the next char and the last
/// char (苏D4H7K0 -> 苏D4***0).
pub fn plate_cn(input: &str, out: &mut String) {
    keep_first_last(input, 3, 1, MASK_CHAR, out);
}

/// E-mail: the first char of the local part, then `***` (hiding its length), then the
/// whole domain. Without '@', everything is masked.
pub fn email(input: &str, out: &mut String) {
    match input.split_once('@') {
        Some((local, domain)) if !local.is_empty() => {
            if let Some(first) = local.chars().next() {
                out.push(first);
            }
            out.push_str("***@");
            out.push_str(domain);
        }
        _ => out.extend(std::iter::repeat_n(MASK_CHAR, input.chars().count())),
    }
}

/// IPv4 to its /24 network (10.1.2.3 -> 10.1.2.0); anything else is hidden.
pub fn ipv4(input: &str, out: &mut String) {
    match input.parse::<std::net::Ipv4Addr>() {
        Ok(ip) => {
            let [a, b, c, _] = ip.octets();
            let _ = write!(out, "{a}.{b}.{c}.0");
        }
        Err(_) => out.push_str("***"),
    }
}

/// IPv6 to its /48 network (2001:db8:1:2::3 -> 2001:db8:1::); anything else is hidden.
pub fn ipv6(input: &str, out: &mut String) {
    match input.parse::<std::net::Ipv6Addr>() {
        Ok(ip) => {
            let s = ip.segments();
            let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0);
            let _ = write!(out, "{net}");
        }
        Err(_) => out.push_str("***"),
    }
}

/// Hex SHA-256 of salt then value. Unkeyed hashes of identifiers can be brute-forced:
/// offered for compatibility; prefer pseudonym.
pub fn sha256(input: &str, salt: &str, out: &mut String) {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(salt.as_bytes());
    ctx.update(input.as_bytes());
    out.push_str(&hex::encode(ctx.finish().as_ref()));
}

/// Age band of width `w`: 37 with w = 10 -> "30-39".
pub fn age_band(v: i64, w: i64) -> String {
    // In i128 no value of the band overflows: a mask never fails on a value.
    let (v, w) = (i128::from(v), i128::from(w));
    let lo = v.div_euclid(w) * w;
    format!("{lo}-{}", lo + w - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(f: impl Fn(&mut String)) -> String {
        let mut s = String::new();
        f(&mut s);
        s
    }

    #[test]
    fn keep_first_last_matches_catalogue_example() {
        assert_eq!(
            run(|o| keep_first_last("13812341234", 3, 4, '*', o)),
            "138****1234"
        );
    }

    #[test]
    fn short_values_are_masked_whole_never_returned() {
        assert_eq!(run(|o| keep_first_last("1234567", 3, 4, '*', o)), "*******");
        assert_eq!(run(|o| keep_first_last("12", 3, 4, '*', o)), "**");
        assert_eq!(run(|o| mask_first_last("abc", 2, 1, '*', o)), "***");
        assert_eq!(run(|o| keep_first_last("", 3, 4, '*', o)), "");
    }

    #[test]
    fn works_on_chars_not_bytes() {
        assert_eq!(
            run(|o| keep_first_last("张三丰李四", 1, 1, '*', o)),
            "张***四"
        );
        // Non-BMP characters count as one char each.
        assert_eq!(run(|o| keep_first_last("𠀀𠀁𠀂", 1, 1, '*', o)), "𠀀*𠀂");
    }

    #[test]
    fn name_cn_keeps_surnames() {
        assert_eq!(run(|o| name_cn("张三丰", o)), "张**");
        assert_eq!(run(|o| name_cn("欧阳娜娜", o)), "欧阳**");
        assert_eq!(run(|o| name_cn("欧阳", o)), "欧*");
        assert_eq!(run(|o| name_cn("王", o)), "*");
        assert_eq!(run(|o| name_cn("", o)), "");
    }

    #[test]
    fn id_cn_display_profile() {
        let (n, m) = id_cn_keep("display").unwrap_or((0, 0));
        assert_eq!(
            run(|o| keep_first_last("110105194912310021", n, m, '*', o)),
            "1****************1"
        );
        assert!(id_cn_keep("bogus").is_none());
    }

    #[test]
    fn phone_cn_mobile_and_landline() {
        assert_eq!(run(|o| phone_cn("13812341234", o)), "138****1234");
        assert_eq!(run(|o| phone_cn("022-23456789", o)), "022-******89");
        assert_eq!(run(|o| phone_cn("02223456789", o)), "022******89");
    }

    #[test]
    fn catalogue_examples() {
        assert_eq!(run(|o| mask_before("zs@gov.cn", "@", '*', o)), "**@gov.cn");
        assert_eq!(run(|o| mask_before("zsgov.cn", "@", '*', o)), "********");
        assert_eq!(run(|o| mask_after("zs@gov.cn", "@", '*', o)), "zs@******");
        assert_eq!(run(|o| redact("Ab-12", o)), "Xx-00");
        assert_eq!(run(|o| redact("张三", o)), "**");
        assert_eq!(
            run(|o| bank_card("6222021234567890123", o)),
            "622202*********0123"
        );
        assert_eq!(run(|o| plate_cn("苏D4H7K0", o)), "苏D4***0");
        assert_eq!(run(|o| email("zs@gov.cn", o)), "z***@gov.cn");
        assert_eq!(run(|o| email("no-at-sign", o)), "**********");
        assert_eq!(run(|o| ipv4("10.1.2.3", o)), "10.1.2.0");
        assert_eq!(run(|o| ipv6("2001:db8:1:2::3", o)), "2001:db8:1::");
        assert_eq!(run(|o| keep_range("abcdef", 1, 2, '*', o)), "*bc***");
        assert_eq!(run(|o| keep_range("abc", 0, 5, '*', o)), "***");
        assert_eq!(run(|o| mask_range("abcdef", 1, 2, '*', o)), "a**def");
        assert_eq!(run(|o| mask_range("ab", 5, 6, '*', o)), "**");
        assert_eq!(age_band(37, 10), "30-39");
        assert_eq!(age_band(-1, 10), "-10--1");
        assert_eq!(
            run(|o| sha256("abc", "", o)),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn address_cn_levels() {
        let a = "天津市河西区友谊路10号";
        assert_eq!(
            run(|o| address_cn(a, AddressLevel::District, o)),
            "天津市河西区"
        );
        assert_eq!(run(|o| address_cn(a, AddressLevel::City, o)), "天津市");
        let b = "江苏省南京市玄武区中山路1号";
        assert_eq!(run(|o| address_cn(b, AddressLevel::Province, o)), "江苏省");
        assert_eq!(
            run(|o| address_cn(b, AddressLevel::City, o)),
            "江苏省南京市"
        );
        assert_eq!(
            run(|o| address_cn(b, AddressLevel::District, o)),
            "江苏省南京市玄武区"
        );
        assert_eq!(
            run(|o| address_cn("somewhere", AddressLevel::District, o)),
            "***"
        );
    }
}
