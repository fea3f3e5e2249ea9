//! The request path, stage by stage: checks what the request claims to be (host, target,
//! framing) → route → read the body within the route's limits → header policy → deliver →
//! the vendor's answer back through the response policy. Each stage lives in its own module;
//! this file only calls them in order and turns every failure into a [`Reject`].

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::clientip;
use crate::config::compile::has_dot_segment;
use crate::deliver::{Outgoing, Target, UpstreamClient, queue};
use crate::gateway::Gateway;
use crate::headers;
use crate::respond::{self, Reject, ResBody};
use crate::route::Lookup;
use crate::ruleset::RuleSet;
use crate::ruleset::{Delivery, OnUndecodable};
use crate::transform::{self, Processed};
use std::sync::atomic::Ordering::Relaxed;

/// What the listener knows about the connection a request came on.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// TLS server name the client asked for, if any.
    pub sni: Option<Box<str>>,
    /// The port the connection was accepted on (what a `Host` port may name on script routes).
    pub local_port: Option<u16>,
    /// A body-read timer kept between the connection's requests: moving a registered timer
    /// forward is much cheaper than making a new one per request.
    body_timer: std::sync::Mutex<Option<Pin<Box<Sleep>>>>,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, sni: Option<Box<str>>) -> Self {
        ConnInfo {
            peer,
            sni,
            local_port: None,
            body_timer: std::sync::Mutex::new(None),
        }
    }

    /// The same, accepted on `port`.
    pub fn on_port(self, port: Option<u16>) -> Self {
        ConnInfo {
            local_port: port,
            ..self
        }
    }
}

/// Handles one request. Never fails: every problem becomes an answer with a status, a
/// `tagway-error` kind and a message, and is counted.
pub async fn handle(
    gw: &Arc<Gateway>,
    client: &Arc<UpstreamClient>,
    conn: &ConnInfo,
    req: Request<Incoming>,
) -> Response<ResBody> {
    let rules = gw.rules();
    let cors = headers::allowed_origin(req.headers(), &rules.site).cloned();
    match relay(gw, client, &rules, conn, req, cors.as_ref()).await {
        Ok(res) => res,
        Err(reject) => {
            gw.metrics.reject(&reject);
            match &reject {
                Reject::UpstreamConnect(m)
                | Reject::UpstreamTimeout(m)
                | Reject::UpstreamFailed(m) => gw.warn_limited(reject.kind(), m),
                r => tracing::debug!(kind = r.kind(), "request answered by the gateway"),
            }
            reject.into_response(cors.as_ref())
        }
    }
}

