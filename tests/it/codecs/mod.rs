//! Every codec against the vendor fixtures, and property tests for the decode/encode path.
//!
//! The fixtures in `tests/fixtures/vendors/` are verbatim copies of the shared reference set
//! (synthetic requests, fake ids). For each one the test builds the request (query, headers,
//! body bytes), decodes it with the codec a realistic route for that vendor would declare
//! (and again with `auto`), and checks that:
//!
//! 1. the untouched document encodes to "send the original" (`Encoded { None, None }`);
//! 2. with every part marked changed (no value touched) the encoder really writes the query
//!    and body afresh, and they equal the originals byte for byte (compressed bodies are
//!    compared decompressed, since re-compression may pick other header bytes);
//! 3. with the nested documents the route would declare (PostHog/Mixpanel `data`, Snowplow
//!    `cx`/`ue_px`/`co`, …) decoded and written back from their trees, and every JSON container
//!    rebuilt from its children, the result is still byte-identical (for JSON bodies: equal
//!    to the original with the whitespace between tokens removed, which is all a rebuilt
//!    container drops).
//!
//! Nothing here touches the network, or `../shared` at run time.

mod fixture;
mod props;

use fixture::*;

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine as _;
use proptest::prelude::*;
use tagway::decode::wrap::{self, Compression};
use tagway::decode::{self, BodyWrap, Codec, Doc, Frame, Input, Str, Value, json};
use tagway::encode::{Encoded, encode};

/// Where the vendor fixtures live (in the repository, so CI needs nothing else).
pub(super) const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/vendors");

// ---------------------------------------------------------------------------------------------
// Routes: which codec and which nested fields a realistic route for each fixture declares
// ---------------------------------------------------------------------------------------------

/// Snowplow's JSON-in-a-field parameters: `co`/`ue_pr` plain JSON, `cx`/`ue_px` base64url.
const SNOWPLOW: &[&str] = &["co", "cx", "ue_pr", "ue_px"];

/// Fixture → (codec, nested fields), as a route for that endpoint would declare them: the
/// shipped `ga4-collect` route uses `ga4` and `ga4-gtag-js` `opaque`; scripts are opaque;
/// JSON APIs use `json` even where the tag sends `text/plain` (Segment, Plausible, TikTok,
/// PostHog's gzip, LinkedIn's base64 of gzip); urlencoded POST endpoints `form`; Meta's
/// sendBeacon `multipart`; GET pixels (no body) `auto`. Every fixture must be listed here,
/// so a new one cannot go untested by accident.
const ROUTES: &[(&str, Codec, &[&str])] = &[
    ("amplitude-httpapi-1", Codec::Json, &[]),
    ("bing-uet-1", Codec::Auto, &[]),
    ("fathom-pageview-1", Codec::Auto, &["qs"]),
    ("ga4-collect-1", Codec::Ga4, &[]),
    ("ga4-collect-2", Codec::Ga4, &[]),
    ("ga4-collect-3", Codec::Ga4, &[]),
    ("ga4-collect-4", Codec::Ga4, &[]),
    ("ga4-gtag-js-1", Codec::Opaque, &[]),
    ("ga4-mp-collect-1", Codec::Json, &[]),
    ("linkedin-collect-1", Codec::Auto, &[]),
    ("linkedin-wa-1", Codec::Json, &[]),
    ("matomo-bulk-1", Codec::Json, &[]),
    ("matomo-php-1", Codec::Auto, &["cvar"]),
    ("matomo-php-2", Codec::Form, &[]),
    ("meta-capi-1", Codec::Json, &[]),
    ("meta-fbevents-1", Codec::Opaque, &[]),
    ("meta-tr-1", Codec::Auto, &[]),
    ("meta-tr-2", Codec::Auto, &["cd[content_ids]"]),
    ("meta-tr-3", Codec::Multipart, &["cd[content_ids]"]),
    ("mixpanel-track-1", Codec::Form, &["data"]),
    ("plausible-event-1", Codec::Json, &[]),
    ("posthog-capture-api-1", Codec::Json, &[]),
    ("posthog-e-1", Codec::Json, &[]),
    ("posthog-flags-1", Codec::Form, &["data"]),
    ("segment-batch-1", Codec::Json, &[]),
    ("segment-track-1", Codec::Json, &[]),
    ("snowplow-i-1", Codec::Auto, SNOWPLOW),
    ("snowplow-tp2-1", Codec::Json, SNOWPLOW),
    ("tiktok-events-api-1", Codec::Json, &[]),
    ("tiktok-pixel-1", Codec::Json, &[]),
    ("tiktok-pixel-2", Codec::Json, &[]),
    ("umami-send-1", Codec::Json, &[]),
];

