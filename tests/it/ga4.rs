//! GA4 through the gateway with the shipped rule files (`rules/00-site.toml`,
//! `rules/10-ga4.toml`) and hits built from the fixtures in `tests/fixtures/vendors/ga4-*`:
//! a single hit, a batch, consent-denied pings and the gtag.js script. Google's side is a
//! mock; what it receives must be in the form GA4 accepts and carry none of the personal data
//! planted in the hits.

use base64::Engine as _;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::mock::Seen;
use crate::support::*;

const EMAIL: &str = "jane.doe@example.com";
const PHONE: &str = "+15551234567";
const TOKEN: &str = "tok9f8e7d6c5b4a";

/// A fixture's method, URL and body.
struct Fixture {
    method: String,
    url: String,
    body: String,
}

fn fixture(name: &str) -> Fixture {
    let text = std::fs::read_to_string(format!("tests/fixtures/vendors/{name}.txt")).unwrap();
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_else(|| panic!("{name}: no {k}"))
            .trim()
            .to_string()
    };
    // A body is either inline (`body: (empty)`) or the lines after `body (…):` up to the
    // next `key:` line.
    let mut body = Vec::new();
    let mut lines = text.lines().skip_while(|l| !l.starts_with("body"));
    if let Some(head) = lines.next()
        && head.trim_end().ends_with(':')
    {
        body.extend(lines.take_while(|l| !l.contains(": ") && !l.ends_with(':')));
    }
    Fixture {
        method: field("method:"),
        url: field("url:"),
        body: body.join("\r\n"),
    }
}

/// The fixture's path and query, as a browser sends it to the tracking host.
fn path_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    &rest[rest.find('/').unwrap()..]
}

fn shipped_rules() -> String {
    ["rules/00-site.toml", "rules/10-ga4.toml"]
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

async fn ga4(collect: &Mock, tags: &Mock) -> Gw {
    Gw::start(
        GwOptions::new(&shipped_rules())
            .upstream("google-analytics", collect.url())
            .upstream("googletagmanager", tags.url()),
    )
    .await
}

async fn send_hit(gw: &Gw, method: &str, path: &str, body: &str) -> Reply {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("origin", "https://localhost")
        .header(
            "referer",
            format!("https://localhost/account?email={EMAIL}"),
        )
        .header(
            "cookie",
            format!("_ga=GA1.1.1234567890.1700000000; session={TOKEN}"),
        )
        .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0");
    if !body.is_empty() {
        b = b.header("content-type", "text/plain;charset=UTF-8");
    }
    send_plain(
        gw.http,
        b.body(Full::new(Bytes::from(body.to_string()))).unwrap(),
    )
    .await
}

/// Every form a value could take on the way out.
fn forms(v: &str) -> Vec<String> {
    let once: String =
        percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string();
    let b64 = base64::engine::general_purpose::STANDARD.encode(v);
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    vec![
        v.to_string(),
        once.clone(),
        once.replace('%', "%25"),
        b64,
        b64url,
    ]
}

/// What the vendor received carries none of the planted values, in any form, anywhere
/// (target, headers, body; also after percent-decoding once and twice).
fn assert_clean(seen: &Seen) {
    let target = seen.uri.to_string();
    let headers: String = seen
        .headers
        .iter()
        .map(|(n, v)| format!("{n}: {}\n", String::from_utf8_lossy(v.as_bytes())))
        .collect();
    let body = String::from_utf8_lossy(&seen.body).into_owned();
    let all = format!("{target}\n{headers}\n{body}");
    let once = tagway::decode::query::unescape(&all).into_owned();
    let twice = tagway::decode::query::unescape(&once).into_owned();
    for planted in [EMAIL, "jane.doe", PHONE, "555 123 4567", TOKEN] {
        for f in forms(planted) {
            for (what, text) in [
                ("as sent", &all),
                ("decoded", &once),
                ("decoded twice", &twice),
            ] {
                assert!(
                    !text.contains(&f),
                    "{planted:?} left as {f:?} ({what}):\n{all}"
                );
            }
        }
    }
}

/// The query of a hit as GA4 accepts it: protocol 2, the measurement id, a client id.
fn assert_ga4_form(seen: &Seen) -> Vec<(String, String)> {
    assert_eq!(seen.uri.path(), "/g/collect");
    let q = seen.uri.query().unwrap_or("");
    let pairs: Vec<(String, String)> = q
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| {
            (
                k.to_string(),
                tagway::decode::query::unescape(v).into_owned(),
            )
        })
        .collect();
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("v"), Some("2"), "{q}");
    assert_eq!(get("tid"), Some("G-TEST123456"), "{q}");
    assert_eq!(get("cid"), Some("1234567890.1700000000"), "{q}");
    pairs
}

