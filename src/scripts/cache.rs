//! The script cache, shared by every worker thread: one slot per key (route fingerprint,
//! upstream path and query) with the last good copy fetched from the vendor, the rewritten and
//! compressed variants made from it (one per first-party host), and the fetch in flight.
//!
//! Freshness of a copy, by its age since the fetch:
//! - under `ttl`: served as is (a hit);
//! - under `ttl + stale`: served, and one background fetch refreshes it;
//! - under `ttl + stale_if_error`: served only when a fetch for it just failed (the vendor is
//!   down or erring); otherwise the request waits for a new fetch and gets the copy if that
//!   fails;
//! - older: dropped.
//!
//! Single flight: a slot has at most one fetch at a time. The request that finds none starts
//! it as a task on its own worker's runtime (with that worker's upstream client); every other
//! request, on any worker, waits on the flight's `watch` channel. A failed fetch blocks new
//! fetches for the slot for a short back-off, so an outage costs one upstream attempt per
//! back-off, not one per page view. The failure is kept in the slot for the back-off even
//! when there is no copy (a cold cache during an outage), and requests are answered with it.
//!
//! Size: the bytes of every copy and variant count against `max_bytes`; past it, the least
//! recently used slots are emptied. Scripts larger than `max_script` are served but never
//! stored.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use tokio::sync::{OnceCell, watch};
use tokio::time::Instant;

use super::ScriptPolicy;
use super::variant::Variant;
use crate::metrics::Metrics;
use crate::respond::Reject;

/// Bounds of the cache (command line: `--script-cache-size`, `--script-max-size`).
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// Total bytes of copies and variants kept.
    pub max_bytes: u64,
    /// Largest script (decompressed) that is stored; larger ones are served uncached.
    pub max_script: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_bytes: 64 * 1024 * 1024,
            max_script: 4 * 1024 * 1024,
        }
    }
}

/// Variants kept per copy: one per first-party host, so a site with a few tracking hosts is
/// served from memory while a flood of made-up `Host` values cannot grow a slot.
const MAX_VARIANTS: usize = 8;
/// After a failed fetch, no new fetch for the slot before this.
const RETRY_BACKOFF: Duration = Duration::from_secs(10);

/// A script as the vendor sent it, decompressed, before any rewriting.
#[derive(Debug)]
pub struct Copy {
    pub body: Bytes,
    pub content_type: Option<HeaderValue>,
    pub fetched_at: Instant,
    /// Distinguishes copies of one slot, so a variant built from an older copy is not stored
    /// with a newer one.
    pub generation: u64,
    /// Within `max_script`: stored, and its variants too.
    pub cacheable: bool,
}

/// Why a fetch gave no script.
#[derive(Debug, Clone)]
pub enum FetchError {
    /// The vendor could not be reached, timed out, or failed (5xx, 429, a redirect, a body
    /// that could not be read): a cached copy stands in when there is one.
    Failed(Reject),
    /// The vendor's definite answer other than 200 (a 404 for an unknown id): passed to the
    /// browser, never cached; it also drops the cached copy.
    Answer {
        status: StatusCode,
        content_type: Option<HeaderValue>,
        body: Bytes,
    },
}

pub type Outcome = Result<Arc<Copy>, FetchError>;

/// A fetch's result as its waiters see it: `None` until it is done.
pub type Waiter = watch::Receiver<Option<Outcome>>;

/// What a request does, decided under the cache lock.
pub enum Plan {
    /// A fresh copy.
    Fresh(Arc<Copy>),
    /// A stale copy, served now; when `refresh` is set, the caller starts that fetch in the
    /// background.
    Stale {
        copy: Arc<Copy>,
        refresh: Option<Flight>,
    },
    /// A copy standing in for a vendor whose last fetch failed moments ago.
    ErrorStale(Arc<Copy>),
    /// No usable copy, and the last fetch failed moments ago: that failure, without a new
    /// fetch until the back-off passes.
    Failed(Reject),
    /// No usable copy: wait for a fetch (`lead` set: the caller starts it). `fallback` is a
    /// copy still allowed to stand in if the fetch fails.
    Fetch {
        wait: Waiter,
        lead: Option<Flight>,
        fallback: Option<Arc<Copy>>,
    },
}

