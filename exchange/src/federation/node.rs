//! `exchange node`: one agency's tables served to pinned hubs over Arrow Flight `DoGet`.
//!
//! A ticket is a signed [`NodeRequest`](super::NodeRequest); nothing else is served (every
//! other Flight call is unimplemented). Requests that fail verification are refused and
//! audited like those the grant refuses.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::{Stream, StreamExt, TryStreamExt};
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

use super::request::{ReplayCache, now, verify};
use super::{FederationError, FederationSettings};
use crate::audit::{Decision, Entry, StatementKind};
use crate::engine::{Exchange, QueryError};
use crate::keys::PublicKey;

/// How to run a node.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The agency whose tables it serves.
    pub agency: String,
    /// Address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// Reload schemas and policies on SIGHUP and, every this often (unless zero), when
    /// their files change; None: never ([`crate::engine::spawn_reloader`]).
    pub watch_policies: Option<std::time::Duration>,
    /// Requests served at once (`[serve] max_concurrent`); more wait.
    pub max_concurrent: usize,
    /// How long an excess request waits for a slot before it is refused, audited
    /// (`[serve] queue_wait_secs`).
    pub queue_wait: std::time::Duration,
}

struct NodeService {
    ex: Arc<Exchange>,
    agency: String,
    hubs: BTreeMap<String, PublicKey>,
    replay: ReplayCache,
    unverified: Arc<std::sync::Mutex<Unverified>>,
    /// Requests served at once (`[serve] max_concurrent`): a permit lives as long as the
    /// request's stream.
    slots: Arc<tokio::sync::Semaphore>,
    /// How long a request waits for a slot (`[serve] queue_wait_secs`) before it is refused.
    queue_wait: std::time::Duration,
    /// The semaphore's size, for the refusal's words.
    max_concurrent: usize,
}

/// Unverified requests recorded one by one at most [`UNVERIFIED_PER_SECOND`] a second; past
/// that they are counted and recorded together (review 27 M2: anyone reaching the port
/// could write 800 records a second into the node's log).
#[derive(Default)]
struct Unverified {
    window: Option<Instant>,
    recorded: u32,
    suppressed: u64,
}

/// Unverified requests recorded one by one per second.
const UNVERIFIED_PER_SECOND: u32 = 10;

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn status_of(e: &QueryError) -> Status {
    let message = crate::text::escape(&e.to_string()).into_owned();
    match e {
        QueryError::Refused(_) => Status::permission_denied(message),
        _ => Status::internal(message),
    }
}

impl NodeService {
    /// Audit a request refused before it was verified (no principal can be trusted), one by
    /// one up to [`UNVERIFIED_PER_SECOND`] a second, then counted.
    fn refuse_unverified(&self, why: &FederationError, started: Instant) -> Status {
        let (record, suppressed) = {
            let mut u = self.unverified.lock().unwrap_or_else(|e| e.into_inner());
            if u.window.is_none_or(|w| w.elapsed().as_secs() >= 1) {
                u.window = Some(Instant::now());
                u.recorded = 0;
            }
            if u.recorded < UNVERIFIED_PER_SECOND {
                u.recorded += 1;
                (true, std::mem::take(&mut u.suppressed))
            } else {
                u.suppressed += 1;
                (false, 0)
            }
        };
        if record {
            let reason = if suppressed > 0 {
                format!(
                    "{why} (and {suppressed} more unverified requests refused before it, past {UNVERIFIED_PER_SECOND} a second, not recorded one by one)"
                )
            } else {
                why.to_string()
            };
            let entry = Entry {
                decision: Decision::Refused,
                reason: Some(reason),
                ..Entry::new(StatementKind::Node, "(unverified)", "node request").timed(started)
            };
            if let Err(e) = self.ex.audit().append(entry) {
                return Status::unavailable(format!("the node cannot audit: {e}"));
            }
        }
        Status::unauthenticated(why.to_string())
    }
}

fn unimplemented<T>() -> Result<T, Status> {
    Err(Status::unimplemented(
        "an agency node serves signed DoGet requests of its hubs only",
    ))
}

#[tonic::async_trait]
impl FlightService for NodeService {
    type HandshakeStream = Boxed<HandshakeResponse>;
    type ListFlightsStream = Boxed<FlightInfo>;
    type DoGetStream = Boxed<FlightData>;
    type DoPutStream = Boxed<PutResult>;
    type DoActionStream = Boxed<arrow_flight::Result>;
    type ListActionsStream = Boxed<ActionType>;
    type DoExchangeStream = Boxed<FlightData>;

    async fn handshake(
        &self,
        _r: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        unimplemented()
    }
    async fn list_flights(
        &self,
        _r: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        unimplemented()
    }
    async fn get_flight_info(
        &self,
        _r: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        unimplemented()
    }
    async fn poll_flight_info(
        &self,
        _r: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        unimplemented()
    }
    async fn get_schema(
        &self,
        _r: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        unimplemented()
    }
    async fn do_put(
        &self,
        _r: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        unimplemented()
    }
    async fn do_action(
        &self,
        _r: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        unimplemented()
    }
    async fn list_actions(
        &self,
        _r: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        unimplemented()
    }
    async fn do_exchange(
        &self,
        _r: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        unimplemented()
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let started = Instant::now();
        let ticket = request.into_inner().ticket;
        let (req, signer) = match verify(&ticket, &self.hubs, &self.replay, now()) {
            Ok(v) => v,
            Err(e) => return Err(self.refuse_unverified(&e, started)),
        };
        let wait = self.queue_wait;
        let permit = match tokio::time::timeout(wait, Arc::clone(&self.slots).acquire_owned()).await
        {
            Ok(Ok(permit)) => permit,
            _ => {
                let why = format!(
                    "the node of {} serves {} requests at once and none ended within {}s: try again later",
                    self.agency,
                    self.max_concurrent,
                    wait.as_secs()
                );
                self.ex
                    .refuse_request(&req, &signer, &why)
                    .map_err(|e| status_of(&e))?;
                return Err(Status::resource_exhausted(why));
            }
        };
        let stream = self
            .ex
            .serve_request(&self.agency, &req, &signer)
            .await
            .map_err(|e| status_of(&e))?;
        let schema = stream.schema();
        // The slot is held until the stream ends or the hub drops it.
        let batches = stream.map(move |b| {
            let _held = &permit;
            b.map_err(|e| FlightError::Tonic(Box::new(status_of(&e))))
        });
        let data = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(Status::from);
        Ok(Response::new(Box::pin(data.boxed())))
    }
}

