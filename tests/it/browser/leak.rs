//! Searching everything a mock vendor received for planted values, in every form they could
//! take: each request's URL, headers and body are decoded as far as they go (percent-decoding,
//! gzip, base64 and base64url, JSON string escapes, JSON inside strings), and each decoded
//! text is searched for the value as is, percent-encoded (once or twice) and base64-encoded at
//! every alignment.

use std::io::Read;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use percent_encoding::{NON_ALPHANUMERIC, percent_decode, utf8_percent_encode};

use crate::support::mock::Seen;

/// How deep decodings nest (base64 of gzip of JSON holding a percent-encoded URL is 4).
const DEPTH: usize = 6;

/// Every text a request decodes to, the raw forms included.
pub fn texts(seen: &Seen) -> Vec<String> {
    let mut out = Vec::new();
    expand(seen.uri.to_string().as_bytes(), DEPTH, &mut out);
    for (name, value) in &seen.headers {
        let line = format!("{name}: {}", String::from_utf8_lossy(value.as_bytes()));
        expand(line.as_bytes(), DEPTH, &mut out);
    }
    expand(&seen.body, DEPTH, &mut out);
    out
}

fn expand(bytes: &[u8], depth: usize, out: &mut Vec<String>) {
    if bytes.is_empty() || out.iter().any(|t| t.as_bytes() == bytes) {
        return;
    }
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut plain = Vec::new();
        if flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut plain)
            .is_ok()
            && depth > 0
        {
            expand(&plain, depth - 1, out);
        }
    }
    let text = String::from_utf8_lossy(bytes).into_owned();
    out.push(text.clone());
    if depth == 0 {
        return;
    }
    // Percent-decoding, with `+` as space too (forms).
    let pct: Vec<u8> = percent_decode(text.replace('+', " ").as_bytes()).collect();
    if pct != bytes {
        expand(&pct, depth - 1, out);
    }
    // JSON: every string, unescaped, and every string that is itself a document.
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) {
        let mut strings = Vec::new();
        json_strings(&v, &mut strings);
        for s in strings {
            expand(s.as_bytes(), depth - 1, out);
        }
    }
    // Runs that look like base64 or base64url.
    for run in text.split(|c: char| !(c.is_ascii_alphanumeric() || "+/=-_".contains(c))) {
        let run = run.trim_end_matches('=');
        if run.len() < 12 {
            continue;
        }
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            if let Ok(d) = engine.decode(run) {
                expand(&d, depth - 1, out);
            }
        }
    }
}

fn json_strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|x| json_strings(x, out)),
        serde_json::Value::Object(o) => o.iter().for_each(|(k, x)| {
            out.push(k.clone());
            json_strings(x, out)
        }),
        _ => {}
    }
}

/// The forms a value can take inside a text: as is, percent-encoded once and twice, and the
/// base64/base64url of it at each of the three alignments (the middle part, which is the same
/// whatever surrounds it).
fn forms(needle: &str) -> Vec<(String, &'static str)> {
    let enc = utf8_percent_encode(needle, NON_ALPHANUMERIC).to_string();
    let enc2 = utf8_percent_encode(&enc, NON_ALPHANUMERIC).to_string();
    let mut out = vec![
        (needle.to_lowercase(), "as is"),
        (enc.to_lowercase(), "percent-encoded"),
        (enc2.to_lowercase(), "percent-encoded twice"),
    ];
    for pad in 0..3usize {
        let mut b = vec![b'x'; pad];
        b.extend_from_slice(needle.as_bytes());
        for (engine, how) in [(&STANDARD, "base64"), (&URL_SAFE, "base64url")] {
            let e = engine.encode(&b);
            // Skip the characters that depend on the bytes before, and the last group.
            let skip = (pad * 4).div_ceil(3);
            let keep = (b.len() / 3) * 4;
            if keep > skip + 4 {
                out.push((e[skip..keep].to_string(), how));
            }
        }
    }
    out
}

/// Where `needle` is found in the decoded texts, and in which form; `None` when nowhere.
pub fn find(texts: &[String], needle: &str) -> Option<String> {
    let forms = forms(needle);
    for t in texts {
        let lower = t.to_lowercase();
        for (f, how) in &forms {
            let hit = if how.starts_with("base64") {
                t.contains(f.as_str())
            } else {
                lower.contains(f.as_str())
            };
            if hit {
                let at = lower.find(&f.to_lowercase()).unwrap_or(0);
                return Some(format!("{how}, in …{}…", around(t, at, f.len())));
            }
        }
    }
    None
}

/// Up to 60 bytes either side of `at..at+len`, cut at character boundaries.
fn around(t: &str, at: usize, len: usize) -> &str {
    let mut from = at.saturating_sub(60).min(t.len());
    while !t.is_char_boundary(from) {
        from -= 1;
    }
    let mut to = (at + len + 60).min(t.len());
    while !t.is_char_boundary(to) {
        to += 1;
    }
    &t[from..to]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn seen(uri: &str, body: Vec<u8>) -> Seen {
        Seen {
            method: http::Method::POST,
            uri: uri.parse().unwrap(),
            version: http::Version::HTTP_11,
            headers: http::HeaderMap::new(),
            body: body.into(),
        }
    }

    #[test]
    fn finds_a_value_in_every_form_and_misses_it_when_absent() {
        let email = "jane.doe@example.com";
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(format!(r#"[{{"u":"https://s.example/?e={email}"}}]"#).as_bytes())
            .unwrap();
        let gz = gz.finish().unwrap();
        let b64_json = STANDARD.encode(format!(r#"{{"p":"{{\"email\":\"{email}\"}}"}}"#));
        let cases: Vec<Seen> = vec![
            seen("/e/", gz.clone()),
            seen(
                "/e/",
                format!("data={}", b64_json.replace('=', "%3D")).into_bytes(),
            ),
            seen("/e/?u=jane.doe%2540example.com", vec![]),
            seen("/e/", STANDARD.encode(&gz).into_bytes()),
            seen(
                "/e/",
                r#"{"u":"jane.doe\u0040example.com"}"#.as_bytes().to_vec(),
            ),
            seen(
                "/e/",
                format!("x=ab{}", STANDARD.encode(format!("zz{email}"))).into_bytes(),
            ),
        ];
        for (i, s) in cases.iter().enumerate() {
            assert!(find(&texts(s), email).is_some(), "case {i} not found");
        }
        let clean = seen(
            "/e/?u=https%3A%2F%2Fs.example%2F",
            br#"{"u":"[email]"}"#.to_vec(),
        );
        assert_eq!(find(&texts(&clean), email), None);
    }
}
