//! Compiling rules: `[[route.rule]]` and `[[ruleset.NAME]]` tables → [`Rule`]s, each route's
//! [`Program`], and the site's hashing key and condition inputs. Selectors, regexes and
//! templates are parsed here, once, with `file:line:col` for every mistake.

use std::collections::BTreeMap;
use std::ops::Range;

use ipnet::IpNet;
use regex::Regex;
use toml::Spanned;

use super::RuleText;
use super::compile::Compiler;
use super::diag::{did_you_mean, line_col};
use super::model::{CondSpec, RouteSpec, RuleSpec, SiteSpec};
use crate::decode::Codec;
use crate::rules::action::{Action, HashAlg, HmacKey, Piece, Replace, StripUrl, kinds_from};
use crate::rules::cond::{BOT_PATTERN, Cond, ConsentCookie, Purpose, SiteInputs};
use crate::rules::detect::Kinds;
use crate::rules::scan::Scan;
use crate::rules::select::{KeyPat, Scope, Selector};
use crate::rules::{Program, Rule};

/// The action keys of a rule table.
const ACTIONS: [&str; 9] = [
    "drop",
    "keep",
    "hash",
    "redact",
    "strip_url",
    "truncate_ip",
    "set",
    "rename",
    "drop_request",
];

/// The cookie TCF consent platforms keep the TC string in (IAB's recommended name).
pub const DEFAULT_TCF_COOKIE: &str = "euconsent-v2";

/// Site-level compiled rule inputs.
pub struct SiteRules {
    pub key: HmacKey,
    /// Where the key came from, for the start-up log.
    pub key_source: String,
    pub inputs: SiteInputs,
}

impl Compiler {
    /// The hashing key and condition inputs from `[site]`.
    pub(super) fn site_rules(
        &mut self,
        t: Option<&RuleText>,
        s: Option<&SiteSpec>,
        secrets: bool,
    ) -> SiteRules {
        let mut key_bytes: Vec<u8> = Vec::new();
        let mut key_source =
            "a random key made at start (hashes change at each restart; set [site] hash_key to keep them stable)"
                .to_string();
        if let (Some(t), Some(src)) = (t, s.and_then(|s| s.hash_key.as_ref())) {
            let ks = src.get_ref();
            match (&ks.env, &ks.file) {
                (Some(var), None) => {
                    key_source = format!("environment variable {var}");
                    match std::env::var(var) {
                        Ok(v) if !v.is_empty() => key_bytes = v.into_bytes(),
                        _ if !secrets => {}
                        _ => self.err(t, src.span(), format!("hash_key: environment variable {var} is not set (or empty)")),
                    }
                }
                (None, Some(path)) => {
                    key_source = format!("file {path}");
                    match std::fs::read(path) {
                        Ok(v) if !v.trim_ascii().is_empty() => key_bytes = v.trim_ascii().to_vec(),
                        Ok(_) if secrets => self.err(t, src.span(), format!("hash_key: file {path} is empty")),
                        Err(e) if secrets => self.err(t, src.span(), format!("hash_key: cannot read {path}: {e}")),
                        _ => {}
                    }
                }
                _ => self.err(t, src.span(), "hash_key: write either { env = \"VAR\" } or { file = \"/path\" }; the key itself never goes in a rule file"),
            }
        }
        if key_bytes.is_empty() {
            key_bytes = random_key();
        }
        let key = <HmacKey as hmac::Mac>::new_from_slice(&key_bytes)
            .expect("HMAC takes keys of any length");
        let mut bots = vec![BOT_PATTERN.to_string()];
        let mut consent_cookie = None;
        let tcf_cookie = match s.and_then(|s| s.tcf_cookie.as_ref()) {
            Some(c) if c.is_empty() => None,
            Some(c) => Some(c.clone()),
            None => Some(DEFAULT_TCF_COOKIE.to_string()),
        };
        if let (Some(t), Some(s)) = (t, s) {
            for b in &s.bots {
                match Regex::new(b.get_ref()) {
                    Ok(_) => bots.push(format!("(?:{})", b.get_ref())),
                    Err(e) => self.err(t, b.span(), format!("bots: invalid regex: {e}")),
                }
            }
            if let Some(cc) = &s.consent_cookie {
                let c = cc.get_ref();
                let tokens: Vec<(Purpose, String)> = [
                    (Purpose::Analytics, &c.analytics),
                    (Purpose::Ads, &c.ads),
                    (Purpose::AdUserData, &c.ad_user_data),
                    (Purpose::AdPersonalization, &c.ad_personalization),
                ]
                .into_iter()
                .filter_map(|(p, tok)| tok.clone().map(|t| (p, t)))
                .collect();
                if tokens.is_empty() {
                    self.err(t, cc.span(), "consent_cookie: name at least one purpose token (analytics, ads, ad_user_data, ad_personalization)");
                }
                consent_cookie = Some(ConsentCookie {
                    name: c.name.clone(),
                    tokens,
                });
            }
        }
        let bots = Regex::new(&bots.join("|"))
            .unwrap_or_else(|_| Regex::new(BOT_PATTERN).expect("built-in pattern"));
        SiteRules {
            key,
            key_source,
            inputs: SiteInputs {
                consent_cookie,
                tcf_cookie,
                bots,
            },
        }
    }

