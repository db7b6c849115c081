//! Analyst predicates a hub sends to a node, so that fewer rows cross the wire.
//!
//! A predicate runs at the node over the columns the node returns (treated values, after
//! the row filter, exactly as the hub would see them), and the hub applies it again: the
//! result is the same whether the node applied it or not. What may travel is a small
//! language that cannot fail on a value and calls no function: comparisons of a column with
//! a literal of its own type (or a widening of it), `IN` lists, `IS NULL`, `LIKE` without
//! escapes, a boolean column, and `AND`/`OR`/`NOT` of these. No function ever runs at the
//! node on the hub's behalf: a keyed token of a literal would make the node an oracle of
//! its own pseudonyms. Anything else stays at the hub. The node checks the language and the
//! types again and refuses what does not fit.

use std::fmt;

use arrow::datatypes::{DataType, Schema, TimeUnit};
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::logical_expr::expr::{InList, Like};
use datafusion::logical_expr::{Between, BinaryExpr, Cast, Expr, ExprSchemable, Operator};
use serde::{Deserialize, Serialize};

/// A predicate over a node's output columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Predicate {
    /// All hold.
    And(Vec<Predicate>),
    /// One holds.
    Or(Vec<Predicate>),
    /// Does not hold.
    Not(Box<Predicate>),
    /// A boolean column.
    Column(String),
    /// `left op right`, both sides of one type.
    Compare {
        /// Left side.
        left: Operand,
        /// The comparison.
        op: Comparison,
        /// Right side.
        right: Operand,
    },
    /// `operand [NOT] IN (values)`.
    InList {
        /// The tested value.
        operand: Operand,
        /// Literals of the operand's type.
        values: Vec<Literal>,
        /// `NOT IN`.
        negated: bool,
    },
    /// `operand IS [NOT] NULL`.
    IsNull {
        /// The tested value.
        operand: Operand,
        /// `IS NOT NULL`.
        negated: bool,
    },
    /// `operand [NOT] [I]LIKE pattern`, the pattern without backslashes.
    Like {
        /// A string column.
        operand: Operand,
        /// `%` and `_` wildcards.
        pattern: String,
        /// `NOT LIKE`.
        negated: bool,
        /// `ILIKE`.
        case_insensitive: bool,
    },
}

/// One side of a comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Operand {
    /// A column the node returns.
    Column(String),
    /// A column converted to a wider type (a conversion that cannot fail).
    Widened {
        /// The column.
        column: String,
        /// Its new type.
        to: Literal,
    },
    /// A constant.
    Literal(Literal),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    /// `=`
    Eq,
    /// `<>`
    NotEq,
    /// `<`
    Lt,
    /// `<=`
    LtEq,
    /// `>`
    Gt,
    /// `>=`
    GtEq,
    /// `IS DISTINCT FROM`
    IsDistinctFrom,
    /// `IS NOT DISTINCT FROM`
    IsNotDistinctFrom,
}

/// A typed constant (for [`Operand::Widened`], only its type counts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Literal {
    /// A typed null.
    Null(Box<Literal>),
    /// Boolean.
    Boolean(bool),
    /// Int8.
    Int8(i8),
    /// Int16.
    Int16(i16),
    /// Int32.
    Int32(i32),
    /// Int64.
    Int64(i64),
    /// UInt8.
    #[serde(rename = "uint8")]
    UInt8(u8),
    /// UInt16.
    #[serde(rename = "uint16")]
    UInt16(u16),
    /// UInt32.
    #[serde(rename = "uint32")]
    UInt32(u32),
    /// UInt64.
    #[serde(rename = "uint64")]
    UInt64(u64),
    /// Float32 (finite).
    Float32(f32),
    /// Float64 (finite).
    Float64(f64),
    /// Utf8.
    Utf8(String),
    /// LargeUtf8.
    LargeUtf8(String),
    /// Utf8View.
    Utf8View(String),
    /// Days since 1970-01-01.
    Date32(i32),
    /// Milliseconds since 1970-01-01.
    Date64(i64),
    /// A timestamp in `unit` (`s`, `ms`, `us`, `ns`), in time zone `tz` if any.
    Timestamp {
        /// The value.
        value: i64,
        /// Its unit.
        unit: String,
        /// Its time zone.
        tz: Option<String>,
    },
}

/// Largest number of literals a predicate carries (a longer IN list stays at the hub).
const MAX_LITERALS: usize = 10_000;

/// Deepest nesting a predicate has, counted as the node builds it (an `AND` of n operands
/// nests n - 1 deep).
const MAX_DEPTH: usize = 32;

