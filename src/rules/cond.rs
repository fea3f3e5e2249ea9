//! Conditions on rules (`when` / `unless`), and the request context they read: headers,
//! cookies, the client address, `Sec-GPC`, consent signals (GA4 `gcs`/`gcd`, an IAB TCF v2
//! string in `gdpr_consent` or the TCF cookie, the site's consent cookie) and the bot list.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;
use regex::Regex;

use super::select::Selector;
use super::walk;
use crate::decode::{Doc, Value};

/// A consent purpose, in Google Consent Mode's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `ad_storage`: advertising identifiers and click ids.
    Ads,
    /// `analytics_storage`.
    Analytics,
    AdUserData,
    AdPersonalization,
}

impl Purpose {
    pub const NAMES: [&'static str; 4] = ["ads", "analytics", "ad_user_data", "ad_personalization"];

    pub fn from_name(s: &str) -> Option<Purpose> {
        Some(match s {
            "ads" | "ad_storage" => Purpose::Ads,
            "analytics" | "analytics_storage" => Purpose::Analytics,
            "ad_user_data" => Purpose::AdUserData,
            "ad_personalization" => Purpose::AdPersonalization,
            _ => return None,
        })
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What the request says about one purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Signal {
    #[default]
    Unknown,
    Granted,
    Denied,
}

/// The site's consent cookie: its name and the token in its value that grants each purpose
/// (`site_consent=analytics,ads` grants both; a cookie without a purpose's token denies it).
#[derive(Debug, Clone, Default)]
pub struct ConsentCookie {
    pub name: String,
    pub tokens: Vec<(Purpose, String)>,
}

/// Site-wide inputs of conditions.
#[derive(Debug, Clone)]
pub struct SiteInputs {
    pub consent_cookie: Option<ConsentCookie>,
    /// The cookie holding an IAB TCF v2 string (`euconsent-v2` unless the site names another;
    /// `None`: only the URL's `gdpr_consent` is read).
    pub tcf_cookie: Option<String>,
    pub bots: Regex,
}

/// Substrings of User-Agents that belong to crawlers, monitors and headless tools.
pub const BOT_PATTERN: &str = "(?i)bot|crawl|spider|slurp|facebookexternalhit|headless|lighthouse|pingdom|uptime|monitor|curl/|wget/|python-requests|go-http-client|java/|okhttp|httpclient|phantomjs|selenium|puppeteer|playwright|preview";

/// The request as conditions and templates see it.
pub struct Ctx<'r> {
    pub headers: &'r HeaderMap,
    pub client_ip: IpAddr,
    pub site: &'r SiteInputs,
    /// The request's TC string, decoded at most once (`None` inside: none, or unreadable).
    pub tcf: std::cell::OnceCell<Option<super::tcf::TcCore>>,
}

/// The value of cookie `name` in `Cookie` header lines (`a=1; b=2`).
pub fn cookie_in<'h>(lines: impl IntoIterator<Item = &'h str>, name: &str) -> Option<&'h str> {
    lines.into_iter().find_map(|line| {
        line.split(';').find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k.trim() == name).then(|| v.trim())
        })
    })
}

impl Ctx<'_> {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn cookie(&self, name: &str) -> Option<&str> {
        cookie_in(
            self.headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok()),
            name,
        )
    }

    pub fn gpc(&self) -> bool {
        self.header("sec-gpc").is_some_and(|v| v.trim() == "1")
    }

    pub fn is_bot(&self) -> bool {
        self.header("user-agent")
            .is_none_or(|ua| ua.is_empty() || self.site.bots.is_match(ua))
    }

    /// Consent per purpose: a denial from any source wins.
    pub fn consent(&self, doc: &Doc<'_>, p: Purpose) -> Signal {
        let mut s = ga4_signal(doc, p);
        let tc = self.tcf.get_or_init(|| {
            self.tcf_string(doc)
                .and_then(|t| super::tcf::decode(t).ok())
        });
        if let Some(tc) = tc {
            s = merge(s, tc.signal(p));
        }
        if let Some(cc) = &self.site.consent_cookie {
            if let Some(value) = self.cookie(&cc.name) {
                if let Some((_, token)) = cc.tokens.iter().find(|(q, _)| *q == p) {
                    let granted = value
                        .split([',', '|', ' ', ':', '+'])
                        .any(|t| t.eq_ignore_ascii_case(token));
                    s = merge(
                        s,
                        if granted {
                            Signal::Granted
                        } else {
                            Signal::Denied
                        },
                    );
                }
            }
        }
        s
    }
}

impl Ctx<'_> {
    /// The request's TC string: the URL's `gdpr_consent`, else the site's TCF cookie; none
    /// when the URL says `gdpr=0` (GDPR does not apply).
    fn tcf_string<'d>(&'d self, doc: &'d Doc<'_>) -> Option<&'d str> {
        let q = match &doc.parts.first()?.root {
            Value::Obj(o) => Some(o),
            _ => None,
        };
        let param = |k: &str| q.and_then(|o| o.get(k)).and_then(|v| v.as_str());
        if param("gdpr").is_some_and(|g| g.trim() == "0") {
            return None;
        }
        param("gdpr_consent")
            .filter(|t| !t.trim().is_empty())
            .or_else(|| self.cookie(self.site.tcf_cookie.as_deref()?))
    }
}

