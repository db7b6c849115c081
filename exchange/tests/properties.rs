//! Property tests of the masking library.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use exchange::masking::functions::*;
use exchange::masking::replace::replace;
use exchange::masking::validate::*;
use proptest::prelude::*;
use ring::hmac;

fn run(f: impl Fn(&mut String)) -> String {
    let mut s = String::new();
    f(&mut s);
    s
}

/// Any text, including CJK and non-BMP characters.
fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            proptest::char::range('a', 'z'),
            proptest::char::range('0', '9'),
            proptest::char::range('\u{4e00}', '\u{4fff}'),
            proptest::char::range('\u{20000}', '\u{2000f}'),
            Just('@'),
            Just('-'),
        ],
        1..40,
    )
    .prop_map(|v| v.into_iter().collect())
}

/// Valid 18-digit resident IDs.
fn resident_id() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            Just("110105"),
            Just("120103"),
            Just("310101"),
            Just("440305")
        ],
        1900i32..2020,
        1u32..13,
        1u32..29,
        0u32..1000,
    )
        .prop_map(|(region, y, m, d, seq)| {
            let first17 = format!("{region}{y:04}{m:02}{d:02}{seq:03}");
            let check = id_check_char(first17.as_bytes()).unwrap();
            format!("{first17}{}", char::from(check))
        })
}

proptest! {
    #[test]
    fn masks_never_return_the_input(s in text(), n in 0usize..6, m in 0usize..6) {
        for out in [
            run(|o| keep_first_last(&s, n, m, '*', o)),
            run(|o| mask_first_last(&s, n, m, '*', o)),
            run(|o| keep_range(&s, n, n + m, '*', o)),
            run(|o| mask_range(&s, n, n + m, '*', o)),
            run(|o| mask_before(&s, "@", '*', o)),
            run(|o| mask_after(&s, "@", '*', o)),
            run(|o| name_cn(&s, o)),
            run(|o| bank_card(&s, o)),
            run(|o| plate_cn(&s, o)),
            run(|o| phone_cn(&s, o)),
        ] {
            prop_assert_ne!(&out, &s);
            prop_assert_eq!(out.chars().count(), s.chars().count(), "length kept for {}", s);
        }
    }

    #[test]
    fn redact_changes_every_letter_and_digit(s in text()) {
        let out = run(|o| redact(&s, o));
        prop_assert_eq!(out.chars().count(), s.chars().count());
        for (a, b) in s.chars().zip(out.chars()) {
            if a.is_alphanumeric() {
                prop_assert!(matches!(b, 'x' | 'X' | '0' | '*'));
            }
        }
    }

    #[test]
    fn email_masks_hide_the_local_part(local in "[a-z0-9]{1,12}", domain in "[a-z]{2,8}\\.(cn|com)") {
        let e = format!("{local}@{domain}");
        let out = run(|o| email(&e, o));
        let suffix = format!("@{}", domain);
        prop_assert!(out.ends_with(&suffix));
        prop_assert_ne!(out, e);
    }

    #[test]
    fn replaced_ids_validate_keep_segments_and_depend_on_the_key(id in resident_id(), k1 in any::<[u8; 32]>(), k2 in any::<[u8; 32]>()) {
        prop_assume!(is_valid_id_cn(&id) && k1 != k2);
        let key1 = hmac::Key::new(hmac::HMAC_SHA256, &k1);
        let a = run(|o| replace(&key1, "resident_id", &id, o));
        let b = run(|o| replace(&key1, "resident_id", &id, o));
        prop_assert!(is_valid_id_cn(&a), "{}", a);
        prop_assert_eq!(&a[..14], &id[..14]);
        prop_assert_eq!((a.as_bytes()[16] - b'0') % 2, (id.as_bytes()[16] - b'0') % 2);
        prop_assert_eq!(&a, &b);
        // Another key changes the output almost always (3 random digits: 1 in 500 collide).
        let others: Vec<String> = (0..4u8).map(|i| {
            let mut k = k2;
            k[0] ^= i;
            run(|o| replace(&hmac::Key::new(hmac::HMAC_SHA256, &k), "resident_id", &id, o))
        }).collect();
        prop_assert!(others.iter().any(|o| *o != a));
    }

    #[test]
    fn replaced_phones_and_cards_validate(tail in 0u64..100_000_000, body in "[0-9]{12}", key in any::<[u8; 32]>()) {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
        let phone = format!("139{tail:08}");
        let p = run(|o| replace(&key, "phone", &phone, o));
        prop_assert!(is_valid_mobile_cn(&p) && p.starts_with("139"));
        let payload = format!("622202{body}");
        let card = format!("{payload}{}", char::from(luhn_check_digit(payload.as_bytes())));
        let c = run(|o| replace(&key, "bank_card", &card, o));
        prop_assert!(is_valid_bank_card(&c) && c.starts_with("622202"), "{}", c);
    }
}
