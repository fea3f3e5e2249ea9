//! Validation and compilation of parsed rule files into a [`RuleSet`]. Every check that can be
//! made before traffic arrives is made here, with the file, line and column of the offending
//! value, so that a rule set that loads is one the request path can run without surprises.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use http::HeaderName;
use http::uri::{Scheme, Uri};
use toml::Spanned;

use super::diag::{ConfigError, Diagnostic, Source, did_you_mean, with_suggestion};
use super::model::{
    AnswerSpec, Delivery, ForwardIp, OnSpoolFull, OnUndecodable, RouteSpec, RuleFile, SiteSpec,
    UpstreamSpec,
};
use super::{RuleText, UpstreamOverride};
use crate::route::RouteTable;
use crate::ruleset::{MethodSet, OriginMatcher, Route, RuleSet, Site, Upstream};

/// Body limit of a route that does not set `max_body`.
pub const DEFAULT_MAX_BODY: u64 = 256 * 1024;

/// Request headers that `forward_headers` may not name: they are handled by the gateway's own
/// policy (cookies, credentials, hop-by-hop, client address).
const RESERVED_HEADERS: &[&str] = &[
    "cookie",
    "authorization",
    "proxy-authorization",
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "x-forwarded-for",
    "forwarded",
    "x-real-ip",
    "expect",
];

/// Parses every file and compiles the merged result.
pub fn compile(
    texts: &[RuleText],
    overrides: &[UpstreamOverride],
    source: String,
    secrets: bool,
) -> Result<RuleSet, ConfigError> {
    let mut diags = Vec::new();
    let mut parsed = Vec::new();
    for t in texts {
        let src = Source {
            name: &t.name,
            text: &t.text,
        };
        match toml::from_str::<RuleFile>(&t.text) {
            Ok(f) => parsed.push((t, f)),
            Err(e) => diags.push(src.at(e.span(), with_suggestion(e.message()))),
        }
    }
    let mut c = Compiler {
        diags,
        upstream_index: HashMap::new(),
        upstreams: Vec::new(),
        site_ids: BTreeMap::new(),
        id_lists_used: BTreeMap::new(),
    };
    let set = c.run(&parsed, overrides, source, texts.len(), secrets);
    if c.diags.is_empty() {
        Ok(set)
    } else {
        Err(ConfigError {
            diagnostics: c.diags,
        })
    }
}

pub(super) struct Compiler {
    diags: Vec<Diagnostic>,
    upstream_index: HashMap<String, usize>,
    upstreams: Vec<Upstream>,
    /// `[site.ids]`: the site's own ids per list name (see `ids.rs`).
    pub(super) site_ids: BTreeMap<String, Vec<String>>,
    /// Lists named by routes' `id_list`, with the routes naming them.
    pub(super) id_lists_used: BTreeMap<String, Vec<String>>,
}

fn src(t: &RuleText) -> Source<'_> {
    Source {
        name: &t.name,
        text: &t.text,
    }
}

impl Compiler {
    pub(super) fn diag_count(&self) -> usize {
        self.diags.len()
    }

    pub(super) fn err(&mut self, t: &RuleText, span: Range<usize>, msg: impl Into<String>) {
        self.diags.push(src(t).at(Some(span), msg));
    }

