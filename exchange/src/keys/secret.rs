//! The exchange's secret key and the per-scope keys derived from it.
//!
//! One 256-bit master secret lives in a key file (created by `exchange keys init`,
//! owner-only permissions). Token keys are derived per (token kind, consumer agency, identity domain)
//! with HMAC-SHA256, so two consumer agencies' pseudonyms cannot be linked. No key is ever
//! formatted: the `Debug` impls print placeholders.

use std::path::{Path, PathBuf};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use super::TokenKey;

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
    /// No key where one is expected.
    #[error(
        "no key at {path}: create the exchange's keys with `exchange keys init` (they are never created implicitly: new keys change every pseudonym)"
    )]
    Missing {
        /// The expected key file.
        path: PathBuf,
    },
    /// `keys init` would overwrite keys.
    #[error(
        "keys already exist in {dir}; refusing to overwrite them (new keys change every pseudonym and orphan every signature)"
    )]
    Exists {
        /// The key directory.
        dir: PathBuf,
    },
    /// The domain-key ceremony failed (never carries a secret).
    #[error("{0}")]
    Ceremony(String),
    /// A public key file does not hold an Ed25519 public key.
    #[error("public key {path} is not an Ed25519 public key (expected 64 hex digits)")]
    BadPublicKey {
        /// The file.
        path: PathBuf,
    },
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
    /// Keys of identity domains that have their own (`keys/domain.rs`), by domain.
    domains: std::collections::BTreeMap<String, hmac::Key>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyRing(<secret>)")
    }
}

impl KeyRing {
    /// Create a new random master secret in `path` (mode 600); never overwrites.
    pub fn create(path: &Path) -> Result<Self, KeyError> {
        let mut secret = [0u8; 32];
        SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| KeyError::Random)?;
        super::write_private(path, hex::encode(secret).as_bytes())?;
        Ok(Self::from_secret(&secret))
    }

    /// Load the key file; it must exist, be owner-only and hold 64 hex digits.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = super::read_private(path)?;
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
            domains: std::collections::BTreeMap::new(),
        }
    }

    /// The ring with domains' own keys: their tokens derive from them, not the master.
    pub fn with_domains(
        mut self,
        domains: &std::collections::BTreeMap<String, super::domain::DomainKey>,
    ) -> Self {
        for (d, k) in domains {
            self.domains
                .insert(d.clone(), hmac::Key::new(hmac::HMAC_SHA256, k.secret()));
        }
        self
    }

    /// The key of result digests in the audit log (keyed BLAKE3, `engine/digest.rs`),
    /// derived from the secret for that use alone. (Records before it carry HMAC-SHA256
    /// digests under the key derived with `exchange/v1/result-digest`.)
    pub fn result_digest_key(&self) -> [u8; 32] {
        let derived = hmac::sign(&self.master, b"exchange/v2/result-digest-blake3");
        let mut key = [0u8; 32];
        for (k, d) in key.iter_mut().zip(derived.as_ref()) {
            *k = *d;
        }
        key
    }

    /// The key of the decoy credentials a Postgres login answers for a name that is no
    /// principal's (a salt and a key as stable as a real principal's, so that SCRAM's first
    /// answer does not tell which names exist), derived from the secret for that use alone.
    pub fn login_decoy_key(&self) -> hmac::Key {
        hmac::Key::new(
            hmac::HMAC_SHA256,
            hmac::sign(&self.master, b"exchange/v1/pg-login-decoy").as_ref(),
        )
    }

    /// The scope of export pseudonyms of one agency for one recipient: exports to two
    /// recipients are keyed apart so that their files cannot be linked, and a leaked file
    /// can be traced.
    pub fn recipient_scope(agency: &str, recipient: &str) -> String {
        // Keyed per exporting agency too: two agencies' files to one recipient stay as
        // unlinkable as the agencies' own results are.
        format!("recipient:{agency}:{recipient}")
    }

    /// The token key for one scope.
    pub fn token_key(&self, kind: TokenKind, consumer: &str, domain: &str) -> TokenKey {
        let info = format!("exchange/v1/{}/{consumer}/{domain}", kind.label());
        let root = self.domains.get(domain).unwrap_or(&self.master);
        let derived = hmac::sign(root, info.as_bytes());
        TokenKey::new(derived.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn creates_owner_only_key_and_reloads_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/secret.key");
        let a = KeyRing::create(&path).unwrap();
        let b = KeyRing::load(&path).unwrap();
        assert!(matches!(KeyRing::create(&path), Err(KeyError::Io { .. })));
        let ka = a.token_key(TokenKind::Pseudonym, "hrss", "person");
        let kb = b.token_key(TokenKind::Pseudonym, "hrss", "person");
        assert_eq!(ka.sign(b"x"), kb.sign(b"x"));
        assert!(!format!("{a:?}").contains(&fs::read_to_string(&path).unwrap()));
    }

    #[test]
    fn scopes_get_different_keys() {
        let ring = KeyRing::from_secret(&[7u8; 32]);
        let sig = |k: TokenKey| k.sign(b"110105194912310021").to_vec();
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
        let err = KeyRing::load(&path).unwrap_err().to_string();
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
        let err = KeyRing::load(&path).unwrap_err().to_string();
        assert!(err.contains("corrupt"), "{err}");
    }
}