fn value<'a>(pairs: &'a [(String, String)], k: &str) -> Option<&'a str> {
    pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn a_single_ga4_hit_arrives_accepted_and_without_the_planted_personal_data() {
    let collect = Mock::plain().await;
    let tags = Mock::plain().await;
    let gw = ga4(&collect, &tags).await;
    let f = fixture("ga4-collect-1");
    assert_eq!(f.method, "POST");
    // The fixture's hit, with personal data where sites leak it: the page URL, the user id,
    // event parameters.
    let path = path_of(&f.url).replace(
        "dl=https%3A%2F%2Fshop.example.com%2Fcatalog%2F",
        "dl=https%3A%2F%2Fshop.example.com%2Fcatalog%2F%3Femail%3Djane.doe%2540example.com%26token%3Dtok9f8e7d6c5b4a%26utm_source%3Dnews",
    ) + "&uid=jane.doe%40example.com&ep.customer_email=jane.doe%40example.com&ep.note=call%20me%20on%20%2B1%20555%20123%204567&ep.contact_phone=%2B15551234567";
    assert!(path.contains("email%3Djane"), "the fixture changed: {path}");

    let r = send_hit(&gw, "POST", &path, "").await;
    assert_eq!(r.status, 204, "{}", r.text());
    let seen = collect.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.method, "POST");
    let pairs = assert_ga4_form(s);
    assert_eq!(value(&pairs, "en"), Some("page_view"));
    assert_eq!(
        value(&pairs, "dl"),
        Some("https://shop.example.com/catalog/?utm_source=news")
    );
    assert_eq!(value(&pairs, "uid").map(str::len), Some(64), "uid hashed");
    assert_eq!(value(&pairs, "ep.customer_email"), None);
    assert_eq!(
        value(&pairs, "gcd"),
        Some("13l3l3l3l1"),
        "consent state kept"
    );
    // The hit's own fields the rules leave alone leave as they came.
    assert!(s.uri.query().unwrap().contains(
        "uafvl=Not%2520A(Brand%3B99.0.0.0%7CMicrosoft%2520Edge%3B121.0.2277.128%7CChromium%3B121.0.6167.184"
    ));
    assert!(
        s.headers.get("cookie").is_none(),
        "no cookie goes to Google"
    );
    assert_eq!(s.headers["referer"], "https://localhost/");
    assert_clean(s);
}

#[tokio::test]
async fn a_ga4_batch_arrives_line_by_line_without_the_planted_personal_data() {
    let collect = Mock::plain().await;
    let tags = Mock::plain().await;
    let gw = ga4(&collect, &tags).await;
    let f = fixture("ga4-collect-2");
    assert_eq!(f.method, "POST");
    assert_eq!(
        f.body,
        "en=scroll&epn.percent_scrolled=90\r\nen=user_engagement&_et=5123"
    );
    let path = format!("{}&uid=jane.doe%40example.com", path_of(&f.url));
    let body = format!(
        "{}\r\nen=sign_up&ep.email=jane.doe%40example.com&ep.method=email&ep.msg=text%20{}\r\n",
        f.body, "%2B1%20555%20123%204567"
    );
    let r = send_hit(&gw, "POST", &path, &body).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let seen = collect.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    let pairs = assert_ga4_form(s);
    assert_eq!(value(&pairs, "gcs"), Some("G100"));
    assert_eq!(s.headers["content-type"], "text/plain;charset=UTF-8");
    let lines: Vec<&str> = std::str::from_utf8(&s.body)
        .unwrap()
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0], "en=scroll&epn.percent_scrolled=90");
    assert_eq!(lines[1], "en=user_engagement&_et=5123");
    assert!(lines[2].starts_with("en=sign_up&"), "{}", lines[2]);
    assert!(lines[2].contains("ep.method=email"), "{}", lines[2]);
    assert_clean(s);
}

