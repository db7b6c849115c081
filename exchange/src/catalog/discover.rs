//! PII discovery: sample a Parquet or CSV file's columns, detect personal-information types
//! with the validators, and suggest a classification level and a treatment. Agencies use it
//! to write `schemas/` for a new dataset (`exchange scan`).

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};

use super::{CatalogError, DataFormat, Dataset, Level, PiiType, SourcePos};
use crate::masking::functions::COMPOUND_SURNAMES;
use crate::masking::validate;

/// What discovery found in one column.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnFinding {
    /// Column name.
    pub name: String,
    /// Arrow type in the file.
    pub data_type: DataType,
    /// Schema type to declare (`utf8`, `int64`, ...).
    pub schema_type: &'static str,
    /// Detected PII type.
    pub pii: Option<PiiType>,
    /// Share of sampled non-null values that matched (1.0 for name-based detection).
    pub share: f64,
    /// Non-null values sampled.
    pub sampled: usize,
    /// Suggested classification level.
    pub level: Level,
    /// Suggested treatment for other agencies.
    pub treatment: &'static str,
    /// Suggested identity domain.
    pub domain: Option<&'static str>,
}

/// Minimum share of values that must validate for a type to be reported.
pub const MIN_SHARE: f64 = 0.8;

const COMMON_SURNAMES: &str = "王李张刘陈杨赵黄周吴徐孙胡朱高林何郭马罗梁宋郑谢韩唐冯于董萧程曹袁邓许傅沈曾彭吕苏卢蒋蔡贾丁魏薛叶阎余潘杜戴夏钟汪田任姜范方石姚谭廖邹熊金陆郝孔白崔康毛邱秦江史顾侯邵孟龙万段漕钱汤尹黎易常武乔贺赖龚文";

fn is_cn_name(s: &str) -> bool {
    let n = s.chars().count();
    if !(2..=4).contains(&n) || !s.chars().all(|c| ('\u{4e00}'..='\u{9fff}').contains(&c)) {
        return false;
    }
    COMPOUND_SURNAMES.iter().any(|c| s.starts_with(c))
        || s.chars()
            .next()
            .is_some_and(|c| COMMON_SURNAMES.contains(c))
}

fn is_cn_address(s: &str) -> bool {
    s.chars().count() >= 6
        && ["省", "市", "区", "县"].iter().any(|m| s.contains(m))
        && ["路", "街", "道", "号", "村", "巷", "弄", "区"]
            .iter()
            .any(|m| s.contains(m))
}

fn is_icd10(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 3
        && b[0].is_ascii_uppercase()
        && b[1].is_ascii_digit()
        && (b[2].is_ascii_digit() || b[2] == b'A' || b[2] == b'B')
        && (b.len() == 3
            || (b[3] == b'.' && b.len() <= 6 && b[4..].iter().all(|c| c.is_ascii_alphanumeric())))
}

/// Detectors of text columns, in order of precedence.
/// Recognises one kind of value.
type Detector = fn(&str) -> bool;

const TEXT_DETECTORS: &[(PiiType, Detector)] = &[
    (PiiType::ResidentId, validate::is_valid_id_cn),
    (PiiType::Uscc, validate::is_valid_uscc),
    (PiiType::Phone, |s| {
        validate::is_valid_mobile_cn(s) || validate::is_valid_landline_cn(s)
    }),
    (PiiType::BankCard, validate::is_valid_bank_card),
    (PiiType::Plate, validate::is_valid_plate_cn),
    (PiiType::Email, validate::is_valid_email),
    (PiiType::Name, is_cn_name),
    (PiiType::Address, is_cn_address),
    (PiiType::Health, is_icd10),
];

fn name_hint(name: &str, data_type: &DataType) -> Option<PiiType> {
    let n = name.to_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| n.contains(w));
    if matches!(
        data_type,
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _)
    ) && has(&["birth", "dob", "出生"])
    {
        return Some(PiiType::BirthDate);
    }
    if data_type.is_numeric() && has(&["wage", "salary", "income", "balance", "deposit"]) {
        return Some(PiiType::Financial);
    }
    if has(&["diagnos", "icd", "disease", "disability"]) {
        return Some(PiiType::Health);
    }
    None
}

