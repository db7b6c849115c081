//! Schema file model and loading.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::Deserialize;
use toml::Spanned;

use super::CatalogError;

/// A position in a configuration file, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePos {
    /// The file.
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
}

impl fmt::Display for SourcePos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.path.display(), self.line)
    }
}

/// 1-based line of a byte offset.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len()))
        .map(|t| t.matches('\n').count() + 1)
        .unwrap_or(1)
}

/// Column types a schema may declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// UTF-8 text.
    Utf8,
    /// 32-bit integer.
    Int32,
    /// 64-bit integer.
    Int64,
    /// 64-bit float.
    Float64,
    /// Boolean.
    Boolean,
    /// Calendar date.
    Date,
    /// Timestamp, microseconds, no time zone.
    Timestamp,
}

impl ColumnType {
    /// The Arrow type of the column.
    pub fn data_type(self) -> DataType {
        match self {
            ColumnType::Utf8 => DataType::Utf8,
            ColumnType::Int32 => DataType::Int32,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Boolean => DataType::Boolean,
            ColumnType::Date => DataType::Date32,
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        }
    }
}

/// Personal-information types a column may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiType {
    /// Resident ID number (GB 11643).
    ResidentId,
    /// Personal name.
    Name,
    /// Phone number.
    Phone,
    /// Street address.
    Address,
    /// Date of birth.
    BirthDate,
    /// Bank card number.
    BankCard,
    /// Unified social credit code.
    Uscc,
    /// Licence plate.
    Plate,
    /// E-mail address.
    Email,
    /// Health or medical information (sensitive PI).
    Health,
    /// Financial information (sensitive PI).
    Financial,
}

/// Classification levels (Data Security Law, GB/T 43697-2024).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum Level {
    /// Core data.
    #[serde(rename = "core")]
    Core,
    /// Important data.
    #[serde(rename = "important")]
    Important,
    /// Sensitive personal information.
    #[serde(rename = "general-4")]
    General4,
    /// Identifying personal information.
    #[serde(rename = "general-3")]
    General3,
    /// Internal.
    #[serde(rename = "general-2")]
    General2,
    /// Public.
    #[serde(rename = "general-1")]
    General1,
}

/// Storage format of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// Apache Parquet.
    #[default]
    Parquet,
    /// CSV with a header row.
    Csv,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgencyFile {
    agency: Spanned<String>,
    title: Option<String>,
    #[serde(default)]
    dataset: Vec<DatasetFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatasetFile {
    name: Spanned<String>,
    location: String,
    #[serde(default)]
    format: DataFormat,
    description: Option<String>,
    entity: Option<Spanned<String>>,
    export_k: Option<Spanned<u32>>,
    #[serde(default)]
    export_k_action: KAction,
    #[serde(default)]
    column: Vec<ColumnFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ColumnFile {
    name: Spanned<String>,
    #[serde(rename = "type")]
    ty: ColumnType,
    pii: Option<PiiType>,
    level: Option<Level>,
    domain: Option<String>,
    description: Option<String>,
    #[serde(default)]
    nullable: Option<bool>,
    #[serde(default)]
    quasi_identifier: bool,
}

/// What an export does when an equivalence class over quasi-identifiers is below k.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KAction {
    /// Drop the rows of the small classes and say so in the audit record.
    #[default]
    Suppress,
    /// Refuse the export.
    Refuse,
}

/// The k-anonymity requirement of a dataset's exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportK {
    /// Minimum rows per equivalence class over the exported quasi-identifiers.
    pub k: u32,
    /// What happens to smaller classes.
    pub action: KAction,
}

/// A declared column.
#[derive(Debug, Clone)]
pub struct ColumnDef {
    /// Column name.
    pub name: String,
    /// Declared type.
    pub ty: ColumnType,
    /// PII type, if personal information.
    pub pii: Option<PiiType>,
    /// Classification level.
    pub level: Option<Level>,
    /// Identity domain (values of the same domain identify the same entities).
    pub domain: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// Part of a quasi-identifier (birth year, district, gender...): exports are
    /// k-anonymous over such columns.
    pub quasi_identifier: bool,
    /// Where declared.
    pub pos: SourcePos,
}

/// A dataset (table) of an agency.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Owning agency.
    pub agency: String,
    /// Table name within the agency.
    pub name: String,
    /// Location as written: a path relative to the data root, an absolute path or a URL.
    pub location: String,
    /// Storage format.
    pub format: DataFormat,
    /// Free text.
    pub description: Option<String>,
    /// The column identifying the data subject, used to count distinct entities.
    pub entity: Option<String>,
    /// k-anonymity of exports over this table's quasi-identifiers.
    pub export_k: Option<ExportK>,
    /// Declared columns, in order.
    pub columns: Vec<ColumnDef>,
    /// Where declared.
    pub pos: SourcePos,
}

