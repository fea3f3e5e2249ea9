//! Script routes: vendor scripts fetched once, rewritten to the first-party host, cached,
//! served by `Accept-Encoding` with `ETag`/304, refreshed in the background when stale,
//! standing in for a vendor that is down, and bounded in size.

use std::io::Read as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::client::Via;
use crate::support::gateway::rules;
use crate::support::*;

const SCRIPT: &str = "(function(){var a='https://www.google-analytics.com/g/collect',b='https://www.googletagmanager.com/gtag/js?id=',c='https://connect.facebook.net/en_US/fbevents.js';/*padding padding padding padding padding padding padding padding padding padding padding*/})();";

fn script_rules(extra: &str) -> String {
    rules(&format!(
        r#"
[[route]]
name = "gtag"
path = "/gtag/js"
methods = ["GET"]
upstream = "v"
codec = "opaque"
scan = false
script = {{ query = ["id", "l"], rewrite = {{ "www.google-analytics.com" = "{{host}}", "www.googletagmanager.com" = "{{host}}", "connect.facebook.net/en_US/fbevents.js" = "{{host}}/fb/events.js" }}{extra} }}
"#
    ))
}

/// A mock vendor whose answer the test can change.
fn switchable(first: MockReply) -> (Arc<Mutex<MockReply>>, impl Fn(&mock::Seen) -> MockReply) {
    let reply = Arc::new(Mutex::new(first));
    let r2 = reply.clone();
    (reply, move |_: &mock::Seen| r2.lock().unwrap().clone())
}

fn js(body: &str) -> MockReply {
    MockReply::status(200)
        .header("content-type", "text/javascript; charset=UTF-8")
        .header("cache-control", "private, max-age=0")
        .body(body.to_string())
}

use crate::support::mock;

/// GET `path` with these headers (and `Host: localhost` unless one is given).
async fn fetch(gw: &Gw, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut b = Request::builder().method("GET").uri(path);
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        b = b.header("host", "localhost");
    }
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    send_plain(gw.http, b.body(Full::new(Bytes::new())).unwrap()).await
}

fn gunzip(b: &[u8]) -> String {
    let mut s = String::new();
    flate2::read::GzDecoder::new(b)
        .read_to_string(&mut s)
        .unwrap();
    s
}

fn unbrotli(b: &[u8]) -> String {
    let mut s = String::new();
    brotli::Decompressor::new(b, 4096)
        .read_to_string(&mut s)
        .unwrap();
    s
}

fn metric(gw: &Gw, name: &str) -> u64 {
    let text = gw.gw.metrics.render();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

#[tokio::test]
async fn scripts_are_rewritten_cached_and_answered_304_on_revalidation() {
    let mock = Mock::plain_with(|_| js(SCRIPT)).await;
    let gw = Gw::start(GwOptions::new(&script_rules("")).upstream("v", mock.url())).await;

    // The port the browser names is kept only when it is the listener's.
    let named = format!("metrics.shop.example:{}", gw.http.port());
    let host = [("host", named.as_str())];
    let r = fetch(&gw, "/gtag/js?id=G-1&l=dataLayer", &host).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("tagway-cache"), Some("miss"));
    let body = r.text();
    assert!(
        body.contains(&format!("'https://{named}/g/collect'")),
        "{body}"
    );
    assert!(body.contains(&format!("'https://{named}/gtag/js?id='")));
    assert!(body.contains(&format!("'https://{named}/fb/events.js'")));
    assert!(!body.contains("google-analytics.com") && !body.contains("facebook.net"));
    assert_eq!(
        r.header("content-type"),
        Some("text/javascript; charset=UTF-8")
    );
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    let cc = r.header("cache-control").unwrap();
    assert!(cc.starts_with("public, max-age="), "{cc}");
    let etag = r.header("etag").unwrap().to_string();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong: {etag}"
    );

    // The vendor saw the path and query as asked, and nothing of the browser's.
    let seen = mock.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri.to_string(), "/gtag/js?id=G-1&l=dataLayer");
    assert!(seen[0].headers.get("cookie").is_none());

    // Second request: from memory.
    let again = fetch(&gw, "/gtag/js?id=G-1&l=dataLayer", &host).await;
    assert_eq!(again.header("tagway-cache"), Some("hit"));
    assert_eq!(again.body, r.body);
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    assert_eq!(mock.count(), 1);

    // Revalidation: 304, no body, same tag.
    let not_modified = fetch(
        &gw,
        "/gtag/js?id=G-1&l=dataLayer",
        &[host[0], ("if-none-match", &etag)],
    )
    .await;
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());
    assert_eq!(not_modified.header("etag"), Some(etag.as_str()));
    let other_tag = fetch(
        &gw,
        "/gtag/js?id=G-1&l=dataLayer",
        &[host[0], ("if-none-match", "\"other\"")],
    )
    .await;
    assert_eq!(other_tag.status, 200);

    // Another first-party host gets its own rewrite of the same copy; no new fetch.
    let other = fetch(&gw, "/gtag/js?id=G-1&l=dataLayer", &[]).await;
    assert!(other.text().contains("'https://localhost/g/collect'"));
    assert_ne!(other.header("etag"), Some(etag.as_str()));
    assert_eq!(mock.count(), 1);

    // The query is part of the key.
    let second_id = fetch(&gw, "/gtag/js?id=G-2", &host).await;
    assert_eq!(second_id.header("tagway-cache"), Some("miss"));
    assert_eq!(mock.count(), 2);
    assert_eq!(mock.seen()[1].uri.to_string(), "/gtag/js?id=G-2");

    assert_eq!(
        metric(&gw, "tagway_script_requests_total{cache=\"hit\"}"),
        4
    );
    assert_eq!(
        metric(&gw, "tagway_script_requests_total{cache=\"miss\"}"),
        2
    );
    assert_eq!(metric(&gw, "tagway_script_not_modified_total"), 1);
}

