//! Field selectors: one syntax that addresses a payload the same way whatever its encoding.
//!
//! | selector | matches |
//! |---|---|
//! | `uid`, `ep.email`, `cd[value]` | that field of a query/form/multipart payload (whole key, dots and brackets included) or the JSON path `uid` / `ep` → `email` |
//! | `ep.*`, `ud[*]`, `*email*` | keys by glob in flat payloads; `*` is one key (or one array item with `[*]`) in JSON |
//! | `properties.$current_url`, `batch[0].userId`, `batch[*].context.ip` | JSON paths |
//! | `**.email` | a key `email` at any depth |
//! | `"a.b".c` | quoted keys that contain dots |
//! | `query:uid`, `body:uid` | only in the URL query / only in the body |
//! | `data.properties.distinct_id` | into the document carried by a `nested` field (`data`) |
//! | `header:user-agent`, `cookie:_ga` | request headers and cookies (conditions and `set` templates) |
//!
//! Selectors are parsed once at load; matching is byte comparisons on keys.

use std::fmt;

/// Where a selector looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The URL query and the body.
    Any,
    Query,
    Body,
    /// A request header (lower-case name).
    Header(String),
    /// A request cookie.
    Cookie(String),
}

/// A pattern over one whole key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPat {
    Exact(String),
    Glob(Glob),
}

/// Literal pieces between `*` wildcards (`*` matches any run of characters), with what is
/// needed to reject most keys without comparing bytes: the shortest matching length and the
/// first byte. This runs for every field against every pattern, so it matters.
#[derive(Debug, Clone)]
pub struct Glob {
    /// Up to the first 8 bytes of the leading literal, little-endian, and which bytes count:
    /// one compare rejects keys that do not start with it (`ep.` vs `en`, `up.` vs `uid`).
    head: u64,
    head_mask: u64,
    pieces: Vec<String>,
    /// Searchers for the middle pieces, built once.
    finders: Vec<memchr::memmem::Finder<'static>>,
    min_len: usize,
}

impl PartialEq for Glob {
    fn eq(&self, other: &Self) -> bool {
        self.pieces == other.pieces
    }
}
impl Eq for Glob {}

impl KeyPat {
    pub fn new(text: &str) -> KeyPat {
        if !text.contains('*') {
            return KeyPat::Exact(text.to_string());
        }
        let pieces: Vec<String> = text.split('*').map(str::to_string).collect();
        let finders = pieces[1..pieces.len() - 1]
            .iter()
            .map(|p| memchr::memmem::Finder::new(p.as_bytes()).into_owned())
            .collect();
        let min_len = pieces.iter().map(String::len).sum();
        let lead = pieces[0].as_bytes();
        let n = lead.len().min(8);
        KeyPat::Glob(Glob {
            head: head8(lead),
            head_mask: if n == 8 {
                u64::MAX
            } else {
                (1u64 << (n * 8)) - 1
            },
            pieces,
            finders,
            min_len,
        })
    }

    #[inline]
    pub fn matches(&self, key: &str) -> bool {
        match self {
            KeyPat::Exact(e) => e.len() == key.len() && same(e.as_bytes(), key.as_bytes()),
            KeyPat::Glob(g) => g.matches(key.as_bytes()),
        }
    }
}

/// The first (up to) 8 bytes of `s` as a little-endian integer, zero-padded.
#[inline(always)]
fn head8(s: &[u8]) -> u64 {
    if let Some(c) = s.first_chunk::<8>() {
        return u64::from_le_bytes(*c);
    }
    // Shorter: byte by byte (a copy of a variable length into a buffer is a `memcpy` call).
    s.iter()
        .enumerate()
        .fold(0, |w, (i, &c)| w | (c as u64) << (8 * i))
}

