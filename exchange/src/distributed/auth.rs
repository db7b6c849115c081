//! Who may talk to a worker: a signed, expiring, single-use header on every request, bound
//! to the request's first message.
//!
//! Every gRPC request to a worker carries `x-exchange-auth: <key id> <expiry> <nonce>
//! <length> <digest> <signature>`, an Ed25519 signature (the sender's `signing.key`) over the worker's address,
//! the method, the expiry, a random nonce, the statement's token scope header and the
//! length and SHA-256 of the request's first gRPC message (the plan fragment, or which
//! task's results are asked for), both stated in the header. The worker checks the header,
//! signature included, before it reads any byte of the body; then it reads the first
//! message, no further than the signed length and within a minute, and passes the request
//! on only if it is the message signed: the signer must be the hub it names for plan fragments
//! (`CoordinatorChannel`), the hub or a peer worker for results (`ExecuteTask`); the expiry
//! at most [`MAX_AGE_MS`] ahead; the nonce unseen. A header made for one worker does not
//! open another (its address is signed), nor a second request (its nonce is remembered
//! until it expires), nor another body (review 30 F1: a header taken off the wire carried an
//! attacker's own plan, which read the hub's secret off the worker's disk), nor makes the
//! worker hold more than the signed message (review 30b: a forged signature under a known
//! key id had it buffer 256 MiB per request before checking).
//!
//! What the header does not give: confidentiality. Fragments and rows cross in clear text
//! unless the network between hub and workers is private or the links are wrapped in TLS.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::future::BoxFuture;
use http_body_util::BodyExt;
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
/// Largest first message a worker reads before it has checked the signature over it.
const MAX_FIRST_MESSAGE: usize = 256 << 20;
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

/// What is signed.
struct Signed<'a> {
    authority: &'a str,
    path: &'a str,
    expires: i64,
    nonce: &'a str,
    tokens: &'a str,
    len: usize,
    body: &'a str,
}

impl Signed<'_> {
    fn bytes(&self) -> Vec<u8> {
        let Signed {
            authority,
            path,
            expires,
            nonce,
            tokens,
            len,
            body,
        } = self;
        format!("{CONTEXT}\n{authority}\n{path}\n{expires}\n{nonce}\n{tokens}\n{len}\n{body}")
            .into_bytes()
    }
}

/// SHA-256 (hex) of a request's first gRPC message, framing included.
pub(crate) fn body_digest(first: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, first).as_ref())
}

/// The first gRPC message of `body` (its 5-byte prefix and payload, or what came before the
/// body ended or failed), and the body whole again: the bytes read first, then the rest.
/// Refused when the message announces more than `cap` bytes.
async fn first_message(mut body: Body, cap: usize) -> Result<(Bytes, Body), String> {
    let mut buf = BytesMut::new();
    let mut tail: Vec<Result<http_body::Frame<Bytes>, tonic::Status>> = Vec::new();
    let mut want: Option<usize> = None;
    loop {
        if want.is_none() && buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if len.saturating_add(5) > cap {
                return Err(format!(
                    "a first message announcing {len} bytes, more than the {cap} expected"
                ));
            }
            want = Some(len + 5);
        }
        if want.is_some_and(|w| buf.len() >= w) {
            break;
        }
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => buf.extend_from_slice(&data),
                Err(other) => {
                    tail.push(Ok(other));
                    break;
                }
            },
            Some(Err(e)) => {
                tail.push(Err(e));
                break;
            }
        }
    }
    let all = buf.freeze();
    let first = all.slice(..want.unwrap_or(all.len()).min(all.len()));
    let head = futures::stream::iter(std::iter::once(Ok(http_body::Frame::data(all))).chain(tail));
    let rest = http_body_util::BodyStream::new(body);
    Ok((
        first,
        Body::new(http_body_util::StreamBody::new(head.chain(rest))),
    ))
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

    /// The header value for one request to `authority` (host:port) and `path` whose first
    /// message, framing included, is `first`.
    pub(crate) fn header(
        &self,
        authority: &str,
        path: &str,
        tokens: &str,
        first: &[u8],
    ) -> Option<String> {
        let mut nonce = [0u8; 16];
        ring::rand::SystemRandom::new().fill(&mut nonce).ok()?;
        let nonce = hex::encode(nonce);
        let expires = now_ms() + MAX_AGE_MS;
        let body = body_digest(first);
        let signed = Signed {
            authority,
            path,
            expires,
            nonce: &nonce,
            tokens,
            len: first.len(),
            body: &body,
        };
        let sig = self.key.sign_hex(&signed.bytes());
        Some(format!(
            "{} {expires} {nonce} {} {body} {sig}",
            self.id,
            first.len()
        ))
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
    S: Service<http::Request<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The service made ready serves this call; its clone the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let signer = Arc::clone(&self.signer);
        let authority = self.authority.clone();
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            // The first message is at hand when a call is made (the plan fragment, the task
            // asked for): it is read, signed over, and sent first.
            let (first, body) = match first_message(body, usize::MAX).await {
                Ok(x) => x,
                Err(_) => (Bytes::new(), Body::empty()),
            };
            let tokens = header_text(&parts.headers, TOKENS_HEADER).to_string();
            // Unsigned if the system's random source fails: the worker then refuses it.
            if let Some(value) = signer
                .header(&authority, parts.uri.path(), &tokens, &first)
                .and_then(|v| HeaderValue::from_str(&v).ok())
            {
                parts.headers.insert(AUTH_HEADER, value);
            }
            inner.call(http::Request::from_parts(parts, body)).await
        })
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

