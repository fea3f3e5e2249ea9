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

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine as _;
use proptest::prelude::*;
use tagway::decode::wrap::{self, Compression};
use tagway::decode::{self, BodyWrap, Codec, Doc, Frame, Input, Str, Value, json};
use tagway::encode::{Encoded, encode};

/// Where the vendor fixtures live (in the repository, so CI needs nothing else).
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/vendors");

// ---------------------------------------------------------------------------------------------
// The fixture format
// ---------------------------------------------------------------------------------------------
//
// A fixture is a small text file:
//
//     # Title line
//     provenance: where the shape comes from
//     method: POST
//     url: https://vendor.example/path?query
//     headers:
//       Content-Type: application/json    (free comment after two spaces and a parenthesis)
//     body:
//     {"the":"body"}                      (as many lines as it takes)
//     notes: free text
//       continued on indented lines
//
// Every line that starts at column 0 with `label:` or `label (remark):` opens a section
// (`label` is letters, digits, spaces, `_` and `-`); the text after the colon is the
// section's inline text, and the lines up to the next such line belong to it. Body lines can
// never be mistaken for a label: they start with `{`, or a `key=` pair, or base64 (which has
// no `:`), or are indented.
//
// The `body` section says in its remark or inline text how to read it:
// - `body: (empty)` / `body: (none)`: no body;
// - `… base64 here for transport …`: the lines are base64 of the real (binary) body;
// - `… CRLF between events …`: the lines are joined with CRLF (and, since the fixture says
//   plain LF is also seen, the LF variant is tested as well);
// - `… one part per param …`: the lines list `name=value` pairs separated by `, `, which a
//   browser's FormData would send as multipart/form-data with the Content-Type's boundary;
// - otherwise the lines are the body text, joined with `\n` (no trailing line break).

/// A parsed fixture file.
#[derive(Debug)]
struct Fixture {
    /// File name without `.txt` (`ga4-collect-2`): what failure messages name.
    name: String,
    sections: Vec<Section>,
}

/// One `label (remark): inline` line and the lines that follow it.
#[derive(Debug)]
struct Section {
    label: String,
    remark: String,
    inline: String,
    lines: Vec<String>,
}

/// A request built from a fixture.
#[derive(Debug)]
struct Request {
    /// The fixture name, plus the variant when a fixture yields several requests.
    what: String,
    /// The URL query without `?` (empty when there is none).
    query: String,
    content_type: Option<String>,
    content_encoding: Option<String>,
    /// The body bytes exactly as they would travel.
    body: Vec<u8>,
}

/// `label (remark): inline` at the start of a line, or `None` for any other line.
fn section_line(line: &str) -> Option<(String, String, String)> {
    if !line.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let end = line.find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, ' ' | '_' | '-')))?;
    let (label, mut rest) = (line[..end].trim_end(), &line[end..]);
    let mut remark = "";
    if let Some(r) = rest.strip_prefix('(') {
        let close = r.find(')')?;
        (remark, rest) = (&r[..close], &r[close + 1..]);
    }
    let inline = rest.strip_prefix(':')?;
    Some((
        label.to_string(),
        remark.to_string(),
        inline.trim().to_string(),
    ))
}

impl Fixture {
    fn parse(name: &str, text: &str) -> Fixture {
        let mut lines = text.lines();
        let title = lines.next().unwrap_or_default();
        assert!(title.starts_with("# "), "{name}: no `# title` line");
        let mut sections: Vec<Section> = Vec::new();
        for line in lines {
            if let Some((label, remark, inline)) = section_line(line) {
                sections.push(Section {
                    label,
                    remark,
                    inline,
                    lines: Vec::new(),
                });
            } else {
                let s = sections
                    .last_mut()
                    .unwrap_or_else(|| panic!("{name}: text before the first section: {line:?}"));
                s.lines.push(line.to_string());
            }
        }
        Fixture {
            name: name.to_string(),
            sections,
        }
    }

