//! The `tagway` command: `serve` (the default), `check`. Flags have environment-variable
//! twins (`TAGWAY_LISTEN`, …). Start-up problems are printed as one line naming what and
//! where, with a non-zero exit status.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use ipnet::IpNet;
use tagway::certs::CertStore;
use tagway::clientip::TrustedProxies;
use tagway::config::{self, RulesSource, UpstreamOverride};
use tagway::deliver::{ClientSettings, DeliverySettings};
use tagway::spool::{Fsync, SpoolSettings};
use tagway::{Gateway, Listeners, Settings};

#[global_allocator]
static ALLOC: tagway::alloc::MiMalloc = tagway::alloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tagway",
    version,
    about = "First-party tracking gateway",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway (what `tagway` with no subcommand does).
    Serve(Box<ServeArgs>),
    /// Validate the rule files; prints `file:line:col: problem` and exits 1 if any.
    Check(CheckArgs),
    /// Show what would go upstream for a request, field by field: before, after, and the rule.
    Explain(ExplainArgs),
    /// Run the [[test]] cases written in the rule files; exits 1 if any fails.
    Test(TestArgs),
}

#[derive(Args)]
struct ExplainArgs {
    /// Rules folder (falls back to the embedded rules when absent).
    #[arg(long, env = "TAGWAY_RULES", default_value = "rules")]
    rules: PathBuf,
    /// The request URL (https://metrics.shop.example/g/collect?v=2&…) or path.
    #[arg(long, required_unless_present = "har")]
    url: Option<String>,
    #[arg(long, default_value = "GET")]
    method: String,
    /// A request header, "Name: value" (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// The request body: a file, or - for standard input.
    #[arg(long)]
    body: Option<PathBuf>,
    /// Explain every request of a HAR file (browser devtools: "Save all as HAR").
    #[arg(long, conflicts_with = "url")]
    har: Option<PathBuf>,
    /// The client's address, for IP rules and templates.
    #[arg(long, default_value = "203.0.113.7")]
    client_ip: std::net::IpAddr,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct TestArgs {
    /// Rules folder (falls back to the embedded rules when absent).
    #[arg(long, env = "TAGWAY_RULES", default_value = "rules")]
    rules: PathBuf,
}

#[derive(Args)]
struct CheckArgs {
    /// Rules folder (falls back to the embedded rules when absent).
    #[arg(long, env = "TAGWAY_RULES", default_value = "rules")]
    rules: PathBuf,
    /// Also check these overrides: NAME=URL.
    #[arg(long = "upstream", env = "TAGWAY_UPSTREAM", value_delimiter = ',')]
    upstreams: Vec<UpstreamOverride>,
}

/// A listen address, or `off`.
#[derive(Clone, Debug)]
struct Listen(Option<SocketAddr>);

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(Listen(None));
        }
        s.parse()
            .map(|a| Listen(Some(a)))
            .map_err(|_| format!("expected HOST:PORT like 127.0.0.1:8080, or off; got {s:?}"))
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write e.g. 10s, 500ms, 2m)"))
}

