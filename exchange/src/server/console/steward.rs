//! An agency's data steward's pages: who may see which of the agency's tables and columns,
//! in which form, for which purposes, until when; and what was read of its data.

use std::collections::{BTreeMap, BTreeSet};

use super::html::{Cell, Table};
use super::{PERIODS, Page, Params, Refusal, Viewer, filter_links, shown_time, since, statements};
use crate::audit::Decision;
use crate::engine::Exchange;

/// A matrix per table of the steward's agency: its columns down, its grants across.
pub(super) fn grants(ex: &Exchange, v: &Viewer) -> Page {
    let mut page = Page::new(format!("Grants of {}", v.agency));
    page.html("<p class=\"meta\">First matching grant wins, in file order. A principal of the agency whom no grant of the table names sees it raw; everyone else sees nothing of a table no grant gives them.</p>");
    let gov = ex.governance();
    let policies = &gov.policies;
    let mut any = false;
    for d in gov
        .catalog
        .datasets()
        .iter()
        .filter(|d| d.agency == v.agency)
    {
        any = true;
        let grants: Vec<_> = policies
            .grants()
            .iter()
            .filter(|g| g.agency == d.agency && g.table == d.name)
            .collect();
        let mut headers = vec!["".to_string()];
        headers.extend(grants.iter().map(|g| g.id.clone()));
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        // The id is static per page; tables are told apart by their title.
        let mut t = Table::new("grants", d.qualified_name(), &headers);
        t.empty = "no grants";
        let row = |label: &str, f: &dyn Fn(&crate::policy::Grant) -> String| {
            let mut r: Vec<Cell> = vec![label.into()];
            r.extend(grants.iter().map(|g| Cell::Text(f(g))));
            r
        };
        if !grants.is_empty() {
            t.row(row("to", &|g| g.to.to_string()));
            t.row(row("purposes", &|g| g.purposes.join(", ")));
            t.row(row("until", &|g| {
                g.expires
                    .map(|d| d.to_string())
                    .unwrap_or_else(|| "no end".into())
            }));
            t.row(row("rows", &|g| {
                g.row_filter
                    .as_ref()
                    .map(|f| f.sql.clone())
                    .unwrap_or_else(|| "all".into())
            }));
            t.row(row("aggregate only", &|g| {
                g.min_group
                    .map(|k| format!("groups of at least {k}"))
                    .unwrap_or_else(|| "no".into())
            }));
            for c in &d.columns {
                t.row(row(&format!("column {}", c.name), &|g| {
                    if g.suppressed.iter().any(|s| s == &c.name) {
                        return "suppressed".into();
                    }
                    let shown: Vec<String> = g
                        .columns
                        .iter()
                        .filter(|r| r.source == c.name)
                        .map(|r| {
                            if r.name == c.name {
                                r.treatment.to_string()
                            } else {
                                format!("{} as {}", r.treatment, r.name)
                            }
                        })
                        .collect();
                    if shown.is_empty() {
                        "—".into()
                    } else {
                        shown.join("; ")
                    }
                }));
            }
        }
        page.table(t);
    }
    if !any {
        page.html("<p class=\"empty\">The agency has no tables in the catalog.</p>");
    }
    page
}

/// What one principal read of one table for one purpose.
#[derive(Default)]
struct Reads {
    statements: u64,
    rows: u64,
    columns: BTreeSet<String>,
}

/// Statements that touched the steward's agency's tables: who, when, for which purpose,
/// which columns, under which grant. Not the statement texts, which may speak of other
/// agencies' data.
pub(super) fn reads(ex: &Exchange, v: &Viewer, q: &Params) -> Result<Page, Refusal> {
    let records = statements(ex, since(q))?;
    let prefix = format!("{}.", v.agency);
    let mut page = Page::new(format!("Reads of {} data", v.agency));
    page.html(filter_links("/steward/reads", q, "since", &PERIODS));
    let mut summary: BTreeMap<(String, String, String), Reads> = BTreeMap::new();
    let mut t = Table::new(
        "reads",
        "Statements, latest first",
        &[
            "time",
            "principal",
            "agency",
            "purpose",
            "kind",
            "decision",
            "table",
            "grant",
            "columns read",
            "rows",
        ],
    );
    for r in records.iter().rev() {
        let e = &r.entry;
        for u in e.tables.iter().filter(|u| u.table.starts_with(&prefix)) {
            t.row(vec![
                shown_time(r).into(),
                e.principal.clone().into(),
                e.agency.clone().unwrap_or_default().into(),
                e.purpose.clone().unwrap_or_default().into(),
                e.kind.as_str().into(),
                e.decision.as_str().into(),
                u.table.clone().into(),
                u.grant.clone().into(),
                u.columns.join(", ").into(),
                e.rows.map(|n| n.to_string()).unwrap_or_default().into(),
            ]);
            if e.decision == Decision::Allowed {
                let s = summary
                    .entry((
                        u.table.clone(),
                        e.principal.clone(),
                        e.purpose.clone().unwrap_or_default(),
                    ))
                    .or_default();
                s.statements += 1;
                s.rows += e.rows.unwrap_or(0);
                s.columns.extend(u.columns.iter().cloned());
            }
        }
    }
    let mut s = Table::new(
        "summary",
        "Who read what (statements that ran)",
        &[
            "table",
            "principal",
            "purpose",
            "statements",
            "rows returned",
            "columns read",
        ],
    );
    for ((table, who, why), reads) in summary {
        s.row(vec![
            table.into(),
            who.into(),
            why.into(),
            reads.statements.to_string().into(),
            reads.rows.to_string().into(),
            reads
                .columns
                .into_iter()
                .collect::<Vec<_>>()
                .join(", ")
                .into(),
        ]);
    }
    page.table(s);
    page.table(t);
    Ok(page)
}
