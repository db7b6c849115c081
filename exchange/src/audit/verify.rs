//! Reading and verifying the log: chain, sequence, segments and checkpoint signatures.

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::{AuditError, AuditRecord, GENESIS, Line, segment_name, segment_number, sha256_hex};
use crate::keys::PublicKey;

/// What a verified log holds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Summary {
    /// Statement records.
    pub records: u64,
    /// Checkpoint lines.
    pub checkpoints: u64,
    /// Segment files.
    pub segments: u32,
    /// Hash of the last line (the chain head).
    pub head: String,
    /// Records covered by the last checkpoint.
    pub last_checkpoint: Option<u64>,
    /// Records after the last checkpoint (written by a running or crashed exchange, or
    /// left by cutting the log short).
    pub unsigned_tail: u64,
    /// Whether the log ends with a shutdown checkpoint (closed cleanly).
    pub sealed: bool,
    /// Checkpoints that record a recovery after an unclean shutdown.
    pub recoveries: u64,
    /// Each recovery: the records it covers and what it found.
    pub recovery_notes: Vec<(u64, String)>,
    /// Streamed results started and never completed (their started records' sequence
    /// numbers): the process died mid-stream, or they are still running.
    pub incomplete: Vec<u64>,
}

/// A torn last line: bytes of a record that was being written when the process died.
#[derive(Debug, Clone)]
pub(super) struct Torn {
    pub path: PathBuf,
    pub segment: u32,
    pub line: usize,
    pub offset: u64,
    pub bytes: Vec<u8>,
}

/// The result of reading the whole log.
pub(super) struct Scan {
    pub summary: Summary,
    pub torn: Option<Torn>,
    /// Number of the last segment (0 when there is none).
    pub last_segment: u32,
    /// Records in the last segment.
    pub segment_records: u64,
    /// Records since the last checkpoint.
    pub since_checkpoint: u64,
    /// Every record, when asked for.
    pub records: Vec<AuditRecord>,
    /// A segment the last rotation announced that does not exist.
    pub pending_segment: Option<u32>,
    /// An empty last segment that no rotation announced (a rotation died half-way).
    pub dangling: Option<PathBuf>,
}

/// The segment files of `dir`, checked to be numbered 1..=n without gaps.
pub(super) fn segments(dir: &Path) -> Result<Vec<(u32, PathBuf)>, AuditError> {
    let io = |source| AuditError::Io {
        path: dir.to_path_buf(),
        source,
    };
    if !dir.exists() {
        return Ok(vec![]);
    }
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            segment_number(&name).map(|n| (n, e.path()))
        })
        .collect();
    found.sort();
    for (i, (n, _)) in found.iter().enumerate() {
        let expected = u32::try_from(i + 1).unwrap_or(u32::MAX);
        if *n != expected {
            return Err(AuditError::Broken {
                path: dir.join(segment_name(expected)),
                segment: expected,
                line: 0,
                seq: None,
                message: format!("segment {expected} is missing (found segment {n} after it)"),
            });
        }
    }
    Ok(found)
}

