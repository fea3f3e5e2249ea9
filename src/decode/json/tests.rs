use super::*;
use proptest::prelude::*;

/// A posthog-js `/e/` batch of `n` events (about 670 bytes each).
fn posthog_batch(n: usize) -> String {
    let event = |i: usize| {
        format!(
            r#"{{"uuid":"01900000-0000-7000-8000-00000000000{i}","event":"$pageview","properties":{{"token":"phc_FAKE","distinct_id":"0190aa","$device_id":"0190aa","$session_id":"0190bb","$window_id":"0190cc","$current_url":"https://shop.example.com/reset?email=jane.doe%40example.com&token=abc{i}","$host":"shop.example.com","$pathname":"/reset","$referrer":"https://mail.example.net/","$browser":"Chrome","$browser_version":121.5,"$device_type":"Desktop","$os":"Mac OS X","$lib":"web","$lib_version":"1.200.0","$screen_width":1920,"$el_text":"Caf\u00e9 \"deals\" \ud83d\ude00 a\/b","$is_identified":false,"$groups":null,"$set":{{"plan":"pro"}}}},"offset":412,"timestamp":"2024-02-12T16:36:40.000Z"}}"#
        )
    };
    format!("[{}]", (0..n).map(event).collect::<Vec<_>>().join(",\n "))
}

/// Clears every `raw` and `raw_key`, so that the whole tree is encoded from its parts.
fn forget(v: &mut Value<'_>) {
    v.touch();
    match v {
        Value::Obj(o) => o.entries.iter_mut().for_each(|e| {
            e.raw_key = None;
            forget(&mut e.value);
        }),
        Value::Arr(a) => a.items.iter_mut().for_each(forget),
        Value::Str(_) | Value::Lit(_) => {}
    }
}

fn serde(text: &str) -> Option<serde_json::Value> {
    serde_json::from_str(text).ok()
}

const DOCS: &[&str] = &[
    " \t\n{ \"a\" : [ 1 , 2.5 , -0 , 1e10 , 1.5E-3 , 0e+0 , true , false , null ] , \"b\" : { } , \"c\" : [ ] }\r\n ",
    r#"{"esc":"line\nbreak \u00e9 \ud83d\ude00 \/ \" \\ \b\f\r\t","k\u00e9y":"é😀","dup":1,"dup":2}"#,
    r#"[[[]],[{"a":[{"b":[-12.0e-5]}]}],"",{"":""}]"#,
    r#""top-level string""#,
    "  -0.0  ",
    "null",
];

#[test]
fn untouched_documents_round_trip_byte_identical() {
    for doc in DOCS.iter().map(|d| d.to_string()).chain([posthog_batch(3)]) {
        let v = parse(&doc).unwrap_or_else(|e| panic!("{doc}: {e}"));
        assert_eq!(to_string(&v), doc.trim(), "{doc}");
        let mut fresh = v.clone();
        forget(&mut fresh);
        assert_eq!(serde(&to_string(&fresh)), serde(&doc), "{doc}");
    }
}

#[test]
fn decoded_text_borrows_unless_escaped() {
    let Ok(Value::Obj(o)) = parse(DOCS[1]) else {
        panic!()
    };
    let e = &o.entries[0];
    assert!(matches!(e.key, Cow::Borrowed("esc")) && e.raw_key == Some("\"esc\"") && !e.bare);
    assert_eq!(o.entries[1].key, Cow::<str>::Owned("kéy".into()));
    let Value::Str(s) = &e.value else { panic!() };
    assert!(s.enc() == crate::decode::Enc::Held && s.nested().is_none() && !s.trusted);
    assert_eq!(s.text(), "line\nbreak é 😀 / \" \\ \u{8}\u{c}\r\t");
    assert_eq!(o.entries[2].value, Value::Lit(Cow::Borrowed("1")));
    assert_eq!(
        (&o.entries[3].key, &o.entries[3].value),
        (&o.entries[2].key, &Value::Lit("2".into()))
    );
}

#[test]
fn a_change_reencodes_only_its_path() {
    let spaced = r#"{ "a" : { "b" : "x", "c": [1, 2.50] }, "\u0064": "\u0079" }"#;
    for (src, want) in [
        (
            r#"{"a":{"b":"x","c":[1,2]},"d":"y"}"#,
            r#"{"a":{"b":"NEW","c":[1,2]},"d":"y"}"#,
        ),
        (
            spaced,
            r#"{"a":{"b":"NEW","c":[1, 2.50]},"\u0064":"\u0079"}"#,
        ),
    ] {
        let mut v = parse(src).unwrap();
        let Value::Obj(root) = &mut v else { panic!() };
        let Some(Value::Obj(a)) = root.get_mut("a") else {
            panic!()
        };
        let Some(Value::Str(b)) = a.get_mut("b") else {
            panic!()
        };
        b.set("NEW");
        root.get_mut("a").unwrap().touch();
        assert!(root.raw.is_some() && !root.entries[1].value.is_changed());
        v.touch();
        assert_eq!(to_string(&v), want);
    }
}