/// Byte equality of two slices of the same length. Keys are short (2–30 bytes): an inline
/// loop beats a call to `memcmp`, which this replaced in the profile.
#[inline(always)]
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// Position of `needle` in a short `hay` (naive; keys are short, so no set-up cost pays off).
#[inline]
fn find_short(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let n = needle.len();
    if n == 0 {
        return Some(0);
    }
    if hay.len() < n {
        return None;
    }
    let first = needle[0];
    (0..=hay.len() - n).find(|&i| hay[i] == first && same(&hay[i..i + n], needle))
}

impl Glob {
    /// The literal text before the first `*` (empty for `*email*`).
    pub fn lead(&self) -> &[u8] {
        self.pieces[0].as_bytes()
    }

    fn matches(&self, mut s: &[u8]) -> bool {
        if s.len() < self.min_len || head8(s) & self.head_mask != self.head {
            return false;
        }
        // A lead of up to 8 bytes is all in `head` (and `s` is at least as long).
        let first = self.pieces[0].as_bytes();
        if first.len() > 8 && !same(&s[..first.len()], first) {
            return false;
        }
        s = &s[first.len()..];
        let last = self.pieces[self.pieces.len() - 1].as_bytes();
        for (p, f) in self.pieces[1..self.pieces.len() - 1]
            .iter()
            .zip(&self.finders)
        {
            let found = if s.len() <= 64 {
                find_short(s, p.as_bytes())
            } else {
                f.find(s)
            };
            match found {
                Some(i) => s = &s[i + p.len()..],
                None => return false,
            }
        }
        s.len() >= last.len() && same(&s[s.len() - last.len()..], last)
    }
}

/// One step of a JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(KeyPat),
    Index(usize),
    AnyIndex,
    /// `**`: zero or more levels.
    AnyDepth,
}

/// A set of bytes (256 bits): the first bytes a flat key can start with to possibly match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ByteSet([u64; 4]);

impl ByteSet {
    pub const ALL: ByteSet = ByteSet([u64::MAX; 4]);

    fn insert(&mut self, b: u8) {
        self.0[(b >> 6) as usize] |= 1 << (b & 63);
    }

    /// Whether a key (by its first byte; an empty key counts as byte 0) may match.
    #[inline]
    pub fn admits(&self, key: &str) -> bool {
        let b = key.as_bytes().first().copied().unwrap_or(0);
        self.0[(b >> 6) as usize] & (1 << (b & 63)) != 0
    }

    pub fn union(self, o: ByteSet) -> ByteSet {
        ByteSet([
            self.0[0] | o.0[0],
            self.0[1] | o.0[1],
            self.0[2] | o.0[2],
            self.0[3] | o.0[3],
        ])
    }

    fn of(p: &KeyPat) -> ByteSet {
        let first = match p {
            KeyPat::Exact(e) => e.as_bytes().first().copied().unwrap_or(0),
            KeyPat::Glob(g) => match g.pieces[0].as_bytes().first() {
                Some(b) => *b,
                None => return ByteSet::ALL,
            },
        };
        let mut s = ByteSet::default();
        s.insert(first);
        s
    }
}