/// Read every segment, checking numbering, chain and (with a key) signatures. A torn
/// last line is returned, not an error; the caller decides.
pub(super) fn scan(
    dir: &Path,
    key: Option<&PublicKey>,
    keep_records: bool,
) -> Result<Scan, AuditError> {
    let files = segments(dir)?;
    let mut s = Scan {
        summary: Summary {
            head: GENESIS.to_string(),
            segments: u32::try_from(files.len()).unwrap_or(u32::MAX),
            ..Summary::default()
        },
        torn: None,
        last_segment: files.last().map(|f| f.0).unwrap_or(0),
        segment_records: 0,
        since_checkpoint: 0,
        records: vec![],
        pending_segment: None,
        dangling: None,
    };
    // An empty last segment is either announced by the rotation before it (nothing written
    // yet) or left by a rotation that died before announcing it.
    let mut files = files;
    let empty_last = match files.last() {
        Some((n, p)) if *n > 1 && fs::metadata(p).map(|m| m.len() == 0).unwrap_or(false) => {
            files.pop()
        }
        _ => None,
    };
    s.last_segment = files.last().map(|f| f.0).unwrap_or(0);
    // The segment a rotation checkpoint announced, and whether the last line was one.
    let mut expect_next: Option<u32> = None;
    for (index, (segment, path)) in files.iter().enumerate() {
        let is_last = index + 1 == files.len();
        if let Some(next) = expect_next.take()
            && next != *segment
        {
            return Err(AuditError::Broken {
                path: path.clone(),
                segment: *segment,
                line: 0,
                seq: Some(s.summary.records),
                message: format!("the previous segment announced segment {next}"),
            });
        }
        s.segment_records = 0;
        let file = File::open(path).map_err(|source| AuditError::Io {
            path: path.clone(),
            source,
        })?;
        let mut reader = BufReader::new(file);
        let mut buf = Vec::new();
        let mut line_no = 0usize;
        let mut offset = 0u64;
        let mut rotated = false;
        loop {
            buf.clear();
            let n = reader
                .read_until(b'\n', &mut buf)
                .map_err(|source| AuditError::Io {
                    path: path.clone(),
                    source,
                })?;
            if n == 0 {
                break;
            }
            line_no += 1;
            let broken = |message: String| AuditError::Broken {
                path: path.clone(),
                segment: *segment,
                line: line_no,
                seq: Some(s.summary.records),
                message,
            };
            if rotated {
                return Err(broken(
                    "lines after the segment's rotation checkpoint".into(),
                ));
            }
            if buf.last() != Some(&b'\n') {
                if !is_last {
                    return Err(broken("torn line inside an earlier segment".into()));
                }
                // A crash cuts one line short; lines run together or a complete line
                // without its end are edits, not a crash.
                if runs_lines_together(&buf) {
                    return Err(broken(
                        "the last line has no line end and holds several lines run together: an edit, not a torn write".into(),
                    ));
                }
                s.torn = Some(Torn {
                    path: path.clone(),
                    segment: *segment,
                    line: line_no,
                    offset,
                    bytes: buf.clone(),
                });
                break;
            }
            offset += n as u64;
            let text = std::str::from_utf8(&buf[..buf.len() - 1])
                .map_err(|_| broken("not UTF-8".into()))?;
            let line = Line::parse(text).map_err(broken)?;
            if line.prev() != s.summary.head {
                return Err(broken(
                    "chain broken: this line does not carry the hash of the line before it (a line was edited, deleted, inserted or moved)".into(),
                ));
            }
            match line {
                Line::Record(r) => {
                    if r.seq != s.summary.records + 1 {
                        return Err(broken(format!(
                            "sequence {} where {} was expected",
                            r.seq,
                            s.summary.records + 1
                        )));
                    }
                    s.summary.records += 1;
                    if r.entry.stream == Some(super::StreamStatus::Started) {
                        s.summary.incomplete.push(r.seq);
                    } else if let Some(started) = r.entry.completes {
                        // Streams end in about the order they start: search from the end.
                        if let Some(i) = s.summary.incomplete.iter().rposition(|&x| x == started) {
                            s.summary.incomplete.remove(i);
                        }
                    }
                    s.segment_records += 1;
                    s.since_checkpoint += 1;
                    s.summary.sealed = false;
                    if keep_records {
                        s.records.push(*r);
                    }
                }
                Line::Checkpoint(c) => {
                    if c.checkpoint != s.summary.records {
                        return Err(broken(format!(
                            "checkpoint claims {} records where {} precede it",
                            c.checkpoint, s.summary.records
                        )));
                    }
                    if c.segment != *segment {
                        return Err(broken(format!(
                            "checkpoint of segment {} found in segment {segment}",
                            c.segment
                        )));
                    }
                    if let Some(key) = key {
                        if c.key_id != key.id() {
                            return Err(broken(format!(
                                "checkpoint signed by key {}, but the verifying public key is {}",
                                c.key_id,
                                key.id()
                            )));
                        }
                        if !key.verify(&c.message(), &c.signature) {
                            return Err(broken(
                                "checkpoint signature does not verify: the checkpoint was forged or altered".into(),
                            ));
                        }
                    }
                    s.summary.checkpoints += 1;
                    s.summary.last_checkpoint = Some(c.checkpoint);
                    s.since_checkpoint = 0;
                    s.summary.sealed = c.reason == "shutdown";
                    if c.reason == "recovered" {
                        s.summary.recoveries += 1;
                        s.summary
                            .recovery_notes
                            .push((c.checkpoint, c.note.clone().unwrap_or_default()));
                    }
                    if c.reason == "rotate" {
                        rotated = true;
                        expect_next = Some(segment + 1);
                    }
                }
            }
            s.summary.head = sha256_hex(&buf[..buf.len() - 1]);
        }
        if !is_last && !rotated {
            return Err(AuditError::Broken {
                path: path.clone(),
                segment: *segment,
                line: line_no,
                seq: Some(s.summary.records),
                message: "segment does not end with its rotation checkpoint (its tail was cut)"
                    .into(),
            });
        }
    }
    match (empty_last, expect_next) {
        (Some((n, _)), Some(next)) if n == next => {
            s.last_segment = n;
            s.segment_records = 0;
        }
        (Some((_, path)), None) => s.dangling = Some(path),
        (Some((n, path)), Some(next)) => {
            return Err(AuditError::Broken {
                path,
                segment: n,
                line: 0,
                seq: Some(s.summary.records),
                message: format!("segment {n} follows a rotation that announced segment {next}"),
            });
        }
        (None, next) => s.pending_segment = next,
    }
    if s.dangling.is_some() {
        s.summary.sealed = false;
    }
    s.summary.unsigned_tail = s.since_checkpoint;
    Ok(s)
}

