//! The library's configuration: what [`crate::Exchange::open`] needs, built from
//! [`super::Settings`] by the command line or directly by an embedding program.

use std::path::{Path, PathBuf};

use crate::audit::AuditOptions;

/// Where the exchange finds its configuration, data, keys and state.
#[derive(Debug, Clone)]
pub struct ExchangeConfig {
    /// Directory holding `schemas/` and `policies/`.
    pub config_dir: PathBuf,
    /// Root of relative dataset locations.
    pub data_root: PathBuf,
    /// Directory of the audit log (and the REPL history).
    pub state_dir: PathBuf,
    /// Directory of the keys (`exchange keys init`).
    pub key_dir: PathBuf,
    /// Checkpoint and rotation intervals of the audit log.
    pub audit: AuditOptions,
    /// Memory limit of each query in bytes (DataFusion memory pool); None: unbounded.
    pub memory_limit: Option<usize>,
    /// Memory the process may hold, every statement together (see [`crate::engine::Budget`]).
    pub memory_budget: crate::engine::Budget,
    /// Partitions a query runs in; None: the number of cores.
    pub target_partitions: Option<usize>,
    /// Rows per batch; None: DataFusion's default (8192).
    pub batch_size: Option<usize>,
    /// Each agency's object store settings, for `s3://` dataset locations.
    pub stores: std::collections::BTreeMap<String, crate::catalog::StoreSettings>,
    /// Nodes (at a hub) and pinned hub keys (at a node).
    pub federation: crate::federation::FederationSettings,
    /// Workers (at a hub) and the hub's key (at a worker).
    pub distributed: crate::distributed::DistributedSettings,
}

impl ExchangeConfig {
    /// A configuration with keys in `<config_dir>/keys` and default audit options.
    pub fn new(config_dir: PathBuf, data_root: PathBuf, state_dir: PathBuf) -> Self {
        Self {
            key_dir: crate::keys::default_dir(&config_dir),
            config_dir,
            data_root,
            state_dir,
            audit: AuditOptions::default(),
            memory_limit: None,
            memory_budget: crate::engine::Budget::from_machine(),
            target_partitions: None,
            batch_size: None,
            stores: Default::default(),
            federation: Default::default(),
            distributed: Default::default(),
        }
    }

    /// The same configuration with keys in `key_dir`.
    pub fn with_key_dir(mut self, key_dir: PathBuf) -> Self {
        self.key_dir = key_dir;
        self
    }

    /// `schemas/` under the config dir.
    pub fn schemas_dir(&self) -> PathBuf {
        self.config_dir.join("schemas")
    }

    /// `policies/` under the config dir.
    pub fn policies_dir(&self) -> PathBuf {
        self.config_dir.join("policies")
    }

    /// The audit log's directory.
    pub fn audit_log(&self) -> PathBuf {
        self.state_dir.join("audit")
    }

    /// The public key file verifiers use.
    pub fn public_key_file(&self) -> PathBuf {
        self.key_dir.join(crate::keys::PUBLIC_FILE)
    }
}

/// Resolve a path that may be relative to the current directory.
pub fn absolute(p: &Path) -> PathBuf {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    joined
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}
