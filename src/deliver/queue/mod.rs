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
//!
//! - `dispatch`: the lanes, the breaker, retries and dead letters;
//! - `attempt`: one attempt and what its answer means (retry, dead letter, delivered).

mod attempt;
mod dispatch;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Outgoing;
use crate::gateway::Gateway;
use crate::respond::Reject;
use crate::ruleset::{OnSpoolFull, Route};
use crate::spool::SpoolError;
pub use dispatch::DEAD_LETTER;
use dispatch::Dispatcher;

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
