//! Embedding the exchange: open a configuration, run statements as a principal for a
//! purpose, read the results (Arrow record batches) and the refusals, verify the audit log.
//!
//! `cargo run -p exchange-examples --example embed`

#[path = "common.rs"]
mod common;

use exchange::QueryError;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let state = tempfile::tempdir()?;
    let ex = common::open(state.path())?;
    let (who, why) = ("planner", Some("service_planning"));

    // Visit counts per district: aggregate-only, in groups of at least 3 patients. heping
    // has one patient, so its group is suppressed.
    let out = ex
        .execute(
            who,
            why,
            "SELECT district, count(*) AS patients, sum(visits) AS visits
             FROM clinic.patients GROUP BY district ORDER BY district",
        )
        .await?;
    println!(
        "{}",
        arrow::util::pretty::pretty_format_batches(&out.batches)?
    );
    println!("thresholds applied: {:?}", out.thresholds);
    common::check(out.rows == 2, "two districts of at least 3 patients")?;

    // Rows with masked names and pseudonymous ids.
    let out = ex
        .execute(
            who,
            why,
            "SELECT patient_id, name, district FROM clinic.patients LIMIT 3",
        )
        .await?;
    println!(
        "{}",
        arrow::util::pretty::pretty_format_batches(&out.batches)?
    );

    // A refusal says why.
    match ex
        .execute(who, why, "SELECT visits FROM clinic.patients")
        .await
    {
        Err(QueryError::Refused(reason)) => println!("refused: {reason}"),
        other => return Err(format!("expected a refusal, got {other:?}").into()),
    }

    // Every statement is in the audit log, which verifies.
    // A query's result streams: it has a started record and a completion.
    let summary = exchange::audit::verify(ex.audit().path(), &ex.signer().public_key())?;
    let statements = exchange::audit::statements(exchange::audit::read_all(ex.audit().path())?);
    println!(
        "audit log: {} records, {} statements",
        summary.records,
        statements.len()
    );
    common::check(statements.len() == 3, "three audited statements")?;
    common::check(
        summary.records == 5,
        "two started and completed, one refused",
    )?;
    Ok(())
}
