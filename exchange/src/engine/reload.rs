//! Live policy changes: a running exchange (serve, node) reloads schemas/ and policies/ on
//! `SIGHUP`, on `exchange policy reload`, or when the files change.
//!
//! A new version is loaded whole ([`Governance::load`]) and checked as `policy check`
//! checks definitions; one with an error is rejected and the version in force stays. An
//! accepted one is recorded in the audit log (durable) before it applies; statements that
//! started before keep the version they took, every statement after takes the new one.
//! Cached sessions are keyed by version, so none of the old version serves a new statement.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::audit::{Decision, Entry, StatementKind};

use super::governance::summary;
use super::{Exchange, Governance, Severity, version_of};

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadTrigger {
    /// `SIGHUP` (which `exchange policy reload` sends).
    Signal,
    /// The files under schemas/ or policies/ changed.
    FilesChanged,
    /// The embedding program asked ([`Exchange::reload`]).
    Request,
}

impl ReloadTrigger {
    fn as_str(self) -> &'static str {
        match self {
            Self::Signal => "SIGHUP",
            Self::FilesChanged => "files changed",
            Self::Request => "request",
        }
    }
}

/// What an accepted reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// The files hold the version in force.
    Unchanged {
        /// That version.
        version: String,
    },
    /// A new version applies to every statement that starts from now on.
    Applied {
        /// The version it replaced.
        from: String,
        /// The new version.
        to: String,
        /// Tables, principals and grants added, removed or changed.
        summary: String,
        /// Warnings of `policy check` on the new version.
        warnings: Vec<String>,
    },
}

/// Why a reload applied nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    /// The new version does not load or fails `policy check`.
    #[error("policy version {version} rejected, version {kept} stays in force: {}", .errors.join("; "))]
    Rejected {
        /// The version found on disk (`unreadable` when it could not be hashed).
        version: String,
        /// The version still in force.
        kept: String,
        /// The errors, at most [`MAX_ERRORS_TOLD`] of them.
        errors: Vec<String>,
    },
    /// A change of the files that widens what principals see, held until an operator
    /// applies it (`exchange policy reload`): a file caught half-written or briefly
    /// missing can read as a valid version that gives more, so watching the files only
    /// ever narrows by itself.
    #[error("policy version {version} held, version {kept} stays in force: it widens what principals see ({}); apply it with `exchange policy reload`", .widening.join("; "))]
    Held {
        /// The version found on disk.
        version: String,
        /// The version still in force.
        kept: String,
        /// The widening changes, at most [`MAX_ERRORS_TOLD`] of them.
        widening: Vec<String>,
    },
    /// The audit record of the reload could not be written, so nothing was applied.
    #[error("audit log unavailable, the reload was not applied: {0}")]
    Audit(String),
}

/// `text` with every stored credential (`pbkdf2-sha256$...`, `hmac-sha256$...`) replaced.
fn without_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let at = ["pbkdf2-sha256$", "hmac-sha256$"]
            .iter()
            .filter_map(|p| rest.find(p))
            .min();
        let Some(at) = at else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..at]);
        out.push_str("<credential hash>");
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ',' | ']' | '}' | '`'))
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
}

/// Errors of a rejected version named in its record and message.
const MAX_ERRORS_TOLD: usize = 5;

