//! The decoded payload model: one tree shape for every wire format, so that rules and the
//! personal-data scan address a GA4 query string, a JSON batch or a multipart form the same
//! way.
//!
//! Every node remembers the exact text it was decoded from (`raw`). Encoders write that text
//! back for anything no rule changed, which is how untouched fields stay byte-identical in
//! their original order; a change marks the node and every container above it.
//!
//! Nodes are small and decoded lazily, because a GA4 hit is ~60 of them and the whole budget
//! for decoding, rules, scan and encoding is a few microseconds: a string keeps only its
//! encoded text and how it is encoded ([`Enc`]), and its decoded text is made when something
//! reads it ([`Str::text`], or [`Str::text_in`] into a reused buffer). A percent-encoded value
//! that no rule names and the scan exempts is never unescaped at all. Containers hold their
//! members in a one-word [`ThinVec`], so that any node is 32 bytes.

use std::borrow::Cow;

pub use thin_vec::ThinVec;

/// A node of a decoded payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Str(Str<'a>),
    /// A JSON number, `true`, `false` or `null`, kept as its exact text.
    Lit(Cow<'a, str>),
    Obj(Obj<'a>),
    Arr(Arr<'a>),
}

/// How a string's `raw` text holds its decoded text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enc {
    /// `raw` is the text (a query value without escapes, a multipart part body).
    Plain,
    /// `raw` is percent-encoded (`%XX`, `+` for a space): unescaped when read. Once changed
    /// ([`Str::set_encoded`]), the percent-encoded text is held beside it instead.
    Percent,
    /// `raw` is a JSON string literal without escapes: the text is between its quotes.
    Quoted,
    /// The text is held decoded beside `raw` (a JSON literal with escapes, a document's
    /// string made owned) or was written by a rule.
    Held,
}

/// A string leaf.
#[derive(Debug, Clone, PartialEq)]
pub struct Str<'a> {
    /// The encoded form as received (percent-encoded query value, JSON string literal with its
    /// quotes, multipart part body). Not written back once `changed`.
    raw: &'a str,
    /// What few strings need: held text, a nested document. One pointer for all of it.
    extra: Option<Box<Extra<'a>>>,
    enc: Enc,
    /// The string must be encoded afresh (its text was replaced, or its nested document
    /// changed).
    changed: bool,
    /// Written by a rule (hash, set, truncate_ip) or exempt: the personal-data scan leaves it
    /// alone.
    pub trusted: bool,
}

#[derive(Debug, Clone, PartialEq, Default)]
struct Extra<'a> {
    /// The decoded text when `enc` is [`Enc::Held`].
    text: String,
    nested: Option<Nested<'a>>,
}

/// How a nested document is wrapped inside its string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrap {
    /// The JSON text itself.
    Plain,
    /// Standard base64 (with padding as found).
    Base64 { pad: bool },
    /// URL-safe base64 (`-_`), with or without padding.
    Base64Url { pad: bool },
}

/// A document inside a string field.
#[derive(Debug, Clone, PartialEq)]
pub struct Nested<'a> {
    pub wrap: Wrap,
    pub root: Value<'a>,
}

/// An object (JSON object, or the fields of a query string or form), in original order.
/// Keys may repeat (query strings allow it).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Obj<'a> {
    pub entries: ThinVec<Entry<'a>>,
    /// The object's exact text (JSON only); `None` once anything inside changed. A flat part's
    /// source text is kept on its [`Part`](super::Part).
    pub raw: Option<&'a str>,
}

/// One field of an object.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry<'a> {
    /// The decoded key.
    pub key: Cow<'a, str>,
    /// The key as found (percent-encoded, or the JSON literal with quotes); `None` if renamed
    /// or added.
    pub raw_key: Option<&'a str>,
    pub value: Value<'a>,
    /// Which of the running program's key patterns match `key` (`rules::keys`); 0 until
    /// classified, and again after the key changes.
    pub class: u64,
    /// A query-string key without `=` (`…&debug&…`).
    pub bare: bool,
}

