//! Properties of the rule engine over generated input: no input panics the whole pipeline,
//! redaction is idempotent, and a selector never touches a field it does not match.

use std::borrow::Cow;

use hmac::Mac;
use http::{HeaderMap, HeaderValue, Method};
use proptest::prelude::*;
use tagway::config::{RuleText, RulesSource, load};
use tagway::decode::{Hot, Value, query};
use tagway::route::Lookup;
use tagway::rules::action::{HmacKey, Replace, redact_text};
use tagway::rules::detect::Kinds;
use tagway::rules::keys::KeyIndex;
use tagway::rules::select::Selector;
use tagway::rules::walk;
use tagway::ruleset::RuleSet;
use tagway::transform::{Processed, process};

/// The shipped GA4 rules plus a JSON route and a form route with one rule of every kind.
fn rule_set() -> RuleSet {
    let mut texts = RulesSource::Dir("rules".into()).read().unwrap();
    texts.push(RuleText {
        name: "props.toml".into(),
        text: r#"
[upstreams.v]
url = "https://v.example"

[[route]]
name = "json"
path = "/j"
upstream = "v"
codec = "json"
events = "batch[*]"
nested = ["data"]

[[route.rule]]
hash = ["userId", "**.email"]
normalize = "email"

[[route.rule]]
drop = ["properties.*secret*"]
when.event = ["a"]

[[route.rule]]
strip_url = ["**.url"]
keep_params = ["utm_*"]

[[route.rule]]
redact = ["**.note"]
patterns = ["[0-9]{3}"]

[[route.rule]]
truncate_ip = ["context.ip"]

[[route.rule]]
set = { "context.ip2" = "{client_ip_anonymized}" }

[[route.rule]]
rename = { "a" = "b" }

[[route.rule]]
keep = ["**"]

[[route]]
name = "form"
path = "/f"
upstream = "v"
codec = "auto"

[[route.rule]]
drop_request = true
when.equals = { drop = "1" }

[[route.rule]]
drop = ["ep.*"]
when.consent_denied = ["ads"]
"#
        .into(),
    });
    load(&RulesSource::Texts(texts), &[]).unwrap()
}

fn route<'r>(rules: &'r RuleSet, path: &str) -> &'r tagway::ruleset::Route {
    match rules.routes.find("localhost", &Method::POST, path) {
        Lookup::Found(r, _) => r,
        _ => panic!("no route for {path}"),
    }
}

fn key() -> HmacKey {
    HmacKey::new_from_slice(b"property-test-key").unwrap()
}