/// Most operators and operands (IN-list values aside) in all of one request's predicates:
/// a node's cost per row is bounded whatever a request holds.
pub const MAX_NODES: usize = 256;

/// Most predicates in one request.
pub const MAX_PREDICATES: usize = 32;

/// Longest LIKE pattern pushed, in characters: a pattern compiles to a regular expression,
/// and a long one can exceed the engine's size limit, an error a node must never raise.
const MAX_PATTERN_CHARS: usize = 200;

/// Most LIKE pattern characters in all of one request's predicates: a pattern is compiled
/// again for every batch, so their total bounds a node's cost per batch (review 28b).
pub const MAX_PATTERNS_CHARS: usize = 1_000;

impl Predicate {
    /// The predicate an expression of the hub's plan is, over the columns of `schema`
    /// (the node's output) other than those in `hidden`; `None` when it is not of the
    /// language (it then stays at the hub only).
    pub fn from_expr(expr: &Expr, schema: &Schema, hidden: &[&str]) -> Option<Self> {
        let p = from_expr(expr, schema, hidden, 0)?;
        p.within_limits().ok()?;
        Some(p)
    }

    /// Whether a node accepts its size: the same measure on both sides, so a hub never
    /// sends what a node refuses.
    fn within_limits(&self) -> Result<(), String> {
        if self.depth() > MAX_DEPTH
            || self.literals() > MAX_LITERALS
            || self.nodes() > MAX_NODES
            || self.longest_pattern() > MAX_PATTERN_CHARS
            || self.pattern_chars() > MAX_PATTERNS_CHARS
        {
            return Err("a pushed predicate is too large".into());
        }
        Ok(())
    }

    /// Operators and operands, IN-list values aside.
    pub fn nodes(&self) -> usize {
        match self {
            Predicate::And(ps) | Predicate::Or(ps) => {
                ps.len().saturating_sub(1).max(1) + ps.iter().map(Self::nodes).sum::<usize>()
            }
            Predicate::Not(p) => 1 + p.nodes(),
            Predicate::Column(_) => 1,
            _ => 3,
        }
    }

    /// Whether a request's predicates together stay within what a node evaluates (count,
    /// operators, LIKE pattern characters); each one's own size is checked by `to_expr`.
    pub fn request_fits(all: &[Predicate]) -> Result<(), String> {
        let nodes: usize = all.iter().map(Self::nodes).sum();
        let chars: usize = all.iter().map(Self::pattern_chars).sum();
        if all.len() > MAX_PREDICATES || nodes > MAX_NODES || chars > MAX_PATTERNS_CHARS {
            return Err(format!(
                "predicates larger than a node evaluates (at most {MAX_PREDICATES} predicates of {MAX_NODES} operators and {MAX_PATTERNS_CHARS} LIKE pattern characters in all)"
            ));
        }
        Ok(())
    }

    /// Characters of all its LIKE patterns.
    pub fn pattern_chars(&self) -> usize {
        match self {
            Predicate::And(ps) | Predicate::Or(ps) => ps.iter().map(Self::pattern_chars).sum(),
            Predicate::Not(p) => p.pattern_chars(),
            Predicate::Like { pattern, .. } => pattern.chars().count(),
            _ => 0,
        }
    }

    fn longest_pattern(&self) -> usize {
        match self {
            Predicate::And(ps) | Predicate::Or(ps) => {
                ps.iter().map(Self::longest_pattern).max().unwrap_or(0)
            }
            Predicate::Not(p) => p.longest_pattern(),
            Predicate::Like { pattern, .. } => pattern.chars().count(),
            _ => 0,
        }
    }

    /// The predicate as an expression over `schema`'s columns (of the fragment a node
    /// serves), each named one of `allowed`, type-checked: an error says why it does not fit.
    pub fn to_expr(&self, schema: &DFSchema, allowed: &[String]) -> Result<Expr, String> {
        self.within_limits()?;
        let expr = to_expr(self, schema, allowed)?;
        check_types(&expr, schema)?;
        Ok(expr)
    }

    fn literals(&self) -> usize {
        match self {
            Predicate::And(ps) | Predicate::Or(ps) => ps.iter().map(Self::literals).sum(),
            Predicate::Not(p) => p.literals(),
            Predicate::InList { values, .. } => values.len() + 1,
            _ => 2,
        }
    }

