//! Recipients are declared (policies/recipients.toml) with a jurisdiction: an undeclared
//! one is refused; one outside the mainland receives no important data, and personal
//! information only with a legal basis and a security-assessment or standard-contract
//! reference, written into the manifest and the audit record; `audit report` lists
//! cross-border exports apart.

use super::*;

/// hrss's statistics of employment by job type: no personal information.
const STATS: &str = "SELECT job_type, count(*) AS n FROM hrss.employment GROUP BY job_type";
/// hrss's own rows with identifiers: personal information.
const ROWS: &str = "SELECT person_id, job_type FROM hrss.employment LIMIT 20";

fn hrss_request(recipient: &str, out: &Path, sql: &str) -> ExportRequest {
    ExportRequest {
        principal: "hrss_analyst".into(),
        purpose: Some("new_employment_services".into()),
        recipient: recipient.into(),
        out: out.to_path_buf(),
        sql: sql.into(),
        expires: None,
    }
}

#[tokio::test]
async fn undeclared_recipients_are_refused() {
    let (ex, state) = open();
    let out = state.path().join("x.parquet");
    match run(&ex, &hrss_request("nobody-we-know", &out, STATS)).await {
        Err(QueryError::Refused(why)) => assert!(
            why.contains("recipient nobody-we-know is not declared in policies/recipients.toml"),
            "{why}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(!out.exists());
}

#[tokio::test]
async fn cross_border_exports_need_a_basis_for_personal_information() {
    let config = config_copy();
    // Visit costs made important: civil's sums of them, in groups of at least 5 residents
    // under its grant, leave the agency, but not the mainland.
    edit(
        &config.path().join("schemas/health.toml"),
        "name = \"cost\"\ntype = \"float64\"\npii = \"health\"\nlevel = \"general-4\"",
        "name = \"cost\"\ntype = \"float64\"\npii = \"health\"\nlevel = \"important\"",
    );
    let (ex, state) = open_config(config.path());
    let dir = state.path();

    // Statistics without personal information go abroad, the transfer stated.
    let out = dir.join("stats-sg.parquet");
    let s = run(&ex, &hrss_request("sg-analytics", &out, STATS))
        .await
        .unwrap();
    assert_eq!(s.manifest.body.jurisdiction.as_deref(), Some("SG"));
    assert_eq!(
        s.manifest.body.transfer.as_deref(),
        Some("cross-border to SG: no personal information")
    );
    export::verify(&out, &public_key(&ex)).unwrap();

    // Personal information: refused to a recipient without a declared basis...
    let out = dir.join("rows-sg.parquet");
    match run(&ex, &hrss_request("sg-analytics", &out, ROWS)).await {
        Err(QueryError::Refused(why)) => assert!(
            why.contains("personal information (hrss.employment.person_id)")
                && why.contains("recipient sg-analytics in SG, outside the mainland")
                && why.contains("security assessment or standard contract"),
            "{why}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(!out.exists());
    // ...and sent, with its basis on record, to one that declares it.
    let out = dir.join("rows-hk.parquet");
    let s = run(&ex, &hrss_request("hk-university", &out, ROWS))
        .await
        .unwrap();
    let transfer = s.manifest.body.transfer.clone().unwrap();
    assert!(
        transfer
            .starts_with("cross-border to HK: personal information (hrss.employment.person_id)")
            && transfer.contains("standard contract SCC-440300-2026-0117"),
        "{transfer}"
    );
    // Important data never leaves the mainland, whatever the basis.
    let costs = |recipient: &str, out: &Path| ExportRequest {
        principal: "civil_analyst".into(),
        purpose: Some("elderly_care_planning".into()),
        recipient: recipient.into(),
        out: out.to_path_buf(),
        sql: "SELECT visit_date, sum(cost) AS total FROM health.visits GROUP BY visit_date".into(),
        expires: None,
    };
    match run(&ex, &costs("hk-university", &dir.join("costs-hk.parquet"))).await {
        Err(QueryError::Refused(why)) => assert!(
            why.contains("important data (health.visits.cost)")
                && why.contains("does not leave the mainland"),
            "{why}"
        ),
        other => panic!("{other:?}"),
    }
    run(&ex, &costs("research-l", &dir.join("costs-cn.parquet")))
        .await
        .unwrap();
    // Within the mainland the same rows leave as before, with no transfer stated.
    let out = dir.join("rows-cn.parquet");
    let s = run(&ex, &hrss_request("research-l", &out, ROWS))
        .await
        .unwrap();
    assert_eq!(s.manifest.body.jurisdiction.as_deref(), Some("CN"));
    assert_eq!(s.manifest.body.transfer, None);

    // The audit record carries the transfer; the report lists cross-border exports apart.
    let records = exchange::audit::read_all(&dir.join("audit")).unwrap();
    let hk = records
        .iter()
        .find(|r| {
            r.entry.recipient.as_deref() == Some("hk-university") && r.entry.transfer.is_some()
        })
        .unwrap();
    assert_eq!(hk.entry.transfer.as_deref(), Some(transfer.as_str()));
    let report = exchange::audit::report(&records, None, None);
    let abroad: Vec<&str> = report.cross_border.iter().map(|e| e.2.as_str()).collect();
    assert_eq!(abroad, ["sg-analytics", "hk-university"]);
    let home: Vec<&str> = report.exports.iter().map(|e| e.2.as_str()).collect();
    assert_eq!(home, ["research-l", "research-l"]);
    let text = report.to_string();
    assert!(text.contains("## Cross-border exports"), "{text}");
    // Auditors see the transfers in SQL too.
    let out = ok(
        &ex,
        "auditor",
        "audit_review",
        "SELECT recipient FROM audit.events WHERE transfer IS NOT NULL ORDER BY seq",
    )
    .await;
    assert_eq!(
        column(&out.batches, "recipient"),
        ["sg-analytics", "hk-university"]
    );
}

/// Review 49: the audit log is not in the catalog, so no column of it has a level, yet its
/// records quote statements and the resident IDs in them: it does not leave the mainland.
#[tokio::test]
async fn the_audit_log_does_not_leave_the_mainland() {
    let (ex, state) = open();
    ok(
        &ex,
        HRSS.0,
        HRSS.1,
        "SELECT gender FROM police.residents WHERE district = 'hexi' LIMIT 1",
    )
    .await;
    let auditor = |recipient: &str, sql: &str, name: &str| ExportRequest {
        principal: "auditor".into(),
        purpose: Some("audit_review".into()),
        recipient: recipient.into(),
        out: state.path().join(name),
        sql: sql.into(),
        expires: None,
    };
    for (n, sql) in [
        "SELECT statement FROM audit.events",
        "SELECT (SELECT count(*) FROM audit.events) AS n",
    ]
    .iter()
    .enumerate()
    {
        match run(
            &ex,
            &auditor("sg-analytics", sql, &format!("log-sg-{n}.parquet")),
        )
        .await
        {
            Err(QueryError::Refused(why)) => assert!(
                why.contains("the audit log does not leave the mainland"),
                "{why}"
            ),
            other => panic!("{sql}: {other:?}"),
        }
    }
    run(
        &ex,
        &auditor(
            "research-l",
            "SELECT statement FROM audit.events",
            "log-cn.parquet",
        ),
    )
    .await
    .unwrap();
}

/// Review 49: two names differing only in case would be two recipients to the exchange
/// and one to a reader.
#[test]
fn recipients_differing_only_in_case_are_one_declared_twice() {
    let config = config_copy();
    let file = config.path().join("policies/recipients.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        format!("{text}\n[[recipient]]\nname = \"HK-University\"\njurisdiction = \"CN\"\n"),
    )
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let err = Exchange::open(common::test_config(
        config.path(),
        common::data_root(),
        state.path(),
    ))
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("recipient 'HK-University' is declared twice ('hk-university'"),
        "{err}"
    );
}
