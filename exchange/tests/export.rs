//! Exports for data-trade platforms: signed, recipient-keyed, traceable, k-anonymous.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

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

#[tokio::test]
async fn an_export_is_signed_carries_its_provenance_and_verifies() {
    let (ex, state) = open();
    let out = state.path().join("residents.parquet");
    let s = run(&ex, &request("research-a", &out, DETAIL))
        .await
        .unwrap();
    let m = &s.manifest.body;
    assert_eq!(m.recipient, "research-a");
    assert_eq!(
        m.grants,
        vec!["police/residents-hrss-employment@2026-11-01"]
    );
    assert_eq!(m.expires.as_deref(), Some("2027-06-30"));
    assert!(s.manifest_path.ends_with("residents.parquet.manifest.json"));

    let (batches, meta) = read(&out);
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    assert_eq!(rows as u64, m.rows);
    for (k, v) in [
        ("exchange.principal", "hrss_analyst"),
        ("exchange.purpose", "new_employment_services"),
        ("exchange.recipient", "research-a"),
        ("exchange.statement", DETAIL),
        ("exchange.expires", "2027-06-30"),
    ] {
        assert_eq!(meta.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert!(meta["exchange.grants"].contains("residents-hrss-employment"));

    let verified = export::verify(&out, &public_key(&ex)).unwrap();
    assert_eq!(verified, s.manifest);

    // The audit record came first and says what was issued to whom.
    let records = exchange::audit::read_all(ex.audit().path()).unwrap();
    let r = records.last().unwrap();
    assert_eq!(r.entry.kind, "export");
    assert_eq!(r.seq, m.audit_seq);
    assert_eq!(r.entry.recipient.as_deref(), Some("research-a"));
    assert_eq!(
        r.entry.export.as_deref(),
        Some(format!("residents.parquet sha256:{}", m.sha256).as_str())
    );
    let auditor = ok(
        &ex,
        "auditor",
        "audit_review",
        "SELECT kind, recipient FROM audit.events WHERE kind = 'export'",
    )
    .await;
    assert_eq!(cells(&auditor.batches), vec![vec!["export", "research-a"]]);
}

#[tokio::test]
async fn edited_files_manifests_and_other_keys_fail_verification() {
    let (ex, state) = open();
    let out = state.path().join("r.parquet");
    run(&ex, &request("research-a", &out, DETAIL))
        .await
        .unwrap();
    let key = public_key(&ex);
    let manifest = export::manifest_path(&out);
    let original_file = fs::read(&out).unwrap();
    let original_manifest = fs::read_to_string(&manifest).unwrap();

    // One byte of the data changed.
    let mut bytes = original_file.clone();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&out, &bytes).unwrap();
    let e = export::verify(&out, &key).unwrap_err().to_string();
    assert!(e.contains("does not match its manifest"), "{e}");
    fs::write(&out, &original_file).unwrap();

    // The manifest re-addressed to another recipient.
    fs::write(
        &manifest,
        original_manifest.replace("\"research-a\"", "\"research-z\""),
    )
    .unwrap();
    let e = export::verify(&out, &key).unwrap_err().to_string();
    assert!(e.contains("signature does not verify"), "{e}");
    fs::write(&manifest, &original_manifest).unwrap();

    // Another exchange's key.
    let other = tempfile::tempdir().unwrap();
    let other_key = exchange::keys::init(other.path()).unwrap();
    let e = export::verify(&out, &other_key).unwrap_err().to_string();
    assert!(e.contains("signed by key"), "{e}");

    // Fields outside the signature are refused, not passed on as if vouched for.
    fs::write(
        &manifest,
        original_manifest.replacen('{', "{\n  \"licensed_to\": \"everyone\",", 1),
    )
    .unwrap();
    let e = export::verify(&out, &key).unwrap_err().to_string();
    assert!(e.contains("signature does not cover: licensed_to"), "{e}");
    fs::write(&manifest, &original_manifest).unwrap();

    // A renamed file is not the file the manifest is about.
    let renamed = state.path().join("renamed.parquet");
    fs::copy(&out, &renamed).unwrap();
    fs::copy(&manifest, export::manifest_path(&renamed)).unwrap();
    let e = export::verify(&renamed, &key).unwrap_err().to_string();
    assert!(e.contains("manifest is for file 'r.parquet'"), "{e}");

    assert!(export::verify(&out, &key).is_ok());
}

#[tokio::test]
async fn recipients_cannot_link_their_files_and_trace_names_the_recipient() {
    let (ex, state) = open();
    let sql = "SELECT person_id, district FROM police.residents";
    let mut tokens: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut files: Vec<(&str, PathBuf)> = Vec::new();
    for r in ["research-a", "bureau-b", "insurer-c"] {
        let out = state.path().join(format!("{r}.parquet"));
        run(&ex, &request(r, &out, sql)).await.unwrap();
        tokens.insert(r, column(&read(&out).0, "person_id").into_iter().collect());
        files.push((r, out));
    }
    // Same persons, disjoint pseudonyms: no two recipients can join their files.
    let sets: Vec<_> = tokens.values().collect();
    assert_eq!(sets[0].len(), sets[1].len());
    assert!(sets[0].is_disjoint(sets[1]) && sets[1].is_disjoint(sets[2]));
    // Nor with what hrss analysts see in their own queries.
    let own: BTreeSet<String> = column(&ok(&ex, HRSS.0, HRSS.1, sql).await.batches, "person_id")
        .into_iter()
        .collect();
    assert!(own.is_disjoint(sets[0]));

    for (recipient, path) in &files {
        // A leaker strips the manifest; the trace needs only the file.
        let _ = fs::remove_file(export::manifest_path(path));
        let report = export::trace(&ex, path).await.unwrap();
        assert_eq!(
            report.verdict.as_deref(),
            Some(format!("recipient {recipient} (exports of agency hrss)").as_str()),
            "{report:?}"
        );
        // The verdict comes with the audit record of the export.
        assert_eq!(report.exports.len(), 1, "{report:?}");
        assert!(report.exports[0].contains(&format!("{recipient}.parquet sha256:")));
    }
    // A file without pseudonyms has nothing to trace.
    let out = state.path().join("plain.parquet");
    run(
        &ex,
        &request(
            "research-a",
            &out,
            "SELECT district, gender FROM police.residents",
        ),
    )
    .await
    .unwrap();
    let report = export::trace(&ex, &out).await.unwrap();
    assert!(report.columns.is_empty() && report.verdict.is_none());
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

#[tokio::test]
async fn small_classes_over_quasi_identifiers_are_suppressed_and_audited() {
    let (ex, state) = open();
    let out = state.path().join("qi.parquet");
    let s = run(&ex, &request("research-a", &out, DETAIL))
        .await
        .unwrap();
    let guard = s.manifest.body.guard.clone().unwrap();
    assert!(
        guard.contains("k-anonymity k=3 over (gender, birth_date, district)")
            && guard.contains("suppressed"),
        "{guard}"
    );
    let (batches, _) = read(&out);
    let exported = classes(&batches, &["gender", "birth_date", "district"]);
    assert!(exported.values().all(|n| *n >= 3), "a class below k left");

    // Against the same query's result: exactly the small classes are gone.
    let full = ok(&ex, HRSS.0, HRSS.1, DETAIL).await;
    let all = classes(&full.batches, &["gender", "birth_date", "district"]);
    let expected: BTreeMap<_, _> = all.into_iter().filter(|(_, n)| *n >= 3).collect();
    assert_eq!(exported, expected);
    let dropped = full.rows - s.manifest.body.rows;
    assert!(
        dropped > 0 && guard.contains(&format!("({dropped} rows)")),
        "{guard}"
    );

    let records = exchange::audit::read_all(ex.audit().path()).unwrap();
    let r = records.iter().rfind(|r| r.entry.kind == "export").unwrap();
    assert_eq!(r.entry.guard.as_deref(), Some(guard.as_str()));

    // Aggregates over generalised quasi-identifiers pass when every class is large.
    let out = state.path().join("agg.parquet");
    let s = run(
        &ex,
        &request(
            "research-a",
            &out,
            "SELECT district, gender, count(*) AS n FROM police.residents GROUP BY district, gender",
        ),
    )
    .await
    .unwrap();
    // Without a group threshold from the policy, aggregated rows count as records: each
    // (district, gender) row is a class of one, below k.
    let g = s.manifest.body.guard.unwrap();
    assert!(g.contains("12 of 12 classes below k suppressed"), "{g}");
    assert_eq!(s.manifest.body.rows, 0);
    // DISTINCT does not turn records into groups either.
    let out = state.path().join("distinct.parquet");
    let s = run(
        &ex,
        &request(
            "research-a",
            &out,
            "SELECT DISTINCT person_id, gender, birth_date, district FROM police.residents",
        ),
    )
    .await
    .unwrap();
    assert!(s.manifest.body.guard.unwrap().contains("suppressed"));
    let (batches, _) = read(&out);
    assert!(
        classes(&batches, &["gender", "birth_date", "district"])
            .values()
            .all(|n| *n >= 3)
    );
    // Record-level rows over coarse quasi-identifiers pass whole.
    let out = state.path().join("coarse.parquet");
    let s = run(
        &ex,
        &request(
            "research-a",
            &out,
            "SELECT person_id, district, gender FROM police.residents",
        ),
    )
    .await
    .unwrap();
    assert!(s.manifest.body.guard.unwrap().contains("none below k"));
}

#[tokio::test]
async fn a_refusing_policy_refuses_the_export_and_writes_nothing() {
    let c = config_copy();
    edit(
        &c.path().join("schemas/police.toml"),
        "export_k_action = \"suppress\"",
        "export_k_action = \"refuse\"",
    );
    let (ex, state) = open_config(c.path());
    let out = state.path().join("qi.parquet");
    let err = run(&ex, &request("research-a", &out, DETAIL))
        .await
        .unwrap_err();
    let QueryError::Refused(reason) = err else {
        panic!("expected a refusal, got {err:?}")
    };
    assert!(reason.contains("fewer than 3 members"), "{reason}");
    assert!(!out.exists() && !export::manifest_path(&out).exists());
    let leftovers: Vec<_> = fs::read_dir(state.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty());
    let records = exchange::audit::read_all(ex.audit().path()).unwrap();
    let r = records.last().unwrap();
    assert_eq!(r.entry.decision, exchange::audit::Decision::Refused);
    assert!(
        r.entry
            .guard
            .as_deref()
            .unwrap_or("")
            .starts_with("refused: k-anonymity")
    );
}

#[tokio::test]
async fn refused_and_invalid_exports_write_nothing_and_are_audited() {
    let (ex, state) = open();
    let out = state.path().join("x.parquet");
    for (req, expect) in [
        (
            request("research-a", &out, "SELECT * FROM health.visits"),
            "not found or not granted",
        ),
        (
            request("research-a", &out, &format!("EXPLAIN {DETAIL}")),
            "only queries can be exported",
        ),
        (request("no spaces allowed", &out, DETAIL), "a recipient is"),
        (
            ExportRequest {
                purpose: None,
                ..request("research-a", &out, DETAIL)
            },
            "no purpose declared",
        ),
    ] {
        let e = run(&ex, &req).await.unwrap_err().to_string();
        assert!(e.contains(expect), "{e}");
        assert!(!out.exists());
    }
    let records = exchange::audit::read_all(ex.audit().path()).unwrap();
    assert_eq!(records.len(), 4);
    assert!(
        records
            .iter()
            .all(|r| r.entry.kind == "export" || r.entry.kind == "other")
    );

    // Never overwritten.
    run(&ex, &request("research-a", &out, DETAIL))
        .await
        .unwrap();
    let e = run(&ex, &request("research-a", &out, DETAIL))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("never overwritten"), "{e}");
}

#[test]
fn trader_workflow_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let cli = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_exchange"));
        c.arg("--config-dir")
            .arg(common::repo_root())
            .arg("--data-root")
            .arg(common::data_root())
            .arg("--state-dir")
            .arg(&state)
            .arg("--key-dir")
            .arg(state.join("keys"));
        c
    };
    assert!(cli().args(["keys", "init"]).status().unwrap().success());
    let file = tmp.path().join("enterprises.parquet");
    let out = cli()
        .args([
            "export",
            "--as",
            "market_trader",
            "--purpose",
            "data_product",
            "--recipient",
            "buyer-1",
            "--expires",
            "2027-01-31",
            "--out",
        ])
        .arg(&file)
        .arg("SELECT industry, district, count(*) AS enterprises FROM market.enterprises GROUP BY industry, district")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("for recipient buyer-1") && stdout.contains("expires: 2027-01-31"));

    let out = cli()
        .args(["export", "verify"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.starts_with("OK: enterprises.parquet") && stdout.contains("to recipient buyer-1")
    );

    let mut bytes = fs::read(&file).unwrap();
    bytes[10] ^= 0xff;
    fs::write(&file, bytes).unwrap();
    let out = cli()
        .args(["export", "verify"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("INVALID:"));

    // The export is in the log, and the log still verifies.
    let out = cli().args(["audit", "report"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("| market_trader | buyer-1 | enterprises.parquet")
    );
    assert!(cli().args(["audit", "verify"]).status().unwrap().success());
}

#[tokio::test]
async fn aggregates_under_a_policy_threshold_are_groups_not_records() {
    let c = config_copy();
    edit(
        &c.path().join("policies/grants/police.toml"),
        "expires = 2027-06-30\n",
        "expires = 2027-06-30\nmin_group = 5\n",
    );
    let (ex, state) = open_config(c.path());
    let out = state.path().join("agg.parquet");
    let s = run(
        &ex,
        &request(
            "research-a",
            &out,
            "SELECT district, gender, count(*) AS n FROM police.residents GROUP BY district, gender",
        ),
    )
    .await
    .unwrap();
    let g = s.manifest.body.guard.unwrap();
    assert!(g.contains("not counted") && g.contains(">= 5"), "{g}");
    assert_eq!(s.manifest.body.rows, 12);
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
    let guard = s.manifest.body.guard.unwrap();
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

#[tokio::test]
async fn quasi_identifiers_copied_through_joins_and_constants_are_guarded() {
    // Finding 5b of issue 11: the gender copied into a VALUES column by a join equality (or
    // pinned by a filter and output as a constant) escaped lineage, so no guard ran.
    let (ex, state) = open();
    let dir = state.path();
    let all = raw_classes(|_, _, _| true);
    assert!(all.values().any(|n| *n < 3), "the test needs small classes");
    // A quasi-identifier in a join condition: the copy is not the column itself, so the
    // export is refused (review 11) unless it shows the gender too; then every column is
    // in the class.
    for (name, sql) in [
        (
            "values",
            "SELECT g.v, r.birth_date, r.district, r.person_id FROM police.residents r JOIN (VALUES ('F'), ('M')) g(v) ON r.gender = g.v",
        ),
        (
            "where-equality",
            "SELECT g.v, r.birth_date, r.district, r.person_id FROM police.residents r, (VALUES ('F'), ('M')) g(v) WHERE r.gender = g.v",
        ),
    ] {
        let key = ["v", "birth_date", "district", "person_id"];
        assert!(guarded(&ex, dir, name, sql, &key).await.is_none(), "{name}");
        let shown = sql.replace("SELECT g.v,", "SELECT g.v, r.gender,");
        let key = ["v", "gender", "birth_date", "district", "person_id"];
        let g = guarded(&ex, dir, &format!("{name}-shown"), &shown, &key)
            .await
            .unwrap();
        assert!(g.contains("suppressed"), "{name}: {g}");
    }
    // Computed in the projection: the computed column is a quasi-identifier.
    guarded(
        &ex,
        dir,
        "case",
        "SELECT CASE WHEN r.gender = 'F' THEN 'woman' ELSE 'man' END AS sex, r.birth_date, r.district, r.person_id FROM police.residents r",
        &["sex", "birth_date", "district"],
    )
    .await
    .unwrap();
    // A filter pins the gender and a constant says it: refused, the gender is not shown.
    let constant = guarded(
        &ex,
        dir,
        "constant",
        "SELECT 'F' AS g, birth_date, district, person_id FROM police.residents WHERE gender = 'F'",
        &["g", "birth_date", "district"],
    )
    .await;
    assert!(constant.is_none());
    // A filter alone pins them: the whole result is one class, too small to leave.
    let (&(ref g, year, ref district), _) = all.iter().find(|(_, n)| **n < 3).unwrap();
    let guard = guarded(
        &ex,
        dir,
        "pinned",
        &format!(
            "SELECT person_id FROM police.residents WHERE gender = '{g}' AND birth_date = DATE '{year}-01-01' AND district = '{district}'"
        ),
        &[],
    )
    .await;
    // Refused: the file would not show what the filter pinned (review 11).
    assert!(guard.is_none());
}

#[tokio::test]
async fn quasi_identifiers_carried_by_row_counts_order_or_branches_are_guarded() {
    // Review of the fix: a join multiplying each resident's row by the birth year, counted
    // with a non-QI argument; rows duplicated by gender; constants in disguise per UNION
    // branch; ordering by a quasi-identifier. Each makes every column part of the class.
    let (ex, state) = open();
    let dir = state.path();
    for (name, sql, key) in [
        (
            "multiplied-count",
            "SELECT r.person_id AS p, count(r.name) AS yr_code FROM police.residents r
             JOIN (VALUES (0), (1), (2), (3)) n(i) ON n.i < date_part('year', r.birth_date) - 1990
             GROUP BY r.person_id",
            vec!["p", "yr_code"],
        ),
        (
            "duplicated",
            "SELECT r.person_id FROM police.residents r
             JOIN (VALUES (1), (2)) n(i) ON n.i <= CASE WHEN r.gender = 'F' THEN 2 ELSE 1 END",
            vec!["person_id"],
        ),
        (
            "disguised-constant",
            "SELECT person_id, length(name) * 0 + 1 AS female FROM police.residents WHERE gender = 'F'
             UNION ALL SELECT person_id, length(name) * 0 FROM police.residents WHERE gender = 'M'",
            vec!["person_id", "female"],
        ),
        (
            "ordered",
            "SELECT person_id FROM police.residents ORDER BY birth_date, gender LIMIT 3",
            vec!["person_id"],
        ),
    ] {
        // Each condition reads a quasi-identifier the file does not show: refused.
        assert!(guarded(&ex, dir, name, sql, &key).await.is_none(), "{name}");
    }
    // Review 3: each resident repeated (UNNEST, a cross join behind LIMIT or a window), and
    // a condition keeps the copies whose number is a set bit of a code of the
    // quasi-identifiers: per row the classes are large, per person the code is exact.
    let code = "(CAST(date_part('year', r.birth_date) AS BIGINT) - 1929)
        + 128 * (CASE WHEN r.gender = 'F' THEN 1 ELSE 0 END)
        + 256 * (CASE r.district WHEN 'heping' THEN 0 WHEN 'hexi' THEN 1 WHEN 'nankai' THEN 2 ELSE 3 END)";
    let bits = "(VALUES (0),(1),(2),(3),(4),(5),(6),(7),(8),(9),(10)) n(j)";
    for (name, sql) in [
        (
            "bits-unnest",
            format!(
                "SELECT t.p, t.j FROM (SELECT r.person_id AS p, unnest(make_array(0,1,2,3,4,5,6,7,8,9,10)) AS j, {code} AS code
                 FROM police.residents r) t WHERE ((t.code >> t.j) & 1) = 1"
            ),
        ),
        (
            "bits-limit",
            format!(
                "SELECT t.p, t.j FROM (SELECT r.person_id AS p, n.j AS j, {code} AS code
                 FROM police.residents r CROSS JOIN {bits} LIMIT 100000000) t WHERE ((t.code >> t.j) & 1) = 1"
            ),
        ),
        (
            "bits-window",
            format!(
                "SELECT t.p, t.j FROM (SELECT r.person_id AS p, n.j AS j, row_number() OVER () AS rn, {code} AS code
                 FROM police.residents r CROSS JOIN {bits}) t WHERE t.rn > 0 AND ((t.code >> t.j) & 1) = 1"
            ),
        ),
    ] {
        assert!(
            guarded(&ex, dir, name, &sql, &["p", "j"]).await.is_none(),
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_threshold_elsewhere_in_the_plan_does_not_make_rows_groups() {
    // Finding 5a of issue 11: any policy threshold anywhere in the plan switched class
    // counting off for a GROUP BY over quasi-identifiers.
    let (ex, state) = open();
    let out = state.path().join("groups.parquet");
    let req = ExportRequest {
        principal: "civil_analyst".into(),
        purpose: Some("elderly_care_planning".into()),
        recipient: "research-c".into(),
        out: out.clone(),
        sql:
            "SELECT r.gender, r.birth_date, r.household_size, count(*) AS n FROM police.residents r
              WHERE (SELECT count(*) FROM health.visits) > 0 GROUP BY 1, 2, 3"
                .into(),
        expires: None,
    };
    let s = run(&ex, &req).await.unwrap();
    let guard = s.manifest.body.guard.unwrap();
    assert!(!guard.contains("not counted"), "{guard}");
    assert!(guard.contains("suppressed"), "{guard}");
    let (batches, _) = read(&out);
    assert!(
        guard.contains("over (gender, birth_date, household_size, n)"),
        "{guard}"
    );
    assert!(
        classes(&batches, &["gender", "birth_date", "household_size", "n"])
            .values()
            .all(|n| *n >= 3)
    );
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

#[tokio::test]
async fn classes_count_people_over_everything_their_rows_say() {
    // Review 4: one quasi-identifier per copy of a person's row (a cross join and CASE),
    // or a copy number laundered through a quasi-identifier, gave per-row classes of
    // thousands while each person's rows together named their birth year, gender and
    // district. Classes now count people, by everything their rows say together.
    let (ex, state) = open();
    let dir = state.path();
    let code = "(CAST(date_part('year', r.birth_date) AS BIGINT) - 1929)
        + 128 * (CASE WHEN r.gender = 'F' THEN 1 ELSE 0 END)
        + 256 * (CASE r.district WHEN 'heping' THEN 0 WHEN 'hexi' THEN 1 WHEN 'nankai' THEN 2 ELSE 3 END)";
    for (name, sql, shown) in [
        (
            "one-qi-per-copy",
            "SELECT r.person_id AS p, n.j,
                    CASE n.j WHEN 0 THEN r.gender WHEN 1 THEN CAST(date_part('year', r.birth_date) AS VARCHAR) ELSE r.district END AS q
             FROM police.residents r CROSS JOIN (VALUES (0), (1), (2)) n(j)"
                .to_string(),
            vec!["j", "q"],
        ),
        (
            "laundered-copy-number",
            format!(
                "SELECT t.p, t.j FROM (SELECT r.person_id AS p, n.j + length(r.gender) - 1 AS j, row_number() OVER () AS rn, {code} AS code
                 FROM police.residents r CROSS JOIN (VALUES (0),(1),(2),(3),(4),(5),(6),(7),(8),(9),(10)) n(j)) t
                 WHERE t.rn > 0 AND ((t.code >> t.j) & 1) = 1"
            ),
            vec!["j"],
        ),
    ] {
        let out = dir.join(format!("{name}.parquet"));
        let Some(s) = attack(&ex, &request("research-d", &out, &sql)).await else {
            continue;
        };
        let guard = s.manifest.body.guard.unwrap();
        assert!(guard.contains("suppressed"), "{name}: {guard}");
        let (batches, _) = read(&out);
        // No column holds the subjects.
        assert!(batches.iter().all(|b| b
            .schema()
            .fields()
            .iter()
            .all(|f| !f.name().starts_with("__exchange"))));
        // Everything the rows of one person say together is shared by >= 3 people.
        assert_people_in_classes_of_3(&batches, &shown, name);
    }
}

#[tokio::test]
async fn rows_that_lose_their_person_or_one_person_in_two_columns_are_guarded() {
    // Review 5: UNNEST dropped the rows' subjects (per-row classes over (j, q) again); a
    // quasi-identifier selection became a yes/no per row after an outer join or a scalar
    // subquery; one person joined in three columns counted as three people.
    let (ex, state) = open();
    let dir = state.path();
    let year = "CAST(date_part('year', r.birth_date) AS VARCHAR)";
    for (name, sql, shown) in [
        (
            "unnest",
            "SELECT p, j, CASE j WHEN 0 THEN g WHEN 1 THEN CAST(date_part('year', b) AS VARCHAR) ELSE d END AS q
             FROM (SELECT r.person_id AS p, r.gender AS g, r.birth_date AS b, r.district AS d,
                          unnest(make_array(0, 1, 2)) AS j FROM police.residents r) t"
                .to_string(),
            vec!["j", "q"],
        ),
        (
            "scalar-subquery-bits",
            "SELECT e.person_id AS p,
                (SELECT count(*) FROM police.residents r WHERE r.person_id = e.person_pseudonym AND r.gender = 'F') + 0 * e.insured_months AS g,
                (SELECT count(*) FROM police.residents r WHERE r.person_id = e.person_pseudonym AND r.district IN ('hexi', 'hebei')) + 0 * e.insured_months AS d
             FROM hrss.employment e"
                .to_string(),
            vec!["g", "d"],
        ),
        (
            "left-join-bits",
            "SELECT e.person_id AS p, b0.h IS NOT NULL AS g, b1.h IS NOT NULL AS d
             FROM hrss.employment e
             LEFT JOIN (SELECT r.person_id AS k, r.district AS h FROM police.residents r WHERE r.gender = 'F') b0 ON b0.k = e.person_pseudonym
             LEFT JOIN (SELECT r.person_id AS k, r.gender AS h FROM police.residents r WHERE r.district IN ('hexi', 'hebei')) b1 ON b1.k = e.person_pseudonym"
                .to_string(),
            vec!["g", "d"],
        ),
        (
            "one-person-three-columns",
            format!(
                "SELECT e.person_id AS p, j.j,
                        CASE j.j WHEN 0 THEN r0.gender WHEN 1 THEN {} ELSE r2.district END AS q
                 FROM hrss.employment e CROSS JOIN (VALUES (0), (1), (2)) j(j)
                 LEFT JOIN police.residents r0 ON r0.person_id = e.person_pseudonym AND j.j = 0
                 LEFT JOIN police.residents r1 ON r1.person_id = e.person_pseudonym AND j.j = 1
                 LEFT JOIN police.residents r2 ON r2.person_id = e.person_pseudonym AND j.j = 2",
                year.replace("r.", "r1.")
            ),
            vec!["j", "q"],
        ),
    ] {
        let out = dir.join(format!("{name}.parquet"));
        let Some(s) = attack(&ex, &request("research-e", &out, &sql)).await else {
            continue;
        };
        let guard = s.manifest.body.guard.unwrap();
        let (batches, _) = read(&out);
        assert_people_in_classes_of_3(&batches, &shown, &format!("{name}: {guard}"));
    }
}

#[tokio::test]
async fn decoy_persons_joined_in_do_not_hide_the_person_a_row_describes() {
    // Review 6: a row was judged by the persons it carried; with its own person aggregated
    // or unnested away and three fixed residents cross-joined in, every row carried the same
    // three decoys (one class of 3) and each resident's gender and birth year left next to
    // their id.
    let (ex, state) = open();
    let dir = state.path();
    let decoys = "CROSS JOIN (SELECT x.name AS n1 FROM police.residents x ORDER BY x.person_id LIMIT 1) d1
        CROSS JOIN (SELECT x.name AS n2 FROM police.residents x ORDER BY x.person_id LIMIT 1 OFFSET 1) d2
        CROSS JOIN (SELECT x.name AS n3 FROM police.residents x ORDER BY x.person_id LIMIT 1 OFFSET 2) d3";
    for (name, sql, shown) in [
        (
            "aggregated",
            format!(
                "SELECT t.p, t.g, t.y, t.d FROM (SELECT e.person_id AS p, max(r.gender) AS g,
                        max(CAST(date_part('year', r.birth_date) AS VARCHAR)) AS y, max(r.district) AS d
                    FROM hrss.employment e JOIN police.residents r ON r.person_id = e.person_pseudonym
                    GROUP BY e.person_id) t {decoys}"
            ),
            vec!["g", "y", "d"],
        ),
        (
            "unnested",
            format!(
                "SELECT t.p, t.j, CASE t.j WHEN 0 THEN t.g WHEN 1 THEN CAST(date_part('year', t.b) AS VARCHAR) ELSE t.d END AS q
                 FROM (SELECT e.person_id AS p, r.gender AS g, r.birth_date AS b, r.district AS d,
                              unnest(make_array(0, 1, 2)) AS j
                       FROM hrss.employment e JOIN police.residents r ON r.person_id = e.person_pseudonym) t {decoys}"
            ),
            vec!["j", "q"],
        ),
        (
            // Review 7: DISTINCT dropped the person, and three copies of each row made a
            // class of three.
            "distinct-copied",
            "SELECT t.p, t.g, t.y, t.d FROM (SELECT DISTINCT e.person_id AS p, r.gender AS g,
                    CAST(date_part('year', r.birth_date) AS VARCHAR) AS y, r.district AS d
                FROM hrss.employment e JOIN police.residents r ON r.person_id = e.person_pseudonym) t
             CROSS JOIN (VALUES (1), (2), (3)) v(i)"
                .to_string(),
            vec!["g", "y", "d"],
        ),
        (
            "distinct",
            format!(
                "SELECT t.p, t.g, t.y, t.d FROM (SELECT DISTINCT e.person_id AS p, r.gender AS g,
                        CAST(date_part('year', r.birth_date) AS VARCHAR) AS y, r.district AS d
                    FROM hrss.employment e JOIN police.residents r ON r.person_id = e.person_pseudonym) t {decoys}"
            ),
            vec!["g", "y", "d"],
        ),
    ] {
        let out = dir.join(format!("{name}.parquet"));
        let Some(s) = attack(&ex, &request("research-f", &out, &sql)).await else {
            continue;
        };
        let guard = s.manifest.body.guard.unwrap();
        let (batches, _) = read(&out);
        assert_people_in_classes_of_3(&batches, &shown, &format!("{name}: {guard}"));
        // The full result has persons alone in their class: the guard had work to do.
        let full = ok(&ex, HRSS.0, HRSS.1, &sql).await;
        let all = signatures(&full.batches, &shown);
        assert!(all.values().any(|n| *n < 3), "{name}: the test needs rare persons");
    }
}

