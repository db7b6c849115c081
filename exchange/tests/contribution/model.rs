//! The aggregate model of `min_group` rows against ground truth: arguments from the protected table only, each row once per group and in one group, one aggregate per statement, value statistics by grant.

use super::*;

#[tokio::test]
async fn aggregate_arguments_come_from_the_protected_table_only() {
    // Finding 1: a flag computed before the join over the analyst's own table singles out
    // one resident's visits. Any value of another relation is refused as an argument,
    // however it got there.
    let (ex, _state) = open();
    let x = target().await;
    let flag = format!(
        "SELECT person_key, CASE WHEN person_id = '{x}' THEN 1 ELSE 0 END AS flag FROM civil.elderly_care"
    );
    let join = "JOIN health.visits v ON v.person_id = x.person_key";
    for sql in [
        format!("SELECT v.visit_date AS yr, sum(x.flag) FROM ({flag}) x {join} GROUP BY 1"),
        format!("WITH x AS ({flag}) SELECT v.visit_date, sum(x.flag) FROM x {join} GROUP BY 1"),
        format!(
            "SELECT v.visit_date, avg(x.flag), count(*) FROM ({flag}) x LEFT {join} GROUP BY 1"
        ),
        format!("SELECT v.visit_date, max(x.flag) FROM ({flag}) x {join} GROUP BY 1"),
        format!("SELECT v.visit_date, count(DISTINCT x.flag) FROM ({flag}) x {join} GROUP BY 1"),
        format!(
            "SELECT v.visit_date, sum(x.flag) FROM (SELECT person_key, 1 AS flag FROM civil.elderly_care WHERE person_id = '{x}'
               UNION ALL SELECT person_key, 0 FROM civil.elderly_care WHERE person_id <> '{x}') x {join} GROUP BY 1"
        ),
        // The analyst's own raw column, counted: per-year patients among chosen people.
        "SELECT v.visit_date, count(DISTINCT e.person_id) FROM civil.elderly_care e JOIN health.visits v ON v.person_id = e.person_key GROUP BY 1".to_string(),
        // Another table's visible column.
        "SELECT r.gender, sum(r.household_size), count(*) FROM police.residents r JOIN health.visits v ON v.person_id = r.person_id GROUP BY 1".to_string(),
    ] {
        refused_with(&ex, &sql, "comes from another relation").await;
    }
    // Computed row by row, or passed through a scalar subquery: not a plain column.
    for (sql, expect) in [
        (
            format!(
                "SELECT sum(CASE WHEN e.person_id = '{x}' THEN 1 ELSE 0 END) FROM civil.elderly_care e JOIN health.visits v ON v.person_id = e.person_key"
            ),
            "plain columns",
        ),
        (
            format!(
                "SELECT sum(f) FROM (SELECT CASE WHEN e.person_id = '{x}' THEN 1 ELSE 0 END AS f FROM civil.elderly_care e JOIN health.visits v ON v.person_id = e.person_key) t"
            ),
            "computed from them",
        ),
    ] {
        refused_with(&ex, &sql, expect).await;
    }
}

