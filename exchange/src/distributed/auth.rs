//! Who may talk to a worker: a signed, expiring, single-use header on every request.
//!
//! Every gRPC request to a worker carries `x-exchange-auth: <key id> <expiry> <nonce>
//! <signature>`, an Ed25519 signature (the sender's `signing.key`) over the worker's address,
//! the method, the expiry, a random nonce and the statement's token scope header. The worker
//! checks it before the request reaches datafusion-distributed, so nothing of an
//! unauthenticated request is decoded: the signer must be the hub it names for plan
//! fragments (`CoordinatorChannel`), the hub or a peer worker for results (`ExecuteTask`);
//! the expiry at most [`MAX_AGE_MS`] ahead; the nonce unseen. A header made for one worker
//! does not open another (its address is signed), nor a second request (its nonce is
//! remembered until it expires).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use ring::rand::SecureRandom;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http::{self, HeaderMap, HeaderValue};
use tonic::server::NamedService;

use crate::keys::{PublicKey, SigningKey};

/// The header carrying the signature.
pub(crate) const AUTH_HEADER: &str = "x-exchange-auth";
/// The header carrying the statement's token scope (signed with the request).
pub(crate) const TOKENS_HEADER: &str = "x-exchange-tokens";
/// How far ahead a header may expire: a request is signed as it is sent.
pub(crate) const MAX_AGE_MS: i64 = 60_000;
/// What a signature is over, first: never valid for anything else the keys sign.
const CONTEXT: &str = "exchange/worker-request/v1";
/// Nonces remembered at most (each for at most [`MAX_AGE_MS`]): past it, requests are
/// refused rather than memory grown.
const MAX_NONCES: usize = 1 << 20;

/// The methods of datafusion-distributed's worker service.
const SET_PLAN: &str = "/worker.WorkerService/CoordinatorChannel";
const EXECUTE: &str = "/worker.WorkerService/ExecuteTask";
const INFO: &str = "/worker.WorkerService/GetWorkerInfo";

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn message(authority: &str, path: &str, expires: i64, nonce: &str, tokens: &str) -> String {
    format!("{CONTEXT}\n{authority}\n{path}\n{expires}\n{nonce}\n{tokens}")
}

/// Signs requests with one key (the hub's, or a worker's own for its peers).
#[derive(Debug)]
pub(crate) struct Signer {
    key: Arc<SigningKey>,
    id: String,
}

impl Signer {
    /// A signer with `key`.
    pub(crate) fn new(key: Arc<SigningKey>) -> Self {
        let id = key.public_key().id();
        Self { key, id }
    }

    /// The header value for one request to `authority` (host:port) and `path`.
    pub(crate) fn header(&self, authority: &str, path: &str, tokens: &str) -> Option<String> {
        let mut nonce = [0u8; 16];
        ring::rand::SystemRandom::new().fill(&mut nonce).ok()?;
        let nonce = hex::encode(nonce);
        let expires = now_ms() + MAX_AGE_MS;
        let sig = self
            .key
            .sign_hex(message(authority, path, expires, &nonce, tokens).as_bytes());
        Some(format!("{} {expires} {nonce} {sig}", self.id))
    }
}

/// A tonic channel whose every request is signed for the worker at `authority`.
#[derive(Clone)]
pub(crate) struct Signing<S> {
    pub(crate) inner: S,
    pub(crate) signer: Arc<Signer>,
    pub(crate) authority: String,
}

impl<S> Service<http::Request<Body>> for Signing<S>
where
    S: Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let tokens = header_text(req.headers(), TOKENS_HEADER).to_string();
        // Unsigned if the system's random source fails: the worker then refuses it.
        if let Some(value) = self
            .signer
            .header(&self.authority, req.uri().path(), &tokens)
            .and_then(|v| HeaderValue::from_str(&v).ok())
        {
            req.headers_mut().insert(AUTH_HEADER, value);
        }
        self.inner.call(req)
    }
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Who signed an accepted request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Caller {
    /// The hub: may send plan fragments.
    Hub,
    /// Another worker: may only fetch results.
    Peer,
}

