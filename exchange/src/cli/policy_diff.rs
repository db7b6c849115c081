//! `exchange policy diff OLD [NEW]`: load two policy versions (directories, or git
//! revisions of the config dir) and report what changes for whom.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use super::{DiffFormat, FailOn};
use crate::catalog::Catalog;
use crate::config::ExchangeConfig;
use crate::policy::PolicySet;

/// A version loaded, with the temporary directory a git revision was written to.
struct Loaded {
    catalog: Catalog,
    policies: PolicySet,
    _checkout: Option<tempfile::TempDir>,
}

fn git(dir: &Path, args: &[&str]) -> Result<Vec<u8>, String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .map_err(|e| format!("git: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out.stdout)
}

/// schemas/ and policies/ of the config dir at git revision `rev`, written to a temporary
/// directory.
fn checkout(config_dir: &Path, rev: &str) -> Result<tempfile::TempDir, String> {
    if rev.starts_with('-') {
        return Err(format!("'{rev}' is neither a directory nor a git revision"));
    }
    git(
        config_dir,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{rev}^{{commit}}"),
        ],
    )
    .map_err(|_| {
        format!(
            "'{rev}' is neither a directory nor a git revision of {}",
            config_dir.display()
        )
    })?;
    let listed = git(
        config_dir,
        &[
            "ls-tree",
            "-r",
            "--name-only",
            "--full-name",
            rev,
            "--",
            "schemas",
            "policies",
        ],
    )?;
    let prefix = String::from_utf8_lossy(&git(config_dir, &["rev-parse", "--show-prefix"])?)
        .trim()
        .to_string();
    let tmp = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let mut files = 0;
    for full in String::from_utf8_lossy(&listed).lines() {
        let Some(rel) = full.strip_prefix(prefix.as_str()) else {
            continue;
        };
        let bytes = git(config_dir, &["show", &format!("{rev}:{full}")])?;
        let path = tmp.path().join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        files += 1;
    }
    if files == 0 {
        return Err(format!(
            "git revision {rev} has no schemas/ or policies/ under {}",
            config_dir.display()
        ));
    }
    Ok(tmp)
}

fn load(config_dir: &Path, version: Option<&str>) -> Result<Loaded, String> {
    let (dir, checkout) = match version {
        None => (config_dir.to_path_buf(), None),
        Some(v) if Path::new(v).is_dir() => (PathBuf::from(v), None),
        Some(rev) => {
            let tmp = checkout(config_dir, rev)?;
            (tmp.path().to_path_buf(), Some(tmp))
        }
    };
    let name = version.unwrap_or("the config dir");
    let catalog = Catalog::load(&dir.join("schemas")).map_err(|e| format!("{name}: {e}"))?;
    let policies =
        PolicySet::load(&dir.join("policies"), &catalog).map_err(|e| format!("{name}: {e}"))?;
    Ok(Loaded {
        catalog,
        policies,
        _checkout: checkout,
    })
}

/// Run `policy diff`.
pub(super) fn run(
    config: &ExchangeConfig,
    old: &str,
    new: Option<&str>,
    format: DiffFormat,
    fail_on: FailOn,
    on: Option<chrono::NaiveDate>,
) -> ExitCode {
    let loaded = load(&config.config_dir, Some(old))
        .and_then(|o| load(&config.config_dir, new).map(|n| (o, n)));
    let (o, n) = match loaded {
        Ok(x) => x,
        Err(e) => {
            complain!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let today = on.unwrap_or_else(|| chrono::Utc::now().date_naive());
    let d = crate::policy::diff((&o.catalog, &o.policies), (&n.catalog, &n.policies), today);
    let report = match format {
        DiffFormat::Text => d.text(),
        DiffFormat::Markdown => d.markdown(),
    };
    for line in report.lines() {
        say!("{line}");
    }
    let fail = match fail_on {
        FailOn::Exposure => d.flagged() > 0,
        FailOn::Widening => d.widening() > 0,
        FailOn::Any => !d.changes.is_empty(),
        FailOn::Never => false,
    };
    if fail {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