#[tokio::test]
async fn each_protected_row_counts_once_per_group() {
    // Finding 2: rows of one resident multiplied through a join (VALUES, the analyst's own
    // table, a CTE used twice, UNION ALL) would make that resident dominate a group. Every
    // variant must return exactly the unmultiplied result, which is the ground truth.
    let (ex, _state) = open();
    let x = target().await;
    let base = rows(&ex, BASE).await;
    let truth = raw_rows(
        "SELECT make_date(CAST(date_part('year', v.visit_date) AS INT), 1, 1) AS yr, count(*) AS n,
                round(sum(v.cost), 2) AS s, count(v.hospital) AS h
         FROM elderly e JOIN visits v ON v.person_id = e.person_id
         GROUP BY 1 HAVING count(DISTINCT v.person_id) >= 5",
    )
    .await;
    assert_eq!(base, truth, "the base query is the ground truth");
    assert!(base.len() >= 2, "{base:?}");

    let values: Vec<String> = (1..=40).map(|i| format!("({i})")).collect();
    let weighted = format!(
        "(SELECT person_key, CASE WHEN person_id = '{x}' THEN 40 ELSE 1 END AS w FROM civil.elderly_care) x
         JOIN (SELECT column1 AS n FROM (VALUES {})) m ON m.n <= x.w",
        values.join(", ")
    );
    let select = "SELECT v.visit_date AS yr, count(*) AS n, round(sum(v.cost), 2) AS s, count(v.hospital) AS h";
    for sql in [
        format!("{select} FROM {weighted} JOIN health.visits v ON v.person_id = x.person_key GROUP BY 1"),
        format!(
            "{select} FROM (SELECT person_key FROM civil.elderly_care UNION ALL SELECT person_key FROM civil.elderly_care WHERE person_id = '{x}') x
             JOIN health.visits v ON v.person_id = x.person_key GROUP BY 1"
        ),
        // The analyst's own table as the multiplier: every visit times the elderly of the
        // same care level.
        format!(
            "{select} FROM civil.elderly_care e JOIN civil.elderly_care e2 ON e2.care_level = e.care_level
             JOIN health.visits v ON v.person_id = e.person_key GROUP BY 1"
        ),
        format!(
            "WITH k AS (SELECT person_key FROM civil.elderly_care)
             {select} FROM k a JOIN k b ON a.person_key = b.person_key JOIN k c ON c.person_key = b.person_key
             JOIN health.visits v ON v.person_id = c.person_key GROUP BY 1"
        ),
        // Outer joins: the NULL rows an outer join pads in are no visits.
        format!(
            "{select} FROM civil.elderly_care e LEFT JOIN health.visits v ON v.person_id = e.person_key GROUP BY 1 HAVING count(*) > 0"
        ),
        format!(
            "{select} FROM health.visits v RIGHT JOIN civil.elderly_care e ON v.person_id = e.person_key GROUP BY 1 HAVING count(*) > 0"
        ),
    ] {
        let got = rows(&ex, &sql).await;
        assert_eq!(got, base, "{sql}");
    }

    // A weighted sum minus a plain sum over the same join, in one statement: one statement
    // aggregates the visits once.
    let sql = format!(
        "SELECT a.s - b.s AS d FROM
           (SELECT round(sum(v.cost), 2) AS s FROM {weighted} JOIN health.visits v ON v.person_id = x.person_key) a,
           (SELECT round(sum(v.cost), 2) AS s FROM civil.elderly_care e JOIN health.visits v ON v.person_id = e.person_key) b"
    );
    refused_with(&ex, &sql, "aggregate them once").await;
}

#[tokio::test]
async fn protected_rows_are_not_limited_nor_mixed_with_another_protected_table() {
    let (ex, _state) = open();
    refused_with(
        &ex,
        "SELECT count(*) FROM (SELECT v.person_id FROM health.visits v LIMIT 10) t",
        "LIMIT",
    )
    .await;
    refused_with(
        &ex,
        "SELECT count(*) FROM health.visits a JOIN health.visits b ON a.person_id = b.person_id",
        "one protected table",
    )
    .await;
}

#[tokio::test]
async fn value_statistics_of_aggregate_only_columns_need_the_grant() {
    let (ex, _state) = open();
    let from = "FROM civil.elderly_care e JOIN health.visits v ON v.person_id = e.person_key";
    for sql in [
        format!("SELECT median(v.cost) {from}"),
        format!("SELECT max(v.cost) {from}"),
        format!("SELECT approx_percentile_cont(v.cost, 0.1) {from}"),
        format!("SELECT count(DISTINCT v.diagnosis_code) {from}"),
        format!("SELECT approx_distinct(v.hospital) {from}"),
        format!("SELECT sum(DISTINCT v.cost) {from}"),
        format!("SELECT min(v.diagnosis_code) {from}"),
        format!("SELECT bool_or(v.chronic) {from}"),
    ] {
        refused_with(&ex, &sql, "value statistics").await;
    }
    // WITHIN GROUP puts the column in an ordering: refused as well.
    refused_with(
        &ex,
        &format!("SELECT approx_percentile_cont(0.1) WITHIN GROUP (ORDER BY v.cost) {from}"),
        "ORDER BY",
    )
    .await;

    // A grant that allows them.
    let config = common::config_copy();
    common::edit(
        &config.path().join("policies/grants/health.toml"),
        "min_group = 5\n",
        "min_group = 5\nvalue_statistics = true\n",
    );
    let (ex, _state) = common::open_config(config.path());
    let out = common::ok(
        &ex,
        CIVIL.0,
        CIVIL.1,
        &format!("SELECT max(v.cost) AS m, median(v.cost) AS d {from}"),
    )
    .await;
    assert_eq!(out.rows, 1);
}