/// Which entries of a flat part's object the running rule program can touch: bit `i` for
/// `entries[i]`, kept only while there are at most 64 entries (a GA4 hit has ~50).
///
/// A route's rules walk the whole list of fields once per rule, though each names only a few
/// of them. Once the program has classified the keys (`rules::keys`), the entries no selector
/// matches are known, and rules look only at the others. The invariant, checked in debug
/// builds wherever it is relied on: an entry left out matches no selector of the program
/// (its key bits are empty); whatever adds, removes or renames entries keeps the bits true.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Hot(Option<u64>);

impl Hot {
    /// Every entry (not known, or more than 64 of them).
    pub const ALL: Hot = Hot(None);

    /// The entries of `entries` that `hot` picks; every one when there are more than 64.
    pub fn of<'a>(entries: &[Entry<'a>], mut hot: impl FnMut(&Entry<'a>) -> bool) -> Hot {
        if entries.len() > 64 {
            return Hot::ALL;
        }
        let mut bits = 0;
        for (i, e) in entries.iter().enumerate() {
            bits |= (hot(e) as u64) << i;
        }
        Hot(Some(bits))
    }

    /// The entries at the bits of `bits` of `len` entries (every one when `len` is over 64).
    #[inline]
    pub fn of_bits(bits: u64, len: usize) -> Hot {
        Hot((len <= 64).then(|| bits & super::mask::bits(0, len as u32)))
    }

    /// The positions, when known.
    #[inline]
    pub fn bits(self) -> Option<u64> {
        self.0
    }

    /// Entry `i` may be touched now (added, or renamed so that its key is classified anew).
    pub fn mark(&mut self, i: usize) {
        match &mut self.0 {
            Some(bits) if i < 64 => *bits |= 1 << i,
            _ => self.0 = None,
        }
    }

    /// The entries at the bits of `gone` were removed: the later ones moved down.
    pub fn remove(&mut self, mut gone: u64) {
        let Some(bits) = &mut self.0 else { return };
        // From the highest: each removal shifts the bits above it down by one.
        while gone != 0 {
            let i = 63 - gone.leading_zeros();
            let below = (1u64 << i) - 1;
            *bits = (*bits & below) | ((*bits >> 1) & !below);
            gone &= below;
        }
    }
}

/// An array (JSON only).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Arr<'a> {
    pub items: ThinVec<Value<'a>>,
    pub raw: Option<&'a str>,
}

impl<'a> Str<'a> {
    /// A string received as `raw`, encoded as `enc` (not [`Enc::Held`]: see [`Str::with_text`]).
    #[inline(always)]
    pub fn new(raw: &'a str, enc: Enc) -> Self {
        Str {
            raw,
            extra: None,
            enc,
            changed: false,
            trusted: false,
        }
    }

    /// A string received as `raw` whose decoded text is `text`.
    pub fn with_text(raw: &'a str, text: String) -> Self {
        Str {
            raw,
            extra: Some(Box::new(Extra { text, nested: None })),
            enc: Enc::Held,
            changed: false,
            trusted: false,
        }
    }

    /// A new string written by a rule.
    pub fn written(text: impl Into<String>) -> Self {
        Str {
            raw: "",
            extra: Some(Box::new(Extra {
                text: text.into(),
                nested: None,
            })),
            enc: Enc::Held,
            changed: true,
            trusted: true,
        }
    }