impl Exchange {
    /// Reload schemas and policies from their files. A version that fails to load or that
    /// `policy check` finds an error in is rejected whole; an accepted one is audited
    /// (record of kind `policy`, durable) and then applies to every statement that starts
    /// after this returns. One reload runs at a time.
    pub fn reload(&self, trigger: ReloadTrigger) -> Result<Reloaded, ReloadError> {
        let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        let current = self.governance();
        let record = |statement: String, decision: Decision, reason: Option<String>, v: &str| {
            self.audit
                .append(Entry {
                    decision,
                    reason,
                    ..Entry::new(StatementKind::Policy, "(exchange)", statement)
                        .under(v)
                        .timed(started)
                })
                .map_err(|e| ReloadError::Audit(e.to_string()))
        };
        let what = format!("policy reload ({})", trigger.as_str());
        let on_disk = version_of(&self.config);
        if on_disk.as_ref().is_ok_and(|v| *v == current.version) {
            // Nothing to apply; an operator's explicit request is answered in the log.
            if trigger != ReloadTrigger::FilesChanged {
                record(
                    format!("{what}: version {} unchanged", current.version),
                    Decision::Allowed,
                    None,
                    &current.version,
                )?;
            }
            return Ok(Reloaded::Unchanged {
                version: current.version.clone(),
            });
        }
        let loaded = Governance::load(&self.config).map(|g| {
            let report = g.check();
            (g, report)
        });
        let reject = |version: String, errors: Vec<String>| {
            // An error of the parser can quote a value of the file: a password or token
            // hash pasted in the wrong place must not reach the log or the console.
            let told: Vec<String> = errors
                .iter()
                .take(MAX_ERRORS_TOLD)
                .map(|e| without_credentials(e))
                .collect();
            let more = errors.len().saturating_sub(told.len());
            let mut reason = format!(
                "{} error(s) of policy check: {}",
                errors.len(),
                told.join("; ")
            );
            if more > 0 {
                reason.push_str(&format!("; and {more} more (run exchange policy check)"));
            }
            record(
                format!(
                    "{what}: version {version} rejected, version {} stays in force",
                    current.version
                ),
                Decision::Refused,
                Some(reason),
                &current.version,
            )?;
            Err(ReloadError::Rejected {
                version,
                kept: current.version.clone(),
                errors: told,
            })
        };
        let (new, report) = match loaded {
            Ok(x) => x,
            Err(e) => {
                let version = on_disk.unwrap_or_else(|_| "unreadable".into());
                return reject(version, vec![e.to_string()]);
            }
        };
        let (errors, warnings): (Vec<_>, Vec<_>) = report
            .findings
            .iter()
            .partition(|f| f.severity == Severity::Error);
        if !errors.is_empty() {
            let errors = errors.iter().map(|f| f.to_string()).collect();
            return reject(new.version.clone(), errors);
        }
        if new.version == current.version {
            // Changed and changed back while it was read.
            return Ok(Reloaded::Unchanged {
                version: current.version.clone(),
            });
        }
        if trigger == ReloadTrigger::FilesChanged {
            let widening = widening(&current, &new);
            if !widening.is_empty() {
                let told: Vec<String> = widening.iter().take(MAX_ERRORS_TOLD).cloned().collect();
                record(
                    format!(
                        "{what}: version {} held, version {} stays in force",
                        new.version, current.version
                    ),
                    Decision::Refused,
                    Some(format!(
                        "it widens what principals see ({} change(s): {}); a change of the files applies by itself only what narrows: apply it with exchange policy reload",
                        widening.len(),
                        told.join("; ")
                    )),
                    &current.version,
                )?;
                return Err(ReloadError::Held {
                    version: new.version.clone(),
                    kept: current.version.clone(),
                    widening: told,
                });
            }
        }
        let summary = summary(&current, &new);
        let warnings: Vec<String> = warnings.iter().map(|f| f.to_string()).collect();
        let warned = if warnings.is_empty() {
            String::new()
        } else {
            format!(" ({} warning(s) of policy check)", warnings.len())
        };
        // Durable before it applies: no statement runs under a version the log does not
        // name.
        record(
            format!(
                "{what}: version {} -> {}: {summary}{warned}",
                current.version, new.version
            ),
            Decision::Allowed,
            None,
            &new.version,
        )?;
        let to = new.version.clone();
        {
            let mut slot = self.governance.write().unwrap_or_else(|p| p.into_inner());
            *slot = Arc::new(new);
            self.audit.set_policy_version(&to);
        }
        // Sessions are keyed by version: the old ones would never be used again.
        if let Ok(mut cache) = self.sessions.lock() {
            cache.clear();
        }
        Ok(Reloaded::Applied {
            from: current.version.clone(),
            to,
            summary,
            warnings,
        })
    }
}

