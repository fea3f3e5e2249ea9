//! What each vendor must have received: every expected event, decoded as the vendor decodes
//! it, with ids hashed, page URLs cut and personal properties gone, as the presets say.

use std::collections::BTreeSet;

use base64::Engine;
use serde_json::Value;

use super::vendor;
use crate::support::mock::Seen;

fn is_hash(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn query(s: &Seen, key: &str) -> Option<String> {
    url_query(s.uri.query().unwrap_or_default(), key)
}

fn url_query(q: &str, key: &str) -> Option<String> {
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// The events of a PostHog request, decoded as PostHog decodes them (gzip, marked by
/// `compression=gzip-js` or only by its magic bytes; `base64`: a form whose `data` is base64 of
/// JSON; otherwise JSON).
fn posthog_events(s: &Seen) -> Vec<Value> {
    let gzip = s.body.starts_with(&[0x1f, 0x8b]);
    let json: Vec<u8> = match query(s, "compression").as_deref() {
        _ if gzip => {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&s.body[..]), &mut out)
                .unwrap_or_else(|e| panic!("PostHog could not gunzip {}: {e}", s.uri));
            out
        }
        Some("base64") => {
            let form = String::from_utf8_lossy(&s.body).into_owned();
            let data = url_query(&form, "data").expect("a data= field");
            base64::engine::general_purpose::STANDARD
                .decode(data)
                .unwrap()
        }
        _ => s.body.to_vec(),
    };
    match serde_json::from_slice::<Value>(&json)
        .unwrap_or_else(|e| panic!("PostHog could not parse {}: {e}", s.uri))
    {
        Value::Array(a) => a,
        Value::Object(o) if o.contains_key("batch") => o["batch"].as_array().unwrap().clone(),
        v => vec![v],
    }
}

pub fn check_posthog(seen: &[Seen], context: &str) {
    assert!(
        seen.iter().any(|s| s.uri.path() == "/flags/"),
        "posthog-js asked for its flags through tagway\n{context}"
    );
    let events: Vec<Value> = seen
        .iter()
        .filter(|s| ["/e/", "/i/v0/e/", "/batch/"].contains(&s.uri.path()))
        .flat_map(posthog_events)
        .collect();
    let names: BTreeSet<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    for want in ["$pageview", "$identify", "checkout completed", "flushed"] {
        assert!(
            names.contains(want),
            "PostHog got no {want:?} event (got {names:?})\n{context}"
        );
    }
    let mut ids = BTreeSet::new();
    for e in &events {
        let p = &e["properties"];
        assert_eq!(
            p["token"],
            vendor::TOKEN,
            "every event names the project: {e}"
        );
        assert!(p.get("$ip").is_none(), "no $ip for a loopback client: {e}");
        if e["event"] != "$pageview" {
            assert!(
                is_hash(&p["distinct_id"]),
                "the email id leaves hashed: {e}"
            );
            ids.insert(p["distinct_id"].as_str().unwrap().to_string());
        }
        if let Some(url) = p["$current_url"].as_str() {
            assert!(
                url.ends_with("/checkout?utm_source=newsletter&utm_campaign=spring"),
                "{url}"
            );
        }
    }
    assert_eq!(ids.len(), 1, "one user, one hashed id: {ids:?}");
    let identify = events.iter().find(|e| e["event"] == "$identify").unwrap();
    let set = &identify["$set"];
    assert!(
        is_hash(&set["email"]) && is_hash(&set["phone"]),
        "person email and phone hashed: {identify}"
    );
    assert!(set.get("name").is_none(), "person name dropped: {identify}");
    let checkout = events
        .iter()
        .find(|e| e["event"] == "checkout completed")
        .unwrap();
    let p = &checkout["properties"];
    assert_eq!(p["plan"], "pro", "{checkout}");
    assert!(
        p.get("email").is_none() && p.get("phone").is_none(),
        "{checkout}"
    );
    assert!(
        p["note"]
            .as_str()
            .is_some_and(|n| n.starts_with("call me at ")),
        "{checkout}"
    );
}

pub fn check_plausible(seen: &[Seen], shop: &str, context: &str) {
    let events: Vec<Value> = seen
        .iter()
        .filter(|s| s.uri.path() == "/api/event")
        .map(|s| serde_json::from_slice(&s.body).expect("Plausible takes JSON"))
        .collect();
    let names: BTreeSet<&str> = events.iter().filter_map(|e| e["n"].as_str()).collect();
    assert_eq!(names, BTreeSet::from(["pageview", "Signup"]), "{context}");
    for e in &events {
        assert_eq!(e["d"], "shop.example", "{e}");
        assert_eq!(
            e["u"],
            format!("{shop}/checkout?utm_source=newsletter&utm_campaign=spring"),
            "page URL cut to campaign parameters: {e}"
        );
    }
    let signup = events.iter().find(|e| e["n"] == "Signup").unwrap();
    let props: Value = serde_json::from_str(signup["p"].as_str().unwrap()).unwrap();
    assert_eq!(props, serde_json::json!({"plan": "pro"}), "{signup}");
}

pub fn check_segment(seen: &[Seen], shop: &str, context: &str) {
    assert!(
        seen.iter()
            .any(|s| s.uri.path() == format!("/v1/projects/{}/settings", vendor::WRITE_KEY)),
        "analytics-next fetched its settings through tagway\n{context}"
    );
    let mut types = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for s in seen.iter().filter(|s| s.method == http::Method::POST) {
        let body: Value = serde_json::from_slice(&s.body).expect("Segment takes JSON");
        let events = match body.get("batch") {
            Some(b) => b.as_array().unwrap().clone(),
            None => vec![body.clone()],
        };
        for e in events {
            let t = e["type"].as_str().unwrap_or_default().to_string();
            assert!(
                s.uri.path() == "/v1/b" || s.uri.path() == format!("/v1/{}", &t[..1]),
                "{} carries a {t} event",
                s.uri
            );
            assert_eq!(e["writeKey"], vendor::WRITE_KEY, "{e}");
            assert!(
                e["messageId"].is_string() && e["anonymousId"].is_string(),
                "{e}"
            );
            assert!(
                e["context"].get("ip").is_none(),
                "no context.ip for a loopback client: {e}"
            );
            assert_eq!(
                e["context"]["page"]["url"],
                format!("{shop}/checkout?utm_source=newsletter&utm_campaign=spring"),
                "{e}"
            );
            if t != "page" {
                assert!(is_hash(&e["userId"]), "userId hashed: {e}");
                ids.insert(e["userId"].as_str().unwrap().to_string());
            }
            if t == "identify" {
                assert!(
                    is_hash(&e["traits"]["email"]) && is_hash(&e["traits"]["phone"]),
                    "{e}"
                );
                assert!(e["traits"].get("name").is_none(), "{e}");
            }
            if t == "track" {
                assert_eq!(e["properties"]["order_id"], "1001", "{e}");
                assert!(e["properties"].get("email").is_none(), "{e}");
            }
            types.insert(t);
        }
    }
    assert_eq!(
        types,
        BTreeSet::from(["page".to_string(), "identify".into(), "track".into()]),
        "{context}"
    );
    assert_eq!(ids.len(), 1, "one user, one hashed id: {ids:?}");
}