fn route(name: &str) -> (Codec, &'static [&'static str]) {
    let (_, codec, nested) = ROUTES
        .iter()
        .find(|(n, ..)| *n == name)
        .unwrap_or_else(|| panic!("{name}: fixture without an entry in ROUTES"));
    (*codec, nested)
}

// ---------------------------------------------------------------------------------------------
// The round trip
// ---------------------------------------------------------------------------------------------

/// What one round trip saw, for the summary.
#[derive(Debug, Default)]
struct Seen {
    /// The codec the body was actually parsed with (`auto` resolved by the frame).
    frame: &'static str,
    /// Nested documents decoded and written back.
    nested: usize,
}

/// Where `a` and `b` first differ, with some context, for failure messages.
fn diff(a: &[u8], b: &[u8]) -> String {
    let at = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let near = |s: &[u8]| {
        String::from_utf8_lossy(&s[at.saturating_sub(30)..(at + 30).min(s.len())]).into_owned()
    };
    format!(
        "lengths {} vs {}, first difference at byte {at}: {:?} vs {:?}",
        a.len(),
        b.len(),
        near(a),
        near(b)
    )
}

/// `Err` describing the difference unless `got == want`.
fn same(what: &str, got: &[u8], want: &[u8]) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what} differs: {}", diff(got, want)))
    }
}

/// Takes off the wrapping `encode` put around a body (`w` is the document's wrap), with the
/// library's own `wrap` helpers, checking it is the same kind of wrapping it came in.
fn unwrap_as(w: Option<BodyWrap>, body: &[u8]) -> Result<Vec<u8>, String> {
    let gunzip = |gz: &[u8]| {
        wrap::decompress(Compression::Gzip, gz, decode::MAX_INFLATED).map_err(|e| e.to_string())
    };
    match w {
        None => Ok(body.to_vec()),
        Some(BodyWrap::Encoding(c)) => {
            wrap::decompress(c, body, decode::MAX_INFLATED).map_err(|e| e.to_string())
        }
        Some(BodyWrap::BareGzip) if wrap::is_gzip(body) => gunzip(body),
        Some(BodyWrap::Base64Gzip) if wrap::is_base64_gzip(body) => {
            let text = std::str::from_utf8(body).map_err(|e| e.to_string())?;
            let (gz, _) = wrap::base64_decode(text).ok_or("re-encoded body is not base64")?;
            gunzip(&gz)
        }
        Some(w) => Err(format!("re-encoded body is not wrapped as {w:?}")),
    }
}

/// Checks an encoded body against the expected plain body. A document with no body part
/// (no body, or an opaque one) must leave the body alone.
fn check_body(doc: &Doc<'_>, out: Option<Vec<u8>>, want: &[u8]) -> Result<(), String> {
    let has_body = doc.parts.len() > 1;
    match out {
        None if !has_body => Ok(()),
        None => Err("body parts marked changed but no body was encoded".into()),
        Some(b) if !has_body => Err(format!("body re-encoded without body parts: {b:?}")),
        Some(b) => same("body", &unwrap_as(doc.wrap, &b)?, want),
    }
}

/// Calls `f` on every string under one of `names`: top-level fields of a flat part, fields
/// at any depth of a JSON part (Snowplow's `data[].ue_px`).
fn each_named<'a>(
    v: &mut Value<'a>,
    deep: bool,
    names: &[&str],
    f: &mut dyn FnMut(&str, &mut Str<'a>),
) {
    match v {
        Value::Obj(o) => {
            for e in &mut o.entries {
                if let (true, Value::Str(s)) = (names.contains(&&*e.key), &mut e.value) {
                    f(&e.key, s);
                }
                if deep {
                    each_named(&mut e.value, deep, names, f);
                }
            }
        }
        Value::Arr(a) if deep => a
            .items
            .iter_mut()
            .for_each(|i| each_named(i, deep, names, f)),
        _ => {}
    }
}