    /// A route's program: its rule sets (by name), its own rules, the scan.
    pub(super) fn program(
        &mut self,
        t: &RuleText,
        r: &RouteSpec,
        sets: &BTreeMap<String, Vec<Rule>>,
    ) -> Program {
        let codec = r.codec.as_ref().map_or(Codec::Auto, |c| *c.get_ref());
        let mut rules = Vec::new();
        for name in &r.rulesets {
            match sets.get(name.get_ref()) {
                Some(rs) => rules.extend(rs.iter().cloned()),
                None => {
                    let hint = did_you_mean(name.get_ref(), sets.keys().map(String::as_str))
                        .unwrap_or_default();
                    self.err(
                        t,
                        name.span(),
                        format!("no rule set named {:?}{hint}", name.get_ref()),
                    );
                }
            }
        }
        for spec in &r.rules {
            if let Some(rule) = self.rule(t, spec) {
                rules.push(rule);
            }
        }
        let selectors = |c: &mut Compiler, list: &[Spanned<String>]| -> Vec<Selector> {
            list.iter().filter_map(|s| c.selector(t, s)).collect()
        };
        let nested = selectors(self, &r.nested);
        let events = r.events.as_ref().and_then(|e| self.selector(t, e));
        let default_field = if codec == Codec::Ga4 { "en" } else { "event" };
        let event_field = match &r.event_field {
            Some(f) => self.selector(t, f),
            None => Selector::parse(default_field).ok(),
        }
        .unwrap_or_else(|| Selector::parse("event").expect("valid"));
        let scan = if r.scan == Some(false) {
            None
        } else {
            let kinds = match &r.scan_detectors {
                Some(d) => kinds_from(d.get_ref()).unwrap_or_else(|e| {
                    self.err(t, d.span(), format!("scan_detectors: {e}"));
                    Kinds::all()
                }),
                None => Kinds::all(),
            };
            let replace = match &r.scan_replace {
                Some(s) => self.replace_mode(t, s, None),
                None => Replace::Placeholder(None),
            };
            Some(Scan::new(kinds, selectors(self, &r.scan_exempt), replace))
        };
        let ids = self.id_check(t, r);
        Program {
            codec,
            rules,
            scan,
            events,
            event_field,
            nested,
            ids,
            keys: Default::default(),
            reads_consent: false,
        }
        .index_keys()
    }

    /// Compiles a rule set, `[[ruleset.NAME]]`.
    pub(super) fn ruleset(&mut self, t: &RuleText, specs: &[Spanned<RuleSpec>]) -> Vec<Rule> {
        specs.iter().filter_map(|s| self.rule(t, s)).collect()
    }

    pub(super) fn selector(&mut self, t: &RuleText, s: &Spanned<String>) -> Option<Selector> {
        match Selector::parse(s.get_ref()) {
            Ok(sel) => Some(sel),
            Err(e) => {
                self.err(t, s.span(), format!("field selector {e}"));
                None
            }
        }
    }

