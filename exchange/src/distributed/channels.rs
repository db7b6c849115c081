//! Connections to workers, every request signed ([`super::auth`]): the hub's to its
//! workers, and a worker's to its peers (shuffled results).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::common::{DataFusionError, Result};
use datafusion_distributed::grpc::{BoxCloneSyncChannel, create_worker_client};
use datafusion_distributed::{ChannelResolver, WorkerChannel, WorkerResolver};
use tonic::transport::{Channel, Endpoint};
use url::Url;

use super::auth::{Signer, Signing};

/// How long connecting to a worker may take before the statement fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The runtime connections to workers live on, for the life of the process.
fn net() -> Result<&'static tokio::runtime::Handle, String> {
    static NET: std::sync::OnceLock<Result<tokio::runtime::Runtime, String>> =
        std::sync::OnceLock::new();
    NET.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("exchange-net")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map(|r| r.handle())
    .map_err(Clone::clone)
}

/// Signed connections, one per worker, reused by every statement.
#[derive(Clone)]
pub(crate) struct SignedChannels {
    signer: Arc<Signer>,
    channels: Arc<Mutex<HashMap<Url, Channel>>>,
}

impl SignedChannels {
    /// Connections whose requests `signer` signs.
    pub(crate) fn new(signer: Arc<Signer>) -> Self {
        Self {
            signer,
            channels: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    async fn channel(&self, url: &Url) -> Result<Channel> {
        if let Some(c) = self.channels.lock().ok().and_then(|m| m.get(url).cloned()) {
            return Ok(c);
        }
        // A worker's failure, told as one (engine/errors.rs), not as a value's.
        let unreachable = |e: &dyn std::fmt::Display| {
            DataFusionError::External(Box::new(tonic::Status::unavailable(format!(
                "worker {url} is unreachable: {e}"
            ))))
        };
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| unreachable(&e))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            // A worker that stops answering fails the statement rather than holding it.
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20));
        // Connected on the runtime of connections: a channel's tasks live on the runtime
        // that made it, and each statement runs on a runtime of its own (engine/threads.rs)
        // that ends with it, taking with it any channel the next statement would reuse.
        let channel = net()
            .map_err(|e| unreachable(&e))?
            .spawn(async move { endpoint.connect().await })
            .await
            .map_err(|e| unreachable(&e))?
            .map_err(|e| unreachable(&e))?;
        if let Ok(mut m) = self.channels.lock() {
            m.insert(url.clone(), channel.clone());
        }
        Ok(channel)
    }
}

#[async_trait]
impl ChannelResolver for SignedChannels {
    async fn get_worker_client_for_url(&self, url: &Url) -> Result<Box<dyn WorkerChannel>> {
        let channel = self.channel(url).await?;
        Ok(create_worker_client(BoxCloneSyncChannel::new(Signing {
            inner: channel,
            signer: Arc::clone(&self.signer),
            authority: url.authority().to_string(),
        })))
    }
}

/// The hub's workers: a fixed list from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct Workers(pub(crate) Vec<Url>);

impl WorkerResolver for Workers {
    fn get_urls(&self) -> Result<Vec<Url>> {
        Ok(self.0.clone())
    }
}