#[tokio::test]
async fn rows_that_say_something_about_everyone_never_leave() {
    // Review 7: one cell aggregating every person's quasi-identifiers (an aggregate copied
    // three times, or a window over all rows next to each person) passed as a class of three
    // rows, or as every person's identical class.
    let (ex, state) = open();
    let dir = state.path();
    let people = "concat(e.person_id, '/', r.gender, '/', CAST(date_part('year', r.birth_date) AS VARCHAR), '/', r.district)";
    for (name, sql) in [
        (
            "aggregate-copied",
            format!(
                "SELECT t.a FROM (SELECT array_agg({people}) AS a FROM hrss.employment e
                   JOIN police.residents r ON r.person_id = e.person_pseudonym) t
                 CROSS JOIN (VALUES (1), (2), (3)) v(i)"
            ),
        ),
        (
            "window",
            format!(
                "SELECT w.a FROM (SELECT array_agg({people}) OVER () AS a FROM hrss.employment e
                   JOIN police.residents r ON r.person_id = e.person_pseudonym) w LIMIT 3"
            ),
        ),
        (
            // Review 8: three people side by side in each row all had the same signature
            // (the one row), a class of three.
            "three-people-per-row",
            "WITH n AS (SELECT e.person_id AS p, e.person_pseudonym AS ps,
                               row_number() OVER (ORDER BY e.person_id) - 1 AS rn FROM hrss.employment e),
                  q AS (SELECT n.p, n.rn, r.gender AS g, CAST(date_part('year', r.birth_date) AS VARCHAR) AS y,
                               r.district AS d FROM n JOIN police.residents r ON r.person_id = n.ps)
             SELECT a.p AS p1, a.g AS g1, a.y AS y1, a.d AS d1, b.p AS p2, b.g AS g2, b.y AS y2, b.d AS d2,
                    c.p AS p3, c.g AS g3, c.y AS y3, c.d AS d3
             FROM q a JOIN q b ON b.rn = a.rn + 1 JOIN q c ON c.rn = a.rn + 2 WHERE a.rn % 3 = 0"
                .to_string(),
        ),
        (
            "scalar-subquery",
            format!(
                "SELECT e.person_id, (SELECT max(r2.district) FROM police.residents r2) AS d, {people} AS x
                 FROM hrss.employment e JOIN police.residents r ON r.person_id = e.person_pseudonym"
            ),
        ),
    ] {
        let out = dir.join(format!("{name}.parquet"));
        let Some(s) = attack(&ex, &request("research-g", &out, &sql)).await else {
            continue;
        };
        let guard = s.manifest.body.guard.clone().unwrap_or_default();
        assert_eq!(s.manifest.body.rows, 0, "{name}: {guard}");
        let full = ok(&ex, HRSS.0, HRSS.1, &sql).await;
        assert!(full.rows > 0, "{name}: the query has rows to withhold");
    }
}

