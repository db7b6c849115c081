//! `exchange worker`: a datafusion-distributed worker that runs the hub's plan fragments.
//!
//! It plans nothing: every fragment it runs was planned, policy and all, by its hub. It
//! accepts fragments only from that hub, signed ([`super::auth`]); its registry holds the
//! exchange's functions (guarded built-ins, masks, validators, `||` as a guarded function)
//! and, for each fragment, the token functions of the statement's scope under keys derived
//! from its own key files, checked against the hub's by fingerprint; its operators come
//! through [`super::codec::ExchangeCodec`]. Each fragment runs under a memory pool of its
//! own, within the process's budget. It logs refusals, never data.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::SessionState;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::SessionContext;
use datafusion_distributed::{DistributedExt, Worker, WorkerQueryContext, WorkerSessionBuilder};
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use super::auth::{Authenticated, Signer, TOKENS_HEADER, Verifier};
use super::channels::SignedChannels;
use super::codec::{ExchangeCodec, TokenScope};
use crate::config::ExchangeConfig;
use crate::engine::{Budget, BudgetedPool};
use crate::keys::{KeyRing, Keys, PublicKey};
use crate::masking::{MaskFn, Validator};

/// Memory one fragment may use when `[execution] memory_limit_mib` is unset: 2 GiB, a
/// server statement's default.
const DEFAULT_FRAGMENT_MEMORY: usize = 2048 << 20;

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Its configuration, keys or address.
    #[error("{0}")]
    Setup(String),
    /// The server failed.
    #[error("worker server: {0}")]
    Server(String),
}

/// How a worker is started.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Address to listen on; port 0: any free port.
    pub listen: SocketAddr,
    /// The address the hub and peers reach it at (`http://host:port`); default
    /// `http://<listen>`. Requests are signed for this address and refused for any other.
    pub url: Option<String>,
}

/// The per-fragment sessions of a worker.
struct Sessions {
    ring: Arc<KeyRing>,
    budget: Budget,
    memory_limit: Option<usize>,
    base: Arc<RuntimeEnv>,
    channels: SignedChannels,
}

impl Sessions {
    /// A runtime of the worker's stores, with a memory pool of the fragment's own.
    fn runtime(&self) -> Result<Arc<RuntimeEnv>> {
        let mut pool = RuntimeEnvBuilder::new();
        if let Some(limit) = self.memory_limit {
            pool = pool.with_memory_limit(limit, 1.0);
        }
        let pool = pool.build()?.memory_pool;
        Ok(Arc::new(RuntimeEnv {
            memory_pool: Arc::new(BudgetedPool::new(pool, self.budget)),
            disk_manager: Arc::clone(&self.base.disk_manager),
            cache_manager: Arc::clone(&self.base.cache_manager),
            object_store_registry: Arc::clone(&self.base.object_store_registry),
        }))
    }
}

#[async_trait]
impl WorkerSessionBuilder for Sessions {
    async fn build_session_state(&self, ctx: WorkerQueryContext) -> Result<SessionState> {
        // Without a scope no token function exists, and a fragment computing tokens fails.
        let tokens = match ctx.headers.get(TOKENS_HEADER) {
            None => vec![],
            Some(v) => v
                .to_str()
                .map_err(|_| "a malformed token scope header".to_string())
                .and_then(TokenScope::parse)
                .and_then(|scope| scope.functions(&self.ring))
                .map_err(DataFusionError::Plan)?,
        };
        let state = ctx
            .builder
            .with_runtime_env(self.runtime()?)
            .with_distributed_user_codec(ExchangeCodec)
            .with_distributed_channel_resolver(self.channels.clone())
            .build();
        let ctx = SessionContext::new_with_state(state);
        // The hub's registry, function for function: built-ins guarded first.
        let _ = crate::enforcement::guard_functions(&ctx, self.budget);
        for f in MaskFn::ALL {
            ctx.register_udf(f.udf().as_ref().clone());
        }
        for v in Validator::ALL {
            ctx.register_udf(v.udf().as_ref().clone());
        }
        ctx.register_udf(
            crate::enforcement::string_concat(self.budget)
                .as_ref()
                .clone(),
        );
        for t in tokens {
            ctx.register_udf(t.as_ref().clone());
        }
        Ok(ctx.state())
    }
}

