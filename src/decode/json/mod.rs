//! JSON codec over the decoded payload model ([`super::value`]).
//!
//! Rules rewrite a few fields of JSON beacons (PostHog, Segment, Amplitude, …) and the gateway
//! must forward everything else byte-identical, in its original order. serde_json cannot do
//! that (it re-escapes strings and keeps no source text), and re-parsing `RawValue` level by
//! level is too slow for the budget (a ~2 KB PostHog batch decoded and encoded in well under
//! 5 µs). So [`parse`] reads a document once, strictly (RFC 8259), recording on every node the
//! exact text it came from, and [`encode_into`] writes that text back for every node whose
//! `raw` is still set, encoding afresh only what a rule changed (and the containers above it).
//!
//! This module owns JSON syntax: the grammar, the depth limit, escaping and unescaping. What
//! fields mean belongs to the rules; documents nested inside strings to the caller's `nested`.

use std::borrow::Cow;

use super::value::{Arr, Enc, Entry, Obj, Str, ThinVec, Value};

/// The deepest nesting of objects and arrays [`parse`] accepts (serde_json stops at 127).
pub const MAX_DEPTH: usize = 128;

/// Why a document is not JSON, and the byte offset where that became clear.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSON at byte {offset}: {msg}")]
pub struct JsonError {
    pub offset: usize,
    pub msg: &'static str,
}

/// Strict RFC 8259 parse of a complete document: whitespace may surround the value, nothing
/// else may follow it. Top-level scalars are allowed; nesting deeper than [`MAX_DEPTH`] is an
/// error. Duplicate keys are kept, in order. Every node borrows its exact source text (`raw`,
/// `raw_key`, `Lit`); strings and keys borrow their decoded text too unless they hold escapes.
pub fn parse(text: &str) -> Result<Value<'_>, JsonError> {
    let (src, items, entries) = (text, Vec::with_capacity(16), Vec::with_capacity(32));
    let mut p = Parser {
        src,
        i: 0,
        items,
        entries,
        err: None,
    };
    let v = p.value(0);
    if let Some(e) = p.err {
        return Err(e);
    }
    p.ws();
    if p.i != text.len() {
        return Err(err(p.i, "unexpected text after the value"));
    }
    Ok(v)
}

/// Encodes `v` onto `out`. A node whose `raw` is set is written as that text; a changed string
/// as `nested(s)` when that returns a document, else as its text, escaped; a changed container
/// from its parts (`raw_key` when set, no whitespace added), so its untouched children still
/// go out byte-identical. A `Lit` is written as its text. `raw` and `raw_key` are taken to be
/// JSON: a node moved in from another codec (a query-string value) must have them cleared.
pub fn encode_into(v: &Value<'_>, out: &mut String, nested: &dyn Fn(&Str<'_>) -> Option<String>) {
    // Most children are untouched: write those here rather than through a call each.
    let part = |v: &Value<'_>, out: &mut String| match raw(v) {
        Some(raw) => out.push_str(raw),
        None => encode_into(v, out, nested),
    };
    if let Some(raw) = raw(v) {
        return out.push_str(raw);
    }
    match v {
        Value::Str(s) => match nested(s) {
            Some(n) => escape_into(out, &n),
            None => escape_into(out, &s.text()),
        },
        Value::Obj(o) => {
            out.push('{');
            for (n, e) in o.entries.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                match e.raw_key {
                    Some(k) => out.push_str(k),
                    None => escape_into(out, &e.key),
                }
                out.push(':');
                part(&e.value, out);
            }
            out.push('}');
        }
        Value::Arr(a) => {
            out.push('[');
            for (n, item) in a.items.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                part(item, out);
            }
            out.push(']');
        }
        Value::Lit(_) => {} // always has its text, written above
    }
}

/// [`encode_into`] a new string, with no nested documents.
pub fn to_string(v: &Value<'_>) -> String {
    let mut out = String::with_capacity(size_hint(v));
    encode_into(v, &mut out, &|_| None);
    out
}