/// Whether bytes hold two lines run together (`}{`). A crash cuts the last write at any
/// byte, so one line, even complete but for its end, can be torn; several cannot.
fn runs_lines_together(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| w == b"}{")
}

/// Verify the whole log under `key`: every line chains, records are numbered without gaps,
/// segments follow each other, every checkpoint's signature verifies. A torn last line is
/// an error here (the exchange moves it aside when it next opens the log). Whether the log
/// ends sealed is in the summary: the caller tells a live log from a cut one.
pub fn verify(dir: &Path, key: &PublicKey) -> Result<Summary, AuditError> {
    let scan = scan(dir, Some(key), false)?;
    if let Some(next) = scan.pending_segment {
        return Err(AuditError::Broken {
            path: dir.join(segment_name(next)),
            segment: next,
            line: 0,
            seq: Some(scan.summary.records),
            message: format!(
                "segment {next}, announced by the last rotation checkpoint, is missing (deleted, or the exchange died while rotating)"
            ),
        });
    }
    if let Some(path) = scan.dangling {
        return Err(AuditError::Broken {
            segment: scan.last_segment + 1,
            path,
            line: 0,
            seq: Some(scan.summary.records),
            message: "an empty segment that no rotation announced: the exchange died while rotating; it removes it when it next opens the log".into(),
        });
    }
    if let Some(t) = scan.torn {
        return Err(AuditError::Broken {
            path: t.path,
            segment: t.segment,
            line: t.line,
            seq: Some(scan.summary.records),
            message: format!(
                "torn last line ({} bytes without a line end): the exchange died while writing it; earlier records verify, and the exchange moves it aside when it next opens the log",
                t.bytes.len()
            ),
        });
    }
    Ok(scan.summary)
}

/// Every record, after checking the chain (not signatures: see [`verify`]). A torn last
/// line is left out.
pub fn read_all(dir: &Path) -> Result<Vec<AuditRecord>, AuditError> {
    Ok(scan(dir, None, true)?.records)
}
