//! Flat `key=value&…` codecs: URL query strings and `application/x-www-form-urlencoded`
//! bodies. Decoding keeps each pair's exact text; encoding writes untouched pairs back as they
//! were (duplicate keys, keys without `=`, `+` or `%20` for spaces, in their original order)
//! and encodes only what a rule changed or added.

use std::borrow::Cow;
use std::ops::ControlFlow;

use super::mask;
use super::value::{Enc, Entry, Obj, Str, ThinVec, Value};

/// How spaces were written in the original (and are written in changed values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Spaces {
    /// `%20` (what GA4 and most tags use in query strings).
    #[default]
    Percent,
    /// `+` (HTML forms).
    Plus,
}

/// Decodes `a=1&b=2` into an object. `+` is read as a space, as browsers' URLSearchParams do.
/// Never fails: malformed escapes are kept as text.
///
/// This runs for every hit, so it walks the set bits of 64-byte blocks' masks of `&`, `=`
/// and escapes ([`super::mask`]) rather than searching byte by byte: keys with escapes are
/// unescaped (rules match on them), and values are left as they are, marked
/// [`Enc::Percent`] when they hold `%` or `+`, to be unescaped only if something reads them.
pub fn decode(s: &str) -> (Obj<'_>, Spaces) {
    let b = s.as_bytes();
    if b.is_empty() {
        // No query at all: no fields (not one field with an empty name).
        return (Obj::default(), Spaces::Percent);
    }
    // A pair per `&` and one more, and room for two that rules add (GA4's `_uip`) without
    // moving them all to a bigger allocation.
    let n = memchr::memchr_iter(b'&', b).count() + 1;
    let mut entries = ThinVec::with_capacity(n + 2);
    let mut scan = Scanner::new(b);
    // `extend` writes each entry in place: pushed one by one, an entry is staged on the stack
    // around the growth check and copied with wider loads than it was stored with (a
    // store-forwarding stall per field).
    entries.extend(Pairs {
        s,
        scan: &mut scan,
        left: n,
    });
    if scan.key_esc {
        for e in entries.iter_mut() {
            e.key = unescape(e.raw_key.unwrap_or_default());
        }
    }
    let plus = scan.plus;
    (
        Obj { entries, raw: None },
        if plus { Spaces::Plus } else { Spaces::Percent },
    )
}

/// A `key=value` pair (byte offsets into the text).
#[derive(Clone, Copy)]
struct Pair {
    start: usize,
    /// The first `=`, or `usize::MAX`.
    eq: usize,
    end: usize,
    key_esc: bool,
    val_esc: bool,
}

impl Pair {
    fn at(start: usize) -> Pair {
        Pair {
            start,
            eq: usize::MAX,
            end: start,
            key_esc: false,
            val_esc: false,
        }
    }
}

/// Finds the pairs of a text, block by block.
struct Scanner {
    /// Where the current block starts, its masks, the `&`s of it not yet passed, and where
    /// the unread part of the current pair starts in it.
    base: usize,
    m: mask::QueryMasks,
    amp: u64,
    from: u32,
    /// The pair being read.
    pair: Pair,
    /// A `+` was seen in a value; a key had an escape.
    plus: bool,
    key_esc: bool,
    done: bool,
}

impl Scanner {
    fn new(b: &[u8]) -> Scanner {
        let m = mask::query_masks(b, 0);
        Scanner {
            base: 0,
            m,
            amp: m.amp,
            from: 0,
            pair: Pair::at(0),
            plus: false,
            key_esc: false,
            done: b.is_empty(),
        }
    }

