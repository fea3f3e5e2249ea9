//! Counters the gateway keeps, rendered in the Prometheus text format on the admin listener's
//! `/metrics`. Plain atomics with fixed label sets: an increment on the request path is one
//! relaxed add, and every in-process test gateway owns its own counters.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use crate::respond::Reject;

#[derive(Debug, Default)]
pub struct Metrics {
    /// Vendor answers relayed, by status class (index 1..=5).
    pub relayed: [AtomicU64; 6],
    /// Requests the gateway answered itself, by [`Reject::KINDS`].
    pub rejected: [AtomicU64; Reject::KINDS.len()],
    /// Requests not forwarded because a `drop_request` rule said so.
    pub dropped_by_rule: AtomicU64,
    /// Beacons not forwarded because they carry an id the site does not list (`id_field`).
    pub dropped_foreign_id: AtomicU64,
    /// Requests not forwarded because their body could not be decoded (policy `drop`).
    pub dropped_undecodable: AtomicU64,
    pub connections_accepted: AtomicU64,
    pub connections_open: AtomicI64,
    pub tls_handshake_failures: AtomicU64,
    pub header_timeouts: AtomicU64,
    pub idle_closed: AtomicU64,
    pub rules_reloads: AtomicU64,
    pub rules_reload_failures: AtomicU64,
    /// 1 while the last reload attempt failed (the previous rules keep serving).
    pub rules_last_reload_failed: AtomicU64,
    pub cert_reloads: AtomicU64,
    pub cert_problems: AtomicU64,
    pub scripts: ScriptCounters,
    /// The spool and background delivery (shared with them).
    pub spool: std::sync::Arc<crate::spool::SpoolMetrics>,
}

/// What the script cache did (script routes).
#[derive(Debug, Default)]
pub struct ScriptCounters {
    /// Served from a fresh copy.
    pub hits: AtomicU64,
    /// Waited for a fetch from the vendor (no usable copy).
    pub misses: AtomicU64,
    /// Served from a stale copy while it is refreshed.
    pub stale: AtomicU64,
    /// Served from a copy standing in for a vendor that failed.
    pub stale_on_error: AtomicU64,
    /// Answered with the failure of a fetch moments ago, no copy to stand in (back-off).
    pub failed_recently: AtomicU64,
    /// Background refreshes started.
    pub revalidations: AtomicU64,
    /// Fetches that failed (unreachable, timeout, 5xx, unreadable body).
    pub fetch_errors: AtomicU64,
    /// Vendor answers other than 200 passed on uncached (a 404 for an unknown id).
    pub vendor_answers: AtomicU64,
    /// Scripts over `--script-max-size`, served uncached.
    pub uncacheable: AtomicU64,
    /// 304 answers to `If-None-Match`.
    pub not_modified: AtomicU64,
    /// Copies dropped to stay within `--script-cache-size`.
    pub evictions: AtomicU64,
    /// Bytes held by the cache now.
    pub bytes: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

impl Metrics {
    pub fn reject(&self, r: &Reject) {
        inc(&self.rejected[r.index()]);
    }

    pub fn relayed(&self, status: http::StatusCode) {
        inc(&self.relayed[(status.as_u16() / 100).clamp(1, 5) as usize]);
    }

