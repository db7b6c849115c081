//! Statements over the Postgres protocol, simple and extended: each runs through the code
//! path of the CLI and Flight SQL ([`crate::Exchange::start_with`]) under the server's limits,
//! or, reading only the catalog, in the principal's data-free catalog session; session
//! statements (SET, SHOW, transactions) are answered here. Every one is audited.

use std::fmt::Debug;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_pg::datatypes::df::deserialize_parameters_with_server_types;
use arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type};
use async_trait::async_trait;
use datafusion::common::{ParamValues, ScalarValue};
use futures::{Sink, StreamExt, stream};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::data::DataRow;
use pgwire::types::format::FormatOptions;
use tonic::{Code, Status};

use super::Conn;
use super::statement::{PURPOSE_SETTING, Route, split};
use crate::audit::{Decision, Entry, StatementKind};

/// A statement parsed for the extended protocol, described before it is bound.
#[derive(Debug, Clone)]
pub(crate) struct PgStatement {
    text: String,
    route: Route,
    params: Vec<DataType>,
    schema: Option<SchemaRef>,
}

/// An error for the client, with its SQLSTATE.
pub(super) fn error(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        code.into(),
        message.into(),
    )))
}

/// The SQLSTATE of a statement's failure: 42501 for a refusal by policy.
fn status_error(s: Status) -> PgWireError {
    let code = match s.code() {
        Code::PermissionDenied => "42501",
        Code::ResourceExhausted => "53000",
        Code::DeadlineExceeded => "57014",
        Code::Unavailable => "58000",
        Code::InvalidArgument => "42000",
        Code::Unauthenticated => "28000",
        _ => "XX000",
    };
    error(code, s.message())
}

/// The SQLSTATE of a catalog statement's failure: a syntax error, or what the catalog
/// does not support.
fn catalog_code(why: &str) -> &'static str {
    if why.starts_with("syntax error") {
        "42601"
    } else {
        "0A000"
    }
}

/// Settings a client may not change: the session's identity and the engine's own. `name`
/// is a setting's name, or the whole text of a SET form without one (`set local role x`).
fn fixed_setting(name: &str) -> bool {
    let name = name.trim().to_lowercase();
    let words: Vec<&str> = name
        .split(|c: char| c.is_whitespace() || c == '"' || c == '=')
        .filter(|w| !w.is_empty())
        .collect();
    // The setting itself: past SET and its LOCAL / SESSION scope.
    let setting = words
        .iter()
        .find(|w| !["set", "local", "session"].contains(w))
        .copied()
        .unwrap_or("");
    ["role", "authorization", "session_authorization"]
        .iter()
        .any(|w| words.contains(w))
        || setting.starts_with("datafusion.")
        || (setting.starts_with("exchange.") && setting != PURPOSE_SETTING)
}

fn show_schema(name: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, false)]))
}

/// The values bound to a portal's parameters, each as the type the statement expects.
fn bound_values<S: Clone>(
    portal: &Portal<S>,
    expected: &[DataType],
) -> PgWireResult<Vec<ScalarValue>> {
    let hints: Vec<Option<&DataType>> = expected.iter().map(Some).collect();
    let ParamValues::List(values) = deserialize_parameters_with_server_types(portal, &hints, &[])?
    else {
        return Err(error("08P01", "named parameters are not supported"));
    };
    values
        .into_iter()
        .zip(expected)
        .enumerate()
        .map(|(i, (v, t))| {
            v.value.cast_to(t).map_err(|_| {
                error(
                    "22P02",
                    format!("parameter ${} is not a value of type {t}", i + 1),
                )
            })
        })
        .collect()
}