    /// The next pair.
    #[inline(always)]
    fn next(&mut self, b: &[u8]) -> Option<Pair> {
        if self.done {
            return None;
        }
        loop {
            // The pair's bytes in this block: `from` up to its `&`, or the block's end.
            let to = if self.amp == 0 {
                64
            } else {
                self.amp.trailing_zeros()
            };
            let (m, base, pair) = (&self.m, self.base, &mut self.pair);
            let span = mask::bits(self.from, to);
            if pair.eq == usize::MAX && m.eq & span != 0 {
                pair.eq = base + (m.eq & span).trailing_zeros() as usize;
            }
            let esc = m.esc & span;
            if esc != 0 {
                // Escapes after the `=` (at or past this block's start) are the value's.
                let key_end = match pair.eq {
                    usize::MAX => 64,
                    eq if eq < base => 0,
                    eq => (eq - base) as u32,
                };
                let value = esc & !mask::bits(0, key_end);
                pair.key_esc |= esc & !value != 0;
                pair.val_esc |= value != 0;
                self.plus |= m.plus & value != 0;
            }
            if self.amp != 0 {
                let end = base + to as usize;
                let done = Pair { end, ..*pair };
                *pair = Pair::at(end + 1);
                self.from = to + 1;
                self.amp &= self.amp - 1;
                return Some(done);
            }
            // The pair goes on in the next block, if there is one.
            self.base += 64;
            if self.base >= b.len() {
                self.done = true;
                return Some(Pair {
                    end: b.len(),
                    ..*pair
                });
            }
            self.m = mask::query_masks(b, self.base);
            (self.amp, self.from) = (self.m.amp, 0);
        }
    }
}

/// The entries of a text, with an exact length for `extend`.
struct Pairs<'a, 's> {
    s: &'a str,
    scan: &'s mut Scanner,
    /// Pairs not yet returned: one per `&`, and one more.
    left: usize,
}

impl<'a> Iterator for Pairs<'a, '_> {
    type Item = Entry<'a>;

    #[inline(always)]
    fn next(&mut self) -> Option<Entry<'a>> {
        let p = self.scan.next(self.s.as_bytes())?;
        self.left = self.left.saturating_sub(1);
        // `&` and `=` are ASCII, so every slice here is on a character boundary. (Offsets
        // first, slices last: slices picked by a `match` are staged on the stack.)
        let bare = p.eq == usize::MAX;
        let (key_end, value_start) = if bare {
            (p.end, p.end)
        } else {
            (p.eq, p.eq + 1)
        };
        debug_assert!(p.start <= key_end && value_start <= p.end && p.end <= self.s.len());
        debug_assert!(self.s.is_char_boundary(p.start) && self.s.is_char_boundary(p.end));
        debug_assert!(self.s.is_char_boundary(key_end) && self.s.is_char_boundary(value_start));
        // SAFETY: the scanner gives offsets in order within the text (`start <= eq < end <=
        // len`, `start` and `end` next to an `&` or at the text's ends), and every one of
        // them is at the text's start or end or next to an ASCII `&` or `=`, which are whole
        // characters: so each is a character boundary. (Checked slicing tested each of the
        // four boundaries again for every field.)
        let (k, v) = unsafe {
            (
                self.s.get_unchecked(p.start..key_end),
                self.s.get_unchecked(value_start..p.end),
            )
        };
        let enc = if p.val_esc { Enc::Percent } else { Enc::Plain };
        // Escaped keys are unescaped afterwards (rare; a key picked by a branch here is staged
        // on the stack too).
        self.scan.key_esc |= p.key_esc;
        Some(Entry {
            key: Cow::Borrowed(k),
            raw_key: Some(k),
            value: Value::Str(Str::new(v, enc)),
            class: 0,
            bare,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

/// Percent-decodes one component (`+` as space); borrows when there is nothing to decode.
/// Invalid escapes stay as written; bytes that are not UTF-8 after decoding become U+FFFD.
pub fn unescape(s: &str) -> Cow<'_, str> {
    // Most texts unescaped one by one are short names (`utm_source`), where a plain loop beats
    // setting up a vector search.
    let b = s.as_bytes();
    let plain = if b.len() < 32 {
        !b.iter().any(|&c| c == b'%' || c == b'+')
    } else {
        memchr::memchr2(b'%', b'+', b).is_none()
    };
    if plain {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    unescape_into(s, &mut out);
    Cow::Owned(out)
}

/// Appends `s` percent-decoded to `out` (as [`unescape`]).
pub fn unescape_into(s: &str, out: &mut String) {
    let start = out.len();
    let mut bytes = std::mem::take(out).into_bytes();
    if !unescape_bytes(s.as_bytes(), &mut bytes) {
        debug_assert!(std::str::from_utf8(&bytes).is_ok());
        // SAFETY: `bytes` is `out`'s text (UTF-8) followed by `s` (UTF-8) with some ASCII
        // sequences (`+`, `%XX`) replaced by single ASCII bytes, no escape having given a
        // byte from 0x80 (what `unescape_bytes` returned): the pieces copied from `s` lie
        // between ASCII bytes, so they are whole characters, and the result is UTF-8.
        *out = unsafe { String::from_utf8_unchecked(bytes) };
        return;
    }
    *out = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let bytes = e.into_bytes();
            let mut t = String::from_utf8_lossy(&bytes[..start]).into_owned();
            t.push_str(&String::from_utf8_lossy(&bytes[start..]));
            t
        }
    };
}

