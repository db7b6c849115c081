//! The six showcase queries of demo-city.md and their refused counterparts. The demo,
//! the tests and the benchmarks all run these.

/// One query of a showcase.
#[derive(Debug, Clone, Copy)]
pub struct ShowcaseQuery {
    /// What it asks, in words.
    pub title: &'static str,
    /// The SQL.
    pub sql: &'static str,
}

/// A principal's showcase.
#[derive(Debug, Clone, Copy)]
pub struct Showcase {
    /// Who asks.
    pub principal: &'static str,
    /// Why.
    pub purpose: &'static str,
    /// The queries.
    pub queries: &'static [ShowcaseQuery],
}

/// A query that must be refused, with a word the reason must contain.
#[derive(Debug, Clone, Copy)]
pub struct Refusal {
    /// Who asks.
    pub principal: &'static str,
    /// Why (None: no purpose stated).
    pub purpose: Option<&'static str>,
    /// The SQL.
    pub sql: &'static str,
    /// A phrase the refusal names.
    pub expect: &'static str,
}

/// The six showcases, in demo order.
pub const SHOWCASE: &[Showcase] = &[
    Showcase {
        principal: "civil_analyst",
        purpose: "elderly_care_planning",
        queries: &[ShowcaseQuery {
            title: "Elderly residents living alone in my district, with their hospital visits",
            // Two aggregates: one over civil's own rows, one over health's visits (which
            // may only be summarised on their own, each visit counted once).
            sql: "WITH alone AS (
  SELECT r.district, count(*) AS living_alone
  FROM civil.elderly_care e
  JOIN police.residents r ON e.person_key = r.person_id
  WHERE e.lives_alone
  GROUP BY r.district
), visits AS (
  SELECT r.district, count(*) AS visits, round(avg(v.cost), 1) AS avg_visit_cost
  FROM civil.elderly_care e
  JOIN police.residents r ON e.person_key = r.person_id
  JOIN health.visits v ON v.person_id = r.person_id
  WHERE e.lives_alone
  GROUP BY r.district
)
SELECT a.district, a.living_alone, v.visits, v.avg_visit_cost
FROM alone a
LEFT JOIN visits v ON v.district = a.district
ORDER BY a.district",
        }],
    },
    Showcase {
        principal: "hrss_analyst",
        purpose: "new_employment_services",
        queries: &[
            ShowcaseQuery {
                title: "Platform workers (new employment forms) per district, with median wage",
                sql: "SELECT r.district,
       count(*) AS platform_workers,
       median(e.monthly_wage) AS median_wage
FROM hrss.employment e
JOIN police.residents r ON e.person_pseudonym = r.person_id
WHERE e.job_type IN ('platform_delivery', 'ride_hailing')
GROUP BY r.district
ORDER BY r.district",
            },
            ShowcaseQuery {
                title: "What an hrss analyst sees of a resident",
                sql: "SELECT r.person_id, r.name, r.phone, r.birth_date, e.job_type
FROM hrss.employment e
JOIN police.residents r ON e.person_pseudonym = r.person_id
WHERE e.job_type = 'ride_hailing'
ORDER BY r.person_id
LIMIT 3",
            },
        ],
    },
    Showcase {
        principal: "health_analyst",
        purpose: "public_health_statistics",
        queries: &[ShowcaseQuery {
            title: "Chronic-disease visits per birth decade, linked through person_id",
            sql: "SELECT CAST(floor(date_part('year', r.birth_date) / 10) * 10 AS INT) AS birth_decade,
       count(*) AS chronic_visits,
       count(DISTINCT v.person_id) AS patients
FROM health.visits v
JOIN police.residents r ON v.person_key = r.person_id
WHERE v.chronic
GROUP BY 1
ORDER BY 1",
        }],
    },
    Showcase {
        principal: "hotline_analyst",
        purpose: "complaint_handling",
        queries: &[ShowcaseQuery {
            title: "Tickets per category, with the district the caller lives in",
            sql: "SELECT t.category, r.district AS caller_district, count(*) AS tickets
FROM hotline.tickets t
JOIN police.residents r ON t.caller_key = r.phone
WHERE t.category IN ('noise', 'heating')
GROUP BY t.category, r.district
ORDER BY t.category, r.district",
        }],
    },
    Showcase {
        principal: "market_trader",
        purpose: "data_product",
        queries: &[ShowcaseQuery {
            title: "Active enterprises per industry and district, for a data product",
            sql: "SELECT industry, district, count(*) AS enterprises,
       sum(registered_capital) AS capital_rounded
FROM market.enterprises
WHERE status = 'active' AND industry IN ('logistics', 'software')
GROUP BY industry, district
ORDER BY industry, district",
        }],
    },
    Showcase {
        principal: "auditor",
        purpose: "audit_review",
        queries: &[
            ShowcaseQuery {
                title: "Who accessed health.visits this week, for which purpose",
                sql: "SELECT principal, purpose, count(*) AS statements,
       sum(CASE WHEN decision = 'refused' THEN 1 ELSE 0 END) AS refused
FROM audit.events
WHERE array_has(tables, 'health.visits') AND time >= now() - INTERVAL '7 days'
GROUP BY principal, purpose
ORDER BY principal",
            },
            ShowcaseQuery {
                title: "Residents' objections per purpose (the register shows auditors counts only)",
                sql: "SELECT purpose, count(*) AS objections
FROM police.objections
GROUP BY purpose
ORDER BY purpose",
            },
            ShowcaseQuery {
                title: "Refused statements per principal",
                sql: "SELECT principal, count(*) AS refused, substr(max(reason), 1, 70) AS example_reason
FROM audit.events
WHERE decision = 'refused'
GROUP BY principal
ORDER BY principal",
            },
        ],
    },
];

