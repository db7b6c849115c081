//! The signed request a hub sends an agency node: on whose behalf, for what, and what it
//! needs. The node trusts nothing in it but the signature of a hub it pins, and re-resolves
//! the grant itself.
//!
//! A ticket is JSON `{"request": "<request JSON>", "key": "<hub key id>", "signature": hex}`.
//! The signature is over [`DOMAIN`] followed by the request text exactly as sent, so no
//! canonical re-encoding is needed on either side.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::FederationError;
use crate::keys::{PublicKey, SigningKey};
use crate::policy::{AttrValue, Principal};

/// Prefix of every signed request (no other signature of the hub's key can pass as one).
pub const DOMAIN: &[u8] = b"exchange-node-request/v1\n";

/// Longest a request may stay valid, in seconds.
pub const MAX_VALIDITY_SECS: i64 = 60;

/// Clock difference tolerated between hub and node, in seconds.
pub const CLOCK_SKEW_SECS: i64 = 5;

/// Largest ticket a node reads.
pub const MAX_TICKET_BYTES: usize = 64 * 1024;

/// Most bytes of predicates (as JSON) a hub puts in one request, so that a ticket stays
/// well under [`MAX_TICKET_BYTES`]; predicates beyond it stay at the hub.
pub const MAX_PREDICATE_BYTES: usize = 16 * 1024;

/// What a hub asks of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRequest {
    /// Format version (2).
    pub version: u32,
    /// The hub statement this request serves (its `statement_id` in the hub's log).
    pub statement: String,
    /// This request among the statement's (one per scan of a node's table; listed in the
    /// hub's record as `node_requests`, each served at most once).
    pub request: String,
    /// The principal, as the hub resolved it.
    pub principal: String,
    /// The principal's agency.
    pub agency: String,
    /// The principal's roles, sorted.
    pub roles: Vec<String>,
    /// The principal's attributes (row filters read them).
    pub attributes: BTreeMap<String, serde_json::Value>,
    /// The declared purpose.
    pub purpose: String,
    /// Whose tokens: the principal's agency, or an export's recipient scope.
    pub scope: String,
    /// `agency.table`.
    pub table: String,
    /// Columns of the table as the grant shows them (hidden entity and row columns
    /// included when the hub's plan needs them), in order.
    pub columns: Vec<String>,
    /// At most this many rows.
    pub limit: Option<u64>,
    /// Predicates over `columns` the node may apply (the hub applies them again).
    pub filters: Vec<super::Predicate>,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds; at most [`MAX_VALIDITY_SECS`] after `issued_at`.
    pub expires_at: i64,
    /// 32 hex digits, never accepted twice.
    pub nonce: String,
}

/// A principal's attributes as a request carries them.
pub fn attributes_of(p: &Principal) -> BTreeMap<String, serde_json::Value> {
    p.attributes
        .iter()
        .map(|(k, v)| {
            let v = match v {
                AttrValue::Str(s) => serde_json::Value::from(s.clone()),
                AttrValue::Int(i) => serde_json::Value::from(*i),
                AttrValue::Bool(b) => serde_json::Value::from(*b),
            };
            (k.clone(), v)
        })
        .collect()
}

/// A principal's roles, sorted, as a request carries them.
pub fn roles_of(p: &Principal) -> Vec<String> {
    let mut roles = p.roles.clone();
    roles.sort();
    roles
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ticket {
    request: String,
    key: String,
    signature: String,
}

/// What a request asks for, in 16 hex digits (SHA-256 of its columns, limit and filters):
/// hub and node records both carry it, so that reconcile pairs a node record only with a
/// request for the same columns.
pub fn asked_digest(
    columns: &[String],
    limit: Option<u64>,
    filters: &[super::Predicate],
) -> String {
    let mut text = String::new();
    for c in columns {
        text.push_str(&c.len().to_string());
        text.push(':');
        text.push_str(c);
        text.push('\n');
    }
    text.push_str(&limit.map_or_else(|| "-".to_string(), |l| l.to_string()));
    for f in filters {
        text.push('\n');
        text.push_str(&serde_json::to_string(f).unwrap_or_default());
    }
    let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    hex::encode(&d.as_ref()[..8])
}

/// 16 random bytes as hex.
pub fn random_id() -> Result<String, FederationError> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| FederationError::Internal("no randomness for a request nonce".into()))?;
    Ok(hex::encode(bytes))
}

