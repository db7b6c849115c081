//! HMAC-SHA256 for tokens, computed from precomputed key states.
//!
//! A token is HMAC-SHA256(key, value), the same function ring computes. Per value, ring
//! copies its key states into a fresh context, buffers, pads and finishes through its
//! generic digest code: about half the time of a short value went to that (issue 13). Here
//! the inner and outer states after the key blocks are computed once per key, and a value
//! of up to 55 bytes (every identifier) costs exactly two SHA-256 compressions on stack
//! buffers, with SHA-NI when the CPU has it. Longer values take the general path. The
//! output is bit-for-bit ring's (tested against it), so pseudonyms and join keys do not
//! change.

use ring::hmac;
use sha2::compress256;
use sha2::digest::generic_array::GenericArray;

const BLOCK: usize = 64;
const H0: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// A token key: HMAC-SHA256 under a secret, as ring's key and as precomputed states.
/// Its `Debug` shows nothing of the secret.
#[derive(Clone)]
pub struct TokenKey {
    ring: hmac::Key,
    inner: [u32; 8],
    outer: [u32; 8],
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<secret>)")
    }
}

fn compress(state: &mut [u32; 8], block: &[u8; BLOCK]) {
    compress256(state, std::slice::from_ref(GenericArray::from_slice(block)));
}

impl TokenKey {
    /// The key for secret `key` (a derived 32-byte key; any length works).
    pub fn new(key: &[u8]) -> Self {
        let mut block = [0u8; BLOCK];
        if key.len() > BLOCK {
            let d = ring::digest::digest(&ring::digest::SHA256, key);
            block[..32].copy_from_slice(d.as_ref());
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let (mut inner, mut outer) = (H0, H0);
        let (mut ipad, mut opad) = ([0u8; BLOCK], [0u8; BLOCK]);
        for i in 0..BLOCK {
            ipad[i] = block[i] ^ 0x36;
            opad[i] = block[i] ^ 0x5c;
        }
        compress(&mut inner, &ipad);
        compress(&mut outer, &opad);
        Self {
            ring: hmac::Key::new(hmac::HMAC_SHA256, key),
            inner,
            outer,
        }
    }

    /// The key as ring's (for derivations that chain HMACs).
    pub fn hmac(&self) -> &hmac::Key {
        &self.ring
    }

    /// HMAC-SHA256 of `value`.
    pub fn sign(&self, value: &[u8]) -> [u8; 32] {
        let inner = self.inner_digest(value);
        // Outer: one block, the inner digest (32 bytes) after the opad block.
        let mut block = [0u8; BLOCK];
        block[..32].copy_from_slice(&inner);
        block[32] = 0x80;
        block[56..].copy_from_slice(&(((BLOCK + 32) as u64) * 8).to_be_bytes());
        let mut state = self.outer;
        compress(&mut state, &block);
        words(&state)
    }

    fn inner_digest(&self, value: &[u8]) -> [u8; 32] {
        let mut state = self.inner;
        let mut chunks = value.chunks_exact(BLOCK);
        for c in &mut chunks {
            let mut b = [0u8; BLOCK];
            b.copy_from_slice(c);
            compress(&mut state, &b);
        }
        let rest = chunks.remainder();
        let bits = ((BLOCK + value.len()) as u64) * 8;
        let mut block = [0u8; BLOCK];
        block[..rest.len()].copy_from_slice(rest);
        block[rest.len()] = 0x80;
        if rest.len() >= 56 {
            // No room for the length: it takes a block of its own.
            compress(&mut state, &block);
            block = [0u8; BLOCK];
        }
        block[56..].copy_from_slice(&bits.to_be_bytes());
        compress(&mut state, &block);
        words(&state)
    }
}

fn words(state: &[u32; 8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (o, w) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_ring_hmac_for_every_length_and_key_size() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u8
        };
        for key_len in [0usize, 1, 16, 32, 63, 64, 65, 100] {
            let key: Vec<u8> = (0..key_len).map(|_| next()).collect();
            let fast = TokenKey::new(&key);
            let ring_key = hmac::Key::new(hmac::HMAC_SHA256, &key);
            for len in 0..300 {
                let value: Vec<u8> = (0..len).map(|_| next()).collect();
                assert_eq!(
                    fast.sign(&value).as_slice(),
                    hmac::sign(&ring_key, &value).as_ref(),
                    "key {key_len} bytes, value {len} bytes"
                );
            }
        }
    }

    #[test]
    fn debug_shows_no_secret() {
        let k = TokenKey::new(b"a secret of thirty-two bytes....");
        assert_eq!(format!("{k:?}"), "TokenKey(<secret>)");
    }
}
