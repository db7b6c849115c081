//! The keyed digest of a result, computed batch by batch as the result leaves.
//!
//! Keyed BLAKE3 (a key derived from the exchange's secret, never the secret itself) over an
//! unambiguous encoding of the batches: the schema once, then per batch its row count and
//! per column its type's shape, validity and values, each part length-prefixed, read from
//! the arrays' own buffers without copying them into an IPC message first (the digest was
//! HMAC-SHA256 over an Arrow IPC copy of every batch, the largest cost of streaming a large
//! result). Offsets are hashed relative to the array's first one, so a slice hashes as the
//! same values copied out would. Types without a native encoding here (lists, structs,
//! dictionaries...) are hashed as the Arrow IPC stream of that one column.
//!
//! The exchange can later prove a result from the batches as delivered; nobody without the
//! key (auditors included) can confirm a guessed result from the log. Digests are written
//! `blake3:<hex>`; records from before this carry 64 hex digits of HMAC-SHA256 over IPC.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::buffer::{BooleanBuffer, NullBuffer};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::StreamWriter;

/// Bytes gathered before they are hashed: BLAKE3 is fastest on long inputs.
const SCRATCH: usize = 64 * 1024;

/// The keyed digest of a whole result under `key`, as an audit record states it: to check
/// a result delivered as `batches` against its record, given the exchange's digest key.
pub fn result_digest(key: &[u8; 32], schema: &SchemaRef, batches: &[RecordBatch]) -> String {
    let mut d = Digest::new(key, schema);
    for b in batches {
        d.add(b);
    }
    d.finish()
}

/// The digest of one result, fed one batch at a time.
pub(super) struct Digest {
    hasher: blake3::Hasher,
    scratch: Vec<u8>,
    rows: u64,
}

impl Digest {
    /// A digest under `key` of a result with `schema`.
    pub(super) fn new(key: &[u8; 32], schema: &SchemaRef) -> Self {
        let mut d = Self {
            hasher: blake3::Hasher::new_keyed(key),
            scratch: Vec::with_capacity(SCRATCH),
            rows: 0,
        };
        d.put(b"exchange result digest v2");
        d.schema(schema);
        d
    }

    /// Add the next batch.
    pub(super) fn add(&mut self, batch: &RecordBatch) {
        self.put(b"B");
        self.len(batch.num_rows());
        self.rows += batch.num_rows() as u64;
        for column in batch.columns() {
            self.array(column);
        }
    }

    /// `blake3:` and the digest in hex.
    pub(super) fn finish(mut self) -> String {
        self.put(b"E");
        self.u64(self.rows);
        self.flush();
        format!("blake3:{}", self.hasher.finalize().to_hex())
    }

    fn schema(&mut self, schema: &Schema) {
        self.len(schema.fields().len());
        for f in schema.fields() {
            self.field(f);
        }
    }

    fn field(&mut self, f: &Field) {
        self.bytes(f.name().as_bytes());
        self.bytes(f.data_type().to_string().as_bytes());
        self.put(&[u8::from(f.is_nullable())]);
    }

    fn array(&mut self, a: &ArrayRef) {
        self.len(a.len());
        self.nulls(a.logical_nulls().as_ref());
        let data_type = a.data_type();
        if let Some(width) = data_type.primitive_width() {
            // Fixed-width values, NULL slots included (as IPC has them).
            let data = a.to_data();
            let (start, end) = (data.offset() * width, (data.offset() + a.len()) * width);
            match data.buffers().first().and_then(|b| b.get(start..end)) {
                Some(values) => {
                    self.put(b"P");
                    self.bytes(values);
                }
                None => self.ipc(a),
            }
            return;
        }
        match data_type {
            DataType::Boolean => {
                self.put(b"T");
                self.bits(a.as_boolean().values());
            }
            DataType::Utf8 => {
                let s = a.as_string::<i32>();
                self.varlen(s.value_offsets(), s.values());
            }
            DataType::LargeUtf8 => {
                let s = a.as_string::<i64>();
                self.varlen(s.value_offsets(), s.values());
            }
            DataType::Binary => {
                let s = a.as_binary::<i32>();
                self.varlen(s.value_offsets(), s.values());
            }
            DataType::LargeBinary => {
                let s = a.as_binary::<i64>();
                self.varlen(s.value_offsets(), s.values());
            }
            DataType::Utf8View => {
                self.put(b"V");
                let s = a.as_string_view();
                for i in 0..s.len() {
                    self.bytes(s.value(i).as_bytes());
                }
            }
            DataType::BinaryView => {
                self.put(b"V");
                let s = a.as_binary_view();
                for i in 0..s.len() {
                    self.bytes(s.value(i));
                }
            }
            DataType::Null => self.put(b"N"),
            _ => self.ipc(a),
        }
    }