impl Dataset {
    /// `agency.table`.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.agency, self.name)
    }

    /// The column of that name.
    pub fn column(&self, name: &str) -> Option<&ColumnDef> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The declared Arrow schema (the raw schema every scan reads).
    pub fn arrow_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|c| Field::new(&c.name, c.ty.data_type(), true))
                .collect::<Vec<_>>(),
        ))
    }

    /// Resolve the location against a data root: a local path, or a URL as written.
    pub fn resolve_location(&self, data_root: &Path) -> String {
        if self.location.contains("://") {
            self.location.clone()
        } else {
            let p = Path::new(&self.location);
            let full = if p.is_absolute() {
                p.to_path_buf()
            } else {
                data_root.join(p)
            };
            full.to_string_lossy().into_owned()
        }
    }
}

/// All agencies' datasets.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    agencies: BTreeMap<String, Option<String>>,
    datasets: Vec<Dataset>,
}

impl Catalog {
    /// Load every `*.toml` file of `dir`, in name order.
    pub fn load(dir: &Path) -> Result<Self, CatalogError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CatalogError::Io { path, source }
        };
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        let mut catalog = Catalog::default();
        for path in files {
            let text = fs::read_to_string(&path).map_err(io(&path))?;
            catalog.add_file(&path, &text)?;
        }
        Ok(catalog)
    }

    /// Parse one schema file's text into the catalog.
    pub fn add_file(&mut self, path: &Path, text: &str) -> Result<(), CatalogError> {
        let file: AgencyFile = toml::from_str(text).map_err(|e| CatalogError::Parse {
            path: path.to_path_buf(),
            line: e.span().map(|s| line_of(text, s.start)).unwrap_or(1),
            message: e.message().to_string(),
        })?;
        let pos = |span: std::ops::Range<usize>| SourcePos {
            path: path.to_path_buf(),
            line: line_of(text, span.start),
        };
        let agency = file.agency.get_ref().clone();
        if !is_identifier(&agency) {
            return Err(CatalogError::Invalid {
                pos: pos(file.agency.span()),
                message: format!("agency name '{agency}' must be lower-case letters, digits and _"),
            });
        }
        if self.agencies.contains_key(&agency) {
            return Err(CatalogError::Invalid {
                pos: pos(file.agency.span()),
                message: format!("agency '{agency}' is declared twice"),
            });
        }
        self.agencies.insert(agency.clone(), file.title);
        for ds in file.dataset {
            let name = ds.name.get_ref().clone();
            let ds_pos = pos(ds.name.span());
            if !is_identifier(&name) {
                return Err(CatalogError::Invalid {
                    pos: ds_pos,
                    message: format!(
                        "table name '{name}' must be lower-case letters, digits and _"
                    ),
                });
            }
            if self.dataset(&agency, &name).is_some() {
                return Err(CatalogError::Invalid {
                    pos: ds_pos,
                    message: format!("table {agency}.{name} is declared twice"),
                });
            }
            if ds.column.is_empty() {
                return Err(CatalogError::Invalid {
                    pos: ds_pos,
                    message: format!("table {agency}.{name} declares no columns"),
                });
            }
            let mut columns: Vec<ColumnDef> = Vec::new();
            for c in ds.column {
                let cpos = pos(c.name.span());
                let cname = c.name.into_inner();
                if columns.iter().any(|x| x.name == cname) {
                    return Err(CatalogError::Invalid {
                        pos: cpos,
                        message: format!("column {agency}.{name}.{cname} is declared twice"),
                    });
                }
                let _ = c.nullable;
                columns.push(ColumnDef {
                    name: cname,
                    ty: c.ty,
                    pii: c.pii,
                    level: c.level,
                    domain: c.domain,
                    description: c.description,
                    quasi_identifier: c.quasi_identifier,
                    pos: cpos,
                });
            }
            let entity = match ds.entity {
                Some(e) => {
                    let epos = pos(e.span());
                    let e = e.into_inner();
                    if !columns.iter().any(|c| c.name == e) {
                        return Err(CatalogError::Invalid {
                            pos: epos,
                            message: format!(
                                "entity column '{e}' is not a column of {agency}.{name}"
                            ),
                        });
                    }
                    Some(e)
                }
                None => None,
            };
            let export_k = match ds.export_k {
                None => None,
                Some(k) if *k.get_ref() < 2 => {
                    return Err(CatalogError::Invalid {
                        pos: pos(k.span()),
                        message: format!(
                            "export_k of {agency}.{name} must be at least 2 (every class of one row identifies it)"
                        ),
                    });
                }
                // Classes count people: the guard needs to know whose each row is.
                Some(k) if entity.is_none() => {
                    return Err(CatalogError::Invalid {
                        pos: pos(k.span()),
                        message: format!(
                            "export_k of {agency}.{name} needs the dataset's `entity` (classes count the people rows belong to)"
                        ),
                    });
                }
                Some(k) => Some(ExportK {
                    k: k.into_inner(),
                    action: ds.export_k_action,
                }),
            };
            self.datasets.push(Dataset {
                agency: agency.clone(),
                name,
                location: ds.location,
                format: ds.format,
                description: ds.description,
                entity,
                export_k,
                columns,
                pos: ds_pos,
            });
        }
        Ok(())
    }

    /// Agency names with their titles.
    pub fn agencies(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.agencies
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
    }

    /// Whether the agency is declared.
    pub fn has_agency(&self, agency: &str) -> bool {
        self.agencies.contains_key(agency)
    }

    /// Every dataset.
    pub fn datasets(&self) -> &[Dataset] {
        &self.datasets
    }

    /// The dataset `agency.name`.
    pub fn dataset(&self, agency: &str, name: &str) -> Option<&Dataset> {
        self.datasets
            .iter()
            .find(|d| d.agency == agency && d.name == name)
    }

    /// Check that each dataset's files exist and hold its declared columns with their
    /// types. Returns every problem found.
    pub fn check_data(&self, data_root: &Path) -> Vec<CatalogError> {
        self.datasets
            .iter()
            .filter_map(|d| check_dataset(d, data_root).err())
            .collect()
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// The files behind a local location: the file itself or the data files in a directory.
pub(crate) fn local_files(location: &Path, ext: &str) -> std::io::Result<Vec<PathBuf>> {
    if location.is_dir() {
        let mut files: Vec<PathBuf> = fs::read_dir(location)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect();
        files.sort();
        Ok(files)
    } else {
        fs::metadata(location)?;
        Ok(vec![location.to_path_buf()])
    }
}

fn check_dataset(d: &Dataset, data_root: &Path) -> Result<(), CatalogError> {
    let err = |message: String| CatalogError::Data {
        pos: d.pos.clone(),
        table: d.qualified_name(),
        message,
    };
    let location = d.resolve_location(data_root);
    if location.contains("://") && !location.starts_with("file://") {
        // Remote stores are checked when first scanned.
        return Ok(());
    }
    let path = PathBuf::from(location.trim_start_matches("file://"));
    let ext = match d.format {
        DataFormat::Parquet => "parquet",
        DataFormat::Csv => "csv",
    };
    let files = local_files(&path, ext)
        .map_err(|e| err(format!("data file {} cannot be read: {e}", path.display())))?;
    let Some(first) = files.first() else {
        return Err(err(format!("no .{ext} files in {}", path.display())));
    };
    if d.format == DataFormat::Csv {
        return Ok(());
    }
    let file = fs::File::open(first)
        .map_err(|e| err(format!("data file {} cannot be read: {e}", first.display())))?;
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| {
            err(format!(
                "data file {} is not valid Parquet: {e}",
                first.display()
            ))
        })?;
    let actual = builder.schema();
    for c in &d.columns {
        match actual.field_with_name(&c.name) {
            Err(_) => {
                return Err(err(format!(
                    "column {} is declared at {} but missing from {}",
                    c.name,
                    c.pos,
                    first.display()
                )));
            }
            Ok(f) => {
                let want = c.ty.data_type();
                let got = f.data_type();
                let compatible = got == &want
                    || (matches!(want, DataType::Utf8)
                        && matches!(got, DataType::LargeUtf8 | DataType::Utf8View))
                    || (matches!(want, DataType::Timestamp(_, _))
                        && matches!(got, DataType::Timestamp(_, _)));
                if !compatible {
                    return Err(err(format!(
                        "column {} is declared {:?} at {} but {} holds {got}",
                        c.name,
                        c.ty,
                        c.pos,
                        first.display()
                    )));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Catalog, CatalogError> {
        let mut c = Catalog::default();
        c.add_file(Path::new("schemas/x.toml"), text).map(|_| c)
    }

    const OK: &str = r#"
agency = "police"
[[dataset]]
name = "residents"
location = "police/residents.parquet"
entity = "person_id"
[[dataset.column]]
name = "person_id"
type = "utf8"
pii = "resident_id"
level = "general-3"
domain = "person"
"#;

    #[test]
    fn loads_a_valid_file() {
        let c = load(OK).unwrap();
        let d = c.dataset("police", "residents").unwrap();
        assert_eq!(d.columns[0].pii, Some(PiiType::ResidentId));
        assert_eq!(d.pos.line, 4);
    }

    #[test]
    fn unknown_key_names_file_and_line() {
        let text = OK.replace("domain = \"person\"", "domian = \"person\"");
        let err = load(&text).unwrap_err().to_string();
        assert!(err.starts_with("schemas/x.toml:12:"), "{err}");
        assert!(err.contains("domian"), "{err}");
    }

    #[test]
    fn unknown_type_is_an_error() {
        let err = load(&OK.replace("\"utf8\"", "\"varchar\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("varchar") && err.contains(":9:"), "{err}");
    }

    #[test]
    fn bad_entity_is_an_error() {
        let err = load(&OK.replace("entity = \"person_id\"", "entity = \"pid\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("entity column 'pid'"), "{err}");
    }

    #[test]
    fn missing_file_names_table_and_path() {
        let c = load(OK).unwrap();
        let errs = c.check_data(Path::new("/nonexistent-root"));
        assert_eq!(errs.len(), 1);
        let msg = errs[0].to_string();
        assert!(
            msg.contains("police.residents")
                && msg.contains("/nonexistent-root/police/residents.parquet"),
            "{msg}"
        );
    }
}