fn size(s: &str) -> Result<u64, String> {
    s.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| format!("write a size like 64KiB or 8MiB, got {s:?}"))
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// Plain listener: HTTP/1.1 and h2c (`off` to disable).
    #[arg(long, env = "TAGWAY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: Listen,
    /// TLS listener: HTTP/1.1 and HTTP/2 by ALPN (`off` to disable).
    #[arg(long, env = "TAGWAY_TLS_LISTEN", default_value = "127.0.0.1:8443")]
    tls_listen: Listen,
    /// Admin listener: /metrics, /healthz, /readyz (`off` to disable).
    #[arg(long, env = "TAGWAY_ADMIN_LISTEN", default_value = "127.0.0.1:9901")]
    admin_listen: Listen,
    /// Certificates folder: NAME.crt + NAME.key per host name.
    #[arg(long, env = "TAGWAY_CERTS", default_value = "certs")]
    certs: PathBuf,
    /// Rules folder; when absent, the rules compiled into the binary are used.
    #[arg(long, env = "TAGWAY_RULES", default_value = "rules")]
    rules: PathBuf,
    /// Extra trusted CA bundle (PEM) for upstream TLS, besides the public web roots.
    #[arg(long, env = "TAGWAY_UPSTREAM_CA")]
    upstream_ca: Option<PathBuf>,
    /// Override the origin of a named upstream: NAME=URL (repeatable).
    #[arg(long = "upstream", env = "TAGWAY_UPSTREAM", value_delimiter = ',')]
    upstreams: Vec<UpstreamOverride>,
    /// CIDRs of proxies in front of tagway whose X-Forwarded-For/Forwarded is believed.
    #[arg(long, env = "TAGWAY_TRUSTED_PROXIES", value_delimiter = ',')]
    trusted_proxies: Vec<IpNet>,
    /// A request head must be complete this long after it starts (also the TLS handshake bound).
    #[arg(long, env = "TAGWAY_HEADER_TIMEOUT", default_value = "10s", value_parser = duration)]
    header_timeout: Duration,
    /// Close connections with no request in flight after this long.
    #[arg(long, env = "TAGWAY_IDLE_TIMEOUT", default_value = "60s", value_parser = duration)]
    idle_timeout: Duration,
    /// A request body must arrive within this long.
    #[arg(long, env = "TAGWAY_BODY_TIMEOUT", default_value = "10s", value_parser = duration)]
    body_timeout: Duration,
    /// On SIGTERM/SIGINT, requests in flight get this long to finish.
    #[arg(long, env = "TAGWAY_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = duration)]
    shutdown_timeout: Duration,
    /// Upstream connect timeout.
    #[arg(long, env = "TAGWAY_CONNECT_TIMEOUT", default_value = "3s", value_parser = duration)]
    connect_timeout: Duration,
    /// Upstream total timeout: request sent to response body complete.
    #[arg(long, env = "TAGWAY_UPSTREAM_TIMEOUT", default_value = "15s", value_parser = duration)]
    upstream_timeout: Duration,
    /// Maximum concurrent client connections.
    #[arg(long, env = "TAGWAY_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// Largest upstream response body passed on.
    #[arg(long, env = "TAGWAY_MAX_RESPONSE_SIZE", default_value = "8MiB", value_parser = size)]
    max_response_size: u64,
    /// Largest request head; larger gets 431.
    #[arg(long, env = "TAGWAY_MAX_HEADER_SIZE", default_value = "64KiB", value_parser = size)]
    max_header_size: u64,
    /// Worker threads serving traffic (default: one per CPU).
    #[arg(long, env = "TAGWAY_WORKERS")]
    workers: Option<usize>,
    /// Memory for vendor scripts of script routes (copies and their rewritten, compressed
    /// variants); least recently used scripts go first.
    #[arg(long, env = "TAGWAY_SCRIPT_CACHE_SIZE", default_value = "64MiB", value_parser = size)]
    script_cache_size: u64,
    /// Largest vendor script (decompressed) kept in the cache; larger ones are served uncached.
    #[arg(long, env = "TAGWAY_SCRIPT_MAX_SIZE", default_value = "4MiB", value_parser = size)]
    script_max_size: u64,
    #[command(flatten)]
    spool: SpoolArgs,
}

/// The spool and background delivery of queued routes (README: Delivery).
#[derive(Args, Clone)]
struct SpoolArgs {
    /// Spool folder for queued routes (`off`: queued routes are relayed synchronously).
    #[arg(long, env = "TAGWAY_SPOOL", default_value = "spool")]
    spool: PathBuf,
    /// When spooled requests are synced to disk: `always` (before each answer; concurrent
    /// requests share a sync) or an interval like `10ms` (written before the answer, synced
    /// within the interval: a power loss may lose that interval's requests, a crash none).
    #[arg(long, env = "TAGWAY_SPOOL_FSYNC", default_value = "10ms", value_parser = fsync)]
    spool_fsync: Fsync,
    /// Largest spool on disk (and in memory); past it, routes' `on_spool_full` applies.
    #[arg(long, env = "TAGWAY_SPOOL_MAX_SIZE", default_value = "256MiB", value_parser = size)]
    spool_max_size: u64,
    /// Spool segment file size; a segment is removed once all its requests are delivered.
    #[arg(long, env = "TAGWAY_SPOOL_SEGMENT_SIZE", default_value = "8MiB", value_parser = size)]
    spool_segment_size: u64,
    /// Background deliveries in flight per upstream (shared out among the workers, at least
    /// one each).
    #[arg(long, env = "TAGWAY_DELIVERY_CONCURRENCY", default_value_t = 256)]
    delivery_concurrency: usize,
    /// First retry delay; doubled per attempt (with jitter) up to --delivery-backoff-max.
    #[arg(long, env = "TAGWAY_DELIVERY_BACKOFF", default_value = "1s", value_parser = duration)]
    delivery_backoff: Duration,
    /// Longest retry delay.
    #[arg(long, env = "TAGWAY_DELIVERY_BACKOFF_MAX", default_value = "5m", value_parser = duration)]
    delivery_backoff_max: Duration,
    /// Spooled requests older than this go to the dead-letter file instead of the vendor.
    #[arg(long, env = "TAGWAY_DELIVERY_MAX_AGE", default_value = "24h", value_parser = duration)]
    delivery_max_age: Duration,
    /// Failed deliveries in a row that pause an upstream (circuit breaker).
    #[arg(long, env = "TAGWAY_BREAKER_FAILURES", default_value_t = 5)]
    breaker_failures: u32,
    /// How long a paused upstream gets nothing before one probe request.
    #[arg(long, env = "TAGWAY_BREAKER_COOLDOWN", default_value = "10s", value_parser = duration)]
    breaker_cooldown: Duration,
}

