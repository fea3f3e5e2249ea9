//! Conditions on rules (`when` / `unless`), and the request context they read: headers,
//! cookies, the client address, `Sec-GPC`, consent signals (GA4 `gcs`/`gcd`, an IAB TCF v2
//! string in `gdpr_consent` or the TCF cookie, the site's consent cookie) and the bot list.

use std::borrow::Cow;
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
    /// Consent per purpose ([`Purpose::index`]), read once per request from the request as
    /// received ([`Ctx::read_consent`], before the first rule): a rule that drops `gcs` does
    /// not change what later rules see, and the signals are not looked up per condition.
    pub consent: std::cell::OnceCell<[Signal; 4]>,
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

    /// Consent for purpose `p`: a denial from any source wins. Read from `doc` on first use
    /// (see [`Ctx::read_consent`]).
    pub fn consent(&self, doc: &Doc<'_>, p: Purpose) -> Signal {
        self.read_consent(doc)[p.index()]
    }

    /// Reads the request's consent signals (GA4 `gcs`/`gcd`, the TCF string, the site's
    /// consent cookie) for every purpose, once.
    pub fn read_consent(&self, doc: &Doc<'_>) -> &[Signal; 4] {
        self.consent.get_or_init(|| {
            let params = ConsentParams::of(doc);
            let tc = params
                .tcf_string(self)
                .and_then(|t| super::tcf::decode(&t).ok());
            let cookie = self
                .site
                .consent_cookie
                .as_ref()
                .and_then(|cc| Some((cc, self.cookie(&cc.name)?)));
            let all = [
                Purpose::Ads,
                Purpose::Analytics,
                Purpose::AdUserData,
                Purpose::AdPersonalization,
            ];
            all.map(|p| {
                let mut s = ga4_signal(&params, p);
                if let Some(tc) = &tc {
                    s = merge(s, tc.signal(p));
                }
                if let Some((cc, value)) = cookie
                    && let Some((_, token)) = cc.tokens.iter().find(|(q, _)| *q == p)
                {
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
                s
            })
        })
    }
}

/// The URL query parameters consent is read from, found in one pass over the query.
#[derive(Default)]
struct ConsentParams<'d> {
    gcs: Option<Cow<'d, str>>,
    gcd: Option<Cow<'d, str>>,
    gdpr: Option<Cow<'d, str>>,
    gdpr_consent: Option<Cow<'d, str>>,
}

impl<'d> ConsentParams<'d> {
    fn of(doc: &'d Doc<'_>) -> Self {
        let mut p = ConsentParams::default();
        let Some(Value::Obj(q)) = doc.parts.first().map(|p| &p.root) else {
            return p;
        };
        // The first of each, as `Obj::get` finds it.
        for e in q.entries.iter().filter(|e| e.key.starts_with('g')) {
            let slot = match &*e.key {
                "gcs" => &mut p.gcs,
                "gcd" => &mut p.gcd,
                "gdpr" => &mut p.gdpr,
                "gdpr_consent" => &mut p.gdpr_consent,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(e.value.as_str().unwrap_or_default());
            }
        }
        p
    }

    /// The request's TC string: the URL's `gdpr_consent`, else the site's TCF cookie; none
    /// when the URL says `gdpr=0` (GDPR does not apply).
    fn tcf_string<'c>(&'c self, ctx: &'c Ctx<'_>) -> Option<Cow<'c, str>> {
        if self.gdpr.as_deref().is_some_and(|g| g.trim() == "0") {
            return None;
        }
        match &self.gdpr_consent {
            Some(t) if !t.trim().is_empty() => Some(Cow::Borrowed(t)),
            _ => ctx
                .cookie(ctx.site.tcf_cookie.as_deref()?)
                .map(Cow::Borrowed),
        }
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
fn ga4_signal(q: &ConsentParams<'_>, p: Purpose) -> Signal {
    let mut s = Signal::Unknown;
    if let Some(gcd) = q.gcd.as_deref()
        && let Some(&c) = gcd.as_bytes().get(2 + 2 * p.index())
    {
        s = match c {
            b'p' | b'q' | b'm' | b'u' => Signal::Denied,
            b't' | b'r' | b'n' | b'v' => Signal::Granted,
            _ => Signal::Unknown,
        };
    }
    if let Some(gcs) = q.gcs.as_deref() {
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

    fn read(&self, sel: &Selector) -> Option<Cow<'v, str>> {
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
        Cond::Equals(sel, want) => field(ctx, ev, sel).is_some_and(|v| v == *want),
        Cond::Matches(sel, re) => field(ctx, ev, sel).is_some_and(|v| re.is_match(&v)),
        Cond::Event(names) => ev
            .read(event_field)
            .is_some_and(|n| names.iter().any(|x| *x == n)),
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
fn field<'c>(ctx: &'c Ctx<'_>, ev: &EventView<'c, '_>, sel: &Selector) -> Option<Cow<'c, str>> {
    use super::select::Scope;
    match &sel.scope {
        Scope::Header(h) => ctx.header(h).map(Cow::Borrowed),
        Scope::Cookie(c) => ctx.cookie(c).map(Cow::Borrowed),
        _ => ev.read(sel),
    }
}
