//! Shared setup of the end-to-end tests: the demo city at a small scale, generated once and
//! shared by every test binary, with the repository's schemas/ and policies/.
#![allow(dead_code)]

pub mod cluster;
pub mod leak_suite;
pub mod s3;
pub mod serve;
pub mod slt;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arrow::array::{Array, RecordBatch, StringArray};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use exchange::{Exchange, ExchangeConfig};

/// Scale of the test city: 3,000 residents.
pub const SCALE: f64 = 0.03;
/// Seed of the test city.
pub const SEED: u64 = 42;

/// The repository root (schemas/ and policies/).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Data root of the generated test city, shared by every test binary of a run (and by later
/// runs) under cargo's target tmp dir, one per version of the generator. The generator is
/// deterministic and writes each file atomically, so binaries generating it at once write
/// the same bytes; tests only read it.
pub fn data_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let sources = [
            include_str!("../../src/demo/generate.rs"),
            include_str!("../../src/demo/vocab.rs"),
            include_str!("../../src/masking/validate.rs"),
        ];
        // FNV-1a: the same on every machine and toolchain.
        let mut version: u64 = 0xcbf2_9ce4_8422_2325;
        for b in sources.iter().flat_map(|s| s.bytes()) {
            version = (version ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("test-city-{SCALE}-{SEED}-{version:016x}"));
        if !exchange::demo::data_present(&dir) {
            exchange::demo::generate(&dir, SCALE, SEED).expect("generate the test city");
        }
        dir
    })
}

/// An exchange over the test city with a fresh state directory.
pub fn open() -> (Exchange, tempfile::TempDir) {
    let state = tempfile::tempdir().expect("state dir");
    let ex = Exchange::open(test_config(&repo_root(), data_root(), state.path()))
        .expect("open the exchange");
    (ex, state)
}

/// An exchange over the test city with a fresh state directory and `adjust`ed settings.
pub fn open_with(adjust: impl FnOnce(&mut ExchangeConfig)) -> (Exchange, tempfile::TempDir) {
    let state = tempfile::tempdir().expect("state dir");
    let mut config = test_config(&repo_root(), data_root(), state.path());
    adjust(&mut config);
    let ex = Exchange::open(config).expect("open the exchange");
    (ex, state)
}

/// A configuration over `config` and `data` with fresh keys in `state/keys`.
pub fn test_config(config: &Path, data: &Path, state: &Path) -> ExchangeConfig {
    let key_dir = state.join("keys");
    exchange::keys::ensure(&key_dir).expect("create test keys");
    ExchangeConfig::new(
        config.to_path_buf(),
        data.to_path_buf(),
        state.to_path_buf(),
    )
    .with_key_dir(key_dir)
}

/// Copy a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).expect("copy");
        }
    }
}

/// A copy of the repository's schemas/ and policies/ to change.
pub fn config_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("config dir");
    copy_dir(&repo_root().join("schemas"), &dir.path().join("schemas"));
    copy_dir(&repo_root().join("policies"), &dir.path().join("policies"));
    dir
}

/// Replace the first `from` by `to` in a file, which must contain it.
pub fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).expect("read");
    assert!(text.contains(from), "{from} not in {}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).expect("write");
}

/// An exchange over the test city with another configuration and a fresh state directory.
pub fn open_config(config: &Path) -> (Exchange, tempfile::TempDir) {
    let state = tempfile::tempdir().expect("state dir");
    let ex =
        Exchange::open(test_config(config, data_root(), state.path())).expect("open the exchange");
    (ex, state)
}

/// Every cell of the batches, formatted.
pub fn cells(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let options = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for b in batches {
        let formatters: Vec<_> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).expect("formatter"))
            .collect();
        for r in 0..b.num_rows() {
            rows.push(formatters.iter().map(|f| f.value(r).to_string()).collect());
        }
    }
    rows
}

/// The values of one column, formatted.
pub fn column(batches: &[RecordBatch], name: &str) -> Vec<String> {
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for b in batches {
        let idx = b.schema().index_of(name).expect("column");
        let col = b.column(idx);
        let f = ArrayFormatter::try_new(col.as_ref(), &options).expect("formatter");
        for r in 0..col.len() {
            out.push(f.value(r).to_string());
        }
    }
    out
}

/// A string column of a raw demo file, read directly with parquet.
pub fn raw_strings(file: &str, column_name: &str) -> Vec<String> {
    let path = data_root().join(file);
    let f = std::fs::File::open(&path).expect("open raw file");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .expect("parquet")
        .build()
        .expect("reader");
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.expect("batch");
        let idx = batch.schema().index_of(column_name).expect("column");
        let col = batch
            .column(idx)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("strings");
        out.extend(col.iter().flatten().map(str::to_string));
    }
    out
}

/// Run and expect success.
pub async fn ok(ex: &Exchange, principal: &str, purpose: &str, sql: &str) -> exchange::QueryOutput {
    match ex.execute(principal, Some(purpose), sql).await {
        Ok(o) => o,
        Err(e) => panic!("{principal} / {purpose}: {sql}\n  -> {e}"),
    }
}

/// Run and expect a refusal; returns its reason.
pub async fn refused(ex: &Exchange, principal: &str, purpose: Option<&str>, sql: &str) -> String {
    match ex.execute(principal, purpose, sql).await {
        Err(exchange::QueryError::Refused(r)) => r,
        other => panic!("{principal}: expected a refusal for {sql}, got {other:?}"),
    }
}

/// The enforced physical plan of `sql` as the principal ([`Exchange::plan`], not run).
pub async fn physical_plan(
    ex: &Exchange,
    principal: &str,
    purpose: &str,
    sql: &str,
) -> std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan> {
    ex.plan(principal, Some(purpose), sql)
        .await
        .unwrap()
        .physical
}

/// The physical plan as indented text.
pub async fn physical_plan_text(
    ex: &Exchange,
    principal: &str,
    purpose: &str,
    sql: &str,
) -> String {
    let plan = physical_plan(ex, principal, purpose, sql).await;
    datafusion::physical_plan::displayable(plan.as_ref())
        .indent(true)
        .to_string()
}

/// `exchange policy check` on a config dir over the test city: (exit code, output).
pub fn policy_check(config: &Path) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_exchange"))
        .arg("--config-dir")
        .arg(config)
        .arg("--data-root")
        .arg(data_root())
        .args(["policy", "check"])
        .output()
        .expect("run exchange policy check");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `batches`' rows as text, sorted: results compared whatever their order.
pub fn sorted(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let mut rows = cells(batches);
    rows.sort();
    rows
}

/// Plain DataFusion over the raw files of the city in `root` (no policy): the tables
/// `tickets`, `all_residents`, `objections`, `elderly_care`, `employment`, and `residents`
/// without the residents who object to `purpose` (police.objections).
pub async fn raw_session(root: &Path, purpose: &str) -> datafusion::prelude::SessionContext {
    let ctx = datafusion::prelude::SessionContext::new();
    for (name, file) in [
        ("tickets", "hotline/tickets.parquet"),
        ("all_residents", "police/residents.parquet"),
        ("objections", "police/objections.parquet"),
        ("elderly_care", "civil/elderly_care.parquet"),
        ("employment", "hrss/employment.parquet"),
    ] {
        ctx.register_parquet(name, root.join(file).to_str().unwrap(), Default::default())
            .await
            .unwrap();
    }
    ctx.sql(&format!(
        "CREATE VIEW residents AS SELECT * FROM all_residents WHERE person_id NOT IN \
         (SELECT person_id FROM objections WHERE purpose = '{purpose}')"
    ))
    .await
    .unwrap();
    ctx
}
