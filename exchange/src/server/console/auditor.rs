//! The auditor's pages: activity over time, refusals, per-table and per-column access,
//! exports, every statement and one record, and the integrity of the log.

use std::collections::{BTreeMap, BTreeSet};

use super::chart::{Series, bucket_width};
use super::html::{Cell, Table, esc};
use super::{
    PERIODS, Page, Params, Refusal, Verification, Viewer, clip, filter_links, record_link,
    shown_time, since, statements, time_of,
};
use crate::audit::{AuditRecord, Decision, StatementKind};
use crate::engine::Exchange;

fn period_links(path: &str, q: &Params) -> String {
    filter_links(path, q, "since", &PERIODS)
}

/// Statements over time, stacked by principal, purpose, agency, decision or kind.
pub(super) fn activity(ex: &Exchange, q: &Params) -> Result<Page, Refusal> {
    let mut records = statements(ex, since(q))?;
    let views = q.get("views").is_some_and(|v| v == "1");
    let console_views = records
        .iter()
        .filter(|r| r.entry.kind == StatementKind::Console)
        .count();
    if !views {
        records.retain(|r| r.entry.kind != StatementKind::Console);
    }
    let by = q.get("by").map(String::as_str).unwrap_or("principal");
    let key = |r: &AuditRecord| -> String {
        match by {
            "purpose" => r.entry.purpose.clone().unwrap_or_else(|| "(none)".into()),
            "agency" => r.entry.agency.clone().unwrap_or_else(|| "(none)".into()),
            "decision" => r.entry.decision.as_str().into(),
            "kind" => r.entry.kind.as_str().into(),
            _ => r.entry.principal.clone(),
        }
    };
    let times: Vec<_> = records.iter().filter_map(time_of).collect();
    let span = match (times.iter().min(), times.iter().max()) {
        (Some(a), Some(b)) => *b - *a,
        _ => chrono::TimeDelta::zero(),
    };
    let mut series = Series::new(bucket_width(span));
    let mut decisions = Series::new(bucket_width(span));
    for r in &records {
        if let Some(t) = time_of(r) {
            series.add(t, &key(r));
            decisions.add(t, r.entry.decision.as_str());
        }
    }
    let mut page = Page::new("Activity");
    page.html(period_links("/audit/activity", q));
    page.html(filter_links(
        "/audit/activity",
        q,
        "by",
        &[
            ("", "by principal"),
            ("purpose", "by purpose"),
            ("agency", "by agency"),
            ("decision", "by decision"),
            ("kind", "by kind"),
        ],
    ));
    page.html(format!(
        "<p class=\"meta\">{} statements{}. {}</p>",
        records.len(),
        if views {
            " (console page views included)"
        } else {
            ""
        },
        if views {
            "<a href=\"/audit/activity\">Leave out console page views</a>".to_string()
        } else {
            format!("{console_views} console page views left out: <a href=\"/audit/activity?views=1\">include them</a>")
        }
    ));
    page.html(format!(
        "<section id=\"activity-chart\"><h2>Statements {}</h2>{}</section>",
        esc(&format!("by {by}")),
        series.svg(&format!("statements by {by} over time"))
    ));
    page.html(format!(
        "<section id=\"decision-chart\"><h2>Decisions</h2>{}</section>",
        decisions.svg("decisions over time")
    ));
    let mut counts: BTreeMap<(String, String, String), [u64; 3]> = BTreeMap::new();
    for r in &records {
        let e = &r.entry;
        let slot = counts
            .entry((
                e.principal.clone(),
                e.agency.clone().unwrap_or_default(),
                e.purpose.clone().unwrap_or_default(),
            ))
            .or_default();
        slot[match e.decision {
            Decision::Allowed => 0,
            Decision::Refused => 1,
            Decision::Failed => 2,
        }] += 1;
    }
    let mut t = Table::new(
        "by-principal",
        "By principal and purpose",
        &[
            "principal",
            "agency",
            "purpose",
            "allowed",
            "refused",
            "failed",
        ],
    );
    for ((p, a, u), [ok, refused, failed]) in counts {
        t.row(vec![
            Cell::Link(
                p.clone(),
                format!(
                    "/audit/statements?principal={}",
                    super::html::query_value(&p)
                ),
            ),
            a.into(),
            u.into(),
            ok.to_string().into(),
            refused.to_string().into(),
            failed.to_string().into(),
        ]);
    }
    page.table(t);
    Ok(page)
}

