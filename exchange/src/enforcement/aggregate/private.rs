//! The rewrite of an aggregate over a table granted under differential privacy: step 1 (the
//! rows' person, group keys and values, clamped row by row) as a projection, then the noisy
//! [`DpAggregate`] (see [`crate::enforcement::private`]), which bounds and totals them.

use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::{Column, DFSchema, Result, ScalarValue};
use datafusion::functions::core::expr_fn::{greatest, least};
use datafusion::functions::math::expr_fn::isnan;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{Aggregate, Expr, ExprSchemable, LogicalPlan, cast, lit, when};

use super::{Protected, function};
use crate::enforcement::barrier::PolicyBarrier;
use crate::enforcement::private::{DpAggregate, Measure, Mechanism, Release, Stat};
use crate::enforcement::tags::{Ctx, Tag, is_bare};
use crate::policy::Privacy;

/// The person column of step 1.
const UNIT: &str = "__exchange_dp_unit";

/// What one aggregate of the query asks.
enum Ask {
    /// COUNT(DISTINCT <the person column>).
    Units,
    /// COUNT(*).
    Rows,
    /// COUNT(column).
    CountOf(Expr),
    /// SUM(column) within bounds.
    Sum(Expr, i64, i64),
    /// AVG(column) within bounds.
    Avg(Expr, i64, i64),
}

/// One aggregate function of the query, read as an [`Ask`], or refused.
fn ask(
    e: &Expr,
    p: &Protected<'_>,
    privacy: &Privacy,
    schema: &DFSchema,
    ctx: &Ctx<'_>,
) -> Result<Ask> {
    let allowed = "COUNT(*), COUNT(column), COUNT(DISTINCT <the person column>), SUM(column) and AVG(column) of a column with declared bounds";
    let Some(AggregateFunction { func, params }) = function(e) else {
        return p.refuse(&format!(
            "{e} is not an aggregate function; only {allowed} may be computed"
        ));
    };
    let name = func.name();
    if params.filter.is_some() || !params.order_by.is_empty() {
        return p.refuse("their noisy aggregates take no FILTER or ORDER BY");
    }
    let arg = match params.args.as_slice() {
        [] => None,
        [a] => Some(a),
        _ => {
            return p.refuse(&format!(
                "{name}() takes one argument here; only {allowed} may be computed"
            ));
        }
    };
    // The argument, a bare column of the table itself.
    let own = |a: &Expr| -> Result<Option<String>> {
        if matches!(a, Expr::Literal(..)) {
            return Ok(None);
        }
        let tag = ctx.tag(a, "an aggregate argument")?;
        match (tag, a) {
            (Tag::Own { scan }, Expr::Column(c)) if scan == p.scan && is_bare(a) => {
                Ok(Some(c.name.clone()))
            }
            (Tag::Computed { .. }, _) => {
                p.refuse("an aggregate argument was computed from them row by row")
            }
            _ if !is_bare(a) => p.refuse(
                "aggregate arguments must be plain columns, not expressions (their bounds are declared per column)",
            ),
            _ => p.refuse(&format!(
                "aggregate arguments must be columns of {}, but {a} is not",
                p.info.table
            )),
        }
    };
    let bounded = |a: &Expr, column: &str| -> Result<(i64, i64)> {
        let numeric = a.get_type(schema).is_ok_and(|t| t.is_numeric());
        match privacy.bounds.get(column) {
            Some(b) if numeric => Ok(*b),
            _ => p.refuse(&format!(
                "{name}({column}) needs bounds declared for {column} in the grant's privacy (bounds = {{ {column} = [low, high] }}); only {allowed} may be computed"
            )),
        }
    };
    match (name, arg) {
        ("count", None) => Ok(Ask::Rows),
        ("count", Some(a)) if params.distinct => match own(a)? {
            Some(c) if p.info.units.contains(&c) => Ok(Ask::Units),
            _ => p.refuse(&format!(
                "COUNT(DISTINCT ...) counts persons only, by the person column ({}); only {allowed} may be computed",
                if p.info.units.is_empty() { "not visible under this grant".to_string() } else { p.info.units.join(" or ") }
            )),
        },
        ("count", Some(Expr::Literal(v, _))) if v.is_null() => {
            p.refuse("COUNT(NULL) counts nothing; use COUNT(*)")
        }
        ("count", Some(a)) => match own(a)? {
            None => Ok(Ask::Rows),
            Some(_) => Ok(Ask::CountOf(a.clone())),
        },
        ("sum" | "avg" | "mean", Some(a)) if !params.distinct => match own(a)? {
            Some(c) => {
                let (lo, hi) = bounded(a, &c)?;
                Ok(if name == "sum" {
                    Ask::Sum(a.clone(), lo, hi)
                } else {
                    Ask::Avg(a.clone(), lo, hi)
                })
            }
            None => p.refuse(&format!("{name}() of a constant is not supported; only {allowed} may be computed")),
        },
        _ => p.refuse(&format!(
            "{name}({}) is not differentially private here; only {allowed} may be computed",
            if params.distinct { "DISTINCT ..." } else { "..." }
        )),
    }
}

