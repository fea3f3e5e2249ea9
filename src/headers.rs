//! The header policy: which inbound headers may leave for the vendor, and which of the
//! vendor's response headers may come back. Documented for users in README ("Header policy").
//!
//! Inbound, an allowlist: a tracking subdomain receives every cookie of the parent domain and
//! whatever headers the site's own code adds, so only what analytics vendors need goes out
//! (content negotiation, `User-Agent`, client hints, consent signals, revalidation), plus what a
//! route names. `Cookie` only with the names a route lists; `Authorization` never; `Referer`
//! cut to its origin; `X-Forwarded-For` as the route chooses, never a private address.
//! Outbound, a denylist: hop-by-hop headers, `Set-Cookie` (unless the route allows it), the
//! vendor's CORS and transport-security headers (the gateway's host is not the vendor's).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::clientip;
use crate::deliver::HeaderList;
use crate::ruleset::{ForwardIp, Route, Site};

/// Inbound headers forwarded to every upstream.
const FORWARDED: &[HeaderName] = &[
    header::ACCEPT,
    header::ACCEPT_LANGUAGE,
    header::ACCEPT_ENCODING,
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::USER_AGENT,
    header::DNT,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
];

/// Builds the upstream request's headers from the inbound ones. `Host` is not set here: the
/// upstream client derives it from the upstream's authority.
pub fn upstream_headers(inbound: &HeaderMap, route: &Route, client: IpAddr) -> HeaderList {
    let mut out = HeaderList::with_capacity(inbound.len().min(16) + 2);
    let mut cookies: Option<String> = None;
    for (name, value) in inbound {
        if FORWARDED.contains(name) || is_client_hint(name) || route.forward_headers.contains(name)
        {
            out.push((name.clone(), value.clone()));
        } else if name == header::REFERER {
            if let Some(v) = origin_of(value) {
                out.push((header::REFERER, v));
            }
        } else if name == header::COOKIE && !route.cookies.is_empty() {
            keep_cookies(value, &route.cookies, &mut cookies);
        }
    }
    if let Some(c) = cookies.and_then(|c| HeaderValue::from_str(&c).ok()) {
        out.push((header::COOKIE, c));
    }
    if let Some(ip) = forwarded_ip(route.forward_ip, client)
        && let Ok(v) = HeaderValue::from_str(&ip.to_string())
    {
        out.push((HeaderName::from_static("x-forwarded-for"), v));
    }
    out
}

/// The client address a route sends upstream, if any.
pub fn forwarded_ip(policy: ForwardIp, client: IpAddr) -> Option<IpAddr> {
    if !clientip::is_public(client) {
        return None;
    }
    match policy {
        ForwardIp::None => None,
        ForwardIp::Anonymized => Some(clientip::anonymize(client)),
        ForwardIp::Full => Some(clientip::canonical(client)),
    }
}

/// `Sec-CH-UA*` and the other `Sec-CH-*` client hints, and `Sec-GPC`.
fn is_client_hint(name: &HeaderName) -> bool {
    let n = name.as_str();
    n.starts_with("sec-ch-") || n == "sec-gpc"
}

/// `https://shop.example/checkout?email=…` → `https://shop.example/`.
fn origin_of(v: &HeaderValue) -> Option<HeaderValue> {
    let s = v.to_str().ok()?;
    let (scheme, rest) = s.split_once("://")?;
    if scheme != "https" && scheme != "http" {
        return None;
    }
    let host = rest.split(['/', '?', '#']).next()?;
    if host.is_empty() || host.contains('@') {
        return None;
    }
    HeaderValue::from_str(&format!("{scheme}://{host}/")).ok()
}

/// Appends the cookies of `line` whose names are in `keep` to `out`.
fn keep_cookies(line: &HeaderValue, keep: &[String], out: &mut Option<String>) {
    let Ok(s) = line.to_str() else { return };
    for pair in s.split(';') {
        let pair = pair.trim();
        let name = pair.split('=').next().unwrap_or("").trim();
        if keep.iter().any(|k| k == name) {
            let o = out.get_or_insert_with(String::new);
            if !o.is_empty() {
                o.push_str("; ");
            }
            o.push_str(pair);
        }
    }
}

/// Removes what must not reach the browser from the vendor's response headers.
pub fn filter_response(headers: &mut HeaderMap, route: &Route) {
    // Usually nothing is to go: find out with one pass over the names before allocating.
    if !headers.keys().any(|n| is_dropped_response_header(n, route)) {
        return;
    }
    let mut drop: Vec<HeaderName> = Vec::new();
    for v in headers.get_all(header::CONNECTION) {
        if let Ok(s) = v.to_str() {
            drop.extend(
                s.split(',')
                    .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok()),
            );
        }
    }
    drop.extend(
        headers
            .keys()
            .filter(|n| is_dropped_response_header(n, route))
            .cloned(),
    );
    for name in drop {
        headers.remove(&name);
    }
}