    fn run(
        &mut self,
        files: &[(&RuleText, RuleFile)],
        overrides: &[UpstreamOverride],
        source: String,
        n: usize,
        secrets: bool,
    ) -> RuleSet {
        // Site: exactly one file may have it.
        let mut site = None;
        let mut site_at: Option<(&RuleText, &SiteSpec)> = None::<(&RuleText, &SiteSpec)>;
        for (t, f) in files {
            if let Some(s) = &f.site {
                if site_at.is_none() {
                    site_at = Some((t, s.get_ref()));
                }
                if site.is_some() {
                    self.err(
                        t,
                        s.span(),
                        "a second [site] section: the site is set in one file only",
                    );
                } else {
                    site = Some(self.site(t, s.get_ref()));
                    self.site_ids(t, s.get_ref());
                }
            }
        }
        // Upstreams, then overrides.
        for (t, f) in files {
            for (name, u) in &f.upstreams {
                self.upstream(t, name, u);
            }
        }
        for o in overrides {
            match self.upstream_index.get(&o.name) {
                Some(&i) => match parse_origin(&o.url) {
                    Ok((scheme, authority)) => {
                        let u = &mut self.upstreams[i];
                        u.origin = format!("{scheme}://{authority}");
                        u.scheme = scheme;
                        u.authority = authority;
                    }
                    Err(e) => self
                        .diags
                        .push(flag(format!("--upstream {}={}: {e}", o.name, o.url))),
                },
                None => {
                    let known: Vec<&str> = self.upstream_index.keys().map(String::as_str).collect();
                    let hint = did_you_mean(&o.name, known.iter().copied())
                        .unwrap_or_else(|| format!(" (known: {})", sorted(&known)));
                    self.diags.push(flag(format!(
                        "--upstream {}: no upstream of that name in the rules{hint}",
                        o.name
                    )));
                }
            }
        }
        let site_rules = self.site_rules(site_at.map(|(t, _)| t), site_at.map(|(_, s)| s), secrets);
        // Shared rule sets, from every file, before the routes that use them.
        let mut sets: std::collections::BTreeMap<String, Vec<crate::rules::Rule>> =
            Default::default();
        for (t, f) in files {
            for (name, specs) in &f.rulesets {
                if sets.contains_key(name) {
                    if let Some(first) = specs.first() {
                        self.err(
                            t,
                            first.span(),
                            format!("rule set {name:?} is defined twice"),
                        );
                    }
                    continue;
                }
                let rules = self.ruleset(t, specs);
                sets.insert(name.clone(), rules);
            }
        }
        // Routes.
        let mut table = RouteTable::default();
        let mut names: HashMap<String, ()> = HashMap::new();
        let mut placed: Vec<(usize, &RuleText, Range<usize>)> = Vec::new();
        for (t, f) in files {
            for r in &f.routes {
                let name = r.get_ref().name.get_ref();
                if names.insert(name.clone(), ()).is_some() {
                    self.err(
                        t,
                        r.get_ref().name.span(),
                        format!("route name {name:?} is used twice"),
                    );
                    continue;
                }
                if let Some((route, exact, prefixes)) = self.route(t, r.get_ref(), &sets) {
                    placed.push((table.routes().len(), t, r.span()));
                    table.push(route, exact, prefixes);
                }
            }
        }
        self.check_ambiguity(&table, &placed);
        let warnings = self.id_warnings();
        let mut tests = Vec::new();
        for (t, f) in files {
            for spec in &f.tests {
                let (line, _) = super::diag::line_col(&t.text, spec.span().start);
                tests.push((format!("{}:{line}", t.name), spec.get_ref().clone()));
            }
        }
        RuleSet {
            site: site.unwrap_or_default(),
            upstreams: std::mem::take(&mut self.upstreams),
            routes: table,
            source,
            files: n,
            key: site_rules.key,
            key_source: site_rules.key_source,
            inputs: site_rules.inputs,
            tests,
            warnings,
        }
    }

    fn site(&mut self, t: &RuleText, s: &SiteSpec) -> Site {
        let mut site = Site::default();
        for h in &s.hosts {
            match normalize_host_pattern(h.get_ref()) {
                Ok(h) => site.hosts.push(h),
                Err(e) => self.err(t, h.span(), e),
            }
        }
        let mut origins = OriginMatcher::default();
        for o in &s.origins {
            if let Err(e) = origins.add(o.get_ref()) {
                self.err(t, o.span(), e);
            }
        }
        site.origins = origins;
        site
    }

    fn upstream(&mut self, t: &RuleText, name: &str, u: &Spanned<UpstreamSpec>) {
        if !valid_name(name) {
            self.err(
                t,
                u.span(),
                format!("upstream name {name:?}: use letters, digits, `-` and `_`"),
            );
            return;
        }
        if self.upstream_index.contains_key(name) {
            self.err(t, u.span(), format!("upstream {name:?} is defined twice"));
            return;
        }
        let url = &u.get_ref().url;
        match parse_origin(url.get_ref()) {
            Ok((scheme, authority)) => {
                self.upstream_index
                    .insert(name.to_string(), self.upstreams.len());
                self.upstreams.push(Upstream {
                    name: name.to_string(),
                    origin: format!("{scheme}://{authority}"),
                    scheme,
                    authority,
                });
            }
            Err(e) => self.err(t, url.span(), e),
        }
    }

