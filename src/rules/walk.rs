//! Finding what a selector matches inside one part and changing it in place. Every function
//! reports whether it changed anything, and clears the saved original text (`raw`) of each
//! container on the way back up, so the encoder re-encodes exactly the changed containers
//! and writes everything else as it came.

use std::borrow::Cow;

use super::keys::{self, KeyIndex, Plan};
use super::select::{KeyPat, Selector, Step};
use crate::decode::{Entry, Hot, Value};

/// How a part's fields are addressed: `None` for a tree (JSON), `Some` for a flat part, with
/// the entries the program's selectors can match ([`Hot`]), which the functions here keep true.
pub type Flat<'h> = Option<&'h mut Hot>;

/// Calls `each` on the entries of a flat part that a selector of `plan` can match: by `hot`
/// when it is known and every selector of the plan has a key bit, else all of them.
#[inline(always)]
fn for_plan<'a>(
    entries: &mut [Entry<'a>],
    hot: Hot,
    plan: &Plan,
    idx: &KeyIndex,
    mut each: impl FnMut(usize, &mut Entry<'a>),
) {
    match hot.bits() {
        Some(mut bits) if !plan.any_direct && !plan.nested => {
            debug_assert!(idx.hot_holds(hot, entries), "hot entries out of date");
            debug_assert!(
                entries.iter().enumerate().all(|(i, e)| {
                    e.class & plan.mask & !keys::CLASSIFIED == 0 || i >= 64 || bits & 1 << i != 0
                }),
                "a field this walk looks for is not hot"
            );
            while bits != 0 {
                let i = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if let Some(e) = entries.get_mut(i) {
                    each(i, e);
                }
            }
        }
        _ => entries.iter_mut().enumerate().for_each(|(i, e)| each(i, e)),
    }
}

/// Calls `f` on every value a selector of `sels` (those that apply to this part) matches
/// under `root`. Flat parts take one pass over their fields whatever the number of selectors;
/// `idx` is the running program's key index (the selectors' bits refer to it).
pub fn visit<'a>(
    root: &mut Value<'a>,
    flat: Flat<'_>,
    sels: &[Selector],
    in_body: bool,
    idx: &KeyIndex,
    f: &mut dyn FnMut(&str, &mut Value<'a>) -> bool,
) -> bool {
    let mut changed = false;
    match (root, flat) {
        (Value::Obj(obj), Some(hot)) => {
            let plan = Plan::new(sels, in_body);
            for_plan(&mut obj.entries, *hot, &plan, idx, |_, e| {
                let class = if plan.mask != 0 { idx.class_of(e) } else { 0 };
                // Most fields are passed over by their bits alone.
                let nested = plan.nested && has_nested(&e.value);
                if class & plan.mask == 0
                    && !(plan.any_direct && plan.direct.admits(&e.key))
                    && !nested
                {
                    return;
                }
                for sel in sels.iter().filter(|s| s.applies(in_body)) {
                    if keys::flat_hit(sel, class, &e.key) {
                        changed |= f(&e.key, &mut e.value);
                        break;
                    }
                    if !nested {
                        continue;
                    }
                    for (kp, steps) in &sel.nested {
                        if kp.matches(&e.key) {
                            changed |= into_nested(&mut e.value, steps, f);
                        }
                    }
                }
            });
        }
        (root, _) => {
            for sel in sels.iter().filter(|s| s.applies(in_body)) {
                changed |= walk(root, &sel.steps, "", f);
            }
        }
    }
    changed
}

/// Whether a field carries a decoded document (only then can a nested path reach into it).
#[inline]
fn has_nested(v: &Value<'_>) -> bool {
    matches!(v, Value::Str(s) if s.has_nested())
}

/// Continues a path inside the document a string carries.
fn into_nested<'a>(
    v: &mut Value<'a>,
    steps: &[Step],
    f: &mut dyn FnMut(&str, &mut Value<'a>) -> bool,
) -> bool {
    let Value::Str(s) = v else { return false };
    let Some(n) = s.nested_mut() else {
        return false;
    };
    let changed = walk(&mut n.root, steps, "", f);
    if changed {
        s.touch();
    }
    changed
}

fn walk<'a>(
    v: &mut Value<'a>,
    steps: &[Step],
    key: &str,
    f: &mut dyn FnMut(&str, &mut Value<'a>) -> bool,
) -> bool {
    let Some((step, rest)) = steps.split_first() else {
        return f(key, v);
    };
    let changed = match (step, &mut *v) {
        (Step::AnyDepth, _) => {
            let mut c = walk(v, rest, key, f);
            c |= children(v, &mut |k, child| walk(child, steps, k, f));
            c
        }
        (Step::Key(p), Value::Obj(o)) => {
            let mut c = false;
            for e in &mut o.entries {
                if p.matches(&e.key) {
                    c |= walk(&mut e.value, rest, &e.key, f);
                }
            }
            c
        }
        (Step::Index(i), Value::Arr(a)) => a
            .items
            .get_mut(*i)
            .is_some_and(|item| walk(item, rest, key, f)),
        (Step::AnyIndex, Value::Arr(a)) => {
            let mut c = false;
            for item in &mut a.items {
                c |= walk(item, rest, key, f);
            }
            c
        }
        // A path that continues into a string: the document it carries, if any.
        (_, Value::Str(_)) => return into_nested(v, steps, f),
        _ => false,
    };
    if changed {
        v.touch();
    }
    changed
}

/// Calls `f` on each direct child (object members, array items, a string's nested root).
fn children<'a>(v: &mut Value<'a>, f: &mut dyn FnMut(&str, &mut Value<'a>) -> bool) -> bool {
    let mut c = false;
    match v {
        Value::Obj(o) => {
            for e in &mut o.entries {
                c |= f(&e.key, &mut e.value);
            }
        }
        Value::Arr(a) => {
            for item in &mut a.items {
                c |= f("", item);
            }
        }
        Value::Str(s) => {
            if let Some(n) = s.nested_mut() {
                c = f("", &mut n.root);
                if c {
                    s.touch();
                }
            }
        }
        Value::Lit(_) => {}
    }
    if c {
        v.touch();
    }
    c
}

/// Removes every field a selector of `sels` matches.
pub fn remove(
    root: &mut Value<'_>,
    flat: Flat<'_>,
    sels: &[Selector],
    in_body: bool,
    idx: &KeyIndex,
) -> bool {
    let Some(hot) = flat else {
        let mut c = false;
        for sel in sels.iter().filter(|s| s.applies(in_body)) {
            c |= remove_path(root, &sel.steps);
        }
        return c;
    };
    let Value::Obj(obj) = root else { return false };
    let plan = Plan::new(sels, in_body);
    let hit = |e: &mut Entry<'_>| {
        let class = if plan.mask != 0 { idx.class_of(e) } else { 0 };
        class & plan.mask != 0
            || (plan.any_direct
                && plan.direct.admits(&e.key)
                && sels
                    .iter()
                    .any(|s| s.applies(in_body) && keys::flat_hit(s, class, &e.key)))
    };
    let mut changed = match hot.bits() {
        Some(_) if !plan.any_direct => {
            // Only hot entries can be hit; nested documents are handled below.
            let mut gone = 0u64;
            for_plan(
                &mut obj.entries,
                *hot,
                &Plan::bits(plan.mask),
                idx,
                |i, e| {
                    if hit(e) {
                        gone |= 1 << i;
                    }
                },
            );
            hot.remove(gone);
            obj.remove_bits(gone)
        }
        _ => {
            let c = obj.remove_where(hit);
            if c {
                rehot(hot, &obj.entries, idx);
            }
            c
        }
    };
    if !plan.nested {
        return changed;
    }
    for e in obj.entries.iter_mut() {
        if !has_nested(&e.value) {
            continue;
        }
        for sel in sels.iter().filter(|s| s.applies(in_body)) {
            for (kp, steps) in &sel.nested {
                if !kp.matches(&e.key) {
                    continue;
                }
                if let Value::Str(s) = &mut e.value
                    && let Some(n) = s.nested_mut()
                    && remove_path(&mut n.root, steps)
                {
                    s.touch();
                    changed = true;
                }
            }
        }
    }
    changed
}

