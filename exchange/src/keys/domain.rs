//! Domain keys: the secret of one identity domain (`person`, `enterprise`...) from which
//! join keys and pseudonyms of that domain derive, instead of the exchange's master secret.
//!
//! In a federated deployment the agency nodes of a domain hold its key and the hub never
//! does (../shared/spec/federation.md, "Keys across agencies"): join keys must match across
//! agencies, so every node of the domain holds the same secret, handed over by the key
//! ceremony: `exchange keys domain create` on one node, `exchange keys transport` on each
//! other node (its X25519 transport public key), `exchange keys domain export DOMAIN --to
//! transport.pub` sealed to it and signed with the sender's Ed25519 signing key,
//! `exchange keys domain import FILE --from sender's signing.pub` there: the recipient
//! opens only files sealed to it *and* signed by the peer it names (a transport public key
//! is public: anyone can seal to it, review of the ceremony H1). `rotate` makes a new
//! version (the old one kept under `domains/archive/`), which is handed over the same way;
//! a node imports only a version newer than its own. Files are owner-only; no secret is
//! ever formatted.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use super::transport::{Sealed, TransportKey, seal};
use super::{KeyError, PublicKey, SigningKey};

/// Directory of domain keys under the key directory.
pub const DOMAINS_DIR: &str = "domains";
/// The domains that have had a key here, one per line: a key file missing for one of them
/// stops the exchange instead of its tokens silently falling back to the master secret.
const REQUIRED_FILE: &str = "required";
const FORMAT: &str = "exchange-domain-key/v1";

/// One domain's current key.
#[derive(Clone, PartialEq, Eq)]
pub struct DomainKey {
    /// Version, from 1, raised by each rotation.
    pub version: u32,
    secret: [u8; 32],
}

impl std::fmt::Debug for DomainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DomainKey(v{}, <secret>)", self.version)
    }
}

impl DomainKey {
    /// The secret bytes, for the key ring only.
    pub(super) fn secret(&self) -> &[u8; 32] {
        &self.secret
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    version: u32,
    secret: String,
}

/// A domain key sealed to one node's transport key, as a file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedFile {
    format: String,
    domain: String,
    version: u32,
    /// The transport public key it is sealed to.
    recipient: String,
    /// The sender's Ed25519 public key (its `signing.pub`).
    sender: String,
    ephemeral: String,
    nonce: String,
    ciphertext: String,
    /// The sender's signature over every field above.
    signature: String,
}

impl SealedFile {
    /// What the sender signs: every field, length-prefixed.
    fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for field in [
            self.format.as_str(),
            self.domain.as_str(),
            &self.version.to_string(),
            self.recipient.as_str(),
            self.sender.as_str(),
            self.ephemeral.as_str(),
            self.nonce.as_str(),
            self.ciphertext.as_str(),
        ] {
            out.extend_from_slice(&(field.len() as u64).to_be_bytes());
            out.extend_from_slice(field.as_bytes());
        }
        out
    }
}

fn ceremony(what: impl Into<String>) -> KeyError {
    KeyError::Ceremony(what.into())
}

fn valid_domain(domain: &str) -> Result<(), KeyError> {
    if domain.is_empty()
        || domain.len() > 64
        || !domain
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(ceremony(format!(
            "{domain:?} is not a domain name (lowercase letters, digits and _)"
        )));
    }
    Ok(())
}

fn path_of(key_dir: &Path, domain: &str) -> PathBuf {
    key_dir.join(DOMAINS_DIR).join(format!("{domain}.key"))
}