/// A parsed header, its key found and its method allowed.
struct Parsed<'a> {
    key: &'a PublicKey,
    caller: Caller,
    expires: i64,
    nonce: &'a str,
    len: usize,
    body: &'a str,
    sig: &'a str,
}

/// An accepted header: who signed it, and the first message it was signed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Accepted {
    pub(crate) caller: Caller,
    /// Bytes of the first message, framing included.
    pub(crate) len: usize,
    /// Its SHA-256, hex.
    pub(crate) body: String,
}

impl Accepted {
    /// Whether `first` is the message the header was signed over.
    pub(crate) fn matches(&self, first: &[u8]) -> bool {
        first.len() == self.len && body_digest(first) == self.body
    }
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

    /// Everything but the signature, before the body is read; the refusal says why in a
    /// few words of its own (for the worker's log and the caller).
    fn parse<'a>(
        &'a self,
        authority: Option<&str>,
        path: &str,
        headers: &'a HeaderMap,
    ) -> Result<Parsed<'a>, String> {
        let malformed = || "a malformed signature header".to_string();
        let value = headers
            .get(AUTH_HEADER)
            .ok_or("no signature: workers run fragments only for their hub")?
            .to_str()
            .map_err(|_| malformed())?;
        let [id, expires, nonce, len, body, sig] = value.split(' ').collect::<Vec<_>>()[..] else {
            return Err(malformed());
        };
        let hex_of = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex_of(id, 16) || !hex_of(nonce, 32) || !hex_of(body, 64) || !hex_of(sig, 128) {
            return Err(malformed());
        }
        let len: usize = len.parse().map_err(|_| malformed())?;
        if len > MAX_FIRST_MESSAGE {
            return Err(format!(
                "a first message of {len} bytes, over the {} MiB a worker takes",
                MAX_FIRST_MESSAGE >> 20
            ));
        }
        let expires: i64 = expires.parse().map_err(|_| malformed())?;
        let now = now_ms();
        if expires <= now {
            return Err("an expired signature".into());
        }
        if expires > now + MAX_AGE_MS + 5_000 {
            return Err("a signature valid too far ahead (clocks apart?)".into());
        }
        let authority = authority.unwrap_or("");
        if !authority.eq_ignore_ascii_case(&self.authority) {
            let mut shown = authority.to_string();
            crate::text::cut(&mut shown, 64, |_| "...".into());
            return Err(format!(
                "a request addressed to {shown:?}, not to this worker ({})",
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
        match (path, caller) {
            (SET_PLAN, Caller::Hub) | (EXECUTE | INFO, _) => {}
            (SET_PLAN, Caller::Peer) => {
                return Err("a plan fragment from a peer worker: only the hub sends them".into());
            }
            _ => return Err("an unknown method".into()),
        }
        Ok(Parsed {
            key,
            caller,
            expires,
            nonce,
            len,
            body,
            sig,
        })
    }

    /// Accept or refuse a request by its header alone: the signature (over the first
    /// message's length and digest, which the header states) is checked before any byte of
    /// the body is read, and the nonce is spent. The body must then be [`Accepted::matches`].
    pub(crate) fn check(
        &self,
        authority: Option<&str>,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Accepted, String> {
        let p = self.parse(authority, path, headers)?;
        let signed = Signed {
            authority: authority.unwrap_or(""),
            path,
            expires: p.expires,
            nonce: p.nonce,
            tokens: header_text(headers, TOKENS_HEADER),
            len: p.len,
            body: p.body,
        };
        if !p.key.verify(&signed.bytes(), p.sig) {
            return Err("a signature that does not verify".into());
        }
        let now = now_ms();
        let mut seen = self.seen.lock().map_err(|_| "a poisoned nonce cache")?;
        if seen.len() >= MAX_NONCES {
            seen.retain(|_, e| *e > now);
            if seen.len() >= MAX_NONCES {
                return Err("too many requests at once".into());
            }
        }
        if seen.insert(p.nonce.to_string(), p.expires).is_some() {
            return Err("a replayed request (its nonce was used before)".into());
        }
        Ok(Accepted {
            caller: p.caller,
            len: p.len,
            body: p.body.to_string(),
        })
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
        + Clone
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
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let verifier = Arc::clone(&self.verifier);
        Box::pin(async move {
            let host = req
                .uri()
                .authority()
                .map(|a| a.as_str().to_string())
                .or_else(|| Some(header_text(req.headers(), "host").to_string()))
                .filter(|h| !h.is_empty());
            let path = req.uri().path().to_string();
            let refuse = |why: String| {
                let mut shown = path.clone();
                crate::text::cut(&mut shown, 100, |n| format!("... ({n} bytes)"));
                eprintln!("exchange worker: refused {shown}: {why}");
                let status =
                    tonic::Status::unauthenticated(format!("refused by the worker: {why}"));
                Ok(status.into_http())
            };
            // The header first, signature included: the body of a request that cannot be
            // accepted is never read, and an accepted one is read only as far as signed
            // (review 30b: a header with a known key id and a forged signature made the
            // worker buffer 256 MiB per request before checking it).
            let accepted = match verifier.check(host.as_deref(), &path, req.headers()) {
                Ok(a) => a,
                Err(why) => return refuse(why),
            };
            let (parts, body) = req.into_parts();
            let read = tokio::time::timeout(
                std::time::Duration::from_millis(MAX_AGE_MS.unsigned_abs()),
                first_message(body, accepted.len),
            );
            let (first, body) = match read.await {
                Ok(Ok(x)) => x,
                Ok(Err(why)) => return refuse(why),
                Err(_) => return refuse("a first message that did not arrive in time".into()),
            };
            if !accepted.matches(&first) {
                return refuse("a first message other than the one signed".into());
            }
            inner.call(http::Request::from_parts(parts, body)).await
        })
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
    fn only_fresh_signed_requests_for_this_worker_and_body_pass() {
        let (_d, hub, peer) = keys();
        let v = Verifier::new(
            "127.0.0.1:7000".into(),
            hub.public_key(),
            vec![peer.public_key()],
        );
        let hub_signer = Signer::new(hub.clone());
        let peer_signer = Signer::new(peer.clone());
        let at = Some("127.0.0.1:7000");
        let plan = b"\0\0\0\0\x04plan";

        let h = hub_signer
            .header("127.0.0.1:7000", SET_PLAN, "t", plan)
            .unwrap();
        let ok = v.check(at, SET_PLAN, &headers(&h, "t")).unwrap();
        assert_eq!(ok.caller, Caller::Hub);
        assert!(ok.matches(plan));
        // The header of one body over another (a plan of the attacker's): refused.
        assert!(!ok.matches(b"\0\0\0\0\x04PLAN"));
        assert!(!ok.matches(b"\0\0\0\0\x05plans"));
        // Replayed.
        let err = v.check(at, SET_PLAN, &headers(&h, "t")).unwrap_err();
        assert!(err.contains("replayed"), "{err}");
        // Another method, scope or worker than signed for; a length or digest changed.
        let h = hub_signer
            .header("127.0.0.1:7000", EXECUTE, "t", plan)
            .unwrap();
        assert!(v.check(at, SET_PLAN, &headers(&h, "t")).is_err());
        let h = hub_signer
            .header("127.0.0.1:7000", SET_PLAN, "t", plan)
            .unwrap();
        assert!(v.check(at, SET_PLAN, &headers(&h, "u")).is_err());
        let parts: Vec<&str> = h.split(' ').collect();
        let longer = format!(
            "{} {} {} 999 {} {}",
            parts[0], parts[1], parts[2], parts[4], parts[5]
        );
        let err = v.check(at, SET_PLAN, &headers(&longer, "t")).unwrap_err();
        assert!(err.contains("does not verify"), "{err}");
        let huge = format!(
            "{} {} {} {} {} {}",
            parts[0],
            parts[1],
            parts[2],
            usize::MAX,
            parts[4],
            parts[5]
        );
        let err = v.check(at, SET_PLAN, &headers(&huge, "t")).unwrap_err();
        assert!(err.contains("over the 256 MiB"), "{err}");
        let h = hub_signer
            .header("127.0.0.1:7001", SET_PLAN, "t", plan)
            .unwrap();
        let err = v
            .check(Some("127.0.0.1:7001"), SET_PLAN, &headers(&h, "t"))
            .unwrap_err();
        assert!(err.contains("not to this worker"), "{err}");
        // A peer fetches results but sends no plans.
        let h = peer_signer
            .header("127.0.0.1:7000", EXECUTE, "", plan)
            .unwrap();
        assert_eq!(
            v.check(at, EXECUTE, &headers(&h, "")).unwrap().caller,
            Caller::Peer
        );
        let h = peer_signer
            .header("127.0.0.1:7000", SET_PLAN, "", plan)
            .unwrap();
        let err = v.check(at, SET_PLAN, &headers(&h, "")).unwrap_err();
        assert!(err.contains("only the hub"), "{err}");
        // Unknown keys, no header, garbage (echoed nowhere), expired.
        let (_d2, stranger, _) = keys();
        let h = Signer::new(stranger)
            .header("127.0.0.1:7000", EXECUTE, "", plan)
            .unwrap();
        let err = v.check(at, EXECUTE, &headers(&h, "")).unwrap_err();
        assert!(err.contains("does not know"), "{err}");
        let err = v.check(at, EXECUTE, &HeaderMap::new()).unwrap_err();
        assert!(err.contains("no signature"), "{err}");
        let long = format!("{} 1 2 3 4 5", "a".repeat(12_000));
        let err = v.check(at, EXECUTE, &headers(&long, "")).unwrap_err();
        assert_eq!(err, "a malformed signature header");
        let id = hub.public_key().id();
        let nonce = "0".repeat(32);
        let old = now_ms() - 1;
        let body = body_digest(plan);
        let signed = Signed {
            authority: "127.0.0.1:7000",
            path: EXECUTE,
            expires: old,
            nonce: &nonce,
            tokens: "",
            len: plan.len(),
            body: &body,
        };
        let sig = hub.sign_hex(&signed.bytes());
        let expired = format!("{id} {old} {nonce} {} {body} {sig}", plan.len());
        let err = v.check(at, EXECUTE, &headers(&expired, "")).unwrap_err();
        assert!(err.contains("expired"), "{err}");
    }

    #[tokio::test]
    async fn the_first_message_is_read_off_and_the_body_kept_whole() {
        // Two messages in one frame, then a third in its own.
        let msg = |payload: &[u8]| {
            let mut m = vec![0u8];
            m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            m.extend_from_slice(payload);
            m
        };
        let (a, b, c) = (msg(b"first"), msg(b"second"), msg(b"third"));
        let frames = vec![
            Ok::<_, tonic::Status>(http_body::Frame::data(Bytes::from(
                [a.clone(), b.clone()].concat(),
            ))),
            Ok(http_body::Frame::data(Bytes::from(c.clone()))),
        ];
        let body = Body::new(http_body_util::StreamBody::new(futures::stream::iter(
            frames,
        )));
        let (first, body) = first_message(body, 1 << 20).await.unwrap();
        assert_eq!(first.as_ref(), a.as_slice());
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(all.as_ref(), [a, b, c].concat().as_slice());
        // A message announcing more than the cap is refused before it is read.
        let big = Bytes::from(vec![0u8, 0x7f, 0xff, 0xff, 0xff]);
        let body = Body::new(http_body_util::StreamBody::new(futures::stream::iter(
            vec![Ok::<_, tonic::Status>(http_body::Frame::data(big))],
        )));
        assert!(first_message(body, 1 << 20).await.is_err());
    }
}