    fn depth(&self) -> usize {
        match self {
            Predicate::And(ps) | Predicate::Or(ps) => {
                ps.len().saturating_sub(1).max(1) + ps.iter().map(Self::depth).max().unwrap_or(0)
            }
            Predicate::Not(p) => 1 + p.depth(),
            _ => 1,
        }
    }

    /// Every column it reads.
    pub fn columns(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.collect_columns(&mut out);
        out
    }

    fn collect_columns<'a>(&'a self, out: &mut Vec<&'a str>) {
        let mut operand = |o: &'a Operand| match o {
            Operand::Column(c) | Operand::Widened { column: c, .. } => out.push(c.as_str()),
            Operand::Literal(_) => {}
        };
        match self {
            Predicate::And(ps) | Predicate::Or(ps) => {
                for p in ps {
                    p.collect_columns(out);
                }
            }
            Predicate::Not(p) => p.collect_columns(out),
            Predicate::Column(c) => out.push(c),
            Predicate::Compare { left, right, .. } => {
                operand(left);
                operand(right);
            }
            Predicate::InList { operand: o, .. }
            | Predicate::IsNull { operand: o, .. }
            | Predicate::Like { operand: o, .. } => operand(o),
        }
    }
}

fn from_expr(expr: &Expr, schema: &Schema, hidden: &[&str], depth: usize) -> Option<Predicate> {
    if depth > MAX_DEPTH {
        return None;
    }
    let sub = |e: &Expr| from_expr(e, schema, hidden, depth + 1);
    let operand = |e: &Expr| operand_of(e, schema, hidden);
    Some(match expr {
        Expr::Column(c) => {
            let f = field(c, schema, hidden)?;
            (f == &DataType::Boolean).then(|| Predicate::Column(c.name.clone()))?
        }
        Expr::Not(e) => Predicate::Not(Box::new(sub(e)?)),
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And => Predicate::And(vec![sub(left)?, sub(right)?]),
            Operator::Or => Predicate::Or(vec![sub(left)?, sub(right)?]),
            _ => Predicate::Compare {
                left: operand(left)?,
                op: comparison(*op)?,
                right: operand(right)?,
            },
        },
        Expr::Between(Between {
            expr,
            negated,
            low,
            high,
        }) => {
            let (x, low, high) = (operand(expr)?, operand(low)?, operand(high)?);
            let cmp = |op, bound| Predicate::Compare {
                left: x.clone(),
                op,
                right: bound,
            };
            if *negated {
                Predicate::Or(vec![cmp(Comparison::Lt, low), cmp(Comparison::Gt, high)])
            } else {
                Predicate::And(vec![
                    cmp(Comparison::GtEq, low),
                    cmp(Comparison::LtEq, high),
                ])
            }
        }
        Expr::InList(InList {
            expr,
            list,
            negated,
        }) => Predicate::InList {
            operand: operand(expr)?,
            values: list
                .iter()
                .map(|e| match e {
                    Expr::Literal(v, _) => literal(v),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?,
            negated: *negated,
        },
        Expr::IsNull(e) => Predicate::IsNull {
            operand: operand(e)?,
            negated: false,
        },
        Expr::IsNotNull(e) => Predicate::IsNull {
            operand: operand(e)?,
            negated: true,
        },
        Expr::Like(Like {
            negated,
            expr,
            pattern,
            escape_char: None,
            case_insensitive,
        }) => match pattern.as_ref() {
            Expr::Literal(
                ScalarValue::Utf8(Some(p))
                | ScalarValue::LargeUtf8(Some(p))
                | ScalarValue::Utf8View(Some(p)),
                _,
            ) if !p.contains('\\') => Predicate::Like {
                operand: operand(expr)?,
                pattern: p.clone(),
                negated: *negated,
                case_insensitive: *case_insensitive,
            },
            _ => return None,
        },
        _ => return None,
    })
}

fn field<'a>(c: &Column, schema: &'a Schema, hidden: &[&str]) -> Option<&'a DataType> {
    if hidden.contains(&c.name.as_str()) {
        return None;
    }
    schema.field_with_name(&c.name).ok().map(|f| f.data_type())
}

fn operand_of(expr: &Expr, schema: &Schema, hidden: &[&str]) -> Option<Operand> {
    match expr {
        Expr::Column(c) => {
            field(c, schema, hidden)?;
            Some(Operand::Column(c.name.clone()))
        }
        Expr::Literal(v, _) => literal(v).map(Operand::Literal),
        Expr::Cast(Cast { expr, field: to }) => match expr.as_ref() {
            Expr::Column(c) => {
                let from = field(c, schema, hidden)?;
                widens(from, to.data_type()).then_some(())?;
                Some(Operand::Widened {
                    column: c.name.clone(),
                    to: literal(&ScalarValue::try_from(to.data_type()).ok()?)?,
                })
            }
            _ => None,
        },
        _ => None,
    }
}

