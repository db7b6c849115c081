//! What `exchange policy check` requires of grants on a register of objections: outside
//! its agency, the register is visible only to auditors, and only as counts. No approval
//! reference lifts this: who objects to what is never shared.

use crate::catalog::Catalog;
use crate::enforcement::AUDITOR_ROLE;
use crate::policy::{PolicySet, Treatment};

use super::check::CheckReport;

/// Errors for grants that give a register of objections beyond its agency and auditors'
/// counts.
pub(super) fn check_registers(catalog: &Catalog, policies: &PolicySet, report: &mut CheckReport) {
    uncovered_columns(catalog, report);
    for g in policies.grants() {
        let Some(register) = catalog.register_of(&g.agency) else {
            continue;
        };
        if register.dataset.name != g.table || g.to.agency.as_deref() == Some(g.agency.as_str()) {
            continue;
        }
        let mut broken = Vec::new();
        if g.to.role.as_deref() != Some(AUDITOR_ROLE) {
            broken.push(format!("it is not limited to the {AUDITOR_ROLE} role"));
        }
        if g.min_group.is_none() {
            broken.push("it does not set min_group (rows leave only as counts)".to_string());
        }
        for r in &g.columns {
            if r.source == register.key.name
                && !matches!(r.treatment, Treatment::AggregateOnly { .. })
            {
                broken.push(format!(
                    "it gives the register's key column {} as {}",
                    r.source, r.treatment
                ));
            }
        }
        if !broken.is_empty() {
            report.error(
                Some(g.pos.clone()),
                format!(
                    "grant '{}' gives the register of objections {} to {}: outside its agency a register is visible only to auditors, as counts; {}",
                    g.id,
                    register.dataset.qualified_name(),
                    g.to,
                    broken.join("; ")
                ),
            );
        }
    }
}

/// Errors for columns of an agency's tables that hold what its register's key holds (the
/// same kind of personal information) outside the register's domain: the register cannot
/// match them, so residents who object would stay in those rows.
fn uncovered_columns(catalog: &Catalog, report: &mut CheckReport) {
    for d in catalog.datasets() {
        let Some(register) = catalog.register_of(&d.agency) else {
            continue;
        };
        let Some(pii) = register.key.pii else {
            continue;
        };
        if d.objections {
            continue;
        }
        for c in &d.columns {
            if c.pii == Some(pii) && c.domain.as_deref() != Some(register.domain()) {
                report.error(
                    Some(c.pos.clone()),
                    format!(
                        "{}.{} holds what the register of objections {} names residents by, outside its domain '{}': declare `domain = \"{}\"` on it, or objecting residents stay in its rows",
                        d.qualified_name(),
                        c.name,
                        register.dataset.qualified_name(),
                        register.domain(),
                        register.domain()
                    ),
                );
            }
        }
    }
}