#[tokio::test]
async fn a_row_counts_in_one_group_and_a_statement_aggregates_once() {
    // Review of the fix: a join gave one visit several group labels, so one aggregate held
    // "five people and X" next to "the same five people", and their difference was X.
    let (ex, _state) = open();
    let x = target().await;
    let known = five_known_with_visits(&x).await;
    let sql = format!(
        "SELECT t.g, count(*) AS n, round(sum(v.cost), 2) AS s
         FROM civil.elderly_care e
         JOIN health.visits v ON v.person_id = e.person_key
         JOIN (VALUES ('with_x'), ('without_x')) t(g)
           ON (e.person_id IN ({known}) OR (t.g = 'with_x' AND e.person_id = '{x}'))
         GROUP BY t.g"
    );
    let got = rows(&ex, &sql).await;
    // The five people are in both groups, so in neither: each group has X alone, or nobody.
    assert!(got.is_empty(), "{got:?}");
    // The same without the overlap: X's group is X alone, suppressed; the other is whole.
    let sql = format!(
        "SELECT t.g, count(*) AS n FROM civil.elderly_care e
         JOIN health.visits v ON v.person_id = e.person_key
         JOIN (VALUES ('x'), ('known')) t(g)
           ON ((t.g = 'known' AND e.person_id IN ({known})) OR (t.g = 'x' AND e.person_id = '{x}'))
         GROUP BY t.g"
    );
    let got = rows(&ex, &sql).await;
    let truth = raw_rows(&format!(
        "SELECT 'known', count(*) FROM elderly e JOIN visits v ON v.person_id = e.person_id WHERE e.person_id IN ({known})"
    ))
    .await;
    assert_eq!(got, truth);
    // Two aggregates of the visits in one statement: refused, however combined.
    let per = |name: &str, filter: &str| {
        format!(
            "(SELECT count(*) AS n FROM civil.elderly_care e JOIN health.visits v ON v.person_id = e.person_key WHERE e.person_id IN ({filter})) {name}"
        )
    };
    for sql in [
        format!(
            "SELECT a.n - b.n FROM {}, {}",
            per("a", &format!("{known}, '{x}'")),
            per("b", &known)
        ),
        format!(
            "SELECT n FROM {} UNION ALL SELECT n FROM {}",
            per("a", &known),
            per("b", &format!("'{x}'"))
        ),
        "SELECT count(*) FROM civil.elderly_care e JOIN health.visits v ON v.person_id = e.person_key
         WHERE (SELECT count(*) FROM health.visits) > 0"
            .to_string(),
    ] {
        refused_with(&ex, &sql, "aggregate them once").await;
    }
}

/// One generated aggregate query: its governed form and the policy model's result over the
/// raw files (each visit once per group, in one group only, groups of >= 5 people).
struct Generated {
    governed: String,
    model: String,
}

