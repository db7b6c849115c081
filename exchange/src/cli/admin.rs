//! `exchange keys ...` and `exchange audit ...`: commands for operators and auditors.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::io::IsTerminal;

use crate::audit;
use crate::config::ExchangeConfig;
use crate::engine::Exchange;
use crate::export::{self, ExportRequest};
use crate::keys::{self, PublicKey};

use super::ExportArgs;

pub(super) fn keys_init(config: &ExchangeConfig) -> ExitCode {
    match keys::init(&config.key_dir) {
        Ok(public) => {
            say!(
                "created keys in {} (owner-only): {}, {}; public key {} (id {})",
                config.key_dir.display(),
                keys::SECRET_FILE,
                keys::SIGNING_FILE,
                config.public_key_file().display(),
                public.id()
            );
            say!("{}", public.to_hex());
            ExitCode::SUCCESS
        }
        Err(e) => {
            complain!("error: {e}");
            ExitCode::from(2)
        }
    }
}

pub(super) fn keys_public(config: &ExchangeConfig, out: Option<&Path>) -> ExitCode {
    // The public half is derived from the private key, so it cannot drift from it.
    let public = match keys::SigningKey::load(&config.key_dir.join(keys::SIGNING_FILE)) {
        Ok(k) => k.public_key(),
        Err(e) => {
            complain!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match out {
        Some(path) => match public.write(path) {
            Ok(()) => {
                say!(
                    "public key (id {}) written to {}",
                    public.id(),
                    path.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                complain!("error: {e}");
                ExitCode::from(2)
            }
        },
        None => {
            say!("{}", public.to_hex());
            ExitCode::SUCCESS
        }
    }
}

/// The verifier's public key: the given file, or the key dir's `signing.pub`.
pub(super) fn public_key(
    config: &ExchangeConfig,
    file: Option<&Path>,
) -> Result<PublicKey, String> {
    let path = file
        .map(Path::to_path_buf)
        .unwrap_or_else(|| config.public_key_file());
    PublicKey::read(&path).map_err(|e| match e {
        keys::KeyError::Missing { path } => format!(
            "no public key at {}: pass --public-key FILE (the exchange operator's signing.pub, from `exchange keys public`)",
            path.display()
        ),
        other => other.to_string(),
    })
}

pub(super) fn audit_reconcile(hub: &Path, nodes: &[PathBuf], hub_key: Option<&Path>) -> ExitCode {
    let key_id = match hub_key.map(crate::keys::PublicKey::read).transpose() {
        Ok(k) => k.map(|k| k.id()),
        Err(e) => {
            complain!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let r = match crate::federation::reconcile(hub, nodes, key_id.as_deref()) {
        Ok(r) => r,
        Err(e) => {
            complain!("error: {e}");
            return ExitCode::from(2);
        }
    };
    say!(
        "{} hub statement{} read tables through nodes; {} node record{} match{} them; {} request{} refused before verification",
        r.hub_statements,
        if r.hub_statements == 1 { "" } else { "s" },
        r.matched,
        if r.matched == 1 { "" } else { "s" },
        if r.matched == 1 { "es" } else { "" },
        r.unverified,
        if r.unverified == 1 { " was" } else { "s were" },
    );
    for u in &r.unexplained {
        say!("UNEXPLAINED {u}");
    }
    for m in &r.missing {
        say!("MISSING {m}");
    }
    for w in &r.warnings {
        say!("WARNING {w}");
    }
    if r.is_clean() {
        say!("reconciled: every node request is explained by a hub statement");
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

pub(super) fn audit_verify(config: &ExchangeConfig, key_file: Option<&Path>) -> ExitCode {
    let key = match public_key(config, key_file) {
        Ok(k) => k,
        Err(e) => {
            complain!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let dir = config.audit_log();
    let s = match audit::verify(&dir, &key) {
        Ok(s) => s,
        Err(e) => {
            complain!("BROKEN: {e}");
            return ExitCode::from(1);
        }
    };
    let counts = format!(
        "{} records in {} segment{}, {} signed checkpoint{} (key {})",
        s.records,
        s.segments,
        if s.segments == 1 { "" } else { "s" },
        s.checkpoints,
        if s.checkpoints == 1 { "" } else { "s" },
        key.id()
    );
    let recoveries = if s.recoveries > 0 {
        format!(
            "; {} recover{} after an unclean shutdown (see the checkpoints' notes)",
            s.recoveries,
            if s.recoveries == 1 { "y" } else { "ies" }
        )
    } else {
        String::new()
    };
    if !s.incomplete.is_empty() {
        let shown: Vec<String> = s.incomplete.iter().take(20).map(u64::to_string).collect();
        say!(
            "NOTE: {} streamed result{} started without a completion record (record{} {}{}): cut off by the process dying, or still running",
            s.incomplete.len(),
            if s.incomplete.len() == 1 { "" } else { "s" },
            if s.incomplete.len() == 1 { "" } else { "s" },
            shown.join(", "),
            if s.incomplete.len() > 20 { ", …" } else { "" }
        );
    }
    for (at, note) in &s.recovery_notes {
        say!("WARNING: recovery after an unclean shutdown, at record {at}: {note}");
    }
    if s.sealed {
        say!("OK: {counts}, closed cleanly{recoveries}");
    } else if audit::in_use(&dir) {
        say!(
            "OK (live): {counts}; an exchange holds the log, so it has no shutdown checkpoint yet ({} records after the last checkpoint){recoveries}",
            s.unsigned_tail
        );
    } else if s.records == 0 && s.checkpoints == 0 {
        say!("OK: the log is empty");
    } else {
        complain!(
            "UNSEALED: {counts}, but the log does not end with a shutdown checkpoint and no exchange is running: {} records after the last checkpoint (at record {}). Either the exchange died (it seals the log with a recovery checkpoint when next opened) or the log's tail was cut.",
            s.unsigned_tail,
            s.last_checkpoint.unwrap_or(0)
        );
        return ExitCode::from(1);
    }
    say!(
        "chain head: record {} {} (keep it: a later verification must extend it)",
        s.records,
        s.head
    );
    ExitCode::SUCCESS
}

pub(super) fn audit_report(
    config: &ExchangeConfig,
    since: Option<&str>,
    principal: Option<&str>,
) -> ExitCode {
    let since = match since.map(parse_since).transpose() {
        Ok(s) => s,
        Err(e) => {
            complain!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // A report is only as good as the log: verify signatures first.
    let key = match public_key(config, None) {
        Ok(k) => k,
        Err(e) => {
            complain!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = audit::verify(&config.audit_log(), &key) {
        complain!("BROKEN: {e}");
        return ExitCode::from(1);
    }
    match audit::read_all(&config.audit_log()) {
        Ok(records) => {
            super::output::print(&audit::report(&records, since, principal).to_string());
            ExitCode::SUCCESS
        }
        Err(e) => {
            complain!("BROKEN: {e}");
            ExitCode::from(1)
        }
    }
}

fn parse_since(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| format!("--since '{text}': expected YYYY-MM-DD or an RFC 3339 time"))
}

pub(super) async fn export_run(ex: &Exchange, args: &ExportArgs) -> ExitCode {
    let (Some(principal), Some(recipient), Some(out), Some(sql)) =
        (&args.principal, &args.recipient, &args.out, &args.sql)
    else {
        complain!("error: export needs --as, --recipient, --out and a query");
        return ExitCode::from(2);
    };
    let req = ExportRequest {
        principal: principal.clone(),
        purpose: args.purpose.clone(),
        recipient: recipient.clone(),
        // An object store URL as it is; a local path made absolute.
        out: if out.to_string_lossy().contains("://") {
            out.to_path_buf()
        } else {
            crate::config::absolute(out)
        },
        sql: sql.clone(),
        expires: args.expires,
    };
    let terminal = std::io::stderr().is_terminal();
    let mut last = std::time::Instant::now();
    let mut progress = |rows: u64, bytes: u64| {
        if terminal && last.elapsed().as_millis() >= 100 {
            last = std::time::Instant::now();
            eprint!("\r  {rows} rows, {:.1} MB written", bytes as f64 / 1e6);
        }
    };
    let result = export::export(ex, &req, &mut progress).await;
    if terminal {
        eprint!("\r\x1b[K");
    }
    match result {
        Ok(s) => {
            let b = &s.manifest.body;
            say!(
                "exported {} rows to {} ({} bytes, sha256 {}) for recipient {}",
                b.rows,
                req.out.display(),
                b.bytes,
                b.sha256,
                b.recipient
            );
            say!(
                "manifest {} signed by key {}; audit record {}",
                s.manifest_path.display(),
                s.manifest.key_id,
                b.audit_seq
            );
            if let Some(g) = &s.guard {
                say!("guard: {g}");
            }
            if let Some(e) = &b.expires {
                say!("expires: {e}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            complain!("{e}");
            ExitCode::from(1)
        }
    }
}

pub(super) fn export_verify(
    config: &ExchangeConfig,
    file: &Path,
    key_file: Option<&Path>,
) -> ExitCode {
    let key = match public_key(config, key_file) {
        Ok(k) => k,
        Err(e) => {
            complain!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match export::verify(file, &key) {
        Ok(m) => {
            let b = &m.body;
            say!(
                "OK: {} ({} rows, sha256 {}) issued by {} ({}) for purpose {} to recipient {} on {}{}; signed by key {}",
                b.file,
                b.rows,
                b.sha256,
                b.principal,
                b.agency,
                b.purpose,
                b.recipient,
                b.created,
                b.expires
                    .as_ref()
                    .map(|e| format!(", valid until {e}"))
                    .unwrap_or_default(),
                m.key_id
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            complain!("INVALID: {e}");
            ExitCode::from(1)
        }
    }
}

pub(super) async fn export_trace(ex: &Exchange, file: &Path) -> ExitCode {
    let started = std::time::Instant::now();
    let result = export::trace(ex, file).await;
    // Tracing recomputes pseudonyms with the exchange's secret: it is audited too.
    let entry = crate::audit::Entry {
        decision: if result.is_ok() {
            crate::audit::Decision::Allowed
        } else {
            crate::audit::Decision::Failed
        },
        reason: Some(match &result {
            Ok(r) => r
                .verdict
                .clone()
                .unwrap_or_else(|| "no recipient or agency explains the file".into()),
            Err(e) => e.to_string(),
        }),
        ..crate::audit::Entry::new(
            crate::audit::StatementKind::Trace,
            "(operator)",
            format!("export trace {}", file.display()),
        )
        .timed(started)
    };
    if let Err(e) = ex.audit().append(entry) {
        complain!("error: audit log unavailable, trace withheld: {e}");
        return ExitCode::from(2);
    }
    match result {
        Ok(r) => {
            if r.columns.is_empty() {
                say!(
                    "no pseudonym-like columns in {}: nothing to trace",
                    file.display()
                );
                return ExitCode::from(1);
            }
            say!("| scope | domain | column | matched |");
            say!("|---|---|---|---|");
            // Column names come from the file, recipients from exporters: shown escaped.
            for s in r.scores.iter().take(10) {
                let line = format!(
                    "| {} | {} | {} | {}/{} |",
                    s.scope, s.domain, s.column, s.matched, s.sampled
                );
                say!("{}", crate::text::escape(&line));
            }
            match r.verdict {
                Some(v) => {
                    let line = format!(
                        "traced: the pseudonyms of {} were keyed for {v}",
                        file.display()
                    );
                    say!("{}", crate::text::escape(&line));
                    for e in &r.exports {
                        say!("  issued in {}", crate::text::escape(&e.to_string()));
                    }
                    ExitCode::SUCCESS
                }
                None => {
                    let line = format!(
                        "no recipient or agency of this exchange explains the pseudonyms in {} (columns {})",
                        file.display(),
                        r.columns.join(", ")
                    );
                    say!("{}", crate::text::escape(&line));
                    ExitCode::from(1)
                }
            }
        }
        Err(e) => {
            complain!("error: {e}");
            ExitCode::from(2)
        }
    }
}

pub(super) fn auth(config: &ExchangeConfig, command: &super::AuthCommand) -> ExitCode {
    let file = config.policies_dir().join("principals.toml");
    let result = match command {
        super::AuthCommand::SetPassword {
            principal,
            iterations,
        } => {
            let mut password = String::new();
            if let Err(e) = std::io::stdin().read_line(&mut password) {
                complain!("error: reading the password from standard input: {e}");
                return ExitCode::from(2);
            }
            let password = password.trim_end_matches(['\n', '\r']);
            if password.len() < 8 {
                complain!("error: a password has at least 8 characters");
                return ExitCode::from(2);
            }
            crate::server::hash_password(password, *iterations)
                .and_then(|h| {
                    crate::server::set_principal_field(
                        &file,
                        principal,
                        "password_hash",
                        &format!("\"{h}\""),
                    )
                })
                .map(|()| format!("password of {principal} set (PBKDF2-SHA256, {iterations} iterations) in {}", file.display()))
        }
        super::AuthCommand::NewToken { principal } => {
            let policies = crate::catalog::Catalog::load(&config.schemas_dir())
                .map_err(|e| e.to_string())
                .and_then(|c| {
                    crate::policy::PolicySet::load(&config.policies_dir(), &c)
                        .map_err(|e| e.to_string())
                });
            let policies = match policies {
                Ok(p) => p,
                Err(e) => {
                    complain!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            crate::server::stored_tokens(&policies, principal).and_then(|mut stored| {
                let (token, hash) = crate::server::new_api_token()?;
                stored.push(hash);
                let list: Vec<String> = stored.iter().map(|h| format!("\"{h}\"")).collect();
                crate::server::set_principal_field(
                    &file,
                    principal,
                    "api_tokens",
                    &format!("[{}]", list.join(", ")),
                )?;
                Ok(format!(
                    "API token for {principal} (shown once; only its hash is stored in {}):\n{token}",
                    file.display()
                ))
            })
        }
    };
    match result {
        Ok(msg) => {
            say!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            complain!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// `exchange keys transport`.
pub(super) fn keys_transport(config: &ExchangeConfig) -> ExitCode {
    match crate::keys::transport::TransportKey::load_or_create(&config.key_dir) {
        Ok(k) => {
            say!("{}", hex::encode(k.public()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            complain!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// `exchange keys domain ...`.
pub(super) fn keys_domain(config: &ExchangeConfig, command: &super::DomainCommand) -> ExitCode {
    use super::DomainCommand as D;
    use crate::keys::domain;
    let dir = &config.key_dir;
    let result: Result<String, crate::keys::KeyError> = match command {
        D::Create { domain: d } => domain::create(dir, d).map(|k| {
            format!("created key v{} of domain {d} (tokens of {d} now derive from it, not the master secret)", k.version)
        }),
        D::Rotate { domain: d } => domain::rotate(dir, d).map(|k| {
            format!("domain {d} now at key v{}; hand it to the domain's other nodes (keys domain export/import)", k.version)
        }),
        D::Export { domain: d, to, out } => {
            let text = std::fs::read_to_string(to).unwrap_or_else(|_| to.clone());
            crate::keys::transport::parse_public(&text)
                .and_then(|to| {
                    let signer = crate::keys::SigningKey::load(
                        &dir.join(crate::keys::SIGNING_FILE),
                    )?;
                    domain::export(dir, d, &to, &signer)
                })
                .and_then(|sealed| {
                    std::fs::write(out, format!("{sealed}\n"))
                        .map_err(|source| crate::keys::KeyError::Io {
                            path: out.clone(),
                            source,
                        })
                        .map(|()| format!("sealed domain {d}'s key to {}", out.display()))
                })
        }
        D::Import { file, from } => std::fs::read_to_string(file)
            .map_err(|source| crate::keys::KeyError::Io {
                path: file.clone(),
                source,
            })
            .and_then(|text| {
                let from = crate::keys::PublicKey::read(from)?;
                domain::import(dir, &text, &from)
            })
            .map(|(d, v)| format!("installed key v{v} of domain {d}")),
        D::List => domain::load_all(dir).map(|all| {
            if all.is_empty() {
                "no domain has a key of its own here (all tokens derive from the master secret)".into()
            } else {
                all.iter()
                    .map(|(d, k)| format!("{d} v{}", k.version))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        }),
    };
    match result {
        Ok(said) => {
            for line in said.lines() {
                say!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            complain!("error: {e}");
            ExitCode::from(2)
        }
    }
}
