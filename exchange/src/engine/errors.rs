//! What a principal is told when a statement fails.
//!
//! Errors are told apart by their DataFusion and Arrow types, never by searching their text:
//! an error text may quote a value, or text the analyst chose to make it look like another
//! kind of error. For a query that reads governed data, a failure while running says only
//! its kind; the exchange's own typed errors (a policy refusal, a table whose data cannot be
//! read) say what they are, and nothing else passes.

use arrow::error::ArrowError;
use datafusion::common::{DataFusionError, TableReference};
use datafusion::sql::parser::Statement as DFStatement;

use super::{FailureKind as Failure, QueryError};
use crate::enforcement::{
    DataUnavailable, PrincipalSession, find_in_chain, find_limit, find_violation,
};
use crate::policy::Denial;

impl Failure {
    fn words(self) -> &'static str {
        match self {
            Failure::Cast => "a value could not be converted",
            Failure::DivideByZero => "a division by zero",
            Failure::Overflow => "an arithmetic overflow",
            Failure::Resources => {
                "the query exceeded its memory limit, or the exchange's memory budget (shared by every statement running) was in use: try again later or ask for less"
            }
            Failure::Unreadable => {
                "a data file (Parquet or CSV) could not be read; the operator should run `exchange policy check`"
            }
            Failure::Worker => {
                "a worker of the cluster failed or could not be reached; the operator should check the workers"
            }
            Failure::Other => "an expression failed on a value",
        }
    }
}

/// The exchange's own "data cannot be read" error anywhere in the chain.
fn unavailable(e: &DataFusionError) -> Option<&DataUnavailable> {
    find_in_chain(e)
}

/// A federated table's node failing the query, anywhere in the chain.
fn node_failure(e: &DataFusionError) -> Option<&crate::federation::NodeError> {
    find_in_chain(e)
}

fn failure(e: &DataFusionError) -> Failure {
    match e {
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            failure(inner)
        }
        DataFusionError::Shared(inner) => failure(inner),
        DataFusionError::Collection(all) => all.first().map_or(Failure::Other, failure),
        DataFusionError::ArrowError(a, _) => arrow_failure(a),
        DataFusionError::ParquetError(_)
        | DataFusionError::ObjectStore(_)
        | DataFusionError::IoError(_) => Failure::Unreadable,
        DataFusionError::ResourcesExhausted(_) => Failure::Resources,
        DataFusionError::External(x) => external_failure(x.as_ref()),
        _ => Failure::Other,
    }
}

fn arrow_failure(a: &ArrowError) -> Failure {
    match a {
        ArrowError::CastError(_) | ArrowError::ParseError(_) => Failure::Cast,
        ArrowError::DivideByZero => Failure::DivideByZero,
        ArrowError::ArithmeticOverflow(_) => Failure::Overflow,
        ArrowError::MemoryError(_) => Failure::Resources,
        ArrowError::IoError(..)
        | ArrowError::ParquetError(_)
        | ArrowError::CsvError(_)
        | ArrowError::JsonError(_)
        | ArrowError::IpcError(_) => Failure::Unreadable,
        ArrowError::ExternalError(x) => external_failure(x.as_ref()),
        _ => Failure::Other,
    }
}

fn external_failure(x: &(dyn std::error::Error + Send + Sync + 'static)) -> Failure {
    if let Some(d) = x.downcast_ref::<DataFusionError>() {
        failure(d)
    } else if let Some(a) = x.downcast_ref::<ArrowError>() {
        arrow_failure(a)
    } else if x.is::<tonic::Status>() || x.is::<arrow_flight::error::FlightError>() {
        // What crossed from a worker as an error of the transport, not of a value: the
        // worker's own errors arrive as the DataFusion errors they were.
        Failure::Worker
    } else if x.is::<DataUnavailable>()
        || x.is::<crate::federation::NodeError>()
        || x.is::<parquet::errors::ParquetError>()
        || x.is::<std::io::Error>()
    {
        Failure::Unreadable
    } else {
        Failure::Other
    }
}

/// The message of a construct DataFusion cannot plan: said before any data is read, so its
/// text (the analyst's own expressions) is safe to show.
fn unsupported(e: &DataFusionError) -> Option<&str> {
    match e {
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            unsupported(inner)
        }
        DataFusionError::Shared(inner) => unsupported(inner),
        DataFusionError::NotImplemented(m) => Some(m),
        _ => None,
    }
}

