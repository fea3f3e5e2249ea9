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

mod checks;
mod leak;
mod node;
mod vendor;

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
    checks::check_posthog(&posthog.seen(), &context);
    checks::check_plausible(&plausible.seen(), &shop_origin, &context);
    checks::check_segment(&segment.seen(), &shop_origin, &context);
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
