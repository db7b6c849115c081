//! `exchange serve`: the exchange over Arrow Flight SQL, and beside it the Postgres wire
//! protocol ([`pg`]) and the web console ([`console`]).
//!
//! Every request authenticates (Flight handshake with user name and password, giving an
//! expiring bearer token; or a long-lived API token), states its purpose in the
//! `x-exchange-purpose` header, and runs through [`crate::Exchange::execute`], the code path
//! of the CLI: same sessions, same policy rule, same audit. Results are computed and audited
//! when the statement is described (`GetFlightInfo`), then streamed by `DoGet`.

mod auth;
mod console;
mod failures;
mod pg;
mod service;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};

pub use auth::{
    AuthError, DEFAULT_ITERATIONS, SessionTokens, hash_api_token, hash_password, new_api_token,
    set_principal_field, stored_tokens, verify_password,
};
pub use service::{ExchangeFlightService, Limits, PURPOSE_HEADER};

use crate::engine::Exchange;

/// Errors of the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A TLS file could not be read or used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The transport failed.
    #[error("server: {0}")]
    Transport(String),
    /// Setting up the service failed.
    #[error("{0}")]
    Setup(String),
}

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// PEM certificate chain and key, for TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Limits per query and on concurrency.
    pub limits: Limits,
    /// Lifetime of the bearer tokens the handshake issues.
    pub token_ttl: Duration,
    /// On shutdown, how long in-flight calls get to finish before the server stops anyway
    /// (so a stalled client cannot keep the audit log from being sealed).
    pub drain: Duration,
    /// Address to serve the Postgres wire protocol on, beside Flight SQL (port 0: any).
    pub pg_listen: Option<SocketAddr>,
    /// Address to serve the web console on (port 0: any).
    pub http_listen: Option<SocketAddr>,
    /// Reload schemas and policies on SIGHUP and, every this often (unless zero), when
    /// their files change; None: never ([`crate::engine::spawn_reloader`]).
    pub watch_policies: Option<Duration>,
}

/// Where a started server listens.
#[derive(Debug, Clone, Copy)]
pub struct Listening {
    /// Arrow Flight SQL.
    pub flight: SocketAddr,
    /// The Postgres wire protocol, when asked for.
    pub pg: Option<SocketAddr>,
    /// The web console, when asked for.
    pub http: Option<SocketAddr>,
}

impl ServeOptions {
    /// The options of `[serve]` in `exchange.toml`.
    pub fn from_settings(s: &crate::config::ServeSettings) -> Self {
        Self {
            listen: s.listen,
            tls: s.tls_cert.clone().zip(s.tls_key.clone()),
            limits: Limits::from_settings(s),
            token_ttl: Duration::from_secs(s.token_ttl_secs),
            drain: Duration::from_secs(s.drain_secs),
            pg_listen: s.pg_listen,
            http_listen: s.http_listen,
            watch_policies: Some(Duration::from_secs(s.watch_policies_secs)),
        }
    }
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self::from_settings(&crate::config::ServeSettings::default())
    }
}

/// Wait for Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Serve until Ctrl-C or SIGTERM; in-flight requests finish, then the exchange (and its
/// audit log, sealed with a shutdown checkpoint) is closed. `ready` is told the bound
/// address once the server accepts connections.
pub async fn serve(
    ex: Exchange,
    options: ServeOptions,
    ready: impl FnOnce(Listening),
) -> Result<(), ServerError> {
    serve_until(ex, options, ready, shutdown_signal()).await
}

/// [`serve`] until `shutdown` completes instead of a signal (embedding, benchmarks).
pub async fn serve_until(
    ex: Exchange,
    options: ServeOptions,
    ready: impl FnOnce(Listening),
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServerError> {
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: options.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServerError::Transport(e.to_string()))?;
    let ex = Arc::new(ex);
    let ttl = i64::try_from(options.token_ttl.as_secs()).unwrap_or(i64::MAX);
    let tokens = SessionTokens::new(ttl).map_err(|e| ServerError::Setup(e.to_string()))?;
    let service = Arc::new(
        ExchangeFlightService::new(Arc::clone(&ex), tokens, options.limits)
            .map_err(|e| ServerError::Setup(e.message().to_string()))?,
    );
    let pg_stop = Arc::new(tokio::sync::Notify::new());
    let pg = match options.pg_listen {
        None => None,
        Some(pg_addr) => {
            let pg_listener = tokio::net::TcpListener::bind(pg_addr)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: pg_addr,
                    source,
                })?;
            let bound = pg_listener
                .local_addr()
                .map_err(|e| ServerError::Transport(e.to_string()))?;
            let tls = match &options.tls {
                Some((cert, key)) => Some(pg::tls_acceptor(cert, key).map_err(ServerError::Tls)?),
                None => None,
            };
            tokio::spawn(pg::accept(
                pg_listener,
                tls,
                Arc::clone(&service),
                Arc::clone(&pg_stop),
            ));
            Some(bound)
        }
    };
    let http_stop = Arc::new(tokio::sync::Notify::new());
    let http = match options.http_listen {
        None => None,
        Some(http_addr) => {
            let listener = tokio::net::TcpListener::bind(http_addr)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: http_addr,
                    source,
                })?;
            let bound = listener
                .local_addr()
                .map_err(|e| ServerError::Transport(e.to_string()))?;
            let tls = match &options.tls {
                Some((cert, key)) => Some(pg::tls_acceptor(cert, key).map_err(ServerError::Tls)?),
                None => None,
            };
            tokio::spawn(console::accept(
                listener,
                tls,
                Arc::clone(&service),
                options.token_ttl,
                Arc::clone(&http_stop),
            ));
            Some(bound)
        }
    };
    let mut builder = Server::builder();
    if let Some((cert, key)) = &options.tls {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|e| ServerError::Tls(format!("{}: {e}", p.display())))
        };
        let identity = Identity::from_pem(read(cert)?, read(key)?);
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(identity))
            .map_err(|e| ServerError::Tls(e.to_string()))?;
    }
    if !options.listen.ip().is_loopback() && options.tls.is_none() {
        eprintln!(
            "warning: listening on {addr} without TLS: passwords and tokens cross the network in clear text (use --tls-cert and --tls-key)"
        );
    }
    let reloader = options
        .watch_policies
        .map(|every| crate::engine::spawn_reloader(Arc::clone(&ex), every));
    ready(Listening {
        flight: addr,
        pg,
        http,
    });
    // On shutdown, in-flight calls get `drain` to finish; then the server stops anyway, so
    // a stalled client cannot keep the audit log from being sealed.
    let drain = options.drain;
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopping = Arc::clone(&stop);
    let pg_stopping = Arc::clone(&pg_stop);
    let http_stopping = Arc::clone(&http_stop);
    let signal = async move {
        shutdown.await;
        // No new Postgres or console connections; open ones end with the process.
        pg_stopping.notify_one();
        http_stopping.notify_one();
        stopping.notify_one();
    };
    let server = builder
        .add_service(FlightServiceServer::from_arc(Arc::clone(&service)))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), signal);
    let result = tokio::select! {
        r = server => r.map_err(|e| ServerError::Transport(e.to_string())),
        _ = async { stop.notified().await; tokio::time::sleep(drain).await } => {
            eprintln!("warning: calls still open {drain:?} after shutdown began were cut off");
            Ok(())
        }
    };
    if let Some(r) = reloader {
        r.abort();
    }
    service.record_pending_login_failures();
    ex.audit()
        .close()
        .map_err(|e| ServerError::Setup(format!("audit log not sealed: {e}")))?;
    result
}
