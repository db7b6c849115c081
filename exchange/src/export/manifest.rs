//! The signed manifest beside an export, and its verification.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ExportError;
use crate::keys::{PublicKey, SigningKey};

/// What the exchange vouches for about an export file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestBody {
    /// `exchange-export/v1`.
    pub format: String,
    /// File name of the export (beside the manifest).
    pub file: String,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Rows.
    pub rows: u64,
    /// The statement as received.
    pub statement: String,
    /// Who exported.
    pub principal: String,
    /// The principal's agency.
    pub agency: String,
    /// Declared purpose.
    pub purpose: String,
    /// To whom the file was issued (pseudonyms are keyed for this recipient).
    pub recipient: String,
    /// Grants applied, `agency/grant@version`.
    pub grants: Vec<String>,
    /// UTC time of the export.
    pub created: String,
    /// Last day the recipient may use the file (the earliest grant expiry unless set).
    pub expires: Option<String>,
    /// What the k-anonymity guard did.
    pub guard: Option<String>,
    /// The recipient's jurisdiction (`CN`: the mainland).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jurisdiction: Option<String>,
    /// For a recipient outside the mainland: what the file carries across the border and
    /// on what basis (legal basis, security assessment or standard contract).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<String>,
    /// Sequence number of the audit record of this export.
    pub audit_seq: u64,
}

/// A manifest: body, key id and Ed25519 signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// What is vouched for.
    #[serde(flatten)]
    pub body: ManifestBody,
    /// Identifier of the signing key.
    pub key_id: String,
    /// Signature (hex) of [`ManifestBody::message`].
    pub signature: String,
}

impl ManifestBody {
    /// The signed bytes: a domain tag and the body's canonical JSON.
    pub fn message(&self) -> Result<Vec<u8>, ExportError> {
        let json = serde_json::to_string(self).map_err(|e| ExportError::Manifest {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        Ok(format!("exchange-export-manifest/v1\n{json}").into_bytes())
    }

    /// Sign the body.
    pub fn sign(self, key: &SigningKey) -> Result<Manifest, ExportError> {
        let signature = key.sign_hex(&self.message()?);
        Ok(Manifest {
            key_id: key.public_key().id(),
            signature,
            body: self,
        })
    }
}

/// Where the manifest of `file` lives.
pub fn manifest_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_os_string();
    name.push(".manifest.json");
    PathBuf::from(name)
}

/// SHA-256 (hex) and size of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<(String, u64), ExportError> {
    let io = |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = open_regular(path).map_err(io)?;
    sha256_of(f).map_err(io)
}

/// Open a regular file to read; a FIFO or a device (`/dev/zero`) is refused rather than
/// read forever (review 15). Opened non-blocking, so that opening a FIFO does not hang.
fn open_regular(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(f)
}

/// The largest manifest read: real ones are a few KiB.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// SHA-256 (hex) and length of everything `r` reads.
pub(super) fn sha256_of(mut r: impl Read) -> std::io::Result<(String, u64)> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        ctx.update(&buf[..n]);
    }
    Ok((hex::encode(ctx.finish().as_ref()), total))
}

/// Check an export against its manifest: the manifest's signature under `key`, then the
/// file's size and SHA-256. Returns the manifest.
pub fn verify(file: &Path, key: &PublicKey) -> Result<Manifest, ExportError> {
    let mpath = manifest_path(file);
    let io = |source| ExportError::Io {
        path: mpath.clone(),
        source,
    };
    let mut text = String::new();
    open_regular(&mpath)
        .and_then(|f| f.take(MAX_MANIFEST_BYTES + 1).read_to_string(&mut text))
        .map_err(io)?;
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(ExportError::Manifest {
            path: mpath.clone(),
            message: format!("larger than {MAX_MANIFEST_BYTES} bytes: not a manifest"),
        });
    }
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| ExportError::Manifest {
        path: mpath.clone(),
        message: format!("not a manifest: {e}"),
    })?;
    // Fields the signature does not cover would be read by other tools as if vouched for.
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ExportError::Manifest {
            path: mpath.clone(),
            message: format!("not a manifest: {e}"),
        })?;
    let expected = serde_json::to_value(&manifest).map_err(|e| ExportError::Manifest {
        path: mpath.clone(),
        message: e.to_string(),
    })?;
    if let (Some(got), Some(known)) = (value.as_object(), expected.as_object()) {
        let extra: Vec<&str> = got
            .keys()
            .filter(|k| !known.contains_key(*k))
            .map(String::as_str)
            .collect();
        if !extra.is_empty() {
            return Err(ExportError::Invalid {
                path: file.to_path_buf(),
                message: format!(
                    "the manifest carries fields its signature does not cover: {}",
                    extra.join(", ")
                ),
            });
        }
    }
    let bad = |message: String| ExportError::Invalid {
        path: file.to_path_buf(),
        message,
    };
    if manifest.key_id != key.id() {
        return Err(bad(format!(
            "manifest signed by key {}, but the verifying public key is {}",
            manifest.key_id,
            key.id()
        )));
    }
    if !key.verify(&manifest.body.message()?, &manifest.signature) {
        return Err(bad(
            "manifest signature does not verify: the manifest was altered or forged".into(),
        ));
    }
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    if manifest.body.file != name {
        return Err(bad(format!(
            "manifest is for file '{}', not '{name}'",
            manifest.body.file
        )));
    }
    let (sha, bytes) = sha256_file(file)?;
    if bytes != manifest.body.bytes || sha != manifest.body.sha256 {
        return Err(bad(format!(
            "file content does not match its manifest (SHA-256 {sha}, {bytes} bytes; manifest says {}, {} bytes): the file was modified",
            manifest.body.sha256, manifest.body.bytes
        )));
    }
    // The hash binds the file to the manifest; the rows must agree too, or the signature
    // vouched for a count the file does not hold (review 14).
    let rows = parquet_rows(file)?;
    if rows != manifest.body.rows {
        return Err(bad(format!(
            "the file holds {rows} rows, its manifest says {}",
            manifest.body.rows
        )));
    }
    Ok(manifest)
}

/// Rows of a Parquet file, from its footer.
fn parquet_rows(file: &Path) -> Result<u64, ExportError> {
    let f = open_regular(file).map_err(|source| ExportError::Io {
        path: file.to_path_buf(),
        source,
    })?;
    let read = |message: String| ExportError::Read {
        path: file.to_path_buf(),
        message,
    };
    let meta = parquet::file::metadata::ParquetMetaDataReader::new()
        .parse_and_finish(&f)
        .map_err(|e| read(format!("not a Parquet file: {e}")))?;
    u64::try_from(meta.file_metadata().num_rows())
        .map_err(|_| read("negative row count in the footer".into()))
}