fn is_dropped_response_header(name: &HeaderName, route: &Route) -> bool {
    if name == header::SET_COOKIE {
        return !route.set_cookie;
    }
    is_hop_by_hop(name)
        || name.as_str().starts_with("access-control-")
        || matches!(
            name.as_str(),
            "alt-svc"
                | "strict-transport-security"
                | "report-to"
                | "nel"
                | "reporting-endpoints"
                | "public-key-pins"
        )
}

/// RFC 9110 §7.6.1 connection-specific fields, plus the legacy ones proxies also strip.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authenticate"
            | "proxy-authorization"
    )
}

/// The inbound `Origin`, if the site allows it.
pub fn allowed_origin<'a>(inbound: &'a HeaderMap, site: &Site) -> Option<&'a HeaderValue> {
    inbound
        .get(header::ORIGIN)
        .filter(|o| site.origins.allows(o.as_bytes()))
}

/// CORS headers on an actual (non-preflight) response for an allowed origin.
pub fn add_cors(headers: &mut HeaderMap, origin: &HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}

/// Headers of the gateway's answer to a preflight for an allowed origin.
pub fn preflight_headers(inbound: &HeaderMap, route: &Route, origin: &HeaderValue) -> HeaderMap {
    let mut h = HeaderMap::new();
    add_cors(&mut h, origin);
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, route.allow.clone());
    if let Some(req) = inbound.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        // Reflect the requested names when they are all well-formed header names.
        let ok = req.to_str().is_ok_and(|s| {
            s.split(',')
                .all(|n| HeaderName::from_bytes(n.trim().as_bytes()).is_ok() || n.trim().is_empty())
        });
        if ok {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, req.clone());
        }
    }
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("7200"),
    );
    h.append(
        header::VARY,
        HeaderValue::from_static("Access-Control-Request-Method"),
    );
    h.append(
        header::VARY,
        HeaderValue::from_static("Access-Control-Request-Headers"),
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::MethodSet;

    fn route() -> Route {
        Route {
            name: "r".into(),
            hosts: None,
            methods: MethodSet::default(),
            allow: HeaderValue::from_static("GET"),
            upstream: 0,
            upstream_path: "/".into(),
            forward_ip: ForwardIp::Anonymized,
            cookies: vec!["_ga".into()],
            set_cookie: false,
            forward_headers: vec![HeaderName::from_static("x-vendor")],
            max_body: 1024,
            program: crate::rules::Program::empty(),
            answer: Default::default(),
            on_undecodable: crate::ruleset::OnUndecodable::Reject,
            script: None,
            delivery: crate::ruleset::Delivery::Relay,
            on_spool_full: crate::ruleset::OnSpoolFull::Relay,
        }
    }

    #[test]
    fn inbound_allowlist() {
        let mut h = HeaderMap::new();
        h.insert("user-agent", HeaderValue::from_static("UA"));
        h.insert("sec-ch-ua-platform", HeaderValue::from_static("\"Linux\""));
        h.insert("authorization", HeaderValue::from_static("Bearer secret"));
        h.insert("x-api-key", HeaderValue::from_static("secret"));
        h.insert("x-vendor", HeaderValue::from_static("1"));
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert(
            "referer",
            HeaderValue::from_static("https://shop.example/a?email=x@y.z"),
        );
        h.append("cookie", HeaderValue::from_static("session=abc; _ga=GA1.1"));
        h.append("cookie", HeaderValue::from_static("other=1"));
        let out: HeaderMap = upstream_headers(&h, &route(), "203.0.113.77".parse().unwrap())
            .into_iter()
            .collect();
        assert_eq!(out["user-agent"], "UA");
        assert_eq!(out["sec-ch-ua-platform"], "\"Linux\"");
        assert_eq!(out["x-vendor"], "1");
        assert_eq!(out["referer"], "https://shop.example/");
        assert_eq!(out["cookie"], "_ga=GA1.1");
        assert_eq!(out["x-forwarded-for"], "203.0.113.0");
        assert!(out.get("authorization").is_none());
        assert!(out.get("x-api-key").is_none());
    }

    #[test]
    fn private_client_ip_is_never_forwarded() {
        let out = upstream_headers(&HeaderMap::new(), &route(), "192.168.1.20".parse().unwrap());
        assert!(out.iter().all(|(n, _)| n != "x-forwarded-for"));
        assert_eq!(
            forwarded_ip(ForwardIp::Full, "2001:db8::7".parse().unwrap()),
            Some("2001:db8::7".parse().unwrap())
        );
        assert_eq!(
            forwarded_ip(ForwardIp::None, "2001:db8::7".parse().unwrap()),
            None
        );
    }

    #[test]
    fn response_filter() {
        let mut h = HeaderMap::new();
        h.insert("set-cookie", HeaderValue::from_static("fr=1"));
        h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
        h.insert("connection", HeaderValue::from_static("x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("alt-svc", HeaderValue::from_static("h3=\":443\""));
        h.insert("content-type", HeaderValue::from_static("text/javascript"));
        filter_response(&mut h, &route());
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-type"));
    }
}
