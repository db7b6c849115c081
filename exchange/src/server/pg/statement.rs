//! What a Postgres client sent: which statements read data (run by the exchange, under
//! policy), which read only the catalog (answered from what the principal may see), and
//! which set up the session (SET, SHOW, transactions).

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr, ObjectName, Set, Statement, visit_expressions, visit_relations,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

/// The setting that declares a connection's purpose.
pub(crate) const PURPOSE_SETTING: &str = "exchange.purpose";

/// Schemas whose tables describe the catalog and hold no data.
const CATALOG_SCHEMAS: &[&str] = &["pg_catalog", "information_schema"];

/// Where a statement goes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Route {
    /// Reads governed tables, or is not understood here: the exchange runs it (and explains
    /// a refusal or a syntax error), audited.
    Data,
    /// Reads only pg_catalog or information_schema, or no table at all.
    Catalog,
    /// `SET name = value` / `SET name TO value`.
    Set {
        /// The setting, lower case.
        name: String,
        /// Its value, unquoted.
        value: String,
    },
    /// `RESET name` / `RESET ALL`.
    Reset {
        /// The setting, lower case ("all" for all).
        name: String,
    },
    /// `SHOW name`.
    Show {
        /// The setting, lower case.
        name: String,
    },
    /// BEGIN / START TRANSACTION.
    Begin,
    /// COMMIT / END / ROLLBACK.
    End {
        /// The command tag.
        tag: &'static str,
    },
    /// DISCARD, DEALLOCATE, CLOSE: nothing to do, the exchange keeps no server-side state.
    NoOp {
        /// The command tag.
        tag: &'static str,
    },
}

/// One statement of a request, with its text and where it goes.
#[derive(Debug, Clone)]
pub(crate) struct Split {
    /// The text to run: the client's own text when it sent one statement.
    pub text: String,
    /// Where it goes.
    pub route: Route,
}

/// The statements of `sql`. Text that does not parse goes to the exchange whole, which
/// refuses it with the parser's reason and audits it.
pub(crate) fn split(sql: &str) -> Vec<Split> {
    if sql.trim().trim_end_matches(';').trim().is_empty() {
        return vec![];
    }
    let Ok(statements) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        return vec![Split {
            text: sql.to_string(),
            route: Route::Data,
        }];
    };
    let single = statements.len() == 1;
    statements
        .into_iter()
        .map(|s| Split {
            route: route(&s),
            text: if single {
                sql.trim().trim_end_matches(';').to_string()
            } else {
                s.to_string()
            },
        })
        .collect()
}

/// Where one parsed statement goes.
pub(crate) fn route(statement: &Statement) -> Route {
    match statement {
        Statement::Query(_) => {
            if reads_only_catalog(statement) {
                Route::Catalog
            } else {
                Route::Data
            }
        }
        Statement::Set(set) => match set {
            Set::SingleAssignment {
                variable, values, ..
            } => Route::Set {
                name: name_of(variable),
                value: values.iter().map(value_text).collect::<Vec<_>>().join(", "),
            },
            // SET TIME ZONE, SET NAMES, SET TRANSACTION, SET ROLE ...: client preferences
            // that change nothing the exchange does.
            other => Route::Set {
                name: other.to_string().to_lowercase(),
                value: String::new(),
            },
        },
        Statement::Reset(r) => {
            let text = r.to_string().to_lowercase();
            let name = text.trim_start_matches("reset").trim().to_string();
            Route::Reset { name }
        }
        Statement::ShowVariable { variable } => {
            let words: Vec<String> = variable.iter().map(|i| i.value.to_lowercase()).collect();
            // `SHOW TRANSACTION ISOLATION LEVEL` is words; `SHOW exchange.purpose` a name.
            let spaced = words.join(" ");
            Route::Show {
                name: if ["transaction isolation level", "time zone"].contains(&spaced.as_str()) {
                    spaced
                } else {
                    words.join(".")
                },
            }
        }
        Statement::StartTransaction { .. } => Route::Begin,
        Statement::Commit { .. } => Route::End { tag: "COMMIT" },
        Statement::Rollback { .. } => Route::End { tag: "ROLLBACK" },
        Statement::Discard { .. } => Route::NoOp { tag: "DISCARD ALL" },
        Statement::Deallocate { .. } => Route::NoOp { tag: "DEALLOCATE" },
        Statement::Close { .. } => Route::NoOp {
            tag: "CLOSE CURSOR",
        },
        _ => Route::Data,
    }
}

