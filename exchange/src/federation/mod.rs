//! Federation: agencies keep their data, keys and enforcement at home.
//!
//! An agency node (`exchange node`, [`serve_node`]) serves its agency's tables to hubs whose
//! Ed25519 keys it pins: each request is signed, expires within a minute and is never
//! served twice; the node re-resolves the grant itself, applies row filter and treatments,
//! computes tokens with its own keys, streams the treated batches and audits the request in
//! its own log. A hub (`[federation.nodes]` in `exchange.toml`) plans with the same policy
//! rule as a single exchange, but reads those agencies' tables through their nodes
//! ([`RemoteTable`]): plan-level constraints (join-only, aggregate-only, minimum groups)
//! are checked at the hub, everything row-level at the node. `exchange audit reconcile`
//! ([`reconcile`]) pairs the node records with the hub statements that caused them.

mod node;
mod predicate;
mod reconcile;
mod remote;
mod request;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use node::{LocalNode, NodeOptions, serve_node};
pub use predicate::{
    Comparison, Literal, MAX_NODES, MAX_PATTERNS_CHARS, MAX_PREDICATES, Operand, Predicate,
};
pub use reconcile::{ReconcileError, Reconciliation, reconcile};
pub use remote::{Claims, NodeClient, RemoteTable, bytes_received};
pub use request::{
    NodeRequest, ReplayCache, Signer, asked_digest, attributes_of, roles_of, verify,
};

/// `[federation]` in `exchange.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationSettings {
    /// At a hub: the node serving each agency's tables (`[federation.nodes.<agency>]`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<String, NodeSettings>,
    /// At a node: the hubs it serves, by name: each hub's Ed25519 public key (hex, as in
    /// the hub's `signing.pub`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub hubs: BTreeMap<String, String>,
    /// Seconds a node has to connect and to send each batch before the query fails.
    pub timeout_secs: u64,
}

impl Default for FederationSettings {
    fn default() -> Self {
        Self {
            nodes: BTreeMap::new(),
            hubs: BTreeMap::new(),
            timeout_secs: 30,
        }
    }
}

/// `[federation.nodes.<agency>]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSettings {
    /// The node's address, `http://host:port` (or `https://`).
    pub url: String,
}

impl FederationSettings {
    /// Check node addresses and hub keys; the error names the entry.
    pub fn validate(&self) -> Result<(), String> {
        for (agency, n) in &self.nodes {
            let ok = crate::config::service_url(&n.url);
            if ok.is_none() {
                return Err(format!(
                    "nodes.{agency}.url must be an http:// or https:// URL with a host and nothing else (no user, password, query or fragment)"
                ));
            }
        }
        for (hub, key) in &self.hubs {
            if crate::keys::PublicKey::from_hex(key.trim()).is_none() {
                return Err(format!(
                    "hubs.{hub} must be an Ed25519 public key in hex (the hub's signing.pub)"
                ));
            }
        }
        if !(1..=3600).contains(&self.timeout_secs) {
            return Err("timeout_secs must be 1 to 3600".into());
        }
        Ok(())
    }

    /// The pinned hub keys.
    pub fn hub_keys(&self) -> BTreeMap<String, crate::keys::PublicKey> {
        self.hubs
            .iter()
            .filter_map(|(n, k)| crate::keys::PublicKey::from_hex(k.trim()).map(|k| (n.clone(), k)))
            .collect()
    }
}

/// Errors of federation's setup and requests.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FederationError {
    /// A request a node refuses before reading anything: what is wrong with it.
    #[error("node request refused: {0}")]
    BadRequest(String),
    /// The node cannot be set up.
    #[error("{0}")]
    Setup(String),
    /// Something that should not fail did.
    #[error("internal: {0}")]
    Internal(String),
}

/// A table's node failed the query: which agency, which table, why (never a value).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the node of agency {agency} could not serve {table}: {cause}; nothing was returned")]
pub struct NodeError {
    /// The agency whose node failed.
    pub agency: String,
    /// `agency.table`.
    pub table: String,
    /// What happened.
    pub cause: String,
}

/// The statement being planned, as node requests name it.
struct Statement {
    id: String,
    /// `agency.table/<request id>/<asked digest>` of every federated scan planned.
    requests: std::sync::Mutex<Vec<String>>,
}

/// A statement that read tables through nodes, as the hub's audit record names it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Federated {
    /// The id every node request of the statement carries.
    pub id: String,
    /// `agency.table/<request id>/<asked digest>` of each node request it may make.
    pub requests: Vec<String>,
}

tokio::task_local! {
    static STATEMENT: Arc<Statement>;
}

/// Run `planning` as one statement: federated scans planned inside it name its id. Returns
/// the id and the scans' requests if any federated scan was planned (for the hub's audit
/// record).
pub(crate) async fn within_statement<F: std::future::Future>(
    planning: F,
) -> (F::Output, Option<Federated>) {
    let Ok(id) = request::random_id() else {
        // No id: federated scans fail closed (see `new_request`).
        return (planning.await, None);
    };
    let statement = Arc::new(Statement {
        id,
        requests: std::sync::Mutex::new(Vec::new()),
    });
    let out = STATEMENT.scope(Arc::clone(&statement), planning).await;
    let requests = statement
        .requests
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default();
    let federated = (!requests.is_empty()).then(|| Federated {
        id: statement.id.clone(),
        requests,
    });
    (out, federated)
}

/// A new request of the statement being planned for `table`, asking `asked`
/// ([`asked_digest`]): (statement id, request id).
fn new_request(table: &str, asked: &str) -> Option<(String, String)> {
    let request = request::random_id().ok()?;
    STATEMENT
        .try_with(|s| {
            let mut all = s.requests.lock().ok()?;
            all.push(format!("{table}/{request}/{asked}"));
            Some((s.id.clone(), request.clone()))
        })
        .ok()
        .flatten()
}