/// The right to run a slot's one fetch. Finishing it stores the result and wakes every
/// waiter; dropping it unfinished (the worker shut down) frees the slot for a new fetch and
/// tells the waiters the fetch was interrupted.
pub struct Flight {
    shared: Arc<Shared>,
    key: Arc<str>,
    id: u64,
    tx: Option<watch::Sender<Option<Outcome>>>,
    /// How long the copy it stores may be kept (the route's `ttl` plus its stale windows).
    lifetime: Duration,
}

/// The cache; cheap to clone, every clone is the same cache.
#[derive(Clone)]
pub struct ScriptCache {
    shared: Arc<Shared>,
}

struct Shared {
    settings: CacheSettings,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    slots: HashMap<Arc<str>, Slot>,
    /// Bytes of every copy and variant held.
    bytes: u64,
    /// Use counter, for least-recently-used eviction.
    tick: u64,
    /// Ids of flights and generations of copies.
    serial: u64,
}

#[derive(Default)]
struct Slot {
    copy: Option<Arc<Copy>>,
    variants: Vec<VariantSlot>,
    flight: Option<(u64, Waiter)>,
    retry_at: Option<Instant>,
    /// Why the last fetch failed, kept until `retry_at` (answered when there is no copy).
    failure: Option<Reject>,
    /// When the copy is past any use; slots no request asks for any more (a reload changed
    /// their route) are swept after this.
    drop_at: Option<Instant>,
    used: u64,
}

struct VariantSlot {
    host: Box<str>,
    cell: Arc<OnceCell<Arc<Variant>>>,
    /// Counted into the cache's bytes (0 until built).
    bytes: u64,
    used: u64,
}

/// Whether `copy` is the slot's current copy.
fn holds(slot: &Slot, copy: &Copy) -> bool {
    slot.copy
        .as_ref()
        .is_some_and(|c| c.generation == copy.generation)
}

impl Slot {
    fn bytes(&self) -> u64 {
        self.copy.as_ref().map_or(0, |c| c.body.len() as u64)
            + self.variants.iter().map(|v| v.bytes).sum::<u64>()
    }
}

impl ScriptCache {
    pub fn new(settings: CacheSettings) -> ScriptCache {
        ScriptCache {
            shared: Arc::new(Shared {
                settings,
                inner: Mutex::new(Inner::default()),
            }),
        }
    }

    pub fn settings(&self) -> &CacheSettings {
        &self.shared.settings
    }

    /// Bytes held now.
    pub fn bytes(&self) -> u64 {
        self.shared.lock().bytes
    }

    /// Host variants held now, across all scripts (a variant's bytes change when its final
    /// br encoding replaces the first one in the background; their number does not).
    pub fn variants(&self) -> usize {
        self.shared
            .lock()
            .slots
            .values()
            .map(|s| s.variants.len())
            .sum()
    }

    /// Decides what a request for `key` does at `now`, counting it.
    pub fn plan(&self, key: &str, policy: &ScriptPolicy, now: Instant, m: &Metrics) -> Plan {
        let mut inner = self.shared.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let key: Arc<str> = match inner.slots.get_key_value(key) {
            Some((k, _)) => k.clone(),
            None => key.into(),
        };
        let slot = inner.slots.entry(key.clone()).or_default();
        slot.used = tick;
        let backing_off = slot.retry_at.is_some_and(|t| now < t);
        let in_flight = slot.flight.as_ref().map(|(_, w)| w.clone());
        let failure = slot.failure.clone().filter(|_| backing_off);
        let copy = slot.copy.clone();
        let mut fallback = None;
        if let Some(c) = copy {
            let age = now.saturating_duration_since(c.fetched_at);
            if age < policy.ttl {
                m.scripts.hits.fetch_add(1, Relaxed);
                return Plan::Fresh(c);
            }
            if age < policy.ttl + policy.stale {
                m.scripts.stale.fetch_add(1, Relaxed);
                let refresh = (in_flight.is_none() && !backing_off).then(|| {
                    m.scripts.revalidations.fetch_add(1, Relaxed);
                    self.start(&mut inner, key, policy.lifetime())
                });
                return Plan::Stale { copy: c, refresh };
            }
            if age < policy.ttl + policy.stale_if_error {
                if in_flight.is_none() && backing_off {
                    m.scripts.stale_on_error.fetch_add(1, Relaxed);
                    return Plan::ErrorStale(c);
                }
                fallback = Some(c);
            } else if let Some(slot) = inner.slots.get_mut(&key) {
                let freed = slot.bytes();
                slot.copy = None;
                slot.variants.clear();
                inner.bytes = inner.bytes.saturating_sub(freed);
                m.scripts.bytes.store(inner.bytes, Relaxed);
            }
        }
        if let (None, Some(reject)) = (&in_flight, failure) {
            m.scripts.failed_recently.fetch_add(1, Relaxed);
            return Plan::Failed(reject);
        }
        // A request that waits for a fetch is counted by `serve` once it knows how it was
        // answered (miss, stale copy on error, or the vendor's own answer): once per request.
        if let Some(wait) = in_flight {
            return Plan::Fetch {
                wait,
                lead: None,
                fallback,
            };
        }
        let flight = self.start(&mut inner, key, policy.lifetime());
        Plan::Fetch {
            wait: flight.waiter(),
            lead: Some(flight),
            fallback,
        }
    }

