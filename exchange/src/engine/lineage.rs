//! Which tables and raw columns a plan reads, for the audit record.

use std::collections::BTreeMap;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::LogicalPlan;

use crate::audit::TableUse;
use crate::enforcement::RawTable;

/// Tables and raw columns read by the enforced, optimized plan (subqueries included).
pub(super) fn tables_touched(plan: &LogicalPlan, scans: &[TableUse]) -> Vec<TableUse> {
    let mut by_table: BTreeMap<String, TableUse> = BTreeMap::new();
    // A table as the governed scans named it: its grant and register, no columns yet.
    let named = |t: &str| {
        let known = scans.iter().find(|s| s.table == t);
        TableUse {
            table: t.to_string(),
            grant: known.map(|s| s.grant.clone()).unwrap_or_default(),
            columns: vec![],
            objections: known.and_then(|s| s.objections.clone()),
        }
    };
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Ok(provider) = source_as_provider(&scan.source)
            && let Some(raw) = provider.downcast_ref::<RawTable>()
        {
            let table = scan.table_name.to_string();
            let entry = by_table
                .entry(table.clone())
                .or_insert_with(|| named(&table));
            for f in scan.projected_schema.fields() {
                // The row number is the exchange's own, not a column of the table.
                if f.name() != crate::enforcement::HIDDEN_ROW && !entry.columns.contains(f.name()) {
                    entry.columns.push(f.name().clone());
                }
            }
            let filter_cols = scan
                .filters
                .iter()
                .flat_map(|f| f.column_refs())
                .map(|c| c.name.clone())
                .chain(raw.row_filter_columns())
                .collect::<Vec<_>>();
            for c in filter_cols {
                if !entry.columns.contains(&c) {
                    entry.columns.push(c);
                }
            }
        }
        // A node's table: the treated columns the hub read (the node's own record names
        // the raw ones).
        if let LogicalPlan::TableScan(scan) = node
            && let Ok(provider) = source_as_provider(&scan.source)
            && provider.is::<crate::federation::RemoteTable>()
        {
            let table = scan.table_name.to_string();
            let entry = by_table
                .entry(table.clone())
                .or_insert_with(|| named(&table));
            for f in scan.projected_schema.fields() {
                if !f.name().starts_with("__exchange_") && !entry.columns.contains(f.name()) {
                    entry.columns.push(f.name().clone());
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    // Tables whose scans the optimizer removed still count as touched.
    for s in scans {
        by_table.entry(s.table.clone()).or_insert_with(|| TableUse {
            table: s.table.clone(),
            grant: s.grant.clone(),
            columns: vec![],
            objections: s.objections.clone(),
        });
    }
    by_table.into_values().collect()
}

/// Tables the (unanalyzed) plan names, with the grants that apply.
pub(super) fn governed_scans(plan: &LogicalPlan) -> Vec<TableUse> {
    let mut out: Vec<TableUse> = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Ok(provider) = source_as_provider(&scan.source)
            && let Some(g) = provider.downcast_ref::<crate::enforcement::GovernedTable>()
        {
            let table = g.spec().dataset.qualified_name();
            if !out.iter().any(|t| t.table == table) {
                out.push(TableUse {
                    table,
                    grant: g.spec().access.audited_ref(),
                    columns: vec![],
                    objections: g.spec().objections.clone(),
                });
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}