async fn relay(
    gw: &Arc<Gateway>,
    client: &Arc<UpstreamClient>,
    rules: &RuleSet,
    conn: &ConnInfo,
    req: Request<Incoming>,
    cors: Option<&HeaderValue>,
) -> Result<Response<ResBody>, Reject> {
    if req.method() == Method::CONNECT {
        return Err(Reject::ConnectRefused);
    }
    let host = request_host(&req)?;
    if let Some(h) = host {
        if !rules.site.serves_host(h) {
            return Err(Reject::HostNotServed);
        }
        if conn
            .sni
            .as_deref()
            .is_some_and(|sni| !sni.eq_ignore_ascii_case(h))
        {
            return Err(Reject::Misdirected);
        }
    } else if !rules.site.hosts.is_empty() {
        return Err(Reject::BadRequest("a Host header is required"));
    }
    let host = host.unwrap_or("");
    let path = req.uri().path();
    if !path.starts_with('/') {
        return Err(Reject::NotFound);
    }
    if has_dot_segment(path) {
        return Err(Reject::BadRequest(
            "the path may not contain `.` or `..` segments",
        ));
    }

    if req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        let route = rules
            .routes
            .find_any_method(host, path)
            .ok_or(Reject::NotFound)?;
        let origin = cors.ok_or(Reject::OriginNotAllowed)?;
        return Ok(respond::empty(
            StatusCode::NO_CONTENT,
            headers::preflight_headers(req.headers(), route, origin),
        ));
    }

    let (route, rest_from) = match rules.routes.find(host, req.method(), path) {
        Lookup::Found(r, at) => (r, at),
        Lookup::MethodNotAllowed(r) => return Err(Reject::MethodNotAllowed(r.allow.clone())),
        Lookup::NotFound => return Err(Reject::NotFound),
    };
    // The checked host outlives `req` on script routes only (the script is rewritten to it).
    let script_host = route.script.as_ref().map(|_| host.to_string());
    let (parts, body) = req.into_parts();
    if let (Some(policy), Some(host)) = (&route.script, script_host.as_deref()) {
        // The loader of another site's id (gtag/js?id=…) is not served: only the id check of
        // the route's program runs, on the query (a script route has no body and no rules);
        // anything but a pass, a query that cannot be read included, means not served.
        if let Err(why) = transform::check_query_id(route, parts.uri.query().unwrap_or("")) {
            gw.metrics.dropped_foreign_id.fetch_add(1, Relaxed);
            tracing::debug!(route = %route.name, %why, "not served: not one of the site's ids");
            return Ok(respond::answer(&route.answer, cors));
        }
        // A GET: answered from the script cache; any body is not read.
        let at = (host, conn.local_port);
        let serve = crate::scripts::serve::serve(
            gw, client, rules, route, policy, &parts, at, rest_from, cors,
        );
        return serve.await;
    }
    let mut body = read_body(
        body,
        &parts.headers,
        route.max_body,
        gw.settings.body_timeout,
        conn,
    )
    .await?;
    let client_ip =
        clientip::client_ip(conn.peer.ip(), &parts.headers, &gw.settings.trusted_proxies);
    let path = parts.uri.path();
    let rest = &path[rest_from..];
    // The common case, an upstream path equal to the request's: reuse the parsed target.
    let mut target = match parts.uri.path_and_query() {
        Some(pq) if route.upstream_path == path[..rest_from] => Target::Parsed(pq.clone()),
        _ => Target::Text(upstream_target(
            &route.upstream_path,
            rest,
            parts.uri.query(),
        )),
    };
    if !route.program.is_empty() {
        let query = parts.uri.query().unwrap_or("");
        match transform::process(rules, route, query, &parts.headers, &body, client_ip, None) {
            Ok(Processed::Forward { query: q, body: b }) => {
                if let Some(q) = q {
                    let q = if q.is_empty() { None } else { Some(q.as_str()) };
                    target = Target::Text(upstream_target(&route.upstream_path, rest, q));
                }
                if let Some(b) = b {
                    body = b;
                }
            }
            Ok(Processed::ForeignId(_)) => {
                gw.metrics.dropped_foreign_id.fetch_add(1, Relaxed);
                tracing::debug!(route = %route.name, "not forwarded: not one of the site's ids");
                return Ok(respond::answer(&route.answer, cors));
            }
            Ok(Processed::Dropped(label)) => {
                gw.metrics.dropped_by_rule.fetch_add(1, Relaxed);
                tracing::debug!(route = %route.name, rule = %label, "not forwarded (drop_request)");
                return Ok(respond::answer(&route.answer, cors));
            }
            Err(e) => {
                return match route.on_undecodable {
                    OnUndecodable::Reject => Err(Reject::Undecodable(e.to_string())),
                    OnUndecodable::Drop => {
                        gw.metrics.dropped_undecodable.fetch_add(1, Relaxed);
                        Ok(respond::answer(&route.answer, cors))
                    }
                };
            }
        }
    }
    let out = Outgoing {
        method: parts.method,
        upstream: route.upstream,
        target,
        headers: headers::upstream_headers(&parts.headers, route, client_ip),
        body,
    };
    let upstream = &rules.upstreams[route.upstream];
    // Queued routes: spooled and answered now, delivered in the background (deliver::queue).
    let out = match route.delivery {
        Delivery::Queue => match queue::accept(gw, route, &upstream.name, out).await? {
            None => return Ok(respond::answer(&route.answer, cors)),
            Some(out) => out,
        },
        Delivery::Relay => out,
    };
    let (res, deadline) = client.send(upstream, out).await?;
    let (mut parts, body) = res.into_parts();
    gw.metrics.relayed(parts.status);
    headers::filter_response(&mut parts.headers, route);
    if let Some(o) = cors {
        headers::add_cors(&mut parts.headers, o);
    }
    parts.version = Version::HTTP_11;
    tracing::debug!(route = %route.name, status = parts.status.as_u16(), "relayed");
    Ok(Response::from_parts(
        parts,
        ResBody::upstream(body, client.settings().max_response, deadline),
    ))
}

/// The host the request is for, without port: `:authority` (HTTP/2) or the single `Host`
/// header, which must agree with an absolute-form target. `None` only for HTTP/1.0 without Host.
fn request_host(req: &Request<Incoming>) -> Result<Option<&str>, Reject> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(Reject::BadRequest("more than one Host header"));
    }
    let host_header = match host_header {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| Reject::BadRequest("the Host header is not valid"))?,
        ),
        None => None,
    };
    let authority = req.uri().authority().map(|a| a.as_str());
    let chosen = match (authority, host_header) {
        (Some(a), Some(h)) if !a.eq_ignore_ascii_case(h) => {
            return Err(Reject::BadRequest(
                "the request target names a different host than the Host header",
            ));
        }
        (Some(a), _) => Some(a),
        (None, Some(h)) => Some(h),
        (None, None) if req.version() == Version::HTTP_10 => None,
        (None, None) => return Err(Reject::BadRequest("a Host header is required")),
    };
    match chosen {
        Some(h) => strip_port(h)
            .map(Some)
            .ok_or(Reject::BadRequest("the Host header is not valid")),
        None => Ok(None),
    }
}

