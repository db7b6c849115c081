//! The Flight SQL service: every call authenticated, every statement run by
//! [`Exchange::execute`] (the CLI's code path) in its principal's session.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::{ProstMessageExt, SqlInfo, TicketStatementQuery};
use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, Ticket};
use futures::{Stream, TryStreamExt, stream};
use prost::Message;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use super::auth::{SessionTokens, principal_of_api_token, verify_password};
use crate::audit::{Decision, Entry, StatementKind};
use crate::engine::{Exchange, FailureKind, QueryError, QueryStream};

mod delivery;
mod flight_sql;
mod slots;

/// The header that states each call's purpose.
pub const PURPOSE_HEADER: &str = "x-exchange-purpose";

/// Limits that keep one analyst from taking the server down.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Queries running at once; more wait.
    pub max_concurrent: usize,
    /// How long an excess query waits for a slot before `RESOURCE_EXHAUSTED`.
    pub queue_wait: Duration,
    /// Wall-clock limit of one query (`DEADLINE_EXCEEDED`, audited).
    pub query_timeout: Duration,
    /// How long a result waits to be fetched before it is dropped.
    pub result_ttl: Duration,
    /// Largest result sent to a client, in bytes of Arrow data; a larger one is cut.
    pub max_result_bytes: usize,
    /// Results of one principal waiting for their DoGet.
    pub max_pending_per_principal: usize,
    /// Open prepared statements of one principal.
    pub max_prepared_per_principal: usize,
}

impl Limits {
    /// The limits of `[serve]` in `exchange.toml`.
    pub fn from_settings(s: &crate::config::ServeSettings) -> Self {
        Self {
            max_concurrent: s.max_concurrent,
            queue_wait: Duration::from_secs(s.queue_wait_secs),
            query_timeout: Duration::from_secs(s.query_timeout_secs),
            result_ttl: Duration::from_secs(s.result_ttl_secs),
            max_result_bytes: s.max_result_mib.saturating_mul(1 << 20),
            max_pending_per_principal: s.max_pending_per_principal,
            max_prepared_per_principal: s.max_prepared_per_principal,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::from_settings(&crate::config::ServeSettings::default())
    }
}

struct PendingResult {
    principal: String,
    created: Instant,
    stream: QueryStream,
}

struct Prepared {
    principal: String,
    purpose: Option<String>,
    sql: String,
}

/// The exchange as a Flight SQL service.
pub struct ExchangeFlightService {
    ex: Arc<Exchange>,
    dummy_hash: String,
    hashing: Arc<Semaphore>,
    /// Failed logins recorded, within a bound per name and minute.
    failures: super::failures::FailedLogins,
    tokens: SessionTokens,
    limits: Limits,
    slots: slots::Slots,
    results: Arc<Mutex<HashMap<String, PendingResult>>>,
    prepared: Mutex<HashMap<String, Prepared>>,
    sql_info: SqlInfoData,
}

/// The status of a failed statement; its message shows terminal controls escaped, as
/// clients print it.
pub(crate) fn status_of(e: QueryError) -> Status {
    let message = crate::text::escape(&e.to_string()).into_owned();
    match e {
        QueryError::Refused(_) => Status::permission_denied(message),
        QueryError::Failed(_) => Status::invalid_argument(message),
        QueryError::Run { kind, .. } => match kind {
            FailureKind::Resources => Status::resource_exhausted(message),
            FailureKind::Unreadable | FailureKind::Worker => Status::unavailable(message),
            _ => Status::invalid_argument(message),
        },
        QueryError::Audit(_) => Status::unavailable(message),
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

fn random_handle() -> Result<String, Status> {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| Status::internal("random generator failed"))?;
    Ok(hex::encode(b))
}

type DataStream =
    Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send + 'static>>;

fn batches_stream(schema: SchemaRef, batches: Vec<RecordBatch>) -> DataStream {
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(stream::iter(batches.into_iter().map(Ok)))
        .map_err(Status::from);
    Box::pin(stream)
}

fn one_batch<E: std::fmt::Display>(batch: Result<RecordBatch, E>) -> Result<DataStream, Status> {
    let batch = batch.map_err(internal)?;
    Ok(batches_stream(batch.schema(), vec![batch]))
}

/// Why a started statement was dropped unfetched.
const NOT_FETCHED: &str = "not fetched (DoGet) within the result TTL";

/// Drop results not fetched within `ttl` (recorded `cancelled`) every few seconds, not
/// only when someone stashes another (review 16), until the service is gone.
fn sweep_expired(results: std::sync::Weak<Mutex<HashMap<String, PendingResult>>>, ttl: Duration) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let every = (ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(10));
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(results) = results.upgrade() else {
                return;
            };
            let expired = match results.lock() {
                Ok(mut r) => take_expired(&mut r, ttl),
                Err(_) => return,
            };
            cancel_unfetched(expired);
        }
    });
}

