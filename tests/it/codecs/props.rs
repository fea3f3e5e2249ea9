//! Property tests for the decode/encode path: no codec panics on arbitrary input, and
//! generated forms, GA4 batches, JSON and multipart bodies round-trip byte-identical.

use super::*;

// ---------------------------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------------------------

const CODECS: [Codec; 6] = [
    Codec::Auto,
    Codec::Form,
    Codec::Json,
    Codec::Multipart,
    Codec::Ga4,
    Codec::Opaque,
];

/// Bits of the formats the codecs parse, so that random bodies reach past the first byte:
/// multipart delimiters for the boundaries `B` and `XYZ`, part headers, JSON punctuation and
/// escapes, percent escapes, the base64 of the gzip magic.
const FRAGMENTS: &[&str] = &[
    "--",
    "--B",
    "--XYZ",
    "--B--",
    "\r\n",
    "\n",
    "\r",
    " ",
    "\t",
    "Content-Disposition: form-data; name=\"",
    "content-disposition:form-data;name=x",
    "; filename=\"f\"",
    "\"",
    "\\",
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "\"k\":",
    "\\u00e9",
    "\\ud83d\\ude00",
    "\\ud800",
    "\\u",
    "-0.5e+3",
    "1",
    "true",
    "null",
    "=",
    "&",
    "&&",
    "%",
    "%2",
    "%E9",
    "%C3%A9",
    "%FF",
    "+",
    "é",
    "\u{1F600}",
    "\u{feff}",
    "H4sI",
    "eyJ",
    "data=",
];

/// Text made of [`FRAGMENTS`] and random characters.
fn soup() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            3 => prop::sample::select(FRAGMENTS).prop_map(str::to_string),
            1 => "\\PC{0,6}",
            1 => any::<char>().prop_map(String::from),
        ],
        0..40,
    )
    .prop_map(|v| v.concat())
}

/// A body: arbitrary bytes, or fragment soup.
fn any_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        soup().prop_map(String::into_bytes),
    ]
}

/// Content types: none, the ones the codecs look for (multipart with boundaries that
/// [`FRAGMENTS`] use, quoted or not, and random ones), and arbitrary text.
fn content_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        prop::sample::select(vec![
            "application/x-www-form-urlencoded",
            "application/x-www-form-urlencoded; charset=UTF-8",
            "application/json",
            "application/vnd.api+json",
            "text/plain",
            "text/plain;charset=UTF-8",
            "multipart/form-data",
            "multipart/form-data; boundary=B",
            "multipart/form-data; boundary=XYZ",
            "Multipart/Form-Data; charset=x; boundary=\"XYZ\"",
            "multipart/form-data; boundary=\"\"",
            "multipart/form-data; boundary=\"a\\\"b\"",
            "application/octet-stream",
        ])
        .prop_map(|s| Some(s.to_string())),
        "multipart/form-data; ?boundary=\"?[-A-Za-z0-9'()+_,./:=? ]{0,20}\"?".prop_map(Some),
        any::<String>().prop_map(Some),
    ]
}

/// Decodes with everything the gateway could do to a document: nested decoding of every
/// string, forced re-encoding, rebuilt containers. Only panics matter here.
fn exercise(codec: Codec, ctype: Option<&str>, cenc: Option<&str>, query: &str, body: &[u8]) {
    let Ok(input) = Input::unwrap(body, cenc) else {
        return;
    };
    let Ok(mut doc) = decode::decode(query, &input, ctype, codec) else {
        return;
    };
    let _ = encode(&doc);
    for p in &mut doc.parts {
        each_string(&mut p.root, &mut |s| {
            let _ = decode::decode_nested("field", s);
        });
        p.changed = true;
    }
    let _ = encode(&doc);
    doc.parts.iter_mut().for_each(|p| forget_raw(&mut p.root));
    let _ = encode(&doc);
}

/// Calls `f` on every string leaf of `v`.
fn each_string<'a>(v: &mut Value<'a>, f: &mut dyn FnMut(&mut Str<'a>)) {
    match v {
        Value::Str(s) => f(s),
        Value::Obj(o) => o
            .entries
            .iter_mut()
            .for_each(|e| each_string(&mut e.value, f)),
        Value::Arr(a) => a.items.iter_mut().for_each(|i| each_string(i, f)),
        Value::Lit(_) => {}
    }
}

