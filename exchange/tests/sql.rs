//! SQL cases as files: every `tests/sql/<principal>/<purpose>/*.slt` runs through
//! [`exchange::Exchange::execute`] as that principal for that purpose (sqllogictest format).
//! Refusals are `statement error` records whose regex names the reason; results are
//! `query` records. Values print as the CLI's CSV does: NULL as `NULL`, empty text as
//! `(empty)`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

#[tokio::test]
async fn sql_cases_as_principals() {
    let (ex, _state) = common::open();
    let ex = Arc::new(ex);
    let (failures, statements) = common::slt::run_cases(ex.clone()).await;
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // Every record ran, and was audited.
    let records =
        exchange::audit::statements(exchange::audit::read_all(ex.audit().path()).unwrap());
    assert_eq!(records.len(), statements);
}
