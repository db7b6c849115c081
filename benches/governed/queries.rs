//! The measured queries: as each principal writes them, on the raw tables, with the policy written by hand, and for DuckDB.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Workload {
    Demo,
    Tpch,
}

/// One engine's SQL of a query, relative to the one before it (governed, raw, hand-written,
/// DuckDB).
#[derive(Clone, Copy)]
pub(crate) enum Text {
    /// The previous engine's SQL runs unchanged.
    Same,
    /// Its own text.
    Sql(&'static str),
    /// Not measured on this engine.
    Skip,
}

impl Text {
    pub(crate) fn resolve(self, previous: Option<&'static str>) -> Option<&'static str> {
        match self {
            Text::Same => previous,
            Text::Sql(s) => Some(s),
            Text::Skip => None,
        }
    }
}

/// `tpch-join-agg` as a careful engineer writes it by hand: each order once (it has one
/// customer, so one group), groups of >= 20 customers.
const HAND_JOIN_AGG: &str =
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
ORDER BY 1, 2";

pub(crate) struct Query {
    pub(crate) id: &'static str,
    pub(crate) workload: Workload,
    pub(crate) title: &'static str,
    pub(crate) principal: &'static str,
    pub(crate) purpose: &'static str,
    /// As the principal writes it.
    pub(crate) governed: &'static str,
    /// The same question on the raw tables, no policy.
    pub(crate) raw: Text,
    /// The policy applied by hand with built-in functions, where expressible.
    pub(crate) hand: Text,
    /// The hand-written SQL for DuckDB (pseudonyms as salted SHA-256).
    pub(crate) duck: Text,
}

impl Query {
    pub(crate) fn raw_sql(&self) -> &'static str {
        self.raw
            .resolve(Some(self.governed))
            .unwrap_or(self.governed)
    }

    pub(crate) fn hand_sql(&self) -> Option<&'static str> {
        self.hand.resolve(Some(self.raw_sql()))
    }

    pub(crate) fn duck_sql(&self) -> Option<&'static str> {
        self.duck.resolve(self.hand_sql())
    }
}

pub(crate) const QUERIES: &[Query] = &[
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
        hand: Text::Sql(HAND_JOIN_AGG),
        duck: Text::Same,
    },
    Query {
        id: "tpch-join-agg-chain",
        workload: Workload::Tpch,
        title: "tpch-join-agg written lineitem first: o_custkey reaches customers through the lineitem-orders join",
        principal: "tpch_statistician",
        purpose: "benchmark",
        governed: "SELECT c.c_nationkey, date_part('year', o.o_orderdate) AS o_year, count(*) AS orders,
       sum(o.o_totalprice) AS gross, avg(o.o_totalprice) AS avg_price
FROM sales.lineitem l
JOIN sales.orders o ON l.l_orderkey = o.o_orderkey
JOIN sales.customer c ON o.o_custkey = c.c_custkey
WHERE l.l_returnflag = 'R'
GROUP BY 1, 2 ORDER BY 1, 2",
        raw: Text::Same,
        hand: Text::Sql(HAND_JOIN_AGG),
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
