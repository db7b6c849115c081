//! Each protected row once per group and in one group: the reduction by hidden row number
//! that runs before an aggregate over a protected table (docs/aggregates.md).

use super::*;

/// The aggregate's input reduced to its distinct (group keys, row of the protected table)
/// pairs, without the NULL rows outer joins pad in, carrying only what the aggregates read:
/// every row of the table then counts once per group, however often a join repeated it.
/// With `one_group`, rows that a join placed in several groups are dropped: each row
/// counts in one group or in none. Returns the reduced input, its tags and the group keys
/// over it.
pub(super) fn once_per_group(
    input: LogicalPlan,
    tags_in: &[Tag],
    scan: ScanId,
    group: &[Expr],
    aggr: &[Expr],
    one_group: bool,
) -> Result<(LogicalPlan, Vec<Tag>, Vec<Expr>)> {
    let schema = input.schema().clone();
    let column_at = |i: usize| -> Expr {
        let (q, f) = schema.qualified_field(i);
        Expr::Column(Column::new(q.cloned(), f.name()))
    };
    let Some(row) = tags_in
        .iter()
        .position(|t| matches!(t, Tag::Row { scan: s, .. } if *s == scan))
    else {
        return refuse(
            "internal: the row number of a protected table is missing; refusing to be safe".into(),
        );
    };
    let mut exprs = Vec::new();
    let mut tags = Vec::new();
    for (i, g) in group.iter().enumerate() {
        exprs.push(g.clone().alias(format!("{GROUP_KEY}{i}")));
        tags.push(Tag::Free);
    }
    exprs.push(column_at(row));
    tags.push(Tag::Row {
        scan,
        multiplied: false,
    });
    if let Some(entity) = tags_in.iter().position(|t| *t == Tag::Entity { scan }) {
        exprs.push(column_at(entity));
        tags.push(Tag::Entity { scan });
    }
    let mut read: Vec<Column> = Vec::new();
    for e in aggr {
        for c in e.column_refs() {
            if !read.contains(c) {
                read.push(c.clone());
            }
        }
    }
    for c in read {
        let i = schema.index_of_column(&c)?;
        tags.push(tags_in.get(i).cloned().unwrap_or(Tag::Free));
        exprs.push(Expr::Column(c));
    }
    let present =
        Filter::try_new(column_at(row).is_not_null(), Arc::new(input)).map(LogicalPlan::Filter)?;
    let projected = Projection::try_new(exprs, Arc::new(present)).map(LogicalPlan::Projection)?;
    let group_keys: Vec<Expr> = (0..group.len())
        .map(|i| Expr::Column(Column::from_name(format!("{GROUP_KEY}{i}"))))
        .collect();
    if projected
        .schema()
        .fields()
        .iter()
        .all(|f| min_max_able(f.data_type()))
    {
        let reduced = by_row(projected, group.len(), one_group)?;
        return Ok((reduced, tags, group_keys));
    }
    let keys: Vec<Expr> = projected
        .schema()
        .columns()
        .into_iter()
        .map(Expr::Column)
        .collect();
    let distinct =
        Aggregate::try_new(Arc::new(projected), keys, vec![]).map(LogicalPlan::Aggregate)?;
    let keys = (0..group.len())
        .map(|i| Expr::Column(Column::from_name(format!("{GROUP_KEY}{i}"))))
        .collect();
    if !one_group || group.is_empty() {
        return Ok((distinct, tags, keys));
    }
    // The rows in exactly one group: per row, its number of groups and (kept when there
    // is one) the values it has there, from this one evaluation of the input. (A second
    // evaluation would not do: row numbers follow the order batches arrive in, which a
    // repartition can change between two runs of the same scan.)
    let schema = distinct.schema().clone();
    let row_at = group.len();
    let (rq, rf) = schema.qualified_field(row_at);
    let row_col = Expr::Column(Column::new(rq.cloned(), rf.name()));
    let mut values = Vec::new();
    for (i, (q, f)) in schema.iter().enumerate() {
        if i != row_at {
            let c = Expr::Column(Column::new(q.cloned(), f.name()));
            values.push(
                datafusion::functions_aggregate::first_last::first_value(c, vec![])
                    .alias(format!("{VALUE}{i}")),
            );
        }
    }
    values.push(datafusion::functions_aggregate::count::count(lit(1i64)).alias(GROUPS));
    let restored: Vec<Expr> = schema
        .iter()
        .enumerate()
        .map(|(i, (q, f))| {
            if i == row_at {
                row_col.clone()
            } else {
                Expr::Column(Column::from_name(format!("{VALUE}{i}")))
                    .alias_qualified(q.cloned(), f.name())
            }
        })
        .collect();
    let kept = LogicalPlanBuilder::from(distinct)
        .aggregate(vec![row_col], values)?
        .filter(Expr::Column(Column::from_name(GROUPS)).eq(lit(1i64)))?
        .project(restored)?
        .build()?;
    Ok((kept, tags, keys))
}

