//! A per-principal session: a catalog of exactly the granted tables with their visible
//! columns, locked configuration, and the policy rule.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use chrono::NaiveDate;
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider,
};
use datafusion::common::Result;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::{SessionStateBuilder, TaskContext};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement;

use super::objections::Objections;
use super::rule::PolicyRule;
use super::spec::{GovernedSpec, Remote, Source, TokenFns};
use super::tables::GovernedTable;
use crate::catalog::Catalog;
use crate::engine::{Budget, BudgetedPool};
use crate::masking::{KeyRing, MaskFn, TokenKeys, TokenKind, TokenUdf};
use crate::policy::{Denial, PolicySet, Principal};

/// Catalog name under which agencies appear as schemas.
pub const CATALOG: &str = "exchange";

/// A table the principal could be granted but whose grant cannot be applied.
#[derive(Debug, Clone)]
pub struct Unusable {
    /// `agency/grant`. Why it cannot be applied is not kept: it is never shown to the
    /// principal, and `exchange policy check` reports it with file and line.
    pub grant_ref: String,
    /// The grant is fine but the table's object store cannot be reached as configured (no
    /// credentials, a refused location): unreadable data, not a policy fault.
    pub store: bool,
}

/// A DataFusion session for one principal and purpose.
pub struct PrincipalSession {
    /// The DataFusion context: only granted tables, locked options, the policy rule.
    pub ctx: SessionContext,
    /// Who asks.
    pub principal: Principal,
    /// Why.
    pub purpose: String,
    /// Granted tables by `agency.table`.
    pub tables: BTreeMap<String, Arc<GovernedSpec>>,
    /// Tables whose only grant has expired, by `agency.table`.
    pub expired: BTreeMap<String, Denial>,
    /// Tables whose grant cannot be applied, by `agency.table`.
    pub unusable: BTreeMap<String, Unusable>,
    /// Whether its statements' plans are spread over workers.
    pub distributed: bool,
    /// Memory limit of each statement, in bytes.
    memory_limit: Option<usize>,
    /// What the process may hold, every statement together.
    memory_budget: Budget,
    /// The privacy budget ledger its noisy aggregates charge (none: they are refused).
    ledger: Option<Arc<crate::privacy::Ledger>>,
    /// The day its statements are decided on (grant expiry, budget periods).
    today: NaiveDate,
}

/// Everything a session is built from.
pub struct SessionInputs<'a> {
    /// The catalog.
    pub catalog: &'a Catalog,
    /// The policies.
    pub policies: &'a PolicySet,
    /// The key ring.
    pub keys: &'a KeyRing,
    /// Root of relative dataset locations.
    pub data_root: &'a Path,
    /// Object stores of remote dataset locations.
    pub stores: &'a crate::catalog::Stores,
    /// Today's date, for grant expiry.
    pub today: NaiveDate,
    /// The audit log, offered as `audit.events` to principals with the auditor role.
    pub audit_log: &'a Path,
    /// Scope of pseudonyms and replacements instead of the principal's agency (exports:
    /// one scope per recipient, so that recipients' files cannot be linked).
    pub token_scope: Option<&'a str>,
    /// Whether results carry, in hidden `__exchange_subject` columns, the entities of the
    /// tables declaring `export_k` that each row comes from (for the export guard).
    pub subjects: bool,
    /// Memory limit of each query, in bytes.
    pub memory_limit: Option<usize>,
    /// What the process may hold, every statement together.
    pub memory_budget: Budget,
    /// Partitions a query runs in; None: the number of cores.
    pub target_partitions: Option<usize>,
    /// Rows per batch; None: DataFusion's default.
    pub batch_size: Option<usize>,
    /// At a hub: the nodes serving agencies' tables, by agency. Those tables are read
    /// through their node, treated there; the hub never opens their files.
    pub nodes: &'a BTreeMap<String, crate::federation::NodeClient>,
    /// At a hub with workers: where its statements' plans are spread.
    pub cluster: Option<&'a crate::distributed::Cluster>,
    /// The privacy budget ledger noisy aggregates charge; without it they are refused.
    pub ledger: Option<Arc<crate::privacy::Ledger>>,
}

/// The role that may read `audit.events`.
pub const AUDITOR_ROLE: &str = "auditor";

/// DataFusion settings every session runs with, on top of [`crate::tuning`]. File
/// statistics are collected, but every governed scan sits under a `BarrierExec` that passes
/// on an estimated row count only, so no COUNT/MIN/MAX is answered from file metadata;
/// information_schema and recursive CTEs are off; only the exchange catalog exists.
pub fn locked_config() -> SessionConfig {
    let mut config = crate::tuning::apply(SessionConfig::new())
        .with_information_schema(false)
        .with_create_default_catalog_and_schema(false)
        .with_default_catalog_and_schema(CATALOG, "public");
    let options = config.options_mut();
    options.execution.collect_statistics = true;
    options.execution.enable_recursive_ctes = false;
    options.execution.parquet.pushdown_filters = false;
    config
}