    /// The decoded text; borrowed unless it has to be unescaped.
    pub fn text(&self) -> Cow<'_, str> {
        match self.enc {
            Enc::Plain => Cow::Borrowed(self.raw),
            Enc::Quoted => Cow::Borrowed(unquote(self.raw)),
            Enc::Percent => super::query::unescape(self.percent()),
            Enc::Held => Cow::Borrowed(self.held_text()),
        }
    }

    /// The text held beside `raw` (decoded, or percent-encoded after [`Str::set_encoded`]).
    #[inline(always)]
    fn held_text(&self) -> &str {
        self.extra.as_ref().map_or("", |x| &x.text)
    }

    /// The percent-encoded text of an [`Enc::Percent`] string.
    #[inline(always)]
    fn percent(&self) -> &str {
        if self.changed {
            self.held_text()
        } else {
            self.raw
        }
    }

    /// The decoded text, unescaped into `buf` when it has to be: for readers of every value
    /// (the scan), which would otherwise allocate per escaped value.
    #[inline]
    pub fn text_in<'s>(&'s self, buf: &'s mut String) -> &'s str {
        // Tests in order of how common each is (a `match` became a jump table, mispredicted
        // whenever two values in a row are held differently).
        if self.enc == Enc::Plain {
            self.raw
        } else if self.enc == Enc::Quoted {
            unquote(self.raw)
        } else if self.enc == Enc::Percent {
            buf.clear();
            super::query::unescape_into(self.percent(), buf);
            buf
        } else {
            self.held_text()
        }
    }

    /// The decoded text, or `None` when reading it means unescaping (callers that only look
    /// at plain values, like consent strings, then take the slow way).
    #[inline]
    pub fn text_borrowed(&self) -> Option<&str> {
        match self.enc {
            Enc::Plain => Some(self.raw),
            Enc::Quoted => Some(unquote(self.raw)),
            Enc::Percent => None,
            Enc::Held => Some(self.held_text()),
        }
    }

    /// The text as received, while the string is unchanged.
    #[inline]
    pub fn raw(&self) -> Option<&'a str> {
        (!self.changed).then_some(self.raw)
    }

    /// How `raw` holds the text.
    pub fn enc(&self) -> Enc {
        self.enc
    }

    /// Replaces the text (the node now has to be encoded afresh; a nested document is gone).
    pub fn set(&mut self, text: impl Into<String>) {
        let text = text.into();
        match &mut self.extra {
            Some(x) => {
                x.text = text;
                x.nested = None;
            }
            None => {
                self.extra = Some(Box::new(Extra { text, nested: None }));
            }
        }
        self.enc = Enc::Held;
        self.changed = true;
    }

    /// The percent-encoded text of a query or form value (as received, or as a rule left
    /// it with [`Str::set_encoded`]); `None` for strings held otherwise.
    #[inline]
    pub fn percent_encoded(&self) -> Option<&str> {
        (self.enc == Enc::Percent).then(|| self.percent())
    }

    /// Replaces the text with `encoded`, percent-encoded for the part it is in: the encoders
    /// write it as it is (a rule that cut an encoded URL keeps its escapes).
    pub fn set_encoded(&mut self, encoded: String) {
        self.set(encoded);
        self.enc = Enc::Percent;
    }

    /// Marks the string as changed without replacing its text (its nested document changed).
    pub fn touch(&mut self) {
        self.changed = true;
    }

    pub fn is_changed(&self) -> bool {
        self.changed
    }

    /// The document this string carries, when the route declares it `nested`.
    #[inline]
    pub fn nested(&self) -> Option<&Nested<'a>> {
        self.extra.as_ref()?.nested.as_ref()
    }

    #[inline]
    pub fn nested_mut(&mut self) -> Option<&mut Nested<'a>> {
        self.extra.as_mut()?.nested.as_mut()
    }

    /// Whether the string carries a nested document.
    #[inline(always)]
    pub fn has_nested(&self) -> bool {
        self.extra.as_ref().is_some_and(|x| x.nested.is_some())
    }

    /// Attaches the document decoded from this string's text.
    pub fn set_nested(&mut self, n: Nested<'a>) {
        self.extra.get_or_insert_with(Default::default).nested = Some(n);
    }

    /// The same string with nothing borrowed (its text held, to be encoded afresh).
    pub fn into_owned(self) -> Str<'static> {
        let text = self.text().into_owned();
        let nested = self.extra.and_then(|x| x.nested).map(|n| Nested {
            wrap: n.wrap,
            root: n.root.into_owned(),
        });
        Str {
            raw: "",
            extra: Some(Box::new(Extra { text, nested })),
            enc: Enc::Held,
            changed: true,
            trusted: self.trusted,
        }
    }
}

/// The text between a JSON literal's quotes.
#[inline(always)]
fn unquote(raw: &str) -> &str {
    raw.get(1..raw.len().saturating_sub(1)).unwrap_or("")
}

