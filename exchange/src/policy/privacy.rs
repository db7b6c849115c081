//! A grant's differential privacy (`[grant.privacy]`): the rows of its table leave only
//! through noisy COUNT, COUNT(DISTINCT unit), SUM and AVG, each query charged to a budget.
//!
//! Everything the mechanism needs is declared here, never derived from the data: the epsilon
//! a query spends, the budget per principal and period and the cap across principals, how
//! many groups and rows one person (the table's entity, the privacy unit) may contribute to,
//! the bounds values are clamped to, and the delta of the noisy threshold that keeps group
//! keys of a few people from being released.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{Datelike, NaiveDate};
use serde::Deserialize;
use toml::Spanned;

use super::PolicyError;
use super::load::FileCtx;
use super::model::ColumnRule;
use crate::catalog::{ColumnType, Dataset};
use crate::privacy::MicroEpsilon;

/// How long a budget lasts before it renews.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Period {
    /// A calendar day (UTC).
    Day,
    /// A calendar month.
    Month,
    /// A calendar year.
    Year,
}

impl Period {
    /// The ledger's name of the period that holds `day` (`2026-12-02`, `2026-12`, `2026`).
    pub fn key(self, day: NaiveDate) -> String {
        match self {
            Period::Day => day.format("%Y-%m-%d").to_string(),
            Period::Month => format!("{:04}-{:02}", day.year(), day.month()),
            Period::Year => format!("{:04}", day.year()),
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Period::Day => "day",
            Period::Month => "month",
            Period::Year => "year",
        })
    }
}

/// The largest magnitude of a declared bound: sums of a thousand clamped rows per person
/// and a million persons stay far inside 64-bit integers.
pub const MAX_BOUND: i64 = 1_000_000_000_000;

/// A grant's differential privacy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Privacy {
    /// Epsilon one query spends on the table (all its aggregates together).
    pub epsilon: MicroEpsilon,
    /// Epsilon one principal may spend on the table per period.
    pub budget: MicroEpsilon,
    /// Epsilon all principals together may spend on the table per period.
    pub cap: MicroEpsilon,
    /// When budgets renew.
    pub period: Period,
    /// Groups of one aggregate a person contributes to, at most.
    pub max_groups: u32,
    /// Rows a person contributes to one group, at most.
    pub max_rows: u32,
    /// The noisy threshold's delta (the chance that a group key of few persons is
    /// released), in units of 1e-12.
    pub delta_pico: u64,
    /// Clamping bounds of the columns SUM and AVG may read, by visible column name.
    pub bounds: BTreeMap<String, (i64, i64)>,
}

/// A count of epsilon in millionths, shown as a decimal.
pub fn show_epsilon(e: MicroEpsilon) -> String {
    let whole = e / 1_000_000;
    let frac = e % 1_000_000;
    if frac == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{frac:06}")
            .trim_end_matches('0')
            .to_string()
    }
}

impl Privacy {
    /// The delta as a number, for the threshold and for messages.
    pub fn delta(&self) -> f64 {
        self.delta_pico as f64 / 1e12
    }
}

impl fmt::Display for Privacy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "epsilon {} per query, budget {} per {} (cap {} across principals); per person at most {} group(s), {} row(s) per group; delta {:e}",
            show_epsilon(self.epsilon),
            show_epsilon(self.budget),
            self.period,
            show_epsilon(self.cap),
            self.max_groups,
            self.max_rows,
            self.delta()
        )?;
        for (column, (lo, hi)) in &self.bounds {
            write!(f, "; {column} clamped to [{lo}, {hi}]")?;
        }
        Ok(())
    }
}

/// `[grant.privacy]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PrivacyEntry {
    epsilon_per_query: Spanned<f64>,
    budget: Spanned<f64>,
    cap: Spanned<f64>,
    period: Spanned<String>,
    max_groups: Spanned<u32>,
    max_rows: Spanned<u32>,
    delta: Spanned<f64>,
    #[serde(default)]
    bounds: BTreeMap<String, Spanned<[i64; 2]>>,
}

/// Epsilon in millionths, or why not.
fn micro(x: f64) -> Option<MicroEpsilon> {
    if !x.is_finite() || !(1e-6..=1000.0).contains(&x) {
        return None;
    }
    let m = (x * 1e6).round();
    // In range by the check above: at most 1e9 millionths.
    Some(m as MicroEpsilon)
}