    fn start(&self, inner: &mut Inner, key: Arc<str>, lifetime: Duration) -> Flight {
        inner.serial += 1;
        let id = inner.serial;
        let (tx, rx) = watch::channel(None);
        if let Some(slot) = inner.slots.get_mut(&key) {
            slot.flight = Some((id, rx));
        }
        Flight {
            shared: self.shared.clone(),
            key,
            id,
            tx: Some(tx),
            lifetime,
        }
    }

    /// The shared cell of `host`'s variant of `copy`, built by whoever gets there first. A
    /// copy that is not (or no longer) the slot's gets a private cell.
    pub fn variant_cell(&self, key: &str, copy: &Copy, host: &str) -> Arc<OnceCell<Arc<Variant>>> {
        let mut inner = self.shared.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let Some(slot) = inner.slots.get_mut(key) else {
            return Arc::default();
        };
        if !holds(slot, copy) {
            return Arc::default();
        }
        if let Some(v) = slot.variants.iter_mut().find(|v| &*v.host == host) {
            v.used = tick;
            return v.cell.clone();
        }
        let mut freed = 0;
        if slot.variants.len() >= MAX_VARIANTS
            && let Some(i) = (0..slot.variants.len()).min_by_key(|&i| slot.variants[i].used)
        {
            freed = slot.variants.swap_remove(i).bytes;
        }
        let cell: Arc<OnceCell<Arc<Variant>>> = Arc::default();
        slot.variants.push(VariantSlot {
            host: host.into(),
            cell: cell.clone(),
            bytes: 0,
            used: tick,
        });
        inner.bytes = inner.bytes.saturating_sub(freed);
        cell
    }

    /// Puts `v` in the place of `host`'s variant of `copy` (a better encoding of the same
    /// content), if that variant is still cached.
    pub fn replace_variant(
        &self,
        key: &str,
        copy: &Copy,
        host: &str,
        v: Arc<Variant>,
        m: &Metrics,
    ) {
        let mut inner = self.shared.lock();
        let Some(slot) = inner.slots.get_mut(key) else {
            return;
        };
        if !holds(slot, copy) {
            return;
        }
        let Some(vs) = slot.variants.iter_mut().find(|vs| &*vs.host == host) else {
            return;
        };
        let (old, new) = (vs.bytes, v.size());
        vs.cell = Arc::new(OnceCell::new_with(Some(v)));
        vs.bytes = new;
        inner.bytes = (inner.bytes + new).saturating_sub(old);
        let max = self.shared.settings.max_bytes;
        self.shared.evict(&mut inner, key, max, m);
    }