/// Content-Encoding values: the supported ones in several spellings, unsupported ones,
/// arbitrary text.
fn content_encoding() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        prop::sample::select(vec![
            "gzip", "x-gzip", " GZIP ", "deflate", "br", "identity", "", "gzip, br", "zstd",
            "compress",
        ])
        .prop_map(|s| Some(s.to_string())),
        "\\PC{0,12}".prop_map(Some),
    ]
}

/// How a compressed body is damaged before it is sent.
#[derive(Debug, Clone)]
enum Damage {
    None,
    Truncate(usize),
    Flip(usize, u8),
    Append(Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        2 => Just(Damage::None),
        1 => any::<usize>().prop_map(Damage::Truncate),
        1 => (any::<usize>(), 1..=255u8).prop_map(|(i, x)| Damage::Flip(i, x)),
        1 => prop::collection::vec(any::<u8>(), 1..8).prop_map(Damage::Append),
    ]
}

fn apply(mut b: Vec<u8>, d: &Damage) -> Vec<u8> {
    match d {
        Damage::None => {}
        Damage::Truncate(n) => b.truncate(n % (b.len() + 1)),
        Damage::Flip(i, x) if !b.is_empty() => {
            let i = i % b.len();
            b[i] ^= x;
        }
        Damage::Flip(..) => {}
        Damage::Append(junk) => b.extend(junk),
    }
    b
}

const COMPRESSIONS: [Compression; 3] =
    [Compression::Gzip, Compression::Deflate, Compression::Brotli];

/// Form/query text from a grammar: pairs of keys and values made of plain characters,
/// `%XX` escapes (valid, invalid, truncated, of bytes that are not UTF-8), `+`, brackets and
/// non-ASCII; bare keys; empty pairs (`&&`); leading and trailing `&`.
fn form_text() -> impl Strategy<Value = String> {
    let piece = || {
        prop_oneof![
            4 => "[a-zA-Z0-9._~-]{1,4}",
            2 => "%[0-9A-Fa-f]{2}",
            1 => prop::sample::select(vec!["%", "%4", "%ZZ", "%g0", "%%41", "%C3%A9", "%FF"])
                .prop_map(str::to_string),
            1 => Just("+".to_string()),
            1 => prop::sample::select(vec!["[", "]", "é", "日本", "\u{1F600}", "/", "?", ":", "@", "!", "'", "(", ")", "*", ",", ";", "$"])
                .prop_map(str::to_string),
        ]
    };
    let key = prop::collection::vec(piece(), 0..4).prop_map(|v| v.concat());
    // Values may hold `=` too (`a=b=c` is key `a`, value `b=c`).
    let value = prop::collection::vec(prop_oneof![5 => piece(), 1 => Just("=".to_string())], 0..6)
        .prop_map(|v| v.concat());
    let pair = prop_oneof![
        4 => (key.clone(), value).prop_map(|(k, v)| format!("{k}={v}")),
        1 => key,
        1 => Just(String::new()),
    ];
    (
        prop::collection::vec(pair, 0..10),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(pairs, lead, trail)| {
            format!(
                "{}{}{}",
                if lead { "&" } else { "" },
                pairs.join("&"),
                if trail { "&" } else { "" }
            )
        })
}

