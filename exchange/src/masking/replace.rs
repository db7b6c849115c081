//! typed_random_replace: keyed, deterministic replacement of identifiers by valid-looking
//! ones. The declared segments stay (resident ID region, birth date and gender parity;
//! phone prefix; card BIN; credit code department, category and region), the rest comes
//! from a keyed PRF (HMAC-SHA256), and check digits are recomputed so outputs validate.
//! Values that do not validate as their type are masked whole.

use ring::hmac;

use super::validate::{
    USCC_CHARSET, id_check_char, is_valid_bank_card, is_valid_id_cn, is_valid_mobile_cn,
    is_valid_uscc, luhn_check_digit, uscc_check_char,
};

/// The identifier types typed_random_replace supports.
pub const KINDS: &[&str] = &["resident_id", "uscc", "phone", "bank_card"];

/// A stream of keyed pseudo-random bytes for one value.
struct Prf {
    block: Vec<u8>,
    pos: usize,
    counter: u32,
    key: hmac::Key,
    seed: Vec<u8>,
}

impl Prf {
    fn new(key: &hmac::Key, value: &str) -> Self {
        let seed = hmac::sign(key, value.as_bytes()).as_ref().to_vec();
        Self {
            block: seed.clone(),
            pos: 0,
            counter: 0,
            key: hmac::Key::new(hmac::HMAC_SHA256, &seed),
            seed,
        }
    }

    fn byte(&mut self) -> u8 {
        if self.pos >= self.block.len() {
            self.counter += 1;
            let mut input = self.seed.clone();
            input.extend_from_slice(&self.counter.to_be_bytes());
            self.block = hmac::sign(&self.key, &input).as_ref().to_vec();
            self.pos = 0;
        }
        let b = self.block[self.pos];
        self.pos += 1;
        b
    }

    /// Uniform below n (n <= 256), by rejection.
    fn below(&mut self, n: u8) -> u8 {
        let limit = 256 - (256 % u16::from(n.max(1)));
        loop {
            let b = self.byte();
            if u16::from(b) < limit {
                return b % n.max(1);
            }
        }
    }

    fn digit(&mut self) -> u8 {
        b'0' + self.below(10)
    }
}

/// Replace `value` as a `kind` into `out`.
pub fn replace(key: &hmac::Key, kind: &str, value: &str, out: &mut String) {
    let mut prf = Prf::new(key, value);
    let b = value.as_bytes();
    match kind {
        "resident_id" if b.len() == 18 && is_valid_id_cn(value) => {
            let mut first17 = b[..14].to_vec();
            let parity = (b[16] - b'0') % 2;
            first17.push(prf.digit());
            first17.push(prf.digit());
            first17.push(b'0' + prf.below(5) * 2 + parity);
            if let Some(check) = id_check_char(&first17) {
                first17.push(check);
                out.push_str(&String::from_utf8_lossy(&first17));
                return;
            }
        }
        "phone" if is_valid_mobile_cn(value) && b.len() == 11 => {
            out.push_str(&value[..3]);
            for _ in 0..8 {
                out.push(char::from(prf.digit()));
            }
            return;
        }
        "bank_card" if is_valid_bank_card(value) => {
            let mut payload = b[..6].to_vec();
            for _ in 6..b.len() - 1 {
                payload.push(prf.digit());
            }
            let check = luhn_check_digit(&payload);
            payload.push(check);
            out.push_str(&String::from_utf8_lossy(&payload));
            return;
        }
        "uscc" if is_valid_uscc(value) => {
            let mut first17 = b[..8].to_vec();
            for _ in 0..9 {
                first17.push(USCC_CHARSET[usize::from(prf.below(31))]);
            }
            if let Some(check) = uscc_check_char(&first17) {
                first17.push(check);
                out.push_str(&String::from_utf8_lossy(&first17));
                return;
            }
        }
        _ => {}
    }
    out.extend(std::iter::repeat_n('*', value.chars().count()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masking::validate::is_valid_uscc;

    fn run(key: &hmac::Key, kind: &str, v: &str) -> String {
        let mut s = String::new();
        replace(key, kind, v, &mut s);
        s
    }

    #[test]
    fn replacements_validate_keep_segments_and_are_keyed() {
        let k1 = hmac::Key::new(hmac::HMAC_SHA256, &[1; 32]);
        let k2 = hmac::Key::new(hmac::HMAC_SHA256, &[2; 32]);
        let id = "11010519491231002X";
        let r = run(&k1, "resident_id", id);
        assert!(is_valid_id_cn(&r), "{r}");
        assert_eq!(&r[..14], &id[..14]);
        assert_eq!((r.as_bytes()[16] - b'0') % 2, 0, "female parity kept");
        assert_eq!(r, run(&k1, "resident_id", id), "deterministic");
        assert_ne!(r, run(&k2, "resident_id", id), "keyed");
        let p = run(&k1, "phone", "13812341234");
        assert!(is_valid_mobile_cn(&p) && p.starts_with("138") && p != "13812341234");
        let payload = b"622202123456789012";
        let card = format!(
            "{}{}",
            String::from_utf8_lossy(payload),
            char::from(luhn_check_digit(payload))
        );
        let c = run(&k1, "bank_card", &card);
        assert!(is_valid_bank_card(&c) && c.starts_with("622202"), "{c}");
        let u = run(&k1, "uscc", "91350100M000100Y43");
        assert!(is_valid_uscc(&u) && u.starts_with("91350100"), "{u}");
        assert_eq!(run(&k1, "resident_id", "not an id"), "*********");
    }
}
