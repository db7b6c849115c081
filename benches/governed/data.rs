//! Where each workload's data, configuration and keys come from: generated once under `target/bench-data`.

use super::*;

pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where a workload's data, configuration and keys live.
#[derive(Clone)]
pub(crate) struct Setup {
    pub(crate) config_dir: PathBuf,
    pub(crate) data_dir: PathBuf,
    pub(crate) key_dir: PathBuf,
    pub(crate) label: String,
    pub(crate) parquet_bytes: u64,
}

pub(crate) fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

pub(crate) fn prepare_demo(scale: f64) -> Result<Setup, Error> {
    let base = repo().join("target/bench-data");
    let data_dir = base.join(format!("demo-s{scale}"));
    let done = data_dir.join(".complete");
    if !done.exists() {
        eprintln!(
            "generating the demo city at scale {scale} in {}",
            data_dir.display()
        );
        let _ = std::fs::remove_dir_all(&data_dir);
        exchange::demo::generate(&data_dir, scale, DEMO_SEED)?;
        std::fs::write(&done, "")?;
    }
    let key_dir = keys()?;
    Ok(Setup {
        config_dir: repo(),
        parquet_bytes: dir_bytes(&data_dir),
        data_dir,
        key_dir,
        label: format!("demo city, scale {scale} ({} residents)", scale * 100_000.0),
    })
}

pub(crate) fn keys() -> Result<PathBuf, Error> {
    let dir = repo().join("target/bench-data/keys");
    if !dir.join("secret.key").exists() {
        exchange::keys::init(&dir)?;
    }
    Ok(dir)
}

/// TPC-H tables as Parquet: decimals as float64 and text as utf8 (the catalog's types),
/// row groups of 1 Mi rows, Snappy, page statistics.
pub(crate) fn prepare_tpch(sf: f64) -> Result<Setup, Error> {
    use tpchgen::generators::{CustomerGenerator, LineItemGenerator, OrderGenerator};
    use tpchgen_arrow::{CustomerArrow, LineItemArrow, OrderArrow};
    let base = repo().join("target/bench-data");
    let data_dir = base.join(format!("tpch-sf{sf}"));
    let done = data_dir.join(".complete");
    if !done.exists() {
        eprintln!("generating TPC-H SF {sf} in {}", data_dir.display());
        let _ = std::fs::remove_dir_all(&data_dir);
        std::fs::create_dir_all(data_dir.join("sales"))?;
        let out = |name: &str| data_dir.join("sales").join(format!("{name}.parquet"));
        write_parquet(
            &out("customer"),
            CustomerArrow::new(CustomerGenerator::new(sf, 1, 1)).with_batch_size(65536),
        )?;
        write_parquet(
            &out("orders"),
            OrderArrow::new(OrderGenerator::new(sf, 1, 1)).with_batch_size(65536),
        )?;
        write_parquet(
            &out("lineitem"),
            LineItemArrow::new(LineItemGenerator::new(sf, 1, 1)).with_batch_size(65536),
        )?;
        std::fs::write(&done, "")?;
    }
    Ok(Setup {
        config_dir: repo().join("benches/tpch"),
        parquet_bytes: dir_bytes(&data_dir),
        data_dir,
        key_dir: keys()?,
        label: format!("TPC-H SF {sf}"),
    })
}

pub(crate) fn write_parquet(
    path: &Path,
    batches: impl Iterator<Item = Result<RecordBatch, arrow::error::ArrowError>>,
) -> Result<(), Error> {
    use arrow::datatypes::{Field, Schema};
    use parquet::arrow::ArrowWriter;
    use parquet::basic::Compression;
    use parquet::file::properties::WriterProperties;
    let mut writer: Option<ArrowWriter<std::fs::File>> = None;
    for batch in batches {
        let batch = batch?;
        let target = |t: &DataType| match t {
            DataType::Decimal128(_, _) => DataType::Float64,
            DataType::Utf8View => DataType::Utf8,
            t => t.clone(),
        };
        let schema = Arc::new(Schema::new(
            batch
                .schema()
                .fields()
                .iter()
                .map(|f| Field::new(f.name(), target(f.data_type()), f.is_nullable()))
                .collect::<Vec<_>>(),
        ));
        let columns = batch
            .columns()
            .iter()
            .zip(schema.fields())
            .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
            .collect::<Result<Vec<_>, _>>()?;
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        if writer.is_none() {
            let props = WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .set_max_row_group_row_count(Some(1 << 20))
                .build();
            writer = Some(ArrowWriter::try_new(
                std::fs::File::create(path)?,
                schema,
                Some(props),
            )?);
        }
        if let Some(w) = writer.as_mut() {
            w.write(&batch)?;
        }
    }
    if let Some(w) = writer {
        w.close()?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Workers

/// Tables of a workload as (qualified name, file path), for the engines without a policy.
pub(crate) fn raw_tables(setup: &Setup) -> Result<Vec<(String, String)>, Error> {
    let catalog = exchange::catalog::Catalog::load(&setup.config_dir.join("schemas"))?;
    Ok(catalog
        .datasets()
        .iter()
        .map(|d| (d.qualified_name(), d.resolve_location(&setup.data_dir)))
        .collect())
}
