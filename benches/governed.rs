//! What governance costs: governed queries next to raw DataFusion, hand-written masking SQL
//! and DuckDB, measured side by side in one run.
//!
//! Run: `cargo bench --bench governed` (all workloads and scales), or with arguments after
//! `--`: `--workload demo|tpch`, `--scale small|large`, `--runs N`, `--tpch-large-sf F`,
//! `--demo-large-scale S`, `--query ID`, `--set key=value` (a DataFusion setting for the
//! `raw` and `hand` engines, to try one before it goes into `exchange::tuning`). Prints markdown tables and writes
//! `target/bench-governed.json`. For the DuckDB column, run `benches/setup-peers.sh` once
//! (a Python venv with the `duckdb` package under `target/bench-venv`); without it the
//! column is skipped with a note.
//!
//! Workloads (data generated once under `target/bench-data`, reused afterwards):
//! - demo city (scale 1 = 100,000 residents; large = scale 100, about 1 GB of Parquet):
//!   the showcase queries as their principals, and an export-style detail query;
//! - TPC-H (tpchgen, SF 0.1 and SF 1) under `benches/tpch` (a policy of the bench's own):
//!   a masked detail join, a 3-way join-aggregate with a group threshold, and a join on
//!   pseudonymised keys.
//!
//! Engines, each query in its own worker process (this binary with `--worker`, or
//! `benches/duckdb_worker.py`) so that peak RSS is per query and engine:
//! - `exchange`: `Exchange::execute` as the principal (plan, enforce, run, digest, audit);
//! - `raw`: DataFusion on the same files, the same SQL with raw columns and no policy,
//!   with the exchange's tuned settings (`exchange::tuning`);
//! - `df-defaults`: the same as `raw` with DataFusion's default settings;
//! - `hand`: DataFusion with hand-written SQL applying the same masks, row filter and
//!   group threshold with built-in functions; keyed pseudonyms (DataFusion has no HMAC)
//!   through the exchange's pseudonym function registered as a plain UDF, so that its
//!   result must equal the exchange's, which the bench checks;
//! - `duckdb`: DuckDB with the hand-written SQL (SHA-256 of a salted key for the
//!   pseudonym, truncated to the same 32 hex characters).
//!
//! Timing: rounds alternate the engines (rotating which goes first); the first round is
//! a warm-up; median of the remaining runs with min-max. Times are measured inside each
//! worker around planning plus execution plus collecting the whole result as Arrow.
//! Threads: DataFusion and DuckDB both use every core of the machine.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use exchange::{Exchange, ExchangeConfig};

type Error = Box<dyn std::error::Error + Send + Sync>;

const DEMO_SEED: u64 = 20261126;

/// `--set` settings, handed to the workers in `EXCHANGE_BENCH_SET`.
static SETTINGS: std::sync::OnceLock<String> = std::sync::OnceLock::new();

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Workload {
    Demo,
    Tpch,
}

/// One engine's SQL of a query, relative to the one before it (governed, raw, hand-written,
/// DuckDB).
#[derive(Clone, Copy)]
enum Text {
    /// The previous engine's SQL runs unchanged.
    Same,
    /// Its own text.
    Sql(&'static str),
    /// Not measured on this engine.
    Skip,
}

impl Text {
    fn resolve(self, previous: Option<&'static str>) -> Option<&'static str> {
        match self {
            Text::Same => previous,
            Text::Sql(s) => Some(s),
            Text::Skip => None,
        }
    }
}

struct Query {
    id: &'static str,
    workload: Workload,
    title: &'static str,
    principal: &'static str,
    purpose: &'static str,
    /// As the principal writes it.
    governed: &'static str,
    /// The same question on the raw tables, no policy.
    raw: Text,
    /// The policy applied by hand with built-in functions, where expressible.
    hand: Text,
    /// The hand-written SQL for DuckDB (pseudonyms as salted SHA-256).
    duck: Text,
}

impl Query {
    fn raw_sql(&self) -> &'static str {
        self.raw
            .resolve(Some(self.governed))
            .unwrap_or(self.governed)
    }

    fn hand_sql(&self) -> Option<&'static str> {
        self.hand.resolve(Some(self.raw_sql()))
    }

    fn duck_sql(&self) -> Option<&'static str> {
        self.duck.resolve(self.hand_sql())
    }
}