fn name_of(name: &ObjectName) -> String {
    name.0
        .iter()
        .map(|p| match p.as_ident() {
            Some(i) => i.value.to_lowercase(),
            None => p.to_string().to_lowercase(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// A SET value as the client meant it: `'x'`, `x` and `"x"` are all `x`.
fn value_text(e: &datafusion::sql::sqlparser::ast::Expr) -> String {
    use datafusion::sql::sqlparser::ast::{Expr, Value};
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
            other => other.to_string(),
        },
        Expr::Identifier(i) => i.value.clone(),
        other => other.to_string(),
    }
}

/// Whether every relation the statement names is a catalog table (or a name of no schema:
/// a CTE, a table function): such a statement cannot read governed data, which lives only
/// in agencies' schemas.
fn reads_only_catalog(statement: &Statement) -> bool {
    // The exchange's own functions (privacy_budget) live in the principal's session only.
    let own = visit_expressions(statement, |e: &Expr| match e {
        Expr::Function(f)
            if f.name
                .to_string()
                .to_lowercase()
                .ends_with("privacy_budget") =>
        {
            ControlFlow::Break(())
        }
        _ => ControlFlow::Continue(()),
    });
    if own.is_break() {
        return false;
    }
    let flow = visit_relations(statement, |name: &ObjectName| {
        let parts: Vec<String> = name
            .0
            .iter()
            .map(|p| match p.as_ident() {
                Some(i) => i.value.to_lowercase(),
                None => p.to_string().to_lowercase(),
            })
            .collect();
        let governed = match parts.len() {
            0 | 1 => false,
            n => !CATALOG_SCHEMAS.contains(&parts[n - 2].as_str()),
        };
        if governed {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    flow.is_continue()
}

/// The purpose stated in the startup parameters: `options=-c exchange.purpose=...` (libpq's
/// PGOPTIONS, psycopg's `options`), or a parameter `exchange.purpose` itself (JDBC).
pub(crate) fn startup_purpose(
    params: &std::collections::HashMap<String, String>,
) -> Option<String> {
    // The last one stated wins, as Postgres reads `-c` settings, and `options` after the
    // parameter.
    let mut found = params.get(PURPOSE_SETTING).map(|p| p.trim().to_string());
    let Some(options) = params.get("options") else {
        return found;
    };
    let mut words = options.split_whitespace();
    while let Some(w) = words.next() {
        let setting = match w {
            "-c" | "--c" => words.next(),
            w => w.strip_prefix("-c").or_else(|| w.strip_prefix("--")),
        };
        if let Some((name, value)) = setting.and_then(|s| s.split_once('='))
            && name.trim().eq_ignore_ascii_case(PURPOSE_SETTING)
        {
            found = Some(value.trim().to_string());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(sql: &str) -> Vec<Route> {
        split(sql).into_iter().map(|s| s.route).collect()
    }

    #[test]
    fn catalog_statements_are_those_that_name_no_agency_table() {
        assert_eq!(
            routes(
                "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            ),
            vec![Route::Catalog]
        );
        assert_eq!(routes("select version()"), vec![Route::Catalog]);
        // Review 54: the budget function is the exchange's, not the catalog's.
        assert_eq!(
            routes("SELECT privacy_budget('health.visits')"),
            vec![Route::Data]
        );
        assert_eq!(
            routes("SELECT * FROM information_schema.columns WHERE table_schema = 'police'"),
            vec![Route::Catalog]
        );
        // A data table anywhere, a subquery or a CTE included, sends it to the exchange.
        for sql in [
            "SELECT * FROM police.residents",
            "SELECT relname FROM pg_catalog.pg_class WHERE relname IN (SELECT name FROM police.residents)",
            "WITH t AS (SELECT * FROM exchange.health.visits) SELECT * FROM t",
            "SELECT * FROM pg_class JOIN police.residents ON true",
        ] {
            assert_eq!(routes(sql), vec![Route::Data], "{sql}");
        }
        // Not understood here: the exchange says why.
        assert_eq!(routes("SELEC 1"), vec![Route::Data]);
        assert_eq!(routes("DROP TABLE police.residents"), vec![Route::Data]);
    }

    #[test]
    fn session_statements_are_recognised() {
        assert_eq!(
            routes("SET exchange.purpose = 'complaint_handling'"),
            vec![Route::Set {
                name: "exchange.purpose".into(),
                value: "complaint_handling".into()
            }]
        );
        assert_eq!(
            routes("set exchange.purpose to complaint_handling"),
            vec![Route::Set {
                name: "exchange.purpose".into(),
                value: "complaint_handling".into()
            }]
        );
        assert_eq!(
            routes("SHOW exchange.purpose"),
            vec![Route::Show {
                name: "exchange.purpose".into()
            }]
        );
        assert_eq!(
            routes("BEGIN; COMMIT; ROLLBACK"),
            vec![
                Route::Begin,
                Route::End { tag: "COMMIT" },
                Route::End { tag: "ROLLBACK" }
            ]
        );
        assert_eq!(routes("  ;  "), vec![]);
    }

    #[test]
    fn one_statement_keeps_its_text_several_are_split() {
        let one = split("SELECT 1 AS a;");
        assert_eq!(one[0].text, "SELECT 1 AS a");
        let two = split("SELECT 1 AS a; SELECT name FROM police.residents");
        assert_eq!(two.len(), 2);
        assert_eq!(two[1].text, "SELECT name FROM police.residents");
        assert_eq!(two[1].route, Route::Data);
    }

    #[test]
    fn the_purpose_is_read_from_the_startup_options() {
        let params =
            |k: &str, v: &str| std::collections::HashMap::from([(k.to_string(), v.to_string())]);
        for (k, v) in [
            ("options", "-c exchange.purpose=complaint_handling"),
            ("options", "-cexchange.purpose=complaint_handling"),
            ("options", "--exchange.purpose=complaint_handling"),
            (
                "options",
                "-c statement_timeout=5 -c exchange.purpose=complaint_handling",
            ),
            ("exchange.purpose", "complaint_handling"),
        ] {
            assert_eq!(
                startup_purpose(&params(k, v)).as_deref(),
                Some("complaint_handling"),
                "{k}={v}"
            );
        }
        assert_eq!(
            startup_purpose(&params("options", "-c search_path=x")),
            None
        );
        // The last stated wins.
        assert_eq!(
            startup_purpose(&params(
                "options",
                "-c exchange.purpose=a -c exchange.purpose=complaint_handling"
            ))
            .as_deref(),
            Some("complaint_handling")
        );
    }
}
