//! An S3-compatible server (s3s-fs, signature-checking, file-backed) on loopback holding
//! the test city, and exchanges configured to read it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use exchange::catalog::StoreSettings;
use exchange::{Exchange, ExchangeConfig};

pub const ACCESS_KEY: &str = "exchange-test-access";
pub const SECRET_KEY: &str = "s3cr3t-never-printed-4711";
pub const BUCKET: &str = "city";

/// The S3 server: $EXCHANGE_S3_SERVER (set by .ci/run), else target/tools/bin/s3s-fs,
/// installed from crates.io when missing.
pub fn s3_server_binary() -> PathBuf {
    if let Ok(p) = std::env::var("EXCHANGE_S3_SERVER") {
        return PathBuf::from(p);
    }
    let root = super::repo_root().join("target/tools");
    let bin = root.join("bin/s3s-fs");
    if !bin.exists() {
        let ok = Command::new(env!("CARGO"))
            .args([
                "install",
                "--locked",
                "--quiet",
                "s3s-fs@0.14.1",
                "--features",
                "binary",
                "--root",
            ])
            .arg(&root)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "could not install s3s-fs into {}", root.display());
    }
    bin
}

pub struct S3 {
    child: Child,
    pub endpoint: String,
    pub root: tempfile::TempDir,
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The server, with the test city under s3://city/<agency>/.
pub fn start_s3() -> S3 {
    let root = tempfile::tempdir().unwrap();
    super::copy_dir(super::data_root(), &root.path().join(BUCKET));
    let port = free_port();
    let child = Command::new(s3_server_binary())
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .arg(root.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start s3s-fs");
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    S3 {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
        root,
    }
}

/// A copy of schemas/ and policies/ whose datasets are at s3://city/...
pub fn s3_config() -> tempfile::TempDir {
    let config = super::config_copy();
    for e in std::fs::read_dir(config.path().join("schemas")).unwrap() {
        let path = e.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let moved = text.replace("location = \"", &format!("location = \"s3://{BUCKET}/"));
        std::fs::write(&path, moved).unwrap();
    }
    config
}

/// Credentials files of every agency, readable by the owner only.
pub fn credentials(dir: &Path, secret: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("s3-credentials.toml");
    std::fs::write(
        &path,
        format!("access_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{secret}\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

pub fn with_stores(config: &mut ExchangeConfig, endpoint: &str, credentials_file: &Path) {
    for agency in [
        "police", "civil", "health", "hrss", "hotline", "market", "trade",
    ] {
        config.stores.insert(
            agency.to_string(),
            StoreSettings {
                endpoint: Some(endpoint.to_string()),
                credentials_file: Some(credentials_file.to_path_buf()),
                max_retries: 0,
                ..StoreSettings::default()
            },
        );
    }
}

pub fn open_s3(config: &Path, s3: &S3, secret: &str) -> (Exchange, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let creds = credentials(state.path(), secret);
    let mut c = super::test_config(config, Path::new("/nonexistent"), state.path());
    with_stores(&mut c, &s3.endpoint, &creds);
    (Exchange::open(c).unwrap(), state)
}

/// The same exchange over the local files, with `remote`'s keys (the same pseudonyms).
pub fn open_local(remote: &Exchange) -> (Exchange, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let c = super::test_config(&super::repo_root(), super::data_root(), state.path())
        .with_key_dir(remote.config().key_dir.clone());
    (Exchange::open(c).unwrap(), state)
}
