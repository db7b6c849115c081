//! `exchange policy diff OLD NEW`: what a policy change does, per principal, purpose, table
//! and column, before it lands. Both sides are resolved exactly as the exchange resolves a
//! statement ([`PolicySet::resolve`]) on the same day, so the diff is what analysts would
//! see change, not a diff of the files.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use chrono::NaiveDate;

use super::{Access, PolicySet, Treatment};
use crate::catalog::{Catalog, Dataset};

/// How a change moves exposure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exposure {
    /// A column of personal information is newly seen plain.
    PlainPii,
    /// A principal newly holds identities plain and receives another agency's tokens of
    /// the same identity domain: a join links that agency's rows to people.
    Linkage,
    /// More is visible than before (a table, a column, a purpose, a longer grant, a looser
    /// treatment, row filter or group size).
    Wider,
    /// Something else changed (a grant's version, a treatment of no clear order).
    Changed,
    /// Less is visible than before.
    Narrower,
}

impl Exposure {
    fn label(self) -> &'static str {
        match self {
            Exposure::PlainPii => "PLAIN PII",
            Exposure::Linkage => "LINKAGE",
            Exposure::Wider => "wider",
            Exposure::Changed => "changed",
            Exposure::Narrower => "narrower",
        }
    }

    fn sign(self) -> char {
        match self {
            Exposure::PlainPii | Exposure::Linkage => '!',
            Exposure::Wider => '+',
            Exposure::Changed => '~',
            Exposure::Narrower => '-',
        }
    }
}

/// One difference.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    /// How it moves exposure (the sort key: flagged changes first).
    pub exposure: Exposure,
    /// The principal.
    pub principal: String,
    /// The purpose it applies to (empty for changes to the principal itself).
    pub purpose: String,
    /// `agency.table`, or empty.
    pub table: String,
    /// What changed: a visible column, or `table`, `rows`, `groups`, `until`, `grant`,
    /// `purposes`, `principal`.
    pub what: String,
    /// Before (empty: nothing).
    pub before: String,
    /// After (empty: nothing).
    pub after: String,
}

/// The differences between two policy versions.
#[derive(Debug, Clone, Default)]
pub struct PolicyDiff {
    /// Every change, flagged ones first.
    pub changes: Vec<Change>,
}

/// A policy version: its catalog and policies.
pub type Version<'a> = (&'a Catalog, &'a PolicySet);

fn expiry(p: &PolicySet, access: &Access) -> String {
    p.grants()
        .iter()
        .find(|g| format!("{}/{}@{}", g.agency, g.id, g.version) == access.grant_ref)
        .and_then(|g| g.expires)
        .map(|d| d.to_string())
        .unwrap_or_else(|| "no end".into())
}

/// A rough order of treatments by what they reveal; two of the same rank (one mask for
/// another) are not ordered.
fn openness(t: &Treatment) -> u8 {
    match t {
        Treatment::Plain => 5,
        Treatment::Mask { .. } | Treatment::Replace { .. } => 3,
        Treatment::Pseudonym { .. } => 2,
        Treatment::JoinKey { .. } => 1,
        Treatment::AggregateOnly { .. } => 0,
    }
}

/// A principal's identity domains for a purpose: where each is held plain (the first
/// place), and every place another agency's tokens of it are received.
fn identity_domains(
    version: Version<'_>,
    principal: &str,
    purpose: &str,
    today: NaiveDate,
) -> (BTreeMap<String, String>, Vec<(String, String)>) {
    let (catalog, policies) = version;
    let mut plain = BTreeMap::new();
    let mut tokens = Vec::new();
    let Some(p) = policies.principal(principal) else {
        return (plain, tokens);
    };
    for d in catalog.datasets() {
        let Ok(a) = policies.resolve(d, p, purpose, today) else {
            continue;
        };
        for rule in &a.columns {
            let domain = rule
                .domain
                .clone()
                .or_else(|| d.column(&rule.source).and_then(|c| c.domain.clone()));
            let Some(domain) = domain else { continue };
            let at = format!("{}.{}", d.qualified_name(), rule.name);
            match &rule.treatment {
                Treatment::Plain => {
                    plain.entry(domain).or_insert(at);
                }
                Treatment::Pseudonym { .. } | Treatment::JoinKey { .. } if d.agency != p.agency => {
                    tokens.push((domain, at));
                }
                _ => {}
            }
        }
    }
    (plain, tokens)
}

