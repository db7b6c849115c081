//! `exchange export trace`: whose file is this? From the pseudonyms alone.
//!
//! Pseudonyms are keyed per recipient (exports) or per consumer agency (queries). For each
//! candidate scope (every recipient the audit log has issued exports to, and every agency)
//! and identity domain, the exchange recomputes the pseudonyms of the raw identifiers of
//! that domain and counts how many of the file's token-like values it finds. Neither the
//! manifest nor the file's metadata is needed: a leaker may strip both.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::AsArray;
use arrow::datatypes::DataType;
use datafusion::prelude::SessionContext;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::ExportError;
use crate::enforcement::RawTable;
use crate::engine::Exchange;
use crate::keys::{KeyRing, TokenKind};
use crate::masking::token_hex;

/// Token-like values sampled per column.
const SAMPLE: usize = 500;

/// How well one scope explains one column of the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceScore {
    /// `recipient R` or `agency A`.
    pub scope: String,
    /// Identity domain.
    pub domain: String,
    /// Column of the file.
    pub column: String,
    /// Sampled values found among the scope's pseudonyms.
    pub matched: usize,
    /// Sampled values.
    pub sampled: usize,
}

/// The outcome of a trace.
#[derive(Debug, Clone, Default)]
pub struct TraceReport {
    /// Best score per (scope, column), best first.
    pub scores: Vec<TraceScore>,
    /// The scope most of the sampled pseudonyms belong to, if any does.
    pub verdict: Option<String>,
    /// Columns that look like pseudonyms.
    pub columns: Vec<String>,
    /// The audit records of the exports to the verdict's recipient: `seq time principal file`.
    pub exports: Vec<String>,
}

