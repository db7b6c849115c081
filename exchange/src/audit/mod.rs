//! The audit log: every statement, allowed or refused, as one canonical JSON line.
//!
//! Records are append-only and chained: each carries the SHA-256 of the previous line, so
//! that deleting, editing or reordering a record breaks the chain ([`verify`]). Each record
//! is fsynced before the query's result is returned.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ring::digest;
use serde::{Deserialize, Serialize};

/// Errors of the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The log could not be read or written.
    #[error("audit log {path}: {source}")]
    Io {
        /// The log file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A record does not parse or does not chain.
    #[error("audit log {path}, line {line}: {message}")]
    Broken {
        /// The log file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The log lock was poisoned by a panic elsewhere.
    #[error("audit log is unavailable after an internal failure")]
    Poisoned,
}

/// The decision recorded for a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Ran and returned a result.
    Allowed,
    /// Refused by policy.
    Refused,
    /// Allowed by policy but failed (bad SQL, execution error).
    Failed,
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
}

/// One audit record; field order is the canonical encoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Sequence number, from 1.
    pub seq: u64,
    /// UTC time, RFC 3339.
    pub time: String,
    /// Principal as stated.
    pub principal: String,
    /// The principal's agency, when known.
    pub agency: Option<String>,
    /// Declared purpose.
    pub purpose: Option<String>,
    /// Statement text as received.
    pub statement: String,
    /// query, explain, describe or other.
    pub kind: String,
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
    /// HMAC-SHA256 of the result (Arrow IPC stream of the returned batches) under the exchange's digest key.
    pub result_digest: Option<String>,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// SHA-256 of the previous record's line (64 zeros for the first).
    pub prev: String,
}

/// A record before the log numbers and chains it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Principal as stated.
    pub principal: String,
    /// The principal's agency.
    pub agency: Option<String>,
    /// Declared purpose.
    pub purpose: Option<String>,
    /// Statement text.
    pub statement: String,
    /// query, explain, describe or other.
    pub kind: String,
    /// Tables touched.
    pub tables: Vec<TableUse>,
    /// Thresholds applied.
    pub thresholds: Vec<String>,
    /// Decision.
    pub decision: Decision,
    /// Reason.
    pub reason: Option<String>,
    /// Rows returned.
    pub rows: Option<u64>,
    /// Result digest.
    pub result_digest: Option<String>,
    /// Wall time.
    pub duration_ms: u64,
}

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

struct Tail {
    file: File,
    seq: u64,
    prev: String,
}

/// The append-only audit log.
pub struct AuditLog {
    path: PathBuf,
    tail: Mutex<Tail>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, bytes).as_ref())
}

impl AuditLog {
    /// Open (or create) the log, checking the whole chain first: a log that does not
    /// verify is not appended to.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let io = |source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io)?;
        }
        let summary = if path.exists() {
            verify(path)?
        } else {
            Summary {
                records: 0,
                head: GENESIS.to_string(),
            }
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        Ok(Self {
            path: path.to_path_buf(),
            tail: Mutex::new(Tail {
                file,
                seq: summary.records,
                prev: summary.head,
            }),
        })
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append a record durably; returns it as written.
    pub fn append(&self, entry: Entry) -> Result<AuditRecord, AuditError> {
        let mut tail = self.tail.lock().map_err(|_| AuditError::Poisoned)?;
        let record = AuditRecord {
            seq: tail.seq + 1,
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            principal: entry.principal,
            agency: entry.agency,
            purpose: entry.purpose,
            statement: entry.statement,
            kind: entry.kind,
            tables: entry.tables,
            thresholds: entry.thresholds,
            decision: entry.decision,
            reason: entry.reason,
            rows: entry.rows,
            result_digest: entry.result_digest,
            duration_ms: entry.duration_ms,
            prev: tail.prev.clone(),
        };
        let line = serde_json::to_string(&record).map_err(|e| AuditError::Broken {
            path: self.path.clone(),
            line: 0,
            message: e.to_string(),
        })?;
        let io = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        let mut buf = line.clone().into_bytes();
        buf.push(b'\n');
        tail.file.write_all(&buf).map_err(io)?;
        tail.file.sync_data().map_err(io)?;
        tail.seq = record.seq;
        tail.prev = sha256_hex(line.as_bytes());
        Ok(record)
    }
}

/// What a verified log holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Number of records.
    pub records: u64,
    /// Hash of the last record (the chain head).
    pub head: String,
}

/// Check every record parses, is numbered in order and chains to its predecessor.
pub fn verify(path: &Path) -> Result<Summary, AuditError> {
    let io = |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let mut reader = BufReader::new(file);
    let mut prev = GENESIS.to_string();
    let mut records = 0u64;
    let mut line_no = 0usize;
    let mut buf = String::new();
    loop {
        buf.clear();
        let n = reader.read_line(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let broken = |message: String| AuditError::Broken {
            path: path.to_path_buf(),
            line: line_no,
            message,
        };
        let Some(line) = buf.strip_suffix('\n') else {
            return Err(broken("torn record: the last line is incomplete".into()));
        };
        let record: AuditRecord =
            serde_json::from_str(line).map_err(|e| broken(format!("not a valid record: {e}")))?;
        if record.seq != records + 1 {
            return Err(broken(format!(
                "sequence {} where {} was expected",
                record.seq,
                records + 1
            )));
        }
        if record.prev != prev {
            return Err(broken(
                "chain broken: previous-record hash does not match".into(),
            ));
        }
        prev = sha256_hex(line.as_bytes());
        records += 1;
    }
    Ok(Summary {
        records,
        head: prev,
    })
}

/// Read every record (after verifying the chain).
pub fn read_all(path: &Path) -> Result<Vec<AuditRecord>, AuditError> {
    verify(path)?;
    let text = fs::read_to_string(path).map_err(|source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| AuditError::Broken {
                path: path.to_path_buf(),
                line: i + 1,
                message: e.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(statement: &str) -> Entry {
        Entry {
            principal: "p".into(),
            agency: Some("a".into()),
            purpose: Some("x".into()),
            statement: statement.into(),
            kind: "query".into(),
            tables: vec![],
            thresholds: vec![],
            decision: Decision::Allowed,
            reason: None,
            rows: Some(1),
            result_digest: None,
            duration_ms: 0,
        }
    }

    #[test]
    fn chain_verifies_and_continues_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        log.append(entry("select 1")).unwrap();
        log.append(entry("select 2")).unwrap();
        drop(log);
        let log = AuditLog::open(&path).unwrap();
        let r = log.append(entry("select 3")).unwrap();
        assert_eq!(r.seq, 3);
        assert_eq!(verify(&path).unwrap().records, 3);
    }

    #[test]
    fn edits_deletions_and_torn_tails_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        for i in 0..3 {
            log.append(entry(&format!("select {i}"))).unwrap();
        }
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();

        fs::write(&path, text.replace("select 1", "select 9")).unwrap();
        assert!(verify(&path).unwrap_err().to_string().contains("line 3"));

        fs::write(&path, format!("{}\n{}\n", lines[0], lines[2])).unwrap();
        assert!(
            verify(&path)
                .unwrap_err()
                .to_string()
                .contains("sequence 3")
        );

        fs::write(&path, &text[..text.len() - 5]).unwrap();
        assert!(verify(&path).unwrap_err().to_string().contains("torn"));
    }
}

mod events;
pub use events::{AuditEvents, events_schema};
