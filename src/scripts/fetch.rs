//! The vendor fetch of a script route: one request with fixed headers (nothing of any
//! browser's, as the copy is shared by every visitor), the whole body read within the upstream
//! bounds, decompressed; run as a task on the runtime of the worker that started it, so a
//! browser that goes away does not cancel it for the others waiting.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::cache::{Copy, FetchError, Flight, Outcome};
use crate::decode::wrap;
use crate::deliver::{Outgoing, Target, UpstreamClient};
use crate::gateway::Gateway;
use crate::respond::{Reject, ResBody, StreamError};
use crate::ruleset::Upstream;

/// The only headers a script fetch sends: the copy is shared by every visitor, so nothing of
/// any one browser's goes to the vendor.
pub fn fetch_headers() -> crate::deliver::HeaderList {
    vec![
        (header::ACCEPT, HeaderValue::from_static("*/*")),
        (
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip, br"),
        ),
        (
            header::USER_AGENT,
            HeaderValue::from_static(concat!("tagway/", env!("CARGO_PKG_VERSION"))),
        ),
    ]
}

/// Everything a background fetch needs, owned.
pub(super) struct Fetch {
    pub gw: Arc<Gateway>,
    pub client: Arc<UpstreamClient>,
    pub upstream: Upstream,
    pub index: usize,
    pub route: String,
    pub target: String,
}

impl Fetch {
    /// Runs the fetch as a task on this worker's runtime and stores its outcome.
    pub fn spawn(self, flight: Flight) {
        tokio::spawn(async move {
            let generation = flight.generation();
            let outcome = self.run(generation).await;
            if let Err(FetchError::Failed(r)) = &outcome {
                self.gw.metrics.scripts.fetch_errors.fetch_add(1, Relaxed);
                self.gw.warn_limited(r.kind(), &r.message());
            }
            flight.finish(outcome, &self.gw.metrics);
        });
    }

    async fn run(&self, generation: u64) -> Outcome {
        let up = &self.upstream;
        let out = Outgoing {
            method: Method::GET,
            upstream: self.index,
            target: Target::Text(self.target.clone()),
            headers: fetch_headers(),
            body: Bytes::new(),
        };
        let (res, deadline) = self
            .client
            .send(up, out)
            .await
            .map_err(FetchError::Failed)?;
        let (parts, body) = res.into_parts();
        let limit = self.client.settings().max_response;
        let body = ResBody::upstream(body, limit, deadline)
            .collect()
            .await
            .map_err(|e| {
                let m = format!(
                    "upstream {} ({}): the script of route {} could not be read: {e}",
                    up.name, up.origin, self.route
                );
                FetchError::Failed(match e.downcast_ref::<StreamError>() {
                    Some(StreamError::TooLarge(_)) => Reject::UpstreamTooLarge(m),
                    Some(StreamError::Timeout) => Reject::UpstreamTimeout(m),
                    None => Reject::UpstreamFailed(m),
                })
            })?
            .to_bytes();
        let content_type = parts.headers.get(header::CONTENT_TYPE).cloned();
        let status = parts.status;
        if status != StatusCode::OK {
            if status.is_server_error()
                || status.is_redirection()
                || status.is_informational()
                || status == StatusCode::TOO_MANY_REQUESTS
            {
                return Err(FetchError::Failed(Reject::UpstreamFailed(format!(
                    "upstream {} ({}) answered {status} for the script of route {}; not cached",
                    up.name, up.origin, self.route
                ))));
            }
            return Err(FetchError::Answer {
                status,
                content_type,
                body,
            });
        }
        let body = match parts.headers.get(header::CONTENT_ENCODING) {
            None => body,
            Some(v) => {
                let failed = |why: String| {
                    FetchError::Failed(Reject::UpstreamFailed(format!(
                        "upstream {} ({}): the script of route {}: {why}",
                        up.name, up.origin, self.route
                    )))
                };
                let c = wrap::content_encoding(v.to_str().unwrap_or("?"))
                    .map_err(|e| failed(e.to_string()))?;
                match c {
                    None => body,
                    Some(c) => {
                        wrap::decompress(c, &body, usize::try_from(limit).unwrap_or(usize::MAX))
                            .map_err(|e| failed(e.to_string()))?
                            .into()
                    }
                }
            }
        };
        let max = self.gw.scripts.settings().max_script;
        if body.len() as u64 > max {
            self.gw.metrics.scripts.uncacheable.fetch_add(1, Relaxed);
            tracing::warn!(
                route = %self.route,
                bytes = body.len(),
                "script larger than --script-max-size ({max} bytes): served, not cached"
            );
        }
        Ok(Arc::new(Copy {
            cacheable: body.len() as u64 <= max,
            body,
            content_type,
            fetched_at: Instant::now(),
            generation,
        }))
    }
}
