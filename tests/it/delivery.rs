//! Queued routes (`delivery = "queue"`): answered at once from the spool, delivered in the
//! background with retries; the spool's size limit and its policies; dead letters. The
//! process-level crash tests (kill -9, a torn segment) are in `delivery_crash.rs`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tagway::spool::{Fsync, SpoolSettings};

use crate::support::gateway::rules;
use crate::support::*;

const BEACON: &str = r#"
[[route]]
name = "b"
path = "/b"
upstream = "v"
delivery = "queue"
answer = { status = 200, content_type = "application/json", body = '{"queued":true}' }
"#;

/// A gateway with a spool in `dir` and quick retries.
fn options(routes: &str, vendor: &Mock, dir: &Path, max_bytes: u64, fsync: Fsync) -> GwOptions {
    let dir = dir.to_path_buf();
    let mut o = GwOptions::new(&rules(routes)).upstream("v", vendor.url());
    o.tweak = Some(Box::new(move |s: &mut tagway::Settings| {
        s.spool = Some(SpoolSettings {
            fsync,
            max_bytes,
            segment_bytes: 4096,
            ..SpoolSettings::new(dir)
        });
        s.delivery.backoff = Duration::from_millis(10);
        s.delivery.backoff_max = Duration::from_millis(100);
        s.delivery.breaker_failures = 3;
        s.delivery.breaker_cooldown = Duration::from_millis(50);
        s.delivery.concurrency = 4;
    }));
    o
}

/// The `id` query parameter of a request target.
fn id_of(uri: &http::Uri) -> String {
    uri.query()
        .unwrap_or("")
        .split('&')
        .find_map(|p| p.strip_prefix("id="))
        .unwrap_or("")
        .to_string()
}

/// Polls `f` until it holds (the work is in the background); panics after a generous bound
/// with `what` so a hang is a failure, not a stuck suite.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..3000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("still not true after 30 s: {what}");
}

fn segments(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".seg")
        })
        .count()
}

/// A vendor that answers 503 while `down`, else 204, and lists the ids it answered 204.
fn flaky_vendor(
    down: Arc<AtomicBool>,
    got: Arc<Mutex<Vec<String>>>,
) -> impl Fn(&Seen) -> MockReply {
    move |s| {
        if down.load(Ordering::SeqCst) {
            MockReply::status(503).body("vendor down")
        } else {
            got.lock().unwrap().push(id_of(&s.uri));
            MockReply::status(204)
        }
    }
}

use crate::support::mock::Seen;

