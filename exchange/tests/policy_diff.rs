//! `exchange policy diff`: crafted before/after pairs (a column made plain, a new linkage, a
//! narrowed grant, an expired one, a new purpose), a git revision pair, the markdown report
//! and the exit statuses CI relies on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{config_copy, edit};

/// `exchange --config-dir CONFIG policy diff ARGS`: (exit code, stdout, stderr).
fn diff(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_exchange"))
        .arg("--config-dir")
        .arg(config)
        .args(["policy", "diff"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn grants(config: &Path, agency: &str) -> std::path::PathBuf {
    config.join(format!("policies/grants/{agency}.toml"))
}

#[test]
fn the_same_policy_changes_nothing() {
    let config = config_copy();
    let c = config.path();
    let (code, out, err) = diff(c, &[c.to_str().unwrap(), c.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("no change in what any principal may see"),
        "{out}"
    );
}

#[test]
fn a_column_made_plain_is_flagged_first_and_fails_the_check() {
    let old = config_copy();
    let new = config_copy();
    // hrss analysts' phone: masked -> plain; and health loses birth_date.
    edit(
        &grants(new.path(), "police"),
        "phone = \"mask(keep_first_last, 3, 4)\"",
        "phone = \"plain\"",
    );
    let text = std::fs::read_to_string(grants(new.path(), "police")).unwrap();
    let health = text.find("id = \"residents-health-statistics\"").unwrap();
    let (head, tail) = text.split_at(health);
    std::fs::write(
        grants(new.path(), "police"),
        format!(
            "{head}{}",
            tail.replacen("birth_date = \"mask(year_only)\"\n", "", 1)
        ),
    )
    .unwrap();
    let (o, n) = (old.path().to_str().unwrap(), new.path().to_str().unwrap());
    let (code, out, err) = diff(old.path(), &[o, n]);
    assert_eq!(
        code, 1,
        "newly exposed plain PII fails by default:\n{out}{err}"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains("1 newly exposed plain PII"), "{out}");
    assert!(
        lines[1].starts_with("! PLAIN PII")
            && lines[1].contains("hrss_analyst / new_employment_services / police.residents: phone: mask(keep_first_last, 3, 4) -> plain"),
        "the flagged change comes first:\n{out}"
    );
    assert!(
        out.contains("- narrower  health_analyst / public_health_statistics / police.residents: birth_date: mask(year_only) -> (none)"),
        "{out}"
    );
    // Only hrss and health changed: nobody else is listed.
    assert!(!out.contains("civil_analyst"), "{out}");
    let (code, md, _) = diff(
        old.path(),
        &[o, n, "--format", "markdown", "--fail-on", "never"],
    );
    assert_eq!(code, 0);
    assert!(md.starts_with("### Policy diff"), "{md}");
    assert!(md.contains("| **PLAIN PII** | hrss_analyst | new_employment_services | police.residents | phone | mask(keep_first_last, 3, 4) | plain |"), "{md}");
    // The reverse direction narrows only: no exposure.
    let (code, out, _) = diff(old.path(), &[n, o]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("wider") && !out.contains("PLAIN PII"), "{out}");
    let (code, _, _) = diff(old.path(), &[n, o, "--fail-on", "widening"]);
    assert_eq!(code, 1, "birth_date comes back: wider");
}

#[test]
fn a_new_linkage_and_a_new_purpose_are_reported() {
    let old = config_copy();
    let new = config_copy();
    // Before: civil analysts got no person key from the police; after (the demo's policy),
    // they hold their own residents' ids plain and receive police join keys of the domain.
    edit(
        &grants(old.path(), "police"),
        "person_id = \"join_key(person)\"\nname = \"mask(name_cn)\"",
        "name = \"mask(name_cn)\"",
    );
    // After: the hotline analyst may also declare elderly_care_planning.
    edit(
        &new.path().join("policies/principals.toml"),
        "purposes = [\"complaint_handling\"]",
        "purposes = [\"complaint_handling\", \"elderly_care_planning\"]",
    );
    let (o, n) = (old.path().to_str().unwrap(), new.path().to_str().unwrap());
    let (code, out, err) = diff(old.path(), &[o, n]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.lines().any(|l| l.starts_with("! LINKAGE")
            && l.contains(
                "civil_analyst / elderly_care_planning / police.residents: identity domain person"
            )),
        "{out}"
    );
    assert!(
        out.contains("+ wider     hotline_analyst: purposes: complaint_handling -> complaint_handling, elderly_care_planning"),
        "{out}"
    );
}

#[test]
fn an_expired_grant_is_lost_on_the_day_given() {
    let config = config_copy();
    let c = config.path().to_str().unwrap();
    // The hrss grant of police.residents ends 2027-06-30: between a day before and a day
    // after, nothing changes in the files, but --on decides which day both are read on.
    let (code, out, _) = diff(config.path(), &[c, c, "--on", "2027-07-01"]);
    assert_eq!(code, 0, "{out}");
    let old = config_copy();
    edit(
        &grants(old.path(), "police"),
        "expires = 2027-06-30",
        "expires = 2027-12-31",
    );
    let (code, out, _) = diff(
        config.path(),
        &[
            old.path().to_str().unwrap(),
            c,
            "--on",
            "2027-07-01",
            "--fail-on",
            "any",
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("- narrower  hrss_analyst / new_employment_services / police.residents: table: granted by police/residents-hrss-employment@"),
        "{out}"
    );
}

#[test]
fn git_revisions_are_versions() {
    let repo = tempfile::tempdir().unwrap();
    let config = repo.path().join("city");
    common::copy_dir(
        &common::repo_root().join("schemas"),
        &config.join("schemas"),
    );
    common::copy_dir(
        &common::repo_root().join("policies"),
        &config.join("policies"),
    );
    let git = |args: &[&str]| {
        let ok = Command::new("git")
            .arg("-C")
            .arg(repo.path())
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.org",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "before"]);
    edit(
        &grants(&config, "police"),
        "phone = \"mask(keep_first_last, 3, 4)\"",
        "phone = \"plain\"",
    );
    git(&["commit", "-q", "-a", "-m", "after"]);
    let (code, out, err) = diff(&config, &["HEAD~1", "HEAD"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("! PLAIN PII") && out.contains("hrss_analyst"),
        "{out}"
    );
    // The working tree against a revision: NEW defaults to the config dir as it is.
    let (code, out, _) = diff(&config, &["HEAD"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no change"), "{out}");
    let (code, _, err) = diff(&config, &["no-such-revision"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("'no-such-revision' is neither a directory nor a git revision"),
        "{err}"
    );
}
