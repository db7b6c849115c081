//! Exports written to an object store: `s3://bucket/prefix/file.parquet`, through the store
//! (endpoint, credentials) of the exporting principal's agency, the manifest beside the
//! file as `file.parquet.manifest.json`.
//!
//! The guarded result is staged privately as for a local export, then uploaded after the
//! audit record vouches for it (a failed upload is recorded too). Neither name may exist
//! already: exports never replace a file (checked before uploading; a store offers no
//! atomic create for multipart uploads, so two exporters racing for one name are not
//! told apart). The file first, verified by size, then the manifest, so that a manifest
//! means a whole file; a manifest that cannot be written takes the file away again.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::datasource::listing::ListingTableUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::io::AsyncWriteExt;

use crate::catalog::describe_store_failure;
use crate::engine::Exchange;

/// Where a remote export goes.
pub(super) struct Destination {
    store: Arc<dyn ObjectStore>,
    file: ObjectPath,
    manifest: ObjectPath,
    /// The URL as given, for messages and the summary.
    url: String,
}

/// Whether `out` names an object store rather than a local path.
pub(super) fn is_remote(out: &Path) -> bool {
    out.to_str().is_some_and(|s| s.contains("://"))
}

impl Destination {
    /// The destination of `out` for a principal of `agency`.
    pub(super) fn resolve(ex: &Exchange, agency: Option<&str>, out: &Path) -> Result<Self, String> {
        let url = out
            .to_str()
            .ok_or("the export's destination is not valid UTF-8")?
            .to_string();
        if !url.starts_with("s3://") {
            return Err(format!(
                "{url}: exports go to local paths or s3:// URLs (http(s) locations are read-only)"
            ));
        }
        let agency = agency
            .ok_or("the exporting principal belongs to no agency, whose store would be used")?;
        let runtime = RuntimeEnv::default();
        let scan = ex
            .stores()
            .register(&runtime, agency, &url)
            .map_err(|e| e.to_string())?;
        let listing = ListingTableUrl::parse(&scan).map_err(|e| e.to_string())?;
        let store = runtime
            .object_store(listing.object_store())
            .map_err(|e| e.to_string())?;
        let file = listing.prefix().clone();
        if url.ends_with('/') || file.filename().is_none() {
            return Err(format!("{url}: name the file to write, not a prefix"));
        }
        let manifest = ObjectPath::from(format!("{file}.manifest.json"));
        Ok(Self {
            store,
            file,
            manifest,
            url,
        })
    }

    /// The manifest's URL.
    pub(super) fn manifest_url(&self) -> PathBuf {
        PathBuf::from(format!("{}.manifest.json", self.url))
    }

    /// Fail if either name holds something already.
    pub(super) async fn vacant(&self) -> Result<(), String> {
        for (name, path) in [(&self.url, &self.file), (&self.url, &self.manifest)] {
            match self.store.head(path).await {
                Ok(_) => {
                    return Err(format!(
                        "{name}: {path} exists already; an export never replaces a file"
                    ));
                }
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(format!("{name}: {}", describe_store_failure(&e))),
            }
        }
        Ok(())
    }

    /// Upload the staged file (`bytes` long) and then the manifest.
    pub(super) async fn publish(
        &self,
        staged: &mut File,
        bytes: u64,
        manifest: &[u8],
    ) -> Result<(), String> {
        let failed =
            |e: object_store::Error| format!("{}: {}", self.url, describe_store_failure(&e));
        // An upload's io::Error wraps the store's error, whose text carries the service's
        // response (review 24b C1): told by kind only, as every store failure.
        let io = |e: std::io::Error| {
            let said = crate::catalog::describe_store_failure_in(&e)
                .unwrap_or_else(|| "the staged file could not be read or uploaded".into());
            format!("{}: {said}", self.url)
        };
        self.vacant().await?;
        staged.seek(SeekFrom::Start(0)).map_err(io)?;
        let mut upload =
            object_store::buffered::BufWriter::new(Arc::clone(&self.store), self.file.clone());
        let mut buf = vec![0u8; 8 << 20];
        let mut sent: u64 = 0;
        loop {
            let n = staged.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            if let Err(e) = upload.write_all(&buf[..n]).await {
                let _ = upload.abort().await;
                return Err(io(e));
            }
            sent += n as u64;
        }
        upload.shutdown().await.map_err(io)?;
        let written = self.store.head(&self.file).await.map_err(failed)?;
        if sent != bytes || written.size != bytes {
            let _ = self.store.delete(&self.file).await;
            return Err(format!(
                "{}: the store holds {} bytes of the {bytes} exported",
                self.url, written.size
            ));
        }
        if let Err(e) = self
            .store
            .put(&self.manifest, manifest.to_vec().into())
            .await
        {
            let _ = self.store.delete(&self.file).await;
            return Err(failed(e));
        }
        Ok(())
    }
}