/// Appends `s` as a JSON string literal, quotes included. Only `"`, `\` and control characters
/// below 0x20 are escaped (`\n` `\r` `\t` `\b` `\f`, others `\u00XX`); the rest, non-ASCII
/// included, is written as UTF-8.
pub fn escape_into(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let b = s.as_bytes();
    out.reserve(s.len() + 2);
    out.push('"');
    let (mut chunk, mut i) = (0, 0);
    loop {
        i = scan(b, i);
        out.push_str(&s[chunk..i]);
        let Some(&c) = b.get(i) else { break };
        match c {
            b'"' | b'\\' => out.extend(['\\', char::from(c)]),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            _ => {
                out.push_str("\\u00");
                out.extend([HEX[usize::from(c >> 4)], HEX[usize::from(c & 0xf)]].map(char::from));
            }
        }
        (i, chunk) = (i + 1, i + 1);
    }
    out.push('"');
}

/// The exact source text of `v`, unless it changed.
fn raw<'v>(v: &'v Value<'_>) -> Option<&'v str> {
    match v {
        Value::Lit(l) => Some(l),
        Value::Str(s) => s.raw(),
        Value::Obj(Obj { raw, .. }) | Value::Arr(Arr { raw, .. }) => *raw,
    }
}

/// A guess at the encoded length: exact for an untouched node, else 64 bytes per part (the
/// buffer grows if that is short; walking the tree for a better guess costs more).
fn size_hint(v: &Value<'_>) -> usize {
    raw(v).map_or_else(
        || match v {
            Value::Str(s) => s.text().len() + 8,
            Value::Obj(o) => 64 * o.entries.len() + 2,
            Value::Arr(a) => 64 * a.items.len() + 2,
            Value::Lit(l) => l.len(),
        },
        str::len,
    )
}

fn err(offset: usize, msg: &'static str) -> JsonError {
    JsonError { offset, msg }
}

/// The index of the first `"`, `\` or control character in `b` from `i` (or `b.len()`).
/// Eight bytes at a time: the classic "has zero byte" / "has byte less than" bit tricks only
/// give false positives above a true match, so the lowest flagged byte is the first match.
#[inline]
fn scan(b: &[u8], i: usize) -> usize {
    // 16 bytes a step while there are that many; eight, then one, for the rest.
    let (mut i, found) = super::mask::json_run_end(b, i);
    if found {
        return i;
    }
    const ONES: u64 = 0x0101_0101_0101_0101;
    while let Some(&chunk) = b.get(i..i + 8).and_then(|c| c.first_chunk::<8>()) {
        let x = u64::from_le_bytes(chunk);
        let (q, s) = (x ^ (ONES * 0x22), x ^ (ONES * 0x5c));
        let hit = (q.wrapping_sub(ONES) & !q)
            | (s.wrapping_sub(ONES) & !s)
            | (x.wrapping_sub(ONES * 0x20) & !x);
        match hit & (ONES * 0x80) {
            0 => i += 8,
            hit => return i + (hit.trailing_zeros() / 8) as usize,
        }
    }
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            break;
        }
        i += 1;
    }
    i
}

/// The text between a JSON literal's quotes.
fn unquote(raw: &str) -> &str {
    raw.get(1..raw.len().saturating_sub(1)).unwrap_or("")
}

/// The index after a run of ASCII digits starting at `i`.
fn digits(b: &[u8], i: usize) -> usize {
    i + b[i.min(b.len())..]
        .iter()
        .take_while(|c| c.is_ascii_digit())
        .count()
}

struct Parser<'a> {
    src: &'a str,
    i: usize,
    /// Children of the arrays and objects still open, moved into an exactly sized `Vec` (one
    /// allocation, one copy) when each one closes.
    items: Vec<Value<'a>>,
    entries: Vec<Entry<'a>>,
    /// The first error; once set, parsing unwinds with placeholder values. (Returning
    /// `Result`s moved every node through memory once more, in narrower stores than the
    /// loads that read it back: a store-forwarding stall per node.)
    err: Option<JsonError>,
}

/// Where [`Parser::value_at`] writes.
#[derive(Clone, Copy)]
enum Slot {
    Entry(usize),
    Item(usize),
}

