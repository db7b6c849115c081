//! Masking throughput: values per second per core on 1,000,000 demo-like values for each
//! function family, next to a naive per-row `String` implementation, in the same run; then
//! the result digest (`exchange::result_digest`, keyed BLAKE3 over the batches' buffers) next
//! to the digest before issue 13 (HMAC-SHA256 over an Arrow IPC copy of every batch).
//!
//! Run: `cargo bench --bench masking` (prints a markdown table, writes
//! `target/bench-masking.json`). Single-threaded: the numbers are per core.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, ArrayRef, Date32Array, StringArray};
use arrow::datatypes::{DataType, Field};
use datafusion::common::ScalarValue;
use datafusion::common::config::ConfigOptions;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF};
use exchange::demo::Rng;
use exchange::masking::{KeyRing, MaskFn, TokenKeys, TokenKind, TokenUdf};

const N: usize = 1_000_000;
const RUNS: usize = 5;

fn phones(rng: &mut Rng) -> Vec<String> {
    (0..N)
        .map(|_| format!("13{}{:08}", rng.below(10), rng.below(100_000_000)))
        .collect()
}

fn ids(rng: &mut Rng) -> Vec<String> {
    (0..N)
        .map(|_| {
            let first17 = format!(
                "120103{}{:02}{:02}{:03}",
                1930 + rng.below(80),
                1 + rng.below(12),
                1 + rng.below(28),
                rng.below(1000)
            );
            let check =
                exchange::masking::validate::id_check_char(first17.as_bytes()).unwrap_or(b'0');
            format!("{first17}{}", char::from(check))
        })
        .collect()
}

fn names(rng: &mut Rng) -> Vec<String> {
    let s = ["王", "李", "张", "欧阳", "诸葛"];
    let g = ["伟", "芳", "娜", "强", "磊", "静"];
    (0..N)
        .map(|_| format!("{}{}{}", rng.pick(&s), rng.pick(&g), rng.pick(&g)))
        .collect()
}

fn invoke(udf: &ScalarUDF, array: &ArrayRef, extra: &[ScalarValue]) -> usize {
    let mut args = vec![ColumnarValue::Array(array.clone())];
    args.extend(extra.iter().cloned().map(ColumnarValue::Scalar));
    let arg_fields = args
        .iter()
        .map(|a| Arc::new(Field::new("a", a.data_type(), true)))
        .collect();
    let ret = Arc::new(Field::new("r", DataType::Utf8, true));
    match udf.invoke_with_args(ScalarFunctionArgs {
        args,
        arg_fields,
        number_rows: array.len(),
        return_field: ret,
        config_options: Arc::new(ConfigOptions::default()),
    }) {
        Ok(ColumnarValue::Array(a)) => a.len(),
        _ => 0,
    }
}

/// Median seconds of RUNS runs after a warm-up.
fn time(mut f: impl FnMut() -> usize) -> (f64, f64, f64) {
    black_box(f());
    let mut t: Vec<f64> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            black_box(f());
            start.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    (t[RUNS / 2], t[0], t[RUNS - 1])
}

/// The obvious implementation: one String per row.
fn naive_keep_first_last(v: &[String], n: usize, m: usize) -> usize {
    let out: Vec<String> = v
        .iter()
        .map(|s| {
            let len = s.chars().count();
            s.chars()
                .enumerate()
                .map(|(i, c)| if i < n || i + m >= len { c } else { '*' })
                .collect()
        })
        .collect();
    StringArray::from(out).len()
}

/// The result digest before issue 13: HMAC-SHA256 over the Arrow IPC stream of the batches.
fn ipc_hmac(
    key: &ring::hmac::Key,
    schema: &arrow::datatypes::SchemaRef,
    batches: &[arrow::array::RecordBatch],
) -> usize {
    struct Sink(ring::hmac::Context);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let Ok(mut w) =
        arrow::ipc::writer::StreamWriter::try_new(Sink(ring::hmac::Context::with_key(key)), schema)
    else {
        return 0;
    };
    for b in batches {
        let _ = w.write(b);
    }
    let _ = w.finish();
    w.into_inner().map_or(0, |s| s.0.sign().as_ref().len())
}

/// Tokens through ring's `hmac::sign` per value (the path before issue 13), into the same
/// Arrow array: the baseline of the pseudonym fast path.
fn ring_tokens(key: &ring::hmac::Key, values: &StringArray) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut b = arrow::array::StringBuilder::with_capacity(values.len(), values.len() * 32);
    let mut buf = String::with_capacity(32);
    for v in values.iter().flatten() {
        buf.clear();
        let tag = ring::hmac::sign(key, v.as_bytes());
        for x in tag.as_ref().iter().take(16) {
            buf.push(char::from(HEX[usize::from(x >> 4)]));
            buf.push(char::from(HEX[usize::from(x & 0xf)]));
        }
        b.append_value(&buf);
    }
    b.finish().len()
}

