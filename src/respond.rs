//! Stage 7, respond: the one place where failures become HTTP answers, and the body type every
//! answer uses. Each [`Reject`] has a status, a `tagway-error` header naming its kind, a
//! one-line message that says what to change, and a metric label.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use crate::deliver::UpstreamBody;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why the gateway answers itself instead of relaying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    NotFound,
    MethodNotAllowed(HeaderValue),
    /// `CONNECT`: the gateway is not a forward proxy.
    ConnectRefused,
    /// The `Host` is not one of the site's tracking hosts.
    HostNotServed,
    /// The `Host` differs from the TLS server name of the connection.
    Misdirected,
    BadRequest(&'static str),
    OriginNotAllowed,
    BodyTooLarge(u64),
    BodyTimeout,
    BodyRead,
    UpstreamConnect(String),
    UpstreamTimeout(String),
    UpstreamFailed(String),
    UpstreamTooLarge(String),
    ShuttingDown,
    /// The body could not be decoded by the route's codec (and its policy is to reject).
    Undecodable(String),
    /// A queued route found the spool full and its policy is `on_spool_full = "reject"`.
    SpoolFull,
}

impl Reject {
    /// Every kind, for metrics.
    pub const KINDS: [&'static str; 17] = [
        "not_found",
        "method_not_allowed",
        "connect_refused",
        "host_not_served",
        "misdirected",
        "bad_request",
        "origin_not_allowed",
        "body_too_large",
        "body_timeout",
        "body_read",
        "upstream_connect",
        "upstream_timeout",
        "upstream_failed",
        "upstream_too_large",
        "shutting_down",
        "undecodable",
        "spool_full",
    ];

    pub fn index(&self) -> usize {
        match self {
            Reject::NotFound => 0,
            Reject::MethodNotAllowed(_) => 1,
            Reject::ConnectRefused => 2,
            Reject::HostNotServed => 3,
            Reject::Misdirected => 4,
            Reject::BadRequest(_) => 5,
            Reject::OriginNotAllowed => 6,
            Reject::BodyTooLarge(_) => 7,
            Reject::BodyTimeout => 8,
            Reject::BodyRead => 9,
            Reject::UpstreamConnect(_) => 10,
            Reject::UpstreamTimeout(_) => 11,
            Reject::UpstreamFailed(_) => 12,
            Reject::UpstreamTooLarge(_) => 13,
            Reject::ShuttingDown => 14,
            Reject::Undecodable(_) => 15,
            Reject::SpoolFull => 16,
        }
    }

    pub fn kind(&self) -> &'static str {
        Self::KINDS[self.index()]
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Reject::NotFound => StatusCode::NOT_FOUND,
            Reject::MethodNotAllowed(_) | Reject::ConnectRefused => StatusCode::METHOD_NOT_ALLOWED,
            Reject::HostNotServed | Reject::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Reject::BadRequest(_) | Reject::BodyRead | Reject::Undecodable(_) => {
                StatusCode::BAD_REQUEST
            }
            Reject::OriginNotAllowed => StatusCode::FORBIDDEN,
            Reject::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Reject::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Reject::UpstreamConnect(_)
            | Reject::UpstreamFailed(_)
            | Reject::UpstreamTooLarge(_) => StatusCode::BAD_GATEWAY,
            Reject::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Reject::ShuttingDown | Reject::SpoolFull => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// What happened and what to change. Never echoes request data (it may be personal).
    pub fn message(&self) -> String {
        match self {
            Reject::NotFound => "no route matches this path; routes come from the rule files (`tagway check` lists them)".into(),
            Reject::MethodNotAllowed(a) => {
                format!("this route does not allow this method; allowed: {}", a.to_str().unwrap_or("?"))
            }
            Reject::ConnectRefused => "CONNECT refused: tagway is a reverse proxy for its own routes, not a forward proxy".into(),
            Reject::HostNotServed => "this host name is not served here; add it to `hosts` in the [site] section".into(),
            Reject::Misdirected => "the Host header does not match the TLS server name of this connection".into(),
            Reject::BadRequest(why) => format!("bad request: {why}"),
            Reject::OriginNotAllowed => "this Origin is not allowed; add it to `origins` in the [site] section".into(),
            Reject::BodyTooLarge(limit) => {
                format!("request body over this route's limit of {limit} bytes (raise `max_body` on the route)")
            }
            Reject::BodyTimeout => "the request body did not arrive in time".into(),
            Reject::BodyRead => "the request body could not be read (connection aborted or malformed chunked encoding)".into(),
            Reject::UpstreamConnect(m)
            | Reject::UpstreamTimeout(m)
            | Reject::UpstreamFailed(m)
            | Reject::UpstreamTooLarge(m) => m.clone(),
            Reject::ShuttingDown => "the gateway is shutting down; retry".into(),
            Reject::SpoolFull => "the delivery spool is full; retry later (operators: raise --spool-max-size, or set on_spool_full = \"relay\" on the route)".into(),
            Reject::Undecodable(why) => format!(
                "the body could not be decoded ({why}); fix the sender, or set `codec` or `on_undecodable` on the route"
            ),
        }
    }

