//! The exchange's keys: the HMAC master secret (pseudonyms, join keys, result digests) and
//! the Ed25519 signing key (audit checkpoints, export manifests).
//!
//! `exchange keys init` creates them in the key directory with owner-only permissions; the
//! exchange refuses to start when they are missing or readable by others, and never
//! creates them implicitly (new keys would silently change every pseudonym). The public
//! key is written beside them for verifiers. No key is ever formatted: `Debug` prints
//! placeholders.

pub mod domain;
mod prf;
mod secret;
mod signing;
pub mod transport;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

pub use prf::TokenKey;
pub use secret::{KeyError, KeyRing, TokenKind};
pub use signing::{PublicKey, SigningKey};

/// File names inside the key directory.
pub const SECRET_FILE: &str = "secret.key";
/// The Ed25519 private key (PKCS#8, hex).
pub const SIGNING_FILE: &str = "signing.key";
/// The Ed25519 public key (hex), for verifiers.
pub const PUBLIC_FILE: &str = "signing.pub";

/// The keys of a running exchange.
#[derive(Debug)]
pub struct Keys {
    /// HMAC master secret.
    pub ring: KeyRing,
    /// Signing key.
    pub signing: SigningKey,
}

impl Keys {
    /// Load both keys from `dir`.
    pub fn load(dir: &Path) -> Result<Self, KeyError> {
        Ok(Self {
            ring: KeyRing::load(&dir.join(SECRET_FILE))?.with_domains(&domain::load_all(dir)?),
            signing: SigningKey::load(&dir.join(SIGNING_FILE))?,
        })
    }
}

/// Create the secret and signing keys in `dir` (mode 700 directory, 600 files) and the
/// public key file; refuses when any key file already exists. Returns the public key.
pub fn init(dir: &Path) -> Result<PublicKey, KeyError> {
    let io = |source| KeyError::Io {
        path: dir.to_path_buf(),
        source,
    };
    if [SECRET_FILE, SIGNING_FILE, PUBLIC_FILE]
        .iter()
        .any(|f| dir.join(f).exists())
    {
        return Err(KeyError::Exists {
            dir: dir.to_path_buf(),
        });
    }
    if !dir.exists() {
        // Only a directory created here is made owner-only; an existing one is the
        // operator's (the key files themselves are always 600).
        fs::create_dir_all(dir).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
    }
    KeyRing::create(&dir.join(SECRET_FILE))?;
    let signing = SigningKey::create(&dir.join(SIGNING_FILE))?;
    let public = signing.public_key();
    public.write(&dir.join(PUBLIC_FILE))?;
    Ok(public)
}

/// Create the keys unless all of them exist (the demo's first run).
pub fn ensure(dir: &Path) -> Result<(), KeyError> {
    if dir.join(SECRET_FILE).exists() && dir.join(SIGNING_FILE).exists() {
        return Ok(());
    }
    init(dir).map(|_| ())
}

/// Write a new owner-only file (never overwrites), synced.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        // Directories made here for keys are owner-only.
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(dir).map_err(io)?;
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Read a private key file after checking that only its owner can read it.
fn read_private(path: &Path) -> Result<String, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    if !path.exists() {
        return Err(KeyError::Missing {
            path: path.to_path_buf(),
        });
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    fs::read_to_string(path).map_err(io)
}

/// Where `exchange keys init` puts keys when not told otherwise.
pub fn default_dir(config_dir: &Path) -> PathBuf {
    config_dir.join("keys")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_creates_owner_only_keys_once() {
        let dir = tempfile::tempdir().unwrap();
        let kd = dir.path().join("keys");
        let public = init(&kd).unwrap();
        let keys = Keys::load(&kd).unwrap();
        assert_eq!(keys.signing.public_key(), public);
        assert_eq!(PublicKey::read(&kd.join(PUBLIC_FILE)).unwrap(), public);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in [SECRET_FILE, SIGNING_FILE] {
                let mode = fs::metadata(kd.join(f)).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{f}");
            }
        }
        let err = init(&kd).unwrap_err().to_string();
        assert!(err.contains("refusing to overwrite"), "{err}");
        // Debug output never carries key material.
        let secret = fs::read_to_string(kd.join(SIGNING_FILE)).unwrap();
        assert!(!format!("{keys:?}").contains(secret.trim()));
    }

    #[test]
    fn missing_keys_point_at_keys_init() {
        let dir = tempfile::tempdir().unwrap();
        let err = Keys::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("exchange keys init"), "{err}");
    }
}