/// Serve `agency`'s tables until `shutdown` completes; then the audit log is sealed.
/// `ready` is told the bound address.
pub async fn serve_node(
    ex: Exchange,
    options: NodeOptions,
    ready: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), FederationError> {
    let settings: &FederationSettings = &ex.config().federation;
    let hubs = settings.hub_keys();
    if hubs.is_empty() {
        return Err(FederationError::Setup(
            "a node serves the hubs it pins only, and none is configured: add the hub's public key under [federation.hubs] in exchange.toml".into(),
        ));
    }
    if !ex
        .governance()
        .catalog
        .datasets()
        .iter()
        .any(|d| d.agency == options.agency)
    {
        return Err(FederationError::Setup(format!(
            "agency {} has no dataset in this node's schemas",
            options.agency
        )));
    }
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| FederationError::Setup(format!("cannot listen on {}: {e}", options.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| FederationError::Setup(e.to_string()))?;
    let ex = Arc::new(ex);
    let unverified = Arc::new(std::sync::Mutex::new(Unverified::default()));
    let max_concurrent = options.max_concurrent.max(1);
    let service = NodeService {
        ex: Arc::clone(&ex),
        agency: options.agency.clone(),
        hubs,
        replay: ReplayCache::default(),
        unverified: Arc::clone(&unverified),
        slots: Arc::new(tokio::sync::Semaphore::new(max_concurrent)),
        queue_wait: options.queue_wait,
        max_concurrent,
    };
    if !options.listen.ip().is_loopback() {
        eprintln!(
            "warning: node listening on {addr} without TLS: requests are signed, but the treated batches cross the network in clear text (put it behind a TLS-terminating proxy)"
        );
    }
    let reloader = options
        .watch_policies
        .map(|every| crate::engine::spawn_reloader(Arc::clone(&ex), every));
    ready(addr);
    let result = Server::builder()
        .add_service(FlightServiceServer::new(service))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await
        .map_err(|e| FederationError::Setup(format!("node server: {e}")));
    if let Some(r) = reloader {
        r.abort();
    }
    // Unverified requests counted but not yet recorded are recorded before the log closes
    // (review 27b F3: a flood that stopped took its count with it).
    let suppressed = std::mem::take(
        &mut unverified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .suppressed,
    );
    if suppressed > 0 {
        let entry = Entry {
            decision: Decision::Refused,
            reason: Some(format!(
                "node request refused: unverified (and {} more unverified requests refused before it, past {UNVERIFIED_PER_SECOND} a second, not recorded one by one)",
                suppressed - 1
            )),
            ..Entry::new(StatementKind::Node, "(unverified)", "node request")
        };
        ex.audit()
            .append(entry)
            .map_err(|e| FederationError::Setup(format!("audit log: {e}")))?;
    }
    ex.audit()
        .close()
        .map_err(|e| FederationError::Setup(format!("audit log not sealed: {e}")))?;
    result
}

/// A node serving in this process on a free loopback port: the federated demo and the
/// benchmarks start one per agency.
#[derive(Debug)]
pub struct LocalNode {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), FederationError>>,
}

impl LocalNode {
    /// Serve `agency`'s tables of `ex` (its configuration pins the hubs) until stopped.
    pub async fn start(ex: Exchange, agency: &str) -> Result<Self, FederationError> {
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serve = crate::config::ServeSettings::default();
        let options = NodeOptions {
            agency: agency.to_string(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            watch_policies: None,
            max_concurrent: serve.max_concurrent,
            queue_wait: std::time::Duration::from_secs(serve.queue_wait_secs),
        };
        let task = tokio::spawn(serve_node(
            ex,
            options,
            move |addr| {
                let _ = addr_tx.send(addr);
            },
            async move {
                let _ = stopped.await;
            },
        ));
        match addr_rx.await {
            Ok(addr) => Ok(Self {
                url: format!("http://{addr}"),
                stop,
                task,
            }),
            // It stopped before listening: its error says why.
            Err(_) => Err(Self::joined(task.await).err().unwrap_or_else(|| {
                FederationError::Internal(format!("the node of {agency} did not start"))
            })),
        }
    }

    /// Stop serving and wait until the node has sealed its log.
    pub async fn stop(self) -> Result<(), FederationError> {
        let _ = self.stop.send(());
        Self::joined(self.task.await)
    }

    fn joined(
        r: Result<Result<(), FederationError>, tokio::task::JoinError>,
    ) -> Result<(), FederationError> {
        r.map_err(|e| FederationError::Internal(format!("a node's task failed: {e}")))?
    }
}
