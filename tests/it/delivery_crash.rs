//! The real binary killed with SIGKILL under load, its last spool segment then torn, and
//! restarted on the same spool: every beacon that was answered 2xx reaches the vendor.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;

use crate::process::{Proc, serve_args, write_rules};
use crate::support::client::{Via, req};
use crate::support::mock::Seen;
use crate::support::*;

fn id_of(uri: &http::Uri) -> u64 {
    uri.query()
        .unwrap_or("")
        .split('&')
        .find_map(|p| p.strip_prefix("id="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX)
}

fn args<'a>(rules: &'a str, upstream: &'a str, spool: &'a str) -> Vec<&'a str> {
    let mut a = serve_args(rules, upstream);
    a.extend([
        "--spool",
        spool,
        "--spool-fsync",
        "10ms",
        "--spool-segment-size",
        "16KiB",
        "--delivery-concurrency",
        "2",
        "--delivery-backoff",
        "10ms",
        "--breaker-cooldown",
        "50ms",
        "--workers",
        "2",
    ]);
    a
}

// Multi-threaded: the mock vendor must keep answering while the test blocks on the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_then_a_torn_segment_loses_no_answered_beacon() {
    let got = Arc::new(Mutex::new(Vec::new()));
    let g2 = got.clone();
    // A vendor slower than the load, so a backlog is in the spool when the gateway dies.
    let vendor = Mock::plain_with(move |s: &Seen| {
        g2.lock().unwrap().push(id_of(&s.uri));
        MockReply::status(204).delay(Duration::from_millis(20))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let rules_dir = dir.path().join("rules");
    write_rules(
        &rules_dir,
        &crate::support::gateway::rules(
            "[[route]]\nname = \"b\"\npath = \"/b\"\nupstream = \"v\"\ndelivery = \"queue\"\n",
        ),
    );
    let spool = dir.path().join("spool");
    let upstream = format!("v={}", vendor.url());
    let (r, s) = (rules_dir.to_str().unwrap(), spool.to_str().unwrap());
    let mut p = Proc::start(&args(r, &upstream, s));
    let addr = p.http_addr();

    let answered = Arc::new(Mutex::new(Vec::new()));
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (answered, next, stop) = (answered.clone(), next.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let id = next.fetch_add(1, Ordering::SeqCst);
                let r = req("GET", &format!("/b?id={id}&en=page_view"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let via = Via {
                    addr,
                    tls: None,
                    h2: false,
                };
                match send(via, r).await {
                    Ok(r) if r.status.is_success() => answered.lock().unwrap().push(id),
                    Ok(r) => panic!("beacon {id} answered {}", r.status),
                    // The gateway is gone.
                    Err(_) => break,
                }
            }
        }));
    }
    // Bounded: a client that stopped early (a non-2xx answer, the gateway gone) fails the test
    // here instead of hanging it.
    for waited in 0.. {
        if answered.lock().unwrap().len() >= 300 {
            break;
        }
        assert!(
            waited < 6000 && !clients.iter().any(|c| c.is_finished()),
            "300 answered beacons never came ({} so far); log:\n{}",
            answered.lock().unwrap().len(),
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // SIGKILL by PID while the clients keep sending.
    p.signal(libc::SIGKILL);
    assert!(
        p.wait(Duration::from_secs(10)).is_some(),
        "tagway did not die"
    );
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let answered: HashSet<u64> = answered.lock().unwrap().iter().copied().collect();
    let before_restart: HashSet<u64> = got.lock().unwrap().iter().copied().collect();
    assert!(
        !answered.is_subset(&before_restart),
        "a backlog was left in the spool"
    );

    // A power loss would also leave a torn last write: add one to the newest segment.
    let mut segs: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    let last = segs.last().expect("segments left after the kill");
    let mut torn = std::fs::read(last).unwrap();
    torn.extend_from_slice(b"TWS1\x40\x00\x00\x00\x11\x22\x33\x44partial record");
    std::fs::write(last, torn).unwrap();

    let mut p = Proc::start(&args(r, &upstream, s));
    p.http_addr();
    for _ in 0..6000 {
        let delivered: HashSet<u64> = got.lock().unwrap().iter().copied().collect();
        if answered.is_subset(&delivered) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let delivered: Vec<u64> = got.lock().unwrap().clone();
    let distinct: HashSet<u64> = delivered.iter().copied().collect();
    let missing: Vec<_> = answered.difference(&distinct).collect();
    assert!(
        missing.is_empty(),
        "{} answered beacons never arrived: {missing:?}\n{}",
        missing.len(),
        p.log()
    );
    let log = p.log();
    assert!(log.contains("torn last write"), "{log}");
    assert!(log.contains("undelivered records"), "{log}");
    eprintln!(
        "answered {}, delivered {} ({} distinct, {} sent twice)",
        answered.len(),
        delivered.len(),
        distinct.len(),
        delivered.len() - distinct.len()
    );
    p.signal(libc::SIGTERM);
    assert!(
        p.wait(Duration::from_secs(20)).is_some(),
        "no exit after SIGTERM:\n{}",
        p.log()
    );
}