/// The changes from `old` to `new` that may widen what a principal sees: wider, newly
/// plain PII, new linkages, and treatments changed in no clear order (a grant's version
/// alone is not one); and what widens what leaves the exchange: a column's level lowered,
/// a recipient declared, moved into the mainland or given a basis for personal
/// information (review 49).
fn widening(old: &Governance, new: &Governance) -> Vec<String> {
    let mut out = grants_widening(old, new);
    for d in new.catalog.datasets() {
        for c in &d.columns {
            let was = old
                .catalog
                .dataset(&d.agency, &d.name)
                .and_then(|o| o.column(&c.name))
                .and_then(|o| o.level);
            let rank = |l: Option<crate::catalog::Level>| l.map_or(0, |l| l.strictness());
            if rank(c.level) < rank(was) {
                out.push(format!(
                    "level of {}.{} lowered: '{}' -> '{}'",
                    d.qualified_name(),
                    c.name,
                    was.map_or("", |l| l.as_str()),
                    c.level.map_or("", |l| l.as_str())
                ));
            }
        }
    }
    out.extend(registers_eased(old, new));
    for r in new.policies.recipients() {
        let widened = match old.policies.recipient(&r.name) {
            None => Some("declared".to_string()),
            Some(o) if o.cross_border() && !r.cross_border() => Some(format!(
                "moved into the mainland ('{}' -> '{}')",
                o.jurisdiction, r.jurisdiction
            )),
            Some(o)
                if (o.legal_basis.is_none() || o.transfer_basis().is_none())
                    && r.legal_basis.is_some()
                    && r.transfer_basis().is_some() =>
            {
                Some("given a basis for personal information abroad".to_string())
            }
            Some(o) if o.jurisdiction != r.jurisdiction => Some(format!(
                "moved ('{}' -> '{}')",
                o.jurisdiction, r.jurisdiction
            )),
            _ => None,
        };
        if let Some(w) = widened {
            out.push(format!("recipient {} {w}", r.name));
        }
    }
    out
}

/// Registers of objections that exclude less under `new`: dropped, moved to other files or
/// another domain, or covering fewer columns of their agency's tables (residents' rows
/// would come back).
fn registers_eased(old: &Governance, new: &Governance) -> Vec<String> {
    let mut out = Vec::new();
    for (agency, _) in old.catalog.agencies() {
        let Some(was) = old.catalog.register_of(agency) else {
            continue;
        };
        let name = was.dataset.qualified_name();
        let Some(now) = new.catalog.register_of(agency) else {
            out.push(format!("register of objections {name} dropped"));
            continue;
        };
        if now.dataset.qualified_name() != name
            || now.dataset.location != was.dataset.location
            || now.key.name != was.key.name
            || now.domain() != was.domain()
            || now.key.pii != was.key.pii
            || now.key.ty != was.key.ty
        {
            out.push(format!(
                "register of objections {name} moved or changed (now {} at {}, key {})",
                now.dataset.qualified_name(),
                now.dataset.location,
                now.key.name
            ));
            continue;
        }
        for d in old.catalog.datasets() {
            // A table dropped reads nothing.
            let Some(kept) = new.catalog.dataset(&d.agency, &d.name) else {
                continue;
            };
            let covered = now.subject_columns(kept);
            for c in was.subject_columns(d) {
                if !covered.contains(&c) {
                    out.push(format!(
                        "{}.{c} no longer covered by the register of objections {name}",
                        d.qualified_name()
                    ));
                }
            }
        }
    }
    out
}