/// A failure while running a query over governed data: its kind, no text of its own.
fn withheld(e: &DataFusionError) -> String {
    if let Some(d) = unavailable(e) {
        return d.to_string();
    }
    if let Some(n) = node_failure(e) {
        return n.to_string();
    }
    if unsupported(e).is_some() {
        // Not its text: DataFusion now runs some subqueries while the query runs, and a
        // "not implemented" message there can quote an argument's value (review 58 F2).
        return "the query failed while running: the engine does not support an operation it met on the data; details are withheld because the query reads governed data".into();
    }
    format!(
        "the query failed while running ({}); details are withheld because the query reads governed data",
        failure(e).words()
    )
}

/// An object store's failure, told by its kind only: the service's words can quote the
/// agency's credentials (review 24 F1), whoever reads the table.
fn store_failure(e: &DataFusionError) -> Option<QueryError> {
    let said = crate::catalog::describe_store_failure_in(e)?;
    Some(QueryError::Run {
        kind: Failure::Unreadable,
        message: format!(
            "a table's data could not be read from its object store: {said}; the operator should run `exchange policy check`"
        ),
    })
}

/// What a principal is told of an error while planning, or while running a query that
/// reads nothing governed (then the text is the principal's own data's).
pub(crate) fn map_error(e: DataFusionError) -> QueryError {
    if let Some(v) = find_violation(&e) {
        return QueryError::Refused(v.message().to_string());
    }
    if let Some(l) = find_limit(&e) {
        return QueryError::Failed(l.to_string());
    }
    if let Some(s) = store_failure(&e) {
        return s;
    }
    if let Some(d) = unavailable(&e) {
        return QueryError::Failed(d.to_string());
    }
    if let Some(n) = node_failure(&e) {
        return QueryError::Failed(n.to_string());
    }
    QueryError::Failed(planning_text(&e))
}

/// DataFusion words a call whose argument types match no signature of an aggregate as an
/// internal error, a bug to report to DataFusion, before the useful part (the call as
/// typed, the candidate signatures): only that part is told, as a planning error.
fn planning_text(e: &DataFusionError) -> String {
    const NO_MATCH: &str = "No function matches the given name and argument types";
    let text = e.strip_backtrace();
    match text.find(NO_MATCH) {
        Some(at) => format!("Error during planning: {}", &text[at..]),
        None => text,
    }
}

/// What a principal is told when the analyzer (the policy rule among its rules) or the
/// optimizer fails on a statement. A refusal says why; otherwise, over governed data, the
/// engine's text is withheld: it is written about the plan with policy applied, so it can
/// print a fragment's treatments and the stored columns under them (review 57 F1: a
/// correlated subquery that the optimizer could not pull up named `name_cn(...)` and the
/// raw column beside it).
pub(crate) fn enforcement_error(governed: bool, e: DataFusionError) -> QueryError {
    if !governed
        || find_violation(&e).is_some()
        || find_limit(&e).is_some()
        || unavailable(&e).is_some()
        || node_failure(&e).is_some()
        || store_failure(&e).is_some()
    {
        return map_error(e);
    }
    QueryError::Failed(
        "the query engine cannot plan a statement of this shape over the governed tables it \
         reads (details are withheld: they describe the plan with policy applied); a \
         correlated subquery written as a join, or its aggregate computed in a CTE first, may \
         plan"
            .into(),
    )
}

/// What a principal is told when the engine cannot make an executable plan of a statement
/// that passed the policy: a limit of the engine for the statement's shape (a nested
/// correlated subquery, say), not a failure on any value, so not worded as one (review 19).
/// Over governed data the engine's text is withheld: it prints the enforced plan's
/// expressions, the owner's row filters among them.
/// Planning reads files' footers, so a missing or corrupt file fails here as it would
/// while running, and is told the same way.
pub(crate) fn physical_plan_error(governed: bool, e: DataFusionError) -> QueryError {
    if find_violation(&e).is_some()
        || unavailable(&e).is_some()
        || node_failure(&e).is_some()
        || !matches!(failure(&e), Failure::Other)
    {
        return run_error(governed, e);
    }
    if governed {
        return QueryError::Failed(
            "the query engine cannot run a statement of this shape: it failed while planning its \
             execution, before reading any data (details are withheld because the plan reads \
             governed data); a correlated subquery written as a join may plan"
                .into(),
        );
    }
    QueryError::Failed(e.strip_backtrace())
}

/// What a principal is told of an error while running: for governed data only its kind.
pub(crate) fn run_error(governed: bool, e: DataFusionError) -> QueryError {
    if find_violation(&e).is_some() {
        return map_error(e);
    }
    if let Some(s) = store_failure(&e) {
        return s;
    }
    let kind = if unavailable(&e).is_some() {
        Failure::Unreadable
    } else {
        failure(&e)
    };
    let message = if governed {
        withheld(&e)
    } else if let Some(d) = unavailable(&e) {
        d.to_string()
    } else if let Some(n) = node_failure(&e) {
        n.to_string()
    } else {
        e.strip_backtrace()
    };
    QueryError::Run { kind, message }
}

