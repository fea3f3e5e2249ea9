//! The decoded payload model: one tree shape for every wire format, so that rules and the
//! personal-data scan address a GA4 query string, a JSON batch or a multipart form the same
//! way.
//!
//! Every node remembers the exact text it was decoded from (`raw`). Encoders write that text
//! back for anything no rule changed, which is how untouched fields stay byte-identical in
//! their original order; a change clears `raw` on the node and on every container above it.

use std::borrow::Cow;

/// A node of a decoded payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Str(Str<'a>),
    /// A JSON number, `true`, `false` or `null`, kept as its exact text.
    Lit(Cow<'a, str>),
    Obj(Obj<'a>),
    Arr(Arr<'a>),
}

/// A string leaf.
#[derive(Debug, Clone, PartialEq)]
pub struct Str<'a> {
    /// The decoded text.
    pub text: Cow<'a, str>,
    /// The encoded form it was decoded from (percent-encoded query value, JSON string literal
    /// with its quotes, multipart part body); `None` once changed.
    pub raw: Option<&'a str>,
    /// A document carried inside this string (JSON, or base64 of JSON), when the route says
    /// this field holds one. Rules reach into it; the encoder writes it back into the string.
    pub nested: Option<Box<Nested<'a>>>,
    /// Written by a rule (hash, set, truncate_ip): the personal-data scan leaves it alone.
    pub trusted: bool,
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
    pub entries: Vec<Entry<'a>>,
    /// The object's exact text (JSON only); `None` once anything inside changed.
    pub raw: Option<&'a str>,
    /// The text a query string or form was decoded from (its entries' raw keys and values are
    /// slices of it). Stays set after changes: the encoder copies runs of untouched pairs
    /// from it in one piece.
    pub source: Option<&'a str>,
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
    /// A query-string key without `=` (`…&debug&…`).
    pub bare: bool,
    /// Which of the running program's key patterns match `key` (`rules::keys`); 0 until a
    /// rule first looks, and again after the key changes.
    pub class: u64,
}

/// An array (JSON only).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Arr<'a> {
    pub items: Vec<Value<'a>>,
    pub raw: Option<&'a str>,
}

impl<'a> Str<'a> {
    /// A string decoded from `raw`.
    pub fn decoded(text: Cow<'a, str>, raw: &'a str) -> Self {
        Str {
            text,
            raw: Some(raw),
            nested: None,
            trusted: false,
        }
    }

    /// A new string written by a rule.
    pub fn written(text: impl Into<Cow<'a, str>>) -> Self {
        Str {
            text: text.into(),
            raw: None,
            nested: None,
            trusted: true,
        }
    }

    /// Replaces the text (the node now has to be encoded afresh).
    pub fn set(&mut self, text: impl Into<Cow<'a, str>>) {
        self.text = text.into();
        self.raw = None;
        self.nested = None;
    }

    pub fn is_changed(&self) -> bool {
        self.raw.is_none()
    }
}

impl<'a> Value<'a> {
    pub fn str(text: impl Into<Cow<'a, str>>) -> Self {
        Value::Str(Str::written(text))
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(&s.text),
            Value::Lit(l) => Some(l),
            _ => None,
        }
    }

    /// Whether this node (or anything in it) must be encoded afresh.
    pub fn is_changed(&self) -> bool {
        match self {
            Value::Str(s) => s.raw.is_none(),
            Value::Lit(_) => false,
            Value::Obj(o) => o.raw.is_none(),
            Value::Arr(a) => a.raw.is_none(),
        }
    }

    /// Forgets the original text of this container so that it is re-encoded from its parts.
    pub fn touch(&mut self) {
        match self {
            Value::Obj(o) => o.raw = None,
            Value::Arr(a) => a.raw = None,
            Value::Str(s) => s.raw = None,
            Value::Lit(_) => {}
        }
    }

    /// Converts every borrowed piece into owned data (for documents decoded from a buffer
    /// that does not outlive them, such as a base64 field).
    pub fn into_owned(self) -> Value<'static> {
        match self {
            Value::Str(s) => Value::Str(Str {
                text: Cow::Owned(s.text.into_owned()),
                raw: None,
                nested: s.nested.map(|n| {
                    Box::new(Nested {
                        wrap: n.wrap,
                        root: n.root.into_owned(),
                    })
                }),
                trusted: s.trusted,
            }),
            Value::Lit(l) => Value::Lit(Cow::Owned(l.into_owned())),
            Value::Obj(o) => Value::Obj(Obj {
                entries: o
                    .entries
                    .into_iter()
                    .map(|e| Entry {
                        key: Cow::Owned(e.key.into_owned()),
                        raw_key: None,
                        value: e.value.into_owned(),
                        bare: e.bare,
                        class: 0,
                    })
                    .collect(),
                raw: None,
                source: None,
            }),
            Value::Arr(a) => Value::Arr(Arr {
                items: a.items.into_iter().map(Value::into_owned).collect(),
                raw: None,
            }),
        }
    }

    /// Calls `f` on every string leaf, depth first, with its path of keys.
    pub fn for_each_str(&self, f: &mut dyn FnMut(&Str<'a>)) {
        match self {
            Value::Str(s) => {
                f(s);
                if let Some(n) = &s.nested {
                    n.root.for_each_str(f);
                }
            }
            Value::Obj(o) => o.entries.iter().for_each(|e| e.value.for_each_str(f)),
            Value::Arr(a) => a.items.iter().for_each(|v| v.for_each_str(f)),
            Value::Lit(_) => {}
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
        let mut seen = false;
        self.entries.retain_mut(|e| {
            if e.key != key {
                return true;
            }
            if seen {
                return false;
            }
            seen = true;
            e.value = value.clone();
            e.bare = false;
            true
        });
        if !seen {
            self.entries.push(Entry {
                key,
                raw_key: None,
                value,
                bare: false,
                class: 0,
            });
        }
    }
}