/// Remove the results that waited `ttl` or longer, to be cancelled outside the lock.
fn take_expired(results: &mut HashMap<String, PendingResult>, ttl: Duration) -> Vec<PendingResult> {
    let old: Vec<String> = results
        .iter()
        .filter(|(_, p)| p.created.elapsed() >= ttl)
        .map(|(k, _)| k.clone())
        .collect();
    old.iter().filter_map(|k| results.remove(k)).collect()
}

/// Record results dropped unfetched (called without the results lock: each appends to the
/// audit log).
fn cancel_unfetched(expired: Vec<PendingResult>) {
    for p in expired {
        let _ = p.stream.cancel(NOT_FETCHED);
    }
}

impl ExchangeFlightService {
    /// A service over `ex`.
    pub fn new(ex: Arc<Exchange>, tokens: SessionTokens, limits: Limits) -> Result<Self, Status> {
        let mut info = SqlInfoDataBuilder::new();
        info.append(SqlInfo::FlightSqlServerName, "exchange");
        info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        info.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
        info.append(SqlInfo::FlightSqlServerReadOnly, true);
        info.append(SqlInfo::FlightSqlServerSql, true);
        info.append(SqlInfo::FlightSqlServerSubstrait, false);
        info.append(SqlInfo::FlightSqlServerTransaction, 0i32);
        info.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
        // As costly as the costliest stored hash, so unknown names take as long.
        let iterations = ex
            .governance()
            .policies
            .principals()
            .iter()
            .filter_map(|p| p.password_hash.as_deref())
            .filter_map(|h| h.split('$').nth(1).and_then(|i| i.parse::<u32>().ok()))
            .max()
            .unwrap_or(super::DEFAULT_ITERATIONS);
        let dummy_hash =
            super::auth::hash_password("not a password", iterations).map_err(internal)?;
        let results = Arc::new(Mutex::new(HashMap::new()));
        sweep_expired(Arc::downgrade(&results), limits.result_ttl);
        Ok(Self {
            dummy_hash,
            hashing: Arc::new(Semaphore::new(2)),
            failures: Default::default(),
            slots: slots::Slots::new(limits.max_concurrent, limits.queue_wait),
            ex,
            tokens,
            limits,
            results,
            prepared: Mutex::new(HashMap::new()),
            sql_info: info.build().map_err(internal)?,
        })
    }

    fn audit_auth_failure(&self, who: &str, reason: &str) {
        self.record_login_failure(who, "(Flight SQL authentication)", reason);
    }

    /// Record the failed logins counted and not yet recorded (at shutdown, before the log
    /// is sealed).
    pub(crate) fn record_pending_login_failures(&self) {
        for (who, n) in self.failures.take_pending() {
            let _ = self.ex.audit().append(Entry {
                decision: Decision::Refused,
                reason: Some(format!(
                    "{n} more failed logins were counted, not recorded one by one"
                )),
                ..Entry::new(StatementKind::Auth, &who, "(authentication)")
            });
        }
    }

    /// Record a failed login or unauthenticated call of `who` (a principal's name or
    /// `(unknown)`) on `channel`, within the bound of [`super::failures`].
    pub(crate) fn record_login_failure(&self, who: &str, channel: &str, reason: &str) {
        let Some(note) = self.failures.note(who) else {
            return;
        };
        let _ = self.ex.audit().append(Entry {
            decision: Decision::Refused,
            reason: Some(format!("{reason}{note}")),
            ..Entry::new(StatementKind::Auth, who, channel)
        });
    }

