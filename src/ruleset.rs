//! The compiled rule set: everything the request path reads, built once per (re)load by
//! [`crate::config::compile`] and shared behind an `Arc`. A request takes one snapshot at its
//! start and uses it to the end, so a reload never mixes two rule sets inside one request.
//!
//! Nothing in here parses configuration text: all strings are already validated and
//! normalised (lower-case hosts, checked paths, parsed header names).

use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue, Method};

pub use crate::config::model::{Delivery, ForwardIp, OnSpoolFull, OnUndecodable};
use crate::route::RouteTable;

/// One loaded generation of the rules.
#[derive(Debug)]
pub struct RuleSet {
    pub site: Site,
    pub upstreams: Vec<Upstream>,
    pub routes: RouteTable,
    /// Where the rules came from (folder or embedded), for logs.
    pub source: String,
    /// How many rule files made this set.
    pub files: usize,
    /// The site's key for keyed hashes (HMAC-SHA-256), prepared once.
    pub key: crate::rules::action::HmacKey,
    /// Where the key came from (for the start-up log; never the key).
    pub key_source: String,
    /// Consent cookie and bot list, for conditions.
    pub inputs: crate::rules::cond::SiteInputs,
    /// `[[test]]` cases: (`file:line`, spec).
    pub tests: Vec<(String, crate::config::model::TestSpec)>,
    /// Things that load but deserve a look (routes relaying any id), logged at every load and
    /// printed by `tagway check`.
    pub warnings: Vec<String>,
}

/// What the gateway answers in the vendor's place (a dropped request).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: http::StatusCode,
    pub content_type: Option<HeaderValue>,
    pub body: bytes::Bytes,
}

impl Default for Answer {
    fn default() -> Self {
        Answer {
            status: http::StatusCode::NO_CONTENT,
            content_type: None,
            body: bytes::Bytes::new(),
        }
    }
}

/// `[site]`, compiled.
#[derive(Debug, Default)]
pub struct Site {
    /// Lower-case host names (no port) the gateway answers for; empty: any.
    pub hosts: Vec<String>,
    pub origins: OriginMatcher,
}

impl Site {
    /// Whether `host` (lower-case or not, without port) is one of the site's tracking hosts.
    pub fn serves_host(&self, host: &str) -> bool {
        self.hosts.is_empty() || self.hosts.iter().any(|h| host_matches(h, host))
    }
}

/// Matches `pattern` (`metrics.shop.example` or `*.shop.example`) against a host name,
/// ignoring ASCII case.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(parent) => host
            .len()
            .checked_sub(parent.len() + 1)
            .filter(|&cut| cut > 0)
            .is_some_and(|cut| {
                host.as_bytes()[cut] == b'.'
                    && host[cut + 1..].eq_ignore_ascii_case(parent)
                    && !host[..cut].contains('.')
            }),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// A named upstream origin. Its scheme and authority are the only place upstream addresses
/// come from: nothing in a request can choose where the gateway connects.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub scheme: Scheme,
    pub authority: Authority,
    /// `scheme://authority`, for messages.
    pub origin: String,
}

/// One `[[route]]`, compiled.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    /// Lower-case host patterns; `None`: every host of the site.
    pub hosts: Option<Vec<String>>,
    pub methods: MethodSet,
    /// Value of the `Allow` header (405) and `Access-Control-Allow-Methods` (preflight).
    pub allow: HeaderValue,
    /// Index into [`RuleSet::upstreams`].
    pub upstream: usize,
    /// Exact route: the whole upstream path. Prefix route: what the matched prefix is replaced
    /// with (ends with `/`).
    pub upstream_path: String,
    pub forward_ip: ForwardIp,
    /// Inbound cookie names forwarded upstream.
    pub cookies: Vec<String>,
    pub set_cookie: bool,
    pub forward_headers: Vec<HeaderName>,
    pub max_body: u64,
    /// Decode → rules → encode for this route's payloads.
    pub program: crate::rules::Program,
    /// The answer when the request is not forwarded.
    pub answer: Answer,
    pub on_undecodable: crate::config::model::OnUndecodable,
    /// A script route: answered from the script cache instead of relayed.
    pub script: Option<std::sync::Arc<crate::scripts::ScriptPolicy>>,
    /// Relay now, or spool and answer with `answer` at once.
    pub delivery: Delivery,
    pub on_spool_full: OnSpoolFull,
}

impl Route {
    pub fn serves_host(&self, host: &str) -> bool {
        self.hosts
            .as_ref()
            .is_none_or(|hs| hs.iter().any(|h| host_matches(h, host)))
    }
}

/// A small set of HTTP methods, as bits: routes allow only the ordinary ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MethodSet(u8);

impl MethodSet {
    const NAMES: [(&'static str, Method); 7] = [
        ("GET", Method::GET),
        ("HEAD", Method::HEAD),
        ("POST", Method::POST),
        ("PUT", Method::PUT),
        ("PATCH", Method::PATCH),
        ("DELETE", Method::DELETE),
        ("OPTIONS", Method::OPTIONS),
    ];

    /// The method names a route may list.
    pub fn known() -> impl Iterator<Item = &'static str> {
        Self::NAMES.iter().map(|(n, _)| *n)
    }

    fn bit(m: &Method) -> Option<u8> {
        Self::NAMES.iter().position(|(_, x)| x == m).map(|i| 1 << i)
    }

