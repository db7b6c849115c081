//! Credentials: password hashes and API token hashes in the principals file, and the
//! expiring bearer tokens the Flight handshake issues.
//!
//! - Passwords: PBKDF2-HMAC-SHA256 with a random salt (`pbkdf2-sha256$iterations$salt$hash`),
//!   verified in constant time by ring.
//! - API tokens: `exk_` + 256 random bits, shown once; the file keeps an HMAC-SHA256 tag of
//!   the token (`hmac-sha256$tag`), compared in constant time. Tokens are high-entropy, so a
//!   fast hash is enough.
//! - Session tokens: `exs.<principal>.<expiry>.<tag>`, tagged with a key drawn at server
//!   start, so they die with the server and cannot be forged or extended.

use std::fs;
use std::num::NonZeroU32;
use std::path::Path;

use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hmac, pbkdf2};

use crate::policy::{PolicySet, Principal};

/// Default PBKDF2 iterations for new password hashes (OWASP 2023 for PBKDF2-HMAC-SHA256).
pub const DEFAULT_ITERATIONS: u32 = 600_000;

/// Errors of credential handling.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The principals file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The principal is not declared.
    #[error("no principal '{0}' in the principals file")]
    UnknownPrincipal(String),
    /// The system random generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// A bad argument.
    #[error("{0}")]
    Invalid(String),
}

fn random<const N: usize>() -> Result<[u8; N], AuthError> {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| AuthError::Random)?;
    Ok(b)
}

/// A salted, slow hash of a password.
pub fn hash_password(password: &str, iterations: u32) -> Result<String, AuthError> {
    let iterations = NonZeroU32::new(iterations)
        .ok_or_else(|| AuthError::Invalid("iterations must be positive".into()))?;
    let salt = random::<16>()?;
    let mut out = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        &salt,
        password.as_bytes(),
        &mut out,
    );
    Ok(format!(
        "pbkdf2-sha256${iterations}${}${}",
        hex::encode(salt),
        hex::encode(out)
    ))
}

/// The parts of a stored password hash (iterations, salt, derived key): the derived key is
/// SCRAM-SHA-256's salted password, so Postgres clients prove the password without sending
/// it (RFC 7677).
pub(crate) fn password_parts(stored: &str) -> Option<(u32, Vec<u8>, Vec<u8>)> {
    let parts: Vec<&str> = stored.split('$').collect();
    let ["pbkdf2-sha256", iterations, salt, hash] = parts.as_slice() else {
        return None;
    };
    let iterations = iterations.parse::<u32>().ok().filter(|i| *i > 0)?;
    let hash = hex::decode(hash).ok().filter(|h| h.len() == 32)?;
    Some((iterations, hex::decode(salt).ok()?, hash))
}

/// Whether `password` matches a stored hash (constant time).
pub fn verify_password(password: &str, stored: &str) -> bool {
    let parts: Vec<&str> = stored.split('$').collect();
    let [scheme, iterations, salt, hash] = parts.as_slice() else {
        return false;
    };
    let (Ok(iterations), Ok(salt), Ok(hash)) = (
        iterations.parse::<u32>(),
        hex::decode(salt),
        hex::decode(hash),
    ) else {
        return false;
    };
    let Some(iterations) = NonZeroU32::new(iterations) else {
        return false;
    };
    *scheme == "pbkdf2-sha256"
        && pbkdf2::verify(
            pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            &salt,
            password.as_bytes(),
            &hash,
        )
        .is_ok()
}

fn token_key() -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, b"exchange/v1/api-token")
}

/// A new API token and the hash to store.
pub fn new_api_token() -> Result<(String, String), AuthError> {
    let token = format!("exk_{}", hex::encode(random::<32>()?));
    Ok((token.clone(), hash_api_token(&token)))
}

/// The stored form of an API token.
pub fn hash_api_token(token: &str) -> String {
    format!(
        "hmac-sha256${}",
        hex::encode(hmac::sign(&token_key(), token.as_bytes()).as_ref())
    )
}

