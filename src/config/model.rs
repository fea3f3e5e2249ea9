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
    /// Shared rule sets, `[[ruleset.NAME]]`, used by routes' `rulesets = [...]`.
    #[serde(default, rename = "ruleset")]
    pub rulesets: BTreeMap<String, Vec<Spanned<RuleSpec>>>,
    /// Tests of the rules, `[[test]]`, run by `tagway test`.
    #[serde(default, rename = "test")]
    pub tests: Vec<Spanned<TestSpec>>,
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
    /// Where the key for keyed hashes comes from: `{ env = "TAGWAY_HASH_KEY" }` or
    /// `{ file = "/run/secrets/tagway-hash-key" }` (never the key itself). Absent: a random key
    /// per start, so hashes change at each restart.
    pub hash_key: Option<Spanned<KeySource>>,
    /// The site's consent cookie: `{ name = "site_consent", analytics = "analytics", ads = "ads" }`
    /// (the value lists the granted purposes' tokens).
    pub consent_cookie: Option<Spanned<ConsentCookieSpec>>,
    /// The cookie holding an IAB TCF v2 string (default `euconsent-v2`; `""`: read only the
    /// URL's `gdpr_consent`).
    pub tcf_cookie: Option<String>,
    /// The site's own measurement and pixel ids, per list name (`ga4 = ["G-…"]`): routes with
    /// `id_field` and `id_list` drop beacons for any other id. An absent or empty list lets
    /// every id through (and a warning says so at load).
    #[serde(default)]
    pub ids: BTreeMap<String, Vec<Spanned<String>>>,
    /// More User-Agent patterns (regexes) counted as bots by `when.bot`.
    #[serde(default)]
    pub bots: Vec<Spanned<String>>,
}

/// Where a secret comes from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySource {
    pub env: Option<String>,
    pub file: Option<String>,
}

/// `[site.consent_cookie]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentCookieSpec {
    pub name: String,
    pub analytics: Option<String>,
    pub ads: Option<String>,
    pub ad_user_data: Option<String>,
    pub ad_personalization: Option<String>,
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
    /// How the body is decoded: auto (default), form, json, multipart, ga4, opaque.
    pub codec: Option<Spanned<crate::decode::Codec>>,
    /// Fields that carry a document (JSON, or base64 of JSON): PostHog/Mixpanel `data`,
    /// Snowplow `ue_px`, `cx`.
    #[serde(default)]
    pub nested: Vec<Spanned<String>>,
    /// Where a JSON body's events are (`batch[*]`, `[*]`); body selectors are then relative to
    /// each event.
    pub events: Option<Spanned<String>>,
    /// The field holding an event's name (default: `en` for ga4, `event` otherwise).
    pub event_field: Option<Spanned<String>>,
    /// Where the beacon's measurement or pixel id is (`tid`, `id`, `context.pixel.code`): a
    /// whole-document selector, or a list of them for vendors whose clients put it in different
    /// places (PostHog `api_key` and `**.token`). With `id_list`, beacons for ids not in that
    /// `[site.ids]` list are answered in the vendor's place and counted, never forwarded.
    pub id_field: Option<Spanned<super::ids::IdFields>>,
    /// The `[site.ids]` list (`ga4`, `meta`, …) naming the site's own ids for this route.
    pub id_list: Option<Spanned<String>>,
    /// Shared rule sets applied first, in order.
    #[serde(default)]
    pub rulesets: Vec<Spanned<String>>,
    /// The route's own rules, `[[route.rule]]`, applied after its rule sets.
    #[serde(default, rename = "rule")]
    pub rules: Vec<Spanned<RuleSpec>>,
    /// The personal-data scan (default on).
    pub scan: Option<bool>,
    /// Fields the scan leaves alone (values already hashed, client hints).
    #[serde(default)]
    pub scan_exempt: Vec<Spanned<String>>,
    /// Detectors the scan uses (default: all).
    pub scan_detectors: Option<Spanned<Vec<String>>>,
    /// What replaces a detection: "placeholder" (default, `[email]`) or "hash".
    pub scan_replace: Option<Spanned<String>>,
    /// A body that cannot be decoded: "reject" (400, default) or "drop" (answer as the vendor
    /// would, forward nothing).
    pub on_undecodable: Option<Spanned<OnUndecodable>>,
    /// What the gateway answers when it does not forward (drop_request, dropped undecodable
    /// bodies): `{ status = 204 }` (default) or e.g. `{ status = 200, content_type = "image/gif",
    /// body_base64 = "R0lGOD…" }`.
    pub answer: Option<Spanned<AnswerSpec>>,
    /// Serve the vendor's script first-party from a cache, its vendor hosts rewritten:
    /// `{ rewrite = { "www.google-analytics.com" = "{host}" }, ttl = "1h", stale = "1d" }`.
    pub script: Option<Spanned<crate::scripts::ScriptSpec>>,
    /// `relay` (send now, pass the vendor's answer back) or `queue` (spool durably, answer
    /// with `answer` at once, deliver in the background). Default `relay`: `answer` alone
    /// also serves dropped requests, and a script or flags route queued by accident would
    /// answer every browser with that fixed reply.
    pub delivery: Option<Spanned<Delivery>>,
    /// A queued request finding the spool full: `relay` (default: send it synchronously) or
    /// `reject` (answer 503).
    pub on_spool_full: Option<Spanned<OnSpoolFull>>,
}