fn merge(a: Signal, b: Signal) -> Signal {
    match (a, b) {
        (Signal::Denied, _) | (_, Signal::Denied) => Signal::Denied,
        (Signal::Granted, _) | (_, Signal::Granted) => Signal::Granted,
        _ => Signal::Unknown,
    }
}

/// GA4 Consent Mode: `gcs=G1xy` (x ad_storage, y analytics_storage) and `gcd` (a letter per
/// purpose at positions 2, 4, 6, 8: ad_storage, analytics_storage, ad_user_data,
/// ad_personalization; `p q m u` deny, `t r n v` grant, `l` unset).
fn ga4_signal(doc: &Doc<'_>, p: Purpose) -> Signal {
    let q = match &doc.parts[0].root {
        Value::Obj(o) => o,
        _ => return Signal::Unknown,
    };
    let mut s = Signal::Unknown;
    if let Some(gcd) = q.get("gcd").and_then(|v| v.as_str()) {
        if let Some(&c) = gcd.as_bytes().get(2 + 2 * p.index()) {
            s = match c {
                b'p' | b'q' | b'm' | b'u' => Signal::Denied,
                b't' | b'r' | b'n' | b'v' => Signal::Granted,
                _ => Signal::Unknown,
            };
        }
    }
    if let Some(gcs) = q.get("gcs").and_then(|v| v.as_str()) {
        let at = match p {
            Purpose::Ads => Some(2),
            Purpose::Analytics => Some(3),
            _ => None,
        };
        if let Some(&c) = at
            .and_then(|i| gcs.as_bytes().get(i))
            .filter(|_| gcs.starts_with("G1"))
        {
            s = merge(
                s,
                if c == b'1' {
                    Signal::Granted
                } else {
                    Signal::Denied
                },
            );
        }
    }
    s
}

/// One condition.
#[derive(Debug, Clone)]
pub enum Cond {
    Present(Selector),
    Equals(Selector, String),
    Matches(Selector, Regex),
    /// The event's name (the route's `event_field`) is one of these.
    Event(Vec<String>),
    Gpc(bool),
    ConsentDenied(Vec<Purpose>),
    ConsentGranted(Vec<Purpose>),
    ClientIp(Vec<IpNet>),
    Bot(bool),
}

impl Cond {
    /// Whether this condition looks at an event's own fields (and so is checked per event).
    pub fn per_event(&self) -> bool {
        matches!(
            self,
            Cond::Present(_) | Cond::Equals(..) | Cond::Matches(..) | Cond::Event(_)
        )
    }
}

/// Where an event's fields are read: its own node first, then (GA4) the shared URL query.
pub struct EventView<'v, 'a> {
    pub layers: &'v [(&'v Value<'a>, bool)],
}

impl<'v> EventView<'v, '_> {
    fn exists(&self, sel: &Selector) -> bool {
        self.layers
            .iter()
            .any(|(v, flat)| walk::first(v, *flat, sel).is_some())
    }

    fn read(&self, sel: &Selector) -> Option<&'v str> {
        self.layers
            .iter()
            .find_map(|(v, flat)| walk::first(v, *flat, sel))
            .and_then(Value::as_str)
    }
}

/// Evaluates one condition.
pub fn holds(
    c: &Cond,
    ctx: &Ctx<'_>,
    doc: &Doc<'_>,
    ev: &EventView<'_, '_>,
    event_field: &Selector,
) -> bool {
    match c {
        Cond::Present(sel) => match &sel.scope {
            super::select::Scope::Header(_) | super::select::Scope::Cookie(_) => {
                field(ctx, ev, sel).is_some()
            }
            // Any value counts, objects and arrays too (`$set`, `items`).
            _ => ev.exists(sel),
        },
        Cond::Equals(sel, want) => field(ctx, ev, sel).is_some_and(|v| v == want),
        Cond::Matches(sel, re) => field(ctx, ev, sel).is_some_and(|v| re.is_match(v)),
        Cond::Event(names) => ev
            .read(event_field)
            .is_some_and(|n| names.iter().any(|x| x == n)),
        Cond::Gpc(want) => ctx.gpc() == *want,
        Cond::ConsentDenied(ps) => ps.iter().any(|p| ctx.consent(doc, *p) == Signal::Denied),
        Cond::ConsentGranted(ps) => ps.iter().all(|p| ctx.consent(doc, *p) == Signal::Granted),
        Cond::ClientIp(nets) => {
            let ip = crate::clientip::canonical(ctx.client_ip);
            nets.iter().any(|n| n.contains(&ip))
        }
        Cond::Bot(want) => ctx.is_bot() == *want,
    }
}

/// A field's text, borrowed from the request (no copy per condition).
fn field<'c>(ctx: &'c Ctx<'_>, ev: &EventView<'c, '_>, sel: &Selector) -> Option<&'c str> {
    use super::select::Scope;
    match &sel.scope {
        Scope::Header(h) => ctx.header(h),
        Scope::Cookie(c) => ctx.cookie(c),
        _ => ev.read(sel),
    }
}
