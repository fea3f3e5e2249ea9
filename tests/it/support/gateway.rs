//! An in-process gateway on loopback ports chosen by the OS, with its rules and certificates
//! in temporary folders.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tagway::clientip::TrustedProxies;
use tagway::config::{RulesSource, UpstreamOverride};
use tagway::{Gateway, Listeners, Settings};

/// A change to the settings a test makes before the gateway starts.
pub type Tweak = Box<dyn FnOnce(&mut Settings) + Send>;

pub struct GwOptions {
    /// Text of `rules/00-test.toml`.
    pub rules: String,
    /// More rule files: (file name, text).
    pub files: Vec<(String, String)>,
    pub upstreams: Vec<(String, String)>,
    /// Serve TLS with certificates from `certs` (a folder), generated when `None`.
    pub tls: bool,
    pub certs: Option<PathBuf>,
    pub upstream_ca: Option<PathBuf>,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_timeout: Duration,
    pub upstream_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub trusted_proxies: Vec<&'static str>,
    pub watch: bool,
    pub max_response: u64,
    pub max_connections: usize,
    pub workers: usize,
    pub scripts: tagway::scripts::CacheSettings,
    /// Any other settings (spool, delivery), applied last.
    pub tweak: Option<Tweak>,
}

impl GwOptions {
    pub fn new(rules: &str) -> Self {
        GwOptions {
            rules: rules.to_string(),
            files: Vec::new(),
            upstreams: Vec::new(),
            tls: false,
            certs: None,
            upstream_ca: None,
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(5),
            trusted_proxies: Vec::new(),
            watch: false,
            max_response: 8 * 1024 * 1024,
            max_connections: 1000,
            workers: 1,
            scripts: Default::default(),
            tweak: None,
        }
    }

    pub fn upstream(mut self, name: &str, url: String) -> Self {
        self.upstreams.push((name.to_string(), url));
        self
    }
}

pub struct Gw {
    pub http: SocketAddr,
    pub https: Option<SocketAddr>,
    pub gw: Arc<Gateway>,
    pub rules_dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Gw {
    pub async fn start(o: GwOptions) -> Gw {
        Self::try_start(o)
            .await
            .unwrap_or_else(|e| panic!("gateway did not start: {e}"))
    }

    pub async fn try_start(mut o: GwOptions) -> Result<Gw, String> {
        let rules_dir = tempfile::tempdir().unwrap();
        std::fs::write(rules_dir.path().join("00-test.toml"), &o.rules).unwrap();
        for (name, text) in &o.files {
            std::fs::write(rules_dir.path().join(name), text).unwrap();
        }
        let mut s = Settings::new(RulesSource::Dir(rules_dir.path().to_path_buf()));
        s.header_timeout = o.header_timeout;
        s.idle_timeout = o.idle_timeout;
        s.body_timeout = o.body_timeout;
        s.shutdown_timeout = o.shutdown_timeout;
        s.client.timeout = o.upstream_timeout;
        s.client.connect_timeout = Duration::from_secs(2);
        s.upstream_ca = o.upstream_ca.clone();
        s.workers = o.workers;
        s.scripts = o.scripts.clone();
        s.client.max_response = o.max_response;
        s.max_connections = o.max_connections;
        s.trusted_proxies = TrustedProxies::new(
            o.trusted_proxies
                .iter()
                .map(|c| c.parse().unwrap())
                .collect(),
        );
        s.overrides = o
            .upstreams
            .iter()
            .map(|(n, u)| UpstreamOverride {
                name: n.clone(),
                url: u.clone(),
            })
            .collect();
        if let Some(t) = o.tweak.take() {
            t(&mut s);
        }
        let certs = if o.tls {
            let dir = o
                .certs
                .clone()
                .unwrap_or_else(|| rules_dir.path().join("no-certs"));
            let (store, problems) =
                tagway::certs::CertStore::load(&dir).map_err(|e| e.to_string())?;
            assert!(problems.is_empty(), "certificate problems: {problems:?}");
            Some(store)
        } else {
            None
        };
        let gw = Gateway::new(s, certs).map_err(|e| e.to_string())?;
        let http = tagway::listen::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let tls = if o.tls {
            Some(tagway::listen::bind("127.0.0.1:0".parse().unwrap()).unwrap())
        } else {
            None
        };
        let (http_addr, https_addr) = (
            http.local_addr().unwrap(),
            tls.as_ref().map(|l| l.local_addr().unwrap()),
        );
        let listeners = Listeners {
            plain: Some(http),
            tls,
            admin: None,
        };
        let watcher = if o.watch {
            tagway::watch::start(gw.clone())
        } else {
            None
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let g2 = gw.clone();
        let task = tokio::spawn(async move {
            tagway::run(g2, listeners, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Ok(Gw {
            http: http_addr,
            https: https_addr,
            gw,
            rules_dir,
            stop: Some(tx),
            task: Some(task),
            _watcher: watcher,
        })
    }

    /// Asks for a graceful shutdown and waits until the gateway has stopped.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }

    pub fn rejected(&self, kind: &str) -> u64 {
        self.gw.metrics.rejected_count(kind)
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A minimal rule file: any host, one origin, routes to upstream `v`.
pub fn rules(routes: &str) -> String {
    format!(
        r#"
[site]
origins = ["https://shop.example"]

[upstreams.v]
url = "https://vendor.invalid"

{routes}
"#
    )
}
