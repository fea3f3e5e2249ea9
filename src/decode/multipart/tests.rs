use super::*;
use proptest::prelude::*;

const B: &str = "----WebKitFormBoundaryFAKE";
const FIELDS: [(&str, &str); 10] = [
    ("id", "1234567890"),
    ("ev", "PageView"),
    ("dl", "https://shop.example/p?x=1"),
    ("rl", ""),
    ("ts", "1718000000000"),
    ("cd[content_ids]", r#"["SKU-1"]"#),
    ("cd[value]", "20.00"),
    ("fbp", "fb.1.1718000000000.123"),
    ("v", "2.9.160"),
    ("rqm", "SB"),
];

fn part(eol: &str, name: &str, value: &str) -> String {
    format!("--{B}{eol}Content-Disposition: form-data; name=\"{name}\"{eol}{eol}{value}{eol}")
}

/// A Pixel event as Chrome frames `FormData` (`eol` "\r\n"), or with bare LF.
fn pixel(eol: &str) -> String {
    let parts: String = FIELDS.iter().map(|(k, v)| part(eol, k, v)).collect();
    format!("{parts}--{B}--{eol}")
}

fn encoded(obj: &Obj<'_>, layout: &Layout<'_>) -> String {
    let mut out = String::new();
    encode(obj, layout, B, &mut out, &|_| None);
    out
}

#[test]
fn pixel_bodies_round_trip_byte_identical() {
    for eol in ["\r\n", "\n"] {
        let body = pixel(eol);
        let (obj, layout) = decode(&body, B).unwrap();
        let keys: Vec<_> = obj.entries.iter().map(|e| (&*e.key, e.raw_key)).collect();
        assert_eq!(keys, FIELDS.map(|(k, _)| (k, Some(k))));
        let value = |k| obj.get(k).and_then(Value::as_str);
        assert_eq!(
            (value("cd[content_ids]").as_deref(), value("rl").as_deref()),
            (Some(r#"["SKU-1"]"#), Some(""))
        );
        assert_eq!(layout.eol, eol);
        assert_eq!(encoded(&obj, &layout), body);
    }
}

#[test]
fn odd_but_valid_framing_round_trips() {
    let body = format!(
        "preamble\r\n--{B}  \r\ncontent-disposition: form-data; name=a; filename=\"x.txt\"\r\n\
         Content-Type: text/plain\r\n\r\nline 1\r\n--{B}x\r\nx--{B}\r\n--{B}\n\
         Content-Disposition: form-data; name=\"b\"\n\n\r\n--{B}--\r\nepilogue"
    );
    let (obj, layout) = decode(&body, B).unwrap();
    assert_eq!(encoded(&obj, &layout), body);
    let a = format!("line 1\r\n--{B}x\r\nx--{B}");
    // A CR before `\n--boundary` belongs to the delimiter.
    let texts = (
        obj.get("a").and_then(Value::as_str),
        obj.get("b").and_then(Value::as_str),
    );
    assert_eq!(
        (texts.0.as_deref(), texts.1.as_deref()),
        (Some(&*a), Some(""))
    );
    let empty = format!("--{B}--\r\n");
    let (obj, layout) = decode(&empty, B).unwrap();
    assert_eq!(
        (obj.entries.len(), encoded(&obj, &layout)),
        (0, empty.clone())
    );
}

#[test]
fn changed_value_keeps_its_header_block() {
    let body = pixel("\r\n").replace("\"dl\"\r\n", "\"dl\"\r\nContent-Type: text/plain\r\n");
    let (mut obj, layout) = decode(&body, B).unwrap();
    if let Some(Value::Str(s)) = obj.get_mut("dl") {
        s.set("https://shop.example/");
    }
    assert_eq!(encoded(&obj, &layout), body.replace("/p?x=1", "/"));
}

#[test]
fn removed_and_appended_fields() {
    for eol in ["\r\n", "\n"] {
        let body = pixel(eol);
        let (mut obj, layout) = decode(&body, B).unwrap();
        obj.entries.retain(|e| e.key != "fbp");
        let without = body.replace(&part(eol, "fbp", "fb.1.1718000000000.123"), "");
        assert_eq!(encoded(&obj, &layout), without);
        obj.set(Cow::Borrowed("_uip"), Value::str("203.0.113.0"));
        let close = format!("--{B}--");
        let appended = part(eol, "_uip", "203.0.113.0") + &close;
        assert_eq!(encoded(&obj, &layout), without.replace(&close, &appended));
    }
}

#[test]
fn repeated_names_keep_their_own_headers_when_reordered_or_renamed() {
    let typed = "Content-Disposition: form-data; name=\"x\"\r\nContent-Type: a/b";
    let (one, two) = (
        format!("--{B}\r\n{typed}\r\n\r\n1\r\n"),
        part("\r\n", "x", "2"),
    );
    let body = format!("{one}{two}--{B}--");
    let (mut obj, layout) = decode(&body, B).unwrap();
    obj.entries.swap(0, 1);
    assert_eq!(encoded(&obj, &layout), format!("{two}{one}--{B}--"));
    (obj.entries[1].key, obj.entries[1].raw_key) = (Cow::Borrowed("y"), None);
    let renamed = part("\r\n", "y", "1");
    assert_eq!(encoded(&obj, &layout), format!("{two}{renamed}--{B}--"));
}

#[test]
fn quoted_names_are_unescaped_and_escaped() {
    let body = format!("{}--{B}--\r\n", part("\r\n", r#"a\"b\\c"#, "v"));
    let (mut obj, layout) = decode(&body, B).unwrap();
    let e = &obj.entries[0];
    assert_eq!((&*e.key, e.raw_key), (r#"a"b\c"#, Some(r#"a\"b\\c"#)));
    assert_eq!(encoded(&obj, &layout), body);
    obj.set(Cow::Borrowed("q\"x\r\n"), Value::str("1"));
    let out = encoded(&obj, &layout);
    assert!(out.contains(r#"name="q\"x%0D%0A""#), "{out}");
    assert_eq!(decode(&out, B).unwrap().0.entries[1].key, "q\"x%0D%0A");
}

#[test]
fn nested_documents_are_written_by_the_callback() {
    let body = pixel("\r\n");
    let (obj, layout) = decode(&body, B).unwrap();
    let nested = |s: &Str<'_>| (s.text() == r#"["SKU-1"]"#).then(|| r#"["SKU-2"]"#.to_string());
    let mut out = String::new();
    encode(&obj, &layout, B, &mut out, &nested);
    assert_eq!(out, body.replace("SKU-1", "SKU-2"));
}

#[test]
fn malformed_bodies_are_errors() {
    use MultipartError::*;
    let body = pixel("\r\n");
    let nameless = body.replacen("form-data; name=\"ev\"", "attachment; name=\"ev\"", 1);
    let headless = format!("--{B}\r\nContent-Disposition: form-data; name=\"a\"\r\n--{B}--");
    let many = |n| (0..n).map(|_| part("\n", "a", "")).collect::<String>() + "--" + B + "--";
    for (text, boundary, want) in [
        (&body[..body.len() - 4], B, NoClosingDelimiter),
        (&body, "other", NoOpeningDelimiter),
        (&body, "", MissingBoundary),
        (&nameless, B, NoName { part: 2 }),
        (&headless, B, UnterminatedHeaders { part: 1 }),
        (&many(MAX_PARTS + 1), B, TooManyParts(MAX_PARTS)),
    ] {
        assert_eq!(decode(text, boundary).unwrap_err(), want);
    }
    assert_eq!(
        decode(&many(MAX_PARTS), B).unwrap().0.entries.len(),
        MAX_PARTS
    );
    assert_eq!(utf8(b"ok\xff"), Err(NotUtf8 { valid_up_to: 2 }));
    assert_eq!(utf8(body.as_bytes()), Ok(&*body));
}

#[test]
fn boundary_from_content_type() {
    let chrome = format!("multipart/form-data; boundary={B}");
    let quoted = "Multipart/Form-Data;charset=utf-8; Boundary=\"a b:c\"";
    assert_eq!(
        (boundary(&chrome), boundary(quoted)),
        (Some(B), Some("a b:c"))
    );
    for ct in [
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "text/plain; boundary=x",
    ] {
        assert_eq!(boundary(ct), None, "{ct}");
    }
}

/// Bodies shaped like multipart (parts with or without names, padding, mixed line
/// endings, boundary-like values), sometimes cut short.
fn forms() -> impl Strategy<Value = String> {
    let eol = || prop_oneof![Just("\r\n"), Just("\n")];
    let header = prop_oneof![
        Just("Content-Disposition: form-data; name=\"a\""),
        Just(r#"content-disposition:form-data;filename="f;\"";NAME="q\"x""#),
        Just("Content-Disposition: form-data; name=b"),
        Just("Content-Disposition: attachment"),
        Just("Content-Type: text/plain"),
    ];
    let headers = prop::collection::vec((header, eol()), 0..3);
    let value = prop::collection::vec(
        prop_oneof![Just(B.to_string()), "(--|\r|\n|[ -~]){0,4}"],
        0..6,
    );
    let part =
        ((" ?", eol(), headers), (eol(), value, eol())).prop_map(|((pad, e1, hs), (e2, v, e3))| {
            let hs: String = hs.into_iter().map(|(h, e)| h.to_string() + e).collect();
            format!("--{B}{pad}{e1}{hs}{e2}{}{e3}", v.concat())
        });
    let body = (prop::collection::vec(part, 0..5), "[a-z\r\n]{0,3}");
    let body = body.prop_map(|(parts, epilogue)| format!("{}--{B}--{epilogue}", parts.concat()));
    (body, any::<prop::sample::Index>(), any::<bool>()).prop_map(|(s, at, cut)| {
        let i = at.index(s.len() + 1);
        if cut && s.is_char_boundary(i) {
            s[..i].to_string()
        } else {
            s
        }
    })
}

fn fields(obj: &Obj<'_>) -> Vec<(String, Option<String>)> {
    obj.entries
        .iter()
        .map(|e| (e.key.to_string(), e.value.as_str().map(|t| t.into_owned())))
        .collect()
}

proptest! {
    #[test]
    fn decode_never_panics_on_any_text(s in any::<String>()) {
        if let Ok((obj, layout)) = decode(&s, B) {
            prop_assert_eq!(encoded(&obj, &layout), s.as_str());
        }
    }

    #[test]
    fn decoded_forms_round_trip_and_survive_edits(s in forms(), drop in any::<prop::sample::Index>()) {
        let Ok((mut obj, layout)) = decode(&s, B) else { return Ok(()) };
        prop_assert_eq!(encoded(&obj, &layout), s.as_str());
        if !obj.entries.is_empty() {
            obj.entries.remove(drop.index(obj.entries.len()));
        }
        obj.entries.push(Entry::new(Cow::Borrowed("n\"ew"), Value::str("v")));
        let out = encoded(&obj, &layout);
        let again = decode(&out, B).unwrap().0;
        prop_assert_eq!(fields(&again), fields(&obj));
    }
}
