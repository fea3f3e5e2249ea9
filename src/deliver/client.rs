//! The upstream client: one per worker thread, with its own connection pool.
//!
//! HTTP/1.1 exchanges run inline in the request's task ([`super::h1`]); an https upstream that
//! picks HTTP/2 by ALPN gets one multiplexed hyper HTTP/2 connection instead. Connections are
//! reused until idle for `pool_idle`; a request that finds its pooled connection closed by the
//! upstream (no response byte at all) is retried once on a new connection.
//!
//! Why not hyper-util's pooled client: measured side by side on the relay benchmark it cost
//! ~40 % more CPU per request than nginx, most of it in the client (a task and two channel
//! hops per request, pool checkout futures, connector clones). The inline exchange removes
//! those; HTTP/2 still goes through hyper.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::Outgoing;
use super::h1::{self, ExchangeError, H1Conn, UpstreamBody};
use super::io::Io;
use crate::respond::Reject;
use crate::ruleset::Upstream;

/// Upstream client settings (from the command line).
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub connect_timeout: Duration,
    /// Request sent → response body complete.
    pub timeout: Duration,
    /// Largest response body passed on.
    pub max_response: u64,
    /// Idle pooled connections are closed after this long.
    pub pool_idle: Duration,
    /// Idle connections kept per upstream (per worker).
    pub max_idle: usize,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            connect_timeout: Duration::from_secs(3),
            timeout: Duration::from_secs(15),
            max_response: 8 * 1024 * 1024,
            pool_idle: Duration::from_secs(50),
            max_idle: 256,
        }
    }
}

/// Setting up the client failed (start-up only).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--upstream-ca {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("TLS client set-up: {0}")]
    Tls(#[from] rustls::Error),
}

