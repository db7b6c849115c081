//! The hub's side: its sessions plan as always, then datafusion-distributed spreads the
//! physical plan over the workers.
//!
//! Every policy decision is made before distribution: the analyzer rule, the optimizer and
//! the exchange's physical rules run on the hub, and the distributed planner only cuts the
//! finished plan into stages. Two things change in a distributed session:
//! - join keys may be compared raw (`enforcement/join_keys`) only once the plan is cut into
//!   stages: the distributed planner may turn a `CollectLeft` join into a hash-partitioned
//!   one, and partitions by raw key value would order output rows by a function of the raw
//!   values. So the rule runs on the distributed plan, where it sees each join's final mode
//!   and each shuffle's partitioning, and keeps tokens wherever either is keyed by them;
//! - a statement that reads a table served by an agency node runs on the hub alone: only the
//!   hub holds the key its nodes accept.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::Result;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::source_as_provider;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_distributed::{
    DistributedExt, DistributedGetterExt, RouteTasksEvent, RouteTasksEventResponse,
    SessionStateBuilderExt,
};
use tonic::codegen::http::{HeaderMap, HeaderValue};
use url::Url;

use super::auth::{Signer, TOKENS_HEADER};
use super::channels::{SignedChannels, Workers};
use super::codec::{ExchangeCodec, TokenScope};
use super::settings::DistributedSettings;
use crate::enforcement::RawJoinKeys;
use crate::keys::SigningKey;

/// The hub's workers and how it reaches them.
#[derive(Clone)]
pub struct Cluster {
    workers: Vec<Url>,
    channels: SignedChannels,
    bytes_per_partition: Option<usize>,
    compression: Option<datafusion_distributed::CompressionType>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// The cluster of `settings`, its requests signed with the hub's `key`; None when no
    /// worker is configured.
    pub fn from_settings(
        settings: &DistributedSettings,
        key: Arc<SigningKey>,
    ) -> Result<Option<Self>, String> {
        if settings.workers.is_empty() {
            return Ok(None);
        }
        let workers = settings.worker_urls()?;
        Ok(Some(Self {
            workers,
            channels: SignedChannels::new(Arc::new(Signer::new(key))),
            bytes_per_partition: settings.bytes_per_partition,
            compression: match settings.compression.as_deref() {
                Some("none") => None,
                Some("zstd") => Some(datafusion_distributed::CompressionType::ZSTD),
                _ => Some(datafusion_distributed::CompressionType::LZ4_FRAME),
            },
        }))
    }

    /// The workers' addresses.
    pub fn workers(&self) -> &[Url] {
        &self.workers
    }

    /// A hub session's builder, distributed: the exchange's planner `local` first, then
    /// datafusion-distributed's, with the exchange's codec, signed connections, and the
    /// statement's token `scope` in a signed header.
    pub(crate) fn configure(
        &self,
        builder: SessionStateBuilder,
        local: Arc<dyn QueryPlanner + Send + Sync>,
        scope: &TokenScope,
    ) -> Result<SessionStateBuilder> {
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_str(&scope.header()).map_err(|e| {
            datafusion::common::DataFusionError::Plan(format!("token scope header: {e}"))
        })?;
        headers.insert(TOKENS_HEADER, value);
        let workers = Arc::new(self.workers.clone());
        let next = Arc::new(AtomicUsize::new(0));
        let mut builder = builder
            .with_query_planner(Arc::clone(&local))
            .with_distributed_planner()
            .with_distributed_worker_resolver(Workers(self.workers.clone()))
            .with_distributed_channel_resolver(self.channels.clone())
            .with_distributed_user_codec(ExchangeCodec)
            .with_distributed_passthrough_headers(headers)?
            .with_distributed_route_tasks_handler(move |ev: RouteTasksEvent| {
                route(ev, &workers, &next)
            });
        builder = builder.with_distributed_compression(self.compression)?;
        if let Some(bytes) = self.bytes_per_partition {
            builder = builder.with_distributed_file_scan_config_bytes_per_partition(bytes)?;
        }
        let distributed = builder.query_planner().take();
        Ok(match distributed {
            Some(distributed) => {
                builder.with_query_planner(Arc::new(ScaleOut { local, distributed }))
            }
            None => builder.with_query_planner(local),
        })
    }
}

/// Tasks to workers, round robin, each worker recorded for the statement's audit record.
fn route(
    ev: RouteTasksEvent,
    workers: &[Url],
    next: &AtomicUsize,
) -> Option<Result<RouteTasksEventResponse>> {
    if workers.is_empty() {
        return None;
    }
    let start = next.fetch_add(ev.task_count.max(1), Ordering::Relaxed);
    let urls: Vec<Url> = (0..ev.task_count)
        .map(|i| workers[(start + i) % workers.len()].clone())
        .collect();
    if let Some(used) = ev.task_ctx.session_config().get_extension::<WorkersUsed>() {
        used.add(&urls);
    }
    // The resolver is the one the session was built with; asked only to fail as it would.
    if let Err(e) = ev
        .task_ctx
        .session_config()
        .get_distributed_worker_resolver()
    {
        return Some(Err(e));
    }
    Some(Ok(RouteTasksEventResponse::new(urls)))
}

/// The workers one statement used, for its audit record (an extension of the statement's
/// task context, filled as its stages are routed).
#[derive(Debug, Default)]
pub struct WorkersUsed(Mutex<BTreeSet<String>>);

impl WorkersUsed {
    fn add(&self, urls: &[Url]) {
        if let Ok(mut set) = self.0.lock() {
            set.extend(
                urls.iter()
                    .map(|u| u.as_str().trim_end_matches('/').to_string()),
            );
        }
    }

    /// The workers, sorted.
    pub fn list(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// Plans a statement on the hub alone when it reads a node's table, else distributed.
#[derive(Debug)]
struct ScaleOut {
    local: Arc<dyn QueryPlanner + Send + Sync>,
    distributed: Arc<dyn QueryPlanner + Send + Sync>,
}

#[async_trait]
impl QueryPlanner for ScaleOut {
    async fn create_physical_plan(
        &self,
        plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let planned = if reads_a_node(plan) {
            self.local.create_physical_plan(plan, session).await?
        } else {
            self.distributed.create_physical_plan(plan, session).await?
        };
        // After the stages are cut (the module's documentation says why), as a single-node
        // session runs it after DataFusion's physical rules.
        RawJoinKeys.optimize(planned, session.config_options())
    }
}

/// Whether `plan` (subqueries included) scans a table served by an agency node.
fn reads_a_node(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && source_as_provider(&scan.source)
                .is_ok_and(|p| p.downcast_ref::<crate::federation::RemoteTable>().is_some())
        {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}
