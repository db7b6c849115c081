//! Step 2's exact part: each person's contribution bounded, the groups' exact totals.
//!
//! Step 1 gives the rows themselves: (person, group keys, the statistics' values). A person
//! keeps at most `max_groups` of their groups, those of the lowest keyed hash of (person,
//! group key), and at most `max_rows` rows' worth in each: choices made from that person's
//! own rows only, so adding or removing one person changes no one else's share.
//!
//! How, in two parallel passes over memory that stays in cache:
//! 1. the batches, split over threads: each row's person hashed twice (two seeds of this
//!    statement: a 128-bit identity), its group key interned (DataFusion's group values,
//!    the same the hash aggregate uses) and hashed, and a small record of it written to one
//!    of many buckets chosen by the person's hash (every row of a person in one bucket);
//! 2. the buckets, split over threads: each sorted by (person, pair hash, group) and walked
//!    person by person, pair by pair.
//!
//! Two persons are taken for one only if both 64-bit hashes collide: at a million persons
//! a chance near 10^-27 per statement, far below any grant's delta; they would then share
//! one person's bounds, never exceed them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{Float64Type, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use datafusion::common::hash_utils::{RandomState, create_hashes};
use datafusion::common::{DataFusionError, Result, internal_err};
use datafusion::execution::memory_pool::MemoryReservation;
use datafusion::logical_expr::EmitTo;
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;

use super::{Measure, Mechanism};

/// The exact totals of every group met, in key order.
pub(super) struct Exact {
    /// The group key columns, one row per group, in key order (none without GROUP BY).
    pub keys: Vec<ArrayRef>,
    /// Per group, its totals in the order of the statistics.
    pub totals: Vec<Vec<i128>>,
}

/// One row of step 1, as it is sorted: person, pair hash, group (its rank in key order,
/// so that a tie of pair hashes is broken by the key, never by other persons' data), then
/// where its values are in its bucket.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rec {
    person: (u64, u64),
    pair: u64,
    group: u32,
    at: u32,
}

/// How one value column of step 1 is read: a clamped Float64 that sums, or any column
/// whose non-null rows count.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Value,
    Present,
}

/// The seeds of one statement: which of a person's groups count is not foreseeable.
struct Seeds {
    person: [RandomState; 2],
    group: RandomState,
    pair: u64,
}

impl Seeds {
    fn new() -> Self {
        let s = std::collections::hash_map::RandomState::new();
        let seed = |i: u8| std::hash::BuildHasher::hash_one(&s, i);
        Self {
            person: [
                RandomState::with_seed(seed(1)),
                RandomState::with_seed(seed(2)),
            ],
            group: RandomState::with_seed(seed(3)),
            pair: seed(4) | 1,
        }
    }

    /// The keyed hash of (person, group): a folded multiply of their seeded hashes.
    fn pair(&self, person: u64, group: u64) -> u64 {
        let x = u128::from(person ^ self.pair) * u128::from(group ^ 0x9e37_79b9_7f4a_7c15);
        (x as u64) ^ ((x >> 64) as u64)
    }
}

/// What pass 1 of one thread made: its buckets (their group ids local to the thread).
struct Part {
    recs: Vec<Vec<Rec>>,
    vals: Vec<Vec<f64>>,
}

/// A thread's group values: its local group ids (none without GROUP BY).
type Groups = Option<Box<dyn GroupValues>>;

/// The step-1 columns the statistics read, and how.
fn value_columns(m: &Mechanism) -> Vec<(usize, Kind)> {
    let mut cols: Vec<(usize, Kind)> = Vec::new();
    for s in &m.stats {
        let (column, kind) = match s.measure {
            Measure::Units | Measure::Rows => continue,
            Measure::Count { column } => (column, Kind::Present),
            Measure::Sum { column } => (column, Kind::Value),
        };
        match cols.iter_mut().find(|(c, _)| *c == column) {
            Some(c) if kind == Kind::Value => c.1 = Kind::Value,
            Some(_) => {}
            None => cols.push((column, kind)),
        }
    }
    cols
}

