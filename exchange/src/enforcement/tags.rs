//! Usage tags: the constraint every column of every plan node carries, and how an
//! expression's tag follows from its inputs (after SecretFlow SCQL's column control lists).

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchemaRef, DataFusionError, Result};
use datafusion::logical_expr::expr::InSubquery;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, Subquery};
use std::collections::HashMap;
use std::sync::Arc;

use super::violation::Violation;

/// Usage tag of one output column of a plan node.
/// One scan of the plan being enforced, or a relation a UNION makes of its branches
/// (numbered from far above any scan).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScanId(pub usize);

#[derive(Debug, Clone, PartialEq)]
pub enum Tag {
    /// No constraint: raw, masked or pseudonymised.
    Free,
    /// A join key: equi-joins with the same domain only.
    JoinKey {
        /// Identity domain.
        domain: String,
        /// `agency.table.column`, for messages.
        column: String,
        /// The scan it comes from.
        scan: ScanId,
    },
    /// Aggregate input only, in groups of at least `k` distinct entities.
    AggOnly {
        /// Minimum group size.
        k: u32,
        /// The scan it comes from.
        scan: ScanId,
        /// `agency.table.column`, for messages.
        column: String,
    },
    /// A value computed (not merely passed through) from rows of a `min_group` table before
    /// aggregation: usable as a group key, never as an aggregate's argument.
    Computed {
        /// The table whose rows it was computed from.
        table: String,
    },
    /// The hidden entity column of a scan, used to count distinct entities.
    Entity {
        /// The scan.
        scan: ScanId,
    },
    /// A visible column of a protected scan (one whose aggregates are policed), passed
    /// through unchanged: unconstrained, and what an aggregate over that scan's rows may
    /// take as argument.
    Own {
        /// The scan.
        scan: ScanId,
    },
    /// The hidden row number of a protected scan.
    Row {
        /// The scan.
        scan: ScanId,
        /// Whether a join may have repeated the scan's rows (or padded them with NULLs).
        multiplied: bool,
    },
}

impl Tag {
    /// Whether the value is unconstrained (free or a protected table's own column).
    pub fn is_free(&self) -> bool {
        matches!(self, Tag::Free | Tag::Own { .. })
    }

    /// Whether this is a hidden column (entity or row number), not the analyst's.
    pub fn is_hidden(&self) -> bool {
        matches!(self, Tag::Entity { .. } | Tag::Row { .. })
    }
}

/// A refusal with this reason.
pub(super) fn refuse<T>(message: String) -> Result<T> {
    Err(DataFusionError::External(Box::new(Violation::new(message))))
}

pub(super) fn refuse_constrained(tag: &Tag, place: &str) -> Result<()> {
    match tag {
        Tag::JoinKey { column, domain, .. } => refuse(format!(
            "{column} is a join key (domain {domain}): it may only be compared for equality with another join key of domain {domain} in a join, and cannot appear in {place}"
        )),
        Tag::AggOnly { column, k, .. } => refuse(format!(
            "{column} is aggregate-only (k = {k}): it may only be an input of count, sum, avg and similar aggregates (min, max, median where the grant allows value statistics), and cannot appear in {place}"
        )),
        _ => Ok(()),
    }
}

/// The schema and tags of an enclosing query, for outer references in subqueries.
#[derive(Clone)]
pub(super) struct Scope {
    pub(super) schema: DFSchemaRef,
    pub(super) tags: Vec<Tag>,
}

fn lookup(col: &Column, scopes: &[Scope]) -> Option<Tag> {
    scopes.iter().find_map(|s| {
        s.schema
            .maybe_index_of_column(col)
            .and_then(|i| s.tags.get(i).cloned())
    })
}