impl<'a> Value<'a> {
    pub fn str(text: impl Into<String>) -> Self {
        Value::Str(Str::written(text))
    }

    /// A string's decoded text or a literal's text.
    pub fn as_str(&self) -> Option<Cow<'_, str>> {
        match self {
            Value::Str(s) => Some(s.text()),
            Value::Lit(l) => Some(Cow::Borrowed(l)),
            _ => None,
        }
    }

    /// Whether this node (or anything in it) must be encoded afresh.
    pub fn is_changed(&self) -> bool {
        match self {
            Value::Str(s) => s.changed,
            Value::Lit(_) => false,
            Value::Obj(o) => o.raw.is_none(),
            Value::Arr(a) => a.raw.is_none(),
        }
    }

    /// Forgets the original text of this node so that it is re-encoded from its parts.
    pub fn touch(&mut self) {
        match self {
            Value::Obj(o) => o.raw = None,
            Value::Arr(a) => a.raw = None,
            Value::Str(s) => s.changed = true,
            Value::Lit(_) => {}
        }
    }

    /// Converts every borrowed piece into owned data (for documents decoded from a buffer
    /// that does not outlive them, such as a base64 field).
    pub fn into_owned(self) -> Value<'static> {
        match self {
            Value::Str(s) => Value::Str(s.into_owned()),
            Value::Lit(l) => Value::Lit(Cow::Owned(l.into_owned())),
            Value::Obj(o) => Value::Obj(Obj {
                entries: o
                    .entries
                    .into_iter()
                    .map(|e| Entry {
                        key: Cow::Owned(e.key.into_owned()),
                        raw_key: None,
                        value: e.value.into_owned(),
                        class: 0,
                        bare: e.bare,
                    })
                    .collect(),
                raw: None,
            }),
            Value::Arr(a) => Value::Arr(Arr {
                items: a.items.into_iter().map(Value::into_owned).collect(),
                raw: None,
            }),
        }
    }
}

impl<'a> Obj<'a> {
    /// The first value under `key`.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        self.entries.iter().find(|e| e.key == key).map(|e| &e.value)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value<'a>> {
        self.entries
            .iter_mut()
            .find(|e| e.key == key)
            .map(|e| &mut e.value)
    }

    /// Sets `key` to `value`: replaces the first entry with that key (removing any others),
    /// or appends one.
    pub fn set(&mut self, key: Cow<'a, str>, value: Value<'a>) {
        self.raw = None;
        match self.entries.iter().position(|e| e.key == key) {
            None => self.entries.push(Entry::new(key, value)),
            Some(i) => {
                let e = &mut self.entries[i];
                e.value = value;
                e.bare = false;
                let mut n = 0;
                self.remove_where(|e| {
                    n += 1;
                    n > i + 1 && e.key == key
                });
            }
        }
    }

    /// Removes the entries `hit` selects, keeping the order of the others; whether any went.
    /// `hit` sees every entry once, in order.
    ///
    /// A rule removes a few fields of many (GA4's personal `ep.*` parameters): each run of
    /// neighbours is drained with one shift of the tail, rather than every later entry moved
    /// along by swaps; many removals take one pass. `hit` is called from one place only, so
    /// it is inlined into the loop.
    #[inline]
    pub fn remove_where(&mut self, mut hit: impl FnMut(&mut Entry<'a>) -> bool) -> bool {
        let n = self.entries.len();
        // Which entries go, a bit each (on the stack for up to 256 entries).
        let (mut small, mut big) = ([0u64; 4], Vec::new());
        let gone: &mut [u64] = if n <= 256 {
            &mut small
        } else {
            big.resize(n.div_ceil(64), 0);
            &mut big
        };
        let mut count = 0;
        for (i, e) in self.entries.iter_mut().enumerate() {
            if hit(e) {
                gone[i / 64] |= 1 << (i % 64);
                count += 1;
            }
        }
        self.remove_marked(gone, count)
    }

    /// Removes the entries at the bits of `gone` (of the first 64); whether any went.
    pub fn remove_bits(&mut self, gone: u64) -> bool {
        let gone = gone & super::mask::bits(0, self.entries.len().min(64) as u32);
        self.remove_marked(&[gone], gone.count_ones() as usize)
    }

    /// Removes the `count` entries whose bits are set in `gone` (bit `i % 64` of word `i / 64`
    /// for entry `i`).
    fn remove_marked(&mut self, gone: &[u64], count: usize) -> bool {
        const FEW: usize = 8;
        if count == 0 {
            return false;
        }
        let n = self.entries.len();
        self.raw = None;
        let is_gone = |i: usize| gone.get(i / 64).is_some_and(|w| w & 1 << (i % 64) != 0);
        if count > FEW {
            let mut i = 0;
            self.entries.retain_mut(|_| {
                i += 1;
                !is_gone(i - 1)
            });
            return true;
        }
        // From the back, a run of neighbours at a time.
        let mut end = n;
        while let Some(last) = (0..end).rev().find(|&i| is_gone(i)) {
            let mut start = last;
            while start > 0 && is_gone(start - 1) {
                start -= 1;
            }
            self.entries.drain(start..=last);
            end = start;
        }
        true
    }
}

