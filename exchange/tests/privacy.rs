//! Differential privacy (issue 18): a grant with `[grant.privacy]` releases its table only
//! through noisy COUNT, COUNT(DISTINCT person), SUM and AVG, each query charged to the
//! principal's budget (and the dataset's cap) before its result leaves, and audited with
//! the epsilon it spent. The statistician of the demo city reads health.visits so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;

use exchange::audit::read_all;

use common::{cells, config_copy, edit, open, open_config};

const STATISTICIAN: (&str, &str) = ("civil_statistician", "elderly_care_planning");
const OWNER: (&str, &str) = ("health_analyst", "public_health_statistics");
/// Two groups: no person is in more than the grant's two.
const BY_CHRONIC: &str = "SELECT chronic, count(*) AS visits, count(DISTINCT person_id) AS persons FROM health.visits GROUP BY chronic";
/// The same as its owner sees it, each person's visits bounded to the grant's five.
const BY_CHRONIC_BOUNDED: &str = "SELECT chronic, sum(least(n, 5)) AS visits, count(*) AS persons FROM (SELECT chronic, person_id, count(*) AS n FROM health.visits GROUP BY chronic, person_id) t GROUP BY chronic";

fn period() -> String {
    chrono::Utc::now().format("%Y-%m").to_string()
}

/// What `who` spent on health.visits this period, in millionths of epsilon.
fn spent(ex: &exchange::Exchange, who: &str) -> u64 {
    ex.ledger().spent(who, "health.visits", &period())
}

fn by_key(rows: Vec<Vec<String>>) -> BTreeMap<String, (i64, i64)> {
    rows.into_iter()
        .map(|r| (r[0].clone(), (r[1].parse().unwrap(), r[2].parse().unwrap())))
        .collect()
}

#[tokio::test]
async fn noisy_counts_are_near_the_truth_charged_and_audited() {
    let (ex, state) = open();
    let truth = by_key(cells(
        &ex.execute(OWNER.0, Some(OWNER.1), BY_CHRONIC_BOUNDED)
            .await
            .unwrap()
            .batches,
    ));
    let out = ex
        .execute(STATISTICIAN.0, Some(STATISTICIAN.1), BY_CHRONIC)
        .await
        .unwrap();
    let noisy = by_key(cells(&out.batches));
    // Both groups have thousands of persons, far past the noisy threshold.
    assert_eq!(
        noisy.keys().collect::<Vec<_>>(),
        truth.keys().collect::<Vec<_>>()
    );
    let mut exact = 0;
    for (group, (visits, persons)) in &noisy {
        let (tv, tp) = truth[group];
        // Scales 40 (visits: 2 groups x 5 rows x 2 statistics / 0.5) and 8 (persons): a
        // miss of 15 scales has chance below 1e-6.
        assert!((visits - tv).abs() <= 600, "{group}: {visits} vs {tv}");
        assert!((persons - tp).abs() <= 120, "{group}: {persons} vs {tp}");
        exact += i32::from(*visits == tv && *persons == tp);
    }
    assert!(exact < 2, "the counts came back exact");
    assert_eq!(spent(&ex, STATISTICIAN.0), 500_000);
    assert!(
        out.thresholds
            .iter()
            .any(|t| t.contains("differential privacy on health.visits")),
        "{:?}",
        out.thresholds
    );
    let records = read_all(&state.path().join("audit")).unwrap();
    let last = records
        .iter()
        .rev()
        .find(|r| r.entry.principal == STATISTICIAN.0)
        .unwrap();
    assert!(
        last.entry
            .privacy
            .iter()
            .any(|p| p.starts_with("health.visits: epsilon 0.5 spent (0.5 of 10 in")),
        "{:?}",
        last.entry.privacy
    );
}