/// The principal holding `token`, comparing against every stored tag in constant time.
pub fn principal_of_api_token<'a>(policies: &'a PolicySet, token: &str) -> Option<&'a Principal> {
    let key = token_key();
    let mut found = None;
    for p in policies.principals() {
        for stored in &p.api_tokens {
            let Some(tag) = stored
                .strip_prefix("hmac-sha256$")
                .and_then(|h| hex::decode(h).ok())
            else {
                continue;
            };
            if hmac::verify(&key, token.as_bytes(), &tag).is_ok() {
                found = Some(p);
            }
        }
    }
    found
}

/// Issues and checks the bearer tokens of one server run.
pub struct SessionTokens {
    key: hmac::Key,
    ttl_secs: i64,
}

impl std::fmt::Debug for SessionTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionTokens(<key>, ttl {}s)", self.ttl_secs)
    }
}

impl SessionTokens {
    /// A fresh key; tokens live `ttl_secs`.
    pub fn new(ttl_secs: i64) -> Result<Self, AuthError> {
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &random::<32>()?),
            ttl_secs,
        })
    }

    /// A token for `principal` logged in under credentials `stamp`
    /// ([`credential_stamp`]), valid until now + ttl.
    pub fn issue(&self, principal: &str, stamp: &str) -> String {
        let expiry = chrono::Utc::now().timestamp().saturating_add(self.ttl_secs);
        let name = base64::prelude::BASE64_URL_SAFE_NO_PAD.encode(principal);
        let body = format!("exs.{name}.{stamp}.{expiry}");
        let tag = hmac::sign(&self.key, body.as_bytes());
        format!("{body}.{}", hex::encode(tag.as_ref()))
    }

    /// The principal of a valid, unexpired token and the credential stamp it was issued
    /// under; otherwise why not.
    pub fn check(&self, token: &str) -> Result<(String, String), &'static str> {
        let mut parts = token.rsplitn(2, '.');
        let (Some(tag), Some(body)) = (parts.next(), parts.next()) else {
            return Err("malformed token");
        };
        let tag = hex::decode(tag).map_err(|_| "malformed token")?;
        hmac::verify(&self.key, body.as_bytes(), &tag).map_err(|_| "invalid token")?;
        let fields: Vec<&str> = body.split('.').collect();
        let [_, name, stamp, expiry] = fields.as_slice() else {
            return Err("malformed token");
        };
        let expiry: i64 = expiry.parse().map_err(|_| "malformed token")?;
        if chrono::Utc::now().timestamp() > expiry {
            return Err("token expired: log in again");
        }
        let name = base64::prelude::BASE64_URL_SAFE_NO_PAD
            .decode(name)
            .map_err(|_| "malformed token")?;
        let name = String::from_utf8(name).map_err(|_| "malformed token")?;
        Ok((name, stamp.to_string()))
    }
}