/// Decodes the nested documents under `names` the way `Program::prepare` does, and checks
/// each one writes back to exactly the text it came from (JSON re-serialized from the tree,
/// base64 in the same alphabet and padding). Returns how many there were.
fn decode_nested(doc: &mut Doc<'_>, names: &[&str]) -> Result<usize, String> {
    let (mut n, mut err) = (0, None);
    for p in &mut doc.parts {
        each_named(&mut p.root, !p.flat, names, &mut |key, s| {
            if let Err(e) = decode::decode_nested(key, s) {
                err.get_or_insert(format!("decode_nested({key}): {e}"));
                return;
            }
            if s.nested().is_none() {
                return; // an empty string stays plain
            }
            n += 1;
            let mut fresh = s.clone();
            fresh.touch();
            let text = decode::nested_text(&fresh).unwrap_or_default();
            if let Err(e) = same(
                &format!("nested {key} written back"),
                text.as_bytes(),
                s.text().as_bytes(),
            ) {
                err.get_or_insert(e);
            }
        });
    }
    err.map_or(Ok(n), Err)
}

/// Forgets the original text of every container and of every string carrying a nested
/// document, so that `encode` rebuilds JSON containers from their children and writes nested
/// documents from their trees. Leaves and keys keep their text.
fn forget_raw(v: &mut Value<'_>) {
    match v {
        Value::Str(s) if s.nested().is_some() => s.touch(),
        Value::Obj(o) => {
            o.raw = None;
            o.entries.iter_mut().for_each(|e| forget_raw(&mut e.value));
        }
        Value::Arr(a) => {
            a.raw = None;
            a.items.iter_mut().for_each(forget_raw);
        }
        _ => {}
    }
}

/// JSON text without the whitespace between tokens: what a JSON document rebuilt from its
/// untouched leaves looks like.
fn minify(json: &[u8]) -> Vec<u8> {
    let (mut out, mut in_str, mut esc) = (Vec::with_capacity(json.len()), false, false);
    for &c in json {
        if in_str {
            // Inside a string literal: track `\` escapes to find the closing quote.
            if esc {
                esc = false;
            } else if c == b'\\' {
                esc = true;
            } else if c == b'"' {
                in_str = false;
            }
        } else if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
            continue;
        } else if c == b'"' {
            in_str = true;
        }
        out.push(c);
    }
    out
}

