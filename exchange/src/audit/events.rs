//! `audit.events`: the audit log as a SQL table, for principals with the auditor role.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Int64Builder, ListBuilder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::{MemTable, TableProvider};
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;

use super::{StreamStatus, read_all, statements};

/// Schema of `audit.events`: one row per statement. A streamed result's completion record
/// is folded into its statement's row (rows, digest, duration, and `outcome`: complete,
/// cancelled, failed, cut, or incomplete while none was written); `outcome` is null for
/// statements recorded whole in one record.
pub fn events_schema() -> SchemaRef {
    let list = |name: &str| {
        Field::new(
            name,
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            false,
        )
    };
    Arc::new(Schema::new(vec![
        Field::new("seq", DataType::Int64, false),
        Field::new(
            "time",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("principal", DataType::Utf8, false),
        Field::new("agency", DataType::Utf8, true),
        Field::new("purpose", DataType::Utf8, true),
        Field::new("statement", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        list("tables"),
        list("columns"),
        list("grants"),
        Field::new("decision", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, true),
        Field::new("rows", DataType::Int64, true),
        Field::new("result_digest", DataType::Utf8, true),
        Field::new("duration_ms", DataType::Int64, false),
        Field::new("recipient", DataType::Utf8, true),
        Field::new("export", DataType::Utf8, true),
        Field::new("guard", DataType::Utf8, true),
        Field::new("outcome", DataType::Utf8, true),
        Field::new("policy_version", DataType::Utf8, true),
        Field::new("transfer", DataType::Utf8, true),
    ]))
}

/// The audit log snapshot an auditor's session reads. A provider of the exchange's own,
/// so the policy rule accepts it; nobody but auditors has it in their catalog.
#[derive(Debug)]
pub struct AuditEvents {
    inner: MemTable,
}

impl AuditEvents {
    /// Load the log in directory `path` (chain checked) into a table.
    pub fn load(path: &Path) -> Result<Self> {
        let records =
            statements(read_all(path).map_err(|e| DataFusionError::External(Box::new(e)))?);
        let mut seq = Int64Builder::new();
        let mut time = TimestampMicrosecondBuilder::new().with_timezone("UTC");
        let (mut principal, mut agency, mut purpose, mut statement, mut kind) = (
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
        );
        let mut tables = ListBuilder::new(StringBuilder::new());
        let mut columns = ListBuilder::new(StringBuilder::new());
        let mut grants = ListBuilder::new(StringBuilder::new());
        let (mut decision, mut reason, mut digest) = (
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
        );
        let (mut rows, mut duration) = (Int64Builder::new(), Int64Builder::new());
        let (mut recipient, mut export, mut guard) = (
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
        );
        let mut outcome = StringBuilder::new();
        let mut version = StringBuilder::new();
        let mut transfer = StringBuilder::new();
        for r in &records {
            let last = &r.entry;
            seq.append_value(i64::try_from(r.seq).unwrap_or(i64::MAX));
            time.append_value(
                chrono::DateTime::parse_from_rfc3339(&r.time)
                    .map(|t| t.timestamp_micros())
                    .unwrap_or(0),
            );
            principal.append_value(&r.entry.principal);
            agency.append_option(r.entry.agency.as_deref());
            purpose.append_option(r.entry.purpose.as_deref());
            statement.append_value(&r.entry.statement);
            kind.append_value(r.entry.kind.as_str());
            for t in &r.entry.tables {
                tables.values().append_value(&t.table);
                grants.values().append_value(&t.grant);
                for c in &t.columns {
                    columns.values().append_value(format!("{}.{c}", t.table));
                }
            }
            tables.append(true);
            columns.append(true);
            grants.append(true);
            decision.append_value(last.decision.as_str());
            reason.append_option(last.reason.as_deref());
            rows.append_option(last.rows.map(|n| i64::try_from(n).unwrap_or(i64::MAX)));
            digest.append_option(last.result_digest.as_deref());
            duration.append_value(i64::try_from(last.duration_ms).unwrap_or(i64::MAX));
            recipient.append_option(r.entry.recipient.as_deref());
            export.append_option(r.entry.export.as_deref());
            guard.append_option(r.entry.guard.as_deref());
            outcome.append_option(r.entry.stream.map(StreamStatus::outcome));
            version.append_option(r.entry.policy_version.as_deref());
            transfer.append_option(r.entry.transfer.as_deref());
        }
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(seq.finish()),
            Arc::new(time.finish()),
            Arc::new(principal.finish()),
            Arc::new(agency.finish()),
            Arc::new(purpose.finish()),
            Arc::new(statement.finish()),
            Arc::new(kind.finish()),
            Arc::new(tables.finish()),
            Arc::new(columns.finish()),
            Arc::new(grants.finish()),
            Arc::new(decision.finish()),
            Arc::new(reason.finish()),
            Arc::new(rows.finish()),
            Arc::new(digest.finish()),
            Arc::new(duration.finish()),
            Arc::new(recipient.finish()),
            Arc::new(export.finish()),
            Arc::new(guard.finish()),
            Arc::new(outcome.finish()),
            Arc::new(version.finish()),
            Arc::new(transfer.finish()),
        ];
        let schema = events_schema();
        let batch = RecordBatch::try_new(schema.clone(), arrays)?;
        Ok(Self {
            inner: MemTable::try_new(schema, vec![vec![batch]])?,
        })
    }
}

#[async_trait]
impl TableProvider for AuditEvents {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.inner.scan(state, projection, filters, limit).await
    }
}