fn remove_path(v: &mut Value<'_>, steps: &[Step]) -> bool {
    let Some((step, rest)) = steps.split_first() else {
        return false;
    };
    let changed = match (step, &mut *v) {
        (Step::AnyDepth, _) => {
            let mut c = remove_path(v, rest);
            c |= children(v, &mut |_, child| remove_path(child, steps));
            c
        }
        (Step::Key(p), Value::Obj(o)) if rest.is_empty() => o.remove_where(|e| p.matches(&e.key)),
        (Step::Key(p), Value::Obj(o)) => {
            let mut c = false;
            for e in o.entries.iter_mut() {
                if p.matches(&e.key) {
                    c |= remove_path(&mut e.value, rest);
                }
            }
            c
        }
        (Step::Index(i), Value::Arr(a)) if rest.is_empty() && *i < a.items.len() => {
            a.items.remove(*i);
            true
        }
        (Step::Index(_), Value::Arr(_)) if rest.is_empty() => false,
        (Step::AnyIndex, Value::Arr(a)) if rest.is_empty() => {
            let c = !a.items.is_empty();
            a.items.clear();
            c
        }
        (Step::Index(i), Value::Arr(a)) => a
            .items
            .get_mut(*i)
            .is_some_and(|item| remove_path(item, rest)),
        (Step::AnyIndex, Value::Arr(a)) => {
            let mut c = false;
            for item in a.items.iter_mut() {
                c |= remove_path(item, rest);
            }
            c
        }
        (_, Value::Str(s)) => match s.nested_mut() {
            Some(n) => {
                let c = remove_path(&mut n.root, steps);
                if c {
                    s.touch();
                }
                return c;
            }
            None => false,
        },
        _ => false,
    };
    if changed {
        v.touch();
    }
    changed
}

