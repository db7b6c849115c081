//! `exchange demo --federated`: one node per demo agency and a hub on loopback ports, the
//! showcase through the hub compared with single-node mode, the logs reconciled.
//!
//! The nodes run in this process (real Flight servers on loopback, each with its own audit
//! log under `<state_dir>/federated/`); the hub holds signing and HMAC keys of its own, so
//! equal results show that every token was computed at a node.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};

use super::config;
use crate::config::Settings;
use crate::demo;
use crate::engine::{Exchange, QueryError};
use crate::federation::{LocalNode, NodeSettings};

/// Every cell, formatted, rows sorted: results compared regardless of row order.
fn sorted_cells(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let options = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for b in batches {
        let formatters: Vec<_> = b
            .columns()
            .iter()
            .filter_map(|c| ArrayFormatter::try_new(c.as_ref(), &options).ok())
            .collect();
        for r in 0..b.num_rows() {
            rows.push(formatters.iter().map(|f| f.value(r).to_string()).collect());
        }
    }
    rows.sort();
    rows
}

/// Start the node of `agency` in this process, pinning the demo hub's key.
async fn start_node(settings: &Settings, agency: &str, hub_pub: &str) -> Result<LocalNode, String> {
    let mut c = config(settings);
    c.state_dir = c.state_dir.join("federated").join(format!("node-{agency}"));
    c.federation.hubs = BTreeMap::from([("demo-hub".to_string(), hub_pub.to_string())]);
    c.federation.nodes.clear();
    let ex = Exchange::open(c).map_err(|e| format!("node {agency}: {e}"))?;
    LocalNode::start(ex, agency)
        .await
        .map_err(|e| format!("node {agency}: {e}"))
}

/// The federated demo; the data and the nodes' keys exist.
pub(super) async fn run(settings: &Settings) -> ExitCode {
    match run_inner(settings).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            complain!("error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run_inner(settings: &Settings) -> Result<bool, String> {
    let base = config(settings);
    let root = base.state_dir.join("federated");
    let hub_keys = root.join("hub-keys");
    crate::keys::ensure(&hub_keys).map_err(|e| e.to_string())?;
    let hub_pub = std::fs::read_to_string(hub_keys.join(crate::keys::PUBLIC_FILE))
        .map_err(|e| format!("{}: {e}", hub_keys.display()))?;
    let single = Exchange::open(base.clone()).map_err(|e| e.to_string())?;
    let mut agencies: Vec<String> = single
        .governance()
        .catalog
        .datasets()
        .iter()
        .map(|d| d.agency.clone())
        .collect();
    agencies.dedup();
    let mut nodes = Vec::new();
    for a in &agencies {
        let node = start_node(settings, a, hub_pub.trim()).await?;
        say!(
            "node of {a:<8} listening on {} (audit log {}/node-{a}/audit)",
            node.url,
            root.display()
        );
        nodes.push((a.clone(), node));
    }
    let mut hub_config = base.clone();
    hub_config.state_dir = root.join("hub");
    hub_config.key_dir = hub_keys;
    for (a, n) in &nodes {
        hub_config
            .federation
            .nodes
            .insert(a.clone(), NodeSettings { url: n.url.clone() });
    }
    let hub = Exchange::open(hub_config).map_err(|e| format!("hub: {e}"))?;
    say!(
        "hub with keys of its own (no data, no data keys); showcase through the hub vs single-node:"
    );
    say!("");

    let mut equal = true;
    for r in demo::refusals() {
        for ex in [&hub, &single] {
            if !matches!(
                ex.execute(r.principal, r.purpose, r.sql).await,
                Err(QueryError::Refused(_))
            ) {
                equal = false;
                say!("  UNEXPECTED: not refused: {} as {}", r.sql, r.principal);
            }
        }
    }
    for show in demo::SHOWCASE {
        for q in show.queries {
            let t = Instant::now();
            let federated = hub.execute(show.principal, Some(show.purpose), q.sql).await;
            let hub_ms = t.elapsed().as_millis();
            let t = Instant::now();
            let local = single
                .execute(show.principal, Some(show.purpose), q.sql)
                .await;
            let single_ms = t.elapsed().as_millis();
            let verdict = match (&federated, &local) {
                // Each exchange reads its own audit log.
                (Ok(f), Ok(_)) if q.sql.contains("audit.events") => {
                    format!("{} rows (from the hub's own log)", f.rows)
                }
                (Ok(f), Ok(l)) if sorted_cells(&f.batches) == sorted_cells(&l.batches) => {
                    format!("{} rows, equal", f.rows)
                }
                (Ok(f), Ok(l)) => {
                    equal = false;
                    format!(
                        "DIFFERENT: {} rows federated, {} single-node",
                        f.rows, l.rows
                    )
                }
                (Err(e), _) | (_, Err(e)) => {
                    equal = false;
                    format!("FAILED: {e}")
                }
            };
            say!(
                "  {:<16} {:<68} {verdict} (hub {hub_ms} ms, single-node {single_ms} ms)",
                show.principal,
                q.title
            );
        }
    }
    let hub_log = hub.audit().path().to_path_buf();
    let hub_id = hub.signer().public_key().id();
    drop(hub);
    drop(single);
    for (a, n) in nodes.drain(..) {
        n.stop().await.map_err(|e| format!("node {a}: {e}"))?;
    }
    let node_logs: Vec<_> = agencies
        .iter()
        .map(|a| root.join(format!("node-{a}")).join("audit"))
        .collect();
    let r = crate::federation::reconcile(&hub_log, &node_logs, Some(&hub_id))
        .map_err(|e| e.to_string())?;
    say!("");
    say!(
        "Nodes stopped, logs sealed. Reconcile: {} hub statements read through nodes, {} node records explained, {} unexplained, {} missing.",
        r.hub_statements,
        r.matched,
        r.unexplained.len(),
        r.missing.len()
    );
    Ok(equal && r.is_clean())
}