fn looks_like_token(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Token-like values of a Parquet file (lower-cased), per string column where most
/// values look like tokens: a few other values do not hide a column.
fn sample_tokens(file: &Path) -> Result<BTreeMap<String, HashSet<String>>, ExportError> {
    let read = |message: String| ExportError::Read {
        path: file.to_path_buf(),
        message,
    };
    let f = File::open(file).map_err(|source| ExportError::Io {
        path: file.to_path_buf(),
        source,
    })?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .and_then(|b| b.build())
        .map_err(|e| read(format!("not a readable Parquet file: {e}")))?;
    // column -> (sample, token-like values, other values)
    let mut seen: BTreeMap<String, (HashSet<String>, u64, u64)> = BTreeMap::new();
    for batch in reader {
        let batch = batch.map_err(|e| read(e.to_string()))?;
        for (i, field) in batch.schema().fields().iter().enumerate() {
            let textual = match field.data_type() {
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
                DataType::Dictionary(_, v) => {
                    matches!(
                        v.as_ref(),
                        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                    )
                }
                _ => false,
            };
            if !textual {
                continue;
            }
            let text = arrow::compute::cast(batch.column(i), &DataType::Utf8)
                .map_err(|e| read(e.to_string()))?;
            let entry = seen.entry(field.name().clone()).or_default();
            for v in text.as_string::<i32>().iter().flatten() {
                if looks_like_token(v) {
                    entry.1 += 1;
                    if entry.0.len() < SAMPLE {
                        entry.0.insert(v.to_ascii_lowercase());
                    }
                } else {
                    entry.2 += 1;
                }
            }
        }
    }
    Ok(seen
        .into_iter()
        .filter(|(_, (sample, tokens, others))| !sample.is_empty() && *tokens >= *others * 4)
        .map(|(name, (sample, _, _))| (name, sample))
        .collect())
}

/// Distinct raw identifiers of each identity domain, from the datasets that declare it.
async fn identifiers(ex: &Exchange) -> Result<BTreeMap<String, BTreeSet<String>>, String> {
    let ctx = SessionContext::new();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let gov = ex.governance();
    for (n, d) in gov.catalog.datasets().iter().enumerate() {
        let columns: Vec<_> = d.columns.iter().filter(|c| c.domain.is_some()).collect();
        if columns.is_empty() {
            continue;
        }
        let location = d.resolve_location(&ex.config().data_root);
        let raw = RawTable::try_new(d, &location, BTreeSet::new(), None)
            .map_err(|e| e.strip_backtrace())?;
        let name = format!("t{n}");
        ctx.register_table(name.as_str(), Arc::new(raw))
            .map_err(|e| e.strip_backtrace())?;
        for c in columns {
            let Some(domain) = &c.domain else { continue };
            let sql = format!(
                "SELECT DISTINCT CAST(\"{}\" AS VARCHAR) FROM {name} WHERE \"{}\" IS NOT NULL",
                c.name, c.name
            );
            let batches = ctx
                .sql(&sql)
                .await
                .map_err(|e| e.strip_backtrace())?
                .collect()
                .await
                .map_err(|e| e.strip_backtrace())?;
            let set = out.entry(domain.clone()).or_default();
            for b in batches {
                let col = b.column(0);
                if let Some(strings) = col.as_string_opt::<i32>() {
                    set.extend(strings.iter().flatten().map(str::to_string));
                } else if let Some(views) = col.as_string_view_opt() {
                    set.extend(views.iter().flatten().map(str::to_string));
                }
            }
        }
    }
    Ok(out)
}

/// Trace a file to the recipient (or agency) its pseudonyms were keyed for.
pub async fn trace(ex: &Exchange, file: &Path) -> Result<TraceReport, ExportError> {
    let samples = sample_tokens(file)?;
    let mut report = TraceReport {
        columns: samples.keys().cloned().collect(),
        ..TraceReport::default()
    };
    if samples.is_empty() {
        return Ok(report);
    }
    // One row per export: a completion folded into its started record.
    let records = crate::audit::read_all(ex.audit().path())
        .map(crate::audit::statements)
        .map_err(|e| ExportError::Read {
            path: ex.audit().path().to_path_buf(),
            message: e.to_string(),
        })?;
    // Every (exporting agency, recipient) the log has issued files to.
    let mut issued: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for r in records
        .iter()
        .filter(|r| r.entry.kind == crate::audit::StatementKind::Export)
    {
        if let (Some(agency), Some(recipient)) = (&r.entry.agency, &r.entry.recipient) {
            issued
                .entry((agency.clone(), recipient.clone()))
                .or_default()
                .push(format!(
                    "audit record {} at {}: {} ({:?}) {}",
                    r.seq,
                    r.time,
                    r.entry.principal,
                    r.entry.decision,
                    r.entry.export.as_deref().unwrap_or("no file")
                ));
        }
    }
    let mut scopes: Vec<(String, String)> = issued
        .keys()
        .map(|(a, r)| {
            (
                format!("recipient {r} (exports of agency {a})"),
                KeyRing::recipient_scope(a, r),
            )
        })
        .collect();
    let agencies: BTreeSet<String> = ex
        .governance()
        .policies
        .principals()
        .iter()
        .map(|p| p.agency.clone())
        .collect();
    scopes.extend(agencies.into_iter().map(|a| (format!("agency {a}"), a)));
    let ids = identifiers(ex).await.map_err(|message| ExportError::Read {
        path: file.to_path_buf(),
        message,
    })?;
    let ring = ex.key_ring();
    let mut token = String::with_capacity(32);
    for (label, scope) in &scopes {
        for (domain, values) in &ids {
            let key = ring.token_key(TokenKind::Pseudonym, scope, domain);
            let mut found: BTreeMap<&str, usize> = BTreeMap::new();
            for v in values {
                token.clear();
                token_hex(&key, v.as_bytes(), &mut token);
                for (column, sample) in &samples {
                    if sample.contains(&token) {
                        *found.entry(column.as_str()).or_default() += 1;
                    }
                }
            }
            for (column, matched) in found {
                report.scores.push(TraceScore {
                    scope: label.clone(),
                    domain: domain.clone(),
                    column: column.to_string(),
                    matched,
                    sampled: samples.get(column).map(HashSet::len).unwrap_or(0),
                });
            }
        }
    }
    report.scores.sort_by(|a, b| {
        (b.matched * 1000 / b.sampled.max(1))
            .cmp(&(a.matched * 1000 / a.sampled.max(1)))
            .then(a.scope.cmp(&b.scope))
    });
    // A verdict needs most of a column's sample explained by one scope.
    report.verdict = report
        .scores
        .first()
        .filter(|s| s.matched * 2 > s.sampled)
        .map(|s| s.scope.clone());
    if let Some(v) = &report.verdict {
        report.exports = issued
            .iter()
            .find(|((a, r), _)| *v == format!("recipient {r} (exports of agency {a})"))
            .map(|(_, e)| e.clone())
            .unwrap_or_default();
    }
    Ok(report)
}
