//! The hub's side: a table served by its agency's node.
//!
//! [`RemoteTable`] stands where a [`RawTable`](crate::enforcement::RawTable) would: the
//! policy rule puts it under the grant's fragment, whose columns are already treated (the
//! node applied row filter and treatments and computed tokens at source). Its scan asks the
//! node for the projected columns only, with the analyst's predicates that fit the node's
//! language ([`Predicate`]): comparisons over the treated values the node returns, which
//! cannot fail and call no function. The node applies them after its row filter and
//! treatments, the hub applies them again, so the rows the hub keeps are the same and
//! nothing of the policy barrier moves to the wrong side; fewer rows cross the wire.
//! The request is signed when the plan runs, not when it is planned, so it expires only
//! after the statement began.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow::array::{RecordBatch, RecordBatchOptions};
use arrow::datatypes::SchemaRef;
use arrow_flight::Ticket;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, internal_err};
use datafusion::datasource::TableProvider;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, ReplaceChildrenOptions,
};
use futures::{StreamExt, TryStreamExt};

use super::request::{NodeRequest, now, random_id};
use super::{NodeError, Predicate, new_request};
use crate::enforcement::{HIDDEN_ENTITY, HIDDEN_ROW};
use crate::keys::SigningKey;

/// Bytes of Arrow IPC messages this process received from nodes.
static RECEIVED: AtomicU64 = AtomicU64::new(0);

/// Bytes of Arrow IPC messages (headers and bodies) this process has received from agency
/// nodes since it started: what federation moves (benchmarks read it before and after).
pub fn bytes_received() -> u64 {
    RECEIVED.load(Ordering::Relaxed)
}

/// Largest Flight message the hub accepts from a node (nodes split batches at 2 MiB).
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// How the hub reaches one agency's node.
#[derive(Clone)]
pub struct NodeClient {
    /// The agency.
    pub agency: String,
    /// `http://host:port` (or https).
    pub url: String,
    /// Time the node has to connect and to send each batch.
    pub timeout: Duration,
    /// The hub's signing key.
    pub signer: Arc<SigningKey>,
}

impl fmt::Debug for NodeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeClient({} at {})", self.agency, self.url)
    }
}

/// On whose behalf the hub asks: the principal as the hub resolved it.
#[derive(Debug, Clone)]
pub struct Claims {
    /// Principal name.
    pub principal: String,
    /// The principal's agency.
    pub agency: String,
    /// Sorted roles.
    pub roles: Vec<String>,
    /// Attributes.
    pub attributes: std::collections::BTreeMap<String, serde_json::Value>,
    /// Declared purpose.
    pub purpose: String,
    /// Token scope.
    pub scope: String,
}

/// A table whose treated columns come from its agency's node.
#[derive(Debug)]
pub struct RemoteTable {
    /// `agency.table`.
    table: String,
    /// The grant's columns as the node returns them (hidden ones included).
    schema: SchemaRef,
    claims: Claims,
    client: NodeClient,
}

impl RemoteTable {
    /// The table `agency.table` of `client`'s node, returning `schema`.
    pub fn new(table: String, schema: SchemaRef, claims: Claims, client: NodeClient) -> Self {
        Self {
            table,
            schema,
            claims,
            client,
        }
    }

    /// `agency.table`.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// `filter` in the node's language, over visible columns (never the hidden ones).
    fn predicate(&self, filter: &Expr) -> Option<Predicate> {
        Predicate::from_expr(filter, &self.schema, &[HIDDEN_ENTITY, HIDDEN_ROW])
    }
}

