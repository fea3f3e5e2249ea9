//! Background delivery of queued routes (`delivery = "queue"`).
//!
//! [`accept`] is the request path's side: it spools the processed request and tells the
//! caller to answer with the route's `answer`, or, when the spool is full or failing, applies
//! the route's `on_spool_full` (relay now, or 503).
//!
//! [`start`] runs the delivery side on its own thread and runtime, with its own upstream
//! client: records arrive from the spool (recovered ones first), wait in one lane per
//! upstream, and are sent with at most `concurrency` in flight per upstream. Connect errors,
//! timeouts, 429 and 5xx are retried with exponential backoff and jitter (`Retry-After`
//! honoured, and it pauses the whole upstream); other 4xx go to the dead-letter file with the
//! reason, as do records older than `max_age` and records whose upstream a reload removed.
//! After `breaker_failures` failures in a row an upstream's breaker opens: nothing is sent to
//! it for `breaker_cooldown`, then one probe decides whether it closes.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Outgoing, UpstreamClient};
use crate::gateway::Gateway;
use crate::respond::Reject;
use crate::ruleset::{OnSpoolFull, Route, RuleSet};
use crate::spool::{Queued, Spool, SpoolError, now_ms};

/// Background delivery settings (from the command line).
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Requests in flight per upstream.
    pub concurrency: usize,
    /// First retry delay; doubled per attempt, up to `backoff_max`, with jitter.
    pub backoff: Duration,
    pub backoff_max: Duration,
    /// A record older than this is dead-lettered instead of sent (vendors drop old hits).
    pub max_age: Duration,
    /// Failures in a row that open an upstream's breaker.
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    /// Threads of the delivery runtime.
    pub threads: usize,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            concurrency: 64,
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            max_age: Duration::from_secs(24 * 3600),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(10),
            threads: 1,
        }
    }
}

/// Spools `out` for `route`. `Ok(None)`: spooled, answer with the route's `answer`.
/// `Ok(Some(out))`: relay it now (no spool, or the spool is full and the route says relay).
pub async fn accept(
    gw: &Gateway,
    route: &Route,
    upstream: &str,
    out: Outgoing,
) -> Result<Option<Outgoing>, Reject> {
    let Some(spool) = &gw.spool else {
        return Ok(Some(out));
    };
    match spool.append(&route.name, upstream, &out).await {
        Ok(()) => Ok(None),
        Err(e) => {
            let m = spool.metrics();
            let what = match e {
                SpoolError::Full(_) => "full",
                _ => "failing",
            };
            match route.on_spool_full {
                OnSpoolFull::Relay => {
                    m.full_relayed.fetch_add(1, Relaxed);
                    gw.warn_limited(
                        "spool_full_relay",
                        &format!("route {}: the spool is {what} ({e}); relaying synchronously (on_spool_full = \"relay\")", route.name),
                    );
                    Ok(Some(out))
                }
                OnSpoolFull::Reject => {
                    m.full_rejected.fetch_add(1, Relaxed);
                    gw.warn_limited(
                        "spool_full_reject",
                        &format!("route {}: the spool is {what} ({e}); answering 503 (on_spool_full = \"reject\")", route.name),
                    );
                    Err(Reject::SpoolFull)
                }
            }
        }
    }
}

/// Starts the delivery thread when the gateway has a spool. It stops when `token` is
/// cancelled, after letting requests in flight finish within the shutdown timeout.
pub fn start(
    gw: &Arc<Gateway>,
    token: &CancellationToken,
) -> std::io::Result<Option<std::thread::JoinHandle<()>>> {
    let Some(spool) = gw.spool.clone() else {
        return Ok(None);
    };
    let Some(rx) = spool.take_queue() else {
        return Ok(None);
    };
    let (gw, token) = (gw.clone(), token.clone());
    let threads = gw.settings.delivery.threads.max(1);
    std::thread::Builder::new()
        .name("tagway-delivery".into())
        .spawn(move || {
            let rt = if threads == 1 {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(threads)
                    .thread_name("tagway-delivery")
                    .enable_all()
                    .build()
            };
            match rt {
                Ok(rt) => rt.block_on(Dispatcher::new(gw, spool).run(rx, token)),
                Err(e) => tracing::error!("delivery: cannot start its runtime: {e}"),
            }
        })
        .map(Some)
}

/// What one attempt came to.
#[derive(Debug)]
enum Outcome {
    /// The vendor answered (status unknown when its answer was over the size limit).
    Delivered(Option<StatusCode>),
    Retry {
        why: String,
        after: Option<Duration>,
    },
    Dead {
        reason: &'static str,
        why: String,
        status: Option<u16>,
    },
}

