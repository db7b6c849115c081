//! The schemas and policies an exchange decides under, loaded together as one version.
//!
//! A running exchange holds one [`Governance`] at a time behind an `Arc`: a statement takes
//! the current one when it starts and keeps it to its end, so a reload (`SIGHUP`,
//! `exchange policy reload`, a change of the files) never shows a statement half of one
//! version and half of another. Every audit record names the version it was decided under:
//! the content hash of the files, [`version_of`].

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::catalog::Catalog;
use crate::config::ExchangeConfig;
use crate::policy::PolicySet;

use super::{CheckReport, OpenError};

/// Schemas and policies of one version.
#[derive(Debug)]
pub struct Governance {
    /// The catalog (schemas/).
    pub catalog: Catalog,
    /// The policies (policies/).
    pub policies: PolicySet,
    /// The content hash of the files both were loaded from ([`version_of`]).
    pub version: String,
}

/// How often a load is retried when the files change while they are read.
const LOAD_ATTEMPTS: usize = 5;

impl Governance {
    /// Load schemas and policies as one version: the files are hashed before and after
    /// they are read, and read again if they changed meanwhile (an editor's save, a `git
    /// checkout` under way), so the version names exactly what was loaded.
    pub(crate) fn load(config: &ExchangeConfig) -> Result<Self, OpenError> {
        let mut last = String::new();
        for attempt in 0..LOAD_ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(200));
            }
            let before = version_of(config)?;
            let catalog = Catalog::load(&config.schemas_dir())?;
            let policies = PolicySet::load(&config.policies_dir(), &catalog)?;
            let after = version_of(config)?;
            if before == after {
                return Ok(Self {
                    catalog,
                    policies,
                    version: after,
                });
            }
            last = after;
        }
        Err(OpenError::Settings(format!(
            "schemas/ and policies/ kept changing while they were read ({LOAD_ATTEMPTS} attempts, last version {last}): try again once the change is complete"
        )))
    }

    /// The agency of a declared principal.
    pub fn agency_of(&self, principal: &str) -> Option<String> {
        self.policies.principal(principal).map(|p| p.agency.clone())
    }

    /// The findings of `policy check` on the definitions (no data files): a version with
    /// an error among them is not applied by a reload.
    pub(crate) fn check(&self) -> CheckReport {
        super::check::check_definitions(&self.catalog, &self.policies)
    }
}

/// The files that make a version, in a fixed order: `schemas/*.toml`,
/// `policies/purposes.toml`, `policies/principals.toml`, `policies/grants/*.toml`,
/// `policies/recipients.toml` when present.
fn version_files(config: &ExchangeConfig) -> Result<Vec<PathBuf>, OpenError> {
    let tomls = |dir: &Path| -> Result<Vec<PathBuf>, OpenError> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(|e| OpenError::Settings(format!("{}: {e}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        Ok(files)
    };
    let policies = config.policies_dir();
    let mut files = tomls(&config.schemas_dir())?;
    files.push(policies.join("purposes.toml"));
    files.push(policies.join("principals.toml"));
    files.extend(tomls(&policies.join("grants"))?);
    let recipients = policies.join("recipients.toml");
    if recipients.exists() {
        files.push(recipients);
    }
    Ok(files)
}

/// The policy version of the files on disk: the first 16 hex digits of the SHA-256 over
/// each file's path (relative to the configuration directory), length and content.
pub fn version_of(config: &ExchangeConfig) -> Result<String, OpenError> {
    let mut hash = Sha256::new();
    for path in version_files(config)? {
        let bytes =
            fs::read(&path).map_err(|e| OpenError::Settings(format!("{}: {e}", path.display())))?;
        let rel = path.strip_prefix(&config.config_dir).unwrap_or(&path);
        hash.update(rel.to_string_lossy().as_bytes());
        hash.update([0]);
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(&bytes);
    }
    Ok(hex::encode(&hash.finalize()[..8]))
}

/// What changed between two versions, in a few words for the reload's audit record:
/// datasets, principals and grants added or removed (by name), grants changed.
pub(crate) fn summary(old: &Governance, new: &Governance) -> String {
    use std::collections::BTreeSet;
    let names = |g: &Governance| -> (BTreeSet<String>, BTreeSet<String>) {
        (
            g.catalog
                .datasets()
                .iter()
                .map(|d| d.qualified_name())
                .collect(),
            g.policies
                .principals()
                .iter()
                .map(|p| p.name.clone())
                .collect(),
        )
    };
    let (old_tables, old_people) = names(old);
    let (new_tables, new_people) = names(new);
    let grant_ids = |g: &Governance| -> BTreeSet<String> {
        g.policies
            .grants()
            .iter()
            .map(|g| format!("{}/{}", g.agency, g.id))
            .collect()
    };
    let (old_grants, new_grants) = (grant_ids(old), grant_ids(new));
    let changed: Vec<String> = new
        .policies
        .grants()
        .iter()
        .filter(|g| {
            old.policies
                .grants()
                .iter()
                .find(|o| o.agency == g.agency && o.id == g.id)
                .is_some_and(|o| unplaced(&format!("{o:?}")) != unplaced(&format!("{g:?}")))
        })
        .map(|g| format!("{}/{}", g.agency, g.id))
        .collect();
    let mut parts = Vec::new();
    let mut list = |label: &str, items: Vec<&String>| {
        if !items.is_empty() {
            let shown: Vec<&str> = items.iter().take(8).map(|s| s.as_str()).collect();
            let more = items.len().saturating_sub(8);
            let tail = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            parts.push(format!("{label} {}{tail}", shown.join(", ")));
        }
    };
    list(
        "tables added:",
        new_tables.difference(&old_tables).collect(),
    );
    list(
        "tables removed:",
        old_tables.difference(&new_tables).collect(),
    );
    list(
        "principals added:",
        new_people.difference(&old_people).collect(),
    );
    list(
        "principals removed:",
        old_people.difference(&new_people).collect(),
    );
    list(
        "grants added:",
        new_grants.difference(&old_grants).collect(),
    );
    list(
        "grants removed:",
        old_grants.difference(&new_grants).collect(),
    );
    list("grants changed:", changed.iter().collect());
    let credentials: Vec<String> = new
        .policies
        .principals()
        .iter()
        .filter(|p| {
            old.policies
                .principal(&p.name)
                .is_some_and(|o| o.password_hash != p.password_hash || o.api_tokens != p.api_tokens)
        })
        .map(|p| p.name.clone())
        .collect();
    list("credentials changed:", credentials.iter().collect());
    if parts.is_empty() {
        "no change to tables, principals or grants".into()
    } else {
        parts.join("; ")
    }
}

/// A debug rendering without its `SourcePos { .. }` parts: a grant moved within its file is
/// not a changed grant.
fn unplaced(debug: &str) -> String {
    let mut out = String::with_capacity(debug.len());
    let mut rest = debug;
    while let Some(at) = rest.find("SourcePos {") {
        out.push_str(&rest[..at]);
        rest = rest[at..].find('}').map_or("", |end| &rest[at + end + 1..]);
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::unplaced;

    #[test]
    fn positions_do_not_count_as_changes() {
        let a = r#"Grant { id: "g", pos: SourcePos { path: "a.toml", line: 3 }, x: 1 }"#;
        let b = r#"Grant { id: "g", pos: SourcePos { path: "a.toml", line: 9 }, x: 1 }"#;
        let c = r#"Grant { id: "g", pos: SourcePos { path: "a.toml", line: 9 }, x: 2 }"#;
        assert_eq!(unplaced(a), unplaced(b));
        assert_ne!(unplaced(b), unplaced(c));
    }
}
