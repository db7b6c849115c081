//! A scale-out cluster for the tests: a hub with three in-process workers on loopback and
//! one process with the hub's keys, over the same data (tests/distributed.rs,
//! tests/distributed_attacks.rs).

use std::path::{Path, PathBuf};

use exchange::distributed::LocalWorker;
use exchange::{Exchange, ExchangeConfig, QueryError};

use super::{cells, data_root, repo_root, sorted, test_config};

/// Bytes of Parquet per partition at the hub: small, so that the test city's scans are
/// spread over several workers.
pub const SPLIT: usize = 16 << 10;

/// The hub's key directory and public key, and each worker's.
pub struct Keys {
    pub hub_dir: PathBuf,
    pub hub_pub: String,
    pub workers: Vec<(PathBuf, String)>,
}

/// The hub's keys, and `n` workers' key directories: the hub's secret, their own signing
/// keys.
pub fn keys(root: &Path, n: usize) -> Keys {
    let hub_dir = root.join("hub/keys");
    exchange::keys::ensure(&hub_dir).unwrap();
    let read = |d: &Path| {
        std::fs::read_to_string(d.join("signing.pub"))
            .unwrap()
            .trim()
            .to_string()
    };
    let workers = (0..n)
        .map(|i| {
            let dir = root.join(format!("worker{i}/keys"));
            exchange::keys::ensure(&dir).unwrap();
            std::fs::copy(hub_dir.join("secret.key"), dir.join("secret.key")).unwrap();
            let p = read(&dir);
            (dir, p)
        })
        .collect();
    Keys {
        hub_pub: read(&hub_dir),
        hub_dir,
        workers,
    }
}

/// Worker `i`'s configuration under `root`: its own signing key and the hub's secret, the
/// hub's public key, its peers'.
pub fn worker_config(
    config: &Path,
    data: &Path,
    root: &Path,
    i: usize,
    keys: &Keys,
) -> ExchangeConfig {
    let mut c = test_config(config, data, &root.join(format!("worker{i}")));
    c.key_dir = keys.workers[i].0.clone();
    c.distributed.hub = Some(keys.hub_pub.clone());
    c.distributed.peers = keys.workers.iter().map(|(_, p)| p.clone()).collect();
    c
}

/// The hub's configuration under `root`, its plans run on `workers`.
pub fn hub_config(
    config: &Path,
    data: &Path,
    root: &Path,
    keys: &Keys,
    workers: Vec<String>,
) -> ExchangeConfig {
    let mut c = test_config(config, data, &root.join("hub"));
    c.key_dir = keys.hub_dir.clone();
    c.distributed.workers = workers;
    c.distributed.bytes_per_partition = Some(SPLIT);
    c
}

/// A hub, its workers, and one process with the hub's keys.
pub struct Cluster {
    /// Held: the cluster's state directories live as long as it.
    pub root: tempfile::TempDir,
    pub workers: Vec<LocalWorker>,
    pub hub: Exchange,
    pub single: Exchange,
}

impl Cluster {
    /// Stop the workers.
    pub async fn stop(self) {
        for w in self.workers {
            w.stop().await;
        }
    }
}

/// The cluster over the repository's policies and the test city.
pub async fn cluster() -> Cluster {
    cluster_in(&repo_root(), data_root(), |_| {}).await
}

/// A hub with three workers and one process, over the policies of `config` and the data
/// of `data`, every configuration `adjust`ed.
pub async fn cluster_in(
    config: &Path,
    data: &Path,
    adjust: impl Fn(&mut ExchangeConfig),
) -> Cluster {
    let root = tempfile::tempdir().unwrap();
    let keys = keys(root.path(), 3);
    let mut workers = Vec::new();
    for i in 0..3 {
        let mut c = worker_config(config, data, root.path(), i, &keys);
        adjust(&mut c);
        workers.push(LocalWorker::start(c).await.unwrap());
    }
    let urls = workers.iter().map(|w| w.url.clone()).collect();
    let mut c = hub_config(config, data, root.path(), &keys, urls);
    adjust(&mut c);
    let hub = Exchange::open(c).unwrap();
    let mut c = test_config(config, data, &root.path().join("single"));
    c.key_dir = keys.hub_dir.clone();
    adjust(&mut c);
    let single = Exchange::open(c).unwrap();
    Cluster {
        root,
        workers,
        hub,
        single,
    }
}

/// The outcome of a statement, comparable across a hub and one process: sorted rows (of an
/// EXPLAIN, its lines before the distribution note the hub adds, in order), the refusal,
/// or the failure.
pub fn outcome(r: &Result<exchange::QueryOutput, QueryError>) -> String {
    match r {
        Ok(out) if out.schema.field(0).name() == "plan" => {
            let lines: Vec<String> = cells(&out.batches)
                .concat()
                .into_iter()
                .take_while(|l| !l.starts_with("Distribution"))
                .filter(|l| !l.is_empty())
                .collect();
            format!("{lines:?}")
        }
        Ok(out) => format!("{:?}", sorted(&out.batches)),
        Err(QueryError::Refused(why)) => format!("refused: {why}"),
        Err(e) => format!("failed: {e}"),
    }
}