#[tokio::test]
async fn explain_shows_mechanism_bounds_and_epsilon_and_spends_nothing() {
    let (ex, _state) = open();
    let out = ex
        .execute(
            STATISTICIAN.0,
            Some(STATISTICIAN.1),
            "EXPLAIN SELECT chronic, count(*), avg(cost) FROM health.visits GROUP BY chronic",
        )
        .await
        .unwrap();
    let text = cells(&out.batches)
        .into_iter()
        .map(|r| r.join(" "))
        .collect::<Vec<_>>()
        .join("\n");
    for part in [
        "differential privacy on health.visits: discrete Laplace noise, epsilon 0.5 for the query split over 4 statistic(s)",
        "COUNT(*) noise scale 80.000",
        "SUM(health.visits.cost) in [0, 5000] noise scale 400000",
        "a group is released when its noisy count of persons is at least",
        "per person at most 2 group(s), 5 row(s) per group",
        "cost clamped to [0, 5000]",
    ] {
        assert!(text.contains(part), "{part} not in\n{text}");
    }
    assert_eq!(spent(&ex, STATISTICIAN.0), 0);
}

#[tokio::test]
async fn what_is_not_a_noisy_aggregate_is_refused_and_not_charged() {
    let (ex, _state) = open();
    for (sql, expect) in [
        ("SELECT cost FROM health.visits", "health.visits"),
        (
            "SELECT max(cost) FROM health.visits",
            "max(...) is not differentially private",
        ),
        ("SELECT sum(cost + 1) FROM health.visits", "plain columns"),
        (
            "SELECT sum(c) FROM (SELECT cost * 100 AS c FROM health.visits) t",
            "computed",
        ),
        (
            "SELECT count(DISTINCT hospital) FROM health.visits",
            "counts persons only",
        ),
        // Bounds are declared per column: a renamed column has none.
        (
            "SELECT avg(c) FROM (SELECT cost AS c FROM health.visits) t",
            "needs bounds",
        ),
        (
            "SELECT (SELECT count(*) FROM health.visits) AS a, (SELECT count(*) FROM health.visits) AS b",
            "once",
        ),
        ("SELECT count(*) OVER () FROM health.visits", "window"),
        (
            "SELECT hospital, count(*) FROM health.visits GROUP BY ROLLUP (hospital)",
            "GROUPING SETS",
        ),
        (
            "SELECT count(*) FILTER (WHERE cost > 100) FROM health.visits",
            "FILTER",
        ),
        (
            "SELECT count(*) FROM health.visits a JOIN health.visits b ON a.hospital = b.hospital",
            "health.visits",
        ),
        // Review 52: a join repeats rows (the statistics count them again) and makes the
        // exact step's duration an oracle of how many rows matched, before any noise.
        (
            "SELECT count(*) FROM health.visits v CROSS JOIN civil.elderly_care e1 CROSS JOIN civil.elderly_care e2 WHERE v.cost = 1529",
            "no join may come before their aggregate",
        ),
        (
            "SELECT t.x, count(*), sum(cost) FROM health.visits v CROSS JOIN (VALUES (1), (2), (3)) t(x) GROUP BY t.x",
            "no join may come before their aggregate",
        ),
        // An outer join's padding would be one more "person".
        (
            "SELECT count(*) FROM civil.elderly_care e LEFT JOIN health.visits v ON v.person_id = e.person_id",
            "no join may come before their aggregate",
        ),
        (
            "SELECT count(NULL) FROM health.visits",
            "COUNT(NULL) counts nothing",
        ),
    ] {
        let err = ex
            .execute(STATISTICIAN.0, Some(STATISTICIAN.1), sql)
            .await
            .expect_err(sql)
            .to_string();
        assert!(err.contains(expect), "{sql}: {err}");
        assert!(err.starts_with("refused"), "{sql}: {err}");
    }
    assert_eq!(spent(&ex, STATISTICIAN.0), 0);
}

