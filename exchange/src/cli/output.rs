//! Results for people: tables, CSV, JSON, files, treatments.

use std::io::Write;
use std::path::PathBuf;

use arrow::array::RecordBatch;

use super::Format;
use futures::StreamExt;

use crate::engine::{Exchange, QueryError, QueryOutput, QueryStream};
use crate::policy::Treatment;

pub(super) fn print_lines(out: &QueryOutput) {
    for b in &out.batches {
        if let Some(col) = b
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
        {
            for line in col.iter().flatten() {
                say!("{line}");
            }
        }
    }
}

/// A result's batches, or one empty batch of its schema when it has none, so that an
/// empty result still shows its column names (a table without them printed `++`).
pub(super) fn shown(out: &QueryOutput) -> Vec<RecordBatch> {
    if out.batches.is_empty() {
        vec![RecordBatch::new_empty(out.schema.clone())]
    } else {
        out.batches.clone()
    }
}

pub(super) fn write_output(
    out: &QueryOutput,
    format: Format,
    path: Option<&PathBuf>,
) -> Result<(), String> {
    let mut sink: Box<dyn Write> = match path {
        Some(p) => Box::new(std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => Box::new(Stdout),
    };
    render(&mut sink, &shown(out), format).map_err(|e| e.to_string())?;
    if matches!(format, Format::Table) {
        let noisy: Vec<String> = out
            .schema
            .fields()
            .iter()
            .filter_map(|f| {
                f.metadata()
                    .get(crate::enforcement::NOISE_SCALE)
                    .map(|s| format!("{} scale {s}", f.name()))
            })
            .collect();
        if !noisy.is_empty() {
            writeln!(
                sink,
                "differential privacy: {}; a value is within 3 scales of its exact (bounded) statistic 95% of the time",
                noisy.join(", ")
            )
            .map_err(|e| e.to_string())?;
        }
    }
    sink.flush().map_err(|e| e.to_string())
}

/// Why writing a streamed result stopped.
pub(super) enum WriteFailure {
    /// The statement failed (exit 1).
    Query(QueryError),
    /// The output could not be written (exit 2).
    Output(String),
}

/// Write a result as its batches arrive (CSV, JSON Lines; a table needs every row for its
/// widths, so it is collected first). A file appears only once the result is whole: a
/// partial result must not pass for a whole one. On standard output, rows already written
/// stay and the error follows on standard error.
pub(super) async fn write_stream(
    mut stream: QueryStream,
    format: Format,
    path: Option<&PathBuf>,
) -> Result<(), WriteFailure> {
    if matches!(format, Format::Table) {
        let out = stream.collect().await.map_err(WriteFailure::Query)?;
        return write_output(&out, format, path).map_err(WriteFailure::Output);
    }
    let output = |e: &dyn std::fmt::Display| WriteFailure::Output(e.to_string());
    // A file is written under a temporary name beside it and renamed into place once the
    // result is whole: a statement that fails leaves an existing file as it was (review 16).
    let mut staged = None;
    let sink: Box<dyn Write> = match path {
        Some(p) => {
            let dir = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let tmp = tempfile::NamedTempFile::new_in(&dir)
                .map_err(|e| output(&format!("{}: {e}", p.display())))?;
            let file = tmp
                .reopen()
                .map_err(|e| output(&format!("{}: {e}", p.display())))?;
            staged = Some(tmp);
            Box::new(file)
        }
        None => Box::new(Stdout),
    };
    let mut sink = std::io::BufWriter::new(sink);
    let written = async {
        let schema = stream.schema();
        let mut any = false;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(WriteFailure::Query)?;
            write_batch(&mut sink, !any, &batch, format).map_err(|e| output(&e))?;
            any = true;
            // Rows leave as they come, not when a buffer fills.
            sink.flush().map_err(|e| output(&e))?;
        }
        if !any && matches!(format, Format::Csv) {
            // The header of an empty result.
            let empty = RecordBatch::new_empty(schema);
            write_batch(&mut sink, true, &empty, format).map_err(|e| output(&e))?;
        }
        sink.flush().map_err(|e| output(&e))
    }
    .await;
    drop(sink);
    written?;
    if let (Some(tmp), Some(p)) = (staged, path) {
        tmp.persist(p)
            .map_err(|e| output(&format!("{}: {}", p.display(), e.error)))?;
    }
    Ok(())
}

