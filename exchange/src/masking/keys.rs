//! The exchange's secret key and the per-scope keys derived from it.
//!
//! One 256-bit master secret lives in a key file (created on first run, owner-only
//! permissions). Token keys are derived per (token kind, consumer agency, identity domain)
//! with HMAC-SHA256, so two consumer agencies' pseudonyms cannot be linked. No key is ever
//! formatted: the `Debug` impls print placeholders.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// Errors of key handling.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The key file exists but does not hold a key.
    #[error("key file {path} is corrupt: expected 64 hex digits")]
    Corrupt {
        /// The key file.
        path: PathBuf,
    },
    /// The key file can be read by other users.
    #[error(
        "key file {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// The system random generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// What a token is for: output pseudonyms and join-only keys never share keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// Visible pseudonyms.
    Pseudonym,
    /// Join keys, never output.
    JoinKey,
    /// Typed random replacements (valid-looking identifiers).
    Replace,
}

impl TokenKind {
    fn label(self) -> &'static str {
        match self {
            TokenKind::Pseudonym => "pseudonym",
            TokenKind::JoinKey => "join_key",
            TokenKind::Replace => "typed_random_replace",
        }
    }
}

/// The master secret.
pub struct KeyRing {
    master: hmac::Key,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyRing(<secret>)")
    }
}

impl KeyRing {
    /// Load the key file, creating it (mode 600) when it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        if !path.exists() {
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).map_err(io)?;
            }
            let mut secret = [0u8; 32];
            SystemRandom::new()
                .fill(&mut secret)
                .map_err(|_| KeyError::Random)?;
            let mut options = fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = options.open(path).map_err(io)?;
            file.write_all(hex::encode(secret).as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
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
        let text = fs::read_to_string(path).map_err(io)?;
        let secret = hex::decode(text.trim()).map_err(|_| KeyError::Corrupt {
            path: path.to_path_buf(),
        })?;
        if secret.len() != 32 {
            return Err(KeyError::Corrupt {
                path: path.to_path_buf(),
            });
        }
        Ok(Self::from_secret(&secret))
    }

    /// A key ring over raw secret bytes (tests, benchmarks).
    pub fn from_secret(secret: &[u8]) -> Self {
        Self {
            master: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// The key of result digests in the audit log.
    pub fn digest_key(&self) -> hmac::Key {
        let derived = hmac::sign(&self.master, b"exchange/v1/result-digest");
        hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
    }

    /// The token key for one scope.
    pub fn token_key(&self, kind: TokenKind, consumer: &str, domain: &str) -> hmac::Key {
        let info = format!("exchange/v1/{}/{consumer}/{domain}", kind.label());
        let derived = hmac::sign(&self.master, info.as_bytes());
        hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_owner_only_key_and_reloads_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/secret.key");
        let a = KeyRing::load_or_create(&path).unwrap();
        let b = KeyRing::load_or_create(&path).unwrap();
        let ka = a.token_key(TokenKind::Pseudonym, "hrss", "person");
        let kb = b.token_key(TokenKind::Pseudonym, "hrss", "person");
        assert_eq!(
            hmac::sign(&ka, b"x").as_ref(),
            hmac::sign(&kb, b"x").as_ref()
        );
        assert!(!format!("{a:?}").contains(&fs::read_to_string(&path).unwrap()));
    }

    #[test]
    fn scopes_get_different_keys() {
        let ring = KeyRing::from_secret(&[7u8; 32]);
        let sig = |k: hmac::Key| hmac::sign(&k, b"110105194912310021").as_ref().to_vec();
        let base = sig(ring.token_key(TokenKind::Pseudonym, "hrss", "person"));
        assert_ne!(
            base,
            sig(ring.token_key(TokenKind::Pseudonym, "civil", "person"))
        );
        assert_ne!(
            base,
            sig(ring.token_key(TokenKind::JoinKey, "hrss", "person"))
        );
        assert_ne!(
            base,
            sig(ring.token_key(TokenKind::Pseudonym, "hrss", "phone"))
        );
    }

    #[cfg(unix)]
    #[test]
    fn refuses_world_readable_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        fs::write(&path, "00".repeat(32)).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = KeyRing::load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn corrupt_key_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        fs::write(&path, "not hex").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        }
        let err = KeyRing::load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("corrupt"), "{err}");
    }
}
