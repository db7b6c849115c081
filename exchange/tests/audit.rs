//! The audit log proves itself: every kind of tampering is detected, a crash loses nothing
//! that was acknowledged, and the CLI reports both to an auditor.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use exchange::audit::{
    AuditError, AuditLog, AuditOptions, Checkpoint, Entry, Line, StatementKind, Summary,
    segment_name, verify,
};
use exchange::keys::{PublicKey, SigningKey};

const OPTIONS: AuditOptions = AuditOptions {
    checkpoint_every: 3,
    segment_records: 10,
};

fn entry(i: u64) -> Entry {
    Entry {
        rows: Some(i),
        ..Entry::new(StatementKind::Query, "hrss_analyst", format!("SELECT {i}"))
            .declared(Some("hrss".into()), Some("new_employment_services"))
    }
}

/// A closed log of `n` records (checkpoints every 3, segments of 10) and its key.
fn log_of(n: u64) -> (tempfile::TempDir, PathBuf, PublicKey) {
    let tmp = tempfile::tempdir().unwrap();
    let key = Arc::new(SigningKey::create(&tmp.path().join("signing.key")).unwrap());
    let dir = tmp.path().join("audit");
    let log = AuditLog::open(&dir, key.clone(), OPTIONS).unwrap();
    for i in 1..=n {
        log.append(entry(i)).unwrap();
    }
    drop(log);
    (tmp, dir, key.public_key())
}