/// Names of a row's values and its number of groups while the rows in one group are found.
const VALUE: &str = "__exchange_value";
const GROUPS: &str = "__exchange_groups";

/// Types `min` and `max` accept (with fast group accumulators).
fn min_max_able(t: &arrow::datatypes::DataType) -> bool {
    use arrow::datatypes::DataType as T;
    t.is_primitive()
        || matches!(
            t,
            T::Boolean
                | T::Utf8
                | T::LargeUtf8
                | T::Utf8View
                | T::Binary
                | T::LargeBinary
                | T::BinaryView
        )
}

/// The projected input (group keys, row number, then the protected table's own columns,
/// which the row determines) reduced to one row per row number in one aggregate: each
/// value as the row's minimum. With `one_group`, a row whose copies disagree on a group key
/// (two values, or a value and a NULL) is in several groups and is dropped.
fn by_row(projected: LogicalPlan, keys: usize, one_group: bool) -> Result<LogicalPlan> {
    use datafusion::functions_aggregate::count::count;
    use datafusion::functions_aggregate::min_max::{max, min};
    let schema = projected.schema().clone();
    let column = |i: usize| {
        let (q, f) = schema.qualified_field(i);
        Expr::Column(Column::new(q.cloned(), f.name()))
    };
    let value = |i: usize| Expr::Column(Column::from_name(format!("{VALUE}{i}")));
    let mut aggregates = Vec::new();
    let mut conditions = Vec::new();
    for i in 0..schema.fields().len() {
        if i == keys {
            continue;
        }
        aggregates.push(min(column(i)).alias(format!("{VALUE}{i}")));
        if one_group && i < keys {
            let (most, present) = (format!("{VALUE}{i}_max"), format!("{VALUE}{i}_n"));
            aggregates.push(max(column(i)).alias(&most));
            aggregates.push(count(column(i)).alias(&present));
            let (most, present) = (
                Expr::Column(Column::from_name(most)),
                Expr::Column(Column::from_name(present)),
            );
            // All copies NULL, or none NULL and all equal.
            conditions.push(
                present.clone().eq(lit(0i64)).or(present
                    .eq(Expr::Column(Column::from_name(GROUPS)))
                    .and(value(i).eq(most))),
            );
        }
    }
    if one_group {
        aggregates.push(count(lit(1i64)).alias(GROUPS));
    }
    let restored: Vec<Expr> = schema
        .iter()
        .enumerate()
        .map(|(i, (q, f))| {
            if i == keys {
                column(i)
            } else {
                value(i).alias_qualified(q.cloned(), f.name())
            }
        })
        .collect();
    let mut plan = LogicalPlanBuilder::from(projected).aggregate(vec![column(keys)], aggregates)?;
    if let Some(all) = conditions.into_iter().reduce(Expr::and) {
        plan = plan.filter(all)?;
    }
    plan.project(restored)?.build()
}