    fn route(
        &mut self,
        t: &RuleText,
        r: &RouteSpec,
        sets: &std::collections::BTreeMap<String, Vec<crate::rules::Rule>>,
    ) -> Option<(Route, Vec<String>, Vec<String>)> {
        let before = self.diags.len();
        let name = r.name.get_ref().clone();
        if !valid_name(&name) {
            self.err(
                t,
                r.name.span(),
                format!("route name {name:?}: use letters, digits, `-` and `_`"),
            );
        }
        let (main, prefix) = match (&r.path, &r.path_prefix) {
            (Some(p), None) => (p, false),
            (None, Some(p)) => (p, true),
            (Some(_), Some(p)) => {
                self.err(
                    t,
                    p.span(),
                    "set either `path` (exact) or `path_prefix`, not both",
                );
                return None;
            }
            (None, None) => {
                self.err(
                    t,
                    r.name.span(),
                    format!("route {name:?} needs `path` (exact) or `path_prefix`"),
                );
                return None;
            }
        };
        let mut paths = Vec::new();
        for p in std::iter::once(main).chain(&r.aliases) {
            match check_path(p.get_ref(), prefix) {
                Ok(()) => paths.push(p.get_ref().clone()),
                Err(e) => self.err(t, p.span(), e),
            }
        }
        let upstream_path = match &r.upstream_path {
            Some(u) => match check_path(u.get_ref(), prefix) {
                Ok(()) => u.get_ref().clone(),
                Err(e) => {
                    self.err(t, u.span(), format!("upstream_path: {e}"));
                    String::new()
                }
            },
            None => main.get_ref().clone(),
        };
        let mut methods = MethodSet::default();
        match &r.methods {
            None => {
                methods.insert_name("GET");
                methods.insert_name("POST");
            }
            Some(ms) => {
                for m in ms {
                    if !methods.insert_name(&m.get_ref().to_ascii_uppercase()) {
                        let known: Vec<&str> = MethodSet::known().collect();
                        self.err(
                            t,
                            m.span(),
                            format!(
                                "method {:?} is not one a route can allow (use {})",
                                m.get_ref(),
                                known.join(", ")
                            ),
                        );
                    }
                }
                if ms.is_empty() {
                    self.err(
                        t,
                        r.name.span(),
                        "`methods` is empty: list at least one method",
                    );
                }
            }
        }
        let hosts = r.hosts.as_ref().map(|hs| {
            hs.iter()
                .filter_map(|h| match normalize_host_pattern(h.get_ref()) {
                    Ok(h) => Some(h),
                    Err(e) => {
                        self.err(t, h.span(), e);
                        None
                    }
                })
                .collect()
        });
        let upstream = match self.upstream_index.get(r.upstream.get_ref()) {
            Some(&i) => i,
            None => {
                let known: Vec<&str> = self.upstream_index.keys().map(String::as_str).collect();
                let hint = did_you_mean(r.upstream.get_ref(), known.iter().copied())
                    .unwrap_or_else(|| format!(" (defined: {})", sorted(&known)));
                self.err(
                    t,
                    r.upstream.span(),
                    format!("no upstream named {:?}{hint}", r.upstream.get_ref()),
                );
                0
            }
        };
        let mut cookies = Vec::new();
        for c in &r.cookies {
            if c.get_ref().is_empty() || !c.get_ref().bytes().all(is_token_byte) {
                self.err(
                    t,
                    c.span(),
                    format!("cookie name {:?} is not a valid cookie name", c.get_ref()),
                );
            } else {
                cookies.push(c.get_ref().clone());
            }
        }
        let mut forward_headers = Vec::new();
        for h in &r.forward_headers {
            let lower = h.get_ref().to_ascii_lowercase();
            if RESERVED_HEADERS.contains(&lower.as_str()) {
                let why = if lower == "cookie" {
                    "; name cookies with `cookies = [...]`"
                } else {
                    ""
                };
                self.err(t, h.span(), format!("header {:?} is governed by the gateway's header policy and cannot be forwarded{why}", h.get_ref()));
                continue;
            }
            match HeaderName::from_bytes(lower.as_bytes()) {
                Ok(n) => forward_headers.push(n),
                Err(_) => self.err(
                    t,
                    h.span(),
                    format!("{:?} is not a valid header name", h.get_ref()),
                ),
            }
        }
        let max_body = match &r.max_body {
            None => DEFAULT_MAX_BODY,
            Some(s) => match s.get_ref().parse::<bytesize::ByteSize>() {
                Ok(b) => b.as_u64(),
                Err(_) => {
                    self.err(
                        t,
                        s.span(),
                        format!(
                            "max_body {:?}: write a size like \"64KiB\" or \"1MB\"",
                            s.get_ref()
                        ),
                    );
                    0
                }
            },
        };
        let program = self.program(t, r, sets);
        let answer = r.answer.as_ref().and_then(|a| self.answer(t, a));
        let script = r.script.as_ref().and_then(|s| {
            let facts = crate::scripts::RouteFacts {
                name: &name,
                upstream_origin: self.upstreams.get(upstream).map_or("", |u| &u.origin),
                upstream_path: &upstream_path,
                get_only: !methods.overlaps(&MethodSet::except_get_and_head()),
                has_rules: !r.rules.is_empty() || !r.rulesets.is_empty(),
                scan_off: r.scan == Some(false),
            };
            match crate::scripts::compile(s.get_ref(), &facts) {
                Ok(p) => Some(std::sync::Arc::new(p)),
                Err(errs) => {
                    for e in errs {
                        self.err(t, e.span.unwrap_or(s.span()), e.msg);
                    }
                    None
                }
            }
        });
        if script.is_some() {
            self.script_id_fields(t, r);
        }
        let delivery = r
            .delivery
            .as_ref()
            .map_or(Delivery::Relay, |d| *d.get_ref());
        if delivery == Delivery::Queue && r.script.is_some() {
            self.err(
                t,
                r.name.span(),
                format!("route {name:?} is a script route, which serves the vendor's script: it cannot be queued (delivery = \"queue\" answers every browser with the fixed `answer`); remove `delivery`"),
            );
        }
        if delivery == Delivery::Queue && max_body > crate::spool::record::MAX_PAYLOAD as u64 {
            self.err(
                t,
                r.name.span(),
                format!("route {name:?} is queued, and a spool record holds at most 64MiB: lower max_body or set delivery = \"relay\""),
            );
        }
        if delivery == Delivery::Queue && r.set_cookie {
            self.err(
                t,
                r.name.span(),
                format!("route {name:?} is queued (delivery = \"queue\"), so the vendor's Set-Cookie can never reach the browser: set delivery = \"relay\" or drop set_cookie"),
            );
        }
        if self.diags.len() > before {
            return None;
        }
        let (exact, prefixes) = if prefix {
            (Vec::new(), paths)
        } else {
            (paths, Vec::new())
        };
        let route = Route {
            name,
            hosts,
            allow: methods.header_value(),
            methods,
            upstream,
            upstream_path,
            forward_ip: r
                .forward_ip
                .as_ref()
                .map_or(ForwardIp::Anonymized, |f| *f.get_ref()),
            cookies,
            set_cookie: r.set_cookie,
            forward_headers,
            max_body,
            program,
            delivery,
            on_spool_full: r
                .on_spool_full
                .as_ref()
                .map_or(OnSpoolFull::Relay, |o| *o.get_ref()),
            answer: answer.unwrap_or_default(),
            on_undecodable: r
                .on_undecodable
                .as_ref()
                .map_or(OnUndecodable::Reject, |o| *o.get_ref()),
            script,
        };
        Some((route, exact, prefixes))
    }

