//! Exports leave out the rows of residents who object to the export's purpose, as queries
//! do: the register applies at source, whatever the statement becomes.

use super::*;

#[tokio::test]
async fn exports_leave_out_residents_who_object_to_their_purpose() {
    let (ex, state) = open();
    let ids = common::raw_strings("police/objections.parquet", "person_id");
    let purposes = common::raw_strings("police/objections.parquet", "purpose");
    let objecting: BTreeSet<&String> = ids
        .iter()
        .zip(&purposes)
        .filter(|(_, p)| *p == HRSS.1)
        .map(|(i, _)| i)
        .collect();
    assert!(!objecting.is_empty());
    let all = cells(
        &ok(
            &ex,
            "police_officer",
            "law_enforcement",
            "SELECT count(*) FROM police.residents",
        )
        .await
        .batches,
    )[0][0]
        .parse::<usize>()
        .unwrap();

    let out = state.path().join("residents.parquet");
    let summary = run(
        &ex,
        &request(
            "buyer-1",
            &out,
            // Classes of gender and district are large: the k-anonymity guard drops none.
            "SELECT gender, district FROM police.residents",
        ),
    )
    .await
    .unwrap();
    export::verify(&out, &public_key(&ex)).unwrap();
    let (batches, _) = read(&out);
    let exported: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(exported, all - objecting.len());

    // The export's audit record names the register applied.
    let records = exchange::audit::read_all(&state.path().join("audit")).unwrap();
    let export = records
        .iter()
        .find(|r| r.entry.recipient.as_deref() == Some("buyer-1"))
        .unwrap();
    assert!(
        export
            .entry
            .tables
            .iter()
            .any(|t| t.table == "police.residents"
                && t.objections.as_deref() == Some("police.objections")),
        "{:?}",
        export.entry.tables
    );
    assert_eq!(
        summary.manifest.body.rows,
        batches.iter().map(|b| b.num_rows() as u64).sum::<u64>()
    );
}
