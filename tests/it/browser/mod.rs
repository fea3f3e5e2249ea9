//! End-to-end in a real browser: Debian's Chromium (headless, driven by playwright-core from
//! `tests/browser/run.mjs`) opens a local shop page that loads the real client libraries of
//! PostHog, Plausible and Segment from npm, configured to the tracking host
//! `metrics.shop.example`. tagway serves that host over TLS with the shipped presets
//! (`rules/30-posthog.toml`, `31-plausible.toml`, `33-segment.toml`), relaying to mock vendors
//! on loopback that answer as the vendors do. The page plants personal data where real sites
//! leak it; the test checks that every event reaches its vendor in a form the vendor accepts,
//! and that none of the planted values reaches any vendor in any form.
//!
//! Needs `/usr/bin/chromium`, `node` and the npm packages of `tests/browser` (installed with
//! `npm ci` when missing). `TAGWAY_SKIP_BROWSER=1` skips it, loudly; nothing else does.

mod leak;
mod node;
mod vendor;

use std::collections::BTreeSet;

use base64::Engine;
use serde_json::Value;

use crate::support::mock::Seen;
use crate::support::*;

const EMAIL: &str = "jane.doe@example.com";
const PHONE: &str = "+1 555 123 4567";
const TOKEN: &str = "tok8sK2pQ9xL4mZw";
/// Every planted value, and the forms of it a careless relay would pass on.
const PLANTED: &[&str] = &[
    EMAIL,
    "jane.doe",
    PHONE,
    "5551234567",
    "555 123 4567",
    TOKEN,
    "Jane Doe",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_client_libraries_deliver_every_event_and_no_planted_personal_data() {
    if !node::preflight() {
        return;
    }
    let ca = TestCa::new();
    let certs = tempfile::tempdir().unwrap();
    let tracking = ca.write_pair(
        certs.path(),
        "metrics.shop.example",
        &["metrics.shop.example"],
    );
    let shop = ca.write_pair(certs.path(), "shop.example", &["shop.example"]);
    let (posthog, plausible, segment) = (
        vendor::posthog().await,
        vendor::plausible().await,
        vendor::segment().await,
    );
    let site = r#"
[site]
hosts = ["metrics.shop.example"]
origins = ["https://shop.example:*"]
"#;
    let mut o = GwOptions::new(site)
        .upstream("posthog", posthog.url())
        .upstream("posthog-assets", posthog.url())
        .upstream("plausible", plausible.url())
        .upstream("segment-cdn", segment.url())
        .upstream("segment-api", segment.url());
    o.tls = true;
    o.certs = Some(certs.path().to_path_buf());
    o.files = ["30-posthog.toml", "31-plausible.toml", "33-segment.toml"]
        .iter()
        .map(|n| {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("rules")
                .join(n);
            (n.to_string(), std::fs::read_to_string(path).unwrap())
        })
        .collect();
    let gw = Gw::start(o).await;
    let port = gw.https.unwrap().port();

    let args: Vec<String> = [
        ("--tracking-port", port.to_string()),
        (
            "--spki",
            format!("{},{}", tracking.spki_sha256, shop.spki_sha256),
        ),
        (
            "--shop-cert",
            certs.path().join("shop.example.crt").display().to_string(),
        ),
        (
            "--shop-key",
            certs.path().join("shop.example.key").display().to_string(),
        ),
        ("--email", EMAIL.into()),
        ("--phone", PHONE.into()),
        ("--token", TOKEN.into()),
    ]
    .into_iter()
    .flat_map(|(k, v)| [k.to_string(), v])
    .collect();
    let report = tokio::task::spawn_blocking(move || node::run(&args))
        .await
        .unwrap();
    let shop_origin = report["shop"].as_str().unwrap().to_string();
    let context = format!(
        "browser report: {}",
        serde_json::to_string_pretty(&report).unwrap()
    );

    // The page ran, and the browser talked to nobody but the shop and its tracking host.
    for lib in report["libs"].as_array().unwrap() {
        assert!(
            lib.get("ok").is_some(),
            "a client library failed: {lib}\n{context}"
        );
    }
    for r in report["requests"].as_array().unwrap() {
        let url: http::Uri = r["url"].as_str().unwrap().parse().unwrap();
        assert!(
            matches!(url.host(), Some("shop.example" | "metrics.shop.example")),
            "the browser contacted {url} directly\n{context}"
        );
    }
    assert!(
        report["failed"].as_array().unwrap().is_empty(),
        "requests failed in the browser\n{context}"
    );
    // The planted values did reach tagway (so their absence below means something).
    let into_tagway: usize = report["tracking"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            let seen = browser_request(r);
            leak::find(&leak::texts(&seen), EMAIL).is_some()
        })
        .count();
    assert!(
        into_tagway >= 3,
        "the page should send the email to tagway in several requests, found {into_tagway}\n{context}"
    );

    // Nothing personal reached any vendor, in any form; nor a client address or a cookie.
    let mut leaks = Vec::new();
    for s in posthog
        .seen()
        .iter()
        .chain(&plausible.seen())
        .chain(&segment.seen())
    {
        let texts = leak::texts(s);
        for needle in PLANTED {
            if let Some(how) = leak::find(&texts, needle) {
                leaks.push(format!("{} {}: {needle:?} {how}", s.method, s.uri.path()));
            }
        }
        for h in [
            "x-forwarded-for",
            "forwarded",
            "x-real-ip",
            "cookie",
            "authorization",
        ] {
            assert!(
                !s.headers.contains_key(h),
                "{} {} carries {h} to the vendor (the client is on loopback)",
                s.method,
                s.uri
            );
        }
        if let Some(r) = s.headers.get("referer") {
            assert_eq!(
                r.to_str().unwrap(),
                format!("{shop_origin}/"),
                "Referer cut to the origin"
            );
        }
    }
    assert!(
        leaks.is_empty(),
        "planted values reached the vendors:\n{}",
        leaks.join("\n")
    );

    // Every event arrived, in a form the vendor accepts, cleaned as the presets say.
    check_posthog(&posthog.seen(), &context);
    check_plausible(&plausible.seen(), &shop_origin, &context);
    check_segment(&segment.seen(), &shop_origin, &context);
    gw.stop().await;
}

/// A request as the browser sent it to tagway (from the report), for the leak search.
fn browser_request(r: &Value) -> Seen {
    let body = base64::engine::general_purpose::STANDARD
        .decode(r["body"].as_str().unwrap_or_default())
        .unwrap();
    Seen {
        method: r["method"].as_str().unwrap().parse().unwrap(),
        uri: r["url"].as_str().unwrap().parse().unwrap(),
        version: http::Version::HTTP_11,
        headers: http::HeaderMap::new(),
        body: body.into(),
    }
}

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

fn check_posthog(seen: &[Seen], context: &str) {
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

fn check_plausible(seen: &[Seen], shop: &str, context: &str) {
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

fn check_segment(seen: &[Seen], shop: &str, context: &str) {
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
