//! Residents' objections applied at source (`catalog::Register`).
//!
//! A table subject to its agency's register is read with one more condition beside the
//! owner's row filter, inside the same barrier: no column of the register's domain names a
//! resident who objects to the statement's purpose. The register is read afresh when each
//! statement's scan is planned, so an objection recorded now applies to the next statement;
//! a register that cannot be read refuses the table (never "no objections").

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::Mutex;

use arrow::array::{Array, AsArray};
use datafusion::catalog::Session;
use datafusion::common::{Column, DataFusionError, Result, ScalarValue, TableReference};
use datafusion::datasource::TableProvider;
use datafusion::logical_expr::{Expr, lit};

use super::tables::{DataUnavailable, RawTable};
use crate::catalog::{Dataset, PURPOSE_COLUMN, PiiType, Register};

/// The register of objections as one governed table of its agency applies it.
#[derive(Debug)]
pub struct Objections {
    /// `agency.register`.
    register: String,
    /// The register's files.
    source: Box<RawTable>,
    /// The register's key column.
    key: String,
    /// The statement's purpose.
    purpose: String,
    /// Every declared purpose: a register row naming another is malformed.
    declared: BTreeSet<String>,
    /// Whether the key holds resident ID numbers (GB 11643), checked and matched in both
    /// cases of their check character.
    resident_ids: bool,
    /// The governed table's columns naming residents, qualified by the table.
    columns: Vec<Column>,
    /// The condition made from the register's local file as it was: kept while the file
    /// stays the same one (review 51: a large register was read and checked again by every
    /// scan of every statement).
    cached: Mutex<Option<(FileStamp, Option<Expr>)>>,
}

/// What identifies one version of a local file: replaced (renamed over) or rewritten, one
/// of these changes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

impl Objections {
    /// The register as it applies to `table` for `purpose`, read from `location`; None when
    /// the table has no column of the register's domain.
    pub fn try_new(
        register: Register<'_>,
        location: &str,
        table: &Dataset,
        purpose: &str,
        declared: &BTreeSet<String>,
    ) -> Result<Option<Self>> {
        let names = register.subject_columns(table);
        if names.is_empty() {
            return Ok(None);
        }
        let table_ref = TableReference::partial(table.agency.clone(), table.name.clone());
        Ok(Some(Self {
            register: register.dataset.qualified_name(),
            source: Box::new(RawTable::try_new(
                register.dataset,
                location,
                BTreeSet::new(),
                None,
            )?),
            key: register.key.name.clone(),
            purpose: purpose.to_string(),
            declared: declared.clone(),
            resident_ids: register.key.pii == Some(PiiType::ResidentId),
            columns: names
                .iter()
                .map(|n| Column::new(Some(table_ref.clone()), n))
                .collect(),
            cached: Mutex::new(None),
        }))
    }

    /// `agency.register`.
    pub fn register(&self) -> &str {
        &self.register
    }

    /// Raw columns of the governed table the exclusion reads.
    pub fn column_names(&self) -> Vec<String> {
        self.columns.iter().map(|c| c.name.clone()).collect()
    }

    /// The condition rows must meet: for each column naming residents, null or no objector
    /// to the purpose. None when nobody objects to it. Reads the register now, unless it is
    /// a local file still the same as when last read.
    pub async fn condition(&self, state: &dyn Session) -> Result<Option<Expr>> {
        let stamp = match self.source.local_path() {
            Some(path) if path.is_dir() => {
                return Err(self.unreadable(
                    "a register of objections is one Parquet file, and its location is a directory"
                        .into(),
                ));
            }
            Some(path) => FileStamp::of(path),
            None => None,
        };
        if let Some(stamp) = &stamp
            && let Ok(cached) = self.cached.lock()
            && let Some((was, condition)) = cached.as_ref()
            && was == stamp
        {
            return Ok(condition.clone());
        }
        let objectors = self.objectors(state).await.map_err(|e| {
            // A store's failure is told by kind, as for any table (`engine::errors`).
            if from_store(&e) {
                return e;
            }
            let cause = match e.find_root() {
                DataFusionError::External(x) => match x.downcast_ref::<DataUnavailable>() {
                    Some(d) => d.cause.clone(),
                    None => "its files cannot be read".into(),
                },
                _ => "its files cannot be read".into(),
            };
            self.unreadable(cause)
        })?;
        let condition = if objectors.is_empty() {
            None
        } else {
            let list: Vec<Expr> = objectors.into_iter().map(lit).collect();
            self.columns
                .iter()
                .map(|c| {
                    let c = Expr::Column(c.clone());
                    c.clone().is_null().or(c.in_list(list.clone(), true))
                })
                .reduce(Expr::and)
        };
        if let Some(stamp) = stamp
            && let Ok(mut cached) = self.cached.lock()
        {
            *cached = Some((stamp, condition.clone()));
        }
        Ok(condition)
    }

