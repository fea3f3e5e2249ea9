//! What a rule does to the fields it selects. Each action is compiled at load (selectors,
//! regexes, templates, the prepared HMAC key) and applied to one part at a time.

use std::borrow::Cow;
use std::net::IpAddr;

use hmac::{Hmac, Mac};
use regex::Regex;
use sha2::{Digest, Sha256};

use super::cond::Ctx;
use super::detect::{self, Kinds};
use super::keys::KeyIndex;
use super::select::Selector;
use super::url;
pub use super::url::StripUrl;
use super::walk;
use crate::decode::{Str, Value};

pub type HmacKey = Hmac<Sha256>;

/// How a value is normalised before hashing (what Meta and Google require for matching).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalize {
    /// Trim and lower-case; for gmail.com / googlemail.com also remove dots before the `@`.
    Email,
    /// E.164: `+` and digits only.
    Phone,
    /// Digits only (Meta's form, country code included).
    PhoneDigits,
    Lowercase,
    Trim,
}

/// Which hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum HashAlg {
    /// HMAC-SHA-256 with the site key: not reversible by anyone without the key, stable for
    /// the site (the default).
    #[default]
    HmacSha256,
    /// Plain SHA-256, for vendor match keys that must equal the vendor's own hash (Meta `em`).
    Sha256,
}

/// What replaces a detected value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replace {
    /// `[email]`, `[phone]`, … (or the given text).
    Placeholder(Option<String>),
    /// A keyed hash (16 hex characters of the site's HMAC).
    Hash,
}

/// A piece of a `set` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    /// The client address, truncated to these prefix lengths (full when 32/128).
    ClientIp {
        v4: u8,
        v6: u8,
    },
    Header(String),
    Cookie(String),
}

#[derive(Debug, Clone)]
pub enum Action {
    Drop(Vec<Selector>),
    Keep(Vec<Selector>),
    Hash {
        fields: Vec<Selector>,
        normalize: Option<Normalize>,
        alg: HashAlg,
    },
    Redact {
        fields: Vec<Selector>,
        kinds: Kinds,
        patterns: Vec<Regex>,
        replace: Replace,
    },
    StripUrl {
        fields: Vec<Selector>,
        how: StripUrl,
    },
    TruncateIp {
        fields: Vec<Selector>,
        v4: u8,
        v6: u8,
    },
    Set(Vec<(Selector, Vec<Piece>)>),
    Rename(Vec<(Selector, String)>),
    DropRequest,
}

impl Action {
    /// The selectors that pick fields by key (not `set`/`rename`, which name one field each):
    /// what the program's [`KeyIndex`] classifies.
    pub fn selectors_mut(&mut self) -> &mut [Selector] {
        match self {
            Action::Drop(f)
            | Action::Keep(f)
            | Action::Hash { fields: f, .. }
            | Action::Redact { fields: f, .. }
            | Action::StripUrl { fields: f, .. }
            | Action::TruncateIp { fields: f, .. } => f,
            Action::Set(_) | Action::Rename(_) | Action::DropRequest => &mut [],
        }
    }

    /// The action's name as written in rule files.
    pub fn verb(&self) -> &'static str {
        match self {
            Action::Drop(_) => "drop",
            Action::Keep(_) => "keep",
            Action::Hash { .. } => "hash",
            Action::Redact { .. } => "redact",
            Action::StripUrl { .. } => "strip_url",
            Action::TruncateIp { .. } => "truncate_ip",
            Action::Set(_) => "set",
            Action::Rename(_) => "rename",
            Action::DropRequest => "drop_request",
        }
    }
}

