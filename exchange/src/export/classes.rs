//! The equivalence classes of an export, counted per person.
//!
//! k-anonymity is about people, not rows: a person with three rows is one person, and what a
//! recipient learns about them is everything their rows say together. So each row's class
//! key (its quasi-identifier columns, see [`super::guard`]) is collected per subject (the
//! entity of the row's source record, carried in hidden columns the file never holds), a
//! person's signature is the multiset of their rows' keys, and a class is the set of people
//! with one signature. A row about several people, a row without a subject (a group of an aggregation, a row whose subject
//! a subquery, DISTINCT or UNNEST dropped, an outer join's padding), and every row of a plan
//! whose rows can mix several people's quasi-identifiers ([`GuardSpec::per_person`]), cannot
//! be attributed to the people it describes: copies of it (a cross join, UNION ALL) are not
//! more people (review 7), so it is a class of one, kept only when k is 1. Keys and subjects
//! are kept as 128-bit keyed hashes, never as values.

use std::collections::HashMap;
use std::hash::BuildHasher;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::row::{RowConverter, SortField};
use datafusion::common::Result;

use super::guard::GuardSpec;

/// A 128-bit keyed hash, from two random keys of this export.
#[derive(Default)]
struct Hash128(
    std::collections::hash_map::RandomState,
    std::collections::hash_map::RandomState,
);

impl Hash128 {
    fn of(&self, bytes: &[u8]) -> u128 {
        (u128::from(self.0.hash_one(bytes)) << 64) | u128::from(self.1.hash_one(bytes))
    }
}

/// What the counter found, once every row is in.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// Classes (of people, and of rows without a subject).
    pub classes: usize,
    /// Classes below k.
    pub small_classes: usize,
    /// Rows that belong to a class below k.
    pub small_rows: u64,
    /// Per row, in order: whether it leaves the file.
    drop: Vec<bool>,
    /// Whether any row had a subject (classes counted per person).
    pub per_person: bool,
}

/// Collects the class key and the subjects of every row of an export.
pub struct ClassCounter {
    columns: Vec<usize>,
    subjects: Vec<usize>,
    keys: RowConverter,
    /// One converter per subject column: a subject is its value, whatever column holds it.
    subject_rows: Vec<RowConverter>,
    hash: Hash128,
    /// Per row: its key.
    row_keys: Vec<u128>,
    /// Per row: its subjects (empty: none).
    row_subjects: Vec<Vec<u128>>,
}

impl ClassCounter {
    /// A counter over `spec`'s class columns and subject columns of batches of `schema`.
    pub fn new(spec: &GuardSpec, schema: &arrow::datatypes::Schema) -> Result<Self> {
        let field = |i: &usize| SortField::new(schema.field(*i).data_type().clone());
        let mut fields: Vec<SortField> = spec.columns.iter().map(field).collect();
        if fields.is_empty() {
            // No class columns: the whole result is one class (one NULL key).
            fields.push(SortField::new(arrow::datatypes::DataType::Null));
        }
        // Without sound attribution, no subjects: every row is a class of one.
        let subjects: Vec<usize> = if spec.per_person {
            spec.subjects.clone()
        } else {
            vec![]
        };
        let subject_rows = subjects
            .iter()
            .map(|i| RowConverter::new(vec![field(i)]))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Self {
            columns: spec.columns.clone(),
            subjects,
            keys: RowConverter::new(fields)?,
            subject_rows,
            hash: Hash128::default(),
            row_keys: Vec::new(),
            row_subjects: Vec::new(),
        })
    }

    /// Take in a batch's rows.
    pub fn add(&mut self, batch: &RecordBatch) -> Result<()> {
        let mut cols: Vec<ArrayRef> = self
            .columns
            .iter()
            .map(|i| batch.column(*i).clone())
            .collect();
        if cols.is_empty() {
            cols.push(arrow::array::new_null_array(
                &arrow::datatypes::DataType::Null,
                batch.num_rows(),
            ));
        }
        let keys = self.keys.convert_columns(&cols)?;
        // Each subject column alone (a row from two records has two subjects), hashed with
        // its type but not its position: one person is one subject in any column.
        let mut subject_keys = Vec::with_capacity(self.subjects.len());
        for (conv, i) in self.subject_rows.iter().zip(&self.subjects) {
            let column = batch.column(*i);
            subject_keys.push((column, conv.convert_columns(std::slice::from_ref(column))?));
        }
        for row in 0..batch.num_rows() {
            let mut subjects = Vec::new();
            for (column, rows) in &subject_keys {
                if column.is_null(row) {
                    continue;
                }
                let mut bytes = column.data_type().to_string().into_bytes();
                bytes.extend_from_slice(rows.row(row).as_ref());
                let s = self.hash.of(&bytes);
                if !subjects.contains(&s) {
                    subjects.push(s);
                }
            }
            self.row_keys.push(self.hash.of(keys.row(row).as_ref()));
            self.row_subjects.push(subjects);
        }
        Ok(())
    }

    /// The classes and the rows to drop, for `k`.
    pub fn verdict(&self, k: u32) -> Verdict {
        let k = u64::from(k);
        // A person's signature: the sorted multiset of their rows' keys.
        let mut people: HashMap<u128, Vec<u128>> = HashMap::new();
        // Rows that cannot be attributed to one person: each a class of one.
        let mut lone = 0usize;
        for (key, subjects) in self.row_keys.iter().zip(&self.row_subjects) {
            match subjects.as_slice() {
                [person] => people.entry(*person).or_default().push(*key),
                _ => lone += 1,
            }
        }
        let mut signature_of: HashMap<u128, u128> = HashMap::new();
        let mut signatures: HashMap<u128, u64> = HashMap::new();
        for (person, keys) in &mut people {
            keys.sort_unstable();
            let bytes: Vec<u8> = keys.iter().flat_map(|k| k.to_le_bytes()).collect();
            let sig = self.hash.of(&bytes);
            signature_of.insert(*person, sig);
            *signatures.entry(sig).or_default() += 1;
        }
        let small_person = |p: &u128| {
            signature_of
                .get(p)
                .and_then(|s| signatures.get(s))
                .is_none_or(|n| *n < k)
        };
        let drop: Vec<bool> = self
            .row_subjects
            .iter()
            .map(|subjects| match subjects.as_slice() {
                // A row about one person is judged by that person's class; a row about
                // none, or about several (three people side by side in one row shared
                // one signature, review 8), is a class of one.
                [person] => small_person(person),
                _ => 1 < k,
            })
            .collect();
        let small_rows = drop.iter().filter(|d| **d).count() as u64;
        let small_lone = if 1 < k { lone } else { 0 };
        let small_classes = signatures.values().filter(|n| **n < k).count() + small_lone;
        Verdict {
            classes: signatures.len() + lone,
            small_classes,
            small_rows,
            drop,
            per_person: !people.is_empty(),
        }
    }
}

impl Verdict {
    /// The batch starting at row `offset` of the export, without the rows that leave.
    pub fn suppress(&self, batch: &RecordBatch, offset: usize) -> Result<RecordBatch> {
        let keep: BooleanArray = (0..batch.num_rows())
            .map(|i| Some(!self.drop.get(offset + i).copied().unwrap_or(true)))
            .collect();
        Ok(filter_record_batch(batch, &keep)?)
    }
}