/// A compiled selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// As written, for messages and `explain`.
    pub text: String,
    pub scope: Scope,
    /// The whole selector as a key pattern for flat payloads.
    pub flat: KeyPat,
    /// The selector as a JSON path.
    pub steps: Vec<Step>,
    /// Ways to read the selector as `flat key` + `path inside that field's nested document`.
    pub nested: Vec<(KeyPat, Vec<Step>)>,
    /// First bytes of the flat keys this selector can match (itself or a nested prefix): a
    /// key outside it is skipped with one bit test.
    pub first: ByteSet,
    /// This selector's bit in its program's [`KeyIndex`](super::keys::KeyIndex); 0 outside a
    /// program (matched directly).
    pub bit: u64,
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Selector {
    /// Parses a selector; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Selector, String> {
        let t = text.trim();
        if t.is_empty() {
            return Err("empty field selector".into());
        }
        let (scope, rest) = if let Some(h) = t.strip_prefix("header:") {
            let name = h.trim().to_ascii_lowercase();
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!("{text:?}: write a header name after `header:`"));
            }
            (Scope::Header(name), "")
        } else if let Some(c) = t.strip_prefix("cookie:") {
            if c.trim().is_empty() {
                return Err(format!("{text:?}: write a cookie name after `cookie:`"));
            }
            (Scope::Cookie(c.trim().to_string()), "")
        } else if let Some(q) = t.strip_prefix("query:") {
            (Scope::Query, q)
        } else if let Some(b) = t.strip_prefix("body:") {
            (Scope::Body, b)
        } else {
            (Scope::Any, t)
        };
        if matches!(scope, Scope::Header(_) | Scope::Cookie(_)) {
            return Ok(Selector {
                text: t.to_string(),
                scope,
                flat: KeyPat::Exact(String::new()),
                steps: vec![],
                nested: vec![],
                first: ByteSet::default(),
                bit: 0,
            });
        }
        if rest.is_empty() {
            return Err(format!("{text:?}: write a field after the scope"));
        }
        let steps = parse_steps(rest).map_err(|e| format!("{text:?}: {e}"))?;
        let mut nested = Vec::new();
        for (i, _) in rest.match_indices('.') {
            if in_brackets_or_quotes(rest, i) {
                continue;
            }
            if let Ok(inner) = parse_steps(&rest[i + 1..]) {
                nested.push((KeyPat::new(&rest[..i]), inner));
            }
        }
        let flat = KeyPat::new(&unquote_flat(rest));
        let first = nested
            .iter()
            .fold(ByteSet::of(&flat), |acc, (k, _)| acc.union(ByteSet::of(k)));
        Ok(Selector {
            text: t.to_string(),
            scope,
            flat,
            steps,
            nested,
            first,
            bit: 0,
        })
    }

    /// Whether this selector names exactly one field (no wildcards): needed by `set`/`rename`.
    pub fn is_exact(&self) -> bool {
        matches!(self.flat, KeyPat::Exact(_))
            && self
                .steps
                .iter()
                .all(|s| matches!(s, Step::Key(KeyPat::Exact(_)) | Step::Index(_)))
    }

    /// Applies to the URL query / to the body.
    pub fn in_query(&self) -> bool {
        matches!(self.scope, Scope::Any | Scope::Query)
    }

    pub fn in_body(&self) -> bool {
        matches!(self.scope, Scope::Any | Scope::Body)
    }

    /// Applies to a part (the URL query, or the body).
    pub fn applies(&self, in_body: bool) -> bool {
        if in_body {
            self.in_body()
        } else {
            self.in_query()
        }
    }
}

/// Flat keys keep quotes out: `"a.b"` as a whole key means `a.b`.
fn unquote_flat(s: &str) -> String {
    s.replace('"', "")
}

fn in_brackets_or_quotes(s: &str, at: usize) -> bool {
    let (mut depth, mut quoted) = (0i32, false);
    for (i, c) in s.char_indices() {
        if i == at {
            return depth > 0 || quoted;
        }
        match c {
            '"' => quoted = !quoted,
            '[' if !quoted => depth += 1,
            ']' if !quoted => depth -= 1,
            _ => {}
        }
    }
    false
}