/// A value clamped to `[lo, hi]` as a float; NULL and NaN count nothing.
fn clamped(arg: Expr, lo: i64, hi: i64) -> Result<Expr> {
    let f = cast(arg, DataType::Float64);
    when(
        f.clone().is_null().or(isnan(f.clone())),
        lit(ScalarValue::Float64(None)),
    )
    .otherwise(least(vec![
        greatest(vec![f, lit(lo as f64)]),
        lit(hi as f64),
    ]))
}

/// Step 1 and its statistics as they are assembled.
struct Builder {
    groups: usize,
    step1: Vec<Expr>,
    stats: Vec<Stat>,
}

impl Builder {
    /// The step-1 column of the row expression `e` (added once).
    fn column(&mut self, e: Expr) -> usize {
        let i = match self.step1.iter().position(|x| *x == e) {
            Some(i) => i,
            None => {
                self.step1.push(e);
                self.step1.len() - 1
            }
        };
        self.groups + 1 + i
    }

    /// The statistic of SUM(arg) within `[lo, hi]`, and the step-1 column of its clamped
    /// values (its non-null rows are the values it adds); `per_value` is the sensitivity of
    /// a count of values (max_groups * max_rows).
    fn sum(&mut self, arg: Expr, lo: i64, hi: i64, per_value: u128) -> Result<(usize, usize)> {
        let m = u128::from(lo.unsigned_abs().max(hi.unsigned_abs())).max(1);
        let values = self.column(clamped(arg.clone(), lo, hi)?);
        let s = self.stat(
            Measure::Sum { column: values },
            format!("SUM({arg}) in [{lo}, {hi}]"),
            per_value * m,
        );
        Ok((s, values))
    }

    /// The statistic of `measure` (added once), its sensitivity for now in its scale.
    fn stat(&mut self, measure: Measure, label: String, sensitivity: u128) -> usize {
        if let Some(i) = self.stats.iter().position(|s| s.measure == measure) {
            return i;
        }
        self.stats.push(Stat {
            measure,
            label,
            scale: (sensitivity, 1),
        });
        self.stats.len() - 1
    }
}