/// Check `[grant.privacy]` of grant `id` on `dataset` whose visible columns are `columns`.
pub(super) fn parse_privacy(
    ctx: &FileCtx<'_>,
    id: &str,
    dataset: &Dataset,
    columns: &[ColumnRule],
    min_group: Option<u32>,
    value_statistics: bool,
    entry: Spanned<PrivacyEntry>,
) -> Result<Privacy, PolicyError> {
    let at = entry.span();
    let e = entry.into_inner();
    let invalid = |span: std::ops::Range<usize>, m: String| {
        ctx.invalid(span, format!("grant '{id}': privacy: {m}"))
    };
    if min_group.is_none() {
        return Err(invalid(
            at,
            "needs min_group (the floor of the noisy group threshold; it also keeps rows from leaving unaggregated)".into(),
        ));
    }
    if value_statistics {
        return Err(invalid(
            at,
            "value_statistics releases members' exact values and cannot be differentially private: remove it".into(),
        ));
    }
    if let Some(c) = columns
        .iter()
        .find(|c| matches!(c.treatment, super::Treatment::AggregateOnly { .. }))
    {
        return Err(PolicyError::Invalid {
            pos: c.pos.clone(),
            message: format!(
                "grant '{id}': privacy: column {} is aggregate_only, but under privacy every column leaves only through noisy aggregates: declare it plain (or masked)",
                c.name
            ),
        });
    }
    let eps = |s: &Spanned<f64>, what: &str| {
        micro(*s.get_ref()).ok_or_else(|| {
            invalid(
                s.span(),
                format!(
                    "{what} must be a number between 0.000001 and 1000, got {}",
                    s.get_ref()
                ),
            )
        })
    };
    let epsilon = eps(&e.epsilon_per_query, "epsilon_per_query")?;
    let budget = eps(&e.budget, "budget")?;
    let cap = eps(&e.cap, "cap")?;
    if budget < epsilon {
        return Err(invalid(
            e.budget.span(),
            "budget is smaller than epsilon_per_query: no query could run".into(),
        ));
    }
    if cap < budget {
        return Err(invalid(
            e.cap.span(),
            "cap (all principals together) is smaller than budget (one principal)".into(),
        ));
    }
    let period = match e.period.get_ref().as_str() {
        "day" => Period::Day,
        "month" => Period::Month,
        "year" => Period::Year,
        other => {
            return Err(invalid(
                e.period.span(),
                format!("period must be day, month or year, got '{other}'"),
            ));
        }
    };
    for (s, what) in [(&e.max_groups, "max_groups"), (&e.max_rows, "max_rows")] {
        if !(1..=1000).contains(s.get_ref()) {
            return Err(invalid(
                s.span(),
                format!("{what} must be between 1 and 1000, got {}", s.get_ref()),
            ));
        }
    }
    let delta = *e.delta.get_ref();
    if !delta.is_finite() || !(1e-12..=1e-3).contains(&delta) {
        return Err(invalid(
            e.delta.span(),
            format!("delta must be between 1e-12 and 0.001, got {delta}"),
        ));
    }
    let mut bounds = BTreeMap::new();
    for (name, b) in e.bounds {
        let [lo, hi] = *b.get_ref();
        let Some(rule) = columns.iter().find(|c| c.name == name) else {
            return Err(invalid(
                b.span(),
                format!("bounds name {name}, which is not a column of the grant"),
            ));
        };
        let numeric = dataset
            .columns
            .iter()
            .find(|c| c.name == rule.source)
            .is_some_and(|c| {
                matches!(
                    c.ty,
                    ColumnType::Int32 | ColumnType::Int64 | ColumnType::Float64
                )
            });
        if !numeric || rule.treatment != super::Treatment::Plain {
            return Err(invalid(
                b.span(),
                format!("bounds name {name}, which is not a plain numeric column"),
            ));
        }
        if lo > hi || lo.abs() > MAX_BOUND || hi.abs() > MAX_BOUND {
            return Err(invalid(
                b.span(),
                format!(
                    "bounds of {name} must be [low, high] with low <= high, each within +-{MAX_BOUND}"
                ),
            ));
        }
        bounds.insert(name, (lo, hi));
    }
    Ok(Privacy {
        epsilon,
        budget,
        cap,
        period,
        max_groups: *e.max_groups.get_ref(),
        max_rows: *e.max_rows.get_ref(),
        delta_pico: (delta * 1e12).round() as u64,
        bounds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_name_the_day_month_or_year() {
        let d = NaiveDate::from_ymd_opt(2026, 12, 2).unwrap();
        assert_eq!(Period::Day.key(d), "2026-12-02");
        assert_eq!(Period::Month.key(d), "2026-12");
        assert_eq!(Period::Year.key(d), "2026");
    }

    #[test]
    fn epsilon_shows_as_a_decimal() {
        assert_eq!(show_epsilon(250_000), "0.25");
        assert_eq!(show_epsilon(2_000_000), "2");
        assert_eq!(show_epsilon(1), "0.000001");
        assert_eq!(micro(0.25), Some(250_000));
        assert_eq!(micro(0.0), None);
        assert_eq!(micro(f64::NAN), None);
        assert_eq!(micro(1e9), None);
    }
}
