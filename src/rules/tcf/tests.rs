use proptest::prelude::*;

use super::*;

/// A core segment with these purpose bitfields (purpose n at bit n - 1), as a CMP writes it:
/// version, timestamps, CMP fields, the purposes, then an empty vendor bitfield section.
fn encode(version: u8, consent: u32, li: u32) -> String {
    let mut bits = String::new();
    let mut put = |v: u64, n: usize| bits.push_str(&format!("{v:0n$b}"));
    put(u64::from(version), 6);
    put(17_000_000_000, 36); // created, deciseconds
    put(17_000_000_000, 36); // last updated
    put(7, 12); // CMP id
    put(1, 12); // CMP version
    put(1, 6); // consent screen
    put(4 * 64 + 13, 12); // language "EN"
    put(120, 12); // vendor list version
    put(4, 6); // policy version
    put(0, 2); // service specific, non-standard texts
    put(0, 12); // special features
    put(u64::from(consent.reverse_bits() >> 8), 24);
    put(u64::from(li.reverse_bits() >> 8), 24);
    put(0, 1); // purpose one treatment
    put(3 * 64 + 4, 12); // publisher country "DE"
    put(0, 16); // vendor consents: max vendor id 0
    put(0, 1); // bitfield
    put(0, 16); // LI vendors: max vendor id 0
    put(0, 1);
    put(0, 12); // no publisher restrictions
    while !bits.len().is_multiple_of(6) {
        bits.push('0');
    }
    const ALPHA: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    bits.as_bytes()
        .chunks(6)
        .map(|c| {
            let n = c
                .iter()
                .fold(0usize, |a, b| (a << 1) | usize::from(*b == b'1'));
            ALPHA[n] as char
        })
        .collect()
}

#[test]
fn a_published_example_string() {
    // The example of the lib_tcstring README and the IAB's test suite: purposes 1, 2, 3.
    let tc = decode("COvFyGBOvFyGBAbAAAENAPCAAOAAAAAAAAAAAEEUACCKAAA").unwrap();
    assert_eq!(tc.purposes_consent, 0b111);
    assert!(tc.consent(1) && tc.consent(3) && !tc.consent(4) && !tc.consent(0));
    assert_eq!(tc.signal(Purpose::Ads), Signal::Granted);
    assert_eq!(tc.signal(Purpose::AdPersonalization), Signal::Denied);
    assert_eq!(tc.signal(Purpose::AdUserData), Signal::Denied);
    assert_eq!(tc.signal(Purpose::Analytics), Signal::Denied);
}

#[test]
fn purposes_map_to_consent_mode() {
    let all = decode(&encode(2, 0x3ff, 0)).unwrap();
    for p in [
        Purpose::Ads,
        Purpose::Analytics,
        Purpose::AdUserData,
        Purpose::AdPersonalization,
    ] {
        assert_eq!(all.signal(p), Signal::Granted, "{p:?}");
    }
    let none = decode(&encode(2, 0, 0x3ff)).unwrap();
    for p in [
        Purpose::Ads,
        Purpose::Analytics,
        Purpose::AdUserData,
        Purpose::AdPersonalization,
    ] {
        assert_eq!(none.signal(p), Signal::Denied, "{p:?}");
    }
    // Purpose 1 and legitimate interest for purpose 8: analytics yes, ads-related only ads.
    let analytics = decode(&encode(2, 1, 1 << 7)).unwrap();
    assert_eq!(analytics.signal(Purpose::Analytics), Signal::Granted);
    assert_eq!(analytics.signal(Purpose::Ads), Signal::Granted);
    assert_eq!(analytics.signal(Purpose::AdUserData), Signal::Denied);
    // Purposes 3 and 4 without 1: personalisation only.
    let p34 = decode(&encode(2, 0b1100, 0)).unwrap();
    assert_eq!(p34.signal(Purpose::AdPersonalization), Signal::Granted);
    assert_eq!(p34.signal(Purpose::Ads), Signal::Denied);
}

#[test]
fn what_is_not_a_tc_string() {
    assert_eq!(decode(&encode(1, 1, 0)), Err(TcfError::Version(1)));
    assert_eq!(decode("COvFyGBOvFyGBAbAAAENAPCA"), Err(TcfError::TooShort));
    assert_eq!(
        decode("COvFyGBOvFyGBAbAAAENAPCAAOAAAAAAAAAAAEEUACCK+AA"),
        Err(TcfError::NotBase64)
    );
    assert_eq!(
        decode("COvFyGBOvFyGBAbAAAENAPCAAOAAAAAAAAAAAEEUACCKAAA..x"),
        Err(TcfError::NotBase64)
    );
    assert_eq!(decode(&"C".repeat(MAX_LEN + 1)), Err(TcfError::TooLong));
    assert_eq!(decode(""), Err(TcfError::NotBase64));
    // More segments after the core are fine (disclosed vendors, publisher TC).
    assert!(decode("COvFyGBOvFyGBAbAAAENAPCAAOAAAAAAAAAAAEEUACCKAAA.IFoEUQQgAIQwgIwQABAEAAAAOIAACAIAAAAQAIAgEAACEAAAAAgAQBAAAAAAAGBAAgAAAAAAAAFAAECAAAgAAQARAEQAAAAAJAAIAAgAAAYQEAAAQmAgBC3ZAYzUw").is_ok());
}

proptest! {
    #[test]
    fn purposes_round_trip(consent in 0u32..(1 << 24), li in 0u32..(1 << 24)) {
        let tc = decode(&encode(2, consent, li)).unwrap();
        prop_assert_eq!(tc, TcCore { purposes_consent: consent, purposes_li: li });
        for n in 1..=24u8 {
            prop_assert_eq!(tc.consent(n), consent & (1 << (n - 1)) != 0);
        }
    }

    #[test]
    fn any_text_decodes_or_errs_without_panicking(s in ".{0,200}") {
        let _ = decode(&s);
    }

    #[test]
    fn any_base64url_text_decodes_or_errs(s in "[A-Za-z0-9_-]{0,80}(\\.[A-Za-z0-9_-]{0,20}){0,3}") {
        match decode(&s) {
            Ok(_) => prop_assert!(s.split('.').next().unwrap().len() >= 36),
            Err(e) => prop_assert!(matches!(e, TcfError::TooShort | TcfError::Version(_) | TcfError::NotBase64)),
        }
    }
}