/// The TLS configuration for upstreams: the public web roots plus `--upstream-ca`, offering h2
/// and HTTP/1.1. Built once at start-up (so a bad CA file stops start-up) and shared.
pub fn tls_config(extra_ca: Option<&Path>) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        let ca_err = |reason: String| ClientError::CaFile {
            path: path.display().to_string(),
            reason,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| ca_err(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| ca_err(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_err("no PEM certificates in this file".into()));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| ca_err(format!("not a usable CA certificate: {e}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

type H2Sender = http2::SendRequest<Full<bytes::Bytes>>;

struct Idle {
    conn: H1Conn,
    since: Instant,
}

/// Idle HTTP/1.1 connections and live HTTP/2 connections, by upstream origin.
pub struct Pool {
    h1: Mutex<Vec<(Box<str>, Vec<Idle>)>>,
    h2: Mutex<Vec<(Box<str>, H2Sender)>>,
    idle_for: Duration,
    max_idle: usize,
}

impl Pool {
    /// Gives a connection back after a complete exchange (dropped when not reusable, when it
    /// holds unread bytes, or when the pool for this origin is full).
    pub fn put(&self, key: &str, conn: H1Conn, reusable: bool) {
        if !reusable || !conn.buf.is_empty() {
            return;
        }
        let Ok(mut h1) = self.h1.lock() else { return };
        let list = match h1.iter_mut().position(|(k, _)| &**k == key) {
            Some(i) => &mut h1[i].1,
            None => {
                h1.push((key.into(), Vec::new()));
                &mut h1.last_mut().expect("just pushed").1
            }
        };
        // Oldest first: drop the expired prefix (take() uses the newest, at the end).
        let now = Instant::now();
        let expired = list
            .iter()
            .take_while(|i| now.duration_since(i.since) >= self.idle_for)
            .count();
        list.drain(..expired);
        if list.len() < self.max_idle {
            list.push(Idle { conn, since: now });
        }
    }

    fn take(&self, key: &str) -> Option<H1Conn> {
        let mut h1 = self.h1.lock().ok()?;
        let list = &mut h1.iter_mut().find(|(k, _)| &**k == key)?.1;
        let now = Instant::now();
        while let Some(i) = list.pop() {
            if now.duration_since(i.since) < self.idle_for {
                return Some(i.conn);
            }
        }
        None
    }

    fn h2(&self, key: &str) -> Option<H2Sender> {
        let mut h2 = self.h2.lock().ok()?;
        let i = h2.iter().position(|(k, _)| &**k == key)?;
        if h2[i].1.is_closed() {
            h2.swap_remove(i);
            return None;
        }
        Some(h2[i].1.clone())
    }

    fn set_h2(&self, key: &str, s: H2Sender) {
        if let Ok(mut h2) = self.h2.lock() {
            h2.retain(|(k, _)| &**k != key);
            h2.push((key.into(), s));
        }
    }
}

/// A worker's client.
pub struct UpstreamClient {
    pool: Arc<Pool>,
    tls: TlsConnector,
    settings: ClientSettings,
}

enum Fresh {
    H1(H1Conn),
    H2(H2Sender),
}

impl UpstreamClient {
    pub fn new(settings: ClientSettings, tls: &rustls::ClientConfig) -> Self {
        UpstreamClient {
            pool: Arc::new(Pool {
                h1: Mutex::new(Vec::new()),
                h2: Mutex::new(Vec::new()),
                idle_for: settings.pool_idle,
                max_idle: settings.max_idle,
            }),
            tls: TlsConnector::from(Arc::new(tls.clone())),
            settings,
        }
    }

    pub fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    /// Sends `out` to `up`. On success returns the vendor's response (body possibly still
    /// streaming) and the deadline its body must meet.
    pub async fn send(
        &self,
        up: &Upstream,
        out: Outgoing,
    ) -> Result<(Response<UpstreamBody>, Instant), Reject> {
        self.send_cow(up, Cow::Owned(out)).await
    }

    /// [`Self::send`] for a request the caller keeps (background delivery may send it again):
    /// HTTP/1.1 writes it from the reference; only HTTP/2 copies what it needs.
    pub async fn send_ref(
        &self,
        up: &Upstream,
        out: &Outgoing,
    ) -> Result<(Response<UpstreamBody>, Instant), Reject> {
        self.send_cow(up, Cow::Borrowed(out)).await
    }

    async fn send_cow(
        &self,
        up: &Upstream,
        out: Cow<'_, Outgoing>,
    ) -> Result<(Response<UpstreamBody>, Instant), Reject> {
        let deadline = Instant::now() + self.settings.timeout;
        let res = self.send_inner(up, out, deadline).await?;
        if let Some(len) = http_body::Body::size_hint(res.body()).exact()
            && len > self.settings.max_response
        {
            return Err(Reject::UpstreamTooLarge(format!(
                "upstream {} answered with {len} bytes, over the limit of {} (--max-response-size)",
                up.name, self.settings.max_response
            )));
        }
        Ok((res, deadline))
    }

    fn timed_out(&self, up: &Upstream) -> Reject {
        Reject::UpstreamTimeout(format!(
            "upstream {} ({}) did not answer within {:?} (--upstream-timeout)",
            up.name, up.origin, self.settings.timeout
        ))
    }

    /// HTTP/1.1 exchanges bound themselves with their connection's timer; connecting and
    /// HTTP/2 use a timer of their own.
    async fn send_inner(
        &self,
        up: &Upstream,
        out: Cow<'_, Outgoing>,
        deadline: Instant,
    ) -> Result<Response<UpstreamBody>, Reject> {
        let key = up.origin.as_str();
        let max = self.settings.max_response;
        let exchange_error = |e: ExchangeError| match e {
            ExchangeError::Timeout => self.timed_out(up),
            e => failed(up, &e),
        };
        if let Some(h2) = self.pool.h2(key) {
            return tokio::time::timeout_at(deadline, Box::pin(send_h2(h2, up, out.into_owned())))
                .await
                .map_err(|_| self.timed_out(up))?;
        }
        if let Some(conn) = self.pool.take(key) {
            match h1::exchange(
                conn,
                up.authority.as_str(),
                &out,
                &self.pool,
                key,
                max,
                deadline,
            )
            .await
            {
                Ok(r) => return Ok(r),
                // The upstream closed the idle connection: retry once on a new one.
                Err(ExchangeError::Stale) => {}
                Err(e) => return Err(exchange_error(e)),
            }
        }
        // Boxed: connecting (TLS included) is rare and its future is most of this one's size,
        // which every request would otherwise carry and move around.
        let fresh = tokio::time::timeout_at(deadline, Box::pin(self.connect(up)))
            .await
            .map_err(|_| self.timed_out(up))??;
        match fresh {
            Fresh::H2(s) => {
                self.pool.set_h2(key, s.clone());
                tokio::time::timeout_at(deadline, Box::pin(send_h2(s, up, out.into_owned())))
                    .await
                    .map_err(|_| self.timed_out(up))?
            }
            Fresh::H1(conn) => h1::exchange(
                conn,
                up.authority.as_str(),
                &out,
                &self.pool,
                key,
                max,
                deadline,
            )
            .await
            .map_err(exchange_error),
        }
    }

    async fn connect(&self, up: &Upstream) -> Result<Fresh, Reject> {
        let unreachable = |why: String| {
            Reject::UpstreamConnect(format!(
                "upstream {} ({}) unreachable: {why}",
                up.name, up.origin
            ))
        };
        let https = up.scheme == http::uri::Scheme::HTTPS;
        let host = up.authority.host();
        let port = up
            .authority
            .port_u16()
            .unwrap_or(if https { 443 } else { 80 });
        let connect = async {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.trim_start_matches('[').trim_end_matches(']'), port))
                    .await
                    .map_err(|e| unreachable(format!("cannot resolve {host}: {e}")))?
                    .collect();
            let mut last = None;
            for a in addrs {
                match TcpStream::connect(a).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = Some(e),
                }
            }
            Err(unreachable(
                last.map_or("no addresses".into(), |e| io_reason(&e)),
            ))
        };
        let tcp = tokio::time::timeout(self.settings.connect_timeout, connect)
            .await
            .map_err(|_| {
                unreachable(format!(
                    "connect timed out after {:?} (--connect-timeout)",
                    self.settings.connect_timeout
                ))
            })??;
        let _ = tcp.set_nodelay(true);
        if !https {
            return Ok(Fresh::H1(H1Conn::new(Io::Plain(tcp))));
        }
        let name = ServerName::try_from(
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
        )
        .map_err(|_| unreachable(format!("{host} is not a valid TLS server name")))?;
        let tls = tokio::time::timeout(self.settings.connect_timeout, self.tls.connect(name, tcp))
            .await
            .map_err(|_| unreachable("TLS handshake timed out".into()))?
            .map_err(|e| unreachable(format!("TLS handshake failed: {e}")))?;
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(30))
                .handshake(TokioIo::new(tls))
                .await
                .map_err(|e| unreachable(format!("HTTP/2 handshake failed: {e}")))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            return Ok(Fresh::H2(sender));
        }
        Ok(Fresh::H1(H1Conn::new(Io::Tls(Box::new(tls)))))
    }
}