impl Conn {
    /// The principal and purpose of the connection, its credential checked against the
    /// policies in force.
    fn principal(&self) -> PgWireResult<(String, Option<String>)> {
        let (principal, purpose, credential) = {
            let state = self.lock();
            match (&state.principal, &state.credential) {
                (Some(p), Some(c)) => (p.clone(), state.purpose.clone(), c.clone()),
                _ => return Err(error("28000", "not logged in")),
            }
        };
        if !credential.current(&self.shared.ex().governance().policies, &principal) {
            let why = "credentials revoked: the principal was removed, its password changed or its API token revoked since login; connect again";
            self.shared
                .gate
                .record_login_failure(&principal, "(Postgres session)", why);
            return Err(error("28000", why));
        }
        Ok((principal, purpose))
    }

    /// Record a statement answered here (session and catalog statements).
    fn record(&self, entry: Entry) -> PgWireResult<()> {
        self.shared
            .ex()
            .audit()
            .append(entry)
            .map(|_| ())
            .map_err(|e| error("58000", format!("audit log: {e}")))
    }

    /// Record a statement refused or failed here, and the client's error.
    fn deny(&self, entry: Entry, decision: Decision, code: &str, reason: String) -> PgWireError {
        let recorded = self.record(Entry {
            decision,
            reason: Some(reason.clone()),
            ..entry
        });
        match recorded {
            Ok(()) => error(code, crate::text::escape(&reason).into_owned()),
            Err(e) => e,
        }
    }

    fn entry(
        &self,
        kind: StatementKind,
        principal: &str,
        purpose: Option<&str>,
        sql: &str,
    ) -> Entry {
        Entry::new(kind, principal, sql).declared(self.shared.ex().agency_of(principal), purpose)
    }