/// Now, in Unix seconds.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl NodeRequest {
    /// The ticket bytes: this request signed by the hub's key.
    pub fn sign(&self, key: &SigningKey) -> Result<Vec<u8>, FederationError> {
        let request = serde_json::to_string(self)
            .map_err(|e| FederationError::Internal(format!("request not encodable: {e}")))?;
        let mut message = DOMAIN.to_vec();
        message.extend_from_slice(request.as_bytes());
        let ticket = Ticket {
            signature: key.sign_hex(&message),
            key: key.public_key().id(),
            request,
        };
        serde_json::to_vec(&ticket)
            .map_err(|e| FederationError::Internal(format!("ticket not encodable: {e}")))
    }
}

/// Who signed a verified request: the hub's name in the node's configuration and its key id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// The hub's name in `[federation.hubs]`.
    pub hub: String,
    /// Its key id.
    pub key_id: String,
}

/// Nonces seen within their validity window.
#[derive(Debug, Default)]
pub struct ReplayCache {
    seen: Mutex<BTreeMap<String, i64>>,
}

/// Nonces remembered at most: past this, requests are refused until old ones expire (a
/// flood of valid signed requests needs the hub's key).
const MAX_NONCES: usize = 1 << 20;

impl ReplayCache {
    /// Remember `nonce` until `expires_at`; false if it was seen already (or the cache is full).
    fn fresh(&self, nonce: &str, expires_at: i64, now: i64) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|_, until| until.saturating_add(CLOCK_SKEW_SECS) >= now);
        if seen.contains_key(nonce) || seen.len() >= MAX_NONCES {
            return false;
        }
        seen.insert(nonce.to_string(), expires_at);
        true
    }
}

