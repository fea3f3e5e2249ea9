//! Answering a request on a script route: the first-party host, the cache plan, the vendor
//! fetch when one is needed ([`super::fetch`]), the variant for the host
//! ([`super::variant`]), and the response: encoding by `Accept-Encoding`, `ETag` /
//! `If-None-Match` → 304, `Cache-Control`.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use tokio::time::Instant;

use super::ScriptPolicy;
use super::cache::{Copy, FetchError, Flight, Outcome, Plan, Waiter};
use super::fetch::Fetch;
use super::variant::{self, Variant};
use crate::deliver::UpstreamClient;
use crate::gateway::Gateway;
use crate::respond::{Reject, ResBody};
use crate::ruleset::{Route, RuleSet};

/// What the browser is told about where its copy came from (`tagway-cache`).
const CACHE_HEADER: HeaderName = HeaderName::from_static("tagway-cache");

/// Answers a GET or HEAD on a script route.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    gw: &Arc<Gateway>,
    client: &Arc<UpstreamClient>,
    rules: &RuleSet,
    route: &Route,
    policy: &Arc<ScriptPolicy>,
    req: &http::request::Parts,
    (host, listener_port): (&str, Option<u16>),
    rest_from: usize,
    cors: Option<&HeaderValue>,
) -> Result<Response<ResBody>, Reject> {
    let host = first_party_host(host, req, listener_port)?;
    // Only the route's allowed query parameters reach the vendor and the cache key.
    let query = policy.query(req.uri.query());
    let target = crate::proxy::upstream_target(
        &route.upstream_path,
        &req.uri.path()[rest_from..],
        query.as_deref(),
    );
    let key = format!("{} {target}", policy.fingerprint);
    let fetch = |flight: Flight| {
        Fetch {
            gw: gw.clone(),
            client: client.clone(),
            upstream: rules.upstreams[route.upstream].clone(),
            index: route.upstream,
            route: route.name.clone(),
            target: target.clone(),
        }
        .spawn(flight)
    };
    let m = &gw.metrics.scripts;
    let (copy, how) = match gw.scripts.plan(&key, policy, Instant::now(), &gw.metrics) {
        Plan::Fresh(c) => (c, "hit"),
        Plan::Stale { copy, refresh } => {
            if let Some(f) = refresh {
                fetch(f);
            }
            (copy, "stale")
        }
        Plan::ErrorStale(c) => (c, "stale-error"),
        Plan::Failed(reject) => return Err(reject),
        Plan::Fetch {
            wait,
            lead,
            fallback,
        } => {
            if let Some(f) = lead {
                fetch(f);
            }
            let result = outcome(wait).await;
            if !matches!(
                (&result, &fallback),
                (Err(FetchError::Failed(_)), Some(_)) | (Err(FetchError::Answer { .. }), _)
            ) {
                m.misses.fetch_add(1, Relaxed);
            }
            match result {
                Ok(c) if c.cacheable => (c, "miss"),
                Ok(c) => (c, "uncached"),
                Err(FetchError::Failed(reject)) => match fallback {
                    Some(c) => {
                        m.stale_on_error.fetch_add(1, Relaxed);
                        (c, "stale-error")
                    }
                    None => return Err(reject),
                },
                Err(FetchError::Answer {
                    status,
                    content_type,
                    body,
                }) => {
                    m.vendor_answers.fetch_add(1, Relaxed);
                    return Ok(vendor_answer(status, content_type, body, cors));
                }
            }
        }
    };
    let variant = variant::get(gw, &key, &copy, &host, policy).await?;
    Ok(respond(req, &copy, &variant, how, policy, cors, gw))
}

/// The fetch result, or an interruption (the fetching worker stopped) as a failure.
async fn outcome(mut wait: Waiter) -> Outcome {
    match wait.wait_for(Option::is_some).await {
        Ok(o) => o.clone().unwrap_or_else(|| Err(interrupted())),
        Err(_) => Err(interrupted()),
    }
}