#[test]
fn changed_strings_are_escaped_and_may_carry_a_nested_document() {
    let mut v = parse(r#"["a","b"]"#).unwrap();
    let Value::Arr(arr) = &mut v else { panic!() };
    arr.items[1] = Value::str("\"q\"\\\n\u{1}\u{7f}é");
    arr.items.push(Value::str("inner"));
    v.touch();
    let nested = |s: &Str<'_>| (s.text() == "inner").then(|| r#"{"x":1}"#.to_string());
    let mut out = String::new();
    encode_into(&v, &mut out, &nested);
    assert_eq!(
        out,
        concat!(r#"["a","\"q\"\\\n\u0001"#, "\u{7f}", r#"é","{\"x\":1}"]"#)
    );
}

#[test]
fn rejects_what_rfc_8259_rejects() {
    let bad = r#"01 -01 +1 .5 1. 1e 1e+ - --1 0x1 1.e5 NaN Infinity [1,] {"a":1,} [,1] {,} //c /**/1 {"a"1} {a:1} {'a':1} 'a' tru nulll True "\x" "\u12" "\ud800" "\udc00" "\ud83d\u0041" "open [1 {"a":1 []] {}x"#;
    let spaced = [
        "",
        " ",
        "[1 2]",
        "1 2",
        "\"\u{1}\"",
        "\"a\tb\"",
        "\u{feff}1",
        "\u{c}1",
        "[1,\n]",
    ];
    for doc in bad.split(' ').chain(spaced) {
        assert!(parse(doc).is_err() && serde(doc).is_none(), "{doc:?}");
    }
    assert_eq!(parse("[1,\n]").unwrap_err(), err(4, "expected a value"));
    let e = parse(r#"{"a":"\q"}"#).unwrap_err();
    assert_eq!(e.to_string(), "invalid JSON at byte 6: invalid escape");
}

#[test]
fn nesting_deeper_than_128_is_an_error() {
    let nest = |open: &str, close: &str, n| format!("{}1{}", open.repeat(n), close.repeat(n));
    assert!(parse(&nest("[", "]", MAX_DEPTH)).is_ok());
    assert!(parse(&nest(r#"{"a":"#, "}", MAX_DEPTH)).is_ok());
    let deep = nest("[", "]", MAX_DEPTH + 1);
    assert_eq!(parse(&deep).unwrap_err(), err(128, "nesting too deep"));
    let deep = nest(r#"{"a":"#, "}", MAX_DEPTH + 1);
    assert_eq!(parse(&deep).unwrap_err(), err(5 * 128, "nesting too deep"));
    assert!(parse(&"[".repeat(1_000_000)).is_err(), "no stack overflow");
}

/// Our verdict must match serde_json's, except where serde_json is stricter than RFC 8259:
/// it refuses numbers that overflow an f64 (`1e400`) and nesting deeper than 127 (never
/// generated here). Both refuse lone surrogates.
fn agrees_with_serde_json(text: &str) -> Result<(), TestCaseError> {
    let ours = parse(text);
    match (&ours, serde_json::from_str::<serde_json::Value>(text)) {
        (Ok(v), Ok(theirs)) => {
            prop_assert_eq!(to_string(v), text.trim_matches([' ', '\t', '\n', '\r']));
            let mut fresh = v.clone();
            forget(&mut fresh);
            prop_assert_eq!(serde(&to_string(&fresh)), Some(theirs));
        }
        (Err(_), Err(_)) => {}
        (Ok(_), Err(e)) if e.to_string().starts_with("number out of range") => {}
        (_, theirs) => prop_assert!(false, "{text:?}: ours {ours:?}, serde_json {theirs:?}"),
    }
    Ok(())
}

/// JSON-ish text: documents built from mostly valid tokens, a few malformed ones.
fn jsonish() -> impl Strategy<Value = String> {
    let string = r#""([a-z é😀/]|\\["\\/bfnrt]|\\u[0-9a-cA-Ce-fE-F][0-9a-fA-F]{3}|\\u[dD][89abAB][0-9a-f]{2}\\u[dD][c-fC-F][0-9a-f]{2}){0,8}""#;
    let number = r"-?(0|[1-9][0-9]{0,3})(\.[0-9]{1,3})?([eE][+-]?[0-9]{1,3})?";
    let junk = r#"[-+0-9.eE]{1,4}|nul|NaN|[\x00-\x1f]|"\\[x']"|"\\u[dD][89a-fA-F][0-9a-f]{2}""#;
    let leaf = prop_oneof![10 => string, 10 => number, 5 => "true|false|null", 1 => junk];
    leaf.prop_recursive(5, 64, 6, move |inner| {
        let trailing = || prop::bool::weighted(0.05);
        prop_oneof![
            (prop::collection::vec(pad(inner.clone()), 0..6), trailing())
                .prop_map(|(v, t)| format!("[{}]", list(v, t))),
            (
                prop::collection::vec((pad(string), pad(inner)), 0..6),
                trailing()
            )
                .prop_map(|(v, t)| format!(
                    "{{{}}}",
                    list(v.into_iter().map(|(k, x)| k + ":" + &x).collect(), t)
                )),
        ]
    })
}

/// `s` with a little whitespace around it.
fn pad(s: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    ("[ \t\n\r]{0,2}", s, "[ \t\n\r]{0,2}").prop_map(|(a, x, b)| a + &x + &b)
}

/// Members joined by commas, with a (wrong) trailing one when `trailing` and non-empty.
fn list(members: Vec<String>, trailing: bool) -> String {
    let comma = if trailing && !members.is_empty() {
        ","
    } else {
        ""
    };
    members.join(",") + comma
}

proptest! {
    #[test]
    fn accepts_what_serde_json_accepts(s in any::<String>()) {
        agrees_with_serde_json(&s)?;
    }

    #[test]
    fn accepts_what_serde_json_accepts_in_a_json_alphabet(s in r#"[\[\]{}:,"\\ \n0-9.eE+\-tfrunlsa\x01]{0,24}"#) {
        agrees_with_serde_json(&s)?;
    }

    #[test]
    fn accepts_what_serde_json_accepts_in_mutated_documents(
        doc in jsonish(), at in any::<prop::sample::Index>(), op in 0..6u8, c in r#"[\[\]{}:,"\\ 0-9a-z\x00]"#,
    ) {
        let mut chars: Vec<char> = doc.chars().collect();
        let (i, c) = (at.index(chars.len() + 1), c.chars().next().unwrap_or(' '));
        match op {
            1 if i < chars.len() => drop(chars.remove(i)),
            2 => chars.insert(i, c),
            3 if i < chars.len() => chars[i] = c,
            _ => {}
        }
        agrees_with_serde_json(&chars.into_iter().collect::<String>())?;
    }

    #[test]
    fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64), s in any::<String>()) {
        for text in [String::from_utf8_lossy(&bytes).into_owned(), s] {
            if let Ok(v) = parse(&text) {
                to_string(&v);
            }
        }
    }

    #[test]
    fn scan_finds_the_first_byte_to_escape(
        b in prop::collection::vec(prop_oneof![Just(b'"'), Just(b'\\'), 0x1fu8..0x21, 0x7fu8..0x81, any::<u8>()], 0..40),
        from in 0..40usize,
    ) {
        let from = from.min(b.len());
        let naive = b[from..].iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
        prop_assert_eq!(scan(&b, from), naive.map_or(b.len(), |p| from + p));
    }
}

/// `cargo test --release -- --ignored --nocapture timing`
#[test]
#[ignore]
fn timing_2kb_posthog_batch() {
    let (batch, n) = (posthog_batch(3), 100_000u32);
    let start = std::time::Instant::now();
    for _ in 0..n {
        std::hint::black_box(to_string(&parse(std::hint::black_box(&batch)).unwrap()));
    }
    let untouched = start.elapsed() / n;
    let start = std::time::Instant::now();
    for _ in 0..n {
        let mut v = parse(std::hint::black_box(&batch)).unwrap();
        let Value::Arr(events) = &mut v else { panic!() };
        for e in &mut events.items {
            if let Value::Obj(e) = e
                && let Some(Value::Obj(props)) = e.get_mut("properties")
            {
                props.set(
                    "$current_url".into(),
                    Value::str("https://shop.example.com/reset"),
                );
                e.raw = None;
            }
        }
        v.touch();
        std::hint::black_box(to_string(&v));
    }
    let changed = start.elapsed() / n;
    let len = batch.len();
    eprintln!(
        "{len} bytes, parse+encode: {untouched:?} untouched, {changed:?} with $current_url set in each event"
    );
}