/// One batch in CSV (with the header when `first`) or JSON Lines, values escaped.
fn write_batch(
    sink: &mut dyn Write,
    first: bool,
    batch: &RecordBatch,
    format: Format,
) -> Result<(), arrow::error::ArrowError> {
    let escaped = crate::text::escape_batches(std::slice::from_ref(batch))?;
    match format {
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(first)
                .build(sink);
            for b in &crate::text::flatten_nested(&escaped)? {
                w.write(b)?;
            }
        }
        _ => {
            let mut w = arrow::json::LineDelimitedWriter::new(sink);
            for b in &escaped {
                w.write(b)?;
            }
            w.finish()?;
        }
    }
    Ok(())
}

/// Render batches in a format.
pub fn render(
    sink: &mut dyn Write,
    batches: &[RecordBatch],
    format: Format,
) -> Result<(), arrow::error::ArrowError> {
    // Values can hold terminal escapes: every format shows them escaped.
    let escaped = crate::text::escape_batches(batches)?;
    let batches = escaped.as_slice();
    match format {
        Format::Table => {
            writeln!(
                sink,
                "{}",
                arrow::util::pretty::pretty_format_batches(batches)?
            )?;
        }
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(sink);
            // CSV holds flat values: lists, structs and maps as their text.
            for b in &crate::text::flatten_nested(batches)? {
                w.write(b)?;
            }
        }
        Format::Json => {
            let mut w = arrow::json::LineDelimitedWriter::new(sink);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
        }
    }
    Ok(())
}

/// A line per table: grant, row filter and the treatments that changed columns.
pub fn describe_treatments(
    ex: &Exchange,
    principal: &str,
    purpose: &str,
    out: &QueryOutput,
) -> Vec<String> {
    let Ok(session) = ex.session(principal, Some(purpose)) else {
        return vec![];
    };
    let mut lines = Vec::new();
    for t in &out.tables {
        let Some(spec) = session.tables.get(&t.table) else {
            lines.push(format!("{} (grant {})", t.table, t.grant));
            continue;
        };
        let treated: Vec<String> = spec
            .access
            .columns
            .iter()
            .filter(|c| c.treatment != Treatment::Plain)
            .map(|c| format!("{} {}", c.name, c.treatment))
            .collect();
        let rows = if spec.access.row_filter.is_some() {
            "rows filtered by the owner's row filter; "
        } else {
            ""
        };
        let cols = if treated.is_empty() {
            "all visible columns plain".to_string()
        } else {
            treated.join(", ")
        };
        lines.push(format!("{} via {}: {rows}{cols}", t.table, t.grant));
    }
    for th in &out.thresholds {
        lines.push(format!("groups suppressed unless {th}"));
    }
    lines
}

/// Standard output whose reader going away (`exchange audit report | head`) ends the
/// command quietly, as SIGPIPE's default disposition would, but only once the command has
/// closed the exchange and sealed its audit log (review 24b N8: exiting at the write left
/// the log unsealed). The process keeps ignoring SIGPIPE (Rust's default), so that a
/// network peer closing a socket (a TLS client talking to a plain-HTTP store) cannot kill a
/// command silently, unaudited (review 24 F6).
pub(crate) struct Stdout;

/// Set when standard output's reader has gone: the command's writes fail, it ends as it
/// would on any output error, and the process exits with 141, saying nothing more.
static PIPE_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether standard output's reader has gone.
pub(crate) fn pipe_closed() -> bool {
    PIPE_CLOSED.load(std::sync::atomic::Ordering::Relaxed)
}

fn quiet<T>(r: std::io::Result<T>) -> std::io::Result<T> {
    if let Err(e) = &r
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        PIPE_CLOSED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    r
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        quiet(std::io::stdout().write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        quiet(std::io::stdout().flush())
    }
}

/// Write text to standard output as it is (no escaping: text the exchange made).
pub(crate) fn print(text: &str) {
    let _ = Stdout.write_all(text.as_bytes());
}