#[tokio::test]
async fn consent_denied_ga4_pings_go_without_ad_click_ids() {
    let collect = Mock::plain().await;
    let tags = Mock::plain().await;
    let gw = ga4(&collect, &tags).await;
    // The batch fixture's shared parameters are a cookieless ping: gcs=G100, gcd=13p3p3p3p5l1.
    let f = fixture("ga4-collect-2");
    let base = path_of(&f.url);
    assert!(base.contains("gcs=G100") && base.contains("gcd=13p3p3p3p5l1"));
    let path = base.replace(
        "dl=https%3A%2F%2Fshop.example.com%2F",
        "dl=https%3A%2F%2Fshop.example.com%2F%3Fgclid%3DCj0KCQiA4NWrBhD%26utm_source%3Dads%26email%3Djane.doe%2540example.com",
    ) + "&en=page_view&gclid=Cj0KCQiA4NWrBhD";
    let r = send_hit(&gw, "POST", &path, "").await;
    assert_eq!(r.status, 204, "{}", r.text());
    let s = &collect.seen()[0];
    let pairs = assert_ga4_form(s);
    assert_eq!(value(&pairs, "gcs"), Some("G100"));
    assert_eq!(value(&pairs, "gcd"), Some("13p3p3p3p5l1"));
    assert_eq!(
        value(&pairs, "dl"),
        Some("https://shop.example.com/?utm_source=ads")
    );
    assert_eq!(value(&pairs, "gclid"), None);
    assert!(!s.uri.to_string().contains("Cj0KCQiA4NWrBhD"));
    assert_clean(s);

    // With ad consent granted (gcs=G111, no gcd saying otherwise) the click id stays.
    let granted = path
        .replace("gcs=G100", "gcs=G111")
        .replace("&gcd=13p3p3p3p5l1", "");
    send_hit(&gw, "POST", &granted, "").await;
    let s = &collect.seen()[1];
    let pairs = assert_ga4_form(s);
    assert_eq!(value(&pairs, "gclid"), Some("Cj0KCQiA4NWrBhD"));
    assert_clean(s);
}

#[tokio::test]
async fn gtag_js_is_served_rewritten_to_the_tracking_host_and_cached() {
    // A stand-in for gtag.js with the hosts the real one names.
    let script = "var d={ga:'https://www.google-analytics.com/g/collect',eu:'https://region1.google-analytics.com/g/collect',tm:'https://www.googletagmanager.com/gtag/destination?id='};"
        .to_string()
        + &"/* gtag */".repeat(50);
    let vendor = script.clone();
    let collect = Mock::plain().await;
    let tags = Mock::plain_with(move |_| {
        MockReply::status(200)
            .header("content-type", "application/javascript; charset=UTF-8")
            .header("cache-control", "private, max-age=900")
            .body(vendor.clone())
    })
    .await;
    let gw = ga4(&collect, &tags).await;
    let f = fixture("ga4-gtag-js-1");
    assert_eq!(f.method, "GET");
    let path = path_of(&f.url);
    assert_eq!(path, "/gtag/js?id=G-TEST123456");

    let r = send_hit(&gw, "GET", path, "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.text(),
        "var d={ga:'https://localhost/g/collect',eu:'https://localhost/g/collect',tm:'https://localhost/gtag/destination?id='};"
            .to_string()
            + &"/* gtag */".repeat(50)
    );
    assert_eq!(
        r.header("content-type"),
        Some("application/javascript; charset=UTF-8")
    );
    let cc = r.header("cache-control").unwrap();
    assert!(
        cc.starts_with("public, max-age=") && cc != "public, max-age=0",
        "{cc}"
    );
    // Google got the fixture's request and nothing of the browser's (cookies, page URL).
    let seen = tags.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri.to_string(), "/gtag/js?id=G-TEST123456");
    assert!(seen[0].headers.get("cookie").is_none());
    assert!(seen[0].headers.get("referer").is_none());
    assert_clean(&seen[0]);

    // Cached: revalidation is a 304 with no second fetch.
    let etag = r.header("etag").unwrap();
    let mut b = Request::builder()
        .uri(path)
        .header("host", "localhost")
        .header("if-none-match", etag);
    b = b.header("accept-encoding", "gzip, deflate, br");
    let again = send_plain(gw.http, b.body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(again.status, 200, "another encoding, another tag");
    let br_tag = again.header("etag").unwrap().to_string();
    let b = Request::builder()
        .uri(path)
        .header("host", "localhost")
        .header("accept-encoding", "gzip, deflate, br")
        .header("if-none-match", &br_tag);
    let revalidated = send_plain(gw.http, b.body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(revalidated.status, 304);
    assert_eq!(tags.count(), 1);

    // The hits the rewritten script sends come back through the gateway's collect route.
    let hit = send_hit(
        &gw,
        "POST",
        "/g/collect?v=2&tid=G-TEST123456&cid=1234567890.1700000000&en=page_view",
        "",
    )
    .await;
    assert_eq!(hit.status, 204);
    assert_eq!(collect.count(), 1);
}
