//! Requests relayed end to end: methods, protocols, paths, bodies.

use bytes::Bytes;
use http_body_util::Full;

use crate::support::client::{Via, req};
use crate::support::gateway::rules;
use crate::support::*;

const COLLECT: &str = r#"
[[route]]
name = "collect"
path = "/g/collect"
aliases = ["/t/e"]
upstream = "v"

[[route]]
name = "script"
path = "/gtag/js"
methods = ["GET"]
upstream = "v"

[[route]]
name = "ingest"
path_prefix = "/ingest/"
upstream = "v"
upstream_path = "/i/v0/"
"#;

#[tokio::test]
async fn get_and_post_are_relayed_over_http1() {
    let mock = Mock::plain().await;
    let gw = Gw::start(GwOptions::new(&rules(COLLECT)).upstream("v", mock.url())).await;

    let r = get(
        gw.http,
        "/g/collect?v=2&tid=G-1&dl=https%3A%2F%2Fshop.example%2F",
    )
    .await;
    assert_eq!(r.status, 204);
    let body = Bytes::from_static(b"en=scroll&epn.percent_scrolled=90\r\nen=user_engagement&_et=5");
    let post = req("POST", "/g/collect?v=2")
        .header("content-type", "text/plain;charset=UTF-8")
        .body(Full::new(body.clone()))
        .unwrap();
    let r = send_plain(gw.http, post).await;
    assert_eq!(r.status, 204);

    let seen = mock.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].method, "GET");
    assert_eq!(
        seen[0].uri.to_string(),
        "/g/collect?v=2&tid=G-1&dl=https%3A%2F%2Fshop.example%2F"
    );
    assert_eq!(seen[0].headers["host"], mock.addr.to_string());
    assert_eq!(seen[1].method, "POST");
    assert_eq!(seen[1].body, body);
    assert_eq!(seen[1].headers["content-length"], body.len().to_string());
    assert_eq!(seen[1].headers["content-type"], "text/plain;charset=UTF-8");
}

#[tokio::test]
async fn get_and_post_are_relayed_over_h2_with_tls_to_a_tls_upstream() {
    let ca = TestCa::new();
    let certs = tempfile::tempdir().unwrap();
    ca.write_pair(certs.path(), "localhost", &["localhost"]);
    let ca_file = certs.path().join("ca.pem.txt");
    ca.write_ca(&ca_file);
    let mock = Mock::tls_with(&ca, |_| MockReply::status(200).body("ok")).await;
    let mut o = GwOptions::new(&rules(COLLECT)).upstream("v", mock.url());
    o.tls = true;
    o.certs = Some(certs.path().to_path_buf());
    o.upstream_ca = Some(ca_file);
    let gw = Gw::start(o).await;
    let roots = ca.roots();
    let via = Via {
        addr: gw.https.unwrap(),
        tls: Some((&roots, Some("localhost"))),
        h2: true,
    };

    let r = send(
        via.clone(),
        req("GET", "https://localhost/g/collect?v=2&en=page_view")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        (r.status.as_u16(), r.version, r.text().as_str()),
        (200, http::Version::HTTP_2, "ok")
    );
    let r = send(
        via,
        req("POST", "https://localhost/g/collect?v=2")
            .body(Full::new(Bytes::from_static(b"en=a")))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);

    let seen = mock.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].uri.path_and_query().unwrap(),
        "/g/collect?v=2&en=page_view"
    );
    assert_eq!(
        seen[0].version,
        http::Version::HTTP_2,
        "the upstream negotiated h2 by ALPN"
    );
    assert_eq!(seen[1].body, "en=a");
}