    /// The answer sent to the client.
    pub fn into_response(self, cors: Option<&HeaderValue>) -> Response<ResBody> {
        let mut res = Response::new(ResBody::full(Bytes::from(format!(
            "tagway: {}\n",
            self.message()
        ))));
        *res.status_mut() = self.status();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert("tagway-error", HeaderValue::from_static(self.kind()));
        if let Reject::MethodNotAllowed(allow) = &self {
            h.insert(header::ALLOW, allow.clone());
        }
        if let Some(o) = cors {
            crate::headers::add_cors(h, o);
        }
        res
    }
}

/// The answer a route gives in the vendor's place when it does not forward.
pub fn answer(a: &crate::ruleset::Answer, cors: Option<&HeaderValue>) -> Response<ResBody> {
    let mut res = Response::new(ResBody::full(a.body.clone()));
    *res.status_mut() = a.status;
    let h = res.headers_mut();
    if let Some(ct) = &a.content_type {
        h.insert(header::CONTENT_TYPE, ct.clone());
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(o) = cors {
        crate::headers::add_cors(h, o);
    }
    res
}

/// A gateway-made answer with no body (e.g. a preflight's 204).
pub fn empty(status: StatusCode, headers: HeaderMap) -> Response<ResBody> {
    let mut res = Response::new(ResBody::empty());
    *res.status_mut() = status;
    *res.headers_mut() = headers;
    res
}

pin_project_lite::pin_project! {
    /// Every response body the gateway sends: empty, a buffer, or the vendor's body streamed
    /// through (each chunk passed on as it arrives, never buffered whole) with a size bound and
    /// a deadline.
    pub struct ResBody {
        #[pin]
        inner: Inner,
    }
}

pin_project_lite::pin_project! {
    #[project = InnerProj]
    enum Inner {
        Empty,
        Full { data: Option<Bytes> },
        Upstream {
            #[pin]
            body: UpstreamBody,
            remaining: u64,
            #[pin]
            deadline: Sleep,
        },
    }
}

/// The vendor's body broke one of the gateway's bounds mid-stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("upstream response larger than {0} bytes")]
    TooLarge(u64),
    #[error("upstream response body not complete within the upstream timeout")]
    Timeout,
}

impl ResBody {
    pub fn empty() -> Self {
        ResBody {
            inner: Inner::Empty,
        }
    }

    pub fn full(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        if data.is_empty() {
            Self::empty()
        } else {
            ResBody {
                inner: Inner::Full { data: Some(data) },
            }
        }
    }

    /// Streams `body` through, failing once more than `limit` bytes arrive or `deadline` passes.
    pub fn upstream(body: UpstreamBody, limit: u64, deadline: Instant) -> Self {
        if body.is_end_stream() {
            return Self::empty();
        }
        ResBody {
            inner: Inner::Upstream {
                body,
                remaining: limit,
                deadline: tokio::time::sleep_until(deadline),
            },
        }
    }
}

impl Body for ResBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().inner.project() {
            InnerProj::Empty => Poll::Ready(None),
            InnerProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            InnerProj::Upstream {
                body,
                remaining,
                deadline,
            } => {
                if let Poll::Ready(frame) = body.poll_frame(cx) {
                    return Poll::Ready(match frame {
                        None => None,
                        Some(Err(e)) => Some(Err(e)),
                        Some(Ok(f)) => {
                            let n = f.data_ref().map_or(0, |d| d.len() as u64);
                            if n > *remaining {
                                Some(Err(StreamError::TooLarge(n).into()))
                            } else {
                                *remaining -= n;
                                // Trailers of the vendor are not passed on.
                                f.into_data().ok().map(|d| Ok(Frame::data(d)))
                            }
                        }
                    });
                }
                ready!(deadline.poll(cx));
                Poll::Ready(Some(Err(StreamError::Timeout.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Empty => true,
            Inner::Full { data } => data.is_none(),
            Inner::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Empty => SizeHint::with_exact(0),
            Inner::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Inner::Upstream { body, .. } => body.size_hint(),
        }
    }
}