const QUERIES: &[Query] = &[
    // Demo city: the showcases (demo-city.md) whose data is the agencies' datasets.
    Query {
        id: "civil-elderly",
        workload: Workload::Demo,
        title: "civil: elderly living alone x visits (join keys, row filter, threshold)",
        principal: "civil_analyst",
        purpose: "elderly_care_planning",
        // The showcase: the visits are aggregated on their own (docs/aggregates.md).
        governed: "WITH alone AS (
  SELECT r.district, count(*) AS living_alone FROM civil.elderly_care e
  JOIN police.residents r ON e.person_key = r.person_id WHERE e.lives_alone GROUP BY r.district
), visits AS (
  SELECT r.district, count(*) AS visits, round(avg(v.cost), 1) AS avg_visit_cost
  FROM civil.elderly_care e JOIN police.residents r ON e.person_key = r.person_id
  JOIN health.visits v ON v.person_id = r.person_id WHERE e.lives_alone GROUP BY r.district
)
SELECT a.district, a.living_alone, v.visits, v.avg_visit_cost
FROM alone a LEFT JOIN visits v ON v.district = a.district ORDER BY a.district",
        raw: Text::Sql("WITH alone AS (
  SELECT r.district, count(*) AS living_alone FROM civil.elderly_care e
  JOIN police.residents r ON e.person_id = r.person_id WHERE e.lives_alone GROUP BY r.district
), visits AS (
  SELECT r.district, count(*) AS visits, round(avg(v.cost), 1) AS avg_visit_cost
  FROM civil.elderly_care e JOIN police.residents r ON e.person_id = r.person_id
  JOIN health.visits v ON v.person_id = r.person_id WHERE e.lives_alone GROUP BY r.district
)
SELECT a.district, a.living_alone, v.visits, v.avg_visit_cost
FROM alone a LEFT JOIN visits v ON v.district = a.district ORDER BY a.district"),
        hand: Text::Skip,
        duck: Text::Skip,
    },
    Query {
        id: "hrss-wages",
        workload: Workload::Demo,
        title: "hrss: platform workers per district, median wage (pseudonym join)",
        principal: "hrss_analyst",
        purpose: "new_employment_services",
        governed: "SELECT r.district, count(*) AS platform_workers, median(e.monthly_wage) AS median_wage
FROM hrss.employment e JOIN police.residents r ON e.person_pseudonym = r.person_id
WHERE e.job_type IN ('platform_delivery', 'ride_hailing')
GROUP BY r.district ORDER BY r.district",
        raw: Text::Sql("SELECT r.district, count(*) AS platform_workers, median(e.monthly_wage) AS median_wage
FROM hrss.employment e JOIN police.residents r ON e.person_id = r.person_id
WHERE e.job_type IN ('platform_delivery', 'ride_hailing')
GROUP BY r.district ORDER BY r.district"),
        hand: Text::Same,
        duck: Text::Same,
    },
    Query {
        id: "health-decades",
        workload: Workload::Demo,
        title: "health: chronic visits per birth decade (join key, year_only)",
        principal: "health_analyst",
        purpose: "public_health_statistics",
        governed: "SELECT CAST(floor(date_part('year', r.birth_date) / 10) * 10 AS INT) AS birth_decade,
       count(*) AS chronic_visits, count(DISTINCT v.person_id) AS patients
FROM health.visits v JOIN police.residents r ON v.person_key = r.person_id
WHERE v.chronic GROUP BY 1 ORDER BY 1",
        raw: Text::Sql("SELECT CAST(floor(date_part('year', r.birth_date) / 10) * 10 AS INT) AS birth_decade,
       count(*) AS chronic_visits, count(DISTINCT v.person_id) AS patients
FROM health.visits v JOIN police.residents r ON v.person_id = r.person_id
WHERE v.chronic GROUP BY 1 ORDER BY 1"),
        hand: Text::Same,
        duck: Text::Same,
    },
    Query {
        id: "hotline-districts",
        workload: Workload::Demo,
        title: "hotline: tickets per category and caller district (phone join key)",
        principal: "hotline_analyst",
        purpose: "complaint_handling",
        governed: "SELECT t.category, r.district AS caller_district, count(*) AS tickets
FROM hotline.tickets t JOIN police.residents r ON t.caller_key = r.phone
WHERE t.category IN ('noise', 'heating')
GROUP BY t.category, r.district ORDER BY t.category, r.district",
        raw: Text::Sql("SELECT t.category, r.district AS caller_district, count(*) AS tickets
FROM hotline.tickets t JOIN police.residents r ON t.caller_phone = r.phone
WHERE t.category IN ('noise', 'heating')
GROUP BY t.category, r.district ORDER BY t.category, r.district"),
        hand: Text::Same,
        duck: Text::Same,
    },
    Query {
        id: "market-product",
        workload: Workload::Demo,
        title: "market: active enterprises per industry and district (round_num)",
        principal: "market_trader",
        purpose: "data_product",
        governed: "SELECT industry, district, count(*) AS enterprises,
       sum(registered_capital) AS capital_rounded
FROM market.enterprises
WHERE status = 'active' AND industry IN ('logistics', 'software')
GROUP BY industry, district ORDER BY industry, district",
        raw: Text::Same,
        hand: Text::Skip,
        duck: Text::Skip,
    },
    Query {
        id: "hrss-detail",
        workload: Workload::Demo,
        title: "hrss: export-style detail, every visible column of residents x employment",
        principal: "hrss_analyst",
        purpose: "new_employment_services",
        governed: "SELECT r.*, e.employer_name, e.job_type, e.monthly_wage, e.insured_months
FROM hrss.employment e JOIN police.residents r ON e.person_pseudonym = r.person_id",
        raw: Text::Sql("SELECT r.person_id, r.name, r.gender, r.birth_date, r.phone, r.district,
       e.employer_name, e.job_type, e.monthly_wage, e.insured_months
FROM hrss.employment e JOIN police.residents r ON e.person_id = r.person_id"),
        hand: Text::Sql(
            "SELECT pseudonym(r.person_id, 'person') AS person_id,
       CASE WHEN left(r.name, 2) IN ('欧阳', '司马', '诸葛', '上官', '东方', '皇甫', '尉迟', '公孙', '慕容', '长孙', '宇文', '司徒', '夏侯', '轩辕', '令狐', '端木', '独孤', '南宫', '西门', '百里', '呼延', '万俟', '单于', '闻人', '申屠', '澹台', '公冶', '太史', '濮阳', '钟离') AND character_length(r.name) > 2
            THEN concat(left(r.name, 2), repeat('*', character_length(r.name) - 2))
            ELSE concat(left(r.name, 1), repeat('*', character_length(r.name) - 1)) END AS name,
       r.gender, CAST(date_trunc('year', r.birth_date) AS DATE) AS birth_date,
       concat(left(r.phone, 3), repeat('*', character_length(r.phone) - 7), right(r.phone, 4)) AS phone,
       r.district, e.employer_name, e.job_type, e.monthly_wage, e.insured_months
FROM hrss.employment e JOIN police.residents r ON e.person_id = r.person_id",
        ),
        duck: Text::Sql(
            "SELECT left(sha256(concat('bench-salt', r.person_id)), 32) AS person_id,
       CASE WHEN left(r.name, 2) IN ('欧阳', '司马', '诸葛', '上官', '东方', '皇甫', '尉迟', '公孙', '慕容', '长孙', '宇文', '司徒', '夏侯', '轩辕', '令狐', '端木', '独孤', '南宫', '西门', '百里', '呼延', '万俟', '单于', '闻人', '申屠', '澹台', '公冶', '太史', '濮阳', '钟离') AND length(r.name) > 2
            THEN concat(left(r.name, 2), repeat('*', length(r.name) - 2))
            ELSE concat(left(r.name, 1), repeat('*', length(r.name) - 1)) END AS name,
       r.gender, CAST(date_trunc('year', r.birth_date) AS DATE) AS birth_date,
       concat(left(r.phone, 3), repeat('*', length(r.phone) - 7), right(r.phone, 4)) AS phone,
       r.district, e.employer_name, e.job_type, e.monthly_wage, e.insured_months
FROM hrss.employment e JOIN police.residents r ON e.person_id = r.person_id",
        ),
    },
    // TPC-H under benches/tpch: one agency's tables read by another's analysts.
    Query {
        id: "tpch-detail",
        workload: Workload::Tpch,
        title: "TPC-H masked detail join: pseudonym, name and phone masks, segment row filter",
        principal: "tpch_analyst",
        purpose: "benchmark",
        governed: "SELECT c.customer_ref, c.c_name, c.c_phone, o.o_orderkey, o.o_orderdate, o.o_totalprice
FROM sales.orders o JOIN sales.customer c ON o.o_custkey = c.c_custkey",
        raw: Text::Sql("SELECT c.c_custkey, c.c_name, c.c_phone, o.o_orderkey, o.o_orderdate, o.o_totalprice
FROM sales.orders o JOIN sales.customer c ON o.o_custkey = c.c_custkey"),
        hand: Text::Sql(
            "SELECT pseudonym(CAST(c.c_custkey AS VARCHAR), 'customer') AS customer_ref,
       concat(left(c.c_name, 1), repeat('*', character_length(c.c_name) - 1)) AS c_name,
       concat(left(c.c_phone, 3), repeat('*', character_length(c.c_phone) - 7), right(c.c_phone, 4)) AS c_phone,
       o.o_orderkey, o.o_orderdate, o.o_totalprice
FROM sales.orders o JOIN sales.customer c ON o.o_custkey = c.c_custkey
WHERE c.c_mktsegment = 'BUILDING'",
        ),
        duck: Text::Sql(
            "SELECT left(sha256(concat('bench-salt', c.c_custkey)), 32) AS customer_ref,
       concat(left(c.c_name, 1), repeat('*', length(c.c_name) - 1)) AS c_name,
       concat(left(c.c_phone, 3), repeat('*', length(c.c_phone) - 7), right(c.c_phone, 4)) AS c_phone,
       o.o_orderkey, o.o_orderdate, o.o_totalprice
FROM sales.orders o JOIN sales.customer c ON o.o_custkey = c.c_custkey
WHERE c.c_mktsegment = 'BUILDING'",
        ),
    },
    Query {
        id: "tpch-join-agg",
        workload: Workload::Tpch,
        title: "TPC-H orders with returned lines by nation and year, each order once, groups of >= 20 customers",
        principal: "tpch_statistician",
        purpose: "benchmark",
        // The orders are the protected rows (min_group = 20): the join with lineitem repeats
        // an order per returned line, and the exchange counts it once (docs/aggregates.md).
        governed: "SELECT c.c_nationkey, date_part('year', o.o_orderdate) AS o_year, count(*) AS orders,
       sum(o.o_totalprice) AS gross, avg(o.o_totalprice) AS avg_price
FROM sales.orders o
JOIN sales.customer c ON o.o_custkey = c.c_custkey
JOIN sales.lineitem l ON l.l_orderkey = o.o_orderkey
WHERE l.l_returnflag = 'R'
GROUP BY 1, 2 ORDER BY 1, 2",
        raw: Text::Same,
        // What a careful engineer writes by hand: each order once (it has one customer, so
        // one group), groups of >= 20 customers.
        hand: Text::Sql(
            "SELECT c_nationkey, o_year, count(*) AS orders, sum(o_totalprice) AS gross,
       avg(o_totalprice) AS avg_price
FROM (SELECT DISTINCT c.c_nationkey, date_part('year', o.o_orderdate) AS o_year, o.o_orderkey,
             o.o_custkey, o.o_totalprice
      FROM sales.orders o
      JOIN sales.customer c ON o.o_custkey = c.c_custkey
      JOIN sales.lineitem l ON l.l_orderkey = o.o_orderkey
      WHERE l.l_returnflag = 'R') t
GROUP BY 1, 2
HAVING count(DISTINCT o_custkey) FILTER (WHERE o_totalprice IS NOT NULL) >= 20
ORDER BY 1, 2",
        ),
        duck: Text::Same,
    },
    Query {
        id: "tpch-pseudonym-join",
        workload: Workload::Tpch,
        title: "TPC-H join on pseudonymised keys (both sides tokenised), segment row filter",
        principal: "tpch_analyst",
        purpose: "benchmark",
        governed: "SELECT o.customer_ref, c.c_name, o.o_orderkey, o.o_totalprice
FROM sales.orders o JOIN sales.customer c ON o.customer_ref = c.customer_ref",
        raw: Text::Sql("SELECT o.o_custkey, c.c_name, o.o_orderkey, o.o_totalprice
FROM sales.orders o JOIN sales.customer c ON o.o_custkey = c.c_custkey"),
        hand: Text::Sql(
            "SELECT o.customer_ref,
       concat(left(c.c_name, 1), repeat('*', character_length(c.c_name) - 1)) AS c_name,
       o.o_orderkey, o.o_totalprice
FROM (SELECT pseudonym(CAST(o_custkey AS VARCHAR), 'customer') AS customer_ref, o_orderkey,
             o_totalprice FROM sales.orders) o
JOIN (SELECT pseudonym(CAST(c_custkey AS VARCHAR), 'customer') AS customer_ref, c_name
      FROM sales.customer WHERE c_mktsegment = 'BUILDING') c
  ON o.customer_ref = c.customer_ref",
        ),
        duck: Text::Sql(
            "SELECT o.customer_ref,
       concat(left(c.c_name, 1), repeat('*', length(c.c_name) - 1)) AS c_name,
       o.o_orderkey, o.o_totalprice
FROM (SELECT left(sha256(concat('bench-salt', o_custkey)), 32) AS customer_ref, o_orderkey,
             o_totalprice FROM sales.orders) o
JOIN (SELECT left(sha256(concat('bench-salt', c_custkey)), 32) AS customer_ref, c_name
      FROM sales.customer WHERE c_mktsegment = 'BUILDING') c
  ON o.customer_ref = c.customer_ref",
        ),
    },
];

const ENGINES: &[&str] = &["exchange", "raw", "df-defaults", "hand", "duckdb"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where a workload's data, configuration and keys live.
#[derive(Clone)]
struct Setup {
    config_dir: PathBuf,
    data_dir: PathBuf,
    key_dir: PathBuf,
    label: String,
    parquet_bytes: u64,
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

fn prepare_demo(scale: f64) -> Result<Setup, Error> {
    let base = repo().join("target/bench-data");
    let data_dir = base.join(format!("demo-s{scale}"));
    let done = data_dir.join(".complete");
    if !done.exists() {
        eprintln!(
            "generating the demo city at scale {scale} in {}",
            data_dir.display()
        );
        let _ = std::fs::remove_dir_all(&data_dir);
        exchange::demo::generate(&data_dir, scale, DEMO_SEED)?;
        std::fs::write(&done, "")?;
    }
    let key_dir = keys()?;
    Ok(Setup {
        config_dir: repo(),
        parquet_bytes: dir_bytes(&data_dir),
        data_dir,
        key_dir,
        label: format!("demo city, scale {scale} ({} residents)", scale * 100_000.0),
    })
}

fn keys() -> Result<PathBuf, Error> {
    let dir = repo().join("target/bench-data/keys");
    if !dir.join("secret.key").exists() {
        exchange::keys::init(&dir)?;
    }
    Ok(dir)
}

/// TPC-H tables as Parquet: decimals as float64 and text as utf8 (the catalog's types),
/// row groups of 1 Mi rows, Snappy, page statistics.
fn prepare_tpch(sf: f64) -> Result<Setup, Error> {
    use tpchgen::generators::{CustomerGenerator, LineItemGenerator, OrderGenerator};
    use tpchgen_arrow::{CustomerArrow, LineItemArrow, OrderArrow};
    let base = repo().join("target/bench-data");
    let data_dir = base.join(format!("tpch-sf{sf}"));
    let done = data_dir.join(".complete");
    if !done.exists() {
        eprintln!("generating TPC-H SF {sf} in {}", data_dir.display());
        let _ = std::fs::remove_dir_all(&data_dir);
        std::fs::create_dir_all(data_dir.join("sales"))?;
        let out = |name: &str| data_dir.join("sales").join(format!("{name}.parquet"));
        write_parquet(
            &out("customer"),
            CustomerArrow::new(CustomerGenerator::new(sf, 1, 1)).with_batch_size(65536),
        )?;
        write_parquet(
            &out("orders"),
            OrderArrow::new(OrderGenerator::new(sf, 1, 1)).with_batch_size(65536),
        )?;
        write_parquet(
            &out("lineitem"),
            LineItemArrow::new(LineItemGenerator::new(sf, 1, 1)).with_batch_size(65536),
        )?;
        std::fs::write(&done, "")?;
    }
    Ok(Setup {
        config_dir: repo().join("benches/tpch"),
        parquet_bytes: dir_bytes(&data_dir),
        data_dir,
        key_dir: keys()?,
        label: format!("TPC-H SF {sf}"),
    })
}

fn write_parquet(
    path: &Path,
    batches: impl Iterator<Item = Result<RecordBatch, arrow::error::ArrowError>>,
) -> Result<(), Error> {
    use arrow::datatypes::{Field, Schema};
    use parquet::arrow::ArrowWriter;
    use parquet::basic::Compression;
    use parquet::file::properties::WriterProperties;
    let mut writer: Option<ArrowWriter<std::fs::File>> = None;
    for batch in batches {
        let batch = batch?;
        let target = |t: &DataType| match t {
            DataType::Decimal128(_, _) => DataType::Float64,
            DataType::Utf8View => DataType::Utf8,
            t => t.clone(),
        };
        let schema = Arc::new(Schema::new(
            batch
                .schema()
                .fields()
                .iter()
                .map(|f| Field::new(f.name(), target(f.data_type()), f.is_nullable()))
                .collect::<Vec<_>>(),
        ));
        let columns = batch
            .columns()
            .iter()
            .zip(schema.fields())
            .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
            .collect::<Result<Vec<_>, _>>()?;
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        if writer.is_none() {
            let props = WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .set_max_row_group_row_count(Some(1 << 20))
                .build();
            writer = Some(ArrowWriter::try_new(
                std::fs::File::create(path)?,
                schema,
                Some(props),
            )?);
        }
        if let Some(w) = writer.as_mut() {
            w.write(&batch)?;
        }
    }
    if let Some(w) = writer {
        w.close()?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Workers

/// Tables of a workload as (qualified name, file path), for the engines without a policy.
fn raw_tables(setup: &Setup) -> Result<Vec<(String, String)>, Error> {
    let catalog = exchange::catalog::Catalog::load(&setup.config_dir.join("schemas"))?;
    Ok(catalog
        .datasets()
        .iter()
        .map(|d| (d.qualified_name(), d.resolve_location(&setup.data_dir)))
        .collect())
}

enum Runner {
    Exchange {
        exchange: Box<Exchange>,
        principal: String,
        purpose: String,
        sql: String,
    },
    DataFusion {
        ctx: SessionContext,
        sql: String,
    },
}

impl Runner {
    async fn run(&self) -> Result<Vec<RecordBatch>, Error> {
        match self {
            Runner::Exchange {
                exchange,
                principal,
                purpose,
                sql,
            } => Ok(exchange
                .execute(principal, Some(purpose), sql)
                .await?
                .batches),
            Runner::DataFusion { ctx, sql } => Ok(ctx.sql(sql).await?.collect().await?),
        }
    }
}

async fn datafusion_ctx(setup: &Setup, tuned: bool) -> Result<SessionContext, Error> {
    let config = if tuned {
        exchange::tuning::apply(SessionConfig::new())
    } else {
        SessionConfig::new()
    };
    // `--set key=value` of the driver, for trying settings on the engines without a policy.
    let mut config = config;
    if tuned && let Ok(settings) = std::env::var("EXCHANGE_BENCH_SET") {
        for kv in settings.split(';').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or("--set key=value")?;
            config.options_mut().set(k, v)?;
        }
    }
    let ctx = SessionContext::new_with_config(config);
    let tables = raw_tables(setup)?;
    for (name, path) in &tables {
        if let Some((schema, _)) = name.split_once('.') {
            ctx.sql(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .await?
                .collect()
                .await?;
        }
        ctx.register_parquet(name.as_str(), path, ParquetReadOptions::default())
            .await?;
    }
    Ok(ctx)
}

fn find_query(id: &str) -> Result<&'static Query, Error> {
    QUERIES
        .iter()
        .find(|q| q.id == id)
        .ok_or_else(|| format!("no query {id}").into())
}

/// `--worker ENGINE QUERY CONFIG_DIR DATA_DIR KEY_DIR STATE_DIR`: answer `run` and `quit`
/// on stdin.
async fn worker(args: &[String]) -> Result<(), Error> {
    let [engine, id, config_dir, data_dir, key_dir, state_dir] = args else {
        return Err("worker arguments: ENGINE QUERY CONFIG DATA KEYS STATE".into());
    };
    let q = find_query(id)?;
    let setup = Setup {
        config_dir: config_dir.into(),
        data_dir: data_dir.into(),
        key_dir: key_dir.into(),
        label: String::new(),
        parquet_bytes: 0,
    };
    let runner = match engine.as_str() {
        "exchange" => {
            let config = ExchangeConfig::new(
                setup.config_dir.clone(),
                setup.data_dir.clone(),
                state_dir.into(),
            )
            .with_key_dir(setup.key_dir.clone());
            Runner::Exchange {
                exchange: Box::new(Exchange::open(config)?),
                principal: q.principal.into(),
                purpose: q.purpose.into(),
                sql: q.governed.into(),
            }
        }
        "raw" | "df-defaults" => Runner::DataFusion {
            ctx: datafusion_ctx(&setup, engine == "raw").await?,
            sql: q.raw_sql().into(),
        },
        "hand" => {
            let ctx = datafusion_ctx(&setup, true).await?;
            // The exchange's keyed pseudonym, with the key of the principal's agency.
            let keys = exchange::keys::Keys::load(&setup.key_dir)?;
            let agency = exchange::policy::PolicySet::load(
                &setup.config_dir.join("policies"),
                &exchange::catalog::Catalog::load(&setup.config_dir.join("schemas"))?,
            )?
            .principal(q.principal)
            .map(|p| p.agency.clone())
            .ok_or("principal not found")?;
            let tokens = exchange::masking::TokenKeys::derive(
                &keys.ring,
                exchange::masking::TokenKind::Pseudonym,
                &agency,
                ["person", "customer"],
            );
            ctx.register_udf(
                exchange::masking::TokenUdf::udf(Arc::new(tokens))
                    .as_ref()
                    .clone(),
            );
            Runner::DataFusion {
                ctx,
                sql: q.hand_sql().ok_or("no hand-written SQL")?.into(),
            }
        }
        other => return Err(format!("unknown engine {other}").into()),
    };
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    let mut first = true;
    for line in stdin.lock().lines() {
        match line?.trim() {
            "run" => {
                let start = Instant::now();
                let reply = match runner.run().await {
                    Ok(batches) => {
                        let secs = start.elapsed().as_secs_f64();
                        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                        let digest = if first {
                            first = false;
                            format!("{:016x}", digest(&batches)?)
                        } else {
                            "-".into()
                        };
                        format!("ok {secs} {rows} {digest}")
                    }
                    Err(e) => format!("err {}", e.to_string().replace('\n', " ")),
                };
                writeln!(stdout, "{reply}")?;
                stdout.flush()?;
            }
            "quit" => {
                writeln!(stdout, "rss {}", peak_rss_kib())?;
                stdout.flush()?;
                return Ok(());
            }
            _ => {}
        }
    }
    Ok(())
}

/// Peak resident set size of this process (VmHWM), KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Order-independent digest of a result's values (floats to 7 significant digits, since
/// aggregation order differs between plans).
fn digest(batches: &[RecordBatch]) -> Result<u64, Error> {
    let options = FormatOptions::default();
    let mut total = 0u64;
    let mut row_text = String::new();
    for b in batches {
        let formatters = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..b.num_rows() {
            row_text.clear();
            for (c, f) in b.columns().iter().zip(&formatters) {
                if let (DataType::Float64, false) = (c.data_type(), c.is_null(row)) {
                    let v = c.as_primitive::<Float64Type>().value(row);
                    write!(row_text, "{v:.6e}|")?;
                } else {
                    write!(row_text, "{}|", f.value(row))?;
                }
            }
            // FNV-1a
            let mut h: u64 = 0xcbf29ce484222325;
            for byte in row_text.bytes() {
                h = (h ^ u64::from(byte)).wrapping_mul(0x100000001b3);
            }
            total = total.wrapping_add(h);
        }
    }
    Ok(total)
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    fn ask(&mut self, line: &str) -> Result<String, Error> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        let mut reply = String::new();
        if self.stdout.read_line(&mut reply)? == 0 {
            return Err("worker exited".into());
        }
        Ok(reply.trim().to_string())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn duckdb_python() -> Option<PathBuf> {
    let candidates = std::env::var_os("EXCHANGE_BENCH_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain([repo().join("target/bench-venv/bin/python")]);
    for python in candidates {
        let ok = Command::new(&python)
            .args(["-c", "import duckdb, pyarrow"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return Some(python);
        }
    }
    None
}

fn spawn(
    engine: &str,
    q: &Query,
    setup: &Setup,
    state: &Path,
    python: Option<&Path>,
) -> Result<Option<Worker>, Error> {
    let mut cmd = match engine {
        "duckdb" => {
            let (Some(python), Some(sql)) = (python, q.duck_sql()) else {
                return Ok(None);
            };
            let tables: BTreeMap<String, String> = raw_tables(setup)?.into_iter().collect();
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            let mut cmd = Command::new(python);
            cmd.arg(repo().join("benches/duckdb_worker.py"))
                .arg(threads.to_string())
                .arg(serde_json::to_string(&tables)?)
                .arg(sql);
            cmd
        }
        "hand" if q.hand_sql().is_none() => return Ok(None),
        _ => {
            let mut cmd = Command::new(std::env::current_exe()?);
            if let Some(settings) = SETTINGS.get() {
                cmd.env("EXCHANGE_BENCH_SET", settings);
            }
            cmd.arg("--worker")
                .arg(engine)
                .arg(q.id)
                .arg(&setup.config_dir)
                .arg(&setup.data_dir)
                .arg(&setup.key_dir)
                .arg(state.join(format!("{}-{engine}", q.id)));
            cmd
        }
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err("worker pipes".into());
    };
    Ok(Some(Worker {
        child,
        stdin,
        stdout: BufReader::new(stdout),
    }))
}

#[derive(Default, serde::Serialize)]
struct Measured {
    times: Vec<f64>,
    rows: Option<u64>,
    digest: Option<String>,
    peak_rss_mib: Option<f64>,
    error: Option<String>,
}

impl Measured {
    fn median(&self) -> Option<f64> {
        let mut v = self.times.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied()
    }
}

fn measure(
    q: &Query,
    setup: &Setup,
    engines: &[&str],
    runs: usize,
    python: Option<&Path>,
) -> Result<BTreeMap<String, Measured>, Error> {
    let state = tempfile::tempdir()?;
    let mut workers: Vec<(String, Worker)> = Vec::new();
    for e in engines {
        if let Some(w) = spawn(e, q, setup, state.path(), python)? {
            workers.push((e.to_string(), w));
        }
    }
    let mut results: BTreeMap<String, Measured> = BTreeMap::new();
    for round in 0..=runs {
        let n = workers.len();
        for i in 0..n {
            let (engine, w) = &mut workers[(i + round) % n];
            let m = results.entry(engine.clone()).or_default();
            if m.error.is_some() {
                continue;
            }
            let reply = w.ask("run")?;
            let mut parts = reply.splitn(4, ' ');
            match parts.next() {
                Some("ok") => {
                    let secs: f64 = parts.next().unwrap_or("0").parse()?;
                    let rows: u64 = parts.next().unwrap_or("0").parse()?;
                    let digest = parts.next().unwrap_or("-");
                    if round == 0 {
                        m.digest = Some(digest.to_string());
                        m.rows = Some(rows);
                    } else {
                        m.times.push(secs);
                    }
                }
                _ => m.error = Some(reply.trim_start_matches("err ").to_string()),
            }
        }
    }
    for (engine, w) in &mut workers {
        if let Ok(reply) = w.ask("quit")
            && let Some(kib) = reply.strip_prefix("rss ")
        {
            let m = results.entry(engine.clone()).or_default();
            m.peak_rss_mib = kib.trim().parse::<f64>().ok().map(|k| k / 1024.0);
        }
    }
    Ok(results)
}

fn fmt_time(m: Option<&Measured>) -> String {
    match m {
        None => "-".into(),
        Some(m) if m.error.is_some() => "error".into(),
        Some(m) => match m.median() {
            None => "-".into(),
            Some(t) => {
                let lo = m.times.iter().copied().fold(f64::MAX, f64::min);
                let hi = m.times.iter().copied().fold(0.0, f64::max);
                format!("{t:.3} ({lo:.3}-{hi:.3})")
            }
        },
    }
}

fn ratio(a: Option<&Measured>, b: Option<&Measured>) -> String {
    match (a.and_then(Measured::median), b.and_then(Measured::median)) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.first().map(String::as_str) == Some("--worker") {
        return runtime.block_on(worker(&args[1..]));
    }
    let mut workloads = vec![Workload::Demo, Workload::Tpch];
    let mut scales = vec!["small", "large"];
    let mut runs = 5usize;
    let mut tpch_large = 1.0f64;
    let mut demo_large = 100.0f64;
    let mut only: Option<String> = None;
    let mut settings: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--workload" => {
                workloads = match value()?.as_str() {
                    "demo" => vec![Workload::Demo],
                    "tpch" => vec![Workload::Tpch],
                    _ => return Err("--workload demo|tpch".into()),
                }
            }
            "--scale" => {
                scales = match value()?.as_str() {
                    "small" => vec!["small"],
                    "large" => vec!["large"],
                    _ => return Err("--scale small|large".into()),
                }
            }
            "--runs" => runs = value()?.parse()?,
            "--tpch-large-sf" => tpch_large = value()?.parse()?,
            "--demo-large-scale" => demo_large = value()?.parse()?,
            "--query" => only = Some(value()?),
            "--set" => settings.push(value()?),
            "--bench" => {}
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if !settings.is_empty() {
        let _ = SETTINGS.set(settings.join(";"));
        println!("raw and hand engines with: {}\n", settings.join(", "));
    }
    let python = duckdb_python();
    if python.is_none() {
        println!(
            "Note: DuckDB column skipped (no Python with duckdb and pyarrow; run \
             benches/setup-peers.sh or set EXCHANGE_BENCH_PYTHON).\n"
        );
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "{cores} cores; median of {runs} alternating runs after a warm-up (min-max), seconds.\n"
    );
    let mut json = Vec::new();
    for workload in &workloads {
        for scale in &scales {
            let setup = match (workload, *scale) {
                (Workload::Demo, "small") => prepare_demo(1.0)?,
                (Workload::Demo, _) => prepare_demo(demo_large)?,
                (Workload::Tpch, "small") => prepare_tpch(0.1)?,
                (Workload::Tpch, _) => prepare_tpch(tpch_large)?,
            };
            println!(
                "### {} ({:.0} MB of Parquet)\n",
                setup.label,
                setup.parquet_bytes as f64 / 1e6
            );
            println!(
                "| query | rows | exchange | raw DF | DF defaults | hand DF | DuckDB | ex/raw | ex/hand | ex/DuckDB | peak RSS MiB ex/raw/hand/DuckDB | same as hand |"
            );
            println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
            for q in QUERIES.iter().filter(|q| q.workload == *workload) {
                if only.as_deref().is_some_and(|o| o != q.id) {
                    continue;
                }
                let r = measure(q, &setup, ENGINES, runs, python.as_deref())?;
                let get = |e: &str| r.get(e);
                let rss = ["exchange", "raw", "hand", "duckdb"]
                    .iter()
                    .map(|e| {
                        get(e)
                            .and_then(|m| m.peak_rss_mib)
                            .map_or("-".into(), |v| format!("{v:.0}"))
                    })
                    .collect::<Vec<_>>()
                    .join("/");
                let same = match (get("exchange"), get("hand"), get("duckdb")) {
                    (Some(a), Some(h), d) if h.error.is_none() => {
                        let digest_ok = a.digest == h.digest;
                        let rows_ok = d.is_none_or(|d| d.rows == a.rows);
                        match (digest_ok, rows_ok) {
                            (true, true) => "yes".to_string(),
                            (false, _) => "NO: values differ".to_string(),
                            (true, false) => "NO: DuckDB row count".to_string(),
                        }
                    }
                    _ => "-".into(),
                };
                println!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    q.id,
                    get("exchange")
                        .and_then(|m| m.rows)
                        .map_or("-".into(), |r| r.to_string()),
                    fmt_time(get("exchange")),
                    fmt_time(get("raw")),
                    fmt_time(get("df-defaults")),
                    fmt_time(get("hand")),
                    fmt_time(get("duckdb")),
                    ratio(get("exchange"), get("raw")),
                    ratio(get("exchange"), get("hand")),
                    ratio(get("exchange"), get("duckdb")),
                    rss,
                    same
                );
                for (engine, m) in &r {
                    if let Some(e) = &m.error {
                        println!("|  | {engine} failed: {e} |||||||||||");
                    }
                }
                json.push(serde_json::json!({
                    "workload": setup.label, "query": q.id, "title": q.title,
                    "principal": q.principal, "engines": r,
                }));
            }
            println!();
        }
    }
    let out = repo().join("target/bench-governed.json");
    std::fs::write(&out, serde_json::to_string_pretty(&json)?)?;
    println!("written {}", out.display());
    Ok(())
}