fn generate(
    x: &str,
    multiplier: usize,
    left: bool,
    key: usize,
    aggs: usize,
    filter: usize,
) -> Generated {
    // The analyst's side of the join, possibly repeating X's row.
    let (from_g, from_r) = match multiplier {
        0 => ("civil.elderly_care x".to_string(), "elderly x".to_string()),
        1 => (
            format!(
                "(SELECT *, CASE WHEN person_id = '{x}' THEN 3 ELSE 1 END AS w FROM civil.elderly_care) x JOIN (VALUES (1), (2), (3)) m(n) ON m.n <= x.w"
            ),
            format!(
                "(SELECT *, CASE WHEN person_id = '{x}' THEN 3 ELSE 1 END AS w FROM elderly) x JOIN (VALUES (1), (2), (3)) m(n) ON m.n <= x.w"
            ),
        ),
        2 => (
            "civil.elderly_care x JOIN civil.elderly_care x2 ON x2.care_level = x.care_level"
                .to_string(),
            "elderly x JOIN elderly x2 ON x2.care_level = x.care_level".to_string(),
        ),
        _ => (
            format!(
                "(SELECT * FROM civil.elderly_care UNION ALL SELECT * FROM civil.elderly_care WHERE person_id = '{x}') x"
            ),
            format!(
                "(SELECT * FROM elderly UNION ALL SELECT * FROM elderly WHERE person_id = '{x}') x"
            ),
        ),
    };
    let join = if left { "LEFT JOIN" } else { "JOIN" };
    let mut from_g = format!("{from_g} {join} health.visits v ON v.person_id = x.person_key");
    let mut from_r = format!("{from_r} {join} visits v ON v.person_id = x.person_id");
    let (key_g, key_r) = match key {
        0 => (None, "'all'".to_string()),
        1 => (
            Some("v.visit_date".to_string()),
            "make_date(CAST(date_part('year', v.visit_date) AS INT), 1, 1)".to_string(),
        ),
        2 => (Some("x.care_level".to_string()), "x.care_level".to_string()),
        3 => {
            let k = format!("CASE WHEN x.person_id = '{x}' THEN 'x' ELSE 'o' END");
            (Some(k.clone()), k)
        }
        _ => {
            // Overlapping labels: rows of care levels 1 and 2 are in both groups.
            let j = " JOIN (VALUES ('a'), ('b')) t(g) ON (t.g = 'a' OR x.care_level <= 2)";
            from_g.push_str(j);
            from_r.push_str(j);
            (Some("t.g".to_string()), "t.g".to_string())
        }
    };
    let (aggs_g, aggs_r, args) = if aggs == 0 {
        (
            "count(*) AS n, round(sum(v.cost), 2) AS s",
            "count(*) AS n, round(sum(cost), 2) AS s",
            "cost IS NOT NULL",
        )
    } else {
        (
            "count(v.hospital) AS h, round(avg(v.cost), 4) AS a",
            "count(hospital) AS h, round(avg(cost), 4) AS a",
            "hospital IS NOT NULL AND cost IS NOT NULL",
        )
    };
    let where_ = match filter {
        0 => "TRUE",
        1 => "v.visit_date >= DATE '2025-01-01'",
        _ => "x.lives_alone",
    };
    let governed = match &key_g {
        None => format!("SELECT {aggs_g} FROM {from_g} WHERE {where_}"),
        Some(k) => format!("SELECT {k} AS g, {aggs_g} FROM {from_g} WHERE {where_} GROUP BY 1"),
    };
    let select_g = if key_g.is_some() { "g, " } else { "" };
    let model = format!(
        "WITH j AS (
           SELECT DISTINCT {key_r} AS g, v.visit_id, v.person_id, v.cost, v.hospital
           FROM {from_r} WHERE v.visit_id IS NOT NULL AND {where_}),
         one AS (SELECT visit_id FROM j GROUP BY visit_id HAVING count(*) = 1)
         SELECT {select_g}{aggs_r} FROM j WHERE visit_id IN (SELECT visit_id FROM one)
         GROUP BY g HAVING count(DISTINCT CASE WHEN {args} THEN person_id END) >= 5"
    );
    Generated { governed, model }
}