#[tokio::test]
async fn gzip_and_br_by_accept_encoding_from_a_compressed_vendor_answer() {
    let big = SCRIPT.repeat(40);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, big.as_bytes()).unwrap();
    let compressed = Bytes::from(gz.finish().unwrap());
    let mock = Mock::plain_with(move |s| {
        assert!(
            s.headers["accept-encoding"]
                .to_str()
                .unwrap()
                .contains("gzip")
        );
        MockReply::status(200)
            .header("content-type", "text/javascript")
            .header("content-encoding", "gzip")
            .body(compressed.clone())
    })
    .await;
    let gw = Gw::start(GwOptions::new(&script_rules("")).upstream("v", mock.url())).await;
    let want = big.replace("www.google-analytics.com", "localhost");
    let want = want
        .replace("www.googletagmanager.com", "localhost")
        .replace(
            "connect.facebook.net/en_US/fbevents.js",
            "localhost/fb/events.js",
        );

    let plain = fetch(&gw, "/gtag/js?id=G-1", &[]).await;
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(plain.text(), want);

    let gz = fetch(
        &gw,
        "/gtag/js?id=G-1",
        &[("accept-encoding", "gzip, deflate")],
    )
    .await;
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert_eq!(gz.header("vary"), Some("Accept-Encoding"));
    assert!(
        gz.body.len() < want.len() / 4,
        "compressed: {}",
        gz.body.len()
    );
    assert_eq!(gunzip(&gz.body), want);

    let br = fetch(
        &gw,
        "/gtag/js?id=G-1",
        &[("accept-encoding", "gzip, deflate, br, zstd")],
    )
    .await;
    assert_eq!(br.header("content-encoding"), Some("br"));
    assert_eq!(unbrotli(&br.body), want);

    // Each encoding has its own tag; a browser revalidating its br copy gets 304.
    let tags = [plain.header("etag"), gz.header("etag"), br.header("etag")];
    assert!(tags[0] != tags[1] && tags[1] != tags[2] && tags[0] != tags[2]);
    let revalidated = fetch(
        &gw,
        "/gtag/js?id=G-1",
        &[
            ("accept-encoding", "br"),
            ("if-none-match", tags[2].unwrap()),
        ],
    )
    .await;
    assert_eq!(revalidated.status, 304);
    assert_eq!(mock.count(), 1);
}