/// How a route's requests reach the vendor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    Relay,
    Queue,
}

/// What a queued route does when the spool is full (or cannot be written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnSpoolFull {
    Relay,
    Reject,
}

/// Policy for bodies that cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUndecodable {
    Reject,
    Drop,
}

/// An answer the gateway gives in the vendor's place.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerSpec {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Option<String>,
    pub body_base64: Option<String>,
}

/// One rule: exactly one action, its options, and conditions.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// A label for `explain` and test failures.
    pub name: Option<String>,
    pub drop: Option<Vec<Spanned<String>>>,
    pub keep: Option<Vec<Spanned<String>>>,
    pub hash: Option<Vec<Spanned<String>>>,
    pub redact: Option<Vec<Spanned<String>>>,
    pub strip_url: Option<Vec<Spanned<String>>>,
    pub truncate_ip: Option<Vec<Spanned<String>>>,
    pub set: Option<Spanned<BTreeMap<String, String>>>,
    pub rename: Option<Spanned<BTreeMap<String, String>>>,
    pub drop_request: Option<bool>,
    /// hash: email, phone, phone_digits, lowercase, trim.
    pub normalize: Option<Spanned<crate::rules::action::Normalize>>,
    /// hash: hmac-sha256 (default) or sha256.
    pub algorithm: Option<Spanned<crate::rules::action::HashAlg>>,
    /// redact: built-in detectors to use (default: all).
    pub detectors: Option<Spanned<Vec<String>>>,
    /// redact: custom regexes.
    pub patterns: Option<Vec<Spanned<String>>>,
    /// redact: "placeholder" (default) or "hash".
    pub replace: Option<Spanned<String>>,
    /// redact: the placeholder text (default `[email]`, `[phone]`, …).
    pub placeholder: Option<String>,
    /// strip_url: parameter names to keep (globs); all others go.
    pub keep_params: Option<Spanned<Vec<String>>>,
    /// strip_url: parameter names to remove (globs).
    pub drop_params: Option<Spanned<Vec<String>>>,
    /// strip_url: keep the `#fragment` (default: dropped).
    pub keep_fragment: Option<bool>,
    /// strip_url: path segments matching a regex are replaced: `{ "^[0-9]{5,}$" = "[id]" }`.
    pub path_segments: Option<Spanned<BTreeMap<String, String>>>,
    /// truncate_ip: prefix lengths kept (default 24 and 48).
    pub v4_bits: Option<u8>,
    pub v6_bits: Option<u8>,
    pub when: Option<Spanned<CondSpec>>,
    pub unless: Option<Spanned<CondSpec>>,
}

/// Conditions; all listed must hold.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CondSpec {
    pub present: Option<Vec<Spanned<String>>>,
    pub equals: Option<Spanned<BTreeMap<String, String>>>,
    pub matches: Option<Spanned<BTreeMap<String, String>>>,
    pub event: Option<Vec<String>>,
    pub gpc: Option<bool>,
    pub consent_denied: Option<Spanned<Vec<String>>>,
    pub consent_granted: Option<Spanned<Vec<String>>>,
    pub client_ip: Option<Spanned<Vec<String>>>,
    pub bot: Option<bool>,
}

/// `[[test]]`: a request in, expectations on what goes out.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct TestSpec {
    pub name: String,
    /// The route the request must reach (checked).
    pub route: Option<String>,
    pub request: RequestSpec,
    #[serde(default)]
    pub expect: ExpectSpec,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    pub method: Option<String>,
    /// Full URL (`https://metrics.shop.example/g/collect?…`) or a path.
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub body: Option<String>,
    pub body_base64: Option<String>,
    /// The client's address (default 203.0.113.7, a documentation address).
    pub client_ip: Option<String>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct ExpectSpec {
    /// The request is not forwarded.
    pub dropped: Option<bool>,
    /// Fields with these exact values after the rules.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// Fields whose value the rules changed.
    #[serde(default)]
    pub changed: Vec<String>,
    #[serde(default)]
    pub unchanged: Vec<String>,
    /// Fields no longer there.
    #[serde(default)]
    pub absent: Vec<String>,
    #[serde(default)]
    pub present: Vec<String>,
    /// Text that must not appear anywhere in what is forwarded (in any encoding: as is,
    /// percent-encoded, base64, inside gzip).
    #[serde(default)]
    pub not_contains: Vec<String>,
}

/// The `forward_ip` choice of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardIp {
    None,
    Anonymized,
    Full,
}
