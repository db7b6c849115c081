//! The exchange: catalog, policies, keys and audit log behind one entry point that runs a
//! statement as a principal for a purpose, enforces policy, and audits the outcome.

mod check;
mod classify;
mod digest;
mod errors;
mod explain;
mod governance;
mod levels;
mod limits;
mod lineage;
mod memory;
mod outcome;
mod registers;
mod reload;
mod run;
mod served;
mod stream;
mod threads;

pub use check::{CheckReport, Finding, Severity, check};
pub(crate) use classify::{Kind, classify};
use digest::Digest;
pub use digest::result_digest;
pub(crate) use errors::run_error;
pub use governance::{Governance, version_of};
pub use memory::{Budget, CountingAllocator, live_bytes};
pub(crate) use memory::{BudgetedPool, charge_constant, counting_constants};
pub(crate) use outcome::{audit_decision, redact_values};
pub use reload::{ReloadError, ReloadTrigger, Reloaded, spawn_reloader};
use run::{Begun, run};
pub(crate) use run::{Planned, plan_query};
use stream::Open;
pub use stream::QueryStream;
pub(crate) use threads::execute as execute_on_own_threads;
pub(crate) use threads::run_within as run_on_own_threads;

use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use chrono::NaiveDate;
use datafusion::common::ScalarValue;

use crate::audit::{AuditError, AuditLog, Entry, StatementKind, StreamStatus, TableUse};
use crate::catalog::CatalogError;
use crate::config::ExchangeConfig;
use crate::enforcement::{PrincipalSession, SessionInputs};
use crate::keys::{KeyError, Keys, SigningKey};
use crate::masking::KeyRing;
use crate::policy::{PolicyError, Treatment};

/// A statement described before it runs ([`Exchange::describe_statement`]).
#[derive(Debug, Clone)]
pub struct Described {
    /// The types of its parameters `$1`, `$2`, ... in order.
    pub params: Vec<DataType>,
    /// The schema of its result.
    pub schema: SchemaRef,
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
    /// A setting cannot be used.
    #[error("{0}")]
    Settings(String),
}

/// Why a statement returned no result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    /// Refused by policy; the reason names what and why, and leaks nothing.
    #[error("refused: {0}")]
    Refused(String),
    /// Allowed, but the statement is invalid, cannot be planned, or its output cannot be
    /// written.
    #[error("error: {0}")]
    Failed(String),
    /// Allowed and planned, but it failed while running. Over governed data the message
    /// says only the kind: an error text can quote a value the policy hides.
    #[error("error: {message}")]
    Run {
        /// What went wrong, told by the error's type (never by its text).
        kind: FailureKind,
        /// What the principal is told.
        message: String,
    },
    /// The audit record could not be written, so no result is returned.
    #[error("audit log unavailable, result withheld: {0}")]
    Audit(String),
}

/// The kind of a failure while running, told by the error's DataFusion or Arrow type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// A value could not be converted (a cast or a parse).
    Cast,
    /// A division by zero.
    DivideByZero,
    /// An arithmetic overflow.
    Overflow,
    /// The query exceeded its memory limit.
    Resources,
    /// A data file could not be read: the operator's side, not the query's.
    Unreadable,
    /// A worker of the cluster failed or could not be reached: the operator's side.
    Worker,
    /// Any other failure of an expression on a value.
    Other,
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

/// The enforced plans of a query ([`Exchange::plan`]).
#[derive(Debug, Clone)]
pub struct QueryPlan {
    /// The optimized logical plan, policy applied.
    pub logical: datafusion::logical_expr::LogicalPlan,
    /// The physical plan.
    pub physical: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
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

/// What a cached session is for. Policies and schemas are loaded once per [`Exchange`];
/// the day is in the key because grants expire by day; data files are listed and their
/// statistics checked by each statement.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SessionKey {
    version: String,
    principal: String,
    purpose: String,
    token_scope: Option<String>,
    today: NaiveDate,
}