    /// Validity: absent, or the bitmap's bits from the array's first row.
    fn nulls(&mut self, nulls: Option<&NullBuffer>) {
        match nulls {
            Some(n) if n.null_count() > 0 => {
                self.put(b"1");
                self.bits(n.inner());
            }
            _ => self.put(b"0"),
        }
    }

    fn bits(&mut self, bits: &BooleanBuffer) {
        self.len(bits.len());
        let chunks = bits.bit_chunks();
        for c in chunks.iter() {
            self.u64(c);
        }
        self.u64(chunks.remainder_bits());
    }

    /// Offsets relative to the first (4 bytes each where the span fits, else 8), then the
    /// bytes they span.
    fn varlen<O: Into<i64> + Copy>(&mut self, offsets: &[O], values: &[u8]) {
        let first = offsets.first().map_or(0, |&o| o.into());
        let last = offsets.last().map_or(0, |&o| o.into());
        self.len(offsets.len());
        if u32::try_from(last - first).is_ok() {
            self.put(b"O4");
            for &o in offsets {
                let relative = u32::try_from(o.into() - first).unwrap_or(u32::MAX);
                self.put(&relative.to_le_bytes());
            }
        } else {
            self.put(b"O8");
            for &o in offsets {
                self.put(&(o.into() - first).to_le_bytes());
            }
        }
        let span = usize::try_from(first)
            .ok()
            .zip(usize::try_from(last).ok())
            .and_then(|(a, b)| values.get(a..b));
        match span {
            Some(bytes) => self.bytes(bytes),
            // Offsets outside the values cannot come from a valid array.
            None => self.bytes(b"invalid offsets"),
        }
    }

    /// A column of a type without a native encoding: its Arrow IPC stream.
    fn ipc(&mut self, a: &ArrayRef) {
        self.put(b"I");
        let field = Field::new("c", a.data_type().clone(), true);
        let encoded = RecordBatch::try_new(
            std::sync::Arc::new(Schema::new(vec![field])),
            vec![a.clone()],
        )
        .ok()
        .and_then(|batch| {
            let mut w = StreamWriter::try_new(Vec::new(), &batch.schema()).ok()?;
            w.write(&batch).ok()?;
            w.into_inner().ok()
        });
        match encoded {
            Some(bytes) => self.bytes(&bytes),
            // A column the IPC writer rejects cannot be in a result.
            None => self.bytes(b"unencodable"),
        }
    }

    fn len(&mut self, n: usize) {
        self.u64(n as u64);
    }

    fn u64(&mut self, v: u64) {
        self.put(&v.to_le_bytes());
    }

