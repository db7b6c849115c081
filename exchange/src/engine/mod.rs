//! The exchange: catalog, policies, keys and audit log behind one entry point that runs a
//! statement as a principal for a purpose, enforces policy, and audits the outcome.

mod errors;

pub(crate) use errors::run_error;
use errors::{check_tables, map_error, not_granted};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use chrono::NaiveDate;
use datafusion::common::DataFusionError;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::source_as_provider;
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::collect;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;

use crate::audit::{AuditError, AuditLog, AuditOptions, Decision, Entry, TableUse};
use crate::catalog::{Catalog, CatalogError};
use crate::enforcement::{PrincipalSession, RawTable, SessionInputs};
use crate::keys::{KeyError, Keys, SigningKey};
use crate::masking::KeyRing;
use crate::policy::{PolicyError, PolicySet, Treatment};

/// Where the exchange finds its configuration, data, keys and state.
#[derive(Debug, Clone)]
pub struct ExchangeConfig {
    /// Directory holding `schemas/` and `policies/`.
    pub config_dir: PathBuf,
    /// Root of relative dataset locations.
    pub data_root: PathBuf,
    /// Directory of the audit log (and the REPL history).
    pub state_dir: PathBuf,
    /// Directory of the keys (`exchange keys init`).
    pub key_dir: PathBuf,
    /// Checkpoint and rotation intervals of the audit log.
    pub audit: AuditOptions,
    /// Memory limit of each query in bytes (DataFusion memory pool); None: unbounded.
    pub memory_limit: Option<usize>,
}

impl ExchangeConfig {
    /// A configuration with keys in `<config_dir>/keys` and default audit options.
    pub fn new(config_dir: PathBuf, data_root: PathBuf, state_dir: PathBuf) -> Self {
        Self {
            key_dir: crate::keys::default_dir(&config_dir),
            config_dir,
            data_root,
            state_dir,
            audit: AuditOptions::default(),
            memory_limit: None,
        }
    }

    /// The same configuration with keys in `key_dir`.
    pub fn with_key_dir(mut self, key_dir: PathBuf) -> Self {
        self.key_dir = key_dir;
        self
    }

    /// `schemas/` under the config dir.
    pub fn schemas_dir(&self) -> PathBuf {
        self.config_dir.join("schemas")
    }

    /// `policies/` under the config dir.
    pub fn policies_dir(&self) -> PathBuf {
        self.config_dir.join("policies")
    }

    /// The audit log's directory.
    pub fn audit_log(&self) -> PathBuf {
        self.state_dir.join("audit")
    }

    /// The public key file verifiers use.
    pub fn public_key_file(&self) -> PathBuf {
        self.key_dir.join(crate::keys::PUBLIC_FILE)
    }
}

/// Errors of opening the exchange.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The catalog does not load.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The policies do not load.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The key file is unusable.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The audit log is unusable.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// Why a statement returned no result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    /// Refused by policy; the reason names what and why, and leaks nothing.
    #[error("refused: {0}")]
    Refused(String),
    /// Allowed, but the statement is invalid or failed to run.
    #[error("error: {0}")]
    Failed(String),
    /// The audit record could not be written, so no result is returned.
    #[error("audit log unavailable, result withheld: {0}")]
    Audit(String),
}

/// What a statement returned.
#[derive(Debug, Clone)]
pub struct QueryOutput {
    /// Result schema.
    pub schema: SchemaRef,
    /// Result batches.
    pub batches: Vec<RecordBatch>,
    /// Rows returned.
    pub rows: u64,
    /// Tables and raw columns touched, with grants.
    pub tables: Vec<TableUse>,
    /// Group thresholds applied.
    pub thresholds: Vec<String>,
    /// Keyed digest (HMAC-SHA256) of the result.
    pub digest: String,
}

/// A visible column, for `\d TABLE`.
#[derive(Debug, Clone)]
pub struct VisibleColumn {
    /// Name.
    pub name: String,
    /// Arrow type after treatment.
    pub data_type: DataType,
    /// Treatment.
    pub treatment: Treatment,
}

