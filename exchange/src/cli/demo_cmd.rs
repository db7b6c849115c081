//! `exchange demo`: generate the demo city if missing and run the showcase.

use std::process::ExitCode;

use super::{Format, config, describe_treatments, open, render};
use crate::config::Settings;
use crate::config::absolute;
use crate::demo;
use crate::engine::QueryError;

pub(super) async fn run_demo(
    settings: &Settings,
    scale: f64,
    seed: u64,
    regenerate: bool,
    federated: bool,
) -> ExitCode {
    let root = absolute(&settings.paths.data_root);
    if regenerate || !demo::data_present(&root) {
        say!(
            "Generating the demo city (scale {scale}, seed {seed}) under {} ...",
            root.display()
        );
        match demo::generate(&root, scale, seed) {
            Ok(n) => {
                // say! escapes control characters: a blank line is a line of its own.
                say!("  {n} residents and their records across six agencies.");
                say!("");
            }
            Err(e) => {
                complain!("error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    // The demo's first run creates its keys; anywhere else that is `exchange keys init`.
    if let Err(e) = crate::keys::ensure(&config(settings).key_dir) {
        complain!("error: {e}");
        return ExitCode::from(2);
    }
    if federated {
        return super::federated::run(settings).await;
    }
    let ex = match open(settings) {
        Ok(e) => e,
        Err(c) => return c,
    };
    let mut failures = 0;
    // Refusals first, so the auditor's showcase has refusals to find.
    let mut refused_lines = Vec::new();
    for r in demo::refusals() {
        match ex.execute(r.principal, r.purpose, r.sql).await {
            Err(QueryError::Refused(reason)) => refused_lines.push((r, reason)),
            other => {
                failures += 1;
                refused_lines.push((r, format!("UNEXPECTED: {other:?}")));
            }
        }
    }
    for (i, show) in demo::SHOWCASE.iter().enumerate() {
        let agency = ex.agency_of(show.principal).unwrap_or_default();
        say!(
            "━━━ {}. {} ({agency}) · purpose {}",
            i + 1,
            show.principal,
            show.purpose
        );
        for q in show.queries {
            say!("  {}", q.title);
            for l in q.sql.lines() {
                say!("    {l}");
            }
            match ex.execute(show.principal, Some(show.purpose), q.sql).await {
                Ok(out) => {
                    for line in describe_treatments(&ex, show.principal, show.purpose, &out) {
                        say!("  ⤷ {line}");
                    }
                    let mut stdout = super::output::Stdout;
                    let _ = render(&mut stdout, &super::output::shown(&out), Format::Table);
                    say!("  ({} rows)", out.rows);
                }
                Err(e) => {
                    failures += 1;
                    say!("  UNEXPECTED {e}");
                }
            }
        }
        for (r, reason) in refused_lines
            .iter()
            .filter(|(r, _)| r.principal == show.principal)
        {
            say!(
                "  ✗ {} {}",
                r.purpose
                    .map(|p| format!("[purpose {p}]"))
                    .unwrap_or_else(|| "[no purpose]".into()),
                r.sql
            );
            say!("    {reason}");
        }
        say!("");
    }
    for (r, reason) in refused_lines
        .iter()
        .filter(|(r, _)| !demo::SHOWCASE.iter().any(|s| s.principal == r.principal))
    {
        say!("  ✗ {} as {}: {reason}", r.sql, r.principal);
    }
    // Showcase 5 leaves as a signed export for a buyer of the trade platform.
    if let Some(q) = demo::SHOWCASE
        .iter()
        .find(|s| s.principal == "market_trader")
        .and_then(|s| s.queries.first())
    {
        let dir = absolute(&settings.paths.state_dir).join("exports");
        let out = dir.join(format!(
            "enterprises-{}.parquet",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
        ));
        let req = crate::export::ExportRequest {
            principal: "market_trader".into(),
            purpose: Some("data_product".into()),
            recipient: "demo-buyer".into(),
            out: out.clone(),
            sql: q.sql.into(),
            expires: None,
        };
        let result = match std::fs::create_dir_all(&dir) {
            Ok(()) => crate::export::export(&ex, &req, &mut |_, _| {})
                .await
                .map_err(|e| e.to_string())
                .and_then(|_| {
                    crate::export::verify(&out, &ex.signer().public_key())
                        .map_err(|e| e.to_string())
                }),
            Err(e) => Err(format!("{}: {e}", dir.display())),
        };
        match result {
            Ok(m) => {
                say!(
                    "Export for recipient demo-buyer: {} ({} rows), manifest signed and verified (exchange export verify {}).",
                    out.display(),
                    m.body.rows,
                    out.display()
                );
                say!("");
            }
            Err(e) => {
                failures += 1;
                say!("Export FAILED: {e}");
                say!("");
            }
        }
    }
    // Close the exchange (the log is sealed with a signed shutdown checkpoint), then verify
    // it as an auditor would.
    let (audit_dir, public) = (ex.audit().path().to_path_buf(), ex.signer().public_key());
    drop(ex);
    match crate::audit::verify(&audit_dir, &public) {
        Ok(s) => say!(
            "Audit log {}: {} records, hash chain and {} signed checkpoints verified{}.",
            audit_dir.display(),
            s.records,
            s.checkpoints,
            if s.sealed { ", closed cleanly" } else { "" }
        ),
        Err(e) => {
            failures += 1;
            say!("Audit log BROKEN: {e}");
        }
    }
    if failures > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
