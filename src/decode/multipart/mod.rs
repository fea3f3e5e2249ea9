//! `multipart/form-data` (RFC 7578) codec, for Meta Pixel: fbevents.js sends events with
//! `navigator.sendBeacon(url, formData)`, which the browser frames as one part per field
//! (`id`, `ev`, `dl`, `cd[…]`, `ud[…]`, …). Decoding turns the parts into a flat object in the
//! shared [`super::value`] model; a [`Layout`] keeps every byte around the field values
//! (preamble, each part's header block, line endings, epilogue), so that [`encode`] writes an
//! untouched body back byte-identical, and a changed one different only where rules acted.
//!
//! This module owns multipart framing: delimiters, part header blocks and the field name in
//! `Content-Disposition`. What the fields mean belongs to the rules.

use std::borrow::Cow;

use super::value::{Enc, Entry, Obj, Str, ThinVec, Value};

/// Most parts a body may have (a Pixel event has a few dozen).
pub const MAX_PARTS: usize = 1000;

/// Spaces and tabs, around parameters and after a delimiter (transport padding).
const WS: [char; 2] = [' ', '\t'];

/// Why a multipart body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    #[error("multipart/form-data Content-Type has no boundary parameter; add `boundary=…`")]
    MissingBoundary,
    #[error(
        "multipart body never contains the boundary of its Content-Type (a line `--` boundary)"
    )]
    NoOpeningDelimiter,
    #[error("multipart body ends without its closing delimiter `--` boundary `--` (truncated?)")]
    NoClosingDelimiter,
    #[error("multipart part {part}: its header block is not ended by an empty line")]
    UnterminatedHeaders { part: usize },
    #[error("multipart part {part} has no `Content-Disposition: form-data` header with a name")]
    NoName { part: usize },
    #[error(
        "multipart body is not UTF-8 text (invalid byte at offset {valid_up_to}); only text \
         fields can be decoded: set codec = \"opaque\" on the route to pass it through"
    )]
    NotUtf8 { valid_up_to: usize },
    #[error("multipart body has more than {0} parts")]
    TooManyParts(usize),
}

/// Everything [`encode`] needs to write a body back exactly as it came, besides the values:
/// the preamble, each part's header block and line ending, the epilogue.
///
/// Rules may remove, reorder, change, rename or add entries between decode and encode, so
/// parts are not matched by position: an entry's `raw_key` is a slice of the original body,
/// and its address identifies the part it was read from (even among repeated names). An
/// entry whose `raw_key` is `None` (renamed or added), or does not point into this body, gets
/// a fresh `Content-Disposition: form-data; name="…"` header.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout<'a> {
    /// Text before the first delimiter, with the line break that precedes it.
    preamble: &'a str,
    /// The original parts, in body order (so ordered by the address of their name).
    parts: Vec<Part<'a>>,
    /// Line ending of the first delimiter line, used for added parts.
    eol: &'static str,
    /// Text after the closing `--boundary--`.
    epilogue: &'a str,
}

/// One original part, minus its value.
#[derive(Debug, Clone, PartialEq)]
struct Part<'a> {
    /// The name as written in the header (between the quotes), a slice of `head`.
    name: &'a str,
    /// Everything from the end of `--boundary` to the start of the value: transport padding,
    /// line break, header lines, empty line.
    head: &'a str,
    /// The line break between the value and the next delimiter.
    tail: &'static str,
}

impl<'a> Layout<'a> {
    /// The original part whose name is the slice `raw_key`.
    fn part(&self, raw_key: &str) -> Option<&Part<'a>> {
        let at = raw_key.as_ptr().addr();
        let i = self
            .parts
            .binary_search_by_key(&at, |p| p.name.as_ptr().addr())
            .ok()?;
        let p = &self.parts[i];
        (p.name.len() == raw_key.len()).then_some(p)
    }
}

/// The `boundary` parameter of a `multipart/form-data` Content-Type (quoted or not), as
/// written: boundaries are case-sensitive. `None` for another media type, or without one.
pub fn boundary(content_type: &str) -> Option<&str> {
    let (mime, params) = split_type(content_type)?;
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    let (b, quoted) = param(params, "boundary")?;
    let escaped = quoted && b.contains('\\');
    (!b.is_empty() && !escaped && !b.contains(['\r', '\n'])).then_some(b)
}

/// Checks that a body is UTF-8 text, which [`decode`] requires.
pub fn utf8(body: &[u8]) -> Result<&str, MultipartError> {
    std::str::from_utf8(body).map_err(|e| MultipartError::NotUtf8 {
        valid_up_to: e.valid_up_to(),
    })
}