/// Applies `action` to one part's root. Returns whether anything changed.
pub fn apply<'a>(
    action: &Action,
    root: &mut Value<'a>,
    mut flat: walk::Flat<'_>,
    in_body: bool,
    ctx: &Ctx<'_>,
    key: &HmacKey,
    idx: &KeyIndex,
) -> bool {
    match action {
        Action::Drop(sels) => walk::remove(root, flat, sels, in_body, idx),
        Action::Keep(sels) => walk::retain(root, flat, sels, in_body, idx),
        Action::Hash {
            fields,
            normalize,
            alg,
        } => walk::visit(root, flat, fields, in_body, idx, &mut |_, v| {
            hash_value(v, *normalize, *alg, key)
        }),
        Action::Redact {
            fields,
            kinds,
            patterns,
            replace,
        } => walk::visit(root, flat, fields, in_body, idx, &mut |_, v| {
            redact_value(v, *kinds, patterns, replace, key)
        }),
        Action::StripUrl { fields, how } => {
            walk::visit(root, flat, fields, in_body, idx, &mut |_, v| {
                let Value::Str(st) = v else { return false };
                // A percent-encoded URL is cut as it is, without decoding it.
                if let Some(raw) = st.percent_encoded().filter(|_| how.segments.is_empty()) {
                    return match url::strip_encoded(raw, how) {
                        Some(new) => {
                            st.set_encoded(new);
                            true
                        }
                        None => false,
                    };
                }
                match url::strip(&st.text(), how) {
                    Some(new) => {
                        st.set(new);
                        true
                    }
                    None => false,
                }
            })
        }
        Action::TruncateIp { fields, v4, v6 } => {
            walk::visit(root, flat, fields, in_body, idx, &mut |_, v| {
                truncate_value(v, *v4, *v6)
            })
        }
        Action::Set(pairs) => {
            let mut changed = false;
            for (s, tpl) in pairs.iter().filter(|(s, _)| s.applies(in_body)) {
                if let Some(text) = render(tpl, ctx) {
                    let v = Value::Str(Str::written(text));
                    changed |= walk::set(root, flat.as_deref_mut(), s, v, idx);
                }
            }
            changed
        }
        Action::Rename(pairs) => {
            let mut changed = false;
            for (s, to) in pairs.iter().filter(|(s, _)| s.applies(in_body)) {
                changed |= walk::rename(root, flat.as_deref_mut(), s, to);
            }
            changed
        }
        Action::DropRequest => false,
    }
}

/// Renders a template; `None` when a piece has no value (no public client address, a missing
/// header): the field is then not set at all rather than set wrong.
pub fn render(tpl: &[Piece], ctx: &Ctx<'_>) -> Option<String> {
    // An address is at most 39 bytes (IPv6).
    let mut out = String::with_capacity(40);
    for p in tpl {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::ClientIp { v4, v6 } => {
                if !crate::clientip::is_public(ctx.client_ip) {
                    return None;
                }
                push_ip(&mut out, crate::clientip::truncate(ctx.client_ip, *v4, *v6));
            }
            Piece::Header(h) => out.push_str(ctx.header(h)?),
            Piece::Cookie(c) => out.push_str(ctx.cookie(c)?),
        }
    }
    Some(out)
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Normalises a value for hashing.
pub fn normalize(s: &str, n: Option<Normalize>) -> Cow<'_, str> {
    match n {
        None => Cow::Borrowed(s),
        Some(Normalize::Trim) => Cow::Borrowed(s.trim()),
        Some(Normalize::Lowercase) => Cow::Owned(s.trim().to_lowercase()),
        Some(Normalize::Email) => {
            let e = s.trim().to_lowercase();
            match e.split_once('@') {
                Some((local, dom)) if dom == "gmail.com" || dom == "googlemail.com" => {
                    Cow::Owned(format!("{}@{dom}", local.replace('.', "")))
                }
                _ => Cow::Owned(e),
            }
        }
        Some(Normalize::Phone) => {
            let digits: String = s.chars().filter(char::is_ascii_digit).collect();
            Cow::Owned(format!("+{digits}"))
        }
        Some(Normalize::PhoneDigits) => {
            Cow::Owned(s.chars().filter(char::is_ascii_digit).collect())
        }
    }
}

/// Hex digest of `s` (HMAC with the site key, or plain SHA-256).
pub fn digest(s: &str, alg: HashAlg, key: &HmacKey) -> String {
    match alg {
        HashAlg::HmacSha256 => {
            let mut m = key.clone();
            m.update(s.as_bytes());
            hex_lower(&m.finalize().into_bytes())
        }
        HashAlg::Sha256 => hex_lower(&Sha256::digest(s.as_bytes())),
    }
}

/// Appends an address in its usual text form. IPv4 is written by hand: `Display` goes through
/// the formatting machinery, which cost more than the rest of a `set` rule.
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if o >= 100 {
                    out.push((b'0' + o / 100) as char);
                }
                if o >= 10 {
                    out.push((b'0' + o / 10 % 10) as char);
                }
                out.push((b'0' + o % 10) as char);
            }
        }
        IpAddr::V6(_) => {
            use std::fmt::Write;
            let _ = write!(out, "{ip}");
        }
    }
}

