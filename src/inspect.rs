//! Running a request through a rule set without a network: route lookup, decode, each rule,
//! the scan, encode, and the header policy, recording the payload's fields after every step.
//! `tagway explain` prints this; `tagway test` checks expectations against it.

use std::net::IpAddr;

use bytes::Bytes;
use http::{HeaderMap, Method};

use crate::decode::{Doc, Origin, Value};
use crate::route::Lookup;
use crate::ruleset::RuleSet;
use crate::transform::{self, Processed};

/// A request to inspect.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    /// Host name the request is addressed to (routes may depend on it); empty: any.
    pub host: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub client_ip: IpAddr,
}

impl Request {
    /// From a URL (`https://metrics.shop.example/g/collect?v=2`) or a path (`/g/collect?v=2`).
    pub fn from_url(method: Method, url: &str) -> Result<Request, String> {
        let rest = match url.split_once("://") {
            Some((scheme, r)) if scheme == "http" || scheme == "https" => r,
            Some(_) => return Err(format!("{url}: only http and https URLs")),
            None => url,
        };
        let (host, pq) = if url.contains("://") {
            match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            }
        } else {
            ("", rest)
        };
        if !pq.starts_with('/') {
            return Err(format!(
                "{url}: write a URL (https://host/path?query) or a path starting with /"
            ));
        }
        let pq = pq.split('#').next().unwrap_or(pq);
        let (path, query) = match pq.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (pq.to_string(), None),
        };
        let host = host
            .rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(h, _)| h);
        Ok(Request {
            method,
            host: host.to_ascii_lowercase(),
            path,
            query,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            client_ip: "203.0.113.7".parse().expect("valid address"),
        })
    }
}

/// The payload's fields after one step.
#[derive(Debug, Clone)]
pub struct Step {
    /// `received`, a rule's label, or `personal-data scan`.
    pub label: String,
    pub fields: Vec<(String, String)>,
}

/// Everything that happened to a request.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub route: String,
    pub upstream: String,
    /// What would be sent: method, URL at the vendor, headers, body (`None` when dropped).
    pub sent: Option<Sent>,
    /// Set when a rule dropped the request: its label.
    pub dropped: Option<String>,
    pub steps: Vec<Step>,
    /// A script route: the script is fetched from the vendor and served from the cache.
    pub script: bool,
}

#[derive(Debug, Clone)]
pub struct Sent {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// Runs `req` through `rules`. `each` sees the document after every step (for expectations
/// that need the tree itself).
pub fn inspect(
    rules: &RuleSet,
    req: &Request,
    each: &mut dyn FnMut(&str, &Doc<'_>),
) -> Result<Inspection, String> {
    let route = match rules.routes.find(&req.host, &req.method, &req.path) {
        Lookup::Found(r, rest_from) => (r, rest_from),
        Lookup::MethodNotAllowed(r) => {
            return Err(format!("route {} does not allow {}", r.name, req.method));
        }
        Lookup::NotFound => {
            return Err(format!(
                "no route matches {} {}{}",
                req.method, req.host, req.path
            ));
        }
    };
    let (route, rest_from) = route;
    let upstream = &rules.upstreams[route.upstream];
    let mut steps = Vec::new();
    let mut observe = |label: &str, doc: &Doc<'_>| {
        steps.push(Step {
            label: label.to_string(),
            fields: flatten(doc),
        });
        each(label, doc);
    };
    let processed = if route.program.is_empty() {
        Processed::Forward {
            query: None,
            body: None,
        }
    } else {
        transform::process(
            rules,
            route,
            req.query.as_deref().unwrap_or(""),
            &req.headers,
            &req.body,
            req.client_ip,
            Some(&mut observe),
        )
        .map_err(|e| format!("the body could not be decoded: {e}"))?
    };
    let (sent, dropped) = match processed {
        Processed::Dropped(label) => (None, Some(label)),
        Processed::ForeignId(why) => (None, Some(format!("the site's ids: {why}"))),
        Processed::Forward { query, body } => {
            let q = match query {
                Some(q) if q.is_empty() => None,
                Some(q) => Some(q),
                None => req.query.clone(),
            };
            let mut url = format!(
                "{}{}{}",
                upstream.origin,
                route.upstream_path,
                &req.path[rest_from..]
            );
            if let Some(q) = q {
                url.push('?');
                url.push_str(&q);
            }
            let headers = match route.script {
                Some(_) => crate::scripts::fetch::fetch_headers(),
                None => crate::headers::upstream_headers(&req.headers, route, req.client_ip),
            };
            let headers = headers
                .into_iter()
                .map(|(n, v)| {
                    (
                        n.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            (
                Some(Sent {
                    url,
                    headers,
                    body: body.unwrap_or_else(|| req.body.clone()),
                }),
                None,
            )
        }
    };
    Ok(Inspection {
        route: route.name.clone(),
        upstream: format!("{} {}", upstream.name, upstream.origin),
        sent,
        dropped,
        steps,
        script: route.script.is_some(),
    })
}

/// Every leaf of the document as (path, text): `query:uid`, `body:batch[0].userId`,
/// `line2:en`, `query:data→properties.token` (inside a nested field).
pub fn flatten(doc: &Doc<'_>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in &doc.parts {
        let prefix = match p.origin {
            Origin::Query => "query:".to_string(),
            Origin::Body => "body:".to_string(),
            Origin::Line(i) => format!("line{}:", i + 1),
        };
        flatten_value(&p.root, &prefix, p.flat, true, &mut out);
    }
    out
}

fn flatten_value(
    v: &Value<'_>,
    path: &str,
    flat: bool,
    top: bool,
    out: &mut Vec<(String, String)>,
) {
    match v {
        Value::Str(s) => match s.nested() {
            Some(n) => flatten_value(&n.root, &format!("{path}→"), false, true, out),
            None => out.push((path.to_string(), s.text().into_owned())),
        },
        Value::Lit(l) => out.push((path.to_string(), l.to_string())),
        Value::Obj(o) => {
            let mut seen: Vec<&str> = Vec::new();
            for e in &o.entries {
                let n = seen.iter().filter(|k| **k == e.key).count();
                seen.push(&e.key);
                let key = if flat || !e.key.contains('.') {
                    e.key.to_string()
                } else {
                    format!("\"{}\"", e.key)
                };
                let dup = if n > 0 {
                    format!("#{}", n + 1)
                } else {
                    String::new()
                };
                let sep = if top { "" } else { "." };
                flatten_value(
                    &e.value,
                    &format!("{path}{sep}{key}{dup}"),
                    false,
                    false,
                    out,
                );
            }
            if o.entries.is_empty() && !top {
                out.push((path.to_string(), "{}".into()));
            }
        }
        Value::Arr(a) => {
            for (i, item) in a.items.iter().enumerate() {
                flatten_value(item, &format!("{path}[{i}]"), false, false, out);
            }
            if a.items.is_empty() {
                out.push((path.to_string(), "[]".into()));
            }
        }
    }
}

/// The first value `sel` names in `doc` (URL query first), as text.
pub fn read(doc: &Doc<'_>, sel: &crate::rules::select::Selector) -> Option<String> {
    doc.parts
        .iter()
        .filter(|p| {
            if p.origin == Origin::Query {
                sel.in_query()
            } else {
                sel.in_body()
            }
        })
        .find_map(|p| crate::rules::walk::first(&p.root, p.flat, sel))
        .map(|v| match v {
            Value::Str(s) => s.text().into_owned(),
            Value::Lit(l) => l.to_string(),
            other => crate::decode::json::to_string(other),
        })
}
