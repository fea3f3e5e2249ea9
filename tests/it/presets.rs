//! The shipped vendor presets against the captured requests in `tests/fixtures/vendors/`: each
//! fixture goes through the same path as `tagway explain` (route → decode → rules → scan →
//! encode → header policy) with the shipped `rules/`, and the personal values planted in it —
//! listed here per fixture, not left to the scan to decide — must not leave in any encoding.
//! Also: non-public client addresses never leave as a location, and beacons for ids the site
//! does not list are answered in the vendor's place and counted.

use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use http_body_util::Full;
use tagway::config::{RulesSource, load};
use tagway::inspect::{self, Inspection, Request};
use tagway::ruletest::leaks;

use crate::support::client::req;
use crate::support::*;

/// The client address every fixture is sent from: its full form must never leave.
const CLIENT: &str = "203.0.113.77";

/// One request of a fixture file: method, URL, headers, body.
struct Fixture {
    method: Method,
    url: String,
    headers: Vec<(String, String)>,
    body: String,
}

/// Reads the request(s) of a fixture file (`method:`, `url:`, `headers:` with indented
/// `Name: value` lines, `body…:` then the body's lines up to the next `key:` line; GA4 batch
/// lines are joined with CRLF as gtag sends them).
fn parse(text: &str) -> Vec<Fixture> {
    let key = regex::Regex::new(r"^[A-Za-z][A-Za-z _-]*(\s*\([^)]*\))?:").unwrap();
    let mut out: Vec<Fixture> = Vec::new();
    let mut lines = text.lines().peekable();
    let mut in_headers = false;
    while let Some(line) = lines.next() {
        if let Some(m) = line.strip_prefix("method:") {
            out.push(Fixture {
                method: m.trim().parse().unwrap(),
                url: String::new(),
                headers: vec![],
                body: String::new(),
            });
            in_headers = false;
        } else if let Some(u) = line.strip_prefix("url:") {
            out.last_mut().unwrap().url = u.trim().to_string();
        } else if line.starts_with("headers:") {
            in_headers = true;
        } else if in_headers && line.starts_with("  ") && line.contains(':') {
            let (k, v) = line.trim().split_once(':').unwrap();
            // Fixture notes after the value: "text/plain   (assumed …)".
            let v = v.split("   (").next().unwrap().trim();
            out.last_mut()
                .unwrap()
                .headers
                .push((k.to_string(), v.to_string()));
        } else if line.starts_with("body") {
            in_headers = false;
            let inline = line.split_once(':').map(|x| x.1.trim()).unwrap_or("");
            let mut body: Vec<&str> = Vec::new();
            if !inline.is_empty() && !inline.starts_with('(') {
                body.push(inline);
            }
            while let Some(next) = lines.peek() {
                if key.is_match(next) {
                    break;
                }
                body.push(lines.next().unwrap());
            }
            let f = out.last_mut().unwrap();
            let sep = if f.url.contains("/g/collect") {
                "\r\n"
            } else {
                "\n"
            };
            f.body = body
                .iter()
                .filter(|l| !l.trim().is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(sep);
            if f.url.contains("/g/collect") && !f.body.is_empty() {
                f.body.push_str("\r\n");
            }
        } else if key.is_match(line) {
            in_headers = false;
        }
    }
    out
}

fn explain(rules: &tagway::ruleset::RuleSet, f: &Fixture, path_prefix: &str) -> Inspection {
    let url = match f.url.split_once("://") {
        Some((_, rest)) => rest[rest.find('/').unwrap()..].to_string(),
        None => f.url.clone(),
    };
    let mut r = Request::from_url(f.method.clone(), &format!("{path_prefix}{url}")).unwrap();
    for (k, v) in &f.headers {
        r.headers.append(
            HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    r.body = Bytes::from(f.body.clone());
    r.client_ip = CLIENT.parse().unwrap();
    inspect::inspect(rules, &r, &mut |_, _| {}).unwrap_or_else(|e| panic!("{}: {e}", f.url))
}

/// Fixture file, request index, the route it must reach, a path prefix for server APIs relayed
/// under a prefix of ours, and the personal values planted in it.
const CASES: &[(&str, usize, &str, &str, &[&str])] = &[
    ("ga4-gtag-js-1", 0, "ga4-gtag-js", "", &[]),
    ("ga4-collect-1", 0, "ga4-collect", "", &[]),
    ("ga4-collect-2", 0, "ga4-collect", "", &[]),
    ("ga4-collect-3", 0, "ga4-collect", "", &[]),
    (
        "ga4-collect-4",
        0,
        "ga4-collect",
        "",
        &[
            "jane.doe@example.com",
            "jane.doe",
            "abc123",
            "+15551234567",
            "customer-98765",
        ],
    ),
    (
        "ga4-mp-collect-1",
        0,
        "ga4-mp-collect",
        "",
        &["customer-98765"],
    ),
    ("meta-fbevents-1", 0, "meta-fbevents-js", "", &[]),
    ("meta-fbevents-1", 1, "meta-config-js", "", &[]),
    ("meta-tr-1", 0, "meta-tr", "", &[]),
    (
        "meta-tr-2",
        0,
        "meta-tr",
        "",
        &["jane.doe@example.com", "sha256-hex-of-jane.doe"],
    ),
    (
        "meta-capi-1",
        0,
        "meta-capi",
        "/meta-capi",
        &["jane.doe@example.com", "203.0.113.7\"", "sha256 of jane"],
    ),
    (
        "tiktok-pixel-1",
        0,
        "tiktok-pixel",
        "",
        &["jane.doe@example.com"],
    ),
    (
        "tiktok-pixel-2",
        0,
        "tiktok-pixel",
        "",
        &["\"external_id\":\"123456\""],
    ),
    (
        "tiktok-events-api-1",
        0,
        "tiktok-events-api",
        "/tiktok-events",
        &["\"203.0.113.7\""],
    ),
    (
        "linkedin-wa-1",
        0,
        "linkedin-wa",
        "",
        &["jane.doe@example.com"],
    ),
    ("linkedin-collect-1", 0, "linkedin-collect", "", &[]),
    (
        "posthog-capture-api-1",
        0,
        "posthog-capture",
        "/ingest",
        &["jane.doe@example.com", "203.0.113.7"],
    ),
    (
        "posthog-flags-1",
        0,
        "posthog-flags",
        "/ingest",
        &["jane.doe@example.com"],
    ),
    (
        "plausible-event-1",
        0,
        "plausible-event",
        "",
        &["jane.doe@example.com", "203.0.113.7"],
    ),
    (
        "segment-track-1",
        0,
        "segment-api",
        "",
        &["jane.doe@example.com", "customer-98765"],
    ),
    (
        "segment-batch-1",
        0,
        "segment-batch",
        "",
        &[
            "jane.doe@example.com",
            "+15551234567",
            "Jane Doe",
            "customer-98765",
            "203.0.113.7",
        ],
    ),
    (
        "bing-uet-1",
        0,
        "microsoft-uet",
        "",
        &["jane.doe@example.com"],
    ),
    (
        "matomo-php-1",
        0,
        "matomo-php",
        "",
        &["jane.doe@example.com"],
    ),
    ("matomo-php-2", 0, "matomo-php", "", &["customer-98765"]),
    (
        "matomo-bulk-1",
        0,
        "matomo-php",
        "",
        &["cip=203.0.113.7", "FAKE_TOKEN_32_CHARS_000000000000"],
    ),
    (
        "snowplow-tp2-1",
        0,
        "snowplow-tp2",
        "",
        &[
            "jane.doe@example.com",
            "00000000-0000-4000-8000-00000000beef",
        ],
    ),
    (
        "snowplow-i-1",
        0,
        "snowplow-pixel",
        "",
        &["jane.doe@example.com", "customer-98765"],
    ),
    (
        "umami-send-1",
        0,
        "umami-send",
        "",
        &["jane.doe@example.com"],
    ),
    ("mixpanel-track-1", 0, "mixpanel-track", "", &[]),
    (
        "amplitude-httpapi-1",
        0,
        "amplitude-httpapi",
        "",
        &["jane.doe@example.com", "customer-98765", "$remote"],
    ),
];

#[test]
fn every_fixture_of_the_presets_leaves_without_its_personal_data() {
    let rules = load(&RulesSource::Dir("rules".into()), &[]).expect("shipped rules load");
    let mut failures = Vec::new();
    for (file, i, route, prefix, planted) in CASES {
        let text = std::fs::read_to_string(format!("tests/fixtures/vendors/{file}.txt")).unwrap();
        let fixtures = parse(&text);
        let f = &fixtures[*i];
        let ins = explain(&rules, f, prefix);
        if ins.route != *route {
            failures.push(format!(
                "{file}: reached route {}, expected {route}",
                ins.route
            ));
            continue;
        }
        // Control: each planted value is in the request as received (decoded fields, or the
        // raw text), so that its absence below means the rules removed it.
        let received = ins.steps.first().map_or(String::new(), |s| {
            s.fields
                .iter()
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        });
        let raw = format!("{} {:?} {} {received}", f.url, f.headers, f.body);
        // Page URLs inside fields are percent-encoded once more (`%2540`).
        let once = tagway::decode::query::unescape(&raw).into_owned();
        let twice = tagway::decode::query::unescape(&once).into_owned();
        for needle in planted.iter().copied() {
            if ![&raw, &once, &twice].iter().any(|h| h.contains(needle)) {
                failures.push(format!(
                    "{file}: {needle:?} is not in the request, so the case proves nothing"
                ));
            }
        }
        let Some(sent) = &ins.sent else {
            failures.push(format!("{file}: not forwarded ({:?})", ins.dropped));
            continue;
        };
        for needle in planted.iter().copied().chain([CLIENT]) {
            if let Some(how) = leaks(&ins, needle) {
                failures.push(format!("{file}: {needle:?} leaves ({how})"));
            }
        }
        // Bodies tagway re-encodes as base64 (Mixpanel data=, LinkedIn base64+gzip) are
        // checked decoded as well, whole.
        let body = String::from_utf8_lossy(&sent.body).into_owned();
        let mut plain = vec![body.clone()];
        let b64 = body.strip_prefix("data=").unwrap_or(&body);
        let b64 = tagway::decode::query::unescape(b64);
        if let Some((bytes, _)) = tagway::decode::wrap::base64_decode(b64.trim()) {
            let inner = tagway::decode::wrap::decompress(
                tagway::decode::wrap::Compression::Gzip,
                &bytes,
                1 << 20,
            )
            .unwrap_or(bytes);
            plain.push(String::from_utf8_lossy(&inner).into_owned());
        }
        for needle in planted.iter().copied() {
            if plain.iter().any(|p| p.contains(needle)) {
                failures.push(format!(
                    "{file}: {needle:?} leaves inside the re-encoded body"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_fixture_reader_reads_bodies_and_headers() {
    let f =
        &parse(&std::fs::read_to_string("tests/fixtures/vendors/ga4-collect-2.txt").unwrap())[0];
    assert_eq!(f.method, Method::POST);
    assert_eq!(
        f.body,
        "en=scroll&epn.percent_scrolled=90\r\nen=user_engagement&_et=5123\r\n"
    );
    assert_eq!(
        f.headers,
        vec![(
            "Content-Type".to_string(),
            "text/plain;charset=UTF-8".to_string()
        )]
    );
    let two =
        parse(&std::fs::read_to_string("tests/fixtures/vendors/meta-fbevents-1.txt").unwrap());
    assert_eq!(two.len(), 2);
    let j = &parse(&std::fs::read_to_string("tests/fixtures/vendors/umami-send-1.txt").unwrap())[0];
    assert!(
        j.body.starts_with("{\"type\":\"event\"") && j.body.ends_with("}}}"),
        "{}",
        j.body
    );
}

/// `{client_ip_anonymized}` and `forward_ip = "anonymized"` refuse every address that cannot be
/// located: none leaves as GA4 `_uip`, Amplitude `ip` or `X-Forwarded-For`.
#[test]
fn non_public_client_addresses_never_leave_as_a_location() {
    let rules = load(&RulesSource::Dir("rules".into()), &[]).unwrap();
    for ip in [
        "10.1.2.3",
        "172.16.5.4",
        "192.168.1.20",
        "127.0.0.1",
        "169.254.10.20",
        "100.64.1.2",
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:192.168.1.20",
    ] {
        let client: IpAddr = ip.parse().unwrap();
        let mut ga4 =
            Request::from_url(Method::GET, "/g/collect?v=2&tid=G-TEST123456&en=page_view").unwrap();
        ga4.client_ip = client;
        let ins = inspect::inspect(&rules, &ga4, &mut |_, _| {}).unwrap();
        let sent = ins.sent.as_ref().unwrap();
        assert!(!sent.url.contains("_uip"), "{ip}: {}", sent.url);

        let mut amp = Request::from_url(Method::POST, "/2/httpapi").unwrap();
        amp.client_ip = client;
        amp.headers
            .insert("content-type", HeaderValue::from_static("application/json"));
        amp.body = Bytes::from_static(
            br#"{"api_key":"K","events":[{"device_id":"d","event_type":"x","ip":"$remote"}]}"#,
        );
        let ins = inspect::inspect(&rules, &amp, &mut |_, _| {}).unwrap();
        let body = String::from_utf8_lossy(&ins.sent.as_ref().unwrap().body).into_owned();
        assert!(!body.contains("\"ip\""), "{ip}: {body}");

        let mut matomo = Request::from_url(Method::GET, "/matomo.php?idsite=1&rec=1").unwrap();
        matomo.client_ip = client;
        let ins = inspect::inspect(&rules, &matomo, &mut |_, _| {}).unwrap();
        let headers = &ins.sent.as_ref().unwrap().headers;
        assert!(
            !headers.iter().any(|(k, _)| k == "x-forwarded-for"),
            "{ip}: {headers:?}"
        );
    }
    // A public address leaves truncated, in each of the three places.
    let mut ga4 = Request::from_url(Method::GET, "/g/collect?v=2&tid=G-1&en=page_view").unwrap();
    ga4.client_ip = "2001:db8:1234:5678::9".parse().unwrap();
    let ins = inspect::inspect(&rules, &ga4, &mut |_, _| {}).unwrap();
    let url = ins.sent.unwrap().url;
    let uip = tagway::decode::query::unescape(url.split("_uip=").nth(1).unwrap()).into_owned();
    assert_eq!(uip, "2001:db8:1234::", "IPv6 cut to /48");
}

const IDS_SITE: &str = r#"
[site]
origins = ["https://shop.example"]

[site.ids]
ga4 = ["G-TEST123456"]
meta = ["1234567890123456"]
"#;

fn preset(file: &str) -> String {
    std::fs::read_to_string(format!("rules/{file}")).unwrap()
}

/// Beacons for other ids are answered in the vendor's place, never reach it, and are counted;
/// the site's own ids pass.
#[tokio::test]
async fn beacons_for_ids_the_site_does_not_list_are_answered_not_relayed() {
    let mock = Mock::plain().await;
    let rules = format!(
        "{IDS_SITE}\n{}\n{}",
        preset("10-ga4.toml"),
        preset("20-meta.toml")
    );
    let gw = Gw::start(
        GwOptions::new(&rules)
            .upstream("google-analytics", mock.url())
            .upstream("facebook", mock.url()),
    )
    .await;

    let r = get(gw.http, "/g/collect?v=2&tid=G-OTHER99999&en=page_view").await;
    assert_eq!(r.status, 204);
    let r = get(gw.http, "/g/collect?v=2&en=page_view").await;
    assert_eq!(
        r.status, 204,
        "a hit without an id is not the site's either"
    );
    // Batches: every line's id counts, the shared query's too.
    let batch = req("POST", "/g/collect?v=2&tid=G-TEST123456")
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(
            b"en=a\r\nen=b&tid=G-OTHER99999\r\n",
        )))
        .unwrap();
    let r = send_plain(gw.http, batch).await;
    assert_eq!(r.status, 204);
    let r = get(gw.http, "/tr/?id=999&ev=PageView").await;
    assert_eq!(r.status, 200, "Meta's own answer");
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(
        mock.count(),
        0,
        "nothing for a foreign id reached the vendor"
    );
    assert_eq!(gw.gw.metrics.dropped_foreign_id.load(Relaxed), 4);
    assert!(
        gw.gw
            .metrics
            .render()
            .contains("tagway_dropped_foreign_id_total 4")
    );

    let r = get(gw.http, "/g/collect?v=2&tid=G-TEST123456&en=page_view").await;
    assert_eq!(r.status, 204);
    let r = get(gw.http, "/tr/?id=1234567890123456&ev=PageView").await;
    assert_eq!(r.status, 204, "the mock's answer, relayed");
    assert_eq!(mock.count(), 2, "the site's own ids are relayed");
    assert_eq!(gw.gw.metrics.dropped_foreign_id.load(Relaxed), 4);
    gw.stop().await;
}

#[test]
fn id_lists_warn_when_empty_or_unused_and_misuse_is_a_load_error() {
    let shipped = load(&RulesSource::Dir("rules".into()), &[]).unwrap();
    assert!(
        shipped
            .warnings
            .iter()
            .any(|w| w.contains("beacons for any id are relayed")
                && w.contains("ga4 (ga4-gtag-js, ga4-collect, ga4-mp-collect)")),
        "{:?}",
        shipped.warnings
    );
    let typo = format!(
        "[site]\n[site.ids]\ngaa4 = [\"G-1\"]\n{}",
        preset("10-ga4.toml")
    );
    let set = load(
        &RulesSource::Texts(vec![tagway::config::RuleText {
            name: "t.toml".into(),
            text: typo,
        }]),
        &[],
    )
    .unwrap();
    assert!(
        set.warnings
            .iter()
            .any(|w| w.contains("[site.ids] gaa4: no route names this list")
                && w.contains("did you mean `ga4`")),
        "{:?}",
        set.warnings
    );
    let half = crate::support::gateway::rules(
        "[[route]]\nname = \"r\"\npath = \"/r\"\nupstream = \"v\"\nid_field = \"tid\"\n",
    );
    let e = load(
        &RulesSource::Texts(vec![tagway::config::RuleText {
            name: "t.toml".into(),
            text: half,
        }]),
        &[],
    )
    .unwrap_err();
    assert!(e.to_string().contains("id_field needs id_list"), "{e}");
    let empty_id = load(
        &RulesSource::Texts(vec![tagway::config::RuleText {
            name: "t.toml".into(),
            text: "[site]\n[site.ids]\nga4 = [\"G-1\", \" \"]\n".into(),
        }]),
        &[],
    )
    .unwrap_err();
    assert!(
        empty_id.to_string().contains("t.toml:3:")
            && empty_id
                .to_string()
                .contains("[site.ids] ga4: \" \" is not an id"),
        "{empty_id}"
    );
}

/// Every shipped preset says at its top what it does (routes, consent, client address, the
/// site's ids) and carries its own tests.
#[test]
fn every_preset_is_documented_at_its_top_and_tested() {
    let mut presets = 0;
    for e in std::fs::read_dir("rules").unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".toml") || name == "00-site.toml" {
            continue;
        }
        presets += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        let header: String = text
            .lines()
            .take_while(|l| l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        for needle in [
            "Routes:",
            "What leaves",
            "Consent",
            "Client IP",
            "The site's ids",
        ] {
            assert!(
                header.contains(needle),
                "{name}: no {needle:?} in its header"
            );
        }
        assert!(text.contains("\n[[test]]\n"), "{name} carries no [[test]]");
    }
    assert_eq!(presets, 14, "one preset per vendor of the README's table");
}