fn main() {
    let mut rng = Rng::new(7);
    let phone_values = phones(&mut rng);
    let id_values = ids(&mut rng);
    let name_values = names(&mut rng);
    let phone_arr: ArrayRef = Arc::new(StringArray::from(phone_values.clone()));
    let id_arr: ArrayRef = Arc::new(StringArray::from(id_values.clone()));
    let name_arr: ArrayRef = Arc::new(StringArray::from(name_values.clone()));
    let date_arr: ArrayRef = Arc::new(Date32Array::from(
        (0..N as i32).map(|i| i % 40_000).collect::<Vec<_>>(),
    ));
    let ring = KeyRing::from_secret(&[9u8; 32]);
    let pseudonym = TokenUdf::udf(Arc::new(TokenKeys::derive(
        &ring,
        TokenKind::Pseudonym,
        "hrss",
        ["person"],
    )));
    let replace = TokenUdf::udf(Arc::new(TokenKeys::derive(
        &ring,
        TokenKind::Replace,
        "hrss",
        ["resident_id"],
    )));
    let person_key = ring.token_key(TokenKind::Pseudonym, "hrss", "person");
    let id_strings = StringArray::from(id_values.clone());
    let i = |v: i64| ScalarValue::Int64(Some(v));
    let s = |v: &str| ScalarValue::Utf8(Some(v.to_string()));

    type Case<'a> = (&'a str, &'a str, Box<dyn FnMut() -> usize + 'a>);
    let kfl = MaskFn::KeepFirstLast.udf();
    let idm = MaskFn::IdCn.udf();
    let nm = MaskFn::NameCn.udf();
    let yo = MaskFn::YearOnly.udf();
    let cases: Vec<Case> = vec![
        (
            "keep_first_last(3,4)",
            "phones",
            Box::new(|| invoke(&kfl, &phone_arr, &[i(3), i(4)])),
        ),
        (
            "naive String keep_first_last(3,4)",
            "phones",
            Box::new(|| naive_keep_first_last(&phone_values, 3, 4)),
        ),
        (
            "id_cn('operator')",
            "resident IDs",
            Box::new(|| invoke(&idm, &id_arr, &[s("operator")])),
        ),
        (
            "naive String keep_first_last(6,4)",
            "resident IDs",
            Box::new(|| naive_keep_first_last(&id_values, 6, 4)),
        ),
        ("name_cn", "names", Box::new(|| invoke(&nm, &name_arr, &[]))),
        (
            "year_only",
            "dates",
            Box::new(|| invoke(&yo, &date_arr, &[])),
        ),
        (
            "pseudonym (HMAC-SHA256)",
            "resident IDs",
            Box::new(|| invoke(&pseudonym, &id_arr, &[s("person")])),
        ),
        (
            "ring hmac::sign per value (before issue 13)",
            "resident IDs",
            Box::new(|| ring_tokens(person_key.hmac(), &id_strings)),
        ),
        (
            "typed_random_replace(resident_id)",
            "resident IDs",
            Box::new(|| invoke(&replace, &id_arr, &[s("resident_id")])),
        ),
    ];
    println!("| function | values | median M values/s | min-max s |");
    println!("|---|---|---|---|");
    let mut json = Vec::new();
    for (name, data, mut f) in cases {
        let (median, min, max) = time(&mut f);
        let rate = N as f64 / median / 1e6;
        println!("| {name} | {data} | {rate:.1} | {min:.3}-{max:.3} |");
        json.push(format!("{{\"function\":\"{name}\",\"values\":\"{data}\",\"m_values_per_s\":{rate:.2},\"median_s\":{median:.4}}}"));
    }
    // The digest of a result: the same million rows as 8,192-row batches.
    let rows = arrow::array::RecordBatch::try_from_iter([
        ("id", id_arr.clone()),
        ("name", name_arr.clone()),
        ("phone", phone_arr.clone()),
        ("date", date_arr.clone()),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    let schema = rows.schema();
    let batches: Vec<_> = (0..N)
        .step_by(8192)
        .map(|o| rows.slice(o, 8192.min(N - o)))
        .collect();
    let bytes: usize = [&id_arr, &name_arr, &phone_arr, &date_arr]
        .iter()
        .map(|a| a.to_data().get_slice_memory_size().unwrap_or(0))
        .sum();
    let hmac_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[3u8; 32]);
    type Digest<'a> = (&'a str, Box<dyn FnMut() -> usize + 'a>);
    let digests: Vec<Digest> = vec![
        (
            "keyed BLAKE3 over the buffers (now)",
            Box::new(|| exchange::result_digest(&[3u8; 32], &schema, &batches).len()),
        ),
        (
            "HMAC-SHA256 over an IPC copy (before issue 13)",
            Box::new(|| ipc_hmac(&hmac_key, &schema, &batches)),
        ),
    ];
    println!("\n| result digest | MB of Arrow data | median MB/s | min-max s |");
    println!("|---|---|---|---|");
    let mb = bytes as f64 / 1e6;
    for (name, mut f) in digests {
        let (median, min, max) = time(&mut f);
        let rate = mb / median;
        println!("| {name} | {mb:.0} | {rate:.0} | {min:.3}-{max:.3} |");
        json.push(format!(
            "{{\"digest\":\"{name}\",\"mb\":{mb:.1},\"mb_per_s\":{rate:.1},\"median_s\":{median:.4}}}"
        ));
    }
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-masking.json");
    let _ = std::fs::write(&path, format!("[{}]\n", json.join(",")));
    println!("\nwritten {}", path.display());
}
