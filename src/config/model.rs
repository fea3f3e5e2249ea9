//! The rule-file model: what a TOML file in `rules/` may contain, exactly as written.
//!
//! Nothing here is used on the request path. `compile` turns these values into the compiled
//! [`crate::rules_set::RuleSet`]; spans are kept (`Spanned`) wherever a later check may need to
//! point at the line. Unknown keys are errors (`deny_unknown_fields`), so a misspelt key never
//! silently does nothing.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// One rule file. Every section is optional; files are merged in name order.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// Site settings: may appear in exactly one file of the set.
    pub site: Option<Spanned<SiteSpec>>,
    /// Named upstream origins that routes forward to.
    #[serde(default)]
    pub upstreams: BTreeMap<String, Spanned<UpstreamSpec>>,
    /// Routes, written as `[[route]]` tables.
    #[serde(default, rename = "route")]
    pub routes: Vec<Spanned<RouteSpec>>,
}

/// `[site]`: who this gateway serves.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSpec {
    /// Tracking host names this gateway answers for (`metrics.shop.example`). Requests for any
    /// other `Host` get 421. Empty: any host name (the embedded default, for `localhost`).
    #[serde(default)]
    pub hosts: Vec<Spanned<String>>,
    /// Site origins allowed to call the gateway from a browser (CORS): `https://shop.example`,
    /// or with a `*` wildcard for one label or the port: `https://*.shop.example`,
    /// `http://localhost:*`.
    #[serde(default)]
    pub origins: Vec<Spanned<String>>,
}

/// `[upstreams.NAME]`: a vendor origin.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// `https://host[:port]` or `http://host[:port]`, no path.
    pub url: Spanned<String>,
}

/// `[[route]]`: which requests are relayed where.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Unique name, used in logs, metrics and `tagway explain`.
    pub name: Spanned<String>,
    /// Host names this route answers on; absent: every host of the site.
    pub hosts: Option<Vec<Spanned<String>>>,
    /// Exact path (`/g/collect`). Exactly one of `path` and `path_prefix`.
    pub path: Option<Spanned<String>>,
    /// Path prefix (`/ingest/`): the rest of the path is appended to `upstream_path`.
    pub path_prefix: Option<Spanned<String>>,
    /// More paths of the same kind (exact or prefix) that reach this route, so a site can use
    /// paths that ad-block lists do not know.
    #[serde(default)]
    pub aliases: Vec<Spanned<String>>,
    /// Allowed methods; default `GET` and `POST` (`HEAD` follows `GET`).
    pub methods: Option<Vec<Spanned<String>>>,
    /// Name of an `[upstreams.NAME]` section.
    pub upstream: Spanned<String>,
    /// Path at the upstream; default: the route's `path` / `path_prefix`.
    pub upstream_path: Option<Spanned<String>>,
    /// What goes upstream as `X-Forwarded-For`: `none`, `anonymized` (default: IPv4 /24,
    /// IPv6 /48) or `full`.
    pub forward_ip: Option<Spanned<ForwardIp>>,
    /// Cookie names forwarded upstream; every other inbound cookie is dropped.
    #[serde(default)]
    pub cookies: Vec<Spanned<String>>,
    /// Pass the vendor's `Set-Cookie` headers to the browser (default: dropped).
    #[serde(default)]
    pub set_cookie: bool,
    /// Request headers forwarded upstream beyond the built-in allowlist.
    #[serde(default)]
    pub forward_headers: Vec<Spanned<String>>,
    /// Largest request body accepted, e.g. `64KiB`; default 256KiB. Larger bodies get 413.
    pub max_body: Option<Spanned<String>>,
}

/// The `forward_ip` choice of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardIp {
    None,
    Anonymized,
    Full,
}
