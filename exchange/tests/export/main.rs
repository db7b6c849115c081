//! Exports for data-trade platforms: signed, recipient-keyed, traceable, k-anonymous.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;

mod border;
mod classes;
mod objections;
mod people;
mod signing;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use arrow::array::RecordBatch;
use exchange::export::{self, ExportRequest};
use exchange::{Exchange, QueryError};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use common::{cells, column, config_copy, edit, ok, open, open_config};

const HRSS: (&str, &str) = ("hrss_analyst", "new_employment_services");
const DETAIL: &str =
    "SELECT person_id, gender, birth_date, district FROM police.residents ORDER BY person_id";

fn request(recipient: &str, out: &Path, sql: &str) -> ExportRequest {
    ExportRequest {
        principal: HRSS.0.into(),
        purpose: Some(HRSS.1.into()),
        recipient: recipient.into(),
        out: out.to_path_buf(),
        sql: sql.into(),
        expires: None,
    }
}

async fn run(ex: &Exchange, req: &ExportRequest) -> Result<export::ExportSummary, QueryError> {
    export::export(ex, req, &mut |_, _| {}).await
}

/// The refusal of an export that selects, joins or orders rows by residents' quasi-
/// identifiers without showing them (review 11).
const UNSHOWN: &str = "by quasi-identifiers it does not show (police.residents.";

/// An attack's export: `None` when refused because it selects rows by quasi-identifiers it
/// does not show, else the export, for the guard's checks. Any other outcome fails.
async fn attack(ex: &Exchange, req: &ExportRequest) -> Option<export::ExportSummary> {
    match run(ex, req).await {
        Ok(s) => Some(s),
        Err(QueryError::Refused(r)) if r.contains(UNSHOWN) => None,
        Err(e) => panic!("{}: {e}", req.out.display()),
    }
}

fn read(path: &Path) -> (Vec<RecordBatch>, BTreeMap<String, String>) {
    let builder = ParquetRecordBatchReaderBuilder::try_new(fs::File::open(path).unwrap()).unwrap();
    let meta = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kv| {
            kv.iter()
                .map(|k| (k.key.clone(), k.value.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    let batches = builder.build().unwrap().map(|b| b.unwrap()).collect();
    (batches, meta)
}

fn public_key(ex: &Exchange) -> exchange::keys::PublicKey {
    ex.signer().public_key()
}

/// Rows per class over the columns of an export (no columns: the whole result, one class).
fn classes(batches: &[RecordBatch], columns: &[&str]) -> BTreeMap<Vec<String>, usize> {
    let cols: Vec<Vec<String>> = columns.iter().map(|c| column(batches, c)).collect();
    let mut out = BTreeMap::new();
    if cols.is_empty() {
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        if rows > 0 {
            out.insert(vec![], rows);
        }
        return out;
    }
    for i in 0..cols[0].len() {
        *out.entry(cols.iter().map(|c| c[i].clone()).collect())
            .or_default() += 1;
    }
    out
}

/// Classes of the raw residents over (gender, birth year, district), for ground truth.
fn raw_classes(filter: impl Fn(&str, i32, &str) -> bool) -> BTreeMap<(String, i32, String), usize> {
    let path = common::data_root().join("police/residents.parquet");
    let reader = ParquetRecordBatchReaderBuilder::try_new(fs::File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let mut out = BTreeMap::new();
    for b in reader {
        let b = b.unwrap();
        let rows = cells(std::slice::from_ref(&b));
        let idx = |n: &str| b.schema().index_of(n).unwrap();
        let (g, d, dist) = (idx("gender"), idx("birth_date"), idx("district"));
        for r in rows {
            let year: i32 = r[d][..4].parse().unwrap();
            if filter(&r[g], year, &r[dist]) {
                *out.entry((r[g].clone(), year, r[dist].clone()))
                    .or_insert(0) += 1;
            }
        }
    }
    out
}

/// Export `sql` as hrss and check the guard: classes over `key` (named in the guard), none
/// below k in the file, and exactly the query's rows of classes of >= 3 kept.
/// `None`: refused, as selecting rows by quasi-identifiers it does not show.
async fn guarded(ex: &Exchange, dir: &Path, name: &str, sql: &str, key: &[&str]) -> Option<String> {
    let out = dir.join(format!("{name}.parquet"));
    let s = attack(ex, &request("research-b", &out, sql)).await?;
    let guard = s.guard.unwrap();
    let over = if key.is_empty() {
        "(the whole result, one class)".to_string()
    } else {
        format!("({})", key.join(", "))
    };
    assert!(guard.contains(&over), "{name}: {guard}");
    let (batches, _) = read(&out);
    let exported = classes(&batches, key);
    assert!(exported.values().all(|n| *n >= 3), "{name}: {exported:?}");
    let full = ok(ex, HRSS.0, HRSS.1, sql).await;
    let kept: usize = classes(&full.batches, key)
        .values()
        .filter(|n| **n >= 3)
        .sum();
    assert_eq!(s.manifest.body.rows as usize, kept, "{name}: {guard}");
    Some(guard)
}

/// Per resident in an exported file: the multiset of values of `columns` over the rows of
/// each id (the recipient's view of a person).
fn per_person(
    batches: &[RecordBatch],
    id: &str,
    columns: &[&str],
) -> BTreeMap<String, Vec<Vec<String>>> {
    let ids = column(batches, id);
    let cols: Vec<Vec<String>> = columns.iter().map(|c| column(batches, c)).collect();
    let mut out: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
    for (i, p) in ids.iter().enumerate() {
        out.entry(p.clone())
            .or_default()
            .push(cols.iter().map(|c| c[i].clone()).collect());
    }
    for rows in out.values_mut() {
        rows.sort();
    }
    out
}

/// How many people (by column `p`) share each signature: the multiset of what their rows
/// say in `shown`.
fn signatures(batches: &[RecordBatch], shown: &[&str]) -> BTreeMap<Vec<Vec<String>>, usize> {
    let mut out: BTreeMap<Vec<Vec<String>>, usize> = BTreeMap::new();
    for rows in per_person(batches, "p", shown).values() {
        *out.entry(rows.clone()).or_default() += 1;
    }
    out
}

/// Every person of the file shares what their rows say with at least two others.
fn assert_people_in_classes_of_3(batches: &[RecordBatch], shown: &[&str], what: &str) {
    let signatures = signatures(batches, shown);
    assert!(
        signatures.values().all(|n| *n >= 3),
        "{what}: {:?}",
        signatures
            .iter()
            .filter(|(_, n)| **n < 3)
            .take(3)
            .collect::<Vec<_>>()
    );
}