/// The linkages of a principal for a purpose: (domain, held plain at, tokens from).
fn linkages(
    version: Version<'_>,
    principal: &str,
    purpose: &str,
    today: NaiveDate,
) -> BTreeSet<(String, String, String)> {
    let (plain, tokens) = identity_domains(version, principal, purpose, today);
    tokens
        .into_iter()
        .filter_map(|(domain, at)| plain.get(&domain).map(|held| (domain, held.clone(), at)))
        .collect()
}

fn table_changes(
    out: &mut Vec<Change>,
    base: &Change,
    d: &Dataset,
    old: Option<(&PolicySet, Access)>,
    new: Option<(&PolicySet, Access)>,
) {
    let change = |exposure, what: &str, before: String, after: String| Change {
        exposure,
        what: what.to_string(),
        before,
        after,
        ..base.clone()
    };
    let pii = |source: &str| d.column(source).and_then(|c| c.pii).is_some();
    match (old, new) {
        (None, None) => {}
        (None, Some((p, a))) => {
            out.push(change(
                Exposure::Wider,
                "table",
                String::new(),
                format!("granted by {} until {}", a.grant_ref, expiry(p, &a)),
            ));
            for c in &a.columns {
                let exposure = if c.treatment == Treatment::Plain && pii(&c.source) {
                    Exposure::PlainPii
                } else {
                    Exposure::Wider
                };
                out.push(change(
                    exposure,
                    &c.name,
                    String::new(),
                    c.treatment.to_string(),
                ));
            }
        }
        (Some((_, a)), None) => {
            out.push(change(
                Exposure::Narrower,
                "table",
                format!("granted by {}", a.grant_ref),
                String::new(),
            ));
        }
        (Some((po, a)), Some((pn, b))) => {
            if a.grant_ref != b.grant_ref {
                out.push(change(
                    Exposure::Changed,
                    "grant",
                    a.grant_ref.clone(),
                    b.grant_ref.clone(),
                ));
            }
            let (ua, ub) = (expiry(po, &a), expiry(pn, &b));
            if ua != ub {
                let wider = ub == "no end" || (ua != "no end" && ub > ua);
                out.push(change(
                    if wider {
                        Exposure::Wider
                    } else {
                        Exposure::Narrower
                    },
                    "until",
                    ua,
                    ub,
                ));
            }
            let rows = |x: &Access| {
                x.row_filter
                    .as_ref()
                    .map(|f| f.sql.clone())
                    .unwrap_or_default()
            };
            if rows(&a) != rows(&b) {
                out.push(change(
                    if rows(&b).is_empty() {
                        Exposure::Wider
                    } else if rows(&a).is_empty() {
                        Exposure::Narrower
                    } else {
                        Exposure::Changed
                    },
                    "rows",
                    if rows(&a).is_empty() {
                        "all".into()
                    } else {
                        rows(&a)
                    },
                    if rows(&b).is_empty() {
                        "all".into()
                    } else {
                        rows(&b)
                    },
                ));
            }
            if a.min_group != b.min_group {
                let shown = |k: Option<u32>| {
                    k.map(|k| format!("groups of at least {k}"))
                        .unwrap_or_else(|| "rows".into())
                };
                let wider = match (a.min_group, b.min_group) {
                    (Some(_), None) => true,
                    (Some(x), Some(y)) => y < x,
                    _ => false,
                };
                out.push(change(
                    if wider {
                        Exposure::Wider
                    } else {
                        Exposure::Narrower
                    },
                    "groups",
                    shown(a.min_group),
                    shown(b.min_group),
                ));
            }
            for c in &b.columns {
                match a.columns.iter().find(|x| x.name == c.name) {
                    None => {
                        let exposure = if c.treatment == Treatment::Plain && pii(&c.source) {
                            Exposure::PlainPii
                        } else {
                            Exposure::Wider
                        };
                        out.push(change(
                            exposure,
                            &c.name,
                            String::new(),
                            c.treatment.to_string(),
                        ));
                    }
                    Some(x) if x.treatment != c.treatment || x.source != c.source => {
                        let exposure = if c.treatment == Treatment::Plain && pii(&c.source) {
                            Exposure::PlainPii
                        } else {
                            match openness(&c.treatment).cmp(&openness(&x.treatment)) {
                                std::cmp::Ordering::Greater => Exposure::Wider,
                                std::cmp::Ordering::Less => Exposure::Narrower,
                                std::cmp::Ordering::Equal => Exposure::Changed,
                            }
                        };
                        out.push(change(
                            exposure,
                            &c.name,
                            x.treatment.to_string(),
                            c.treatment.to_string(),
                        ));
                    }
                    Some(_) => {}
                }
            }
            for x in &a.columns {
                if !b.columns.iter().any(|c| c.name == x.name) {
                    out.push(change(
                        Exposure::Narrower,
                        &x.name,
                        x.treatment.to_string(),
                        String::new(),
                    ));
                }
            }
        }
    }
}

