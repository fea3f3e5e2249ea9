//! HTTP/1.1 to an upstream, done inline in the request's own task: the request is written in
//! one `write`, the response head parsed with `httparse`, and small bodies read whole, so a
//! beacon's round trip costs no extra task, channel or buffer copy. Large, chunked or
//! close-delimited bodies stream through [`H1Body`], which gives the connection back to the
//! pool when the body is complete.
//!
//! Framing follows RFC 9112 §6.3: no body for HEAD, 1xx, 204 and 304; `Transfer-Encoding`
//! ending in `chunked` wins over `Content-Length`; differing lengths are an error; otherwise
//! the body runs to the end of the connection (which is then not reused).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, Sleep};

use super::Outgoing;
use super::client::Pool;
use super::io::Io;

/// Largest response head accepted from an upstream.
const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in a response head.
const MAX_HEADERS: usize = 128;
/// Bodies with a declared length up to this are read whole, into one buffer sized to fit,
/// before the response is returned: two large syscalls instead of a stream of small ones
/// (the way nginx's proxy buffers work). Scripts are the large case (~100–400 KB).
const INLINE_BODY: u64 = 1024 * 1024;
/// Longest chunk-size line or trailer section accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Connection-specific response fields not passed on (besides `Connection` and
/// `Transfer-Encoding`, which are read for framing).
const HOP_BY_HOP: [&str; 5] = ["keep-alive", "proxy-connection", "te", "trailer", "upgrade"];

/// An idle or busy HTTP/1.1 connection and the bytes read from it but not yet used.
pub struct H1Conn {
    pub io: Io,
    pub buf: BytesMut,
    /// The current exchange's deadline. One timer per connection, moved forward for each
    /// exchange (a cheap update in tokio's wheel), instead of a new timer per request.
    timer: Pin<Box<Sleep>>,
}

impl H1Conn {
    pub fn new(io: Io) -> Self {
        let far = Instant::now() + Duration::from_secs(86_400);
        H1Conn {
            io,
            buf: BytesMut::new(),
            timer: Box::pin(tokio::time::sleep_until(far)),
        }
    }
}

/// Runs `fut` unless `timer` fires first.
async fn bounded<T>(
    timer: &mut Pin<Box<Sleep>>,
    fut: impl Future<Output = T>,
) -> Result<T, ExchangeError> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(ExchangeError::Timeout));
        }
        Poll::Pending
    })
    .await
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum ExchangeError {
    /// The connection closed (or was reset) before a single response byte: on a reused
    /// connection this means the upstream closed it while idle, and the request may be retried.
    Stale,
    Io(std::io::Error),
    Protocol(String),
    /// The declared body length is over the response size limit.
    TooLarge(u64),
    /// The deadline passed.
    Timeout,
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExchangeError::Stale => write!(f, "connection closed before any response"),
            ExchangeError::Io(e) => write!(f, "{e}"),
            ExchangeError::Protocol(m) => write!(f, "{m}"),
            ExchangeError::Timeout => write!(f, "no complete answer before the upstream timeout"),
            ExchangeError::TooLarge(n) => write!(
                f,
                "response of {n} bytes is over the limit (--max-response-size)"
            ),
        }
    }
}

