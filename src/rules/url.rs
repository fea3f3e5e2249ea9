//! `strip_url`: removing query parameters (by allowlist or denylist), the fragment and
//! matching path segments from URL-valued fields (page URL, referrer).
//!
//! GA4 sends its page URL percent-encoded inside the hit's query (`dl=https%3A%2F%2F…%3F…`), a
//! few hundred bytes dense with escapes. [`strip_encoded`] cuts such a value without decoding
//! it: it finds the URL's `?`, `&`, `=` and `#` whether written plain or escaped, decodes only
//! parameter names, and keeps the parameters it keeps byte for byte, so the result needs no
//! re-escaping either. [`strip`] does the same on decoded text (JSON fields, and path segment
//! rules, whose patterns match decoded segments); the tests hold the two to the same result.

use std::borrow::Cow;
use std::ops::ControlFlow;

use regex::Regex;

use super::select::KeyPat;
use crate::decode::query::{unescape, url_separators};

#[derive(Debug, Clone)]
pub struct StripUrl {
    /// Allowlist of parameter names (globs); empty: no allowlist.
    pub keep: Vec<KeyPat>,
    /// Denylist of parameter names (globs).
    pub drop: Vec<KeyPat>,
    pub keep_fragment: bool,
    /// Path segments matching a pattern are replaced (e.g. ids in `/order/123456`).
    pub segments: Vec<(Regex, String)>,
}

impl StripUrl {
    fn keeps(&self, name: &str) -> bool {
        let allowed = self.keep.is_empty() || self.keep.iter().any(|k| k.matches(name));
        allowed && !self.drop.iter().any(|d| d.matches(name))
    }
}

/// Removes query parameters (allowlist or denylist), the fragment, and matching path
/// segments from a URL. Untouched parameters keep their exact text. `None`: nothing to change.
pub fn strip(url: &str, how: &StripUrl) -> Option<String> {
    // `#`, `?`, `&`, `=` are ASCII: every slice below is on a character boundary.
    let (before_frag, frag) = match memchr::memchr(b'#', url.as_bytes()) {
        Some(i) => (&url[..i], Some(&url[i + 1..])),
        None => (url, None),
    };
    let (base, query) = match memchr::memchr(b'?', before_frag.as_bytes()) {
        Some(i) => (&before_frag[..i], Some(&before_frag[i + 1..])),
        None => (before_frag, None),
    };
    let mut out = String::with_capacity(url.len());
    out.push_str(&strip_path(base, &how.segments));
    if let Some(q) = query {
        let mut sep = '?';
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let raw_name = memchr::memchr(b'=', pair.as_bytes()).map_or(pair, |i| &pair[..i]);
            if how.keeps(&unescape(raw_name)) {
                out.push(sep);
                out.push_str(pair);
                sep = '&';
            }
        }
    }
    if let (Some(f), true) = (frag, how.keep_fragment) {
        out.push('#');
        out.push_str(f);
    }
    (out != url).then_some(out)
}

/// [`strip`] on the percent-encoded text of a URL (a query or form value), giving the
/// percent-encoded result: what [`strip`] gives for the decoded URL, with every kept byte as
/// received. Path segment rules need the decoded path: with any, this is `None` and callers
/// use [`strip`].
///
/// One pass over the separators the URL's text holds, plain or escaped
/// ([`url_separators`]).
pub fn strip_encoded(raw: &str, how: &StripUrl) -> Option<String> {
    if !how.segments.is_empty() {
        return None;
    }
    let b = raw.as_bytes();
    let mut cut = Cut {
        raw,
        how,
        out: String::new(),
        question: 0..0,
        sep: 0..0,
        kept: false,
    };
    let (mut in_query, mut start, mut name_end, mut frag) = (false, 0, None, None);
    url_separators(b, |at, byte, len| {
        match (in_query, byte) {
            (false, b'?') => {
                cut.out.reserve(raw.len());
                cut.out.push_str(&raw[..at]);
                cut.question = at..at + len;
                (in_query, start) = (true, at + len);
            }
            (false, b'#') => {
                cut.out.push_str(&raw[..at]);
                frag = Some(at);
                return ControlFlow::Break(());
            }
            (true, b'=') if name_end.is_none() => name_end = Some(at),
            (true, b'&') => {
                cut.pair(start, name_end, at);
                cut.sep = at..at + len;
                (start, name_end) = (at + len, None);
            }
            (true, b'#') => {
                cut.pair(start, name_end, at);
                frag = Some(at);
                in_query = false;
                return ControlFlow::Break(());
            }
            // `;` separates nothing here (as in `strip`), nor a `?` inside the query.
            _ => {}
        }
        ControlFlow::Continue(())
    });
    if in_query {
        cut.pair(start, name_end, b.len());
    } else if frag.is_none() {
        return None; // neither a query nor a fragment: nothing to cut
    }
    if let (Some(at), true) = (frag, how.keep_fragment) {
        cut.out.push_str(&raw[at..]);
    }
    (cut.out != raw).then_some(cut.out)
}

/// The output of [`strip_encoded`] so far.
struct Cut<'r> {
    raw: &'r str,
    how: &'r StripUrl,
    out: String,
    /// Where the `?` is written, and the separator before the pair being read.
    question: std::ops::Range<usize>,
    sep: std::ops::Range<usize>,
    kept: bool,
}

