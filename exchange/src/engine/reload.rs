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

use super::governance::{fingerprint, summary};
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
    /// The audit record of the reload could not be written, so nothing was applied.
    #[error("audit log unavailable, the reload was not applied: {0}")]
    Audit(String),
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
            let told: Vec<String> = errors.iter().take(MAX_ERRORS_TOLD).cloned().collect();
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

/// Reload `ex` on `SIGHUP` and, every `poll` (unless zero), when the files of schemas/ and
/// policies/ changed, until the returned task is aborted. Each outcome is told on standard
/// error in one line (the audit log has the record).
pub fn spawn_reloader(ex: Arc<Exchange>, poll: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let config = ex.config().clone();
        let mut seen = fingerprint(&config);
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
                    let now = fingerprint(&config);
                    if now == seen {
                        continue;
                    }
                    // Let a save or a checkout finish before reading it.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    seen = fingerprint(&config);
                    ReloadTrigger::FilesChanged
                }
            };
            let ex = Arc::clone(&ex);
            let outcome = tokio::task::spawn_blocking(move || ex.reload(trigger)).await;
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
        }
    })
}
