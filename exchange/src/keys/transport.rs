//! A node's X25519 transport key, to which domain keys are sealed for the key ceremony.
//!
//! Sealing: an ephemeral X25519 key agrees a secret with the recipient's transport key;
//! HKDF-SHA256 (salted with both public keys) makes a ChaCha20-Poly1305 key; the domain key
//! is encrypted under it with a random nonce, the domain name and version authenticated as
//! associated data. Only the holder of the transport private key can open it; a changed
//! byte, another domain name or version fails to open.

use std::path::Path;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, KeyType, Salt};
use ring::rand::{SecureRandom, SystemRandom};
use x25519_dalek::{PublicKey as XPublic, StaticSecret};

use super::KeyError;

/// The transport private key (X25519, hex), owner-only.
pub const TRANSPORT_FILE: &str = "transport.key";
/// The transport public key (hex), handed to nodes that seal keys to this one.
pub const TRANSPORT_PUBLIC_FILE: &str = "transport.pub";

const INFO: &[u8] = b"exchange/v1/domain-key-seal";

/// A sealed payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The sender's ephemeral public key.
    pub ephemeral: [u8; 32],
    /// The AEAD nonce.
    pub nonce: [u8; 12],
    /// Ciphertext and tag.
    pub ciphertext: Vec<u8>,
}

fn random<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| KeyError::Random)?;
    Ok(b)
}

struct Len32;
impl KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

fn aead_key(
    shared: &[u8],
    ephemeral: &[u8; 32],
    recipient: &[u8; 32],
) -> Result<LessSafeKey, KeyError> {
    let mut salt = Vec::with_capacity(64);
    salt.extend_from_slice(ephemeral);
    salt.extend_from_slice(recipient);
    let prk = Salt::new(HKDF_SHA256, &salt).extract(shared);
    let mut key = [0u8; 32];
    prk.expand(&[INFO], Len32)
        .and_then(|okm| okm.fill(&mut key))
        .map_err(|_| KeyError::Random)?;
    let unbound = UnboundKey::new(&CHACHA20_POLY1305, &key).map_err(|_| KeyError::Random)?;
    Ok(LessSafeKey::new(unbound))
}

/// Seal `plaintext` to `recipient`'s transport public key, binding `aad`.
pub fn seal(recipient: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> Result<Sealed, KeyError> {
    let ephemeral = StaticSecret::from(random::<32>()?);
    let ephemeral_public = XPublic::from(&ephemeral).to_bytes();
    let shared = ephemeral.diffie_hellman(&XPublic::from(*recipient));
    if !shared.was_contributory() {
        return Err(KeyError::Ceremony(
            "the recipient's transport key is not a valid X25519 public key".into(),
        ));
    }
    let key = aead_key(shared.as_bytes(), &ephemeral_public, recipient)?;
    let nonce = random::<12>()?;
    let mut ciphertext = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut ciphertext,
    )
    .map_err(|_| KeyError::Ceremony("sealing failed".into()))?;
    Ok(Sealed {
        ephemeral: ephemeral_public,
        nonce,
        ciphertext,
    })
}

/// A node's transport key pair.
pub struct TransportKey {
    secret: StaticSecret,
}

impl std::fmt::Debug for TransportKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TransportKey(<secret>)")
    }
}

impl TransportKey {
    /// The key pair in `dir`, created (owner-only, public key beside it) if missing.
    pub fn load_or_create(dir: &Path) -> Result<Self, KeyError> {
        let path = dir.join(TRANSPORT_FILE);
        if !path.exists() {
            let secret = StaticSecret::from(random::<32>()?);
            super::write_private(&path, hex::encode(secret.to_bytes()).as_bytes())?;
            let public = XPublic::from(&secret).to_bytes();
            let path = dir.join(TRANSPORT_PUBLIC_FILE);
            // Exclusive create: a name planted there is not followed.
            let _ = std::fs::remove_file(&path);
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .and_then(|mut f| {
                    std::io::Write::write_all(
                        &mut f,
                        format!("{}\n", hex::encode(public)).as_bytes(),
                    )
                })
                .map_err(|source| KeyError::Io { path, source })?;
            return Ok(Self { secret });
        }
        let text = super::read_private(&path)?;
        let bytes: [u8; 32] = hex::decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(KeyError::Corrupt { path })?;
        Ok(Self {
            secret: StaticSecret::from(bytes),
        })
    }

    /// The public key.
    pub fn public(&self) -> [u8; 32] {
        XPublic::from(&self.secret).to_bytes()
    }

    /// Open what was sealed to this key with `aad`.
    pub fn open(&self, sealed: &Sealed, aad: &[u8]) -> Result<Vec<u8>, KeyError> {
        let shared = self.secret.diffie_hellman(&XPublic::from(sealed.ephemeral));
        if !shared.was_contributory() {
            return Err(KeyError::Ceremony("the sealed key is malformed".into()));
        }
        let key = aead_key(shared.as_bytes(), &sealed.ephemeral, &self.public())?;
        let mut buf = sealed.ciphertext.clone();
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(sealed.nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| {
                KeyError::Ceremony(
                    "the sealed key does not open with this node's transport key (sealed to another node, altered, or for another domain or version)".into(),
                )
            })?;
        Ok(plain.to_vec())
    }
}

/// A transport public key from its hex form (64 digits).
pub fn parse_public(hex_text: &str) -> Result<[u8; 32], KeyError> {
    hex::decode(hex_text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            KeyError::Ceremony("a transport public key is 64 hex digits (transport.pub)".into())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_open_only_for_their_node_domain_and_version() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let node_b = TransportKey::load_or_create(b.path()).unwrap();
        let node_a = TransportKey::load_or_create(a.path()).unwrap();
        let sealed = seal(&node_b.public(), b"the domain secret", b"person v1").unwrap();
        assert_eq!(
            node_b.open(&sealed, b"person v1").unwrap(),
            b"the domain secret"
        );
        assert!(node_a.open(&sealed, b"person v1").is_err());
        assert!(node_b.open(&sealed, b"person v2").is_err());
        let mut altered = sealed.clone();
        altered.ciphertext[0] ^= 1;
        assert!(node_b.open(&altered, b"person v1").is_err());
        // Reloaded from its files: the same key.
        let again = TransportKey::load_or_create(b.path()).unwrap();
        assert_eq!(again.public(), node_b.public());
        assert!(!format!("{again:?}").contains(&hex::encode(again.public())));
        // A low-order point is refused.
        assert!(seal(&[0u8; 32], b"x", b"").is_err());
    }
}
