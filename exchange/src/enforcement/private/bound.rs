//! Step 2's exact part: each person's contribution bounded, the groups' exact totals.
//!
//! Step 1 gives one row per (person, group). A person keeps at most `max_groups` of their
//! groups, those of the lowest keyed hash of (person, group): a choice made from that
//! person's own rows only, so adding or removing one person changes no one else's share.
//! The rows are split by a hash of the person into shards (every row of a person in one
//! shard), each shard sorted by (person hash, pair hash) and walked person by person on a
//! thread of its own; the shards' totals are then added up. Without GROUP BY a person has
//! one row and one group, so nothing is sorted at all.

use std::collections::HashMap;

use arrow::array::{Array, AsArray, Float64Array, Int64Array, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::hash_utils::{RandomState, create_hashes};
use datafusion::common::{DataFusionError, Result, internal_err};

use super::{Measure, Mechanism};

/// The exact totals of every group met: the group key in the row format of
/// [`Exact::converter`] (empty without GROUP BY), its totals in the order of the statistics.
pub(super) struct Exact {
    /// Reads the keys back into columns; None without GROUP BY.
    pub converter: Option<RowConverter>,
    /// Group key bytes and totals, in no particular order.
    pub groups: Vec<(Box<[u8]>, Vec<i128>)>,
}

/// The columns one statistic reads in one batch, downcast once.
enum Input<'a> {
    Units,
    Count(&'a Int64Array),
    Sum(&'a Float64Array, &'a Int64Array),
}

impl Input<'_> {
    /// One person's contribution in row `r`, bounded by `cap` rows.
    fn at(&self, r: usize, cap: i128) -> i128 {
        let count = |a: &Int64Array| {
            if a.is_null(r) {
                0
            } else {
                i128::from(a.value(r))
            }
        };
        match self {
            Input::Units => 1,
            Input::Count(a) => count(a).clamp(0, cap),
            Input::Sum(values, counts) => {
                let n = count(counts);
                if n <= 0 || values.is_null(r) || !values.value(r).is_finite() {
                    0
                } else {
                    // More than `max_rows` values: their mean, `max_rows` times. Each value
                    // is within the bounds, so the share is within `max_rows` times them.
                    let s = values.value(r) * (cap.min(n) as f64 / n as f64);
                    s.round() as i128
                }
            }
        }
    }
}

fn inputs<'a>(m: &Mechanism, batch: &'a RecordBatch) -> Result<Vec<Input<'a>>> {
    let int = |c: usize| -> Result<&'a Int64Array> {
        batch
            .columns()
            .get(c)
            .and_then(|a| a.as_primitive_opt::<Int64Type>())
            .ok_or_else(|| {
                DataFusionError::Internal("DpAggregateExec: a count is not Int64".into())
            })
    };
    m.stats
        .iter()
        .map(|s| {
            Ok(match s.measure {
                Measure::Units => Input::Units,
                Measure::Count { column } => Input::Count(int(column)?),
                Measure::Sum { column, count } => {
                    let values = batch
                        .columns()
                        .get(column)
                        .and_then(|a| a.as_primitive_opt::<Float64Type>())
                        .ok_or_else(|| {
                            DataFusionError::Internal(
                                "DpAggregateExec: a sum is not Float64".into(),
                            )
                        })?;
                    Input::Sum(values, int(count)?)
                }
            })
        })
        .collect()
}

/// One (person, group) row of step 1, where it is and how it sorts.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Pair {
    person: u64,
    pair: u64,
    batch: u32,
    row: u32,
}