/// What changes from `old` to `new` on `today`: for every principal of either version,
/// each of their purposes, and each table of either catalog.
pub fn diff(old: Version<'_>, new: Version<'_>, today: NaiveDate) -> PolicyDiff {
    let mut out = Vec::new();
    let names: BTreeSet<&str> = old
        .1
        .principals()
        .iter()
        .chain(new.1.principals())
        .map(|p| p.name.as_str())
        .collect();
    for name in names {
        let (po, pn) = (old.1.principal(name), new.1.principal(name));
        let base = Change {
            exposure: Exposure::Changed,
            principal: name.to_string(),
            purpose: String::new(),
            table: String::new(),
            what: String::new(),
            before: String::new(),
            after: String::new(),
        };
        match (po, pn) {
            (Some(_), None) => out.push(Change {
                exposure: Exposure::Narrower,
                what: "principal".into(),
                before: "declared".into(),
                ..base.clone()
            }),
            (None, Some(_)) => out.push(Change {
                exposure: Exposure::Wider,
                what: "principal".into(),
                after: "declared".into(),
                ..base.clone()
            }),
            _ => {}
        }
        let purposes_of = |p: Option<&super::Principal>| -> BTreeSet<String> {
            p.map(|p| p.purposes.iter().cloned().collect())
                .unwrap_or_default()
        };
        let (uo, un) = (purposes_of(po), purposes_of(pn));
        if po.is_some() && pn.is_some() && uo != un {
            out.push(Change {
                exposure: if un.is_superset(&uo) {
                    Exposure::Wider
                } else if uo.is_superset(&un) {
                    Exposure::Narrower
                } else {
                    Exposure::Changed
                },
                what: "purposes".into(),
                before: uo.iter().cloned().collect::<Vec<_>>().join(", "),
                after: un.iter().cloned().collect::<Vec<_>>().join(", "),
                ..base.clone()
            });
        }
        for purpose in uo.union(&un) {
            let mut tables: BTreeMap<String, (Option<&Dataset>, Option<&Dataset>)> =
                BTreeMap::new();
            for d in old.0.datasets() {
                tables.entry(d.qualified_name()).or_default().0 = Some(d);
            }
            for d in new.0.datasets() {
                tables.entry(d.qualified_name()).or_default().1 = Some(d);
            }
            for (table, (dold, dnew)) in tables {
                // Old access only where the principal could declare the purpose then.
                let a = po
                    .filter(|_| uo.contains(purpose))
                    .zip(dold)
                    .and_then(|(p, d)| old.1.resolve(d, p, purpose, today).ok())
                    .map(|a| (old.1, a));
                let b = pn
                    .filter(|_| un.contains(purpose))
                    .zip(dnew)
                    .and_then(|(p, d)| new.1.resolve(d, p, purpose, today).ok())
                    .map(|a| (new.1, a));
                let Some(d) = dnew.or(dold) else { continue };
                let base = Change {
                    purpose: purpose.clone(),
                    table,
                    ..base.clone()
                };
                table_changes(&mut out, &base, d, a, b);
            }
            let before = if uo.contains(purpose) {
                linkages(old, name, purpose, today)
            } else {
                BTreeSet::new()
            };
            let after = if un.contains(purpose) {
                linkages(new, name, purpose, today)
            } else {
                BTreeSet::new()
            };
            for (domain, held, from) in after.difference(&before) {
                out.push(Change {
                    exposure: Exposure::Linkage,
                    purpose: purpose.clone(),
                    table: from
                        .rsplit_once('.')
                        .map(|(t, _)| t.to_string())
                        .unwrap_or_default(),
                    what: format!("identity domain {domain}"),
                    before: String::new(),
                    after: format!(
                        "holds {held} plain and receives {from} as tokens: a join links them"
                    ),
                    ..base.clone()
                });
            }
        }
    }
    out.sort();
    PolicyDiff { changes: out }
}

