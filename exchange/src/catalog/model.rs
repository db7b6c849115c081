//! The catalog's model: agencies, datasets, columns and their types.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::Deserialize;

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

impl Level {
    /// The level as written in schema files.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Core => "core",
            Level::Important => "important",
            Level::General4 => "general-4",
            Level::General3 => "general-3",
            Level::General2 => "general-2",
            Level::General1 => "general-1",
        }
    }

    /// How strict the level is: core the strictest (5), general-1 the least (0).
    pub fn strictness(self) -> u8 {
        match self {
            Level::Core => 5,
            Level::Important => 4,
            Level::General4 => 3,
            Level::General3 => 2,
            Level::General2 => 1,
            Level::General1 => 0,
        }
    }
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
    /// Whether this is the agency's register of residents' objections (`objections = true`):
    /// rows of the agency's other tables about a resident who objects to the statement's
    /// purpose are excluded at source.
    pub objections: bool,
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
    pub(super) agencies: BTreeMap<String, Option<String>>,
    pub(super) datasets: Vec<Dataset>,
}

impl Catalog {
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
}