#[tokio::test]
async fn a_vendor_outage_loses_nothing_and_duplicates_nothing() {
    let down = Arc::new(AtomicBool::new(true));
    let got = Arc::new(Mutex::new(Vec::new()));
    let vendor = Mock::plain_with(flaky_vendor(down.clone(), got.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gw::start(options(
        BEACON,
        &vendor,
        dir.path(),
        1 << 20,
        Fsync::Every(Duration::from_millis(5)),
    ))
    .await;

    // Steady load from four clients while the vendor is down, then while it comes back.
    let n = 60;
    let addr = gw.http;
    let mut clients = Vec::new();
    for c in 0..4 {
        let down = down.clone();
        clients.push(tokio::spawn(async move {
            for i in 0..n / 4 {
                let id = c * 100 + i;
                let r = get(addr, &format!("/b?id={id}&en=page_view")).await;
                assert_eq!(r.status, 200, "beacon {id}");
                assert_eq!(r.text(), r#"{"queued":true}"#);
                assert_eq!(r.header("content-type"), Some("application/json"));
                if c == 0 && i == n / 8 {
                    down.store(false, Ordering::SeqCst);
                }
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let m = gw.gw.metrics.spool.clone();
    until("every beacon delivered", || {
        m.pending.load(Ordering::SeqCst) == 0 && got.lock().unwrap().len() >= n as usize
    })
    .await;
    assert!(
        m.retries.load(Ordering::SeqCst) > 0,
        "the outage caused retries"
    );
    gw.stop().await;

    let mut counts: HashMap<String, usize> = HashMap::new();
    for id in got.lock().unwrap().iter() {
        *counts.entry(id.clone()).or_default() += 1;
    }
    assert_eq!(counts.len(), n as usize, "every beacon arrived");
    assert!(
        counts.values().all(|&c| c == 1),
        "none arrived twice: {counts:?}"
    );
    assert_eq!(m.appended.load(Ordering::SeqCst), n as u64);
    assert_eq!(m.delivered_count(), n as u64);
    assert_eq!(m.dead_count(), 0);
    assert_eq!(segments(dir.path()), 0, "delivered segments are removed");
}

/// Each worker spools and delivers the requests it accepted (with `always`, through one
/// shared spool lane): with two workers and parallel clients, every beacon arrives once.
#[tokio::test]
async fn two_workers_deliver_every_beacon_once_with_either_fsync_policy() {
    for fsync in [Fsync::Every(Duration::from_millis(5)), Fsync::Always] {
        let got = Arc::new(Mutex::new(Vec::new()));
        let vendor = Mock::plain_with(flaky_vendor(Arc::default(), got.clone())).await;
        let dir = tempfile::tempdir().unwrap();
        let mut o = options(BEACON, &vendor, dir.path(), 1 << 20, fsync);
        o.workers = 2;
        let gw = Gw::start(o).await;
        let addr = gw.http;
        let clients: Vec<_> = (0..4)
            .map(|c| {
                tokio::spawn(async move {
                    for i in 0..10 {
                        let r = get(addr, &format!("/b?id={}", c * 100 + i)).await;
                        assert_eq!(r.status, 200);
                    }
                })
            })
            .collect();
        for c in clients {
            c.await.unwrap();
        }
        let m = gw.gw.metrics.spool.clone();
        until("every beacon delivered", || {
            m.pending.load(Ordering::SeqCst) == 0 && got.lock().unwrap().len() >= 40
        })
        .await;
        gw.stop().await;
        let mut ids = got.lock().unwrap().clone();
        ids.sort();
        let n = ids.len();
        ids.dedup();
        assert_eq!((n, ids.len()), (40, 40), "{fsync:?}: each once");
        assert_eq!(m.appended.load(Ordering::SeqCst), 40);
        assert_eq!(
            segments(dir.path()),
            0,
            "{fsync:?}: delivered segments are removed"
        );
    }
}

#[tokio::test]
async fn a_slow_vendor_does_not_slow_the_answer() {
    let vendor =
        Mock::plain_with(|_: &Seen| MockReply::status(204).delay(Duration::from_secs(2))).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gw::start(options(BEACON, &vendor, dir.path(), 1 << 20, Fsync::Always)).await;
    let r = get(gw.http, "/b?id=1").await;
    assert_eq!(r.status, 200);
    // The browser has its answer while the vendor has not answered yet.
    assert_eq!(vendor.answered(), 0);
    let m = gw.gw.metrics.spool.clone();
    until("delivered", || m.delivered_count() == 1).await;
    assert_eq!(vendor.answered(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn relay_routes_still_wait_for_the_vendor() {
    let vendor = Mock::plain_with(|_: &Seen| {
        MockReply::status(200)
            .body("script")
            .delay(Duration::from_millis(200))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let routes = "[[route]]\nname = \"s\"\npath = \"/s\"\nupstream = \"v\"\n";
    let gw = Gw::start(options(routes, &vendor, dir.path(), 1 << 20, Fsync::Always)).await;
    let r = get(gw.http, "/s").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "script"));
    assert_eq!(vendor.answered(), 1);
    assert_eq!(gw.gw.metrics.spool.appended.load(Ordering::SeqCst), 0);
    gw.stop().await;
}

/// Fills a small spool while the vendor is down; returns the answers in order.
async fn fill(
    policy: &str,
) -> (
    Vec<Reply>,
    Arc<tagway::spool::SpoolMetrics>,
    Arc<Mutex<Vec<String>>>,
    Arc<AtomicBool>,
    Gw,
    Mock,
    tempfile::TempDir,
) {
    let down = Arc::new(AtomicBool::new(true));
    let got = Arc::new(Mutex::new(Vec::new()));
    let vendor = Mock::plain_with(flaky_vendor(down.clone(), got.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let routes = format!("{BEACON}on_spool_full = \"{policy}\"\n");
    let gw = Gw::start(options(&routes, &vendor, dir.path(), 600, Fsync::Always)).await;
    let mut answers = Vec::new();
    for i in 0..30 {
        answers.push(get(gw.http, &format!("/b?id={i}")).await);
    }
    let m = gw.gw.metrics.spool.clone();
    (answers, m, got, down, gw, vendor, dir)
}

#[tokio::test]
async fn a_full_spool_answers_503_when_the_route_says_reject() {
    let (answers, m, got, down, gw, _vendor, _dir) = fill("reject").await;
    let queued = answers.iter().take_while(|r| r.status == 200).count();
    assert!(
        queued > 0 && queued < 30,
        "some queued, then full: {queued}"
    );
    for r in &answers[queued..] {
        assert_eq!(r.status, 503);
        assert_eq!(r.header("tagway-error"), Some("spool_full"));
    }
    assert_eq!(m.full_rejected.load(Ordering::SeqCst), 30 - queued as u64);
    assert_eq!(gw.rejected("spool_full"), 30 - queued as u64);
    let text = gw.gw.metrics.render();
    assert!(text.contains(&format!(
        "tagway_spool_full_total{{policy=\"reject\"}} {}",
        30 - queued
    )));
    // The vendor comes back: what was queued arrives.
    down.store(false, Ordering::SeqCst);
    until("queued ones delivered", || {
        got.lock().unwrap().len() == queued
    })
    .await;
    gw.stop().await;
}

#[tokio::test]
async fn a_full_spool_relays_when_the_route_says_relay() {
    let (answers, m, _got, down, gw, vendor, _dir) = fill("relay").await;
    let queued = answers.iter().take_while(|r| r.status == 200).count();
    assert!(
        queued > 0 && queued < 30,
        "some queued, then full: {queued}"
    );
    // Past the limit, requests went to the vendor at once and its own answer came back.
    for r in &answers[queued..] {
        assert_eq!((r.status.as_u16(), r.text().as_str()), (503, "vendor down"));
        assert_eq!(r.header("tagway-error"), None);
    }
    assert_eq!(m.full_relayed.load(Ordering::SeqCst), 30 - queued as u64);
    let relayed_ids: Vec<String> = vendor.seen().iter().map(|s| id_of(&s.uri)).collect();
    assert!(relayed_ids.contains(&"29".to_string()));
    down.store(false, Ordering::SeqCst);
    until("queued ones delivered", || {
        m.pending.load(Ordering::SeqCst) == 0
    })
    .await;
    gw.stop().await;
}

#[tokio::test]
async fn a_4xx_is_dead_lettered_with_its_reason_and_not_retried() {
    let vendor = Mock::plain_with(|s: &Seen| {
        if id_of(&s.uri) == "bad" {
            MockReply::status(400).body("bad hit")
        } else {
            MockReply::status(204)
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gw::start(options(BEACON, &vendor, dir.path(), 1 << 20, Fsync::Always)).await;
    assert_eq!(get(gw.http, "/b?id=bad").await.status, 200);
    assert_eq!(get(gw.http, "/b?id=good").await.status, 200);
    let m = gw.gw.metrics.spool.clone();
    until("both settled", || {
        m.pending.load(Ordering::SeqCst) == 0 && m.dead_count() == 1
    })
    .await;
    gw.stop().await;
    assert_eq!(vendor.count(), 2, "the 400 was not retried");
    let dl = std::fs::read_to_string(dir.path().join("dead-letter.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(dl.lines().next().unwrap()).unwrap();
    assert_eq!(line["reason"], "rejected");
    assert_eq!(line["status"], 400);
    assert_eq!(line["route"], "b");
    assert_eq!(line["upstream"], "v");
    assert_eq!(line["target"], "/b?id=bad");
    assert_eq!(dl.lines().count(), 1);
}

#[tokio::test]
async fn records_past_the_max_age_are_dead_lettered() {
    let vendor = Mock::plain_with(|_: &Seen| MockReply::status(503)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(BEACON, &vendor, dir.path(), 1 << 20, Fsync::Always);
    let t = o.tweak.take().unwrap();
    o.tweak = Some(Box::new(move |s: &mut tagway::Settings| {
        t(s);
        s.delivery.max_age = Duration::from_millis(300);
    }));
    let gw = Gw::start(o).await;
    assert_eq!(get(gw.http, "/b?id=old").await.status, 200);
    let m = gw.gw.metrics.spool.clone();
    until("dead-lettered", || m.pending.load(Ordering::SeqCst) == 0).await;
    assert!(vendor.count() >= 1, "it was tried");
    gw.stop().await;
    assert_eq!(m.dead_lettered[1].load(Ordering::SeqCst), 1, "too_old");
    let dl = std::fs::read_to_string(dir.path().join("dead-letter.jsonl")).unwrap();
    assert!(dl.contains("\"too_old\""), "{dl}");
}

#[tokio::test]
async fn a_restart_delivers_what_an_earlier_run_spooled() {
    let down = Arc::new(AtomicBool::new(true));
    let got = Arc::new(Mutex::new(Vec::new()));
    let vendor = Mock::plain_with(flaky_vendor(down.clone(), got.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gw::start(options(BEACON, &vendor, dir.path(), 1 << 20, Fsync::Always)).await;
    for i in 0..10 {
        assert_eq!(get(gw.http, &format!("/b?id={i}")).await.status, 200);
    }
    gw.stop().await;
    assert!(segments(dir.path()) > 0);
    assert!(got.lock().unwrap().is_empty());

    down.store(false, Ordering::SeqCst);
    let gw = Gw::start(options(BEACON, &vendor, dir.path(), 1 << 20, Fsync::Always)).await;
    let m = gw.gw.metrics.spool.clone();
    assert_eq!(m.recovered.load(Ordering::SeqCst), 10);
    until("recovered ones delivered", || {
        got.lock().unwrap().len() == 10
    })
    .await;
    until("settled", || m.pending.load(Ordering::SeqCst) == 0).await;
    gw.stop().await;
    let mut ids = got.lock().unwrap().clone();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10);
    assert_eq!(segments(dir.path()), 0);
}

#[tokio::test]
async fn a_spool_folder_serves_one_gateway_at_a_time() {
    let vendor = Mock::plain().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gw::start(options(BEACON, &vendor, dir.path(), 1 << 20, Fsync::Always)).await;
    let err = Gw::try_start(options(BEACON, &vendor, dir.path(), 1 << 20, Fsync::Always))
        .await
        .err()
        .unwrap();
    assert!(err.contains("in use by another tagway process"), "{err}");
    gw.stop().await;
}

#[tokio::test]
async fn a_record_whose_upstream_a_reload_removed_is_dead_lettered() {
    let vendor = Mock::plain_with(|_: &Seen| MockReply::status(503)).await;
    let dir = tempfile::tempdir().unwrap();
    let route = |up: &str| {
        format!(
            "[[route]]\nname = \"b\"\npath = \"/b\"\nupstream = \"{up}\"\ndelivery = \"queue\"\n"
        )
    };
    let gone = format!(
        "[upstreams.gone]\nurl = \"{}\"\n\n{}",
        vendor.url(),
        route("gone")
    );
    let gw = Gw::start(options(&gone, &vendor, dir.path(), 1 << 20, Fsync::Always)).await;
    assert_eq!(get(gw.http, "/b?id=1").await.status, 204);
    until("tried once", || vendor.count() >= 1).await;

    std::fs::write(gw.rules_dir.path().join("00-test.toml"), rules(&route("v"))).unwrap();
    gw.gw.reload_rules().unwrap();
    let m = gw.gw.metrics.spool.clone();
    until("dead-lettered", || m.pending.load(Ordering::SeqCst) == 0).await;
    gw.stop().await;
    assert_eq!(m.dead_lettered[2].load(Ordering::SeqCst), 1, "no_upstream");
    let dl = std::fs::read_to_string(dir.path().join("dead-letter.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(dl.lines().next().unwrap()).unwrap();
    assert_eq!(line["reason"], "no_upstream");
    assert_eq!(line["upstream"], "gone");
}

/// `routes` (with `delivery = "queue"`) is refused at load with a message containing every
/// one of `says`; without the `delivery` line (relaying, the default) it loads.
async fn queueing_is_refused(routes: &str, says: &[&str]) {
    let err = Gw::try_start(GwOptions::new(&rules(routes)))
        .await
        .err()
        .unwrap();
    assert!(says.iter().all(|s| err.contains(s)), "{err}");
    let relayed = routes.replace("delivery = \"queue\"\n", "");
    Gw::start(GwOptions::new(&rules(&relayed)))
        .await
        .stop()
        .await;
}

/// The vendor's Set-Cookie never reaches the browser of a queued route. An `answer` alone (for
/// dropped requests) does not queue a route: relaying is the default.
#[tokio::test]
async fn a_queued_route_cannot_promise_the_vendors_cookies() {
    let routes = "[[route]]\nname = \"b\"\npath = \"/b\"\nupstream = \"v\"\nanswer = { status = 204 }\ndelivery = \"queue\"\nset_cookie = true\n";
    queueing_is_refused(routes, &["Set-Cookie can never reach the browser"]).await;
}

/// A script route serves the vendor's script: queueing it would answer every browser with the
/// fixed `answer`, so it is refused at load.
#[tokio::test]
async fn a_script_route_cannot_be_queued() {
    let routes = "[[route]]\nname = \"js\"\npath = \"/s.js\"\nmethods = [\"GET\"]\nupstream = \"v\"\ncodec = \"opaque\"\nscan = false\ndelivery = \"queue\"\nscript = { ttl = \"1h\" }\n";
    queueing_is_refused(routes, &["is a script route", "cannot be queued"]).await;
}

/// A spool record holds at most 64 MiB (recovery treats longer ones as damage), so a queued
/// route may not accept larger bodies.
#[tokio::test]
async fn a_queued_route_cannot_take_bodies_a_record_cannot_hold() {
    let routes = "[[route]]\nname = \"b\"\npath = \"/b\"\nupstream = \"v\"\ndelivery = \"queue\"\nmax_body = \"100MiB\"\n";
    queueing_is_refused(routes, &["at most 64MiB"]).await;
}