#[tokio::test]
async fn whether_another_person_is_joined_in_never_decides_which_rows_leave() {
    // Review 9: rows carrying two people were dropped, so `LEFT JOIN residents r2 ON
    // r2.person_id = <target> AND r2.gender = 'F'` kept every row exactly when the target was
    // not female: one bit per statement, 14 per target in one statement.
    let (ex, state) = open();
    let dir = state.path();
    let target = common::raw_strings("hrss/employment.parquet", "person_id")[3].clone();
    let with = format!(
        "WITH g AS (SELECT DISTINCT e.person_pseudonym AS ps FROM hrss.employment e WHERE e.person_id = '{target}')"
    );
    let mut rows = Vec::new();
    for gender in ["F", "M"] {
        for (name, join) in [
            (
                "left",
                format!(
                    "LEFT JOIN police.residents r2 ON r2.person_id = g.ps AND r2.gender = '{gender}'"
                ),
            ),
            (
                "anti",
                format!(
                    "WHERE NOT EXISTS (SELECT 1 FROM police.residents r2 WHERE r2.person_id = g.ps AND r2.gender = '{gender}')"
                ),
            ),
        ] {
            let sql = format!(
                "{with} SELECT g.ps AS who, r1.district FROM police.residents r1 CROSS JOIN g {join}"
            );
            let out = dir.join(format!("{name}-{gender}.parquet"));
            let left = attack(&ex, &request("research-h", &out, &sql)).await;
            rows.push((name, gender, left.map_or(0, |s| s.manifest.body.rows)));
        }
    }
    // Nothing leaves, whatever the target's gender: the answer is not in the row count.
    assert!(rows.iter().all(|(_, _, n)| *n == 0), "{rows:?}");
}

