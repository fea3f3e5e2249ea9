//! Stage 6, deliver: sends the processed request to its vendor and hands back the vendor's
//! answer. [`Outgoing`] is the request as it leaves the rules stage, fully determined (upstream,
//! path and query, headers, body), so it can be sent now or, later, spooled and sent in the
//! background.

pub mod client;
pub mod h1;
mod io;
pub mod queue;

use bytes::Bytes;
use http::Method;
use http::uri::PathAndQuery;

pub use client::{ClientSettings, UpstreamClient};
pub use h1::UpstreamBody;
pub use queue::DeliverySettings;

/// The request target at the upstream (path and query, origin-form).
#[derive(Debug, Clone)]
pub enum Target {
    /// The request's own, already parsed (no rule changed it).
    Parsed(PathAndQuery),
    /// Built by the gateway from validated pieces.
    Text(String),
}

impl Target {
    pub fn as_str(&self) -> &str {
        match self {
            Target::Parsed(p) => p.as_str(),
            Target::Text(t) => t,
        }
    }

    /// As a `PathAndQuery` (HTTP/2 needs one; HTTP/1.1 writes the text as is).
    pub fn into_path_and_query(self) -> Result<PathAndQuery, http::uri::InvalidUri> {
        match self {
            Target::Parsed(p) => Ok(p),
            Target::Text(t) => PathAndQuery::try_from(t),
        }
    }
}

/// Request headers in order. Outgoing headers are only ever written out in order, so a plain
/// list saves building a hash map per request.
pub type HeaderList = Vec<(http::HeaderName, http::HeaderValue)>;

/// A request ready to go upstream.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub method: Method,
    /// Index into the rule set's upstreams.
    pub upstream: usize,
    /// Path and query at the upstream, starting with `/`.
    pub target: Target,
    /// Headers after the header policy; no `Host`, `Content-Length` or hop-by-hop headers.
    pub headers: HeaderList,
    pub body: Bytes,
}
