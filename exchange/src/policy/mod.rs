//! Policies: principals, purposes and each owning agency's grants, loaded from `policies/`.
//!
//! Layout: `policies/principals.toml`, `policies/purposes.toml` and one grant file per
//! owning agency in `policies/grants/*.toml`. Resolution is default deny; when several
//! grants match, the first in file order wins (and the checker warns about the shadowed
//! ones).

mod diff;
mod load;
mod model;
mod privacy;
mod recipients;
mod treatment;

pub use diff::{Change, Exposure, PolicyDiff, Version, diff};
pub use model::{
    Access, AttrValue, ColumnRule, Denial, Grant, PolicySet, Principal, Purpose, RowFilter,
    Selector,
};
pub use privacy::{MAX_BOUND, Period, Privacy, show_epsilon};
pub use recipients::{MAINLAND, Recipient};
pub use treatment::Treatment;

use std::path::PathBuf;

use crate::catalog::SourcePos;

/// Errors of loading policies.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A policy file or directory could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A policy file is not valid TOML or has unknown keys or values.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The policy file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A policy is well-formed but cannot be applied (unknown table, column, purpose...).
    #[error("{pos}: {message}")]
    Invalid {
        /// Where.
        pos: SourcePos,
        /// What is wrong.
        message: String,
    },
}