fn seg(dir: &Path, n: u32) -> PathBuf {
    dir.join(segment_name(n))
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    fs::write(
        path,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
}

fn broken(result: Result<Summary, AuditError>) -> String {
    match result {
        Err(e @ AuditError::Broken { .. }) => e.to_string(),
        other => panic!("expected a broken log, got {other:?}"),
    }
}

#[test]
fn a_closed_log_verifies_across_segments() {
    let (_t, dir, key) = log_of(25);
    let s = verify(&dir, &key).unwrap();
    assert_eq!(s.records, 25);
    assert_eq!(s.segments, 3);
    assert!(s.sealed);
    assert_eq!(s.unsigned_tail, 0);
    // Interval checkpoints, two rotations, and the shutdown checkpoint.
    assert!(s.checkpoints > 25 / 3, "{s:?}");
    // The chain continues across segments: segment 2's first line carries the hash of
    // segment 1's last line.
    let first_of_2 = Line::parse(&lines(&seg(&dir, 2))[0]).unwrap();
    let last_of_1 = lines(&seg(&dir, 1)).pop().unwrap();
    assert_eq!(
        first_of_2.prev(),
        hex::encode(ring::digest::digest(&ring::digest::SHA256, last_of_1.as_bytes()).as_ref())
    );
}

#[test]
fn flipping_a_byte_is_detected() {
    let (_t, dir, key) = log_of(25);
    let path = seg(&dir, 2);
    let mut bytes = fs::read(&path).unwrap();
    let at = bytes
        .windows(8)
        .position(|w| w == b"SELECT 1")
        .expect("a statement in segment 2");
    bytes[at + 7] = b'9';
    fs::write(&path, bytes).unwrap();
    let e = broken(verify(&dir, &key));
    assert!(e.contains("segment 2"), "{e}");
}

#[test]
fn deleting_a_record_is_detected() {
    let (_t, dir, key) = log_of(25);
    let path = seg(&dir, 1);
    let mut l = lines(&path);
    l.remove(4);
    write_lines(&path, &l);
    let e = broken(verify(&dir, &key));
    assert!(e.contains("segment 1") && e.contains("line 5"), "{e}");
}

#[test]
fn swapping_two_records_is_detected() {
    let (_t, dir, key) = log_of(25);
    let path = seg(&dir, 3);
    let mut l = lines(&path);
    l.swap(0, 1);
    write_lines(&path, &l);
    let e = broken(verify(&dir, &key));
    assert!(e.contains("segment 3") && e.contains("line 1"), "{e}");
}

#[test]
fn truncating_the_tail_is_detected() {
    let (_t, dir, key) = log_of(25);
    let path = seg(&dir, 3);
    // Whole lines cut (records and the shutdown checkpoint): the log no longer ends sealed.
    let mut l = lines(&path);
    l.truncate(l.len() - 3);
    write_lines(&path, &l);
    let s = verify(&dir, &key).unwrap();
    assert!(!s.sealed, "{s:?}");
    // Cut inside a line: a torn last line.
    let text = fs::read_to_string(&path).unwrap();
    fs::write(&path, &text[..text.len() - 10]).unwrap();
    let e = broken(verify(&dir, &key));
    assert!(e.contains("torn"), "{e}");
    // A whole segment deleted after a rotation.
    let (_t, dir, key) = log_of(25);
    fs::remove_file(seg(&dir, 3)).unwrap();
    let e = broken(verify(&dir, &key));
    assert!(e.contains("segment 3") && e.contains("missing"), "{e}");
    // A segment deleted in the middle.
    let (_t, dir, key) = log_of(25);
    fs::remove_file(seg(&dir, 2)).unwrap();
    let e = broken(verify(&dir, &key));
    assert!(e.contains("segment 2 is missing"), "{e}");
}

/// Rewrite the whole log as a forger would: edit a statement, recompute every hash, and
/// sign every checkpoint with `forger` (claiming `claimed_id`).
fn forge(dir: &Path, forger: &SigningKey, claimed_id: &str) {
    let mut prev = "0".repeat(64);
    for n in 1..=3 {
        let path = seg(dir, n);
        let mut out = Vec::new();
        for text in lines(&path) {
            let new = match Line::parse(&text).unwrap() {
                Line::Record(mut r) => {
                    r.entry.statement = r
                        .entry
                        .statement
                        .replace("SELECT 4", "SELECT 'nothing to see'");
                    r.prev = prev.clone();
                    serde_json::to_string(&r).unwrap()
                }
                Line::Checkpoint(mut c) => {
                    c.prev = prev.clone();
                    c.key_id = claimed_id.to_string();
                    c.signature = forger.sign_hex(&Checkpoint::message(&c));
                    serde_json::to_string(&c).unwrap()
                }
            };
            prev =
                hex::encode(ring::digest::digest(&ring::digest::SHA256, new.as_bytes()).as_ref());
            out.push(new);
        }
        write_lines(&path, &out);
    }
}

#[test]
fn a_log_re_signed_with_another_key_is_detected() {
    let (t, dir, key) = log_of(25);
    let forger = SigningKey::create(&t.path().join("forger.key")).unwrap();
    forge(&dir, &forger, &forger.public_key().id());
    // Consistent under the forger's key, but not under the exchange's.
    assert!(verify(&dir, &forger.public_key()).is_ok());
    let e = broken(verify(&dir, &key));
    assert!(e.contains("signed by key"), "{e}");
    // Claiming the exchange's key id does not help: the signature fails.
    forge(&dir, &forger, &key.id());
    let e = broken(verify(&dir, &key));
    assert!(e.contains("signature does not verify"), "{e}");
}

#[test]
fn a_torn_tail_is_moved_aside_and_the_recovery_is_signed() {
    let (t, dir, key) = log_of(5);
    let path = seg(&dir, 1);
    // The process died while writing a record.
    let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
    std::io::Write::write_all(&mut f, b"{\"seq\":6,\"time\":\"2026").unwrap();
    drop(f);
    assert!(broken(verify(&dir, &key)).contains("torn"));

    let signer = Arc::new(SigningKey::load(&t.path().join("signing.key")).unwrap());
    let log = AuditLog::open(&dir, signer, OPTIONS).unwrap();
    log.append(entry(6)).unwrap();
    drop(log);
    let s = verify(&dir, &key).unwrap();
    assert_eq!((s.records, s.recoveries), (6, 1));
    assert!(s.sealed);
    let aside: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".torn-"))
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(
        fs::read(aside[0].path()).unwrap(),
        b"{\"seq\":6,\"time\":\"2026".to_vec()
    );
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"reason\":\"recovered\"") && text.contains("moved to"));
}