    /// Check a user name and password (Flight handshake, console login). Unknown users and
    /// users without a password are checked against a dummy hash of the same cost, so
    /// timing does not tell which names exist; a failure is audited as `channel` under the
    /// principal's name when it is one (never attacker-chosen text). Returns the
    /// principal's credential stamp ([`super::auth::credential_stamp`]), which what the
    /// login opens (a token, a console session) keeps.
    pub(crate) async fn check_password(
        &self,
        user: &str,
        password: &str,
        channel: &str,
    ) -> Result<String, Status> {
        let gov = self.ex.governance();
        let principal = gov.policies.principal(user);
        let stamp = principal.map(super::auth::credential_stamp);
        let known = principal.is_some();
        let has_password = principal.is_some_and(|p| p.password_hash.is_some());
        let stored = principal
            .and_then(|p| p.password_hash.clone())
            .unwrap_or_else(|| self.dummy_hash.clone());
        // The slow hash runs on a blocking thread, a few at a time, never on the workers.
        let slot = Arc::clone(&self.hashing)
            .acquire_owned()
            .await
            .map_err(internal)?;
        let password = password.to_string();
        let ok = tokio::task::spawn_blocking(move || {
            let ok = verify_password(&password, &stored);
            drop(slot);
            ok
        })
        .await
        .map_err(internal)?
            && has_password;
        if !ok {
            // Same answer for unknown users, users without a password and wrong passwords.
            self.record_login_failure(
                if known { user } else { "(unknown)" },
                channel,
                "wrong user name or password",
            );
            return Err(Status::unauthenticated("wrong user name or password"));
        }
        stamp.ok_or_else(|| Status::unauthenticated("wrong user name or password"))
    }

    /// Whether `principal` still logs in as under credentials `stamp`: a token or a
    /// console session of a principal removed, or whose password changed, since it began
    /// stops working (a reload of the policies applies this to the next call).
    pub(crate) fn credentials_current(&self, principal: &str, stamp: &str) -> bool {
        self.ex
            .governance()
            .policies
            .principal(principal)
            .is_some_and(|p| super::auth::same_stamp(&super::auth::credential_stamp(p), stamp))
    }

