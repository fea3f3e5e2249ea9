//! The gateway's shared state: settings, the current rule set (swapped atomically on reload),
//! the upstream client, certificates and metrics. One `Arc<Gateway>` is shared by every
//! listener and connection.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::certs::{CertError, CertStore};
use crate::clientip::TrustedProxies;
use crate::config::{self, ConfigError, RulesSource, UpstreamOverride};
use crate::deliver::client::ClientError;
use crate::deliver::{ClientSettings, DeliverySettings};
use crate::metrics::Metrics;
use crate::ruleset::RuleSet;
use crate::spool::{Spool, SpoolError, SpoolSettings};

/// Limits and timeouts of the listeners (named defaults live in the CLI).
#[derive(Debug, Clone)]
pub struct Settings {
    /// A request head must be complete this long after its first byte (and a new connection
    /// must send one within this long; also the TLS handshake bound).
    pub header_timeout: Duration,
    /// A connection with no request in flight is closed after this long.
    pub idle_timeout: Duration,
    /// A request body must arrive completely within this long.
    pub body_timeout: Duration,
    /// On SIGTERM/SIGINT, in-flight requests get this long to finish.
    pub shutdown_timeout: Duration,
    pub max_connections: usize,
    /// Largest request head (HTTP/1.1 buffer, HTTP/2 header list); larger gets 431.
    pub max_header_bytes: usize,
    pub trusted_proxies: TrustedProxies,
    pub rules: RulesSource,
    pub overrides: Vec<UpstreamOverride>,
    pub client: ClientSettings,
    pub upstream_ca: Option<PathBuf>,
    /// Worker threads serving traffic.
    pub workers: usize,
    /// Bounds of the script cache (script routes).
    pub scripts: crate::scripts::CacheSettings,
    /// The spool for queued routes; `None`: queued routes are relayed.
    pub spool: Option<SpoolSettings>,
    pub delivery: DeliverySettings,
}

impl Settings {
    /// Defaults with the given rules, for tests and embedding.
    pub fn new(rules: RulesSource) -> Settings {
        Settings {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_header_bytes: 64 * 1024,
            trusted_proxies: TrustedProxies::default(),
            rules,
            overrides: Vec::new(),
            client: ClientSettings::default(),
            upstream_ca: None,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            scripts: crate::scripts::CacheSettings::default(),
            spool: None,
            delivery: DeliverySettings::default(),
        }
    }
}

/// Start-up failed; each variant's message says what and where.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Rules(#[from] ConfigError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Certs(#[from] CertError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

pub struct Gateway {
    pub settings: Settings,
    rules: ArcSwap<RuleSet>,
    /// TLS settings for upstream connections (each worker builds its own pooled client).
    pub upstream_tls: rustls::ClientConfig,
    pub metrics: Metrics,
    /// Vendor scripts of script routes, shared by every worker; kept across rule reloads.
    pub scripts: crate::scripts::ScriptCache,
    pub certs: Option<Arc<CertStore>>,
    /// Where queued routes' requests wait for delivery (`Settings::spool`).
    pub spool: Option<Arc<Spool>>,
    draining: AtomicBool,
    /// Last time each warning kind was logged, and how many were suppressed since.
    warned: std::sync::Mutex<std::collections::HashMap<&'static str, (tokio::time::Instant, u64)>>,
}

impl Gateway {
    /// Loads the rules and builds the client. `certs` is the store behind the TLS listener.
    pub fn new(
        settings: Settings,
        certs: Option<Arc<CertStore>>,
    ) -> Result<Arc<Gateway>, StartError> {
        let rules = config::load(&settings.rules, &settings.overrides)?;
        let upstream_tls = crate::deliver::client::tls_config(settings.upstream_ca.as_deref())?;
        let metrics = Metrics::default();
        let spool = match &settings.spool {
            Some(s) => Some(Arc::new(Spool::open(s.clone(), metrics.spool.clone())?)),
            None => None,
        };
        Ok(Arc::new(Gateway {
            scripts: crate::scripts::ScriptCache::new(settings.scripts.clone()),
            settings,
            rules: ArcSwap::from_pointee(rules),
            upstream_tls,
            metrics,
            certs,
            spool,
            draining: AtomicBool::new(false),
            warned: Default::default(),
        }))
    }

    /// The current rule set; a request keeps this one snapshot to its end.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.rules.load_full()
    }

    /// Reloads the rules: the new set replaces the old only if it compiles completely.
    pub fn reload_rules(&self) -> Result<Arc<RuleSet>, ConfigError> {
        use std::sync::atomic::Ordering::Relaxed;
        match config::load(&self.settings.rules, &self.settings.overrides) {
            Ok(set) => {
                let set = Arc::new(set);
                self.rules.store(set.clone());
                self.metrics.rules_reloads.fetch_add(1, Relaxed);
                self.metrics.rules_last_reload_failed.store(0, Relaxed);
                tracing::info!(
                    routes = set.routes.routes().len(),
                    files = set.files,
                    "rules reloaded from {}; hash key from {}",
                    set.source,
                    set.key_source
                );
                for w in &set.warnings {
                    tracing::warn!("{w}");
                }
                Ok(set)
            }
            Err(e) => {
                self.metrics.rules_reload_failures.fetch_add(1, Relaxed);
                self.metrics.rules_last_reload_failed.store(1, Relaxed);
                for d in &e.diagnostics {
                    tracing::error!("rules not reloaded, previous rules keep serving: {d}");
                }
                Err(e)
            }
        }
    }

    /// Re-reads the certificates folder, logging every pair that fails.
    pub fn reload_certs(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(store) = &self.certs else { return };
        match store.reload() {
            Ok(problems) => {
                self.metrics.cert_reloads.fetch_add(1, Relaxed);
                self.metrics
                    .cert_problems
                    .fetch_add(problems.len() as u64, Relaxed);
                for p in &problems {
                    tracing::error!("certificate not loaded: {p}");
                }
                tracing::info!(names = ?store.current().names, "certificates reloaded from {}", store.dir().display());
            }
            Err(e) => tracing::error!("certificates not reloaded, previous ones keep serving: {e}"),
        }
    }

    /// Logs a warning at most once a second per kind, so an upstream outage under load is a
    /// few lines with counts rather than a flood (the metrics count every occurrence).
    pub fn warn_limited(&self, kind: &'static str, message: &str) {
        let now = tokio::time::Instant::now();
        let Ok(mut w) = self.warned.lock() else {
            return;
        };
        let entry = w.entry(kind).or_insert((now - Duration::from_secs(2), 0));
        if now.duration_since(entry.0) >= Duration::from_secs(1) {
            let suppressed = std::mem::take(&mut entry.1);
            entry.0 = now;
            drop(w);
            if suppressed > 0 {
                tracing::warn!("{message} (and {suppressed} more like it in the last second)");
            } else {
                tracing::warn!("{message}");
            }
        } else {
            entry.1 += 1;
        }
    }

    /// Marks the gateway as shutting down (readiness turns false).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}