/// Suggested (level, treatment, domain) of a PII type (masking.md, classification defaults).
pub fn suggestion(pii: Option<PiiType>) -> (Level, &'static str, Option<&'static str>) {
    match pii {
        Some(PiiType::ResidentId) => (Level::General3, "join_key(person)", Some("person")),
        Some(PiiType::Uscc) => (Level::General1, "plain", Some("enterprise")),
        Some(PiiType::Phone) => (Level::General3, "mask(phone_cn)", Some("phone")),
        Some(PiiType::BankCard) => (Level::General4, "mask(bank_card)", None),
        Some(PiiType::Plate) => (Level::General3, "mask(plate_cn)", None),
        Some(PiiType::Email) => (Level::General3, "mask(email)", None),
        Some(PiiType::Name) => (Level::General3, "mask(name_cn)", None),
        Some(PiiType::Address) => (Level::General3, "mask(address_cn, 'district')", None),
        Some(PiiType::BirthDate) => (Level::General3, "mask(year_only)", None),
        Some(PiiType::Health) | Some(PiiType::Financial) => {
            (Level::General4, "aggregate_only(5)", None)
        }
        None => (Level::General2, "plain", None),
    }
}

/// The treatment to suggest for a column of `level` where `suggested` was found, within
/// the level rules `policy check` applies (engine/levels.rs): core never leaves its agency,
/// important data only aggregated, general-4 and general-3 never plain.
fn within_level(level: Level, suggested: &'static str) -> &'static str {
    match level {
        Level::Core => "none: core data never leaves its agency",
        Level::Important => "aggregate_only(5)",
        Level::General4 | Level::General3 if suggested == "plain" => "aggregate_only(5)",
        _ => suggested,
    }
}

/// Findings over a declared table, under the levels its schema declares: a declared level
/// stricter than the suggested one stands, and the suggested treatment keeps to the level's
/// rule (a core column is suggested to no one; an important one aggregated only).
pub fn under_declared_levels(findings: &mut [ColumnFinding], dataset: &crate::catalog::Dataset) {
    for f in findings.iter_mut() {
        if let Some(declared) = dataset.column(&f.name).and_then(|c| c.level)
            && declared.strictness() > f.level.strictness()
        {
            f.level = declared;
        }
        f.treatment = within_level(f.level, f.treatment);
    }
}

fn schema_type(t: &DataType) -> &'static str {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "utf8",
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::UInt8 | DataType::UInt16 => {
            "int32"
        }
        t if t.is_integer() => "int64",
        t if t.is_floating() || matches!(t, DataType::Decimal128(_, _)) => "float64",
        DataType::Boolean => "boolean",
        DataType::Date32 | DataType::Date64 => "date",
        DataType::Timestamp(_, _) => "timestamp",
        _ => "utf8",
    }
}

/// Take batches until `sample` rows are read.
fn take_rows<E: std::fmt::Display>(
    reader: impl Iterator<Item = Result<RecordBatch, E>>,
    sample: usize,
) -> Result<Vec<RecordBatch>, String> {
    let mut batches = Vec::new();
    let mut rows = 0;
    for b in reader {
        let b = b.map_err(|e| e.to_string())?;
        rows += b.num_rows();
        batches.push(b);
        if rows >= sample {
            break;
        }
    }
    Ok(batches)
}

fn read_sample(path: &Path, sample: usize) -> Result<Vec<RecordBatch>, String> {
    let open = || std::fs::File::open(path).map_err(|e| e.to_string());
    if path.extension().is_some_and(|e| e == "csv") {
        let format = arrow::csv::reader::Format::default().with_header(true);
        let (schema, _) = format
            .infer_schema(open()?, Some(sample))
            .map_err(|e| e.to_string())?;
        let reader = arrow::csv::ReaderBuilder::new(Arc::new(schema))
            .with_format(format)
            .build(open()?)
            .map_err(|e| e.to_string())?;
        take_rows(reader, sample)
    } else {
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(open()?)
                .map_err(|e| format!("not valid Parquet: {e}"))?
                .with_batch_size(sample.clamp(1, 8192))
                .build()
                .map_err(|e| e.to_string())?;
        take_rows(reader, sample)
    }
}