#[async_trait]
impl TableProvider for RemoteTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Predicates of the node's language go to the node as well (`Inexact`: the hub
    /// applies them again, so a node that did not changes nothing); the rest stay here.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| match self.predicate(f) {
                Some(_) => TableProviderFilterPushDown::Inexact,
                None => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    fn statistics(&self) -> Option<datafusion::common::Statistics> {
        None
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let all: Vec<usize> = (0..self.schema.fields().len()).collect();
        let projection = projection.unwrap_or(&all);
        let schema = Arc::new(self.schema.project(projection)?);
        let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        // DataFusion's LIMIT is an i64: a larger one (fetch + skip overflowing) is none.
        let limit = limit
            .and_then(|l| i64::try_from(l).ok())
            .and_then(|l| u64::try_from(l).ok());
        // A predicate goes only over columns the node returns (DataFusion projects the
        // columns of an inexact filter; anything else stays at the hub alone).
        // Within a node's limits (bytes, operators, count); the rest stays at the hub.
        let (mut bytes, mut nodes, mut chars) = (
            super::request::MAX_PREDICATE_BYTES,
            super::MAX_NODES,
            super::MAX_PATTERNS_CHARS,
        );
        let filters: Vec<Predicate> = filters
            .iter()
            .filter_map(|f| self.predicate(f))
            .filter(|p| p.columns().iter().all(|c| columns.iter().any(|x| x == c)))
            .filter(|p| {
                let size = serde_json::to_string(p).map_or(usize::MAX, |s| s.len());
                let fits = size <= bytes && p.nodes() <= nodes && p.pattern_chars() <= chars;
                if fits {
                    bytes -= size;
                    nodes -= p.nodes();
                    chars -= p.pattern_chars();
                }
                fits
            })
            .take(super::MAX_PREDICATES)
            .collect();
        let asked = super::asked_digest(&columns, limit, &filters);
        let Some((statement, request)) = new_request(&self.table, &asked) else {
            return internal_err!("a federated table was read outside a statement");
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Arc::new(RemoteExec {
            table: self.table.clone(),
            schema,
            columns,
            limit,
            filters,
            statement,
            request,
            claims: self.claims.clone(),
            client: self.client.clone(),
            properties: Arc::new(properties),
        }))
    }
}

/// Reads one table's treated columns from its node.
#[derive(Debug, Clone)]
pub struct RemoteExec {
    table: String,
    schema: SchemaRef,
    columns: Vec<String>,
    limit: Option<u64>,
    filters: Vec<Predicate>,
    statement: String,
    request: String,
    claims: Claims,
    client: NodeClient,
    properties: Arc<PlanProperties>,
}

impl DisplayAs for RemoteExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "RemoteExec: {} from the node of {}, columns [{}]",
            self.table,
            self.client.agency,
            self.columns.join(", ")
        )?;
        for p in &self.filters {
            write!(f, ", where {p}")?;
        }
        Ok(())
    }
}

impl RemoteExec {
    fn request(&self) -> Result<NodeRequest, NodeError> {
        let issued_at = now();
        Ok(NodeRequest {
            version: 2,
            statement: self.statement.clone(),
            request: self.request.clone(),
            principal: self.claims.principal.clone(),
            agency: self.claims.agency.clone(),
            roles: self.claims.roles.clone(),
            attributes: self.claims.attributes.clone(),
            purpose: self.claims.purpose.clone(),
            scope: self.claims.scope.clone(),
            table: self.table.clone(),
            columns: self.columns.clone(),
            limit: self.limit,
            filters: self.filters.clone(),
            issued_at,
            expires_at: issued_at + super::request::MAX_VALIDITY_SECS,
            nonce: random_id().map_err(|e| self.node_error(e.to_string()))?,
        })
    }

    fn node_error(&self, cause: String) -> NodeError {
        NodeError {
            agency: self.client.agency.clone(),
            table: self.table.clone(),
            cause,
        }
    }

