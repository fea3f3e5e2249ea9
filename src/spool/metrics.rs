//! Counters of the spool and of background delivery, rendered with the gateway's other
//! metrics. Shared by `Arc` between the gateway's [`crate::metrics::Metrics`], the spool
//! writer and the delivery thread.

use crate::metrics::{header, plain};
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
        plain(
            o,
            &[
                (
                    "tagway_spool_appended_total",
                    "Queued requests written to the spool before they were answered.",
                    &self.appended,
                ),
                (
                    "tagway_spool_bytes",
                    "Bytes of spool segment files on disk.",
                    &self.bytes,
                ),
                (
                    "tagway_spool_pending",
                    "Spooled requests not yet delivered or dead-lettered.",
                    &self.pending,
                ),
            ],
        );
        header(
            o,
            "tagway_spool_full_total",
            "counter",
            "Queued requests that found the spool full or failing, by the route's on_spool_full policy.",
        );
        let _ = writeln!(
            o,
            "tagway_spool_full_total{{policy=\"relay\"}} {}\ntagway_spool_full_total{{policy=\"reject\"}} {}",
            g(&self.full_relayed),
            g(&self.full_rejected)
        );
        plain(
            o,
            &[
                (
                    "tagway_spool_write_errors_total",
                    "Spool writes or syncs that failed.",
                    &self.write_errors,
                ),
                (
                    "tagway_spool_fsyncs_total",
                    "fdatasync calls on spool segments.",
                    &self.fsyncs,
                ),
                (
                    "tagway_spool_recovered_total",
                    "Undelivered records found in the spool at start.",
                    &self.recovered,
                ),
                (
                    "tagway_spool_damaged_total",
                    "Damaged regions (torn or corrupt) skipped in spool segments at start.",
                    &self.damaged,
                ),
            ],
        );
        header(
            o,
            "tagway_delivered_total",
            "counter",
            "Background deliveries answered by the vendor, by status class.",
        );
        for (i, c) in self.delivered.iter().enumerate().skip(1) {
            let _ = writeln!(o, "tagway_delivered_total{{class=\"{i}xx\"}} {}", g(c));
        }
        plain(
            o,
            &[(
                "tagway_delivery_retries_total",
                "Background delivery attempts that will be retried (connect errors, timeouts, 429, 5xx).",
                &self.retries,
            )],
        );
        header(
            o,
            "tagway_dead_lettered_total",
            "counter",
            "Spooled requests written to the dead-letter file, by reason.",
        );
        for (r, c) in DEAD_REASONS.iter().zip(&self.dead_lettered) {
            let _ = writeln!(o, "tagway_dead_lettered_total{{reason=\"{r}\"}} {}", g(c));
        }
        plain(
            o,
            &[(
                "tagway_delivery_breaker_opened_total",
                "Times an upstream's circuit breaker opened.",
                &self.breaker_opened,
            )],
        );
    }
}