fn read(path: &Path) -> Result<DomainKey, KeyError> {
    let text = super::read_private(path)?;
    let corrupt = || KeyError::Corrupt {
        path: path.to_path_buf(),
    };
    let file: KeyFile = toml::from_str(&text).map_err(|_| corrupt())?;
    let secret: [u8; 32] = hex::decode(file.secret.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(corrupt)?;
    if file.version == 0 {
        return Err(corrupt());
    }
    Ok(DomainKey {
        version: file.version,
        secret,
    })
}

/// Write `key` as `domain`'s current key: beside it first, then renamed into place, the
/// replaced version (if any) kept in `domains/archive/`. A domain is never left without a
/// key (its tokens would silently fall back to the master secret).
fn install(key_dir: &Path, domain: &str, key: &DomainKey) -> Result<(), KeyError> {
    let path = path_of(key_dir, domain);
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| KeyError::Io { path: p, source }
    };
    let staged = path.with_extension("key.new");
    let _ = fs::remove_file(&staged);
    let text = toml::to_string(&KeyFile {
        version: key.version,
        secret: hex::encode(key.secret),
    })
    .map_err(|e| ceremony(e.to_string()))?;
    super::write_private(&staged, text.as_bytes())?;
    if path.exists() {
        // Kept before it is replaced, written as every key file is (exclusive create,
        // owner-only: a symlink planted at the archive's name is not followed).
        let old = read(&path)?;
        let archive = key_dir
            .join(DOMAINS_DIR)
            .join("archive")
            .join(format!("{domain}.v{}.key", old.version));
        let text = super::read_private(&path)?;
        super::write_private(&archive, text.as_bytes())?;
    }
    fs::rename(&staged, &path).map_err(io(&path))?;
    require(key_dir, domain)?;
    if let Ok(d) = fs::File::open(key_dir.join(DOMAINS_DIR)) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The domains listed as having had a key here.
fn required(key_dir: &Path) -> Vec<String> {
    fs::read_to_string(key_dir.join(DOMAINS_DIR).join(REQUIRED_FILE))
        .map(|t| {
            t.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// List `domain` as required (written beside, then renamed into place).
fn require(key_dir: &Path, domain: &str) -> Result<(), KeyError> {
    let mut all = required(key_dir);
    if all.iter().any(|d| d == domain) {
        return Ok(());
    }
    all.push(domain.to_string());
    let path = key_dir.join(DOMAINS_DIR).join(REQUIRED_FILE);
    let staged = path.with_extension("new");
    let io = |source| KeyError::Io {
        path: path.clone(),
        source,
    };
    let _ = fs::remove_file(&staged);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&staged)
        .and_then(|mut f| {
            std::io::Write::write_all(&mut f, format!("{}\n", all.join("\n")).as_bytes())
        })
        .map_err(io)?;
    fs::rename(&staged, &path).map_err(io)
}

/// Every domain's current key in the key directory (none: tokens derive from the master
/// secret). A domain listed as required without its key file is an error.
pub fn load_all(key_dir: &Path) -> Result<BTreeMap<String, DomainKey>, KeyError> {
    let dir = key_dir.join(DOMAINS_DIR);
    let mut keys = BTreeMap::new();
    for domain in required(key_dir) {
        if !path_of(key_dir, &domain).exists() {
            return Err(ceremony(format!(
                "domain {domain} has had a key of its own here ({}) but {} is missing: restore it from a backup or import it again (without it the domain's pseudonyms and join keys would silently change)",
                dir.join(REQUIRED_FILE).display(),
                path_of(key_dir, &domain).display()
            )));
        }
    }
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(keys);
    };
    for e in entries {
        let path = e
            .map_err(|source| KeyError::Io {
                path: dir.clone(),
                source,
            })?
            .path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some(domain) = name.strip_suffix(".key") {
            keys.insert(domain.to_string(), read(&path)?);
        }
    }
    Ok(keys)
}

fn random_key(version: u32) -> Result<DomainKey, KeyError> {
    let mut secret = [0u8; 32];
    SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| KeyError::Random)?;
    Ok(DomainKey { version, secret })
}

/// Create the first key of `domain`; refuses if it has one.
pub fn create(key_dir: &Path, domain: &str) -> Result<DomainKey, KeyError> {
    valid_domain(domain)?;
    if path_of(key_dir, domain).exists() {
        return Err(ceremony(format!(
            "domain {domain} has a key already (rotate it, or import the one its other nodes hold)"
        )));
    }
    let key = random_key(1)?;
    install(key_dir, domain, &key)?;
    Ok(key)
}

/// A new version of `domain`'s key; the old one is archived.
pub fn rotate(key_dir: &Path, domain: &str) -> Result<DomainKey, KeyError> {
    valid_domain(domain)?;
    let current = read(&path_of(key_dir, domain))?;
    let next = current
        .version
        .checked_add(1)
        .ok_or_else(|| ceremony(format!("domain {domain} is at its last version")))?;
    let key = random_key(next)?;
    install(key_dir, domain, &key)?;
    Ok(key)
}

fn aad(domain: &str, version: u32, sender: &str) -> Vec<u8> {
    format!("{FORMAT}|{domain}|{version}|{sender}").into_bytes()
}

/// `domain`'s current key sealed to the node whose transport public key is `to` and signed
/// with `signer` (this node's signing key), as the text of a file to hand over.
pub fn export(
    key_dir: &Path,
    domain: &str,
    to: &[u8; 32],
    signer: &SigningKey,
) -> Result<String, KeyError> {
    valid_domain(domain)?;
    let key = read(&path_of(key_dir, domain))?;
    let sender = signer.public_key().to_hex();
    let sealed = seal(to, key.secret(), &aad(domain, key.version, &sender))?;
    let mut file = SealedFile {
        format: FORMAT.into(),
        domain: domain.into(),
        version: key.version,
        recipient: hex::encode(to),
        sender,
        ephemeral: hex::encode(sealed.ephemeral),
        nonce: hex::encode(sealed.nonce),
        ciphertext: hex::encode(&sealed.ciphertext),
        signature: String::new(),
    };
    file.signature = signer.sign_hex(&file.signed_bytes());
    serde_json::to_string_pretty(&file).map_err(|e| ceremony(e.to_string()))
}

/// Open a sealed domain key signed by `from` (the sending node's signing public key,
/// pinned by the operator) with this node's transport key and install it: the first key of
/// its domain, or a newer version than the one held. Returns its domain and version.
pub fn import(
    key_dir: &Path,
    sealed_text: &str,
    from: &PublicKey,
) -> Result<(String, u32), KeyError> {
    let bad = |why: &str| ceremony(format!("not a sealed domain key: {why}"));
    let file: SealedFile = serde_json::from_str(sealed_text).map_err(|_| bad("unreadable"))?;
    if file.format != FORMAT {
        return Err(bad("unknown format"));
    }
    valid_domain(&file.domain)?;
    if file.version == 0 {
        return Err(bad("version 0"));
    }
    if file.sender != from.to_hex() || !from.verify(&file.signed_bytes(), &file.signature) {
        return Err(ceremony(format!(
            "the sealed key is not signed by the node named with --from (key id {}); refusing it",
            from.id()
        )));
    }
    let transport = TransportKey::load_or_create(key_dir)?;
    if file.recipient != hex::encode(transport.public()) {
        return Err(ceremony(
            "this sealed key is for another node (its recipient is not this node's transport key)",
        ));
    }
    let hex32 = |s: &str| -> Result<[u8; 32], KeyError> {
        hex::decode(s)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("malformed"))
    };
    let nonce: [u8; 12] = hex::decode(&file.nonce)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("malformed"))?;
    let sealed = Sealed {
        ephemeral: hex32(&file.ephemeral)?,
        nonce,
        ciphertext: hex::decode(&file.ciphertext).map_err(|_| bad("malformed"))?,
    };
    let secret: [u8; 32] = transport
        .open(&sealed, &aad(&file.domain, file.version, &file.sender))?
        .try_into()
        .map_err(|_| bad("malformed"))?;
    let key = DomainKey {
        version: file.version,
        secret,
    };
    // Only a key that is not there is replaced without comparing: an unreadable one is the
    // operator's to fix, never silently overwritten by an older version (review H2).
    match read(&path_of(key_dir, &file.domain)) {
        Ok(held) if held == key => {}
        Ok(held) if held.version >= key.version => {
            return Err(ceremony(format!(
                "domain {} holds version {} here; version {} is not newer",
                file.domain, held.version, key.version
            )));
        }
        Ok(_) | Err(KeyError::Missing { .. }) => install(key_dir, &file.domain, &key)?,
        Err(e) => return Err(e),
    }
    Ok((file.domain, file.version))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(dir: &Path) -> SigningKey {
        crate::keys::init(dir).unwrap();
        SigningKey::load(&dir.join(crate::keys::SIGNING_FILE)).unwrap()
    }

    #[test]
    fn a_domain_key_travels_sealed_and_signed_and_rotates_forward_only() {
        let root = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            root.path().join("a"),
            root.path().join("b"),
            root.path().join("c"),
        );
        let (sa, _sb, sc) = (node(&a), node(&b), node(&c));
        let from_a = sa.public_key();
        let made = create(&a, "person").unwrap();
        assert!(create(&a, "person").is_err());
        let to_b = TransportKey::load_or_create(&b).unwrap().public();
        let sealed = export(&a, "person", &to_b, &sa).unwrap();
        assert!(!sealed.contains(&hex::encode(made.secret())));
        // Only b opens it, and only from a.
        TransportKey::load_or_create(&c).unwrap();
        assert!(import(&c, &sealed, &from_a).is_err());
        assert!(import(&b, &sealed, &sc.public_key()).is_err());
        // Anyone can seal to b's public transport key: without a's signature it is refused.
        fs::create_dir_all(c.join(DOMAINS_DIR)).unwrap();
        let forged = export_forged(&c, &to_b, &sc);
        assert!(import(&b, &forged, &from_a).is_err());
        assert_eq!(import(&b, &sealed, &from_a).unwrap(), ("person".into(), 1));
        assert_eq!(load_all(&b).unwrap()["person"], made);
        // Importing it again is a no-op; an older version after a rotation is refused.
        import(&b, &sealed, &from_a).unwrap();
        let rotated = rotate(&a, "person").unwrap();
        assert_eq!(rotated.version, 2);
        assert!(a.join("domains/archive/person.v1.key").exists());
        let newer = export(&a, "person", &to_b, &sa).unwrap();
        import(&b, &newer, &from_a).unwrap();
        assert_eq!(load_all(&b).unwrap()["person"], rotated);
        assert!(import(&b, &sealed, &from_a).is_err());
        // Tampering with the stated version fails.
        let lied = newer.replace("\"version\": 2", "\"version\": 3");
        assert!(import(&b, &lied, &from_a).is_err());
        assert!(create(&a, "../x").is_err());
        // A lost key file of a domain that had one stops the load (no silent fallback).
        fs::rename(b.join("domains/person.key"), b.join("person.key.away")).unwrap();
        let e = load_all(&b).unwrap_err().to_string();
        assert!(e.contains("domain person has had a key"), "{e}");
        fs::rename(b.join("person.key.away"), b.join("domains/person.key")).unwrap();
        // An unreadable current key is never replaced by an import (it was rolled back).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let held = b.join("domains/person.key");
            fs::set_permissions(&held, fs::Permissions::from_mode(0o644)).unwrap();
            let again = export(&a, "person", &to_b, &sa).unwrap();
            assert!(import(&b, &again, &from_a).is_err());
            fs::set_permissions(&held, fs::Permissions::from_mode(0o600)).unwrap();
            assert_eq!(load_all(&b).unwrap()["person"], rotated);
        }
    }

    /// A key of c's own choosing for domain person, sealed to `to` and signed by c.
    fn export_forged(c: &Path, to: &[u8; 32], sc: &SigningKey) -> String {
        let _ = create(c, "person");
        export(c, "person", to, sc).unwrap()
    }
}
