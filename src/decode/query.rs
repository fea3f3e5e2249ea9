//! Flat `key=value&…` codecs: URL query strings and `application/x-www-form-urlencoded`
//! bodies. Decoding keeps each pair's exact text; encoding writes untouched pairs back as they
//! were (duplicate keys, keys without `=`, `+` or `%20` for spaces, in their original order)
//! and encodes only what a rule changed or added.

use std::borrow::Cow;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

use super::value::{Entry, Obj, Str, Value};

/// Bytes left as they are when encoding a changed value: RFC 3986 unreserved characters.
const VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// How spaces were written in the original (and are written in changed values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Spaces {
    /// `%20` (what GA4 and most tags use in query strings).
    #[default]
    Percent,
    /// `+` (HTML forms).
    Plus,
}

/// Decodes `a=1&b=2` into an object. `+` is read as a space, as browsers' URLSearchParams do.
/// Never fails: malformed escapes are kept as text.
pub fn decode(s: &str) -> (Obj<'_>, Spaces) {
    let mut entries = Vec::with_capacity(s.len() / 16 + 1);
    let mut plus = false;
    for pair in s.split('&') {
        if pair.is_empty() {
            // `a=1&&b=2`: keep the empty pair so the text round-trips.
            entries.push(Entry {
                key: Cow::Borrowed(""),
                raw_key: Some(""),
                value: Value::Str(Str::decoded(Cow::Borrowed(""), "")),
                bare: true,
            });
            continue;
        }
        let (k, v, bare) = match pair.split_once('=') {
            Some((k, v)) => (k, v, false),
            None => (pair, "", true),
        };
        plus |= v.contains('+');
        entries.push(Entry {
            key: unescape(k),
            raw_key: Some(k),
            value: Value::Str(Str::decoded(unescape(v), v)),
            bare,
        });
    }
    (
        Obj { entries, raw: None },
        if plus { Spaces::Plus } else { Spaces::Percent },
    )
}

/// Percent-decodes one component (`+` as space); borrows when there is nothing to decode.
/// Invalid escapes stay as written; bytes that are not UTF-8 after decoding become U+FFFD.
pub fn unescape(s: &str) -> Cow<'_, str> {
    let b = s.as_bytes();
    let Some(first) = memchr::memchr2(b'%', b'+', b) else {
        return Cow::Borrowed(s);
    };
    let mut out = Vec::with_capacity(b.len());
    out.extend_from_slice(&b[..first]);
    let mut i = first;
    while i < b.len() {
        match b[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    match String::from_utf8(out) {
        Ok(t) => Cow::Owned(t),
        Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Appends `text` percent-encoded.
pub fn escape_into(out: &mut String, text: &str, spaces: Spaces) {
    match spaces {
        Spaces::Percent => out.extend(percent_encoding::utf8_percent_encode(text, VALUE)),
        Spaces::Plus => {
            for (i, piece) in text.split(' ').enumerate() {
                if i > 0 {
                    out.push('+');
                }
                out.extend(percent_encoding::utf8_percent_encode(piece, VALUE));
            }
        }
    }
}

/// Encodes an object as `key=value&…`; `nested` encodes string fields that carry a document.
pub fn encode(
    obj: &Obj<'_>,
    spaces: Spaces,
    out: &mut String,
    nested: &dyn Fn(&Str<'_>) -> Option<String>,
) {
    let mut first = true;
    for e in &obj.entries {
        if !first {
            out.push('&');
        }
        first = false;
        match e.raw_key {
            Some(k) => out.push_str(k),
            None => escape_into(out, &e.key, spaces),
        }
        if e.bare && !e.value.is_changed() {
            continue;
        }
        out.push('=');
        match &e.value {
            Value::Str(s) => match (s.raw, nested(s)) {
                (_, Some(n)) => escape_into(out, &n, spaces),
                (Some(raw), None) => out.push_str(raw),
                (None, None) => escape_into(out, &s.text, spaces),
            },
            Value::Lit(l) => escape_into(out, l, spaces),
            // A structured value in a flat format: written as JSON text.
            other => escape_into(out, &super::json::to_string(other), spaces),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(s: &str) -> String {
        let (obj, spaces) = decode(s);
        let mut out = String::new();
        encode(&obj, spaces, &mut out, &|_| None);
        out
    }

    #[test]
    fn untouched_query_strings_are_byte_identical() {
        for q in [
            "v=2&tid=G-1&dl=https%3A%2F%2Fshop.example%2F&dt=Shop%20Home",
            "a=1&a=2&flag&b=",
            "q=hello+world&x=%2B1",
            "a=1&&b=2&",
            "cd[value]=20.00&ud[em]=abc",
            "bad=%ZZ&ok=1",
            "",
        ] {
            assert_eq!(roundtrip(q), q);
        }
    }

    #[test]
    fn unescaping() {
        assert_eq!(unescape("a%20b+c"), "a b c");
        assert_eq!(unescape("plain"), "plain");
        assert!(matches!(unescape("plain"), Cow::Borrowed(_)));
        assert_eq!(unescape("100%"), "100%");
        assert_eq!(unescape("%ZZ%4"), "%ZZ%4");
        assert_eq!(unescape("%C3%A9"), "é");
        assert_eq!(unescape("%FF"), "\u{FFFD}");
        assert_eq!(unescape("x%41"), "xA");
    }

    #[test]
    fn decoding_and_changed_values() {
        let (mut obj, spaces) =
            decode("dl=https%3A%2F%2Fs.example%2F%3Fa%3D1&en=page_view&q=a+b&k");
        assert_eq!(
            obj.get("dl").unwrap().as_str(),
            Some("https://s.example/?a=1")
        );
        assert_eq!(obj.get("q").unwrap().as_str(), Some("a b"));
        assert!(obj.entries[3].bare);
        assert_eq!(spaces, Spaces::Plus);
        if let Some(Value::Str(s)) = obj.get_mut("dl") {
            s.set("https://s.example/ x");
        }
        let mut out = String::new();
        encode(&obj, Spaces::Percent, &mut out, &|_| None);
        assert_eq!(
            out,
            "dl=https%3A%2F%2Fs.example%2F%20x&en=page_view&q=a+b&k"
        );
        obj.set(Cow::Borrowed("_uip"), Value::str("203.0.113.0"));
        let mut out = String::new();
        encode(&obj, Spaces::Percent, &mut out, &|_| None);
        assert!(out.ends_with("&k&_uip=203.0.113.0"), "{out}");
    }
}