    /// Counts a built variant's bytes (once) and evicts what no longer fits.
    pub fn account(&self, key: &str, copy: &Copy, host: &str, v: &Variant, m: &Metrics) {
        let mut inner = self.shared.lock();
        let Some(slot) = inner.slots.get_mut(key) else {
            return;
        };
        if !holds(slot, copy) {
            return;
        }
        let Some(vs) = slot
            .variants
            .iter_mut()
            .find(|vs| &*vs.host == host && vs.bytes == 0)
        else {
            return;
        };
        vs.bytes = v.size();
        inner.bytes += v.size();
        let max = self.shared.settings.max_bytes;
        self.shared.evict(&mut inner, key, max, m);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map half-changed in a way that
        // matters more than losing the cache: keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops copies past their lifetime that no request came to drop (done on each fetch, so
    /// scripts of routes a reload removed or changed do not linger until memory runs short).
    fn sweep(&self, inner: &mut Inner, now: Instant) {
        let mut freed = 0;
        inner.slots.retain(|_, s| {
            let dead = s.flight.is_none() && s.drop_at.is_some_and(|t| now >= t);
            if dead {
                freed += s.bytes();
            }
            !dead
        });
        inner.bytes = inner.bytes.saturating_sub(freed);
    }

    /// Empties least recently used slots (other than `keep`) until the total fits; `keep`
    /// itself goes last, when it alone is too large.
    fn evict(&self, inner: &mut Inner, keep: &str, max: u64, m: &Metrics) {
        while inner.bytes > max {
            let victim = inner
                .slots
                .iter()
                .filter(|(k, s)| &***k != keep && s.bytes() > 0)
                .min_by_key(|(_, s)| s.used)
                .map(|(k, _)| k.clone())
                .or_else(|| {
                    inner
                        .slots
                        .get_key_value(keep)
                        .filter(|(_, s)| s.bytes() > 0)
                        .map(|(k, _)| k.clone())
                });
            let Some(k) = victim else { break };
            let Some(slot) = inner.slots.get_mut(&k) else {
                break;
            };
            let freed = slot.bytes();
            slot.copy = None;
            slot.variants.clear();
            if slot.flight.is_none() {
                inner.slots.remove(&k);
            }
            inner.bytes = inner.bytes.saturating_sub(freed);
            m.scripts.evictions.fetch_add(1, Relaxed);
        }
        m.scripts.bytes.store(inner.bytes, Relaxed);
    }
}

impl Flight {
    pub fn waiter(&self) -> Waiter {
        self.tx
            .as_ref()
            .map(|t| t.subscribe())
            .expect("an unfinished flight has its sender")
    }

    /// A generation for the copy this flight is about to store.
    pub fn generation(&self) -> u64 {
        let mut inner = self.shared.lock();
        inner.serial += 1;
        inner.serial
    }

    /// Stores the outcome in the slot and wakes every waiter.
    pub fn finish(mut self, outcome: Outcome, m: &Metrics) {
        let max = self.shared.settings.max_bytes;
        {
            let mut inner = self.shared.lock();
            let Inner { slots, bytes, .. } = &mut *inner;
            if let Some(slot) = slots.get_mut(&self.key) {
                if slot.flight.as_ref().is_some_and(|(id, _)| *id == self.id) {
                    slot.flight = None;
                }
                match &outcome {
                    Ok(copy) => {
                        slot.drop_at = Some(copy.fetched_at + self.lifetime);
                        let freed = slot.bytes();
                        slot.variants.clear();
                        slot.retry_at = None;
                        slot.failure = None;
                        if copy.cacheable {
                            slot.copy = Some(copy.clone());
                            *bytes += copy.body.len() as u64;
                        } else {
                            // A newer version that is too large: the old one is not served
                            // in its place.
                            slot.copy = None;
                        }
                        *bytes = bytes.saturating_sub(freed);
                    }
                    Err(FetchError::Failed(reject)) => {
                        let until = Instant::now() + RETRY_BACKOFF;
                        slot.retry_at = Some(until);
                        slot.failure = Some(reject.clone());
                        if slot.copy.is_none() {
                            // Kept for the back-off, then swept.
                            slot.drop_at = Some(until);
                        }
                    }
                    Err(FetchError::Answer { .. }) => {
                        slot.failure = None;
                        let freed = slot.bytes();
                        slot.copy = None;
                        slot.variants.clear();
                        *bytes = bytes.saturating_sub(freed);
                    }
                }
                if slot.copy.is_none() && slot.flight.is_none() && slot.failure.is_none() {
                    slots.remove(&self.key);
                }
            }
            self.shared.sweep(&mut inner, Instant::now());
            self.shared.evict(&mut inner, &self.key, max, m);
        }
        if let Some(tx) = self.tx.take() {
            tx.send_replace(Some(outcome));
        }
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        if self.tx.is_none() {
            return;
        }
        let mut inner = self.shared.lock();
        if let Some(slot) = inner.slots.get_mut(&self.key) {
            if slot.flight.as_ref().is_some_and(|(id, _)| *id == self.id) {
                slot.flight = None;
            }
            if slot.copy.is_none() && slot.flight.is_none() {
                inner.slots.remove(&self.key);
            }
        }
        // The sender drops with `self`: waiters see the channel closed.
    }
}