/// Refused statements and their reasons.
pub(super) fn refusals(ex: &Exchange, q: &Params) -> Result<Page, Refusal> {
    let records = statements(ex, since(q))?;
    let refused: Vec<&AuditRecord> = records
        .iter()
        .filter(|r| r.entry.decision == Decision::Refused)
        .collect();
    let mut page = Page::new("Refusals");
    page.html(period_links("/audit/refusals", q));
    let mut reasons: BTreeMap<&str, (u64, BTreeSet<&str>)> = BTreeMap::new();
    for r in &refused {
        let slot = reasons
            .entry(r.entry.reason.as_deref().unwrap_or("(no reason)"))
            .or_default();
        slot.0 += 1;
        slot.1.insert(&r.entry.principal);
    }
    let mut by_reason: Vec<_> = reasons.into_iter().collect();
    by_reason.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(b.0)));
    let mut t = Table::new("reasons", "Reasons", &["reason", "refusals", "principals"]);
    for (reason, (n, who)) in by_reason {
        t.row(vec![
            reason.into(),
            n.to_string().into(),
            who.into_iter().collect::<Vec<_>>().join(", ").into(),
        ]);
    }
    page.table(t);
    let mut t = Table::new(
        "refusals",
        "Refused statements, latest first",
        &[
            "record",
            "time",
            "principal",
            "agency",
            "purpose",
            "kind",
            "reason",
            "statement",
        ],
    );
    for r in refused.iter().rev() {
        let e = &r.entry;
        t.row(vec![
            record_link(r.seq),
            shown_time(r).into(),
            e.principal.clone().into(),
            e.agency.clone().unwrap_or_default().into(),
            e.purpose.clone().unwrap_or_default().into(),
            e.kind.as_str().into(),
            e.reason.clone().unwrap_or_default().into(),
            clip(&e.statement, 300).into(),
        ]);
    }
    page.table(t);
    Ok(page)
}

/// What was read of one table.
#[derive(Default)]
struct TableReads<'a> {
    statements: u64,
    principals: BTreeSet<&'a str>,
    purposes: BTreeSet<&'a str>,
    last: &'a str,
}

/// Which tables and raw columns were read, how often and by whom.
pub(super) fn access(ex: &Exchange, q: &Params) -> Result<Page, Refusal> {
    let records = statements(ex, since(q))?;
    let mut tables: BTreeMap<&str, TableReads> = BTreeMap::new();
    let mut columns: BTreeMap<(&str, &str), (u64, BTreeSet<&str>)> = BTreeMap::new();
    for r in records
        .iter()
        .filter(|r| r.entry.decision == Decision::Allowed)
    {
        for u in &r.entry.tables {
            let t = tables.entry(&u.table).or_default();
            t.statements += 1;
            t.principals.insert(&r.entry.principal);
            if let Some(p) = r.entry.purpose.as_deref() {
                t.purposes.insert(p);
            }
            t.last = &r.time;
            for c in &u.columns {
                let col = columns.entry((&u.table, c)).or_default();
                col.0 += 1;
                col.1.insert(&r.entry.principal);
            }
        }
    }
    let mut page = Page::new("Access to tables and columns");
    page.html(period_links("/audit/access", q));
    page.html("<p class=\"meta\">Statements that ran (allowed), by the tables and raw columns they read, including columns used only in filters, joins and row filters.</p>");
    let mut t = Table::new(
        "tables",
        "Per table",
        &["table", "statements", "principals", "purposes", "last read"],
    );
    for (table, reads) in tables {
        t.row(vec![
            table.into(),
            reads.statements.to_string().into(),
            reads
                .principals
                .into_iter()
                .collect::<Vec<_>>()
                .join(", ")
                .into(),
            reads
                .purposes
                .into_iter()
                .collect::<Vec<_>>()
                .join(", ")
                .into(),
            clip(reads.last, 19).replace('T', " ").into(),
        ]);
    }
    page.table(t);
    let mut t = Table::new(
        "columns",
        "Per column",
        &["table", "column", "statements", "principals"],
    );
    for ((table, column), (n, who)) in columns {
        t.row(vec![
            table.into(),
            column.into(),
            n.to_string().into(),
            who.into_iter().collect::<Vec<_>>().join(", ").into(),
        ]);
    }
    page.table(t);
    Ok(page)
}