impl PrincipalSession {
    /// Build the session of `principal` for `purpose`.
    pub fn build(inputs: &SessionInputs<'_>, principal: &Principal, purpose: &str) -> Result<Self> {
        let mut config = locked_config();
        if let Some(n) = inputs.target_partitions {
            config = config.with_target_partitions(n);
        }
        if let Some(n) = inputs.batch_size {
            config = config.with_batch_size(n);
        }
        let domains: Vec<String> = {
            let mut d: Vec<String> = inputs
                .catalog
                .datasets()
                .iter()
                .flat_map(|ds| ds.columns.iter().filter_map(|c| c.domain.clone()))
                .chain(
                    inputs
                        .policies
                        .grants()
                        .iter()
                        .flat_map(|g| g.columns.iter().filter_map(|c| c.domain.clone())),
                )
                .collect();
            d.sort_unstable();
            d.dedup();
            d
        };
        let consumer = inputs.token_scope.unwrap_or(principal.agency.as_str());
        let mut builder = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features();
        let local: Arc<dyn datafusion::execution::context::QueryPlanner + Send + Sync> =
            Arc::new(super::barrier::ExchangeQueryPlanner);
        builder = match inputs.cluster {
            // Distributed: raw join keys are decided on the plan cut into stages (the hub
            // module of crate::distributed says why), not among the physical rules.
            Some(cluster) => cluster
                .configure(
                    builder,
                    local,
                    &crate::distributed::TokenScope::new(inputs.keys, consumer, &domains),
                )?
                .with_physical_optimizer_rule(Arc::new(super::batches::BoundedBatches)),
            None => builder
                .with_query_planner(local)
                .with_physical_optimizer_rule(Arc::new(super::join_keys::RawJoinKeys))
                .with_physical_optimizer_rule(Arc::new(super::batches::BoundedBatches)),
        };
        // The session may serve many statements (the exchange caches it): files must be
        // listed afresh by each, so the listing cache is off. File statistics and footers stay
        // cached, checked against each file's size and modification time. Each statement
        // runs under its own memory pool ([`Self::task_ctx`]).
        let caches = datafusion::execution::cache::cache_manager::CacheManagerConfig::default()
            .with_list_files_cache_limit(0);
        let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
            .with_cache_manager(caches)
            .build()?;
        builder = builder.with_runtime_env(Arc::new(runtime));
        let state = builder.build();
        let ctx = SessionContext::new_with_state(state);
        // Built-ins first, so that the exchange's own functions stay unwrapped.
        let guard = super::outputs::guard_functions(&ctx, inputs.memory_budget);
        for f in MaskFn::ALL {
            ctx.register_udf(f.udf().as_ref().clone());
        }
        for v in crate::masking::Validator::ALL {
            ctx.register_udf(v.udf().as_ref().clone());
        }
        ctx.add_analyzer_rule(Arc::new(PolicyRule::new(inputs.subjects)));
        ctx.add_analyzer_rule(Arc::new(guard));

        let tokens = TokenFns {
            pseudonym: TokenUdf::udf(Arc::new(TokenKeys::derive(
                inputs.keys,
                TokenKind::Pseudonym,
                consumer,
                domains.iter().map(String::as_str),
            ))),
            join_key: TokenUdf::udf(Arc::new(TokenKeys::derive(
                inputs.keys,
                TokenKind::JoinKey,
                consumer,
                domains.iter().map(String::as_str),
            ))),
            replace: TokenUdf::udf(Arc::new(TokenKeys::derive(
                inputs.keys,
                TokenKind::Replace,
                consumer,
                crate::masking::replace::KINDS.iter().copied(),
            ))),
        };

        let catalog = Arc::new(MemoryCatalogProvider::new());
        let mut schemas: BTreeMap<String, Arc<MemorySchemaProvider>> = BTreeMap::new();
        let mut tables = BTreeMap::new();
        let mut expired = BTreeMap::new();
        let mut unusable = BTreeMap::new();
        let state = ctx.state();
        let declared: std::collections::BTreeSet<String> = inputs
            .policies
            .purposes()
            .iter()
            .map(|p| p.name.clone())
            .collect();
        for dataset in inputs.catalog.datasets() {
            let access = match inputs
                .policies
                .resolve(dataset, principal, purpose, inputs.today)
            {
                Ok(a) => a,
                Err(d @ Denial::Expired { .. }) => {
                    expired.insert(dataset.qualified_name(), d);
                    continue;
                }
                Err(Denial::NotGranted) => continue,
            };
            let grant_ref = access.grant_ref.clone();
            let location = dataset.resolve_location(inputs.data_root);
            let remote = inputs.nodes.get(&dataset.agency).map(|client| Remote {
                client: client.clone(),
                claims: crate::federation::Claims {
                    principal: principal.name.clone(),
                    agency: principal.agency.clone(),
                    roles: crate::federation::roles_of(principal),
                    attributes: crate::federation::attributes_of(principal),
                    purpose: purpose.to_string(),
                    scope: consumer.to_string(),
                },
            });
            let registered = if remote.is_some() {
                // Read by the node: its location is the node's business.
                Ok(location)
            } else {
                inputs
                    .stores
                    .register(state.runtime_env(), &dataset.agency, &location)
            };
            // The agency's register of objections, read where its files are (a node's
            // register stays at the node, which applies it).
            let objections = match inputs.catalog.register_of(&dataset.agency) {
                Some(register) if remote.is_none() => inputs
                    .stores
                    .register(
                        state.runtime_env(),
                        &dataset.agency,
                        &register.dataset.resolve_location(inputs.data_root),
                    )
                    .map_err(|_| ())
                    .and_then(|at| {
                        Objections::try_new(register, &at, dataset, purpose, &declared)
                            .map(|o| o.map(Box::new))
                            .map_err(|_| ())
                    }),
                _ => Ok(None),
            };
            let (Ok(location), Ok(objections)) = (registered, objections) else {
                // Told when used, as an unreadable table (`policy check` names the cause).
                unusable.insert(
                    dataset.qualified_name(),
                    Unusable {
                        grant_ref,
                        store: true,
                    },
                );
                continue;
            };
            match GovernedSpec::build(
                &state,
                dataset,
                access,
                principal,
                match remote {
                    Some(remote) => Source::Node {
                        location: &location,
                        remote: Box::new(remote),
                    },
                    None => Source::Files {
                        location: &location,
                        objections,
                    },
                },
                &tokens,
                inputs.subjects,
            ) {
                Ok(spec) => {
                    let spec = Arc::new(spec);
                    let schema = schemas
                        .entry(dataset.agency.clone())
                        .or_insert_with(|| Arc::new(MemorySchemaProvider::new()));
                    schema.register_table(
                        dataset.name.clone(),
                        Arc::new(GovernedTable::new(spec.clone())),
                    )?;
                    tables.insert(dataset.qualified_name(), spec);
                }
                Err(_) => {
                    unusable.insert(
                        dataset.qualified_name(),
                        Unusable {
                            grant_ref,
                            store: false,
                        },
                    );
                }
            }
        }
        if principal.roles.iter().any(|r| r == AUDITOR_ROLE) {
            let events = crate::audit::AuditEvents::load(inputs.audit_log)?;
            let schema = Arc::new(MemorySchemaProvider::new());
            schema.register_table("events".to_string(), Arc::new(events))?;
            catalog.register_schema("audit", schema)?;
        }
        for (agency, schema) in schemas {
            catalog.register_schema(&agency, schema)?;
        }
        ctx.register_catalog(CATALOG, catalog);
        if let Some(ledger) = &inputs.ledger {
            let budgets = tables
                .iter()
                .filter_map(|(name, spec): (&String, &Arc<GovernedSpec>)| {
                    spec.access.privacy.clone().map(|p| (name.clone(), p))
                })
                .collect();
            ctx.register_udf(super::private::budget_fn(
                Arc::clone(ledger),
                &principal.name,
                inputs.today,
                budgets,
            ));
        }
        Ok(Self {
            ctx,
            principal: principal.clone(),
            purpose: purpose.to_string(),
            tables,
            expired,
            unusable,
            distributed: inputs.cluster.is_some(),
            memory_limit: inputs.memory_limit,
            memory_budget: inputs.memory_budget,
            ledger: inputs.ledger.clone(),
            today: inputs.today,
        })
    }

