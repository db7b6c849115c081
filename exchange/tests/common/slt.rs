//! SQL case files (tests/sql/<principal>/<purpose>/*.slt) run as their principals, shared
//! by tests/sql.rs (single-node) and tests/federation.rs (through a hub).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use exchange::{Exchange, QueryError};
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};

/// One principal's connection to the exchange.
pub struct AsPrincipal {
    pub ex: Arc<Exchange>,
    pub principal: String,
    pub purpose: String,
}

#[async_trait::async_trait]
impl AsyncDB for AsPrincipal {
    type Error = QueryError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, QueryError> {
        let out = self
            .ex
            .execute(&self.principal, Some(&self.purpose), sql)
            .await?;
        let types = out
            .schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                t if t.is_integer() => DefaultColumnType::Integer,
                t if t.is_floating() || matches!(t, DataType::Decimal128(..)) => {
                    DefaultColumnType::FloatingPoint
                }
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                    DefaultColumnType::Text
                }
                _ => DefaultColumnType::Any,
            })
            .collect();
        let options = FormatOptions::default().with_null("NULL");
        let mut rows = Vec::new();
        for b in &out.batches {
            let formatters: Vec<ArrayFormatter> = b
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
                .collect();
            for r in 0..b.num_rows() {
                rows.push(
                    formatters
                        .iter()
                        .map(|f| match f.value(r).to_string() {
                            s if s.is_empty() => "(empty)".to_string(),
                            s => s,
                        })
                        .collect(),
                );
            }
        }
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "exchange"
    }

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await;
    }
}

/// Every `.slt` file under `dir`, with the principal and purpose its path names.
pub fn cases(dir: &Path) -> Vec<(String, String, PathBuf)> {
    let mut out = Vec::new();
    for principal in std::fs::read_dir(dir).unwrap() {
        let principal = principal.unwrap().path();
        if !principal.is_dir() {
            continue;
        }
        for purpose in std::fs::read_dir(&principal).unwrap() {
            let purpose = purpose.unwrap().path();
            for file in std::fs::read_dir(&purpose).unwrap() {
                let file = file.unwrap().path();
                if file.extension().is_some_and(|e| e == "slt") {
                    let name = |p: &Path| p.file_name().unwrap().to_string_lossy().to_string();
                    out.push((name(&principal), name(&purpose), file));
                }
            }
        }
    }
    out.sort();
    out
}

/// Run every case file under tests/sql as its principal through `ex`: the failures, and
/// the number of statements run.
pub async fn run_cases(ex: Arc<Exchange>) -> (Vec<String>, usize) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sql");
    let files = cases(&dir);
    assert!(files.len() >= 3, "{files:?}");
    let mut failures = Vec::new();
    let mut statements = 0;
    for (principal, purpose, file) in &files {
        let (ex, principal, purpose) = (ex.clone(), principal.clone(), purpose.clone());
        let mut runner = sqllogictest::Runner::new(move || {
            let db = AsPrincipal {
                ex: ex.clone(),
                principal: principal.clone(),
                purpose: purpose.clone(),
            };
            async move { Ok::<_, QueryError>(db) }
        });
        runner.with_column_validator(sqllogictest::default_column_validator);
        let text = std::fs::read_to_string(file).unwrap();
        statements += text
            .lines()
            .filter(|l| l.starts_with("statement ") || l.starts_with("query "))
            .count();
        if let Err(e) = runner.run_file_async(file).await {
            failures.push(format!("{}: {}", file.display(), e.display(false)));
        }
    }
    (failures, statements)
}
