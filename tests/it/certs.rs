//! Certificates served by SNI from the certs folder, changed while running.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::support::client::{Via, req};
use crate::support::gateway::rules;
use crate::support::*;

const ROUTE: &str = "[[route]]\nname = \"c\"\npath = \"/c\"\nupstream = \"v\"\n";

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

async fn handshake(
    gw: &Gw,
    roots: &rustls::RootCertStore,
    sni: Option<&str>,
) -> Result<Reply, String> {
    let host = sni.unwrap_or("localhost");
    let r = req("GET", "/c")
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let mut r = r;
    r.headers_mut().insert("host", host.parse().unwrap());
    send(
        Via {
            addr: gw.https.unwrap(),
            tls: Some((roots, sni)),
            h2: false,
        },
        r,
    )
    .await
}

#[tokio::test]
async fn sni_picks_the_right_certificate() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let a = ca.write_pair(dir.path(), "a.shop.test", &["a.shop.test"]);
    let b = ca.write_pair(dir.path(), "b.shop.test", &["b.shop.test"]);
    let w = ca.write_pair(dir.path(), "_wildcard.cdn.test", &["*.cdn.test"]);
    let mock = Mock::plain().await;
    let mut o = GwOptions::new(&rules(ROUTE)).upstream("v", mock.url());
    o.tls = true;
    o.certs = Some(dir.path().to_path_buf());
    let gw = Gw::start(o).await;
    let roots = ca.roots();
    for (sni, leaf) in [("a.shop.test", &a), ("b.shop.test", &b), ("x.cdn.test", &w)] {
        let r = handshake(&gw, &roots, Some(sni)).await.unwrap();
        assert_eq!(r.status, 204, "{sni}");
        assert_eq!(
            r.peer_cert.unwrap(),
            der(&leaf.cert_pem),
            "{sni} got the wrong certificate"
        );
    }
    assert!(
        handshake(&gw, &roots, Some("unknown.test")).await.is_err(),
        "a name with no certificate must not get one"
    );
    assert!(
        handshake(&gw, &roots, Some("a.b.cdn.test")).await.is_err(),
        "a wildcard covers one label only"
    );
}

#[tokio::test]
async fn a_certificate_dropped_into_the_folder_is_served_and_a_broken_one_is_isolated() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    ca.write_pair(dir.path(), "a.shop.test", &["a.shop.test"]);
    let mock = Mock::plain().await;
    let mut o = GwOptions::new(&rules(ROUTE)).upstream("v", mock.url());
    o.tls = true;
    o.watch = true;
    o.certs = Some(dir.path().to_path_buf());
    let gw = Gw::start(o).await;
    let roots = ca.roots();
    assert!(handshake(&gw, &roots, Some("c.shop.test")).await.is_err());

    // A broken pair and a good one arrive together.
    std::fs::write(dir.path().join("broken.shop.test.crt"), "not a certificate").unwrap();
    std::fs::write(dir.path().join("broken.shop.test.key"), "not a key").unwrap();
    let c = ca.write_pair(dir.path(), "c.shop.test", &["c.shop.test"]);
    let mut served = None;
    for _ in 0..50 {
        if let Ok(r) = handshake(&gw, &roots, Some("c.shop.test")).await {
            served = r.peer_cert;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        served,
        Some(der(&c.cert_pem)),
        "new certificate not served within 5 s"
    );
    assert!(
        handshake(&gw, &roots, Some("a.shop.test")).await.is_ok(),
        "existing names keep serving"
    );
    assert!(
        gw.gw
            .metrics
            .cert_problems
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
}

#[test]
fn mismatched_or_unusable_pairs_are_reported_with_file_and_reason() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    ca.write_pair(dir.path(), "good.test", &["good.test"]);
    ca.write_pair(dir.path(), "named-wrong.test", &["other.test"]);
    let x = ca.leaf(&["keymix.test"]);
    let y = ca.leaf(&["keymix.test"]);
    std::fs::write(dir.path().join("keymix.test.crt"), &x.cert_pem).unwrap();
    std::fs::write(dir.path().join("keymix.test.key"), &y.key_pem).unwrap();
    std::fs::write(dir.path().join("lonely.test.crt"), &x.cert_pem).unwrap();
    let (store, problems) = tagway::certs::CertStore::load(dir.path()).unwrap();
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(problems.len(), 3, "{text:#?}");
    assert!(
        text.iter()
            .any(|p| p.contains("named-wrong.test.crt")
                && p.contains("not valid for named-wrong.test")),
        "{text:#?}"
    );
    assert!(
        text.iter()
            .any(|p| p.contains("keymix.test.crt") && p.contains("do not belong together")),
        "{text:#?}"
    );
    assert!(
        text.iter()
            .any(|p| p.contains("lonely.test.crt") && p.contains("no key file")),
        "{text:#?}"
    );
    assert_eq!(store.current().names, ["good.test"]);
}

#[test]
fn an_empty_folder_gets_a_generated_localhost_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (store, problems) = tagway::certs::CertStore::load(dir.path()).unwrap();
    assert!(problems.is_empty());
    assert!(store.current().generated);
    let (store, _) = tagway::certs::CertStore::load(&dir.path().join("absent")).unwrap();
    assert!(store.current().generated);
}
