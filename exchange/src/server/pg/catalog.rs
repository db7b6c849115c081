//! The catalog a Postgres client sees: pg_catalog and information_schema over the tables
//! and columns its principal may see for the declared purpose, and nothing else.
//!
//! Clients (psql's `\dt` and `\d`, DBeaver's navigator, Metabase's sync) read pg_catalog
//! with Postgres-specific SQL. Those statements run in a session of their own that holds
//! no data at all: each visible table is an empty table of its visible schema (hidden
//! columns absent, treated ones as the principal sees them), so whatever such a statement
//! asks, it can learn no more than DESCRIBE tells, and no row count. Without a declared
//! purpose the catalog is empty. datafusion-pg-catalog provides the pg_catalog tables and
//! functions and the parser that accepts the clients' dialect.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::MemorySchemaProvider;
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::memory_pool::GreedyMemoryPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use futures::StreamExt;

use crate::enforcement::CATALOG;
use crate::engine::Exchange;

/// Memory of one catalog statement.
const MEMORY: usize = 256 << 20;

/// Largest result of one catalog statement, in bytes of Arrow data.
const MAX_RESULT_BYTES: usize = 64 << 20;

/// Catalog sessions kept, by principal and purpose.
const MAX_KEPT: usize = 256;

/// A data-free session answering catalog statements for one principal and purpose.
pub(crate) struct CatalogSession {
    ctx: SessionContext,
}

/// Whose catalog: principal, purpose, day, policy version.
type Key = (String, Option<String>, i64, String);

/// Catalog sessions by (principal, purpose, day, policy version): built once, as a
/// principal's session is; a reload makes new ones.
#[derive(Default)]
pub(crate) struct CatalogSessions {
    kept: Mutex<HashMap<Key, Arc<CatalogSession>>>,
}

impl CatalogSessions {
    /// The catalog session of `principal` for `purpose` (None, or a purpose the principal
    /// may not declare: an empty catalog).
    pub(crate) async fn get(
        &self,
        ex: &Exchange,
        principal: &str,
        purpose: Option<&str>,
    ) -> Result<Arc<CatalogSession>, String> {
        // Grants expire by day: so do catalog sessions.
        let day = chrono::Utc::now().timestamp() / 86_400;
        let version = ex.governance().version.clone();
        let key = (
            principal.to_string(),
            purpose.map(str::to_string),
            day,
            version,
        );
        if let Some(s) = self.kept.lock().ok().and_then(|k| k.get(&key).cloned()) {
            return Ok(s);
        }
        let session = Arc::new(CatalogSession::build(ex, principal, purpose).await?);
        if let Ok(mut kept) = self.kept.lock() {
            if kept.len() >= MAX_KEPT {
                kept.clear();
            }
            kept.insert(key, Arc::clone(&session));
        }
        Ok(session)
    }
}

