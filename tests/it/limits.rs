//! Limits and timeouts: body size, slow clients, idle connections, slow or dead upstreams,
//! connection count.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::client::{Via, req};
use crate::support::gateway::rules;
use crate::support::raw::{exchange, read_until_close, status_of};
use crate::support::*;

const ROUTE: &str = r#"
[[route]]
name = "collect"
path = "/g/collect"
upstream = "v"
max_body = "1KiB"
"#;

#[tokio::test]
async fn bodies_over_the_route_limit_get_413_without_upstream_contact() {
    let mock = Mock::plain().await;
    let gw = Gw::start(GwOptions::new(&rules(ROUTE)).upstream("v", mock.url())).await;
    let big = Bytes::from(vec![b'a'; 2048]);
    let r = send_plain(
        gw.http,
        req("POST", "/g/collect")
            .body(Full::new(big.clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 413);
    assert!(r.text().contains("1024 bytes"), "{}", r.text());
    // Chunked (no Content-Length): the limit applies while reading.
    let mut raw =
        b"POST /g/collect HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for _ in 0..3 {
        raw.extend_from_slice(b"400\r\n");
        raw.extend_from_slice(&[b'b'; 1024]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let out = exchange(gw.http, &raw, Duration::from_secs(3)).await;
    assert_eq!(status_of(&out), Some(413), "{out}");
    // h2 without Content-Length.
    let r = send(
        Via {
            addr: gw.http,
            tls: None,
            h2: true,
        },
        req("POST", "http://localhost/g/collect")
            .body(Full::new(big))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 413);
    // Expect: 100-continue with an oversize length: 413 at once, no 100 Continue.
    let out = exchange(
        gw.http,
        b"POST /g/collect HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\nExpect: 100-continue\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(status_of(&out), Some(413), "{out}");
    assert!(!out.contains("100 Continue"));
    assert_eq!(mock.count(), 0);
    assert_eq!(gw.rejected("body_too_large"), 4);
}

#[tokio::test]
async fn a_client_that_sends_headers_too_slowly_is_disconnected() {
    let mock = Mock::plain().await;
    let mut o = GwOptions::new(&rules(ROUTE)).upstream("v", mock.url());
    o.header_timeout = Duration::from_millis(800);
    let gw = Gw::start(o).await;
    let mut slow = TcpStream::connect(gw.http).await.unwrap();
    let started = Instant::now();
    let dribble = tokio::spawn(async move {
        for b in b"GET /g/collect HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n" {
            if slow.write_all(&[*b]).await.is_err() {
                return (slow, true);
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        (slow, false)
    });
    // Meanwhile a normal client is served.
    assert_eq!(get(gw.http, "/g/collect").await.status, 204);
    let (mut slow, write_failed) = dribble.await.unwrap();
    let closed = write_failed || read_until_close(&mut slow, Duration::from_secs(2)).await.1;
    assert!(closed, "slow client still connected");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed after {:?}",
        started.elapsed()
    );
    assert_eq!(
        gw.gw
            .metrics
            .header_timeouts
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(mock.count(), 1);
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let mock = Mock::plain().await;
    let mut o = GwOptions::new(&rules(ROUTE)).upstream("v", mock.url());
    o.idle_timeout = Duration::from_millis(500);
    let gw = Gw::start(o).await;
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    s.write_all(b"GET /g/collect HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let t0 = Instant::now();
    let (out, closed) = read_until_close(&mut s, Duration::from_secs(3)).await;
    assert_eq!(status_of(&out), Some(204));
    assert!(closed, "idle connection not closed");
    assert!(
        t0.elapsed() >= Duration::from_millis(400) && t0.elapsed() < Duration::from_secs(2),
        "{:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn a_body_that_stalls_gets_408() {
    let mock = Mock::plain().await;
    let mut o = GwOptions::new(&rules(ROUTE)).upstream("v", mock.url());
    o.body_timeout = Duration::from_millis(500);
    let gw = Gw::start(o).await;
    let out = exchange(
        gw.http,
        b"POST /g/collect HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\nab",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(status_of(&out), Some(408), "{out}");
    assert_eq!(mock.count(), 0);
}

#[tokio::test]
async fn upstream_down_gives_502_within_the_bound() {
    let dead = mock::dead_addr().await;
    let gw = Gw::start(GwOptions::new(&rules(ROUTE)).upstream("v", format!("http://{dead}"))).await;
    let t0 = Instant::now();
    let r = get(gw.http, "/g/collect").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("tagway-error"), Some("upstream_connect"));
    assert!(r.text().contains("connection refused"), "{}", r.text());
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_slow_upstream_gives_504_at_the_upstream_timeout() {
    let mock = Mock::plain_with(|_| MockReply::status(204).delay(Duration::from_secs(5))).await;
    let mut o = GwOptions::new(&rules(ROUTE)).upstream("v", mock.url());
    o.upstream_timeout = Duration::from_millis(600);
    let gw = Gw::start(o).await;
    let t0 = Instant::now();
    let r = get(gw.http, "/g/collect").await;
    assert_eq!(r.status, 504);
    assert!(
        t0.elapsed() >= Duration::from_millis(550) && t0.elapsed() < Duration::from_secs(3),
        "{:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn connections_beyond_the_maximum_wait_for_a_free_slot() {
    let mock = Mock::plain().await;
    let mut o = GwOptions::new(&rules(ROUTE)).upstream("v", mock.url());
    o.max_connections = 1;
    let gw = Gw::start(o).await;
    let mut first = TcpStream::connect(gw.http).await.unwrap();
    first
        .write_all(b"GET /g/collect HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = gw.http;
    let second = tokio::spawn(async move { get(addr, "/g/collect").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !second.is_finished(),
        "a second connection was served while the first held the only slot"
    );
    drop(first);
    let r = tokio::time::timeout(Duration::from_secs(3), second)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 204);
}

#[tokio::test]
async fn in_process_shutdown_waits_for_the_request_in_flight() {
    let mock = Mock::plain_with(|_| {
        MockReply::status(200)
            .body("late")
            .delay(Duration::from_millis(800))
    })
    .await;
    let gw = Gw::start(GwOptions::new(&rules(ROUTE)).upstream("v", mock.url())).await;
    let addr = gw.http;
    let inflight = tokio::spawn(async move { get(addr, "/g/collect").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    gw.stop().await;
    assert!(
        t0.elapsed() >= Duration::from_millis(400),
        "stop returned before the request finished"
    );
    let r = inflight.await.unwrap();
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "late"));
}