    pub fn rejected_count(&self, kind: &str) -> u64 {
        Reject::KINDS
            .iter()
            .position(|k| *k == kind)
            .map_or(0, |i| self.rejected[i].load(Relaxed))
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(4096);
        let g = |c: &AtomicU64| c.load(Relaxed);
        header(
            &mut o,
            "tagway_relayed_total",
            "counter",
            "Vendor answers relayed to clients, by status class.",
        );
        for (i, c) in self.relayed.iter().enumerate().skip(1) {
            let _ = writeln!(o, "tagway_relayed_total{{class=\"{i}xx\"}} {}", g(c));
        }
        header(
            &mut o,
            "tagway_rejected_total",
            "counter",
            "Requests the gateway answered itself, by reason.",
        );
        for (k, c) in Reject::KINDS.iter().zip(&self.rejected) {
            let _ = writeln!(o, "tagway_rejected_total{{reason=\"{k}\"}} {}", g(c));
        }
        let simple: [(&str, &str, &AtomicU64); 12] = [
            (
                "tagway_dropped_by_rule_total",
                "Requests answered in the vendor's place by a drop_request rule.",
                &self.dropped_by_rule,
            ),
            (
                "tagway_dropped_foreign_id_total",
                "Beacons for an id not in the site's [site.ids] list, answered in the vendor's place.",
                &self.dropped_foreign_id,
            ),
            (
                "tagway_dropped_undecodable_total",
                "Requests with an undecodable body answered in the vendor's place (on_undecodable = drop).",
                &self.dropped_undecodable,
            ),
            (
                "tagway_connections_accepted_total",
                "Client connections accepted.",
                &self.connections_accepted,
            ),
            (
                "tagway_tls_handshake_failures_total",
                "TLS handshakes that failed or timed out.",
                &self.tls_handshake_failures,
            ),
            (
                "tagway_header_timeouts_total",
                "Connections closed because a request head was not complete in time.",
                &self.header_timeouts,
            ),
            (
                "tagway_idle_closed_total",
                "Keep-alive connections closed after the idle timeout.",
                &self.idle_closed,
            ),
            (
                "tagway_rules_reloads_total",
                "Rule sets loaded after start.",
                &self.rules_reloads,
            ),
            (
                "tagway_rules_reload_failures_total",
                "Rule reloads rejected; the previous rules kept serving.",
                &self.rules_reload_failures,
            ),
            (
                "tagway_rules_last_reload_failed",
                "1 when the last rule reload failed.",
                &self.rules_last_reload_failed,
            ),
            (
                "tagway_cert_reloads_total",
                "Certificate folder re-reads.",
                &self.cert_reloads,
            ),
            (
                "tagway_cert_problems_total",
                "Certificate pairs that failed to load.",
                &self.cert_problems,
            ),
        ];
        plain(&mut o, &simple);
        let s = &self.scripts;
        header(
            &mut o,
            "tagway_script_requests_total",
            "counter",
            "Requests on script routes, by how the cache answered them.",
        );
        for (how, c) in [
            ("hit", &s.hits),
            ("miss", &s.misses),
            ("stale", &s.stale),
            ("stale_on_error", &s.stale_on_error),
            ("failed_recently", &s.failed_recently),
            ("vendor_answer", &s.vendor_answers),
        ] {
            let _ = writeln!(
                o,
                "tagway_script_requests_total{{cache=\"{how}\"}} {}",
                g(c)
            );
        }
        let scripts: [(&str, &str, &AtomicU64); 6] = [
            (
                "tagway_script_revalidations_total",
                "Background refreshes of stale scripts started.",
                &s.revalidations,
            ),
            (
                "tagway_script_fetch_errors_total",
                "Script fetches that failed (unreachable, timeout, 5xx, unreadable body).",
                &s.fetch_errors,
            ),
            (
                "tagway_script_uncacheable_total",
                "Scripts over --script-max-size, served without caching.",
                &s.uncacheable,
            ),
            (
                "tagway_script_not_modified_total",
                "304 answers to If-None-Match on script routes.",
                &s.not_modified,
            ),
            (
                "tagway_script_evictions_total",
                "Cached scripts dropped to stay within --script-cache-size.",
                &s.evictions,
            ),
            (
                "tagway_script_cache_bytes",
                "Bytes held by the script cache.",
                &s.bytes,
            ),
        ];
        plain(&mut o, &scripts);
        header(
            &mut o,
            "tagway_connections_open",
            "gauge",
            "Client connections open now.",
        );
        let _ = writeln!(
            o,
            "tagway_connections_open {}",
            self.connections_open.load(Relaxed)
        );
        self.spool.render(&mut o);
        o
    }
}

/// Unlabelled metrics: `HELP`, `TYPE` (a counter when the name ends in `_total`, else a gauge)
/// and the value of each.
pub(crate) fn plain(o: &mut String, rows: &[(&str, &str, &AtomicU64)]) {
    for (name, help, c) in rows {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        header(o, name, kind, help);
        let _ = writeln!(o, "{name} {}", c.load(Relaxed));
    }
}

pub(crate) fn header(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}
