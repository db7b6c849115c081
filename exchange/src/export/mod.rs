//! Signed, desensitized exports for data-trade platforms.
//!
//! `exchange export` runs a query as a principal, exactly as `query` would (same session,
//! same policy rule), except that pseudonyms and replacements are keyed for the recipient:
//! two recipients' files cannot be linked, and a leaked file names its recipient
//! ([`trace`]). The result streams into a Parquet file (bounded memory) carrying the
//! statement, principal, purpose, recipient, grants, creation and expiry as key-value
//! metadata. A k-anonymity guard checks the equivalence classes over exported
//! quasi-identifiers. The export is audited before the file appears, and a manifest beside
//! it (`FILE.manifest.json`) holds the file's SHA-256 under the exchange's Ed25519
//! signature ([`verify`]).

mod classes;
mod guard;
mod levels;
mod manifest;
mod publish;
mod remote;
mod selection;
mod trace;

use std::fs::{self, File};
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use chrono::NaiveDate;
use futures::StreamExt;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

pub use classes::{ClassCounter, Verdict};
pub use guard::{GuardSpec, lineage};
pub use manifest::{Manifest, ManifestBody, manifest_path, sha256_file, verify};
pub use trace::{TraceReport, TraceScore, trace};

use crate::audit::{Entry, StatementKind, StreamStatus, TableUse};
use crate::catalog::KAction;
use crate::engine::{
    Exchange, Kind, QueryError, audit_decision, classify, execute_on_own_threads, plan_query,
    run_error,
};
use crate::keys::KeyRing;

/// Errors of export files and manifests (the export itself fails with a [`QueryError`]).
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A manifest does not parse.
    #[error("manifest {path}: {message}")]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The file does not match what was issued.
    #[error("export {path} does not verify: {message}")]
    Invalid {
        /// The export file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A Parquet or Arrow error reading the file.
    #[error("{path}: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        message: String,
    },
}

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    /// Who asks.
    pub principal: String,
    /// Why.
    pub purpose: Option<String>,
    /// To whom the file is issued.
    pub recipient: String,
    /// The Parquet file to write (must not exist): a local path, or `s3://bucket/key`
    /// written through the store of the principal's agency.
    pub out: PathBuf,
    /// The query.
    pub sql: String,
    /// Last day of use, if earlier than the grants' expiry.
    pub expires: Option<NaiveDate>,
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    /// The signed manifest (also written beside the file).
    pub manifest: Manifest,
    /// The manifest file.
    pub manifest_path: PathBuf,
    /// What the k-anonymity guard did, with its counts: for the exporter and the audit
    /// record. The manifest, which travels to the recipient, says only which guard applied:
    /// a count of suppressed rows answers a question about the rows withheld (review 13).
    pub guard: Option<String>,
}

/// A result staged in an unnamed file, before audit and manifest.
struct Staged {
    /// Held open from the first byte to publication, never reopened by name.
    file: File,
    rows: u64,
    sha256: String,
    bytes: u64,
    guard: Option<String>,
    /// The guard as the recipient may read it: what applied, never what it found.
    guard_public: Option<String>,
    /// The recipient's jurisdiction, and for one outside the mainland, what the transfer
    /// carries and on what basis.
    jurisdiction: String,
    transfer: Option<String>,
    created: String,
    expires: Option<String>,
}

/// Rows per batch written; also the progress granularity.
const ROW_GROUP_ROWS: usize = 128 * 1024;

