//! `exchange serve --pg-listen`: the exchange over the Postgres wire protocol, for psql,
//! DBeaver, Metabase, Superset, Grafana, psycopg and every tool that speaks it.
//!
//! pgwire parses the protocol; the handlers are the exchange's own. Each connection logs
//! in ([`auth`]: SCRAM-SHA-256 over the stored password hashes, or an API token as the
//! password over TLS), declares its purpose at startup or with `SET exchange.purpose`,
//! and runs its statements as its principal through the code path of the CLI and Flight
//! SQL, under the same limits (one set of slots for both servers), with the same audit
//! ([`handler`]). Catalog statements are answered from a data-free catalog of what the
//! principal may see ([`catalog`]).

mod auth;
mod catalog;
mod handler;
mod statement;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use pgwire::api::auth::{DefaultServerParameterProvider, ServerParameterProvider};
use pgwire::api::{ClientInfo, PgWireServerHandlers};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::ExchangeFlightService;
use crate::engine::Exchange;

/// Connections served at once; more are turned away at once.
const MAX_CONNECTIONS: usize = 256;

/// Connections of one principal at once. pgwire reads a message whole before handing it
/// on, up to Postgres's 1 GiB: this bounds what one principal's connections can make the
/// server hold (review 31 F1).
const MAX_CONNECTIONS_PER_PRINCIPAL: usize = 32;

/// What every connection shares.
pub(crate) struct Shared {
    /// The limits and code path shared with the Flight SQL server.
    gate: Arc<ExchangeFlightService>,
    catalogs: catalog::CatalogSessions,
    parameters: DefaultServerParameterProvider,
    /// SCRAM iterations offered for a name that is no principal's: those of the costliest
    /// stored hash, as a real principal's could be.
    decoy_iterations: u32,
    /// Open connections by principal.
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// One logged-in connection counted against its principal, until it closes.
struct Counted {
    open: Arc<Mutex<HashMap<String, usize>>>,
    principal: String,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.principal) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.principal);
            }
        }
    }
}

impl Shared {
    /// Count a connection of `principal`, or None when it holds as many as it may.
    fn count(&self, principal: &str) -> Option<Counted> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(principal.to_string()).or_insert(0);
        if *n >= MAX_CONNECTIONS_PER_PRINCIPAL {
            return None;
        }
        *n += 1;
        Some(Counted {
            open: Arc::clone(&self.open),
            principal: principal.to_string(),
        })
    }
}

impl Shared {
    fn ex(&self) -> &Exchange {
        self.gate.exchange()
    }

    /// The server parameters a client was told at login.
    fn parameters_of<C: ClientInfo>(&self, client: &C) -> Vec<(String, String)> {
        self.parameters
            .server_parameters(client)
            .map(|m| m.into_iter().collect())
            .unwrap_or_default()
    }
}

/// One connection's state.
#[derive(Default)]
struct ConnState {
    login: auth::Login,
    principal: Option<String>,
    /// What the principal logged in with.
    credential: Option<auth::Credential>,
    purpose: Option<String>,
    counted: Option<Counted>,
}

/// One connection: every handler pgwire asks for is this.
#[derive(Clone)]
pub(crate) struct Conn {
    shared: Arc<Shared>,
    state: Arc<Mutex<ConnState>>,
}

impl Conn {
    fn lock(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl PgWireServerHandlers for Conn {
    fn simple_query_handler(&self) -> Arc<impl pgwire::api::query::SimpleQueryHandler> {
        Arc::new(self.clone())
    }

    fn extended_query_handler(&self) -> Arc<impl pgwire::api::query::ExtendedQueryHandler> {
        Arc::new(self.clone())
    }

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        Arc::new(self.clone())
    }
}

/// The server parameters clients are told at login: a Postgres 16 that is read-only and
/// no superuser's.
fn parameters() -> DefaultServerParameterProvider {
    let mut p = DefaultServerParameterProvider::default();
    p.server_version = "16.6".into();
    p.is_superuser = false;
    p.default_transaction_read_only = true;
    p.search_path = "public".into();
    p
}

/// A TLS acceptor for Postgres clients (`sslmode=require`) from PEM files.
pub(crate) fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<TlsAcceptor, String> {
    use tokio_rustls::rustls;
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let certs = rustls_pemfile::certs(&mut read(cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key_der = rustls_pemfile::private_key(&mut read(key)?.as_slice())
        .map_err(|e| format!("{}: {e}", key.display()))?
        .ok_or_else(|| format!("{}: no private key", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| e.to_string())?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accept Postgres connections on `listener` until `stop` is notified.
pub(crate) async fn accept(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    gate: Arc<ExchangeFlightService>,
    stop: Arc<tokio::sync::Notify>,
) {
    let decoy_iterations = gate
        .exchange()
        .governance()
        .policies
        .principals()
        .iter()
        .filter_map(|p| p.password_hash.as_deref())
        .filter_map(super::auth::password_parts)
        .map(|(i, _, _)| i)
        .max()
        .unwrap_or(super::DEFAULT_ITERATIONS);
    let shared = Arc::new(Shared {
        gate,
        catalogs: catalog::CatalogSessions::default(),
        parameters: parameters(),
        decoy_iterations,
        open: Arc::new(Mutex::new(HashMap::new())),
    });
    let open = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (socket, _) = tokio::select! {
            _ = stop.notified() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // A failed accept (out of descriptors, a reset) concerns that client only.
                Err(_) => continue,
            },
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            drop(socket);
            continue;
        };
        let conn = Conn {
            shared: Arc::clone(&shared),
            state: Arc::new(Mutex::new(ConnState::default())),
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            let _ = pgwire::tokio::process_socket(socket, tls, conn).await;
            drop(permit);
        });
    }
}