    /// Connect, send the signed request, and open the node's stream.
    async fn open(&self) -> Result<FlightRecordBatchStream, NodeError> {
        let ticket = self
            .request()?
            .sign(&self.client.signer)
            .map_err(|e| self.node_error(e.to_string()))?;
        let timeout = self.client.timeout;
        let endpoint = tonic::transport::Endpoint::from_shared(self.client.url.clone())
            .map_err(|_| self.node_error("its address is not a valid URL".into()))?
            .connect_timeout(timeout);
        let channel = tokio::time::timeout(timeout, endpoint.connect())
            .await
            .map_err(|_| self.node_error(format!("it did not answer within {timeout:?}")))?
            .map_err(|_| self.node_error("it cannot be reached".into()))?;
        let mut client =
            FlightServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let response = tokio::time::timeout(timeout, client.do_get(Ticket::new(ticket)))
            .await
            .map_err(|_| self.node_error(format!("it did not answer within {timeout:?}")))?
            .map_err(|s| self.node_error(status_text(&s)))?;
        Ok(FlightRecordBatchStream::new_from_flight_data(
            response
                .into_inner()
                .map_ok(|data| {
                    let bytes = data.data_header.len() + data.data_body.len();
                    RECEIVED.fetch_add(bytes as u64, Ordering::Relaxed);
                    data
                })
                .map_err(FlightError::from),
        ))
    }
}

/// What a node's error status says, bounded and on one line.
fn status_text(s: &tonic::Status) -> String {
    let text: String = s
        .message()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(600)
        .collect();
    match s.code() {
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
            format!("it refused the request: {text}")
        }
        _ => format!("it failed: {text}"),
    }
}

impl ExecutionPlan for RemoteExec {
    fn name(&self) -> &str {
        "RemoteExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            internal_err!("RemoteExec has no inputs")
        }
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(
                datafusion::physical_plan::ChildrenPropertiesMode::Recompute,
            ),
        )
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return internal_err!("RemoteExec has one partition");
        }
        let this = Arc::new(self.clone());
        let schema = self.schema.clone();
        let timeout = self.client.timeout;
        // Open on first poll; then every batch within the timeout; a batch whose columns
        // are not those asked for fails the query (never a partial or reshaped result).
        let stream = futures::stream::once(async move {
            let inner = this.open().await.map_err(external)?;
            let batches = futures::stream::unfold(
                (inner, this, false),
                move |(mut inner, this, done)| async move {
                    if done {
                        return None;
                    }
                    let next = tokio::time::timeout(timeout, inner.next()).await;
                    let item = match next {
                        Err(_) => Err(this.node_error(format!(
                            "it stopped sending for more than {timeout:?} mid-query"
                        ))),
                        Ok(None) => return None,
                        Ok(Some(Err(e))) => Err(this.node_error(flight_text(&e))),
                        Ok(Some(Ok(batch))) => this.conform(batch),
                    };
                    let failed = item.is_err();
                    Some((item.map_err(external), (inner, this, failed)))
                },
            );
            Ok::<_, DataFusionError>(batches)
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

impl RemoteExec {
    /// The batch under the schema the hub planned with, if its columns are those.
    fn conform(&self, batch: RecordBatch) -> Result<RecordBatch, NodeError> {
        let got = batch.schema();
        let same = got.fields().len() == self.schema.fields().len()
            && got
                .fields()
                .iter()
                .zip(self.schema.fields())
                .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
        if !same {
            return Err(self.node_error(
                "it returned columns other than those the grant shows (are hub and node on the same schemas and policies?)".into(),
            ));
        }
        // A scan reading no column (count(*)) gets batches of rows without columns.
        let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        RecordBatch::try_new_with_options(self.schema.clone(), batch.columns().to_vec(), &options)
            .map_err(|_| self.node_error("it returned a malformed batch".into()))
    }
}

fn flight_text(e: &FlightError) -> String {
    match e {
        // A status made from a transport error, not sent by the node: the connection ended
        // before the stream did (the node stopped, restarted or was cut off).
        FlightError::Tonic(s) if std::error::Error::source(s.as_ref()).is_some() => {
            "its connection was lost mid-stream (did it stop or restart?)".into()
        }
        FlightError::Tonic(s) => status_text(s),
        _ => "its stream was malformed or cut".into(),
    }
}

fn external(e: NodeError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}