    /// Run one statement; its result as the client asked (`format`).
    async fn run<C>(
        &self,
        client: &C,
        text: &str,
        route: &Route,
        params: &[ScalarValue],
        format: &Format,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo,
    {
        let (principal, purpose) = self.principal()?;
        let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        let session = |kind| self.entry(kind, &principal, purpose.as_deref(), text);
        match route {
            Route::Data => {
                let gate = &self.shared.gate;
                let started = gate
                    .begin_with(&principal, purpose.as_deref(), text, params)
                    .await
                    .map_err(status_error)?;
                let schema = started.schema();
                let batches = gate
                    .deliver_batches(&principal, started)
                    .await
                    .map_err(status_error)?;
                let fields = Arc::new(arrow_schema_to_pg_fields(&schema, format, Some(options))?);
                let rows = {
                    let fields = Arc::clone(&fields);
                    batches.flat_map(
                        move |b| -> stream::BoxStream<'static, PgWireResult<DataRow>> {
                            match b {
                                Ok(b) => {
                                    stream::iter(encode_recordbatch(Arc::clone(&fields), b)).boxed()
                                }
                                Err(s) => stream::once(async move { Err(status_error(s)) }).boxed(),
                            }
                        },
                    )
                };
                Ok(Response::Query(QueryResponse::new(fields, rows)))
            }
            Route::Catalog => {
                let ex = Arc::clone(self.shared.gate.exchange());
                let shared = Arc::clone(&self.shared);
                let (p, pu, sql, v) = (
                    principal.clone(),
                    purpose.clone(),
                    text.to_string(),
                    params.to_vec(),
                );
                let started = std::time::Instant::now();
                let outcome = self
                    .shared
                    .gate
                    .guarded(
                        StatementKind::Catalog,
                        &principal,
                        purpose.as_deref(),
                        text,
                        async move {
                            let catalog = shared.catalogs.get(&ex, &p, pu.as_deref()).await?;
                            catalog.run(&sql, &v).await
                        },
                    )
                    .await
                    .map_err(status_error)?;
                match outcome {
                    Ok((schema, batches)) => {
                        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                        self.record(Entry {
                            rows: Some(rows as u64),
                            ..session(StatementKind::Catalog).timed(started)
                        })?;
                        let fields =
                            Arc::new(arrow_schema_to_pg_fields(&schema, format, Some(options))?);
                        let mut out = Vec::with_capacity(rows);
                        for b in batches {
                            out.extend(encode_recordbatch(Arc::clone(&fields), b));
                        }
                        Ok(Response::Query(QueryResponse::new(
                            fields,
                            stream::iter(out),
                        )))
                    }
                    Err(why) => Err(self.deny(
                        session(StatementKind::Catalog).timed(started),
                        Decision::Failed,
                        catalog_code(&why),
                        why,
                    )),
                }
            }
            Route::Set { name, value } if name == PURPOSE_SETTING => {
                let checked = self.shared.ex().session(&principal, Some(value));
                let entry = self.entry(StatementKind::Session, &principal, Some(value), text);
                match checked {
                    Ok(_) => {
                        self.record(entry)?;
                        self.lock().purpose = Some(value.clone());
                        Ok(Response::Execution(Tag::new("SET")))
                    }
                    Err(e) => Err(self.deny(entry, Decision::Refused, "42501", e.to_string())),
                }
            }
            Route::Set { name, .. } if fixed_setting(name) => {
                // Who the session runs as, and how the engine runs, are the exchange's:
                // saying "SET" and changing nothing would mislead (review 31).
                Err(self.deny(
                    session(StatementKind::Session),
                    Decision::Refused,
                    "42501",
                    format!(
                        "{name} is fixed by the exchange: log in as the principal, declare the purpose with SET {PURPOSE_SETTING}"
                    ),
                ))
            }
            Route::Set { .. } => {
                // Client preferences (DateStyle, extra_float_digits, application_name ...)
                // change nothing the exchange does.
                self.record(session(StatementKind::Session))?;
                Ok(Response::Execution(Tag::new("SET")))
            }
            Route::Reset { name } if fixed_setting(name) => Err(self.deny(
                session(StatementKind::Session),
                Decision::Refused,
                "42501",
                format!("{name} is fixed by the exchange: there is nothing to reset"),
            )),
            Route::Reset { name } => {
                self.record(session(StatementKind::Session))?;
                if name == PURPOSE_SETTING || name == "all" {
                    self.lock().purpose = None;
                }
                Ok(Response::Execution(Tag::new("RESET")))
            }
            Route::Show { name } => {
                let value = match name.as_str() {
                    PURPOSE_SETTING => Some(purpose.clone().unwrap_or_default()),
                    "transaction isolation level" | "transaction_isolation" => {
                        Some("read committed".into())
                    }
                    "transaction_read_only" | "default_transaction_read_only" => Some("on".into()),
                    "max_identifier_length" => Some("63".into()),
                    "lc_collate" | "lc_ctype" => Some("C".into()),
                    "time zone" | "timezone" => Some(options.time_zone.clone()),
                    other => self
                        .shared
                        .parameters_of(client)
                        .into_iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(other))
                        .map(|(_, v)| v),
                };
                let Some(value) = value else {
                    return Err(self.deny(
                        session(StatementKind::Session),
                        Decision::Failed,
                        "42704",
                        format!("unrecognized configuration parameter \"{name}\""),
                    ));
                };
                self.record(Entry {
                    rows: Some(1),
                    ..session(StatementKind::Session)
                })?;
                let schema = show_schema(name);
                let fields = Arc::new(arrow_schema_to_pg_fields(&schema, format, Some(options))?);
                let batch = arrow::array::RecordBatch::try_new(
                    schema,
                    vec![Arc::new(arrow::array::StringArray::from(vec![value]))],
                )
                .map_err(|e| error("XX000", e.to_string()))?;
                let rows: Vec<_> = encode_recordbatch(Arc::clone(&fields), batch).collect();
                Ok(Response::Query(QueryResponse::new(
                    fields,
                    stream::iter(rows),
                )))
            }
            Route::Begin => {
                self.record(session(StatementKind::Session))?;
                Ok(Response::TransactionStart(Tag::new("BEGIN")))
            }
            Route::End { tag } => {
                self.record(session(StatementKind::Session))?;
                Ok(Response::TransactionEnd(Tag::new(tag)))
            }
            Route::NoOp { tag } => {
                self.record(session(StatementKind::Session))?;
                Ok(Response::Execution(Tag::new(tag)))
            }
        }
    }

    /// Describe a statement for the extended protocol (planned under policy, not run).
    async fn describe(&self, text: &str, route: &Route) -> PgWireResult<PgStatement> {
        let (principal, purpose) = self.principal()?;
        let (params, schema) = match route {
            Route::Data => {
                let ex = Arc::clone(self.shared.gate.exchange());
                let (p, pu, sql) = (principal.clone(), purpose.clone(), text.to_string());
                let described = self
                    .shared
                    .gate
                    .guarded(
                        StatementKind::Prepare,
                        &principal,
                        purpose.as_deref(),
                        text,
                        async move { ex.describe_statement(&p, pu.as_deref(), &sql).await },
                    )
                    .await
                    .map_err(status_error)?
                    .map_err(|e| status_error(crate::server::service::status_of(e)))?;
                (described.params, Some(described.schema))
            }
            Route::Catalog => {
                let catalog = self
                    .shared
                    .catalogs
                    .get(self.shared.ex(), &principal, purpose.as_deref())
                    .await
                    .map_err(|e| error("XX000", e))?;
                let (params, schema) = catalog.describe(text).await.map_err(|why| {
                    error(catalog_code(&why), crate::text::escape(&why).into_owned())
                })?;
                (params, Some(schema))
            }
            Route::Show { name } => (vec![], Some(show_schema(name))),
            _ => (vec![], None),
        };
        Ok(PgStatement {
            text: text.to_string(),
            route: route.clone(),
            params,
            schema,
        })
    }
}