/// Refuse a statement naming a table outside the principal's catalog, before planning: the
/// same words whether the table exists or not.
pub(crate) fn check_tables(
    session: &PrincipalSession,
    stmt: &DFStatement,
) -> Result<(), QueryError> {
    let state = session.ctx.state();
    let refs = state
        .resolve_table_references(stmt)
        .map_err(|e| QueryError::Failed(e.strip_backtrace()))?;
    for r in refs {
        let exists = session.ctx.table_exist(r.clone()).unwrap_or(false);
        if !exists {
            let name = match &r {
                TableReference::Bare { table } => table.to_string(),
                TableReference::Partial { schema, table }
                | TableReference::Full { schema, table, .. } => format!("{schema}.{table}"),
            };
            let name = name.to_lowercase();
            if session.unusable.get(&name).is_some_and(|u| u.store) {
                return Err(QueryError::Run {
                    kind: Failure::Unreadable,
                    message: format!(
                        "table {name}: its data cannot be read: its agency's object store is not reachable as configured (credentials or location); the operator should run `exchange policy check`"
                    ),
                });
            }
            return Err(QueryError::Refused(not_granted(session, &name)));
        }
    }
    Ok(())
}

/// Why a table the principal named is not available.
pub(crate) fn not_granted(session: &PrincipalSession, table: &str) -> String {
    if let Some(Denial::Expired { grant, on }) = session.expired.get(table) {
        return format!("table {table}: grant {grant} expired on {on}");
    }
    if let Some(u) = session.unusable.get(table) {
        return format!(
            "table {table}: grant {} cannot be applied, so the table is withheld; the owning agency must fix its policy (exchange policy check)",
            u.grant_ref
        );
    }
    format!(
        "table {table} is not found or not granted to {} for purpose {}",
        session.principal.name, session.purpose
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn kinds_come_from_types_not_text() {
        // Text an analyst could choose says nothing: only the type decides.
        let chosen = DataFusionError::Execution("parquet file missing: 2025-03-01 visit".into());
        assert_eq!(failure(&chosen), Failure::Other);
        let text = withheld(&chosen);
        assert!(
            !text.contains("2025") && !text.contains("parquet file"),
            "{text}"
        );
        let cast = DataFusionError::ArrowError(
            Box::new(ArrowError::CastError(
                "Cannot cast string 'secret' to Int32".into(),
            )),
            None,
        );
        assert_eq!(failure(&cast), Failure::Cast);
        assert!(!withheld(&cast).contains("secret"));
        let nested = DataFusionError::Context(
            "while running".into(),
            Box::new(DataFusionError::Shared(std::sync::Arc::new(
                DataFusionError::ArrowError(Box::new(ArrowError::DivideByZero), None),
            ))),
        );
        assert_eq!(failure(&nested), Failure::DivideByZero);
        let missing = DataFusionError::External(Box::new(DataUnavailable {
            table: "health.visits".into(),
            cause: "its data file is missing".into(),
        }));
        assert_eq!(failure(&missing), Failure::Unreadable);
        assert!(withheld(&missing).contains("health.visits"));
        assert!(map_error(missing).to_string().contains("policy check"));
        // Review 58 F2: a "not implemented" error met while running can quote a value.
        let quoting = DataFusionError::NotImplemented(
            "Cannot convert scalar value 1950-03-01 secret to Int64".into(),
        );
        let told = withheld(&DataFusionError::Context(
            "while running".into(),
            Box::new(quoting),
        ));
        assert!(
            told.contains("withheld") && !told.contains("secret"),
            "{told}"
        );
    }

    #[test]
    fn a_call_matching_no_signature_is_told_without_the_internal_error() {
        let e = DataFusionError::Plan(
            "Internal error: Function 'sum' failed to match any signature, errors: ... (DataType: Utf8)..\nThis issue was likely caused by a bug in DataFusion's code. Please help us to resolve this by filing a bug report in our issue tracker: https://github.com/apache/datafusion/issues. No function matches the given name and argument types 'sum(Utf8)'. You might need to add explicit type casts.\n\tCandidate functions:\n\tsum(Int64)".into(),
        );
        let told = map_error(e).to_string();
        assert!(
            told.ends_with("Error during planning: No function matches the given name and argument types 'sum(Utf8)'. You might need to add explicit type casts.\n\tCandidate functions:\n\tsum(Int64)"),
            "{told}"
        );
        assert!(
            told.contains("Candidate functions") && !told.contains("bug"),
            "{told}"
        );
        let other = DataFusionError::Plan("Duplicate qualified field name".into());
        assert_eq!(
            map_error(other).to_string(),
            QueryError::Failed("Error during planning: Duplicate qualified field name".into())
                .to_string()
        );
    }
}
