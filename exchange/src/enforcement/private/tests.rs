//! The operator on crafted step-1 rows, with a seeded source: the differencing attack, the
//! contribution bounds, the threshold and the budget.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use chrono::NaiveDate;

use super::exec::release;
use super::runtime::PrivacyRuntime;
use super::{Measure, Mechanism, Release, Stat};
use crate::policy::{Period, Privacy};
use crate::privacy::{Ledger, SeededSource};

/// A grant's privacy with `epsilon` (in millionths) and bounds per person.
pub(super) fn privacy(epsilon: u64, max_groups: u32, max_rows: u32) -> Privacy {
    Privacy {
        epsilon,
        budget: 1 << 50,
        cap: 1 << 50,
        period: Period::Month,
        max_groups,
        max_rows,
        delta_pico: 1_000_000,
        bounds: BTreeMap::new(),
    }
}

/// Step 1 without GROUP BY: each person's rows, `(person, how many)`.
fn step1(rows: &[(&str, i64)]) -> (SchemaRef, RecordBatch) {
    let schema = Arc::new(Schema::new(vec![Field::new("unit", DataType::Utf8, true)]));
    let persons: Vec<&str> = rows
        .iter()
        .flat_map(|(p, n)| std::iter::repeat_n(*p, usize::try_from(*n).unwrap()))
        .collect();
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![Arc::new(StringArray::from_iter_values(persons))],
    )
    .unwrap();
    (schema, batch)
}

/// COUNT(*) without GROUP BY: one statistic of sensitivity max_groups * max_rows.
fn count_all(p: Privacy) -> Mechanism {
    let sensitivity = u128::from(p.max_groups) * u128::from(p.max_rows);
    Mechanism {
        dataset: "health.visits".into(),
        stats: vec![Stat {
            measure: Measure::Rows,
            label: "COUNT(*)".into(),
            scale: (sensitivity * 1_000_000, u128::from(p.epsilon)),
        }],
        privacy: p,
        groups: 0,
        releases: vec![Release::Count(0)],
        threshold: None,
    }
}

fn out_count() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]))
}

/// Step 1 grouped by one text key: (person, group) pairs, nothing else.
fn persons_by_group(pairs: &[(&str, &str)]) -> (SchemaRef, RecordBatch) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("unit", DataType::Utf8, true),
        Field::new("g", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(StringArray::from_iter_values(pairs.iter().map(|p| p.0))),
            Arc::new(StringArray::from_iter_values(pairs.iter().map(|p| p.1))),
        ],
    )
    .unwrap();
    (schema, batch)
}

/// The persons of each group, thresholded at `threshold`, with noise of `scale`.
fn persons_mechanism(p: Privacy, scale: (u128, u128), threshold: i64) -> Mechanism {
    Mechanism {
        dataset: "health.visits".into(),
        stats: vec![Stat {
            measure: Measure::Units,
            label: "persons".into(),
            scale,
        }],
        privacy: p,
        groups: 1,
        releases: vec![Release::Count(0)],
        threshold: Some((0, threshold)),
    }
}

fn out_persons() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("g", DataType::Utf8, true),
        Field::new("persons", DataType::Int64, false),
    ]))
}

fn runtime(dir: &std::path::Path, seed: u64) -> PrivacyRuntime {
    let ledger = Arc::new(Ledger::open(&dir.join("ledger.jsonl")).unwrap());
    PrivacyRuntime::with_source(
        ledger,
        "analyst",
        NaiveDate::from_ymd_opt(2026, 12, 2).unwrap(),
        Box::new(SeededSource(seed)),
    )
}

fn released_count(batch: &RecordBatch) -> i64 {
    batch.column(0).as_primitive::<Int64Type>().value(0)
}

/// The differencing attack of the README's known limits: two counts, with and without one
/// person. Exact, their difference is that person, every time. With epsilon 0.5, the best
/// test of the difference (a person present when the count passes the midpoint) is right
/// with chance at most e^0.5 / (1 + e^0.5) = 0.622; over 20,000 seeded runs the estimate's
/// standard error is 0.0035, so the bound 0.65 fails falsely with chance below 1e-12.
#[test]
fn the_differencing_attack_fails_under_noise() {
    let dir = tempfile::tempdir().unwrap();
    let others: Vec<(String, i64)> = (0..100).map(|i| (format!("p{i}"), 1)).collect();
    let without: Vec<(&str, i64)> = others.iter().map(|(p, n)| (p.as_str(), *n)).collect();
    let mut with = without.clone();
    with.push(("target", 1));
    let (schema, a) = step1(&without);
    let (_, b) = step1(&with);
    let m = count_all(privacy(500_000, 1, 1));
    // Exact (no noise): the difference names the target every time.
    assert_eq!(b.num_rows() - a.num_rows(), 1);
    let rt = runtime(dir.path(), 7);
    let out = out_count();
    let runs = 20_000;
    let mut right = 0u32;
    for _ in 0..runs {
        let x = released_count(&release(&m, &schema, std::slice::from_ref(&a), &rt, &out).unwrap());
        let y = released_count(&release(&m, &schema, std::slice::from_ref(&b), &rt, &out).unwrap());
        // Guess "present" when the count is above 100.5.
        right += u32::from(x <= 100) + u32::from(y >= 101);
    }
    let accuracy = f64::from(right) / f64::from(2 * runs);
    assert!(
        accuracy < 0.65,
        "the attacker guesses right {accuracy:.3} of the time"
    );
    assert!(
        accuracy > 0.55,
        "the noise is not overwhelming: {accuracy:.3}"
    );
}