#[tokio::test]
async fn a_pinned_person_among_decoys_is_told_apart_by_no_column() {
    // Review 10: `(gender, birth year, district of a rare resident) OR phone IN (decoys)` on
    // one scan, joined back on identity to a second scan whose phone was output: the copied
    // phone told the pinned resident from the decoys, and the class (no class columns) held
    // them all.
    let (ex, state) = open();
    let dir = state.path();
    // Decoys by their phone as hrss sees it (`keep_first_last(3, 4)`).
    let decoys: Vec<String> = common::raw_strings("police/residents.parquet", "phone")
        .iter()
        .take(3)
        .map(|p| format!("'{}****{}'", &p[..3], &p[p.len() - 4..]))
        .collect();
    let sql = format!(
        "WITH t AS (SELECT r.person_id AS pid FROM police.residents r
           WHERE (r.gender = 'F' AND r.district = 'heping' AND r.birth_date >= DATE '1950-01-01'
                  AND r.birth_date < DATE '1960-01-01')
              OR r.phone IN ({}))
         SELECT t.pid AS p, r2.phone AS ph FROM t JOIN police.residents r2 ON r2.person_id = t.pid",
        decoys.join(", ")
    );
    let sql = sql.as_str();
    let out = dir.join("pinned.parquet");
    let full = ok(&ex, HRSS.0, HRSS.1, sql).await;
    assert!(
        full.rows > 3,
        "the test needs a pinned person besides the decoys"
    );
    if let Some(s) = attack(&ex, &request("research-i", &out, sql)).await {
        let guard = s.manifest.body.guard.clone().unwrap_or_default();
        assert_eq!(s.manifest.body.rows, 0, "{guard}");
    }
}