/// The memory pass 1 takes over `rows` rows, beyond the rows themselves: each row's record
/// and values in its thread's bucket. (Pass 2's copies are reserved once the buckets are
/// known.)
pub(super) fn working_memory(m: &Mechanism, rows: usize) -> usize {
    rows.saturating_mul(per_row(m)).saturating_add(1 << 20)
}

/// The bytes of one row's record and values.
fn per_row(m: &Mechanism) -> usize {
    std::mem::size_of::<Rec>() + 8 * value_columns(m).len()
}

/// The exact, bounded totals of every group of step 1's `batches`, over `threads` threads.
pub(super) fn exact(
    m: &Mechanism,
    in_schema: &SchemaRef,
    batches: Vec<RecordBatch>,
    threads: usize,
    reservation: &mut MemoryReservation,
    stop: &AtomicBool,
) -> Result<Exact> {
    if in_schema.fields().len() <= m.groups {
        return internal_err!("DpAggregateExec: step 1 lacks its group keys");
    }
    let threads = threads.clamp(1, 64);
    let cols = value_columns(m);
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    // Buckets of some 8,000 rows: each sorts in cache.
    let bits = (rows / 8192).next_power_of_two().trailing_zeros().min(12);
    let key_schema = Arc::new(Schema::new(in_schema.fields()[1..=m.groups].to_vec()));
    let seeds = Seeds::new();
    let per = batches.len().div_ceil(threads).max(1);
    let pass1 = Pass1 {
        m,
        cols: &cols,
        bits,
        seeds: &seeds,
        key_schema: &key_schema,
    };
    let (parts, groups): (Vec<Part>, Vec<Groups>) =
        in_threads(batches.chunks(per).collect(), |chunk| pass1.run(chunk))?
            .into_iter()
            .unzip();
    drop(batches);
    // The distinct keys can be as many as the rows (GROUP BY a value column): the threads'
    // group values, and while they merge the keys emitted, interned again, in the row
    // format and sorted: four times as much.
    let interned: usize = groups.iter().flatten().map(|g| g.size()).sum();
    reservation.try_grow(interned.saturating_mul(4))?;
    // The groups of all threads, one id each: its rank in key order.
    let (keys, ranks) = merge_groups(m, &key_schema, groups)?;
    let groups = if m.groups == 0 {
        1
    } else {
        keys.first().map_or(0, |k| k.len())
    };
    // Each thread's totals and their sum, 16 bytes a statistic of a group (review 54), and
    // each thread's copy of the bucket it walks (twice an even share, for uneven buckets).
    let per_group = m.stats.len().max(1) * 16 + 24;
    let bucket = rows.div_ceil(1 << bits).saturating_mul(2 * per_row(m));
    reservation.try_grow(
        groups
            .saturating_mul(per_group)
            .saturating_add(bucket)
            .saturating_mul(threads + 1),
    )?;
    // Where each statistic's values are among a row's values, found once.
    let at = m
        .stats
        .iter()
        .map(|s| match s.measure {
            Measure::Units | Measure::Rows => Ok(None),
            Measure::Count { column: c } | Measure::Sum { column: c } => {
                match cols.iter().position(|(x, _)| *x == c) {
                    Some(j) => Ok(Some(j)),
                    None => internal_err!("DpAggregateExec: a statistic without its column"),
                }
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let walk = Walk {
        stop,
        m,
        at: &at,
        cols: &cols,
        parts: &parts,
        ranks: &ranks,
        groups,
    };
    let buckets: Vec<Vec<usize>> = (0..threads)
        .map(|t| (t..1usize << bits).step_by(threads).collect())
        .collect();
    let sums = in_threads(buckets, |mine| walk.run(&mine))?;
    let mut totals = vec![vec![0i128; m.stats.len()]; groups];
    for part in sums {
        for (into, from) in totals.iter_mut().zip(part.chunks(m.stats.len().max(1))) {
            for (a, b) in into.iter_mut().zip(from) {
                *a += b;
            }
        }
    }
    Ok(Exact { keys, totals })
}

/// `f` over each of `work` on a thread of its own; the results in order.
fn in_threads<W: Send, T: Send>(work: Vec<W>, f: impl Fn(W) -> Result<T> + Sync) -> Result<Vec<T>> {
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = work.into_iter().map(|w| s.spawn(move || f(w))).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| internal_err!("DpAggregateExec: a thread failed"))
            })
            .collect()
    })
}