    /// The principal of a call's bearer token (session or API token).
    fn authenticate<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let Some(token) = header.strip_prefix("Bearer ") else {
            self.audit_auth_failure("(unknown)", "no bearer token");
            return Err(Status::unauthenticated(
                "log in first (Flight handshake with username and password) or send an API token as 'authorization: Bearer exk_...'",
            ));
        };
        if token.starts_with("exk_") {
            return match principal_of_api_token(&self.ex.governance().policies, token) {
                Some(p) => Ok(p.name.clone()),
                None => {
                    self.audit_auth_failure("(unknown)", "unknown API token");
                    Err(Status::unauthenticated("unknown API token"))
                }
            };
        }
        let (principal, stamp) = self.tokens.check(token).map_err(|why| {
            self.audit_auth_failure("(unknown)", why);
            Status::unauthenticated(why)
        })?;
        if !self.credentials_current(&principal, &stamp) {
            let why = "token revoked: the principal was removed or its password changed since login; log in again";
            self.audit_auth_failure(&principal, why);
            return Err(Status::unauthenticated(why));
        }
        Ok(principal)
    }

    fn purpose<T>(req: &Request<T>) -> Option<String> {
        req.metadata()
            .get(PURPOSE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    /// Plan on threads of the statement's own, holding `slot` (review 22: planning folds
    /// constants, and two statements folding `levenshtein` of long strings held a shared
    /// planning runtime for minutes, every other statement timing out). Ok(None) if it
    /// timed out: the server's slot comes back then, the principal's share once the
    /// threads have finished their step ([`crate::engine`]).
    async fn plan_holding<T, F>(&self, slot: slots::Slot, work: F) -> Result<Option<T>, Status>
    where
        T: Send + 'static,
        F: std::future::Future<Output = T> + Send + 'static,
    {
        let (slot, share) = slot.split();
        let outcome =
            crate::engine::run_on_own_threads(work, self.limits.query_timeout, Box::new(share))
                .await;
        drop(slot);
        match outcome {
            Ok(Some(Ok(v))) => Ok(Some(v)),
            Ok(Some(Err(e))) => Err(internal(e)),
            Ok(None) => Ok(None),
            Err(e) => Err(Status::resource_exhausted(e.to_string())),
        }
    }

    /// Check, plan and begin a statement under the limits, exactly as the CLI does
    /// ([`Exchange::start`]): refused here, or started (audited) with its result to stream.
    async fn begin(
        &self,
        principal: &str,
        purpose: Option<&str>,
        sql: &str,
    ) -> Result<QueryStream, Status> {
        self.begin_with(principal, purpose, sql, &[]).await
    }

    /// [`Self::begin`] with parameters bound ([`Exchange::start_with`]).
    pub(crate) async fn begin_with(
        &self,
        principal: &str,
        purpose: Option<&str>,
        sql: &str,
        params: &[datafusion::common::ScalarValue],
    ) -> Result<QueryStream, Status> {
        let ex = Arc::clone(&self.ex);
        let (p, pu, s, v) = (
            principal.to_string(),
            purpose.map(str::to_string),
            sql.to_string(),
            params.to_vec(),
        );
        self.guarded(StatementKind::Query, principal, purpose, sql, async move {
            ex.start_with(&p, pu.as_deref(), &s, &v).await
        })
        .await?
        .map(|q| q.with_cap(self.limits.max_result_bytes as u64))
        .map_err(status_of)
    }

    /// Run `work` (planning a statement, answering a catalog statement) under the server's
    /// limits: it takes one of the principal's slots (or is turned away, recorded), runs on
    /// threads of its own, in its own task (a client that goes away does not cancel it
    /// half-way, so it still writes its audit record), within the query timeout (recorded
    /// when it runs past it).
    pub(crate) async fn guarded<T, F>(
        &self,
        kind: StatementKind,
        principal: &str,
        purpose: Option<&str>,
        sql: &str,
        work: F,
    ) -> Result<T, Status>
    where
        T: Send + 'static,
        F: std::future::Future<Output = T> + Send + 'static,
    {
        let started = Instant::now();
        let permit = match self.slots.take(principal).await {
            Ok(p) => p,
            Err(reason) => {
                return Err(self.turned_away(kind, principal, purpose, sql, reason, started));
            }
        };
        match self.plan_holding(permit, work).await? {
            Some(v) => Ok(v),
            None => {
                // Dropped while planning, before it could audit itself.
                let reason = format!("timed out after {:?}", self.limits.query_timeout);
                self.not_run(kind, principal, purpose, sql, &reason, started)?;
                Err(Status::deadline_exceeded(reason))
            }
        }
    }

    /// The exchange behind the service.
    pub(crate) fn exchange(&self) -> &Arc<Exchange> {
        &self.ex
    }

    /// A statement that did not run (turned away for want of a slot, planning timed out):
    /// recorded like any statement that did not run, with the time it waited.
    fn not_run(
        &self,
        kind: StatementKind,
        principal: &str,
        purpose: Option<&str>,
        sql: &str,
        reason: &str,
        started: Instant,
    ) -> Result<(), Status> {
        self.ex
            .audit()
            .append(Entry {
                decision: Decision::Failed,
                reason: Some(reason.to_string()),
                ..Entry::new(kind, principal, sql)
                    .declared(self.ex.agency_of(principal), purpose)
                    .timed(started)
            })
            .map(|_| ())
            .map_err(|e| Status::unavailable(e.to_string()))
    }

    /// A statement turned away for want of a slot, recorded; the status for the client.
    fn turned_away(
        &self,
        kind: StatementKind,
        principal: &str,
        purpose: Option<&str>,
        sql: &str,
        reason: String,
        started: Instant,
    ) -> Status {
        match self.not_run(kind, principal, purpose, sql, &reason, started) {
            Ok(()) => Status::resource_exhausted(reason),
            Err(e) => e,
        }
    }

    /// Keep a started statement for its DoGet and describe it. Its plan runs when fetched;
    /// one never fetched is dropped after `result_ttl`, recorded `cancelled`.
    fn stash(
        &self,
        principal: String,
        stream: QueryStream,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        let handle = random_handle()?;
        let info = FlightInfo::new()
            .try_with_schema(&stream.schema())
            .map_err(internal)?
            .with_endpoint(
                FlightEndpoint::new().with_ticket(Ticket::new(
                    TicketStatementQuery {
                        statement_handle: handle.clone().into(),
                    }
                    .as_any()
                    .encode_to_vec(),
                )),
            )
            .with_descriptor(descriptor)
            .with_total_records(-1)
            .with_ordered(true);
        let (expired, refused) = {
            let mut results = self.results.lock().map_err(internal)?;
            let expired = take_expired(&mut results, self.limits.result_ttl);
            let waiting = results
                .values()
                .filter(|r| r.principal == principal)
                .count();
            if waiting >= self.limits.max_pending_per_principal {
                let why = format!(
                    "{waiting} results of {principal} are waiting to be fetched: fetch them (DoGet) first"
                );
                (expired, Some((stream, why)))
            } else {
                results.insert(
                    handle,
                    PendingResult {
                        principal,
                        created: Instant::now(),
                        stream,
                    },
                );
                (expired, None)
            }
        };
        // Recorded outside the lock.
        cancel_unfetched(expired);
        if let Some((stream, why)) = refused {
            let _ = stream.cancel(&format!("not kept: {why}"));
            return Err(Status::resource_exhausted(why));
        }
        Ok(Response::new(info))
    }

    /// The batches of a started statement as Flight data ([`delivery`]), holding one of
    /// the principal's slots until it ends. Turned away for want of a slot, the statement
    /// is dropped (recorded `cancelled`).
    async fn deliver(&self, principal: &str, stream: QueryStream) -> Result<DataStream, Status> {
        let (stream, slot) = self.delivery_slot(principal, stream).await?;
        Ok(delivery::deliver(stream, slot, self.limits.query_timeout))
    }

    /// [`Self::deliver`] as record batches, for the Postgres wire protocol.
    pub(crate) async fn deliver_batches(
        &self,
        principal: &str,
        stream: QueryStream,
    ) -> Result<delivery::BatchStream, Status> {
        let (stream, slot) = self.delivery_slot(principal, stream).await?;
        Ok(delivery::deliver_batches(
            stream,
            slot,
            self.limits.query_timeout,
        ))
    }

    /// One of the principal's slots for delivering `stream`; turned away, the statement is
    /// dropped (recorded `cancelled`).
    async fn delivery_slot(
        &self,
        principal: &str,
        stream: QueryStream,
    ) -> Result<(QueryStream, slots::Slot), Status> {
        match self.slots.take(principal).await {
            Ok(slot) => Ok((stream, slot)),
            Err(reason) => {
                let recorded = stream.cancel(&format!("not run: {reason}"));
                Err(match recorded {
                    Ok(()) => Status::resource_exhausted(reason),
                    Err(e) => status_of(e),
                })
            }
        }
    }

    /// Tables the principal sees for the purpose: (schema, table, visible schema).
    async fn visible_tables<T>(
        &self,
        req: &Request<T>,
    ) -> Result<Vec<(String, String, SchemaRef)>, Status> {
        let principal = self.authenticate(req)?;
        let purpose = Self::purpose(req);
        self.ex
            .visible_tables(&principal, purpose.as_deref())
            .await
            .map_err(status_of)
    }

    fn info_for(
        &self,
        command: impl ProstMessageExt,
        schema: &Schema,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        let info = FlightInfo::new()
            .try_with_schema(schema)
            .map_err(internal)?
            .with_endpoint(
                FlightEndpoint::new().with_ticket(Ticket::new(command.as_any().encode_to_vec())),
            )
            .with_descriptor(descriptor);
        Ok(Response::new(info))
    }
}
