//! Never an open proxy, and no smuggling: every request here must be refused without any
//! upstream contact (the mock counts what reaches it).

use std::time::Duration;

use crate::support::raw::{exchange, status_of};
use crate::support::*;

fn site_rules() -> String {
    r#"
[site]
hosts = ["localhost", "metrics.shop.example"]

[upstreams.v]
url = "https://vendor.invalid"

[[route]]
name = "collect"
path = "/g/collect"
upstream = "v"
"#
    .to_string()
}

async fn setup() -> (Mock, Gw) {
    let mock = Mock::plain().await;
    let gw = Gw::start(GwOptions::new(&site_rules()).upstream("v", mock.url())).await;
    (mock, gw)
}

const W: Duration = Duration::from_secs(3);

#[tokio::test]
async fn connect_is_refused() {
    let (mock, gw) = setup().await;
    let out = exchange(
        gw.http,
        b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
        W,
    )
    .await;
    assert_eq!(status_of(&out), Some(405), "{out}");
    assert!(out.contains("not a forward proxy"), "{out}");
    assert_eq!(mock.count(), 0);
}

#[tokio::test]
async fn absolute_form_to_another_host_is_refused() {
    let (mock, gw) = setup().await;
    let cases: [&[u8]; 3] = [
        b"GET http://evil.example/g/collect HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET http://evil.example/g/collect HTTP/1.1\r\nHost: evil.example\r\n\r\n",
        b"GET /g/collect HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    ];
    for c in cases {
        let out = exchange(gw.http, c, W).await;
        let code = status_of(&out).unwrap_or(0);
        assert!(
            code == 400 || code == 421,
            "{}: {out}",
            String::from_utf8_lossy(c)
        );
    }
    assert_eq!(mock.count(), 0);
    // The same host in absolute form is an ordinary request for the route's own upstream.
    let out = exchange(
        gw.http,
        b"GET http://localhost/g/collect HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        W,
    )
    .await;
    assert_eq!(status_of(&out), Some(204), "{out}");
    assert_eq!(mock.count(), 1);
    assert_eq!(mock.seen()[0].headers["host"], mock.addr.to_string());
}

#[tokio::test]
async fn malformed_framing_and_targets_never_reach_the_vendor() {
    let (mock, gw) = setup().await;
    let cases: [&[u8]; 5] = [
        // Two Host headers.
        b"GET /g/collect HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n\r\n",
        // No Host in HTTP/1.1.
        b"GET /g/collect HTTP/1.1\r\n\r\n",
        // Differing duplicate Content-Length.
        b"POST /g/collect HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        // Dot segments, encoded.
        b"GET /g/%2e%2e/admin HTTP/1.1\r\nHost: localhost\r\n\r\n",
        // Obfuscated transfer coding.
        b"POST /g/collect HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: xchunked\r\n\r\n1\r\na\r\n0\r\n\r\n",
    ];
    for c in cases {
        let out = exchange(gw.http, c, W).await;
        let code = status_of(&out);
        assert!(
            matches!(code, Some(400) | Some(404) | Some(501) | None),
            "{}: {out}",
            String::from_utf8_lossy(c)
        );
    }
    assert_eq!(
        mock.count(),
        0,
        "{:?}",
        mock.seen()
            .iter()
            .map(|s| s.uri.to_string())
            .collect::<Vec<_>>()
    );
}

/// CL.TE (RFC 9112 §6.1): the message is framed by Transfer-Encoding alone, Content-Length is
/// ignored, and the connection is closed after the answer, so bytes smuggled behind the
/// chunked body are never read as a request. Upstream, the gateway frames the body itself.
#[tokio::test]
async fn cl_te_smuggling_never_forwards_the_smuggled_request() {
    let (mock, gw) = setup().await;
    let out = exchange(
        gw.http,
        b"POST /g/collect HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /g/collect?smuggled=1 HTTP/1.1\r\nHost: localhost\r\n\r\n",
        W,
    )
    .await;
    assert_eq!(
        out.matches("HTTP/1.1 ").count(),
        1,
        "exactly one answer, then close: {out}"
    );
    assert!(
        out.to_ascii_lowercase().contains("connection: close"),
        "{out}"
    );
    let seen = mock.seen();
    assert!(
        seen.iter().all(|s| !s.uri.to_string().contains("smuggled")),
        "smuggled request forwarded"
    );
    assert!(
        seen.iter()
            .all(|s| s.body.is_empty() && s.headers["content-length"] == "0"),
        "re-framed from the chunked body"
    );
}

#[tokio::test]
async fn host_header_must_match_the_tls_server_name() {
    let ca = TestCa::new();
    let certs = tempfile::tempdir().unwrap();
    ca.write_pair(certs.path(), "_wildcard.shop.example", &["*.shop.example"]);
    let mock = Mock::plain().await;
    let mut o = GwOptions::new(&site_rules()).upstream("v", mock.url());
    o.tls = true;
    o.certs = Some(certs.path().to_path_buf());
    let gw = Gw::start(o).await;
    let roots = ca.roots();
    use bytes::Bytes;
    use http_body_util::Full;
    let via = client::Via {
        addr: gw.https.unwrap(),
        tls: Some((&roots, Some("metrics.shop.example"))),
        h2: false,
    };
    let ok = http::Request::builder()
        .uri("/g/collect")
        .header("host", "metrics.shop.example")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(via.clone(), ok).await.unwrap().status, 204);
    let other = http::Request::builder()
        .uri("/g/collect")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(via, other).await.unwrap();
    assert_eq!(r.status, 421);
    assert_eq!(mock.count(), 1);
}
