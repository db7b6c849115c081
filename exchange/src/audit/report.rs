//! `exchange audit report`: what the log says, summarised for a reviewer.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::{DateTime, Utc};

use super::{AuditRecord, Decision, statements};

/// A summary of the records in a period.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// First and last record time covered.
    pub period: Option<(String, String)>,
    /// Statements by decision.
    pub decisions: BTreeMap<String, u64>,
    /// (principal, purpose) -> (allowed, refused, failed).
    pub by_principal: BTreeMap<(String, String), [u64; 3]>,
    /// Refusal reason -> count.
    pub refusals: BTreeMap<String, u64>,
    /// owning agency -> table -> (statements, principals).
    pub tables: BTreeMap<String, BTreeMap<String, (u64, BTreeSet<String>)>>,
    /// Exports within the mainland: (time, principal, recipient, file).
    pub exports: Vec<(String, String, String, String)>,
    /// Exports to recipients outside the mainland: (time, principal, recipient, file, what
    /// crossed the border and on what basis).
    pub cross_border: Vec<(String, String, String, String, String)>,
    /// Streamed results by how they ended (`incomplete`: no completion record, the process
    /// died mid-stream or it still runs).
    pub streams: BTreeMap<String, u64>,
}

/// Summarise `records` from `since` on, for one principal when given.
pub fn report(
    records: &[AuditRecord],
    since: Option<DateTime<Utc>>,
    principal: Option<&str>,
) -> Report {
    let mut r = Report::default();
    // A completion record is part of its statement, counted with it.
    for rec in &statements(records.to_vec()) {
        if let Some(since) = since {
            let Ok(t) = DateTime::parse_from_rfc3339(&rec.time) else {
                continue;
            };
            if t < since {
                continue;
            }
        }
        if principal.is_some_and(|p| p != rec.entry.principal) {
            continue;
        }
        r.period = Some(match r.period.take() {
            None => (rec.time.clone(), rec.time.clone()),
            Some((first, _)) => (first, rec.time.clone()),
        });
        if let Some(s) = rec.entry.stream {
            *r.streams.entry(s.outcome().to_string()).or_default() += 1;
        }
        let d = match rec.entry.decision {
            Decision::Allowed => 0,
            Decision::Refused => 1,
            Decision::Failed => 2,
        };
        *r.decisions
            .entry(["allowed", "refused", "failed"][d].to_string())
            .or_default() += 1;
        r.by_principal
            .entry((
                rec.entry.principal.clone(),
                rec.entry.purpose.clone().unwrap_or_else(|| "(none)".into()),
            ))
            .or_default()[d] += 1;
        if rec.entry.decision == Decision::Refused {
            *r.refusals
                .entry(rec.entry.reason.clone().unwrap_or_default())
                .or_default() += 1;
        }
        for t in &rec.entry.tables {
            let (agency, table) = t.table.split_once('.').unwrap_or(("?", &t.table));
            let e = r
                .tables
                .entry(agency.to_string())
                .or_default()
                .entry(table.to_string())
                .or_default();
            e.0 += 1;
            e.1.insert(rec.entry.principal.clone());
        }
        if rec.entry.kind == super::StatementKind::Export && rec.entry.decision == Decision::Allowed
        {
            let (time, principal) = (rec.time.clone(), rec.entry.principal.clone());
            let recipient = rec.entry.recipient.clone().unwrap_or_default();
            let file = rec.entry.export.clone().unwrap_or_default();
            match &rec.entry.transfer {
                Some(t) => r
                    .cross_border
                    .push((time, principal, recipient, file, t.clone())),
                None => r.exports.push((time, principal, recipient, file)),
            }
        }
    }
    r
}

/// Control characters (terminal escapes, line breaks) in logged text are shown escaped,
/// never sent raw to the reader's terminal.
/// A cell of the report's markdown tables: control characters escaped, and `|` too, so
/// that text a principal chose (a file name) cannot add cells to a row (review 49).
fn clean(s: &str) -> String {
    crate::text::escape(s).replace('|', "\\|")
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some((first, last)) = &self.period else {
            return writeln!(f, "no statements in the period");
        };
        writeln!(f, "# Audit report\n\nperiod: {first} .. {last}")?;
        let total: u64 = self.decisions.values().sum();
        let parts: Vec<String> = self
            .decisions
            .iter()
            .map(|(d, n)| format!("{n} {d}"))
            .collect();
        writeln!(f, "statements: {total} ({})", parts.join(", "))?;
        if !self.streams.is_empty() {
            let parts: Vec<String> = self
                .streams
                .iter()
                .map(|(s, n)| format!("{n} {s}"))
                .collect();
            writeln!(f, "streamed results: {}", parts.join(", "))?;
        }
        writeln!(f)?;
        writeln!(f, "## Statements per principal and purpose\n")?;
        writeln!(f, "| principal | purpose | allowed | refused | failed |")?;
        writeln!(f, "|---|---|---|---|---|")?;
        for ((p, purpose), [a, r, x]) in &self.by_principal {
            writeln!(f, "| {} | {} | {a} | {r} | {x} |", clean(p), clean(purpose))?;
        }
        writeln!(f, "\n## Refusals\n")?;
        if self.refusals.is_empty() {
            writeln!(f, "none")?;
        } else {
            writeln!(f, "| count | reason |")?;
            writeln!(f, "|---|---|")?;
            let mut by_count: Vec<_> = self.refusals.iter().collect();
            by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            for (reason, n) in by_count {
                writeln!(f, "| {n} | {} |", clean(reason).replace('|', "\\|"))?;
            }
        }
        writeln!(f, "\n## Tables touched per owning agency\n")?;
        writeln!(f, "| agency | table | statements | principals |")?;
        writeln!(f, "|---|---|---|---|")?;
        for (agency, tables) in &self.tables {
            for (table, (n, principals)) in tables {
                let who: Vec<&str> = principals.iter().map(String::as_str).collect();
                writeln!(
                    f,
                    "| {agency} | {table} | {n} | {} |",
                    clean(&who.join(", "))
                )?;
            }
        }
        if !self.exports.is_empty() {
            writeln!(f, "\n## Exports\n")?;
            writeln!(f, "| time | principal | recipient | file |")?;
            writeln!(f, "|---|---|---|---|")?;
            for (t, p, r, file) in &self.exports {
                writeln!(f, "| {t} | {} | {} | {} |", clean(p), clean(r), clean(file))?;
            }
        }
        if !self.cross_border.is_empty() {
            writeln!(f, "\n## Cross-border exports\n")?;
            writeln!(f, "| time | principal | recipient | file | transfer |")?;
            writeln!(f, "|---|---|---|---|---|")?;
            for (t, p, r, file, what) in &self.cross_border {
                writeln!(
                    f,
                    "| {t} | {} | {} | {} | {} |",
                    clean(p),
                    clean(r),
                    clean(file),
                    clean(what)
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Report;

    #[test]
    fn cells_cannot_be_added_to_a_row() {
        let r = Report {
            period: Some(("t0".into(), "t1".into())),
            cross_border: vec![(
                "t".into(),
                "p".into(),
                "hk-university".into(),
                "pi.parquet | cross-border to HK: no personal information |".into(),
                "cross-border to HK: personal information (x)".into(),
            )],
            ..Report::default()
        };
        let text = r.to_string();
        let row = text
            .lines()
            .find(|l| l.starts_with("| t |"))
            .unwrap_or_else(|| panic!("{text}"));
        let cells = row.replace("\\|", "").matches('|').count();
        assert_eq!(cells, 6, "{row}");
    }
}