/// Whether two tags are join keys that may be equated: same domain, different scans.
pub(super) fn join_keys_match(a: &Tag, b: &Tag) -> Result<bool> {
    match (a, b) {
        (
            Tag::JoinKey {
                domain: da,
                column: ca,
                scan: sa,
            },
            Tag::JoinKey {
                domain: db,
                column: cb,
                scan: sb,
            },
        ) => {
            if da != db {
                return refuse(format!(
                    "join keys {ca} (domain {da}) and {cb} (domain {db}) belong to different identity domains"
                ));
            }
            if sa == sb {
                return refuse(format!(
                    "{ca} is a join key: it may only be compared with a join key of another table"
                ));
            }
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// An expression that only passes a column (or literal) through.
pub(super) fn is_bare(e: &Expr) -> bool {
    match e {
        Expr::Column(_) | Expr::OuterReferenceColumn(..) | Expr::Literal(..) => true,
        Expr::Alias(a) => is_bare(&a.expr),
        Expr::Cast(c) => is_bare(&c.expr),
        Expr::TryCast(c) => is_bare(&c.expr),
        _ => false,
    }
}

/// Expression tagging within one node.
pub(super) struct Ctx<'a> {
    pub(super) scopes: &'a [Scope],
    pub(super) sub: &'a HashMap<usize, Vec<Tag>>,
}

/// A cast of an aggregate-only value that cannot fail (a failure would reveal the value).
fn lossless_cast(from: &arrow::datatypes::DataType, to: &arrow::datatypes::DataType) -> bool {
    super::total::cast_total(from, to)
}

impl Ctx<'_> {
    fn subquery_tag(&self, sq: &Subquery) -> Tag {
        self.sub
            .get(&(Arc::as_ptr(&sq.subquery) as usize))
            .and_then(|t| t.first().cloned())
            .unwrap_or(Tag::Free)
    }

    pub(super) fn column_type(&self, e: &Expr) -> Option<arrow::datatypes::DataType> {
        let col = match e {
            Expr::Column(c) | Expr::OuterReferenceColumn(_, c) => c,
            // A cast of a cast: the inner one's target type.
            Expr::Cast(c) => return Some(c.field.data_type().clone()),
            Expr::TryCast(c) => return Some(c.field.data_type().clone()),
            Expr::Alias(a) => return self.column_type(&a.expr),
            _ => return None,
        };
        self.scopes.iter().find_map(|s| {
            s.schema
                .maybe_index_of_column(col)
                .map(|i| s.schema.field(i).data_type().clone())
        })
    }

    /// The tag of an expression's value. Constrained columns pass only through aliases and
    /// casts that cannot fail; any other use of them is refused here.
    pub(super) fn tag(&self, expr: &Expr, place: &str) -> Result<Tag> {
        match expr {
            Expr::Column(c) | Expr::OuterReferenceColumn(_, c) => match lookup(c, self.scopes) {
                Some(t) => Ok(t),
                None => refuse(format!("cannot resolve column {c} for policy checks")),
            },
            Expr::Alias(a) => self.tag(&a.expr, place),
            Expr::Literal(..) | Expr::Placeholder(_) | Expr::ScalarVariable(..) => Ok(Tag::Free),
            Expr::Cast(c) => self.cast_tag(&c.expr, &c.field.data_type().clone(), place),
            Expr::TryCast(c) => self.cast_tag(&c.expr, &c.field.data_type().clone(), place),
            Expr::ScalarSubquery(sq) => Ok(self.subquery_tag(sq)),
            Expr::Exists(_) => Ok(Tag::Free),
            Expr::InSubquery(InSubquery { expr, subquery, .. }) => {
                let te = self.tag(expr, place)?;
                let ts = self.subquery_tag(subquery);
                match join_keys_match(&te, &ts)? {
                    true => Ok(Tag::Free),
                    false => {
                        refuse_constrained(
                            &te,
                            "an IN (subquery) test against anything but a join key of the same domain",
                        )?;
                        refuse_constrained(
                            &ts,
                            "an IN (subquery) test against anything but a join key of the same domain",
                        )?;
                        Ok(Tag::Free)
                    }
                }
            }
            Expr::SetComparison(s) => {
                let te = self.tag(&s.expr, place)?;
                refuse_constrained(&te, "an ANY/ALL comparison")?;
                refuse_constrained(&self.subquery_tag(&s.subquery), "an ANY/ALL comparison")?;
                Ok(Tag::Free)
            }
            other => {
                let mut result = Ok(());
                let _ = other.apply_children(|child| {
                    match self.tag(child, place) {
                        Ok(t) => {
                            if let Err(e) = refuse_constrained(
                                &t,
                                &format!("{place} (inside an expression or function)"),
                            ) {
                                result = Err(e);
                                return Ok(TreeNodeRecursion::Stop);
                            }
                        }
                        Err(e) => {
                            result = Err(e);
                            return Ok(TreeNodeRecursion::Stop);
                        }
                    }
                    Ok(TreeNodeRecursion::Continue)
                });
                result.map(|_| Tag::Free)
            }
        }
    }

    fn cast_tag(&self, inner: &Expr, to: &arrow::datatypes::DataType, place: &str) -> Result<Tag> {
        let t = self.tag(inner, place)?;
        if let Tag::JoinKey { .. } = t {
            use arrow::datatypes::DataType as T;
            if !matches!(to, T::Utf8 | T::LargeUtf8 | T::Utf8View) {
                refuse_constrained(&t, &format!("a cast to {to}"))?;
            }
        }
        if let Tag::AggOnly { .. } = t {
            let safe = self
                .column_type(inner)
                .is_some_and(|from| lossless_cast(&from, to));
            if !safe {
                refuse_constrained(
                    &t,
                    &format!("a cast to {to} (which could fail on raw values)"),
                )?;
            }
        }
        Ok(t)
    }

    /// Check a predicate: each conjunct is unconstrained, or an equality of two join keys
    /// of the same domain.
    pub(super) fn predicate(&self, predicate: &Expr, place: &str) -> Result<()> {
        for conjunct in split_conjunction(predicate) {
            if let Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Eq,
                right,
            }) = conjunct
            {
                let (tl, tr) = (self.tag(left, place)?, self.tag(right, place)?);
                if join_keys_match(&tl, &tr)? {
                    continue;
                }
            }
            let t = self.tag(conjunct, place)?;
            refuse_constrained(&t, place)?;
        }
        Ok(())
    }
}