#[tokio::test]
async fn http1_over_tls_and_h2c_on_the_plain_listener() {
    let ca = TestCa::new();
    let certs = tempfile::tempdir().unwrap();
    ca.write_pair(certs.path(), "localhost", &["localhost"]);
    let mock = Mock::plain().await;
    let mut o = GwOptions::new(&rules(COLLECT)).upstream("v", mock.url());
    o.tls = true;
    o.certs = Some(certs.path().to_path_buf());
    let gw = Gw::start(o).await;
    let roots = ca.roots();
    let r = send(
        Via {
            addr: gw.https.unwrap(),
            tls: Some((&roots, Some("localhost"))),
            h2: false,
        },
        req("GET", "/g/collect?v=2")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        (r.status.as_u16(), r.version),
        (204, http::Version::HTTP_11)
    );
    let r = send(
        Via {
            addr: gw.http,
            tls: None,
            h2: true,
        },
        req("GET", "http://localhost/g/collect?v=3")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!((r.status.as_u16(), r.version), (204, http::Version::HTTP_2));
    assert_eq!(mock.count(), 2);
}

#[tokio::test]
async fn aliases_and_prefix_routes_map_to_the_upstream_path() {
    let mock = Mock::plain().await;
    let gw = Gw::start(GwOptions::new(&rules(COLLECT)).upstream("v", mock.url())).await;
    assert_eq!(get(gw.http, "/t/e?v=2").await.status, 204);
    assert_eq!(get(gw.http, "/ingest/batch/?ver=1").await.status, 204);
    let seen = mock.seen();
    assert_eq!(
        seen[0].uri.to_string(),
        "/g/collect?v=2",
        "an alias reaches the vendor at the route's path"
    );
    assert_eq!(seen[1].uri.to_string(), "/i/v0/batch/?ver=1");
}

#[tokio::test]
async fn unknown_paths_get_404_and_wrong_methods_405_without_upstream_contact() {
    let mock = Mock::plain().await;
    let gw = Gw::start(GwOptions::new(&rules(COLLECT)).upstream("v", mock.url())).await;
    let r = get(gw.http, "/wp-admin/").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("tagway-error"), Some("not_found"));
    assert!(r.text().contains("no route"));
    let r = send_plain(
        gw.http,
        req("DELETE", "/gtag/js")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET"));
    assert_eq!(mock.count(), 0);
    assert_eq!(gw.rejected("not_found"), 1);
}

#[tokio::test]
async fn large_scripts_and_chunked_bodies_arrive_intact() {
    let script: Bytes = (0..100 * 1024)
        .map(|i| b"abcdefghij"[i % 10])
        .collect::<Vec<u8>>()
        .into();
    let big: Bytes = (0..3 * 1024 * 1024)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let (s2, b2) = (script.clone(), big.clone());
    let mock = Mock::plain_with(move |s| match s.uri.query() {
        Some("big") => MockReply::status(200).body(b2.clone()),
        Some("chunked") => MockReply::status(200).body(s2.clone()).chunked(),
        _ => MockReply::status(200)
            .header("content-type", "text/javascript")
            .body(s2.clone()),
    })
    .await;
    let gw = Gw::start(GwOptions::new(&rules(COLLECT)).upstream("v", mock.url())).await;
    for (q, want) in [("id=G-1", &script), ("big", &big), ("chunked", &script)] {
        let r = get(gw.http, &format!("/gtag/js?{q}")).await;
        assert_eq!(r.status, 200, "{q}");
        assert_eq!(r.body.len(), want.len(), "{q}");
        assert!(r.body == *want, "{q}: body differs");
    }
    // The pooled connection was reused across all three.
    assert_eq!(mock.connections(), 1);
}

#[tokio::test]
async fn responses_over_the_size_bound_are_refused() {
    let mock = Mock::plain_with(|_| MockReply::status(200).body(vec![b'x'; 64 * 1024])).await;
    let mut o = GwOptions::new(&rules(COLLECT)).upstream("v", mock.url());
    o.max_response = 16 * 1024;
    let gw = Gw::start(o).await;
    let r = get(gw.http, "/gtag/js").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("tagway-error"), Some("upstream_too_large"));
}
