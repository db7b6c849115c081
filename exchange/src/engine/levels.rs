//! Classification levels with effect in `exchange policy check` (Data Security Law,
//! GB/T 43697-2024; ../shared/spec/masking.md "Classification levels"). What a grant gives
//! to anyone outside the owning agency must respect the level of each column it reads:
//!
//! | level | may leave its agency |
//! |---|---|
//! | core | never |
//! | important | only aggregated: the grant sets `min_group` of at least 5 |
//! | general-4 (sensitive PI) | not plain, unless aggregated (`min_group` of at least 5) |
//! | general-3 (identifying PI) | masked, pseudonymised, as a join key, or aggregated; not plain |
//! | general-2, general-1 | as granted |
//!
//! A grant that breaks a rule is an error unless it carries an `approval` reference: then
//! a warning names it, and every audit record of a statement under the grant carries it.

use crate::catalog::{Catalog, Level};
use crate::policy::{PolicySet, Treatment};

use super::check::CheckReport;

/// Smallest group size that counts as aggregated for the level rules.
pub(crate) const LEVEL_MIN_GROUP: u32 = 5;

/// The rule a column rule of a grant to another agency breaks, if any.
fn broken(level: Level, treatment: &Treatment, min_group: Option<u32>) -> Option<&'static str> {
    let aggregated = min_group.is_some_and(|k| k >= LEVEL_MIN_GROUP);
    match level {
        Level::Core => Some("core data never leaves its agency"),
        Level::Important if !aggregated => Some(
            "important data leaves its agency only aggregated, in groups of at least 5 (min_group >= 5)",
        ),
        Level::General4 if *treatment == Treatment::Plain && !aggregated => Some(
            "sensitive personal information (general-4) leaves its agency only masked, tokenised or aggregated",
        ),
        Level::General3 if *treatment == Treatment::Plain && !aggregated => Some(
            "identifying personal information (general-3) leaves its agency only masked, pseudonymised, as a join key or aggregated",
        ),
        _ => None,
    }
}

/// Errors (warnings under an approval) for grants that break the level rules.
pub(super) fn check_levels(catalog: &Catalog, policies: &PolicySet, report: &mut CheckReport) {
    for g in policies.grants() {
        let Some(d) = catalog.dataset(&g.agency, &g.table) else {
            continue;
        };
        // Within the owning agency, levels do not restrict.
        if g.to.agency.as_deref() == Some(d.agency.as_str()) {
            continue;
        }
        for r in &g.columns {
            let Some(level) = d.column(&r.source).and_then(|c| c.level) else {
                continue;
            };
            let Some(rule) = broken(level, &r.treatment, g.min_group) else {
                continue;
            };
            let what = format!(
                "grant '{}' gives {}.{} ({}) as {} to {}",
                g.id,
                d.qualified_name(),
                r.source,
                level.as_str(),
                r.treatment,
                g.to
            );
            match &g.approval {
                Some(a) => report.warn(
                    Some(r.pos.clone()),
                    format!("{what}: {rule}; allowed by approval {a}, recorded with every statement under the grant"),
                ),
                None => report.error(
                    Some(r.pos.clone()),
                    format!("{what}: {rule} (a reviewed exception carries `approval = \"<reference>\"` on the grant)"),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_level_has_its_rule() {
        let plain = Treatment::Plain;
        let token = Treatment::JoinKey { domain: None };
        assert!(broken(Level::Core, &token, Some(100)).is_some());
        assert!(broken(Level::Important, &token, None).is_some());
        assert!(broken(Level::Important, &plain, Some(4)).is_some());
        assert!(broken(Level::Important, &plain, Some(5)).is_none());
        assert!(broken(Level::General4, &plain, None).is_some());
        assert!(broken(Level::General4, &token, None).is_none());
        assert!(broken(Level::General4, &plain, Some(5)).is_none());
        assert!(broken(Level::General3, &plain, None).is_some());
        assert!(broken(Level::General3, &token, None).is_none());
        assert!(broken(Level::General2, &plain, None).is_none());
        assert!(broken(Level::General1, &plain, None).is_none());
    }
}
