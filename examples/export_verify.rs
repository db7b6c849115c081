//! A signed, recipient-keyed export, and its verification as the recipient would do it.
//!
//! `cargo run -p exchange-examples --example export_verify`

#[path = "common.rs"]
mod common;

use exchange::export::{self, ExportRequest};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let state = tempfile::tempdir()?;
    let ex = common::open(state.path())?;
    let out = state.path().join("patients-per-district.parquet");
    let request = ExportRequest {
        principal: "planner".into(),
        purpose: Some("service_planning".into()),
        recipient: "research-institute".into(),
        out: out.clone(),
        sql: "SELECT district, count(*) AS patients FROM clinic.patients GROUP BY district".into(),
        expires: None,
    };
    let summary = export::export(&ex, &request, &mut |_, _| {}).await?;
    let body = &summary.manifest.body;
    println!(
        "exported {} rows to {} (sha256 {})",
        body.rows,
        out.display(),
        body.sha256
    );

    // The recipient checks the file against the exchange's public key.
    let manifest = export::verify(&out, &ex.signer().public_key())?;
    println!(
        "verified: issued by {} for purpose {} to {}",
        manifest.body.principal, manifest.body.purpose, manifest.body.recipient
    );
    common::check(
        manifest.body.recipient == "research-institute",
        "the recipient",
    )?;
    Ok(())
}