fn too_many() -> DataFusionError {
    DataFusionError::Internal("DpAggregateExec: more rows than it can index".into())
}

/// Pass 1 over a share of the batches.
struct Pass1<'a> {
    m: &'a Mechanism,
    cols: &'a [(usize, Kind)],
    bits: u32,
    seeds: &'a Seeds,
    key_schema: &'a SchemaRef,
}

impl Pass1<'_> {
    fn run(&self, batches: &[RecordBatch]) -> Result<(Part, Groups)> {
        let n = 1usize << self.bits;
        let mut part = Part {
            recs: vec![Vec::new(); n],
            vals: vec![Vec::new(); n],
        };
        let mut groups: Groups = if self.m.groups == 0 {
            None
        } else {
            Some(new_group_values(
                Arc::clone(self.key_schema),
                &GroupOrdering::None,
            )?)
        };
        let (mut h1, mut h2, mut gh) = (Vec::new(), Vec::new(), Vec::new());
        let mut ids: Vec<usize> = Vec::new();
        let k = self.cols.len();
        for batch in batches {
            let rows = batch.num_rows();
            let columns = batch.columns();
            for (h, seed) in [
                (&mut h1, &self.seeds.person[0]),
                (&mut h2, &self.seeds.person[1]),
            ] {
                h.clear();
                h.resize(rows, 0);
                create_hashes(&columns[..1], seed, h)?;
            }
            gh.clear();
            gh.resize(rows, 0);
            ids.clear();
            if let Some(groups) = groups.as_mut() {
                let keys = &columns[1..=self.m.groups];
                create_hashes(keys, &self.seeds.group, &mut gh)?;
                groups.intern(keys, &mut ids)?;
            } else {
                ids.resize(rows, 0);
            }
            let values = self.values(batch)?;
            for r in 0..rows {
                let b = if self.bits == 0 {
                    0
                } else {
                    (h1[r] >> (64 - self.bits)) as usize
                };
                let (Some(recs), Some(vals)) = (part.recs.get_mut(b), part.vals.get_mut(b)) else {
                    return internal_err!("DpAggregateExec: a bucket is missing");
                };
                let at = vals.len().checked_div(k).unwrap_or(recs.len());
                recs.push(Rec {
                    person: (h1[r], h2[r]),
                    pair: self.seeds.pair(h1[r], gh[r]),
                    group: u32::try_from(ids[r]).map_err(|_| too_many())?,
                    at: u32::try_from(at).map_err(|_| too_many())?,
                });
                vals.extend(values.iter().map(|v| v.at(r)));
            }
        }
        Ok((part, groups))
    }

    /// The value columns of one batch, downcast once.
    fn values<'b>(&self, batch: &'b RecordBatch) -> Result<Vec<Values<'b>>> {
        self.cols
            .iter()
            .map(|(c, kind)| {
                let Some(a) = batch.columns().get(*c) else {
                    return internal_err!("DpAggregateExec: step 1 lacks a value column");
                };
                Ok(match kind {
                    Kind::Value => match a.as_primitive_opt::<Float64Type>() {
                        Some(a) => Values::Value(a.values(), a.logical_nulls()),
                        None => return internal_err!("DpAggregateExec: a sum is not Float64"),
                    },
                    Kind::Present => Values::Present(a.logical_nulls()),
                })
            })
            .collect()
    }
}

/// One value column of one batch: NaN stands for "no value".
enum Values<'a> {
    Value(&'a [f64], Option<arrow::buffer::NullBuffer>),
    Present(Option<arrow::buffer::NullBuffer>),
}

