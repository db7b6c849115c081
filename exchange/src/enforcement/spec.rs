//! A grant resolved for one principal: the fragment that replaces every scan of the table.

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{Column, DFSchema, DataFusionError, Result, TableReference};
use datafusion::datasource::provider_as_source;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, ScalarUDF, cast, lit};
use datafusion::optimizer::AnalyzerRule;
use datafusion::optimizer::analyzer::type_coercion::TypeCoercion;
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, Value, visit_expressions_mut};

use super::tables::RawTable;
use super::violation::Violation;
use crate::catalog::Dataset;
use crate::policy::{Access, AttrValue, Principal, Treatment};

/// Name of the hidden column carrying a scan's entity id up to aggregates.
pub const HIDDEN_ENTITY: &str = "__exchange_entity";

/// Name of the hidden column carrying a protected scan's row number up to aggregates.
pub const HIDDEN_ROW: &str = super::tables::ROW_NUMBER;

/// Usage tag of a fragment column before it is bound to a scan.
#[derive(Debug, Clone, PartialEq)]
pub enum BaseTag {
    /// No constraint.
    Free,
    /// Join key of a domain.
    JoinKey {
        /// Identity domain.
        domain: String,
        /// `agency.table.column`.
        column: String,
    },
    /// Aggregate-only with minimum group size.
    AggOnly {
        /// Minimum distinct entities.
        k: u32,
        /// `agency.table.column`.
        column: String,
    },
    /// The hidden entity column; with `min_group`, rows may only leave aggregated.
    Entity {
        /// Minimum distinct entities per output group, if the grant sets one.
        min_group: Option<u32>,
    },
    /// The hidden row number of a protected table.
    Row,
}

/// The keyed token functions of one consumer agency.
#[derive(Debug, Clone)]
pub struct TokenFns {
    /// `pseudonym(value, domain)`.
    pub pseudonym: Arc<ScalarUDF>,
    /// `join_key(value, domain)`.
    pub join_key: Arc<ScalarUDF>,
    /// `typed_random_replace(value, kind)`.
    pub replace: Arc<ScalarUDF>,
}

/// Where a table's rows come from.
#[derive(Debug)]
pub enum Source<'a> {
    /// The agency's files.
    Files {
        /// Where they are.
        location: &'a str,
        /// The agency's register of objections, if it covers the table.
        objections: Option<Box<super::objections::Objections>>,
    },
    /// The agency's node; the location (never read here) keeps the fragment's shape that
    /// of the node's.
    Node {
        /// The dataset's location.
        location: &'a str,
        /// The node and the claims sent to it.
        remote: Box<Remote>,
    },
}

/// Where a hub reads a table its agency's node serves.
#[derive(Debug)]
pub struct Remote {
    /// The node.
    pub client: crate::federation::NodeClient,
    /// On whose behalf.
    pub claims: crate::federation::Claims,
}

impl Remote {
    /// The fragment at a hub: a scan of the node, whose columns are those of the local
    /// fragment (`local`) as the node computes them: treated, with the hidden entity as a
    /// token of the node's (never the raw identifier) and the row number.
    fn fragment(
        self,
        dataset: &Dataset,
        local: &LogicalPlan,
        tags: &[BaseTag],
    ) -> Result<LogicalPlan> {
        let fields: Vec<Field> = local
            .schema()
            .fields()
            .iter()
            .zip(tags)
            .map(|(f, tag)| match tag {
                BaseTag::Entity { .. } => Field::new(f.name(), DataType::Utf8, true),
                _ => Field::new(f.name(), f.data_type().clone(), true),
            })
            .collect();
        let table = crate::federation::RemoteTable::new(
            dataset.qualified_name(),
            Arc::new(Schema::new(fields)),
            self.claims,
            self.client,
        );
        let table_ref = TableReference::partial(dataset.agency.clone(), dataset.name.clone());
        LogicalPlanBuilder::scan(table_ref, provider_as_source(Arc::new(table)), None)?.build()
    }
}