/// The exchange.
pub struct Exchange {
    config: ExchangeConfig,
    catalog: Catalog,
    policies: PolicySet,
    keys: KeyRing,
    signer: Arc<SigningKey>,
    audit: AuditLog,
}

pub(crate) enum Kind {
    Query(Box<DFStatement>),
    Explain {
        verbose: bool,
        inner: Box<DFStatement>,
    },
    Describe(String),
}

impl Kind {
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Kind::Query(_) => "query",
            Kind::Explain { .. } => "explain",
            Kind::Describe(_) => "describe",
        }
    }
}

impl Exchange {
    /// Load catalog and policies, open keys and the audit log.
    pub fn open(config: ExchangeConfig) -> Result<Self, OpenError> {
        let catalog = Catalog::load(&config.schemas_dir())?;
        let policies = PolicySet::load(&config.policies_dir(), &catalog)?;
        let Keys { ring, signing } = Keys::load(&config.key_dir)?;
        let signer = Arc::new(signing);
        let audit = AuditLog::open(&config.audit_log(), signer.clone(), config.audit)?;
        Ok(Self {
            config,
            catalog,
            policies,
            keys: ring,
            signer,
            audit,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ExchangeConfig {
        &self.config
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The policies.
    pub fn policies(&self) -> &PolicySet {
        &self.policies
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The signing key (export manifests).
    pub fn signer(&self) -> &SigningKey {
        &self.signer
    }

    /// The HMAC key ring.
    pub fn key_ring(&self) -> &KeyRing {
        &self.keys
    }

    fn today() -> NaiveDate {
        chrono::Utc::now().date_naive()
    }

    /// The agency of a declared principal.
    pub fn agency_of(&self, principal: &str) -> Option<String> {
        self.policies.principal(principal).map(|p| p.agency.clone())
    }

    /// The session of a principal for a purpose, after checking both.
    pub fn session(
        &self,
        principal: &str,
        purpose: Option<&str>,
    ) -> Result<PrincipalSession, QueryError> {
        self.scoped_session(principal, purpose, None)
    }

    /// A session whose pseudonyms are keyed for `token_scope` instead of the principal's
    /// agency (exports, keyed per recipient).
    pub fn scoped_session(
        &self,
        principal: &str,
        purpose: Option<&str>,
        token_scope: Option<&str>,
    ) -> Result<PrincipalSession, QueryError> {
        let Some(p) = self.policies.principal(principal) else {
            return Err(QueryError::Refused(format!(
                "unknown principal '{principal}'"
            )));
        };
        let Some(purpose) = purpose.filter(|s| !s.is_empty()) else {
            return Err(QueryError::Refused(format!(
                "no purpose declared: every query must state why it is asked (purposes of {}: {})",
                p.name,
                p.purposes.join(", ")
            )));
        };
        if self.policies.purpose(purpose).is_none() {
            return Err(QueryError::Refused(format!("unknown purpose '{purpose}'")));
        }
        if !p.purposes.iter().any(|x| x == purpose) {
            return Err(QueryError::Refused(format!(
                "principal {} may not declare purpose {purpose} (declared purposes: {})",
                p.name,
                p.purposes.join(", ")
            )));
        }
        let inputs = SessionInputs {
            catalog: &self.catalog,
            policies: &self.policies,
            keys: &self.keys,
            data_root: &self.config.data_root,
            today: Self::today(),
            audit_log: self.audit.path(),
            token_scope,
            // Exports (keyed for a recipient) carry their rows' subjects for the guard.
            subjects: token_scope.is_some(),
            memory_limit: self.config.memory_limit,
        };
        PrincipalSession::build(&inputs, p, purpose)
            .map_err(|e| QueryError::Failed(format!("session could not be built: {e}")))
    }

    /// Visible columns of a table for a session, or None when not granted.
    pub fn visible_columns(session: &PrincipalSession, table: &str) -> Option<Vec<VisibleColumn>> {
        let spec = session.tables.get(table)?;
        Some(
            spec.access
                .columns
                .iter()
                .zip(spec.visible_schema.fields())
                .map(|(c, f)| VisibleColumn {
                    name: c.name.clone(),
                    data_type: f.data_type().clone(),
                    treatment: c.treatment.clone(),
                })
                .collect(),
        )
    }

    /// The result schema of a query as `principal` for `purpose`, planned under policy but
    /// not run (prepared statements). A refusal is audited (kind `prepare`).
    pub async fn query_schema(
        &self,
        principal: &str,
        purpose: Option<&str>,
        sql: &str,
    ) -> Result<SchemaRef, QueryError> {
        let started = Instant::now();
        let mut named = Vec::new();
        let outcome = async {
            let session = self.session(principal, purpose)?;
            match classify(&session, sql)? {
                Kind::Query(stmt) => plan_query(&session, *stmt, &mut named)
                    .await
                    .map(|p| p.physical.schema()),
                _ => Err(QueryError::Refused(
                    "only queries (SELECT, WITH, VALUES) can be prepared".into(),
                )),
            }
        }
        .await;
        if outcome.is_err() {
            let (decision, reason) = audit_decision(&outcome);
            self.audit
                .append(Entry {
                    principal: principal.to_string(),
                    agency: self.agency_of(principal),
                    purpose: purpose.map(str::to_string),
                    statement: sql.to_string(),
                    kind: "prepare".into(),
                    tables: named,
                    decision,
                    reason,
                    duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    ..Entry::default()
                })
                .map_err(|e| QueryError::Audit(e.to_string()))?;
        }
        outcome
    }

    /// Run one statement as `principal` for `purpose`, and audit it whatever happens.
    pub async fn execute(
        &self,
        principal: &str,
        purpose: Option<&str>,
        sql: &str,
    ) -> Result<QueryOutput, QueryError> {
        let started = Instant::now();
        let agency = self.agency_of(principal);
        let mut kind_label = "other";
        let mut named_tables = Vec::new();
        // A panic anywhere below is a bug, but never one that skips the audit record or
        // takes the process down: it fails the statement, audited like any failure.
        let attempt = std::panic::AssertUnwindSafe(async {
            match self.session(principal, purpose) {
                Err(e) => Err(e),
                Ok(session) => match classify(&session, sql) {
                    Err(e) => Err(e),
                    Ok(kind) => {
                        kind_label = kind.label();
                        let (outcome, named) = run(&session, kind).await;
                        named_tables = named;
                        outcome
                    }
                },
            }
        });
        let outcome = match futures::FutureExt::catch_unwind(attempt).await {
            Ok(outcome) => outcome,
            Err(_) => Err(QueryError::Failed(
                "internal error: the exchange failed while handling this statement (a bug, recorded in the audit log); nothing was returned".into(),
            )),
        };
        let outcome = outcome.map(|mut o| {
            o.digest = digest_batches(&self.keys.digest_key(), &o.schema, &o.batches);
            o
        });
        let (decision, reason) = audit_decision(&outcome);
        let out = outcome.as_ref().ok();
        let entry = Entry {
            principal: principal.to_string(),
            agency,
            purpose: purpose.map(str::to_string),
            statement: sql.to_string(),
            kind: kind_label.to_string(),
            tables: out.map(|o| o.tables.clone()).unwrap_or(named_tables),
            thresholds: out.map(|o| o.thresholds.clone()).unwrap_or_default(),
            decision,
            reason,
            rows: out.map(|o| o.rows),
            result_digest: out.map(|o| o.digest.clone()),
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            ..Entry::default()
        };
        self.audit
            .append(entry)
            .map_err(|e| QueryError::Audit(e.to_string()))?;
        outcome
    }
}

/// Limits on a statement's size. DataFusion plans and evaluates expressions recursively: a
/// deep enough one overflows the stack and aborts the process, which no handler can catch
/// (and whether evaluation reaches it can depend on hidden rows). Planning time also grows
/// faster than the size. Real queries stay far below these.
const MAX_SQL_BYTES: usize = 1 << 20;
const MAX_EXPR_DEPTH: usize = 100;
const MAX_EXPR_NODES: usize = 100_000;
/// Joins, set operations, tables and (sub)queries: DataFusion's plans, and its optimizer's
/// recursion over them, grow with each.
const MAX_SET_OPERATIONS: usize = 64;
const MAX_JOINS: usize = 64;
const MAX_NESTING: usize = 64;
const MAX_TABLES: usize = 128;
const MAX_QUERIES: usize = 128;

/// Refuse, from the tokens alone (before the parser recurses), a statement with too many set
/// operations or joins, or parentheses nested too deep.
fn check_tokens(sql: &str) -> Result<(), QueryError> {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::keywords::Keyword;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else {
        // The parser will say what is wrong.
        return Ok(());
    };
    let (mut set_ops, mut joins, mut depth, mut deepest) = (0usize, 0usize, 0usize, 0usize);
    for t in &tokens {
        match t {
            Token::Word(w) => match w.keyword {
                Keyword::UNION | Keyword::INTERSECT | Keyword::EXCEPT | Keyword::MINUS => {
                    set_ops += 1
                }
                Keyword::JOIN => joins += 1,
                _ => {}
            },
            Token::LParen => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            Token::RParen => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    let limit = |what: &str, n: usize, max: usize| -> Result<(), QueryError> {
        if n > max {
            Err(QueryError::Refused(format!(
                "the statement has {n} {what}, more than {max}; split it into several statements"
            )))
        } else {
            Ok(())
        }
    };
    limit(
        "set operations (UNION, INTERSECT, EXCEPT)",
        set_ops,
        MAX_SET_OPERATIONS,
    )?;
    limit("joins", joins, MAX_JOINS)?;
    limit("levels of nested parentheses", deepest, MAX_NESTING)
}

/// Refuse a statement whose expressions nest deeper or count more than the limits.
fn check_size(stmt: &DFStatement) -> Result<(), QueryError> {
    use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, Visit, Visitor};
    use std::ops::ControlFlow;
    #[derive(Default)]
    struct Size {
        depth: usize,
        deepest: usize,
        nodes: usize,
        tables: usize,
        queries: usize,
    }
    impl Visitor for Size {
        type Break = ();
        fn pre_visit_table_factor(
            &mut self,
            _: &datafusion::sql::sqlparser::ast::TableFactor,
        ) -> ControlFlow<()> {
            self.tables += 1;
            if self.tables > MAX_TABLES {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
        fn pre_visit_query(
            &mut self,
            _: &datafusion::sql::sqlparser::ast::Query,
        ) -> ControlFlow<()> {
            self.queries += 1;
            if self.queries > MAX_QUERIES {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
        fn pre_visit_expr(&mut self, _: &SqlExpr) -> ControlFlow<()> {
            self.depth += 1;
            self.nodes += 1;
            self.deepest = self.deepest.max(self.depth);
            // Stop before going deeper: the visit itself recurses.
            if self.deepest > MAX_EXPR_DEPTH || self.nodes > MAX_EXPR_NODES {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
        fn post_visit_expr(&mut self, _: &SqlExpr) -> ControlFlow<()> {
            self.depth = self.depth.saturating_sub(1);
            ControlFlow::Continue(())
        }
    }
    let inner = match stmt {
        DFStatement::Statement(s) => Some(s.as_ref()),
        DFStatement::Explain(e) => match e.statement.as_ref() {
            DFStatement::Statement(s) => Some(s.as_ref()),
            _ => None,
        },
        _ => None,
    };
    let mut size = Size::default();
    if let Some(s) = inner {
        let _ = s.visit(&mut size);
    }
    if size.deepest > MAX_EXPR_DEPTH {
        return Err(QueryError::Refused(format!(
            "the statement's expressions nest more than {MAX_EXPR_DEPTH} levels deep; split the computation"
        )));
    }
    if size.nodes > MAX_EXPR_NODES {
        return Err(QueryError::Refused(format!(
            "the statement has more than {MAX_EXPR_NODES} expressions; split it"
        )));
    }
    if size.tables > MAX_TABLES {
        return Err(QueryError::Refused(format!(
            "the statement reads more than {MAX_TABLES} tables; split it"
        )));
    }
    if size.queries > MAX_QUERIES {
        return Err(QueryError::Refused(format!(
            "the statement has more than {MAX_QUERIES} queries and subqueries; split it"
        )));
    }
    Ok(())
}

pub(crate) fn classify(session: &PrincipalSession, sql: &str) -> Result<Kind, QueryError> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(QueryError::Refused(format!(
            "the statement is longer than {MAX_SQL_BYTES} bytes"
        )));
    }
    check_tokens(sql)?;
    let mut statements = session
        .parse(sql)
        .map_err(|e| QueryError::Failed(e.strip_backtrace()))?;
    if let Some(s) = statements.front() {
        check_size(s)?;
    }
    if statements.len() != 1 {
        return Err(QueryError::Refused(format!(
            "exactly one statement per request, got {}",
            statements.len()
        )));
    }
    let Some(statement) = statements.pop_front() else {
        return Err(QueryError::Refused("empty statement".into()));
    };
    match statement {
        DFStatement::Statement(s) => match *s {
            SqlStatement::Query(_) => Ok(Kind::Query(Box::new(DFStatement::Statement(s)))),
            SqlStatement::ExplainTable { table_name, .. } => {
                Ok(Kind::Describe(table_name.to_string()))
            }
            SqlStatement::Explain { .. } => Err(QueryError::Refused(
                "this EXPLAIN form is not supported; use EXPLAIN [VERBOSE] SELECT ...".into(),
            )),
            SqlStatement::ShowTables { .. }
            | SqlStatement::ShowColumns { .. }
            | SqlStatement::ShowVariable { .. }
            | SqlStatement::ShowVariables { .. }
            | SqlStatement::ShowFunctions { .. }
            | SqlStatement::ShowCreate { .. }
            | SqlStatement::ShowSchemas { .. }
            | SqlStatement::ShowDatabases { .. } => Err(QueryError::Refused(
                "SHOW is not available: list your tables with \\d (REPL) or DESCRIBE agency.table"
                    .into(),
            )),
            SqlStatement::Set(_) => Err(QueryError::Refused(
                "SET is refused: session settings are fixed by the exchange".into(),
            )),
            SqlStatement::Copy { .. } => Err(QueryError::Refused(
                "COPY is refused: results leave only as query results or signed exports".into(),
            )),
            other => Err(QueryError::Refused(format!(
                "only queries (SELECT, WITH, VALUES), EXPLAIN and DESCRIBE may run; refused: {}",
                statement_keyword(&other)
            ))),
        },
        DFStatement::Explain(e) => {
            if e.options.analyze {
                return Err(QueryError::Refused(
                    "EXPLAIN ANALYZE is refused: its row counts would reveal data before policy thresholds apply".into(),
                ));
            }
            match e.statement.as_ref() {
                DFStatement::Statement(s) if matches!(**s, SqlStatement::Query(_)) => {
                    Ok(Kind::Explain {
                        verbose: e.options.verbose,
                        inner: e.statement,
                    })
                }
                _ => Err(QueryError::Refused(
                    "EXPLAIN applies to queries only".into(),
                )),
            }
        }
        DFStatement::CreateExternalTable(_) => Err(QueryError::Refused(
            "CREATE EXTERNAL TABLE is refused: the exchange reads only its own catalog".into(),
        )),
        DFStatement::CopyTo(_) => Err(QueryError::Refused(
            "COPY is refused: results leave only as query results or signed exports".into(),
        )),
        DFStatement::Reset(_) => Err(QueryError::Refused(
            "RESET is refused: session settings are fixed by the exchange".into(),
        )),
    }
}

fn statement_keyword(s: &SqlStatement) -> String {
    let text = s.to_string();
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
        .to_uppercase()
}

/// Whether a plan read any table the principal does not see whole and raw.
fn reads_governed_data(
    session: &PrincipalSession,
    report: &crate::enforcement::EnforcementReport,
) -> bool {
    report.scans.iter().any(|s| {
        session.tables.get(&s.table).is_none_or(|spec| {
            spec.access.row_filter.is_some()
                || spec.access.columns.len() != spec.dataset.columns.len()
                || spec
                    .access
                    .columns
                    .iter()
                    .any(|c| c.treatment != Treatment::Plain)
        })
    })
}

/// A plan the locked SQL options reject (DDL, DML, statements).
fn refused_statement(_: DataFusionError) -> QueryError {
    QueryError::Refused("only queries (SELECT, WITH, VALUES) may run".into())
}

fn sql_options() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// A query planned under policy, ready to run.
pub(crate) struct Planned {
    /// The optimized logical plan (policy applied).
    pub optimized: LogicalPlan,
    /// The physical plan.
    pub physical: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    /// Tables and raw columns read, with grants.
    pub tables: Vec<TableUse>,
    /// Group thresholds applied.
    pub thresholds: Vec<String>,
    /// Whether it reads data the principal does not see whole and raw.
    pub governed: bool,
}

/// Plan a query statement as the session's principal. `named` receives the tables the
/// statement names, so that a refusal is audited with them.
pub(crate) async fn plan_query(
    session: &PrincipalSession,
    stmt: DFStatement,
    named: &mut Vec<TableUse>,
) -> Result<Planned, QueryError> {
    let state = session.ctx.state();
    check_tables(session, &stmt)?;
    let plan = state.statement_to_plan(stmt).await.map_err(map_error)?;
    *named = governed_scans(&plan);
    sql_options()
        .verify_plan(&plan)
        .map_err(refused_statement)?;
    let optimized = state.optimize(&plan).map_err(map_error)?;
    if let Some(why) = crate::enforcement::recheck_optimized(&optimized) {
        return Err(QueryError::Refused(why));
    }
    let report = session.report.lock().map(|r| r.clone()).unwrap_or_default();
    let governed = reads_governed_data(session, &report);
    let physical = state
        .query_planner()
        .create_physical_plan(&optimized, &state)
        .await
        .map_err(|e| run_error(governed, e))?;
    Ok(Planned {
        tables: tables_touched(&optimized, &report.scans),
        thresholds: report
            .thresholds
            .iter()
            .map(|(c, k)| format!("{c} >= {k} distinct entities"))
            .collect(),
        optimized,
        physical,
        governed,
    })
}

/// Run a classified statement. Besides the outcome, returns the tables the statement
/// named (with their grants), so that refused statements are audited with them too.
async fn run(
    session: &PrincipalSession,
    kind: Kind,
) -> (Result<QueryOutput, QueryError>, Vec<TableUse>) {
    let mut named = Vec::new();
    let outcome = run_inner(session, kind, &mut named).await;
    (outcome, named)
}

async fn run_inner(
    session: &PrincipalSession,
    kind: Kind,
    named: &mut Vec<TableUse>,
) -> Result<QueryOutput, QueryError> {
    let state = session.ctx.state();
    match kind {
        Kind::Query(stmt) => {
            let planned = plan_query(session, *stmt, named).await?;
            let schema = planned.physical.schema();
            let governed = planned.governed;
            let batches = collect(planned.physical, session.ctx.task_ctx())
                .await
                .map_err(|e| run_error(governed, e))?;
            let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
            Ok(QueryOutput {
                schema,
                batches,
                rows,
                tables: planned.tables,
                thresholds: planned.thresholds,
                digest: String::new(),
            })
        }
        Kind::Explain { verbose, inner } => {
            check_tables(session, &inner)?;
            let plan = state.statement_to_plan(*inner).await.map_err(map_error)?;
            *named = governed_scans(&plan);
            sql_options()
                .verify_plan(&plan)
                .map_err(refused_statement)?;
            // Enforce as the query would be: a refused query has a refused EXPLAIN.
            let optimized = state.optimize(&plan).map_err(map_error)?;
            let report = session.report.lock().map(|r| r.clone()).unwrap_or_default();
            let text = render_explain(session, &plan, &report, verbose);
            text_output(
                "plan",
                text.lines().map(str::to_string).collect(),
                tables_touched(&optimized, &report.scans),
            )
        }
        Kind::Describe(name) => {
            let key = name
                .strip_prefix("exchange.")
                .unwrap_or(&name)
                .to_lowercase();
            let Some(cols) = Exchange::visible_columns(session, &key) else {
                return Err(QueryError::Refused(not_granted(session, &key)));
            };
            let schema = Arc::new(Schema::new(vec![
                Field::new("column_name", DataType::Utf8, false),
                Field::new("data_type", DataType::Utf8, false),
                Field::new("treatment", DataType::Utf8, false),
            ]));
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from_iter_values(
                        cols.iter().map(|c| c.name.clone()),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        cols.iter().map(|c| c.data_type.to_string()),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        cols.iter().map(|c| c.treatment.to_string()),
                    )),
                ],
            )
            .map_err(|e| QueryError::Failed(e.to_string()))?;
            let digest = String::new();
            Ok(QueryOutput {
                schema,
                rows: batch.num_rows() as u64,
                batches: vec![batch],
                tables: vec![],
                thresholds: vec![],
                digest,
            })
        }
    }
}

fn text_output(
    column: &str,
    lines: Vec<String>,
    tables: Vec<TableUse>,
) -> Result<QueryOutput, QueryError> {
    let schema = Arc::new(Schema::new(vec![Field::new(column, DataType::Utf8, false)]));
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(lines))])
        .map_err(|e| QueryError::Failed(e.to_string()))?;
    let digest = String::new();
    Ok(QueryOutput {
        schema,
        rows: batch.num_rows() as u64,
        batches: vec![batch],
        tables,
        thresholds: vec![],
        digest,
    })
}

/// The governed EXPLAIN: the plan as the principal wrote it against their visible tables,
/// then what each grant does. Raw statistics, keys and other agencies' row filters never
/// appear: the enforced plan itself is not shown.
fn render_explain(
    session: &PrincipalSession,
    plan: &LogicalPlan,
    report: &crate::enforcement::EnforcementReport,
    verbose: bool,
) -> String {
    let mut out = format!(
        "Query plan for {} ({}), purpose {}\n",
        session.principal.name, session.principal.agency, session.purpose
    );
    out.push_str(&plan.display_indent().to_string());
    out.push_str("\n\nPolicies applied:\n");
    let mut seen = Vec::new();
    for scan in &report.scans {
        if seen.contains(&scan.table) {
            continue;
        }
        seen.push(scan.table.clone());
        let Some(spec) = session.tables.get(&scan.table) else {
            continue;
        };
        out.push_str(&format!("  {}  grant {}\n", scan.table, scan.grant_ref));
        match &spec.access.row_filter {
            None => out.push_str("    rows: all\n"),
            Some(f) if spec.access.owner => out.push_str(&format!("    rows: {}\n", f.sql)),
            Some(_) => out.push_str(&format!(
                "    rows: filtered by a row filter of {} (not shown)\n",
                spec.dataset.agency
            )),
        }
        if let Some(k) = spec.access.min_group {
            out.push_str(&format!(
                "    rows leave only aggregated, in groups of at least {k} entities; each row counts once, in one group, in one aggregate of the statement (docs/aggregates.md)\n"
            ));
        }
        for (c, field) in spec.access.columns.iter().zip(spec.visible_schema.fields()) {
            if verbose {
                out.push_str(&format!(
                    "    {}: {} as {}\n",
                    c.name,
                    field.data_type(),
                    c.treatment
                ));
            } else {
                out.push_str(&format!("    {}: {}\n", c.name, c.treatment));
            }
        }
    }
    for (column, k) in &report.thresholds {
        out.push_str(&format!(
            "  groups with fewer than {k} distinct entities behind {column} are suppressed\n"
        ));
    }
    out
}

/// Tables and raw columns read by the enforced, optimized plan (subqueries included).
fn tables_touched(plan: &LogicalPlan, scans: &[crate::enforcement::ScanUse]) -> Vec<TableUse> {
    let mut by_table: BTreeMap<String, TableUse> = BTreeMap::new();
    let grant_of = |t: &str| {
        scans
            .iter()
            .find(|s| s.table == t)
            .map(|s| s.grant_ref.clone())
            .unwrap_or_default()
    };
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Ok(provider) = source_as_provider(&scan.source)
            && let Some(raw) = provider.downcast_ref::<RawTable>()
        {
            let table = scan.table_name.to_string();
            let entry = by_table.entry(table.clone()).or_insert_with(|| TableUse {
                grant: grant_of(&table),
                table,
                columns: vec![],
            });
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
        Ok(TreeNodeRecursion::Continue)
    });
    // Tables whose scans the optimizer removed still count as touched.
    for s in scans {
        by_table.entry(s.table.clone()).or_insert_with(|| TableUse {
            table: s.table.clone(),
            grant: s.grant_ref.clone(),
            columns: vec![],
        });
    }
    by_table.into_values().collect()
}

/// Tables the (unanalyzed) plan names, with the grants that apply.
fn governed_scans(plan: &LogicalPlan) -> Vec<TableUse> {
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
                    grant: g.spec().access.grant_ref.clone(),
                    columns: vec![],
                });
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

/// Replace quoted strings and long digit runs of an error text with '…'.
/// The decision and reason an outcome is audited with. Error texts may quote values; the
/// log keeps them out of auditors' sight.
pub(crate) fn audit_decision<T>(outcome: &Result<T, QueryError>) -> (Decision, Option<String>) {
    match outcome {
        Ok(_) => (Decision::Allowed, None),
        Err(QueryError::Refused(r)) => (Decision::Refused, Some(r.clone())),
        Err(QueryError::Failed(r)) | Err(QueryError::Audit(r)) => {
            (Decision::Failed, Some(redact_values(r)))
        }
    }
}

pub(crate) fn redact_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut quote: Option<char> = None;
    let mut digits = String::new();
    let flush = |digits: &mut String, out: &mut String| {
        if digits.len() >= 4 {
            out.push('…');
        } else {
            out.push_str(digits);
        }
        digits.clear();
    };
    for c in text.chars() {
        match quote {
            Some(q) if c == q => {
                out.push('…');
                out.push(c);
                quote = None;
            }
            Some(_) => {}
            None if c == '\'' || c == '"' => {
                flush(&mut digits, &mut out);
                out.push(c);
                quote = Some(c);
            }
            None if c.is_ascii_digit() => digits.push(c),
            None => {
                flush(&mut digits, &mut out);
                out.push(c);
            }
        }
    }
    if quote.is_some() {
        out.push('…');
    }
    flush(&mut digits, &mut out);
    out
}

/// HMAC-SHA256 (under the exchange's digest key) over the Arrow IPC stream of the batches:
/// the exchange can later prove a result, while nobody without the key (auditors included)
/// can confirm a guessed result from the log.
fn digest_batches(key: &ring::hmac::Key, schema: &SchemaRef, batches: &[RecordBatch]) -> String {
    struct Hasher(ring::hmac::Context);
    impl std::io::Write for Hasher {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut hasher = Hasher(ring::hmac::Context::with_key(key));
    if let Ok(mut w) = arrow::ipc::writer::StreamWriter::try_new(&mut hasher, schema) {
        for b in batches {
            let _ = w.write(b);
        }
        let _ = w.finish();
    }
    hex::encode(hasher.0.sign().as_ref())
}

/// Resolve a path that may be relative to the current directory.
pub fn absolute(p: &Path) -> PathBuf {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    joined
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}