/// Parses `a.b[0].c[*]."d.e".**.f` into steps.
fn parse_steps(s: &str) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    let mut chars = s.char_indices().peekable();
    let mut expect_key = true;
    while let Some(&(i, c)) = chars.peek() {
        match c {
            '.' => {
                if expect_key {
                    return Err("empty segment (two dots in a row, or a leading dot)".into());
                }
                chars.next();
                expect_key = true;
            }
            '[' => {
                let end = s[i..].find(']').map(|e| i + e).ok_or("`[` without `]`")?;
                let inner = &s[i + 1..end];
                steps.push(match inner {
                    "*" => Step::AnyIndex,
                    "" => {
                        return Err("`[]`: write an index like [0], [*], or a key like [em]".into());
                    }
                    n if n.bytes().all(|b| b.is_ascii_digit()) => Step::Index(
                        n.parse()
                            .map_err(|_| format!("`[{n}]`: the index is too large"))?,
                    ),
                    // `ud[em]`, `cd[value]` (Meta): in JSON the key `em` of `ud`; in a flat
                    // payload the whole key `ud[em]`.
                    n => Step::Key(KeyPat::new(n)),
                });
                while chars.peek().is_some_and(|&(j, _)| j <= end) {
                    chars.next();
                }
                expect_key = false;
            }
            '"' => {
                let end = s[i + 1..]
                    .find('"')
                    .map(|e| i + 1 + e)
                    .ok_or("unclosed quote")?;
                steps.push(Step::Key(KeyPat::Exact(s[i + 1..end].to_string())));
                while chars.peek().is_some_and(|&(j, _)| j <= end) {
                    chars.next();
                }
                expect_key = false;
            }
            _ => {
                let end = s[i..].find(['.', '[']).map_or(s.len(), |e| i + e);
                let seg = &s[i..end];
                steps.push(if seg == "**" {
                    Step::AnyDepth
                } else {
                    Step::Key(KeyPat::new(seg))
                });
                while chars.peek().is_some_and(|&(j, _)| j < end) {
                    chars.next();
                }
                expect_key = false;
            }
        }
    }
    if expect_key {
        return Err("ends with a dot".into());
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing() {
        let s = Selector::parse("ep.email").unwrap();
        assert!(s.flat.matches("ep.email"));
        assert_eq!(s.steps.len(), 2);
        assert!(s.is_exact());
        let s = Selector::parse("ud[*]").unwrap();
        assert!(
            s.flat.matches("ud[em]") && s.flat.matches("ud[ph]") && !s.flat.matches("cd[value]")
        );
        assert_eq!(
            s.steps,
            vec![Step::Key(KeyPat::Exact("ud".into())), Step::AnyIndex]
        );
        let s = Selector::parse("batch[*].context.ip").unwrap();
        assert_eq!(s.steps.len(), 4);
        assert!(!s.is_exact());
        let s = Selector::parse("\"a.b\".c").unwrap();
        assert_eq!(
            s.steps,
            vec![
                Step::Key(KeyPat::Exact("a.b".into())),
                Step::Key(KeyPat::Exact("c".into()))
            ]
        );
        let s = Selector::parse("**.email").unwrap();
        assert_eq!(s.steps[0], Step::AnyDepth);
        let s = Selector::parse("data.properties.$current_url").unwrap();
        assert!(
            s.nested
                .iter()
                .any(|(k, st)| k.matches("data") && st.len() == 2)
        );
        assert_eq!(
            Selector::parse("header:User-Agent").unwrap().scope,
            Scope::Header("user-agent".into())
        );
        assert_eq!(Selector::parse("query:uid").unwrap().scope, Scope::Query);
        for bad in ["", "a..b", "a.", "a[]", "a[0", "header:", "query:"] {
            assert!(Selector::parse(bad).is_err(), "{bad:?}");
        }
        // Meta's bracketed keys: the whole flat key, or key `em` of `ud` in JSON.
        let s = Selector::parse("ud[em]").unwrap();
        assert!(s.flat.matches("ud[em]"));
        assert_eq!(
            s.steps,
            [
                Step::Key(KeyPat::Exact("ud".into())),
                Step::Key(KeyPat::Exact("em".into()))
            ]
        );
    }

    #[test]
    fn globs() {
        let p = KeyPat::new("ep.*");
        assert!(p.matches("ep.email") && !p.matches("ep") && !p.matches("up.x"));
        let p = KeyPat::new("*email*");
        assert!(p.matches("ep.customer_email") && p.matches("email") && !p.matches("mail"));
        let p = KeyPat::new("utm_*");
        assert!(p.matches("utm_source") && !p.matches("xutm_source"));
        let p = KeyPat::new("a*b*c");
        assert!(p.matches("abc") && p.matches("aXbYc") && !p.matches("acb"));
    }
}
