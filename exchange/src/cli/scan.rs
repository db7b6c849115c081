//! `exchange scan`: PII discovery over a dataset.

use std::process::ExitCode;

use super::{ScanFormat, config};
use crate::config::Settings;
use crate::config::absolute;

pub(super) async fn run_scan(
    settings: &Settings,
    target: &str,
    sample: usize,
    format: ScanFormat,
) -> ExitCode {
    use crate::catalog::{Catalog, discover};
    let config = config(settings);
    // A catalog table on an object store: read through its agency's store.
    if let Some(d) = target.split_once('.').and_then(|(a, t)| {
        Catalog::load(&config.schemas_dir())
            .ok()
            .and_then(|c| c.dataset(a, t).cloned())
    }) && d.resolve_location(&config.data_root).contains("://")
        && !d.resolve_location(&config.data_root).starts_with("file://")
    {
        let stores = crate::catalog::Stores::new(config.stores.clone());
        return match discover::scan_remote(&d, &config.data_root, &stores, sample).await {
            Ok(mut findings) => {
                discover::under_declared_levels(&mut findings, &d);
                show(&findings, format, &d.agency, &d.name, &d.location);
                ExitCode::SUCCESS
            }
            Err(e) => {
                complain!("error: {e}");
                ExitCode::from(2)
            }
        };
    }
    // A catalog table, or else a path.
    let declared = target.split_once('.').and_then(|(a, t)| {
        Catalog::load(&config.schemas_dir())
            .ok()
            .and_then(|c| c.dataset(a, t).cloned())
    });
    let (agency, table, path) = match declared.clone() {
        Some(d) => {
            let location = std::path::PathBuf::from(d.resolve_location(&config.data_root));
            let file = if location.is_dir() {
                std::fs::read_dir(&location)
                    .ok()
                    .and_then(|rd| {
                        let mut files: Vec<_> =
                            rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
                        files.sort();
                        files.into_iter().next()
                    })
                    .unwrap_or(location)
            } else {
                location
            };
            (d.agency.clone(), d.name.clone(), file)
        }
        None => {
            let path = absolute(std::path::Path::new(target));
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "table".into());
            ("AGENCY".to_string(), stem, path)
        }
    };
    match discover::scan_file(&path, sample.max(1)) {
        Ok(mut findings) => {
            if let Some(d) = &declared {
                discover::under_declared_levels(&mut findings, d);
            }
            show(
                &findings,
                format,
                &agency,
                &table,
                &path.display().to_string(),
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            complain!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn show(
    findings: &[crate::catalog::discover::ColumnFinding],
    format: ScanFormat,
    agency: &str,
    table: &str,
    location: &str,
) {
    use crate::catalog::discover;
    match format {
        // Column names come from the file: each line shown escaped.
        ScanFormat::Table => {
            for line in discover::render_table(findings).lines() {
                say!("{line}");
            }
        }
        ScanFormat::Schema => {
            super::output::print(&discover::render_schema(agency, table, location, findings))
        }
    }
}