/// Sends `out` on `conn` and reads the response head (and a small body).
pub async fn exchange(
    mut conn: H1Conn,
    authority: &str,
    out: &Outgoing,
    pool: &Arc<Pool>,
    key: &str,
    max_body: u64,
    deadline: Instant,
) -> Result<Response<UpstreamBody>, ExchangeError> {
    let mut req = Vec::with_capacity(256 + out.target.as_str().len() + out.body.len());
    encode(out, authority, &mut req);
    conn.timer.as_mut().reset(deadline);
    bounded(&mut conn.timer, conn.io.write_all(&req))
        .await?
        .map_err(stale_or)?;

    let (head, framing, reusable) = loop {
        if !conn.buf.is_empty() {
            match parse_head(&conn.buf, &out.method)? {
                Some((used, head, framing, reusable)) => {
                    conn.buf.advance(used);
                    match head {
                        Some(h) => break (h, framing, reusable),
                        None => continue, // an interim 1xx response: read the next head
                    }
                }
                None if conn.buf.len() > MAX_HEAD => {
                    return Err(ExchangeError::Protocol(format!(
                        "response head larger than {MAX_HEAD} bytes"
                    )));
                }
                None => {}
            }
        }
        let seen = !conn.buf.is_empty();
        conn.buf.reserve(8192);
        let n = bounded(&mut conn.timer, conn.io.read_buf(&mut conn.buf))
            .await?
            .map_err(|e| {
                if seen {
                    ExchangeError::Io(e)
                } else {
                    stale_or(e)
                }
            })?;
        if n == 0 {
            return Err(if seen {
                ExchangeError::Protocol("connection closed inside the response head".into())
            } else {
                ExchangeError::Stale
            });
        }
    };

    if let Framing::Length(n) = framing
        && n > max_body
    {
        return Err(ExchangeError::TooLarge(n));
    }
    let (status, version, headers) = head;
    let mut res = Response::new(UpstreamBody::Empty);
    *res.status_mut() = status;
    *res.version_mut() = version;
    *res.headers_mut() = headers;
    match framing {
        Framing::None => pool.put(key, conn, reusable),
        Framing::Length(n) if n <= INLINE_BODY => {
            let n = n as usize;
            while conn.buf.len() < n {
                conn.buf.reserve(n - conn.buf.len());
                if bounded(&mut conn.timer, conn.io.read_buf(&mut conn.buf))
                    .await?
                    .map_err(ExchangeError::Io)?
                    == 0
                {
                    return Err(ExchangeError::Protocol(
                        "connection closed inside the response body".into(),
                    ));
                }
            }
            let body = conn.buf.split_to(n).freeze();
            pool.put(key, conn, reusable);
            *res.body_mut() = if body.is_empty() {
                UpstreamBody::Empty
            } else {
                UpstreamBody::Full(Some(body))
            };
        }
        f => {
            let state = match f {
                Framing::Length(n) => State::Fixed(n),
                Framing::Chunked => State::ChunkSize,
                _ => State::UntilClose,
            };
            *res.body_mut() = UpstreamBody::H1(H1Body {
                conn: Some(conn),
                state,
                reusable: reusable && !matches!(f, Framing::UntilClose),
                pool: pool.clone(),
                key: key.into(),
            });
        }
    }
    Ok(res)
}

fn stale_or(e: std::io::Error) -> ExchangeError {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionReset | BrokenPipe | ConnectionAborted | UnexpectedEof => ExchangeError::Stale,
        _ => ExchangeError::Io(e),
    }
}

