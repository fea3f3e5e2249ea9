//! Counters of the spool and of background delivery, rendered with the gateway's other
//! metrics. Shared by `Arc` between the gateway's [`crate::metrics::Metrics`], the spool
//! writer and the delivery thread.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a record went to the dead-letter file (label values, in this order).
pub const DEAD_REASONS: [&str; 4] = ["rejected", "too_old", "no_upstream", "unsendable"];

#[derive(Debug, Default)]
pub struct SpoolMetrics {
    /// Records written (and, with `--spool-fsync always`, synced) before the answer.
    pub appended: AtomicU64,
    /// Bytes of segment files on disk (plus appends in progress).
    pub bytes: AtomicU64,
    /// Records in the spool not yet delivered or dead-lettered.
    pub pending: AtomicU64,
    /// Queued requests that found the spool full or failing: relayed / answered 503.
    pub full_relayed: AtomicU64,
    pub full_rejected: AtomicU64,
    pub write_errors: AtomicU64,
    pub fsyncs: AtomicU64,
    pub recovered: AtomicU64,
    /// Damaged regions found in segments at start (torn tails included).
    pub damaged: AtomicU64,
    /// Background deliveries by status class (index 1..=5).
    pub delivered: [AtomicU64; 6],
    pub retries: AtomicU64,
    pub dead_lettered: [AtomicU64; DEAD_REASONS.len()],
    pub breaker_opened: AtomicU64,
}

impl SpoolMetrics {
    pub fn dead(&self, reason: &str) {
        if let Some(i) = DEAD_REASONS.iter().position(|r| *r == reason) {
            self.dead_lettered[i].fetch_add(1, Relaxed);
        }
    }

    pub fn delivered_count(&self) -> u64 {
        self.delivered.iter().map(|c| c.load(Relaxed)).sum()
    }

    pub fn dead_count(&self) -> u64 {
        self.dead_lettered.iter().map(|c| c.load(Relaxed)).sum()
    }

    pub fn render(&self, o: &mut String) {
        let g = |c: &AtomicU64| c.load(Relaxed);
        let one = |o: &mut String, name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        one(
            o,
            "tagway_spool_appended_total",
            "counter",
            "Queued requests written to the spool before they were answered.",
            g(&self.appended),
        );
        one(
            o,
            "tagway_spool_bytes",
            "gauge",
            "Bytes of spool segment files on disk.",
            g(&self.bytes),
        );
        one(
            o,
            "tagway_spool_pending",
            "gauge",
            "Spooled requests not yet delivered or dead-lettered.",
            g(&self.pending),
        );
        let _ = writeln!(
            o,
            "# HELP tagway_spool_full_total Queued requests that found the spool full or failing, by the route's on_spool_full policy.\n# TYPE tagway_spool_full_total counter\ntagway_spool_full_total{{policy=\"relay\"}} {}\ntagway_spool_full_total{{policy=\"reject\"}} {}",
            g(&self.full_relayed),
            g(&self.full_rejected)
        );
        one(
            o,
            "tagway_spool_write_errors_total",
            "counter",
            "Spool writes or syncs that failed.",
            g(&self.write_errors),
        );
        one(
            o,
            "tagway_spool_fsyncs_total",
            "counter",
            "fdatasync calls on spool segments.",
            g(&self.fsyncs),
        );
        one(
            o,
            "tagway_spool_recovered_total",
            "counter",
            "Undelivered records found in the spool at start.",
            g(&self.recovered),
        );
        one(
            o,
            "tagway_spool_damaged_total",
            "counter",
            "Damaged regions (torn or corrupt) skipped in spool segments at start.",
            g(&self.damaged),
        );
        let _ = writeln!(
            o,
            "# HELP tagway_delivered_total Background deliveries answered by the vendor, by status class.\n# TYPE tagway_delivered_total counter"
        );
        for (i, c) in self.delivered.iter().enumerate().skip(1) {
            let _ = writeln!(o, "tagway_delivered_total{{class=\"{i}xx\"}} {}", g(c));
        }
        one(
            o,
            "tagway_delivery_retries_total",
            "counter",
            "Background delivery attempts that will be retried (connect errors, timeouts, 429, 5xx).",
            g(&self.retries),
        );
        let _ = writeln!(
            o,
            "# HELP tagway_dead_lettered_total Spooled requests written to the dead-letter file, by reason.\n# TYPE tagway_dead_lettered_total counter"
        );
        for (r, c) in DEAD_REASONS.iter().zip(&self.dead_lettered) {
            let _ = writeln!(o, "tagway_dead_lettered_total{{reason=\"{r}\"}} {}", g(c));
        }
        one(
            o,
            "tagway_delivery_breaker_opened_total",
            "counter",
            "Times an upstream's circuit breaker opened.",
            g(&self.breaker_opened),
        );
    }
}
