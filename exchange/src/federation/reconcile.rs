//! `exchange audit reconcile`: every request a node served must be explained by a hub
//! statement, and every request a hub statement made of a node whose log is given must be
//! in that log.
//!
//! A hub record lists the statement's node requests (`node_requests`:
//! `agency.table/<request id>`, one per scan of a node's table) under its `statement_id`; a
//! node record names `<hub key id>/<statement id>/<request id>`. A node record is explained
//! when the hub statement lists that request for the same table, and the principal and
//! purpose are the statement's, the columns and limit asked are those the hub planned
//! (digest), the node record falls within the statement's time (from its start to its end
//! plus a request's validity), and each request explains one node record only (review 27
//! H2: pairing on the statement id alone let a stolen-key request reuse an id from the log;
//! 27b F1: a request listed but never sent could be filled in later with other columns).
//!
//! Paths that are not audit logs are errors, never an empty log that reconciles (27b F2).

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
    /// Requests nodes refused before verifying them (unsigned, forged, replayed, expired),
    /// counting those a node recorded together past its rate.
    pub unverified: u64,
    /// What keeps the logs from vouching for the whole (a node log without node records,
    /// a hub log holding node records).
    pub warnings: Vec<String>,
}

impl Reconciliation {
    /// Whether every node record is explained and no request is missing.
    pub fn is_clean(&self) -> bool {
        self.unexplained.is_empty() && self.missing.is_empty() && self.warnings.is_empty()
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
    asked: String,
    principal: String,
    purpose: Option<String>,
    /// When the statement began and the last moment a request of it could be served.
    from: Option<chrono::DateTime<chrono::FixedOffset>>,
    until: Option<chrono::DateTime<chrono::FixedOffset>>,
}

/// Errors of reconciling.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// A log could not be read or is broken.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// A path given is not an audit log.
    #[error("{path}: {why}")]
    NotALog {
        /// The path given.
        path: PathBuf,
        /// What it is instead.
        why: String,
    },
}

/// The records of the audit log at `dir`, which must be one.
fn log_records(dir: &Path) -> Result<Vec<crate::audit::AuditRecord>, ReconcileError> {
    let not = |why: &str| ReconcileError::NotALog {
        path: dir.to_path_buf(),
        why: why.to_string(),
    };
    if !dir.is_dir() {
        return Err(not(
            "not a directory (give the audit log directory, <state_dir>/audit)",
        ));
    }
    if !dir.join(crate::audit::segment_name(1)).is_file() {
        let hint = if dir.join("audit").is_dir() {
            format!(" (its audit log is {})", dir.join("audit").display())
        } else {
            String::new()
        };
        return Err(not(&format!("holds no audit log segment{hint}")));
    }
    Ok(statements(read_all(dir)?))
}

fn time(t: &str) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::parse_from_rfc3339(t).ok()
}

/// Requests a node refused unverified that a record stands for: itself and those it counts.
fn unverified_in(reason: Option<&str>) -> u64 {
    1 + reason
        .and_then(|r| r.split("(and ").nth(1))
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0)
}

/// Reconcile the hub's log at `hub` with the nodes' logs at `nodes`. When `hub_key_id` is
/// given, a node record naming another key is unexplained too.
pub fn reconcile(
    hub: &Path,
    nodes: &[PathBuf],
    hub_key_id: Option<&str>,
) -> Result<Reconciliation, ReconcileError> {
    let mut out = Reconciliation::default();
    let mut requests: BTreeMap<String, HubRequest> = BTreeMap::new();
    let hub_records = log_records(hub)?;
    if hub_records
        .iter()
        .any(|r| r.entry.kind == StatementKind::Node)
    {
        out.warnings.push(format!(
            "{} holds node request records: is it a node's log given as the hub's?",
            hub.display()
        ));
    }
    let slack = chrono::Duration::seconds(
        super::request::MAX_VALIDITY_SECS + super::request::CLOCK_SKEW_SECS,
    );
    for r in hub_records {
        let Some(id) = &r.entry.statement_id else {
            continue;
        };
        out.hub_statements += 1;
        let from = time(&r.time);
        let ran = chrono::Duration::milliseconds(
            i64::try_from(r.entry.duration_ms).unwrap_or(i64::MAX / 2),
        );
        let until = from.map(|f| f + ran + slack);
        for q in &r.entry.node_requests {
            let mut parts = q.rsplitn(3, '/');
            let (Some(asked), Some(request), Some(table)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            requests.insert(
                request.to_string(),
                HubRequest {
                    seq: r.seq,
                    statement: id.clone(),
                    table: table.to_string(),
                    asked: asked.to_string(),
                    principal: r.entry.principal.clone(),
                    purpose: r.entry.purpose.clone(),
                    from,
                    until,
                },
            );
        }
    }
    let skew = chrono::Duration::seconds(super::request::CLOCK_SKEW_SECS);
    let mut used: BTreeSet<String> = BTreeSet::new();
    let mut node_agencies: BTreeSet<String> = BTreeSet::new();
    for dir in nodes {
        let records = log_records(dir)?;
        if !records.iter().any(|r| r.entry.kind == StatementKind::Node) {
            out.warnings.push(format!(
                "{} holds no node request records: is it an agency node's log? (a node that served nothing cannot vouch for the requests the hub made of it)",
                dir.display()
            ));
        }
        for r in records {
            if r.entry.kind != StatementKind::Node {
                continue;
            }
            let Some(named) = &r.entry.hub_statement else {
                out.unverified += unverified_in(r.entry.reason.as_deref());
                continue;
            };
            let table = r.entry.tables.first().map(|t| t.table.clone());
            if let Some(t) = &table {
                node_agencies.insert(agency_of(t).to_string());
            }
            let mut parts = named.splitn(4, '/');
            let (key, statement, request, asked) = (
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
            );
            let at = time(&r.time);
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
                Some(h) if h.asked != asked => {
                    Some("it asked for other columns or another limit than the hub".to_string())
                }
                Some(h)
                    if !matches!((at, h.from, h.until), (Some(at), Some(from), Some(until))
                        if at + skew >= from && at <= until) =>
                {
                    Some("it was served outside the time of the hub statement".to_string())
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