    /// The register cannot be read or is malformed: the tables it covers are refused.
    fn unreadable(&self, cause: String) -> DataFusionError {
        DataFusionError::External(Box::new(DataUnavailable {
            table: self.register.clone(),
            cause: format!(
                "{cause}; it holds residents' objections, so the tables it covers are refused until it is readable"
            ),
        }))
    }

    /// Distinct residents who object to the purpose. A register that is not well-formed
    /// (a row naming no resident or no declared purpose, a malformed identifier) is an error:
    /// a near miss would otherwise exclude nobody.
    async fn objectors(&self, state: &dyn Session) -> Result<Vec<ScalarValue>> {
        let schema = self.source.schema();
        let projection = vec![
            schema.index_of(&self.key)?,
            schema.index_of(PURPOSE_COLUMN)?,
        ];
        let plan = self
            .source
            .scan(state, Some(&projection), &[], None)
            .await?;
        let batches = datafusion::physical_plan::collect(plan, state.task_ctx()).await?;
        let malformed = |what: &str| {
            DataFusionError::External(Box::new(DataUnavailable {
                table: self.register.clone(),
                cause: format!("it is malformed ({what})"),
            }))
        };
        let mut out = HashSet::new();
        for b in &batches {
            let (keys, purposes) = (b.column(0), b.column(1));
            let Some(purposes) = purposes.as_string_opt::<i32>() else {
                return Err(malformed("its purpose column is not text"));
            };
            for i in 0..b.num_rows() {
                if !keys.is_valid(i) || !purposes.is_valid(i) {
                    return Err(malformed("a row without a resident or a purpose"));
                }
                let purpose = purposes.value(i);
                if !self.declared.contains(purpose) {
                    return Err(malformed(
                        "a row names a purpose policies/purposes.toml does not declare",
                    ));
                }
                // Every row is checked, whatever its purpose: a register is whole or not at all.
                let key = ScalarValue::try_from_array(keys, i)?;
                let forms = match &key {
                    ScalarValue::Utf8(Some(id)) if self.resident_ids => {
                        if !crate::masking::validate::is_valid_id_cn(id) {
                            return Err(malformed("a resident ID number that does not validate"));
                        }
                        // The check character is matched in either case, and a legacy
                        // 15-digit number as the 18-digit one it became (review 51).
                        let mut forms = vec![id.clone()];
                        forms.extend(crate::masking::validate::id15_to_18(id));
                        forms
                            .iter()
                            .flat_map(|f| [f.to_ascii_uppercase(), f.to_ascii_lowercase()])
                            .map(|f| ScalarValue::Utf8(Some(f)))
                            .collect::<Vec<_>>()
                    }
                    ScalarValue::Utf8(Some(v)) if v.trim() != v || v.is_empty() => {
                        return Err(malformed("an identifier with surrounding spaces or empty"));
                    }
                    _ => vec![key],
                };
                if purpose == self.purpose {
                    out.extend(forms);
                }
            }
        }
        // In a stable order, so that plans of equal registers are equal.
        let mut out: Vec<ScalarValue> = out.into_iter().collect();
        out.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        Ok(out)
    }
}

/// Whether an object store's error is anywhere in the chain.
fn from_store(e: &DataFusionError) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(x) = current {
        if x.is::<object_store::Error>()
            || matches!(
                x.downcast_ref::<DataFusionError>(),
                Some(DataFusionError::ObjectStore(_))
            )
        {
            return true;
        }
        current = x.source();
    }
    false
}