/// Rewrite `a` (its input already processed, `tags_in` its tags) into the noisy aggregate.
pub(super) fn private_aggregate(
    a: Aggregate,
    p: &Protected<'_>,
    privacy: &Arc<Privacy>,
    tags_in: &[Tag],
    ctx: &Ctx<'_>,
) -> Result<(LogicalPlan, Vec<Tag>)> {
    let Aggregate {
        input,
        group_expr,
        aggr_expr,
        schema,
        ..
    } = a;
    if group_expr.iter().any(|g| matches!(g, Expr::GroupingSet(_))) {
        return p.refuse("GROUPING SETS, ROLLUP and CUBE are not supported over them");
    }
    let entity = input
        .schema()
        .iter()
        .zip(tags_in)
        .find(|(_, t)| **t == Tag::Entity { scan: p.scan })
        .map(|((q, f), _)| Expr::Column(Column::new(q.cloned(), f.name())));
    let Some(entity) = entity else {
        return p.refuse(
            "their differentially private aggregate must be in the query block that reads the table, where each person is known",
        );
    };
    // A join can repeat a person's rows without bound: the totals would count them again
    // (contribution bounds keep the noise right, not the statistic), and how long the
    // exact step takes would tell how many rows matched, before any noise.
    if tags_in
        .iter()
        .any(|t| matches!(t, Tag::Row { scan, multiplied: true } if *scan == p.scan))
    {
        return p.refuse(
            "no join may come before their aggregate (a join can repeat a person's rows: the statistics would count them again, and the time the exact step takes would tell how many rows matched); aggregate the table on its own and join the noisy results",
        );
    }
    let mut asks = Vec::with_capacity(aggr_expr.len());
    for e in &aggr_expr {
        asks.push(ask(e, p, privacy, input.schema(), ctx)?);
    }
    let g = u128::from(privacy.max_groups);
    let r = u128::from(privacy.max_rows);
    let mut b = Builder {
        groups: group_expr.len(),
        step1: vec![],
        stats: vec![],
    };
    let mut releases = Vec::with_capacity(asks.len());
    for ask in asks {
        releases.push(match ask {
            Ask::Units => {
                Release::Count(b.stat(Measure::Units, "COUNT(DISTINCT person)".into(), g))
            }
            Ask::Rows => Release::Count(b.stat(Measure::Rows, "COUNT(*)".into(), g * r)),
            Ask::CountOf(arg) => {
                let label = format!("COUNT({arg})");
                let column = b.column(arg);
                Release::Count(b.stat(Measure::Count { column }, label, g * r))
            }
            Ask::Sum(arg, lo, hi) => Release::Sum(b.sum(arg, lo, hi, g * r)?.0),
            Ask::Avg(arg, lo, hi) => {
                let label = format!("COUNT({arg})");
                let (sum, values) = b.sum(arg, lo, hi, g * r)?;
                let count = b.stat(Measure::Count { column: values }, label, g * r);
                Release::Avg { sum, count }
            }
        });
    }
    let groups = group_expr.len();
    // With GROUP BY, a group's key is released only past a noisy count of its persons.
    let threshold = if groups == 0 {
        None
    } else {
        let units = b.stat(Measure::Units, "COUNT(DISTINCT person)".into(), g);
        Some(units)
    };
    // Epsilon is split evenly over the statistics: scale = sensitivity * k / epsilon.
    let k = b.stats.len() as u128;
    for s in &mut b.stats {
        s.scale = (s.scale.0 * k * 1_000_000, u128::from(privacy.epsilon));
    }
    let threshold = match threshold {
        None => None,
        Some(units) => {
            let scale = b
                .stats
                .get(units)
                .map(|s| s.scale.0 as f64 / s.scale.1.max(1) as f64)
                .unwrap_or(f64::INFINITY);
            // A group some persons alone make is released with chance at most delta: each
            // of a person's max_groups groups passes with chance exp(-(t - 1) / scale).
            let t = 1.0 + (scale * (g as f64 / privacy.delta()).ln()).ceil();
            let floor = p.info.min_group.map_or(1, i64::from);
            let t = if t.is_finite() && t < 1e15 {
                t as i64
            } else {
                i64::MAX
            };
            Some((units, t.max(floor)))
        }
    };
    let mechanism = Arc::new(Mechanism {
        dataset: p.info.table.clone(),
        privacy: (**privacy).clone(),
        groups,
        stats: b.stats,
        releases,
        threshold,
    });
    // A row without a person (an outer join's padding) belongs to no one: it counts nothing.
    let input = Arc::new(LogicalPlan::Filter(
        datafusion::logical_expr::Filter::try_new(entity.clone().is_not_null(), input)?,
    ));
    // The rows as they are: DpAggregate itself gathers each person's rows (a per-person
    // hash aggregate first would cost more than the bounding it feeds).
    let mut step1 = vec![entity.alias(UNIT)];
    step1.extend(
        group_expr
            .into_iter()
            .enumerate()
            .map(|(i, e)| e.unalias().alias(format!("__exchange_dp_key_{i}"))),
    );
    step1.extend(
        b.step1
            .into_iter()
            .enumerate()
            .map(|(i, e)| e.unalias().alias(format!("__exchange_dp_value_{i}"))),
    );
    let step1 =
        datafusion::logical_expr::Projection::try_new(step1, input).map(LogicalPlan::Projection)?;
    let schema = with_noise_metadata(&schema, &mechanism)?;
    let out_len = schema.fields().len();
    let node = LogicalPlan::Extension(datafusion::logical_expr::Extension {
        node: Arc::new(DpAggregate {
            mechanism,
            input: step1,
            schema,
        }),
    });
    // Nothing the analyst writes above may reach below; everything below must be total.
    let plan = PolicyBarrier::threshold(vec![p.info.table.clone()], vec![], true, node);
    Ok((plan, vec![Tag::Free; out_len]))
}

/// Field metadata naming the noise of each released column, so that a client can compute
/// confidence intervals from the result itself.
pub const NOISE_SCALE: &str = "exchange.noise_scale";
/// The mechanism of a noisy column (`discrete_laplace`).
pub const NOISE: &str = "exchange.noise";

fn with_noise_metadata(
    schema: &datafusion::common::DFSchemaRef,
    m: &Mechanism,
) -> Result<datafusion::common::DFSchemaRef> {
    let fields = schema
        .iter()
        .enumerate()
        .map(|(i, (q, f))| {
            let release = i.checked_sub(m.groups).and_then(|r| m.releases.get(r));
            let scale = |s: &usize| m.stats.get(*s).map(Stat::scale_text).unwrap_or_default();
            let mut meta = f.metadata().clone();
            match release {
                None => {}
                Some(Release::Count(s) | Release::Sum(s)) => {
                    meta.insert(NOISE.into(), "discrete_laplace".into());
                    meta.insert(NOISE_SCALE.into(), scale(s));
                }
                Some(Release::Avg { sum, count }) => {
                    meta.insert(NOISE.into(), "discrete_laplace (sum / count)".into());
                    meta.insert(
                        NOISE_SCALE.into(),
                        format!("{} / {}", scale(sum), scale(count)),
                    );
                }
            }
            (q.cloned(), Arc::new(f.as_ref().clone().with_metadata(meta)))
        })
        .collect::<Vec<_>>();
    let out = DFSchema::new_with_metadata(fields, schema.metadata().clone())?
        .with_functional_dependencies(schema.functional_dependencies().clone())?;
    Ok(Arc::new(out))
}
