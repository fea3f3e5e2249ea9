//! `tagway test`: runs the `[[test]]` cases written in rule files — a request in, expectations
//! on what goes out — so a site can keep its rules under CI. The shipped rule files carry such
//! tests, and the project's own test suite runs them.

use std::net::IpAddr;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};

use crate::config::model::TestSpec;
use crate::inspect::{self, Inspection, Request};
use crate::rules::cond::cookie_in;
use crate::rules::select::{Scope, Selector};
use crate::ruleset::RuleSet;

/// The result of one test case.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub name: String,
    /// `file:line` of the `[[test]]`.
    pub at: String,
    /// Empty when the test passed.
    pub failures: Vec<String>,
}

/// Runs every test of the rule set.
pub fn run_all(rules: &RuleSet) -> Vec<Outcome> {
    rules
        .tests
        .iter()
        .map(|(at, spec)| Outcome {
            name: spec.name.clone(),
            at: at.clone(),
            failures: run(rules, spec),
        })
        .collect()
}

/// Builds the request a test describes.
pub fn request(spec: &TestSpec) -> Result<Request, String> {
    let r = &spec.request;
    let method = match &r.method {
        Some(m) => Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("method {m:?} is not valid"))?,
        None if r.body.is_some() || r.body_base64.is_some() => Method::POST,
        None => Method::GET,
    };
    let mut req = Request::from_url(method, &r.url)?;
    for (n, v) in &r.headers {
        let name = HeaderName::from_bytes(n.as_bytes())
            .map_err(|_| format!("header name {n:?} is not valid"))?;
        let value =
            HeaderValue::from_str(v).map_err(|_| format!("header {n}: value is not valid"))?;
        req.headers.append(name, value);
    }
    req.body = match (&r.body, &r.body_base64) {
        (Some(_), Some(_)) => return Err("set body or body_base64, not both".into()),
        (Some(b), None) => Bytes::from(b.clone()),
        (None, Some(b)) => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .map_err(|e| format!("body_base64: {e}"))?,
        ),
        (None, None) => Bytes::new(),
    };
    if let Some(ip) = &r.client_ip {
        req.client_ip = ip
            .parse::<IpAddr>()
            .map_err(|_| format!("client_ip {ip:?} is not an address"))?;
    }
    Ok(req)
}