impl Exchange {
    /// Write the started record `entry` of a streamed statement (durable before any batch
    /// leaves) and open its stream; the completion record repeats `head`'s principal,
    /// agency, purpose and kind.
    pub(crate) fn open_stream(
        &self,
        entry: Entry,
        head: Entry,
        started: Instant,
        plan: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
        task: Arc<datafusion::execution::TaskContext>,
        governed: bool,
    ) -> Result<QueryStream, QueryError> {
        let (tables, thresholds) = (entry.tables.clone(), entry.thresholds.clone());
        let record = self
            .audit
            .append(Entry {
                stream: Some(StreamStatus::Started),
                ..entry.timed(started)
            })
            .map_err(|e| QueryError::Audit(e.to_string()))?;
        let digest = Digest::new(&self.keys.result_digest_key(), &plan.schema());
        let head = Entry {
            statement: String::new(),
            ..head
        };
        let workers = task
            .session_config()
            .get_extension::<crate::distributed::WorkersUsed>();
        let privacy = task
            .session_config()
            .get_extension::<crate::enforcement::PrivacyRuntime>();
        let open = Open::new(
            Arc::clone(&self.audit),
            record.seq,
            head,
            started,
            digest,
            workers,
            privacy,
        );
        Ok(QueryStream::running(
            plan, task, governed, tables, thresholds, open,
        ))
    }
}

/// The privacy budget ledger's file in the state directory.
pub const LEDGER_FILE: &str = "privacy-ledger.jsonl";

/// Sessions kept at most (principals x purposes, plus export recipients' scopes).
const MAX_SESSIONS: usize = 256;

/// The exchange.
pub struct Exchange {
    config: ExchangeConfig,
    /// Schemas and policies in force; a statement takes them when it starts and keeps
    /// them to its end, a reload replaces them for the statements after it.
    governance: std::sync::RwLock<Arc<Governance>>,
    /// Held while a reload runs: one at a time.
    reloading: std::sync::Mutex<()>,
    keys: KeyRing,
    signer: Arc<SigningKey>,
    audit: Arc<AuditLog>,
    /// Object stores of remote datasets, shared by every session.
    stores: crate::catalog::Stores,
    /// At a hub: the nodes serving agencies' tables, by agency.
    nodes: std::collections::BTreeMap<String, crate::federation::NodeClient>,
    /// At a hub with workers: where statements' plans are spread.
    cluster: Option<crate::distributed::Cluster>,
    /// Sessions by principal, purpose, token scope and day: building one reads every
    /// granted table's metadata, which small statements would otherwise pay each time.
    sessions: std::sync::Mutex<std::collections::HashMap<SessionKey, Arc<PrincipalSession>>>,
    /// The privacy budget ledger of differentially private grants (in the state directory).
    ledger: Arc<crate::privacy::Ledger>,
}

