//! Results for people: tables, CSV, JSON, files, treatments.

use std::io::Write;
use std::path::PathBuf;

use arrow::array::RecordBatch;

use super::Format;
use crate::engine::{Exchange, QueryOutput};
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

pub(super) fn write_output(
    out: &QueryOutput,
    format: Format,
    path: Option<&PathBuf>,
) -> Result<(), String> {
    let mut sink: Box<dyn Write> = match path {
        Some(p) => Box::new(std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => Box::new(std::io::stdout().lock()),
    };
    render(&mut sink, &out.batches, format).map_err(|e| e.to_string())?;
    sink.flush().map_err(|e| e.to_string())
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