#[tokio::test]
async fn a_stale_script_is_served_while_one_background_fetch_refreshes_it() {
    let (reply, responder) = switchable(js("var v='one';"));
    let mock = Mock::plain_with(responder).await;
    let rules = script_rules(", ttl = \"300ms\", stale = \"1h\"");
    let gw = Gw::start(GwOptions::new(&rules).upstream("v", mock.url())).await;

    let first = fetch(&gw, "/gtag/js?id=G-1", &[]).await;
    assert_eq!(first.text(), "var v='one';");
    *reply.lock().unwrap() = js("var v='two';");
    tokio::time::sleep(Duration::from_millis(400)).await;

    // Past the ttl: the old copy at once, and a refresh behind it.
    let stale = fetch(&gw, "/gtag/js?id=G-1", &[]).await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.text(), "var v='one';");
    assert_eq!(stale.header("tagway-cache"), Some("stale"));
    assert_eq!(stale.header("cache-control"), Some("public, max-age=0"));
    // A burst meanwhile is answered from memory (old or new copy), with no fetch of its own.
    let burst: Vec<_> = (0..6).map(|_| fetch(&gw, "/gtag/js?id=G-1", &[])).collect();
    for r in futures_util::future::join_all(burst).await {
        assert_eq!(r.status, 200);
        assert!(["var v='one';", "var v='two';"].contains(&r.text().as_str()));
    }
    // The refresh lands: the new copy is served fresh.
    let mut fresh = None;
    for _ in 0..200 {
        let r = fetch(&gw, "/gtag/js?id=G-1", &[]).await;
        if r.text() == "var v='two';" {
            fresh = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let fresh = fresh.expect("the background refresh never replaced the stale copy");
    assert!(
        ["hit", "stale"].contains(&fresh.header("tagway-cache").unwrap()),
        "{:?}",
        fresh.header("tagway-cache")
    );
    assert_eq!(mock.count(), 2, "one fetch, one refresh");
    assert_eq!(metric(&gw, "tagway_script_revalidations_total"), 1);
    assert!(metric(&gw, "tagway_script_requests_total{cache=\"stale\"}") >= 1);
}

#[tokio::test]
async fn a_vendor_that_is_down_is_replaced_by_the_cached_copy() {
    let (reply, responder) = switchable(js("var v='cached';"));
    let mock = Mock::plain_with(responder).await;
    let rules = script_rules(", ttl = \"300ms\", stale = \"0s\", stale_if_error = \"1h\"");
    let mut o = GwOptions::new(&rules).upstream("v", mock.url());
    o.upstream_timeout = Duration::from_millis(500);
    let gw = Gw::start(o).await;

    for id in ["G-1", "G-2"] {
        let r = fetch(&gw, &format!("/gtag/js?id={id}"), &[]).await;
        assert_eq!(r.text(), "var v='cached';");
    }
    *reply.lock().unwrap() = MockReply::status(503).body("overloaded");
    tokio::time::sleep(Duration::from_millis(400)).await;

    // Expired, the vendor errs: the cached copy stands in, and the error is counted.
    let r = fetch(&gw, "/gtag/js?id=G-1", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "var v='cached';");
    assert_eq!(r.header("tagway-cache"), Some("stale-error"));
    assert_eq!(mock.count(), 3);
    assert_eq!(metric(&gw, "tagway_script_fetch_errors_total"), 1);
    assert_eq!(
        metric(
            &gw,
            "tagway_script_requests_total{cache=\"stale_on_error\"}"
        ),
        1
    );
    // Right after a failure (10 s back-off), no new fetch: the copy is served at once.
    let r = fetch(&gw, "/gtag/js?id=G-1", &[]).await;
    assert_eq!(r.text(), "var v='cached';");
    assert_eq!(r.header("tagway-cache"), Some("stale-error"));
    assert_eq!(mock.count(), 3);

    // A script never fetched has nothing to stand in: the failure is explicit.
    let r = fetch(&gw, "/gtag/js?id=G-other", &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("tagway-error"), Some("upstream_failed"));
    assert_eq!(metric(&gw, "tagway_script_fetch_errors_total"), 2);
    // …and within the back-off it is answered again without asking the vendor: a cold
    // cache during an outage costs one upstream attempt per back-off, not one per request.
    let before = mock.count();
    for _ in 0..3 {
        let r = fetch(&gw, "/gtag/js?id=G-other", &[]).await;
        assert_eq!(r.status, 502);
        assert_eq!(r.header("tagway-error"), Some("upstream_failed"));
    }
    assert_eq!(mock.count(), before);
    assert_eq!(metric(&gw, "tagway_script_fetch_errors_total"), 2);
    assert_eq!(
        metric(
            &gw,
            "tagway_script_requests_total{cache=\"failed_recently\"}"
        ),
        3
    );
    // Every request is counted once, under one label: 2 first fetches and the failed G-other
    // fetch (miss), 2 copies standing in (stale_on_error), 3 refusals in the back-off.
    let by = |how: &str| {
        metric(
            &gw,
            &format!("tagway_script_requests_total{{cache=\"{how}\"}}"),
        )
    };
    assert_eq!(
        (
            by("miss"),
            by("stale_on_error"),
            by("failed_recently"),
            by("hit")
        ),
        (3, 2, 3, 0)
    );

    // The vendor hanging past the upstream timeout: the same stand-in.
    *reply.lock().unwrap() = js("var v='late';").delay(Duration::from_secs(5));
    let r = fetch(&gw, "/gtag/js?id=G-2", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "var v='cached';");
    assert_eq!(r.header("tagway-cache"), Some("stale-error"));
    assert_eq!(metric(&gw, "tagway_script_fetch_errors_total"), 3);
}

#[tokio::test]
async fn answers_other_than_200_are_passed_on_and_never_cached() {
    let mock = Mock::plain_with(|s| match s.uri.query() {
        Some("id=G-404") => MockReply::status(404)
            .header("content-type", "text/plain")
            .body("no such tag"),
        _ => MockReply::status(500).body("boom"),
    })
    .await;
    let gw = Gw::start(GwOptions::new(&script_rules("")).upstream("v", mock.url())).await;
    for _ in 0..2 {
        let r = fetch(&gw, "/gtag/js?id=G-404", &[]).await;
        assert_eq!(r.status, 404);
        assert_eq!(r.text(), "no such tag");
        assert_eq!(r.header("cache-control"), Some("no-store"));
    }
    assert_eq!(mock.count(), 2, "a 404 is not cached");
    let r = fetch(&gw, "/gtag/js?id=G-500", &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("tagway-error"), Some("upstream_failed"));
    assert!(r.text().contains("answered 500"), "{}", r.text());
    assert_eq!(gw.gw.scripts.bytes(), 0);
}

/// Text that compresses about 2:1, so sizes are predictable.
fn hexish(seed: u64, len: usize) -> String {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            b"0123456789abcdef"[(x >> 60) as usize] as char
        })
        .collect()
}

