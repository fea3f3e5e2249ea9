//! First-party script serving, a branch of the request path for routes with a `script`
//! option: instead of relaying the request, the gateway answers it from a shared in-memory
//! cache of the vendor's script (`gtag/js`, `gtm.js`, `fbevents.js`, …).
//!
//! The script is fetched from the vendor once per key (route, rewrite set, upstream path and
//! the route's allowed query parameters, nothing else of the browser's query), decompressed, and kept ([`fetch`]); for each first-party host that asks for it, the
//! vendor host names in it are rewritten to that host ([`rewrite`]) and the result is stored
//! with precomputed gzip and br encodings and a strong `ETag` ([`variant`]), and served by
//! `Accept-Encoding` ([`serve`]). Freshness, stale-while-revalidate, stale-if-error, single-flight fetches shared
//! by every worker thread, and the size bound live in [`cache`].
//!
//! - `spec` here: the `script = { … }` option as written, and its compiled [`ScriptPolicy`].

pub mod cache;
pub mod fetch;
pub mod rewrite;
pub mod serve;
pub mod variant;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::decode::query::Spaces;
use sha2::{Digest, Sha256};

pub use cache::{CacheSettings, ScriptCache};
pub use rewrite::Rewriter;

/// Freshness of a script route that does not set `ttl`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// How long past `ttl` a copy is served while it is refreshed, when `stale` is not set.
pub const DEFAULT_STALE: Duration = Duration::from_secs(24 * 3600);
/// How long past `ttl` a copy may stand in for a vendor that is down, at least (it is never
/// shorter than `stale`).
pub const DEFAULT_STALE_IF_ERROR: Duration = Duration::from_secs(24 * 3600);

/// `script = { query = ["id"], rewrite = { … }, ttl = "1h", stale = "1d", stale_if_error = "1d" }`
/// on a route.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptSpec {
    /// Literal text in the vendor's script → its replacement; `{host}` in a replacement is the
    /// first-party host the browser asked (with its port only if it is the listener's and
    /// not the default).
    #[serde(default)]
    pub rewrite: BTreeMap<String, String>,
    /// The query parameters passed to the vendor (and part of the cache key), in this order;
    /// every other parameter the browser sends is left out. Default: none.
    #[serde(default)]
    pub query: Vec<String>,
    /// How long a fetched copy is fresh (served without asking the vendor). Default 1h.
    pub ttl: Option<String>,
    /// After `ttl`, how long the copy is still served while one background fetch refreshes
    /// it. Default 1d.
    pub stale: Option<String>,
    /// After `ttl`, how long the copy is served when the vendor cannot be reached or fails.
    /// Default: the larger of `stale` and 1d.
    pub stale_if_error: Option<String>,
}

/// A route's compiled `script` option.
#[derive(Debug)]
pub struct ScriptPolicy {
    pub rewriter: Rewriter,
    /// The allowed query parameters, in the order they are sent (see [`ScriptPolicy::query`]).
    pub query: Vec<String>,
    pub ttl: Duration,
    pub stale: Duration,
    pub stale_if_error: Duration,
    /// Identifies the route, its upstream and its rewrite set in cache keys: a reload that
    /// changes any of them starts from a fresh fetch; one that changes only times does not.
    pub fingerprint: String,
}

impl ScriptPolicy {
    /// The longest a copy is kept after it was fetched.
    pub fn lifetime(&self) -> Duration {
        self.ttl + self.stale.max(self.stale_if_error)
    }

    /// The query sent to the vendor for the browser's `raw` query: the first value of each
    /// allowed parameter, in the order the option lists them, re-escaped, so a parameter
    /// the browser adds (a cache buster) neither reaches the vendor nor makes a new cache
    /// entry, and `id=G%2D1` and `id=G-1` are one script. `None` when none is present.
    pub fn query(&self, raw: Option<&str>) -> Option<String> {
        let raw = raw.filter(|q| !q.is_empty() && !self.query.is_empty())?;
        let (obj, _) = crate::decode::query::decode(raw);
        let mut out = String::new();
        for name in &self.query {
            let Some(e) = obj.entries.iter().find(|e| e.key == name.as_str()) else {
                continue;
            };
            if !out.is_empty() {
                out.push('&');
            }
            crate::decode::query::escape_into(&mut out, name, Spaces::Percent);
            if !e.bare {
                out.push('=');
                let v = e.value.as_str().unwrap_or("");
                crate::decode::query::escape_into(&mut out, v, Spaces::Percent);
            }
        }
        (!out.is_empty()).then_some(out)
    }
}

/// What about the route outside `script` matters to a script route.
pub struct RouteFacts<'a> {
    pub name: &'a str,
    pub upstream_origin: &'a str,
    pub upstream_path: &'a str,
    /// Only GET (and HEAD, which follows it) are allowed.
    pub get_only: bool,
    pub has_rules: bool,
    /// `scan = false` was written.
    pub scan_off: bool,
}

