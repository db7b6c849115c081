//! Checking datasets' files against their declarations, on local disk or in an object
//! store.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Schema};

use super::model::*;
use super::{CatalogError, Stores};

impl Catalog {
    /// Check that each dataset's files exist and hold its declared columns with their
    /// types. Returns every problem found. Datasets in object stores are not checked
    /// (see [`Catalog::check_data_in`]).
    pub fn check_data(&self, data_root: &Path) -> Vec<CatalogError> {
        self.datasets
            .iter()
            .filter(|d| !is_remote(&d.resolve_location(data_root)))
            .filter_map(|d| check_dataset(d, data_root).err())
            .collect()
    }

    /// [`Catalog::check_data`], and the datasets in object stores through `stores`: each
    /// location lists at least one file, and the first Parquet file's footer holds the
    /// declared columns.
    pub fn check_data_in(&self, data_root: &Path, stores: &Stores) -> Vec<CatalogError> {
        let mut errors = self.check_data(data_root);
        let remote: Vec<&Dataset> = self
            .datasets
            .iter()
            .filter(|d| is_remote(&d.resolve_location(data_root)))
            .collect();
        if remote.is_empty() {
            return errors;
        }
        // On a thread of its own: callers may or may not be inside an async runtime.
        let checked = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    Ok::<_, std::io::Error>(runtime.block_on(async {
                        let mut errors = Vec::new();
                        for d in &remote {
                            if let Err(e) = check_remote(d, data_root, stores).await {
                                errors.push(e);
                            }
                        }
                        errors
                    }))
                })
                .join()
        });
        match checked {
            Ok(Ok(found)) => errors.extend(found),
            Ok(Err(e)) => errors.extend(remote.iter().map(|d| data_error(d, e.to_string()))),
            Err(_) => errors.extend(
                remote
                    .iter()
                    .map(|d| data_error(d, "its object store could not be checked".into())),
            ),
        }
        errors
    }
}

fn is_remote(location: &str) -> bool {
    location.contains("://") && !location.starts_with("file://")
}

fn data_error(d: &Dataset, message: String) -> CatalogError {
    CatalogError::Data {
        pos: d.pos.clone(),
        table: d.qualified_name(),
        message,
    }
}

/// A dataset in an object store: listed, and its first Parquet file's footer read.
async fn check_remote(d: &Dataset, data_root: &Path, stores: &Stores) -> Result<(), CatalogError> {
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    let err = |message: String| data_error(d, message);
    let location = d.resolve_location(data_root);
    let runtime = datafusion::execution::runtime_env::RuntimeEnv::default();
    let scan = stores
        .register(&runtime, &d.agency, &location)
        .map_err(|e| err(e.to_string()))?;
    let url = datafusion::datasource::listing::ListingTableUrl::parse(&scan)
        .map_err(|e| err(e.to_string()))?;
    let store = runtime
        .object_store(url.object_store())
        .map_err(|e| err(e.to_string()))?;
    let ext = match d.format {
        DataFormat::Parquet => "parquet",
        DataFormat::Csv => "csv",
    };
    // The store's own words are never repeated: they can quote credentials.
    let unreadable = |e: object_store::Error| {
        err(format!(
            "{location} cannot be read: {}",
            super::store_client::describe(&e)
        ))
    };
    let files = if url.is_collection() {
        let mut files: Vec<object_store::ObjectMeta> = store
            .list(Some(url.prefix()))
            .try_filter(|m| {
                let name = m.location.filename().unwrap_or_default();
                // As the scan lists: files of this prefix (no subdirectories) named *.ext.
                let direct = m
                    .location
                    .prefix_match(url.prefix())
                    .is_some_and(|mut rest| rest.next().is_some() && rest.next().is_none());
                futures::future::ready(direct && name.ends_with(&format!(".{ext}")))
            })
            .try_collect()
            .await
            .map_err(unreadable)?;
        files.sort_by(|a, b| a.location.cmp(&b.location));
        files
    } else {
        vec![store.head(url.prefix()).await.map_err(unreadable)?]
    };
    if files.is_empty() {
        return Err(err(format!("no .{ext} files at {location}")));
    }
    if d.format == DataFormat::Csv {
        return Ok(());
    }
    // Every file's footer (two range requests each): a query reads them all.
    for file in files {
        let name = format!("{location} ({})", file.location);
        // Deprecated in favour of a reader of one's own; it reads the footer, which is all
        // this check needs.
        #[expect(deprecated)]
        let reader = parquet::arrow::async_reader::ParquetObjectReader::new(
            Arc::clone(&store),
            file.location,
        )
        .with_file_size(file.size);
        let builder = parquet::arrow::ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(|e| match super::store_client::describe_in(&e) {
                Some(said) => err(format!("data file {name} cannot be read: {said}")),
                None => err(format!("data file {name} is not valid Parquet: {e}")),
            })?;
        check_columns(d, builder.schema(), &name)?;
    }
    Ok(())
}

