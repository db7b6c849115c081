//! A worker process: one query on one engine, timed, with its peak RSS and a digest of its result.

use super::*;

pub(crate) enum Runner {
    Exchange {
        exchange: Box<Exchange>,
        principal: String,
        purpose: String,
        sql: String,
    },
    DataFusion {
        ctx: SessionContext,
        sql: String,
    },
}

impl Runner {
    pub(crate) async fn run(&self) -> Result<Vec<RecordBatch>, Error> {
        match self {
            Runner::Exchange {
                exchange,
                principal,
                purpose,
                sql,
            } => Ok(exchange
                .execute(principal, Some(purpose), sql)
                .await?
                .batches),
            Runner::DataFusion { ctx, sql } => Ok(ctx.sql(sql).await?.collect().await?),
        }
    }
}

pub(crate) async fn datafusion_ctx(setup: &Setup, tuned: bool) -> Result<SessionContext, Error> {
    let config = if tuned {
        exchange::tuning::apply(SessionConfig::new())
    } else {
        SessionConfig::new()
    };
    // `--set key=value` of the driver, for trying settings on the engines without a policy.
    let mut config = config;
    if tuned && let Ok(settings) = std::env::var("EXCHANGE_BENCH_SET") {
        for kv in settings.split(';').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or("--set key=value")?;
            config.options_mut().set(k, v)?;
        }
    }
    let ctx = SessionContext::new_with_config(config);
    let tables = raw_tables(setup)?;
    for (name, path) in &tables {
        if let Some((schema, _)) = name.split_once('.') {
            ctx.sql(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .await?
                .collect()
                .await?;
        }
        ctx.register_parquet(name.as_str(), path, ParquetReadOptions::default())
            .await?;
    }
    Ok(ctx)
}

pub(crate) fn find_query(id: &str) -> Result<&'static Query, Error> {
    QUERIES
        .iter()
        .find(|q| q.id == id)
        .ok_or_else(|| format!("no query {id}").into())
}

/// `--worker ENGINE QUERY CONFIG_DIR DATA_DIR KEY_DIR STATE_DIR`: answer `run` and `quit`
/// on stdin.
pub(crate) async fn worker(args: &[String]) -> Result<(), Error> {
    let [engine, id, config_dir, data_dir, key_dir, state_dir] = args else {
        return Err("worker arguments: ENGINE QUERY CONFIG DATA KEYS STATE".into());
    };
    let q = find_query(id)?;
    let setup = Setup {
        config_dir: config_dir.into(),
        data_dir: data_dir.into(),
        key_dir: key_dir.into(),
        label: String::new(),
        parquet_bytes: 0,
    };
    let runner = match engine.as_str() {
        "exchange" => {
            let config = ExchangeConfig::new(
                setup.config_dir.clone(),
                setup.data_dir.clone(),
                state_dir.into(),
            )
            .with_key_dir(setup.key_dir.clone());
            Runner::Exchange {
                exchange: Box::new(Exchange::open(config)?),
                principal: q.principal.into(),
                purpose: q.purpose.into(),
                sql: q.governed.into(),
            }
        }
        "raw" | "df-defaults" => Runner::DataFusion {
            ctx: datafusion_ctx(&setup, engine == "raw").await?,
            sql: q.raw_sql().into(),
        },
        "hand" => {
            let ctx = datafusion_ctx(&setup, true).await?;
            // The exchange's keyed pseudonym, with the key of the principal's agency.
            let keys = exchange::keys::Keys::load(&setup.key_dir)?;
            let agency = exchange::policy::PolicySet::load(
                &setup.config_dir.join("policies"),
                &exchange::catalog::Catalog::load(&setup.config_dir.join("schemas"))?,
            )?
            .principal(q.principal)
            .map(|p| p.agency.clone())
            .ok_or("principal not found")?;
            let tokens = exchange::masking::TokenKeys::derive(
                &keys.ring,
                exchange::masking::TokenKind::Pseudonym,
                &agency,
                ["person", "customer"],
            );
            ctx.register_udf(
                exchange::masking::TokenUdf::udf(Arc::new(tokens))
                    .as_ref()
                    .clone(),
            );
            Runner::DataFusion {
                ctx,
                sql: q.hand_sql().ok_or("no hand-written SQL")?.into(),
            }
        }
        other => return Err(format!("unknown engine {other}").into()),
    };
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    let mut first = true;
    for line in stdin.lock().lines() {
        match line?.trim() {
            "run" => {
                let start = Instant::now();
                let reply = match runner.run().await {
                    Ok(batches) => {
                        let secs = start.elapsed().as_secs_f64();
                        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                        let digest = if first {
                            first = false;
                            format!("{:016x}", digest(&batches)?)
                        } else {
                            "-".into()
                        };
                        format!("ok {secs} {rows} {digest}")
                    }
                    Err(e) => format!("err {}", e.to_string().replace('\n', " ")),
                };
                writeln!(stdout, "{reply}")?;
                stdout.flush()?;
            }
            "quit" => {
                writeln!(stdout, "rss {}", peak_rss_kib())?;
                stdout.flush()?;
                return Ok(());
            }
            _ => {}
        }
    }
    Ok(())
}

/// Peak resident set size of this process (VmHWM), KiB.
pub(crate) fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Order-independent digest of a result's values (floats to 7 significant digits, since
/// aggregation order differs between plans).
pub(crate) fn digest(batches: &[RecordBatch]) -> Result<u64, Error> {
    let options = FormatOptions::default();
    let mut total = 0u64;
    let mut row_text = String::new();
    for b in batches {
        let formatters = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..b.num_rows() {
            row_text.clear();
            for (c, f) in b.columns().iter().zip(&formatters) {
                if let (DataType::Float64, false) = (c.data_type(), c.is_null(row)) {
                    let v = c.as_primitive::<Float64Type>().value(row);
                    write!(row_text, "{v:.6e}|")?;
                } else {
                    write!(row_text, "{}|", f.value(row))?;
                }
            }
            // FNV-1a
            let mut h: u64 = 0xcbf29ce484222325;
            for byte in row_text.bytes() {
                h = (h ^ u64::from(byte)).wrapping_mul(0x100000001b3);
            }
            total = total.wrapping_add(h);
        }
    }
    Ok(total)
}
