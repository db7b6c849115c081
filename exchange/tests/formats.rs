//! Datasets in CSV as well as Parquet.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;

#[tokio::test]
async fn csv_datasets_are_read_with_their_declared_schema() {
    let config = common::config_copy();
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    fs::write(
        config.path().join("schemas/stats.toml"),
        r#"agency = "stats"
[[dataset]]
name = "population"
location = "stats/population.csv"
format = "csv"
[[dataset.column]]
name = "district"
type = "utf8"
[[dataset.column]]
name = "year"
type = "int32"
[[dataset.column]]
name = "people"
type = "int64"
"#,
    )
    .unwrap();
    let principals = config.path().join("policies/principals.toml");
    let mut text = fs::read_to_string(&principals).unwrap();
    text.push_str("\n[[principal]]\nname = \"statistician\"\nagency = \"stats\"\npurposes = [\"public_health_statistics\"]\n");
    fs::write(&principals, text).unwrap();
    fs::create_dir_all(data.path().join("stats")).unwrap();
    fs::write(
        data.path().join("stats/population.csv"),
        "district,year,people\nhexi,2025,120\nhexi,2026,130\nnankai,2026,90\n",
    )
    .unwrap();

    let ex = exchange::Exchange::open(common::test_config(
        config.path(),
        data.path(),
        state.path(),
    ))
    .unwrap();
    let out = common::ok(
        &ex,
        "statistician",
        "public_health_statistics",
        "SELECT district, sum(people) AS n FROM stats.population WHERE year = 2026 GROUP BY district ORDER BY district",
    )
    .await;
    assert_eq!(
        common::cells(&out.batches),
        vec![vec!["hexi", "130"], vec!["nankai", "90"]]
    );
    // Not granted to anyone else.
    let r = common::refused(
        &ex,
        "hrss_analyst",
        Some("new_employment_services"),
        "SELECT * FROM stats.population",
    )
    .await;
    assert!(r.contains("not found or not granted"));
}
