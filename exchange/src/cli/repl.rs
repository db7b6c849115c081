//! `exchange repl`: the interactive shell.

use std::process::ExitCode;

use super::{Format, render};
use crate::engine::Exchange;

pub(super) async fn repl(ex: &Exchange, principal: &str, purpose: Option<&str>) -> ExitCode {
    let session = match ex.session(principal, purpose) {
        Ok(s) => s,
        Err(e) => {
            complain!("{e}");
            return ExitCode::from(1);
        }
    };
    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(e) => e,
        Err(e) => {
            complain!("error: cannot start the line editor: {e}");
            return ExitCode::from(2);
        }
    };
    let history = ex.config().state_dir.join("history");
    let _ = editor.load_history(&history);
    say!(
        "exchange as {principal} ({}), purpose {}. \\d lists tables, \\d TABLE its columns, \\q quits.",
        session.principal.agency,
        session.purpose
    );
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            "exchange> "
        } else {
            "      ..> "
        };
        let line = match editor.readline(prompt) {
            Ok(l) => l,
            Err(rustyline::error::ReadlineError::Interrupted) => {
                buffer.clear();
                continue;
            }
            Err(_) => break,
        };
        let trimmed = line.trim();
        if buffer.is_empty() && trimmed.starts_with('\\') {
            let _ = editor.add_history_entry(trimmed);
            let mut parts = trimmed.split_whitespace();
            match (parts.next(), parts.next()) {
                (Some("\\q"), _) => break,
                (Some("\\d"), None) => {
                    for (name, spec) in &session.tables {
                        say!("  {name:<24} {}", spec.access.grant_ref);
                    }
                    if session
                        .principal
                        .roles
                        .iter()
                        .any(|r| r == crate::enforcement::AUDITOR_ROLE)
                    {
                        say!("  {:<24} the audit log", "audit.events");
                    }
                }
                (Some("\\d"), Some(table)) => {
                    match Exchange::visible_columns(&session, &table.to_lowercase()) {
                        Some(cols) => {
                            for c in cols {
                                say!(
                                    "  {:<20} {:<28} {}",
                                    c.name,
                                    c.data_type.to_string(),
                                    c.treatment
                                );
                            }
                        }
                        None => say!("table {table} is not found or not granted"),
                    }
                }
                _ => say!("commands: \\d, \\d TABLE, \\q"),
            }
            continue;
        }
        buffer.push_str(&line);
        buffer.push('\n');
        if !trimmed.ends_with(';') {
            continue;
        }
        let sql = std::mem::take(&mut buffer);
        let _ = editor.add_history_entry(sql.trim());
        let sql = sql.trim().trim_end_matches(';');
        match ex.execute(principal, purpose, sql).await {
            Ok(out) => {
                let mut stdout = super::output::Stdout;
                let _ = render(&mut stdout, &super::output::shown(&out), Format::Table);
                say!("({} rows)", out.rows);
            }
            Err(e) => say!("{e}"),
        }
    }
    let _ = editor.save_history(&history);
    ExitCode::SUCCESS
}
