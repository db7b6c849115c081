//! The audit log: every statement, allowed or refused, as one canonical JSON line, in a
//! hash chain signed at checkpoints.
//!
//! - Every line (record or checkpoint) carries the SHA-256 of the line before it, across
//!   segment files, so deleting, editing, reordering or inserting a line breaks the chain.
//! - A checkpoint line signs (Ed25519) the number of records and the chain head. One is
//!   written every `checkpoint_every` records, when a segment is rotated, when the log
//!   closes, and when it is reopened after an unclean shutdown. A log that does not end with
//!   a checkpoint was cut short (or the exchange is running): `verify` says so.
//! - Each record is written and fsynced before the statement's result is returned.
//! - A torn last line (the process died mid-write) is reported by `verify`; when the
//!   exchange reopens the log, it moves the torn bytes to a `.torn` file beside the segment
//!   (nothing is lost) and records that in a signed checkpoint. Any other damage refuses
//!   to open: the exchange does not append to a log it cannot vouch for.
//! - Segments (`audit-000001.jsonl`, ...) rotate every `segment_records` records; the
//!   chain continues across them and the rotation checkpoint names the next segment.

mod events;
mod log;
mod report;
mod verify;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use events::{AuditEvents, events_schema};
pub use log::{AuditLog, AuditOptions, Durability, holder_pid, in_use};
pub use report::{Report, report};
pub use verify::{Summary, read_all, verify};

/// Errors of the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The log could not be read or written.
    #[error("audit log {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A line does not parse, chain or verify.
    #[error("audit log broken at segment {segment} ({path}), line {line}{}: {message}", .seq.map(|s| format!(", after record {s}")).unwrap_or_default())]
    Broken {
        /// The segment file.
        path: PathBuf,
        /// Segment number.
        segment: u32,
        /// 1-based line within the segment.
        line: usize,
        /// Sequence number of the last good record before the damage.
        seq: Option<u64>,
        /// What is wrong.
        message: String,
    },
    /// Another process holds the log.
    #[error(
        "audit log {path} is in use by another exchange process; one process writes a log at a time"
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The log lock was poisoned by a panic elsewhere.
    #[error("audit log is unavailable after an internal failure")]
    Poisoned,
}

/// Longest purpose text a record keeps.
pub const MAX_PURPOSE_CHARS: usize = 200;

/// The decision recorded for a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Ran and returned a result.
    #[default]
    Allowed,
    /// Refused by policy.
    Refused,
    /// Allowed by policy but failed (bad SQL, execution error).
    Failed,
}

impl Decision {
    /// The decision as written in the log and shown in `audit.events` and the console.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Refused => "refused",
            Decision::Failed => "failed",
        }
    }
}

/// A table a statement touched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableUse {
    /// `agency.table`.
    pub table: String,
    /// Grant and policy version applied (`agency/grant@version`).
    pub grant: String,
    /// Raw columns read, including those used only in WHERE or JOIN and by row filters.
    pub columns: Vec<String>,
    /// The register of objections whose residents' rows were excluded for the statement's
    /// purpose (`agency.table`), when the table's agency keeps one. Absent from records of
    /// tables no register covers, so earlier records keep their encoding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objections: Option<String>,
}

/// One audit record as written: its place in the chain around the [`Entry`]. Field order
/// is the canonical encoding (`seq`, `time`, the entry's fields, `prev`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Sequence number, from 1.
    pub seq: u64,
    /// UTC time, RFC 3339.
    pub time: String,
    /// What happened.
    #[serde(flatten)]
    pub entry: Entry,
    /// SHA-256 of the previous line of the log (64 zeros for the very first).
    pub prev: String,
}

/// What a record is about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatementKind {
    /// A query (SELECT, WITH, VALUES).
    Query,
    /// EXPLAIN of a query.
    Explain,
    /// DESCRIBE of a table.
    Describe,
    /// A prepared statement (Flight SQL), planned but not run.
    Prepare,
    /// Enforced plans asked for by an embedding program ([`crate::Exchange::plan`]).
    Plan,
    /// A signed export.
    Export,
    /// Tracing a leaked export back to its recipient (operator).
    Trace,
    /// A failed Flight SQL authentication.
    Auth,
    /// A hub's request to an agency node.
    Node,
    /// A Postgres client's catalog statement (pg_catalog, information_schema), answered
    /// from the tables and columns the principal sees, without data.
    Catalog,
    /// A Postgres client's session statement: SET, SHOW, RESET, BEGIN, COMMIT, ROLLBACK.
    Session,
    /// A page of the web console a viewer opened (read-only), or a console action
    /// (login, logout, verify now).
    Console,
    /// A reload of schemas and policies in a running exchange, applied or rejected.
    Policy,
    /// Anything else, including statements refused before they were classified.
    #[default]
    Other,
}