fn valid_recipient(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 64
        && r.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Run an export as the request's principal; audited whatever happens, the file and its
/// manifest appear only after the audit record is durable. `progress` is called with rows
/// and bytes written so far.
pub async fn export(
    ex: &Exchange,
    req: &ExportRequest,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ExportSummary, QueryError> {
    let started = Instant::now();
    // One policy version for the whole export, named in each of its records.
    let gov = ex.governance();
    let agency = gov.agency_of(&req.principal);
    let head = Entry {
        recipient: Some(req.recipient.clone()),
        ..Entry::new(StatementKind::Export, &req.principal, req.sql.clone())
            .declared(agency.clone(), req.purpose.as_deref())
            .under(&gov.version)
    };
    let mut named = Vec::new();
    let mut tables: Option<(Vec<TableUse>, Vec<String>)> = None;
    let mut guard_note = None;
    // Once planned and checked, the export is recorded as started before it runs: killed
    // while staging, it leaves that record, incomplete, as a query does.
    let mut started_seq = None;
    let staged = {
        let mut on_start = |tables: &[TableUse], thresholds: &[String]| {
            let record = ex
                .audit()
                .append(Entry {
                    tables: tables.to_vec(),
                    thresholds: thresholds.to_vec(),
                    stream: Some(StreamStatus::Started),
                    ..head.clone().timed(started)
                })
                .map_err(|e| QueryError::Audit(e.to_string()))?;
            started_seq = Some(record.seq);
            Ok(())
        };
        // A panic while staging fails the export, audited, and never takes the process down.
        let staging = std::panic::AssertUnwindSafe(stage(
            (ex, &gov),
            req,
            progress,
            &mut on_start,
            &mut named,
            &mut tables,
            &mut guard_note,
        ));
        futures::FutureExt::catch_unwind(staging)
            .await
            .unwrap_or_else(|_| {
                Err(QueryError::Failed(
                    "internal error: the exchange failed while exporting (a bug, recorded in the audit log); no file was written".into(),
                ))
            })
    };
    // The final file beside its name before the audit record: a full disk fails the export
    // before the log says it was issued. A remote destination is resolved and found vacant.
    let staged = match staged {
        Err(e) => Err(e),
        Ok(s) if remote::is_remote(&req.out) => {
            match remote::Destination::resolve(ex, agency.as_deref(), &req.out) {
                Ok(d) => match d.vacant().await {
                    Ok(()) => Ok((s, Pending::Remote(d))),
                    Err(e) => Err(QueryError::Failed(e)),
                },
                Err(e) => Err(QueryError::Failed(e)),
            }
        }
        Ok(mut s) => publish::copy_beside(&mut s.file, &req.out, s.bytes)
            .map(|copy| (s, Pending::Local(copy)))
            .map_err(|e| QueryError::Failed(format!("{}: {e}", req.out.display()))),
    };
    let (decision, reason) = audit_decision(&staged);
    let file_name = req
        .out
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let (tables, thresholds) = tables.unwrap_or((named, vec![]));
    let grants: Vec<String> = tables.iter().map(|t| t.grant.clone()).collect();
    // The record that vouches for the file: the completion of the started record (tables
    // and grants are there), or the only record of an export refused before it ran.
    let (tables, thresholds, statement) = match started_seq {
        Some(_) => (vec![], vec![], String::new()),
        None => (tables, thresholds, req.sql.clone()),
    };
    let entry = Entry {
        tables,
        thresholds,
        decision,
        reason,
        rows: staged.as_ref().ok().map(|(s, _)| s.rows),
        stream: started_seq.map(|_| {
            if staged.is_ok() {
                StreamStatus::Complete
            } else {
                StreamStatus::Failed
            }
        }),
        completes: started_seq,
        export: staged
            .as_ref()
            .ok()
            .map(|(s, _)| format!("{file_name} sha256:{}", s.sha256)),
        guard: staged
            .as_ref()
            .ok()
            .and_then(|(s, _)| s.guard.clone())
            .or(guard_note),
        transfer: staged.as_ref().ok().and_then(|(s, _)| s.transfer.clone()),
        statement,
        ..head.clone().timed(started)
    };
    let audited = ex.audit().append(entry);
    let ((mut s, pending), seq) = match (staged, audited) {
        (Err(e), _) => return Err(e),
        (Ok(_), Err(e)) => return Err(QueryError::Audit(e.to_string())),
        (Ok(s), Ok(record)) => (s, record.seq),
    };
    // Past the audit record, a failure is recorded too: the log must not vouch for a file
    // that never appeared.
    let failed = |e: String| {
        let reason = format!("the export could not be published: {e}");
        let entry = Entry {
            decision: crate::audit::Decision::Failed,
            reason: Some(crate::engine::redact_values(&reason)),
            stream: Some(crate::audit::StreamStatus::Failed),
            completes: Some(started_seq.unwrap_or(seq)),
            ..Entry::new(StatementKind::Export, &req.principal, "")
                .declared(gov.agency_of(&req.principal), req.purpose.as_deref())
                .under(&gov.version)
                .timed(started)
        };
        match ex.audit().append(entry) {
            Ok(_) => QueryError::Failed(reason),
            Err(a) => QueryError::Audit(a.to_string()),
        }
    };
    let body = ManifestBody {
        format: "exchange-export/v1".into(),
        file: file_name,
        sha256: s.sha256.clone(),
        bytes: s.bytes,
        rows: s.rows,
        statement: req.sql.clone(),
        principal: req.principal.clone(),
        agency: agency.unwrap_or_default(),
        purpose: req.purpose.clone().unwrap_or_default(),
        recipient: req.recipient.clone(),
        grants,
        created: s.created.clone(),
        expires: s.expires.clone(),
        guard: s.guard_public.clone(),
        jurisdiction: Some(s.jurisdiction.clone()),
        transfer: s.transfer.clone(),
        audit_seq: seq,
    };
    let manifest = body.sign(ex.signer()).map_err(|e| failed(e.to_string()))?;
    let mpath = manifest_path(&req.out);
    let json = serde_json::to_string_pretty(&manifest).map_err(|e| failed(e.to_string()))?;
    let copy = match pending {
        Pending::Remote(d) => {
            d.publish(&mut s.file, s.bytes, format!("{json}\n").as_bytes())
                .await
                .map_err(failed)?;
            return Ok(ExportSummary {
                manifest,
                manifest_path: d.manifest_url(),
                guard: s.guard,
            });
        }
        Pending::Local(copy) => copy,
    };
    // Publish without replacing anything that appeared meanwhile: each name shows a whole,
    // synced file or nothing; the manifest last, so that a manifest means a file.
    let manifest_copy = publish::write_beside(&mpath, format!("{json}\n").as_bytes())
        .map_err(|e| failed(format!("{}: {e}", mpath.display())))?;
    publish::put(copy, &req.out).map_err(|e| failed(format!("{}: {e}", req.out.display())))?;
    if let Err(e) = publish::put(manifest_copy, &mpath) {
        let _ = fs::remove_file(&req.out);
        return Err(failed(format!("{}: {e}", mpath.display())));
    }
    if let Err(e) = publish::expose(&[&req.out, &mpath]) {
        let _ = fs::remove_file(&req.out);
        let _ = fs::remove_file(&mpath);
        return Err(failed(format!("{}: {e}", req.out.display())));
    }
    Ok(ExportSummary {
        manifest,
        manifest_path: mpath,
        guard: s.guard,
    })
}

/// Where a staged export goes once audited.
enum Pending {
    /// A copy beside its local name, synced.
    Local(tempfile::NamedTempFile),
    /// An object store, found vacant.
    Remote(remote::Destination),
}

/// Records the start of an export once it is planned and checked (tables, thresholds).
type OnStart<'a> = dyn FnMut(&[TableUse], &[String]) -> Result<(), QueryError> + Send + 'a;

/// Plan, run and stage the result in a file without a name, guard applied.
/// The first argument: the exchange, and the policy version the whole export is decided
/// under.
async fn stage(
    (ex, gov): (&Exchange, &crate::engine::Governance),
    req: &ExportRequest,
    progress: &mut dyn FnMut(u64, u64),
    on_start: &mut OnStart<'_>,
    named: &mut Vec<TableUse>,
    tables: &mut Option<(Vec<TableUse>, Vec<String>)>,
    guard_note: &mut Option<String>,
) -> Result<Staged, QueryError> {
    if !valid_recipient(&req.recipient) {
        return Err(QueryError::Refused(
            "a recipient is 1 to 64 letters, digits, '-', '_' or '.'".into(),
        ));
    }
    let Some(recipient) = gov.policies.recipient(&req.recipient) else {
        return Err(QueryError::Refused(format!(
            "recipient {} is not declared in policies/recipients.toml: exports go to declared recipients only",
            req.recipient
        )));
    };
    if req.out.file_name().is_none() || req.out.as_os_str().to_string_lossy().ends_with('/') {
        return Err(QueryError::Failed(format!(
            "{}: the output must name a file",
            req.out.display()
        )));
    }
    // Not `exists()`: a dangling symlink is a name that exists.
    let taken = |p: &Path| fs::symlink_metadata(p).is_ok();
    if taken(&req.out) || taken(&manifest_path(&req.out)) {
        return Err(QueryError::Failed(format!(
            "{} already exists: exports are never overwritten",
            req.out.display()
        )));
    }
    let agency = gov.agency_of(&req.principal).unwrap_or_default();
    let scope = KeyRing::recipient_scope(&agency, &req.recipient);
    let session = ex.scoped_session(gov, &req.principal, req.purpose.as_deref(), Some(&scope))?;
    let stmt = match classify(&session, &req.sql)? {
        Kind::Query(stmt) => stmt,
        other => {
            return Err(QueryError::Refused(format!(
                "only queries can be exported, not {}",
                other.label()
            )));
        }
    };
    let planned = plan_query(&session, *stmt, named, &[]).await?;
    *tables = Some((planned.tables.clone(), planned.thresholds.clone()));
    // The guard reads the raw tables' quasi-identifiers off the plan; a hub has none of
    // its nodes' raw tables to read them from, so it does not export them (fail closed).
    if planned.federated.is_some() {
        return Err(QueryError::Refused(
            "tables served by agency nodes cannot be exported through the hub yet; export at an exchange holding the data".into(),
        ));
    }
    // Aggregated rows are groups only under a policy threshold over the tables whose
    // quasi-identifiers the query reads; otherwise they count as records like any row.
    let guard = GuardSpec::of(&planned.optimized, &gov.catalog);
    // Checked whether or not the guard found a quasi-identifier: a raw resident ID selects
    // by them without reading one.
    if !guard.as_ref().is_some_and(|g| g.aggregated)
        && let Some((unshown, k)) =
            selection::unshown_quasi_identifiers(&planned.written, &gov.catalog)
    {
        return Err(QueryError::Refused(format!(
            "the export selects, joins or orders rows by quasi-identifiers it does not show ({}); its {k}-anonymity is counted over what the file shows, so show them as plain columns (as the grant presents them) or drop the condition",
            unshown.join(", ")
        )));
    }

    if let Some(why) = levels::refusal(&planned.tables, &planned.thresholds, &gov.catalog) {
        return Err(QueryError::Refused(why));
    }
    let transfer = if recipient.cross_border() {
        if levels::reads_audit_log(&planned.optimized) {
            return Err(QueryError::Refused(format!(
                "the export reads the audit log (audit.events), whose records quote statements and the identifiers in them, for recipient {} in {}, outside the mainland: the audit log does not leave the mainland",
                recipient.name, recipient.jurisdiction
            )));
        }
        Some(
            levels::abroad(&planned.tables, &gov.catalog, recipient)
                .map_err(QueryError::Refused)?,
        )
    } else {
        None
    };

    on_start(&planned.tables, &planned.thresholds)?;
    let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let expires = req
        .expires
        .into_iter()
        .chain(
            planned
                .tables
                .iter()
                .filter_map(|t| grant_expiry(gov, &t.grant)),
        )
        .min()
        .map(|d| d.to_string());
    let grants: Vec<String> = planned.tables.iter().map(|t| t.grant.clone()).collect();
    let metadata = vec![
        kv("exchange.format", "exchange-export/v1"),
        kv("exchange.statement", &req.sql),
        kv("exchange.principal", &req.principal),
        kv("exchange.purpose", req.purpose.as_deref().unwrap_or("")),
        kv("exchange.recipient", &req.recipient),
        kv("exchange.jurisdiction", &recipient.jurisdiction),
        kv("exchange.transfer", transfer.as_deref().unwrap_or("")),
        kv("exchange.grants", &grants.join(",")),
        kv("exchange.created", &created),
        kv("exchange.expires", expires.as_deref().unwrap_or("")),
    ];
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_key_value_metadata(Some(metadata))
        .build();

    // The subject columns (the entities the rows come from, for the guard) never reach
    // the file: it holds the query's own columns only.
    let full = planned.physical.schema();
    let own: Vec<usize> = full
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| !f.name().starts_with(crate::enforcement::SUBJECT))
        .map(|(i, _)| i)
        .collect();
    let schema = Arc::new(
        full.project(&own)
            .map_err(|e| QueryError::Failed(e.to_string()))?,
    );
    // Staged in files without names, held open until published ([`publish`]): no one can
    // read the unfiltered result or swap what is hashed and signed, and a killed export
    // leaves nothing (reviews 14 and 15).
    let dir = publish::staging_dir(&ex.config().state_dir)
        .map_err(|e| QueryError::Failed(format!("the export staging directory: {e}")))?;
    let io = |e: std::io::Error| QueryError::Failed(format!("{}: {e}", dir.display()));
    let pq = |e: parquet::errors::ParquetError| {
        QueryError::Failed(format!("staging the export in {}: {e}", dir.display()))
    };
    let failed = |e: String| QueryError::Failed(e);
    let file = publish::staging_file(&dir).map_err(io)?;
    let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props.clone())).map_err(pq)?;
    let mut counter = match &guard {
        Some(g) if !g.aggregated => {
            Some(ClassCounter::new(g, &full).map_err(|e| failed(e.to_string()))?)
        }
        _ => None,
    };
    let governed = planned.governed;
    let mut stream = execute_on_own_threads(
        Arc::clone(&planned.physical),
        session.task_ctx().map_err(|e| run_error(governed, e))?,
        None,
    )
    .map_err(|e| run_error(governed, e))?;
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| run_error(governed, e))?;
        if let Some(c) = counter.as_mut() {
            c.add(&batch).map_err(|e| failed(e.to_string()))?;
        }
        let batch = batch.project(&own).map_err(|e| failed(e.to_string()))?;
        writer.write(&batch).map_err(pq)?;
        rows += batch.num_rows() as u64;
        progress(rows, writer.bytes_written() as u64);
    }
    let mut staged = writer.into_inner().map_err(pq)?;

    let mut note = guard.as_ref().filter(|g| g.aggregated).map(|g| {
        format!(
            "k-anonymity k={} over {}: not counted, the rows are groups of the policy's thresholds ({})",
            g.k,
            g.over(),
            planned.thresholds.join("; ")
        )
    });
    let mut public = note.clone();
    if let (Some(g), Some(c)) = (&guard, &counter) {
        let v = c.verdict(g.k);
        let (classes, small_rows) = (v.small_classes, v.small_rows);
        let per = if v.per_person {
            ", counted per person"
        } else {
            ""
        };
        let over = format!("k-anonymity k={} over {}{per}", g.k, g.over());
        public = Some(format!(
            "{over}: rows of classes below k are {}",
            match g.action {
                KAction::Refuse => "refused",
                _ => "withheld",
            }
        ));
        if classes == 0 {
            note = Some(format!("{over}: {} classes, none below k", v.classes));
        } else if g.action == KAction::Refuse {
            let msg = format!(
                "{over}: {classes} of {} equivalence classes ({small_rows} rows) have fewer than {} members, and the owning agency's policy refuses such exports; generalise the quasi-identifiers further (e.g. coarser bands) or export aggregates",
                v.classes, g.k
            );
            *guard_note = Some(format!("refused: {msg}"));
            return Err(QueryError::Refused(msg));
        } else {
            // Second pass over the staged file, by its handle: drop the rows of small
            // classes.
            let reader = ParquetRecordBatchReaderBuilder::try_new(staged)
                .and_then(|b| b.build())
                .map_err(pq)?;
            let file = publish::staging_file(&dir).map_err(io)?;
            let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(pq)?;
            rows = 0;
            let mut offset = 0;
            for batch in reader {
                let batch = batch.map_err(|e| failed(e.to_string()))?;
                let kept = v
                    .suppress(&batch, offset)
                    .map_err(|e| failed(e.to_string()))?;
                offset += batch.num_rows();
                rows += kept.num_rows() as u64;
                writer.write(&kept).map_err(pq)?;
            }
            staged = writer.into_inner().map_err(pq)?;
            note = Some(format!(
                "{over}: {classes} of {} classes below k suppressed ({small_rows} rows)",
                v.classes
            ));
        }
    }
    // What is signed is what the handle holds: its footer must count the rows counted here.
    let footer = parquet::file::metadata::ParquetMetaDataReader::new()
        .parse_and_finish(&staged)
        .map_err(pq)?;
    if u64::try_from(footer.file_metadata().num_rows()).ok() != Some(rows) {
        return Err(failed(format!(
            "internal error: the staged export holds {} rows, {rows} were written; no file was written",
            footer.file_metadata().num_rows()
        )));
    }
    staged.seek(SeekFrom::Start(0)).map_err(io)?;
    let (sha256, bytes) = manifest::sha256_of(&mut staged).map_err(io)?;
    Ok(Staged {
        file: staged,
        rows,
        sha256,
        bytes,
        guard: note,
        guard_public: public,
        jurisdiction: recipient.jurisdiction.clone(),
        transfer,
        created,
        expires,
    })
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue::new(k.to_string(), v.to_string())
}

/// The expiry of a grant by its audited reference: `agency/id@version`, followed by
/// ` (approval ...)` when the grant carries one.
fn grant_expiry(gov: &crate::engine::Governance, grant_ref: &str) -> Option<NaiveDate> {
    let grant_ref = grant_ref
        .split_once(" (approval ")
        .map_or(grant_ref, |(r, _)| r);
    gov.policies
        .grants()
        .iter()
        .find(|g| format!("{}/{}@{}", g.agency, g.id, g.version) == grant_ref)
        .and_then(|g| g.expires)
}