/// Text that is likely to contain things the detectors look for, and near misses.
fn piiish() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            "[a-z]{1,6}",
            "[0-9]{1,6}",
            "[ .:@%+=&?#;/()\\-]",
            Just("jane.doe@example.com".to_string()),
            Just("+1 555 123 4567".to_string()),
            Just("4111 1111 1111 1111".to_string()),
            Just("DE89370400440532013000".to_string()),
            Just("192.0.2.44".to_string()),
            Just("2001:db8::1".to_string()),
            Just("Bearer abcdefghijklmnopqrstuvwxyz0123".to_string()),
            Just("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlX2hlcmU".to_string()),
            Just("token=abc123".to_string()),
            Just("%40".to_string()),
            Just("[email]".to_string()),
        ],
        0..12,
    )
    .prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the query, headers and body, decode → rules → encode returns (a result or a
    /// decode error) without panicking, on every route kind.
    #[test]
    fn no_input_panics_the_pipeline(
        q in "[a-z_.=&%0-9A-F+\\[\\]*]{0,60}",
        body in proptest::collection::vec(any::<u8>(), 0..200),
        json_like in "[\\[\\]{}\":,a-z0-9 ]{0,80}",
        ct in prop_oneof![
            Just(""), Just("application/json"), Just("text/plain"),
            Just("application/x-www-form-urlencoded"), Just("multipart/form-data; boundary=xyz"),
        ],
        enc in prop_oneof![Just(""), Just("gzip"), Just("br"), Just("deflate"), Just("x")],
    ) {
        let rules = rule_set();
        let mut h = HeaderMap::new();
        if !ct.is_empty() {
            h.insert("content-type", HeaderValue::from_static(ct));
        }
        if !enc.is_empty() {
            h.insert("content-encoding", HeaderValue::from_static(enc));
        }
        let ip = "203.0.113.7".parse().unwrap();
        for path in ["/g/collect", "/j", "/f"] {
            let r = route(&rules, path);
            let _ = process(&rules, r, &q, &h, &body, ip, None);
            let _ = process(&rules, r, &q, &h, json_like.as_bytes(), ip, None);
        }
    }

    /// Redacting what redaction produced changes nothing more.
    #[test]
    fn redaction_is_idempotent(text in piiish(), hash in any::<bool>()) {
        let replace = if hash { Replace::Hash } else { Replace::Placeholder(None) };
        let k = key();
        let once = redact_text(&text, Kinds::all(), &[], &replace, &k)
            .unwrap_or_else(|| text.clone());
        let twice = redact_text(&once, Kinds::all(), &[], &replace, &k);
        prop_assert!(twice.is_none() || twice.as_deref() == Some(once.as_str()),
            "{text:?} → {once:?} → {twice:?}");
    }

    /// The whole GA4 pipeline is idempotent too: what leaves, sent through again, leaves as is
    /// (apart from `uid`, which a second pass does not hash again either).
    #[test]
    fn the_ga4_pipeline_is_idempotent(uid in piiish(), note in piiish(), dl in piiish()) {
        let rules = rule_set();
        let r = route(&rules, "/g/collect");
        let esc = |s: &str| {
            let mut o = String::new();
            query::escape_into(&mut o, s, query::Spaces::Percent);
            o
        };
        let q = format!(
            "v=2&tid=G-1&uid={}&ep.note={}&dl={}&en=page_view",
            esc(&uid), esc(&note), esc(&format!("https://s.example/?q={dl}&utm_source=x"))
        );
        let ip = "203.0.113.7".parse().unwrap();
        let h = HeaderMap::new();
        let once = match process(&rules, r, &q, &h, b"", ip, None).unwrap() {
            Processed::Forward { query, .. } => query.unwrap_or(q.clone()),
            other => panic!("{other:?}"),
        };
        let twice = match process(&rules, r, &once, &h, b"", ip, None).unwrap() {
            Processed::Forward { query, .. } => query.unwrap_or(once.clone()),
            other => panic!("{other:?}"),
        };
        prop_assert_eq!(once, twice);
    }

    /// A selector removes exactly the fields it matches; every other field keeps its exact
    /// text and order.
    #[test]
    fn selectors_never_touch_unmatched_fields(
        keys in proptest::collection::vec("(ep|up|e|u)(\\.|n\\.)?[a-c]{0,3}", 1..12),
        vals in proptest::collection::vec("[a-z0-9%+.]{0,5}", 12),
        pattern in prop_oneof![
            Just("ep.*"), Just("ep.a*"), Just("*b*"), Just("up.*c"), Just("e"), Just("ep.ab"),
            Just("*"), Just("u*"),
        ],
        // Through a program's key index (the gateway's path) or matched directly.
        indexed in any::<bool>(),
    ) {
        let q: String = keys
            .iter()
            .zip(&vals)
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let mut sel = Selector::parse(pattern).unwrap();
        let mut idx = KeyIndex::default();
        if indexed {
            // Other patterns in the same index must not disturb this one's bit.
            for other in ["ep.zz", "u*c", "e"] {
                idx.add(&mut Selector::parse(other).unwrap());
            }
            idx.add(&mut sel);
        }
        let (mut obj, spaces) = query::decode(&q);
        // Indexed, the rules look only at the fields the classification found hot.
        let mut hot = Hot::ALL;
        if indexed {
            hot = idx.classify_all(&mut obj.entries);
        }
        let mut root = Value::Obj(obj);
        walk::remove(&mut root, Some(&mut hot), std::slice::from_ref(&sel), false, &idx);
        // And a visit that only reads must change nothing.
        walk::visit(&mut root, Some(&mut hot), std::slice::from_ref(&sel), false, &idx, &mut |_, _| false);
        let Value::Obj(obj) = &root else { unreachable!() };
        let mut out = String::new();
        let changed = obj.entries.len() != keys.len();
        if changed {
            query::encode(obj, &q, spaces, &mut out, &|_| None);
        } else {
            out = q.clone();
        }
        let re = regex::Regex::new(&format!(
            "^{}$",
            regex::escape(pattern).replace("\\*", ".*")
        ))
        .unwrap();
        let expected: Vec<&str> = q
            .split('&')
            .filter(|p| !re.is_match(&query::unescape(p.split('=').next().unwrap())))
            .collect();
        let got: Vec<&str> = if out.is_empty() { vec![] } else { out.split('&').collect() };
        prop_assert_eq!(got, expected, "pattern {} on {}", pattern, q);
    }

    /// The rules look only at the fields the key classification found hot ([`Hot`]): through
    /// any sequence of drops, sets, renames and visits, on parts under and over 64 fields,
    /// that gives what looking at every field gives.
    #[test]
    fn hot_fields_are_all_the_rules_need(
        keys in proptest::collection::vec("(ep|up|e|u|_u)(\\.|n\\.)?[a-c]{0,2}", 0..70),
        ops in proptest::collection::vec((0u8..4, 0usize..8), 1..10),
    ) {
        // The last four are exact, for `set` and `rename`.
        let pats = ["ep.*", "u*", "*b*", "up.*c", "e", "ep.a", "_uip", "ea"];
        let mut sels: Vec<Selector> = pats.iter().map(|p| Selector::parse(p).unwrap()).collect();
        let mut idx = KeyIndex::default();
        for s in &mut sels {
            idx.add(s);
        }
        // Renames name fields no indexed pattern matches (as a program's renames have no bit):
        // the new name must be classified and become hot.
        let renames: Vec<Selector> =
            ["e.a", "_ua", "en.c", "_u"].iter().map(|p| Selector::parse(p).unwrap()).collect();
        let q: String = keys
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{k}={i}"))
            .collect::<Vec<_>>()
            .join("&");
        let run = |use_hot: bool| {
            let (mut obj, _) = query::decode(&q);
            let hot_found = idx.classify_all(&mut obj.entries);
            let mut hot = if use_hot { hot_found } else { Hot::ALL };
            let mut root = Value::Obj(obj);
            let mut seen = Vec::new();
            for (op, p) in &ops {
                let (sel, exact) = (&sels[*p], &sels[4 + p % 4]);
                let one = std::slice::from_ref(sel);
                let changed = match op {
                    0 => walk::remove(&mut root, Some(&mut hot), one, false, &idx),
                    1 => walk::set(&mut root, Some(&mut hot), exact, Value::str("set"), &idx),
                    2 => walk::rename(&mut root, Some(&mut hot), &renames[p % 4], "ep.ab"),
                    _ => walk::visit(&mut root, Some(&mut hot), one, false, &idx, &mut |k, _| {
                        seen.push(k.to_string());
                        false
                    }),
                };
                seen.push(changed.to_string());
            }
            let Value::Obj(o) = root else { unreachable!() };
            let fields: Vec<(String, String)> = o
                .entries
                .iter()
                .map(|e| (e.key.to_string(), e.value.as_str().unwrap_or_default().into_owned()))
                .collect();
            (fields, seen)
        };
        prop_assert_eq!(run(true), run(false));
    }
}

#[test]
fn unescape_is_used_consistently_for_keys() {
    // `ep%2Eemail` is the key `ep.email`: selectors match decoded keys.
    let (obj, _) = query::decode("ep%2Eemail=a&ep.x=b");
    let mut root = Value::Obj(obj);
    let sel = Selector::parse("ep.email").unwrap();
    assert!(walk::remove(
        &mut root,
        Some(&mut Hot::default()),
        &[sel],
        false,
        &KeyIndex::EMPTY
    ));
    let Value::Obj(o) = &root else { unreachable!() };
    assert_eq!(o.entries.len(), 1);
    assert_eq!(o.entries[0].key, Cow::Borrowed("ep.x"));
}
