//! Scale-out: the hub's physical plans over workers of datafusion-distributed.
//!
//! Planning stays on the hub: the principal's session, the policy rule, the optimizer and
//! the exchange's physical rules produce the plan exactly as in one process; only then
//! does datafusion-distributed cut it into stages that run on workers ([`hub`]). Workers
//! ([`worker`]) execute fragments only: they accept them from their hub alone, signed and
//! fresh ([`auth`]), hold the keys they need in their own key files (a fragment carries a
//! token scope and a fingerprint, never a key: [`codec`]), and log no data. A fragment
//! that cannot be carried whole (an operator the codec does not know, a read of an agency
//! node) fails the statement; nothing is dropped on the way.

mod auth;
mod channels;
mod codec;
mod hub;
mod settings;
mod worker;

pub(crate) use codec::TokenScope;
pub use hub::{Cluster, WorkersUsed};
pub use settings::DistributedSettings;
pub use worker::{LocalWorker, WorkerError, WorkerOptions, serve_worker};

/// The header a worker checks on every request.
pub const AUTH_HEADER: &str = auth::AUTH_HEADER;

/// The [`AUTH_HEADER`] value `key` signs for one request to the worker at `authority`
/// (`host:port`) calling `path` whose first message is `message` (its protobuf bytes), with
/// no token scope: what the hub and workers send, for operators' probes and tests.
pub fn request_signature(
    key: std::sync::Arc<crate::keys::SigningKey>,
    authority: &str,
    path: &str,
    message: &[u8],
) -> Option<String> {
    let len = u32::try_from(message.len()).ok()?;
    let mut framed = vec![0u8];
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    auth::Signer::new(key).header(authority, path, "", &framed)
}
