//! Execution settings chosen by measurement (`cargo bench --bench governed`), in one place.
//!
//! Every principal's session starts from [`apply`]; the security settings of
//! `enforcement::locked_config` are applied after it and cannot be loosened here. The
//! benchmark's raw DataFusion engine uses the same settings, so that the ratio of the
//! exchange to raw DataFusion measures the enforcement, not the tuning.

use datafusion::prelude::SessionConfig;

/// The exchange's execution settings on top of DataFusion's defaults.
pub fn apply(config: SessionConfig) -> SessionConfig {
    config
}