fn comparison(op: Operator) -> Option<Comparison> {
    Some(match op {
        Operator::Eq => Comparison::Eq,
        Operator::NotEq => Comparison::NotEq,
        Operator::Lt => Comparison::Lt,
        Operator::LtEq => Comparison::LtEq,
        Operator::Gt => Comparison::Gt,
        Operator::GtEq => Comparison::GtEq,
        Operator::IsDistinctFrom => Comparison::IsDistinctFrom,
        Operator::IsNotDistinctFrom => Comparison::IsNotDistinctFrom,
        _ => return None,
    })
}

impl Comparison {
    fn operator(self) -> Operator {
        match self {
            Comparison::Eq => Operator::Eq,
            Comparison::NotEq => Operator::NotEq,
            Comparison::Lt => Operator::Lt,
            Comparison::LtEq => Operator::LtEq,
            Comparison::Gt => Operator::Gt,
            Comparison::GtEq => Operator::GtEq,
            Comparison::IsDistinctFrom => Operator::IsDistinctFrom,
            Comparison::IsNotDistinctFrom => Operator::IsNotDistinctFrom,
        }
    }
}

/// Conversions of a column that can neither fail nor change order: integers to wider
/// integers or to Float64, Float32 to Float64, dates to wider dates.
fn widens(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    fn rank(t: &DataType) -> Option<(bool, u8)> {
        Some(match t {
            Int8 => (true, 1),
            Int16 => (true, 2),
            Int32 => (true, 4),
            Int64 => (true, 8),
            UInt8 => (false, 1),
            UInt16 => (false, 2),
            UInt32 => (false, 4),
            UInt64 => (false, 8),
            _ => return None,
        })
    }
    match (from, to) {
        (Float32, Float64) | (Date32, Date64) => true,
        (a, Float64) => rank(a).is_some_and(|(_, w)| w <= 4),
        (a, b) => match (rank(a), rank(b)) {
            (Some((sa, wa)), Some((sb, wb))) => (sa == sb && wb >= wa) || (!sa && sb && wb > wa),
            _ => false,
        },
    }
}

fn unit_name(u: &TimeUnit) -> &'static str {
    match u {
        TimeUnit::Second => "s",
        TimeUnit::Millisecond => "ms",
        TimeUnit::Microsecond => "us",
        TimeUnit::Nanosecond => "ns",
    }
}

fn literal(v: &ScalarValue) -> Option<Literal> {
    use ScalarValue as S;
    if v.is_null() {
        let typed = literal(&zero_of(&v.data_type())?)?;
        return Some(Literal::Null(Box::new(typed)));
    }
    Some(match v {
        S::Boolean(Some(b)) => Literal::Boolean(*b),
        S::Int8(Some(x)) => Literal::Int8(*x),
        S::Int16(Some(x)) => Literal::Int16(*x),
        S::Int32(Some(x)) => Literal::Int32(*x),
        S::Int64(Some(x)) => Literal::Int64(*x),
        S::UInt8(Some(x)) => Literal::UInt8(*x),
        S::UInt16(Some(x)) => Literal::UInt16(*x),
        S::UInt32(Some(x)) => Literal::UInt32(*x),
        S::UInt64(Some(x)) => Literal::UInt64(*x),
        S::Float32(Some(x)) if x.is_finite() => Literal::Float32(*x),
        S::Float64(Some(x)) if x.is_finite() => Literal::Float64(*x),
        S::Utf8(Some(s)) => Literal::Utf8(s.clone()),
        S::LargeUtf8(Some(s)) => Literal::LargeUtf8(s.clone()),
        S::Utf8View(Some(s)) => Literal::Utf8View(s.clone()),
        S::Date32(Some(d)) => Literal::Date32(*d),
        S::Date64(Some(d)) => Literal::Date64(*d),
        S::TimestampSecond(Some(t), tz)
        | S::TimestampMillisecond(Some(t), tz)
        | S::TimestampMicrosecond(Some(t), tz)
        | S::TimestampNanosecond(Some(t), tz) => {
            let DataType::Timestamp(unit, _) = v.data_type() else {
                return None;
            };
            Literal::Timestamp {
                value: *t,
                unit: unit_name(&unit).into(),
                tz: tz.as_ref().map(|z| z.to_string()),
            }
        }
        _ => return None,
    })
}

