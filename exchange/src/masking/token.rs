//! Keyed tokens: pseudonyms and join keys as HMAC-SHA256 over the raw value.
//!
//! The UDF carries the keys of one consumer agency; plans show `pseudonym(col, 'domain')`
//! and never the key. These UDFs are inserted by enforcement only and are never
//! registered in a session, so analysts cannot compute tokens of chosen values.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::keys::{KeyRing, TokenKey, TokenKind};
use arrow::array::{Array, ArrayRef, StringBuilder};
use arrow::datatypes::DataType;
use datafusion::common::cast::as_string_array;
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// Bytes of the HMAC kept in a token (128 bits, 32 hex chars).
const TOKEN_BYTES: usize = 16;

/// Token keys of one consumer agency, one per identity domain.
pub struct TokenKeys {
    kind: TokenKind,
    consumer: String,
    keys: BTreeMap<String, TokenKey>,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("kind", &self.kind)
            .field("consumer", &self.consumer)
            .field("domains", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl TokenKeys {
    /// Derive the keys of `consumer` for `domains`.
    pub fn derive<'a>(
        ring: &KeyRing,
        kind: TokenKind,
        consumer: &str,
        domains: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let keys = domains
            .into_iter()
            .map(|d| (d.to_string(), ring.token_key(kind, consumer, d)))
            .collect();
        Self {
            kind,
            consumer: consumer.to_string(),
            keys,
        }
    }

    /// A one-way fingerprint of the keys: equal in two processes exactly when their keys
    /// are (a worker compares its own with the hub's before it computes any token), and
    /// nothing of the keys can be learnt from it.
    pub fn fingerprint(&self) -> String {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for (domain, key) in &self.keys {
            ctx.update(domain.as_bytes());
            ctx.update(&[0]);
            ctx.update(&key.sign(b"exchange/key-fingerprint/v1"));
        }
        hex::encode(&ctx.finish().as_ref()[..16])
    }
}

/// `pseudonym(value, 'domain')` or `join_key(value, 'domain')`.
#[derive(Debug)]
pub struct TokenUdf {
    keys: Arc<TokenKeys>,
    signature: Signature,
}

impl PartialEq for TokenUdf {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.keys, &other.keys)
    }
}

impl Eq for TokenUdf {}

impl Hash for TokenUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.keys.kind.hash(state);
        self.keys.consumer.hash(state);
    }
}

impl TokenUdf {
    /// The UDF over `keys`.
    pub fn udf(keys: Arc<TokenKeys>) -> Arc<ScalarUDF> {
        Arc::new(ScalarUDF::new_from_impl(Self {
            keys,
            signature: Signature::user_defined(Volatility::Immutable),
        }))
    }

    /// Whether two of its tokens are equal exactly when the values are (up to a 2^-128
    /// collision): join keys and pseudonyms, 128 bits of an HMAC of the value. Not
    /// `typed_random_replace`, whose values keep the input's format and can collide.
    pub(crate) fn equal_exactly_when_values_are(&self) -> bool {
        matches!(self.keys.kind, TokenKind::JoinKey | TokenKind::Pseudonym)
    }

    /// Whether it holds a key for `domain`.
    pub(crate) fn has_domain(&self, domain: &str) -> bool {
        self.keys.keys.contains_key(domain)
    }

    /// Whether `other` computes its tokens under the same keys.
    pub(crate) fn same_keys(&self, other: &TokenUdf) -> bool {
        Arc::ptr_eq(&self.keys, &other.keys)
    }
}

/// Hex token of one value (first 128 bits of the HMAC).
pub fn token_hex(key: &TokenKey, value: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let tag = key.sign(value);
    for b in tag.iter().take(TOKEN_BYTES) {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
}

impl ScalarUDFImpl for TokenUdf {
    fn name(&self) -> &str {
        match self.keys.kind {
            TokenKind::Pseudonym => "pseudonym",
            TokenKind::JoinKey => "join_key",
            TokenKind::Replace => "typed_random_replace",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if arg_types.len() != 2 {
            return plan_err!("{} takes (value, domain)", self.name());
        }
        Ok(vec![DataType::Utf8, DataType::Utf8])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [value, domain] = args.args.as_slice() else {
            return exec_err!("{} takes (value, domain)", self.name());
        };
        let ColumnarValue::Scalar(ScalarValue::Utf8(Some(domain))) = domain else {
            return exec_err!("{}: the domain must be a constant", self.name());
        };
        let Some(key) = self.keys.keys.get(domain) else {
            return exec_err!("{}: no key for identity domain '{domain}'", self.name());
        };
        let array = value.to_array(args.number_rows)?;
        let strings = as_string_array(&array)?;
        let mut builder =
            StringBuilder::with_capacity(strings.len(), strings.len() * TOKEN_BYTES * 2);
        let mut buf = String::with_capacity(TOKEN_BYTES * 2);
        for v in strings.iter() {
            match v {
                None => builder.append_null(),
                Some(s) => {
                    buf.clear();
                    if self.keys.kind == TokenKind::Replace {
                        super::replace::replace(key.hmac(), domain, s, &mut buf);
                    } else {
                        token_hex(key, s.as_bytes(), &mut buf);
                    }
                    builder.append_value(&buf);
                }
            }
        }
        let out: ArrayRef = Arc::new(builder.finish());
        Ok(ColumnarValue::Array(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stable_per_scope_and_differ_across_scopes() {
        let ring = KeyRing::from_secret(&[1u8; 32]);
        let hrss = TokenKeys::derive(&ring, TokenKind::Pseudonym, "hrss", ["person"]);
        let civil = TokenKeys::derive(&ring, TokenKind::Pseudonym, "civil", ["person"]);
        let tok = |k: &TokenKeys| {
            let mut s = String::new();
            token_hex(&k.keys["person"], b"11010519491231002X", &mut s);
            s
        };
        assert_eq!(tok(&hrss), tok(&hrss));
        assert_ne!(tok(&hrss), tok(&civil));
        assert_eq!(tok(&hrss).len(), 32);
        assert!(!format!("{hrss:?}").contains("Key {"));
    }
}
