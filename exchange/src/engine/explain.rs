//! The governed EXPLAIN: the plan as written, then what each grant does.

use datafusion::logical_expr::LogicalPlan;

use crate::enforcement::PrincipalSession;

/// The governed EXPLAIN: the plan as the principal wrote it against their visible tables,
/// then what each grant does. Raw statistics, keys and other agencies' row filters never
/// appear: the enforced plan itself is not shown.
pub(super) fn render_explain(
    session: &PrincipalSession,
    plan: &LogicalPlan,
    scans: &[crate::audit::TableUse],
    thresholds: &[(String, u32)],
    verbose: bool,
) -> String {
    let mut out = format!(
        "Query plan for {} ({}), purpose {}\n",
        session.principal.name, session.principal.agency, session.purpose
    );
    out.push_str(&plan.display_indent().to_string());
    out.push_str("\n\nPolicies applied:\n");
    let mut seen = Vec::new();
    for scan in scans {
        if seen.contains(&scan.table) {
            continue;
        }
        seen.push(scan.table.clone());
        let Some(spec) = session.tables.get(&scan.table) else {
            continue;
        };
        out.push_str(&format!("  {}  grant {}\n", scan.table, scan.grant));
        match &spec.access.row_filter {
            None => out.push_str("    rows: all\n"),
            Some(f) if spec.access.owner => out.push_str(&format!("    rows: {}\n", f.sql)),
            Some(_) => out.push_str(&format!(
                "    rows: filtered by a row filter of {} (not shown)\n",
                spec.dataset.agency
            )),
        }
        if let Some(register) = &spec.objections {
            out.push_str(&format!(
                "    rows about residents who object to {} are excluded at source ({register})\n",
                session.purpose
            ));
        }
        if spec.access.privacy.is_some() {
            out.push_str(
                "    rows leave only through differentially private aggregates, the table on its own (no join before them), one per statement; the mechanism is below\n",
            );
        } else if let Some(k) = spec.access.min_group {
            out.push_str(&format!(
                "    rows leave only aggregated, in groups of at least {k} entities; each row counts once, in one group, in one aggregate of the statement (docs/aggregates.md)\n"
            ));
        }
        for (c, field) in spec.access.columns.iter().zip(spec.visible_schema.fields()) {
            if verbose {
                out.push_str(&format!(
                    "    {}: {} as {}\n",
                    c.name,
                    field.data_type(),
                    c.treatment
                ));
            } else {
                out.push_str(&format!("    {}: {}\n", c.name, c.treatment));
            }
        }
    }
    for (column, k) in thresholds {
        out.push_str(&format!(
            "  groups with fewer than {k} distinct entities behind {column} are suppressed\n"
        ));
    }
    out
}