#[async_trait]
impl SimpleQueryHandler for Conn {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = split(query);
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut out = Vec::with_capacity(statements.len());
        for s in statements {
            match self
                .run(client, &s.text, &s.route, &[], &Format::UnifiedText)
                .await
            {
                Ok(r) => out.push(r),
                // As Postgres: the results before the failed statement, then its error;
                // the statements after it do not run.
                Err(e) => {
                    out.push(Response::Error(Box::new(e.into())));
                    break;
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl QueryParser for Conn {
    type Statement = PgStatement;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<PgStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut statements = split(sql);
        match statements.len() {
            0 => Ok(None),
            1 => {
                let s = statements.remove(0);
                self.describe(&s.text, &s.route).await.map(Some)
            }
            _ => Err(error(
                "42601",
                "cannot insert multiple commands into a prepared statement",
            )),
        }
    }

    fn get_parameter_types(&self, stmt: &PgStatement) -> PgWireResult<Vec<Type>> {
        stmt.params.iter().map(into_pg_type).collect()
    }

    fn get_result_schema(
        &self,
        stmt: &PgStatement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        match &stmt.schema {
            Some(schema) => arrow_schema_to_pg_fields(
                schema,
                column_format.unwrap_or(&Format::UnifiedText),
                None,
            ),
            None => Ok(vec![]),
        }
    }
}

#[async_trait]
impl ExtendedQueryHandler for Conn {
    type Statement = PgStatement;
    type QueryParser = Conn;

    fn query_parser(&self) -> Arc<Conn> {
        Arc::new(self.clone())
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<PgStatement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PgStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let stmt = &portal.statement.statement;
        let params = bound_values(portal, &stmt.params)?;
        self.run(
            client,
            &stmt.text,
            &stmt.route,
            &params,
            &portal.result_column_format,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::fixed_setting;

    #[test]
    fn identity_and_engine_settings_are_fixed() {
        for name in [
            "role",
            "set role auditor",
            "set local role auditor",
            "set session role auditor",
            "set session authorization auditor",
            "session_authorization",
            "datafusion.execution.batch_size",
            "exchange.principal",
            "exchange.agency",
        ] {
            assert!(fixed_setting(name), "{name}");
        }
        for name in [
            "exchange.purpose",
            "datestyle",
            "application_name",
            "extra_float_digits",
            "search_path",
            "all",
            "set session characteristics as transaction isolation level read committed",
            "set time zone 'utc'",
        ] {
            assert!(!fixed_setting(name), "{name}");
        }
    }
}