#[tokio::test]
async fn the_cache_stays_within_its_size_and_skips_oversized_scripts() {
    let mock = Mock::plain_with(|s| {
        let q = s.uri.query().unwrap_or("");
        let len = if q == "id=big" { 40_000 } else { 20_000 };
        js(&hexish(
            q.len() as u64 + q.bytes().map(u64::from).sum::<u64>(),
            len,
        ))
    })
    .await;
    let mut o = GwOptions::new(&script_rules("")).upstream("v", mock.url());
    // One 20 kB script with its variants (~20 + 20 + ~11 + ~10 kB) fits; two do not.
    o.scripts.max_bytes = 100_000;
    o.scripts.max_script = 30_000;
    let gw = Gw::start(o).await;

    let a = fetch(&gw, "/gtag/js?id=A", &[]).await;
    assert_eq!(a.body.len(), 20_000);
    assert_eq!(
        fetch(&gw, "/gtag/js?id=A", &[])
            .await
            .header("tagway-cache"),
        Some("hit")
    );
    assert_eq!(mock.count(), 1);
    let held = gw.gw.scripts.bytes();
    assert!(held > 40_000 && held <= 100_000, "{held}");

    fetch(&gw, "/gtag/js?id=B", &[]).await;
    assert!(gw.gw.scripts.bytes() <= 100_000);
    assert_eq!(metric(&gw, "tagway_script_evictions_total"), 1);
    // A was the least recently used: it went, and is fetched again.
    let again = fetch(&gw, "/gtag/js?id=A", &[]).await;
    assert_eq!(again.header("tagway-cache"), Some("miss"));
    assert_eq!(again.body, a.body);
    assert_eq!(mock.count(), 3);

    // Larger than --script-max-size: served, never stored.
    for _ in 0..2 {
        let big = fetch(&gw, "/gtag/js?id=big", &[("accept-encoding", "gzip")]).await;
        assert_eq!(big.status, 200);
        assert_eq!(big.body.len(), 40_000);
        assert_eq!(big.header("tagway-cache"), Some("uncached"));
    }
    assert_eq!(mock.count(), 5);
    assert!(gw.gw.scripts.bytes() <= 100_000);
    assert_eq!(metric(&gw, "tagway_script_uncacheable_total"), 2);
}