/// Keeps only the fields some selector matches (and the containers on the way to them).
pub fn retain(
    root: &mut Value<'_>,
    flat: Flat<'_>,
    sels: &[Selector],
    in_body: bool,
    idx: &KeyIndex,
) -> bool {
    if let Some(hot) = flat {
        let Value::Obj(obj) = root else { return false };
        let plan = Plan::new(sels, in_body);
        let c = obj.remove_where(|e| {
            let class = if plan.mask != 0 { idx.class_of(e) } else { 0 };
            !sels.iter().filter(|s| s.applies(in_body)).any(|s| {
                keys::flat_hit(s, class, &e.key)
                    || (s.first.admits(&e.key) && s.nested.iter().any(|(k, _)| k.matches(&e.key)))
            })
        });
        if c {
            rehot(hot, &obj.entries, idx);
        }
        return c;
    }
    let paths: Vec<&[Step]> = sels
        .iter()
        .filter(|s| s.applies(in_body))
        .map(|s| s.steps.as_slice())
        .collect();
    retain_paths(root, &paths)
}

fn retain_paths(v: &mut Value<'_>, paths: &[&[Step]]) -> bool {
    // A path that ends here or goes on with `**` keeps this whole subtree.
    if paths.iter().any(|p| p.is_empty() || p[0] == Step::AnyDepth) {
        return false;
    }
    let changed = match v {
        Value::Obj(o) => {
            let mut c = false;
            let mut i = 0;
            while i < o.entries.len() {
                let next: Vec<&[Step]> = paths
                    .iter()
                    .filter_map(|p| match &p[0] {
                        Step::Key(k) if k.matches(&o.entries[i].key) => Some(&p[1..]),
                        _ => None,
                    })
                    .collect();
                if next.is_empty() {
                    o.entries.remove(i);
                    c = true;
                    continue;
                }
                c |= retain_paths(&mut o.entries[i].value, &next);
                i += 1;
            }
            c
        }
        Value::Arr(a) => {
            let mut c = false;
            let mut i = 0;
            while i < a.items.len() {
                let next: Vec<&[Step]> = paths
                    .iter()
                    .filter_map(|p| match &p[0] {
                        Step::AnyIndex => Some(&p[1..]),
                        Step::Index(n) if *n == i => Some(&p[1..]),
                        _ => None,
                    })
                    .collect();
                if next.is_empty() {
                    a.items.remove(i);
                    c = true;
                    continue;
                }
                c |= retain_paths(&mut a.items[i], &next);
                i += 1;
            }
            c
        }
        _ => false,
    };
    if changed {
        v.touch();
    }
    changed
}

/// The first value `sel` matches, for reading (conditions, templates).
pub fn first<'v, 'a>(root: &'v Value<'a>, flat: bool, sel: &Selector) -> Option<&'v Value<'a>> {
    if flat {
        let Value::Obj(obj) = root else { return None };
        if let Some(e) = obj.entries.iter().find(|e| sel.flat.matches(&e.key)) {
            return Some(&e.value);
        }
        for e in &obj.entries {
            for (kp, steps) in &sel.nested {
                if kp.matches(&e.key) {
                    let nested = match &e.value {
                        Value::Str(s) => s.nested(),
                        _ => None,
                    };
                    if let Some(v) = nested.and_then(|n| find(&n.root, steps)) {
                        return Some(v);
                    }
                }
            }
        }
        return None;
    }
    find(root, &sel.steps)
}