impl<'a> Entry<'a> {
    /// An entry added by a rule (no original text).
    pub fn new(key: Cow<'a, str>, value: Value<'a>) -> Self {
        Entry {
            key,
            raw_key: None,
            value,
            class: 0,
            bare: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_stay_small() {
        // Decoding writes one `Entry` per field and the rules walk them all: keep them small.
        assert_eq!(std::mem::size_of::<Value<'_>>(), 32);
        assert!(std::mem::size_of::<Entry<'_>>() <= 88);
    }

    /// Removes the entries `gone` marks from an object of `gone.len()` entries with
    /// `remove_where`; whether the rest are left, in order, and the answer is right.
    fn removes_exactly(gone: &[bool]) -> Result<(), proptest::test_runner::TestCaseError> {
        let keys: Vec<String> = (0..gone.len()).map(|i| i.to_string()).collect();
        let mut o = Obj::default();
        for k in &keys {
            o.entries
                .push(Entry::new(Cow::Borrowed(k.as_str()), Value::str("v")));
        }
        let removed = o.remove_where(|e| gone[e.key.parse::<usize>().unwrap()]);
        let left: Vec<&str> = o.entries.iter().map(|e| &*e.key).collect();
        let want: Vec<&str> = keys
            .iter()
            .zip(gone)
            .filter(|(_, g)| !**g)
            .map(|(k, _)| k.as_str())
            .collect();
        proptest::prop_assert_eq!(left, want);
        proptest::prop_assert_eq!(removed, gone.contains(&true));
        Ok(())
    }

    proptest::proptest! {
        /// `remove_where` removes exactly the entries it selects, in any pattern (runs, few,
        /// many, more entries than its bits on the stack cover), and keeps the order of the
        /// rest.
        #[test]
        fn removing_keeps_the_rest_in_order(gone in proptest::collection::vec(proptest::bool::ANY, 0..300)) {
            removes_exactly(&gone)?;
        }

        /// A few removals (runs of neighbours drained from the back, which a random half of
        /// the entries never takes), across 64-entry words.
        #[test]
        fn removing_a_few_keeps_the_rest_in_order(
            n in 0usize..300,
            at in proptest::collection::vec(0usize..300, 0..9),
        ) {
            removes_exactly(&(0..n).map(|i| at.contains(&i)).collect::<Vec<_>>())?;
        }
    }

    #[test]
    fn text_by_encoding() {
        let mut buf = String::new();
        let p = Str::new("a%20b+c", Enc::Percent);
        assert_eq!(p.text(), "a b c");
        assert_eq!(p.text_in(&mut buf), "a b c");
        assert_eq!(p.text_borrowed(), None);
        let q = Str::new("\"x y\"", Enc::Quoted);
        assert_eq!(q.text(), "x y");
        assert_eq!(q.raw(), Some("\"x y\""));
        let mut s = Str::new("plain", Enc::Plain);
        assert!(!s.is_changed());
        s.set("new");
        assert_eq!(
            (s.text(), s.raw(), s.is_changed()),
            ("new".into(), None, true)
        );
    }
}
