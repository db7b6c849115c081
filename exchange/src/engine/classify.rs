//! What kind of statement was sent: a query, an EXPLAIN, a DESCRIBE, or a refused one.

use datafusion::common::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;

use super::QueryError;
use super::limits::{MAX_SQL_BYTES, check_size, check_tokens};
use crate::enforcement::PrincipalSession;

pub(crate) enum Kind {
    Query(Box<DFStatement>),
    Explain {
        verbose: bool,
        inner: Box<DFStatement>,
    },
    Describe(String),
}

impl Kind {
    /// The result schema of a statement whose result the exchange makes itself (EXPLAIN,
    /// DESCRIBE); None for a query, whose plan tells its own.
    pub(crate) fn fixed_schema(&self) -> Option<arrow::datatypes::SchemaRef> {
        match self {
            Kind::Explain { .. } => Some(super::run::text_schema(&["plan"])),
            Kind::Describe(_) => Some(super::run::text_schema(&super::run::DESCRIBE_COLUMNS)),
            Kind::Query(_) => None,
        }
    }

    pub(crate) fn label(&self) -> crate::audit::StatementKind {
        use crate::audit::StatementKind;
        match self {
            Kind::Query(_) => StatementKind::Query,
            Kind::Explain { .. } => StatementKind::Explain,
            Kind::Describe(_) => StatementKind::Describe,
        }
    }
}

pub(crate) fn classify(session: &PrincipalSession, sql: &str) -> Result<Kind, QueryError> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(QueryError::Refused(format!(
            "the statement is longer than {MAX_SQL_BYTES} bytes"
        )));
    }
    check_tokens(sql)?;
    let mut statements = session
        .parse(sql)
        .map_err(|e| QueryError::Failed(e.strip_backtrace()))?;
    if let Some(s) = statements.front() {
        check_size(s)?;
    }
    if statements.len() != 1 {
        return Err(QueryError::Refused(format!(
            "exactly one statement per request, got {}",
            statements.len()
        )));
    }
    let Some(statement) = statements.pop_front() else {
        return Err(QueryError::Refused("empty statement".into()));
    };
    match statement {
        DFStatement::Statement(s) => match *s {
            SqlStatement::Query(_) => Ok(Kind::Query(Box::new(DFStatement::Statement(s)))),
            SqlStatement::ExplainTable { table_name, .. } => {
                Ok(Kind::Describe(table_name.to_string()))
            }
            SqlStatement::Explain { .. } => Err(QueryError::Refused(
                "this EXPLAIN form is not supported; use EXPLAIN [VERBOSE] SELECT ...".into(),
            )),
            SqlStatement::ShowTables { .. }
            | SqlStatement::ShowColumns { .. }
            | SqlStatement::ShowVariable { .. }
            | SqlStatement::ShowVariables { .. }
            | SqlStatement::ShowFunctions { .. }
            | SqlStatement::ShowCreate { .. }
            | SqlStatement::ShowSchemas { .. }
            | SqlStatement::ShowDatabases { .. } => Err(QueryError::Refused(
                "SHOW is not available: list your tables with \\d (REPL) or DESCRIBE agency.table"
                    .into(),
            )),
            SqlStatement::Set(_) => Err(QueryError::Refused(
                "SET is refused: session settings are fixed by the exchange".into(),
            )),
            SqlStatement::Copy { .. } => Err(QueryError::Refused(
                "COPY is refused: results leave only as query results or signed exports".into(),
            )),
            other => Err(QueryError::Refused(format!(
                "only queries (SELECT, WITH, VALUES), EXPLAIN and DESCRIBE may run; refused: {}",
                statement_keyword(&other)
            ))),
        },
        DFStatement::Explain(e) => {
            if e.options.analyze {
                return Err(QueryError::Refused(
                    "EXPLAIN ANALYZE is refused: its row counts would reveal data before policy thresholds apply".into(),
                ));
            }
            match e.statement.as_ref() {
                DFStatement::Statement(s) if matches!(**s, SqlStatement::Query(_)) => {
                    Ok(Kind::Explain {
                        verbose: e.options.verbose,
                        inner: e.statement,
                    })
                }
                _ => Err(QueryError::Refused(
                    "EXPLAIN applies to queries only".into(),
                )),
            }
        }
        DFStatement::CreateExternalTable(_) => Err(QueryError::Refused(
            "CREATE EXTERNAL TABLE is refused: the exchange reads only its own catalog".into(),
        )),
        DFStatement::CopyTo(_) => Err(QueryError::Refused(
            "COPY is refused: results leave only as query results or signed exports".into(),
        )),
        DFStatement::Reset(_) => Err(QueryError::Refused(
            "RESET is refused: session settings are fixed by the exchange".into(),
        )),
    }
}

fn statement_keyword(s: &SqlStatement) -> String {
    let text = s.to_string();
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
        .to_uppercase()
}

/// A plan the locked SQL options reject (DDL, DML, statements).
pub(super) fn refused_statement(_: DataFusionError) -> QueryError {
    QueryError::Refused("only queries (SELECT, WITH, VALUES) may run".into())
}

pub(super) fn sql_options() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}