#[tokio::test]
async fn a_burst_on_several_workers_makes_one_upstream_fetch() {
    let mock = Mock::plain_with(|_| js(SCRIPT).delay(Duration::from_millis(300))).await;
    let mut o = GwOptions::new(&script_rules("")).upstream("v", mock.url());
    o.workers = 3;
    let gw = Gw::start(o).await;
    let burst: Vec<_> = (0..12)
        .map(|_| fetch(&gw, "/gtag/js?id=G-1", &[("accept-encoding", "br")]))
        .collect();
    let replies = futures_util::future::join_all(burst).await;
    // The same script for all; its br bytes may differ, when the final br encoding replaced
    // the first one in the background while the burst was answered.
    let text = |r: &Reply| match r.header("content-encoding") {
        Some("br") => unbrotli(&r.body),
        _ => String::from_utf8_lossy(&r.body).into_owned(),
    };
    for r in &replies {
        assert_eq!(r.status, 200);
        assert_eq!(text(r), text(&replies[0]));
    }
    assert_eq!(mock.count(), 1);
}

#[tokio::test]
async fn a_reload_with_other_rewrite_rules_fetches_and_rewrites_again() {
    let mock = Mock::plain_with(|_| js(SCRIPT)).await;
    let gw = Gw::start(GwOptions::new(&script_rules("")).upstream("v", mock.url())).await;
    let before = fetch(&gw, "/gtag/js?id=G-1", &[]).await;
    assert!(before.text().contains("'https://localhost/g/collect'"));

    let changed = script_rules("").replace(
        "\"www.google-analytics.com\" = \"{host}\"",
        "\"www.google-analytics.com\" = \"{host}/ga\"",
    );
    std::fs::write(gw.rules_dir.path().join("00-test.toml"), changed).unwrap();
    gw.gw.reload_rules().unwrap();
    let after = fetch(&gw, "/gtag/js?id=G-1", &[]).await;
    assert_eq!(after.header("tagway-cache"), Some("miss"));
    assert!(after.text().contains("'https://localhost/ga/g/collect'"));
    assert_eq!(mock.count(), 2);
}

#[tokio::test]
async fn a_script_option_the_route_cannot_honour_is_refused_at_load() {
    let bad = rules(
        r#"
[[route]]
name = "gtag"
path = "/gtag/js"
upstream = "v"
script = { rewrite = { "www.google-analytics.com" = "{hots}" }, ttl = "often" }
"#,
    );
    let err = Gw::try_start(GwOptions::new(&bad)).await.err().unwrap();
    for want in [
        "00-test.toml:13:",
        "methods = [\"GET\"]",
        "set scan = false",
        "ttl \"often\" is not a duration",
        "unknown placeholder {hots}",
    ] {
        assert!(err.contains(want), "{want:?} not in: {err}");
    }
    // Each field's problem points at that field; the route's at the whole option.
    let col = |needle: &str| {
        let line = err.lines().find(|l| l.contains(needle));
        let at = line.and_then(|l| l.split_once(".toml:")).map(|(_, at)| at);
        at.and_then(|at| at.split(':').nth(1)).map(str::to_string)
    };
    let (route, ttl, rewrite) = (col("methods = ["), col("\"often\""), col("{hots}"));
    assert!(
        route.is_some() && ttl.is_some() && rewrite.is_some(),
        "{err}"
    );
    assert_ne!(ttl, route, "{err}");
    assert_ne!(rewrite, route, "{err}");
    assert_ne!(ttl, rewrite, "{err}");
}

