//! A node serving a hub's request: the engine's half of `exchange node`.
//!
//! The request was verified (signature, expiry, nonce) by [`crate::federation`]; here the
//! node trusts none of its content: it looks the principal up in its own registry, builds
//! the principal's session with its own grants and keys, and serves only columns of the
//! grant's fragment (row filter and treatments applied, tokens computed here). The hidden
//! entity column leaves as a token of this node's, never as the raw identifier. Every
//! request, served or refused, is a record of kind `node` naming the hub statement.

use std::sync::Arc;
use std::time::Instant;

use arrow::datatypes::DataType;
use datafusion::common::Column;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, LogicalPlanBuilder, cast, lit};
use datafusion::physical_plan::ExecutionPlan;

use super::errors::{map_error, not_granted, physical_plan_error};
use super::lineage::tables_touched;
use super::{Exchange, QueryError, QueryStream, audit_decision};
use crate::audit::{AuditError, Entry, StatementKind, TableUse};
use crate::enforcement::BaseTag;
use crate::federation::{NodeRequest, Predicate, Signer, attributes_of, roles_of};
use crate::masking::{TokenKeys, TokenKind, TokenUdf};

/// Scope of the entity tokens a node sends for `min_group` counting: keyed by the node's
/// master secret, the same for every hub and principal (counting needs only equality).
const ENTITY_SCOPE: &str = "federation/entity";

/// Longest text of a request a node's record keeps.
const MAX_TEXT_BYTES: usize = 4096;

/// A planned request.
struct Served {
    plan: Arc<dyn ExecutionPlan>,
    task: Arc<TaskContext>,
    tables: Vec<TableUse>,
}

impl Exchange {
    /// Serve a verified request of a hub as the node of `agency`: its batches stream from
    /// the returned [`QueryStream`]; a refusal is audited and returned.
    pub async fn serve_request(
        &self,
        agency: &str,
        req: &NodeRequest,
        signer: &Signer,
    ) -> Result<QueryStream, QueryError> {
        let started = Instant::now();
        let gov = self.governance();
        let head = request_head(&gov, req, signer);
        let mut named = Vec::new();
        let outcome = self.plan_request(&gov, agency, req, &mut named).await;
        let audit_error = |e: AuditError| QueryError::Audit(e.to_string());
        match outcome {
            Err(e) => {
                let (decision, reason) = audit_decision::<()>(&Err(e.clone()));
                self.audit
                    .append(Entry {
                        tables: named,
                        decision,
                        reason,
                        ..head.timed(started)
                    })
                    .map_err(audit_error)?;
                Err(e)
            }
            Ok(Served { plan, task, tables }) => {
                let entry = Entry {
                    tables,
                    ..head.clone()
                };
                self.open_stream(entry, head, started, plan, task, true)
            }
        }
    }

    /// Refuse a verified request of a hub without serving it (the node is busy), audited
    /// as refused under the same head a served request has, so that reconcile pairs it.
    pub fn refuse_request(
        &self,
        req: &NodeRequest,
        signer: &Signer,
        reason: &str,
    ) -> Result<(), QueryError> {
        let head = request_head(&self.governance(), req, signer);
        self.audit
            .append(Entry {
                decision: crate::audit::Decision::Refused,
                reason: Some(reason.to_string()),
                ..head
            })
            .map(|_| ())
            .map_err(|e| QueryError::Audit(e.to_string()))
    }