/// Verify a ticket against the pinned hub keys: signature, validity window, nonce. The
/// error says why without echoing the ticket.
pub fn verify(
    ticket: &[u8],
    hubs: &BTreeMap<String, PublicKey>,
    replay: &ReplayCache,
    now: i64,
) -> Result<(NodeRequest, Signer), FederationError> {
    let bad = |why: &str| Err(FederationError::BadRequest(why.to_string()));
    if ticket.len() > MAX_TICKET_BYTES {
        return bad("the request is larger than any hub sends");
    }
    let Ok(t) = serde_json::from_slice::<Ticket>(ticket) else {
        return bad("the request is not a signed node request");
    };
    let Some((hub, key)) = hubs.iter().find(|(_, k)| k.id() == t.key) else {
        return bad("the request is not signed by a hub this node trusts");
    };
    let mut message = DOMAIN.to_vec();
    message.extend_from_slice(t.request.as_bytes());
    if !key.verify(&message, &t.signature) {
        return bad("the request's signature does not verify");
    }
    let Ok(request) = serde_json::from_str::<NodeRequest>(&t.request) else {
        return bad("the signed request does not parse");
    };
    if request.version != 2 {
        return bad("the request is of an unknown version");
    }
    // In i128: no pair of i64 times overflows (review 27 M1: i64::MIN..i64::MAX panicked).
    let validity = i128::from(request.expires_at) - i128::from(request.issued_at);
    if !(0..=i128::from(MAX_VALIDITY_SECS)).contains(&validity) {
        return bad("the request's validity is longer than a node accepts");
    }
    let (issued, expires, at) = (
        i128::from(request.issued_at),
        i128::from(request.expires_at),
        i128::from(now),
    );
    let skew = i128::from(CLOCK_SKEW_SECS);
    if issued > at + skew {
        return bad("the request was issued in the future (are the clocks of hub and node set?)");
    }
    if expires + skew < at {
        return bad("the request has expired");
    }
    let hex_id = |s: &str| {
        s.len() == 32
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !hex_id(&request.nonce) || !hex_id(&request.statement) || !hex_id(&request.request) {
        return bad("the request's nonce or statement id is malformed");
    }
    if !replay.fresh(&request.nonce, request.expires_at, now) {
        return bad("the request was already served (replayed)");
    }
    Ok((
        request,
        Signer {
            hub: hub.clone(),
            key_id: t.key,
        },
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn request(now: i64) -> NodeRequest {
        NodeRequest {
            version: 2,
            statement: "0".repeat(32),
            request: "1".repeat(32),
            principal: "p".into(),
            agency: "a".into(),
            roles: vec![],
            attributes: BTreeMap::new(),
            purpose: "x".into(),
            scope: "a".into(),
            table: "a.t".into(),
            columns: vec!["c".into()],
            limit: None,
            filters: vec![],
            issued_at: now,
            expires_at: now + 30,
            nonce: random_id().unwrap(),
        }
    }

    fn keys() -> (SigningKey, BTreeMap<String, PublicKey>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let k = SigningKey::create(&dir.path().join("hub.key")).unwrap();
        let pinned = BTreeMap::from([("hub".to_string(), k.public_key())]);
        (k, pinned, dir)
    }

    #[test]
    fn a_signed_request_verifies_once() {
        let (k, pinned, _d) = keys();
        let now = now();
        let r = request(now);
        let ticket = r.sign(&k).unwrap();
        let cache = ReplayCache::default();
        let (back, signer) = verify(&ticket, &pinned, &cache, now).unwrap();
        assert_eq!(back, r);
        assert_eq!(signer.hub, "hub");
        let again = verify(&ticket, &pinned, &cache, now)
            .unwrap_err()
            .to_string();
        assert!(again.contains("replayed"), "{again}");
    }

    #[test]
    fn forged_unsigned_stale_and_long_requests_are_refused() {
        let (k, pinned, dir) = keys();
        let other = SigningKey::create(&dir.path().join("other.key")).unwrap();
        let now = now();
        let cache = ReplayCache::default();
        let err = |t: &[u8]| verify(t, &pinned, &cache, now).unwrap_err().to_string();
        assert!(err(&request(now).sign(&other).unwrap()).contains("trusts"));
        assert!(err(b"{\"table\":\"a.t\"}").contains("not a signed"));
        // Edited after signing.
        let t = String::from_utf8(request(now).sign(&k).unwrap()).unwrap();
        let edited = t.replace("a.t", "a.u");
        assert!(err(edited.as_bytes()).contains("does not verify"));
        let mut stale = request(now - 600);
        stale.expires_at = now - 570;
        assert!(err(&stale.sign(&k).unwrap()).contains("expired"));
        let mut long = request(now);
        long.expires_at = now + 3600;
        assert!(err(&long.sign(&k).unwrap()).contains("validity"));
        let future = request(now + 600);
        assert!(err(&future.sign(&k).unwrap()).contains("future"));
        // Review 27 M1: times whose difference overflows an i64 are refused, not a panic.
        let mut overflow = request(now);
        overflow.issued_at = i64::MIN;
        overflow.expires_at = i64::MAX - 10;
        assert!(err(&overflow.sign(&k).unwrap()).contains("validity"));
        let mut overflow = request(now);
        overflow.issued_at = i64::MAX;
        overflow.expires_at = i64::MAX;
        assert!(err(&overflow.sign(&k).unwrap()).contains("future"));
        let mut upper = request(now);
        upper.nonce = upper
            .nonce
            .to_uppercase()
            .replace(|c: char| c.is_ascii_digit(), "A");
        assert!(err(&upper.sign(&k).unwrap()).contains("malformed"));
    }
}
