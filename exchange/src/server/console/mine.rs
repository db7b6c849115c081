//! Every viewer's own pages: home, their history, and what they may see.

use super::html::{Table, esc};
use super::{
    PERIODS, Page, Params, Refusal, Viewer, clip, filter_links, shown_time, since, statements,
};
use crate::engine::Exchange;

/// Who the viewer is and where to go.
pub(super) fn home(ex: &Exchange, v: &Viewer) -> Page {
    let mut page = Page::new("Welcome");
    let purpose = ex
        .governance()
        .policies
        .purpose(&v.purpose)
        .map(|p| format!(" ({})", p.legal_basis))
        .unwrap_or_default();
    page.html(format!(
        "<div class=\"card\"><p>You are <strong id=\"principal\">{}</strong> of {}, roles {}, here for <strong>{}</strong>{}.</p></div>",
        esc(&v.principal),
        esc(&v.agency),
        esc(&v.roles.join(", ")),
        esc(&v.purpose),
        esc(&purpose),
    ));
    let mut links = String::from("<ul>");
    if v.is("auditor") {
        links.push_str("<li><a href=\"/audit/activity\">Activity over time</a>, <a href=\"/audit/refusals\">refusals</a>, <a href=\"/audit/access\">access per table and column</a>, <a href=\"/audit/exports\">exports</a>, <a href=\"/audit/statements\">every statement</a>, <a href=\"/audit/log\">the integrity of the log</a></li>");
    }
    if v.is("steward") {
        links.push_str("<li><a href=\"/steward/grants\">Who may see our tables, in which form, for what, until when</a> and <a href=\"/steward/reads\">what was read of our data</a></li>");
    }
    links.push_str("<li><a href=\"/me/history\">My history</a> and <a href=\"/me/access\">what I may see</a></li></ul>");
    page.html(links);
    page
}

/// The viewer's own statements.
pub(super) fn history(ex: &Exchange, v: &Viewer, q: &Params) -> Result<Page, Refusal> {
    let records = statements(ex, since(q)).map_err(|_| {
        // An analyst is not told where the log lives or what is wrong with it.
        Refusal::Failed("the history cannot be read now".into())
    })?;
    let mut page = Page::new("My history");
    page.html(filter_links("/me/history", q, "since", &PERIODS));
    let limit = 1000;
    let mut t = Table::new(
        "history",
        format!("My statements, latest first (at most {limit})"),
        &[
            "time",
            "purpose",
            "kind",
            "decision",
            "reason",
            "rows",
            "statement",
        ],
    );
    for r in records
        .iter()
        .rev()
        .filter(|r| r.entry.principal == v.principal)
        .take(limit)
    {
        let e = &r.entry;
        t.row(vec![
            shown_time(r).into(),
            e.purpose.clone().unwrap_or_default().into(),
            e.kind.as_str().into(),
            e.decision.as_str().into(),
            e.reason.clone().unwrap_or_default().into(),
            e.rows.map(|n| n.to_string()).unwrap_or_default().into(),
            clip(&e.statement, 300).into(),
        ]);
    }
    page.table(t);
    Ok(page)
}

/// The tables and columns the viewer may see, in which form, for each of their purposes:
/// the grants as the policy resolves them today. Row filters of other agencies are
/// named, not shown.
pub(super) fn access(ex: &Exchange, v: &Viewer) -> Page {
    let mut page = Page::new("What I may see");
    let today = chrono::Utc::now().date_naive();
    let gov = ex.governance();
    let policies = &gov.policies;
    let Some(p) = policies.principal(&v.principal) else {
        return page;
    };
    let mut t = Table::new(
        "access",
        "Tables and columns",
        &[
            "purpose",
            "table",
            "grant",
            "until",
            "rows",
            "aggregate only",
            "column",
            "form",
        ],
    );
    t.empty = "no table is granted to you";
    for purpose in &p.purposes {
        for d in gov.catalog.datasets() {
            let Ok(a) = policies.resolve(d, p, purpose, today) else {
                continue;
            };
            let until = policies
                .grants()
                .iter()
                .find(|g| format!("{}/{}@{}", g.agency, g.id, g.version) == a.grant_ref)
                .and_then(|g| g.expires)
                .map(|d| d.to_string())
                .unwrap_or_else(|| "no end".into());
            let rows = match &a.row_filter {
                None => "all".to_string(),
                Some(f) if a.owner => f.sql.clone(),
                Some(_) => "filtered by the owner's row filter".to_string(),
            };
            let agg = a
                .min_group
                .map(|k| format!("groups of at least {k}"))
                .unwrap_or_else(|| "no".into());
            for c in &a.columns {
                t.row(vec![
                    purpose.clone().into(),
                    d.qualified_name().into(),
                    a.grant_ref.clone().into(),
                    until.clone().into(),
                    rows.clone().into(),
                    agg.clone().into(),
                    c.name.clone().into(),
                    c.treatment.to_string().into(),
                ]);
            }
        }
    }
    page.table(t);
    page
}
