use super::*;
use proptest::prelude::{Just, Strategy, prop_oneof, proptest};

fn found(text: &str) -> Vec<(Kind, &str)> {
    let mut out = Vec::new();
    find(text, Kinds::all(), &mut out);
    out.iter()
        .map(|f| (f.kind, &text[f.start..f.end]))
        .collect()
}

fn placeholder(k: Kind, _: &str) -> String {
    format!("[{}]", k.name())
}

/// Values from real analytics payloads that must come through untouched.
const CLEAN: &[&str] = &[
    "1234567890.1732838400",
    "1732838400123",
    "1707755778201",
    "G-TEST123456",
    "45je4bk0v9115421035za200",
    "Chromium;131.0.6778.85|Google Chrome;131.0.6778.85",
    "Not_A Brand;24.0.0.0",
    "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0.0.0 Safari/537.36",
    "1920x1080",
    "2.9.145",
    "fb.1.1707755778200.1111111111",
    "fb.1.1707755700000.IwAR_FAKE_CLICK_ID",
    "01900000-0000-7000-8000-000000000001",
    "13l3l3l3l1l1",
    "ORD-99812",
    "129.95",
    "812.40",
    "x86",
    "6.5.0",
    "2024-01-15",
    "2024-01-15T12:30:45Z",
    "2024-01-15T12:30:45+01:00",
    "12:30:45",
    "12:30:45.123",
    "1,299.00",
    "phc_FAKE123",
    "SKU-1",
    "https://shop.example/catalog/?utm_source=newsletter&utm_medium=email&gclid=Cj0KCQiA4NWrBhD",
    "Example Shop",
    "en-us",
    "de-DE",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
    "101925629~102067555~102067808",
    "user_42",
    "customer-98765",
    "https://cdn.example/img/logo@2x.png",
    "@scope/package@1.2.3",
    "4111111111111112",
    "17328384001234567",
    "ORD-4111111111111111",
    "1.2.3.4.5",
    "v1.2.3.4",
    "256.1.1.1",
    "01.2.3.4",
    "DE89370400440532013001",
    "XX89370400440532013000",
    "std::io::Result",
    "a :: b",
    "00:1A:2B:3C:4D:5E",
    "eyJhbGciOiJIUzI1NiJ9",
    "bearer short",
    "price=12.50&qty=2",
    "https://shop.example/?promo_code=SUMMER&tokens=1",
    "https://shop.example/reset?token=",
    "555-123-45678",
    "155-123-4567",
    "5551234567",
    "+1234567",
    "size+15551234567",
    "1.555.123.4567.8",
    "dimension1=+1",
];

