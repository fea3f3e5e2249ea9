//! Worker threads: each runs a single-threaded runtime with its own upstream pool and accepts
//! on the shared listening sockets; with a spool, each also spools and delivers the requests
//! it queued (tasks on its runtime, `deliver::queue::Inbox`). A worker that accepts a
//! connection while it already has more open than the least busy worker hands it over (the
//! socket moves to that worker's reactor), so keep-alive connections, and with them the load,
//! spread evenly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Listeners;
use super::serve::{Ctx, accept_conn, server_builder};
use crate::deliver::{UpstreamClient, queue};
use crate::gateway::Gateway;

/// A connection accepted by one worker for another.
struct Handoff {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    tls: bool,
    permit: OwnedSemaphorePermit,
}

/// What every worker knows of the others.
struct Peer {
    /// Connections assigned to this worker and not yet closed.
    open: AtomicUsize,
    tx: mpsc::UnboundedSender<Handoff>,
}

/// Starts the worker threads; each completes its receiver when it has drained.
pub(super) fn start(
    gw: &Arc<Gateway>,
    listeners: &Listeners,
    tls: Option<TlsAcceptor>,
    token: &CancellationToken,
) -> std::io::Result<Vec<oneshot::Receiver<()>>> {
    let n = gw.settings.workers.max(1);
    let slots = Arc::new(Semaphore::new(gw.settings.max_connections.max(1)));
    let mut inboxes = Vec::with_capacity(n);
    let mut peers = Vec::with_capacity(n);
    for _ in 0..n {
        let (tx, rx) = mpsc::unbounded_channel();
        peers.push(Peer {
            open: AtomicUsize::new(0),
            tx,
        });
        inboxes.push(rx);
    }
    let peers: Arc<[Peer]> = peers.into();
    let mut done = Vec::with_capacity(n);
    let deliveries = queue::inboxes(gw, n);
    for ((i, inbox), delivery) in inboxes.into_iter().enumerate().zip(deliveries) {
        let plain = listeners
            .plain
            .as_ref()
            .map(|l| l.try_clone())
            .transpose()?;
        let tls_l = listeners.tls.as_ref().map(|l| l.try_clone()).transpose()?;
        let w = Worker {
            id: i,
            peers: peers.clone(),
            slots: slots.clone(),
        };
        let (gw, token, tls) = (gw.clone(), token.clone(), tls.clone());
        let (tx, rx) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("tagway-worker-{i}"))
            .spawn(move || {
                queue::set_worker(i);
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(w.run(gw, plain, tls_l, tls, (inbox, delivery), token)),
                    Err(e) => tracing::error!("worker {i}: cannot start its runtime: {e}"),
                }
                let _ = tx.send(());
            })?;
        done.push(rx);
    }
    Ok(done)
}

struct Worker {
    id: usize,
    peers: Arc<[Peer]>,
    /// One permit per open connection (`--max-connections`), taken before `accept`.
    slots: Arc<Semaphore>,
}

impl Worker {
    async fn run(
        self,
        gw: Arc<Gateway>,
        plain: Option<std::net::TcpListener>,
        tls_listener: Option<std::net::TcpListener>,
        tls: Option<TlsAcceptor>,
        (mut inbox, delivery): (mpsc::UnboundedReceiver<Handoff>, Option<queue::Inbox>),
        token: CancellationToken,
    ) {
        let ctx = Arc::new(Ctx {
            client: Arc::new(UpstreamClient::new(
                gw.settings.client.clone(),
                &gw.upstream_tls,
            )),
            builder: server_builder(&gw.settings),
            gw,
            token,
            conns: TaskTracker::new(),
            tls,
        });
        let delivery =
            delivery.and_then(|d| d.spawn(ctx.gw.clone(), ctx.client.clone(), ctx.token.clone()));
        let me = Arc::new(self);
        let mut loops = tokio::task::JoinSet::new();
        for (l, is_tls) in [(plain, false), (tls_listener, true)] {
            let Some(l) = l else { continue };
            match TcpListener::from_std(l) {
                Ok(l) => {
                    loops.spawn(me.clone().accept_loop(ctx.clone(), l, is_tls));
                }
                Err(e) => tracing::error!("cannot register a listener: {e}"),
            }
        }
        // Connections handed over by other workers.
        let (me2, ctx2) = (me.clone(), ctx.clone());
        loops.spawn(async move {
            loop {
                let h = tokio::select! {
                    h = inbox.recv() => match h { Some(h) => h, None => return },
                    _ = ctx2.token.cancelled() => return,
                };
                match TcpStream::from_std(h.stream) {
                    Ok(s) => me2.spawn(&ctx2, s, h.peer, h.tls, h.permit),
                    Err(e) => {
                        me2.peers[me2.id].open.fetch_sub(1, Relaxed);
                        tracing::error!("cannot register a handed-over connection: {e}");
                    }
                }
            }
        });
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
        // It stopped starting deliveries at the token; its attempts in flight are bounded.
        if let Some(d) = delivery {
            let _ = d.await;
        }
    }

    async fn accept_loop(self: Arc<Self>, ctx: Arc<Ctx>, listener: TcpListener, tls: bool) {
        let mut backoff = Duration::from_millis(5);
        loop {
            let permit = tokio::select! {
                p = self.slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
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
            ctx.gw.metrics.connections_accepted.fetch_add(1, Relaxed);
            let target = self.least_busy();
            if target == self.id {
                self.peers[self.id].open.fetch_add(1, Relaxed);
                self.spawn(&ctx, stream, peer, tls, permit);
                continue;
            }
            self.peers[target].open.fetch_add(1, Relaxed);
            let handed = stream
                .into_std()
                .map_err(|e| e.to_string())
                .and_then(|stream| {
                    self.peers[target]
                        .tx
                        .send(Handoff {
                            stream,
                            peer,
                            tls,
                            permit,
                        })
                        .map_err(|_| "worker gone".to_string())
                });
            if let Err(e) = handed {
                self.peers[target].open.fetch_sub(1, Relaxed);
                tracing::error!("cannot hand a connection to worker {target}: {e}");
            }
        }
    }

    /// This worker unless another has at least two fewer open connections.
    fn least_busy(&self) -> usize {
        let mine = self.peers[self.id].open.load(Relaxed);
        let (best, n) = self
            .peers
            .iter()
            .enumerate()
            .map(|(i, p)| (i, p.open.load(Relaxed)))
            .min_by_key(|&(_, n)| n)
            .unwrap_or((self.id, mine));
        if n + 1 < mine { best } else { self.id }
    }

    fn spawn(
        self: &Arc<Self>,
        ctx: &Arc<Ctx>,
        stream: TcpStream,
        peer: SocketAddr,
        tls: bool,
        permit: OwnedSemaphorePermit,
    ) {
        let (me, ctx2) = (self.clone(), ctx.clone());
        ctx.conns.spawn(async move {
            let m = &ctx2.gw.metrics;
            m.connections_open.fetch_add(1, Relaxed);
            accept_conn(&ctx2, stream, peer, tls).await;
            m.connections_open.fetch_sub(1, Relaxed);
            me.peers[me.id].open.fetch_sub(1, Relaxed);
            drop(permit);
        });
    }
}