/// A budget of two queries: the third is refused (and audited), in words.
#[tokio::test]
async fn budgets_exhaust_and_refuse() {
    let config = config_copy();
    edit(
        &config.path().join("policies/grants/health.toml"),
        "budget = 10.0",
        "budget = 1.0",
    );
    let (ex, state) = open_config(config.path());
    let sql = "SELECT count(*) FROM health.visits WHERE chronic";
    for _ in 0..2 {
        ex.execute(STATISTICIAN.0, Some(STATISTICIAN.1), sql)
            .await
            .unwrap();
    }
    let err = ex
        .execute(STATISTICIAN.0, Some(STATISTICIAN.1), sql)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "the privacy budget of civil_statistician on health.visits for {} is spent: epsilon 1 of 1 used, this query needs 0.5",
            period()
        )),
        "{err}"
    );
    let records = read_all(&state.path().join("audit")).unwrap();
    let refused = records
        .iter()
        .filter(|r| {
            r.entry
                .reason
                .as_deref()
                .is_some_and(|x| x.contains("privacy budget"))
        })
        .count();
    assert_eq!(refused, 1);
}

/// Twelve statements at once against a budget of four: four are answered, however they
/// interleave.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_statements_cannot_overspend() {
    let config = config_copy();
    edit(
        &config.path().join("policies/grants/health.toml"),
        "budget = 10.0",
        "budget = 2.0",
    );
    let (ex, _state) = open_config(config.path());
    let ex = std::sync::Arc::new(ex);
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let ex = std::sync::Arc::clone(&ex);
        tasks.push(tokio::spawn(async move {
            ex.execute(
                STATISTICIAN.0,
                Some(STATISTICIAN.1),
                "SELECT hospital, count(*) FROM health.visits GROUP BY hospital",
            )
            .await
            .is_ok()
        }));
    }
    let mut answered = 0;
    for t in tasks {
        answered += usize::from(t.await.unwrap());
    }
    assert_eq!(answered, 4);
    assert_eq!(spent(&ex, STATISTICIAN.0), 2_000_000);
}

/// A grant's privacy that cannot be applied is an error at load, at its line.
#[test]
fn a_malformed_privacy_is_an_error_at_its_line() {
    for (from, to, expect) in [
        (
            "budget = 10.0",
            "budget = 0.1",
            "budget is smaller than epsilon_per_query",
        ),
        (
            "cap = 40.0",
            "cap = 5.0",
            "cap (all principals together) is smaller than budget",
        ),
        (
            "period = \"month\"",
            "period = \"week\"",
            "period must be day, month or year",
        ),
        (
            "max_rows = 5",
            "max_rows = 0",
            "max_rows must be between 1 and 1000",
        ),
        (
            "bounds = { cost = [0, 5000] }",
            "bounds = { hospital = [0, 5] }",
            "not a plain numeric column",
        ),
        (
            "bounds = { cost = [0, 5000] }",
            "bounds = { cost = [5000, 0] }",
            "low <= high",
        ),
        ("delta = 1e-6", "delta = 0.5", "delta must be between"),
    ] {
        let config = config_copy();
        edit(&config.path().join("policies/grants/health.toml"), from, to);
        let (code, out) = common::policy_check(config.path());
        assert_ne!(code, 0, "{to}: {out}");
        assert!(out.contains(expect), "{to}: {out}");
        assert!(out.contains("health.toml:"), "{to}: {out}");
    }
}

