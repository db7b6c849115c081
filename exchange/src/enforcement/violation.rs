//! The error a policy refusal travels in through DataFusion.

use datafusion::common::DataFusionError;

/// A query refused by policy; the message names table, column and rule, and nothing the
/// principal may not see.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Violation {
    message: String,
}

impl Violation {
    /// A refusal with this reason.
    pub fn new(message: String) -> Self {
        Self { message }
    }

    /// The reason.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// The policy violation anywhere in a DataFusion error chain.
pub fn find_violation(err: &DataFusionError) -> Option<&Violation> {
    find_in_chain(err)
}

/// The first error of type `T` in `err`'s chain of sources (the exchange's own typed errors
/// travel through DataFusion wrapped; they are told by type, never by text).
pub(crate) fn find_in_chain<T: std::error::Error + 'static>(err: &DataFusionError) -> Option<&T> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// A statement past one of the exchange's own limits on what a plan may build (a value
/// copied over a whole window, fixed-size values too large to allocate), found by its rules
/// while planning: the message is the exchange's and names only the construct.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Limit {
    message: String,
}

impl Limit {
    /// The limit a statement is past, as a DataFusion error.
    pub(crate) fn error(message: String) -> DataFusionError {
        DataFusionError::External(Box::new(Self { message }))
    }
}

/// The exchange's own limit anywhere in a DataFusion error chain.
pub fn find_limit(err: &DataFusionError) -> Option<&Limit> {
    find_in_chain(err)
}