/// The bytes of `b` percent-decoded onto `out`; whether an escape gave a byte from 0x80 (only
/// then can the result fail to be UTF-8 when `b` is). Escapes are found from 64-byte blocks'
/// masks of `%` and `+` ([`super::mask`]) and the runs between them copied whole: a page URL
/// has an escape every few bytes, and searching for each one mispredicted a branch.
fn unescape_bytes(b: &[u8], out: &mut Vec<u8>) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if super::unescape_vbmi2::available() {
            // SAFETY: the CPU has the features it is compiled for (checked just above).
            return unsafe { super::unescape_vbmi2::unescape_bytes(b, out) };
        }
    }
    unescape_bytes_scalar(b, out)
}

/// [`unescape_bytes`] without vector instructions (and the reference the tests hold the
/// vector version to).
fn unescape_bytes_scalar(b: &[u8], out: &mut Vec<u8>) -> bool {
    out.reserve(b.len());
    let mut high = false;
    // Bytes before `i` are written. The hex digits of an escape are never `%` or `+`, so
    // every set bit is at or past `i` when it is reached.
    let mut i = 0;
    for base in (0..b.len()).step_by(64) {
        let [pct, plus] = mask::masks_at(b, base, b"%+");
        let mut m = pct | plus;
        while m != 0 {
            let at = base + m.trailing_zeros() as usize;
            m &= m - 1;
            out.extend_from_slice(b.get(i..at).unwrap_or_default());
            if plus & 1 << (at - base) != 0 {
                out.push(b' ');
                i = at + 1;
                continue;
            }
            // `%`: two hex digits make a byte; anything else stays as written.
            match escape_at(b, at) {
                Some(c) => {
                    out.push(c);
                    high |= c >= 0x80;
                    i = at + 3;
                }
                None => {
                    out.push(b'%');
                    i = at + 1;
                }
            }
        }
    }
    out.extend_from_slice(b.get(i..).unwrap_or_default());
    high
}

/// The byte a `%XX` escape at `b[i..]` stands for; `None` when no escape starts there.
#[inline]
pub fn escape_at(b: &[u8], i: usize) -> Option<u8> {
    match b.get(i..i + 3)? {
        [b'%', h, l] => {
            let (h, l) = (HEX_VAL[*h as usize], HEX_VAL[*l as usize]);
            (h != NOT_HEX && l != NOT_HEX).then_some(h << 4 | l)
        }
        _ => None,
    }
}

/// Calls `f(position, separator, length of how it is written)` for the URL separators `?` `#`
/// `&` `;` `=` of a text, written plain or as `%XX` escapes, in order, until `f` breaks.
///
/// What reads a URL without decoding it (`strip_url` on GA4's percent-encoded page URL, the
/// scan's URL-secret detector) walks these; they come from 64-byte blocks' masks of the
/// separators and `%` ([`super::mask`]), so a URL dense with escapes costs a few operations
/// per block and per separator rather than a search per byte. (A callback rather than an
/// iterator: the iterator's state lived in memory and cost a fifth more.)
#[inline(always)]
pub fn url_separators(b: &[u8], mut f: impl FnMut(usize, u8, usize) -> ControlFlow<()>) {
    for base in (0..b.len()).step_by(64) {
        let [pct, q, hash, amp, semi, eq] = mask::masks_at(b, base, b"%?#&;=");
        let mut seps = pct | q | hash | amp | semi | eq;
        while seps != 0 {
            let bit = seps.trailing_zeros();
            seps &= seps - 1;
            let at = base + bit as usize;
            let (byte, len) = if pct & 1 << bit == 0 {
                (b[at], 1)
            } else {
                // Every `%XX` with two hex digits is an escape wherever it is (a `%` is never a
                // hex digit of another one); only five of them are separators.
                match b.get(at + 1..at + 3) {
                    Some(b"3F" | b"3f") => (b'?', 3),
                    Some(b"23") => (b'#', 3),
                    Some(b"26") => (b'&', 3),
                    Some(b"3B" | b"3b") => (b';', 3),
                    Some(b"3D" | b"3d") => (b'=', 3),
                    _ => continue,
                }
            };
            if f(at, byte, len).is_break() {
                return;
            }
        }
    }
}