fn find<'v, 'a>(v: &'v Value<'a>, steps: &[Step]) -> Option<&'v Value<'a>> {
    let Some((step, rest)) = steps.split_first() else {
        return Some(v);
    };
    match (step, v) {
        (Step::AnyDepth, _) => find(v, rest).or_else(|| match v {
            Value::Obj(o) => o.entries.iter().find_map(|e| find(&e.value, steps)),
            Value::Arr(a) => a.items.iter().find_map(|i| find(i, steps)),
            _ => None,
        }),
        (Step::Key(p), Value::Obj(o)) => o
            .entries
            .iter()
            .filter(|e| p.matches(&e.key))
            .find_map(|e| find(&e.value, rest)),
        (Step::Index(i), Value::Arr(a)) => a.items.get(*i).and_then(|item| find(item, rest)),
        (Step::AnyIndex, Value::Arr(a)) => a.items.iter().find_map(|item| find(item, rest)),
        (_, Value::Str(s)) => find(&s.nested()?.root, steps),
        _ => None,
    }
}

/// Sets an exact field (creating the path in JSON objects as needed).
pub fn set<'a>(
    root: &mut Value<'a>,
    flat: Flat<'_>,
    sel: &Selector,
    value: Value<'a>,
    idx: &KeyIndex,
) -> bool {
    let Some(hot) = flat else {
        return set_path(root, &sel.steps, value);
    };
    let (Value::Obj(obj), KeyPat::Exact(k)) = (root, &sel.flat) else {
        return false;
    };
    match hot.bits() {
        // The entries with this key are the hot ones with its bit.
        Some(_) if sel.bit != 0 => {
            let mut with = 0u64;
            for_plan(&mut obj.entries, *hot, &Plan::bits(sel.bit), idx, |i, e| {
                if idx.class_of(e) & sel.bit != 0 {
                    with |= 1 << i;
                }
            });
            obj.raw = None;
            if with == 0 {
                obj.entries.push(Entry::new(Cow::Owned(k.clone()), value));
                hot.mark(obj.entries.len() - 1);
                return true;
            }
            let first = with.trailing_zeros() as usize;
            if let Some(e) = obj.entries.get_mut(first) {
                e.value = value;
                e.bare = false;
            }
            let dups = with & !(1 << first);
            hot.remove(dups);
            obj.remove_bits(dups);
        }
        _ => {
            let n = obj.entries.len();
            obj.set(Cow::Owned(k.clone()), value);
            if obj.entries.len() == n + 1 {
                hot.mark(n);
            } else if obj.entries.len() < n {
                rehot(hot, &obj.entries, idx);
            }
        }
    }
    true
}

/// Finds a flat part's hot entries again after a change that moved them unpredictably.
fn rehot(hot: &mut Hot, entries: &[Entry<'_>], idx: &KeyIndex) {
    if hot.bits().is_some() {
        *hot = idx.hot(entries);
    }
}

fn set_path<'a>(v: &mut Value<'a>, steps: &[Step], value: Value<'a>) -> bool {
    let Some((Step::Key(KeyPat::Exact(k)), rest)) = steps.split_first() else {
        return false;
    };
    let Value::Obj(o) = v else { return false };
    let changed = if rest.is_empty() {
        o.set(Cow::Owned(k.clone()), value);
        true
    } else {
        if o.get(k).is_none() {
            o.entries.push(crate::decode::Entry::new(
                Cow::Owned(k.clone()),
                Value::Obj(Default::default()),
            ));
        }
        o.get_mut(k)
            .is_some_and(|child| set_path(child, rest, value))
    };
    if changed {
        v.touch();
    }
    changed
}

/// Renames exact field `sel` to `to` (same container).
pub fn rename(root: &mut Value<'_>, mut flat: Flat<'_>, sel: &Selector, to: &str) -> bool {
    let (container, last) = if flat.is_some() {
        (Some(root), &sel.flat)
    } else {
        match sel.steps.split_last() {
            Some((Step::Key(last), parent)) => (find_mut(root, parent), last),
            _ => return false,
        }
    };
    let Some(Value::Obj(o)) = container else {
        return false;
    };
    let mut changed = false;
    for (i, e) in o.entries.iter_mut().enumerate() {
        if last.matches(&e.key) {
            e.key = Cow::Owned(to.to_string());
            e.raw_key = None;
            // Classified again when next looked at: a rule may select the new name.
            e.class = 0;
            if let Some(hot) = flat.as_deref_mut() {
                hot.mark(i);
            }
            changed = true;
        }
    }
    if changed {
        o.raw = None;
    }
    changed
}