/// What a parse that failed returns on its way out.
const FAILED: Value<'static> = Value::Lit(Cow::Borrowed(""));

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.i += 1;
        }
    }

    /// Records an error (the first one wins) and returns [`FAILED`].
    #[cold]
    fn fail(&mut self, offset: usize, msg: &'static str) -> Value<'a> {
        self.err.get_or_insert(err(offset, msg));
        FAILED
    }

    /// A value after optional whitespace; `depth` is the number of containers around it.
    fn value(&mut self, depth: usize) -> Value<'a> {
        self.ws();
        match self.peek() {
            Some(b'"') => match self.string() {
                (raw, None) => Value::Str(Str::new(raw, Enc::Quoted)),
                (raw, Some(t)) => Value::Str(Str::with_text(raw, t)),
            },
            Some(b'{') if depth < MAX_DEPTH => self.object(depth + 1),
            Some(b'[') if depth < MAX_DEPTH => self.array(depth + 1),
            Some(b'{' | b'[') => self.fail(self.i, "nesting too deep"),
            Some(b't') => self.word("true"),
            Some(b'f') => self.word("false"),
            Some(b'n') => self.word("null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => self.fail(self.i, "expected a value"),
            None => self.fail(self.i, "unexpected end of input"),
        }
    }

    /// [`Self::value`] written into a member's or item's place in the scratch stacks. A
    /// string, most members, is built right there: a node returned and then pushed is
    /// staged on the stack and reloaded with wider loads than it was stored with.
    #[inline(always)]
    fn value_at(&mut self, depth: usize, at: Slot) {
        self.ws();
        let v = match self.peek() {
            Some(b'"') => {
                let (raw, escaped) = self.string();
                let slot = match at {
                    Slot::Entry(i) => self.entries.get_mut(i).map(|e| &mut e.value),
                    Slot::Item(i) => self.items.get_mut(i),
                };
                if let Some(slot) = slot {
                    *slot = match escaped {
                        None => Value::Str(Str::new(raw, Enc::Quoted)),
                        Some(t) => Value::Str(Str::with_text(raw, t)),
                    };
                }
                return;
            }
            _ => self.value(depth),
        };
        match at {
            Slot::Entry(i) => {
                if let Some(e) = self.entries.get_mut(i) {
                    e.value = v;
                }
            }
            Slot::Item(i) => {
                if let Some(slot) = self.items.get_mut(i) {
                    *slot = v;
                }
            }
        }
    }

    fn object(&mut self, depth: usize) -> Value<'a> {
        let (start, base) = (self.i, self.entries.len());
        self.i += 1;
        self.ws();
        if self.peek() != Some(b'}') {
            loop {
                if self.peek() != Some(b'"') {
                    return self.fail(self.i, "expected a string key");
                }
                let (raw_key, escaped) = self.string();
                self.ws();
                if self.err.is_some() {
                    return FAILED;
                }
                if self.peek() != Some(b':') {
                    return self.fail(self.i, "expected `:`");
                }
                self.i += 1;
                // The member first, its value then parsed into it (nested containers use
                // the stack above it and give it back before they return). Pushed with
                // `once_with`, which builds it in place after the growth check: an entry
                // built before `push` is staged on the stack around the check and reloaded
                // with wider loads than it was stored with (a store-forwarding stall).
                let at = self.entries.len();
                self.entries.extend(std::iter::once_with(|| Entry {
                    key: Cow::Borrowed(unquote(raw_key)),
                    raw_key: Some(raw_key),
                    value: FAILED,
                    class: 0,
                    bare: false,
                }));
                if let (Some(t), Some(e)) = (escaped, self.entries.last_mut()) {
                    e.key = Cow::Owned(t);
                }
                self.value_at(depth, Slot::Entry(at));
                if self.err.is_some() {
                    return FAILED;
                }
                self.ws();
                match self.peek() {
                    Some(b',') => self.i += 1,
                    Some(b'}') => break,
                    _ => return self.fail(self.i, "expected `,` or `}`"),
                }
                self.ws();
            }
        }
        self.i += 1;
        let entries: ThinVec<Entry<'a>> = self.entries.drain(base..).collect();
        let raw = Some(&self.src[start..self.i]);
        Value::Obj(Obj { entries, raw })
    }

    fn array(&mut self, depth: usize) -> Value<'a> {
        let (start, base) = (self.i, self.items.len());
        self.i += 1;
        self.ws();
        if self.peek() != Some(b']') {
            loop {
                let at = self.items.len();
                self.items.extend(std::iter::once_with(|| FAILED));
                self.value_at(depth, Slot::Item(at));
                if self.err.is_some() {
                    return FAILED;
                }
                self.ws();
                match self.peek() {
                    Some(b',') => self.i += 1,
                    Some(b']') => break,
                    _ => return self.fail(self.i, "expected `,` or `]`"),
                }
            }
        }
        self.i += 1;
        let items: ThinVec<Value<'a>> = self.items.drain(base..).collect();
        let raw = Some(&self.src[start..self.i]);
        Value::Arr(Arr { items, raw })
    }

    fn word(&mut self, w: &'static str) -> Value<'a> {
        let start = self.i;
        if !self.src.as_bytes()[start..].starts_with(w.as_bytes()) {
            return self.fail(start, "invalid literal");
        }
        self.i += w.len();
        Value::Lit(Cow::Borrowed(&self.src[start..self.i]))
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, kept as its text.
    fn number(&mut self) -> Value<'a> {
        let (b, start) = (self.src.as_bytes(), self.i);
        let mut i = start + usize::from(b[start] == b'-');
        i = match b.get(i) {
            Some(b'0') => i + 1,
            Some(b'1'..=b'9') => digits(b, i + 1),
            _ => return self.fail(i, "expected a digit"),
        };
        if b.get(i) == Some(&b'.') {
            i = match digits(b, i + 1) {
                end if end == i + 1 => return self.fail(end, "expected a digit after `.`"),
                end => end,
            };
        }
        if let Some(b'e' | b'E') = b.get(i) {
            i += 1 + usize::from(matches!(b.get(i + 1), Some(b'+' | b'-')));
            i = match digits(b, i) {
                end if end == i => return self.fail(end, "expected a digit in the exponent"),
                end => end,
            };
        }
        self.i = i;
        Value::Lit(Cow::Borrowed(&self.src[start..i]))
    }

    /// A string literal at `self.i` (on its `"`): its exact text, and its decoded text when
    /// that is not the text between the quotes (it has escapes). On an error, records it.
    #[inline(always)]
    fn string(&mut self) -> (&'a str, Option<String>) {
        let start = self.i;
        let i = scan(self.src.as_bytes(), start + 1);
        if self.src.as_bytes().get(i) != Some(&b'"') {
            return match self.escaped(start, i) {
                Ok((text, raw)) => (raw, Some(text)),
                Err(e) => {
                    self.err.get_or_insert(e);
                    ("", None)
                }
            };
        }
        self.i = i + 1;
        (&self.src[start..=i], None)
    }

    /// The rest of [`Self::string`] from `i`, its first `\`, control character or end.
    #[cold]
    fn escaped(&mut self, start: usize, mut i: usize) -> Result<(String, &'a str), JsonError> {
        let (src, b) = (self.src, self.src.as_bytes());
        let mut out = String::with_capacity(i - start + 16);
        let mut chunk = start + 1;
        loop {
            out.push_str(&src[chunk..i]);
            match b.get(i) {
                Some(b'"') => break,
                Some(b'\\') => chunk = self.escape(i, &mut out)?,
                Some(_) => return Err(err(i, "control character in string")),
                None => return Err(err(i, "unterminated string")),
            }
            i = scan(b, chunk);
        }
        self.i = i + 1;
        Ok((out, &src[start..self.i]))
    }

    /// Decodes the escape at `i` (on its `\`) onto `out`; returns the index after it.
    fn escape(&self, i: usize, out: &mut String) -> Result<usize, JsonError> {
        let b = self.src.as_bytes();
        let c = match b.get(i + 1) {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                let lone = err(i, "lone surrogate in \\u escape");
                let (code, next) = match self.hex4(i + 2)? {
                    hi @ 0xD800..=0xDBFF if b.get(i + 6..i + 8) == Some(b"\\u") => {
                        match self.hex4(i + 8)? {
                            lo @ 0xDC00..=0xDFFF => {
                                (0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00), i + 12)
                            }
                            _ => return Err(lone),
                        }
                    }
                    0xD800..=0xDFFF => return Err(lone),
                    code => (code, i + 6),
                };
                // Always a scalar value here: surrogates were paired or refused above.
                out.push(char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER));
                return Ok(next);
            }
            _ => return Err(err(i, "invalid escape")),
        };
        out.push(c);
        Ok(i + 2)
    }

    fn hex4(&self, i: usize) -> Result<u32, JsonError> {
        let (b, mut code) = (self.src.as_bytes(), 0);
        for k in i..i + 4 {
            let d = b.get(k).and_then(|&c| char::from(c).to_digit(16));
            code = (code << 4) | d.ok_or(err(k, "expected 4 hex digits after \\u"))?;
        }
        Ok(code)
    }
}

#[cfg(test)]
mod tests;
