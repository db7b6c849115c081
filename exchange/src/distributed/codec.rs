//! What of a governed plan crosses to a worker, and how the worker rebuilds it.
//!
//! DataFusion's own operators and expressions travel as datafusion-proto encodes them;
//! functions travel by name and are found in the worker's registry, which holds the same
//! guarded built-ins, masks, validators and token functions as the hub's sessions
//! ([`super::worker`]). The exchange's own operators are encoded here: the policy barrier
//! (with its row numbering) and the batch slicer. Anything else the exchange plans is
//! refused, so a plan fragment either arrives whole or the statement fails: a node that
//! cannot be encoded is never dropped or replaced. A read of an agency node's table is
//! refused by name: only the hub holds the credential its nodes accept.
//!
//! Token functions carry keys, and keys never travel: a statement's token scope (the
//! consumer agency or export recipient, and the identity domains) travels in a signed
//! header with a fingerprint of the hub's keys; the worker derives the keys from its own key
//! files and refuses the fragment when their fingerprint differs ([`TokenScope`]).

use std::sync::Arc;

use datafusion::common::{Result, internal_err, not_impl_err, plan_err};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::ScalarUDF;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use serde::{Deserialize, Serialize};

use crate::enforcement::{BarrierExec, BatchSplitExec};
use crate::keys::{KeyRing, TokenKind};
use crate::masking::{TokenKeys, TokenUdf};

/// The exchange's operators, as a worker receives them.
#[derive(Debug, Serialize, Deserialize)]
enum Node {
    /// [`BarrierExec`], with the position and name of its row number if it numbers rows.
    Barrier { numbered: Option<(usize, String)> },
    /// [`BatchSplitExec`] of at most `rows` rows per batch.
    BatchSplit { rows: usize },
}

/// Encodes and decodes the exchange's own operators (registered at the hub and at every
/// worker).
#[derive(Debug, Default)]
pub(crate) struct ExchangeCodec;

impl PhysicalExtensionCodec for ExchangeCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let node: Node = match serde_json::from_slice(buf) {
            Ok(n) => n,
            Err(e) => return plan_err!("a plan fragment with an unknown exchange operator: {e}"),
        };
        let [input] = inputs else {
            return internal_err!("an exchange operator takes one input");
        };
        let input = Arc::clone(input);
        match node {
            Node::Barrier { numbered: None } => Ok(BarrierExec::wrap(input)),
            Node::Barrier {
                numbered: Some((at, name)),
            } => BarrierExec::wrap_numbered(input, at, &name),
            Node::BatchSplit { rows } => Ok(Arc::new(BatchSplitExec::new(input, rows))),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let encoded = if let Some(b) = node.downcast_ref::<BarrierExec>() {
            Node::Barrier {
                numbered: b.numbered(),
            }
        } else if let Some(s) = node.downcast_ref::<BatchSplitExec>() {
            Node::BatchSplit { rows: s.rows() }
        } else if node.name() == "RemoteExec" {
            return plan_err!(
                "a table served by an agency node is read by the hub alone: its scan is never sent to a worker"
            );
        } else {
            return not_impl_err!(
                "the exchange does not send {} to workers: the statement cannot run distributed",
                node.name()
            );
        };
        match serde_json::to_writer(buf, &encoded) {
            Ok(()) => Ok(()),
            Err(e) => internal_err!("encoding {}: {e}", node.name()),
        }
    }
}

/// A statement's token scope, as the hub states it to workers: whose tokens (the consumer
/// agency or export recipient), over which identity domains, and a fingerprint of the keys
/// the hub computes them under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TokenScope {
    scope: String,
    domains: Vec<String>,
    fingerprint: String,
}

/// The three token functions of one scope, keyed.
struct Keyed {
    pseudonym: Arc<TokenKeys>,
    join_key: Arc<TokenKeys>,
    replace: Arc<TokenKeys>,
}

impl Keyed {
    fn derive(ring: &KeyRing, scope: &str, domains: &[String]) -> Self {
        let d = || domains.iter().map(String::as_str);
        Self {
            pseudonym: Arc::new(TokenKeys::derive(ring, TokenKind::Pseudonym, scope, d())),
            join_key: Arc::new(TokenKeys::derive(ring, TokenKind::JoinKey, scope, d())),
            replace: Arc::new(TokenKeys::derive(
                ring,
                TokenKind::Replace,
                scope,
                crate::masking::replace::KINDS.iter().copied(),
            )),
        }
    }

    fn fingerprint(&self) -> String {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for k in [&self.pseudonym, &self.join_key, &self.replace] {
            ctx.update(k.fingerprint().as_bytes());
        }
        hex::encode(&ctx.finish().as_ref()[..16])
    }
}

impl TokenScope {
    /// The scope the hub's session computes tokens in.
    pub(crate) fn new(ring: &KeyRing, scope: &str, domains: &[String]) -> Self {
        Self {
            scope: scope.to_string(),
            domains: domains.to_vec(),
            fingerprint: Keyed::derive(ring, scope, domains).fingerprint(),
        }
    }

    /// The header value (hex of its JSON: any scope or domain name fits a header).
    pub(crate) fn header(&self) -> String {
        hex::encode(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Read a header value.
    pub(crate) fn parse(value: &str) -> Result<Self, String> {
        hex::decode(value)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| "a malformed token scope header".to_string())
    }

    /// The token functions of this scope under the worker's keys `ring`; refused when
    /// they are not the hub's (their tokens would not match the hub's).
    pub(crate) fn functions(&self, ring: &KeyRing) -> Result<Vec<Arc<ScalarUDF>>, String> {
        let keyed = Keyed::derive(ring, &self.scope, &self.domains);
        if keyed.fingerprint() != self.fingerprint {
            return Err(
                "this worker's keys are not the hub's: the tokens it would compute would not match (copy the hub's secret.key and domains/ into the worker's key directory)"
                    .into(),
            );
        }
        Ok(vec![
            TokenUdf::udf(keyed.pseudonym),
            TokenUdf::udf(keyed.join_key),
            TokenUdf::udf(keyed.replace),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_opens_only_under_the_same_keys() {
        let hub = KeyRing::from_secret(&[3u8; 32]);
        let scope = TokenScope::new(&hub, "hrss", &["person".into(), "company".into()]);
        let parsed = TokenScope::parse(&scope.header()).unwrap();
        assert_eq!(parsed, scope);
        assert_eq!(parsed.functions(&hub).unwrap().len(), 3);
        let other = KeyRing::from_secret(&[4u8; 32]);
        let err = parsed.functions(&other).unwrap_err();
        assert!(err.contains("not the hub's"), "{err}");
        // The header names no key material: only the scope, domains and a fingerprint.
        let text = String::from_utf8(hex::decode(scope.header()).unwrap()).unwrap();
        assert!(
            text.contains("hrss") && text.contains("fingerprint"),
            "{text}"
        );
        assert!(TokenScope::parse("zz").is_err());
    }
}