/// Decodes a body into an object with one entry per part, in order: the key is the form
/// field name from `Content-Disposition` (quoted-string escapes undone; `raw_key` is the name
/// as written between the quotes), the value a string whose text and raw are the part body.
pub fn decode<'a>(body: &'a str, boundary: &str) -> Result<(Obj<'a>, Layout<'a>), MultipartError> {
    if boundary.is_empty() {
        return Err(MultipartError::MissingBoundary);
    }
    let delim = format!("--{boundary}");
    let line = format!("\n{delim}");
    let start = if body.starts_with(&delim) && ends_delimiter(&body[delim.len()..]) {
        0
    } else {
        find_delimiter(body, 0, &line).ok_or(MultipartError::NoOpeningDelimiter)?
    };
    let (preamble, eol) = (&body[..start], line_ending(&body[start..]));
    let mut layout = Layout {
        preamble,
        parts: Vec::new(),
        eol,
        epilogue: "",
    };
    let mut entries = ThinVec::new();
    let mut at = start + delim.len();
    while !body[at..].starts_with("--") {
        if layout.parts.len() == MAX_PARTS {
            return Err(MultipartError::TooManyParts(MAX_PARTS));
        }
        let (entry, part, next) = decode_part(body, at, &line, layout.parts.len() + 1)?;
        entries.push(entry);
        layout.parts.push(part);
        at = next + delim.len();
    }
    layout.epilogue = &body[at + 2..];
    Ok((Obj { entries, raw: None }, layout))
}

/// The part after the delimiter ending at `at`: its entry, its layout and where the next
/// delimiter starts. `n` is its 1-based number, for errors.
fn decode_part<'a>(
    body: &'a str,
    at: usize,
    line: &str,
    n: usize,
) -> Result<(Entry<'a>, Part<'a>, usize), MultipartError> {
    let head_end =
        header_end(body, at, &line[1..]).ok_or(MultipartError::UnterminatedHeaders { part: n })?;
    let head = &body[at..head_end];
    let (name, quoted) = part_name(head).ok_or(MultipartError::NoName { part: n })?;
    let next = find_delimiter(body, head_end, line).ok_or(MultipartError::NoClosingDelimiter)?;
    let crlf = next >= head_end + 2 && body.as_bytes()[next - 2] == b'\r';
    let tail = if crlf { "\r\n" } else { "\n" };
    let text = &body[head_end..next - tail.len()];
    let key = if quoted {
        unquote(name)
    } else {
        Cow::Borrowed(name)
    };
    let value = Value::Str(Str::new(text, Enc::Plain));
    Ok((
        Entry {
            key,
            raw_key: Some(name),
            value,
            class: 0,
            bare: false,
        },
        Part { name, head, tail },
        next,
    ))
}

/// The start (`--`) of the first delimiter line at or after `from`: `line` (`\n--boundary`)
/// followed by `--` or by optional padding and a line break. A boundary-like text anywhere
/// else is part of a value.
fn find_delimiter(body: &str, from: usize, line: &str) -> Option<usize> {
    let mut at = from;
    while let Some(i) = body[at..].find(line) {
        let start = at + i + 1;
        if ends_delimiter(&body[start + line.len() - 1..]) {
            return Some(start);
        }
        at = start;
    }
    None
}

/// Whether the text after `--boundary` makes it a delimiter.
fn ends_delimiter(rest: &str) -> bool {
    let padded = rest.trim_start_matches(WS);
    rest.starts_with("--") || padded.starts_with('\n') || padded.starts_with("\r\n")
}

/// The line ending of the first line of `s`, CRLF when there is none.
fn line_ending(s: &str) -> &'static str {
    match s.find('\n') {
        Some(i) if i == 0 || s.as_bytes()[i - 1] != b'\r' => "\n",
        _ => "\r\n",
    }
}

/// Where the value starts: after the delimiter line at `at` and the header lines up to an
/// empty line. `None` if a delimiter or the end of the body comes first.
fn header_end(body: &str, at: usize, delim: &str) -> Option<usize> {
    let mut at = at + body[at..].find('\n')? + 1;
    loop {
        let end = at + body[at..].find('\n')?;
        let line = &body[at..end];
        if line.is_empty() || line == "\r" {
            return Some(end + 1);
        }
        if line.starts_with(delim) {
            return None;
        }
        at = end + 1;
    }
}

