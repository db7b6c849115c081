//! `exchange policy reload`: ask the running exchange of this configuration (serve or
//! node) to reload schemas/ and policies/, and tell what it did.
//!
//! The running process is the one holding the audit log (its id is in the log's `LOCK`
//! file); it is sent `SIGHUP` and answers in the audit log, where this command reads the
//! record of kind `policy` it wrote: applied (old and new version, what changed),
//! unchanged, or rejected with the errors of `policy check`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::audit::{AuditRecord, Decision, StatementKind, holder_pid, read_all};
use crate::config::ExchangeConfig;

/// The last sequence number of the log, or 0 for an empty one.
fn last_seq(records: &[AuditRecord]) -> u64 {
    records.iter().map(|r| r.seq).max().unwrap_or(0)
}

/// Send `SIGHUP` to process `pid`.
#[cfg(unix)]
fn hang_up(pid: u32) -> Result<(), String> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| format!("process id {pid} out of range"))?;
    // SAFETY: kill(2) takes plain integers and touches no memory of this process.
    let rc = unsafe { libc::kill(pid, libc::SIGHUP) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().to_string())
    }
}

#[cfg(not(unix))]
fn hang_up(_pid: u32) -> Result<(), String> {
    Err("signals are not available on this platform: restart the exchange".into())
}

/// Run `exchange policy reload`, waiting up to `wait` for the answer.
pub(super) fn run(config: &ExchangeConfig, wait: Duration) -> ExitCode {
    let dir = config.audit_log();
    let pid = match holder_pid(&dir) {
        Ok(Some(pid)) => pid,
        Ok(None) => {
            complain!(
                "error: no running exchange server holds the audit log {} (start `exchange serve` or `exchange node` with this configuration; a process that starts loads the policies as they are)",
                dir.display()
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            complain!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match crate::engine::version_of(config) {
        Ok(v) => say!("policy version on disk: {v}"),
        Err(e) => say!("policy version on disk: unreadable ({e})"),
    }
    let before = match read_all(&dir) {
        Ok(r) => last_seq(&r),
        Err(e) => {
            complain!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = hang_up(pid) {
        complain!("error: cannot signal exchange process {pid}: {e}");
        return ExitCode::from(2);
    }
    let asked = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        // A line being written is skipped until it is whole.
        let records = read_all(&dir).unwrap_or_default();
        let answers: Vec<&AuditRecord> = records
            .iter()
            .filter(|r| r.seq > before && r.entry.kind == StatementKind::Policy)
            .collect();
        if let Some(answer) = answers
            .iter()
            .find(|r| r.entry.statement.starts_with("policy reload (SIGHUP)"))
        {
            // A change the process saw by itself first is told too.
            for r in &answers {
                say!("{}", r.entry.statement);
                if let Some(reason) = &r.entry.reason {
                    say!("  {reason}");
                }
                if r.seq == answer.seq {
                    break;
                }
            }
            return if answer.entry.decision == Decision::Allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            };
        }
        if asked.elapsed() >= wait {
            complain!(
                "error: exchange process {pid} did not answer within {wait:?}: see its standard error and the audit log"
            );
            return ExitCode::from(2);
        }
    }
}
