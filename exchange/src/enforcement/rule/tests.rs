//! The policy rule on plans built in code (not parsed from SQL), over the tests' own
//! two-agency fixture (`exchange/tests/fixtures/two-agencies`): the planner of the city
//! office sees the clinic's patients as join keys, masked names and visits in groups of 3.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use datafusion::datasource::provider_as_source;
use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::logical_expr::{LogicalPlan, LogicalPlanBuilder, col, lit};

use crate::catalog::Catalog;
use crate::enforcement::{PrincipalSession, SessionInputs};
use crate::keys::Keys;
use crate::policy::PolicySet;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/two-agencies")
}

/// The planner's session over the fixture, built from the enforcement's own inputs.
fn planner() -> (PrincipalSession, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let keys = state.path().join("keys");
    crate::keys::ensure(&keys).unwrap();
    let catalog = Catalog::load(&fixture().join("schemas")).unwrap();
    let policies = PolicySet::load(&fixture().join("policies"), &catalog).unwrap();
    let ring = Keys::load(&keys).unwrap().ring;
    let data = fixture().join("data");
    let audit = state.path().join("audit");
    let inputs = SessionInputs {
        catalog: &catalog,
        policies: &policies,
        keys: &ring,
        data_root: &data,
        stores: &crate::catalog::Stores::default(),
        today: chrono::NaiveDate::from_ymd_opt(2026, 12, 1).unwrap(),
        audit_log: &audit,
        token_scope: None,
        subjects: false,
        memory_limit: None,
        memory_budget: crate::engine::Budget::NONE,
        target_partitions: Some(2),
        batch_size: None,
        cluster: None,
        nodes: &Default::default(),
        ledger: None,
    };
    let principal = policies.principal("planner").unwrap();
    let session = PrincipalSession::build(&inputs, principal, "service_planning").unwrap();
    (session, state)
}

async fn scan(session: &PrincipalSession, table: &str) -> LogicalPlanBuilder {
    let provider = session.ctx.table_provider(table).await.unwrap();
    LogicalPlanBuilder::scan(table, provider_as_source(provider), None).unwrap()
}

/// The plan after the analyzer (the policy rule) and the optimizer, or the refusal.
fn enforce(session: &PrincipalSession, plan: LogicalPlan) -> Result<String, String> {
    session
        .ctx
        .state()
        .optimize(&plan)
        .map(|p| p.display_indent().to_string())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn rows_of_a_min_group_table_never_leave_one_by_one() {
    let (s, _state) = planner();
    let plan = scan(&s, "clinic.patients")
        .await
        .project(vec![col("name"), col("district")])
        .unwrap()
        .build()
        .unwrap();
    let err = enforce(&s, plan).unwrap_err();
    assert!(err.contains("only be used aggregated"), "{err}");
    assert!(err.contains("at least 3"), "{err}");
}

#[tokio::test]
async fn aggregate_only_columns_are_refused_outside_an_aggregate() {
    let (s, _state) = planner();
    let plan = scan(&s, "clinic.patients")
        .await
        .filter(col("visits").gt(lit(3i64)))
        .unwrap()
        .aggregate(vec![col("district")], vec![count(lit(1))])
        .unwrap()
        .build()
        .unwrap();
    let err = enforce(&s, plan).unwrap_err();
    assert!(err.contains("visits"), "{err}");
    assert!(err.contains("aggregate"), "{err}");
}

#[tokio::test]
async fn join_keys_compare_only_with_join_keys_of_their_domain() {
    let (s, _state) = planner();
    let plan = scan(&s, "clinic.patients")
        .await
        .filter(col("patient_id").eq(lit("11010519491231002X")))
        .unwrap()
        .aggregate(
            Vec::<datafusion::logical_expr::Expr>::new(),
            vec![count(lit(1))],
        )
        .unwrap()
        .build()
        .unwrap();
    let err = enforce(&s, plan).unwrap_err();
    assert!(err.contains("join key"), "{err}");
}

#[tokio::test]
async fn a_grouped_aggregate_is_counted_once_per_row_and_thresholded() {
    let (s, _state) = planner();
    let households = scan(&s, "city.households").await.build().unwrap();
    let plan = scan(&s, "clinic.patients")
        .await
        .join_on(
            households,
            datafusion::logical_expr::JoinType::Inner,
            vec![col("patients.patient_id").eq(col("households.person_key"))],
        )
        .unwrap()
        .aggregate(
            vec![col("households.members")],
            vec![sum(col("patients.visits"))],
        )
        .unwrap()
        .build()
        .unwrap();
    let text = enforce(&s, plan).unwrap();
    // The barrier, the threshold of 3 distinct patients, one read of the patients with
    // their row numbers, each row once per group.
    assert!(text.contains("PolicyBarrier"), "{text}");
    assert!(text.contains("__exchange_k >= Int64(3)"), "{text}");
    assert_eq!(
        text.matches("TableScan: clinic.patients").count(),
        1,
        "{text}"
    );
    assert!(text.contains("__exchange_row"), "{text}");
    // The join compares the raw values behind the two join keys' tokens.
    assert!(text.contains("join_key("), "{text}");
}

#[tokio::test]
async fn the_owner_sees_its_own_table_plain() {
    let (s, _state) = planner();
    let plan = scan(&s, "city.households")
        .await
        .project(vec![col("person_id"), col("members")])
        .unwrap()
        .build()
        .unwrap();
    let text = enforce(&s, plan).unwrap();
    assert!(!text.contains("PolicyBarrier"), "{text}");
    assert!(!text.contains("join_key(households.person_id"), "{text}");
}