/// Serve plan fragments of the hub `config` names (`[distributed] hub`) until `shutdown`;
/// `ready` gets the bound address.
pub async fn serve_worker(
    config: ExchangeConfig,
    options: WorkerOptions,
    ready: impl FnOnce(SocketAddr, String),
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    let settings = &config.distributed;
    settings.validate().map_err(WorkerError::Setup)?;
    let hub = settings
        .hub
        .as_deref()
        .and_then(PublicKey::from_hex)
        .ok_or_else(|| {
            WorkerError::Setup(
                "a worker runs fragments of its hub only, and none is configured: add the hub's public key as `hub` under [distributed] in exchange.toml".into(),
            )
        })?;
    let peers = settings.peer_keys().map_err(WorkerError::Setup)?;
    let Keys { ring, signing } =
        Keys::load(&config.key_dir).map_err(|e| WorkerError::Setup(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| WorkerError::Setup(format!("cannot listen on {}: {e}", options.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| WorkerError::Setup(e.to_string()))?;
    let url = options.url.unwrap_or_else(|| format!("http://{addr}"));
    let authority = url::Url::parse(&url)
        .ok()
        .map(|u| u.authority().to_string())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| WorkerError::Setup(format!("--url {url} is not an http:// URL")))?;

    // The stores of every dataset location, as the hub registers them.
    let base = Arc::new(
        RuntimeEnvBuilder::new()
            .build()
            .map_err(|e| WorkerError::Setup(e.to_string()))?,
    );
    let stores = crate::catalog::Stores::new(config.stores.clone());
    if let Ok(catalog) = crate::catalog::Catalog::load(&config.schemas_dir()) {
        for d in catalog.datasets() {
            // An unreachable store fails the fragments that read it, with its reason.
            let _ = stores.register(&base, &d.agency, &d.resolve_location(&config.data_root));
        }
    }
    let sessions = Sessions {
        ring: Arc::new(ring),
        budget: config.memory_budget,
        // Unset, a fragment may use what a server's statement may (serve.memory_limit_mib).
        memory_limit: config.memory_limit.or(Some(DEFAULT_FRAGMENT_MEMORY)),
        base,
        channels: SignedChannels::new(Arc::new(Signer::new(Arc::new(signing)))),
    };
    let worker = Worker::from_session_builder(sessions);
    let service = Authenticated {
        inner: worker.into_worker_server(),
        verifier: Arc::new(Verifier::new(authority, hub, peers)),
    };
    if !addr.ip().is_loopback() {
        eprintln!(
            "warning: worker listening on {addr} without TLS: requests are signed, but fragments and rows cross the network in clear text (keep workers on a private network or behind a TLS proxy)"
        );
    }
    ready(addr, url);
    Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await
        .map_err(|e| WorkerError::Server(e.to_string()))
}

/// A worker serving in this process on a free loopback port (tests, benchmarks).
#[derive(Debug)]
pub struct LocalWorker {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), WorkerError>>,
}

impl LocalWorker {
    /// Start a worker of `config`: its keys, stores, and the hub it serves
    /// (`config.distributed.hub`).
    pub async fn start(config: ExchangeConfig) -> Result<Self, WorkerError> {
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let options = WorkerOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            url: None,
        };
        let task = tokio::spawn(serve_worker(
            config,
            options,
            move |_, url| {
                let _ = addr_tx.send(url);
            },
            async move {
                let _ = stopped.await;
            },
        ));
        match addr_rx.await {
            Ok(url) => Ok(Self { url, stop, task }),
            Err(_) => Err(match task.await {
                Ok(Err(e)) => e,
                _ => WorkerError::Setup("the worker did not start".into()),
            }),
        }
    }

    /// Stop serving (running fragments are dropped).
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.abort();
        let _ = self.task.await;
    }
}
