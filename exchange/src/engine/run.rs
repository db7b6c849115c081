//! Planning a query under policy and running a classified statement.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::ScalarValue;
use datafusion::execution::SessionState;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::sql::parser::Statement as DFStatement;

use super::classify::{Kind, refused_statement, sql_options};
use super::errors::{
    check_tables, enforcement_error, map_error, not_granted, physical_plan_error, run_error,
};
use super::explain::render_explain;
use super::lineage::{governed_scans, tables_touched};
use super::{Exchange, QueryError, QueryOutput};
use crate::audit::TableUse;
use crate::enforcement::{PrincipalSession, privacy_applied, thresholds_applied};
use crate::policy::Treatment;

/// What EXPLAIN says of distribution in a distributed session.
const DISTRIBUTION_NOTE: &str = "\nDistribution: runs on the workers of [distributed] where its size calls for it (on the hub alone when it reads an agency node's table); the stages are not shown, since they follow the sizes of whole datasets, which a row filter may hide\n";

/// Whether a plan read any of `scans` (its governed tables) that the principal does not
/// see whole and raw.
fn reads_governed_data(session: &PrincipalSession, scans: &[TableUse]) -> bool {
    scans.iter().any(|s| {
        session.tables.get(&s.table).is_none_or(|spec| {
            spec.access.row_filter.is_some()
                // Rows leave only aggregated (their fragment carries the entity hidden).
                || spec.access.min_group.is_some()
                || spec.access.privacy.is_some()
                // Rows of residents objecting in another agency's register (a register
                // covers its own agency's tables) are left out: not the whole table either.
                || (spec.objections.is_some() && spec.dataset.agency != session.principal.agency)
                || spec.access.columns.len() != spec.dataset.columns.len()
                || spec
                    .access
                    .columns
                    .iter()
                    .any(|c| c.treatment != Treatment::Plain)
        })
    })
}

/// The policy rule (an analyzer rule) and then the optimizer over `plan`: the optimized
/// plan, and the group thresholds the enforced plan applies, read off its barriers before
/// the optimizer may prune a subtree that holds one.
fn enforce(state: &SessionState, plan: &LogicalPlan) -> datafusion::common::Result<Enforced> {
    let analyzed =
        state
            .analyzer()
            .execute_and_check(plan.clone(), state.config_options(), |_, _| {})?;
    let thresholds = thresholds_applied(&analyzed);
    let privacy = privacy_applied(&analyzed)
        .iter()
        .map(|m| m.to_string())
        .collect();
    let optimized = state.optimizer().optimize(analyzed, state, |_, _| {})?;
    Ok(Enforced {
        optimized,
        thresholds,
        privacy,
    })
}

/// A plan with policy applied and optimized, and what the policy applied.
struct Enforced {
    optimized: LogicalPlan,
    /// Group thresholds.
    thresholds: Vec<(String, u32)>,
    /// Differentially private aggregates, described.
    privacy: Vec<String>,
}

/// The types of a query's parameters (`$1`, `$2`, ...), in order, as DataFusion infers them
/// from the statement as written (a parameter whose type nothing implies is text). Its plan
/// is only read for them, never run.
pub(crate) async fn parameter_types(
    session: &PrincipalSession,
    stmt: &DFStatement,
) -> Result<Vec<DataType>, QueryError> {
    check_tables(session, stmt)?;
    let plan = session
        .ctx
        .state()
        .statement_to_plan(stmt.clone())
        .await
        .map_err(map_error)?;
    let types = plan.get_parameter_types().map_err(map_error)?;
    let mut out = Vec::with_capacity(types.len());
    for i in 1..=types.len() {
        match types.get(&format!("${i}")) {
            Some(t) => out.push(t.clone().unwrap_or(DataType::Utf8)),
            None => {
                return Err(QueryError::Failed(format!(
                    "parameters must be numbered $1 to ${} without gaps",
                    types.len()
                )));
            }
        }
    }
    Ok(out)
}

/// A query planned under policy, ready to run.
pub(crate) struct Planned {
    /// The logical plan as written, over the governed tables (before policy).
    pub written: LogicalPlan,
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
    /// At a hub: the id and requests of its node reads, when it reads tables through nodes.
    pub federated: Option<crate::federation::Federated>,
}

/// Plan a query statement as the session's principal. `named` receives the tables the
/// statement names, so that a refusal is audited with them.
pub(crate) async fn plan_query(
    session: &PrincipalSession,
    stmt: DFStatement,
    named: &mut Vec<TableUse>,
    params: &[ScalarValue],
) -> Result<Planned, QueryError> {
    let (planned, federated) = crate::federation::within_statement(super::counting_constants(
        plan_counted(session, stmt, named, params),
    ))
    .await;
    planned.map(|p| Planned { federated, ..p })
}

/// [`plan_query`], its constants counted.
async fn plan_counted(
    session: &PrincipalSession,
    stmt: DFStatement,
    named: &mut Vec<TableUse>,
    params: &[ScalarValue],
) -> Result<Planned, QueryError> {
    let state = session.ctx.state();
    check_tables(session, &stmt)?;
    let plan = state.statement_to_plan(stmt).await.map_err(map_error)?;
    // Parameters become literals before the policy rule sees the plan: to enforcement, a
    // bound `$1` is the value written in its place.
    let plan = if params.is_empty() {
        plan
    } else {
        plan.with_param_values(params.to_vec())
            .map_err(|e| QueryError::Failed(format!("parameters: {}", e.strip_backtrace())))?
    };
    *named = governed_scans(&plan);
    sql_options()
        .verify_plan(&plan)
        .map_err(refused_statement)?;
    let governed = reads_governed_data(session, named);
    let Enforced {
        optimized,
        thresholds,
        privacy,
    } = enforce(&state, &plan).map_err(|e| enforcement_error(governed, e))?;
    if let Some(why) = crate::enforcement::recheck_optimized(&optimized) {
        return Err(QueryError::Refused(why));
    }
    let physical = state
        .query_planner()
        .create_physical_plan(&optimized, &state)
        .await
        .map_err(|e| physical_plan_error(governed, e))?;
    Ok(Planned {
        tables: tables_touched(&optimized, named),
        thresholds: thresholds
            .iter()
            .map(|(c, k)| format!("{c} >= {k} distinct entities"))
            .chain(privacy)
            .collect(),
        written: plan,
        optimized,
        physical,
        governed,
        federated: None,
    })
}