fn interrupted() -> FetchError {
    FetchError::Failed(Reject::UpstreamFailed(
        "the script fetch was interrupted (the gateway is shutting down); retry".into(),
    ))
}

/// What `{host}` stands for: `host`, the host name the proxy already checked is one of the
/// site's (without port), lower-cased, with the port the browser named only when it is the
/// port the connection came in on and not 80 or 443. Every other port is dropped, so made-up
/// `Host` ports cannot each build and cache a variant.
fn first_party_host(
    host: &str,
    req: &http::request::Parts,
    listener_port: Option<u16>,
) -> Result<String, Reject> {
    if host.is_empty() {
        return Err(Reject::BadRequest(
            "a Host header is required on script routes: the script is rewritten to the host it is served from",
        ));
    }
    let lower = host.to_ascii_lowercase();
    // This text goes into a script: only host-name characters, or an IPv6 address.
    if !lower
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b))
    {
        return Err(Reject::BadRequest("the Host header is not valid"));
    }
    let name = if lower.contains(':') {
        format!("[{lower}]")
    } else {
        lower
    };
    let asked = match req.uri.authority() {
        Some(a) => a.port_u16(),
        None => req
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .and_then(|h| h.parse::<http::uri::Authority>().ok())
            .and_then(|a| a.port_u16()),
    };
    Ok(match asked {
        Some(p) if p != 80 && p != 443 && Some(p) == listener_port => format!("{name}:{p}"),
        _ => name,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Identity,
    Gzip,
    Br,
}

/// The best encoding the browser accepts among those the variant has: the highest `q`, br
/// before gzip on a tie; identity when neither is acceptable.
fn choose(headers: &HeaderMap, v: &Variant) -> Encoding {
    let (mut br, mut gzip, mut any) = (None, None, None);
    for line in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(line) = line.to_str() else { continue };
        for item in line.split(',') {
            let mut parts = item.split(';');
            let token = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            match token.as_str() {
                "br" => br = Some(q),
                "gzip" | "x-gzip" => gzip = Some(q),
                "*" => any = Some(q),
                _ => {}
            }
        }
    }
    let br = if v.br.is_some() {
        br.or(any).unwrap_or(0.0)
    } else {
        0.0
    };
    let gzip = if v.gzip.is_some() {
        gzip.or(any).unwrap_or(0.0)
    } else {
        0.0
    };
    if br > 0.0 && br >= gzip {
        Encoding::Br
    } else if gzip > 0.0 {
        Encoding::Gzip
    } else {
        Encoding::Identity
    }
}

/// Whether `If-None-Match` names `etag` (weak comparison, RFC 9110 §13.1.2) or is `*`.
fn none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers.get_all(header::IF_NONE_MATCH).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',').any(|t| {
                let t = t.trim();
                t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag
            })
        })
    })
}

fn respond(
    req: &http::request::Parts,
    copy: &Copy,
    v: &Variant,
    how: &'static str,
    policy: &ScriptPolicy,
    cors: Option<&HeaderValue>,
    gw: &Gateway,
) -> Response<ResBody> {
    let enc = choose(&req.headers, v);
    let (body, suffix, coding) = match enc {
        Encoding::Br => (v.br.clone(), ".br", Some("br")),
        Encoding::Gzip => (v.gzip.clone(), ".gz", Some("gzip")),
        Encoding::Identity => (None, "", None),
    };
    let body = body.unwrap_or_else(|| v.identity.clone());
    let etag = format!("\"{}{suffix}\"", v.tag);
    let age = Instant::now().saturating_duration_since(copy.fetched_at);
    // Browsers keep a fresh copy for what is left of its ttl; a stale one they revalidate
    // on next use (a 304 from here, cheap).
    let max_age = match how {
        "hit" | "miss" => policy.ttl.saturating_sub(age).as_secs(),
        _ => 0,
    };
    let mut h = HeaderMap::new();
    let value = |s: String| HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static("0"));
    h.insert(header::ETAG, value(etag.clone()));
    h.insert(
        header::CACHE_CONTROL,
        value(format!("public, max-age={max_age}")),
    );
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    h.insert(header::AGE, value(age.as_secs().to_string()));
    h.insert(CACHE_HEADER, HeaderValue::from_static(how));
    if let Some(o) = cors {
        crate::headers::add_cors(&mut h, o);
    }
    if none_match(&req.headers, &etag) {
        gw.metrics.scripts.not_modified.fetch_add(1, Relaxed);
        return crate::respond::empty(StatusCode::NOT_MODIFIED, h);
    }
    h.insert(
        header::CONTENT_TYPE,
        copy.content_type
            .clone()
            .unwrap_or(HeaderValue::from_static("text/javascript; charset=utf-8")),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Some(c) = coding {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(c));
    }
    let mut res = Response::new(ResBody::full(body));
    *res.headers_mut() = h;
    res
}