#[tokio::test]
async fn generated_aggregates_match_the_policy_model_whatever_multiplies_the_rows() {
    // A fixed grammar of aggregate queries over the visits: four ways of repeating X's row
    // (none, VALUES weights, the analyst's own table, UNION ALL), inner and left joins, five
    // kinds of group keys (none, the visit year, the analyst's column, a flag singling out X,
    // overlapping labels), two aggregate lists and three filters. Every result must equal
    // the policy model computed independently over the raw files, and so be the same
    // whatever multiplied X's rows.
    let (ex, _state) = open();
    let x = target().await;
    let ctx = raw().await;
    let mut checked = 0;
    let mut combos = Vec::new();
    for multiplier in 0..4 {
        for left in [false, true] {
            for key in 0..5 {
                for aggs in 0..2 {
                    for filter in 0..3 {
                        combos.push((multiplier, left, key, aggs, filter));
                    }
                }
            }
        }
    }
    // Every seventh combination (7 is prime to every dimension's size, so each value of
    // each dimension meets the others).
    let mut released = 0;
    for (i, &(multiplier, left, key, aggs, filter)) in combos.iter().enumerate() {
        if i % 7 != 0 {
            continue;
        }
        let g = generate(&x, multiplier, left, key, aggs, filter);
        let got = rows(&ex, &g.governed).await;
        let model: BTreeSet<Vec<String>> = cells(
            &ctx.sql(&g.model)
                .await
                .unwrap_or_else(|e| panic!("{}\n{e}", g.model))
                .collect()
                .await
                .unwrap(),
        )
        .into_iter()
        .collect();
        assert_eq!(got, model, "{}\n-- model:\n{}", g.governed, g.model);
        released += usize::from(!got.is_empty());
        let plain = generate(&x, 0, left, key, aggs, filter);
        assert_eq!(got, rows(&ex, &plain.governed).await, "{}", g.governed);
        checked += 1;
    }
    assert_eq!(checked, combos.len().div_ceil(7));
    // Most shapes release groups; the rest are suppressed by the model itself.
    assert!(released * 2 > checked, "{released} of {checked}");
}

#[tokio::test]
async fn group_keys_that_hide_another_relation_still_put_a_row_in_one_group() {
    // Review 2: a group key holding a subquery over a joined relation (no plain column of
    // it) passed as "the protected table's own columns", which switched the one-group rule
    // off; so did a volatile key.
    let (ex, _state) = open();
    let x = target().await;
    let known = five_known_with_visits(&x).await;
    let join = format!(
        "FROM civil.elderly_care e
         JOIN health.visits v ON v.person_id = e.person_key
         JOIN (VALUES ('with_x'), ('without_x')) t(g)
           ON (e.person_id IN ({known}) OR (t.g = 'with_x' AND e.person_id = '{x}'))"
    );
    let key = "(SELECT max(u.x) FROM (VALUES ('with_x'), ('without_x')) u(x) WHERE u.x = t.g)";
    let got = rows(
        &ex,
        &format!(
            "SELECT {key} AS grp, v.visit_date, count(*) AS n {join} GROUP BY {key}, v.visit_date"
        ),
    )
    .await;
    assert!(got.is_empty(), "{got:?}");
    // A volatile key: each copy of a row draws its own group, so rows are in several.
    let sql = "SELECT random() < 0.5 AS coin, count(*) AS n FROM civil.elderly_care e
         JOIN health.visits v ON v.person_id = e.person_key
         JOIN (VALUES (1), (2), (3), (4)) m(i) ON true GROUP BY 1";
    let total: i64 = rows(&ex, sql)
        .await
        .iter()
        .map(|r| r[1].parse::<i64>().unwrap())
        .sum();
    let visits: i64 =
        raw_rows("SELECT count(*) FROM elderly e JOIN visits v ON v.person_id = e.person_id")
            .await
            .into_iter()
            .next()
            .unwrap()[0]
            .parse()
            .unwrap();
    assert!(
        total <= visits,
        "{total} > {visits}: a visit counted in two groups"
    );
}

#[tokio::test]
async fn the_protected_table_is_read_once_per_aggregate() {
    // Row numbers follow the order batches arrive in, which a repartition can change
    // between two runs of one scan: an aggregate that compared two runs dropped a quarter of
    // the orders of TPC-H SF 1 in some runs. Counting rows once per group and in one group
    // must come from a single read of the table.
    let (ex, _state) = open();
    let plan = ex
        .plan(
            CIVIL.0,
            Some(CIVIL.1),
            "SELECT e.care_level, count(*) AS n FROM civil.elderly_care e
             JOIN health.visits v ON v.person_id = e.person_key GROUP BY 1",
        )
        .await
        .unwrap()
        .logical;
    let text = plan.display_indent().to_string();
    assert_eq!(
        text.matches("TableScan: health.visits").count(),
        1,
        "{text}"
    );
    assert!(text.contains("__exchange_groups"), "{text}");
}