/// A table as one principal sees it.
#[derive(Debug)]
pub struct GovernedSpec {
    /// The dataset.
    pub dataset: Dataset,
    /// The grant resolved for the principal and purpose.
    pub access: Access,
    /// Columns the principal sees, with treated types.
    pub visible_schema: SchemaRef,
    /// Raw scan, row filter and treatments, qualified `agency.table`.
    pub fragment: LogicalPlan,
    /// One tag per fragment column.
    pub base_tags: Vec<BaseTag>,
    /// Whether aggregates over the table are policed: the grant sets `min_group` or has
    /// aggregate-only columns. Its visible columns are then tagged with their scan, so
    /// that an aggregate over its rows takes arguments from it alone.
    pub protected: bool,
    /// Whether the fragment's entity column is carried to an export's output, as the
    /// subject of the rows (the dataset declares `export_k`).
    pub subject: bool,
    /// The agency's register of objections excluding rows of the table, read at the
    /// exchange (a node applies its own, and the hub names none).
    pub objections: Option<String>,
}

impl GovernedSpec {
    /// Resolve the grant into its fragment.
    pub fn build(
        state: &SessionState,
        dataset: &Dataset,
        access: Access,
        principal: &Principal,
        source: Source<'_>,
        tokens: &TokenFns,
        subjects: bool,
    ) -> Result<Self> {
        let (location, remote, objections) = match source {
            Source::Files {
                location,
                objections,
            } => (location, None, objections),
            Source::Node { location, remote } => (location, Some(*remote), None),
        };
        let register = objections.as_ref().map(|o| o.register().to_string());
        let table_ref = TableReference::partial(dataset.agency.clone(), dataset.name.clone());
        let raw_schema = dataset.arrow_schema();
        let df_schema = DFSchema::try_from_qualified_schema(table_ref.clone(), &raw_schema)?;
        let row_filter = match &access.row_filter {
            None => None,
            Some(f) => Some(plan_row_filter(state, &f.sql, principal, &df_schema)?),
        };
        let pushable: BTreeSet<String> = access
            .columns
            .iter()
            .filter(|c| c.treatment == Treatment::Plain)
            .map(|c| c.source.clone())
            .collect();
        let raw =
            RawTable::try_new(dataset, location, pushable, row_filter)?.with_objections(objections);
        let builder =
            LogicalPlanBuilder::scan(table_ref.clone(), provider_as_source(Arc::new(raw)), None)?;
        let mut exprs = Vec::new();
        let mut base_tags = Vec::new();
        let mut has_agg_only = false;
        for c in &access.columns {
            let raw_col = Expr::Column(Column::new(Some(table_ref.clone()), &c.source));
            let raw_type = raw_schema.field_with_name(&c.source)?.data_type().clone();
            let as_text = |e: Expr| {
                if raw_type == DataType::Utf8 {
                    e
                } else {
                    cast(e, DataType::Utf8)
                }
            };
            let qualified = format!("{}.{}", dataset.qualified_name(), c.name);
            let (expr, tag) = match &c.treatment {
                Treatment::Plain => (raw_col, BaseTag::Free),
                Treatment::Mask { func, args } => {
                    let mut call = vec![raw_col];
                    call.extend(args.iter().map(|a| lit(a.to_scalar())));
                    (func.udf().call(call), BaseTag::Free)
                }
                Treatment::Pseudonym { .. } | Treatment::JoinKey { .. } => {
                    let domain = c.domain.clone().ok_or_else(|| {
                        DataFusionError::External(Box::new(Violation::new(format!(
                            "{qualified}: token treatment without an identity domain"
                        ))))
                    })?;
                    let (udf, tag) = if matches!(c.treatment, Treatment::JoinKey { .. }) {
                        (
                            &tokens.join_key,
                            BaseTag::JoinKey {
                                domain: domain.clone(),
                                column: qualified.clone(),
                            },
                        )
                    } else {
                        (&tokens.pseudonym, BaseTag::Free)
                    };
                    (udf.call(vec![as_text(raw_col), lit(domain)]), tag)
                }
                Treatment::Replace { kind } => (
                    tokens.replace.call(vec![raw_col, lit(kind.clone())]),
                    BaseTag::Free,
                ),
                Treatment::AggregateOnly { k } => {
                    has_agg_only = true;
                    (
                        raw_col,
                        BaseTag::AggOnly {
                            k: *k,
                            column: qualified.clone(),
                        },
                    )
                }
            };
            exprs.push(expr.alias_qualified(Some(table_ref.clone()), &c.name));
            base_tags.push(tag);
        }
        let visible_len = exprs.len();
        let protected = has_agg_only || access.min_group.is_some();
        let subject = subjects && dataset.export_k.is_some();
        if (protected || subject)
            && let Some(entity) = &dataset.entity
        {
            exprs.push(
                Expr::Column(Column::new(Some(table_ref.clone()), entity))
                    .alias_qualified(Some(table_ref.clone()), HIDDEN_ENTITY),
            );
            base_tags.push(BaseTag::Entity {
                min_group: access.min_group,
            });
        }
        if protected {
            exprs.push(
                Expr::Column(Column::new(Some(table_ref.clone()), HIDDEN_ROW))
                    .alias_qualified(Some(table_ref.clone()), HIDDEN_ROW),
            );
            base_tags.push(BaseTag::Row);
        }
        let plan = builder.project(exprs)?.build()?;
        let mut fragment = TypeCoercion::new().analyze(plan, state.config_options())?;
        if let Some(remote) = remote {
            fragment = remote.fragment(dataset, &fragment, &base_tags)?;
        }
        let visible_schema = Arc::new(Schema::new(
            fragment
                .schema()
                .fields()
                .iter()
                .take(visible_len)
                .map(|f| Field::new(f.name(), f.data_type().clone(), true))
                .collect::<Vec<_>>(),
        ));
        Ok(Self {
            dataset: dataset.clone(),
            access,
            visible_schema,
            fragment,
            base_tags,
            protected,
            subject: subject && dataset.entity.is_some(),
            objections: register,
        })
    }
}