/// Lower-case hex (the form vendors expect for hashed match keys).
fn hex_lower(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.extend([HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
    }
    // Hex digits are ASCII.
    String::from_utf8(out).unwrap_or_default()
}

fn hash_value(v: &mut Value<'_>, n: Option<Normalize>, alg: HashAlg, key: &HmacKey) -> bool {
    let hashed = match v {
        Value::Str(s) => {
            let text = s.text();
            if text.is_empty() || is_sha256_hex(&text) {
                return false;
            }
            digest(&normalize(&text, n), alg, key)
        }
        Value::Lit(l) if l != "null" && l != "true" && l != "false" => {
            digest(&normalize(l, n), alg, key)
        }
        _ => return false,
    };
    *v = Value::Str(Str::written(hashed));
    true
}

fn redact_value(
    v: &mut Value<'_>,
    kinds: Kinds,
    patterns: &[Regex],
    replace: &Replace,
    key: &HmacKey,
) -> bool {
    let Value::Str(s) = v else { return false };
    match redact_text(&s.text(), kinds, patterns, replace, key) {
        Some(new) => {
            s.set(new);
            true
        }
        None => false,
    }
}

/// Redacts built-in detections and custom patterns in `text`; `None` when nothing matched.
pub fn redact_text(
    text: &str,
    kinds: Kinds,
    patterns: &[Regex],
    replace: &Replace,
    key: &HmacKey,
) -> Option<String> {
    redact_text_triggered(
        text,
        detect::triggers(text, kinds),
        kinds,
        patterns,
        replace,
        key,
    )
}

/// [`redact_text`] with the detectors' [`detect::triggers`] of `text` already known (the
/// scan asks for them first, to pass over clean values).
pub fn redact_text_triggered(
    text: &str,
    first: detect::Triggers,
    kinds: Kinds,
    patterns: &[Regex],
    replace: &Replace,
    key: &HmacKey,
) -> Option<String> {
    let by = |label: &str, found: &str| match replace {
        Replace::Placeholder(Some(p)) => p.clone(),
        Replace::Placeholder(None) => format!("[{label}]"),
        Replace::Hash => digest(found, HashAlg::HmacSha256, key)[..16].to_string(),
    };
    let mut current: Option<String> = None;
    if !kinds.is_empty() {
        // A redaction can change what surrounds another value (`2001:db8::1jane@x.example`
        // becomes `2001:db8::[email]`, where the address now ends a token): detect again until
        // nothing more is found, so that redacting is idempotent. Bounded; the common case
        // (nothing found) is one pass.
        for pass in 0..4 {
            let t = current.as_deref().unwrap_or(text);
            let triggers = if pass == 0 {
                first
            } else {
                detect::triggers(t, kinds)
            };
            match detect::redact_triggered(t, triggers, &mut |k, found| by(k.name(), found)) {
                Some(next) => current = Some(next),
                None => break,
            }
        }
    }
    for re in patterns {
        let t = current.as_deref().unwrap_or(text);
        if re.is_match(t) {
            let replaced = re
                .replace_all(t, |c: &regex::Captures<'_>| by("redacted", &c[0]))
                .into_owned();
            current = Some(replaced);
        }
    }
    current
}

fn truncate_value(v: &mut Value<'_>, v4: u8, v6: u8) -> bool {
    let Value::Str(s) = v else { return false };
    let text = s.text();
    let Ok(ip) = text.trim().parse::<IpAddr>() else {
        return false;
    };
    let t = crate::clientip::truncate(ip, v4, v6).to_string();
    if t == text {
        return false;
    }
    drop(text);
    s.set(t);
    s.trusted = true;
    true
}

/// A detector set from names.
pub fn kinds_from(names: &[String]) -> Result<Kinds, String> {
    let mut k = Kinds::none();
    for n in names {
        let kind = detect::Kind::from_name(n).ok_or_else(|| {
            let all: Vec<&str> = detect::Kind::ALL.iter().map(|k| k.name()).collect();
            match crate::config::diag::suggest(n, all.iter().copied()) {
                Some(s) => format!("unknown detector {n:?}; did you mean `{s}`?"),
                None => format!("unknown detector {n:?} (detectors: {})", all.join(", ")),
            }
        })?;
        k = k.with(kind);
    }
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_and_hashing() {
        assert_eq!(
            normalize(" Jane.Doe@GMail.com ", Some(Normalize::Email)),
            "janedoe@gmail.com"
        );
        assert_eq!(
            normalize("+1 (555) 123-4567", Some(Normalize::Phone)),
            "+15551234567"
        );
        assert_eq!(
            normalize("+1 (555) 123-4567", Some(Normalize::PhoneDigits)),
            "15551234567"
        );
        let key = HmacKey::new_from_slice(b"k").unwrap();
        let h = digest("x", HashAlg::Sha256, &key);
        assert_eq!(
            h,
            "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"
        );
        let mut v = Value::Str(Str::written(h.clone()));
        assert!(
            !hash_value(&mut v, None, HashAlg::HmacSha256, &key),
            "already hashed values pass through"
        );
        let mut v = Value::str("x");
        assert!(hash_value(&mut v, None, HashAlg::HmacSha256, &key));
        assert_ne!(v.as_str().unwrap(), h);
        assert_eq!(v.as_str().unwrap().len(), 64);
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "203.0.113.0",
            "10.20.255.9",
            "1.100.99.255",
            "2001:db8::",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = String::new();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string());
        }
    }
}