    /// Two routes that can both claim one request make the outcome depend on file order:
    /// refuse that, pointing at the second route.
    fn check_ambiguity(&mut self, table: &RouteTable, placed: &[(usize, &RuleText, Range<usize>)]) {
        let routes = table.routes();
        let clash = |a: &Route, b: &Route| {
            a.methods.overlaps(&b.methods)
                && match (&a.hosts, &b.hosts) {
                    (Some(x), Some(y)) => x.iter().any(|h| y.contains(h)),
                    _ => true,
                }
        };
        let mut reported = Vec::new();
        for (path, idx) in table.exact_paths() {
            for (k, &j) in idx.iter().enumerate() {
                if let Some(&i) = idx[..k].iter().find(|&&i| clash(&routes[i], &routes[j])) {
                    reported.push((j, format!("route {:?} and route {:?} both match {path}: give them different hosts or methods", routes[i].name, routes[j].name)));
                }
            }
        }
        let prefixes = table.prefix_paths();
        for (k, (p, j)) in prefixes.iter().enumerate() {
            if let Some((_, i)) = prefixes[..k]
                .iter()
                .find(|(q, i)| q == p && clash(&routes[*i], &routes[*j]))
            {
                reported.push((
                    *j,
                    format!(
                        "route {:?} and route {:?} both match the prefix {p}",
                        routes[*i].name, routes[*j].name
                    ),
                ));
            }
        }
        for (j, msg) in reported {
            if let Some((_, t, span)) = placed.iter().find(|(i, _, _)| *i == j) {
                self.err(t, span.clone(), msg);
            }
        }
    }
}