/// The `name` parameter of the first `Content-Disposition: form-data` header in a header
/// block, as written, and whether it was quoted.
fn part_name(head: &str) -> Option<(&str, bool)> {
    head.split('\n').find_map(|line| {
        let (header, value) = line.split_once(':')?;
        if !header.trim().eq_ignore_ascii_case("content-disposition") {
            return None;
        }
        let (kind, params) = split_type(value.trim_end_matches('\r'))?;
        kind.eq_ignore_ascii_case("form-data")
            .then(|| param(params, "name"))?
    })
}

/// Splits `type; params` at the first `;` (the params keep it).
fn split_type(v: &str) -> Option<(&str, &str)> {
    let at = v.find(';')?;
    Some((v[..at].trim(), &v[at..]))
}

/// The value of parameter `want` (case-insensitive) in `; a=1; b="x"`, as written (between
/// the quotes when quoted), and whether it was quoted. `None` if absent or malformed.
fn param<'s>(mut s: &'s str, want: &str) -> Option<(&'s str, bool)> {
    loop {
        s = s
            .trim_start_matches(WS)
            .strip_prefix(';')?
            .trim_start_matches(WS);
        let eq = s.find(['=', ';'])?;
        if s.as_bytes()[eq] == b';' {
            s = &s[eq..];
            continue;
        }
        let name = s[..eq].trim_end_matches(WS);
        s = s[eq + 1..].trim_start_matches(WS);
        let quoted = s.starts_with('"');
        let (value, rest) = if quoted {
            quoted_end(s).map(|end| (&s[1..end], &s[end + 1..]))?
        } else {
            s.split_at(s.find([';', ' ', '\t']).unwrap_or(s.len()))
        };
        if name.eq_ignore_ascii_case(want) {
            return Some((value, quoted));
        }
        s = rest;
    }
}

/// The index of the quote closing the quoted-string that `s` starts with.
fn quoted_end(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// Undoes quoted-string escapes (`\"`, `\\`, and `\` before any other character).
fn unquote(raw: &str) -> Cow<'_, str> {
    if !raw.contains('\\') {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Writes `obj` back as a body delimited by `boundary` (the one it was decoded with): parts
/// from the original keep their header block, with their original value when unchanged;
/// removed entries are left out; renamed and added entries get a fresh header with the
/// original line ending. `nested` encodes string fields that carry a changed document.
///
/// Values are written as they are: multipart has no escaping, so a text a rule sets must not
/// contain a line starting with `--` and the boundary.
pub fn encode(
    obj: &Obj<'_>,
    layout: &Layout<'_>,
    boundary: &str,
    out: &mut String,
    nested: &dyn Fn(&Str<'_>) -> Option<String>,
) {
    out.push_str(layout.preamble);
    for e in &obj.entries {
        let part = e.raw_key.and_then(|k| layout.part(k));
        out.push_str("--");
        out.push_str(boundary);
        match part {
            Some(p) => out.push_str(p.head),
            None => fresh_head(out, &e.key, layout.eol),
        }
        value_into(out, &e.value, nested);
        out.push_str(part.map_or(layout.eol, |p| p.tail));
    }
    out.push_str("--");
    out.push_str(boundary);
    out.push_str("--");
    out.push_str(layout.epilogue);
}

/// The rest of the delimiter line and a header block for a new field. The name is escaped
/// as a quoted-string; line breaks in it are percent-encoded as browsers do.
fn fresh_head(out: &mut String, key: &str, eol: &str) {
    out.push_str(eol);
    out.push_str("Content-Disposition: form-data; name=\"");
    for c in key.chars() {
        match c {
            '"' | '\\' => out.extend(['\\', c]),
            '\r' => out.push_str("%0D"),
            '\n' => out.push_str("%0A"),
            c => out.push(c),
        }
    }
    out.push('"');
    out.push_str(eol);
    out.push_str(eol);
}

fn value_into(out: &mut String, v: &Value<'_>, nested: &dyn Fn(&Str<'_>) -> Option<String>) {
    match v {
        Value::Str(s) => match (s.raw(), nested(s)) {
            (_, Some(n)) => out.push_str(&n),
            (Some(raw), None) => out.push_str(raw),
            (None, None) => out.push_str(&s.text()),
        },
        Value::Lit(l) => out.push_str(l),
        // A structured value in a flat format: written as JSON text.
        other => out.push_str(&super::json::to_string(other)),
    }
}

#[cfg(test)]
mod tests;
