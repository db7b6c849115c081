//! One configuration: `exchange.toml`.
//!
//! Every setting of the exchange lives in one file, deserialized into [`Settings`]: where
//! the configuration, data, state and keys are, the audit log's options, execution limits,
//! and the Flight SQL server's limits and lifetimes. Every key is optional and has a
//! documented default; every command-line flag overrides the key of the same name (as roapi
//! does), and `exchange config` prints the effective result. Unknown keys are errors that
//! name the file, line and column, so a misspelt limit never silently falls back to its
//! default. Relative paths in the file are relative to the file's directory.
//!
//! The configuration holds no secrets: keys are files under `paths.key_dir`, read only when
//! the exchange opens, and never part of what `exchange config` prints.

mod exchange;

pub use exchange::{ExchangeConfig, absolute};

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::audit::AuditOptions;

/// `text` as the address of a service: an http(s) URL with a host and no user, password,
/// query or fragment (which would carry credentials or be silently dropped). Stores,
/// agency nodes and workers are all checked with it.
pub fn service_url(text: &str) -> Option<url::Url> {
    url::Url::parse(text).ok().filter(|u| {
        matches!(u.scheme(), "http" | "https")
            && u.host_str().is_some_and(|h| !h.is_empty())
            && u.username().is_empty()
            && u.password().is_none()
            && u.query().is_none()
            && u.fragment().is_none()
    })
}

/// The file looked for in the working directory when `--config` is not given.
pub const DEFAULT_FILE: &str = "exchange.toml";

/// Errors of reading a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a value of the wrong type; the
    /// message names line and column.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What and where.
        message: String,
    },
    /// A value is out of its range.
    #[error("{origin}: {key} {message}")]
    Invalid {
        /// The file, or "flags".
        origin: String,
        /// The key, e.g. `serve.max_concurrent`.
        key: &'static str,
        /// Why.
        message: String,
    },
}

/// The whole configuration, as in `exchange.toml`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Where things are.
    pub paths: PathSettings,
    /// The audit log.
    pub audit: AuditSettings,
    /// Query execution, for every command.
    pub execution: ExecutionSettings,
    /// The Flight SQL server (`exchange serve`).
    pub serve: ServeSettings,
    /// Each agency's S3-compatible object store (`[stores.<agency>]`), for datasets at
    /// `s3://` locations: endpoint, region, style, credentials file. No secrets.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub stores: std::collections::BTreeMap<String, crate::catalog::StoreSettings>,
    /// Federation: the agencies' nodes at a hub, the hubs' keys at a node.
    pub federation: crate::federation::FederationSettings,
    /// Scale-out: the hub's workers, or at a worker, the hub it serves.
    pub distributed: crate::distributed::DistributedSettings,
}

/// `[paths]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathSettings {
    /// Directory holding `schemas/` and `policies/` (default `.`).
    pub config_dir: PathBuf,
    /// Root of relative dataset locations (default `demo-data`).
    pub data_root: PathBuf,
    /// Directory of the audit log and REPL history (default `.exchange`).
    pub state_dir: PathBuf,
    /// Directory of the keys (default `<config_dir>/keys`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_dir: Option<PathBuf>,
}

impl Default for PathSettings {
    fn default() -> Self {
        Self {
            config_dir: PathBuf::from("."),
            data_root: PathBuf::from("demo-data"),
            state_dir: PathBuf::from(".exchange"),
            key_dir: None,
        }
    }
}

/// `[audit]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// A signed checkpoint at least every this many records (default 1: every record).
    pub checkpoint_every: u64,
    /// Records per segment file before rotating to the next (default 100,000).
    pub segment_records: u64,
}

impl Default for AuditSettings {
    fn default() -> Self {
        let d = AuditOptions::default();
        Self {
            checkpoint_every: d.checkpoint_every,
            segment_records: d.segment_records,
        }
    }
}

/// `[execution]`: DataFusion settings the policy does not fix.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutionSettings {
    /// Memory limit of each query in MiB for the CLI's commands (default: unbounded; the
    /// server has its own, `serve.memory_limit_mib`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit_mib: Option<usize>,
    /// Memory the whole process may hold in MiB, every statement together, CLI and server
    /// (default: half of the least of physical memory, `ulimit -v` and the cgroup limit).
    /// A statement that would take the process past it fails as out of resources.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_budget_mib: Option<usize>,
    /// Partitions a query runs in (default: the number of cores).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_partitions: Option<usize>,
    /// Rows per batch (default 8192).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
}