impl PolicyDiff {
    /// Changes that widen exposure (flagged ones included).
    pub fn widening(&self) -> usize {
        self.changes
            .iter()
            .filter(|c| c.exposure <= Exposure::Wider)
            .count()
    }

    /// Newly exposed plain personal information and new linkages.
    pub fn flagged(&self) -> usize {
        self.changes
            .iter()
            .filter(|c| c.exposure <= Exposure::Linkage)
            .count()
    }

    fn headline(&self) -> String {
        if self.changes.is_empty() {
            return "no change in what any principal may see".into();
        }
        format!(
            "{} changes: {} newly exposed plain PII, {} new linkages, {} wider, {} narrower",
            self.changes.len(),
            self.changes
                .iter()
                .filter(|c| c.exposure == Exposure::PlainPii)
                .count(),
            self.changes
                .iter()
                .filter(|c| c.exposure == Exposure::Linkage)
                .count(),
            self.changes
                .iter()
                .filter(|c| c.exposure == Exposure::Wider)
                .count(),
            self.changes
                .iter()
                .filter(|c| c.exposure == Exposure::Narrower)
                .count(),
        )
    }

    /// One line per change, flagged ones first.
    pub fn text(&self) -> String {
        let mut out = format!("policy diff: {}\n", self.headline());
        for c in &self.changes {
            let at = [c.principal.as_str(), c.purpose.as_str(), c.table.as_str()]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" / ");
            let _ = writeln!(
                out,
                "{} {:<9} {at}: {}: {} -> {}",
                c.exposure.sign(),
                c.exposure.label(),
                c.what,
                if c.before.is_empty() {
                    "(none)"
                } else {
                    &c.before
                },
                if c.after.is_empty() {
                    "(none)"
                } else {
                    &c.after
                },
            );
        }
        out
    }

    /// A markdown report for a pull-request comment.
    pub fn markdown(&self) -> String {
        let cell = |s: &str| {
            if s.is_empty() {
                "—".to_string()
            } else {
                s.replace('|', "\\|").replace('\n', " ")
            }
        };
        let mut out = format!("### Policy diff\n\n**{}**\n", self.headline());
        if self.changes.is_empty() {
            return out;
        }
        out.push_str("\n| | principal | purpose | table | what | before | after |\n|---|---|---|---|---|---|---|\n");
        for c in &self.changes {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                if c.exposure <= Exposure::Linkage {
                    format!("**{}**", c.exposure.label())
                } else {
                    c.exposure.label().to_string()
                },
                cell(&c.principal),
                cell(&c.purpose),
                cell(&c.table),
                cell(&c.what),
                cell(&c.before),
                cell(&c.after)
            );
        }
        out
    }
}
