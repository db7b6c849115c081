//! Scale-out (issue 15): a hub whose plans run on three workers on loopback, each with its
//! own signing key and a copy of the hub's secret. The showcase, the refusals, the hostile
//! corpus and the join-key queries give what one process gives; workers refuse requests
//! their hub did not sign; a worker without the exchange's codec or with other keys fails
//! the statement instead of answering it; a worker killed mid-query fails the statement.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use exchange::distributed::LocalWorker;
use exchange::{Exchange, ExchangeConfig, QueryError};
use futures::StreamExt;

use common::cluster::{Keys, cluster, hub_config, keys, outcome};
use common::{cells, data_root, repo_root, sorted};

/// Worker `i` over the repository's policies and the test city.
fn worker_config(root: &Path, i: usize, keys: &Keys) -> ExchangeConfig {
    common::cluster::worker_config(&repo_root(), data_root(), root, i, keys)
}

/// The hub over the repository's policies and the test city.
fn hub(root: &Path, keys: &Keys, workers: Vec<String>) -> Exchange {
    Exchange::open(hub_config(&repo_root(), data_root(), root, keys, workers)).unwrap()
}

async fn distributed_plan(ex: &Exchange, who: (&str, &str), sql: &str) -> String {
    let plan = ex.plan(who.0, Some(who.1), sql).await.unwrap();
    datafusion_distributed::display_plan_ascii(plan.physical.as_ref(), false)
}