fn check_dataset(d: &Dataset, data_root: &Path) -> Result<(), CatalogError> {
    let err = |message: String| data_error(d, message);
    let location = d.resolve_location(data_root);
    let path = PathBuf::from(location.trim_start_matches("file://"));
    let ext = match d.format {
        DataFormat::Parquet => "parquet",
        DataFormat::Csv => "csv",
    };
    let files = local_files(&path, ext)
        .map_err(|e| err(format!("data file {} cannot be read: {e}", path.display())))?;
    if files.is_empty() {
        return Err(err(format!("no .{ext} files in {}", path.display())));
    }
    if d.format == DataFormat::Csv {
        return Ok(());
    }
    // Every file: a query reads them all, and a file lacking a declared column would give
    // NULLs for it (review 24 F3).
    for file_path in &files {
        let file = fs::File::open(file_path).map_err(|e| {
            err(format!(
                "data file {} cannot be read: {e}",
                file_path.display()
            ))
        })?;
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| {
                err(format!(
                    "data file {} is not valid Parquet: {e}",
                    file_path.display()
                ))
            })?;
        check_columns(d, builder.schema(), &file_path.display().to_string())?;
    }
    Ok(())
}

/// The declared columns are in `actual` (the schema of data file `file`) with compatible
/// types.
fn check_columns(d: &Dataset, actual: &Schema, file: &str) -> Result<(), CatalogError> {
    let err = |message: String| data_error(d, message);
    for c in &d.columns {
        if actual
            .fields()
            .iter()
            .filter(|f| f.name() == &c.name)
            .count()
            > 1
        {
            return Err(err(format!(
                "column {} is declared at {} but {file} holds it twice",
                c.name, c.pos
            )));
        }
        match actual.field_with_name(&c.name) {
            Err(_) => {
                return Err(err(format!(
                    "column {} is declared at {} but missing from {file}",
                    c.name, c.pos
                )));
            }
            Ok(f) => {
                let want = c.ty.data_type();
                let got = f.data_type();
                if !holds(&want, got) {
                    return Err(err(format!(
                        "column {} is declared {:?} at {} but {file} holds {got}",
                        c.name, c.ty, c.pos
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

/// Whether a file's column of type `got` holds values of the declared type `want`: the
/// same type, another encoding of a string (large, view, dictionary), or a timestamp of
/// another unit. The scan applies the same rule (`enforcement/drift.rs`): a file the
/// check reports is never read as if it were whole.
pub(crate) fn holds(want: &DataType, got: &DataType) -> bool {
    got == want
        || (matches!(want, DataType::Utf8)
            && matches!(got, DataType::LargeUtf8 | DataType::Utf8View))
        || (matches!(want, DataType::Timestamp(_, _)) && matches!(got, DataType::Timestamp(_, _)))
        || matches!(got, DataType::Dictionary(_, v) if holds(want, v))
}