    /// A selector of a payload field: `header:` and `cookie:` are refused with `why`.
    pub(super) fn payload_selector(
        &mut self,
        t: &RuleText,
        s: &Spanned<String>,
        why: &str,
    ) -> Option<Selector> {
        let sel = self.selector(t, s)?;
        if matches!(sel.scope, Scope::Header(_) | Scope::Cookie(_)) {
            self.err(t, s.span(), format!("{:?}: {why}", s.get_ref()));
            return None;
        }
        Some(sel)
    }

    fn replace_mode(
        &mut self,
        t: &RuleText,
        s: &Spanned<String>,
        placeholder: Option<String>,
    ) -> Replace {
        match s.get_ref().as_str() {
            "placeholder" => Replace::Placeholder(placeholder),
            "hash" => Replace::Hash,
            other => {
                self.err(
                    t,
                    s.span(),
                    format!("replace = {other:?}: write \"placeholder\" or \"hash\""),
                );
                Replace::Placeholder(None)
            }
        }
    }

    /// One rule table.
    fn rule(&mut self, t: &RuleText, spec: &Spanned<RuleSpec>) -> Option<Rule> {
        let r = spec.get_ref();
        let before = self.diag_count();
        let present: Vec<&str> = [
            r.drop.is_some(),
            r.keep.is_some(),
            r.hash.is_some(),
            r.redact.is_some(),
            r.strip_url.is_some(),
            r.truncate_ip.is_some(),
            r.set.is_some(),
            r.rename.is_some(),
            r.drop_request.is_some(),
        ]
        .iter()
        .zip(ACTIONS)
        .filter_map(|(p, n)| p.then_some(n))
        .collect();
        let span = spec.span();
        if present.len() != 1 {
            let msg = if present.is_empty() {
                format!("a rule needs one action: {}", ACTIONS.join(", "))
            } else {
                format!(
                    "one action per rule; this one has {}: split it into several [[rule]] tables",
                    present.join(" and ")
                )
            };
            self.err(t, span, msg);
            return None;
        }
        let verb = present[0];
        self.check_options(t, r, verb, span.clone());
        let sels = |c: &mut Compiler, l: &Option<Vec<Spanned<String>>>| -> Vec<Selector> {
            l.iter()
                .flatten()
                .filter_map(|s| {
                    c.payload_selector(
                        t,
                        s,
                        "rules change the payload, not headers or cookies (headers leave by \
                         the route's allowlist, cookies only when `cookies` names them)",
                    )
                })
                .collect()
        };
        let action = match verb {
            "drop" => Action::Drop(sels(self, &r.drop)),
            "keep" => Action::Keep(sels(self, &r.keep)),
            "hash" => Action::Hash {
                fields: sels(self, &r.hash),
                normalize: r.normalize.as_ref().map(|n| *n.get_ref()),
                alg: r
                    .algorithm
                    .as_ref()
                    .map_or(HashAlg::HmacSha256, |a| *a.get_ref()),
            },
            "redact" => {
                let kinds = match &r.detectors {
                    Some(d) => kinds_from(d.get_ref()).unwrap_or_else(|e| {
                        self.err(t, d.span(), e);
                        Kinds::none()
                    }),
                    None if r.patterns.is_some() => Kinds::none(),
                    None => Kinds::all(),
                };
                let patterns = r
                    .patterns
                    .iter()
                    .flatten()
                    .filter_map(|p| self.regex(t, p))
                    .collect();
                let replace = match &r.replace {
                    Some(s) => self.replace_mode(t, s, r.placeholder.clone()),
                    None => Replace::Placeholder(r.placeholder.clone()),
                };
                Action::Redact {
                    fields: sels(self, &r.redact),
                    kinds,
                    patterns,
                    replace,
                }
            }
            "strip_url" => {
                let globs = |v: &Option<Spanned<Vec<String>>>| -> Vec<KeyPat> {
                    v.iter()
                        .flat_map(|s| s.get_ref().iter())
                        .map(|g| glob_pat(g))
                        .collect()
                };
                let mut segments = Vec::new();
                if let Some(ps) = &r.path_segments {
                    for (re, with) in ps.get_ref() {
                        match Regex::new(re) {
                            Ok(re) => segments.push((re, with.clone())),
                            Err(e) => self.err(
                                t,
                                ps.span(),
                                format!("path_segments: invalid regex {re:?}: {e}"),
                            ),
                        }
                    }
                }
                let how = StripUrl {
                    keep: globs(&r.keep_params),
                    drop: globs(&r.drop_params),
                    keep_fragment: r.keep_fragment.unwrap_or(false),
                    segments,
                };
                Action::StripUrl {
                    fields: sels(self, &r.strip_url),
                    how,
                }
            }
            "truncate_ip" => Action::TruncateIp {
                fields: sels(self, &r.truncate_ip),
                v4: r.v4_bits.unwrap_or(24).min(32),
                v6: r.v6_bits.unwrap_or(48).min(128),
            },
            "set" => {
                let m = r.set.as_ref().expect("present");
                let mut pairs = Vec::new();
                for (field, tpl) in m.get_ref() {
                    let sel = self.exact_selector(t, m.span(), field);
                    match (sel, template(tpl)) {
                        (Some(s), Ok(p)) => pairs.push((s, p)),
                        (_, Err(e)) => self.err(t, m.span(), format!("set {field}: {e}")),
                        _ => {}
                    }
                }
                Action::Set(pairs)
            }
            "rename" => {
                let m = r.rename.as_ref().expect("present");
                let mut pairs = Vec::new();
                for (from, to) in m.get_ref() {
                    if let Some(s) = self.exact_selector(t, m.span(), from) {
                        pairs.push((s, to.clone()));
                    }
                }
                Action::Rename(pairs)
            }
            _ => {
                if r.drop_request == Some(false) {
                    self.err(
                        t,
                        span.clone(),
                        "drop_request = false does nothing; remove the rule",
                    );
                }
                Action::DropRequest
            }
        };
        let when = r
            .when
            .as_ref()
            .map(|c| self.conds(t, c))
            .unwrap_or_default();
        let unless = r
            .unless
            .as_ref()
            .map(|c| self.conds(t, c))
            .unwrap_or_default();
        if self.diag_count() > before {
            return None;
        }
        let fields: Vec<String> = match &action {
            Action::Drop(s) | Action::Keep(s) => s.iter().map(|s| s.text.clone()).collect(),
            Action::Hash { fields, .. }
            | Action::Redact { fields, .. }
            | Action::StripUrl { fields, .. }
            | Action::TruncateIp { fields, .. } => fields.iter().map(|s| s.text.clone()).collect(),
            Action::Set(p) => p.iter().map(|(s, _)| s.text.clone()).collect(),
            Action::Rename(p) => p.iter().map(|(s, to)| format!("{s}→{to}")).collect(),
            Action::DropRequest => vec![],
        };
        let label = r.name.clone().unwrap_or_else(|| {
            format!("{verb} {}", fields.join(", "))
                .trim_end()
                .to_string()
        });
        let (line, _) = line_col(&t.text, span.start);
        Some(Rule::new(
            label,
            format!("{}:{line}", t.name),
            action,
            when,
            unless,
        ))
    }