/// Joins on join keys and pseudonyms, and whether the distributed plan computes tokens.
const JOINS: &[(&str, &str, &str, bool)] = &[
    (
        "hotline_analyst",
        "complaint_handling",
        "SELECT t.category, r.district, count(*) AS tickets
         FROM hotline.tickets t JOIN police.residents r ON t.caller_key = r.phone
         GROUP BY t.category, r.district",
        false,
    ),
    (
        "civil_analyst",
        "elderly_care_planning",
        "SELECT r.gender, count(*) AS n
         FROM civil.elderly_care e JOIN police.residents r ON e.person_key = r.person_id
         GROUP BY r.gender",
        false,
    ),
    (
        "hotline_analyst",
        "complaint_handling",
        "SELECT r.district, count(t.ticket_id) AS tickets, count(*) AS n
         FROM police.residents r LEFT JOIN hotline.tickets t ON t.caller_key = r.phone
         GROUP BY r.district",
        false,
    ),
    // A key carried through one join to the next (the stage heads between them included).
    (
        "hotline_analyst",
        "complaint_handling",
        "SELECT t.category, count(*) AS n
         FROM hotline.tickets t JOIN police.residents r ON t.caller_key = r.phone
         JOIN hotline.tickets t2 ON t2.caller_key = r.phone
         GROUP BY t.category",
        false,
    ),
    // A full join emits both sides' unmatched rows: partitioned by its keys.
    (
        "hotline_analyst",
        "complaint_handling",
        "SELECT r.district, count(t.ticket_id) AS tickets, count(*) AS n
         FROM police.residents r FULL JOIN hotline.tickets t ON t.caller_key = r.phone
         GROUP BY r.district",
        true,
    ),
    // Anti and semi joins from NOT IN and EXISTS.
    (
        "hotline_analyst",
        "complaint_handling",
        "SELECT r.district, count(*) AS n FROM police.residents r
         WHERE r.phone NOT IN (SELECT caller_key FROM hotline.tickets) GROUP BY r.district",
        false,
    ),
    (
        "hotline_analyst",
        "complaint_handling",
        "SELECT r.district, count(*) AS n FROM police.residents r
         WHERE EXISTS (SELECT 1 FROM hotline.tickets t WHERE t.caller_key = r.phone)
         GROUP BY r.district",
        false,
    ),
    // The pseudonyms are shown: computed.
    (
        "hrss_analyst",
        "new_employment_services",
        "SELECT e.person_pseudonym, r.district FROM hrss.employment e
         JOIN police.residents r ON e.person_pseudonym = r.person_id ORDER BY 1, 2 LIMIT 50",
        true,
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_city_on_three_workers_gives_what_one_process_gives() {
    let c = cluster().await;

    // Refusals first: the same, decided on the hub before anything is distributed.
    for r in exchange::demo::refusals() {
        for ex in [&c.hub, &c.single] {
            match ex.execute(r.principal, r.purpose, r.sql).await {
                Err(QueryError::Refused(why)) => assert!(why.contains(r.expect), "{why}"),
                other => panic!("{}: expected a refusal, got {other:?}", r.sql),
            }
        }
    }
    // The showcase, query by query.
    for show in exchange::demo::SHOWCASE {
        for q in show.queries {
            let hub = c
                .hub
                .execute(show.principal, Some(show.purpose), q.sql)
                .await
                .unwrap_or_else(|e| panic!("hub: {}: {}\n -> {e}", show.principal, q.title));
            let single = c
                .single
                .execute(show.principal, Some(show.purpose), q.sql)
                .await
                .unwrap();
            assert!(single.rows > 0, "{}", q.title);
            if q.sql.contains("audit.events") {
                // Each exchange reads its own log.
                continue;
            }
            assert_eq!(
                sorted(&hub.batches),
                sorted(&single.batches),
                "{}: {}",
                show.principal,
                q.title
            );
        }
    }
    // Join keys and pseudonyms: the same rows. Compared raw where the join keeps one shared
    // build table (broadcast to the probe side's tasks), as tokens where the distributed
    // planner partitions the join by its keys (a partition by raw value would order rows by
    // a function of the values) or the result shows them.
    for (principal, purpose, sql, tokens) in JOINS {
        let hub = c.hub.execute(principal, Some(purpose), sql).await.unwrap();
        let single = c
            .single
            .execute(principal, Some(purpose), sql)
            .await
            .unwrap();
        assert!(single.rows > 0, "{sql}");
        assert_eq!(sorted(&hub.batches), sorted(&single.batches), "{sql}");
        let plan = distributed_plan(&c.hub, (principal, purpose), sql).await;
        assert!(plan.contains("DistributedExec"), "{plan}");
        let computed = plan.contains("join_key(") || plan.contains("pseudonym(");
        assert_eq!(computed, *tokens, "{plan}");
        if plan.contains("mode=Partitioned") {
            assert!(computed, "a join partitioned by raw keys:\n{plan}");
        }
    }
    // The statements really ran on the workers: their completion records name them.
    let records =
        exchange::audit::statements(exchange::audit::read_all(c.hub.audit().path()).unwrap());
    let used: std::collections::BTreeSet<&String> = records
        .iter()
        .flat_map(|r| r.entry.workers.iter())
        .collect();
    assert!(used.len() >= 2, "{used:?}");
    let urls: Vec<String> = c.workers.iter().map(|w| w.url.clone()).collect();
    assert!(used.iter().all(|u| urls.contains(u)), "{used:?} {urls:?}");

    // EXPLAIN says the statement may be distributed, and nothing of its stages (their shape
    // follows the sizes of whole datasets) nor of the enforced plan.
    let explain = c
        .hub
        .execute(
            "civil_analyst",
            Some("elderly_care_planning"),
            &format!("EXPLAIN {}", JOINS[1].2),
        )
        .await
        .unwrap();
    let text = cells(&explain.batches).concat().join("\n");
    assert!(text.contains("Distribution: runs on the workers"), "{text}");
    for hidden in [
        "hexi",
        "secret",
        ".parquet",
        "FilterExec",
        "district =",
        "Exec",
        "<- stage",
    ] {
        assert!(!text.contains(hidden), "{hidden} in {text}");
    }

    for w in c.workers {
        w.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hostile_corpus_on_workers_has_the_outcomes_of_one_process() {
    let c = cluster().await;
    common::leak_suite::no_hostile_query_reveals_a_protected_value(&c.hub).await;
    // Outcome by outcome, as one process: same rows, same refusals, same failures.
    let id = common::raw_strings("police/residents.parquet", "person_id")[7].clone();
    let phone = common::raw_strings("police/residents.parquet", "phone")[7].clone();
    let path = data_root()
        .join("police/residents.parquet")
        .display()
        .to_string();
    let mut differ = Vec::new();
    for (principal, purpose) in common::leak_suite::PRINCIPALS {
        if *principal == "auditor" {
            continue; // each exchange reads its own log
        }
        for (kind, template) in common::leak_suite::hostile() {
            let sql = template
                .replace("{ID}", &id)
                .replace("{PHONE}", &phone)
                .replace("{PATH}", &path);
            let a = outcome(&c.hub.execute(principal, Some(purpose), &sql).await);
            let b = outcome(&c.single.execute(principal, Some(purpose), &sql).await);
            // LIMIT without ORDER BY may pick other rows: then only the count must agree.
            let unordered =
                sql.to_uppercase().contains("LIMIT") && !sql.to_uppercase().contains("ORDER BY");
            if a != b && !(unordered && a.starts_with('[') && b.starts_with('[')) {
                differ.push(format!(
                    "{principal} [{kind}] {sql}\n  workers: {a}\n  one process: {b}"
                ));
            }
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
    drop(c.workers);
}

/// A gRPC call of `GetWorkerInfo`, with `auth` as the signature header if given.
async fn worker_info(url: &str, auth: Option<String>) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    // GetWorkerInfoRequest is empty; the response's fields are skipped.
    let mut req = tonic::Request::new(());
    if let Some(a) = auth {
        req.metadata_mut()
            .insert(exchange::distributed::AUTH_HEADER, a.parse().unwrap());
    }
    grpc.unary::<(), (), _>(
        req,
        tonic::codegen::http::uri::PathAndQuery::from_static("/worker.WorkerService/GetWorkerInfo"),
        tonic_prost::ProstCodec::<(), ()>::default(),
    )
    .await
    .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_answer_only_fresh_requests_signed_for_them() {
    let root = tempfile::tempdir().unwrap();
    let keys = keys(root.path(), 1);
    let w = LocalWorker::start(worker_config(root.path(), 0, &keys))
        .await
        .unwrap();
    let authority = w.url.trim_start_matches("http://").to_string();
    const PATH: &str = "/worker.WorkerService/GetWorkerInfo";
    let hub_key =
        Arc::new(exchange::keys::SigningKey::load(&keys.hub_dir.join("signing.key")).unwrap());
    let sign = |authority: &str| {
        exchange::distributed::request_signature(hub_key.clone(), authority, PATH, &[]).unwrap()
    };

    // Signed by the hub for this worker: answered, once.
    let good = sign(&authority);
    worker_info(&w.url, Some(good.clone())).await.unwrap();
    let refused = |r: Result<(), tonic::Status>, why: &str| {
        let s = r.unwrap_err();
        assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
        assert!(s.message().contains(why), "{}", s.message());
    };
    refused(worker_info(&w.url, Some(good)).await, "replayed");
    refused(worker_info(&w.url, None).await, "no signature");
    // Made for another worker: its address is part of what is signed.
    refused(
        worker_info(&w.url, Some(sign("10.0.0.9:50071"))).await,
        "does not verify",
    );
    refused(
        worker_info(&w.url, Some("x 1 2 3 4 5".into())).await,
        "malformed",
    );
    // A stranger's key (a stolen worker URL is not enough).
    let other = tempfile::tempdir().unwrap();
    let stranger =
        Arc::new(exchange::keys::SigningKey::create(&other.path().join("k.key")).unwrap());
    let forged = exchange::distributed::request_signature(stranger, &authority, PATH, &[]).unwrap();
    refused(worker_info(&w.url, Some(forged)).await, "does not know");
    // A signature moved to another method does not verify.
    let moved = exchange::distributed::request_signature(
        hub_key.clone(),
        &authority,
        "/worker.WorkerService/ExecuteTask",
        &[],
    )
    .unwrap();
    refused(worker_info(&w.url, Some(moved)).await, "does not verify");
    // Signed over another first message than the one sent (review 30 F1: a header taken
    // off the wire, another body under it).
    let other_body =
        exchange::distributed::request_signature(hub_key.clone(), &authority, PATH, b"\x0a\x03abc")
            .unwrap();
    refused(
        worker_info(&w.url, Some(other_body)).await,
        "other than the one signed",
    );
    // A key id of 12,000 characters: refused as malformed, and not echoed (review 30 F2).
    let long = format!(
        "{} 1 {} 5 {} {}",
        "a".repeat(12_000),
        "0".repeat(32),
        "0".repeat(64),
        "0".repeat(128)
    );
    let s = worker_info(&w.url, Some(long)).await.unwrap_err();
    assert!(s.message().len() < 200, "{}", s.message());
    w.stop().await;

    // A hub the workers do not know (its own signing key, the right secret) sends them real
    // plan fragments: refused before decoding, and its statements fail, audited.
    let root = tempfile::tempdir().unwrap();
    let keys = self::keys(root.path(), 2);
    let mut workers = Vec::new();
    for i in 0..2 {
        workers.push(
            LocalWorker::start(worker_config(root.path(), i, &keys))
                .await
                .unwrap(),
        );
    }
    let rogue_keys = root.path().join("rogue/keys");
    exchange::keys::ensure(&rogue_keys).unwrap();
    std::fs::copy(
        keys.hub_dir.join("secret.key"),
        rogue_keys.join("secret.key"),
    )
    .unwrap();
    let rogue = Keys {
        hub_dir: rogue_keys,
        hub_pub: String::new(),
        workers: vec![],
    };
    let urls: Vec<String> = workers.iter().map(|w| w.url.clone()).collect();
    let rogue = self::hub(&root.path().join("rogue"), &rogue, urls.clone());
    let (principal, purpose, sql, _) = JOINS[0];
    let err = rogue
        .execute(principal, Some(purpose), sql)
        .await
        .expect_err("fragments of an unknown hub");
    assert!(err.to_string().contains("worker"), "{err}");
    // The real hub, same workers: answered.
    let hub = self::hub(root.path(), &keys, urls);
    assert!(
        hub.execute(principal, Some(purpose), sql)
            .await
            .unwrap()
            .rows
            > 0
    );
    for w in workers {
        w.stop().await;
    }
}

/// A plain datafusion-distributed worker: no exchange codec, no exchange functions, no
/// check of who calls.
async fn plain_worker() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(datafusion_distributed::Worker::default().into_worker_server())
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await;
    });
    (url, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_cannot_rebuild_the_fragment_fails_the_statement() {
    let root = tempfile::tempdir().unwrap();
    let keys = keys(root.path(), 1);
    // A worker without the exchange's operators and functions: every fragment holds a
    // policy barrier, which it cannot decode; the statement fails, nothing is returned.
    // (Two: with one worker, no stage has more than one task and nothing is distributed.)
    let (url, task) = plain_worker().await;
    let (url2, task2) = plain_worker().await;
    let hub = hub(root.path(), &keys, vec![url, url2]);
    for (principal, purpose, sql, _) in JOINS {
        match hub.execute(principal, Some(purpose), sql).await {
            Err(e) => assert!(!matches!(e, QueryError::Refused(_)), "{e}"),
            Ok(out) => panic!(
                "{sql}: answered by a worker without the barrier: {} rows",
                out.rows
            ),
        }
    }
    task.abort();
    task2.abort();

    // A worker whose secret is not the hub's would compute other tokens: it refuses the
    // fragment, and the statement fails.
    let root = tempfile::tempdir().unwrap();
    let keys = self::keys(root.path(), 2);
    let mut workers = Vec::new();
    for i in 0..2 {
        std::fs::remove_file(keys.workers[i].0.join("secret.key")).unwrap();
        exchange::keys::KeyRing::create(&keys.workers[i].0.join("secret.key")).unwrap();
        workers.push(
            LocalWorker::start(worker_config(root.path(), i, &keys))
                .await
                .unwrap(),
        );
    }
    let hub = self::hub(
        root.path(),
        &keys,
        workers.iter().map(|w| w.url.clone()).collect(),
    );
    // (The pseudonym join, which computes tokens at the workers.)
    let (principal, purpose, sql, tokens) = JOINS[JOINS.len() - 1];
    assert!(tokens);
    let err = hub
        .execute(principal, Some(purpose), sql)
        .await
        .expect_err("tokens of another key");
    assert!(!matches!(err, QueryError::Refused(_)), "{err}");
    // Every statement is recorded, failed.
    let records =
        exchange::audit::statements(exchange::audit::read_all(hub.audit().path()).unwrap());
    assert_eq!(
        records.last().unwrap().entry.decision,
        exchange::audit::Decision::Failed
    );
    for w in workers {
        w.stop().await;
    }
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `exchange worker` as its own process.
fn worker_process(root: &Path, i: usize, keys: &Keys) -> (Process, String) {
    let state = root.join(format!("worker{i}"));
    let config = state.join("exchange.toml");
    let peers: Vec<String> = keys.workers.iter().map(|(_, p)| format!("{p:?}")).collect();
    std::fs::write(
        &config,
        format!(
            "[paths]\nconfig_dir = {:?}\ndata_root = {:?}\nstate_dir = {:?}\nkey_dir = {:?}\n\n[distributed]\nhub = {:?}\npeers = [{}]\n",
            repo_root(),
            data_root(),
            state,
            keys.workers[i].0,
            keys.hub_pub,
            peers.join(", "),
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_exchange"))
        .arg("--config")
        .arg(&config)
        .args(["worker", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening on"), "{line}");
    let url = line.trim().rsplit(' ').next().unwrap().to_string();
    (Process(child), url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_query_fails_the_statement() {
    let root = tempfile::tempdir().unwrap();
    let keys = keys(root.path(), 3);
    let mut processes: BTreeMap<String, Process> = BTreeMap::new();
    for i in 0..3 {
        let (p, url) = worker_process(root.path(), i, &keys);
        processes.insert(url, p);
    }
    let hub = hub(root.path(), &keys, processes.keys().cloned().collect());
    // Millions of rows, streamed: the workers are still sending when one dies.
    let sql = "SELECT a.person_id, b.name FROM police.residents a CROSS JOIN police.residents b";
    let mut stream = hub
        .start("police_officer", Some("law_enforcement"), sql)
        .await
        .unwrap();
    let first = stream.next().await.unwrap();
    assert!(first.is_ok());
    for (_, mut p) in std::mem::take(&mut processes) {
        let _ = p.0.kill();
        let _ = p.0.wait();
    }
    let mut failed = None;
    while let Some(b) = stream.next().await {
        if let Err(e) = b {
            failed = Some(e);
            break;
        }
    }
    let err = failed.expect("the statement ended as if complete after its workers died");
    assert!(!err.to_string().is_empty());
    drop(stream);
    let records =
        exchange::audit::statements(exchange::audit::read_all(hub.audit().path()).unwrap());
    let last = records.last().unwrap();
    assert_eq!(
        last.entry.decision,
        exchange::audit::Decision::Failed,
        "{last:?}"
    );

    // A cluster whose workers are all down fails the next statement at once, recorded.
    let err = hub
        .execute(
            "police_officer",
            Some("law_enforcement"),
            "SELECT count(*) FROM police.residents",
        )
        .await;
    assert!(err.is_err(), "{err:?}");
    let records =
        exchange::audit::statements(exchange::audit::read_all(hub.audit().path()).unwrap());
    assert_eq!(
        records.last().unwrap().entry.decision,
        exchange::audit::Decision::Failed
    );
}