#[tokio::test]
async fn a_script_routes_id_field_must_be_a_parameter_it_sends() {
    let route = |id_field: &str| {
        rules(&format!(
            r#"
[site.ids]
ga4 = ["G-OURS"]

[[route]]
name = "gtag"
path = "/gtag/js"
methods = ["GET"]
upstream = "v"
codec = "opaque"
scan = false
id_field = "{id_field}"
id_list = "ga4"
script = {{ query = ["id", "l"] }}
"#
        ))
    };
    let err = Gw::try_start(GwOptions::new(&route("tid")))
        .await
        .err()
        .unwrap();
    for want in [
        "id_field \"tid\" is not in script",
        "add \"tid\" to the script's query list",
    ] {
        assert!(err.contains(want), "{want:?} not in: {err}");
    }
    let err = Gw::try_start(GwOptions::new(&route("ids.*")))
        .await
        .err()
        .unwrap();
    assert!(
        err.contains("a script route's id is a query parameter"),
        "{err}"
    );
    // Listed, with or without the `query:` scope: accepted.
    for ok in ["id", "query:id"] {
        let gw = Gw::try_start(GwOptions::new(&route(ok))).await;
        assert!(gw.is_ok(), "{ok}: {:?}", gw.err());
    }
}

#[tokio::test]
async fn scripts_of_a_changed_route_do_not_linger_past_their_lifetime() {
    let mock = Mock::plain_with(|_| js(&SCRIPT.repeat(20))).await;
    let timed = ", ttl = \"1s\", stale = \"0s\", stale_if_error = \"0s\"";
    let gw = Gw::start(GwOptions::new(&script_rules(timed)).upstream("v", mock.url())).await;
    fetch(&gw, "/gtag/js?id=G-1", &[]).await;
    let one = gw.gw.scripts.bytes();
    assert!(one > 0);

    let changed = script_rules(timed).replace("{host}/fb/events.js", "{host}/f/e.js");
    std::fs::write(gw.rules_dir.path().join("00-test.toml"), changed).unwrap();
    gw.gw.reload_rules().unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The old route's copy is past its lifetime: the next fetch sweeps it away.
    fetch(&gw, "/gtag/js?id=G-1", &[]).await;
    assert_eq!(mock.count(), 2);
    let after = gw.gw.scripts.bytes();
    assert!(after > 0 && after < one * 3 / 2, "{one} then {after}");
}

#[tokio::test]
async fn scripts_over_h2_and_head_requests() {
    let mock = Mock::plain_with(|_| js(&SCRIPT.repeat(10))).await;
    let gw = Gw::start(GwOptions::new(&script_rules("")).upstream("v", mock.url())).await;
    let h2c = Via {
        addr: gw.http,
        tls: None,
        h2: true,
    };
    let named = format!("metrics.shop.example:{}", gw.http.port());
    let get = Request::builder()
        .uri(format!("http://{named}/gtag/js?id=G-1"))
        .header("accept-encoding", "br")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(h2c.clone(), get).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.header("content-encoding"), Some("br"));
    assert!(unbrotli(&r.body).contains(&format!("'https://{named}/g/collect'")));

    let head = Request::builder()
        .method("HEAD")
        .uri("/gtag/js?id=G-1")
        .header("host", named.as_str())
        .header("accept-encoding", "br")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let h = send_plain(gw.http, head).await;
    assert_eq!(h.status, 200);
    assert!(h.body.is_empty());
    assert_eq!(h.header("etag"), r.header("etag"));
    assert_eq!(h.header("tagway-cache"), Some("hit"));
    assert_eq!(mock.count(), 1);
}

/// With `[site.ids]`, the loader of another site's id is answered in the vendor's place and
/// never fetched, so nobody can serve their own tags through this gateway's cache.
#[tokio::test]
async fn a_loader_for_another_sites_id_is_not_fetched() {
    let mock = Mock::plain_with(|_| js(SCRIPT)).await;
    let text = r#"
[site]
origins = ["https://shop.example"]

[site.ids]
ga4 = ["G-OURS"]

[upstreams.v]
url = "https://vendor.invalid"

[[route]]
name = "gtag"
path = "/gtag/js"
methods = ["GET"]
upstream = "v"
codec = "opaque"
scan = false
id_field = "id"
id_list = "ga4"
answer = { status = 404 }
script = { query = ["id"], rewrite = { "www.google-analytics.com" = "{host}" } }

[[route]]
name = "gtm"
path = "/gtm.js"
methods = ["GET"]
upstream = "v"
codec = "form"
scan = false
id_field = "id"
id_list = "ga4"
answer = { status = 404 }
script = { query = ["id"] }
"#;
    let gw = Gw::start(GwOptions::new(text).upstream("v", mock.url())).await;
    let r = fetch(&gw, "/gtag/js?id=G-THEIRS", &[]).await;
    assert_eq!(r.status, 404);
    let r = fetch(&gw, "/gtag/js", &[]).await;
    assert_eq!(r.status, 404, "no id at all is not the site's either");
    // A request the full transform could not read (an unknown Content-Encoding on a route
    // that decodes bodies) is still only id-checked, and a foreign id is still not served.
    let r = fetch(&gw, "/gtm.js?id=G-THEIRS", &[("content-encoding", "x")]).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(mock.seen().is_empty());
    assert_eq!(metric(&gw, "tagway_dropped_foreign_id_total"), 3);
    let r = fetch(&gw, "/gtag/js?id=G-OURS", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("https://localhost/g/collect"));
    assert_eq!(mock.seen().len(), 1);
}

