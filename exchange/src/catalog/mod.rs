//! The catalog: agencies, their datasets and column metadata, loaded from `schemas/*.toml`.
//!
//! Loading validates structure (unknown keys and types are errors with file and line) and,
//! with [`Catalog::check_data`], that every dataset's files exist and match the declared
//! columns.

mod data;
pub mod discover;
mod load;
mod model;
mod object_cache;
mod objections;
mod store_client;
mod stores;

pub(crate) use data::holds as column_holds;
pub(crate) use model::line_of as model_line_of;
pub use model::{
    Catalog, ColumnDef, ColumnType, DataFormat, Dataset, ExportK, KAction, Level, PiiType,
    SourcePos,
};
pub use objections::{PURPOSE_COLUMN, Register};
pub use store_client::{
    describe as describe_store_failure, describe_in as describe_store_failure_in,
};
pub use stores::{StoreError, StoreSettings, Stores};

use std::path::PathBuf;

/// Errors of loading or checking the catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A schema file or directory could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A schema file is not valid TOML or has unknown keys or values.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The schema file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A schema file is well-formed but inconsistent.
    #[error("{pos}: {message}")]
    Invalid {
        /// Where.
        pos: SourcePos,
        /// What is wrong.
        message: String,
    },
    /// A dataset's data is missing or does not match its declaration.
    #[error("{pos}: table {table}: {message}")]
    Data {
        /// Where the dataset is declared.
        pos: SourcePos,
        /// `agency.table`.
        table: String,
        /// What is wrong, naming file and column.
        message: String,
    },
}