const NOT_HEX: u8 = 0xFF;

/// The value of each hexadecimal digit; [`NOT_HEX`] for other bytes.
static HEX_VAL: [u8; 256] = {
    let mut t = [NOT_HEX; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = match i as u8 {
            c @ b'0'..=b'9' => c - b'0',
            c @ b'a'..=b'f' => c - b'a' + 10,
            c @ b'A'..=b'F' => c - b'A' + 10,
            _ => NOT_HEX,
        };
        i += 1;
    }
    t
};

/// Appends `text` percent-encoded: RFC 3986 unreserved bytes as they are, spaces as `%20` or
/// `+`, everything else as `%XX` (UTF-8 bytes).
pub fn escape_into(out: &mut String, text: &str, spaces: Spaces) {
    let b = text.as_bytes();
    out.reserve(b.len() + b.len() / 2);
    let mut run = 0;
    for (i, &c) in b.iter().enumerate() {
        if UNRESERVED[c as usize] {
            continue;
        }
        // A non-empty `run..i` holds unreserved ASCII only, so both ends are character
        // boundaries (bytes of a multi-byte character are escaped one by one).
        if run < i {
            out.push_str(&text[run..i]);
        }
        if c == b' ' && spaces == Spaces::Plus {
            out.push('+');
        } else {
            let at = 3 * c as usize;
            out.push_str(&ESCAPES[at..at + 3]);
        }
        run = i + 1;
    }
    out.push_str(&text[run..]);
}

/// RFC 3986 unreserved bytes: ASCII letters and digits, `-`, `.`, `_`, `~`.
static UNRESERVED: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        t[i] =
            matches!(i as u8, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~');
        i += 1;
    }
    t
};

/// `%00%01…%FF`: the escape of byte `c` is `ESCAPES[3c..3c + 3]`.
const ESCAPES: &str = {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    const BYTES: [u8; 768] = {
        let mut t = [0u8; 768];
        let mut c = 0;
        while c < 256 {
            t[3 * c] = b'%';
            t[3 * c + 1] = HEX[c >> 4];
            t[3 * c + 2] = HEX[c & 15];
            c += 1;
        }
        t
    };
    match std::str::from_utf8(&BYTES) {
        Ok(s) => s,
        Err(_) => panic!("escapes are ASCII"),
    }
};