/// The exact, bounded totals of every group of step 1's `batches`, over `shards` threads.
pub(super) fn exact(
    m: &Mechanism,
    in_schema: &SchemaRef,
    batches: &[RecordBatch],
    shards: usize,
) -> Result<Exact> {
    if in_schema.fields().len() <= m.groups {
        return internal_err!("DpAggregateExec: step 1 lacks its group keys");
    }
    let cap = i128::from(m.privacy.max_rows);
    if m.groups == 0 {
        // One row per person, one group, always there (even over no rows).
        let mut totals = vec![0i128; m.stats.len()];
        if m.privacy.max_groups > 0 {
            for batch in batches {
                let inputs = inputs(m, batch)?;
                for (total, input) in totals.iter_mut().zip(&inputs) {
                    for r in 0..batch.num_rows() {
                        *total += input.at(r, cap);
                    }
                }
            }
        }
        return Ok(Exact {
            converter: None,
            groups: vec![(Box::default(), totals)],
        });
    }
    let converter = RowConverter::new(
        (1..=m.groups)
            .map(|i| SortField::new(in_schema.field(i).data_type().clone()))
            .collect(),
    )?;
    let person_converter =
        RowConverter::new(vec![SortField::new(in_schema.field(0).data_type().clone())])?;
    // Seeds of this statement: which of a person's groups count is not foreseeable.
    let seeds = std::collections::hash_map::RandomState::new();
    let person_state = RandomState::with_seed(std::hash::BuildHasher::hash_one(&seeds, 1u8));
    let pair_state = RandomState::with_seed(std::hash::BuildHasher::hash_one(&seeds, 2u8));
    let shards = shards.clamp(1, 64);
    let mut parts: Vec<Vec<Pair>> = vec![Vec::new(); shards];
    let mut keys = Vec::with_capacity(batches.len());
    let mut persons = Vec::with_capacity(batches.len());
    let mut person_hash = Vec::new();
    let mut pair_hash = Vec::new();
    for (b, batch) in batches.iter().enumerate() {
        let n = batch.num_rows();
        let columns = batch.columns();
        person_hash.clear();
        person_hash.resize(n, 0);
        pair_hash.clear();
        pair_hash.resize(n, 0);
        create_hashes(&columns[..1], &person_state, &mut person_hash)?;
        create_hashes(&columns[..=m.groups], &pair_state, &mut pair_hash)?;
        let batch_no = u32::try_from(b).map_err(|_| too_many())?;
        for (r, (&person, &pair)) in person_hash.iter().zip(&pair_hash).enumerate() {
            let row = u32::try_from(r).map_err(|_| too_many())?;
            let shard = (person >> 32) as usize % shards;
            if let Some(part) = parts.get_mut(shard) {
                part.push(Pair {
                    person,
                    pair,
                    batch: batch_no,
                    row,
                });
            }
        }
        keys.push(converter.convert_columns(&columns[1..=m.groups])?);
        persons.push(person_converter.convert_columns(&columns[..1])?);
    }
    let inputs = batches
        .iter()
        .map(|b| inputs(m, b))
        .collect::<Result<Vec<_>>>()?;
    let shard = Shard {
        m,
        cap,
        keys: &keys,
        persons: &persons,
        inputs: &inputs,
    };
    let totals: Vec<Result<Totals>> = std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|part| s.spawn(|| shard.totals(part)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| internal_err!("DpAggregateExec: a shard failed"))
            })
            .collect()
    });
    let mut merged = Totals::default();
    for part in totals {
        for (key, t) in part? {
            let into = merged.entry(key).or_insert_with(|| vec![0; m.stats.len()]);
            for (a, b) in into.iter_mut().zip(t) {
                *a += b;
            }
        }
    }
    Ok(Exact {
        converter: Some(converter),
        groups: merged.into_iter().collect(),
    })
}

fn too_many() -> DataFusionError {
    DataFusionError::Internal("DpAggregateExec: more rows than it can index".into())
}

type Totals = HashMap<Box<[u8]>, Vec<i128>, RandomState>;

/// What every shard reads.
struct Shard<'a> {
    m: &'a Mechanism,
    cap: i128,
    keys: &'a [Rows],
    persons: &'a [Rows],
    inputs: &'a [Vec<Input<'a>>],
}

