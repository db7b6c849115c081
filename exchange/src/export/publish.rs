//! Where an export is staged, and how it appears under its name.
//!
//! The unfiltered result (rows the guard will withhold included) is staged in the state
//! directory's private `staging/` (0700), in files without names (`O_TMPFILE`; else created
//! 0600 and unlinked at once, in a directory nobody else may enter), held open and never
//! reopened by name. Staging beside the output instead put those rows on whatever holds
//! the output directory: a network or FUSE share keeps an unlinked open file as a hidden
//! name its server can read and rewrite (review 15). Only the final, guarded file reaches
//! the output directory: copied under a temporary name, synced, then linked into place
//! without replacing anything, so the export's name shows a whole file or nothing.

use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// The private staging directory under `state`, created 0700 (and made so if it exists).
pub(super) fn staging_dir(state: &Path) -> io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = state.join("staging");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    let meta = fs::symlink_metadata(&dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

/// A file without a name in `dir`.
pub(super) fn staging_file(dir: &Path) -> io::Result<File> {
    tempfile::tempfile_in(dir)
}

/// The directory `out` is published in.
fn parent(out: &Path) -> PathBuf {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A temporary file beside `out`, readable by the exchange only until published.
fn beside(out: &Path) -> io::Result<NamedTempFile> {
    use std::os::unix::fs::PermissionsExt;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".publishing")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(parent(out))
}

/// The staged file copied beside `out` under a temporary name and synced; the copy must be
/// as long as what was hashed.
pub(super) fn copy_beside(staged: &mut File, out: &Path, bytes: u64) -> io::Result<NamedTempFile> {
    staged.seek(SeekFrom::Start(0))?;
    let mut tmp = beside(out)?;
    let n = io::copy(staged, tmp.as_file_mut())?;
    if n != bytes {
        return Err(io::Error::other(
            "the copy is not the length of the file hashed",
        ));
    }
    tmp.as_file().sync_all()?;
    Ok(tmp)
}

/// `contents` beside `out` under a temporary name, synced.
pub(super) fn write_beside(out: &Path, contents: &[u8]) -> io::Result<NamedTempFile> {
    let mut tmp = beside(out)?;
    tmp.as_file_mut().write_all(contents)?;
    tmp.as_file().sync_all()?;
    Ok(tmp)
}

/// Make published files readable as exports are (0644), once every name is in place: a
/// file readable before its manifest was could be copied by others when the manifest then
/// failed and the export was withdrawn (review 17).
pub(super) fn expose(paths: &[&Path]) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for p in paths {
        fs::set_permissions(p, fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

/// Give `tmp` the name `path` unless something holds it already (a symlink included),
/// and make the name durable. The temporary name is linked by name, so whoever may write
/// the directory could put something else under it first (review 16): the name must then
/// hold the very file written, or publication fails.
pub(super) fn put(tmp: NamedTempFile, path: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let file = tmp.persist_noclobber(path).map_err(|e| e.error)?;
    let ours = file.metadata()?;
    let named = fs::symlink_metadata(path)?;
    if !named.file_type().is_file() || (named.dev(), named.ino()) != (ours.dev(), ours.ino()) {
        // The name was just created by this link: what it holds is not the export.
        let _ = fs::remove_file(path);
        return Err(io::Error::other(
            "the name does not hold the file the exchange wrote: another user changed the directory meanwhile; publish into a directory only the exchange may write (or a sticky one)",
        ));
    }
    // The directory entry itself, so that a crash does not lose a name the audit vouches for.
    if let Ok(d) = File::open(parent(path)) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temporary_name_swapped_before_publishing_fails_it() {
        // Review 16: in a directory others may write, the temporary name can be replaced by
        // another file (or a symlink) before it is linked into place.
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("r.parquet");
        let tmp = write_beside(&out, b"the export").unwrap();
        let theirs = dir.path().join("theirs");
        fs::write(&theirs, b"something else").unwrap();
        fs::rename(&theirs, tmp.path()).unwrap();
        let e = put(tmp, &out).unwrap_err().to_string();
        assert!(
            e.contains("does not hold the file the exchange wrote"),
            "{e}"
        );
        assert!(!out.exists());

        // Untouched, it is published, owner-only until exposed.
        let tmp = write_beside(&out, b"the export").unwrap();
        put(tmp, &out).unwrap();
        assert_eq!(fs::read(&out).unwrap(), b"the export");
        use std::os::unix::fs::PermissionsExt;
        let mode = || fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(), 0o600);
        expose(&[&out]).unwrap();
        assert_eq!(mode(), 0o644);
    }
}