/// One refused query per principal, plus a query without a purpose.
pub fn refusals() -> &'static [Refusal] {
    &[
        Refusal {
            principal: "police_officer",
            purpose: Some("law_enforcement"),
            sql: "SELECT count(*) FROM health.visits",
            expect: "not found or not granted",
        },
        Refusal {
            principal: "civil_analyst",
            purpose: Some("elderly_care_planning"),
            sql: "SELECT person_id, name FROM police.residents",
            expect: "join key",
        },
        Refusal {
            principal: "civil_analyst",
            purpose: Some("elderly_care_planning"),
            sql: "SELECT visit_date, cost FROM health.visits",
            expect: "aggregate-only",
        },
        Refusal {
            principal: "hrss_analyst",
            purpose: Some("new_employment_services"),
            sql: "SELECT count(*) FROM health.visits",
            expect: "not found or not granted",
        },
        Refusal {
            principal: "health_analyst",
            purpose: Some("public_health_statistics"),
            sql: "SELECT person_id, count(*) FROM police.residents GROUP BY person_id",
            expect: "join key",
        },
        Refusal {
            principal: "hotline_analyst",
            purpose: Some("complaint_handling"),
            sql: "SELECT count(*) FROM police.residents WHERE phone = '13812341234'",
            expect: "join key",
        },
        Refusal {
            principal: "market_trader",
            purpose: Some("data_product"),
            sql: "SELECT * FROM police.residents",
            expect: "not found or not granted",
        },
        Refusal {
            principal: "auditor",
            purpose: Some("audit_review"),
            sql: "SELECT * FROM health.visits",
            expect: "not found or not granted",
        },
        Refusal {
            principal: "hrss_analyst",
            purpose: None,
            sql: "SELECT count(*) FROM hrss.employment",
            expect: "no purpose declared",
        },
        Refusal {
            principal: "hrss_analyst",
            purpose: Some("elderly_care_planning"),
            sql: "SELECT count(*) FROM hrss.employment",
            expect: "may not declare purpose",
        },
    ]
}
