//! A mock vendor: an HTTP/1.1 + HTTP/2 server on loopback (optionally TLS) that records every
//! request it receives and answers with a configurable reply.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::TestCa;

/// A request as the vendor saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What the mock answers.
#[derive(Debug, Clone)]
pub struct MockReply {
    pub status: StatusCode,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
    pub delay: Duration,
    /// Send the body in 8 KiB chunks without Content-Length (chunked on HTTP/1.1).
    pub chunked: bool,
}

impl MockReply {
    pub fn status(code: u16) -> Self {
        MockReply {
            status: StatusCode::from_u16(code).unwrap(),
            headers: vec![],
            body: Bytes::new(),
            delay: Duration::ZERO,
            chunked: false,
        }
    }
    pub fn body(mut self, b: impl Into<Bytes>) -> Self {
        self.body = b.into();
        self
    }
    pub fn header(mut self, n: &'static str, v: &str) -> Self {
        self.headers.push((n, v.to_string()));
        self
    }
    pub fn chunked(mut self) -> Self {
        self.chunked = true;
        self
    }
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

type Responder = dyn Fn(&Seen) -> MockReply + Send + Sync;

pub struct Mock {
    pub addr: SocketAddr,
    pub tls: bool,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mock {
    /// A plain HTTP mock answering 204 to everything.
    pub async fn plain() -> Mock {
        Self::start(None, Arc::new(|_: &Seen| MockReply::status(204))).await
    }

    pub async fn plain_with(f: impl Fn(&Seen) -> MockReply + Send + Sync + 'static) -> Mock {
        Self::start(None, Arc::new(f)).await
    }

    /// A TLS mock (h2 and HTTP/1.1 by ALPN) with a certificate for `localhost` from `ca`.
    pub async fn tls_with(
        ca: &TestCa,
        f: impl Fn(&Seen) -> MockReply + Send + Sync + 'static,
    ) -> Mock {
        let leaf = ca.leaf(&["localhost", "127.0.0.1"]);
        let (chain, key) = leaf.certified_key();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Self::start(Some(TlsAcceptor::from(Arc::new(cfg))), Arc::new(f)).await
    }

    async fn start(tls: Option<TlsAcceptor>, responder: Arc<Responder>) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(AtomicUsize::new(0));
        let (s2, c2, is_tls) = (seen.clone(), connections.clone(), tls.is_some());
        let a2 = answered.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c2.fetch_add(1, Ordering::SeqCst);
                let (seen, responder, tls) = (s2.clone(), responder.clone(), tls.clone());
                let answered = a2.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (seen, responder) = (seen.clone(), responder.clone());
                        let answered = answered.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let s = Seen {
                                method: parts.method,
                                uri: parts.uri,
                                version: parts.version,
                                headers: parts.headers,
                                body,
                            };
                            seen.lock().unwrap().push(s.clone());
                            let reply = responder(&s);
                            if !reply.delay.is_zero() {
                                tokio::time::sleep(reply.delay).await;
                            }
                            answered.fetch_add(1, Ordering::SeqCst);
                            let body: BoxBody<Bytes, Infallible> = if reply.chunked {
                                let chunks: Vec<Result<Frame<Bytes>, Infallible>> = reply
                                    .body
                                    .chunks(8192)
                                    .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                                    .collect();
                                StreamBody::new(futures_util::stream::iter(chunks)).boxed()
                            } else {
                                Full::new(reply.body).boxed()
                            };
                            let mut res = Response::new(body);
                            *res.status_mut() = reply.status;
                            for (n, v) in reply.headers {
                                res.headers_mut().append(n, v.parse().unwrap());
                            }
                            Ok::<_, Infallible>(res)
                        }
                    });
                    let b = auto::Builder::new(TokioExecutor::new());
                    match tls {
                        Some(acc) => {
                            if let Ok(s) = acc.accept(stream).await {
                                let _ = b.serve_connection(TokioIo::new(s), svc).await;
                            }
                        }
                        None => {
                            let _ = b.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
        });
        Mock {
            addr,
            tls: is_tls,
            seen,
            connections,
            answered,
            task,
        }
    }

    /// `http://127.0.0.1:PORT` or `https://localhost:PORT`, for `--upstream NAME=URL`.
    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Requests answered so far (after their reply's delay).
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// An address on loopback where nothing listens (bound, then closed).
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}