impl Values<'_> {
    fn at(&self, r: usize) -> f64 {
        let valid =
            |n: &Option<arrow::buffer::NullBuffer>| n.as_ref().is_none_or(|n| n.is_valid(r));
        match self {
            Values::Value(v, nulls) => match v.get(r) {
                Some(x) if valid(nulls) && x.is_finite() => *x,
                _ => f64::NAN,
            },
            Values::Present(nulls) => {
                if valid(nulls) {
                    1.0
                } else {
                    f64::NAN
                }
            }
        }
    }
}

/// Every thread's groups interned once more: the key columns in key order, and for each
/// thread the rank of each of its local group ids.
fn merge_groups(
    m: &Mechanism,
    key_schema: &SchemaRef,
    parts: Vec<Groups>,
) -> Result<(Vec<ArrayRef>, Vec<Vec<u32>>)> {
    if m.groups == 0 {
        return Ok((vec![], parts.iter().map(|_| vec![0]).collect()));
    }
    let mut all = new_group_values(Arc::clone(key_schema), &GroupOrdering::None)?;
    let mut global: Vec<Vec<usize>> = Vec::with_capacity(parts.len());
    for mut part in parts {
        let mut ids = Vec::new();
        if let Some(g) = part.as_mut()
            && !g.is_empty()
        {
            let keys = g.emit(EmitTo::All)?;
            all.intern(&keys, &mut ids)?;
        }
        global.push(ids);
    }
    let keys = if all.is_empty() {
        key_schema
            .fields()
            .iter()
            .map(|f| arrow::array::new_empty_array(f.data_type()))
            .collect()
    } else {
        all.emit(EmitTo::All)?
    };
    let converter = RowConverter::new(
        key_schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect(),
    )?;
    let rows = converter.convert_columns(&keys)?;
    let mut order: Vec<usize> = (0..rows.num_rows()).collect();
    order.sort_unstable_by(|a, b| rows.row(*a).cmp(&rows.row(*b)));
    let mut rank = vec![0u32; order.len()];
    for (pos, g) in order.iter().enumerate() {
        if let Some(r) = rank.get_mut(*g) {
            *r = u32::try_from(pos).map_err(|_| too_many())?;
        }
    }
    let indices = order
        .iter()
        .map(|g| u32::try_from(*g).map_err(|_| too_many()))
        .collect::<Result<UInt32Array>>()?;
    let keys = keys
        .iter()
        .map(|k| take(k, &indices, None))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let ranks = global
        .iter()
        .map(|ids| {
            ids.iter()
                .map(|g| match rank.get(*g) {
                    Some(r) => Ok(*r),
                    None => internal_err!("DpAggregateExec lost a group"),
                })
                .collect::<Result<Vec<u32>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((keys, ranks))
}

/// Pass 2 over a share of the buckets.
struct Walk<'a> {
    stop: &'a AtomicBool,
    m: &'a Mechanism,
    /// Per statistic, its value among a row's values (None: it reads none).
    at: &'a [Option<usize>],
    cols: &'a [(usize, Kind)],
    parts: &'a [Part],
    ranks: &'a [Vec<u32>],
    groups: usize,
}

impl Walk<'_> {
    /// The flat totals (group by statistic) of the persons of `buckets`.
    fn run(&self, buckets: &[usize]) -> Result<Vec<i128>> {
        let s = self.m.stats.len().max(1);
        let mut totals = vec![0i128; self.groups * s];
        let k = self.cols.len();
        let (mut recs, mut vals) = (Vec::new(), Vec::new());
        for &b in buckets {
            if self.stop.load(Ordering::Relaxed) {
                return Err(super::exec::stopped());
            }
            recs.clear();
            vals.clear();
            for (part, ranks) in self.parts.iter().zip(self.ranks) {
                let (Some(r), Some(v)) = (part.recs.get(b), part.vals.get(b)) else {
                    return internal_err!("DpAggregateExec: a bucket is missing");
                };
                let base = vals.len().checked_div(k).unwrap_or(recs.len());
                let base = u32::try_from(base).map_err(|_| too_many())?;
                for rec in r {
                    let Some(&group) = ranks.get(rec.group as usize) else {
                        return internal_err!("DpAggregateExec lost a group");
                    };
                    recs.push(Rec {
                        group,
                        at: rec.at + base,
                        ..*rec
                    });
                }
                vals.extend_from_slice(v);
            }
            recs.sort_unstable();
            self.persons(&recs, &vals, &mut totals)?;
        }
        Ok(totals)
    }

    /// Person by person, pair by pair: the first `max_groups` pairs count, each bounded.
    fn persons(&self, recs: &[Rec], vals: &[f64], totals: &mut [i128]) -> Result<()> {
        let max_groups = self.m.privacy.max_groups as usize;
        let mut i = 0;
        while let Some(first) = recs.get(i) {
            let mut kept = 0;
            while let Some(r) = recs.get(i)
                && r.person == first.person
            {
                let end = recs[i..]
                    .iter()
                    .position(|x| (x.person, x.pair, x.group) != (r.person, r.pair, r.group))
                    .map_or(recs.len(), |n| i + n);
                if kept < max_groups {
                    kept += 1;
                    self.add(&recs[i..end], vals, totals)?;
                }
                i = end;
            }
        }
        Ok(())
    }

    /// One person's rows in one group, bounded to `max_rows`, added to the group's totals.
    fn add(&self, pair: &[Rec], vals: &[f64], totals: &mut [i128]) -> Result<()> {
        let cap = u64::from(self.m.privacy.max_rows);
        let k = self.cols.len();
        let s = self.m.stats.len();
        let Some(group) = pair.first().map(|r| r.group as usize) else {
            return Ok(());
        };
        let Some(into) = totals.get_mut(group * s..(group + 1) * s) else {
            return internal_err!("DpAggregateExec lost a group");
        };
        let rows = pair.len() as u64;
        for ((total, stat), j) in into.iter_mut().zip(&self.m.stats).zip(self.at) {
            let values = || -> Result<(u64, f64)> {
                let Some(j) = *j else {
                    return internal_err!("DpAggregateExec: a statistic without its column");
                };
                let (mut n, mut sum) = (0u64, 0.0f64);
                for r in pair {
                    let v = vals.get(r.at as usize * k + j).copied().unwrap_or(f64::NAN);
                    if !v.is_nan() {
                        n += 1;
                        sum += v;
                    }
                }
                Ok((n, sum))
            };
            *total += match stat.measure {
                Measure::Units => 1,
                Measure::Rows => i128::from(rows.min(cap)),
                Measure::Count { .. } => i128::from(values()?.0.min(cap)),
                Measure::Sum { .. } => {
                    let (n, sum) = values()?;
                    if n == 0 {
                        0
                    } else {
                        // More than `max_rows` values: their mean, `max_rows` times. Each
                        // value is within the bounds, so the share is within `max_rows`
                        // times them.
                        (sum * (cap.min(n) as f64 / n as f64)).round() as i128
                    }
                }
            };
        }
        Ok(())
    }
}