/// Encodes an object as `key=value&…`; `source` is the text it was decoded from (its
/// untouched pairs are slices of it); `nested` encodes string fields that carry a document.
///
/// Untouched pairs are written from the original text; runs of consecutive untouched pairs
/// are copied from the source in one piece (a GA4 hit is mostly such a run).
pub fn encode(
    obj: &Obj<'_>,
    source: &str,
    spaces: Spaces,
    out: &mut String,
    nested: &dyn Fn(&Str<'_>) -> Option<String>,
) {
    let mut first = true;
    // Byte range in `source` of untouched pairs not yet written.
    let mut run: Option<(usize, usize)> = None;
    let flush = |out: &mut String, run: &mut Option<(usize, usize)>, first: &mut bool| {
        if let Some((a, b)) = run.take() {
            if !*first {
                out.push('&');
            }
            *first = false;
            out.push_str(&source[a..b]);
        }
    };
    for e in &obj.entries {
        if let Some(span) = untouched_span(e, source) {
            match run {
                Some((a, b)) if span.0 == b + 1 => run = Some((a, span.1)),
                _ => {
                    flush(out, &mut run, &mut first);
                    run = Some(span);
                }
            }
            continue;
        }
        flush(out, &mut run, &mut first);
        if !first {
            out.push('&');
        }
        first = false;
        match e.raw_key {
            Some(k) => out.push_str(k),
            None => escape_into(out, &e.key, spaces),
        }
        if e.bare && !e.value.is_changed() {
            continue;
        }
        out.push('=');
        match &e.value {
            Value::Str(s) => match (s.raw(), nested(s), s.percent_encoded()) {
                (_, Some(n), _) => escape_into(out, &n, spaces),
                (Some(raw), None, _) => out.push_str(raw),
                // Changed, but left percent-encoded by the rule (a cut URL).
                (None, None, Some(encoded)) => out.push_str(encoded),
                (None, None, None) => escape_into(out, &s.text(), spaces),
            },
            Value::Lit(l) => escape_into(out, l, spaces),
            // A structured value in a flat format: written as JSON text.
            other => escape_into(out, &super::json::to_string(other), spaces),
        }
    }
    flush(out, &mut run, &mut first);
}

/// Where an untouched pair lies in `src` (its original text), if it is untouched and from
/// there. Found by address: the pair's raw key and value are slices of `src`.
fn untouched_span(e: &Entry<'_>, src: &str) -> Option<(usize, usize)> {
    let k = e.raw_key?;
    let Value::Str(s) = &e.value else { return None };
    let v = s.raw()?;
    let end = if e.bare {
        offset(src, k)? + k.len()
    } else {
        offset(src, v)? + v.len()
    };
    Some((offset(src, k)?, end))
}

/// Offset of `part` inside `src`, when it is a slice of it.
fn offset(src: &str, part: &str) -> Option<usize> {
    let (s, p) = (src.as_ptr() as usize, part.as_ptr() as usize);
    (p >= s && p + part.len() <= s + src.len()).then(|| p - s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_separators_plain_and_escaped_across_blocks() {
        // A `%` that is no escape, an escape of a non-separator, upper and lower hex, and a
        // separator past the first 64-byte block.
        let text = format!("a?b=1%26c%3d2;d%%3F%41{}&z%23", "x".repeat(64));
        let mut got = Vec::new();
        url_separators(text.as_bytes(), |at, c, len| {
            got.push((at, c, len));
            ControlFlow::Continue(())
        });
        let z = text.len() - 4;
        assert_eq!(
            got,
            [
                (1, b'?', 1),
                (3, b'=', 1),
                (5, b'&', 3),
                (9, b'=', 3),
                (13, b';', 1),
                (16, b'?', 3),
                (z - 1, b'&', 1),
                (z + 1, b'#', 3),
            ]
        );
        url_separators(b"", |_, _, _| panic!("no separators in an empty text"));
        assert_eq!(escape_at(b"%4", 0), None);
        assert_eq!(escape_at(b"x%4a", 1), Some(b'J'));
    }

    fn roundtrip(s: &str) -> String {
        let (obj, spaces) = decode(s);
        let mut out = String::new();
        encode(&obj, s, spaces, &mut out, &|_| None);
        out
    }

    #[test]
    fn untouched_query_strings_are_byte_identical() {
        for q in [
            "v=2&tid=G-1&dl=https%3A%2F%2Fshop.example%2F&dt=Shop%20Home",
            "a=1&a=2&flag&b=",
            "q=hello+world&x=%2B1",
            "a=1&&b=2&",
            "cd[value]=20.00&ud[em]=abc",
            "bad=%ZZ&ok=1",
            "",
        ] {
            assert_eq!(roundtrip(q), q);
        }
    }

    #[test]
    fn unescaping() {
        assert_eq!(unescape("a%20b+c"), "a b c");
        assert_eq!(unescape("plain"), "plain");
        assert!(matches!(unescape("plain"), Cow::Borrowed(_)));
        assert_eq!(unescape("100%"), "100%");
        assert_eq!(unescape("%ZZ%4"), "%ZZ%4");
        assert_eq!(unescape("%C3%A9"), "é");
        assert_eq!(unescape("%FF"), "\u{FFFD}");
        assert_eq!(unescape("x%41"), "xA");
    }

    #[test]
    fn decoding_and_changed_values() {
        let src = "dl=https%3A%2F%2Fs.example%2F%3Fa%3D1&en=page_view&q=a+b&k";
        let (mut obj, spaces) = decode(src);
        assert_eq!(
            obj.get("dl").unwrap().as_str().unwrap(),
            "https://s.example/?a=1"
        );
        assert_eq!(obj.get("q").unwrap().as_str().unwrap(), "a b");
        assert!(obj.entries[3].bare);
        assert_eq!(spaces, Spaces::Plus);
        if let Some(Value::Str(s)) = obj.get_mut("dl") {
            s.set("https://s.example/ x");
        }
        let mut out = String::new();
        encode(&obj, src, Spaces::Percent, &mut out, &|_| None);
        assert_eq!(
            out,
            "dl=https%3A%2F%2Fs.example%2F%20x&en=page_view&q=a+b&k"
        );
        obj.set(Cow::Borrowed("_uip"), Value::str("203.0.113.0"));
        let mut out = String::new();
        encode(&obj, src, Spaces::Percent, &mut out, &|_| None);
        assert!(out.ends_with("&k&_uip=203.0.113.0"), "{out}");
    }

    #[test]
    fn escaping() {
        let mut out = String::new();
        escape_into(&mut out, "a b/é~.x", Spaces::Percent);
        assert_eq!(out, "a%20b%2F%C3%A9~.x");
        out.clear();
        escape_into(&mut out, "éa b", Spaces::Plus);
        assert_eq!(out, "%C3%A9a+b");
    }

    proptest::proptest! {
        /// Escaping never panics and always decodes back to the text.
        #[test]
        fn escape_then_unescape_is_identity(t in "\\PC{0,20}") {
            let mut out = String::new();
            escape_into(&mut out, &t, Spaces::Percent);
            proptest::prop_assert_eq!(unescape(&out), t.as_str());
        }

        /// Unescaping agrees with the byte-at-a-time definition, escapes across 64-byte
        /// block edges, malformed ones, ones giving invalid UTF-8 and plain non-ASCII text
        /// included.
        #[test]
        fn unescape_is_byte_at_a_time_decoding(t in "[a%+0-9A-Fgé€]{0,200}") {
            let b = t.as_bytes();
            let (mut want, mut i) = (Vec::new(), 0);
            while i < b.len() {
                let hex = |c: u8| (c as char).to_digit(16);
                match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
                    (b'%', Some(h), Some(l)) => { want.push((h * 16 + l) as u8); i += 3; }
                    (b'+', _, _) => { want.push(b' '); i += 1; }
                    (c, _, _) => { want.push(c); i += 1; }
                }
            }
            proptest::prop_assert_eq!(unescape(&t), String::from_utf8_lossy(&want));
        }

        /// Both versions of the block decoder give the same bytes and the same answer (an
        /// escape gave a byte from 0x80), for escapes cut by 64-byte block edges at every
        /// offset (the filler before them shifts where the edges fall), malformed ones and
        /// escapes of high bytes.
        #[test]
        fn unescape_blocks_agree(
            filler in 0usize..70,
            parts in proptest::collection::vec(proptest::sample::select(vec![
                "%", "%2", "%41", "%e9", "%C3%A9", "%%", "%g1", "+", "a", "%3Fx%3D1%26", "%FF",
                "0", "%2B", "%0", "é",
            ]), 0..60),
        ) {
            let t = format!("{}{}", "x".repeat(filler), parts.concat());
            let (mut a, mut b) = (b"pre".to_vec(), b"pre".to_vec());
            let high = unescape_bytes(t.as_bytes(), &mut a);
            proptest::prop_assert_eq!(high, unescape_bytes_scalar(t.as_bytes(), &mut b));
            proptest::prop_assert_eq!(a, b, "{}", t);
        }

        /// Any text (malformed escapes, empty pairs, non-ASCII) decodes and encodes back
        /// byte-identical.
        #[test]
        fn any_text_round_trips(q in "[a-z=&%+.2-5A-F\\u{e9}]{0,40}") {
            proptest::prop_assert_eq!(roundtrip(&q), q);
        }

        /// Changing one pair rewrites that pair only: every other pair keeps its exact text
        /// and position.
        #[test]
        fn a_change_touches_only_its_pair(
            q in "[a-c]{1,2}=[a-z%2F+]{0,6}(&[a-c]{1,2}=[a-z%2F+]{0,6}){0,6}",
            pick in 0usize..7,
        ) {
            let (mut obj, spaces) = decode(&q);
            let i = pick % obj.entries.len();
            if let Value::Str(s) = &mut obj.entries[i].value {
                s.set("X Y");
            }
            let mut out = String::new();
            encode(&obj, &q, spaces, &mut out, &|_| None);
            let before: Vec<&str> = q.split('&').collect();
            let after: Vec<&str> = out.split('&').collect();
            proptest::prop_assert_eq!(before.len(), after.len());
            for (j, (b, a)) in before.iter().zip(&after).enumerate() {
                if j == i {
                    proptest::prop_assert!(a.ends_with("=X%20Y") || a.ends_with("=X+Y"), "{}", a);
                } else {
                    proptest::prop_assert_eq!(b, a);
                }
            }
        }
    }
}
