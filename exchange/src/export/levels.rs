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

use crate::audit::TableUse;
use crate::catalog::{Catalog, Level};

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

/// Why the levels of what an export reads refuse it, if they do.
pub(super) fn refusal(
    tables: &[TableUse],
    thresholds: &[String],
    catalog: &Catalog,
) -> Option<String> {
    let mut core = Vec::new();
    let mut important = Vec::new();
    for t in tables {
        let Some(d) = t
            .table
            .split_once('.')
            .and_then(|(agency, name)| catalog.dataset(agency, name))
        else {
            continue;
        };
        for c in &t.columns {
            match d.column(c).and_then(|c| c.level) {
                Some(Level::Core) => core.push(format!("{}.{c}", t.table)),
                Some(Level::Important)
                    if threshold_of(thresholds, &t.table)
                        .is_none_or(|k| k < IMPORTANT_MIN_GROUP) =>
                {
                    important.push(format!("{}.{c}", t.table))
                }
                _ => {}
            }
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