/// Signed exports: who took what, for whom.
pub(super) fn exports(ex: &Exchange, q: &Params) -> Result<Page, Refusal> {
    let records = statements(ex, since(q))?;
    let mut page = Page::new("Exports");
    page.html(period_links("/audit/exports", q));
    page.html("<p class=\"meta\">Each export file carries a signed manifest beside it (<code>exchange export verify</code>); the file's name and SHA-256 below match it.</p>");
    let mut t = Table::new(
        "exports",
        "Exports, latest first",
        &[
            "record",
            "time",
            "principal",
            "purpose",
            "recipient",
            "decision",
            "rows",
            "file",
            "guard",
            "tables",
        ],
    );
    for r in records
        .iter()
        .rev()
        .filter(|r| r.entry.kind == StatementKind::Export)
    {
        let e = &r.entry;
        t.row(vec![
            record_link(r.seq),
            shown_time(r).into(),
            e.principal.clone().into(),
            e.purpose.clone().unwrap_or_default().into(),
            e.recipient.clone().unwrap_or_default().into(),
            e.decision.as_str().into(),
            e.rows.map(|n| n.to_string()).unwrap_or_default().into(),
            e.export.clone().unwrap_or_default().into(),
            e.guard.clone().unwrap_or_default().into(),
            e.tables
                .iter()
                .map(|u| u.table.as_str())
                .collect::<Vec<_>>()
                .join(", ")
                .into(),
        ]);
    }
    page.table(t);
    Ok(page)
}

/// Every statement, latest first, filtered by principal, decision or kind.
pub(super) fn list(ex: &Exchange, q: &Params) -> Result<Page, Refusal> {
    let records = statements(ex, since(q))?;
    let principal = q.get("principal").filter(|p| !p.is_empty());
    let kind = q.get("kind").filter(|p| !p.is_empty());
    let wanted = q.get("decision").filter(|p| !p.is_empty());
    let mut page = Page::new("Statements");
    page.html(period_links("/audit/statements", q));
    page.html(filter_links(
        "/audit/statements",
        q,
        "decision",
        &[
            ("", "every decision"),
            ("allowed", "allowed"),
            ("refused", "refused"),
            ("failed", "failed"),
        ],
    ));
    if let Some(p) = principal {
        page.html(format!(
            "<p class=\"meta\">Principal {} · <a href=\"/audit/statements\">everyone</a></p>",
            esc(p)
        ));
    }
    let limit = 1000;
    let mut t = Table::new(
        "statements",
        format!("Statements, latest first (at most {limit})"),
        &[
            "record",
            "time",
            "principal",
            "purpose",
            "kind",
            "decision",
            "rows",
            "ms",
            "statement",
        ],
    );
    for r in records
        .iter()
        .rev()
        .filter(|r| principal.is_none_or(|p| *p == r.entry.principal))
        .filter(|r| kind.is_none_or(|k| r.entry.kind == k.as_str()))
        .filter(|r| wanted.is_none_or(|d| r.entry.decision.as_str() == d))
        .take(limit)
    {
        let e = &r.entry;
        t.row(vec![
            record_link(r.seq),
            shown_time(r).into(),
            e.principal.clone().into(),
            e.purpose.clone().unwrap_or_default().into(),
            e.kind.as_str().into(),
            e.decision.as_str().into(),
            e.rows.map(|n| n.to_string()).unwrap_or_default().into(),
            e.duration_ms.to_string().into(),
            clip(&e.statement, 200).into(),
        ]);
    }
    page.table(t);
    Ok(page)
}

