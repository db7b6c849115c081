//! Checking datasets' files against their declarations.

use std::fs;
use std::path::{Path, PathBuf};

use arrow::datatypes::DataType;

use super::CatalogError;
use super::model::*;

impl Catalog {
    /// Check that each dataset's files exist and hold its declared columns with their
    /// types. Returns every problem found.
    pub fn check_data(&self, data_root: &Path) -> Vec<CatalogError> {
        self.datasets
            .iter()
            .filter_map(|d| check_dataset(d, data_root).err())
            .collect()
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
