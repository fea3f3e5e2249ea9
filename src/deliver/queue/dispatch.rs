//! One worker's delivery loop: one lane per upstream (ready queue, retries waiting for their
//! time, requests in flight, the breaker), completions, and records settled as delivered or
//! dead-lettered (`DIR/dead-letter.jsonl`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::attempt::{Outcome, attempt, backoff};
use crate::deliver::UpstreamClient;
use crate::gateway::Gateway;
use crate::ruleset::{RuleSet, Upstream};
use crate::spool::{Batch, Loc, Queued, Spool, now_ms};

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
struct Lane {
    name: Arc<str>,
    /// The upstream by that name in the rules `Dispatcher::rules` (`None`: a reload removed it).
    up: Option<Arc<Upstream>>,
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
    fn new(name: &str) -> Lane {
        Lane {
            name: Arc::from(name),
            up: None,
            ready: VecDeque::new(),
            waiting: BinaryHeap::new(),
            in_flight: 0,
            failures: 0,
            paused_until: None,
            probing: false,
        }
    }

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

/// An attempt that came back: its lane (index), the record, what the vendor said.
type Done = (usize, Item, Outcome);

/// Attempts in flight, polled by the dispatcher's own task (no task per attempt).
type Running = FuturesUnordered<Pin<Box<dyn Future<Output = Done> + Send>>>;

/// One worker's delivery: its lanes, its attempts in flight, on the worker's runtime and
/// with the worker's upstream client (the pool relayed requests use).
pub(super) struct Dispatcher {
    gw: Arc<Gateway>,
    spool: Arc<Spool>,
    client: Arc<UpstreamClient>,
    /// This worker's share of `--delivery-concurrency`, per upstream.
    limit: usize,
    /// One per upstream seen (a few): found by name, then by index.
    lanes: Vec<Lane>,
    /// The rule set the lanes' upstreams were taken from.
    rules: Option<Arc<RuleSet>>,
    running: Running,
    /// Records settled since the last call to `Spool::done` (one lock per batch).
    settled: Vec<Loc>,
    seq: u64,
}

impl Dispatcher {
    pub(super) fn new(
        gw: Arc<Gateway>,
        spool: Arc<Spool>,
        client: Arc<UpstreamClient>,
        limit: usize,
    ) -> Self {
        Dispatcher {
            gw,
            spool,
            client,
            limit: limit.max(1),
            lanes: Vec::new(),
            rules: None,
            running: FuturesUnordered::new(),
            settled: Vec::new(),
            seq: 0,
        }
    }

    pub(super) async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Batch>,
        token: CancellationToken,
    ) {
        let mut open = true;
        let mut acks_flushed = Instant::now();
        // Made once: a timer reset and a cancellation waiter per pass cost more than the pass.
        let far = || Instant::now() + Duration::from_secs(3600);
        let mut sleep = std::pin::pin!(tokio::time::sleep_until(far()));
        let mut armed: Option<Instant> = None;
        let mut cancelled = std::pin::pin!(token.cancelled());
        loop {
            let now = Instant::now();
            let wake = self.pump(now);
            self.settle_done();
            // Delivery marks: one write per ACK_FLUSH under load, at once when idle.
            if now.duration_since(acks_flushed) >= ACK_FLUSH
                || (self.running.is_empty() && rx.is_empty())
            {
                self.spool.flush_acks();
                acks_flushed = now;
            }
            if wake != armed {
                sleep.as_mut().reset(wake.unwrap_or_else(far));
                armed = wake;
            }
            tokio::select! {
                biased;
                _ = &mut cancelled => break,
                Some(d) = self.running.next(), if !self.running.is_empty() => {
                    self.finish(d);
                    while let Some(Some(d)) = self.running.next().now_or_never() {
                        self.finish(d);
                    }
                }
                b = rx.recv(), if open => match b {
                    Some(b) => {
                        self.enqueue(b);
                        for _ in 0..64 {
                            match rx.try_recv() {
                                Ok(b) => self.enqueue(b),
                                Err(_) => break,
                            }
                        }
                    }
                    None => open = false,
                },
                _ = &mut sleep => {
                    sleep.as_mut().reset(far());
                    armed = None;
                }
            }
        }
        // Let attempts in flight finish, so what they delivered is not sent again next start.
        let bound = Instant::now() + self.gw.settings.shutdown_timeout;
        while !self.running.is_empty() {
            match tokio::time::timeout_at(bound, self.running.next()).await {
                Ok(Some(d)) => self.finish(d),
                _ => break,
            }
        }
        self.settle_done();
        self.spool.flush_acks();
    }

    fn enqueue(&mut self, batch: Batch) {
        for q in batch {
            let i = match self
                .lanes
                .iter()
                .position(|l| *l.name == *q.record.upstream)
            {
                Some(i) => i,
                None => {
                    self.lanes.push(Lane::new(&q.record.upstream));
                    self.rules = None; // look its upstream up
                    self.lanes.len() - 1
                }
            };
            self.lanes[i].ready.push_back(Item { q, attempts: 0 });
        }
    }

    /// Starts every attempt that may start now; returns when to look again.
    fn pump(&mut self, now: Instant) -> Option<Instant> {
        if self
            .lanes
            .iter()
            .all(|l| l.ready.is_empty() && l.waiting.is_empty())
        {
            return None;
        }
        let rules = self.gw.rules();
        if !self.rules.as_ref().is_some_and(|r| Arc::ptr_eq(r, &rules)) {
            // New rules (or a new lane): upstreams by name, once per reload.
            for lane in &mut self.lanes {
                lane.up = rules
                    .upstreams
                    .iter()
                    .find(|u| *u.name == *lane.name)
                    .map(|u| Arc::new(u.clone()));
            }
            self.rules = Some(rules);
        }
        let limit = self.limit;
        let max_age = self.gw.settings.delivery.max_age.as_millis() as u64;
        let now_ms = now_ms();
        let mut wake: Option<Instant> = None;
        let mut dead = Vec::new();
        for (i, lane) in self.lanes.iter_mut().enumerate() {
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
            for _ in 0..cap {
                let Some(item) = lane.ready.pop_front() else {
                    break;
                };
                let age = now_ms.saturating_sub(item.q.record.accepted_ms);
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
                let Some(up) = lane.up.clone() else {
                    dead.push((
                        item,
                        Outcome::Dead {
                            reason: "no_upstream",
                            why: format!(
                                "upstream {:?} is no longer in the rules (removed by a reload)",
                                lane.name
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
                let client = self.client.clone();
                self.running.push(Box::pin(async move {
                    let outcome = attempt(&client, &up, &item.q.record.out).await;
                    (i, item, outcome)
                }));
            }
            if let Some(t) = lane.next_wake(now).filter(|_| lane.in_flight < limit) {
                wake = Some(wake.map_or(t, |w: Instant| w.min(t)));
            }
        }
        for (item, outcome) in dead {
            self.settle(item, outcome);
        }
        wake
    }

    /// Marks the records settled since the last call as done in the spool.
    fn settle_done(&mut self) {
        if !self.settled.is_empty() {
            self.spool.done(&self.settled);
            self.settled.clear();
        }
    }

    /// An attempt came back.
    fn finish(&mut self, (i, mut item, outcome): Done) {
        let d = &self.gw.settings.delivery;
        let m = self.spool.metrics();
        let Some(lane) = self.lanes.get_mut(i) else {
            return;
        };
        let name = lane.name.clone();
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
    fn settle(&mut self, item: Item, outcome: Outcome) {
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
        self.settled.push(item.q.loc);
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