/// Plan a row filter for a principal: `principal.<attr>` becomes a literal in the SQL
/// AST (never by string substitution), then the expression is planned against the raw
/// schema. A missing attribute refuses: a filter that cannot be applied never falls open.
pub fn plan_row_filter(
    state: &SessionState,
    sql: &str,
    principal: &Principal,
    raw: &DFSchema,
) -> Result<Expr> {
    let dialect = state.config_options().sql_parser.dialect;
    let mut parsed = state.sql_to_expr_with_alias(sql, &dialect)?;
    let mut missing = None;
    let _ = visit_expressions_mut(&mut parsed.expr, |e| {
        if let SqlExpr::CompoundIdentifier(parts) = e
            && let [head, attr] = parts.as_slice()
            && head.value.eq_ignore_ascii_case("principal")
        {
            match principal.attributes.get(&attr.value) {
                Some(AttrValue::Str(s)) => {
                    *e = SqlExpr::Value(Value::SingleQuotedString(s.clone()).into());
                }
                Some(AttrValue::Bool(b)) => *e = SqlExpr::Value(Value::Boolean(*b).into()),
                Some(AttrValue::Int(i)) => {
                    match datafusion::sql::sqlparser::parser::Parser::new(
                        &datafusion::sql::sqlparser::dialect::GenericDialect {},
                    )
                    .try_with_sql(&i.to_string())
                    .and_then(|mut p| p.parse_expr())
                    {
                        Ok(x) => *e = x,
                        Err(_) => missing = Some(attr.value.clone()),
                    }
                }
                None => {
                    missing = Some(attr.value.clone());
                    return ControlFlow::Break(());
                }
            }
        }
        ControlFlow::Continue(())
    });
    if let Some(attr) = missing {
        return Err(DataFusionError::External(Box::new(Violation::new(
            format!(
                "principal {} has no attribute '{attr}', which a row filter requires",
                principal.name
            ),
        ))));
    }
    let expr = state.create_logical_expr_from_sql_expr(parsed, raw)?;
    // Coerce types now (e.g. an Int32 column against an integer literal), as the analyzer
    // would for a query.
    let relation = LogicalPlan::EmptyRelation(datafusion::logical_expr::EmptyRelation {
        produce_one_row: false,
        schema: Arc::new(raw.clone()),
    });
    let filter = LogicalPlan::Filter(datafusion::logical_expr::Filter::try_new(
        expr,
        Arc::new(relation),
    )?);
    match TypeCoercion::new().analyze(filter, state.config_options())? {
        LogicalPlan::Filter(f) => Ok(f.predicate),
        _ => Err(DataFusionError::Plan(
            "row filter did not plan as a filter".into(),
        )),
    }
}