#[test]
fn true_positives() {
    use Kind::*;
    let cases: &[(&str, &[(Kind, &str)])] = &[
        ("jane.doe@example.com", &[(Email, "jane.doe@example.com")]),
        (
            "mailto:Jane_Doe+tag@mail.example.co.uk.",
            &[(Email, "Jane_Doe+tag@mail.example.co.uk")],
        ),
        (
            "q=jane.doe%40example.com",
            &[(Email, "jane.doe%40example.com")],
        ),
        (
            "dl=https%3A%2F%2Fx.example%2F%3Fe%3Djane%40x.example",
            &[(Email, "jane%40x.example")],
        ),
        ("+1 555 123 4567", &[(Phone, "+1 555 123 4567")]),
        ("+15551234567", &[(Phone, "+15551234567")]),
        ("%2B15551234567", &[(Phone, "%2B15551234567")]),
        ("tel:+44 (0)20 7946 0958", &[(Phone, "+44 (0)20 7946 0958")]),
        ("+1 (555) 123-4567", &[(Phone, "+1 (555) 123-4567")]),
        ("(555) 123-4567", &[(Phone, "(555) 123-4567")]),
        ("call 555-123-4567 now", &[(Phone, "555-123-4567")]),
        ("555.123.4567", &[(Phone, "555.123.4567")]),
        ("555 123 4567", &[(Phone, "555 123 4567")]),
        ("1-555-123-4567", &[(Phone, "1-555-123-4567")]),
        ("4111 1111 1111 1111", &[(Card, "4111 1111 1111 1111")]),
        ("4111111111111111", &[(Card, "4111111111111111")]),
        ("5500-0000-0000-0004", &[(Card, "5500-0000-0000-0004")]),
        ("378282246310005", &[(Card, "378282246310005")]),
        ("3782 822463 10005", &[(Card, "3782 822463 10005")]),
        ("card=6011111111111117", &[(Card, "6011111111111117")]),
        (
            "DE89 3704 0044 0532 0130 00",
            &[(Iban, "DE89 3704 0044 0532 0130 00")],
        ),
        (
            "GB82WEST12345698765432",
            &[(Iban, "GB82WEST12345698765432")],
        ),
        (
            "iban: NL91 ABNA 0417 1643 00 EUR",
            &[(Iban, "NL91 ABNA 0417 1643 00")],
        ),
        ("203.0.113.7", &[(Ip, "203.0.113.7")]),
        ("n=%20%2B15551234567", &[(Phone, "%2B15551234567")]),
        ("c%3D4111111111111111%26x", &[(Card, "4111111111111111")]),
        ("ip=10.0.0.1:8080", &[(Ip, "10.0.0.1")]),
        ("2001:db8::1", &[(Ip, "2001:db8::1")]),
        (
            "[fe80::1ff:fe23:4567:890a%eth0]:443",
            &[(Ip, "fe80::1ff:fe23:4567:890a")],
        ),
        ("::ffff:192.0.2.1", &[(Ip, "::ffff:192.0.2.1")]),
        (
            "t=eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            &[(
                Jwt,
                "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            )],
        ),
        (
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            &[(
                Jwt,
                "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            )],
        ),
        (
            "Authorization: Bearer abcdefghijklmnop1234",
            &[(Bearer, "abcdefghijklmnop1234")],
        ),
        (
            "h=bearer%20abcdefghijklmnop1234==",
            &[(Bearer, "abcdefghijklmnop1234==")],
        ),
        (
            "https://shop.example/reset?email=jane.doe%40example.com&token=abc123",
            &[(Email, "jane.doe%40example.com"), (UrlSecret, "abc123")],
        ),
        (
            "https://app.example/cb#access_token=xyz&state=1",
            &[(UrlSecret, "xyz")],
        ),
        ("/p?a=1;Session%5FID=s3cr3t", &[(UrlSecret, "s3cr3t")]),
        (
            "https%3A%2F%2Fshop.example%2Freset%3Fx%3D1%26Password%3Dhunter2",
            &[(UrlSecret, "hunter2")],
        ),
        ("/login?pwd=a b", &[(UrlSecret, "a")]),
    ];
    for (text, want) in cases {
        assert_eq!(found(text), *want, "{text}");
        assert!(any(text, Kinds::all()), "{text}");
    }
}

#[test]
fn uuids_are_ids_not_personal_data() {
    assert!(found("0190aa00-0000-7000-8000-0000000000aa").is_empty());
    assert!(found("01234567-8901-2345-6789-012345678901").is_empty());
    // Anything else with as many digits is still checked.
    assert!(!found("4111 1111 1111 1111").is_empty());
}

#[test]
fn must_not_match() {
    for text in CLEAN {
        assert_eq!(found(text), [], "{text}");
        assert!(!any(text, Kinds::all()), "{text}");
        assert_eq!(redact(text, Kinds::all(), &mut placeholder), None, "{text}");
    }
}

#[test]
fn kinds_filter_and_names() {
    for k in Kind::ALL {
        assert_eq!(Kind::from_name(k.name()), Some(k));
        assert!(Kinds::all().contains(k) && !Kinds::none().contains(k));
        assert!(Kinds::none().with(k).contains(k));
    }
    assert_eq!(Kind::from_name("Email"), None);
    assert!(Kinds::none().is_empty() && Kinds::default().is_empty());
    let url = "https://shop.example/reset?email=jane.doe%40example.com&token=abc123";
    let mut out = Vec::new();
    find(url, Kinds::none().with(Kind::UrlSecret), &mut out);
    let spans: Vec<_> = out.iter().map(|f| &url[f.start..f.end]).collect();
    assert_eq!(spans, ["jane.doe%40example.com", "abc123"]);
    assert!(!any(url, Kinds::none().with(Kind::Card)));
    assert!(!any("jane@example.com", Kinds::none()));
}

#[test]
fn find_appends() {
    let mut out = vec![Finding {
        kind: Kind::Ip,
        start: 0,
        end: 1,
    }];
    find("x 203.0.113.7", Kinds::all(), &mut out);
    assert_eq!(
        out[1],
        Finding {
            kind: Kind::Ip,
            start: 2,
            end: 13
        }
    );
    assert_eq!(out.len(), 2);
}

#[test]
fn redaction() {
    let url = "https://shop.example/reset?email=jane.doe%40example.com&token=abc123&v=2";
    let once = redact(url, Kinds::all(), &mut placeholder).unwrap();
    assert_eq!(
        once,
        "https://shop.example/reset?email=[email]&token=[url_secret]&v=2"
    );
    assert_eq!(redact(&once, Kinds::all(), &mut placeholder), None);
    let encoded = "/r?token=%5Burl_secret%5D&to=+1 555 123 4567";
    let once = redact(encoded, Kinds::all(), &mut placeholder).unwrap();
    assert_eq!(once, "/r?token=%5Burl_secret%5D&to=[phone]");
    let mut seen = Vec::new();
    let out = redact("a jane@example.com b", Kinds::all(), &mut |k, m| {
        seen.push((k, m.to_string()));
        String::new()
    });
    assert_eq!(out.as_deref(), Some("a  b"));
    assert_eq!(seen, [(Kind::Email, "jane@example.com".to_string())]);
    for text in CLEAN {
        let all = format!("{text} jane@example.com {text}");
        let once = redact(&all, Kinds::all(), &mut placeholder).unwrap();
        assert_eq!(once, format!("{text} [email] {text}"));
        assert_eq!(redact(&once, Kinds::all(), &mut placeholder), None);
    }
}

#[test]
fn validators() {
    assert!(luhn(&[4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]));
    assert!(mod97(b"GB82WEST12345698765432"));
    assert!(!mod97(b"GB83WEST12345698765432"));
    assert_eq!(iban_len(b"DE"), Some(22));
    assert_eq!(iban_len(b"ZZ"), None);
    assert_eq!(IBAN_LENGTHS.len() % 4, 0);
}

fn check(text: &str) {
    let mut out = Vec::new();
    find(text, Kinds::all(), &mut out);
    for w in out.windows(2) {
        assert!(w[0].end <= w[1].start, "{text:?}: {out:?}");
    }
    for f in &out {
        assert!(f.start < f.end && f.end <= text.len(), "{text:?}: {f:?}");
        assert!(text.is_char_boundary(f.start) && text.is_char_boundary(f.end));
    }
    assert_eq!(any(text, Kinds::all()), !out.is_empty(), "{text:?}");
    assert_eq!(
        redact(text, Kinds::all(), &mut placeholder).is_some(),
        !out.is_empty()
    );
}

#[test]
fn edges_do_not_panic() {
    let edges = [
        "",
        "1-",
        "1 ",
        "1%20",
        "(",
        "(5",
        "(555)",
        "+",
        "%",
        "%2",
        "%2B",
        "%40",
        "@",
        "a@",
        "@b.co",
        "a@b.",
        "::",
        ":::",
        "eyJ",
        "eyJ.",
        "Bearer ",
        "bearer%20",
        "?",
        "?=",
        "#a=",
        "?token=",
        "?%3D",
        "DE89",
        "DE89 ",
        "4111 ",
        "4111-1111-1111-1111-",
        "1.2.3.",
        "é@é.é",
    ];
    for text in edges {
        check(text);
    }
    // Long values: the flag bits wrap and the 16-bit counts carry; both must stay harmless.
    let long = format!(
        "{} jane@example.com {}",
        "@ ".repeat(40_000),
        "4".repeat(70_000)
    );
    check(&long);
    assert_eq!(found(&long), [(Kind::Email, "jane@example.com")]);
}

proptest! {
    #[test]
    fn find_is_well_formed(text in proptest::arbitrary::any::<String>()) {
        check(&text);
    }

    #[test]
    fn find_is_well_formed_on_trigger_soup(
        parts in proptest::collection::vec(prop_oneof![
            "[0-9]{1,5}",
            "[ .:@%+=&?#;()\\-]",
            Just("%40".to_string()), Just("%2B".to_string()), Just("%3D".to_string()),
            Just("%26".to_string()), Just("%3F".to_string()), Just("eyJ".to_string()),
            Just("Bearer ".to_string()), Just("token=".to_string()), Just("DE89".to_string()),
            Just("4111".to_string()), Just("é".to_string()), Just("::".to_string()),
            Just("%20".to_string()), Just("555".to_string()), Just("[email]".to_string()),
            Just("%5B".to_string()), Just("Bearer%20".to_string()), Just("1".to_string()),
            "[a-zA-Z]{1,6}",
        ], 0..40),
    ) {
        check(&parts.concat());
    }

    /// Walking the separators' masks finds the secrets that searching for each separator in
    /// turn does, escaped separators and values without names included.
    #[test]
    fn url_secret_by_masks_is_url_secret_by_search(
        parts in proptest::collection::vec(prop_oneof![
            Just("token".to_string()), Just("pwd".to_string()), Just("x".to_string()),
            Just("=".to_string()), Just("&".to_string()), Just(";".to_string()),
            Just("?".to_string()), Just("#".to_string()), Just("%3D".to_string()),
            Just("%26".to_string()), Just("%3F".to_string()), Just("%23".to_string()),
            Just("%3B".to_string()), Just("%".to_string()), Just("%2".to_string()),
            Just(" ".to_string()), Just("[email]".to_string()), Just("ab12".to_string()),
            "[a-z0-9]{1,70}",
        ], 0..30),
    ) {
        let text = parts.concat();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        url_secret(text.as_bytes(), &mut a);
        url_secret_by_search(text.as_bytes(), &mut b);
        proptest::prop_assert_eq!(a, b, "{}", text);
    }

    /// The sampled search for an IBAN's head finds one wherever trying every position does.
    #[test]
    fn iban_head_sampling_misses_nothing(text in "[A-Ca-c0-2]{0,24}") {
        let b = text.as_bytes();
        let every = b.windows(4).any(|w| {
            w[0].is_ascii_uppercase()
                && w[1].is_ascii_uppercase()
                && w[2].is_ascii_digit()
                && w[3].is_ascii_digit()
        });
        proptest::prop_assert_eq!(has_iban_head(b), every);
        proptest::prop_assert_eq!(has_iban_head_scalar(b), every);
    }
}

/// `cargo test --release -- --ignored --nocapture detect::tests::timing`
#[test]
#[ignore]
fn timing() {
    let rounds = 200_000;
    let mut out = Vec::with_capacity(8);
    let start = std::time::Instant::now();
    for _ in 0..rounds {
        for text in CLEAN {
            find(std::hint::black_box(text), Kinds::all(), &mut out);
            out.clear();
        }
    }
    let per = start.elapsed().as_nanos() as f64 / (rounds * CLEAN.len()) as f64;
    let short = [
        "Example Shop",
        "en-us",
        "user_42",
        "customer-98765",
        "ORD-99812",
    ];
    let start = std::time::Instant::now();
    for _ in 0..rounds * 4 {
        for text in short {
            find(std::hint::black_box(text), Kinds::all(), &mut out);
        }
    }
    let per_short = start.elapsed().as_nanos() as f64 / (rounds * 4 * short.len()) as f64;
    println!(
        "find: {per:.1} ns/call over {} clean values; {per_short:.1} ns/call short values without triggers",
        CLEAN.len()
    );
}

#[test]
fn arming_bits_follow_the_anchored_table() {
    // `arm` gives bit k to ANCHORED[k]: a kind's mask must include its anchored detectors.
    for (k, (kind, _)) in ANCHORED.iter().enumerate() {
        assert!(
            Kinds::none().with(*kind).arm_mask() & 1 << k != 0,
            "{kind:?}"
        );
    }
    assert_eq!(ANCHORED[IBAN_BIT.trailing_zeros() as usize].0, Kind::Iban);
    assert_eq!(Kinds::none().arm_mask(), 0);
    assert_eq!(Kinds::all().arm_mask(), (1 << 10) - 1);
}

#[test]
fn nothing_shorter_than_three_bytes_is_found() {
    // `may_find` skips such values without looking: hold every detector to it.
    let chars = b"0123456789:.@%+=?#&-( bBJeyAZaz/\x80";
    for &a in chars {
        for &b in chars {
            for t in [vec![a], vec![a, b]] {
                let t = String::from_utf8_lossy(&t).into_owned();
                if t.len() < 3 {
                    assert!(found(&t).is_empty(), "{t:?}");
                }
            }
        }
    }
    assert!(!found("::1").is_empty(), "the shortest finding");
}

/// [`url_secret`] searching for each separator in turn: the tests' reference.
fn url_secret_by_search(b: &[u8], out: &mut Vec<Finding>) {
    let Some((q, ql)) = find_encoded(b, 0, b.len(), &QUERY_OPEN) else {
        return;
    };
    let mut s = q + ql; // where the current parameter starts
    while let Some((at, len)) = find_encoded(b, s, b.len(), &EQ_OR_DELIMITER) {
        let byte = if len == 1 {
            b[at]
        } else {
            escape_at(b, at).unwrap_or(0)
        };
        let i = at + len;
        if byte != b'=' {
            s = i; // a parameter without a value
            continue;
        }
        // The value runs to the next delimiter.
        let end = find_encoded(b, i, b.len(), &DELIMITER);
        let end_at = end.map_or(b.len(), |d| d.0);
        // Secret names are short; a long one is never looked up.
        if at - s <= 40 && is_secret_name(&b[s..at]) {
            let stop = |c: &u8| c.is_ascii_whitespace() || matches!(c, b'"' | b'\'' | b'<' | b'>');
            let ve = b[i..end_at].iter().position(stop).map_or(end_at, |p| i + p);
            if ve > i && !is_placeholder(&b[i..ve]) {
                push(out, Kind::UrlSecret, i, ve);
            }
        }
        match end {
            Some((d, dl)) => s = d + dl,
            None => break,
        }
    }
}

/// A set of the ASCII bytes [`find_encoded`] looks for: `hit[c]` for the bytes themselves,
/// `stop[c]` for them and `%` (where an escape of one may start).
struct Seps {
    hit: [bool; 256],
    stop: [bool; 256],
}

const fn seps(bytes: &[u8]) -> Seps {
    let mut s = Seps {
        hit: [false; 256],
        stop: [false; 256],
    };
    let mut i = 0;
    while i < bytes.len() {
        s.hit[bytes[i] as usize] = true;
        s.stop[bytes[i] as usize] = true;
        i += 1;
    }
    s.stop[b'%' as usize] = true;
    s
}

static QUERY_OPEN: Seps = seps(b"?#");
static DELIMITER: Seps = seps(b"?#&;");
static EQ_OR_DELIMITER: Seps = seps(b"=?#&;");

/// The first byte in `b[from..end]` of `set`, raw or as a `%XX` escape: (position, length).
fn find_encoded(b: &[u8], mut from: usize, end: usize, set: &Seps) -> Option<(usize, usize)> {
    loop {
        let j = from + b[from..end].iter().position(|&c| set.stop[c as usize])?;
        if b[j] != b'%' {
            return Some((j, 1));
        } else if escape_at(b, j).is_some_and(|c| set.hit[c as usize]) {
            return Some((j, 3));
        }
        from = j + 1;
    }
}

proptest! {
    /// The AVX-512 pre-pass (where the CPU has it) finds what the table loop finds, at every
    /// length (whole 64-byte steps and masked tails), for every byte value.
    #[test]
    fn the_vector_census_is_the_table_census(
        bytes in proptest::collection::vec(prop_oneof![
            proptest::sample::select(b"0123456789.:@%+=?#ABJZbyj-( \x80\xff".to_vec()),
            proptest::num::u8::ANY,
        ], 0..300),
    ) {
        #[cfg(target_arch = "x86_64")]
        if census::vbmi::available() {
            // SAFETY: checked just above.
            let got = unsafe { census::vbmi::census(&bytes) };
            proptest::prop_assert_eq!(got, census::scalar(&bytes));
        }
    }
}

#[test]
fn the_vector_census_saturates_like_the_table_census() {
    // Past 65,535 bytes the table loop's 16-bit counts may carry: both read as "many".
    let long: Vec<u8> = b"1.:a@".iter().copied().cycle().take(70_000).collect();
    let want = census::scalar(&long);
    assert_eq!(
        (want.digits, want.dots, want.colons),
        (0xFFFF, 0xFFFF, 0xFFFF)
    );
    #[cfg(target_arch = "x86_64")]
    if census::vbmi::available() {
        // SAFETY: checked just above.
        assert_eq!(unsafe { census::vbmi::census(&long) }, want);
    }
}

proptest! {
    /// Leaving out the national phone and card detectors where no digit run can start a match
    /// ([`digit_runs`]) loses no finding: on digit soups with separators, parentheses, escapes
    /// (whose hex digits run into the digits after them) and text, the findings with the
    /// refined bits are the findings with every counted bit.
    #[test]
    fn digit_runs_lose_no_finding(
        parts in proptest::collection::vec(prop_oneof![
            "[0-9]{1,20}",
            "[2-6][0-9]{12,18}",
            "[2-9][0-9]{2}",
            proptest::sample::select(vec![
                " ", "-", ".", "(", ")", "+", "1", "%20", "%2B", "%25", "%A5", "%2", "%", "~",
                "a", "Z", "_", "4111", "5555", "%2D", ":", "e", "4222222222222",
                "4111111111111111", "378282246310005", "4111 1111 1111 1111",
                "4111-1111-1111-1111", "555 123 4567", "(555) 123-4567", "1-555-123-4567",
                "555.123.4567", "%20555%20123%204567", "1 (555) 123 4567",
            ]).prop_map(|s| s.to_string()),
        ], 0..12),
    ) {
        let text = parts.concat();
        let b = text.as_bytes();
        let all = NATIONAL_BIT | CARD_BIT;
        let findings = |armed: u16| {
            let mut out = Vec::new();
            run_armed(b, armed, &mut out, false);
            resolve(&mut out, 0);
            out
        };
        let without = findings(all);
        proptest::prop_assert_eq!(findings(digit_runs(b, all)), without.clone(), "{}", text);
        if b.len() <= 64 && !b.contains(&b'%') {
            proptest::prop_assert_eq!(findings(digit_runs_by_mask(b, all)), without, "{}", text);
        }
    }

    /// The vector digit mask (where the CPU has it) is the byte loop's, at every length.
    #[test]
    fn the_vector_digit_mask_is_the_byte_loop_s(
        bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..=64),
    ) {
        let want = bytes
            .iter()
            .enumerate()
            .fold(0u64, |m, (k, c)| m | ((*c as char).is_ascii_digit() as u64) << k);
        proptest::prop_assert_eq!(census::digit_mask(&bytes), want);
        proptest::prop_assert_eq!(census::digit_mask_scalar(&bytes), want);
    }
}

/// A single head is found wherever it is, across the vector version's block boundaries, and
/// three quarters of one are not.
#[test]
fn iban_heads_at_every_position() {
    for len in 4..200 {
        for at in 0..=len - 4 {
            for (head, want) in [("GB82", true), ("GB8x", false), ("G082", false)] {
                let mut t = vec![b'x'; len];
                t[at..at + 4].copy_from_slice(head.as_bytes());
                assert_eq!(has_iban_head(&t), want, "{head} at {at} of {len}");
                assert_eq!(has_iban_head_scalar(&t), want, "{head} at {at} of {len}");
            }
        }
    }
}
