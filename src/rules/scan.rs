//! The personal-data scan, on by default: after the rules, every string value of every part
//! (nested documents included) is checked by the detectors, and whatever looks like an email
//! address, phone number, payment card, IBAN, IP address or token is redacted even when no
//! rule names its field. Fields a route exempts, and values a rule wrote (hashes, set values,
//! truncated addresses), are left alone.

use super::action::{HmacKey, Replace, redact_text};
use super::detect::Kinds;
use super::keys::KeyIndex;
use super::select::Selector;
use super::{Target, walk};
use crate::decode::{Doc, Origin, Value};

/// A route's scan settings, compiled.
#[derive(Debug, Clone)]
pub struct Scan {
    pub kinds: Kinds,
    pub exempt: Vec<Selector>,
    pub replace: Replace,
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
        let (flat, in_body) = (part.flat, part.origin != Origin::Query);
        walk::at_mut(&mut part.root, &t.path, &mut |v| {
            walk::visit(v, flat, &scan.exempt, in_body, idx, &mut |_, v| {
                mark(v);
                false
            });
            false
        });
    }
    for part in &mut doc.parts {
        if scan_value(&mut part.root, scan, key) {
            part.changed = true;
        }
    }
}

/// Marks a value (and everything in it) as exempt.
fn mark(v: &mut Value<'_>) {
    match v {
        Value::Str(s) => {
            s.trusted = true;
            if let Some(n) = s.nested.as_mut() {
                mark(&mut n.root);
            }
        }
        Value::Obj(o) => o.entries.iter_mut().for_each(|e| mark(&mut e.value)),
        Value::Arr(a) => a.items.iter_mut().for_each(mark),
        Value::Lit(_) => {}
    }
}

fn scan_value(v: &mut Value<'_>, scan: &Scan, key: &HmacKey) -> bool {
    let changed = match v {
        Value::Str(s) if s.trusted => false,
        Value::Str(s) => {
            if let Some(n) = s.nested.as_mut() {
                let c = scan_value(&mut n.root, scan, key);
                if c {
                    s.raw = None;
                }
                return c;
            }
            match redact_text(&s.text, scan.kinds, &[], &scan.replace, key) {
                Some(new) => {
                    s.set(new);
                    true
                }
                None => false,
            }
        }
        Value::Obj(o) => {
            let mut c = false;
            for e in &mut o.entries {
                c |= scan_value(&mut e.value, scan, key);
            }
            c
        }
        Value::Arr(a) => {
            let mut c = false;
            for item in &mut a.items {
                c |= scan_value(item, scan, key);
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