#[tokio::test]
async fn a_rare_person_selected_beside_a_common_class_cannot_be_subtracted() {
    // Review 11 (G1): `WHERE <a rare gender, year and district> OR <a common one>`, none of
    // them shown, put the rare resident in the common class (one class, no class columns);
    // a second export of the common class alone, to the same recipient, subtracted to the
    // rare resident's pseudonym and phone.
    let (ex, state) = open();
    let dir = state.path();
    let all = raw_classes(|_, _, _| true);
    let (rare, _) = all.iter().find(|(_, n)| **n < 3).unwrap();
    let (common, n_common) = all.iter().find(|(k, n)| **n >= 3 && k.2 == rare.2).unwrap();
    let pin = |(g, y, d): &(String, i32, String)| {
        format!(
            "(r.gender = '{g}' AND r.district = '{d}' AND r.birth_date >= DATE '{y}-01-01' AND r.birth_date < DATE '{}-01-01')",
            y + 1
        )
    };
    let both = format!("{} OR {}", pin(rare), pin(common));
    // Not shown: refused, naming the three quasi-identifiers and nothing of the data.
    let hidden =
        format!("SELECT r.person_id AS p, r.phone AS ph FROM police.residents r WHERE {both}");
    let err = run(&ex, &request("research-j", &dir.join("h.parquet"), &hidden))
        .await
        .unwrap_err();
    let QueryError::Refused(r) = err else {
        panic!("{err}")
    };
    for c in ["gender", "birth_date", "district"] {
        assert!(
            r.contains(UNSHOWN) && r.contains(&format!("police.residents.{c}")),
            "{r}"
        );
    }
    assert!(!dir.join("h.parquet").exists());
    // Shown: the rare resident is a class of their own and stays behind, so the file holds
    // the common class alone, exactly as an export of the common class does.
    let shown = |w: &str| {
        format!(
            "SELECT r.person_id AS p, r.phone AS ph, r.gender, r.birth_date, r.district FROM police.residents r WHERE {w}"
        )
    };
    let ids = |name: &str| -> BTreeSet<String> {
        column(&read(&dir.join(name)).0, "p").into_iter().collect()
    };
    let a = run(
        &ex,
        &request("research-j", &dir.join("a.parquet"), &shown(&both)),
    )
    .await
    .unwrap();
    let b = run(
        &ex,
        &request("research-j", &dir.join("b.parquet"), &shown(&pin(common))),
    )
    .await
    .unwrap();
    assert!(
        a.manifest.body.guard.unwrap().contains("suppressed"),
        "the rare resident is withheld"
    );
    assert_eq!(b.manifest.body.rows, *n_common as u64);
    assert_eq!(ids("a.parquet"), ids("b.parquet"));
}
