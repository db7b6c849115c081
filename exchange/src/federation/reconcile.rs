//! `exchange audit reconcile`: every request a node served must be explained by a hub
//! statement, and every request a hub statement made of a node whose log is given must be
//! in that log.
//!
//! A hub record lists the statement's node requests (`node_requests`:
//! `agency.table/<request id>`, one per scan of a node's table) under its `statement_id`; a
//! node record names `<hub key id>/<statement id>/<request id>`. A node record is explained
//! when the hub statement lists that request for the same table, and the principal and
//! purpose are the statement's; each request explains one node record only (review 27 H2:
//! pairing on the statement id alone let a stolen-key request reuse an id from the log).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::audit::{AuditError, Decision, StatementKind, read_all, statements};

/// What reconciling a hub's log with nodes' logs found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Reconciliation {
    /// Hub statements that read tables through nodes.
    pub hub_statements: usize,
    /// Node records paired with a hub statement's request.
    pub matched: usize,
    /// Node records no hub statement explains.
    pub unexplained: Vec<String>,
    /// Hub requests to a node whose log was given, absent from it: a node log cut short,
    /// or a statement that ended before reading a table it planned (a join whose other side
    /// was empty): worth a look, not proof of tampering.
    pub missing: Vec<String>,
    /// Requests nodes refused before verifying them (unsigned, forged, replayed, expired).
    pub unverified: usize,
}

impl Reconciliation {
    /// Whether every node record is explained and no request is missing.
    pub fn is_clean(&self) -> bool {
        self.unexplained.is_empty() && self.missing.is_empty()
    }
}

fn agency_of(table: &str) -> &str {
    table.split_once('.').map_or(table, |(a, _)| a)
}

/// A node request as the hub's record lists it.
struct HubRequest {
    seq: u64,
    statement: String,
    table: String,
    principal: String,
    purpose: Option<String>,
}

/// Reconcile the hub's log at `hub` with the nodes' logs at `nodes`. When `hub_key_id` is
/// given, a node record naming another key is unexplained too.
pub fn reconcile(
    hub: &Path,
    nodes: &[PathBuf],
    hub_key_id: Option<&str>,
) -> Result<Reconciliation, AuditError> {
    let mut out = Reconciliation::default();
    let mut requests: BTreeMap<String, HubRequest> = BTreeMap::new();
    for r in statements(read_all(hub)?) {
        let Some(id) = &r.entry.statement_id else {
            continue;
        };
        out.hub_statements += 1;
        for q in &r.entry.node_requests {
            let Some((table, request)) = q.rsplit_once('/') else {
                continue;
            };
            requests.insert(
                request.to_string(),
                HubRequest {
                    seq: r.seq,
                    statement: id.clone(),
                    table: table.to_string(),
                    principal: r.entry.principal.clone(),
                    purpose: r.entry.purpose.clone(),
                },
            );
        }
    }
    let mut used: BTreeSet<String> = BTreeSet::new();
    let mut node_agencies: BTreeSet<String> = BTreeSet::new();
    for dir in nodes {
        for r in statements(read_all(dir)?) {
            if r.entry.kind != StatementKind::Node {
                continue;
            }
            let Some(named) = &r.entry.hub_statement else {
                out.unverified += 1;
                continue;
            };
            let table = r.entry.tables.first().map(|t| t.table.clone());
            if let Some(t) = &table {
                node_agencies.insert(agency_of(t).to_string());
            }
            let mut parts = named.splitn(3, '/');
            let (key, statement, request) = (
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
            );
            let why = match requests.get(request) {
                _ if hub_key_id.is_some_and(|k| k != key) => {
                    Some("it is signed by another key than the hub's".to_string())
                }
                None => Some("no hub statement made this request".to_string()),
                Some(h) if h.statement != statement => Some(format!(
                    "the hub made this request in statement {}",
                    h.statement
                )),
                Some(h) if table.as_deref().is_some_and(|t| t != h.table) => {
                    Some(format!("the hub asked for {}, not this table", h.table))
                }
                Some(h) if h.principal != r.entry.principal || h.purpose != r.entry.purpose => {
                    Some(format!(
                        "the hub asked as {} for {}",
                        h.principal,
                        h.purpose.as_deref().unwrap_or("no purpose")
                    ))
                }
                Some(_) if used.contains(request) => {
                    Some("the request was served more than once".to_string())
                }
                Some(_) => None,
            };
            match why {
                None => {
                    used.insert(request.to_string());
                    out.matched += 1;
                }
                Some(why) => out.unexplained.push(format!(
                    "{}: record {}: {} request by {} for {} ({}), hub statement {named}: {why}",
                    dir.display(),
                    r.seq,
                    if r.entry.decision == Decision::Allowed {
                        "served"
                    } else {
                        "refused"
                    },
                    r.entry.principal,
                    r.entry.purpose.as_deref().unwrap_or("no purpose"),
                    table.as_deref().unwrap_or("no table"),
                )),
            }
        }
    }
    for (request, h) in &requests {
        let agency = agency_of(&h.table);
        if node_agencies.contains(agency) && !used.contains(request) {
            out.missing.push(format!(
                "hub record {} (statement {}) asked the node of {agency} for {} (request {request}), which has no record of it",
                h.seq, h.statement, h.table
            ));
        }
    }
    Ok(out)
}
