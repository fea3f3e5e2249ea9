//! One connection: the TLS handshake (bounded by the header timeout), hyper serving HTTP/1.1
//! or HTTP/2, and the watchdog that applies the header and idle timeouts and the shutdown
//! signal.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::conn::{ConnIo, ConnState, InFlight, Tracked, Verdict};
use crate::deliver::UpstreamClient;
use crate::gateway::{Gateway, Settings};
use crate::proxy::{self, ConnInfo};

/// Per-worker state shared by its connections.
pub(super) struct Ctx {
    pub gw: Arc<Gateway>,
    pub client: Arc<UpstreamClient>,
    pub builder: auto::Builder<TokioExecutor>,
    pub token: CancellationToken,
    pub conns: TaskTracker,
    pub tls: Option<TlsAcceptor>,
}

/// hyper's server settings. hyper's own header timer is left off: the watchdog in
/// [`serve_conn`] implements the header and idle bounds separately.
pub(super) fn server_builder(s: &Settings) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(s.max_header_bytes.max(8192));
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(s.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(200)
        .max_pending_accept_reset_streams(Some(50))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

pub(super) async fn accept_conn(ctx: &Ctx, stream: TcpStream, peer: SocketAddr, tls: bool) {
    let state = Arc::new(ConnState::new());
    let port = stream.local_addr().ok().map(|a| a.port());
    match ctx.tls.as_ref().filter(|_| tls) {
        None => serve_conn(ctx, stream, ConnInfo::new(peer, None).on_port(port), state).await,
        Some(acceptor) => {
            let hs = tokio::select! {
                r = tokio::time::timeout(ctx.gw.settings.header_timeout, acceptor.accept(stream)) => r,
                _ = ctx.token.cancelled() => return,
            };
            match hs {
                Ok(Ok(tls)) => {
                    let sni = tls.get_ref().1.server_name().map(Box::from);
                    serve_conn(ctx, tls, ConnInfo::new(peer, sni).on_port(port), state).await
                }
                Ok(Err(e)) => {
                    ctx.gw.metrics.tls_handshake_failures.fetch_add(1, Relaxed);
                    tracing::debug!("TLS handshake failed: {e}");
                }
                Err(_) => {
                    ctx.gw.metrics.tls_handshake_failures.fetch_add(1, Relaxed);
                    tracing::debug!("TLS handshake timed out");
                }
            }
        }
    }
}

/// Serves one connection until it ends, the watchdog closes it, or shutdown drains it.
async fn serve_conn<I>(ctx: &Ctx, io: I, info: ConnInfo, state: Arc<ConnState>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let info = Arc::new(info);
    let (gw, client) = (ctx.gw.clone(), ctx.client.clone());
    let st = state.clone();
    let svc = service_fn(move |req| {
        let mark = InFlight::start(st.clone());
        let (gw, client, info) = (gw.clone(), client.clone(), info.clone());
        async move {
            let res = proxy::handle(&gw, &client, &info, req).await;
            Ok::<_, Infallible>(res.map(|b| Tracked::new(b, mark)))
        }
    });
    let conn = ctx
        .builder
        .serve_connection(TokioIo::new(ConnIo::new(io, state.clone())), svc);
    tokio::pin!(conn);
    let (header, idle) = (ctx.gw.settings.header_timeout, ctx.gw.settings.idle_timeout);
    // The first check comes at the shorter bound; after that each verdict says when to look again.
    let watchdog = tokio::time::sleep(header.min(idle));
    tokio::pin!(watchdog);
    let cancelled = ctx.token.cancelled();
    tokio::pin!(cancelled);
    let mut closing = false;
    // The watchdog timer and the shutdown signal only need our waker registered once (it is
    // the same for every poll of this task); after that, checking whether they fired is a
    // load. A `select!` would re-poll both on every wake-up of the connection, that is,
    // several times per request.
    let (mut watch_armed, mut cancel_armed) = (false, false);
    std::future::poll_fn(|cx| {
        loop {
            if conn.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            if !watch_armed || watchdog.is_elapsed() {
                watch_armed = true;
                if watchdog.as_mut().poll(cx).is_ready() {
                    match state.verdict(Instant::now(), header, idle) {
                        Verdict::CheckAt(t) => watchdog.as_mut().reset(t),
                        Verdict::HeaderTimeout => {
                            ctx.gw.metrics.header_timeouts.fetch_add(1, Relaxed);
                            return Poll::Ready(());
                        }
                        Verdict::Idle if closing => return Poll::Ready(()),
                        Verdict::Idle => {
                            ctx.gw.metrics.idle_closed.fetch_add(1, Relaxed);
                            conn.as_mut().graceful_shutdown();
                            closing = true;
                            watchdog
                                .as_mut()
                                .reset(Instant::now() + Duration::from_secs(1));
                        }
                    }
                    watch_armed = false;
                    continue;
                }
            }
            if !closing && (!cancel_armed || ctx.token.is_cancelled()) {
                cancel_armed = true;
                if cancelled.as_mut().poll(cx).is_ready() {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                    continue;
                }
            }
            return Poll::Pending;
        }
    })
    .await
}