impl Compiler {
    fn answer(&mut self, t: &RuleText, a: &Spanned<AnswerSpec>) -> Option<crate::ruleset::Answer> {
        let spec = a.get_ref();
        let Ok(status) = http::StatusCode::from_u16(spec.status) else {
            self.err(
                t,
                a.span(),
                format!("answer: {} is not an HTTP status", spec.status),
            );
            return None;
        };
        let body = match (&spec.body, &spec.body_base64) {
            (Some(_), Some(_)) => {
                self.err(t, a.span(), "answer: set body or body_base64, not both");
                return None;
            }
            (Some(b), None) => bytes::Bytes::from(b.clone()),
            (None, Some(b)) => match crate::decode::wrap::base64_decode(b) {
                Some((bytes, _)) => bytes::Bytes::from(bytes),
                None => {
                    self.err(t, a.span(), "answer: body_base64 is not valid base64");
                    return None;
                }
            },
            (None, None) => bytes::Bytes::new(),
        };
        let content_type = match &spec.content_type {
            Some(c) => match http::HeaderValue::from_str(c) {
                Ok(v) => Some(v),
                Err(_) => {
                    self.err(
                        t,
                        a.span(),
                        format!("answer: content_type {c:?} is not a valid header value"),
                    );
                    return None;
                }
            },
            None => None,
        };
        Some(crate::ruleset::Answer {
            status,
            content_type,
            body,
        })
    }
}

fn flag(message: String) -> Diagnostic {
    Diagnostic {
        file: "command line".into(),
        line: 0,
        col: 0,
        message,
    }
}

fn sorted(names: &[&str]) -> String {
    let set: BTreeMap<&str, ()> = names.iter().map(|n| (*n, ())).collect();
    let v: Vec<&str> = set.into_keys().collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// A name of a route, upstream, rule set or id list: letters, digits, `-`, `_`, `.`.
pub(super) fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Lower-cases a host name or `*.parent` pattern and checks its characters.
fn normalize_host_pattern(h: &str) -> Result<String, String> {
    let lower = h.trim().to_ascii_lowercase();
    let body = lower.strip_prefix("*.").unwrap_or(&lower);
    let ok = !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b':')
        && !body.starts_with('.')
        && !body.contains('*');
    if ok {
        Ok(lower)
    } else {
        Err(format!(
            "host {h:?}: write a host name without scheme or port (metrics.shop.example, or *.shop.example)"
        ))
    }
}

/// Checks a route path: starts with `/`, no query or fragment, no dot segments, and for
/// prefixes a trailing `/` (so `/ingest/` never matches `/ingestion`).
fn check_path(p: &str, prefix: bool) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("path {p:?} must start with `/`"));
    }
    if p.bytes()
        .any(|b| b <= b' ' || b == b'?' || b == b'#' || b >= 0x7f)
    {
        return Err(format!(
            "path {p:?} may not contain spaces, `?`, `#` or non-ASCII bytes"
        ));
    }
    if has_dot_segment(p) {
        return Err(format!("path {p:?} may not contain `.` or `..` segments"));
    }
    if prefix && !p.ends_with('/') {
        return Err(format!(
            "path_prefix {p:?} must end with `/` (so it matches whole path segments)"
        ));
    }
    Ok(())
}

/// Whether a path has a `.` or `..` segment, also percent-encoded (`%2e`). Used at load time
/// and on every request, so it does not allocate.
pub fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|seg| {
        let mut b = seg.as_bytes();
        let mut dots = 0;
        while !b.is_empty() {
            if b[0] == b'.' {
                b = &b[1..];
            } else if b.len() >= 3 && b[0] == b'%' && b[1] == b'2' && (b[2] | 0x20) == b'e' {
                b = &b[3..];
            } else {
                return false;
            }
            dots += 1;
        }
        (1..=2).contains(&dots)
    })
}

/// Parses `scheme://host[:port]` into what the upstream client needs.
fn parse_origin(url: &str) -> Result<(Scheme, http::uri::Authority), String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("upstream url {url:?} is not a URL: {e}"))?;
    let scheme = match uri.scheme_str() {
        Some("https") => Scheme::HTTPS,
        Some("http") => Scheme::HTTP,
        _ => {
            return Err(format!(
                "upstream url {url:?} must start with https:// or http://"
            ));
        }
    };
    let Some(authority) = uri.authority().cloned() else {
        return Err(format!("upstream url {url:?} has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(format!(
            "upstream url {url:?} may not carry user credentials"
        ));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "upstream url {url:?} must be an origin only (no path or query); put the path in the route's upstream_path"
        ));
    }
    Ok((scheme, authority))
}