/// Only the route's `query` parameters reach the vendor and the cache key: a cache buster is
/// dropped, so it neither costs a fetch nor makes a new entry.
#[tokio::test]
async fn unlisted_query_parameters_never_reach_the_vendor_nor_the_cache_key() {
    let mock = Mock::plain_with(|_| js(SCRIPT)).await;
    let gw = Gw::start(GwOptions::new(&script_rules("")).upstream("v", mock.url())).await;

    let r = fetch(&gw, "/gtag/js?x=1&l=dl&id=G-1&id=G-9", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("tagway-cache"), Some("miss"));
    assert_eq!(mock.seen()[0].uri.to_string(), "/gtag/js?id=G-1&l=dl");
    assert_eq!(gw.gw.scripts.variants(), 1);

    for buster in ["x=2", "cb=123456", "id=G-1&l=dl&_=9", "gtm_auth=z"] {
        let r = fetch(&gw, &format!("/gtag/js?id=G-1&{buster}&l=dl"), &[]).await;
        assert_eq!(r.header("tagway-cache"), Some("hit"), "{buster}");
    }
    let escaped = fetch(&gw, "/gtag/js?l=dl&id=G%2D1", &[]).await;
    assert_eq!(escaped.header("tagway-cache"), Some("hit"));
    assert_eq!(mock.count(), 1);
    assert_eq!(gw.gw.scripts.variants(), 1, "no new cache entry");

    // A route that lists no parameters sends none.
    let text = rules(
        r#"
[[route]]
name = "plain"
path = "/lib.js"
methods = ["GET"]
upstream = "v"
codec = "opaque"
scan = false
script = { }
"#,
    );
    let gw = Gw::start(GwOptions::new(&text).upstream("v", mock.url())).await;
    fetch(&gw, "/lib.js?v=1", &[]).await;
    let r = fetch(&gw, "/lib.js?v=2", &[]).await;
    assert_eq!(r.header("tagway-cache"), Some("hit"));
    assert_eq!(mock.seen()[1].uri.to_string(), "/lib.js");
    assert_eq!(mock.count(), 2);
}

/// A port in `Host` other than the listener's is dropped: made-up ports all get the one
/// variant of the bare host, never a new one each.
#[tokio::test]
async fn made_up_host_ports_share_one_variant() {
    let mock = Mock::plain_with(|_| js(SCRIPT)).await;
    let gw = Gw::start(GwOptions::new(&script_rules("")).upstream("v", mock.url())).await;
    let first = fetch(&gw, "/gtag/js?id=G-1", &[("host", "localhost")]).await;
    assert!(first.text().contains("'https://localhost/g/collect'"));
    let etag = first.header("etag").unwrap().to_string();
    assert_eq!(gw.gw.scripts.variants(), 1);
    for port in [1u16, 8080, 65535] {
        let host = format!("localhost:{port}");
        if port == gw.http.port() {
            continue;
        }
        let r = fetch(&gw, "/gtag/js?id=G-1", &[("host", host.as_str())]).await;
        assert_eq!(r.status, 200);
        assert!(r.text().contains("'https://localhost/g/collect'"), "{host}");
        assert_eq!(r.header("etag"), Some(etag.as_str()), "{host}");
    }
    // Counted, not measured in bytes: the variant's final br may land in the meantime.
    assert_eq!(gw.gw.scripts.variants(), 1, "no variant per port");
    assert_eq!(mock.count(), 1);
}
