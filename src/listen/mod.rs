//! Stage 1, listen: accepts connections on the plain (HTTP/1.1 + h2c) and TLS (HTTP/1.1 + h2
//! by ALPN) listeners, bounds how many are open, enforces the header and idle timeouts, and
//! drains gracefully on shutdown. Each request is handed to [`crate::proxy::handle`].
//!
//! - [`run`] starts the worker threads and waits for shutdown;
//! - `worker`: one thread, its runtime, its accept loops, balancing connections between workers;
//! - `serve`: one connection (TLS handshake, hyper, the watchdog);
//! - [`conn`]: the per-connection timeout bookkeeping.

pub mod conn;
mod serve;
mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::gateway::Gateway;

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
/// and its own upstream connection pool: a request, its upstream exchange and its response
/// stay on one thread (no cross-thread wake-ups, no shared pool lock), the way nginx's workers
/// do. The admin listener runs on the caller's runtime.
pub async fn run(
    gw: Arc<Gateway>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let token = CancellationToken::new();
    let tls = match &listeners.tls {
        None => None,
        Some(_) => Some(TlsAcceptor::from(
            gw.certs
                .clone()
                .ok_or(ServeError::NoCerts)?
                .server_config()?,
        )),
    };
    let done = worker::start(&gw, &listeners, tls, &token)?;
    // The workers hold their own handles now: close ours, so that once the workers stop
    // accepting, the sockets are closed and new connections are refused, not queued.
    drop(listeners.plain);
    drop(listeners.tls);
    let admin = match listeners.admin {
        Some(l) => {
            l.set_nonblocking(true)?;
            let l = TcpListener::from_std(l)?;
            Some(tokio::spawn(crate::admin::serve(
                gw.clone(),
                l,
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
    // Last sync; what is not delivered stays in the spool for the next start.
    if let Some(s) = &gw.spool {
        s.close();
    }
    Ok(())
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