/// Runs one test; returns what failed.
pub fn run(rules: &RuleSet, spec: &TestSpec) -> Vec<String> {
    let req = match request(spec) {
        Ok(r) => r,
        Err(e) => return vec![format!("request: {e}")],
    };
    let e = &spec.expect;
    let mut fails = Vec::new();
    let mut sels: Vec<(String, Selector)> = Vec::new();
    for name in e
        .fields
        .keys()
        .chain(&e.changed)
        .chain(&e.unchanged)
        .chain(&e.absent)
        .chain(&e.present)
    {
        if sels.iter().any(|(n, _)| n == name) {
            continue;
        }
        match Selector::parse(name) {
            Ok(s) => sels.push((name.clone(), s)),
            Err(err) => fails.push(format!("expect: field selector {err}")),
        }
    }
    // Read every named field as received and as it would leave. The observer sees payload
    // fields (it does not run at all on a route without rules); headers and cookies are read
    // from the request and from what is sent.
    let mut before: Vec<Option<String>> = vec![None; sels.len()];
    let mut after: Vec<Option<String>> = vec![None; sels.len()];
    let mut each = |label: &str, doc: &crate::decode::Doc<'_>| {
        let vals: Vec<Option<String>> = sels.iter().map(|(_, s)| inspect::read(doc, s)).collect();
        if label == "received" {
            before = vals.clone();
        }
        after = vals;
    };
    let ins = match inspect::inspect(rules, &req, &mut each) {
        Ok(i) => i,
        Err(err) => return vec![err],
    };
    let sent: Vec<(&str, &str)> = ins.sent.as_ref().map_or(Vec::new(), |s| {
        s.headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    });
    let received = |name: &str| -> Vec<&str> {
        req.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    };
    let leaving = |name: &str| -> Vec<&str> {
        sent.iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
            .collect()
    };
    for (i, (_, sel)) in sels.iter().enumerate() {
        let (b, a) = match &sel.scope {
            Scope::Header(h) => (received(h).first().copied(), leaving(h).first().copied()),
            Scope::Cookie(c) => (
                cookie_in(received("cookie"), c),
                cookie_in(leaving("cookie"), c),
            ),
            _ => continue,
        };
        (before[i], after[i]) = (b.map(str::to_string), a.map(str::to_string));
    }
    if let Some(want) = &spec.route
        && ins.route != *want
    {
        fails.push(format!("reached route {:?}, expected {want:?}", ins.route));
    }
    match (e.dropped, &ins.dropped) {
        (Some(true), None) => {
            fails.push("expected the request to be dropped; it is forwarded".into())
        }
        (Some(false), Some(r)) => fails.push(format!(
            "expected the request to be forwarded; rule \"{r}\" drops it"
        )),
        _ => {}
    }
    let value = |i: usize, v: &[Option<String>]| v.get(i).cloned().flatten();
    for (i, (name, _)) in sels.iter().enumerate() {
        let (b, a) = (value(i, &before), value(i, &after));
        let show = |v: &Option<String>| {
            v.clone()
                .map_or("(absent)".to_string(), |s| format!("{s:?}"))
        };
        if let Some(want) = e.fields.get(name)
            && a.as_deref() != Some(want.as_str())
        {
            fails.push(format!("field {name}: expected {want:?}, got {}", show(&a)));
        }
        if e.changed.contains(name) && (a == b || a.is_none()) {
            fails.push(format!(
                "field {name}: expected it changed, it is {}",
                show(&a)
            ));
        }
        if e.unchanged.contains(name) && a != b {
            fails.push(format!(
                "field {name}: expected unchanged {}, got {}",
                show(&b),
                show(&a)
            ));
        }
        if e.absent.contains(name) && a.is_some() {
            fails.push(format!("field {name}: expected absent, got {}", show(&a)));
        }
        if e.present.contains(name) && a.is_none() {
            fails.push(format!("field {name}: expected present, it is absent"));
        }
    }
    for needle in &e.not_contains {
        if let Some(form) = leaks(&ins, needle) {
            fails.push(format!("{needle:?} still leaves the gateway ({form})"));
        }
    }
    fails
}

/// Whether `needle` appears in what would be sent, in any usual encoding; says which.
pub fn leaks(ins: &Inspection, needle: &str) -> Option<String> {
    let sent = ins.sent.as_ref()?;
    let mut haystacks: Vec<(String, &'static str)> = vec![(sent.url.clone(), "in the URL")];
    haystacks.push((
        String::from_utf8_lossy(&sent.body).into_owned(),
        "in the body",
    ));
    for z in [
        crate::decode::wrap::Compression::Gzip,
        crate::decode::wrap::Compression::Deflate,
    ] {
        if let Ok(plain) = crate::decode::wrap::decompress(z, &sent.body, 16 << 20) {
            haystacks.push((
                String::from_utf8_lossy(&plain).into_owned(),
                "inside the compressed body",
            ));
        }
    }
    if let Some(last) = ins.steps.last() {
        let all: String = last
            .fields
            .iter()
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        haystacks.push((all, "in a decoded field"));
    }
    for (k, v) in &sent.headers {
        haystacks.push((format!("{k}: {v}"), "in a header"));
    }
    let enc: String =
        percent_encoding::utf8_percent_encode(needle, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
    let enc2: String =
        percent_encoding::utf8_percent_encode(&enc, percent_encoding::NON_ALPHANUMERIC).to_string();
    let b64 = base64::engine::general_purpose::STANDARD.encode(needle);
    let b64u = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(needle);
    let forms: [(&str, &'static str); 5] = [
        (needle, "as is"),
        (&enc, "percent-encoded"),
        (&enc2, "percent-encoded twice"),
        (b64.trim_end_matches('='), "base64"),
        (&b64u, "base64url"),
    ];
    for (h, place) in &haystacks {
        let lower = h.to_lowercase();
        for (i, (f, how)) in forms.iter().enumerate() {
            // Text and percent escapes compare without case; base64 is case-sensitive.
            let hit = h.contains(f) || (i < 3 && lower.contains(&f.to_lowercase()));
            if f.len() >= 3 && hit {
                return Some(format!("{how}, {place}"));
            }
        }
    }
    None
}
