//! The `exchange` binary, driven as a user would.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

/// `exchange keys init` for `state`, which must succeed.
fn keys_init(state: &std::path::Path, data: &std::path::Path) {
    let out = exchange(state, data)
        .args(["keys", "init"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn exchange(state: &std::path::Path, data: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_exchange"));
    c.arg("--config-dir")
        .arg(common::repo_root())
        .arg("--data-root")
        .arg(data)
        .arg("--state-dir")
        .arg(state)
        .arg("--key-dir")
        .arg(state.join("keys"));
    c
}

#[test]
fn demo_generates_data_and_shows_every_principal() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = exchange(&dir.path().join("state"), &data)
        .args(["demo", "--scale", "0.01"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for p in [
        "civil_analyst",
        "hrss_analyst",
        "health_analyst",
        "hotline_analyst",
        "market_trader",
        "auditor",
    ] {
        assert!(stdout.contains(p), "{p} missing from the demo");
    }
    assert!(stdout.contains("signed checkpoints verified"));
    assert!(stdout.contains("refused:") || stdout.contains("not found or not granted"));
    assert!(exchange::demo::data_present(&data));
}

#[test]
fn query_prints_results_and_refusals_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let data = common::data_root();
    // Without keys the exchange does not start, and says how to create them.
    let out = exchange(&state, data)
        .args([
            "query",
            "--as",
            "market_trader",
            "--purpose",
            "data_product",
            "SELECT 1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exchange keys init"));
    let out = exchange(&state, data)
        .args(["keys", "init"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = exchange(&state, data)
        .args(["query", "--as", "market_trader", "--purpose", "data_product", "--format", "csv",
               "SELECT industry, count(*) AS n FROM market.enterprises GROUP BY industry ORDER BY industry"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("industry,n\n"), "{text}");

    let out = exchange(&state, data)
        .args([
            "query",
            "--as",
            "market_trader",
            "--purpose",
            "data_product",
            "SELECT * FROM police.residents",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("refused: table police.residents is not found or not granted")
    );

    let out = exchange(&state, data)
        .args(["audit", "verify"])
        .output()
        .unwrap();
    // SELECT 1: started and completion records; the refusal: one.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("OK: 3 records"), "{stdout}");
}

#[test]
fn policy_check_passes_on_the_repository() {
    let dir = tempfile::tempdir().unwrap();
    let out = exchange(dir.path(), common::data_root())
        .args(["policy", "check"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("0 errors"), "{text}");
}

#[test]
fn bad_config_dir_exits_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_exchange"))
        .args([
            "--config-dir",
            "/nonexistent",
            "query",
            "--as",
            "x",
            "--purpose",
            "y",
            "SELECT 1",
        ])
        .arg("--state-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/schemas"));
}

#[test]
fn terminal_controls_in_statements_and_values_never_reach_a_terminal_raw() {
    // Finding 6 of issue 11: an analyst's statement holding ESC/CR/BEL could hide or
    // rewrite lines of the audit log on an auditor's terminal.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let data = common::data_root();
    keys_init(&state, data);
    let hostile = "SELECT '\u{1b}[2J\u{1b}[1A\rinnocent\u{7}\u{202e}' AS v, count(*) FROM market.enterprises /* \u{1b}]0;title\u{7} */";
    let out = exchange(&state, data)
        .args([
            "query",
            "--as",
            "market_trader",
            "--purpose",
            "data_product",
            hostile,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A refused statement's reason echoes the text too.
    let refused = exchange(&state, data)
        .args([
            "query",
            "--as",
            "market_trader",
            "--purpose",
            "data_product",
            "SELEC \u{1b}[31m",
        ])
        .output()
        .unwrap();
    let raw = |b: &[u8]| {
        b.iter().any(|c| *c == 0x1b || *c == b'\r' || *c == 0x07)
            || String::from_utf8_lossy(b).contains('\u{202e}')
    };
    assert!(!raw(&out.stdout) && !raw(&refused.stderr) && !raw(&refused.stdout));
    for format in ["table", "csv", "json"] {
        let out = exchange(&state, data)
            .args([
                "query",
                "--as",
                "auditor",
                "--purpose",
                "audit_review",
                "--format",
                format,
                "SELECT statement, reason FROM audit.events",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!raw(&out.stdout), "{format}: {text}");
        assert!(text.contains("innocent"), "{format}: {text}");
    }
    let report = exchange(&state, data)
        .args(["audit", "report"])
        .output()
        .unwrap();
    assert!(
        !raw(&report.stdout),
        "{}",
        String::from_utf8_lossy(&report.stdout)
    );
    // Review 2: column names, dictionary values, struct field names, maps and fixed-size
    // lists, in every format.
    let nested = "SELECT count(*) AS \"a\u{1b}[31mRED\u{202e}\", \
        arrow_cast(concat(chr(27), '[31mDICT'), 'Dictionary(Int32, Utf8)') AS d, \
        named_struct('f\u{1b}[31m', 1) AS s, \
        map([concat('k', chr(27))], [concat('v', chr(13))]) AS m, \
        arrow_cast(make_array(concat('x', chr(7))), 'FixedSizeList(1, Utf8)') AS l \
        FROM market.enterprises";
    for format in ["table", "csv", "json"] {
        let out = exchange(&state, data)
            .args([
                "query",
                "--as",
                "market_trader",
                "--purpose",
                "data_product",
                "--format",
                format,
                nested,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{format}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !raw(&out.stdout),
            "{format}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // The exporter names the file; the buyer's `export verify` prints it escaped.
    let file = dir
        .path()
        .join("data.parquet issued by police_officer\u{1b}[8m");
    let out = exchange(&state, data)
        .args([
            "export",
            "--as",
            "market_trader",
            "--purpose",
            "data_product",
        ])
        .args(["--recipient", "buyer-1", "--out"])
        .arg(&file)
        .arg("SELECT industry, count(*) AS n FROM market.enterprises GROUP BY 1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!raw(&out.stdout) && !raw(&out.stderr));
    let verify = exchange(&state, data)
        .args(["export", "verify"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(
        !raw(&verify.stdout),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

#[test]
fn one_configuration_file_with_flags_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("exchange.toml");
    std::fs::write(
        &file,
        format!(
            "[paths]\nconfig_dir = {:?}\ndata_root = \"city\"\nstate_dir = \"state\"\n\n[serve]\nmax_concurrent = 3\n\n[execution]\ntarget_partitions = 2\n",
            common::repo_root().display().to_string()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_exchange"))
            .current_dir(dir.path())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // ./exchange.toml is found; relative paths in it are relative to it.
    let (code, stdout, stderr) = run(&["config"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("exchange.toml with environment and flags"),
        "{stdout}"
    );
    let city = dir.path().join("city").display().to_string();
    assert!(stdout.contains(&city), "{stdout}");
    assert!(stdout.contains("max_concurrent = 3"), "{stdout}");
    assert!(stdout.contains("target_partitions = 2"), "{stdout}");
    assert!(
        stdout.contains("key_dir"),
        "the default key dir is spelt out: {stdout}"
    );
    // A flag overrides the file's key, for the command it belongs to.
    let (code, stdout, _) = run(&["--data-root", "/elsewhere", "config"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("data_root = \"/elsewhere\""), "{stdout}");
    // The printed configuration is itself a valid configuration file.
    let printed = dir.path().join("printed.toml");
    std::fs::write(&printed, &stdout).unwrap();
    let (code, again, stderr) = run(&["--config", printed.to_str().unwrap(), "config"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(again.contains("max_concurrent = 3"), "{again}");
    // An unknown key is an error naming file, line and key; nothing runs on a default.
    std::fs::write(&file, "[serve]\nmax_concurent = 4\n").unwrap();
    let (code, _, stderr) = run(&["config"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("exchange.toml"), "{stderr}");
    assert!(stderr.contains("line 2"), "{stderr}");
    assert!(stderr.contains("max_concurent"), "{stderr}");
    // Out of range, whether from the file or a flag.
    std::fs::write(&file, "[serve]\ntoken_ttl_secs = 0\n").unwrap();
    let (code, _, stderr) = run(&["config"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("serve.token_ttl_secs"), "{stderr}");
    // A missing --config file is named.
    let (code, _, stderr) = run(&["--config", "nowhere.toml", "config"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("nowhere.toml"), "{stderr}");
}

#[test]
fn a_stream_killed_midway_leaves_a_verifiable_log_naming_it_incomplete() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let data = common::data_root();
    keys_init(&state, data);
    // Ten million rows, written as they come: the first lines are out long before the end.
    let large = "SELECT r.person_id, s.person_id AS neighbour FROM police.residents r JOIN police.residents s ON r.district = s.district";
    let mut child = exchange(&state, data)
        .args([
            "query",
            "--as",
            "police_officer",
            "--purpose",
            "law_enforcement",
            "--format",
            "csv",
            large,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "person_id,neighbour");
    assert!(lines.next().unwrap().unwrap().contains(','));
    child.kill().unwrap(); // SIGKILL: no handler runs
    child.wait().unwrap();

    let verify = || {
        let out = exchange(&state, data)
            .args(["audit", "verify"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    // Unsealed (the process died), with the started record intact.
    let (code, text) = verify();
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("UNSEALED: 1 records"), "{text}");
    assert!(
        text.contains("1 streamed result started without a completion record (record 1)"),
        "{text}"
    );
    // The next process recovers the log; the stream stays visibly incomplete.
    let out = exchange(&state, data)
        .args([
            "query",
            "--as",
            "auditor",
            "--purpose",
            "audit_review",
            "--format",
            "csv",
            "SELECT seq, decision, outcome, rows FROM audit.events ORDER BY seq",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "seq,decision,outcome,rows\n1,allowed,incomplete,\n"
    );
    let (code, text) = verify();
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("recovery after an unclean shutdown")
            && text.contains("1 streamed result started without a completion record (record 1)"),
        "{text}"
    );
}

#[test]
fn a_failing_query_leaves_an_existing_output_file_as_it_was() {
    // Review 16: with streaming, --output truncated the file at the start and deleted it
    // when the statement failed.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let data = common::data_root();
    keys_init(&state, data);
    let notes = dir.path().join("notes.csv");
    std::fs::write(&notes, "kept\n").unwrap();
    let run = |sql: &str| {
        exchange(&state, data)
            .args([
                "query",
                "--as",
                "police_officer",
                "--purpose",
                "law_enforcement",
                "--format",
                "csv",
                "--output",
            ])
            .arg(&notes)
            .arg(sql)
            .output()
            .unwrap()
    };
    let out = run("SELECT CAST(name AS INT) AS n FROM police.residents");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "kept\n");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "a temporary file left: {names:?}");
    // A whole result replaces it.
    let out = run("SELECT count(*) AS n FROM police.residents");
    assert!(out.status.success());
    assert!(std::fs::read_to_string(&notes).unwrap().starts_with("n\n"));
}

/// Review 23: values made outside any memory pool (sums of calls each under the per-call
/// bound) aborted the process, unaudited. The binary counts its heap: past the memory
/// budget the statement fails as out of resources, is recorded, and the process exits as
/// for any failed statement.
#[test]
fn a_statement_past_the_memory_budget_fails_recorded_instead_of_aborting() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    exchange::keys::init(&state.join("keys")).unwrap();
    let toml = dir.path().join("exchange.toml");
    std::fs::write(&toml, "[execution]\nmemory_budget_mib = 256\n").unwrap();
    let out = exchange(&state, common::data_root())
        .arg("--config")
        .arg(&toml)
        .args([
            "query",
            "--as",
            "hotline_analyst",
            "--purpose",
            "complaint_handling",
            "WITH t AS (SELECT * FROM (VALUES ('abcdefgh')) AS v(c)) \
             SELECT length(repeat(c, 25000000) || repeat(c, 25000000)) AS n FROM t",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("memory budget of 256 MiB"), "{err}");
    let records =
        exchange::audit::statements(exchange::audit::read_all(&state.join("audit")).unwrap());
    assert!(
        records
            .iter()
            .any(|r| r.entry.decision == exchange::audit::Decision::Failed
                && r.entry.statement.contains("25000000")),
        "{records:#?}"
    );
}

/// Review 24b N8: a reader closing the pipe (`| head -1`) ends the command quietly, after
/// the exchange sealed its audit log (exiting at the failed write left it unsealed, and
/// the next command recorded a recovery).
#[test]
fn a_closed_pipe_ends_the_command_quietly_with_the_log_sealed() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    exchange::keys::init(&state.join("keys")).unwrap();
    let mut child = exchange(&state, common::data_root())
        .args([
            "query",
            "--as",
            "police_officer",
            "--purpose",
            "law_enforcement",
            "--format",
            "csv",
            "SELECT * FROM police.residents",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(!first.is_empty());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{err}");
    assert!(err.is_empty(), "quiet: {err}");
    let verified = exchange(&state, common::data_root())
        .args(["audit", "verify"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success(), "{said}");
    assert!(!said.contains("UNSEALED"), "{said}");
}

/// Issue 14, key ceremony: a domain key made on one node travels sealed to another node's
/// transport key; both then derive the domain's pseudonyms from it (and no longer from
/// their master secrets, which differ); a node without it derives other ones.
#[test]
fn a_domain_key_handed_over_sealed_gives_both_nodes_the_same_pseudonyms() {
    let dir = tempfile::tempdir().unwrap();
    let node = |name: &str| {
        let state = dir.path().join(name);
        exchange::keys::init(&state.join("keys")).unwrap();
        state
    };
    let (a, b, c) = (node("a"), node("b"), node("c"));
    let run = |state: &std::path::Path, args: &[&str]| {
        let out = exchange(state, common::data_root())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let pseudonyms = |state: &std::path::Path| {
        run(
            state,
            &[
                "query",
                "--as",
                "hrss_analyst",
                "--purpose",
                "new_employment_services",
                "--format",
                "csv",
                "SELECT person_pseudonym FROM hrss.employment ORDER BY person_pseudonym LIMIT 5",
            ],
        )
    };
    let before = pseudonyms(&b);
    run(&a, &["keys", "domain", "create", "person"]);
    let b_public = run(&b, &["keys", "transport"]);
    assert_eq!(b_public.trim().len(), 64, "{b_public}");
    let sealed = dir.path().join("person.sealed.json");
    run(
        &a,
        &[
            "keys",
            "domain",
            "export",
            "person",
            "--to",
            b_public.trim(),
            "--out",
            sealed.to_str().unwrap(),
        ],
    );
    // Node c cannot open what was sealed to b.
    run(&c, &["keys", "transport"]);
    let a_public = a.join("keys/signing.pub");
    let from_a = a_public.to_str().unwrap();
    let refused = exchange(&c, common::data_root())
        .args([
            "keys",
            "domain",
            "import",
            sealed.to_str().unwrap(),
            "--from",
            from_a,
        ])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    // Signed by a, but b names c as the sender: refused.
    let c_public = c.join("keys/signing.pub");
    let wrong = exchange(&b, common::data_root())
        .args([
            "keys",
            "domain",
            "import",
            sealed.to_str().unwrap(),
            "--from",
            c_public.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("not signed by"));
    run(
        &b,
        &[
            "keys",
            "domain",
            "import",
            sealed.to_str().unwrap(),
            "--from",
            from_a,
        ],
    );
    assert!(run(&b, &["keys", "domain", "list"]).contains("person v1"));
    let (pa, pb, pc) = (pseudonyms(&a), pseudonyms(&b), pseudonyms(&c));
    assert_eq!(pa, pb);
    assert_ne!(pb, before);
    assert_ne!(pc, pb);
    assert!(pa.lines().count() > 3, "{pa}");
}

/// An empty result shows its column names (as a table, and as the CSV header), not `++`.
#[test]
fn an_empty_result_shows_its_columns() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let data = common::data_root();
    keys_init(&state, data);
    for (format, expected) in [("table", "| name | district |"), ("csv", "name,district")] {
        let out = exchange(&state, data)
            .args([
                "query",
                "--as",
                "market_trader",
                "--purpose",
                "data_product",
            ])
            .args(["--format", format])
            .arg("SELECT name, district FROM market.enterprises WHERE false")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(expected), "{format}: {text}");
    }
}