async fn send_h2(
    mut s: H2Sender,
    up: &Upstream,
    out: Outgoing,
) -> Result<Response<UpstreamBody>, Reject> {
    let fail = |e: hyper::Error| {
        Reject::UpstreamFailed(format!("upstream {} ({}) failed: {e}", up.name, up.origin))
    };
    s.ready().await.map_err(fail)?;
    let uri = Uri::builder()
        .scheme(up.scheme.clone())
        .authority(up.authority.clone())
        .path_and_query(
            out.target
                .into_path_and_query()
                .map_err(|_| Reject::BadRequest("the request target cannot be forwarded"))?,
        )
        .build()
        .map_err(|_| Reject::BadRequest("the request target cannot be forwarded"))?;
    let mut req = Request::new(Full::new(out.body));
    *req.method_mut() = out.method;
    *req.uri_mut() = uri;
    req.headers_mut().extend(out.headers);
    let res = s.send_request(req).await.map_err(fail)?;
    Ok(res.map(UpstreamBody::H2))
}

fn failed(up: &Upstream, e: &ExchangeError) -> Reject {
    if let ExchangeError::TooLarge(_) = e {
        return Reject::UpstreamTooLarge(format!("upstream {} ({}): {e}", up.name, up.origin));
    }
    Reject::UpstreamFailed(format!("upstream {} ({}) failed: {e}", up.name, up.origin))
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::TimedOut => "connect timed out".into(),
        _ => e.to_string(),
    }
}