#[test]
fn a_log_in_use_is_not_opened_twice() {
    let (t, dir, _key) = log_of(1);
    let signer = Arc::new(SigningKey::load(&t.path().join("signing.key")).unwrap());
    let first = AuditLog::open(&dir, signer.clone(), OPTIONS).unwrap();
    let err = AuditLog::open(&dir, signer, OPTIONS)
        .unwrap_err()
        .to_string();
    assert!(err.contains("in use"), "{err}");
    assert!(exchange::audit::in_use(&dir));
    drop(first);
    assert!(!exchange::audit::in_use(&dir));
}

/// Child half of the crash test: log as fast as possible until killed.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("EXCHANGE_CRASH_CHILD_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let signer = Arc::new(SigningKey::load(&dir.join("signing.key")).unwrap());
    let log = AuditLog::open(&dir.join("audit"), signer, OPTIONS).unwrap();
    let ack = dir.join("acknowledged");
    for i in 1.. {
        let r = log.append(entry(i)).unwrap();
        // Acknowledged = returned to the caller; the parent checks none of these is lost.
        let tmp = dir.join("acknowledged.tmp");
        fs::write(&tmp, r.seq.to_string()).unwrap();
        fs::rename(&tmp, &ack).unwrap();
    }
}

#[test]
fn killing_the_process_while_logging_loses_no_acknowledged_record() {
    let tmp = tempfile::tempdir().unwrap();
    let key = SigningKey::create(&tmp.path().join("signing.key")).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture"])
        .env("EXCHANGE_CRASH_CHILD_DIR", tmp.path())
        .spawn()
        .unwrap();
    // Let it log for a while, then kill it without warning (SIGKILL).
    let ack = tmp.path().join("acknowledged");
    for _ in 0..200 {
        std::thread::sleep(std::time::Duration::from_millis(20));
        if fs::read_to_string(&ack)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|n| n > 50)
        {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let acknowledged: u64 = fs::read_to_string(&ack).unwrap().parse().unwrap();
    assert!(acknowledged > 0);

    let dir = tmp.path().join("audit");
    // Before recovery: either an unsealed tail or a torn last line, never silently fine.
    match verify(&dir, &key.public_key()) {
        Ok(s) => {
            assert!(!s.sealed);
            assert!(s.records >= acknowledged);
        }
        // Killed mid-line, or between creating the next segment and announcing it.
        Err(e) => assert!(
            e.to_string().contains("torn") || e.to_string().contains("died while rotating"),
            "{e}"
        ),
    }
    // Reopening seals the log with a signed recovery; every acknowledged record is there.
    let log = AuditLog::open(&dir, Arc::new(key), OPTIONS).unwrap();
    drop(log);
    let pk = SigningKey::load(&tmp.path().join("signing.key"))
        .unwrap()
        .public_key();
    let s = verify(&dir, &pk).unwrap();
    assert!(s.sealed && s.recoveries == 1, "{s:?}");
    assert!(s.records >= acknowledged, "{} < {acknowledged}", s.records);
    let records = exchange::audit::read_all(&dir).unwrap();
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1);
    }
}

fn cli(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_exchange"));
    c.arg("--config-dir")
        .arg(common::repo_root())
        .arg("--data-root")
        .arg(common::data_root())
        .arg("--state-dir")
        .arg(state)
        .arg("--key-dir")
        .arg(state.join("keys"));
    c
}

