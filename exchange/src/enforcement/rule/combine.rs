//! Tags where plans meet: the columns of a union, and of a join (which conditions may
//! compare which join keys, and which side's `min_group` rows an outer join pads).

use datafusion::common::Result;
use datafusion::logical_expr::{Join, JoinType, LogicalPlan};

use super::super::tags::{Ctx, ScanId, Tag, join_keys_match, refuse, refuse_constrained};
use super::ScanInfo;
use super::check_len;
use super::hidden::min_group_rows;

/// The tags of a union's columns. Join keys of one domain from different scans stay join
/// keys, of a new relation (`relation`): the union's rows are none of its branches'.
pub(super) fn merge_union(branches: &[Vec<Tag>], relation: ScanId) -> Result<Vec<Tag>> {
    let mut out: Vec<Tag> = branches.first().cloned().unwrap_or_default();
    for b in branches.iter().skip(1) {
        for (o, t) in out.iter_mut().zip(b) {
            match (&*o, t) {
                (a, b) if a == b => {}
                (
                    Tag::JoinKey { domain, column, .. },
                    Tag::JoinKey {
                        domain: other_domain,
                        ..
                    },
                ) if domain == other_domain => {
                    *o = Tag::JoinKey {
                        domain: domain.clone(),
                        column: column.clone(),
                        scan: relation,
                    };
                }
                (a, b) => {
                    refuse_constrained(a, "a UNION mixing different column rules")?;
                    refuse_constrained(b, "a UNION mixing different column rules")?;
                    // Unconstrained, but no longer one scan's own column.
                    *o = Tag::Free;
                }
            }
        }
    }
    Ok(out)
}

pub(super) fn join(
    j: Join,
    inputs: Vec<LogicalPlan>,
    input_tags: Vec<Vec<Tag>>,
    ctx: &Ctx<'_>,
    scans: &[ScanInfo],
) -> Result<(LogicalPlan, Vec<Tag>)> {
    for (l, r) in &j.on {
        let tl = ctx.tag(l, "a join condition")?;
        let tr = ctx.tag(r, "a join condition")?;
        if join_keys_match(&tl, &tr)? {
            continue;
        }
        match (&tl, &tr) {
            (Tag::JoinKey { .. }, _) => refuse_constrained(
                &tl,
                "a join with a column that is not a join key of the same domain",
            )?,
            (_, Tag::JoinKey { .. }) => refuse_constrained(
                &tr,
                "a join with a column that is not a join key of the same domain",
            )?,
            _ => {
                refuse_constrained(&tl, "a join condition")?;
                refuse_constrained(&tr, "a join condition")?;
            }
        }
    }
    if let Some(f) = &j.filter {
        ctx.predicate(f, "a join condition")?;
    }
    let mut it = input_tags.into_iter();
    let left = it.next().unwrap_or_default();
    let right = it.next().unwrap_or_default();
    // A semi, anti or mark join tests rows of one side for presence and drops them: rows of
    // a min_group table may not be tested that way.
    let dropped = match j.join_type {
        JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => Some(&right),
        JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => Some(&left),
        _ => None,
    };
    if let Some(side) = dropped
        && let Some((_, k, table)) = min_group_rows(side, scans).first()
    {
        return refuse(format!(
            "rows of {table} may only be used aggregated, in groups of at least {k} entities, and cannot be tested one by one in a semi or anti join"
        ));
    }
    let tags = match j.join_type {
        // A row of either side may meet several rows of the other, or none (padded with
        // NULLs by an outer join): aggregates must count each protected row once.
        JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full => [left, right]
            .concat()
            .into_iter()
            .map(|t| match t {
                Tag::Row { scan, .. } => Tag::Row {
                    scan,
                    multiplied: true,
                },
                other => other,
            })
            .collect(),
        JoinType::LeftSemi | JoinType::LeftAnti => left,
        JoinType::RightSemi | JoinType::RightAnti => right,
        JoinType::LeftMark => [left, vec![Tag::Free]].concat(),
        JoinType::RightMark => [right, vec![Tag::Free]].concat(),
    };
    let plan = LogicalPlan::Join(j);
    let plan = super::with_new_inputs(&plan, inputs)?;
    check_len(&plan, &tags)?;
    Ok((plan, tags))
}