/// [`exact`] over an unbounded memory pool, never stopped: the operator's tests.
#[cfg(test)]
pub(super) fn unbounded(
    m: &Mechanism,
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
    threads: usize,
) -> Result<Exact> {
    use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, UnboundedMemoryPool};
    let pool: Arc<dyn MemoryPool> = Arc::new(UnboundedMemoryPool::default());
    let mut reservation = MemoryConsumer::new("test").register(&pool);
    exact(
        m,
        schema,
        batches,
        threads,
        &mut reservation,
        &AtomicBool::new(false),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use arrow::array::{AsArray, Float64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

    use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, UnboundedMemoryPool};

    use super::unbounded as exact;
    use crate::enforcement::private::tests::privacy;
    use crate::enforcement::private::{Measure, Mechanism, Release, Stat};

    /// Persons, rows, the sum and the count of the values (column 2) of each group.
    fn mechanism(groups: usize, max_groups: u32, max_rows: u32) -> Mechanism {
        let stat = |measure, label: &str| Stat {
            measure,
            label: label.into(),
            scale: (1, 1),
        };
        Mechanism {
            dataset: "health.visits".into(),
            privacy: privacy(1_000_000, max_groups, max_rows),
            groups,
            stats: vec![
                stat(Measure::Units, "persons"),
                stat(Measure::Rows, "rows"),
                stat(Measure::Sum { column: 1 + groups }, "cost"),
                stat(Measure::Count { column: 1 + groups }, "values"),
            ],
            releases: vec![Release::Count(0)],
            threshold: None,
        }
    }

    type Row = (String, String, Option<f64>);

    /// Step 1 rows (person, group, value), in batches of `per_batch`.
    fn step1(rows: &[Row], per_batch: usize) -> (SchemaRef, Vec<RecordBatch>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("unit", DataType::Utf8, true),
            Field::new("g", DataType::Utf8, true),
            Field::new("cost", DataType::Float64, true),
        ]));
        let batches = rows
            .chunks(per_batch.max(1))
            .map(|c| {
                RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![
                        Arc::new(StringArray::from_iter_values(c.iter().map(|r| &r.0))),
                        Arc::new(StringArray::from_iter_values(c.iter().map(|r| &r.1))),
                        Arc::new(Float64Array::from_iter(c.iter().map(|r| r.2))),
                    ],
                )
                .unwrap()
            })
            .collect();
        (schema, batches)
    }

    /// `persons` persons, person i in (i % 4) + 1 of 5 groups with (i % 9) + 1 rows in
    /// each, of value 10; every seventh row without a value. Rows interleaved by person.
    fn city(persons: usize) -> Vec<Row> {
        let mut rows = Vec::new();
        for round in 0..9 {
            for i in 0..persons {
                for g in 0..(i % 4) + 1 {
                    if round <= i % 9 {
                        let value = (rows.len() % 7 != 0).then_some(10.0);
                        rows.push((format!("p{i}"), format!("g{}", (i + g) % 5), value));
                    }
                }
            }
        }
        rows
    }

    /// The bounded totals, computed naively, when every person keeps all their groups.
    fn naive(rows: &[Row], max_rows: usize) -> BTreeMap<String, Vec<i128>> {
        let mut pairs: BTreeMap<(&str, &str), Vec<Option<f64>>> = BTreeMap::new();
        for (p, g, v) in rows {
            pairs.entry((p, g)).or_default().push(*v);
        }
        let mut out: BTreeMap<String, Vec<i128>> = BTreeMap::new();
        for ((_, g), values) in pairs {
            let t = out.entry(g.to_string()).or_insert_with(|| vec![0; 4]);
            let n = values.iter().flatten().count();
            let sum: f64 = values.iter().flatten().sum();
            t[0] += 1;
            t[1] += values.len().min(max_rows) as i128;
            if n > 0 {
                t[2] += (sum * (max_rows.min(n) as f64 / n as f64)).round() as i128;
            }
            t[3] += n.min(max_rows) as i128;
        }
        out
    }

    fn by_key(e: super::Exact) -> BTreeMap<String, Vec<i128>> {
        let keys = e.keys[0].as_string::<i32>();
        keys.iter()
            .map(|k| k.unwrap().to_string())
            .zip(e.totals)
            .collect()
    }

    #[test]
    fn totals_are_exact_over_any_number_of_threads_and_buckets() {
        // 300 persons (one bucket) and 6,000 persons (some 75,000 rows: 8 buckets).
        for persons in [300, 6000] {
            let rows = city(persons);
            let m = mechanism(1, 4, 5);
            let expected = naive(&rows, 5);
            for (threads, per_batch) in [(1, 37), (2, 1000), (3, 4096), (7, 50)] {
                let (schema, batches) = step1(&rows, per_batch);
                let got = by_key(exact(&m, &schema, batches, threads).unwrap());
                assert_eq!(got, expected, "{persons} persons, {threads} threads");
            }
        }
    }

    #[test]
    fn each_person_counts_in_at_most_max_groups_groups() {
        let m = mechanism(1, 2, 5);
        let (schema, batches) = step1(&city(300), 50);
        let persons: i128 = exact(&m, &schema, batches, 2)
            .unwrap()
            .totals
            .iter()
            .map(|t| t[0])
            .sum();
        let expected: i128 = (0..300).map(|i| ((i % 4) + 1).min(2)).sum();
        assert_eq!(persons, expected);
    }

    #[test]
    fn groups_come_out_in_key_order() {
        let rows: Vec<Row> = ["c", "a", "b", "a"]
            .iter()
            .enumerate()
            .map(|(i, g)| (format!("p{i}"), g.to_string(), Some(1.0)))
            .collect();
        let (schema, batches) = step1(&rows, 1);
        let got = exact(&mechanism(1, 1, 1), &schema, batches, 3).unwrap();
        let keys: Vec<&str> = got.keys[0].as_string::<i32>().iter().flatten().collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert_eq!(got.totals[0][0], 2, "two persons in a");
    }

    /// Review 54: what the passes hold beyond the rows (each thread's totals of every
    /// group, the keys while they merge) is in the statement's memory pool, so that many
    /// threads over many groups fail the limit rather than pass it unseen.
    #[test]
    fn the_threads_totals_are_in_the_memory_pool() {
        use datafusion::execution::memory_pool::GreedyMemoryPool;
        let rows: Vec<Row> = (0..20_000)
            .map(|i| (format!("p{i}"), format!("g{i}"), Some(1.0)))
            .collect();
        let m = mechanism(1, 1, 1);
        let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(16 << 20));
        let run = |threads: usize| {
            let (schema, batches) = step1(&rows, 4096);
            let mut reservation = MemoryConsumer::new("test").register(&pool);
            let stop = std::sync::atomic::AtomicBool::new(false);
            super::exact(&m, &schema, batches, threads, &mut reservation, &stop)
                .map(|e| e.totals.len())
        };
        assert_eq!(run(1).unwrap(), 20_000);
        let err = run(32).unwrap_err().to_string();
        assert!(err.contains("Resources exhausted"), "{err}");
    }

    /// A statement dropped while its blocking work runs stops that work at the next bucket.
    #[test]
    fn a_stopped_statement_stops() {
        let (schema, batches) = step1(&city(300), 50);
        let pool: Arc<dyn MemoryPool> = Arc::new(UnboundedMemoryPool::default());
        let mut reservation = MemoryConsumer::new("test").register(&pool);
        let stop = std::sync::atomic::AtomicBool::new(true);
        let err = super::exact(
            &mechanism(1, 2, 5),
            &schema,
            batches,
            2,
            &mut reservation,
            &stop,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("cancelled"), "{err}");
    }

    #[test]
    fn without_group_by_one_group_even_over_no_rows() {
        let m = mechanism(0, 1, 3);
        let schema = Arc::new(Schema::new(vec![
            Field::new("unit", DataType::Utf8, true),
            Field::new("cost", DataType::Float64, true),
        ]));
        let got = exact(&m, &schema, vec![], 2).unwrap();
        assert_eq!(got.totals, vec![vec![0, 0, 0, 0]]);
        assert!(got.keys.is_empty());
        // One person with a thousand rows counts max_rows of them; NaN and NULL add nothing.
        let mut persons = vec!["heavy"; 1000];
        persons.extend(["a", "b", "b"]);
        let mut values: Vec<Option<f64>> = vec![Some(2.0); 1000];
        values.extend([Some(f64::NAN), None, Some(4.0)]);
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(persons)),
                Arc::new(Float64Array::from(values)),
            ],
        )
        .unwrap();
        let got = exact(&m, &schema, vec![batch], 2).unwrap();
        // persons 3; rows 3 + 1 + 2; sum 3 * 2 + 0 + 4; values 3 + 0 + 1.
        assert_eq!(got.totals, vec![vec![3, 6, 10, 4]]);
    }
}