struct Item {
    q: Queued,
    attempts: u32,
}

/// An item waiting for its retry time (ordered by it, earliest first in the heap).
struct Waiting {
    due: Instant,
    seq: u64,
    item: Item,
}

impl PartialEq for Waiting {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl Eq for Waiting {}
impl PartialOrd for Waiting {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Waiting {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(o.due, o.seq))
    }
}

/// One upstream's queue and breaker.
#[derive(Default)]
struct Lane {
    ready: VecDeque<Item>,
    waiting: BinaryHeap<Reverse<Waiting>>,
    in_flight: usize,
    /// Failed attempts in a row.
    failures: u32,
    /// Breaker open (or the vendor asked to wait) until then.
    paused_until: Option<Instant>,
    /// Half-open: one probe is in flight.
    probing: bool,
}

impl Lane {
    /// The next time this lane may start something by itself (a retry falling due, a pause
    /// ending); completions wake the dispatcher anyway. Never a past instant: a half-open
    /// lane waits for its probe, not in a loop.
    fn next_wake(&self, now: Instant) -> Option<Instant> {
        let retry = self.waiting.peek().map(|w| w.0.due);
        match (retry, self.paused_until.filter(|&p| p > now)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

type Done = (String, Item, Outcome);

struct Dispatcher {
    gw: Arc<Gateway>,
    spool: Arc<Spool>,
    client: Arc<UpstreamClient>,
    lanes: HashMap<String, Lane>,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    in_flight: usize,
    seq: u64,
}

impl Dispatcher {
    fn new(gw: Arc<Gateway>, spool: Arc<Spool>) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Dispatcher {
            client: Arc::new(UpstreamClient::new(
                gw.settings.client.clone(),
                &gw.upstream_tls,
            )),
            gw,
            spool,
            lanes: HashMap::new(),
            done_tx,
            done_rx,
            in_flight: 0,
            seq: 0,
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Queued>, token: CancellationToken) {
        let mut open = true;
        let mut acks_flushed = Instant::now();
        loop {
            let wake = self.pump();
            // Delivery marks: one write per ACK_FLUSH under load, at once when idle.
            if acks_flushed.elapsed() >= ACK_FLUSH || (self.in_flight == 0 && rx.is_empty()) {
                self.spool.flush_acks();
                acks_flushed = Instant::now();
            }
            let sleep = tokio::time::sleep_until(
                wake.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)),
            );
            tokio::select! {
                biased;
                _ = token.cancelled() => break,
                Some(d) = self.done_rx.recv() => {
                    self.finish(d);
                    while let Ok(d) = self.done_rx.try_recv() {
                        self.finish(d);
                    }
                }
                q = rx.recv(), if open => match q {
                    Some(q) => {
                        self.enqueue(q);
                        for _ in 0..1024 {
                            match rx.try_recv() {
                                Ok(q) => self.enqueue(q),
                                Err(_) => break,
                            }
                        }
                    }
                    None => open = false,
                },
                _ = sleep => {}
            }
        }
        // Let attempts in flight finish, so what they delivered is not sent again next start.
        let bound = Instant::now() + self.gw.settings.shutdown_timeout;
        while self.in_flight > 0 {
            match tokio::time::timeout_at(bound, self.done_rx.recv()).await {
                Ok(Some(d)) => self.finish(d),
                _ => break,
            }
        }
        self.spool.flush_acks();
    }

    fn enqueue(&mut self, q: Queued) {
        let lane = self.lanes.entry(q.record.upstream.clone()).or_default();
        lane.ready.push_back(Item { q, attempts: 0 });
    }

    /// Starts every attempt that may start now; returns when to look again.
    fn pump(&mut self) -> Option<Instant> {
        let now = Instant::now();
        let rules = self.gw.rules();
        let limit = self.gw.settings.delivery.concurrency.max(1);
        let max_age = self.gw.settings.delivery.max_age.as_millis() as u64;
        let mut wake: Option<Instant> = None;
        let mut dead = Vec::new();
        let mut sends = Vec::new();
        for (name, lane) in self.lanes.iter_mut() {
            while lane.waiting.peek().is_some_and(|w| w.0.due <= now) {
                if let Some(Reverse(w)) = lane.waiting.pop() {
                    lane.ready.push_back(w.item);
                }
            }
            let cap = match lane.paused_until {
                Some(t) if t > now => 0,
                // Half-open: one probe decides.
                Some(_) => usize::from(!lane.probing && lane.in_flight == 0),
                None => limit.saturating_sub(lane.in_flight),
            };
            let up = rules.upstreams.iter().position(|u| &u.name == name);
            for _ in 0..cap {
                let Some(item) = lane.ready.pop_front() else {
                    break;
                };
                let age = now_ms().saturating_sub(item.q.record.accepted_ms);
                if age > max_age {
                    dead.push((
                        item,
                        Outcome::Dead {
                            reason: "too_old",
                            why: format!("older than --delivery-max-age ({} s)", age / 1000),
                            status: None,
                        },
                    ));
                    continue;
                }
                let Some(up) = up else {
                    dead.push((
                        item,
                        Outcome::Dead {
                            reason: "no_upstream",
                            why: format!(
                                "upstream {name:?} is no longer in the rules (removed by a reload)"
                            ),
                            status: None,
                        },
                    ));
                    continue;
                };
                if lane.paused_until.is_some() {
                    lane.probing = true;
                }
                lane.in_flight += 1;
                sends.push((name.clone(), up, item));
            }
            if let Some(t) = lane.next_wake(now).filter(|_| lane.in_flight < limit) {
                wake = Some(wake.map_or(t, |w: Instant| w.min(t)));
            }
        }
        self.in_flight += sends.len();
        for (name, up, item) in sends {
            let (client, rules, tx) = (self.client.clone(), rules.clone(), self.done_tx.clone());
            let out = item.q.record.out.clone();
            tokio::spawn(async move {
                let outcome = attempt(&client, &rules, up, out).await;
                let _ = tx.send((name, item, outcome));
            });
        }
        for (item, outcome) in dead {
            self.settle(item, outcome);
        }
        wake
    }

    /// An attempt came back.
    fn finish(&mut self, (name, mut item, outcome): Done) {
        self.in_flight -= 1;
        let d = &self.gw.settings.delivery;
        let m = self.spool.metrics();
        let Some(lane) = self.lanes.get_mut(&name) else {
            return;
        };
        lane.in_flight -= 1;
        let was_probe = std::mem::take(&mut lane.probing);
        match outcome {
            Outcome::Retry { why, after } => {
                m.retries.fetch_add(1, Relaxed);
                item.attempts += 1;
                lane.failures += 1;
                let now = Instant::now();
                let delay = after.unwrap_or_else(|| backoff(d, item.attempts));
                if let Some(a) = after {
                    // The vendor asked everyone to wait.
                    lane.paused_until = Some(lane.paused_until.map_or(now + a, |p| p.max(now + a)));
                }
                if was_probe || (lane.failures >= d.breaker_failures && lane.paused_until.is_none())
                {
                    if !was_probe {
                        m.breaker_opened.fetch_add(1, Relaxed);
                        self.gw.warn_limited(
                            "delivery_breaker",
                            &format!("upstream {name}: {} deliveries failed in a row (last: {why}); pausing deliveries to it for {:?}", lane.failures, d.breaker_cooldown),
                        );
                    }
                    let until = now + d.breaker_cooldown.max(after.unwrap_or_default());
                    lane.paused_until = Some(lane.paused_until.map_or(until, |p| p.max(until)));
                } else {
                    self.gw.warn_limited(
                        "delivery_retry",
                        &format!("delivery to upstream {name} will be retried: {why}"),
                    );
                }
                let age_left = (item.q.record.accepted_ms + d.max_age.as_millis() as u64)
                    .saturating_sub(now_ms());
                if delay.as_millis() as u64 > age_left {
                    self.settle(item, Outcome::Dead {
                        reason: "too_old",
                        why: format!("would pass --delivery-max-age before its next attempt; last error: {why}"),
                        status: None,
                    });
                    return;
                }
                self.seq += 1;
                lane.waiting.push(Reverse(Waiting {
                    due: now + delay,
                    seq: self.seq,
                    item,
                }));
            }
            outcome => {
                if lane.paused_until.take().is_some() {
                    tracing::info!("upstream {name} answers again; resuming deliveries");
                }
                lane.failures = 0;
                self.settle(item, outcome);
            }
        }
    }

    /// A record is done with: delivered, or dead-lettered.
    fn settle(&self, item: Item, outcome: Outcome) {
        let m = self.spool.metrics();
        match outcome {
            Outcome::Delivered(status) => {
                if let Some(s) = status {
                    m.delivered[(s.as_u16() / 100).clamp(1, 5) as usize].fetch_add(1, Relaxed);
                }
            }
            Outcome::Dead {
                reason,
                why,
                status,
            } => {
                m.dead(reason);
                self.gw.warn_limited(
                    "dead_letter",
                    &format!(
                        "route {} to upstream {}: not delivered ({why}); written to {}",
                        item.q.record.route,
                        item.q.record.upstream,
                        self.spool.dir().join(DEAD_LETTER).display()
                    ),
                );
                dead_letter(&self.spool, &item, reason, &why, status);
            }
            Outcome::Retry { .. } => return,
        }
        self.spool.done(item.q.loc);
    }
}

/// How often, under load, delivery marks are written to the spool's `.ack` files.
const ACK_FLUSH: Duration = Duration::from_millis(50);

/// The dead-letter file in the spool folder: one JSON object per line.
pub const DEAD_LETTER: &str = "dead-letter.jsonl";

fn dead_letter(spool: &Spool, item: &Item, reason: &str, why: &str, status: Option<u16>) {
    use base64::Engine;
    let r = &item.q.record;
    let line = serde_json::json!({
        "at_ms": now_ms(),
        "accepted_ms": r.accepted_ms,
        "route": r.route,
        "upstream": r.upstream,
        "reason": reason,
        "detail": why,
        "status": status,
        "attempts": item.attempts + 1,
        "method": r.out.method.as_str(),
        "target": r.out.target.as_str(),
        "headers": r.out.headers.iter().map(|(n, v)| (n.as_str(), String::from_utf8_lossy(v.as_bytes()))).collect::<Vec<_>>(),
        "body_base64": base64::engine::general_purpose::STANDARD.encode(&r.out.body),
    });
    let path = spool.dir().join(DEAD_LETTER);
    let res = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes()));
    if let Err(e) = res {
        tracing::error!("cannot write to {}: {e}", path.display());
    }
}