/// A JSON document as text, with random (inner) whitespace, escapes of every kind and
/// numbers in every form. Used for round trips through the JSON codec.
fn json_text() -> impl Strategy<Value = String> {
    let ws = || prop::sample::select(vec!["", "", "", " ", "\n  ", "\t", "\r\n"]);
    let string = prop::collection::vec(
        prop_oneof![
            "[a-zA-Z0-9 $@.%/:?&=_-]{1,6}",
            prop::sample::select(vec![
                "\\\"",
                "\\\\",
                "\\/",
                "\\b",
                "\\f",
                "\\n",
                "\\r",
                "\\t",
                "\\u00e9",
                "\\u0000",
                "\\ud83d\\ude00",
                "é",
                "日本",
                "\u{1F600}",
            ])
            .prop_map(str::to_string),
        ],
        0..5,
    )
    .prop_map(|v| format!("\"{}\"", v.concat()));
    let leaf = prop_oneof![
        string.clone(),
        "-?(0|[1-9][0-9]{0,5})(\\.[0-9]{1,3})?([eE][+-]?[0-9]{1,2})?",
        prop::sample::select(vec!["true", "false", "null"]).prop_map(str::to_string),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        let item = (ws(), inner, ws()).prop_map(|(a, v, b)| format!("{a}{v}{b}"));
        prop_oneof![
            (prop::collection::vec(item.clone(), 0..6), ws()).prop_map(|(items, w)| {
                if items.is_empty() {
                    format!("[{w}]")
                } else {
                    format!("[{}]", items.join(","))
                }
            }),
            (
                prop::collection::vec((ws(), string.clone(), ws(), item), 0..6),
                ws()
            )
                .prop_map(|(entries, w)| {
                    let e: Vec<String> = entries
                        .into_iter()
                        .map(|(a, k, b, v)| format!("{a}{k}{b}:{v}"))
                        .collect();
                    if e.is_empty() {
                        format!("{{{w}}}")
                    } else {
                        format!("{{{}}}", e.join(","))
                    }
                }),
        ]
    })
}

/// A multipart/form-data body as browsers and hand-written senders frame it: CRLF or LF,
/// optional preamble and epilogue, quoted or bare names (with escapes), extra part headers,
/// empty and multi-line values. Values hold no `-`, so none can contain a delimiter.
fn multipart_body() -> impl Strategy<Value = (String, String)> {
    let name = prop_oneof![
        "[a-z_]{1,6}(\\[[a-z_]{1,6}\\])?".prop_map(|n| format!("\"{n}\"")),
        Just("\"a\\\"b\"".to_string()),
        "[a-z]{1,6}",
    ];
    let value = "[a-zA-Z0-9 =&%+\"{}:,\\[\\]é\r\n]{0,24}";
    let head = prop::sample::select(vec![
        "",
        "Content-Type: text/plain",
        "content-type: application/json; charset=utf-8",
    ]);
    (
        "[A-Za-z0-9'()+_,./:=?]{1,20}",
        prop::sample::select(vec!["\r\n", "\n"]),
        prop::collection::vec((name, head, value), 0..8),
        prop::sample::select(vec!["", "preamble text\r\n", "\n"]),
        prop::sample::select(vec!["", "\r\n", "\n", "epilogue\r\n"]),
        prop::sample::select(vec!["", " ", "\t "]),
    )
        .prop_map(|(boundary, eol, parts, pre, epi, pad)| {
            let mut body = pre.to_string();
            for (name, head, value) in parts {
                body += &format!(
                    "--{boundary}{pad}{eol}Content-Disposition: form-data; name={name}{eol}"
                );
                if !head.is_empty() {
                    body += &format!("{head}{eol}");
                }
                body += &format!("{eol}{value}{eol}");
            }
            body += &format!("--{boundary}--{epi}");
            (
                format!("multipart/form-data; boundary=\"{boundary}\""),
                body,
            )
        })
}