/// Writes the request: request line, `Host`, the policy's headers, `Content-Length`, body.
fn encode(out: &Outgoing, authority: &str, buf: &mut Vec<u8>) {
    buf.extend_from_slice(out.method.as_str().as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(out.target.as_str().as_bytes());
    buf.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    buf.extend_from_slice(authority.as_bytes());
    buf.extend_from_slice(b"\r\n");
    for (name, value) in &out.headers {
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    let has_payload = matches!(out.method, Method::POST | Method::PUT | Method::PATCH);
    if has_payload || !out.body.is_empty() {
        buf.extend_from_slice(b"content-length: ");
        buf.extend_from_slice(itoa::Buffer::new().format(out.body.len()).as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(b"\r\n");
    buf.extend_from_slice(&out.body);
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

type Head = (StatusCode, Version, HeaderMap);

/// Parses one response head from `buf`. `None`: incomplete. `Some((used, None, ..))`: an
/// interim 1xx response to skip.
#[allow(clippy::type_complexity)]
fn parse_head(
    buf: &[u8],
    method: &Method,
) -> Result<Option<(usize, Option<Head>, Framing, bool)>, ExchangeError> {
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut hs);
    let used = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Err(ExchangeError::Protocol(format!(
                "malformed response head: {e}"
            )));
        }
    };
    let code = r.code.unwrap_or(0);
    if (100..200).contains(&code) && code != 101 {
        return Ok(Some((used, None, Framing::None, true)));
    }
    let status = StatusCode::from_u16(code)
        .map_err(|_| ExchangeError::Protocol(format!("invalid status {code}")))?;
    if code == 101 {
        return Err(ExchangeError::Protocol(
            "upstream tried to switch protocols".into(),
        ));
    }
    let version = if r.version == Some(1) {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    // Framing and connection reuse come from the raw fields; the connection-specific ones
    // (RFC 9110 §7.6.1) are not copied into the response, which is re-framed downstream.
    let mut close = false;
    let mut te_last: Option<&[u8]> = None;
    let mut len: Option<u64> = None;
    let mut headers = HeaderMap::with_capacity(r.headers.len());
    for h in r.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("connection") {
            close |= h
                .value
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
            continue;
        }
        if name.eq_ignore_ascii_case("transfer-encoding") {
            te_last = h
                .value
                .rsplit(|b| *b == b',')
                .next()
                .map(<[u8]>::trim_ascii);
            continue;
        }
        if name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| {
                    ExchangeError::Protocol("invalid Content-Length in response".into())
                })?;
            if len.is_some_and(|l| l != n) {
                return Err(ExchangeError::Protocol(
                    "conflicting Content-Length values in response".into(),
                ));
            }
            if len.is_some() {
                continue;
            }
            len = Some(n);
        } else if HOP_BY_HOP.iter().any(|n| name.eq_ignore_ascii_case(n)) {
            continue;
        }
        let hname = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            ExchangeError::Protocol(format!("invalid response header name {name:?}"))
        })?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| {
            ExchangeError::Protocol(format!("invalid value in response header {name}"))
        })?;
        headers.append(hname, value);
    }
    let reusable = version == Version::HTTP_11 && !close;
    let no_body = *method == Method::HEAD || code == 204 || code == 304;
    let framing = if no_body {
        Framing::None
    } else if let Some(te) = te_last {
        if te.eq_ignore_ascii_case(b"chunked") {
            headers.remove(header::CONTENT_LENGTH);
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else {
        len.map_or(Framing::UntilClose, Framing::Length)
    };
    let reusable = reusable && framing != Framing::UntilClose;
    Ok(Some((
        used,
        Some((status, version, headers)),
        framing,
        reusable,
    )))
}

/// The body of an upstream response.
pub enum UpstreamBody {
    Empty,
    Full(Option<Bytes>),
    H1(H1Body),
    H2(hyper::body::Incoming),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = crate::respond::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            UpstreamBody::Empty => Poll::Ready(None),
            UpstreamBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            UpstreamBody::H1(b) => b
                .poll_data(cx)
                .map(|o| o.map(|r| r.map(Frame::data).map_err(Into::into))),
            UpstreamBody::H2(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|o| o.map(|r| r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Full(b) => b.is_none(),
            UpstreamBody::H1(b) => matches!(b.state, State::Done),
            UpstreamBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            UpstreamBody::H1(b) => match b.state {
                State::Fixed(n) => SizeHint::with_exact(n),
                _ => SizeHint::default(),
            },
            UpstreamBody::H2(b) => b.size_hint(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Fixed(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd,
    Trailers,
    UntilClose,
    Done,
}

/// A streamed HTTP/1.1 response body; the connection returns to the pool at its end.
pub struct H1Body {
    conn: Option<H1Conn>,
    state: State,
    reusable: bool,
    pool: Arc<Pool>,
    key: Box<str>,
}

fn protocol(m: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string())
}

impl H1Body {
    fn finish(&mut self) -> Poll<Option<std::io::Result<Bytes>>> {
        self.state = State::Done;
        if let Some(c) = self.conn.take() {
            self.pool.put(&self.key, c, self.reusable);
        }
        Poll::Ready(None)
    }

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<std::io::Result<Bytes>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let buf = &mut conn.buf;
            match self.state {
                State::Done => return Poll::Ready(None),
                State::Fixed(0) => return self.finish(),
                State::Fixed(n) | State::ChunkData(n) if !buf.is_empty() => {
                    let take = (n.min(buf.len() as u64)) as usize;
                    let data = buf.split_to(take).freeze();
                    self.state = match self.state {
                        State::Fixed(_) => State::Fixed(n - take as u64),
                        _ if n == take as u64 => State::ChunkDataEnd,
                        _ => State::ChunkData(n - take as u64),
                    };
                    if self.state == State::Fixed(0) {
                        // Complete: the reader may stop polling once it has the declared
                        // length, so give the connection back now.
                        let _ = self.finish();
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                State::UntilClose if !buf.is_empty() => {
                    return Poll::Ready(Some(Ok(buf.split().freeze())));
                }
                State::ChunkSize if !buf.is_empty() => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        self.state = if size == 0 {
                            State::Trailers
                        } else {
                            State::ChunkData(size)
                        };
                        continue;
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                        return Poll::Ready(Some(Err(protocol("chunk size line too long"))));
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(_) => return Poll::Ready(Some(Err(protocol("invalid chunk size")))),
                },
                State::ChunkDataEnd if buf.len() >= 2 => {
                    if &buf[..2] != b"\r\n" {
                        return Poll::Ready(Some(Err(protocol("chunk not followed by CRLF"))));
                    }
                    buf.advance(2);
                    self.state = State::ChunkSize;
                    continue;
                }
                State::Trailers if !buf.is_empty() => {
                    // Skip trailer fields up to the empty line.
                    if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                        buf.advance(i + 2);
                        if i == 0 {
                            return self.finish();
                        }
                        continue;
                    }
                    if buf.len() > MAX_CHUNK_LINE {
                        return Poll::Ready(Some(Err(protocol("trailer section too long"))));
                    }
                }
                _ => {}
            }
            // Need more bytes.
            let conn = self.conn.as_mut().expect("checked above");
            conn.buf.reserve(64 * 1024);
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut conn.io),
                cx,
                &mut conn.buf
            ))?;
            if n == 0 {
                if self.state == State::UntilClose {
                    self.reusable = false;
                    return self.finish();
                }
                self.conn = None;
                self.state = State::Done;
                return Poll::Ready(Some(Err(protocol(
                    "upstream closed the connection inside the body",
                ))));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(s: &str, m: Method) -> (usize, Option<Head>, Framing, bool) {
        parse_head(s.as_bytes(), &m).unwrap().unwrap()
    }

    #[test]
    fn framing_rules() {
        assert_eq!(
            head("HTTP/1.1 204 No Content\r\n\r\n", Method::GET).2,
            Framing::None
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", Method::HEAD).2,
            Framing::None
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", Method::GET).2,
            Framing::Length(5)
        );
        let h = head(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 5\r\n\r\n",
            Method::GET,
        );
        assert_eq!(h.2, Framing::Chunked);
        let h = head("HTTP/1.1 200 OK\r\n\r\n", Method::GET);
        assert_eq!((h.2, h.3), (Framing::UntilClose, false));
        let h = head(
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            Method::GET,
        );
        assert!(!h.3);
        let h = head("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", Method::GET);
        assert!(!h.3);
        assert!(
            head("HTTP/1.1 100 Continue\r\n\r\n", Method::GET)
                .1
                .is_none()
        );
        assert!(
            parse_head(
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
                &Method::GET
            )
            .is_err()
        );
        assert!(
            parse_head(
                b"HTTP/1.1 200 OK\r\ncontent-length: +1\r\n\r\n",
                &Method::GET
            )
            .is_err()
        );
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\n", &Method::GET)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn request_encoding() {
        let out = Outgoing {
            method: Method::POST,
            upstream: 0,
            target: crate::deliver::Target::Text("/g/collect?v=2".into()),
            headers: vec![(
                HeaderName::from_static("user-agent"),
                HeaderValue::from_static("UA"),
            )],
            body: Bytes::from_static(b"en=x"),
        };
        let mut buf = Vec::new();
        encode(&out, "vendor.example", &mut buf);
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "POST /g/collect?v=2 HTTP/1.1\r\nhost: vendor.example\r\nuser-agent: UA\r\ncontent-length: 4\r\n\r\nen=x"
        );
    }
}