fn fsync(s: &str) -> Result<Fsync, String> {
    if s.eq_ignore_ascii_case("always") {
        return Ok(Fsync::Always);
    }
    duration(s)
        .map(Fsync::Every)
        .map_err(|e| format!("write `always` or an interval: {e}"))
}

/// `println!` that does not panic when stdout is closed (`tagway check | head -1`): the
/// output is simply cut short.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

fn main() -> ExitCode {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("TAGWAY_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: logs collected to files or journald stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();

    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let result = match cli.cmd {
        Some(Cmd::Check(a)) => check(a),
        Some(Cmd::Explain(a)) => explain(a),
        Some(Cmd::Test(a)) => run_tests(a),
        Some(Cmd::Serve(a)) => {
            let a = *a;
            let explicit = matches
                .subcommand_matches("serve")
                .and_then(|m| m.value_source("certs"))
                != Some(ValueSource::DefaultValue);
            serve(a, explicit)
        }
        None => serve(
            cli.serve,
            matches.value_source("certs") != Some(ValueSource::DefaultValue),
        ),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tagway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(a: CheckArgs) -> Result<ExitCode> {
    if !a.rules.is_dir() {
        // `serve` falls back to the embedded rules when the folder is absent; `check` is asked
        // about a folder, and a mistyped path must not look like a pass.
        bail!("no rules folder at {} (--rules)", a.rules.display());
    }
    let source = RulesSource::dir_or_embedded(&a.rules);
    match config::load_without_secrets(&source, &a.upstreams) {
        Ok(set) => {
            say!(
                "{}: {} files, {} routes, {} upstreams: OK",
                source.describe(),
                set.files,
                set.routes.routes().len(),
                set.upstreams.len()
            );
            for r in set.routes.routes() {
                say!(
                    "  route {:<24} -> {} {} ({})",
                    r.name,
                    set.upstreams[r.upstream].name,
                    set.upstreams[r.upstream].origin,
                    match r.delivery {
                        _ if r.script.is_some() => "script, cached",
                        tagway::ruleset::Delivery::Queue => "queued",
                        tagway::ruleset::Delivery::Relay => "relayed",
                    }
                );
            }
            for w in &set.warnings {
                say!("warning: {w}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            eprintln!(
                "{} problem(s) in {}",
                e.diagnostics.len(),
                source.describe()
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

fn load_rules(dir: &std::path::Path) -> Result<tagway::ruleset::RuleSet> {
    let source = RulesSource::dir_or_embedded(dir);
    config::load_without_secrets(&source, &[])
        .map_err(|e| anyhow::anyhow!("{e}\n(run `tagway check` for details)"))
}

fn explain(a: ExplainArgs) -> Result<ExitCode> {
    use tagway::inspect::{Request, inspect};
    let rules = load_rules(&a.rules)?;
    let mut requests: Vec<Request> = Vec::new();
    if let Some(har) = &a.har {
        requests = har_requests(har, a.client_ip)?;
    } else if let Some(url) = &a.url {
        let method = http::Method::from_bytes(a.method.to_ascii_uppercase().as_bytes())
            .context("--method")?;
        let mut req = Request::from_url(method, url).map_err(anyhow::Error::msg)?;
        for h in &a.headers {
            let (n, v) = h
                .split_once(':')
                .with_context(|| format!("--header {h:?}: write \"Name: value\""))?;
            req.headers.append(
                http::HeaderName::from_bytes(n.trim().as_bytes())
                    .with_context(|| format!("--header {h:?}: bad name"))?,
                http::HeaderValue::from_str(v.trim())
                    .with_context(|| format!("--header {h:?}: bad value"))?,
            );
        }
        if let Some(b) = &a.body {
            let bytes = if b.as_os_str() == "-" {
                let mut v = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)
                    .context("reading the body from standard input")?;
                v
            } else {
                std::fs::read(b).with_context(|| format!("--body {}", b.display()))?
            };
            req.body = bytes.into();
        }
        req.client_ip = a.client_ip;
        requests.push(req);
    }
    let mut failed = false;
    let mut json_out = Vec::new();
    for req in &requests {
        match inspect(&rules, req, &mut |_, _| {}) {
            Ok(ins) if a.json => json_out.push(tagway::explain::json(&ins)),
            Ok(ins) => say!("{}", tagway::explain::text(&ins)),
            Err(e) => {
                failed = true;
                if a.json {
                    json_out.push(serde_json::json!({ "error": e, "url": format!("{}{}", req.host, req.path) }));
                } else {
                    say!("{} {}{}: {e}\n", req.method, req.host, req.path);
                }
            }
        }
    }
    if a.json {
        let v = if a.har.is_some() {
            serde_json::Value::Array(json_out)
        } else {
            json_out.pop().unwrap_or_default()
        };
        say!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(if failed && a.har.is_none() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The requests of a HAR file.
fn har_requests(
    path: &std::path::Path,
    client_ip: std::net::IpAddr,
) -> Result<Vec<tagway::inspect::Request>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--har {}", path.display()))?;
    let har: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("--har {}: not JSON", path.display()))?;
    let entries = har["log"]["entries"]
        .as_array()
        .with_context(|| format!("--har {}: no log.entries", path.display()))?;
    let mut out = Vec::new();
    for e in entries {
        let r = &e["request"];
        let (Some(method), Some(url)) = (r["method"].as_str(), r["url"].as_str()) else {
            continue;
        };
        let Ok(method) = http::Method::from_bytes(method.as_bytes()) else {
            continue;
        };
        let Ok(mut req) = tagway::inspect::Request::from_url(method, url) else {
            continue;
        };
        for h in r["headers"].as_array().into_iter().flatten() {
            let (Some(n), Some(v)) = (h["name"].as_str(), h["value"].as_str()) else {
                continue;
            };
            if n.starts_with(':') {
                continue;
            }
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(n.as_bytes()),
                http::HeaderValue::from_str(v),
            ) {
                req.headers.append(n, v);
            }
        }
        if let Some(t) = r["postData"]["text"].as_str() {
            req.body = t.as_bytes().to_vec().into();
        }
        req.client_ip = client_ip;
        out.push(req);
    }
    Ok(out)
}

fn run_tests(a: TestArgs) -> Result<ExitCode> {
    let rules = load_rules(&a.rules)?;
    let results = tagway::ruletest::run_all(&rules);
    let failed: Vec<_> = results.iter().filter(|r| !r.failures.is_empty()).collect();
    for r in &results {
        if r.failures.is_empty() {
            say!("ok    {}  ({})", r.name, r.at);
        } else {
            say!("FAIL  {}  ({})", r.name, r.at);
            for f in &r.failures {
                say!("        {f}");
            }
        }
    }
    say!(
        "\n{} tests, {} passed, {} failed",
        results.len(),
        results.len() - failed.len(),
        failed.len()
    );
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn serve(a: ServeArgs, certs_explicit: bool) -> Result<ExitCode> {
    // Traffic runs on the worker threads `run` starts; this runtime only waits for signals,
    // watches files and serves the admin listener.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve_async(a, certs_explicit))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve_async(a: ServeArgs, certs_explicit: bool) -> Result<()> {
    let source = RulesSource::dir_or_embedded(&a.rules);
    if matches!(source, RulesSource::Embedded) {
        tracing::info!(
            "rules folder {} not found: using the rule files embedded in the binary",
            a.rules.display()
        );
    }
    let certs = match a.tls_listen.0 {
        None => None,
        Some(_) => {
            if certs_explicit && !a.certs.exists() {
                bail!(
                    "certificates folder {} (--certs) does not exist",
                    a.certs.display()
                );
            }
            let (store, problems) = CertStore::load(&a.certs)?;
            for p in &problems {
                tracing::error!("certificate not loaded: {p}");
            }
            let map = store.current();
            if map.generated {
                tracing::warn!(
                    "no certificates in {}: serving a self-signed certificate for localhost, generated in memory",
                    a.certs.display()
                );
            } else {
                tracing::info!(names = ?map.names, "certificates loaded from {}", a.certs.display());
            }
            Some(store)
        }
    };
    let settings = Settings {
        header_timeout: a.header_timeout,
        idle_timeout: a.idle_timeout,
        body_timeout: a.body_timeout,
        shutdown_timeout: a.shutdown_timeout,
        max_connections: a.max_connections,
        max_header_bytes: usize::try_from(a.max_header_size).unwrap_or(usize::MAX),
        trusted_proxies: TrustedProxies::new(a.trusted_proxies.clone()),
        rules: source,
        overrides: a.upstreams.clone(),
        client: ClientSettings {
            connect_timeout: a.connect_timeout,
            timeout: a.upstream_timeout,
            max_response: a.max_response_size,
            ..ClientSettings::default()
        },
        upstream_ca: a.upstream_ca.clone(),
        workers: a
            .workers
            .filter(|n| *n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        scripts: tagway::scripts::CacheSettings {
            max_bytes: a.script_cache_size,
            max_script: a.script_max_size,
        },
        spool: (a.spool.spool.as_os_str() != "off").then(|| SpoolSettings {
            dir: a.spool.spool.clone(),
            fsync: a.spool.spool_fsync,
            max_bytes: a.spool.spool_max_size,
            segment_bytes: a.spool.spool_segment_size,
        }),
        delivery: DeliverySettings {
            concurrency: a.spool.delivery_concurrency.max(1),
            backoff: a.spool.delivery_backoff,
            backoff_max: a.spool.delivery_backoff_max,
            max_age: a.spool.delivery_max_age,
            breaker_failures: a.spool.breaker_failures.max(1),
            breaker_cooldown: a.spool.breaker_cooldown,
        },
    };
    let gw: Arc<Gateway> = Gateway::new(settings, certs)?;
    let rules = gw.rules();
    tracing::info!(
        routes = rules.routes.routes().len(),
        files = rules.files,
        "rules loaded from {}; hash key from {}",
        rules.source,
        rules.key_source
    );
    for w in &rules.warnings {
        tracing::warn!("{w}");
    }
    let queued = rules
        .routes
        .routes()
        .iter()
        .filter(|r| r.delivery == tagway::ruleset::Delivery::Queue)
        .count();
    match &gw.spool {
        Some(s) => tracing::info!(
            queued_routes = queued,
            "spool in {} (fsync {:?}, max {} bytes)",
            s.dir().display(),
            s.settings().fsync,
            s.settings().max_bytes
        ),
        None if queued > 0 => {
            tracing::warn!("--spool off: the {queued} queued routes are relayed synchronously")
        }
        None => {}
    }
    if rules.site.origins.is_empty() {
        tracing::warn!(
            "[site] lists no origins: browsers on other origins cannot read answers (CORS)"
        );
    }

    let listeners = Listeners {
        plain: bind(a.listen.0, "--listen")?,
        tls: bind(a.tls_listen.0, "--tls-listen")?,
        admin: bind(a.admin_listen.0, "--admin-listen")?,
    };
    let shutdown = shutdown_signal();
    for (what, l) in [
        ("http", &listeners.plain),
        ("https", &listeners.tls),
        ("admin", &listeners.admin),
    ] {
        if let Some(addr) = l.as_ref().and_then(|l| l.local_addr().ok()) {
            tracing::info!("listening ({what}) on {addr}");
        }
    }
    let _watcher = tagway::watch::start(gw.clone());
    tagway::run(gw, listeners, shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Binds a listener with a deep accept backlog; the error names the flag that chose it.
fn bind(addr: Option<SocketAddr>, flag: &str) -> Result<Option<std::net::TcpListener>> {
    let Some(addr) = addr else { return Ok(None) };
    let l =
        tagway::listen::bind(addr).with_context(|| format!("cannot listen on {addr} ({flag})"))?;
    Ok(Some(l))
}

/// Registers the SIGTERM and SIGINT handlers now, before the listeners are announced (so a
/// signal sent right after the "listening" line is never taken by the default action, which
/// kills the process without draining), and returns the future that waits for either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            match (term, int) {
                (Some(mut term), Some(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {},
                        _ = int.recv() => {},
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
