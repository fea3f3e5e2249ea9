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
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

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
    pub rewrite: Option<Spanned<BTreeMap<String, String>>>,
    /// The query parameters passed to the vendor (and part of the cache key), in this order;
    /// every other parameter the browser sends is left out. Default: none.
    #[serde(default)]
    pub query: Vec<Spanned<String>>,
    /// How long a fetched copy is fresh (served without asking the vendor). Default 1h.
    pub ttl: Option<Spanned<String>>,
    /// After `ttl`, how long the copy is still served while one background fetch refreshes
    /// it. Default 1d.
    pub stale: Option<Spanned<String>>,
    /// After `ttl`, how long the copy is served when the vendor cannot be reached or fails.
    /// Default: the larger of `stale` and 1d.
    pub stale_if_error: Option<Spanned<String>>,
}

impl ScriptSpec {
    /// The `rewrite` table (empty when not written).
    pub fn rewrites(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.rewrite.as_ref().map_or(&EMPTY, |r| r.get_ref())
    }
}

/// A problem with a route's `script` option: what to change, and where (the field's span in
/// the rule file; `None` for problems with the route around it, shown at the whole option).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionError {
    pub span: Option<Range<usize>>,
    pub msg: String,
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
                let v = e.value.as_str().unwrap_or_default();
                crate::decode::query::escape_into(&mut out, &v, Spaces::Percent);
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
pub fn compile(
    spec: &ScriptSpec,
    route: &RouteFacts<'_>,
) -> Result<ScriptPolicy, Vec<OptionError>> {
    let mut errs: Vec<OptionError> = Vec::new();
    let mut route_err = |msg: &str| {
        errs.push(OptionError {
            span: None,
            msg: msg.into(),
        })
    };
    if !route.get_only {
        route_err("script: a script route serves GET (and HEAD) only; set methods = [\"GET\"]");
    }
    if route.has_rules {
        route_err(
            "script: a script route relays no payload, so rules and rulesets would never run; move them to the vendor's beacon routes",
        );
    }
    if !route.scan_off {
        route_err(
            "script: a script route relays no payload, so the personal-data scan would never run; set scan = false",
        );
    }
    let mut duration = |key: &str, v: &Option<Spanned<String>>, default: Duration| match v {
        None => default,
        Some(s) => match humantime::parse_duration(s.get_ref()) {
            Ok(d) => d,
            Err(_) => {
                errs.push(OptionError {
                    span: Some(s.span()),
                    msg: format!(
                        "script: {key} {:?} is not a duration; write one like \"30s\", \"1h\" or \"1d\"",
                        s.get_ref()
                    ),
                });
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
    let span = |v: &Option<Spanned<String>>| v.as_ref().map(Spanned::span);
    if ttl.is_zero() {
        errs.push(OptionError {
            span: span(&spec.ttl),
            msg: "script: ttl must be longer than 0s (the cache is the point of a script route)"
                .into(),
        });
    }
    if stale_if_error < stale {
        errs.push(OptionError {
            span: span(&spec.stale_if_error).or(span(&spec.stale)),
            msg: format!(
                "script: stale_if_error ({}) is shorter than stale ({}); a copy served while refreshing must also be usable when the refresh fails",
                humantime::format_duration(stale_if_error),
                humantime::format_duration(stale)
            ),
        });
    }
    let mut query: Vec<String> = Vec::new();
    for name in &spec.query {
        let (at, name) = (Some(name.span()), name.get_ref());
        if name.is_empty() {
            errs.push(OptionError {
                span: at,
                msg: "script: query lists an empty parameter name; remove it".into(),
            });
        } else if query.contains(name) {
            errs.push(OptionError {
                span: at,
                msg: format!("script: query lists {name:?} twice; list each parameter once"),
            });
        } else {
            query.push(name.clone());
        }
    }
    let rewriter = Rewriter::compile(spec.rewrites()).unwrap_or_else(|e| {
        let at = spec.rewrite.as_ref().map(Spanned::span);
        errs.extend(e.into_iter().map(|msg| OptionError {
            span: at.clone(),
            msg,
        }));
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
    for (from, to) in spec.rewrites() {
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
            rewrite: Some(Spanned::new(
                0..0,
                rw.iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect(),
            )),
            ..Default::default()
        }
    }

    fn at(v: &str) -> Spanned<String> {
        Spanned::new(0..0, v.to_string())
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
        timed.ttl = Some(at("5m"));
        timed.stale = Some(at("7d"));
        let c = compile(&timed, &facts()).unwrap();
        assert_eq!(a.fingerprint, c.fingerprint, "times do not invalidate");
        assert_eq!(c.stale_if_error, Duration::from_secs(7 * 24 * 3600));
    }

    #[test]
    fn only_allowed_query_parameters_in_a_fixed_order() {
        let mut s = spec(&[]);
        s.query = vec![at("id"), at("l")];
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
        s.ttl = Some(at("soon"));
        s.stale = Some(at("2d"));
        s.stale_if_error = Some(at("1h"));
        s.query = vec![at("id"), at(""), at("id")];
        let f = RouteFacts {
            get_only: false,
            has_rules: true,
            scan_off: false,
            ..facts()
        };
        let errs = compile(&s, &f).unwrap_err();
        assert!(
            errs.iter().any(|e| e.span.is_none()),
            "route problems have no field span"
        );
        let errs: Vec<String> = errs.into_iter().map(|e| e.msg).collect();
        let errs = errs.join("\n");
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