    fn section(&self, label: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.label == label)
    }

    /// `headers:` lines `  Name: value   (comment)`, the comment removed.
    fn header(&self, name: &str) -> Option<String> {
        self.section("headers")?.lines.iter().find_map(|l| {
            let (n, v) = l.trim().split_once(':')?;
            let v = v.split("  (").next().unwrap_or(v).trim();
            n.trim().eq_ignore_ascii_case(name).then(|| v.to_string())
        })
    }

    /// Every URL the fixture shows a request to: each `url:` line (`meta-fbevents-1` has
    /// two, the script and its config) and each `… variant:` that is a bare URL
    /// (`linkedin-collect-1`'s conversion variant). Prose variants (`batch variant: POST …
    /// {…event…}`) describe shapes, not requests, and are not used.
    fn urls(&self) -> Vec<&str> {
        let urls: Vec<&str> = self
            .sections
            .iter()
            .filter(|s| {
                s.label == "url"
                    || (s.label.ends_with("variant")
                        && s.inline.starts_with("https://")
                        && !s.inline.contains(char::is_whitespace))
            })
            .map(|s| s.inline.as_str())
            .collect();
        assert!(!urls.is_empty(), "{}: no `url:` line", self.name);
        urls
    }

    /// The body (or bodies, when the fixture names variants) as they travel, each with a
    /// variant label (empty for the only one).
    fn bodies(&self) -> Vec<(&'static str, Vec<u8>)> {
        let Some(s) = self.section("body") else {
            return vec![("", Vec::new())];
        };
        if s.inline == "(empty)" || s.inline == "(none)" {
            assert!(s.lines.is_empty(), "{}: empty body with lines", self.name);
            return vec![("", Vec::new())];
        }
        let how = format!("{} {}", s.remark, s.inline);
        if !s.inline.is_empty() && !s.inline.ends_with(':') {
            // The body on the `body:` line itself.
            assert!(s.lines.is_empty(), "{}: body on two places", self.name);
            return vec![("", s.inline.clone().into_bytes())];
        }
        assert!(!s.lines.is_empty(), "{}: `body` has no lines", self.name);
        if how.contains("base64 here for transport") {
            let b64: String = s.lines.iter().map(|l| l.trim()).collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap_or_else(|e| panic!("{}: transport base64: {e}", self.name));
            return vec![("", bytes)];
        }
        if how.contains("CRLF between") {
            return vec![
                ("CRLF", s.lines.join("\r\n").into_bytes()),
                ("LF", s.lines.join("\n").into_bytes()),
            ];
        }
        if how.contains("one part per param") {
            return vec![("", self.form_data(&s.lines))];
        }
        vec![("", s.lines.join("\n").into_bytes())]
    }

    /// The `name=value, …` list of a `one part per param` body framed the way Chrome frames
    /// `FormData` for `navigator.sendBeacon`: CRLF line endings, one part per field in order,
    /// the closing delimiter followed by CRLF.
    fn form_data(&self, lines: &[String]) -> Vec<u8> {
        let ctype = self.header("Content-Type").unwrap_or_default();
        let (_, boundary) = ctype
            .split_once("boundary=")
            .unwrap_or_else(|| panic!("{}: multipart without a boundary", self.name));
        let list = lines.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ");
        let mut out = String::new();
        for item in list.split(", ").map(|i| i.trim().trim_end_matches(',')) {
            if item.is_empty() {
                continue;
            }
            let (name, value) = item
                .split_once('=')
                .unwrap_or_else(|| panic!("{}: part {item:?} has no `=`", self.name));
            out += &format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            );
        }
        out += &format!("--{boundary}--\r\n");
        out.into_bytes()
    }

    /// The requests this fixture describes: the first URL with each body variant, then any
    /// further URLs as requests without a body.
    fn requests(&self) -> Vec<Request> {
        let urls = self.urls();
        let query = |url: &str| {
            let q = url.split_once('?').map_or("", |(_, q)| q);
            q.split('#').next().unwrap_or("").to_string()
        };
        let mut out = Vec::new();
        for (variant, body) in self.bodies() {
            out.push(Request {
                what: match variant {
                    "" => self.name.clone(),
                    v => format!("{} ({v} body)", self.name),
                },
                query: query(urls[0]),
                content_type: self.header("Content-Type"),
                content_encoding: self.header("Content-Encoding"),
                body,
            });
        }
        for (i, url) in urls.iter().enumerate().skip(1) {
            out.push(Request {
                what: format!("{} (url {})", self.name, i + 1),
                query: query(url),
                content_type: None,
                content_encoding: None,
                body: Vec::new(),
            });
        }
        out
    }
}

/// Every fixture file, parsed, by name.
fn fixtures() -> Vec<Fixture> {
    let mut names: Vec<_> = std::fs::read_dir(FIXTURES)
        .unwrap_or_else(|e| panic!("{FIXTURES}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy();
            let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{name}: {e}"));
            Fixture::parse(&name, &text)
        })
        .collect()
}

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
            if s.nested.is_none() {
                return; // an empty string stays plain
            }
            n += 1;
            let mut fresh = s.clone();
            fresh.raw = None;
            let text = decode::nested_text(&fresh).unwrap_or_default();
            if let Err(e) = same(
                &format!("nested {key} written back"),
                text.as_bytes(),
                s.text.as_bytes(),
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
        Value::Str(s) if s.nested.is_some() => s.raw = None,
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
        let n = s.nested.as_ref().unwrap();
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
