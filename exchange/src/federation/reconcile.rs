//! `exchange audit reconcile`: every request a node served must be explained by a hub
//! statement, and every hub statement that read an agency's tables through its node must
//! have the node's record.
//!
//! A node record names the hub statement (`<hub key id>/<statement id>`); the hub's record
//! of the statement carries the same `statement_id`. A request made straight to a node
//! with a stolen hub key is signed like any other and served, but no hub statement has its
//! id: reconcile reports it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::audit::{AuditError, AuditRecord, Decision, StatementKind, read_all, statements};

/// What reconciling a hub's log with nodes' logs found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Reconciliation {
    /// Hub statements that read tables through nodes.
    pub hub_statements: usize,
    /// Node records paired with a hub statement.
    pub matched: usize,
    /// Node records no hub statement explains: `node log: seq N: ...`.
    pub unexplained: Vec<String>,
    /// Hub statements without the record of a node whose log was given.
    pub missing: Vec<String>,
    /// Requests nodes refused before verifying them (unsigned, forged, replayed, expired).
    pub unverified: usize,
}

impl Reconciliation {
    /// Whether every node record is explained and no node record is missing.
    pub fn is_clean(&self) -> bool {
        self.unexplained.is_empty() && self.missing.is_empty()
    }
}

fn agency_of(table: &str) -> &str {
    table.split_once('.').map_or(table, |(a, _)| a)
}

/// Reconcile the hub's log at `hub` with the nodes' logs at `nodes`. When `hub_key_id` is
/// given, a node record naming another key is unexplained too.
pub fn reconcile(
    hub: &Path,
    nodes: &[PathBuf],
    hub_key_id: Option<&str>,
) -> Result<Reconciliation, AuditError> {
    let mut out = Reconciliation::default();
    // Statement id -> (hub seq, agencies read through nodes).
    let mut by_id: BTreeMap<String, (u64, BTreeSet<String>)> = BTreeMap::new();
    for r in statements(read_all(hub)?) {
        if let Some(id) = &r.entry.statement_id {
            let agencies = r
                .entry
                .tables
                .iter()
                .map(|t| agency_of(&t.table).to_string())
                .collect();
            by_id.insert(id.clone(), (r.seq, agencies));
        }
    }
    out.hub_statements = by_id.len();
    // (statement id, agency) pairs some node record covers.
    let mut covered: BTreeSet<(String, String)> = BTreeSet::new();
    let mut node_agencies: BTreeSet<String> = BTreeSet::new();
    for dir in nodes {
        let records: Vec<AuditRecord> = statements(read_all(dir)?);
        for r in records {
            if r.entry.kind != StatementKind::Node {
                continue;
            }
            let Some(named) = &r.entry.hub_statement else {
                out.unverified += 1;
                continue;
            };
            let agency = r
                .entry
                .tables
                .first()
                .map(|t| agency_of(&t.table).to_string());
            if let Some(a) = &agency {
                node_agencies.insert(a.clone());
            }
            let (key, id) = named.split_once('/').unwrap_or(("", named.as_str()));
            let served = r.entry.decision == Decision::Allowed;
            let explained = by_id.contains_key(id) && hub_key_id.is_none_or(|k| k == key);
            if explained {
                out.matched += 1;
                if let Some(a) = agency {
                    covered.insert((id.to_string(), a));
                }
            } else {
                out.unexplained.push(format!(
                    "{}: record {}: {} request by {} for {} ({}), hub statement {named} is not in the hub's log{}",
                    dir.display(),
                    r.seq,
                    if served { "served" } else { "refused" },
                    r.entry.principal,
                    r.entry.purpose.as_deref().unwrap_or("no purpose"),
                    r.entry
                        .tables
                        .iter()
                        .map(|t| t.table.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    if hub_key_id.is_some_and(|k| k != key) {
                        " (and is signed by another key)"
                    } else {
                        ""
                    }
                ));
            }
        }
    }
    for (id, (seq, agencies)) in &by_id {
        for a in agencies {
            if node_agencies.contains(a) && !covered.contains(&(id.clone(), a.clone())) {
                out.missing.push(format!(
                    "hub record {seq} (statement {id}) read {a}'s tables, but the node log of {a} has no request of it"
                ));
            }
        }
    }
    Ok(out)
}
