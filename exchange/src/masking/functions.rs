//! Character-level desensitization primitives over `&str`.
//!
//! Everything here works on Unicode scalar values (chars), never bytes, and never returns
//! its input unchanged merely because it is short: when the kept parts would cover the
//! whole value, every char is masked (masking.md, "General rules").

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
    let len = input.chars().count();
    if n + m >= len {
        out.extend(std::iter::repeat_n(mask, len));
        return;
    }
    for (i, c) in input.chars().enumerate() {
        out.push(if i < n || i >= len - m { c } else { mask });
    }
}

/// Replace the first `n` and last `m` chars with `mask`; when they cover the value, mask all.
pub fn mask_first_last(input: &str, n: usize, m: usize, mask: char, out: &mut String) {
    let len = input.chars().count();
    if n + m >= len {
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
    let digits_only: String = input.chars().filter(|c| c.is_ascii_digit()).collect();
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
    let _ = digits_only;
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