/// A worker's check of incoming requests.
#[derive(Debug)]
pub(crate) struct Verifier {
    /// The worker's own address (host:port), as its hub and peers write it.
    authority: String,
    hub: PublicKey,
    peers: Vec<PublicKey>,
    seen: Mutex<HashMap<String, i64>>,
}

impl Verifier {
    /// The check of the worker at `authority`, serving `hub` and `peers`.
    pub(crate) fn new(authority: String, hub: PublicKey, peers: Vec<PublicKey>) -> Self {
        Self {
            authority,
            hub,
            peers,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Accept or refuse a request; the refusal says why (for the worker's log and the
    /// caller), never more than the request itself carried.
    pub(crate) fn check(
        &self,
        authority: Option<&str>,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Caller, String> {
        let value = headers
            .get(AUTH_HEADER)
            .ok_or("no signature: workers run fragments only for their hub")?
            .to_str()
            .map_err(|_| "a malformed signature header")?;
        let [id, expires, nonce, sig] = value.split(' ').collect::<Vec<_>>()[..] else {
            return Err("a malformed signature header".into());
        };
        let expires: i64 = expires
            .parse()
            .map_err(|_| "a malformed signature header")?;
        if nonce.len() != 32 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("a malformed signature header".into());
        }
        let now = now_ms();
        if expires <= now {
            return Err("an expired signature".into());
        }
        if expires > now + MAX_AGE_MS + 5_000 {
            return Err("a signature valid too far ahead (clocks apart?)".into());
        }
        let authority = authority.unwrap_or("");
        if !authority.eq_ignore_ascii_case(&self.authority) {
            return Err(format!(
                "a request addressed to {authority:?}, not to this worker ({})",
                self.authority
            ));
        }
        let (key, caller) = if id == self.hub.id() {
            (&self.hub, Caller::Hub)
        } else if let Some(p) = self.peers.iter().find(|p| p.id() == id) {
            (p, Caller::Peer)
        } else {
            return Err(format!("a key this worker does not know ({id})"));
        };
        let tokens = header_text(headers, TOKENS_HEADER);
        if !key.verify(
            message(authority, path, expires, nonce, tokens).as_bytes(),
            sig,
        ) {
            return Err("a signature that does not verify".into());
        }
        match (path, caller) {
            (SET_PLAN, Caller::Hub) | (EXECUTE | INFO, _) => {}
            (SET_PLAN, Caller::Peer) => {
                return Err("a plan fragment from a peer worker: only the hub sends them".into());
            }
            _ => return Err(format!("an unknown method {path:?}")),
        }
        let mut seen = self.seen.lock().map_err(|_| "a poisoned nonce cache")?;
        if seen.len() >= MAX_NONCES {
            seen.retain(|_, e| *e > now);
            if seen.len() >= MAX_NONCES {
                return Err("too many requests at once".into());
            }
        }
        if seen.insert(nonce.to_string(), expires).is_some() {
            return Err("a replayed request (its nonce was used before)".into());
        }
        Ok(caller)
    }
}

/// A gRPC service behind [`Verifier`]: refused requests get UNAUTHENTICATED and a line on
/// the worker's standard error, and never reach the service.
#[derive(Clone)]
pub(crate) struct Authenticated<S> {
    pub(crate) inner: S,
    pub(crate) verifier: Arc<Verifier>,
}

impl<S: NamedService> NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Authenticated<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| header_text(req.headers(), "host").to_string().into())
            .filter(|h| !h.is_empty());
        match self
            .verifier
            .check(host.as_deref(), req.uri().path(), req.headers())
        {
            Ok(_) => Box::pin(self.inner.call(req)),
            Err(why) => {
                let mut path = req.uri().path().to_string();
                crate::text::cut(&mut path, 100, |n| format!("... ({n} bytes)"));
                eprintln!("exchange worker: refused {path}: {why}");
                let status =
                    tonic::Status::unauthenticated(format!("refused by the worker: {why}"));
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (tempfile::TempDir, Arc<SigningKey>, Arc<SigningKey>) {
        let dir = tempfile::tempdir().unwrap();
        let hub = Arc::new(SigningKey::create(&dir.path().join("hub.key")).unwrap());
        let peer = Arc::new(SigningKey::create(&dir.path().join("peer.key")).unwrap());
        (dir, hub, peer)
    }

    fn headers(value: &str, tokens: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTH_HEADER, HeaderValue::from_str(value).unwrap());
        if !tokens.is_empty() {
            h.insert(TOKENS_HEADER, HeaderValue::from_str(tokens).unwrap());
        }
        h
    }

    #[test]
    fn only_fresh_signed_requests_for_this_worker_pass() {
        let (_d, hub, peer) = keys();
        let v = Verifier::new(
            "127.0.0.1:7000".into(),
            hub.public_key(),
            vec![peer.public_key()],
        );
        let hub_signer = Signer::new(hub.clone());
        let peer_signer = Signer::new(peer.clone());
        let at = Some("127.0.0.1:7000");

        let h = hub_signer.header("127.0.0.1:7000", SET_PLAN, "t").unwrap();
        assert_eq!(v.check(at, SET_PLAN, &headers(&h, "t")), Ok(Caller::Hub));
        // Replayed.
        let err = v.check(at, SET_PLAN, &headers(&h, "t")).unwrap_err();
        assert!(err.contains("replayed"), "{err}");
        // Another method, scope or worker than signed for.
        let h = hub_signer.header("127.0.0.1:7000", EXECUTE, "t").unwrap();
        assert!(v.check(at, SET_PLAN, &headers(&h, "t")).is_err());
        let h = hub_signer.header("127.0.0.1:7000", SET_PLAN, "t").unwrap();
        assert!(v.check(at, SET_PLAN, &headers(&h, "u")).is_err());
        let h = hub_signer.header("127.0.0.1:7001", SET_PLAN, "t").unwrap();
        let err = v
            .check(Some("127.0.0.1:7001"), SET_PLAN, &headers(&h, "t"))
            .unwrap_err();
        assert!(err.contains("not to this worker"), "{err}");
        // A peer fetches results but sends no plans.
        let h = peer_signer.header("127.0.0.1:7000", EXECUTE, "").unwrap();
        assert_eq!(v.check(at, EXECUTE, &headers(&h, "")), Ok(Caller::Peer));
        let h = peer_signer.header("127.0.0.1:7000", SET_PLAN, "").unwrap();
        let err = v.check(at, SET_PLAN, &headers(&h, "")).unwrap_err();
        assert!(err.contains("only the hub"), "{err}");
        // Unknown keys, no header, garbage, expired.
        let (_d2, stranger, _) = keys();
        let h = Signer::new(stranger)
            .header("127.0.0.1:7000", EXECUTE, "")
            .unwrap();
        assert!(
            v.check(at, EXECUTE, &headers(&h, ""))
                .unwrap_err()
                .contains("does not know")
        );
        assert!(
            v.check(at, EXECUTE, &HeaderMap::new())
                .unwrap_err()
                .contains("no signature")
        );
        assert!(v.check(at, EXECUTE, &headers("a b c d", "")).is_err());
        let id = hub.public_key().id();
        let nonce = "0".repeat(32);
        let old = now_ms() - 1;
        let sig = hub.sign_hex(message("127.0.0.1:7000", EXECUTE, old, &nonce, "").as_bytes());
        let err = v
            .check(
                at,
                EXECUTE,
                &headers(&format!("{id} {old} {nonce} {sig}"), ""),
            )
            .unwrap_err();
        assert!(err.contains("expired"), "{err}");
    }
}
