//! Classification levels at the export guard: an export leaves the exchange, so what it
//! reads must be allowed to leave its agency (../shared/spec/masking.md, "Classification
//! levels"; the same rules `policy check` applies to grants, engine/levels.rs):
//!
//! - a `core` column read anywhere by the export (output, WHERE, JOIN, row filter) refuses
//!   it: core data never leaves its agency, not even aggregated;
//! - an `important` column read by the export refuses it unless the result is aggregated
//!   under a policy threshold of at least 5 distinct entities of that column's table.
//!
//! Decided on the raw columns the plan reads (its lineage, [`TableUse`]), so no rewriting
//! of the query (a cast, a subquery, a join) hides a column from the rule.

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::LogicalPlan;

use crate::audit::{AuditEvents, TableUse};
use crate::catalog::{Catalog, ColumnDef, Level};
use crate::policy::Recipient;

/// Whether the plan reads the audit log (`audit.events`): a table of the exchange's own,
/// outside the catalog, whose records quote statements, identifiers in them included.
pub(super) fn reads_audit_log(plan: &LogicalPlan) -> bool {
    let mut found = false;
    // Subqueries included: a scalar subquery over the log reads it as much as a FROM.
    let walked = plan.apply_with_subqueries(|p| {
        if let LogicalPlan::TableScan(scan) = p
            && source_as_provider(&scan.source)
                .ok()
                .is_some_and(|t| t.downcast_ref::<AuditEvents>().is_some())
        {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    // A plan that cannot be walked is taken to read it (fail closed).
    found || walked.is_err()
}

/// Smallest group an export of important data may hold.
const IMPORTANT_MIN_GROUP: u64 = 5;

/// The smallest threshold (`<table> >= <k> distinct entities`) applied to `table`, if any.
fn threshold_of(thresholds: &[String], table: &str) -> Option<u64> {
    thresholds
        .iter()
        .filter_map(|t| {
            let (on, rest) = t.split_once(" >= ")?;
            (on == table)
                .then(|| rest.split_whitespace().next()?.parse::<u64>().ok())
                .flatten()
        })
        .min()
}

/// Every raw column an export reads, as `agency.table.column`, with its definition. A
/// column the catalog does not define cannot be classified: an error naming it, so that
/// the rules below never pass over it (fail closed).
fn columns_read<'a>(
    tables: &'a [TableUse],
    catalog: &'a Catalog,
) -> Result<Vec<(String, &'a str, &'a ColumnDef)>, String> {
    let mut out = Vec::new();
    for t in tables {
        let d = t
            .table
            .split_once('.')
            .and_then(|(agency, name)| catalog.dataset(agency, name));
        for c in &t.columns {
            let Some(def) = d.and_then(|d| d.column(c)) else {
                return Err(format!(
                    "the export reads {}.{c}, which the catalog does not define, so its level cannot be told",
                    t.table
                ));
            };
            out.push((format!("{}.{c}", t.table), t.table.as_str(), def));
        }
    }
    Ok(out)
}

/// Why the levels of what an export reads refuse it, if they do.
pub(super) fn refusal(
    tables: &[TableUse],
    thresholds: &[String],
    catalog: &Catalog,
) -> Option<String> {
    let read = match columns_read(tables, catalog) {
        Ok(read) => read,
        Err(why) => return Some(why),
    };
    let mut core = Vec::new();
    let mut important = Vec::new();
    for (name, table, def) in read {
        match def.level {
            Some(Level::Core) => core.push(name),
            Some(Level::Important)
                if threshold_of(thresholds, table).is_none_or(|k| k < IMPORTANT_MIN_GROUP) =>
            {
                important.push(name)
            }
            _ => {}
        }
    }
    if !core.is_empty() {
        return Some(format!(
            "the export reads core data ({}): core data never leaves its agency, not even aggregated",
            core.join(", ")
        ));
    }
    if !important.is_empty() {
        return Some(format!(
            "the export reads important data ({}): it leaves its agency only aggregated, in groups of at least {IMPORTANT_MIN_GROUP} entities under the grant's min_group",
            important.join(", ")
        ));
    }
    None
}

/// What an export to a recipient outside the mainland may carry: no important data (core
/// never leaves at all, [`refusal`]); personal information (a column tagged `pii`, or of
/// level general-4 or general-3, read anywhere) only when the recipient declares a legal
/// basis and a security-assessment or standard-contract reference. Ok: the transfer as
/// the manifest and the audit record state it.
pub(super) fn abroad(
    tables: &[TableUse],
    catalog: &Catalog,
    recipient: &Recipient,
) -> Result<String, String> {
    let mut important = Vec::new();
    let mut personal = Vec::new();
    for (name, _, def) in columns_read(tables, catalog)? {
        if def.level == Some(Level::Important) {
            important.push(name.clone());
        }
        if def.pii.is_some() || matches!(def.level, Some(Level::General4 | Level::General3)) {
            personal.push(name);
        }
    }
    let to = format!(
        "recipient {} in {}, outside the mainland",
        recipient.name, recipient.jurisdiction
    );
    if !important.is_empty() {
        return Err(format!(
            "the export reads important data ({}) for {to}: important data does not leave the mainland",
            important.join(", ")
        ));
    }
    if personal.is_empty() {
        return Ok(format!(
            "cross-border to {}: no personal information",
            recipient.jurisdiction
        ));
    }
    match (&recipient.legal_basis, recipient.transfer_basis()) {
        (Some(basis), Some(transfer)) => Ok(format!(
            "cross-border to {}: personal information ({}) under legal basis '{basis}', {transfer}",
            recipient.jurisdiction,
            personal.join(", ")
        )),
        _ => Err(format!(
            "the export reads personal information ({}) for {to}: it leaves only when the recipient declares a legal basis and a security assessment or standard contract (policies/recipients.toml)",
            personal.join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::threshold_of;

    #[test]
    fn thresholds_are_read_per_table() {
        let t = vec![
            "police.residents >= 5 distinct entities".to_string(),
            "health.visits >= 10 distinct entities".to_string(),
        ];
        assert_eq!(threshold_of(&t, "police.residents"), Some(5));
        assert_eq!(threshold_of(&t, "health.visits"), Some(10));
        assert_eq!(threshold_of(&t, "hrss.employment"), None);
    }
}