/// The vendor's own answer other than 200, passed on and never cached.
fn vendor_answer(
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: Bytes,
    cors: Option<&HeaderValue>,
) -> Response<ResBody> {
    let mut res = Response::new(ResBody::full(body));
    *res.status_mut() = status;
    let h = res.headers_mut();
    if let Some(ct) = content_type {
        h.insert(header::CONTENT_TYPE, ct);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(CACHE_HEADER, HeaderValue::from_static("pass"));
    if let Some(o) = cors {
        crate::headers::add_cors(h, o);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(gz: bool, br: bool) -> Variant {
        Variant {
            identity: Bytes::from_static(b"x"),
            gzip: gz.then(Bytes::new),
            br: br.then(Bytes::new),
            tag: "t".into(),
        }
    }

    fn ae(s: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(s).unwrap());
        h
    }

    fn parts(host: &str) -> http::request::Parts {
        let req = http::Request::builder()
            .uri("/gtag/js")
            .header(header::HOST, host)
            .body(())
            .unwrap();
        req.into_parts().0
    }

    #[test]
    fn only_the_listeners_port_is_kept() {
        let h = |name: &str, raw: &str| first_party_host(name, &parts(raw), Some(8443)).unwrap();
        assert_eq!(
            h("m.shop.example", "M.Shop.Example:8443"),
            "m.shop.example:8443"
        );
        assert_eq!(h("m.shop.example", "m.shop.example:1234"), "m.shop.example");
        assert_eq!(h("m.shop.example", "m.shop.example:443"), "m.shop.example");
        assert_eq!(h("m.shop.example", "m.shop.example"), "m.shop.example");
        assert_eq!(h("::1", "[::1]:8443"), "[::1]:8443");
        assert_eq!(h("::1", "[::1]:9"), "[::1]");
        assert!(first_party_host("a\"b", &parts("x"), None).is_err());
        assert!(first_party_host("", &parts("x"), None).is_err());
    }

    #[test]
    fn encodings_by_accept_encoding() {
        let both = v(true, true);
        assert_eq!(choose(&ae("gzip, deflate, br, zstd"), &both), Encoding::Br);
        assert_eq!(choose(&ae("gzip"), &both), Encoding::Gzip);
        assert_eq!(choose(&ae("br;q=0.5, gzip;q=0.8"), &both), Encoding::Gzip);
        assert_eq!(choose(&ae("br;q=0, *"), &both), Encoding::Gzip);
        assert_eq!(choose(&ae("identity"), &both), Encoding::Identity);
        assert_eq!(choose(&HeaderMap::new(), &both), Encoding::Identity);
        assert_eq!(choose(&ae("br"), &v(true, false)), Encoding::Identity);
    }

    #[test]
    fn if_none_match_lists_and_weak_tags() {
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"a\", W/\"b.gz\""),
        );
        assert!(none_match(&h, "\"b.gz\""));
        assert!(none_match(&h, "\"a\""));
        assert!(!none_match(&h, "\"b\""));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(none_match(&h, "\"x\""));
    }
}