impl CatalogSession {
    async fn build(ex: &Exchange, principal: &str, purpose: Option<&str>) -> Result<Self, String> {
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema(CATALOG, "public")
            .with_create_default_catalog_and_schema(true);
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(GreedyMemoryPool::new(MEMORY)))
            .build_arc()
            .map_err(|e| e.to_string())?;
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        let catalog = ctx
            .catalog(CATALOG)
            .ok_or_else(|| "the exchange catalog is missing".to_string())?;
        // No purpose, or one the principal may not declare: an empty catalog.
        let visible = ex
            .visible_tables(principal, purpose)
            .await
            .unwrap_or_default();
        for (schema, table, visible) in visible {
            if catalog.schema(&schema).is_none() {
                catalog
                    .register_schema(&schema, Arc::new(MemorySchemaProvider::new()))
                    .map_err(|e| e.to_string())?;
            }
            let empty = MemTable::try_new(visible, vec![vec![]]).map_err(|e| e.to_string())?;
            if let Some(s) = catalog.schema(&schema) {
                s.register_table(table, Arc::new(empty))
                    .map_err(|e| e.to_string())?;
            }
        }
        setup_pg_catalog(&ctx, CATALOG, EmptyContextProvider).map_err(|e| e.to_string())?;
        // Functions allocate outside any pool: bounded as in a principal's session.
        let guard = crate::enforcement::guard_functions(&ctx, ex.config().memory_budget);
        ctx.add_analyzer_rule(Arc::new(guard));
        Ok(Self { ctx })
    }

    /// The plan of a catalog statement in the clients' dialect, queries only.
    async fn plan(&self, sql: &str) -> Result<LogicalPlan, String> {
        let sql = regproc_literals_as_names(sql);
        let mut statements = PostgresCompatibilityParser::new()
            .parse(&sql)
            .map_err(|e| format!("syntax error: {e}"))?;
        if statements.len() != 1 {
            return Err(format!(
                "exactly one statement per request, got {}",
                statements.len()
            ));
        }
        let statement = statements.remove(0);
        let plan = self
            .ctx
            .state()
            .statement_to_plan(DFStatement::Statement(Box::new(statement)))
            .await
            .map_err(|e| e.strip_backtrace())?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|e| e.strip_backtrace())?;
        Ok(plan)
    }

    /// Its parameters' types and its result's schema.
    pub(crate) async fn describe(&self, sql: &str) -> Result<(Vec<DataType>, SchemaRef), String> {
        let plan = self.plan(sql).await?;
        let types = plan
            .get_parameter_types()
            .map_err(|e| e.strip_backtrace())?;
        let params = (1..=types.len())
            .map(|i| {
                types
                    .get(&format!("${i}"))
                    .cloned()
                    .flatten()
                    .unwrap_or(DataType::Utf8)
            })
            .collect();
        Ok((params, Arc::new(plan.schema().as_arrow().clone())))
    }

    /// Run a catalog statement, its parameters bound.
    pub(crate) async fn run(
        &self,
        sql: &str,
        params: &[ScalarValue],
    ) -> Result<(SchemaRef, Vec<RecordBatch>), String> {
        let mut plan = self.plan(sql).await?;
        if !params.is_empty() {
            plan = plan
                .with_param_values(params.to_vec())
                .map_err(|e| e.strip_backtrace())?;
        }
        let df = self
            .ctx
            .execute_logical_plan(plan)
            .await
            .map_err(|e| e.strip_backtrace())?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let mut stream = df.execute_stream().await.map_err(|e| e.strip_backtrace())?;
        let mut batches = Vec::new();
        let mut bytes = 0usize;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| e.strip_backtrace())?;
            bytes = bytes.saturating_add(batch.get_array_memory_size());
            if bytes > MAX_RESULT_BYTES {
                return Err(format!(
                    "a catalog statement's result is limited to {} MiB",
                    MAX_RESULT_BYTES >> 20
                ));
            }
            batches.push(batch);
        }
        Ok((schema, batches))
    }
}

/// `'pg_catalog.array_in'::regproc` as `'array_in'`: pg_catalog shows regproc columns
/// (`pg_type.typinput`) by function name, and the name of a function is what such a
/// literal names. PgJDBC compares them so when DBeaver lists schemas; as an oid the
/// comparison fails. Text that does not parse is left to the parser to reject.
fn regproc_literals_as_names(sql: &str) -> String {
    use datafusion::sql::sqlparser::ast::{Expr, Value, visit_expressions_mut};
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;
    let Ok(mut statements) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        return sql.to_string();
    };
    let mut changed = false;
    for statement in &mut statements {
        let _ = visit_expressions_mut(statement, |e| {
            if let Expr::Cast {
                expr, data_type, ..
            } = e
                && data_type
                    .to_string()
                    .to_lowercase()
                    .trim_start_matches("pg_catalog.")
                    == "regproc"
                && let Expr::Value(v) = expr.as_ref()
                && let Value::SingleQuotedString(name) = &v.value
            {
                let bare = name.rsplit('.').next().unwrap_or(name).to_string();
                *e = Expr::value(Value::SingleQuotedString(bare));
                changed = true;
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
    }
    if !changed {
        return sql.to_string();
    }
    statements
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