/// [`widening`] of what principals see, by `policy diff`.
fn grants_widening(old: &Governance, new: &Governance) -> Vec<String> {
    let today = chrono::Utc::now().date_naive();
    crate::policy::diff(
        (&old.catalog, &old.policies),
        (&new.catalog, &new.policies),
        today,
    )
    .changes
    .into_iter()
    .filter(|c| {
        c.exposure <= crate::policy::Exposure::Wider
            || (c.exposure == crate::policy::Exposure::Changed && c.what != "grant")
    })
    .map(|c| {
        let on = [c.purpose.as_str(), c.table.as_str(), c.what.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        format!("{} {on}: '{}' -> '{}'", c.principal, c.before, c.after)
    })
    .collect()
}

/// Pause after a reload asked by a signal: signals that come meanwhile are one (a storm
/// of SIGHUPs writes a few records, not one each).
const SIGNAL_PAUSE: Duration = Duration::from_secs(1);

/// Reload `ex` on `SIGHUP` and, every `poll` (unless zero), when the files of schemas/ and
/// policies/ changed, until the returned task is aborted. Each outcome is told on standard
/// error in one line (the audit log has the record).
pub fn spawn_reloader(ex: Arc<Exchange>, poll: Duration) -> tokio::task::JoinHandle<()> {
    ex.audit().advertise_reloads();
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let config = ex.config().clone();
        // The content hash of the files at each look (it follows symlinks: a ConfigMap's
        // swapped `..data` is a change); a version is reloaded once two looks in a row
        // found it, so a save in progress is not read half-way.
        let mut seen = version_of(&config).ok();
        let mut candidate: Option<String> = None;
        let every = if poll.is_zero() {
            Duration::from_secs(3600 * 24 * 365)
        } else {
            poll
        };
        loop {
            #[cfg(unix)]
            let signalled = async {
                match hangup.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let signalled = std::future::pending::<()>();
            let trigger = tokio::select! {
                _ = signalled => ReloadTrigger::Signal,
                _ = tokio::time::sleep(every) => {
                    if poll.is_zero() {
                        continue;
                    }
                    let cfg = config.clone();
                    let now = tokio::task::spawn_blocking(move || version_of(&cfg).ok())
                        .await
                        .ok()
                        .flatten();
                    if now == seen {
                        candidate = None;
                        continue;
                    }
                    if now != candidate {
                        candidate = now;
                        continue;
                    }
                    seen = candidate.take();
                    ReloadTrigger::FilesChanged
                }
            };
            let worker = Arc::clone(&ex);
            let outcome = tokio::task::spawn_blocking(move || worker.reload(trigger)).await;
            match outcome {
                Ok(Ok(Reloaded::Applied {
                    from,
                    to,
                    summary,
                    warnings,
                })) => {
                    let warned = match warnings.len() {
                        0 => String::new(),
                        n => format!(" ({n} warning(s): exchange policy check lists them)"),
                    };
                    eprintln!(
                        "policy version {to} applied ({}), replacing {from}: {summary}{warned}",
                        trigger.as_str()
                    );
                }
                Ok(Ok(Reloaded::Unchanged { version })) => {
                    if trigger != ReloadTrigger::FilesChanged {
                        eprintln!("policy version {version} unchanged ({})", trigger.as_str());
                    }
                }
                Ok(Err(e)) => eprintln!("error: {e}"),
                Err(e) => eprintln!("error: policy reload failed: {e}"),
            }
            if trigger == ReloadTrigger::Signal {
                tokio::time::sleep(SIGNAL_PAUSE).await;
                // The files the reload considered are seen: applied or refused, the
                // watcher does not take them up again.
                seen = version_of(&config).ok();
                candidate = None;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::without_credentials;

    #[test]
    fn stored_credentials_are_not_quoted() {
        let e =
            r#"principals.toml:9: invalid type: string "hmac-sha256$01c9ab", expected a sequence"#;
        assert_eq!(
            without_credentials(e),
            r#"principals.toml:9: invalid type: string "<credential hash>", expected a sequence"#
        );
        let e = "roles = [pbkdf2-sha256$600000$74c1$9093] and hmac-sha256$aa";
        assert_eq!(
            without_credentials(e),
            "roles = [<credential hash>] and <credential hash>"
        );
        assert_eq!(without_credentials("no secret here"), "no secret here");
    }
}