fn run(c: &mut Command) -> (i32, String, String) {
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn auditor_workflow_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let (code, out, err) = run(cli(&state).args(["keys", "init"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("signing.pub"), "{out}");
    // Keys are never overwritten.
    let (code, _, err) = run(cli(&state).args(["keys", "init"]));
    assert_eq!(code, 2);
    assert!(err.contains("refusing to overwrite"), "{err}");
    let public = tmp.path().join("exchange.pub");
    let (code, _, err) = run(cli(&state).args(["keys", "public", "--out"]).arg(&public));
    assert_eq!(code, 0, "{err}");

    for sql in [
        "SELECT industry, count(*) FROM market.enterprises GROUP BY industry",
        "SELECT * FROM police.residents",
    ] {
        run(cli(&state).args([
            "query",
            "--as",
            "market_trader",
            "--purpose",
            "data_product",
            sql,
        ]));
    }
    let (code, out, err) = run(cli(&state)
        .args(["audit", "verify", "--public-key"])
        .arg(&public));
    assert_eq!(code, 0, "{err}");
    assert!(
        // The query's started and completion records, and the refusal.
        out.contains("OK: 3 records in 1 segment") && out.contains("closed cleanly"),
        "{out}"
    );

    let (code, out, _) = run(cli(&state).args(["audit", "report", "--since", "2020-01-01"]));
    assert_eq!(code, 0);
    assert!(
        out.contains("| market_trader | data_product | 1 | 1 | 0 |"),
        "{out}"
    );
    assert!(out.contains("not found or not granted"), "{out}");
    assert!(
        out.contains("statements: 2 (1 allowed, 1 refused)")
            && out.contains("streamed results: 1 complete"),
        "{out}"
    );
    assert!(
        out.contains("| market | enterprises | 1 | market_trader |"),
        "{out}"
    );
    let (_, out, _) = run(cli(&state).args(["audit", "report", "--principal", "nobody"]));
    assert!(out.contains("no statements"), "{out}");

    // Another key does not verify this log.
    let other = tmp.path().join("other");
    exchange::keys::init(&other).unwrap();
    let (code, _, err) = run(cli(&state)
        .args(["audit", "verify", "--public-key"])
        .arg(other.join("signing.pub")));
    assert_eq!(code, 1);
    assert!(err.contains("signed by key"), "{err}");

    // A cut tail is reported as such, with a non-zero exit.
    let seg1 = state.join("audit").join(segment_name(1));
    let mut l = lines(&seg1);
    l.pop();
    write_lines(&seg1, &l);
    let (code, _, err) = run(cli(&state).args(["audit", "verify"]));
    assert_eq!(code, 1);
    assert!(err.contains("UNSEALED"), "{err}");
}

#[test]
fn tampering_cannot_pass_as_a_crash() {
    // Lines run together into one "torn" line: an edit, refused on open and by verify.
    let (t, dir, key) = log_of(8);
    let path = seg(&dir, 1);
    let l = lines(&path);
    let text = format!("{}\n{}", l[..3].join("\n"), l[3..].join(""));
    fs::write(&path, text).unwrap();
    let e = broken(verify(&dir, &key));
    assert!(e.contains("an edit, not a torn write"), "{e}");
    let signer = Arc::new(SigningKey::load(&t.path().join("signing.key")).unwrap());
    let e = AuditLog::open(&dir, signer, OPTIONS)
        .unwrap_err()
        .to_string();
    assert!(e.contains("an edit, not a torn write"), "{e}");

    // A last line without its end can be a crash, and can be an edit that hides the line:
    // either way it is moved aside, named with its SHA-256 in a signed recovery, and the
    // auditor is warned.
    let (t, dir, key) = log_of(8);
    let path = seg(&dir, 1);
    let text = fs::read_to_string(&path).unwrap();
    fs::write(&path, text.trim_end()).unwrap();
    assert!(broken(verify(&dir, &key)).contains("torn"));
    let signer = Arc::new(SigningKey::load(&t.path().join("signing.key")).unwrap());
    drop(AuditLog::open(&dir, signer, OPTIONS).unwrap());
    let s = verify(&dir, &key).unwrap();
    assert_eq!(s.recoveries, 1);
    assert!(s.recovery_notes[0].1.contains("SHA-256"), "{s:?}");

    // A deleted last segment is not re-created on open.
    let (t, dir, _key) = log_of(25);
    fs::remove_file(seg(&dir, 3)).unwrap();
    let signer = Arc::new(SigningKey::load(&t.path().join("signing.key")).unwrap());
    let e = AuditLog::open(&dir, signer, OPTIONS)
        .unwrap_err()
        .to_string();
    assert!(e.contains("segment 3") && e.contains("missing"), "{e}");
}

#[test]
fn recoveries_are_visible_to_the_auditor() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    exchange::keys::init(&state.join("keys")).unwrap();
    let key = SigningKey::load(&state.join("keys").join("signing.key")).unwrap();
    let dir = state.join("audit");
    let log = AuditLog::open(&dir, Arc::new(key), AuditOptions::default()).unwrap();
    log.append(entry(1)).unwrap();
    drop(log);
    // As if the process had died before its shutdown checkpoint.
    let path = seg(&dir, 1);
    let mut l = lines(&path);
    assert!(l.pop().unwrap().contains("\"shutdown\""));
    write_lines(&path, &l);
    let key = SigningKey::load(&state.join("keys").join("signing.key")).unwrap();
    drop(AuditLog::open(&dir, Arc::new(key), AuditOptions::default()).unwrap());
    let (code, out, err) = run(cli(&state).args(["audit", "verify"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("WARNING: recovery after an unclean shutdown, at record 1"),
        "{out}"
    );
}

#[test]
fn concurrent_appenders_share_fsyncs_and_keep_one_chain() {
    // Group commit: appenders wait for one fsync that covers them; rotations and
    // checkpoints happen under their feet, and records written "with the next" become
    // durable with whichever sync comes next.
    let tmp = tempfile::tempdir().unwrap();
    let key = Arc::new(SigningKey::create(&tmp.path().join("signing.key")).unwrap());
    let dir = tmp.path().join("audit");
    let log = Arc::new(AuditLog::open(&dir, key.clone(), OPTIONS).unwrap());
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                (0..40u64)
                    .map(|i| {
                        let durability = if i % 2 == 0 {
                            exchange::audit::Durability::Now
                        } else {
                            exchange::audit::Durability::WithNext
                        };
                        log.append_with(entry(t * 1000 + i), durability)
                            .unwrap()
                            .seq
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seqs: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=320).collect::<Vec<_>>());
    drop(log);
    let s = verify(&dir, &key.public_key()).unwrap();
    assert!(s.sealed && s.records == 320 && s.segments == 32, "{s:?}");
    let mut rows: Vec<u64> = exchange::audit::read_all(&dir)
        .unwrap()
        .iter()
        .map(|r| r.entry.rows.unwrap())
        .collect();
    rows.sort_unstable();
    let mut want: Vec<u64> = (0..8u64)
        .flat_map(|t| (0..40u64).map(move |i| t * 1000 + i))
        .collect();
    want.sort_unstable();
    assert_eq!(rows, want);
}

#[test]
fn verify_now_checks_a_live_log_while_records_keep_coming() {
    let tmp = tempfile::tempdir().unwrap();
    let key = Arc::new(SigningKey::create(&tmp.path().join("signing.key")).unwrap());
    let dir = tmp.path().join("audit");
    let log = Arc::new(AuditLog::open(&dir, key.clone(), OPTIONS).unwrap());
    for i in 1..=25 {
        log.append(entry(i)).unwrap();
    }
    // Appends go on (rotating segments every 10 records) while the log is verified.
    let writer = {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            for i in 26..=400 {
                log.append(entry(i)).unwrap();
            }
        })
    };
    let mut seen = Vec::new();
    for _ in 0..20 {
        let s = log.verify_now().unwrap();
        assert!(!s.sealed, "a live log is not sealed: {s:?}");
        seen.push(s.records);
    }
    writer.join().unwrap();
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert_eq!(log.verify_now().unwrap().records, 400);
    // No snapshot is left behind beside the log.
    let left: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".audit-verify-")
        })
        .collect();
    assert!(left.is_empty());
    // An edited record is found, named by the log's own file.
    let path = seg(&dir, 2);
    let text = fs::read_to_string(&path).unwrap();
    fs::write(&path, text.replacen("SELECT 1", "SELECT 9", 1)).unwrap();
    match log.verify_now() {
        Err(AuditError::Broken { path: p, .. }) => assert_eq!(p, path),
        other => panic!("{other:?}"),
    }
}