/// `[serve]`: the Flight SQL server's address, TLS, limits and lifetimes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeSettings {
    /// Address to listen on; port 0: any free port (default `127.0.0.1:50051`).
    pub listen: std::net::SocketAddr,
    /// PEM certificate chain, for TLS (with `tls_key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key, for TLS (with `tls_cert`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Queries running at once; more wait (default 8).
    pub max_concurrent: usize,
    /// Seconds an excess query waits for a slot before RESOURCE_EXHAUSTED (default 10).
    pub queue_wait_secs: u64,
    /// Seconds a query may run before DEADLINE_EXCEEDED (default 300).
    pub query_timeout_secs: u64,
    /// Memory limit of each query in MiB (default 2048).
    pub memory_limit_mib: usize,
    /// Largest result sent to a client, in MiB of Arrow data; a larger one is cut (default 4096).
    pub max_result_mib: usize,
    /// Seconds a result waits to be fetched before it is dropped (default 600).
    pub result_ttl_secs: u64,
    /// Results of one principal waiting to be fetched (default 16).
    pub max_pending_per_principal: usize,
    /// Open prepared statements of one principal (default 64).
    pub max_prepared_per_principal: usize,
    /// Seconds a login's bearer token stays valid, at most a week (default 3600).
    pub token_ttl_secs: u64,
    /// Seconds running queries get to finish on shutdown (default 30).
    pub drain_secs: u64,
    /// Address of the Postgres wire protocol, served beside Flight SQL (default: off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pg_listen: Option<std::net::SocketAddr>,
    /// Address of the web console, served beside Flight SQL (default: off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<std::net::SocketAddr>,
    /// Seconds between looks at schemas/ and policies/ for changes, which a running
    /// `serve` or `node` then reloads; 0: only on SIGHUP or `exchange policy reload`
    /// (default 2).
    pub watch_policies_secs: u64,
}

impl Default for ServeSettings {
    fn default() -> Self {
        Self {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 50051)),
            tls_cert: None,
            tls_key: None,
            max_concurrent: 8,
            queue_wait_secs: 10,
            query_timeout_secs: 300,
            memory_limit_mib: 2048,
            max_result_mib: 4096,
            result_ttl_secs: 600,
            max_pending_per_principal: 16,
            max_prepared_per_principal: 64,
            token_ttl_secs: 3600,
            drain_secs: 30,
            pg_listen: None,
            http_listen: None,
            watch_policies_secs: 2,
        }
    }
}