/// Sample up to `sample` rows of a Parquet or CSV file and classify each column.
pub fn scan_file(path: &Path, sample: usize) -> Result<Vec<ColumnFinding>, CatalogError> {
    let batches = read_sample(path, sample).map_err(|message| CatalogError::Data {
        pos: SourcePos {
            path: path.to_path_buf(),
            line: 0,
        },
        table: path.display().to_string(),
        message,
    })?;
    Ok(classify(&batches, sample))
}

/// Sample up to `sample` rows of a dataset on an object store (read with its agency's
/// credentials) and classify each column. The store's own words never appear in errors.
pub async fn scan_remote(
    dataset: &Dataset,
    data_root: &Path,
    stores: &super::Stores,
    sample: usize,
) -> Result<Vec<ColumnFinding>, CatalogError> {
    use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionContext};
    let location = dataset.resolve_location(data_root);
    let err = |message: String| CatalogError::Data {
        pos: dataset.pos.clone(),
        table: dataset.qualified_name(),
        message,
    };
    let said = |e: datafusion::error::DataFusionError| {
        err(match super::store_client::describe_in(&e) {
            Some(s) => format!("{location} cannot be read: {s}"),
            None => format!("{location} cannot be read: {}", e.strip_backtrace()),
        })
    };
    let ctx = SessionContext::new();
    let scan = stores
        .register(ctx.runtime_env().as_ref(), &dataset.agency, &location)
        .map_err(|e| err(e.to_string()))?;
    let frame = match dataset.format {
        DataFormat::Parquet => ctx.read_parquet(scan, ParquetReadOptions::default()).await,
        DataFormat::Csv => {
            ctx.read_csv(scan, CsvReadOptions::new().has_header(true))
                .await
        }
    }
    .map_err(said)?;
    let batches = frame
        .limit(0, Some(sample.max(1)))
        .map_err(said)?
        .collect()
        .await
        .map_err(said)?;
    Ok(classify(&batches, sample.max(1)))
}

/// Classify each column of sampled rows.
pub fn classify(batches: &[RecordBatch], sample: usize) -> Vec<ColumnFinding> {
    let Some(first) = batches.first() else {
        return vec![];
    };
    let schema = first.schema();
    let options = FormatOptions::default();
    let mut findings = Vec::new();
    for (i, field) in schema.fields().iter().enumerate() {
        let mut values = Vec::new();
        for b in batches {
            let col = b.column(i);
            let Ok(f) = ArrayFormatter::try_new(col.as_ref(), &options) else {
                continue;
            };
            for r in 0..col.len() {
                if col.is_valid(r) && values.len() < sample {
                    values.push(f.value(r).to_string());
                }
            }
        }
        let text = matches!(
            field.data_type(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        );
        let mut pii = None;
        let mut share = 0.0;
        if text && !values.is_empty() {
            for (t, detect) in TEXT_DETECTORS {
                let hits = values.iter().filter(|v| detect(v)).count();
                let s = hits as f64 / values.len() as f64;
                if s >= MIN_SHARE {
                    pii = Some(*t);
                    share = s;
                    break;
                }
            }
        }
        if pii.is_none()
            && let Some(t) = name_hint(field.name(), field.data_type())
        {
            pii = Some(t);
            share = 1.0;
        }
        let (level, treatment, domain) = suggestion(pii);
        findings.push(ColumnFinding {
            name: field.name().clone(),
            data_type: field.data_type().clone(),
            schema_type: schema_type(field.data_type()),
            pii,
            share,
            sampled: values.len(),
            level,
            treatment,
            domain,
        });
    }
    findings
}

fn pii_name(p: PiiType) -> &'static str {
    match p {
        PiiType::ResidentId => "resident_id",
        PiiType::Name => "name",
        PiiType::Phone => "phone",
        PiiType::Address => "address",
        PiiType::BirthDate => "birth_date",
        PiiType::BankCard => "bank_card",
        PiiType::Uscc => "uscc",
        PiiType::Plate => "plate",
        PiiType::Email => "email",
        PiiType::Health => "health",
        PiiType::Financial => "financial",
    }
}