impl Exchange {
    /// Load catalog and policies, open keys and the audit log.
    pub fn open(config: ExchangeConfig) -> Result<Self, OpenError> {
        let governance = Governance::load(&config)?;
        let Keys { ring, signing } = Keys::load(&config.key_dir)?;
        let signer = Arc::new(signing);
        let audit = Arc::new(AuditLog::open(
            &config.audit_log(),
            signer.clone(),
            config.audit,
        )?);
        audit.set_policy_version(&governance.version);
        let ledger = Arc::new(
            crate::privacy::Ledger::open(&config.state_dir.join(LEDGER_FILE))
                .map_err(|e| OpenError::Settings(e.to_string()))?,
        );
        let timeout = std::time::Duration::from_secs(config.federation.timeout_secs);
        let nodes = config
            .federation
            .nodes
            .iter()
            .map(|(agency, n)| {
                (
                    agency.clone(),
                    crate::federation::NodeClient {
                        agency: agency.clone(),
                        url: n.url.clone(),
                        timeout,
                        signer: Arc::clone(&signer),
                    },
                )
            })
            .collect();
        let cluster =
            crate::distributed::Cluster::from_settings(&config.distributed, signer.clone())
                .map_err(|message| OpenError::Settings(format!("[distributed]: {message}")))?;
        Ok(Self {
            nodes,
            cluster,
            stores: crate::catalog::Stores::new(config.stores.clone()),
            config,
            governance: std::sync::RwLock::new(Arc::new(governance)),
            reloading: std::sync::Mutex::new(()),
            keys: ring,
            signer,
            audit,
            sessions: std::sync::Mutex::new(std::collections::HashMap::new()),
            ledger,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ExchangeConfig {
        &self.config
    }

    /// The schemas and policies in force now. Hold the returned version for as long as
    /// one decision needs it: a reload replaces it for later callers only.
    pub fn governance(&self) -> Arc<Governance> {
        match self.governance.read() {
            Ok(g) => Arc::clone(&g),
            // A panic while swapping cannot leave a half-made value behind (the swap is
            // one assignment): the value stands.
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The privacy budget ledger.
    pub fn ledger(&self) -> &crate::privacy::Ledger {
        &self.ledger
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

    /// The object stores of remote datasets (and exports), shared by every session.
    pub(crate) fn stores(&self) -> &crate::catalog::Stores {
        &self.stores
    }

    /// The agency of a declared principal.
    pub fn agency_of(&self, principal: &str) -> Option<String> {
        self.governance().agency_of(principal)
    }

    /// The session of a principal for a purpose, after checking both, under the policy
    /// version in force.
    pub(crate) fn session(
        &self,
        principal: &str,
        purpose: Option<&str>,
    ) -> Result<Arc<PrincipalSession>, QueryError> {
        self.scoped_session(&self.governance(), principal, purpose, None)
    }

    /// A session whose pseudonyms are keyed for `token_scope` instead of the principal's
    /// agency (exports, keyed per recipient).
    pub(crate) fn scoped_session(
        &self,
        gov: &Governance,
        principal: &str,
        purpose: Option<&str>,
        token_scope: Option<&str>,
    ) -> Result<Arc<PrincipalSession>, QueryError> {
        let Some(p) = gov.policies.principal(principal) else {
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
        if gov.policies.purpose(purpose).is_none() {
            return Err(QueryError::Refused(format!("unknown purpose '{purpose}'")));
        }
        if !p.purposes.iter().any(|x| x == purpose) {
            return Err(QueryError::Refused(format!(
                "principal {} may not declare purpose {purpose} (declared purposes: {})",
                p.name,
                p.purposes.join(", ")
            )));
        }
        let today = Self::today();
        // Auditors' sessions hold a snapshot of the log: built afresh for each statement.
        let cacheable = !p
            .roles
            .iter()
            .any(|r| r == crate::enforcement::AUDITOR_ROLE);
        let key = SessionKey {
            version: gov.version.clone(),
            principal: p.name.clone(),
            purpose: purpose.to_string(),
            token_scope: token_scope.map(str::to_string),
            today,
        };
        if cacheable && let Some(s) = self.sessions.lock().ok().and_then(|c| c.get(&key).cloned()) {
            return Ok(s);
        }
        let inputs = SessionInputs {
            catalog: &gov.catalog,
            policies: &gov.policies,
            keys: &self.keys,
            data_root: &self.config.data_root,
            stores: &self.stores,
            today,
            audit_log: self.audit.path(),
            token_scope,
            // Exports (keyed for a recipient) carry their rows' subjects for the guard.
            subjects: token_scope.is_some(),
            memory_limit: self.config.memory_limit,
            memory_budget: self.config.memory_budget,
            target_partitions: self.config.target_partitions,
            batch_size: self.config.batch_size,
            nodes: &self.nodes,
            cluster: self.cluster.as_ref(),
            ledger: Some(Arc::clone(&self.ledger)),
        };
        let session = Arc::new(
            PrincipalSession::build(&inputs, p, purpose)
                .map_err(|e| QueryError::Failed(format!("session could not be built: {e}")))?,
        );
        // A session missing a table for want of its store's credentials is not kept: the
        // operator's fix (a credentials file) then takes effect at the next statement.
        let cacheable = cacheable && !session.unusable.values().any(|u| u.store);
        if cacheable && let Ok(mut cache) = self.sessions.lock() {
            // Bounded: past the bound (many recipients' scopes), start over.
            if cache.len() >= MAX_SESSIONS {
                cache.clear();
            }
            cache.insert(key, Arc::clone(&session));
        }
        Ok(session)
    }

    /// Visible columns of a table for a session, or None when not granted.
    pub(crate) fn visible_columns(
        session: &PrincipalSession,
        table: &str,
    ) -> Option<Vec<VisibleColumn>> {
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
        self.plan_audited(StatementKind::Prepare, principal, purpose, sql)
            .await
            .map(|p| p.physical.schema())
    }

    /// What a client must know of a statement before it binds and runs it (the Postgres
    /// extended protocol): its parameters' types and its result's schema, planned under
    /// policy with every parameter NULL, not run. A refusal is audited (kind `prepare`).
    pub async fn describe_statement(
        &self,
        principal: &str,
        purpose: Option<&str>,
        sql: &str,
    ) -> Result<Described, QueryError> {
        let started = Instant::now();
        let gov = self.governance();
        let mut named = Vec::new();
        let outcome = async {
            let session = self.scoped_session(&gov, principal, purpose, None)?;
            let stmt = match classify(&session, sql)? {
                Kind::Query(stmt) => stmt,
                // EXPLAIN, DESCRIBE: a result the exchange makes itself, of known columns.
                other => {
                    return other
                        .fixed_schema()
                        .map(|schema| Described {
                            params: vec![],
                            schema,
                        })
                        .ok_or_else(|| QueryError::Failed("a statement of no result".into()));
                }
            };
            let params = run::parameter_types(&session, &stmt).await?;
            let nulls = params
                .iter()
                .map(ScalarValue::try_from)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| QueryError::Failed(format!("parameters: {}", e.strip_backtrace())))?;
            let planned = plan_query(&session, *stmt, &mut named, &nulls).await?;
            Ok(Described {
                params,
                schema: planned.physical.schema(),
            })
        }
        .await;
        let head = Entry::new(StatementKind::Prepare, principal, sql)
            .declared(gov.agency_of(principal), purpose)
            .under(&gov.version);
        self.record_unplanned(head, named, started, &outcome)?;
        outcome
    }

    /// Record a statement planned but not run when planning refused or failed it (a
    /// successful one is recorded when it runs).
    fn record_unplanned<T>(
        &self,
        head: Entry,
        tables: Vec<TableUse>,
        started: Instant,
        outcome: &Result<T, QueryError>,
    ) -> Result<(), QueryError> {
        if outcome.is_ok() {
            return Ok(());
        }
        let (decision, reason) = audit_decision(outcome);
        self.audit
            .append(Entry {
                tables,
                decision,
                reason,
                ..head.timed(started)
            })
            .map(|_| ())
            .map_err(|e| QueryError::Audit(e.to_string()))
    }

    /// The tables `principal` sees for `purpose`, in order: (agency, table, its schema as
    /// the principal sees it). The catalogs of Flight SQL and of Postgres clients.
    pub(crate) async fn visible_tables(
        &self,
        principal: &str,
        purpose: Option<&str>,
    ) -> Result<Vec<(String, String, SchemaRef)>, QueryError> {
        let session = self.session(principal, purpose)?;
        let mut out = Vec::new();
        if let Some(catalog) = session.ctx.catalog(crate::enforcement::CATALOG) {
            for schema_name in catalog.schema_names() {
                let Some(schema) = catalog.schema(&schema_name) else {
                    continue;
                };
                for table in schema.table_names() {
                    if let Ok(Some(t)) = schema.table(&table).await {
                        out.push((schema_name.clone(), table, t.schema()));
                    }
                }
            }
        }
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        Ok(out)
    }

    /// The enforced plans of a query as `principal` for `purpose`, not run: the optimized
    /// logical plan with policy applied, and the physical plan. For operators and tests
    /// (what a reviewer reads as a diff); a refusal is audited (kind `plan`).
    pub async fn plan(
        &self,
        principal: &str,
        purpose: Option<&str>,
        sql: &str,
    ) -> Result<QueryPlan, QueryError> {
        self.plan_audited(StatementKind::Plan, principal, purpose, sql)
            .await
            .map(|p| QueryPlan {
                logical: p.optimized,
                physical: p.physical,
            })
    }

    async fn plan_audited(
        &self,
        kind: StatementKind,
        principal: &str,
        purpose: Option<&str>,
        sql: &str,
    ) -> Result<Planned, QueryError> {
        let started = Instant::now();
        let gov = self.governance();
        let mut named = Vec::new();
        let outcome = async {
            let session = self.scoped_session(&gov, principal, purpose, None)?;
            match classify(&session, sql)? {
                Kind::Query(stmt) => plan_query(&session, *stmt, &mut named, &[]).await,
                _ => Err(QueryError::Refused(
                    "only queries (SELECT, WITH, VALUES) can be planned or prepared".into(),
                )),
            }
        }
        .await;
        let head = Entry::new(kind, principal, sql)
            .declared(gov.agency_of(principal), purpose)
            .under(&gov.version);
        self.record_unplanned(head, named, started, &outcome)?;
        outcome
    }

    /// Run one statement as `principal` for `purpose`, audited whatever happens, and
    /// collect its result ([`Exchange::start`], then [`QueryStream::collect`]).
    pub async fn execute(
        &self,
        principal: &str,
        purpose: Option<&str>,
        sql: &str,
    ) -> Result<QueryOutput, QueryError> {
        self.start(principal, purpose, sql).await?.collect().await
    }

    /// Check, plan and begin one statement as `principal` for `purpose`: its result
    /// streams from the returned [`QueryStream`]. A refusal or a failure before anything
    /// runs is audited in one record. A query is audited as started (durable before this
    /// returns, so before any batch leaves) and again when its stream ends, fails, is cut
    /// or is dropped.
    pub async fn start(
        &self,
        principal: &str,
        purpose: Option<&str>,
        sql: &str,
    ) -> Result<QueryStream, QueryError> {
        self.start_with(principal, purpose, sql, &[]).await
    }

    /// [`Exchange::start`] of a query with parameters (`$1`, `$2`, ...) bound to `params`
    /// before the policy rule sees its plan: to enforcement, a parameter is the literal
    /// written in its place. The values are audited with the statement.
    pub async fn start_with(
        &self,
        principal: &str,
        purpose: Option<&str>,
        sql: &str,
        params: &[ScalarValue],
    ) -> Result<QueryStream, QueryError> {
        let started = Instant::now();
        let gov = self.governance();
        let agency = gov.agency_of(principal);
        let mut kind_label = StatementKind::Other;
        let mut named_tables = Vec::new();
        // A panic anywhere below is a bug, but never one that skips the audit record or
        // takes the process down: it fails the statement, audited like any failure.
        let attempt = std::panic::AssertUnwindSafe(async {
            let session = self.scoped_session(&gov, principal, purpose, None)?;
            let kind = classify(&session, sql)?;
            kind_label = kind.label();
            let (outcome, named) = run(&session, kind, params).await;
            named_tables = named;
            outcome
        });
        let outcome = match futures::FutureExt::catch_unwind(attempt).await {
            Ok(outcome) => outcome,
            Err(_) => Err(QueryError::Failed(
                "internal error: the exchange failed while handling this statement (a bug, recorded in the audit log); nothing was returned".into(),
            )),
        };
        let head = Entry {
            params: params.iter().map(ScalarValue::to_string).collect(),
            ..Entry::new(kind_label, principal, sql)
                .declared(agency, purpose)
                .under(&gov.version)
        };
        let audit_error = |e: AuditError| QueryError::Audit(e.to_string());
        match outcome {
            Err(e) => {
                let (decision, reason) = audit_decision::<()>(&Err(e.clone()));
                self.audit
                    .append(Entry {
                        tables: named_tables,
                        decision,
                        reason,
                        ..head.timed(started)
                    })
                    .map_err(audit_error)?;
                Err(e)
            }
            Ok(Begun::Ready(mut out)) => {
                out.digest = digest::result_digest(
                    &self.keys.result_digest_key(),
                    &out.schema,
                    &out.batches,
                );
                self.audit
                    .append(Entry {
                        tables: out.tables.clone(),
                        thresholds: out.thresholds.clone(),
                        rows: Some(out.rows),
                        result_digest: Some(out.digest.clone()),
                        ..head.timed(started)
                    })
                    .map_err(audit_error)?;
                Ok(QueryStream::ready(out))
            }
            Ok(Begun::Stream {
                plan,
                task,
                governed,
                tables,
                thresholds,
                federated,
            }) => {
                let (statement_id, node_requests) = match federated {
                    Some(f) => (Some(f.id), f.requests),
                    None => (None, vec![]),
                };
                let entry = Entry {
                    tables,
                    thresholds,
                    statement_id,
                    node_requests,
                    ..head.clone()
                };
                self.open_stream(entry, head, started, plan, task, governed)
            }
        }
    }
}
