//! What the examples share: the minimal configuration, with fresh keys and state.
#![allow(dead_code)] // each example uses part of it

use std::path::{Path, PathBuf};

use exchange::{Exchange, ExchangeConfig};

/// The minimal configuration's folder (schemas/, policies/, data/).
pub fn minimal() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("minimal")
}

/// An exchange over the minimal configuration, with keys and audit log in `state`.
pub fn open(state: &Path) -> Result<Exchange, Box<dyn std::error::Error>> {
    let keys = state.join("keys");
    // Keys are never created implicitly by the exchange: an example creates its own.
    exchange::keys::ensure(&keys)?;
    let config = ExchangeConfig::new(minimal(), minimal().join("data"), state.to_path_buf())
        .with_key_dir(keys);
    Ok(Exchange::open(config)?)
}

/// Fail the example with a message unless `ok`.
pub fn check(ok: bool, what: &str) -> Result<(), Box<dyn std::error::Error>> {
    if ok {
        Ok(())
    } else {
        Err(format!("unexpected: {what}").into())
    }
}
