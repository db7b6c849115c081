//! `[distributed]` in `exchange.toml`.

use serde::{Deserialize, Serialize};
use url::Url;

use crate::keys::PublicKey;

/// `[distributed]`: at a hub, the workers; at a worker, whom it serves.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistributedSettings {
    /// At a hub: the workers' addresses (`http://host:port`, as each worker's `--url`).
    /// Empty (the default): every statement runs in this process.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<String>,
    /// At a hub: bytes of Parquet each partition of a distributed scan reads (default
    /// datafusion-distributed's, 16 MiB); smaller spreads a scan over more workers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_per_partition: Option<usize>,
    /// At a hub: how Arrow data is compressed between stages: `lz4` (the default), `zstd`,
    /// or `none` (workers on one machine or a fast network: compression is then pure cost).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// At a worker: the hub whose plan fragments it runs: its Ed25519 public key (hex, as
    /// in the hub's `signing.pub`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
    /// At a worker: the other workers' public keys (hex): they may fetch this worker's
    /// results (shuffles), never send it plans.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
}

impl DistributedSettings {
    /// Check addresses and keys; the error names the entry.
    pub fn validate(&self) -> Result<(), String> {
        self.worker_urls()?;
        if let Some(hub) = &self.hub
            && PublicKey::from_hex(hub).is_none()
        {
            return Err("hub must be an Ed25519 public key in hex (the hub's signing.pub)".into());
        }
        self.peer_keys()?;
        if let Some(c) = &self.compression
            && !matches!(c.as_str(), "lz4" | "zstd" | "none")
        {
            return Err("compression must be lz4, zstd or none".into());
        }
        if self.bytes_per_partition == Some(0) {
            return Err("bytes_per_partition must be at least 1".into());
        }
        Ok(())
    }

    /// The workers' URLs.
    pub fn worker_urls(&self) -> Result<Vec<Url>, String> {
        self.workers
            .iter()
            .enumerate()
            .map(|(i, w)| {
                crate::config::service_url(w)
                    .filter(|u| matches!(u.path(), "" | "/"))
                    .ok_or_else(|| {
                        format!(
                            "workers[{i}] must be an http:// or https:// URL with a host and nothing else"
                        )
                    })
            })
            .collect()
    }

    /// The peers' keys.
    pub fn peer_keys(&self) -> Result<Vec<PublicKey>, String> {
        self.peers
            .iter()
            .enumerate()
            .map(|(i, k)| {
                PublicKey::from_hex(k)
                    .ok_or_else(|| format!("peers[{i}] must be an Ed25519 public key in hex"))
            })
            .collect()
    }
}
