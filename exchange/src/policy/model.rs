//! The policy model: principals, purposes, grants and their resolution to an access.

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;
use serde::Deserialize;

use super::treatment::Treatment;
use crate::catalog::{Dataset, SourcePos};

/// A principal attribute value, usable in row filters as `principal.<name>`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum AttrValue {
    /// Text.
    Str(String),
    /// Integer.
    Int(i64),
    /// Boolean.
    Bool(bool),
}

/// A person or system that asks.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Login name.
    pub name: String,
    /// The agency the principal belongs to.
    pub agency: String,
    /// Roles, e.g. analyst, trader, auditor.
    pub roles: Vec<String>,
    /// Attributes for row filters.
    pub attributes: BTreeMap<String, AttrValue>,
    /// Purposes the principal may declare.
    pub purposes: Vec<String>,
    /// Salted slow hash of the password (`exchange auth set-password`), for Flight SQL logins.
    pub password_hash: Option<String>,
    /// SHA-256 hashes of long-lived API tokens (`exchange auth new-token`), for services.
    pub api_tokens: Vec<String>,
    /// Where declared.
    pub pos: SourcePos,
}

/// A declared purpose.
#[derive(Debug, Clone)]
pub struct Purpose {
    /// Name stated with each query.
    pub name: String,
    /// The legal basis for processing.
    pub legal_basis: String,
    /// Free text.
    pub description: Option<String>,
}

/// Whom a grant is for; every given field must match.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// One principal by name.
    pub principal: Option<String>,
    /// Principals with this role.
    pub role: Option<String>,
    /// Principals of this agency.
    pub agency: Option<String>,
}

impl Selector {
    /// Whether `p` is selected.
    pub fn matches(&self, p: &Principal) -> bool {
        self.principal.as_ref().is_none_or(|n| *n == p.name)
            && self.role.as_ref().is_none_or(|r| p.roles.contains(r))
            && self.agency.as_ref().is_none_or(|a| *a == p.agency)
    }

    /// Whether every principal this selector matches is also matched by `other`.
    pub(crate) fn covered_by(&self, other: &Selector) -> bool {
        let field =
            |mine: &Option<String>, theirs: &Option<String>| theirs.is_none() || theirs == mine;
        field(&self.principal, &other.principal)
            && field(&self.role, &other.role)
            && field(&self.agency, &other.agency)
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(p) = &self.principal {
            parts.push(format!("principal {p}"));
        }
        if let Some(r) = &self.role {
            parts.push(format!("role {r}"));
        }
        if let Some(a) = &self.agency {
            parts.push(format!("agency {a}"));
        }
        f.write_str(&parts.join(", "))
    }
}

/// A row filter: a SQL boolean over the table's raw columns and `principal.<attribute>`.
#[derive(Debug, Clone)]
pub struct RowFilter {
    /// The SQL text (shown only to the owning agency).
    pub sql: String,
    /// Attributes it references.
    pub attributes: BTreeSet<String>,
    /// Where declared.
    pub pos: SourcePos,
}

/// One visible column of a grant.
#[derive(Debug, Clone)]
pub struct ColumnRule {
    /// Name the principal sees.
    pub name: String,
    /// Raw column it is computed from.
    pub source: String,
    /// What it becomes.
    pub treatment: Treatment,
    /// Identity domain for token treatments, resolved against the catalog.
    pub domain: Option<String>,
    /// Where declared.
    pub pos: SourcePos,
}

/// A grant of an owning agency.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Identifier, unique within the owning agency.
    pub id: String,
    /// Owning agency.
    pub agency: String,
    /// Version of the grant file.
    pub version: String,
    /// Table within the owning agency.
    pub table: String,
    /// Whom it is for.
    pub to: Selector,
    /// Purposes it serves.
    pub purposes: Vec<String>,
    /// Last day it is valid.
    pub expires: Option<NaiveDate>,
    /// Which rows.
    pub row_filter: Option<RowFilter>,
    /// Rows leave only aggregated, in groups of at least this many entities.
    pub min_group: Option<u32>,
    /// Whether value statistics of aggregate-only columns are allowed: min, max, median,
    /// percentiles, bool_and/bool_or (each returns one member's actual value) and DISTINCT
    /// aggregates (which tell whether members' values are equal).
    pub value_statistics: bool,
    /// Differential privacy: rows leave only through noisy aggregates, charged to budgets.
    pub privacy: Option<std::sync::Arc<super::Privacy>>,
    /// The reference of an approval for what the classification levels would refuse
    /// (`policy check` errors without it), recorded with every statement it applies to.
    pub approval: Option<String>,
    /// Visible columns in table order.
    pub columns: Vec<ColumnRule>,
    /// Columns the grant names as `suppress`: deliberately left out of the visible schema.
    pub suppressed: Vec<String>,
    /// Where declared.
    pub pos: SourcePos,
}