/// `host:port` → `host`; `[::1]:8443` → `::1`. `None` for malformed values.
fn strip_port(h: &str) -> Option<&str> {
    if let Some(rest) = h.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        return (after.is_empty() || after.strip_prefix(':').is_some_and(is_port)).then_some(ip);
    }
    let host = match h.rsplit_once(':') {
        Some((host, port)) if is_port(port) => host,
        Some(_) => return None,
        None => h,
    };
    (!host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
    .then_some(host)
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// Upstream path and query: the route's path (plus the rest of a prefix match) and the
/// query. Every piece is already a valid request target (the route's path is checked at load,
/// the rest comes from the parsed request, queries from the parser or the encoder).
pub(crate) fn upstream_target(base: &str, rest: &str, query: Option<&str>) -> String {
    let mut s = String::with_capacity(base.len() + rest.len() + query.map_or(0, |q| q.len() + 1));
    s.push_str(base);
    s.push_str(rest);
    if let Some(q) = query {
        s.push('?');
        s.push_str(q);
    }
    s
}

/// Reads the whole request body within the route's limit and the body timeout. A declared
/// length over the limit is refused before reading (so no `100 Continue` is sent).
async fn read_body(
    body: Incoming,
    headers: &HeaderMap,
    limit: u64,
    timeout: Duration,
    conn: &ConnInfo,
) -> Result<Bytes, Reject> {
    if let Some(v) = headers.get(header::CONTENT_LENGTH) {
        let len = v
            .to_str()
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or(Reject::BadRequest("Content-Length is not a number"))?;
        if len > limit {
            return Err(Reject::BodyTooLarge(limit));
        }
    }
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    // Frames are taken as they come; a body that arrived with its head (a beacon's usually
    // does) is one frame and is neither copied nor made to wait on a timer.
    let mut body = body;
    let mut first: Option<Bytes> = None;
    let mut more: Option<BytesMut> = None;
    let mut total: u64 = 0;
    let mut deadline: Option<Pin<Box<Sleep>>> = None;
    loop {
        let frame = std::future::poll_fn(|cx| {
            if let Poll::Ready(f) = std::pin::Pin::new(&mut body).poll_frame(cx) {
                return Poll::Ready(Ok(f));
            }
            let timer = deadline.get_or_insert_with(|| {
                let reused = conn.body_timer.lock().ok().and_then(|mut t| t.take());
                let mut t = reused.unwrap_or_else(|| Box::pin(tokio::time::sleep(timeout)));
                t.as_mut().reset(Instant::now() + timeout);
                t
            });
            match timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(Reject::BodyTimeout)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await?;
        let Some(frame) = frame else { break };
        let Ok(data) = frame.map_err(|_| Reject::BodyRead)?.into_data() else {
            continue;
        };
        total += data.len() as u64;
        if total > limit {
            return Err(Reject::BodyTooLarge(limit));
        }
        match (&mut first, &mut more) {
            (None, _) => first = Some(data),
            (Some(f), None) => {
                let mut m = BytesMut::with_capacity(f.len() + data.len());
                m.extend_from_slice(f);
                m.extend_from_slice(&data);
                more = Some(m);
            }
            (Some(_), Some(m)) => m.extend_from_slice(&data),
        }
        // With a declared length, the body is complete once that many bytes arrived; asking
        // for the next frame would wait for hyper to close the body channel (one more trip
        // through the scheduler per request).
        if body.is_end_stream() {
            break;
        }
    }
    if let (Some(t), Ok(mut slot)) = (deadline, conn.body_timer.lock()) {
        *slot = Some(t);
    }
    Ok(match more {
        Some(m) => m.freeze(),
        None => first.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_stripped() {
        assert_eq!(
            strip_port("metrics.shop.example:8443"),
            Some("metrics.shop.example")
        );
        assert_eq!(strip_port("localhost"), Some("localhost"));
        assert_eq!(strip_port("[::1]:8443"), Some("::1"));
        assert_eq!(strip_port("[::1]"), Some("::1"));
        assert_eq!(strip_port("a:b"), None);
        assert_eq!(strip_port("evil.example/x"), None);
        assert_eq!(strip_port(""), None);
    }
}