    pub fn insert_name(&mut self, name: &str) -> bool {
        match Self::NAMES.iter().position(|(n, _)| *n == name) {
            Some(i) => {
                self.0 |= 1 << i;
                true
            }
            None => false,
        }
    }

    pub fn contains(&self, m: &Method) -> bool {
        Self::bit(m).is_some_and(|b| self.0 & b != 0)
    }

    /// Every method but GET and HEAD.
    pub fn except_get_and_head() -> MethodSet {
        let mut s = MethodSet::default();
        for (n, _) in &Self::NAMES[2..] {
            s.insert_name(n);
        }
        s
    }

    pub fn overlaps(&self, other: &MethodSet) -> bool {
        self.0 & other.0 != 0
    }

    /// Comma-separated names, for `Allow`.
    pub fn header_value(&self) -> HeaderValue {
        let names: Vec<&str> = Self::NAMES
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, (n, _))| *n)
            .collect();
        HeaderValue::from_str(&names.join(", ")).unwrap_or_else(|_| HeaderValue::from_static("GET"))
    }
}

/// The site's allowed browser origins: exact strings, or patterns with one `*` standing for
/// one host label sequence (`https://*.shop.example`) or the port (`http://localhost:*`).
#[derive(Debug, Default, Clone)]
pub struct OriginMatcher {
    exact: Vec<String>,
    /// (text before `*`, text after `*`, `*` stands for a port)
    globs: Vec<(String, String, bool)>,
}

impl OriginMatcher {
    /// Adds a pattern; returns what is wrong with it, if anything.
    pub fn add(&mut self, pattern: &str) -> Result<(), String> {
        let p = pattern.trim_end_matches('/').to_ascii_lowercase();
        let Some((scheme, rest)) = p.split_once("://") else {
            return Err(format!(
                "origin {pattern:?} needs a scheme, like \"https://shop.example\""
            ));
        };
        if scheme != "http" && scheme != "https" {
            return Err(format!("origin {pattern:?}: scheme must be http or https"));
        }
        if rest.is_empty() || rest.contains('/') || rest.contains('?') || rest.contains('@') {
            return Err(format!(
                "origin {pattern:?} must be scheme://host[:port] with no path"
            ));
        }
        match p.matches('*').count() {
            0 => self.exact.push(p),
            1 => {
                let (before, after) = p.split_once('*').unwrap_or_default();
                let port = before.ends_with(':') && after.is_empty();
                let label = before.ends_with("://") && after.starts_with('.');
                if !port && !label {
                    return Err(format!(
                        "origin {pattern:?}: `*` may stand only for the first host labels (https://*.shop.example) or the port (http://localhost:*)"
                    ));
                }
                self.globs
                    .push((before.to_string(), after.to_string(), port));
            }
            _ => return Err(format!("origin {pattern:?}: only one `*` is allowed")),
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.globs.is_empty()
    }

    /// Whether the `Origin` header value is allowed.
    pub fn allows(&self, origin: &[u8]) -> bool {
        let Ok(origin) = std::str::from_utf8(origin) else {
            return false;
        };
        if self.exact.iter().any(|e| e.eq_ignore_ascii_case(origin)) {
            return true;
        }
        self.globs.iter().any(|(before, after, port)| {
            origin.len() > before.len() + after.len()
                && origin[..before.len()].eq_ignore_ascii_case(before)
                && origin[origin.len() - after.len()..].eq_ignore_ascii_case(after)
                && {
                    let mid = &origin[before.len()..origin.len() - after.len()];
                    if *port {
                        mid.len() <= 5 && mid.bytes().all(|b| b.is_ascii_digit())
                    } else {
                        mid.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                            && !mid.starts_with('.')
                            && !mid.contains("..")
                    }
                }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_hosts_match_one_label_only() {
        assert!(host_matches("*.shop.example", "metrics.shop.example"));
        assert!(host_matches("*.shop.example", "METRICS.Shop.Example"));
        assert!(!host_matches("*.shop.example", "shop.example"));
        assert!(!host_matches("*.shop.example", "a.b.shop.example"));
        assert!(!host_matches("*.shop.example", "evilshop.example"));
        assert!(host_matches("localhost", "LocalHost"));
    }

    #[test]
    fn origins_exact_and_patterns() {
        let mut m = OriginMatcher::default();
        m.add("https://shop.example").unwrap();
        m.add("https://*.shop.example").unwrap();
        m.add("http://localhost:*").unwrap();
        assert!(m.allows(b"https://shop.example"));
        assert!(m.allows(b"https://www.shop.example"));
        assert!(m.allows(b"http://localhost:5173"));
        assert!(!m.allows(b"http://localhost:5173/x"));
        assert!(!m.allows(b"https://evil.example"));
        assert!(!m.allows(b"https://shop.example.evil.example"));
        assert!(!m.allows(b"https://evil.example/.shop.example"));
        assert!(!m.allows(b"http://shop.example"));
        assert!(m.add("https://shop.example/path").is_err());
        assert!(m.add("https://sh*p.example").is_err());
        assert!(m.add("shop.example").is_err());
    }

    #[test]
    fn method_sets() {
        let mut s = MethodSet::default();
        assert!(s.insert_name("GET"));
        assert!(s.insert_name("POST"));
        assert!(!s.insert_name("CONNECT"));
        assert!(s.contains(&Method::GET));
        assert!(!s.contains(&Method::PUT));
        assert_eq!(s.header_value(), "GET, POST");
    }
}