/// Whether two credential stamps are equal, in time independent of where they differ.
pub(crate) fn same_stamp(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A short fingerprint of how a principal logs in (its name and password hash): a session
/// token or a console session keeps the one it began under, and stops working once the
/// password is changed or the principal removed from the policies (a reload applies it
/// to the next call).
pub fn credential_stamp(p: &crate::policy::Principal) -> String {
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    h.update(b"exchange credential stamp\0");
    h.update(p.name.as_bytes());
    h.update(b"\0");
    h.update(p.password_hash.as_deref().unwrap_or("").as_bytes());
    hex::encode(&h.finish().as_ref()[..8])
}

/// Set (replace) a `key = value` line in the `[[principal]]` block named `principal` of a
/// principals file, keeping everything else as written.
pub fn set_principal_field(
    file: &Path,
    principal: &str,
    key: &str,
    value: &str,
) -> Result<(), AuthError> {
    let io = |source| AuthError::Io {
        path: file.to_path_buf(),
        source,
    };
    let text = fs::read_to_string(file).map_err(io)?;
    let lines: Vec<&str> = text.lines().collect();
    let name_line = format!("name = \"{principal}\"");
    if lines.iter().any(|l| {
        l.trim_start().starts_with(&format!("{key} =")) && l.contains('[') && !l.contains(']')
    }) {
        return Err(AuthError::Invalid(format!(
            "{}: a multi-line `{key}` array; write it on one line before using this command",
            file.display()
        )));
    }
    let start = lines
        .iter()
        .position(|l| l.trim() == name_line)
        .ok_or_else(|| AuthError::UnknownPrincipal(principal.to_string()))?;
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.trim_start().starts_with('['))
        .map(|i| start + 1 + i)
        .unwrap_or(lines.len());
    let new_line = format!("{key} = {value}");
    let mut out: Vec<String> = Vec::with_capacity(lines.len() + 1);
    let mut replaced = false;
    for (i, l) in lines.iter().enumerate() {
        if i > start && i < end && l.trim_start().starts_with(&format!("{key} =")) {
            out.push(new_line.clone());
            replaced = true;
        } else {
            out.push((*l).to_string());
        }
    }
    if !replaced {
        // After the block's last non-blank line.
        let mut at = end;
        while at > start + 1 && out[at - 1].trim().is_empty() {
            at -= 1;
        }
        out.insert(at, new_line);
    }
    let mut new_text = out.join("\n");
    new_text.push('\n');
    if let Err(e) = toml::from_str::<toml::Table>(&new_text) {
        return Err(AuthError::Invalid(format!(
            "{}: the edited file would not parse ({e}); left unchanged",
            file.display()
        )));
    }
    // Write beside (same permissions as the original) and rename, so a crash never
    // leaves half a principals file and the hashes never become more readable.
    let tmp = file.with_extension(format!("toml.tmp-{}", std::process::id()));
    fs::write(&tmp, new_text).map_err(io)?;
    if let Ok(meta) = fs::metadata(file) {
        fs::set_permissions(&tmp, meta.permissions()).map_err(io)?;
    }
    fs::rename(&tmp, file).map_err(io)
}

/// The API token hashes already stored for `principal`.
pub fn stored_tokens(policies: &PolicySet, principal: &str) -> Result<Vec<String>, AuthError> {
    policies
        .principal(principal)
        .map(|p| p.api_tokens.clone())
        .ok_or_else(|| AuthError::UnknownPrincipal(principal.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_only_themselves() {
        let h = hash_password("correct horse", 1000).unwrap();
        assert!(h.starts_with("pbkdf2-sha256$1000$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("correct hors", &h));
        assert!(!verify_password("correct horse", "garbage"));
        assert_ne!(h, hash_password("correct horse", 1000).unwrap(), "salted");
    }

    #[test]
    fn session_tokens_expire_and_cannot_be_forged() {
        let t = SessionTokens::new(60).unwrap();
        let tok = t.issue("hrss_analyst", "00ff");
        assert_eq!(
            t.check(&tok),
            Ok(("hrss_analyst".to_string(), "00ff".to_string()))
        );
        let other = SessionTokens::new(60).unwrap();
        assert_eq!(other.check(&tok), Err("invalid token"));
        let forged = tok.replace("exs.", "exs.x");
        assert!(t.check(&forged).is_err());
        let expired = SessionTokens::new(-1).unwrap();
        assert_eq!(
            expired.check(&expired.issue("p", "00")),
            Err("token expired: log in again")
        );
    }

    #[test]
    fn principal_fields_are_set_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("principals.toml");
        fs::write(
            &f,
            "# comment\n[[principal]]\nname = \"a\"\nagency = \"x\"\n\n[[principal]]\nname = \"b\"\nagency = \"y\"\n",
        )
        .unwrap();
        set_principal_field(&f, "a", "password_hash", "\"h1\"").unwrap();
        set_principal_field(&f, "a", "password_hash", "\"h2\"").unwrap();
        set_principal_field(&f, "b", "api_tokens", "[\"t\"]").unwrap();
        let text = fs::read_to_string(&f).unwrap();
        assert_eq!(
            text,
            "# comment\n[[principal]]\nname = \"a\"\nagency = \"x\"\npassword_hash = \"h2\"\n\n[[principal]]\nname = \"b\"\nagency = \"y\"\napi_tokens = [\"t\"]\n"
        );
        assert!(set_principal_field(&f, "zz", "k", "v").is_err());
    }
}