impl Settings {
    /// Read `path`; relative paths in it become relative to its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut settings = Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        let base = absolute(path.parent().unwrap_or(Path::new(".")));
        settings.rebase(&base);
        settings.validate(&path.display().to_string())?;
        Ok(settings)
    }

    /// The settings of `--config FILE`, else of `./exchange.toml` when present, else the
    /// defaults. Returns the file read, if any.
    pub fn discover(explicit: Option<&Path>) -> Result<(Self, Option<PathBuf>), ConfigError> {
        let path = match explicit {
            Some(p) => Some(p.to_path_buf()),
            None => Some(PathBuf::from(DEFAULT_FILE)).filter(|p| p.is_file()),
        };
        match path {
            Some(p) => Ok((Self::load(&p)?, Some(absolute(&p)))),
            None => Ok((Self::default(), None)),
        }
    }

    /// Parse TOML text; the error names line and column, and what is wrong, but never
    /// quotes the file (review 7: `--config keys/secret.key` printed the key).
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e: toml::de::Error| {
            let at = e
                .span()
                .and_then(|span| text.get(..span.start))
                .map(|before| {
                    let line = before.matches('\n').count() + 1;
                    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                    format!("line {line}, column {column}: ")
                })
                .unwrap_or_default();
            format!("{at}{}", e.message().trim_end())
        })
    }

    fn rebase(&mut self, base: &Path) {
        let join = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = absolute(&base.join(&*p));
            }
        };
        join(&mut self.paths.config_dir);
        join(&mut self.paths.data_root);
        join(&mut self.paths.state_dir);
        for p in [
            &mut self.paths.key_dir,
            &mut self.serve.tls_cert,
            &mut self.serve.tls_key,
        ]
        .into_iter()
        .flatten()
        {
            join(p);
        }
        for s in self.stores.values_mut() {
            if let Some(p) = s.credentials_file.as_mut() {
                join(p);
            }
        }
    }

    /// Check ranges; `origin` names where the values came from.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: &str| {
            Err(ConfigError::Invalid {
                origin: origin.to_string(),
                key,
                message: message.to_string(),
            })
        };
        let s = &self.serve;
        // An endpoint object_store cannot use would fail (or panic) at the first query
        // (review 24 F5); one with credentials in it would print them.
        for (agency, store) in &self.stores {
            if let Some(e) = &store.endpoint {
                let ok = service_url(e);
                if ok.is_none() {
                    return invalid(
                        "stores.<agency>.endpoint",
                        &format!(
                            "of agency {agency} must be an http:// or https:// URL with a host and nothing else (no user, password, query or fragment)"
                        ),
                    );
                }
            }
        }
        if let Err(message) = self.federation.validate() {
            return Err(ConfigError::Invalid {
                origin: origin.to_string(),
                key: "federation",
                message,
            });
        }
        if let Err(message) = self.distributed.validate() {
            return Err(ConfigError::Invalid {
                origin: origin.to_string(),
                key: "distributed",
                message,
            });
        }
        if self.audit.checkpoint_every == 0 {
            return invalid("audit.checkpoint_every", "must be at least 1");
        }
        if self.audit.segment_records == 0 {
            return invalid("audit.segment_records", "must be at least 1");
        }
        if self.execution.target_partitions == Some(0) {
            return invalid("execution.target_partitions", "must be at least 1");
        }
        if self.execution.batch_size == Some(0) {
            return invalid("execution.batch_size", "must be at least 1");
        }
        if self.execution.memory_budget_mib == Some(0) {
            return invalid("execution.memory_budget_mib", "must be at least 1");
        }
        if self.execution.memory_limit_mib == Some(0) {
            return invalid("execution.memory_limit_mib", "must be at least 1");
        }
        if s.max_concurrent == 0 {
            return invalid("serve.max_concurrent", "must be at least 1");
        }
        if s.memory_limit_mib == 0 {
            return invalid("serve.memory_limit_mib", "must be at least 1");
        }
        if s.max_pending_per_principal == 0 || s.max_prepared_per_principal == 0 {
            return invalid(
                "serve.max_pending_per_principal",
                "and serve.max_prepared_per_principal must be at least 1",
            );
        }
        if !(1..=604_800).contains(&s.token_ttl_secs) {
            return invalid("serve.token_ttl_secs", "must be 1 to 604800 (a week)");
        }
        if s.tls_cert.is_some() != s.tls_key.is_some() {
            return invalid("serve.tls_cert", "and serve.tls_key go together");
        }
        Ok(())
    }

    /// The library's configuration: paths, audit options, execution settings.
    pub fn exchange_config(&self) -> ExchangeConfig {
        let p = &self.paths;
        let mut config = ExchangeConfig::new(
            absolute(&p.config_dir),
            absolute(&p.data_root),
            absolute(&p.state_dir),
        );
        if let Some(k) = &p.key_dir {
            config = config.with_key_dir(absolute(k));
        }
        config.audit = AuditOptions {
            checkpoint_every: self.audit.checkpoint_every,
            segment_records: self.audit.segment_records,
        };
        config.memory_limit = self
            .execution
            .memory_limit_mib
            .map(|m| m.saturating_mul(1 << 20));
        if let Some(m) = self.execution.memory_budget_mib {
            config.memory_budget = crate::engine::Budget::of(m.saturating_mul(1 << 20));
        }
        config.target_partitions = self.execution.target_partitions;
        config.batch_size = self.execution.batch_size;
        config.stores = self.stores.clone();
        config.federation = self.federation.clone();
        config.distributed = self.distributed.clone();
        config
    }

    /// The configuration as TOML, every key shown with its effective value.
    pub fn render(&self) -> String {
        let mut shown = self.clone();
        // The default key directory, spelt out.
        if shown.paths.key_dir.is_none() {
            shown.paths.key_dir = Some(crate::keys::default_dir(&shown.paths.config_dir));
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn an_empty_file_is_the_defaults() {
        assert_eq!(Settings::parse("").unwrap(), Settings::default());
        let s = Settings::default();
        assert_eq!(s.serve.max_concurrent, 8);
        assert_eq!(s.audit.checkpoint_every, 1);
        assert!(s.validate("test").is_ok());
    }

    #[test]
    fn unknown_keys_are_errors_with_line_and_column() {
        let err = Settings::parse("[serve]\nmax_concurent = 4\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("max_concurent"), "{err}");
        let err = Settings::parse("[serve]\nmax_concurrent = \"eight\"\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn parse_errors_never_quote_the_file() {
        let secret = "5e".repeat(32);
        let err = Settings::parse(&secret).unwrap_err();
        assert!(!err.contains("5e5e"), "{err}");
        assert!(err.contains("line 1"), "{err}");
        let err = Settings::parse(&format!("[paths]\ndata_root = 3 # {secret}\n")).unwrap_err();
        assert!(!err.contains("5e5e"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn relative_paths_are_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("exchange.toml");
        std::fs::write(
            &file,
            "[paths]\ndata_root = \"data\"\nkey_dir = \"/keys\"\n[execution]\ntarget_partitions = 2\n",
        )
        .unwrap();
        let s = Settings::load(&file).unwrap();
        assert_eq!(s.paths.data_root, absolute(&dir.path().join("data")));
        assert_eq!(s.paths.config_dir, absolute(dir.path()));
        assert_eq!(s.paths.key_dir, Some(PathBuf::from("/keys")));
        let c = s.exchange_config();
        assert_eq!(c.target_partitions, Some(2));
        assert_eq!(c.key_dir, PathBuf::from("/keys"));
    }

    #[test]
    fn out_of_range_values_name_their_key() {
        let mut s = Settings::default();
        s.serve.token_ttl_secs = 0;
        let err = s.validate("exchange.toml").unwrap_err().to_string();
        assert!(err.contains("serve.token_ttl_secs"), "{err}");
        let mut s = Settings::default();
        s.serve.tls_cert = Some(PathBuf::from("cert.pem"));
        assert!(s.validate("flags").is_err());
    }

    #[test]
    fn the_rendering_reads_back_as_the_same_settings() {
        let mut s = Settings::default();
        s.execution.batch_size = Some(4096);
        let text = s.render();
        let back = Settings::parse(&text).unwrap();
        assert_eq!(back.execution.batch_size, Some(4096));
        assert!(back.paths.key_dir.is_some());
        assert!(text.contains("[serve]"), "{text}");
    }
}