/// The result names each noisy column's scale (Arrow field metadata), and the analyst can
/// ask what is left: `privacy_budget('agency.table')` in SQL, `exchange budget` at the shell.
#[tokio::test]
async fn results_carry_their_noise_scale_and_the_budget_left_is_visible() {
    let (ex, state) = open();
    let out = ex
        .execute(
            STATISTICIAN.0,
            Some(STATISTICIAN.1),
            "SELECT hospital, count(*) AS visits FROM health.visits GROUP BY hospital",
        )
        .await
        .unwrap();
    let visits = out.schema.field_with_name("visits").unwrap();
    assert_eq!(
        visits
            .metadata()
            .get("exchange.noise_scale")
            .map(String::as_str),
        Some("40.000"),
        "{:?}",
        visits.metadata()
    );
    assert!(
        out.schema
            .field_with_name("hospital")
            .unwrap()
            .metadata()
            .is_empty()
    );
    let left = ex
        .execute(
            STATISTICIAN.0,
            Some(STATISTICIAN.1),
            "SELECT privacy_budget('health.visits') AS left",
        )
        .await
        .unwrap();
    assert_eq!(cells(&left.batches), vec![vec!["9.5".to_string()]]);
    // A table the principal does not read under privacy: the same words, granted or not.
    for table in ["police.residents", "civil.elderly_care"] {
        let err = ex
            .execute(
                STATISTICIAN.0,
                Some(STATISTICIAN.1),
                &format!("SELECT privacy_budget('{table}')"),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!(
                "{table}: civil_statistician reads no such table under differential privacy"
            )),
            "{err}"
        );
    }
    drop(ex);
    let shell = std::process::Command::new(env!("CARGO_BIN_EXE_exchange"))
        .arg("--config-dir")
        .arg(common::repo_root())
        .arg("--data-root")
        .arg(common::data_root())
        .arg("--state-dir")
        .arg(state.path())
        .args(["budget", "--as", "civil_statistician"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&shell.stdout);
    assert!(shell.status.success(), "{text}");
    assert!(
        text.contains("health.visits  grant health/visits-civil-statistics-dp@2026-11-01"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{}: epsilon 0.5 of 10 spent, 9.5 left (19 queries at 0.5 each); all principals: 0.5 of 40",
            period()
        )),
        "{text}"
    );
}

/// Two statisticians cannot pool their budgets: the dataset's cap counts them together.
#[tokio::test]
async fn the_cap_counts_every_principal_together() {
    let config = config_copy();
    edit(
        &config.path().join("policies/grants/health.toml"),
        "cap = 40.0",
        "cap = 10.0",
    );
    let principals = config.path().join("policies/principals.toml");
    let text = std::fs::read_to_string(&principals).unwrap();
    std::fs::write(
        &principals,
        format!(
            "{text}\n[[principal]]\nname = \"civil_statistician_2\"\nagency = \"civil\"\nroles = [\"statistician\"]\npurposes = [\"elderly_care_planning\"]\n"
        ),
    )
    .unwrap();
    let (ex, _state) = open_config(config.path());
    let sql = "SELECT count(*) FROM health.visits";
    let mut answered = 0;
    for i in 0..30 {
        let who = if i % 2 == 0 {
            STATISTICIAN.0
        } else {
            "civil_statistician_2"
        };
        match ex.execute(who, Some(STATISTICIAN.1), sql).await {
            Ok(_) => answered += 1,
            Err(e) => assert!(
                e.to_string().contains("across all principals is spent"),
                "{e}"
            ),
        }
    }
    // 10 / 0.5: twenty answers in all, ten each, though each alone could have had twenty.
    assert_eq!(answered, 20);
    assert_eq!(spent(&ex, "civil_statistician_2"), 5_000_000);
}

/// Review 53: a statement that fails while reading (here, past its memory limit, which the
/// rows decide) keeps its charge: a refunded failure would be a free, exact answer.
#[tokio::test]
async fn a_failure_while_reading_keeps_its_charge() {
    let (ex, _state) = common::open_with(|c| {
        c.memory_limit = Some(64 * 1024);
        c.target_partitions = Some(1);
    });
    let err = ex
        .execute(
            STATISTICIAN.0,
            Some(STATISTICIAN.1),
            "SELECT hospital, cost, count(*) FROM health.visits GROUP BY hospital, cost",
        )
        .await
        .expect_err("64 KiB cannot hold the exact step");
    assert!(err.to_string().contains("memory"), "{err}");
    assert_eq!(spent(&ex, STATISTICIAN.0), 500_000);
}