    /// The context one statement runs in: the session's, with a memory pool of its own, so
    /// that the limit is per statement even when statements share the session.
    /// Operators that exceed it fail the statement (or spill), never the server.
    pub fn task_ctx(&self) -> Result<Arc<TaskContext>> {
        let state = self.ctx.state();
        let shared = state.runtime_env();
        let mut pool = datafusion::execution::runtime_env::RuntimeEnvBuilder::new();
        if let Some(limit) = self.memory_limit {
            pool = pool.with_memory_limit(limit, 1.0);
        }
        let pool = pool.build()?.memory_pool;
        let runtime = RuntimeEnv {
            memory_pool: Arc::new(BudgetedPool::new(pool, self.memory_budget)),
            disk_manager: Arc::clone(&shared.disk_manager),
            cache_manager: Arc::clone(&shared.cache_manager),
            object_store_registry: Arc::clone(&shared.object_store_registry),
        };
        let task = TaskContext::from(&state).with_runtime(Arc::new(runtime));
        let mut config = state.config().clone();
        if self.distributed {
            // Filled with the workers the statement's stages are routed to, for its record.
            config = config.with_extension(Arc::new(crate::distributed::WorkersUsed::default()));
        }
        if let Some(ledger) = &self.ledger {
            // What its noisy aggregates charge, and what they spent, for its record.
            config = config.with_extension(Arc::new(super::private::PrivacyRuntime::new(
                Arc::clone(ledger),
                &self.principal.name,
                self.today,
            )));
        }
        Ok(Arc::new(task.with_session_config(config)))
    }

    /// Parse SQL (DataFusion's generic dialect, its default recursion limit).
    pub fn parse(&self, sql: &str) -> Result<std::collections::VecDeque<Statement>> {
        datafusion::sql::parser::DFParser::parse_sql_with_dialect(
            sql,
            &datafusion::sql::sqlparser::dialect::GenericDialect {},
        )
    }
}