impl Shard<'_> {
    fn person(&self, p: &Pair) -> &[u8] {
        self.persons
            .get(p.batch as usize)
            .map_or(&[], |rows| rows.row(p.row as usize).data())
    }

    /// The bounded totals of the persons of one shard.
    fn totals(&self, mut pairs: Vec<Pair>) -> Result<Totals> {
        pairs.sort_unstable();
        let mut totals = Totals::default();
        let mut start = 0;
        while start < pairs.len() {
            let person = pairs[start].person;
            let end = pairs[start..]
                .iter()
                .position(|p| p.person != person)
                .map_or(pairs.len(), |n| start + n);
            let run = &mut pairs[start..end];
            let first = self.person(&run[0]);
            if run.iter().all(|p| self.person(p) == first) {
                self.add(run, &mut totals)?;
            } else {
                // Two persons with one hash: apart by their own bytes, then as before.
                run.sort_by(|a, b| self.person(a).cmp(self.person(b)).then(a.pair.cmp(&b.pair)));
                let mut at = 0;
                while at < run.len() {
                    let who = self.person(&run[at]);
                    let n = run[at..]
                        .iter()
                        .position(|p| self.person(p) != who)
                        .unwrap_or(run.len() - at);
                    self.add(&run[at..at + n], &mut totals)?;
                    at += n;
                }
            }
            start = end;
        }
        Ok(totals)
    }

    /// One person's pairs, by pair hash: the first `max_groups` count, each bounded.
    fn add(&self, pairs: &[Pair], totals: &mut Totals) -> Result<()> {
        for p in pairs.iter().take(self.m.privacy.max_groups as usize) {
            let (Some(keys), Some(inputs)) = (
                self.keys.get(p.batch as usize),
                self.inputs.get(p.batch as usize),
            ) else {
                return internal_err!("DpAggregateExec lost a row");
            };
            let key = keys.row(p.row as usize);
            let group = match totals.get_mut(key.data()) {
                Some(g) => g,
                None => totals
                    .entry(key.data().into())
                    .or_insert_with(|| vec![0; self.m.stats.len()]),
            };
            for (total, input) in group.iter_mut().zip(inputs) {
                *total += input.at(p.row as usize, self.cap);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};
    use std::sync::Arc;

    use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
    use arrow::row::{RowConverter, SortField};

    use super::{Pair, Shard, Totals, exact, inputs};
    use crate::enforcement::private::{Measure, Mechanism, Release, Stat};
    use crate::policy::{Period, Privacy};

    fn mechanism(max_groups: u32, max_rows: u32) -> Mechanism {
        let stat = |measure, label: &str| Stat {
            measure,
            label: label.into(),
            scale: (1, 1),
        };
        Mechanism {
            dataset: "health.visits".into(),
            privacy: Privacy {
                epsilon: 1_000_000,
                budget: 1 << 50,
                cap: 1 << 50,
                period: Period::Month,
                max_groups,
                max_rows,
                delta_pico: 1_000_000,
                bounds: BTreeMap::new(),
            },
            groups: 1,
            stats: vec![
                stat(Measure::Units, "persons"),
                stat(Measure::Count { column: 2 }, "rows"),
                stat(
                    Measure::Sum {
                        column: 3,
                        count: 2,
                    },
                    "cost",
                ),
            ],
            releases: vec![Release::Count(0)],
            threshold: Some((0, 1)),
        }
    }

    /// Step 1 rows (person, group, rows, sum of values), in batches of `per_batch`.
    fn step1(
        rows: &[(String, String, i64, f64)],
        per_batch: usize,
    ) -> (SchemaRef, Vec<RecordBatch>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("unit", DataType::Utf8, true),
            Field::new("g", DataType::Utf8, true),
            Field::new("rows", DataType::Int64, false),
            Field::new("cost", DataType::Float64, true),
        ]));
        let batches = rows
            .chunks(per_batch)
            .map(|c| {
                RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![
                        Arc::new(StringArray::from_iter_values(c.iter().map(|r| &r.0))),
                        Arc::new(StringArray::from_iter_values(c.iter().map(|r| &r.1))),
                        Arc::new(Int64Array::from_iter_values(c.iter().map(|r| r.2))),
                        Arc::new(Float64Array::from_iter_values(c.iter().map(|r| r.3))),
                    ],
                )
                .unwrap()
            })
            .collect();
        (schema, batches)
    }

    /// 300 persons, person i in (i % 4) + 1 of 5 groups, with i % 9 rows in each.
    fn city() -> Vec<(String, String, i64, f64)> {
        let mut rows = Vec::new();
        for i in 0..300 {
            for g in 0..(i % 4) + 1 {
                let n = (i % 9) as i64 + 1;
                rows.push((
                    format!("p{i}"),
                    format!("g{}", (i + g) % 5),
                    n,
                    10.0 * n as f64,
                ));
            }
        }
        rows
    }

    fn by_key(exact: super::Exact) -> BTreeMap<Vec<u8>, Vec<i128>> {
        exact
            .groups
            .into_iter()
            .map(|(k, t)| (k.to_vec(), t))
            .collect()
    }

    #[test]
    fn totals_are_the_same_over_any_number_of_shards() {
        let m = mechanism(4, 5);
        let (schema, batches) = step1(&city(), 37);
        let one = by_key(exact(&m, &schema, &batches, 1).unwrap());
        // Every person keeps all their groups (at most 4): the totals are exact sums.
        let mut expected: HashMap<String, Vec<i128>> = HashMap::new();
        for (_, g, n, cost) in city() {
            let t = expected.entry(g).or_insert_with(|| vec![0; 3]);
            let kept = n.min(5);
            t[0] += 1;
            t[1] += i128::from(kept);
            t[2] += (cost * kept as f64 / n as f64).round() as i128;
        }
        let conv = RowConverter::new(vec![SortField::new(DataType::Utf8)]).unwrap();
        for (g, t) in &expected {
            let key = conv
                .convert_columns(&[Arc::new(StringArray::from(vec![g.as_str()]))])
                .unwrap();
            assert_eq!(one.get(key.row(0).data()), Some(t), "group {g}");
        }
        assert_eq!(one.len(), expected.len());
        for shards in [2, 3, 7] {
            assert_eq!(by_key(exact(&m, &schema, &batches, shards).unwrap()), one);
        }
    }

    #[test]
    fn each_person_counts_in_at_most_max_groups_groups() {
        let m = mechanism(2, 5);
        let (schema, batches) = step1(&city(), 50);
        let persons: i128 = by_key(exact(&m, &schema, &batches, 2).unwrap())
            .values()
            .map(|t| t[0])
            .sum();
        let expected: i128 = (0..300).map(|i| ((i % 4) + 1).min(2)).sum();
        assert_eq!(persons, expected);
    }

    #[test]
    fn two_persons_sharing_a_hash_are_bounded_apart() {
        // p0 in groups a, b, c and p1 in d, e, f, all under one person hash: each keeps two.
        let m = mechanism(2, 5);
        let rows: Vec<_> = [
            ("p0", "a"),
            ("p1", "d"),
            ("p0", "b"),
            ("p1", "e"),
            ("p0", "c"),
            ("p1", "f"),
        ]
        .iter()
        .map(|(p, g)| (p.to_string(), g.to_string(), 1, 1.0))
        .collect();
        let (schema, batches) = step1(&rows, 6);
        let batch = &batches[0];
        let keys = RowConverter::new(vec![SortField::new(DataType::Utf8)]).unwrap();
        let keys = vec![keys.convert_columns(&batch.columns()[1..2]).unwrap()];
        let persons = RowConverter::new(vec![SortField::new(DataType::Utf8)]).unwrap();
        let persons = vec![persons.convert_columns(&batch.columns()[..1]).unwrap()];
        let inputs = vec![inputs(&m, batch).unwrap()];
        let shard = Shard {
            m: &m,
            cap: 5,
            keys: &keys,
            persons: &persons,
            inputs: &inputs,
        };
        let pairs = (0..6u32)
            .map(|row| Pair {
                person: 42,
                pair: u64::from(row),
                batch: 0,
                row,
            })
            .collect();
        let totals: Totals = shard.totals(pairs).unwrap();
        let persons: i128 = totals.values().map(|t| t[0]).sum();
        assert_eq!(persons, 4, "two persons, two groups each");
        assert_eq!(totals.len(), 4);
        let _ = schema;
    }
}