impl StatementKind {
    /// The kind as written in the log and shown in `audit.events`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Query => "query",
            Self::Explain => "explain",
            Self::Describe => "describe",
            Self::Prepare => "prepare",
            Self::Plan => "plan",
            Self::Export => "export",
            Self::Trace => "trace",
            Self::Auth => "auth",
            Self::Node => "node",
            Self::Catalog => "catalog",
            Self::Session => "session",
            Self::Console => "console",
            Self::Policy => "policy",
            Self::Other => "other",
        }
    }
}

impl PartialEq<&str> for StatementKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Display for StatementKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened, before the log numbers and chains it ([`Entry::new`], then the fields
/// that apply).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Principal as stated.
    pub principal: String,
    /// The principal's agency, when known.
    pub agency: Option<String>,
    /// Declared purpose.
    pub purpose: Option<String>,
    /// Statement text as received.
    pub statement: String,
    /// What the record is about.
    pub kind: StatementKind,
    /// Tables and columns touched.
    pub tables: Vec<TableUse>,
    /// Group thresholds applied (`column >= k`).
    pub thresholds: Vec<String>,
    /// Decision.
    pub decision: Decision,
    /// Reason for a refusal or failure.
    pub reason: Option<String>,
    /// Rows returned.
    pub rows: Option<u64>,
    /// Keyed digest of the returned batches: `blake3:<hex>` (`engine/digest.rs`); 64 hex
    /// digits of HMAC-SHA256 over their Arrow IPC stream in records written before it.
    pub result_digest: Option<String>,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// For exports: the recipient the file was issued to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// For exports: the file's name and SHA-256 (`name sha256:...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<String>,
    /// What a guard did (k-anonymity on exports): classes suppressed or why refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<String>,
    /// For an export to a recipient outside the mainland: what it carried across the
    /// border and on what basis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<String>,
    /// For a streamed result: `started` on the record written before its first batch
    /// leaves, and how it ended on the completion record that follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamStatus>,
    /// On a completion record: the sequence number of the started record it completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completes: Option<u64>,
    /// At a hub: the id its node requests name, for a statement that read agencies'
    /// tables through their nodes (`exchange audit reconcile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement_id: Option<String>,
    /// At a hub: the node requests the statement may make, `agency.table/<request id>`,
    /// each to be served at most once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_requests: Vec<String>,
    /// At a node: the hub statement and request served
    /// (`<hub key id>/<statement id>/<request id>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub_statement: Option<String>,
    /// At a hub with workers: the workers its stages ran on (`http://host:port`), on the
    /// completion record of a distributed statement.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<String>,
    /// The privacy budgets the statement's noisy aggregates charged (dataset, epsilon,
    /// spending in the period), on its completion record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub privacy: Vec<String>,
    /// The values bound to a statement's parameters (`$1`, `$2`, ...), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<String>,
    /// The policy version (content hash of schemas/ and policies/) the statement was
    /// decided under; records written before versions were recorded have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<String>,
}

/// One record per statement, in log order: each completion record folded into the started
/// record it completes, in log order (decision, reason, duration and `stream` are the last
/// completion's; rows, digest, export file and guard are the last stated; `stream` stays
/// `Started` when none came).
pub fn statements(records: Vec<AuditRecord>) -> Vec<AuditRecord> {
    let mut out: Vec<AuditRecord> = Vec::with_capacity(records.len());
    let mut index: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    for r in records {
        let Some(started) = r.entry.completes else {
            index.insert(r.seq, out.len());
            out.push(r);
            continue;
        };
        // A completion whose start is not in the log (or not a start) stays a row of its own.
        let Some(&i) = index.get(&started) else {
            out.push(r);
            continue;
        };
        let (s, end) = (&mut out[i].entry, r.entry);
        s.decision = end.decision;
        s.reason = end.reason;
        s.duration_ms = end.duration_ms;
        s.stream = end.stream;
        s.rows = end.rows.or(s.rows);
        s.result_digest = end.result_digest.or(s.result_digest.take());
        s.export = end.export.or(s.export.take());
        s.guard = end.guard.or(s.guard.take());
        s.transfer = end.transfer.or(s.transfer.take());
        if !end.privacy.is_empty() {
            s.privacy = end.privacy;
        }
        if !end.workers.is_empty() {
            s.workers = end.workers;
        }
    }
    out
}

