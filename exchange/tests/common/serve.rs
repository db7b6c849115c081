//! A served exchange for the client tests (Flight SQL, Postgres): credentials for every
//! demo principal, the real binary on free loopback ports, the Python client environment,
//! and the in-process showcase results the clients must see.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use arrow::array::{AsArray, RecordBatch};
use exchange::demo::SHOWCASE;
use exchange::{Exchange, ExchangeConfig};

/// The demo principals, each given a password by [`credentials`].
pub const PRINCIPALS: [&str; 9] = [
    "police_officer",
    "civil_analyst",
    "hrss_analyst",
    "health_analyst",
    "hotline_analyst",
    "market_trader",
    "auditor",
    "police_steward",
    "civil_statistician",
];

/// A fresh directory with keys made (`keys`) and room for a state (`state`).
pub fn fresh_dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys");
    exchange::keys::init(&keys).unwrap();
    let state = tmp.path().join("state");
    (tmp, keys, state)
}

pub fn password(principal: &str) -> String {
    format!("pw-{principal}-2026")
}

/// A configuration where every principal has a password and market_trader an API token.
pub fn credentials(config: &Path) -> String {
    let file = config.join("policies/principals.toml");
    for p in PRINCIPALS {
        let hash = exchange::server::hash_password(&password(p), 1000).unwrap();
        exchange::server::set_principal_field(&file, p, "password_hash", &format!("\"{hash}\""))
            .unwrap();
    }
    let (token, hash) = exchange::server::new_api_token().unwrap();
    exchange::server::set_principal_field(
        &file,
        "market_trader",
        "api_tokens",
        &format!("[\"{hash}\"]"),
    )
    .unwrap();
    token
}

/// A running `exchange serve`.
pub struct Server {
    child: Child,
    /// Its Flight SQL endpoint (`http://host:port`).
    pub uri: String,
    /// Its Postgres address (`host:port`), when served.
    pub pg: Option<String>,
    /// Its console address (`host:port`), when served.
    pub http: Option<String>,
}

pub fn start(config: &Path, keys: &Path, state: &Path, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_exchange"))
        .arg("--config-dir")
        .arg(config)
        .arg("--data-root")
        .arg(super::data_root())
        .arg("--state-dir")
        .arg(state)
        .arg("--key-dir")
        .arg(keys)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    // After the Flight SQL line: the Postgres line, then the console's, as asked for.
    let mut pg = None;
    let mut http = None;
    let wanted =
        usize::from(extra.contains(&"--pg-listen")) + usize::from(extra.contains(&"--http-listen"));
    for _ in 0..wanted {
        let mut l = String::new();
        out.read_line(&mut l).unwrap();
        let after = |scheme: &str| {
            l.split(scheme)
                .nth(1)
                .unwrap_or_default()
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .trim_end_matches('/')
                .to_string()
        };
        if l.contains("postgres://") {
            pg = Some(after("postgres://"));
        } else if l.contains("console listening on") {
            http = Some(after("://"));
        } else {
            panic!("unexpected line from the server: {l}");
        }
    }
    let addr = line
        .trim()
        .rsplit("grpc://")
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(line.contains("listening on"), "{line}");
    Server {
        child,
        uri: format!("http://{addr}"),
        pg,
        http,
    }
}

impl Server {
    /// The server's process id.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    /// SIGTERM, then wait: the server finishes and seals the audit log.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A failed test must not leave its server running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python interpreter with the ADBC driver and psycopg: $EXCHANGE_PYTHON (set by .ci/run), or a
/// virtual environment under target/ created on first use from PyPI.
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("EXCHANGE_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = super::repo_root().join("target/adbc-venv");
    let py = venv.join("bin/python");
    if !py.exists() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(venv.join("bin/pip"))
                .args([
                    "install",
                    "-q",
                    "adbc-driver-flightsql",
                    "adbc-driver-manager",
                    "pyarrow",
                    "psycopg[binary]",
                    "selenium",
                ])
                .status()
                .is_ok_and(|s| s.success());
        assert!(
            ok,
            "could not set up {} with the ADBC Flight SQL driver",
            venv.display()
        );
    }
    py
}

/// Write the in-process results of the showcase (auditor's excepted: its log differs).
pub fn expected(
    config: &Path,
    keys: &Path,
    dir: &Path,
    token: &str,
) -> Vec<(String, String, String, Vec<RecordBatch>)> {
    let state = tempfile::tempdir().unwrap();
    let ex = Exchange::open(
        ExchangeConfig::new(
            config.to_path_buf(),
            super::data_root().to_path_buf(),
            state.path().to_path_buf(),
        )
        .with_key_dir(keys.to_path_buf()),
    )
    .unwrap();
    let rt = tokio::runtime::Handle::current();
    let mut cases = Vec::new();
    let mut index = Vec::new();
    for show in SHOWCASE.iter().filter(|s| s.principal != "auditor") {
        for (i, q) in show.queries.iter().enumerate() {
            let out = tokio::task::block_in_place(|| {
                rt.block_on(ex.execute(show.principal, Some(show.purpose), q.sql))
            })
            .unwrap();
            let file = format!("{}-{i}.arrow", show.principal);
            let mut w = arrow::ipc::writer::FileWriter::try_new(
                std::fs::File::create(dir.join(&file)).unwrap(),
                &out.schema,
            )
            .unwrap();
            for b in &out.batches {
                w.write(b).unwrap();
            }
            w.finish().unwrap();
            index.push(serde_json::json!({
                "principal": show.principal, "purpose": show.purpose, "sql": q.sql, "file": file,
            }));
            cases.push((
                show.principal.to_string(),
                show.purpose.to_string(),
                q.sql.to_string(),
                out.batches,
            ));
        }
    }
    // The columns hrss sees, from DESCRIBE: the Python client must see the same.
    let described = tokio::task::block_in_place(|| {
        rt.block_on(ex.execute(
            "hrss_analyst",
            Some("new_employment_services"),
            "DESCRIBE police.residents",
        ))
    })
    .unwrap();
    let visible: Vec<String> = described
        .batches
        .iter()
        .flat_map(|b| {
            let names = b.column(0).as_string::<i32>();
            (0..b.num_rows()).map(move |i| names.value(i).to_string())
        })
        .collect();
    let passwords: serde_json::Map<String, serde_json::Value> = PRINCIPALS
        .iter()
        .map(|p| (p.to_string(), serde_json::Value::from(password(p))))
        .collect();
    std::fs::write(
        dir.join("index.json"),
        serde_json::json!({
            "cases": index, "passwords": passwords, "token": token,
            "visible": { "police.residents": visible },
        })
        .to_string(),
    )
    .unwrap();
    cases
}

/// Run `sql` on a Flight SQL client and collect every endpoint's batches; the error as text.
pub async fn flight_query(
    c: &mut arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>,
    sql: &str,
) -> Result<Vec<RecordBatch>, String> {
    use futures::TryStreamExt;
    let info = c
        .execute(sql.to_string(), None)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for ep in info.endpoint {
        let ticket = ep.ticket.ok_or("an endpoint without a ticket")?;
        let stream = c.do_get(ticket).await.map_err(|e| e.to_string())?;
        out.extend(
            stream
                .try_collect::<Vec<_>>()
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    Ok(out)
}