/// A non-null value of `t` (so that [`Literal::Null`] names a type).
fn zero_of(t: &DataType) -> Option<ScalarValue> {
    use ScalarValue as S;
    Some(match t {
        DataType::Boolean => S::Boolean(Some(false)),
        DataType::Utf8 => S::Utf8(Some(String::new())),
        DataType::LargeUtf8 => S::LargeUtf8(Some(String::new())),
        DataType::Utf8View => S::Utf8View(Some(String::new())),
        t => S::new_zero(t).ok()?,
    })
}

impl Literal {
    /// The constant as DataFusion's.
    fn scalar(&self) -> Result<ScalarValue, String> {
        use ScalarValue as S;
        Ok(match self {
            Literal::Null(t) => S::try_from(t.scalar()?.data_type()).map_err(|e| e.to_string())?,
            Literal::Boolean(b) => S::Boolean(Some(*b)),
            Literal::Int8(x) => S::Int8(Some(*x)),
            Literal::Int16(x) => S::Int16(Some(*x)),
            Literal::Int32(x) => S::Int32(Some(*x)),
            Literal::Int64(x) => S::Int64(Some(*x)),
            Literal::UInt8(x) => S::UInt8(Some(*x)),
            Literal::UInt16(x) => S::UInt16(Some(*x)),
            Literal::UInt32(x) => S::UInt32(Some(*x)),
            Literal::UInt64(x) => S::UInt64(Some(*x)),
            Literal::Float32(x) if x.is_finite() => S::Float32(Some(*x)),
            Literal::Float64(x) if x.is_finite() => S::Float64(Some(*x)),
            Literal::Float32(_) | Literal::Float64(_) => {
                return Err("a pushed float is not finite".into());
            }
            Literal::Utf8(s) => S::Utf8(Some(s.clone())),
            Literal::LargeUtf8(s) => S::LargeUtf8(Some(s.clone())),
            Literal::Utf8View(s) => S::Utf8View(Some(s.clone())),
            Literal::Date32(d) => S::Date32(Some(*d)),
            Literal::Date64(d) => S::Date64(Some(*d)),
            Literal::Timestamp { value, unit, tz } => {
                let tz = tz.as_deref().map(std::sync::Arc::from);
                match unit.as_str() {
                    "s" => S::TimestampSecond(Some(*value), tz),
                    "ms" => S::TimestampMillisecond(Some(*value), tz),
                    "us" => S::TimestampMicrosecond(Some(*value), tz),
                    "ns" => S::TimestampNanosecond(Some(*value), tz),
                    other => return Err(format!("unknown time unit '{other}'")),
                }
            }
        })
    }
}

fn to_expr(p: &Predicate, schema: &DFSchema, allowed: &[String]) -> Result<Expr, String> {
    let sub = |q: &Predicate| to_expr(q, schema, allowed);
    let column = |name: &str| -> Result<Expr, String> {
        if !allowed.iter().any(|a| a == name) {
            return Err(format!(
                "a pushed predicate reads {name}, which is not a column asked for"
            ));
        }
        let (q, f) = schema
            .qualified_field_with_unqualified_name(name)
            .map_err(|_| {
                format!("a pushed predicate reads {name}, which the grant does not show")
            })?;
        Ok(Expr::Column(Column::new(q.cloned(), f.name())))
    };
    let operand = |o: &Operand| -> Result<Expr, String> {
        match o {
            Operand::Column(c) => column(c),
            Operand::Literal(l) => Ok(Expr::Literal(l.scalar()?, None)),
            Operand::Widened { column: c, to } => {
                let col = column(c)?;
                let from = col.get_type(schema).map_err(|e| e.to_string())?;
                let to = to.scalar()?.data_type();
                if !widens(&from, &to) {
                    return Err(format!(
                        "a pushed predicate converts {c} from {from} to {to}"
                    ));
                }
                Ok(Expr::Cast(Cast::new(Box::new(col), to)))
            }
        }
    };
    let fold = |ps: &[Predicate], op: Operator| -> Result<Expr, String> {
        let mut exprs = ps.iter().map(sub);
        let first = exprs
            .next()
            .ok_or_else(|| "a pushed AND or OR has no operand".to_string())??;
        exprs.try_fold(first, |acc, e| {
            Ok(Expr::BinaryExpr(BinaryExpr::new(
                Box::new(acc),
                op,
                Box::new(e?),
            )))
        })
    };
    Ok(match p {
        Predicate::And(ps) => fold(ps, Operator::And)?,
        Predicate::Or(ps) => fold(ps, Operator::Or)?,
        Predicate::Not(q) => Expr::Not(Box::new(sub(q)?)),
        Predicate::Column(c) => column(c)?,
        Predicate::Compare { left, op, right } => Expr::BinaryExpr(BinaryExpr::new(
            Box::new(operand(left)?),
            op.operator(),
            Box::new(operand(right)?),
        )),
        Predicate::InList {
            operand: o,
            values,
            negated,
        } => Expr::InList(InList::new(
            Box::new(operand(o)?),
            values
                .iter()
                .map(|v| Ok(Expr::Literal(v.scalar()?, None)))
                .collect::<Result<_, String>>()?,
            *negated,
        )),
        Predicate::IsNull {
            operand: o,
            negated: false,
        } => Expr::IsNull(Box::new(operand(o)?)),
        Predicate::IsNull { operand: o, .. } => Expr::IsNotNull(Box::new(operand(o)?)),
        Predicate::Like {
            operand: o,
            pattern,
            negated,
            case_insensitive,
        } => {
            if pattern.contains('\\') {
                return Err("a pushed LIKE pattern has an escape".into());
            }
            Expr::Like(Like::new(
                *negated,
                Box::new(operand(o)?),
                Box::new(Expr::Literal(
                    ScalarValue::Utf8(Some(pattern.clone())),
                    None,
                )),
                None,
                *case_insensitive,
            ))
        }
    })
}

