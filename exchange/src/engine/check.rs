//! `exchange policy check`: validate schemas, policies and data, with warnings.
//! It plans every row filter as the enforcement would, so it lives beside the engine,
//! above both the policy model and the enforcement.

use std::fmt;

use datafusion::common::{DFSchema, TableReference};
use datafusion::execution::SessionStateBuilder;

use crate::catalog::{Catalog, CatalogError, SourcePos};
use crate::config::ExchangeConfig;
use crate::enforcement::{locked_config, plan_row_filter};
use crate::policy::{PolicySet, Treatment};

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The exchange cannot run as configured.
    Error,
    /// Probably a mistake; the exchange runs.
    Warning,
}

/// One finding of the checker.
#[derive(Debug, Clone)]
pub struct Finding {
    /// Error or warning.
    pub severity: Severity,
    /// Where, when known.
    pub pos: Option<SourcePos>,
    /// What.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match &self.pos {
            Some(p) => write!(f, "{p}: {sev}: {}", self.message),
            None => write!(f, "{sev}: {}", self.message),
        }
    }
}

/// Everything the checker found.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// Findings, errors first.
    pub findings: Vec<Finding>,
    /// Counts of what was loaded: (tables, principals, purposes, grants).
    pub counts: (usize, usize, usize, usize),
}

impl CheckReport {
    /// Whether any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }

    pub(super) fn error(&mut self, pos: Option<SourcePos>, message: String) {
        self.findings.push(Finding {
            severity: Severity::Error,
            pos,
            message,
        });
    }

    pub(super) fn warn(&mut self, pos: Option<SourcePos>, message: String) {
        self.findings.push(Finding {
            severity: Severity::Warning,
            pos,
            message,
        });
    }
}

/// Check the configuration and data of an exchange.
pub fn check(config: &ExchangeConfig) -> CheckReport {
    let mut report = CheckReport::default();
    let catalog = match Catalog::load(&config.schemas_dir()) {
        Ok(c) => c,
        Err(e) => {
            report.error(None, e.to_string());
            return report;
        }
    };
    let stores = crate::catalog::Stores::new(config.stores.clone());
    // At a hub, the agencies its nodes serve keep their files at home: their nodes check
    // them (`exchange policy check` there).
    let served = &config.federation.nodes;
    for e in catalog.check_data_in(&config.data_root, &stores) {
        if let CatalogError::Data { table, .. } = &e
            && table
                .split_once('.')
                .is_some_and(|(agency, _)| served.contains_key(agency))
        {
            continue;
        }
        report.error(None, e.to_string());
    }
    let policies = match PolicySet::load(&config.policies_dir(), &catalog) {
        Ok(p) => p,
        Err(e) => {
            report.error(None, e.to_string());
            return report;
        }
    };
    let definitions = check_definitions(&catalog, &policies);
    report.counts = definitions.counts;
    report.findings.extend(definitions.findings);
    report
        .findings
        .sort_by_key(|f| f.severity != Severity::Error);
    report
}

/// The checks of schemas and policies alone, without the data files: what a running
/// exchange requires of a new version before a reload applies it.
pub(crate) fn check_definitions(catalog: &Catalog, policies: &PolicySet) -> CheckReport {
    let mut report = CheckReport {
        counts: (
            catalog.datasets().len(),
            policies.principals().len(),
            policies.purposes().len(),
            policies.grants().len(),
        ),
        ..CheckReport::default()
    };
    check_row_filters(catalog, policies, &mut report);
    check_shadowing(policies, &mut report);
    check_pii(catalog, policies, &mut report);
    check_linkage(catalog, policies, &mut report);
    super::levels::check_levels(catalog, policies, &mut report);
    super::registers::check_registers(catalog, policies, &mut report);
    report
        .findings
        .sort_by_key(|f| f.severity != Severity::Error);
    report
}

fn check_row_filters(catalog: &Catalog, policies: &PolicySet, report: &mut CheckReport) {
    let state = SessionStateBuilder::new()
        .with_config(locked_config())
        .with_default_features()
        .build();
    for g in policies.grants() {
        let Some(filter) = &g.row_filter else {
            continue;
        };
        let Some(dataset) = catalog.dataset(&g.agency, &g.table) else {
            continue;
        };
        let Ok(schema) = DFSchema::try_from_qualified_schema(
            TableReference::partial(dataset.agency.clone(), dataset.name.clone()),
            &dataset.arrow_schema(),
        ) else {
            continue;
        };
        let matching: Vec<_> = policies
            .principals()
            .iter()
            .filter(|p| g.to.matches(p))
            .collect();
        if matching.is_empty() {
            report.warn(
                Some(g.pos.clone()),
                format!("grant '{}' matches no principal", g.id),
            );
        }
        for p in matching {
            if let Err(e) = plan_row_filter(&state, &filter.sql, p, &schema) {
                report.error(
                    Some(filter.pos.clone()),
                    format!(
                        "grant '{}': row filter cannot be applied for principal {}: {}; queries of that table will be refused",
                        g.id,
                        p.name,
                        crate::enforcement::find_violation(&e)
                            .map(|v| v.message().to_string())
                            .unwrap_or_else(|| e.strip_backtrace())
                    ),
                );
            }
        }
    }
}