/// A statement under way: a query's plan running, or a result the exchange made itself.
pub(super) enum Begun {
    /// A query: its batches come from this stream.
    Stream {
        plan: Arc<dyn ExecutionPlan>,
        task: Arc<TaskContext>,
        governed: bool,
        tables: Vec<TableUse>,
        thresholds: Vec<String>,
        federated: Option<crate::federation::Federated>,
    },
    /// EXPLAIN and DESCRIBE: made whole.
    Ready(QueryOutput),
}

/// Begin a classified statement. Besides the outcome, returns the tables the statement
/// named (with their grants), so that refused statements are audited with them too.
pub(super) async fn run(
    session: &PrincipalSession,
    kind: Kind,
    params: &[ScalarValue],
) -> (Result<Begun, QueryError>, Vec<TableUse>) {
    let mut named = Vec::new();
    let outcome = run_inner(session, kind, &mut named, params).await;
    (outcome, named)
}

async fn run_inner(
    session: &PrincipalSession,
    kind: Kind,
    named: &mut Vec<TableUse>,
    params: &[ScalarValue],
) -> Result<Begun, QueryError> {
    let state = session.ctx.state();
    if !params.is_empty() && !matches!(kind, Kind::Query(_)) {
        return Err(QueryError::Refused(
            "parameters are taken by queries only (SELECT, WITH, VALUES)".into(),
        ));
    }
    match kind {
        Kind::Query(stmt) => {
            let planned = plan_query(session, *stmt, named, params).await?;
            Ok(Begun::Stream {
                plan: planned.physical,
                task: session
                    .task_ctx()
                    .map_err(|e| run_error(planned.governed, e))?,
                governed: planned.governed,
                tables: planned.tables,
                thresholds: planned.thresholds,
                federated: planned.federated,
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
            let Enforced {
                optimized,
                thresholds,
                privacy,
            } = enforce(&state, &plan)
                .map_err(|e| enforcement_error(reads_governed_data(session, named), e))?;
            let mut text = render_explain(session, &plan, named, &thresholds, verbose);
            for p in privacy {
                text.push_str(&format!("  {p}\n"));
            }
            if session.distributed {
                // Not the stages: datafusion-distributed cuts the plan by the datasets' whole
                // sizes and the planner's estimates of them (which side of a join is hashed,
                // whether a boundary is needed at all), and a row filter hides part of those
                // sizes. The audit record names the workers a statement ran on.
                text.push_str(DISTRIBUTION_NOTE);
            }
            ready(text_output(
                "plan",
                text.lines().map(str::to_string).collect(),
                tables_touched(&optimized, named),
            ))
        }
        Kind::Describe(name) => {
            let key = name
                .strip_prefix("exchange.")
                .unwrap_or(&name)
                .to_lowercase();
            let Some(cols) = Exchange::visible_columns(session, &key) else {
                return Err(QueryError::Refused(not_granted(session, &key)));
            };
            let text = |f: &dyn Fn(&super::VisibleColumn) -> String| -> ArrayRef {
                Arc::new(StringArray::from_iter_values(cols.iter().map(f)))
            };
            let [name, data_type, treatment] = DESCRIBE_COLUMNS;
            ready(text_columns(
                vec![
                    (name, text(&|c| c.name.clone())),
                    (data_type, text(&|c| c.data_type.to_string())),
                    (treatment, text(&|c| c.treatment.to_string())),
                ],
                vec![],
            ))
        }
    }
}

/// The columns of DESCRIBE's result.
pub(super) const DESCRIBE_COLUMNS: [&str; 3] = ["column_name", "data_type", "treatment"];

/// A schema of non-null text columns (EXPLAIN, DESCRIBE).
pub(super) fn text_schema(names: &[&str]) -> arrow::datatypes::SchemaRef {
    Arc::new(Schema::new(
        names
            .iter()
            .map(|n| Field::new(*n, DataType::Utf8, false))
            .collect::<Vec<_>>(),
    ))
}

fn ready(out: Result<QueryOutput, QueryError>) -> Result<Begun, QueryError> {
    out.map(Begun::Ready)
}

fn text_output(
    column: &str,
    lines: Vec<String>,
    tables: Vec<TableUse>,
) -> Result<QueryOutput, QueryError> {
    text_columns(vec![(column, Arc::new(StringArray::from(lines)))], tables)
}

/// A result of non-null text columns made by the exchange itself (EXPLAIN, DESCRIBE).
fn text_columns(
    columns: Vec<(&str, ArrayRef)>,
    tables: Vec<TableUse>,
) -> Result<QueryOutput, QueryError> {
    let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    let schema = text_schema(&names);
    let batch = RecordBatch::try_new(
        schema.clone(),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .map_err(|e| QueryError::Failed(e.to_string()))?;
    Ok(QueryOutput {
        schema,
        rows: batch.num_rows() as u64,
        batches: vec![batch],
        tables,
        thresholds: vec![],
        digest: String::new(),
    })
}