    /// Options that belong to another action are mistakes: say so.
    fn check_options(&mut self, t: &RuleText, r: &RuleSpec, verb: &str, span: Range<usize>) {
        let opts: [(&str, bool, &[&str]); 12] = [
            ("normalize", r.normalize.is_some(), &["hash"]),
            ("algorithm", r.algorithm.is_some(), &["hash"]),
            ("detectors", r.detectors.is_some(), &["redact"]),
            ("patterns", r.patterns.is_some(), &["redact"]),
            ("replace", r.replace.is_some(), &["redact"]),
            ("placeholder", r.placeholder.is_some(), &["redact"]),
            ("keep_params", r.keep_params.is_some(), &["strip_url"]),
            ("drop_params", r.drop_params.is_some(), &["strip_url"]),
            ("keep_fragment", r.keep_fragment.is_some(), &["strip_url"]),
            ("path_segments", r.path_segments.is_some(), &["strip_url"]),
            ("v4_bits", r.v4_bits.is_some(), &["truncate_ip"]),
            ("v6_bits", r.v6_bits.is_some(), &["truncate_ip"]),
        ];
        for (name, set, allowed) in opts {
            if set && !allowed.contains(&verb) {
                self.err(
                    t,
                    span.clone(),
                    format!(
                        "`{name}` applies to {} rules, not to {verb}",
                        allowed.join("/")
                    ),
                );
            }
        }
        if verb == "strip_url" && r.keep_params.is_some() && r.drop_params.is_some() {
            self.err(
                t,
                span,
                "strip_url: use keep_params (an allowlist) or drop_params (a denylist), not both",
            );
        }
    }