/// Every comparison of one type, every boolean operand boolean, every LIKE over text: so
/// that nothing is coerced (and nothing can fail) at the node.
fn check_types(expr: &Expr, schema: &DFSchema) -> Result<(), String> {
    let ty = |e: &Expr| e.get_type(schema).map_err(|e| e.to_string());
    let boolean = |e: &Expr| -> Result<(), String> {
        match ty(e)? {
            DataType::Boolean => check_types(e, schema),
            t => Err(format!("a pushed predicate is of type {t}, not boolean")),
        }
    };
    match expr {
        Expr::Column(_) => boolean_type(&ty(expr)?),
        Expr::Not(e) => boolean(e),
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And | Operator::Or => {
                boolean(left)?;
                boolean(right)
            }
            _ => same(&ty(left)?, &ty(right)?),
        },
        Expr::InList(InList { expr, list, .. }) => {
            let t = ty(expr)?;
            list.iter().try_for_each(|v| same(&t, &ty(v)?))
        }
        Expr::IsNull(_) | Expr::IsNotNull(_) => Ok(()),
        Expr::Like(Like { expr, .. }) => match ty(expr)? {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Ok(()),
            t => Err(format!("a pushed LIKE reads a column of type {t}")),
        },
        _ => Err("a pushed predicate is outside the language a node accepts".into()),
    }
}

fn boolean_type(t: &DataType) -> Result<(), String> {
    match t {
        DataType::Boolean => Ok(()),
        t => Err(format!("a pushed predicate is of type {t}, not boolean")),
    }
}

fn same(a: &DataType, b: &DataType) -> Result<(), String> {
    if a == b {
        Ok(())
    } else {
        Err(format!("a pushed predicate compares {a} with {b}"))
    }
}

impl fmt::Display for Predicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |f: &mut fmt::Formatter<'_>, ps: &[Predicate], sep: &str| {
            write!(f, "(")?;
            for (i, p) in ps.iter().enumerate() {
                if i > 0 {
                    write!(f, " {sep} ")?;
                }
                write!(f, "{p}")?;
            }
            write!(f, ")")
        };
        match self {
            Predicate::And(ps) => join(f, ps, "AND"),
            Predicate::Or(ps) => join(f, ps, "OR"),
            Predicate::Not(p) => write!(f, "NOT {p}"),
            Predicate::Column(c) => write!(f, "{}", Ident(c)),
            Predicate::Compare { left, op, right } => {
                let op = match op {
                    Comparison::Eq => "=",
                    Comparison::NotEq => "<>",
                    Comparison::Lt => "<",
                    Comparison::LtEq => "<=",
                    Comparison::Gt => ">",
                    Comparison::GtEq => ">=",
                    Comparison::IsDistinctFrom => "IS DISTINCT FROM",
                    Comparison::IsNotDistinctFrom => "IS NOT DISTINCT FROM",
                };
                write!(f, "{left} {op} {right}")
            }
            Predicate::InList {
                operand,
                values,
                negated,
            } => {
                let not = if *negated { "NOT " } else { "" };
                write!(f, "{operand} {not}IN (")?;
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{}", Operand::Literal(v.clone()))?;
                }
                write!(f, ")")
            }
            Predicate::IsNull { operand, negated } => {
                let not = if *negated { "NOT " } else { "" };
                write!(f, "{operand} IS {not}NULL")
            }
            Predicate::Like {
                operand,
                pattern,
                negated,
                case_insensitive,
            } => {
                let not = if *negated { "NOT " } else { "" };
                let like = if *case_insensitive { "ILIKE" } else { "LIKE" };
                write!(f, "{operand} {not}{like} '{}'", pattern.replace('\'', "''"))
            }
        }
    }
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operand::Column(c) => write!(f, "{}", Ident(c)),
            Operand::Widened { column, to } => match to.scalar() {
                Ok(s) => write!(f, "CAST({} AS {})", Ident(column), s.data_type()),
                Err(_) => write!(f, "CAST({})", Ident(column)),
            },
            Operand::Literal(l) => match l.scalar() {
                Ok(s) => write!(f, "{}", literal_text(&s)),
                Err(e) => write!(f, "<{e}>"),
            },
        }
    }
}