/// Decodes and forces a re-encode, which must give back the query and (plain) body exactly;
/// with containers rebuilt, JSON bodies come back minified.
fn assert_round_trip(
    codec: Codec,
    ctype: Option<&str>,
    query: &str,
    body: &[u8],
) -> Result<(), TestCaseError> {
    let req = Request {
        what: "generated".into(),
        query: query.to_string(),
        content_type: ctype.map(str::to_string),
        content_encoding: None,
        body: body.to_vec(),
    };
    round_trip(&req, codec, &[]).map_err(|e| TestCaseError::fail(format!("{codec:?}: {e}")))?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary bytes and fragment soup, with every codec and any Content-Type, never panic
    /// through unwrap, decode, nested decoding and forced encoding.
    #[test]
    fn no_codec_panics_on_arbitrary_input(
        codec in prop::sample::select(CODECS.to_vec()),
        ctype in content_type(),
        query in prop_oneof![any::<String>(), soup()],
        body in any_body(),
    ) {
        exercise(codec, ctype.as_deref(), None, &query, &body);
    }

    /// Any Content-Encoding on any body (arbitrary bytes; valid, truncated, corrupted or
    /// padded streams of each compression; bare gzip and base64-of-gzip look-alikes) never
    /// panics; a valid stream under its own token always unwraps to its data.
    #[test]
    fn no_content_encoding_panics(
        cenc in content_encoding(),
        codec in prop::sample::select(CODECS.to_vec()),
        ctype in content_type(),
        data in soup(),
        c in prop::sample::select(COMPRESSIONS.to_vec()),
        how in 0..4usize,
        hurt in damage(),
        raw in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let packed = wrap::compress(c, data.as_bytes());
        let body = match how {
            0 => raw,
            1 => apply(packed.clone(), &hurt),
            2 => [&[0x1f, 0x8b, 0x08][..], &raw].concat(),
            _ => {
                let gz = apply(wrap::compress(Compression::Gzip, data.as_bytes()), &hurt);
                base64::engine::general_purpose::STANDARD.encode(gz).into_bytes()
            }
        };
        exercise(codec, ctype.as_deref(), cenc.as_deref(), "", &body);
        let input = Input::unwrap(&packed, Some(c.token())).unwrap();
        prop_assert_eq!(input.wrap, Some(BodyWrap::Encoding(c)));
        prop_assert_eq!(&input.body[..], data.as_bytes());
        exercise(codec, ctype.as_deref(), Some(c.token()), "", &packed);
    }

    /// Query strings from the form grammar come back byte-identical (every codec decodes the
    /// URL query the same way; with no body only the query part exists).
    #[test]
    fn query_text_round_trips(q in form_text(), codec in prop::sample::select(CODECS.to_vec())) {
        assert_round_trip(codec, None, &q, b"")?;
    }

    /// Form bodies from the grammar come back byte-identical, with the `form` codec and with
    /// `auto` by Content-Type; the query next to them too.
    #[test]
    fn form_body_round_trips(q in form_text(), body in form_text(), auto in any::<bool>()) {
        let (codec, ctype) = if auto {
            (Codec::Auto, "application/x-www-form-urlencoded; charset=UTF-8")
        } else {
            (Codec::Form, "text/plain")
        };
        assert_round_trip(codec, Some(ctype), &q, body.as_bytes())?;
    }

    /// GA4 batches (lines of form text, CRLF or LF, with or without a final separator) come
    /// back byte-identical.
    #[test]
    fn ga4_batch_round_trips(
        q in form_text(),
        lines in prop::collection::vec(form_text(), 1..5),
        crlf in any::<bool>(),
        trailing in any::<bool>(),
    ) {
        let sep = if crlf { "\r\n" } else { "\n" };
        let body = format!("{}{}", lines.join(sep), if trailing { sep } else { "" });
        assert_round_trip(Codec::Ga4, Some("text/plain;charset=UTF-8"), &q, body.as_bytes())?;
    }

    /// JSON documents come back byte-identical, and minified inside when rebuilt from their
    /// leaves; whitespace around the top-level value (a body's final `\n`) is kept.
    #[test]
    fn json_body_round_trips(
        doc in json_text(),
        auto in any::<bool>(),
        lead in "[ \t\r\n]{0,2}",
        trail in "[ \t\r\n]{0,2}",
    ) {
        let (codec, ctype) = if auto { (Codec::Auto, "application/json") } else { (Codec::Json, "text/plain") };
        let body = format!("{lead}{doc}{trail}");
        assert_round_trip(codec, Some(ctype), "", body.as_bytes())?;
    }

    /// Multipart bodies come back byte-identical.
    #[test]
    fn multipart_body_round_trips((ctype, body) in multipart_body(), auto in any::<bool>()) {
        let codec = if auto { Codec::Auto } else { Codec::Multipart };
        assert_round_trip(codec, Some(&ctype), "", body.as_bytes())?;
    }
}
