//! Stage 1, listen: accepts connections on the plain (HTTP/1.1 + h2c) and TLS (HTTP/1.1 + h2
//! by ALPN) listeners, bounds how many are open, enforces the header and idle timeouts, and
//! drains gracefully on shutdown. Each request is handed to [`crate::proxy::handle`].

pub mod conn;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::conn::{ConnIo, ConnState, InFlight, Tracked, Verdict};
use crate::deliver::UpstreamClient;
use crate::gateway::{Gateway, Settings};
use crate::proxy::{self, ConnInfo};

/// The bound sockets the gateway serves on. Binding happens before [`run`] (see [`bind`]), so
/// tests can bind port 0 and start-up can report a port in use with the flag that chose it.
#[derive(Debug, Default)]
pub struct Listeners {
    pub plain: Option<std::net::TcpListener>,
    pub tls: Option<std::net::TcpListener>,
    pub admin: Option<std::net::TcpListener>,
}

/// A failure to start serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("TLS set-up: {0}")]
    Tls(#[from] rustls::Error),
    #[error("TLS listener configured without a certificate store")]
    NoCerts,
    #[error("cannot start worker threads: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves until `shutdown` completes, then stops accepting, lets requests in flight finish
/// within the shutdown timeout, and returns.
///
/// Traffic is served by `settings.workers` threads, each with its own single-threaded runtime
/// and its own upstream connection pool, all accepting from the same sockets: a request, its
/// upstream exchange and its response stay on one thread (no cross-thread wake-ups, no shared
/// pool lock), the way nginx's workers do. The admin listener runs on the caller's runtime.
pub async fn run(
    gw: Arc<Gateway>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let token = CancellationToken::new();
    let slots = Arc::new(Semaphore::new(gw.settings.max_connections.max(1)));
    let tls = match &listeners.tls {
        None => None,
        Some(_) => Some(TlsAcceptor::from(
            gw.certs
                .clone()
                .ok_or(ServeError::NoCerts)?
                .server_config()?,
        )),
    };
    let mut done = Vec::new();
    for i in 0..gw.settings.workers.max(1) {
        let plain = listeners
            .plain
            .as_ref()
            .map(|l| l.try_clone())
            .transpose()?;
        let tls_l = listeners.tls.as_ref().map(|l| l.try_clone()).transpose()?;
        let (gw, slots, token, tls) = (gw.clone(), slots.clone(), token.clone(), tls.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("tagway-worker-{i}"))
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(worker(gw, plain, tls_l, tls, slots, token)),
                    Err(e) => tracing::error!("worker {i}: cannot start its runtime: {e}"),
                }
                let _ = tx.send(());
            })?;
        done.push(rx);
    }
    // The workers hold their own handles now: close ours, so that once the workers stop
    // accepting, the sockets are closed and new connections are refused, not queued.
    drop(listeners.plain);
    drop(listeners.tls);
    let admin = match listeners.admin {
        Some(l) => {
            l.set_nonblocking(true)?;
            Some(tokio::spawn(crate::admin::serve(
                gw.clone(),
                TcpListener::from_std(l)?,
                token.clone(),
            )))
        }
        None => None,
    };

    shutdown.await;
    tracing::info!(
        "shutting down: no new connections; requests in flight get {:?}",
        gw.settings.shutdown_timeout
    );
    gw.start_draining();
    token.cancel();
    for rx in done {
        let _ = rx.await;
    }
    if let Some(a) = admin {
        let _ = a.await;
    }
    Ok(())
}

/// Per-worker state shared by its connections.
struct Ctx {
    gw: Arc<Gateway>,
    client: Arc<UpstreamClient>,
    builder: auto::Builder<TokioExecutor>,
    /// One permit per open connection (`--max-connections`, shared by all workers), taken
    /// before `accept`.
    slots: Arc<Semaphore>,
    token: CancellationToken,
    conns: TaskTracker,
}

/// One worker thread: accept loops on the shared sockets, then the drain.
async fn worker(
    gw: Arc<Gateway>,
    plain: Option<std::net::TcpListener>,
    tls_listener: Option<std::net::TcpListener>,
    tls: Option<TlsAcceptor>,
    slots: Arc<Semaphore>,
    token: CancellationToken,
) {
    let ctx = Arc::new(Ctx {
        client: Arc::new(UpstreamClient::new(
            gw.settings.client.clone(),
            &gw.upstream_tls,
        )),
        builder: server_builder(&gw.settings),
        gw,
        slots,
        token,
        conns: TaskTracker::new(),
    });
    let mut loops = tokio::task::JoinSet::new();
    for (l, acceptor) in [(plain, None), (tls_listener, tls)] {
        let Some(l) = l else { continue };
        match TcpListener::from_std(l) {
            Ok(l) => {
                loops.spawn(accept_loop(ctx.clone(), l, acceptor));
            }
            Err(e) => tracing::error!("cannot register a listener: {e}"),
        }
    }
    while loops.join_next().await.is_some() {}
    ctx.conns.close();
    if tokio::time::timeout(ctx.gw.settings.shutdown_timeout, ctx.conns.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = ctx.conns.len(),
            "shutdown bound reached; closing the remaining connections"
        );
    }
}

/// hyper's server settings. hyper's own header timer is left off: the watchdog in
/// [`serve_conn`] implements the header and idle bounds separately.
fn server_builder(s: &Settings) -> auto::Builder<TokioExecutor> {
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

async fn accept_loop(ctx: Arc<Ctx>, listener: TcpListener, tls: Option<TlsAcceptor>) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = tokio::select! {
            p = ctx.slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = ctx.token.cancelled() => return,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = ctx.token.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(5);
                a
            }
            Err(e) => {
                // Out of file descriptors and the like: wait and retry rather than spin.
                tracing::error!(
                    "accept on {:?} failed: {e}; retrying in {backoff:?}",
                    listener.local_addr().ok()
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let ctx2 = ctx.clone();
        let tls = tls.clone();
        ctx.conns.spawn(async move {
            let m = &ctx2.gw.metrics;
            m.connections_accepted.fetch_add(1, Relaxed);
            m.connections_open.fetch_add(1, Relaxed);
            accept_conn(&ctx2, stream, peer, tls).await;
            m.connections_open.fetch_sub(1, Relaxed);
            drop(permit);
        });
    }
}

async fn accept_conn(ctx: &Ctx, stream: TcpStream, peer: SocketAddr, tls: Option<TlsAcceptor>) {
    let state = Arc::new(ConnState::new());
    match tls {
        None => serve_conn(ctx, stream, ConnInfo { peer, sni: None }, state).await,
        Some(acceptor) => {
            let hs = tokio::select! {
                r = tokio::time::timeout(ctx.gw.settings.header_timeout, acceptor.accept(stream)) => r,
                _ = ctx.token.cancelled() => return,
            };
            match hs {
                Ok(Ok(tls)) => {
                    let sni = tls.get_ref().1.server_name().map(Box::from);
                    serve_conn(ctx, tls, ConnInfo { peer, sni }, state).await
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

/// Binds a TCP listener (address reuse, a deep accept backlog), non-blocking, ready for [`run`].
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(true);
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}