/// Where a streamed result stands. A started record is durable before the first batch
/// leaves; a completion record (rows, keyed digest, duration) follows it. A started record
/// without one was cut off by the process dying, or is still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamStatus {
    /// Checked, allowed and running; rows may be leaving.
    Started,
    /// Every row was delivered.
    Complete,
    /// The client went away, or the result was never fetched.
    Cancelled,
    /// It failed while running.
    Failed,
    /// Cut at a size cap or a deadline.
    Cut,
}

impl StreamStatus {
    /// As written in the log and shown in `audit.events`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Complete => "complete",
            Self::Cancelled => "cancelled",
            Self::Failed => "failed",
            Self::Cut => "cut",
        }
    }

    /// How a statement folded by [`statements`] ended, as `audit.events` and reports say it:
    /// a stream still `Started` there never completed, `incomplete`.
    pub fn outcome(self) -> &'static str {
        match self {
            Self::Started => "incomplete",
            s => s.as_str(),
        }
    }
}

impl Entry {
    /// An entry of `kind` about `statement`, by `principal` (agency, purpose, outcome and
    /// the rest to be filled in).
    pub fn new(kind: StatementKind, principal: &str, statement: impl Into<String>) -> Self {
        Self {
            principal: principal.to_string(),
            statement: statement.into(),
            kind,
            ..Self::default()
        }
    }

    /// The same entry, stating the principal's agency and declared purpose. A purpose is a
    /// name of the registry; past [`MAX_PURPOSE_CHARS`] characters the text a client sent is
    /// cut (marked `…`), so a refused declaration cannot make a record of any size.
    pub fn declared(mut self, agency: Option<String>, purpose: Option<&str>) -> Self {
        self.agency = agency;
        self.purpose = purpose.map(|p| {
            if p.chars().count() <= MAX_PURPOSE_CHARS {
                p.to_string()
            } else {
                let mut cut: String = p.chars().take(MAX_PURPOSE_CHARS).collect();
                cut.push('…');
                cut
            }
        });
        self
    }

    /// The entry decided under policy version `version`.
    pub fn under(mut self, version: &str) -> Self {
        self.policy_version = Some(version.to_string());
        self
    }

    /// The same entry, with the wall time since `started`.
    pub fn timed(mut self, started: std::time::Instant) -> Self {
        self.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self
    }
}

/// A signed checkpoint line: the number of records so far and the chain head, under the
/// exchange's Ed25519 key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Records in the whole log up to here (the sequence number of the last record).
    pub checkpoint: u64,
    /// Segment holding this line.
    pub segment: u32,
    /// UTC time, RFC 3339.
    pub time: String,
    /// interval, rotate, shutdown or recovered.
    pub reason: String,
    /// What a recovery found, or the next segment of a rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Identifier of the signing key (see `exchange keys public`).
    pub key_id: String,
    /// Ed25519 signature (hex) of [`Checkpoint::message`].
    pub signature: String,
    /// SHA-256 of the previous line: the chain head being signed.
    pub prev: String,
}

impl Checkpoint {
    /// The signed bytes: every field but the signature, in a fixed layout.
    pub fn message(&self) -> Vec<u8> {
        format!(
            "exchange-audit-checkpoint/v1\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
            self.checkpoint,
            self.segment,
            self.time,
            self.reason,
            self.note.as_deref().unwrap_or(""),
            self.key_id,
            self.prev
        )
        .into_bytes()
    }
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// A statement.
    Record(Box<AuditRecord>),
    /// A signed checkpoint.
    Checkpoint(Checkpoint),
}

impl Line {
    /// Parse a line: a checkpoint has a `checkpoint` field, a record a `seq`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        if value.get("checkpoint").is_some() {
            serde_json::from_value(value)
                .map(Line::Checkpoint)
                .map_err(|e| format!("not a valid checkpoint: {e}"))
        } else {
            serde_json::from_value(value)
                .map(|r| Line::Record(Box::new(r)))
                .map_err(|e| format!("not a valid record: {e}"))
        }
    }

    /// The previous-line hash this line carries.
    pub fn prev(&self) -> &str {
        match self {
            Line::Record(r) => &r.prev,
            Line::Checkpoint(c) => &c.prev,
        }
    }
}

/// The chain value before the first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// File name of segment `n`.
pub fn segment_name(n: u32) -> String {
    format!("audit-{n:06}.jsonl")
}

/// The segment number of a file name, if it is one.
fn segment_number(name: &str) -> Option<u32> {
    name.strip_prefix("audit-")?
        .strip_suffix(".jsonl")?
        .parse()
        .ok()
}