impl Cut<'_> {
    /// The pair `start..end` (its name ends at `name_end`, its first `=`): kept after the
    /// separator that came before it as received (the first kept one after the `?`), so
    /// that keeping everything changes nothing.
    fn pair(&mut self, start: usize, name_end: Option<usize>, end: usize) {
        if start == end {
            return;
        }
        let name = &self.raw[start..name_end.unwrap_or(end)];
        // The name as [`strip`] reads it: the URL's text decoded, then unescaped (names are
        // nearly always plain: `utm_source`).
        let plain = !name.bytes().any(|c| c == b'%' || c == b'+');
        let keeps = if plain {
            self.how.keeps(name)
        } else {
            self.how.keeps(&unescape(&unescape(name)))
        };
        if keeps {
            let sep = if self.kept { &self.sep } else { &self.question };
            self.out.push_str(&self.raw[sep.clone()]);
            self.out.push_str(&self.raw[start..end]);
            self.kept = true;
        }
    }
}

fn strip_path<'s>(base: &'s str, segments: &[(Regex, String)]) -> Cow<'s, str> {
    if segments.is_empty() {
        return Cow::Borrowed(base);
    }
    let (prefix, path) = match base
        .find("://")
        .and_then(|i| base[i + 3..].find('/').map(|j| i + 3 + j))
    {
        Some(p) => (&base[..p], &base[p..]),
        None => ("", base),
    };
    let new: Vec<Cow<'_, str>> = path
        .split('/')
        .map(|seg| {
            match segments
                .iter()
                .find(|(re, _)| !seg.is_empty() && re.is_match(seg))
            {
                Some((_, with)) => Cow::Owned(with.clone()),
                None => Cow::Borrowed(seg),
            }
        })
        .collect();
    Cow::Owned(format!("{prefix}{}", new.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::query::{Spaces, escape_into};

    fn how(keep: &[&str], drop: &[&str]) -> StripUrl {
        StripUrl {
            keep: keep.iter().map(|k| KeyPat::new(k)).collect(),
            drop: drop.iter().map(|k| KeyPat::new(k)).collect(),
            keep_fragment: false,
            segments: vec![],
        }
    }

    #[test]
    fn allowlist_denylist_fragment() {
        let u = "https://shop.example/checkout?email=a%40b.c&utm_source=news&gclid=X1&x=1#top";
        assert_eq!(
            strip(u, &how(&["utm_*", "gclid"], &[])).unwrap(),
            "https://shop.example/checkout?utm_source=news&gclid=X1"
        );
        assert_eq!(
            strip(u, &how(&[], &["email"])).unwrap(),
            "https://shop.example/checkout?utm_source=news&gclid=X1&x=1"
        );
        assert_eq!(strip("https://shop.example/", &how(&["utm_*"], &[])), None);
        let mut h = how(&[], &[]);
        h.segments = vec![(Regex::new("^[0-9]{4,}$").unwrap(), "[id]".into())];
        assert_eq!(
            strip("https://s.example/order/123456/view", &h).unwrap(),
            "https://s.example/order/[id]/view"
        );
    }

    #[test]
    fn encoded_urls_keep_their_escapes() {
        // GA4's dl: the page URL escaped once more, its own query escaped inside.
        let dl = "https%3A%2F%2Fshop.example%2Fc%3Femail%3Dj%2540x.example%26utm_source%3Dnews%26gclid%3DX";
        assert_eq!(
            strip_encoded(dl, &how(&["utm_*", "gclid"], &[])).unwrap(),
            "https%3A%2F%2Fshop.example%2Fc%3Futm_source%3Dnews%26gclid%3DX"
        );
        // Plain separators, lower-case hex and a `%` that is no escape.
        let mixed = "https://s.example/?a=1%26b%3d2&c=100%&utm_x=1%23frag";
        assert_eq!(
            strip_encoded(mixed, &how(&["utm_*", "b"], &[])).unwrap(),
            "https://s.example/?b%3d2&utm_x=1"
        );
        assert_eq!(
            strip_encoded("https%3A%2F%2Fs.example%2F", &how(&["x"], &[])),
            None
        );
        let mut h = how(&[], &[]);
        h.segments = vec![(Regex::new("^[0-9]+$").unwrap(), "[id]".into())];
        assert_eq!(strip_encoded("https%3A%2F%2Fs.example%2F1", &h), None);
    }

    proptest::proptest! {
        /// Stripping the encoded text gives the encoding of what stripping the decoded text
        /// gives, and changes nothing exactly when that changes nothing.
        #[test]
        fn encoded_and_decoded_stripping_agree(
            url in "(https://s\\.example/p)?[?#&=]?([a-z_]{0,6}(=[a-z0-9%+@._]{0,8})?[&?#=]){0,6}[a-z%=]{0,4}",
            escape_more in proptest::bool::ANY,
            fragment in proptest::bool::ANY,
        ) {
            let raw = if escape_more {
                let mut e = String::new();
                escape_into(&mut e, &url, Spaces::Percent);
                e
            } else {
                url.clone()
            };
            let mut h = how(&["utm_*", "a", "b_c"], &["email"]);
            h.keep_fragment = fragment;
            let decoded = unescape(&raw);
            let want = strip(&decoded, &h);
            let got = strip_encoded(&raw, &h);
            proptest::prop_assert_eq!(got.as_deref().map(unescape), want.as_deref().map(Cow::Borrowed));
        }
    }
}