    async fn plan_request(
        &self,
        gov: &super::Governance,
        agency: &str,
        req: &NodeRequest,
        named: &mut Vec<TableUse>,
    ) -> Result<Served, QueryError> {
        let refuse = |why: String| Err(QueryError::Refused(why));
        if req.table.split_once('.').map(|(a, _)| a) != Some(agency) {
            return refuse(format!(
                "this node serves the tables of agency {agency} only"
            ));
        }
        // The principal as this node knows it: the hub's word is checked, not taken.
        let Some(p) = gov.policies.principal(&req.principal) else {
            return refuse(format!(
                "principal {} is not in this node's registry",
                req.principal
            ));
        };
        if p.agency != req.agency || roles_of(p) != req.roles || attributes_of(p) != req.attributes
        {
            return refuse(format!(
                "the hub describes principal {} otherwise than this node's registry does (agency, roles or attributes); hub and node must share the principals",
                p.name
            ));
        }
        let recipient = req
            .scope
            .strip_prefix(&format!("recipient:{}:", p.agency))
            .filter(|r| !r.is_empty());
        if req.scope != p.agency && recipient.is_none() {
            return refuse(format!(
                "tokens for {} may be made for its own agency or its export recipients only",
                p.name
            ));
        }
        let session = self.scoped_session(gov, &p.name, Some(&req.purpose), Some(&req.scope))?;
        let Some(spec) = session.tables.get(&req.table) else {
            return refuse(not_granted(&session, &req.table));
        };
        named.push(TableUse {
            table: req.table.clone(),
            grant: spec.access.audited_ref(),
            columns: vec![],
            objections: spec.objections.clone(),
        });
        let schema = spec.fragment.schema();
        let entity = TokenUdf::udf(Arc::new(TokenKeys::derive(
            &self.keys,
            TokenKind::Pseudonym,
            ENTITY_SCOPE,
            ["entity"],
        )));
        let mut exprs = Vec::new();
        for (n, c) in req.columns.iter().enumerate() {
            if req.columns[..n].contains(c) {
                return refuse(format!("{}: column {c} asked twice", req.table));
            }
            let Some(i) = schema.fields().iter().position(|f| f.name() == c) else {
                return refuse(format!(
                    "{}: {c} is not a column the grant shows {} for purpose {}",
                    req.table, p.name, req.purpose
                ));
            };
            let (q, f) = schema.qualified_field(i);
            let column = Expr::Column(Column::new(q.cloned(), f.name()));
            let expr = match spec.base_tags.get(i) {
                Some(BaseTag::Entity { .. }) => {
                    entity.call(vec![cast(column, DataType::Utf8), lit("entity")])
                }
                _ => column,
            };
            exprs.push(expr.alias(c));
        }
        let mut builder = LogicalPlanBuilder::from(spec.fragment.clone());
        // The hub's predicates over the fragment's treated values, above its row filter:
        // they pass the rows the hub would keep (it applies them again).
        let visible: Vec<String> = req
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                schema
                    .fields()
                    .iter()
                    .position(|f| f.name() == *c)
                    .is_some_and(|i| {
                        !matches!(
                            spec.base_tags.get(i),
                            Some(BaseTag::Entity { .. } | BaseTag::Row)
                        )
                    })
            })
            .map(|(_, c)| c.clone())
            .collect();
        if let Err(why) = Predicate::request_fits(&req.filters) {
            return refuse(format!("{}: {why}", req.table));
        }
        let mut predicates = Vec::new();
        for p in &req.filters {
            if let Some(c) = p
                .columns()
                .into_iter()
                .find(|c| req.columns.iter().any(|x| x == c) && !visible.iter().any(|x| x == c))
            {
                return refuse(format!(
                    "{}: a pushed predicate reads {c}, a hidden column; predicates read visible columns only",
                    req.table
                ));
            }
            match p.to_expr(schema, &visible) {
                Ok(e) => predicates.push(e),
                Err(why) => return refuse(format!("{}: {why}", req.table)),
            }
        }
        // One filter of their conjunction (a filter per predicate would nest the plan).
        if let Some(all) = datafusion::logical_expr::utils::conjunction(predicates) {
            builder = builder.filter(all).map_err(map_error)?;
        }
        let mut builder = builder.project(exprs).map_err(map_error)?;
        // DataFusion's LIMIT is an i64: a larger one limits nothing.
        if let Some(limit) = req.limit.and_then(|l| i64::try_from(l).ok())
            && let Ok(limit) = usize::try_from(limit)
        {
            builder = builder.limit(0, Some(limit)).map_err(map_error)?;
        }
        let plan = builder.build().map_err(map_error)?;
        let state = session.ctx.state();
        // The fragment is the grant's own plan: no analyst expression, so the policy rule
        // has nothing to check; the optimizer prunes the columns not asked for.
        let optimized = state
            .optimizer()
            .optimize(plan, &state, |_, _| {})
            .map_err(map_error)?;
        let physical = state
            .query_planner()
            .create_physical_plan(&optimized, &state)
            .await
            .map_err(|e| physical_plan_error(true, e))?;
        Ok(Served {
            plan: physical,
            task: session.task_ctx().map_err(map_error)?,
            tables: tables_touched(&optimized, named),
        })
    }
}

/// The record of a hub's request as a node keeps it: the request's text (bounded) and the
/// hub statement it names.
fn request_head(gov: &super::Governance, req: &NodeRequest, signer: &Signer) -> Entry {
    let filters: Vec<String> = req.filters.iter().map(|p| format!(" where {p}")).collect();
    let mut text = format!(
        "node request of hub {}: {} [{}]{}{}",
        signer.hub,
        req.table,
        req.columns.join(", "),
        filters.concat(),
        req.limit.map(|l| format!(" limit {l}")).unwrap_or_default()
    );
    // A request's own text bounds its record (the digest covers all of it).
    crate::text::cut(&mut text, MAX_TEXT_BYTES, |more| {
        format!(" ... ({more} more bytes)")
    });
    Entry {
        hub_statement: Some(format!(
            "{}/{}/{}/{}",
            signer.key_id,
            req.statement,
            req.request,
            crate::federation::asked_digest(&req.columns, req.limit, &req.filters)
        )),
        ..Entry::new(StatementKind::Node, &req.principal, text)
            .declared(Some(req.agency.clone()), Some(&req.purpose))
            .under(&gov.version)
    }
}