/// Checks and compiles the option; every problem is returned, each a message that says what to
/// change.
pub fn compile(spec: &ScriptSpec, route: &RouteFacts<'_>) -> Result<ScriptPolicy, Vec<String>> {
    let mut errs = Vec::new();
    if !route.get_only {
        errs.push(
            "script: a script route serves GET (and HEAD) only; set methods = [\"GET\"]".into(),
        );
    }
    if route.has_rules {
        errs.push("script: a script route relays no payload, so rules and rulesets would never run; move them to the vendor's beacon routes".into());
    }
    if !route.scan_off {
        errs.push("script: a script route relays no payload, so the personal-data scan would never run; set scan = false".into());
    }
    let mut duration = |key: &str, v: &Option<String>, default: Duration| match v {
        None => default,
        Some(s) => match humantime::parse_duration(s) {
            Ok(d) => d,
            Err(_) => {
                errs.push(format!(
                    "script: {key} {s:?} is not a duration; write one like \"30s\", \"1h\" or \"1d\""
                ));
                default
            }
        },
    };
    let ttl = duration("ttl", &spec.ttl, DEFAULT_TTL);
    let stale = duration("stale", &spec.stale, DEFAULT_STALE);
    let stale_if_error = duration(
        "stale_if_error",
        &spec.stale_if_error,
        DEFAULT_STALE_IF_ERROR.max(stale),
    );
    if ttl.is_zero() {
        errs.push(
            "script: ttl must be longer than 0s (the cache is the point of a script route)".into(),
        );
    }
    if stale_if_error < stale {
        errs.push(format!(
            "script: stale_if_error ({}) is shorter than stale ({}); a copy served while refreshing must also be usable when the refresh fails",
            humantime::format_duration(stale_if_error),
            humantime::format_duration(stale)
        ));
    }
    let mut query: Vec<String> = Vec::new();
    for name in &spec.query {
        if name.is_empty() {
            errs.push("script: query lists an empty parameter name; remove it".into());
        } else if query.contains(name) {
            errs.push(format!(
                "script: query lists {name:?} twice; list each parameter once"
            ));
        } else {
            query.push(name.clone());
        }
    }
    let rewriter = Rewriter::compile(&spec.rewrite).unwrap_or_else(|e| {
        errs.extend(e);
        Rewriter::default()
    });
    if !errs.is_empty() {
        return Err(errs);
    }
    let mut h = Sha256::new();
    for part in [route.name, route.upstream_origin, route.upstream_path] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    for (from, to) in &spec.rewrite {
        h.update(from.as_bytes());
        h.update([0]);
        h.update(to.as_bytes());
        h.update([0]);
    }
    let digest = h.finalize();
    let fingerprint = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    Ok(ScriptPolicy {
        rewriter,
        query,
        ttl,
        stale,
        stale_if_error,
        fingerprint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> RouteFacts<'static> {
        RouteFacts {
            name: "s",
            upstream_origin: "https://www.googletagmanager.com",
            upstream_path: "/gtag/js",
            get_only: true,
            has_rules: false,
            scan_off: true,
        }
    }

    fn spec(rw: &[(&str, &str)]) -> ScriptSpec {
        ScriptSpec {
            rewrite: rw
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_and_fingerprint_follow_the_rewrite_set() {
        let a = compile(&spec(&[("a.example", "{host}")]), &facts()).unwrap();
        assert_eq!(a.ttl, DEFAULT_TTL);
        assert_eq!(a.stale, DEFAULT_STALE);
        assert_eq!(a.stale_if_error, DEFAULT_STALE_IF_ERROR);
        let b = compile(&spec(&[("a.example", "{host}/a")]), &facts()).unwrap();
        assert_ne!(a.fingerprint, b.fingerprint);
        let mut timed = spec(&[("a.example", "{host}")]);
        timed.ttl = Some("5m".into());
        timed.stale = Some("7d".into());
        let c = compile(&timed, &facts()).unwrap();
        assert_eq!(a.fingerprint, c.fingerprint, "times do not invalidate");
        assert_eq!(c.stale_if_error, Duration::from_secs(7 * 24 * 3600));
    }

    #[test]
    fn only_allowed_query_parameters_in_a_fixed_order() {
        let mut s = spec(&[]);
        s.query = vec!["id".into(), "l".into()];
        let p = compile(&s, &facts()).unwrap();
        let q = |raw: &str| p.query(Some(raw));
        assert_eq!(q("l=dl&x=1&id=G-1&id=G-2").as_deref(), Some("id=G-1&l=dl"));
        assert_eq!(q("id=G%2D1&cb=123").as_deref(), Some("id=G-1"));
        assert_eq!(q("id=a%20b%26c").as_deref(), Some("id=a%20b%26c"));
        assert_eq!(q("x=1&y=2"), None);
        assert_eq!(p.query(None), None);
        let none = compile(&spec(&[]), &facts()).unwrap();
        assert_eq!(none.query(Some("id=G-1")), None, "default: no parameters");
    }

    #[test]
    fn mistakes_are_named() {
        let mut s = spec(&[("", "x"), ("b", "{hots}")]);
        s.ttl = Some("soon".into());
        s.stale = Some("2d".into());
        s.stale_if_error = Some("1h".into());
        s.query = vec!["id".into(), "".into(), "id".into()];
        let f = RouteFacts {
            get_only: false,
            has_rules: true,
            scan_off: false,
            ..facts()
        };
        let errs = compile(&s, &f).unwrap_err().join("\n");
        for want in [
            "methods = [\"GET\"]",
            "rules and rulesets",
            "scan = false",
            "\"soon\" is not a duration",
            "stale_if_error (1h) is shorter than stale (2days)",
            "empty",
            "{hots}",
            "empty parameter name",
            "\"id\" twice",
        ] {
            assert!(errs.contains(want), "{want:?} not in:\n{errs}");
        }
    }
}
