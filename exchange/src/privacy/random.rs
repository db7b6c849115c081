//! Where random bits come from: the system's cryptographic source in service, a seeded
//! generator in tests (for reproducible statistical checks).

use ring::rand::{SecureRandom, SystemRandom};

use super::PrivacyError;

/// A source of uniformly random 64-bit words.
pub trait RandomSource {
    /// The next uniformly random word.
    fn next_u64(&mut self) -> Result<u64, PrivacyError>;
}

/// The operating system's cryptographic random source (ring's `SystemRandom`).
#[derive(Debug)]
pub struct SystemSource {
    inner: SystemRandom,
}

impl SystemSource {
    /// The system source.
    pub fn new() -> Self {
        Self {
            inner: SystemRandom::new(),
        }
    }
}

impl Default for SystemSource {
    fn default() -> Self {
        Self::new()
    }
}

impl RandomSource for SystemSource {
    fn next_u64(&mut self) -> Result<u64, PrivacyError> {
        let mut bytes = [0u8; 8];
        self.inner
            .fill(&mut bytes)
            .map_err(|_| PrivacyError::Randomness)?;
        Ok(u64::from_le_bytes(bytes))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// SplitMix64: a seeded, statistically sound generator for tests only (never noise
    /// that is released).
    #[derive(Debug)]
    pub(crate) struct SeededSource(pub(crate) u64);

    impl RandomSource for SeededSource {
        fn next_u64(&mut self) -> Result<u64, PrivacyError> {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            Ok(z ^ (z >> 31))
        }
    }

    #[test]
    fn the_system_source_gives_distinct_words() {
        let mut s = SystemSource::new();
        let words: std::collections::BTreeSet<u64> =
            (0..64).map(|_| s.next_u64().unwrap()).collect();
        assert!(words.len() > 60);
    }
}