    /// Length-prefixed bytes; long runs go to the hasher directly.
    fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        if b.len() >= SCRATCH / 4 {
            self.flush();
            self.hasher.update(b);
        } else {
            self.put(b);
        }
    }

    fn put(&mut self, b: &[u8]) {
        if self.scratch.len() + b.len() > SCRATCH {
            self.flush();
        }
        self.scratch.extend_from_slice(b);
    }

    fn flush(&mut self) {
        self.hasher.update(&self.scratch);
        self.scratch.clear();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::sync::Arc;

    use arrow::array::{
        BooleanArray, Int32Array, ListArray, StringArray, StringViewArray, types::Int32Type,
    };

    use super::*;

    const KEY: [u8; 32] = [7; 32];

    fn digest_of(key: &[u8; 32], batches: &[RecordBatch]) -> String {
        let mut d = Digest::new(key, &batches[0].schema());
        for b in batches {
            d.add(b);
        }
        d.finish()
    }

    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter(columns).unwrap()
    }

    fn strings(values: &[Option<&str>]) -> ArrayRef {
        Arc::new(StringArray::from(values.to_vec()))
    }

    #[test]
    fn a_slice_digests_as_the_same_values_copied_out() {
        let all = [
            Some("a"),
            None,
            Some("ccc"),
            Some(""),
            Some("eeeee"),
            None,
            Some("g"),
        ];
        let ints = Int32Array::from(vec![
            Some(1),
            Some(2),
            None,
            Some(4),
            Some(5),
            None,
            Some(7),
        ]);
        let bools = BooleanArray::from(vec![true, false, true, true, false, false, true]);
        let sliced = batch(vec![
            ("s", strings(&all).slice(3, 4)),
            ("i", Arc::new(ints.slice(3, 4)) as ArrayRef),
            ("b", Arc::new(bools.slice(3, 4)) as ArrayRef),
        ]);
        let copied = batch(vec![
            ("s", strings(&all[3..7])),
            (
                "i",
                Arc::new(Int32Array::from(vec![Some(4), Some(5), None, Some(7)])) as ArrayRef,
            ),
            (
                "b",
                Arc::new(BooleanArray::from(vec![true, false, false, true])) as ArrayRef,
            ),
        ]);
        assert_eq!(digest_of(&KEY, &[sliced]), digest_of(&KEY, &[copied]));
    }

    #[test]
    fn different_results_digest_differently() {
        let base = digest_of(
            &KEY,
            &[batch(vec![("s", strings(&[Some("ab"), Some("c")]))])],
        );
        assert!(
            base.starts_with("blake3:") && base.len() == 7 + 64,
            "{base}"
        );
        let others = [
            // The same bytes split differently between values.
            vec![batch(vec![("s", strings(&[Some("a"), Some("bc")]))])],
            // NULL is not the empty string.
            vec![batch(vec![("s", strings(&[Some("ab"), Some("c"), None]))])],
            vec![batch(vec![(
                "s",
                strings(&[Some("ab"), Some("c"), Some("")]),
            )])],
            // Another column name, or the same rows in two batches.
            vec![batch(vec![("t", strings(&[Some("ab"), Some("c")]))])],
            vec![
                batch(vec![("s", strings(&[Some("ab")]))]),
                batch(vec![("s", strings(&[Some("c")]))]),
            ],
        ];
        for other in others {
            assert_ne!(digest_of(&KEY, &other), base);
        }
        let rekeyed = digest_of(
            &[8; 32],
            &[batch(vec![("s", strings(&[Some("ab"), Some("c")]))])],
        );
        assert_ne!(rekeyed, base);
    }

    #[test]
    fn string_views_and_nested_columns_are_digested_by_value() {
        let long = "a value longer than twelve bytes";
        let view = |v: &[Option<&str>]| -> ArrayRef { Arc::new(StringViewArray::from(v.to_vec())) };
        let a = batch(vec![(
            "v",
            view(&[Some("x"), Some(long), None]).slice(1, 2),
        )]);
        let b = batch(vec![("v", view(&[Some(long), None]))]);
        assert_eq!(digest_of(&KEY, &[a]), digest_of(&KEY, &[b]));
        let list = |v: Vec<Option<Vec<Option<i32>>>>| -> ArrayRef {
            Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>(v))
        };
        let one = batch(vec![("l", list(vec![Some(vec![Some(1), Some(2)]), None]))]);
        let same = batch(vec![("l", list(vec![Some(vec![Some(1), Some(2)]), None]))]);
        let other = batch(vec![(
            "l",
            list(vec![Some(vec![Some(1)]), Some(vec![Some(2)])]),
        )]);
        assert_eq!(
            digest_of(&KEY, std::slice::from_ref(&one)),
            digest_of(&KEY, &[same])
        );
        assert_ne!(digest_of(&KEY, &[one]), digest_of(&KEY, &[other]));
    }
}