/// A column name as SQL would need it: quoted unless a plain lower-case identifier, so that a
/// name a request supplies reads as one name in a record.
struct Ident<'a>(&'a str);

impl fmt::Display for Ident<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chars = self.0.chars();
        let plain = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if plain {
            write!(f, "{}", self.0)
        } else {
            write!(f, "\"{}\"", self.0.replace('"', "\"\""))
        }
    }
}

/// A literal as SQL text with its exact type: strings quoted, booleans bare, anything else
/// `value::Type` (dates and timestamps in ISO 8601).
fn literal_text(s: &ScalarValue) -> String {
    let t = s.data_type();
    if s.is_null() {
        return format!("NULL::{t}");
    }
    match s {
        ScalarValue::Utf8(Some(v))
        | ScalarValue::LargeUtf8(Some(v))
        | ScalarValue::Utf8View(Some(v)) => format!("'{}'", v.replace('\'', "''")),
        ScalarValue::Boolean(Some(b)) => b.to_string(),
        _ => {
            let options = arrow::util::display::FormatOptions::default();
            let value = s
                .to_array()
                .ok()
                .and_then(|a| {
                    arrow::util::display::ArrayFormatter::try_new(a.as_ref(), &options)
                        .ok()
                        .map(|fmt| fmt.value(0).to_string())
                })
                .unwrap_or_else(|| s.to_string());
            format!("{value}::{t}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Field;
    use datafusion::logical_expr::{col, lit};

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("alone", DataType::Boolean, true),
            Field::new("job", DataType::Utf8, true),
            Field::new("age", DataType::Int32, true),
            Field::new("born", DataType::Date32, true),
            Field::new("__exchange_entity", DataType::Utf8, true),
        ])
    }

    fn round_trip(e: Expr) -> Expr {
        let s = schema();
        let p = Predicate::from_expr(&e, &s, &["__exchange_entity"]).expect("pushable");
        let text = serde_json::to_string(&p).expect("json");
        let back: Predicate = serde_json::from_str(&text).expect("parse");
        let df = DFSchema::try_from(s).expect("schema");
        let allowed: Vec<String> = vec!["alone".into(), "job".into(), "age".into(), "born".into()];
        back.to_expr(&df, &allowed).expect("fits")
    }

    #[test]
    fn the_usual_filters_travel_and_come_back_the_same() {
        let cases = vec![
            col("alone"),
            col("job").in_list(vec![lit("a"), lit("b")], false),
            col("age")
                .gt_eq(lit(60i32))
                .and(col("job").not_eq(lit("x"))),
            col("job").is_null().or(col("job").like(lit("ride%"))),
            Expr::Not(Box::new(col("alone"))),
            cast_col("age", DataType::Int64).lt(lit(5i64)),
            col("born").gt(lit(ScalarValue::Date32(Some(3650)))),
        ];
        for e in cases {
            assert_eq!(round_trip(e.clone()), e);
        }
        let between = col("age").between(lit(1i32), lit(9i32));
        assert_eq!(
            round_trip(between),
            col("age").gt_eq(lit(1i32)).and(col("age").lt_eq(lit(9i32)))
        );
    }

    fn cast_col(c: &str, t: DataType) -> Expr {
        Expr::Cast(Cast::new(Box::new(col(c)), t))
    }

    #[test]
    fn functions_hidden_columns_and_failing_casts_stay_at_the_hub() {
        let s = schema();
        let hidden = ["__exchange_entity"];
        let stays = vec![
            col("__exchange_entity").eq(lit("t")),
            datafusion::functions::expr_fn::upper(col("job")).eq(lit("A")),
            cast_col("job", DataType::Int32).eq(lit(1i32)),
            cast_col("age", DataType::Int8).eq(lit(1i8)),
            (col("age") + lit(1i32)).eq(lit(2i32)),
            col("job").like(lit("a\\%")),
            col("nosuch").eq(lit(1i32)),
            col("age"),
        ];
        for e in stays {
            assert!(Predicate::from_expr(&e, &s, &hidden).is_none(), "{e}");
        }
    }

    #[test]
    fn a_node_refuses_what_does_not_fit() {
        let df = DFSchema::try_from(schema()).expect("schema");
        let allowed: Vec<String> = vec!["alone".into(), "job".into(), "age".into()];
        let parse = |j: &str| serde_json::from_str::<Predicate>(j).expect("json");
        let wrong = [
            // Mixed types would need a coercion that can fail.
            r#"{"compare":{"left":{"column":"job"},"op":"eq","right":{"literal":{"int32":1}}}}"#,
            // A column not asked for, one the grant does not show.
            r#"{"column":"born"}"#,
            r#"{"column":"__exchange_entity"}"#,
            // A non-boolean column as a predicate, a narrowing conversion.
            r#"{"column":"age"}"#,
            r#"{"compare":{"left":{"widened":{"column":"age","to":{"int8":0}}},"op":"eq","right":{"literal":{"int8":1}}}}"#,
            r#"{"like":{"operand":{"column":"age"},"pattern":"1%","negated":false,"case_insensitive":false}}"#,
            r#"{"and":[]}"#,
        ];
        for j in wrong {
            assert!(parse(j).to_expr(&df, &allowed).is_err(), "{j}");
        }
        assert!(serde_json::from_str::<Predicate>(r#"{"call":{"name":"pseudonym"}}"#).is_err());
        let deep = (0..40).fold(r#"{"column":"alone"}"#.to_string(), |acc, _| {
            format!(r#"{{"not":{acc}}}"#)
        });
        assert!(parse(&deep).to_expr(&df, &allowed).is_err());
    }

    #[test]
    fn what_a_hub_sends_a_node_accepts_at_every_size() {
        // Review 28 F2: hub and node once measured depth differently (a chain of 33 ORs,
        // or 32 with a BETWEEN, was sent and refused).
        let s = schema();
        let df = DFSchema::try_from(s.clone()).expect("schema");
        let allowed: Vec<String> = vec!["alone".into(), "job".into(), "age".into()];
        for n in 1..45 {
            for between in [false, true] {
                let first = if between {
                    col("age").between(lit(1i32), lit(3i32))
                } else {
                    col("age").gt(lit(0i32))
                };
                let chain =
                    (1..n).fold(first, |acc, i| acc.or(col("job").eq(lit(format!("j{i}")))));
                if let Some(p) = Predicate::from_expr(&chain, &s, &[]) {
                    assert!(p.to_expr(&df, &allowed).is_ok(), "{n} {between}");
                } else {
                    assert!(n > 30, "a chain of {n} stays at the hub");
                }
            }
        }
        let long_like = col("job").like(lit("_".repeat(MAX_PATTERN_CHARS + 1)));
        assert!(Predicate::from_expr(&long_like, &s, &[]).is_none());
    }

    #[test]
    fn predicates_read_as_sql_in_audit_records() {
        let p = Predicate::from_expr(
            &col("job")
                .in_list(vec![lit("it's")], false)
                .and(col("alone")),
            &schema(),
            &[],
        )
        .expect("pushable");
        assert_eq!(p.to_string(), "(job IN ('it''s') AND alone)");
        let typed: Predicate = serde_json::from_value(serde_json::json!({"and": [
            {"compare": {"left": {"column": "Odd \"name"}, "op": "not_eq",
                "right": {"literal": {"int64": 1}}}},
            {"compare": {"left": {"column": "t"}, "op": "gt",
                "right": {"literal": {"timestamp": {"value": 1_767_225_600_000_000i64,
                    "unit": "us", "tz": null}}}}},
            {"is_null": {"operand": {"literal": {"null": {"uint8": 0}}}, "negated": false}}
        ]}))
        .expect("json");
        assert_eq!(
            typed.to_string(),
            "(\"Odd \"\"name\" <> 1::Int64 AND t > 2026-01-01T00:00:00::Timestamp(µs) AND NULL::UInt8 IS NULL)"
        );
    }
}
