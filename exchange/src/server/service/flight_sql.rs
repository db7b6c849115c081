//! The Flight SQL surface of the service: handshake, statements, prepared statements and
//! catalog metadata, each call authenticated first.

use std::pin::Pin;
use std::sync::Arc;

use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::server::FlightSqlService;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandStatementQuery, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage,
    SchemaAsIpc, Ticket,
};
use base64::Engine;
use futures::{Stream, stream};
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

use super::*;

#[tonic::async_trait]
impl FlightSqlService for ExchangeFlightService {
    type FlightService = ExchangeFlightService;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let Some(basic) = header.strip_prefix("Basic ") else {
            return Err(Status::unauthenticated(
                "handshake needs 'authorization: Basic base64(user:password)'",
            ));
        };
        // Clients differ on padding (the Go ADBC driver sends none).
        let decoded = base64::prelude::BASE64_STANDARD_NO_PAD
            .decode(basic.trim().trim_end_matches('='))
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default();
        let (user, password) = decoded.split_once(':').unwrap_or(("", ""));
        let stamp = self
            .check_password(user, password, "(Flight SQL authentication)")
            .await?;
        let token = self.tokens.issue(user, &stamp);
        let bearer = MetadataValue::try_from(format!("Bearer {token}")).map_err(internal)?;
        let output = stream::iter(vec![Ok(HandshakeResponse {
            protocol_version: 0,
            payload: token.into_bytes().into(),
        })]);
        let mut response: Response<Pin<Box<dyn Stream<Item = _> + Send>>> =
            Response::new(Box::pin(output));
        response.metadata_mut().insert("authorization", bearer);
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let principal = self.authenticate(&request)?;
        let purpose = Self::purpose(&request);
        let stream = self
            .begin(&principal, purpose.as_deref(), &query.query)
            .await?;
        self.stash(principal, stream, request.into_inner())
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let principal = self.authenticate(&request)?;
        let handle = String::from_utf8_lossy(&cmd.prepared_statement_handle).to_string();
        let (purpose, sql) = {
            let prepared = self.prepared.lock().map_err(internal)?;
            match prepared.get(&handle) {
                Some(p) if p.principal == principal => {
                    if Self::purpose(&request).is_some_and(|now| Some(&now) != p.purpose.as_ref()) {
                        return Err(Status::invalid_argument(
                            "the purpose differs from the one the statement was prepared for: prepare it again",
                        ));
                    }
                    (p.purpose.clone(), p.sql.clone())
                }
                _ => return Err(Status::not_found("unknown prepared statement")),
            }
        };
        let stream = self.begin(&principal, purpose.as_deref(), &sql).await?;
        self.stash(principal, stream, request.into_inner())
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let principal = self.authenticate(&request)?;
        let handle = String::from_utf8_lossy(&ticket.statement_handle).to_string();
        let pending = {
            let mut results = self.results.lock().map_err(internal)?;
            match results.get(&handle) {
                Some(r)
                    if r.principal == principal && r.created.elapsed() < self.limits.result_ttl =>
                {
                    results.remove(&handle)
                }
                _ => None,
            }
        };
        let Some(pending) = pending else {
            return Err(Status::not_found(
                "unknown or expired result: run the statement again",
            ));
        };
        // Its rows are read now: under policies changed since it was planned (a grant
        // narrowed, a principal revoked) it is not delivered.
        if let Some(planned) = pending.stream.policy_version()
            && planned != self.ex.governance().version
        {
            let why = "the policies changed since this statement was planned: run it again";
            let _ = pending.stream.cancel(&format!("not delivered: {why}"));
            return Err(Status::failed_precondition(why));
        }
        // Dropped with the response: a client that goes away stops the query, recorded
        // `cancelled`.
        Ok(Response::new(
            self.deliver(&principal, pending.stream).await?,
        ))
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let started = Instant::now();
        let principal = self.authenticate(&request)?;
        let purpose = Self::purpose(&request);
        {
            let prepared = self.prepared.lock().map_err(internal)?;
            if prepared
                .values()
                .filter(|p| p.principal == principal)
                .count()
                >= self.limits.max_prepared_per_principal
            {
                return Err(Status::resource_exhausted(format!(
                    "{principal} holds {} prepared statements: close some first",
                    self.limits.max_prepared_per_principal
                )));
            }
        }
        // Planning takes a query slot like running does, and runs on the statements' runtime.
        let slot = match self.slots.take(&principal).await {
            Ok(slot) => slot,
            Err(reason) => {
                return Err(self.turned_away(
                    StatementKind::Prepare,
                    &principal,
                    purpose.as_deref(),
                    &query.query,
                    reason,
                    started,
                ));
            }
        };
        let ex = Arc::clone(&self.ex);
        let (p, pu, q) = (principal.clone(), purpose.clone(), query.query.clone());
        let planned = self
            .plan_holding(
                slot,
                async move { ex.query_schema(&p, pu.as_deref(), &q).await },
            )
            .await;
        let schema = match planned? {
            Some(r) => r.map_err(status_of)?,
            None => {
                // Dropped while planning, before it could audit itself (review 18).
                let reason = format!("planning timed out after {:?}", self.limits.query_timeout);
                self.not_run(
                    StatementKind::Prepare,
                    &principal,
                    purpose.as_deref(),
                    &query.query,
                    &reason,
                    started,
                )?;
                return Err(Status::deadline_exceeded(reason));
            }
        };
        let IpcMessage(schema_bytes) = SchemaAsIpc::new(&schema, &IpcWriteOptions::default())
            .try_into()
            .map_err(|e: arrow::error::ArrowError| internal(e))?;
        let handle = random_handle()?;
        self.prepared.lock().map_err(internal)?.insert(
            handle.clone(),
            Prepared {
                principal,
                purpose,
                sql: query.query,
            },
        );
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.into_bytes().into(),
            dataset_schema: schema_bytes,
            parameter_schema: Default::default(),
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        let principal = self.authenticate(&request)?;
        let handle = String::from_utf8_lossy(&query.prepared_statement_handle).to_string();
        let mut prepared = self.prepared.lock().map_err(internal)?;
        if prepared
            .get(&handle)
            .is_some_and(|p| p.principal == principal)
        {
            prepared.remove(&handle);
        }
        Ok(())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.authenticate(&request)?;
        let schema = query.into_builder().schema();
        self.info_for(query, &schema, request.into_inner())
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.authenticate(&request)?;
        let schema = query.clone().into_builder().schema();
        self.info_for(query, &schema, request.into_inner())
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.authenticate(&request)?;
        let schema = query.clone().into_builder().schema();
        self.info_for(query, &schema, request.into_inner())
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.authenticate(&request)?;
        let schema = query.into_builder().schema();
        self.info_for(query, &schema, request.into_inner())
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.authenticate(&request)?;
        let schema = query.clone().into_builder(&self.sql_info).schema();
        self.info_for(query, &schema, request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.authenticate(&request)?;
        let mut builder = query.into_builder();
        builder.append(crate::enforcement::CATALOG);
        Ok(Response::new(one_batch(builder.build())?))
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let tables = self.visible_tables(&request).await?;
        let mut builder = query.into_builder();
        let mut schemas: Vec<&String> = tables.iter().map(|t| &t.0).collect();
        schemas.dedup();
        for s in schemas {
            builder.append(crate::enforcement::CATALOG, s);
        }
        Ok(Response::new(one_batch(builder.build())?))
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let tables = self.visible_tables(&request).await?;
        let mut builder = query.into_builder();
        for (schema, table, columns) in &tables {
            builder
                .append(crate::enforcement::CATALOG, schema, table, "TABLE", columns)
                .map_err(internal)?;
        }
        Ok(Response::new(one_batch(builder.build())?))
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.authenticate(&request)?;
        let mut builder = query.into_builder();
        builder.append("TABLE");
        Ok(Response::new(one_batch(builder.build())?))
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.authenticate(&request)?;
        let builder = query.into_builder(&self.sql_info);
        Ok(Response::new(one_batch(builder.build())?))
    }

    async fn do_get_fallback(
        &self,
        request: Request<Ticket>,
        _message: Any,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.authenticate(&request)?;
        Err(Status::unimplemented("not offered by this server"))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::FailureKind;

    #[test]
    fn status_messages_escape_terminal_controls() {
        let s = status_of(QueryError::Failed("SQL error near \u{1b}[2J\r".into()));
        assert!(!s.message().contains('\u{1b}') && !s.message().contains('\r'));
        assert!(s.message().contains("\\u{1b}[2J"), "{}", s.message());
        assert_eq!(
            status_of(QueryError::Refused("no".into())).code(),
            tonic::Code::PermissionDenied
        );
    }

    #[test]
    fn run_failures_map_to_the_status_a_client_can_act_on() {
        let run = |kind| QueryError::Run {
            kind,
            message: "m".into(),
        };
        for (kind, code) in [
            (FailureKind::Resources, tonic::Code::ResourceExhausted),
            (FailureKind::Unreadable, tonic::Code::Unavailable),
            (FailureKind::Cast, tonic::Code::InvalidArgument),
            (FailureKind::DivideByZero, tonic::Code::InvalidArgument),
        ] {
            assert_eq!(status_of(run(kind)).code(), code, "{kind:?}");
        }
    }
}