    fn exact_selector(
        &mut self,
        t: &RuleText,
        span: Range<usize>,
        field: &str,
    ) -> Option<Selector> {
        match Selector::parse(field) {
            Ok(s) if matches!(s.scope, Scope::Header(_) | Scope::Cookie(_)) => {
                self.err(
                    t,
                    span,
                    format!("{field:?}: rules change the payload, not headers or cookies"),
                );
                None
            }
            Ok(s) if s.is_exact() => Some(s),
            Ok(_) => {
                self.err(
                    t,
                    span,
                    format!("{field:?}: set and rename need one exact field, without wildcards"),
                );
                None
            }
            Err(e) => {
                self.err(t, span, format!("field selector {e}"));
                None
            }
        }
    }

    fn regex(&mut self, t: &RuleText, s: &Spanned<String>) -> Option<Regex> {
        match Regex::new(s.get_ref()) {
            Ok(r) => Some(r),
            Err(e) => {
                self.err(t, s.span(), format!("invalid regex: {e}"));
                None
            }
        }
    }

    fn conds(&mut self, t: &RuleText, c: &Spanned<CondSpec>) -> Vec<Cond> {
        let spec = c.get_ref();
        let mut out = Vec::new();
        for p in spec.present.iter().flatten() {
            if let Some(s) = self.selector(t, p) {
                out.push(Cond::Present(s));
            }
        }
        if let Some(eq) = &spec.equals {
            for (f, v) in eq.get_ref() {
                match Selector::parse(f) {
                    Ok(s) => out.push(Cond::Equals(s, v.clone())),
                    Err(e) => self.err(t, eq.span(), format!("equals: field selector {e}")),
                }
            }
        }
        if let Some(m) = &spec.matches {
            for (f, re) in m.get_ref() {
                match (Selector::parse(f), Regex::new(re)) {
                    (Ok(s), Ok(re)) => out.push(Cond::Matches(s, re)),
                    (Err(e), _) => self.err(t, m.span(), format!("matches: field selector {e}")),
                    (_, Err(e)) => {
                        self.err(t, m.span(), format!("matches {f}: invalid regex: {e}"))
                    }
                }
            }
        }
        if let Some(ev) = &spec.event {
            out.push(Cond::Event(ev.clone()));
        }
        if let Some(g) = spec.gpc {
            out.push(Cond::Gpc(g));
        }
        for (list, denied) in [(&spec.consent_denied, true), (&spec.consent_granted, false)] {
            let Some(l) = list else { continue };
            let mut ps = Vec::new();
            for name in l.get_ref() {
                match Purpose::from_name(name) {
                    Some(p) => ps.push(p),
                    None => {
                        let hint = did_you_mean(name, Purpose::NAMES).unwrap_or_default();
                        self.err(
                            t,
                            l.span(),
                            format!(
                                "unknown consent purpose {name:?} (purposes: {}){hint}",
                                Purpose::NAMES.join(", ")
                            ),
                        );
                    }
                }
            }
            out.push(if denied {
                Cond::ConsentDenied(ps)
            } else {
                Cond::ConsentGranted(ps)
            });
        }
        if let Some(ips) = &spec.client_ip {
            let mut nets = Vec::new();
            for n in ips.get_ref() {
                match n
                    .parse::<IpNet>()
                    .or_else(|_| n.parse::<std::net::IpAddr>().map(IpNet::from))
                {
                    Ok(net) => nets.push(net),
                    Err(_) => self.err(
                        t,
                        ips.span(),
                        format!("client_ip: {n:?} is not an address or CIDR (like 10.0.0.0/8)"),
                    ),
                }
            }
            out.push(Cond::ClientIp(nets));
        }
        if let Some(b) = spec.bot {
            out.push(Cond::Bot(b));
        }
        out
    }
}

