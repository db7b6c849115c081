//! The Ed25519 signing key of the exchange and public keys for verifiers.

use std::fs;
use std::path::Path;

use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use super::KeyError;

/// The exchange's signing key (audit checkpoints, export manifests).
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey(<secret>, id {})", self.public_key().id())
    }
}

impl SigningKey {
    /// Generate a key and store it (PKCS#8, hex) in a new owner-only file.
    pub fn create(path: &Path) -> Result<Self, KeyError> {
        let pkcs8 =
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Random)?;
        super::write_private(path, hex::encode(pkcs8.as_ref()).as_bytes())?;
        Self::from_pkcs8(pkcs8.as_ref(), path)
    }

    /// Load the key from an owner-only file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = super::read_private(path)?;
        let bytes = hex::decode(text.trim()).map_err(|_| KeyError::Corrupt {
            path: path.to_path_buf(),
        })?;
        Self::from_pkcs8(&bytes, path)
    }

    fn from_pkcs8(bytes: &[u8], path: &Path) -> Result<Self, KeyError> {
        Ed25519KeyPair::from_pkcs8(bytes)
            .map(|pair| Self { pair })
            .map_err(|_| KeyError::Corrupt {
                path: path.to_path_buf(),
            })
    }

    /// Sign a message; the signature as hex.
    pub fn sign_hex(&self, message: &[u8]) -> String {
        hex::encode(self.pair.sign(message).as_ref())
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.pair.public_key().as_ref().to_vec())
    }
}

/// An Ed25519 public key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(Vec<u8>);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

impl PublicKey {
    /// Parse 64 hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes = hex::decode(text.trim()).ok()?;
        (bytes.len() == 32).then_some(Self(bytes))
    }

    /// Read a public key file (64 hex digits).
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let text = fs::read_to_string(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                KeyError::Missing {
                    path: path.to_path_buf(),
                }
            } else {
                KeyError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        Self::from_hex(&text).ok_or_else(|| KeyError::BadPublicKey {
            path: path.to_path_buf(),
        })
    }

    /// Write the key as hex (world-readable: it is public).
    pub fn write(&self, path: &Path) -> Result<(), KeyError> {
        fs::write(path, format!("{}\n", self.to_hex())).map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Hex encoding.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }

    /// A short identifier: the first 16 hex digits of the key's SHA-256.
    pub fn id(&self) -> String {
        let d = ring::digest::digest(&ring::digest::SHA256, &self.0);
        hex::encode(&d.as_ref()[..8])
    }

    /// Whether `signature_hex` is this key's signature of `message`.
    pub fn verify(&self, message: &[u8], signature_hex: &str) -> bool {
        let Ok(sig) = hex::decode(signature_hex) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, &sig)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_under_their_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let a = SigningKey::create(&dir.path().join("a.key")).unwrap();
        let b = SigningKey::create(&dir.path().join("b.key")).unwrap();
        let sig = a.sign_hex(b"checkpoint 7");
        assert!(a.public_key().verify(b"checkpoint 7", &sig));
        assert!(!a.public_key().verify(b"checkpoint 8", &sig));
        assert!(!b.public_key().verify(b"checkpoint 7", &sig));
        assert!(!a.public_key().verify(b"checkpoint 7", "zz"));
        let reloaded = SigningKey::load(&dir.path().join("a.key")).unwrap();
        assert_eq!(reloaded.public_key(), a.public_key());
        assert_eq!(
            PublicKey::from_hex(&a.public_key().to_hex()),
            Some(a.public_key())
        );
    }
}
