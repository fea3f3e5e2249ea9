//! The personal-data scan, on by default: after the rules, every string value of every part
//! (nested documents included) is checked by the detectors, and whatever looks like an email
//! address, phone number, payment card, IBAN, IP address or token is redacted even when no
//! rule names its field. Fields a route exempts, and values a rule wrote (hashes, set values,
//! truncated addresses), are left alone.
//!
//! The scan reads every value of every beacon, so the flat parts (query strings, forms, GA4
//! lines), which are most of them, take a short loop: exempt fields are skipped by their key
//! bits ([`super::keys`]) rather than marked by a walk, and percent-encoded values are
//! unescaped into one reused buffer rather than a new string each.

use super::action::{HmacKey, Replace, redact_text_triggered};
use super::detect::{self, Kinds};
use super::keys::KeyIndex;
use super::select::Selector;
use super::{Target, walk};
use crate::decode::{Doc, Obj, Origin, Value};

/// A route's scan settings, compiled.
#[derive(Debug, Clone)]
pub struct Scan {
    pub kinds: Kinds,
    pub exempt: Vec<Selector>,
    pub replace: Replace,
    /// The key bits of the exempt selectors that apply in the URL query and in the body
    /// (`[query, body]`), and whether they are all of them ([`Scan::index`]): then a flat
    /// part's exempt fields are known by their bits alone.
    flat_exempt: Option<[u64; 2]>,
}

impl Scan {
    pub fn new(kinds: Kinds, exempt: Vec<Selector>, replace: Replace) -> Scan {
        Scan {
            kinds,
            exempt,
            replace,
            flat_exempt: None,
        }
    }

    /// Whether a flat part's exempt fields are told by their key bits alone ([`Scan::index`]):
    /// then the scan walks no flat part for them.
    pub(super) fn exempt_by_bit(&self) -> bool {
        self.flat_exempt.is_some()
    }

    /// Called once the exempt selectors have their key bits: a flat part can skip exempt
    /// fields by bit when every exempt selector has one and none reaches into a nested
    /// document.
    pub(super) fn index(&mut self) {
        let by_bit = self
            .exempt
            .iter()
            .all(|s| s.bit != 0 && s.nested.is_empty());
        self.flat_exempt = by_bit.then(|| {
            let mask = |in_body| {
                self.exempt
                    .iter()
                    .filter(|s| s.applies(in_body))
                    .fold(0, |m, s| m | s.bit)
            };
            [mask(false), mask(true)]
        });
    }
}

/// Scans every part of `doc`; marks changed parts. `targets`: where the rules act (every part,
/// or each event of a JSON body with `events`, as [`super::Program`] found them); exempt
/// selectors are relative to each target, like every other selector.
pub(crate) fn run(
    doc: &mut Doc<'_>,
    scan: &Scan,
    key: &HmacKey,
    targets: &[Target],
    idx: &KeyIndex,
) {
    for t in targets {
        let part = &mut doc.parts[t.part];
        if part.flat && scan.flat_exempt.is_some() {
            continue; // skipped by bit below
        }
        let in_body = part.origin != Origin::Query;
        let mut flat = (part.flat && t.path.is_empty()).then_some(&mut part.hot);
        walk::at_mut(&mut part.root, &t.path, &mut |v| {
            walk::visit(
                v,
                flat.as_deref_mut(),
                &scan.exempt,
                in_body,
                idx,
                &mut |_, v| {
                    mark(v);
                    false
                },
            );
            false
        });
    }
    // Unescaped values go into one buffer per thread, kept across requests (made with room for
    // a page URL: grown one value at a time it was reallocated three times a hit).
    BUF.with_borrow_mut(|buf| scan_parts(doc, scan, key, idx, buf));
}

thread_local! {
    static BUF: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(512));
}

fn scan_parts(doc: &mut Doc<'_>, scan: &Scan, key: &HmacKey, idx: &KeyIndex, buf: &mut String) {
    for part in &mut doc.parts {
        let exempt = scan
            .flat_exempt
            .map(|m| m[(part.origin != Origin::Query) as usize]);
        let changed = match (&mut part.root, exempt) {
            (Value::Obj(o), Some(exempt)) if part.flat => scan_flat(o, exempt, scan, key, idx, buf),
            (root, _) => scan_value(root, scan, key, buf),
        };
        if changed {
            part.changed = true;
        }
    }
}

/// The fields of a flat part, skipping those whose key bits are in `exempt`.
fn scan_flat(
    o: &mut Obj<'_>,
    exempt: u64,
    scan: &Scan,
    key: &HmacKey,
    idx: &KeyIndex,
    buf: &mut String,
) -> bool {
    let mut changed = false;
    for e in o.entries.iter_mut() {
        // Entries a rule added or renamed are classified now.
        if exempt != 0 && idx.class_of(e) & exempt != 0 {
            continue;
        }
        match &mut e.value {
            Value::Str(s) if !s.trusted && !s.has_nested() => {
                let text = s.text_in(buf);
                let triggers = detect::triggers(text, scan.kinds);
                if !triggers.any() {
                    continue;
                }
                if let Some(new) =
                    redact_text_triggered(text, triggers, scan.kinds, &[], &scan.replace, key)
                {
                    s.set(new);
                    changed = true;
                }
            }
            v => changed |= scan_value(v, scan, key, buf),
        }
    }
    changed
}

/// Marks a value (and everything in it) as exempt.
fn mark(v: &mut Value<'_>) {
    match v {
        Value::Str(s) => {
            s.trusted = true;
            if let Some(n) = s.nested_mut() {
                mark(&mut n.root);
            }
        }
        Value::Obj(o) => o.entries.iter_mut().for_each(|e| mark(&mut e.value)),
        Value::Arr(a) => a.items.iter_mut().for_each(mark),
        Value::Lit(_) => {}
    }
}

fn scan_value(v: &mut Value<'_>, scan: &Scan, key: &HmacKey, buf: &mut String) -> bool {
    let changed = match v {
        Value::Str(s) if s.trusted => false,
        Value::Str(s) => {
            if let Some(n) = s.nested_mut() {
                let c = scan_value(&mut n.root, scan, key, buf);
                if c {
                    s.touch();
                }
                return c;
            }
            let text = s.text_in(buf);
            let triggers = detect::triggers(text, scan.kinds);
            if !triggers.any() {
                return false;
            }
            match redact_text_triggered(text, triggers, scan.kinds, &[], &scan.replace, key) {
                Some(new) => {
                    s.set(new);
                    true
                }
                None => false,
            }
        }
        Value::Obj(o) => {
            let mut c = false;
            for e in o.entries.iter_mut() {
                c |= scan_value(&mut e.value, scan, key, buf);
            }
            c
        }
        Value::Arr(a) => {
            let mut c = false;
            for item in a.items.iter_mut() {
                c |= scan_value(item, scan, key, buf);
            }
            c
        }
        Value::Lit(_) => false,
    };
    if changed {
        v.touch();
    }
    changed
}