/// The findings as an aligned table.
pub fn render_table(findings: &[ColumnFinding]) -> String {
    let mut out = format!(
        "{:<20} {:<10} {:<12} {:>6} {:<10} {}\n",
        "column", "type", "pii", "share", "level", "suggested treatment"
    );
    for f in findings {
        let _ = writeln!(
            out,
            "{:<20} {:<10} {:<12} {:>5.0}% {:<10} {}",
            crate::text::escape(&f.name),
            f.schema_type,
            f.pii.map(pii_name).unwrap_or("-"),
            f.share * 100.0,
            f.level.as_str(),
            f.treatment
        );
    }
    out
}

/// A TOML basic string: quotes and backslashes escaped, and every control or
/// bidirectional-override character as a `\u` escape, so names from a file can neither
/// inject lines into the snippet nor act on the reader's terminal.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if crate::text::escape(c.encode_utf8(&mut [0; 4])).len() > c.len_utf8() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The findings as a ready-to-edit `schemas/` snippet.
pub fn render_schema(
    agency: &str,
    table: &str,
    location: &str,
    findings: &[ColumnFinding],
) -> String {
    let mut out = format!(
        "# Generated by `exchange scan`: review every line before use.\nagency = {}\n\n[[dataset]]\nname = {}\nlocation = {}\n",
        toml_str(agency),
        toml_str(table),
        toml_str(location)
    );
    if let Some(id) = findings.iter().find(|f| f.pii == Some(PiiType::ResidentId)) {
        let _ = writeln!(out, "entity = {}", toml_str(&id.name));
    }
    for f in findings {
        let _ = write!(
            out,
            "\n[[dataset.column]]\nname = {}\ntype = \"{}\"\n",
            toml_str(&f.name),
            f.schema_type
        );
        if let Some(p) = f.pii {
            let _ = writeln!(
                out,
                "pii = \"{}\"  # {:.0}% of sampled values",
                pii_name(p),
                f.share * 100.0
            );
        }
        let _ = writeln!(out, "level = \"{}\"", f.level.as_str());
        if let Some(d) = f.domain {
            let _ = writeln!(out, "domain = \"{d}\"");
        }
        if f.pii.is_some() {
            let _ = writeln!(
                out,
                "# suggested treatment for other agencies: {}",
                f.treatment
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn declared_levels_bound_the_suggested_treatment() {
        use super::{Level, within_level};
        assert_eq!(
            within_level(Level::Core, "mask(phone_cn)"),
            "none: core data never leaves its agency"
        );
        assert_eq!(within_level(Level::Important, "plain"), "aggregate_only(5)");
        assert_eq!(within_level(Level::General4, "plain"), "aggregate_only(5)");
        assert_eq!(within_level(Level::General3, "plain"), "aggregate_only(5)");
        assert_eq!(
            within_level(Level::General3, "mask(phone_cn)"),
            "mask(phone_cn)"
        );
        assert_eq!(within_level(Level::General2, "plain"), "plain");
    }

    #[test]
    fn names_from_files_stay_inside_their_toml_string() {
        // Review 3: a column name from an agency's file injected lines into the snippet
        // and terminal controls into the operator's terminal.
        let name = "a\"\nentity = \"x\u{1b}]0;t\u{7}\u{202e}\\";
        let quoted = toml_str(name);
        assert!(
            !quoted.contains('\n') && !quoted.contains('\u{1b}') && !quoted.contains('\u{202e}')
        );
        let parsed: toml::Table = toml::from_str(&format!("name = {quoted}")).unwrap();
        assert_eq!(parsed["name"].as_str(), Some(name));
    }

    use super::*;

    #[test]
    fn detectors() {
        assert!(is_cn_name("张三"));
        assert!(is_cn_name("欧阳娜娜"));
        assert!(!is_cn_name("张"));
        assert!(!is_cn_name("hexi"));
        assert!(is_cn_address("天津市河西区友谊路10号"));
        assert!(!is_cn_address("天津"));
        assert!(is_icd10("I10"));
        assert!(is_icd10("E11.9"));
        assert!(!is_icd10("hexi"));
    }
}
