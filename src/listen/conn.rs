//! Per-connection bookkeeping for the two timeouts hyper cannot express separately: the
//! *header* timeout (a request head must be complete soon after its first byte — slowloris)
//! and the *idle* timeout (a keep-alive connection with nothing in flight is closed).
//!
//! [`ConnIo`] sees every read, [`Tracked`] every response's end, and the connection task's
//! watchdog (in `listen`) compares the phase and its start time with the two bounds. The
//! watchdog wakes once per bound, not per request.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

const HEAD: u8 = 0;
const BUSY: u8 = 1;
const IDLE: u8 = 2;

const PROTO_UNKNOWN: u8 = 0;
const PROTO_H1: u8 = 1;
const PROTO_H2: u8 = 2;

/// The HTTP/2 connection preface a client starts with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Where a connection is: waiting for (or reading) a request head, serving requests, or idle.
#[derive(Debug)]
pub struct ConnState {
    epoch: Instant,
    phase: AtomicU8,
    proto: AtomicU8,
    in_flight: AtomicU32,
    /// Milliseconds after `epoch` when the current phase began.
    since_ms: AtomicU64,
}

/// What the watchdog should do.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing yet; check again at this instant.
    CheckAt(Instant),
    /// A request head took too long: close at once.
    HeaderTimeout,
    /// Nothing in flight for the idle timeout: close gracefully.
    Idle,
}

impl ConnState {
    /// A new connection waits for its first request head.
    pub fn new() -> Self {
        ConnState {
            epoch: Instant::now(),
            phase: AtomicU8::new(HEAD),
            proto: AtomicU8::new(PROTO_UNKNOWN),
            in_flight: AtomicU32::new(0),
            since_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn enter(&self, phase: u8) {
        self.since_ms.store(self.now_ms(), Relaxed);
        self.phase.store(phase, Relaxed);
    }

    /// A request head was parsed and handed to the service.
    pub fn begin(&self) {
        self.in_flight.fetch_add(1, Relaxed);
        self.phase.store(BUSY, Relaxed);
    }

    /// A response finished (or was dropped).
    pub fn end(&self) {
        if self.in_flight.fetch_sub(1, Relaxed) == 1 {
            self.enter(IDLE);
        }
    }

    pub fn is_h2(&self) -> bool {
        self.proto.load(Relaxed) == PROTO_H2
    }

    fn on_read(&self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        match self.proto.load(Relaxed) {
            PROTO_UNKNOWN => {
                let n = data.len().min(H2_PREFACE.len());
                if data[..n] == H2_PREFACE[..n] {
                    // HTTP/2 frames its own requests; reads (pings, window updates) say nothing
                    // about request heads, so only the idle bound applies.
                    self.proto.store(PROTO_H2, Relaxed);
                    if self.in_flight.load(Relaxed) == 0 {
                        self.enter(IDLE);
                    }
                } else {
                    self.proto.store(PROTO_H1, Relaxed);
                }
            }
            PROTO_H1 if self.phase.load(Relaxed) == IDLE => self.enter(HEAD),
            _ => {}
        }
    }

    /// Compares the phase with the bounds at `now`.
    pub fn verdict(&self, now: Instant, header: Duration, idle: Duration) -> Verdict {
        let since = self.epoch + Duration::from_millis(self.since_ms.load(Relaxed));
        match self.phase.load(Relaxed) {
            HEAD if !self.is_h2() => {
                if now >= since + header {
                    Verdict::HeaderTimeout
                } else {
                    Verdict::CheckAt(since + header)
                }
            }
            BUSY => Verdict::CheckAt(now + idle),
            _ => {
                if self.in_flight.load(Relaxed) > 0 {
                    Verdict::CheckAt(now + idle)
                } else if now >= since + idle {
                    Verdict::Idle
                } else {
                    Verdict::CheckAt(since + idle)
                }
            }
        }
    }
}

impl Default for ConnState {
    fn default() -> Self {
        Self::new()
    }
}

pin_project_lite::pin_project! {
    /// The connection's byte stream, reporting reads to its [`ConnState`].
    pub struct ConnIo<T> {
        #[pin]
        inner: T,
        state: Arc<ConnState>,
    }
}

impl<T> ConnIo<T> {
    pub fn new(inner: T, state: Arc<ConnState>) -> Self {
        ConnIo { inner, state }
    }
}

impl<T: AsyncRead> AsyncRead for ConnIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.inner.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.state.on_read(&buf.filled()[before..]);
        }
        r
    }
}

impl<T: AsyncWrite> AsyncWrite for ConnIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Marks a request as finished when its response body is dropped.
#[derive(Debug)]
pub struct InFlight(Arc<ConnState>);

impl InFlight {
    pub fn start(state: Arc<ConnState>) -> Self {
        state.begin();
        InFlight(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end();
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds its request's [`InFlight`] mark until it is done.
    pub struct Tracked<B> {
        #[pin]
        body: B,
        _mark: InFlight,
    }
}

impl<B> Tracked<B> {
    pub fn new(body: B, mark: InFlight) -> Self {
        Tracked { body, _mark: mark }
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn h1_phases() {
        let st = ConnState::new();
        let t0 = Instant::now();
        assert_eq!(st.verdict(t0, S, 5 * S), Verdict::CheckAt(t0 + S));
        assert_eq!(st.verdict(t0 + S, S, 5 * S), Verdict::HeaderTimeout);
        st.on_read(b"GET / HTTP/1.1\r\n");
        st.begin();
        assert_eq!(
            st.verdict(t0 + 3 * S, S, 5 * S),
            Verdict::CheckAt(t0 + 8 * S)
        );
        tokio::time::advance(2 * S).await;
        st.end();
        let t2 = Instant::now();
        assert_eq!(st.verdict(t2, S, 5 * S), Verdict::CheckAt(t2 + 5 * S));
        assert_eq!(st.verdict(t2 + 5 * S, S, 5 * S), Verdict::Idle);
        // A byte of the next request starts the header clock again.
        st.on_read(b"G");
        assert_eq!(st.verdict(t2 + S, S, 5 * S), Verdict::HeaderTimeout);
    }

    #[tokio::test(start_paused = true)]
    async fn h2_reads_do_not_start_the_header_clock() {
        let st = ConnState::new();
        st.on_read(H2_PREFACE);
        assert!(st.is_h2());
        st.on_read(b"\x00\x00\x08\x06");
        let t0 = Instant::now();
        assert_eq!(
            st.verdict(t0 + 2 * S, S, 5 * S),
            Verdict::CheckAt(t0 + 5 * S)
        );
        assert_eq!(st.verdict(t0 + 5 * S, S, 5 * S), Verdict::Idle);
    }
}
