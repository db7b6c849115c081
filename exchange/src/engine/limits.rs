//! Limits on a statement's size, checked on its tokens and syntax tree before planning.

use datafusion::sql::parser::Statement as DFStatement;

use super::QueryError;

/// Limits on a statement's size. DataFusion plans and evaluates expressions recursively: a
/// deep enough one overflows the stack and aborts the process, which no handler can catch
/// (and whether evaluation reaches it can depend on hidden rows). Planning time also grows
/// faster than the size. Real queries stay far below these.
pub(super) const MAX_SQL_BYTES: usize = 1 << 20;
const MAX_EXPR_DEPTH: usize = 100;
const MAX_EXPR_NODES: usize = 100_000;
/// Joins, set operations, tables and (sub)queries: DataFusion's plans, and its optimizer's
/// recursion over them, grow with each.
const MAX_SET_OPERATIONS: usize = 64;
const MAX_JOINS: usize = 32;
const MAX_NESTING: usize = 64;
/// 32: review 17 planned a 127-table join for 13 s; real statements name far fewer.
const MAX_TABLES: usize = 32;
const MAX_QUERIES: usize = 128;

/// Refuse, from the tokens alone (before the parser recurses), a statement with too many set
/// operations or joins, or parentheses nested too deep.
pub(super) fn check_tokens(sql: &str) -> Result<(), QueryError> {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::keywords::Keyword;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else {
        // The parser will say what is wrong.
        return Ok(());
    };
    let (mut set_ops, mut joins, mut depth, mut deepest) = (0usize, 0usize, 0usize, 0usize);
    for t in &tokens {
        match t {
            Token::Word(w) => match w.keyword {
                Keyword::UNION | Keyword::INTERSECT | Keyword::EXCEPT | Keyword::MINUS => {
                    set_ops += 1
                }
                Keyword::JOIN => joins += 1,
                _ => {}
            },
            Token::LParen => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            Token::RParen => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    let limit = |what: &str, n: usize, max: usize| -> Result<(), QueryError> {
        if n > max {
            Err(QueryError::Refused(format!(
                "the statement has {n} {what}, more than {max}; split it into several statements"
            )))
        } else {
            Ok(())
        }
    };
    limit(
        "set operations (UNION, INTERSECT, EXCEPT)",
        set_ops,
        MAX_SET_OPERATIONS,
    )?;
    limit("joins", joins, MAX_JOINS)?;
    limit("levels of nested parentheses", deepest, MAX_NESTING)
}

/// Refuse a statement whose expressions nest deeper or count more than the limits.
pub(super) fn check_size(stmt: &DFStatement) -> Result<(), QueryError> {
    use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, Visit, Visitor};
    use std::ops::ControlFlow;
    #[derive(Default)]
    struct Size {
        depth: usize,
        deepest: usize,
        nodes: usize,
        tables: usize,
        queries: usize,
    }
    impl Visitor for Size {
        type Break = ();
        fn pre_visit_table_factor(
            &mut self,
            _: &datafusion::sql::sqlparser::ast::TableFactor,
        ) -> ControlFlow<()> {
            self.tables += 1;
            if self.tables > MAX_TABLES {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
        fn pre_visit_query(
            &mut self,
            _: &datafusion::sql::sqlparser::ast::Query,
        ) -> ControlFlow<()> {
            self.queries += 1;
            if self.queries > MAX_QUERIES {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
        fn pre_visit_expr(&mut self, _: &SqlExpr) -> ControlFlow<()> {
            self.depth += 1;
            self.nodes += 1;
            self.deepest = self.deepest.max(self.depth);
            // Stop before going deeper: the visit itself recurses.
            if self.deepest > MAX_EXPR_DEPTH || self.nodes > MAX_EXPR_NODES {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
        fn post_visit_expr(&mut self, _: &SqlExpr) -> ControlFlow<()> {
            self.depth = self.depth.saturating_sub(1);
            ControlFlow::Continue(())
        }
    }
    let inner = match stmt {
        DFStatement::Statement(s) => Some(s.as_ref()),
        DFStatement::Explain(e) => match e.statement.as_ref() {
            DFStatement::Statement(s) => Some(s.as_ref()),
            _ => None,
        },
        _ => None,
    };
    let mut size = Size::default();
    if let Some(s) = inner {
        let _ = s.visit(&mut size);
    }
    if size.deepest > MAX_EXPR_DEPTH {
        return Err(QueryError::Refused(format!(
            "the statement's expressions nest more than {MAX_EXPR_DEPTH} levels deep; split the computation"
        )));
    }
    if size.nodes > MAX_EXPR_NODES {
        return Err(QueryError::Refused(format!(
            "the statement has more than {MAX_EXPR_NODES} expressions; split it"
        )));
    }
    if size.tables > MAX_TABLES {
        return Err(QueryError::Refused(format!(
            "the statement reads more than {MAX_TABLES} tables; split it"
        )));
    }
    if let Some(s) = inner {
        let expanded = expanded_tables(s);
        if expanded > MAX_TABLES as u64 {
            return Err(QueryError::Refused(format!(
                "the statement reads more than {MAX_TABLES} tables once each reference to a CTE is replaced by its query ({expanded}); split it"
            )));
        }
    }
    if size.queries > MAX_QUERIES {
        return Err(QueryError::Refused(format!(
            "the statement has more than {MAX_QUERIES} queries and subqueries; split it"
        )));
    }
    Ok(())
}

/// Tables a statement reads once every reference to a CTE is replaced by the CTE's query,
/// as DataFusion's planner does: a chain of CTEs each reading the previous one twice doubles
/// at every level, and 16 levels in 800 bytes took a minute to plan (review 6). Names are
/// resolved as DataFusion does; a CTE counts at least one table, and its body also counts
/// where it is written: an over-count, never an under-count.
fn expanded_tables(stmt: &datafusion::sql::sqlparser::ast::Statement) -> u64 {
    use datafusion::sql::sqlparser::ast::{ObjectName, Query, Visit, Visitor, visit_relations};
    use std::collections::HashMap;
    use std::ops::ControlFlow;

    #[derive(Default)]
    struct Ctes(HashMap<String, Vec<Query>>);
    impl Visitor for Ctes {
        type Break = ();
        fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
            if let Some(with) = &query.with {
                for cte in &with.cte_tables {
                    self.0
                        .entry(normal(&cte.alias.name))
                        .or_default()
                        .push((*cte.query).clone());
                }
            }
            ControlFlow::Continue(())
        }
    }
    // As DataFusion resolves names: unquoted ones in lower case, quoted ones as written
    // (review 7: `"Abc"` and `"abc"` are two CTEs, not one reference to itself).
    fn normal(ident: &datafusion::sql::sqlparser::ast::Ident) -> String {
        match ident.quote_style {
            Some(_) => ident.value.clone(),
            None => ident.value.to_lowercase(),
        }
    }
    fn name_of(rel: &ObjectName) -> Option<String> {
        match rel.0.as_slice() {
            [part] => part.as_ident().map(normal),
            _ => None,
        }
    }
    fn weight_of<V: Visit>(
        node: &V,
        ctes: &Ctes,
        memo: &mut HashMap<String, u64>,
        stack: &mut Vec<String>,
    ) -> u64 {
        let mut total = 0u64;
        let _ = visit_relations(node, |rel| {
            let w = match name_of(rel) {
                Some(n) if ctes.0.contains_key(&n) && !stack.contains(&n) => {
                    if let Some(w) = memo.get(&n) {
                        *w
                    } else {
                        stack.push(n.clone());
                        // A query reading no table still counts (`SELECT 1` doubled 16 times
                        // planned as long as a table, review 7).
                        let w = ctes.0.get(&n).map_or(1, |qs| {
                            qs.iter()
                                .map(|q| weight_of(q, ctes, memo, stack).max(1))
                                .max()
                                .unwrap_or(1)
                        });
                        stack.pop();
                        memo.insert(n, w);
                        w
                    }
                }
                _ => 1,
            };
            total = total.saturating_add(w);
            ControlFlow::<()>::Continue(())
        });
        total
    }
    let mut ctes = Ctes::default();
    let _ = stmt.visit(&mut ctes);
    if ctes.0.is_empty() {
        return 0;
    }
    weight_of(stmt, &ctes, &mut HashMap::new(), &mut Vec::new())
}
