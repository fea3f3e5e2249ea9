//! Clients for tests: one request per connection over HTTP/1.1 or HTTP/2, plain or TLS.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The server's certificate, for TLS connections.
    pub peer_cert: Option<CertificateDer<'static>>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, n: &str) -> Option<&str> {
        self.headers.get(n).and_then(|v| v.to_str().ok())
    }
}

/// How to reach the gateway.
#[derive(Clone)]
pub struct Via<'a> {
    pub addr: SocketAddr,
    /// TLS with these roots and this server name (None: no SNI).
    pub tls: Option<(&'a rustls::RootCertStore, Option<&'a str>)>,
    pub h2: bool,
}

/// Sends one request on a new connection.
pub async fn send(via: Via<'_>, req: Request<Full<Bytes>>) -> Result<Reply, String> {
    let tcp = TcpStream::connect(via.addr)
        .await
        .map_err(|e| e.to_string())?;
    match via.tls {
        None => exchange(tcp, via.h2, req, None).await,
        Some((roots, sni)) => {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            cfg.alpn_protocols = vec![if via.h2 {
                b"h2".to_vec()
            } else {
                b"http/1.1".to_vec()
            }];
            if sni.is_none() {
                cfg.enable_sni = false;
            }
            let name = match sni {
                Some(n) => ServerName::try_from(n.to_string()).unwrap(),
                None => ServerName::IpAddress(via.addr.ip().into()),
            };
            let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            let cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first().cloned())
                .map(|c| c.into_owned());
            exchange(tls, via.h2, req, cert).await
        }
    }
}

async fn exchange<I>(
    io: I,
    h2: bool,
    req: Request<Full<Bytes>>,
    peer_cert: Option<CertificateDer<'static>>,
) -> Result<Reply, String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let res = if h2 {
        let (mut s, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        s.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut s, conn) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        s.send_request(req).await.map_err(|e| e.to_string())?
    };
    let (parts, body) = res.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Reply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
        peer_cert,
    })
}

/// A request builder with `Host: localhost` preset (HTTP/1.1 needs a Host).
pub fn req(method: &str, uri: &str) -> http::request::Builder {
    let b = Request::builder().method(method).uri(uri);
    if uri.starts_with('/') {
        b.header("host", "localhost")
    } else {
        b
    }
}

/// `GET path` over plain HTTP/1.1.
pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    send_plain(
        addr,
        req("GET", path).body(Full::new(Bytes::new())).unwrap(),
    )
    .await
}

/// `req` over plain HTTP/1.1; panics when the exchange fails (tests that expect a failure use
/// [`send`]).
pub async fn send_plain(addr: SocketAddr, req: Request<Full<Bytes>>) -> Reply {
    send(
        Via {
            addr,
            tls: None,
            h2: false,
        },
        req,
    )
    .await
    .unwrap()
}