/// What a principal may see of one table.
#[derive(Debug, Clone)]
pub struct Access {
    /// `agency/grant-id@version`, or `agency/owner` for the owner's implicit access.
    pub grant_ref: String,
    /// Visible columns.
    pub columns: Vec<ColumnRule>,
    /// Row filter, if any.
    pub row_filter: Option<RowFilter>,
    /// Rows leave only aggregated, in groups of at least this many entities.
    pub min_group: Option<u32>,
    /// Whether value statistics of aggregate-only columns are allowed.
    pub value_statistics: bool,
    /// Differential privacy of the grant, if any.
    pub privacy: Option<std::sync::Arc<super::Privacy>>,
    /// Whether the principal belongs to the owning agency (may see the filter text).
    pub owner: bool,
    /// The grant's approval reference, if any.
    pub approval: Option<String>,
}

impl Access {
    /// The grant as audit records name it: `agency/grant@version`, and the approval
    /// reference it was given under, if any.
    pub fn audited_ref(&self) -> String {
        match &self.approval {
            Some(a) => format!("{} (approval {a})", self.grant_ref),
            None => self.grant_ref.clone(),
        }
    }
}

/// Why a table is not accessible. The display never reveals columns.
#[derive(Debug, Clone, PartialEq)]
pub enum Denial {
    /// No grant matches.
    NotGranted,
    /// The only matching grant has expired.
    Expired {
        /// The grant.
        grant: String,
        /// Its last valid day.
        on: NaiveDate,
    },
}

/// Principals, purposes and grants.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    pub(super) principals: Vec<Principal>,
    pub(super) purposes: Vec<Purpose>,
    pub(super) grants: Vec<Grant>,
    pub(super) recipients: Vec<super::Recipient>,
}

impl PolicySet {
    /// The export recipient of that name (`policies/recipients.toml`).
    pub fn recipient(&self, name: &str) -> Option<&super::Recipient> {
        self.recipients.iter().find(|r| r.name == name)
    }

    /// Every declared export recipient.
    pub fn recipients(&self) -> &[super::Recipient] {
        &self.recipients
    }

    /// The principal of that name.
    pub fn principal(&self, name: &str) -> Option<&Principal> {
        self.principals.iter().find(|p| p.name == name)
    }

    /// Every principal.
    pub fn principals(&self) -> &[Principal] {
        &self.principals
    }

    /// The purpose of that name.
    pub fn purpose(&self, name: &str) -> Option<&Purpose> {
        self.purposes.iter().find(|p| p.name == name)
    }

    /// Every purpose.
    pub fn purposes(&self) -> &[Purpose] {
        &self.purposes
    }

    /// Every grant, in file order.
    pub fn grants(&self) -> &[Grant] {
        &self.grants
    }

    /// What `principal` may see of `dataset` for `purpose` on `today`.
    ///
    /// First matching grant of the owning agency wins. A principal of the owning agency
    /// whom no grant of that agency names at all sees the table raw.
    pub fn resolve(
        &self,
        dataset: &Dataset,
        principal: &Principal,
        purpose: &str,
        today: NaiveDate,
    ) -> Result<Access, Denial> {
        let mut expired = None;
        let mut targeted = false;
        for g in self
            .grants
            .iter()
            .filter(|g| g.agency == dataset.agency && g.table == dataset.name)
        {
            if !g.to.matches(principal) {
                continue;
            }
            targeted = true;
            if !g.purposes.iter().any(|p| p == purpose) {
                continue;
            }
            if let Some(until) = g.expires
                && today > until
            {
                expired.get_or_insert(Denial::Expired {
                    grant: format!("{}/{}", g.agency, g.id),
                    on: until,
                });
                continue;
            }
            return Ok(Access {
                grant_ref: format!("{}/{}@{}", g.agency, g.id, g.version),
                columns: g.columns.clone(),
                row_filter: g.row_filter.clone(),
                min_group: g.min_group,
                privacy: g.privacy.clone(),
                value_statistics: g.value_statistics,
                owner: principal.agency == dataset.agency,
                approval: g.approval.clone(),
            });
        }
        if principal.agency == dataset.agency && !targeted {
            return Ok(Access {
                grant_ref: format!("{}/owner", dataset.agency),
                columns: dataset
                    .columns
                    .iter()
                    .map(|c| ColumnRule {
                        name: c.name.clone(),
                        source: c.name.clone(),
                        treatment: Treatment::Plain,
                        domain: c.domain.clone(),
                        pos: c.pos.clone(),
                    })
                    .collect(),
                row_filter: None,
                min_group: None,
                privacy: None,
                value_statistics: true,
                owner: true,
                approval: None,
            });
        }
        Err(expired.unwrap_or(Denial::NotGranted))
    }
}