fn find_mut<'v, 'a>(v: &'v mut Value<'a>, steps: &[Step]) -> Option<&'v mut Value<'a>> {
    let Some((step, rest)) = steps.split_first() else {
        return Some(v);
    };
    v.touch();
    match (step, v) {
        (Step::Key(KeyPat::Exact(k)), Value::Obj(o)) => {
            o.get_mut(k).and_then(|c| find_mut(c, rest))
        }
        (Step::Index(i), Value::Arr(a)) => a.items.get_mut(*i).and_then(|c| find_mut(c, rest)),
        _ => None,
    }
}

/// The index paths (object entry / array item positions) of the events `steps` (a route's `events`) finds in a JSON body. When the
/// body has no array where `steps` ends, its own shape decides: an array's items, or the one
/// object, are the events. PostHog sends `{batch:[…]}`, `[…]` and a single event to the same
/// endpoint; an empty `batch` array stays without events.
pub fn event_paths(root: &Value<'_>, steps: &[Step]) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    collect_paths(root, steps, &mut cur, &mut out);
    if out.is_empty() && matches!(steps.last(), Some(Step::AnyIndex)) {
        let mut containers = Vec::new();
        collect_paths(root, &steps[..steps.len() - 1], &mut cur, &mut containers);
        let has_array = containers
            .iter()
            .any(|p| matches!(at(root, p), Some(Value::Arr(_))));
        if !has_array {
            match root {
                Value::Arr(a) => out.extend((0..a.items.len()).map(|i| vec![i])),
                Value::Obj(_) => out.push(Vec::new()),
                _ => {}
            }
        }
    }
    out
}

fn collect_paths(v: &Value<'_>, steps: &[Step], cur: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
    let Some((step, rest)) = steps.split_first() else {
        out.push(cur.clone());
        return;
    };
    match (step, v) {
        (Step::Key(p), Value::Obj(o)) => {
            for (i, e) in o.entries.iter().enumerate() {
                if p.matches(&e.key) {
                    cur.push(i);
                    collect_paths(&e.value, rest, cur, out);
                    cur.pop();
                }
            }
        }
        (Step::Index(n), Value::Arr(a)) if *n < a.items.len() => {
            cur.push(*n);
            collect_paths(&a.items[*n], rest, cur, out);
            cur.pop();
        }
        (Step::AnyIndex, Value::Arr(a)) => {
            for (i, item) in a.items.iter().enumerate() {
                cur.push(i);
                collect_paths(item, rest, cur, out);
                cur.pop();
            }
        }
        _ => {}
    }
}

/// The value at an index path.
pub fn at<'v, 'a>(v: &'v Value<'a>, path: &[usize]) -> Option<&'v Value<'a>> {
    let Some((&i, rest)) = path.split_first() else {
        return Some(v);
    };
    match v {
        Value::Obj(o) => o.entries.get(i).and_then(|e| at(&e.value, rest)),
        Value::Arr(a) => a.items.get(i).and_then(|x| at(x, rest)),
        _ => None,
    }
}

/// The value at an index path, for changing it: every container on the way is marked changed
/// when `f` reports a change.
pub fn at_mut<'a>(
    v: &mut Value<'a>,
    path: &[usize],
    f: &mut dyn FnMut(&mut Value<'a>) -> bool,
) -> bool {
    let Some((&i, rest)) = path.split_first() else {
        return f(v);
    };
    let changed = match v {
        Value::Obj(o) => o
            .entries
            .get_mut(i)
            .is_some_and(|e| at_mut(&mut e.value, rest, f)),
        Value::Arr(a) => a.items.get_mut(i).is_some_and(|x| at_mut(x, rest, f)),
        _ => false,
    };
    if changed {
        v.touch();
    }
    changed
}

/// Removes the values at the given index paths (deepest and last first, so that earlier
/// paths stay valid).
pub fn remove_at(root: &mut Value<'_>, mut paths: Vec<Vec<usize>>) -> bool {
    paths.sort();
    let mut changed = false;
    for p in paths.iter().rev() {
        let Some((&last, parent)) = p.split_last() else {
            continue;
        };
        changed |= at_mut(root, parent, &mut |v| match v {
            Value::Arr(a) if last < a.items.len() => {
                a.items.remove(last);
                true
            }
            Value::Obj(o) if last < o.entries.len() => {
                o.entries.remove(last);
                true
            }
            _ => false,
        });
    }
    changed
}