/// One person with a thousand rows counts `max_rows`; with next to no noise (epsilon
/// 1000), the release is the bounded total.
#[test]
fn one_person_with_a_thousand_rows_counts_max_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (schema, batch) = step1(&[("heavy", 1000), ("a", 1), ("b", 2)]);
    let m = count_all(privacy(1_000_000_000, 1, 3));
    let rt = runtime(dir.path(), 1);
    let got = released_count(&release(&m, &schema, &[batch], &rt, &out_count()).unwrap());
    assert_eq!(got, 3 + 1 + 2);
}

/// A person in many groups counts in `max_groups` of them; a sum of a thousand values at
/// the bound is `max_rows` values' worth.
#[test]
fn a_person_counts_in_max_groups_groups_with_max_rows_values() {
    let dir = tempfile::tempdir().unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("unit", DataType::Utf8, true),
        Field::new("g", DataType::Int64, true),
        Field::new("s", DataType::Float64, true),
    ]));
    // Ten groups, a thousand rows of 50 in each.
    let groups: Vec<i64> = (0..10_000).map(|i| i % 10).collect();
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(StringArray::from_iter_values(groups.iter().map(|_| "p"))),
            Arc::new(Int64Array::from_iter_values(groups.iter().copied())),
            Arc::new(Float64Array::from_iter_values(groups.iter().map(|_| 50.0))),
        ],
    )
    .unwrap();
    let p = privacy(1_000_000_000, 2, 4);
    let m = Mechanism {
        dataset: "hrss.employment".into(),
        stats: vec![
            Stat {
                measure: Measure::Sum { column: 2 },
                label: "SUM(x)".into(),
                scale: (1, 1000),
            },
            Stat {
                measure: Measure::Units,
                label: "persons".into(),
                scale: (1, 1000),
            },
        ],
        privacy: p,
        groups: 1,
        releases: vec![Release::Sum(0), Release::Count(1)],
        // A threshold of one person, to see every group the person counts in.
        threshold: Some((1, 1)),
    };
    let out = Arc::new(Schema::new(vec![
        Field::new("g", DataType::Int64, true),
        Field::new("s", DataType::Int64, true),
        Field::new("persons", DataType::Int64, false),
    ]));
    let rt = runtime(dir.path(), 3);
    let got = release(&m, &schema, &[batch], &rt, &out).unwrap();
    assert_eq!(got.num_rows(), 2, "in max_groups groups");
    let sums = got.column(1).as_primitive::<Int64Type>();
    for i in 0..sums.len() {
        assert_eq!(sums.value(i), 4 * 50, "max_rows values' worth");
    }
}

/// Without GROUP BY the one group is released even over no rows; with GROUP BY, a group
/// of one person stays below the noisy threshold.
#[test]
fn the_threshold_hides_a_group_of_one_person() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), 11);
    let (schema, empty) = step1(&[]);
    let m = count_all(privacy(500_000, 1, 1));
    let got = release(&m, &schema, &[empty], &rt, &out_count()).unwrap();
    assert_eq!(got.num_rows(), 1);
    let (schema, batch) = persons_by_group(&[("alone", "rare diagnosis")]);
    let m = persons_mechanism(privacy(500_000, 1, 1), (2_000_000, 500_000), 60);
    let out = out_persons();
    for _ in 0..1000 {
        let got = release(&m, &schema, std::slice::from_ref(&batch), &rt, &out).unwrap();
        assert_eq!(got.num_rows(), 0);
    }
}

/// A charge past the budget refuses, and names what is spent.
#[test]
fn an_exhausted_budget_refuses_with_its_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), 5);
    let mut p = privacy(500_000, 1, 1);
    p.budget = 1_000_000;
    p.cap = 1_000_000;
    let m = count_all(p);
    let (schema, batch) = step1(&[("a", 1)]);
    for _ in 0..2 {
        release(&m, &schema, std::slice::from_ref(&batch), &rt, &out_count()).unwrap();
    }
    let err = release(&m, &schema, &[batch], &rt, &out_count())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("privacy budget of analyst on health.visits for 2026-12 is spent: epsilon 1 of 1 used, this query needs 0.5"),
        "{err}"
    );
    assert_eq!(rt.spent().len(), 2);
}

/// Review 53: groups leave in key order, not in the order their first persons were read.
#[test]
fn groups_are_released_in_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path(), 13);
    let (schema, batch) = persons_by_group(&[("p1", "c"), ("p2", "a"), ("p3", "b")]);
    let m = persons_mechanism(privacy(1_000_000_000, 1, 1), (1, 1000), 1);
    let out = out_persons();
    let got = release(&m, &schema, &[batch], &rt, &out).unwrap();
    let keys: Vec<&str> = got.column(0).as_string::<i32>().iter().flatten().collect();
    assert_eq!(keys, ["a", "b", "c"]);
}