/// Exponential backoff with jitter: between half and all of `base · 2^(attempts-1)`, capped.
fn backoff(d: &DeliverySettings, attempts: u32) -> Duration {
    let exp = d
        .backoff
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
        .min(d.backoff_max);
    let half = exp / 2;
    half + half.mul_f64(fastrand::f64())
}

/// One attempt: send, read the answer to its end (so the connection is reused), classify.
async fn attempt(client: &UpstreamClient, rules: &RuleSet, up: usize, out: Outgoing) -> Outcome {
    let up = &rules.upstreams[up];
    match client.send(up, out).await {
        Ok((res, deadline)) => {
            let status = res.status();
            let after = res
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(retry_after);
            let _ = tokio::time::timeout_at(deadline, res.into_body().collect()).await;
            classify(status, after)
        }
        Err(
            r @ (Reject::UpstreamConnect(_)
            | Reject::UpstreamTimeout(_)
            | Reject::UpstreamFailed(_)),
        ) => Outcome::Retry {
            why: r.message(),
            after: None,
        },
        Err(Reject::UpstreamTooLarge(_)) => Outcome::Delivered(None),
        Err(r) => Outcome::Dead {
            reason: "unsendable",
            why: r.message(),
            status: None,
        },
    }
}

fn classify(status: StatusCode, after: Option<Duration>) -> Outcome {
    let code = status.as_u16();
    if code == 429 || code == 408 || status.is_server_error() {
        return Outcome::Retry {
            why: format!("the vendor answered {code}"),
            after,
        };
    }
    if status.is_client_error() {
        return Outcome::Dead {
            reason: "rejected",
            why: format!("the vendor answered {code}; a 4xx is not retried"),
            status: Some(code),
        };
    }
    Outcome::Delivered(Some(status))
}

/// `Retry-After`: delay-seconds or an HTTP date.
fn retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_retried() {
        assert!(matches!(
            classify(StatusCode::SERVICE_UNAVAILABLE, None),
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, Some(Duration::from_secs(3))),
            Outcome::Retry { after: Some(a), .. } if a == Duration::from_secs(3)
        ));
        assert!(matches!(
            classify(StatusCode::BAD_REQUEST, None),
            Outcome::Dead {
                reason: "rejected",
                status: Some(400),
                ..
            }
        ));
        assert!(matches!(
            classify(StatusCode::NO_CONTENT, None),
            Outcome::Delivered(Some(StatusCode::NO_CONTENT))
        ));
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon"), None);
    }

    #[test]
    fn backoff_grows_with_jitter_and_a_cap() {
        let d = DeliverySettings {
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
            ..DeliverySettings::default()
        };
        for _ in 0..100 {
            let b1 = backoff(&d, 1);
            assert!(b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(100));
            let b3 = backoff(&d, 3);
            assert!(b3 >= Duration::from_millis(200) && b3 <= Duration::from_millis(400));
            let b30 = backoff(&d, 30);
            assert!(b30 >= Duration::from_millis(500) && b30 <= Duration::from_millis(1000));
        }
    }
}
