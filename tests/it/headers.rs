//! The header policy (README, "Header policy"): what reaches the vendor and what comes back.

use bytes::Bytes;
use http_body_util::Full;

use crate::support::client::{Via, req};
use crate::support::gateway::rules;
use crate::support::*;

const ROUTE: &str = r#"
[[route]]
name = "collect"
path = "/collect"
upstream = "v"
cookies = ["_ga"]
forward_headers = ["x-vendor-token"]

[[route]]
name = "with-cookies"
path = "/session"
upstream = "v"
set_cookie = true
forward_ip = "full"

[[route]]
name = "no-ip"
path = "/noip"
upstream = "v"
forward_ip = "none"
"#;

fn plain(addr: std::net::SocketAddr) -> Via<'static> {
    Via {
        addr,
        tls: None,
        h2: false,
    }
}

#[tokio::test]
async fn cookies_authorization_and_unlisted_headers_stay_home() {
    let mock = Mock::plain().await;
    let gw = Gw::start(GwOptions::new(&rules(ROUTE)).upstream("v", mock.url())).await;
    let r = req("GET", "/collect?v=1")
        .header("cookie", "session=SECRET1; _ga=GA1.1.123")
        .header("cookie", "cart=SECRET2")
        .header("authorization", "Bearer SECRET3")
        .header("x-api-key", "SECRET4")
        .header("x-vendor-token", "ok")
        .header("user-agent", "Mozilla/5.0 test")
        .header("accept-language", "de-DE")
        .header("sec-ch-ua-platform", "\"Linux\"")
        .header(
            "referer",
            "https://shop.example/checkout?email=jane%40example.com",
        )
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "SECRET5")
        .header("upgrade", "websocket")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(plain(gw.http), r).await.unwrap().status, 204);
    let seen = &mock.seen()[0];
    let all: String = seen
        .headers
        .iter()
        .map(|(n, v)| format!("{n}: {}\n", v.to_str().unwrap()))
        .collect();
    for secret in [
        "SECRET1",
        "SECRET2",
        "SECRET3",
        "SECRET4",
        "SECRET5",
        "email",
        "websocket",
    ] {
        assert!(!all.contains(secret), "{secret} reached the vendor:\n{all}");
    }
    assert_eq!(seen.headers["cookie"], "_ga=GA1.1.123");
    assert_eq!(seen.headers["x-vendor-token"], "ok");
    assert_eq!(seen.headers["user-agent"], "Mozilla/5.0 test");
    assert_eq!(seen.headers["accept-language"], "de-DE");
    assert_eq!(seen.headers["sec-ch-ua-platform"], "\"Linux\"");
    assert_eq!(seen.headers["referer"], "https://shop.example/");
}

#[tokio::test]
async fn h2_split_cookie_fields_are_all_filtered() {
    let mock = Mock::plain().await;
    let gw = Gw::start(GwOptions::new(&rules(ROUTE)).upstream("v", mock.url())).await;
    let r = req("GET", "http://localhost/collect")
        .header("cookie", "session=SECRET1")
        .header("cookie", "_ga=GA1.1.9")
        .header("cookie", "other=SECRET2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        send(
            Via {
                addr: gw.http,
                tls: None,
                h2: true
            },
            r
        )
        .await
        .unwrap()
        .status,
        204
    );
    let seen = &mock.seen()[0];
    let cookies: Vec<_> = seen.headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["_ga=GA1.1.9"]);
}

#[tokio::test]
async fn vendor_set_cookie_is_dropped_unless_the_route_allows_it() {
    let mock = Mock::plain_with(|_| {
        MockReply::status(200)
            .header("set-cookie", "fr=tracking; Domain=.vendor.example")
            .header("access-control-allow-origin", "*")
            .header("alt-svc", "h3=\":443\"")
            .header("content-type", "text/plain")
            .body("ok")
    })
    .await;
    let gw = Gw::start(GwOptions::new(&rules(ROUTE)).upstream("v", mock.url())).await;
    let r = get(gw.http, "/collect").await;
    assert_eq!(r.status, 200);
    assert!(r.header("set-cookie").is_none());
    assert!(
        r.header("access-control-allow-origin").is_none(),
        "the vendor's CORS headers never pass"
    );
    assert!(r.header("alt-svc").is_none());
    assert_eq!(r.header("content-type"), Some("text/plain"));
    let r = get(gw.http, "/session").await;
    assert_eq!(
        r.header("set-cookie"),
        Some("fr=tracking; Domain=.vendor.example")
    );
}

#[tokio::test]
async fn client_ip_from_trusted_proxies_only_and_as_the_route_chooses() {
    let mock = Mock::plain().await;
    let mut o = GwOptions::new(&rules(ROUTE)).upstream("v", mock.url());
    o.trusted_proxies = vec!["127.0.0.0/8"];
    let gw = Gw::start(o).await;
    for path in ["/collect", "/session", "/noip"] {
        let r = req("GET", path)
            .header("x-forwarded-for", "198.51.100.1, 203.0.113.77")
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(send(plain(gw.http), r).await.unwrap().status, 204);
    }
    // A private client address (the peer itself, no header) is never sent.
    assert_eq!(get(gw.http, "/session").await.status, 204);
    let seen = mock.seen();
    let xff = |i: usize| {
        seen[i]
            .headers
            .get("x-forwarded-for")
            .map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(
        xff(0).as_deref(),
        Some("203.0.113.0"),
        "anonymized by default, right-most untrusted address"
    );
    assert_eq!(xff(1).as_deref(), Some("203.0.113.77"), "forward_ip = full");
    assert_eq!(xff(2), None, "forward_ip = none");
    assert_eq!(
        xff(3),
        None,
        "loopback is not a client address a vendor can use"
    );

    // Without trusted proxies the header is ignored: the socket peer (loopback) is the client.
    let mock2 = Mock::plain().await;
    let gw2 = Gw::start(GwOptions::new(&rules(ROUTE)).upstream("v", mock2.url())).await;
    let r = req("GET", "/session")
        .header("x-forwarded-for", "203.0.113.77")
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(plain(gw2.http), r).await.unwrap();
    assert!(mock2.seen()[0].headers.get("x-forwarded-for").is_none());
}

#[tokio::test]
async fn cors_preflight_is_answered_by_the_gateway() {
    let mock = Mock::plain_with(|_| {
        MockReply::status(200)
            .header("access-control-allow-origin", "*")
            .body("{}")
    })
    .await;
    let gw = Gw::start(GwOptions::new(&rules(ROUTE)).upstream("v", mock.url())).await;
    let pre = |origin: &str| {
        req("OPTIONS", "/collect")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let r = send(plain(gw.http), pre("https://shop.example"))
        .await
        .unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://shop.example")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("access-control-allow-methods"), Some("GET, POST"));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("content-type")
    );
    let r = send(plain(gw.http), pre("https://evil.example"))
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(mock.count(), 0, "preflights never reach the vendor");

    let r = req("POST", "/collect")
        .header("origin", "https://shop.example")
        .body(Full::new(Bytes::from_static(b"x")))
        .unwrap();
    let r = send(plain(gw.http), r).await.unwrap();
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://shop.example"),
        "reflected, not the vendor's *"
    );
    assert_eq!(r.header("vary"), Some("Origin"));
    let r = req("POST", "/collect")
        .header("origin", "https://evil.example")
        .body(Full::new(Bytes::from_static(b"x")))
        .unwrap();
    let r = send(plain(gw.http), r).await.unwrap();
    assert!(r.header("access-control-allow-origin").is_none());
}