fn frame_name(f: &Frame<'_>) -> &'static str {
    match f {
        Frame::Empty => "no body",
        Frame::Opaque => "opaque",
        Frame::Form(_) => "form",
        Frame::Json { .. } => "json",
        Frame::Multipart { .. } => "multipart",
        Frame::Lines { .. } => "ga4 lines",
    }
}

/// Decodes `req` with `codec` and runs the three checks of the module comment.
fn round_trip(req: &Request, codec: Codec, nested: &[&str]) -> Result<Seen, String> {
    // As the proxy does (`transform::process`): an opaque route's body is not even unwrapped.
    let input = if codec == Codec::Opaque {
        Input {
            body: Cow::Borrowed(&req.body),
            wrap: None,
        }
    } else {
        Input::unwrap(&req.body, req.content_encoding.as_deref())
            .map_err(|e| format!("unwrap: {e}"))?
    };
    let mut doc = decode::decode(&req.query, &input, req.content_type.as_deref(), codec)
        .map_err(|e| format!("decode: {e}"))?;
    let frame = frame_name(&doc.frame);
    let plain: &[u8] = &input.body;

    // 1. Nothing changed: send the original.
    let untouched = encode(&doc);
    if untouched != Encoded::default() {
        return Err(format!("untouched document re-encoded: {untouched:?}"));
    }

    // 2. Every part marked changed, no value touched: written afresh, byte-identical.
    let n = decode_nested(&mut doc, nested)?;
    if !nested.is_empty() && n == 0 {
        return Err(format!("none of the nested fields {nested:?} found"));
    }
    doc.parts.iter_mut().for_each(|p| p.changed = true);
    let out = encode(&doc);
    let query = out
        .query
        .ok_or("query part marked changed but not encoded")?;
    same("forced query", query.as_bytes(), req.query.as_bytes())?;
    check_body(&doc, out.body, plain).map_err(|e| format!("forced {e}"))?;
    // The re-wrapped body is what the gateway would forward: a second pass must see it
    // wrapped the same way, and unwrap it to the same plain body.
    if let Some(b) = encode(&doc).body {
        let again = Input::unwrap(&b, req.content_encoding.as_deref())
            .map_err(|e| format!("re-encoded body does not unwrap: {e}"))?;
        if again.wrap != doc.wrap {
            return Err(format!(
                "re-encoded body wrap {:?} != {:?}",
                again.wrap, doc.wrap
            ));
        }
        same("re-unwrapped body", &again.body, plain)?;
    }

    // 3. Nested documents and JSON containers rebuilt from their trees.
    doc.parts.iter_mut().for_each(|p| forget_raw(&mut p.root));
    let out = encode(&doc);
    let query = out
        .query
        .ok_or("query part marked changed but not encoded")?;
    same("rebuilt query", query.as_bytes(), req.query.as_bytes())?;
    let want = match doc.frame {
        // Rebuilt JSON is minified inside; the whitespace around the value stays as received.
        Frame::Json { lead, trail } => [lead.as_bytes(), &minify(plain), trail.as_bytes()].concat(),
        _ => plain.to_vec(),
    };
    check_body(&doc, out.body, &want).map_err(|e| format!("rebuilt {e}"))?;
    Ok(Seen { frame, nested: n })
}

/// Runs every fixture request through `round_trip` with `codec_for` its codec; fails naming
/// every fixture that does not round-trip; returns the requests per frame and how many
/// nested documents were checked.
fn all_fixtures(codec_for: &dyn Fn(&str) -> Codec) -> (BTreeMap<String, usize>, usize) {
    let (mut failures, mut per_codec, mut nested) = (Vec::new(), BTreeMap::new(), 0);
    for f in fixtures() {
        let (_, fields) = route(&f.name);
        let codec = codec_for(&f.name);
        for req in f.requests() {
            match round_trip(&req, codec, fields) {
                Ok(seen) => {
                    *per_codec
                        .entry(format!("{codec:?} → {}", seen.frame))
                        .or_default() += 1;
                    nested += seen.nested;
                }
                Err(e) => failures.push(format!("{} (codec {codec:?}): {e}", req.what)),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} fixture request(s) do not round-trip:\n{}",
        failures.len(),
        failures.join("\n")
    );
    (per_codec, nested)
}

// ---------------------------------------------------------------------------------------------
// Fixture tests
// ---------------------------------------------------------------------------------------------

#[test]
fn fixtures_are_the_vendor_set_and_all_routed() {
    let fixtures = fixtures();
    assert_eq!(fixtures.len(), 32, "fixture files in {FIXTURES}");
    for f in &fixtures {
        route(&f.name);
        assert!(
            f.section("provenance").is_some(),
            "{}: no provenance",
            f.name
        );
        assert!(f.section("method").is_some(), "{}: no method", f.name);
    }
    for (name, ..) in ROUTES {
        assert!(
            fixtures.iter().any(|f| f.name == *name),
            "ROUTES lists {name}, which has no fixture"
        );
    }
    // The parser reads the shapes the set uses (a regression here would silently weaken the
    // round trips below).
    let by = |n: &str| fixtures.iter().find(|f| f.name == n).unwrap();
    let bodies = |n: &str| {
        by(n)
            .requests()
            .into_iter()
            .map(|r| r.body)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        bodies("ga4-collect-2"),
        [
            b"en=scroll&epn.percent_scrolled=90\r\nen=user_engagement&_et=5123".to_vec(),
            b"en=scroll&epn.percent_scrolled=90\nen=user_engagement&_et=5123".to_vec()
        ]
    );
    assert!(bodies("posthog-e-1")[0].starts_with(&[0x1f, 0x8b, 8]));
    assert!(bodies("linkedin-wa-1")[0].starts_with(b"H4sI"));
    assert!(bodies("ga4-mp-collect-1")[0].starts_with(b"{\n  \"client_id\""));
    assert!(bodies("ga4-mp-collect-1")[0].ends_with(b"}]\n}"));
    let meta = String::from_utf8(bodies("meta-tr-3")[0].clone()).unwrap();
    assert!(meta.starts_with("------WebKitFormBoundaryFAKE\r\nContent-Disposition: form-data; name=\"id\"\r\n\r\n1234567890123456\r\n"), "{meta}");
    assert!(
        meta.contains("name=\"cd[content_ids]\"\r\n\r\n[\"SKU-1\"]\r\n"),
        "{meta}"
    );
    assert!(
        meta.ends_with("name=\"rqm\"\r\n\r\nSB\r\n------WebKitFormBoundaryFAKE--\r\n"),
        "{meta}"
    );
    assert_eq!(meta.matches("Content-Disposition").count(), 10);
    assert_eq!(by("meta-fbevents-1").requests().len(), 2);
    assert_eq!(
        by("linkedin-collect-1").requests()[1].query,
        "pid=1234567&conversionId=7654321&fmt=gif"
    );
    assert_eq!(by("ga4-gtag-js-1").requests()[0].body, b"");
    assert_eq!(
        by("plausible-event-1").header("content-type").as_deref(),
        Some("text/plain")
    );
}

/// Each fixture decoded with its route's codec, then forced through the encoder.
#[test]
fn every_fixture_round_trips_with_its_route_codec() {
    let (per_codec, nested) = all_fixtures(&|name| route(name).0);
    eprintln!("route codecs: {per_codec:?}; nested documents checked: {nested}");
    // Each codec the routes declare is exercised by the set (`auto` by the next test).
    for c in [
        "Ga4 → ga4 lines",
        "Json → json",
        "Form → form",
        "Multipart → multipart",
        "Opaque → no body",
    ] {
        assert!(
            per_codec.contains_key(c),
            "no fixture exercised {c}: {per_codec:?}"
        );
    }
    assert!(nested >= 9, "nested documents checked: {nested}");
}

/// The same with `codec = "auto"` (a route shared by several formats, such as Matomo's
/// `/matomo.php`, which receives GET, urlencoded and JSON bulk requests): every fixture must
/// be recognised by its Content-Type or first byte and round-trip as well.
#[test]
fn every_fixture_round_trips_with_auto() {
    let (per_codec, nested) = all_fixtures(&|_| Codec::Auto);
    eprintln!("auto: {per_codec:?}; nested documents checked: {nested}");
}

/// The `decoded:` sections that are exact (the PostHog one abbreviates ids, `phc_FAKE...`, so
/// it only shows the shape) agree with what the library unwraps and decodes.
#[test]
fn decoded_sections_match_the_library() {
    let fixtures = fixtures();
    let by = |n: &str| fixtures.iter().find(|f| f.name == n).unwrap();

    let li = by("linkedin-wa-1");
    let req = &li.requests()[0];
    let input = Input::unwrap(&req.body, None).unwrap();
    assert_eq!(input.wrap, Some(BodyWrap::Base64Gzip));
    let decoded = &li.section("decoded").unwrap().lines[0];
    same("linkedin-wa-1 unwrapped", &input.body, decoded.as_bytes()).unwrap();

    let ph = by("posthog-e-1");
    let req = &ph.requests()[0];
    let input = Input::unwrap(&req.body, None).unwrap();
    assert_eq!(input.wrap, Some(BodyWrap::BareGzip), "posthog-e-1");
    assert!(
        input
            .body
            .starts_with(br#"[{"uuid":"01900000-0000-7000-8000-000000000001""#)
    );

    let sp = by("snowplow-tp2-1");
    let req = &sp.requests()[0];
    let input = Input::unwrap(&req.body, None).unwrap();
    let mut doc = decode::decode("", &input, req.content_type.as_deref(), Codec::Json).unwrap();
    let mut inner = None;
    each_named(&mut doc.parts[1].root, true, &["ue_px"], &mut |k, s| {
        decode::decode_nested(k, s).unwrap();
        let n = s.nested().unwrap();
        inner = Some((n.wrap, json::to_string(&n.root)));
    });
    let section = sp.section("decoded ue_px").unwrap();
    assert_eq!(section.remark, "base64url, unpadded");
    let (wrap, text) = inner.expect("snowplow-tp2-1 has a ue_px");
    assert_eq!(text, section.inline, "snowplow-tp2-1 ue_px");
    // This ue_px holds no `-` or `_`, so the library cannot tell base64url from unpadded
    // standard base64 and reads it as the latter (documented on `wrap::base64_decode`). It
    // writes the unchanged text back identically either way; only the padding is asserted.
    assert!(
        matches!(
            wrap,
            decode::Wrap::Base64Url { pad: false } | decode::Wrap::Base64 { pad: false }
        ),
        "snowplow-tp2-1 ue_px wrap {wrap:?}"
    );
}
