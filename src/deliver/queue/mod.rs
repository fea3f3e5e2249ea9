//! Background delivery of queued routes (`delivery = "queue"`).
//!
//! [`accept`] is the request path's side: it spools the processed request and tells the
//! caller to answer with the route's `answer`, or, when the spool is full or failing, applies
//! the route's `on_spool_full` (relay now, or 503).
//!
//! [`Inbox::spawn`] starts the delivery side, one task per worker on the worker's own
//! runtime, with the worker's upstream client (the inline HTTP/1.1 exchange and pool relayed
//! requests use): the spool hands each worker the records it accepted, a batch per group
//! commit (recovered records are shared out at start); they wait in one lane per upstream and
//! are sent with at most the worker's share of `concurrency` in flight per upstream. Connect
//! errors, timeouts, 429 and 5xx are retried with exponential backoff and jitter
//! (`Retry-After` honoured, and it pauses the upstream); other 4xx go to the dead-letter file with the
//! reason, as do records older than `max_age` and records whose upstream a reload removed.
//! After `breaker_failures` failures in a row an upstream's breaker opens: nothing is sent to
//! it for `breaker_cooldown`, then one probe decides whether it closes. Lanes, breakers and
//! `Retry-After` pauses are per worker.
//!
//! - `dispatch`: the lanes, the breaker, retries and dead letters;
//! - `attempt`: one attempt and what its answer means (retry, dead letter, delivered).

mod attempt;
mod dispatch;

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Outgoing, UpstreamClient};
use crate::gateway::Gateway;
use crate::respond::Reject;
use crate::ruleset::{OnSpoolFull, Route};
use crate::spool::{Attached, SpoolError};
pub use dispatch::DEAD_LETTER;
use dispatch::Dispatcher;

/// Background delivery settings (from the command line).
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Requests in flight per upstream (shared out among the workers).
    pub concurrency: usize,
    /// First retry delay; doubled per attempt, up to `backoff_max`, with jitter.
    pub backoff: Duration,
    pub backoff_max: Duration,
    /// A record older than this is dead-lettered instead of sent (vendors drop old hits).
    pub max_age: Duration,
    /// Failures in a row that open an upstream's breaker.
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            concurrency: 256,
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            max_age: Duration::from_secs(24 * 3600),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(10),
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
    let worker = WORKER.with(Cell::get);
    match spool.append(&route.name, upstream, &out, worker).await {
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

/// One worker's part of queued routes: its way into the spool, the records the spool hands
/// it to deliver, and its share of the per-upstream concurrency.
pub struct Inbox {
    spool: Attached,
    limit: usize,
}

impl Inbox {
    /// Starts the worker's spool writer and delivery as tasks on the current (the worker's)
    /// runtime. The writer lives as long as the runtime; delivery stops starting attempts when
    /// `token` is cancelled and ends once those in flight finish (bounded by the shutdown
    /// timeout): await the handle.
    pub fn spawn(
        self,
        gw: Arc<Gateway>,
        client: Arc<UpstreamClient>,
        token: CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let spool = gw.spool.clone()?;
        if let Some(w) = self.spool.writer {
            tokio::spawn(w.run());
        }
        let d = Dispatcher::new(gw, spool, client, self.limit);
        Some(tokio::spawn(d.run(self.spool.records, token)))
    }
}

/// Attaches `workers` workers to the gateway's spool: one [`Inbox`] each (none without a
/// spool). `--delivery-concurrency` is shared out among them (at least one each).
pub fn inboxes(gw: &Gateway, workers: usize) -> Vec<Option<Inbox>> {
    let workers = workers.max(1);
    let attached = gw.spool.as_ref().and_then(|s| s.attach(workers));
    let Some(attached) = attached else {
        return (0..workers).map(|_| None).collect();
    };
    let c = gw.settings.delivery.concurrency.max(1);
    attached
        .into_iter()
        .enumerate()
        .map(|(i, spool)| {
            let limit = (c / workers + usize::from(i < c % workers)).max(1);
            Some(Inbox { spool, limit })
        })
        .collect()
}

thread_local! {
    /// The worker running on this thread: requests it queues are delivered by its own
    /// dispatcher (set by [`set_worker`]; 0 elsewhere).
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Marks the current thread as worker `i` (each worker thread, once, at start).
pub fn set_worker(i: usize) {
    WORKER.with(|w| w.set(i));
}