fn check_shadowing(policies: &PolicySet, report: &mut CheckReport) {
    let grants = policies.grants();
    for (i, later) in grants.iter().enumerate() {
        for earlier in &grants[..i] {
            if earlier.agency != later.agency || earlier.table != later.table {
                continue;
            }
            let selector_covered = later.to.covered_by(&earlier.to);
            let purposes_covered = later.purposes.iter().all(|p| earlier.purposes.contains(p));
            let lasts_longer = match (earlier.expires, later.expires) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(a), Some(b)) => a >= b,
            };
            if selector_covered && purposes_covered && lasts_longer {
                report.warn(
                    Some(later.pos.clone()),
                    format!(
                        "grant '{}' is shadowed by grant '{}' at {} (the first matching grant wins) and never applies",
                        later.id, earlier.id, earlier.pos
                    ),
                );
                break;
            }
        }
    }
}

fn check_pii(catalog: &Catalog, policies: &PolicySet, report: &mut CheckReport) {
    for d in catalog.datasets() {
        // Exports are k-anonymous over the declared quasi-identifiers only: a column that
        // carries one (an address names its district) lets an export select by it unseen.
        if d.export_k.is_some() {
            for c in d.columns.iter().filter(|c| {
                !c.quasi_identifier
                    && matches!(
                        c.pii,
                        Some(crate::catalog::PiiType::Address | crate::catalog::PiiType::BirthDate)
                    )
            }) {
                report.warn(
                    Some(c.pos.clone()),
                    format!(
                        "{}.{} carries a quasi-identifier ({:?}) but is not marked quasi_identifier: exports of {} are k-anonymous over the declared ones only",
                        d.qualified_name(),
                        c.name,
                        c.pii.unwrap_or(crate::catalog::PiiType::Address),
                        d.qualified_name()
                    ),
                );
            }
        }
        let grants: Vec<_> = policies
            .grants()
            .iter()
            .filter(|g| g.agency == d.agency && g.table == d.name)
            .collect();
        for c in d.columns.iter().filter(|c| c.pii.is_some()) {
            let rules: Vec<_> = grants
                .iter()
                .flat_map(|g| {
                    g.columns
                        .iter()
                        .filter(|r| r.source == c.name)
                        .map(move |r| (g, r))
                })
                .collect();
            let suppressed = grants.iter().any(|g| g.suppressed.contains(&c.name));
            if rules.is_empty() && !suppressed {
                report.warn(
                    Some(c.pos.clone()),
                    format!(
                        "{}.{} is tagged {:?} but no grant has a rule for it: it is invisible outside {} (default deny)",
                        d.qualified_name(),
                        c.name,
                        c.pii.unwrap_or(crate::catalog::PiiType::Name),
                        d.agency
                    ),
                );
            }
            for (g, r) in rules {
                let outside = g.to.agency.as_deref() != Some(d.agency.as_str());
                let public = c.level == Some(crate::catalog::Level::General1);
                if outside && !public && r.treatment == Treatment::Plain {
                    report.warn(
                        Some(r.pos.clone()),
                        format!(
                            "grant '{}' exposes PII column {}.{} plain to {}",
                            g.id,
                            d.qualified_name(),
                            c.name,
                            g.to
                        ),
                    );
                }
            }
        }
    }
}

/// Warn where a principal holds identifiers of a domain plain and receives another
/// agency's tokens of the same domain: a join links those rows to identities it holds.
fn check_linkage(catalog: &Catalog, policies: &PolicySet, report: &mut CheckReport) {
    let today = chrono::Utc::now().date_naive();
    for p in policies.principals() {
        for purpose in &p.purposes {
            let mut plain: Vec<(String, String)> = Vec::new();
            let mut tokens: Vec<(String, String, String, Option<String>)> = Vec::new();
            for d in catalog.datasets() {
                let Ok(access) = policies.resolve(d, p, purpose, today) else {
                    continue;
                };
                // Under differential privacy no person's token leaves: nothing to link.
                if access.privacy.is_some() {
                    continue;
                }
                for rule in &access.columns {
                    let domain = rule
                        .domain
                        .clone()
                        .or_else(|| d.column(&rule.source).and_then(|c| c.domain.clone()));
                    let Some(domain) = domain else { continue };
                    let at = format!("{}.{}", d.qualified_name(), rule.name);
                    match &rule.treatment {
                        Treatment::Plain => plain.push((domain, at)),
                        Treatment::Pseudonym { .. } | Treatment::JoinKey { .. }
                            if d.agency != p.agency =>
                        {
                            // A register of objections covering the table: the rows it
                            // excludes are missing from the join, next to identities held.
                            let register = catalog
                                .register_of(&d.agency)
                                .filter(|r| !r.subject_columns(d).is_empty())
                                .map(|r| r.dataset.qualified_name());
                            tokens.push((domain, at, rule.treatment.to_string(), register))
                        }
                        _ => {}
                    }
                }
            }
            for (domain, at, treatment, register) in &tokens {
                if let Some((_, held)) = plain.iter().find(|(d, _)| d == domain) {
                    let objections = register.as_ref().map_or(String::new(), |r| {
                        format!(
                            "; and the identities missing from the join are the residents who object to {purpose} ({r}): their objections are known to {}",
                            p.name
                        )
                    });
                    report.warn(
                        Some(p.pos.clone()),
                        format!(
                            "principal {} (purpose {purpose}) holds {held} plain and receives {at} as {treatment}: joined on domain {domain}, that agency's rows are linked to identities {} already holds{objections}",
                            p.name, p.name
                        ),
                    );
                }
            }
        }
    }
}