fn glob_pat(g: &str) -> KeyPat {
    KeyPat::new(g)
}

/// Parses a `set` template: text with `{client_ip}`, `{client_ip_anonymized}`,
/// `{client_ip/16/32}` (prefix lengths), `{header:NAME}`, `{cookie:NAME}`; `{{` and `}}` for
/// literal braces.
pub fn template(s: &str) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut rest = s;
    while let Some(i) = rest.find(['{', '}']) {
        text.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            text.push(tail.as_bytes()[0] as char);
            rest = &tail[2..];
            continue;
        }
        if tail.starts_with('}') {
            return Err("unmatched `}` (write `}}` for a literal brace)".into());
        }
        let end = tail.find('}').ok_or("unclosed `{`")?;
        let name = &tail[1..end];
        if !text.is_empty() {
            out.push(Piece::Text(std::mem::take(&mut text)));
        }
        out.push(match name {
            "client_ip" => Piece::ClientIp { v4: 32, v6: 128 },
            "client_ip_anonymized" => Piece::ClientIp { v4: 24, v6: 48 },
            n if n.starts_with("client_ip/") => {
                let mut it = n["client_ip/".len()..].split('/');
                let v4 = it.next().and_then(|x| x.parse::<u8>().ok()).filter(|b| *b <= 32);
                let v6 = it.next().and_then(|x| x.parse::<u8>().ok()).filter(|b| *b <= 128);
                match (v4, v6) {
                    (Some(v4), Some(v6)) => Piece::ClientIp { v4, v6 },
                    _ => return Err(format!("{{{n}}}: write {{client_ip/24/48}} (IPv4 and IPv6 prefix lengths)")),
                }
            }
            n if n.starts_with("header:") => Piece::Header(n["header:".len()..].to_ascii_lowercase()),
            n if n.starts_with("cookie:") => Piece::Cookie(n["cookie:".len()..].to_string()),
            n => {
                return Err(format!(
                    "unknown placeholder {{{n}}} (use client_ip, client_ip_anonymized, client_ip/V4/V6, header:NAME, cookie:NAME)"
                ));
            }
        });
        rest = &tail[end + 1..];
    }
    text.push_str(rest);
    if !text.is_empty() {
        out.push(Piece::Text(text));
    }
    Ok(out)
}

/// The key used when a site names none: random, made once per process so that hashes stay
/// the same across reloads (but not across restarts).
fn random_key() -> Vec<u8> {
    static KEY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    KEY.get_or_init(fresh_random_key).clone()
}

fn fresh_random_key() -> Vec<u8> {
    let mut k = vec![0u8; 32];
    if rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut k)
        .is_err()
    {
        // The OS random source failed: fall back to the clock; still per-process.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        k[..16].copy_from_slice(&t.as_nanos().to_le_bytes());
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        assert_eq!(
            template("{client_ip_anonymized}").unwrap(),
            vec![Piece::ClientIp { v4: 24, v6: 48 }]
        );
        assert_eq!(
            template("ua={header:User-Agent}!").unwrap(),
            vec![
                Piece::Text("ua=".into()),
                Piece::Header("user-agent".into()),
                Piece::Text("!".into())
            ]
        );
        assert_eq!(template("{{x}}").unwrap(), vec![Piece::Text("{x}".into())]);
        assert!(template("{nope}").is_err());
        assert!(template("{client_ip/33/48}").is_err());
        assert!(template("{oops").is_err());
    }
}