/// One statement's record, every field.
pub(super) fn record(ex: &Exchange, q: &Params) -> Result<Page, Refusal> {
    let seq: u64 = q
        .get("seq")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Refusal::NotFound("give a record number: ?seq=N".into()))?;
    let records = statements(ex, None)?;
    let r = records
        .iter()
        .find(|r| r.seq == seq)
        .ok_or_else(|| Refusal::NotFound(format!("no statement record {seq}")))?;
    let e = &r.entry;
    let mut page = Page::new(format!("Record {seq}"));
    let mut t = Table::new("fields", "Fields", &["field", "value"]);
    let mut field = |k: &str, v: String| {
        if !v.is_empty() {
            t.row(vec![k.into(), v.into()]);
        }
    };
    field("sequence", r.seq.to_string());
    field("time", r.time.clone());
    field("principal", e.principal.clone());
    field("agency", e.agency.clone().unwrap_or_default());
    field("purpose", e.purpose.clone().unwrap_or_default());
    field("kind", e.kind.as_str().into());
    field("decision", e.decision.as_str().into());
    field("reason", e.reason.clone().unwrap_or_default());
    field("statement", e.statement.clone());
    field("parameters", e.params.join(", "));
    field("rows", e.rows.map(|n| n.to_string()).unwrap_or_default());
    field("result digest", e.result_digest.clone().unwrap_or_default());
    field("duration (ms)", e.duration_ms.to_string());
    field("thresholds", e.thresholds.join(", "));
    field(
        "stream",
        e.stream
            .map(|s| s.outcome().to_string())
            .unwrap_or_default(),
    );
    field("recipient", e.recipient.clone().unwrap_or_default());
    field("export", e.export.clone().unwrap_or_default());
    field("guard", e.guard.clone().unwrap_or_default());
    field("statement id", e.statement_id.clone().unwrap_or_default());
    field("node requests", e.node_requests.join(", "));
    field("workers", e.workers.join(", "));
    field("privacy", e.privacy.join("; "));
    field("previous line (SHA-256)", r.prev.clone());
    page.table(t);
    let mut t = Table::new(
        "tables",
        "Tables and raw columns read",
        &["table", "grant", "columns"],
    );
    for u in &e.tables {
        t.row(vec![
            u.table.clone().into(),
            u.grant.clone().into(),
            u.columns.join(", ").into(),
        ]);
    }
    page.table(t);
    Ok(page)
}

/// The log's integrity: what the last verification found, and a button to verify now.
pub(super) fn log_status(
    ex: &Exchange,
    v: &Viewer,
    opened: &str,
    last: Option<Verification>,
) -> Page {
    let mut page = Page::new("Log integrity");
    let status = match &last {
        None => format!(
            "<p>Verified when the server opened the log, {} (it refuses to start on a log that does not verify). Not verified since.</p>",
            esc(opened)
        ),
        Some(Verification {
            when,
            by: who,
            result: Ok(s),
            ..
        }) => format!(
            "<p id=\"verify-status\" class=\"ok\">Verified {} by {}: the chain is whole and every checkpoint signature holds.</p><table><tbody><tr><th>records</th><td id=\"records\">{}</td></tr><tr><th>checkpoints</th><td>{}</td></tr><tr><th>segments</th><td>{}</td></tr><tr><th>chain head</th><td><code>{}</code></td></tr><tr><th>last checkpoint covers</th><td>{}</td></tr><tr><th>records after it</th><td>{}</td></tr><tr><th>recoveries after unclean shutdowns</th><td>{}</td></tr><tr><th>streams started, not completed</th><td>{}</td></tr></tbody></table>",
            esc(when),
            esc(who),
            s.records,
            s.checkpoints,
            s.segments,
            esc(&s.head),
            s.last_checkpoint
                .map(|n| format!("{n} records"))
                .unwrap_or_else(|| "none".into()),
            s.unsigned_tail,
            s.recoveries,
            s.incomplete.len(),
        ),
        Some(Verification {
            when,
            by: who,
            result: Err(e),
            ..
        }) => format!(
            "<p id=\"verify-status\" class=\"bad\">Verification {} by {} FAILED: {}</p>",
            esc(when),
            esc(who),
            esc(e)
        ),
    };
    page.html(format!("<div class=\"card\">{status}</div>"));
    page.html(format!(
        "<form method=\"post\" action=\"/audit/verify\" class=\"action\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\" id=\"verify\">Verify now</button></form><p class=\"meta\">Log directory: <code>{}</code>. Offline: <code>exchange audit verify</code> with the exchange's public key.</p>",
        esc(&v.csrf),
        esc(&ex.audit().path().display().to_string())
    ));
    page
}
