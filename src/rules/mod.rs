//! Stage 4, rules: a route's compiled [`Program`] (its shared rule sets, then its own rules,
//! then the personal-data scan) applied to a decoded [`Doc`].
//!
//! Rules run in order. A rule whose conditions read an event's own fields (event name,
//! present/equals/matches) is checked and applied per event: per GA4 batch line, per element
//! of the route's `events` array. Other rules (consent, `Sec-GPC`, client address, bots) are
//! checked once and applied to every part. `drop_request` on a per-event rule removes just
//! those events; when none is left, or on a request-level rule, the request is not forwarded.

pub mod action;
pub mod cond;
pub mod detect;
pub mod ids;
pub mod keys;
pub mod scan;
pub mod select;
pub mod tcf;
pub mod url;
pub mod walk;

use action::{Action, HmacKey};
use cond::{Cond, Ctx, EventView};
use keys::KeyIndex;
use select::Selector;

use crate::decode::{self, DecodeError, Doc, Origin, Value};

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Shown by `explain` and in test failures: the rule's `name`, or its action and fields.
    pub label: String,
    /// `file:line` of the rule.
    pub at: String,
    pub action: Action,
    pub when: Vec<Cond>,
    pub unless: Vec<Cond>,
    /// Whether a condition reads an event's own fields, so the rule is checked per event.
    /// Decided at load ([`Rule::new`]), not per request.
    pub per_event: bool,
}

impl Rule {
    pub fn new(
        label: String,
        at: String,
        action: Action,
        when: Vec<Cond>,
        unless: Vec<Cond>,
    ) -> Rule {
        let per_event = when.iter().chain(&unless).any(Cond::per_event);
        Rule {
            label,
            at,
            action,
            when,
            unless,
            per_event,
        }
    }
}

/// Everything a route does to payloads.
#[derive(Debug, Clone)]
pub struct Program {
    pub codec: decode::Codec,
    pub rules: Vec<Rule>,
    pub scan: Option<scan::Scan>,
    /// Where the events of a JSON body are (`batch[*]`, `[*]`, `events[*]`); body selectors are
    /// then relative to each event.
    pub events: Option<Selector>,
    /// The field holding an event's name.
    pub event_field: Selector,
    /// Fields that carry a document (JSON, base64 of JSON).
    pub nested: Vec<Selector>,
    /// The site's ids this route relays (`id_field` + `id_list`); `None`: any id.
    pub ids: Option<ids::IdCheck>,
    /// The flat key patterns of all the above, classified once per field ([`keys`]); built by
    /// [`Program::index_keys`].
    pub keys: KeyIndex,
    /// Whether a rule has a consent condition: the request's consent is then read before the
    /// first rule, from the request as received.
    pub reads_consent: bool,
}

/// What to do with the request after the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Forward,
    /// Not forwarded; the label of the rule that said so.
    Drop(String),
}

/// Where rules act, found once per request and kept across rules: rules change values inside
/// events but not where the events are, except a per-event `drop_request`, which resets this.
#[derive(Default)]
struct Places {
    all: Option<Vec<Target>>,
    events: Option<Vec<Target>>,
}

impl Places {
    fn all(&mut self, p: &Program, doc: &Doc<'_>) -> &[Target] {
        self.all.get_or_insert_with(|| p.targets(doc, true))
    }

    fn events(&mut self, p: &Program, doc: &Doc<'_>) -> &[Target] {
        self.events.get_or_insert_with(|| p.targets(doc, false))
    }
}

/// The places a rule acts on: a part, or one event inside the body part.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub part: usize,
    /// Index path of the event inside the part (empty: the whole part).
    pub path: Vec<usize>,
}

impl Program {
    /// A program that does nothing (plain relay).
    pub fn empty() -> Program {
        Program {
            codec: decode::Codec::Auto,
            rules: vec![],
            scan: None,
            events: None,
            event_field: Selector::parse("event").expect("valid selector"),
            nested: vec![],
            ids: None,
            keys: KeyIndex::default(),
            reads_consent: false,
        }
    }

    /// Gives every field selector of the program a bit in its key index. Called once, when the
    /// program is compiled.
    pub fn index_keys(mut self) -> Program {
        let mut idx = KeyIndex::default();
        // The bits of the selectors that walk a part's hot fields: all but the scan's exempt
        // list.
        let mut walked = 0;
        let mut add = |s: &mut Selector| {
            idx.add(s);
            walked |= s.bit;
        };
        for rule in &mut self.rules {
            rule.action.selectors_mut().iter_mut().for_each(&mut add);
            // A flat `set` finds the field it replaces by its bit among the hot fields.
            if let Action::Set(pairs) = &mut rule.action {
                pairs.iter_mut().for_each(|(s, _)| add(s));
            }
        }
        self.nested.iter_mut().for_each(&mut add);
        if let Some(ids) = &mut self.ids {
            ids.fields.iter_mut().for_each(&mut add);
        }
        if let Some(scan) = &mut self.scan {
            scan.exempt.iter_mut().for_each(|s| idx.add(s));
            scan.index();
            // Where the scan tells exempt fields by their bits, no walk over hot fields looks
            // for the bits only its exempt list has (GA4's eight `ua*` client hints): leaving
            // those fields out of `Hot` spares every rule passing over them.
            if scan.exempt_by_bit() {
                let exempt = scan.exempt.iter().fold(0, |m, s| m | s.bit);
                idx.unwalked(exempt & !walked);
            }
        }
        self.keys = idx;
        self.reads_consent = self.rules.iter().any(|r| {
            r.when
                .iter()
                .chain(&r.unless)
                .any(|c| matches!(c, Cond::ConsentDenied(_) | Cond::ConsentGranted(_)))
        });
        self
    }

    /// Whether the program has nothing to do (the relay can skip decoding entirely).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.scan.is_none() && self.ids.is_none()
    }

    /// Classifies the keys of flat parts ([`keys`]) and decodes the route's nested fields in
    /// place.
    pub fn prepare(&self, doc: &mut Doc<'_>) -> Result<(), DecodeError> {
        for part in doc.parts.iter_mut().filter(|p| p.flat) {
            if let Value::Obj(o) = &mut part.root {
                part.hot = self.keys.classify_all(&mut o.entries);
            }
        }
        if self.nested.is_empty() {
            return Ok(());
        }
        for part in &mut doc.parts {
            let mut err = None;
            let in_body = part.origin != Origin::Query;
            walk::visit(
                &mut part.root,
                part.flat.then_some(&mut part.hot),
                &self.nested,
                in_body,
                &self.keys,
                &mut |key, v| {
                    if let Value::Str(s) = v
                        && let Err(e) = decode::decode_nested(key, s)
                    {
                        err.get_or_insert(e);
                    }
                    false
                },
            );
            if let Some(e) = err {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Runs the rules and the scan.
    pub fn run(&self, doc: &mut Doc<'_>, ctx: &Ctx<'_>, key: &HmacKey) -> Outcome {
        if self.reads_consent {
            ctx.read_consent(doc);
        }
        let mut places = Places::default();
        for rule in &self.rules {
            if let Some(out) = self.apply_rule(rule, doc, ctx, key, &mut places) {
                return out;
            }
        }
        if let Some(s) = &self.scan {
            let targets = places.all(self, doc);
            scan::run(doc, s, key, targets, &self.keys);
        }
        Outcome::Forward
    }

    /// Like [`Program::run`], calling `after(label, doc)` after each rule and after the scan
    /// (what `tagway explain` uses to attribute each change to its rule).
    pub fn run_observed(
        &self,
        doc: &mut Doc<'_>,
        ctx: &Ctx<'_>,
        key: &HmacKey,
        after: &mut dyn FnMut(&str, &Doc<'_>),
    ) -> Outcome {
        if self.reads_consent {
            ctx.read_consent(doc);
        }
        let mut places = Places::default();
        for rule in &self.rules {
            let out = self.apply_rule(rule, doc, ctx, key, &mut places);
            after(&format!("{} ({})", rule.label, rule.at), doc);
            if let Some(out) = out {
                return out;
            }
        }
        if let Some(s) = &self.scan {
            let targets = places.all(self, doc);
            scan::run(doc, s, key, targets, &self.keys);
            after("personal-data scan", doc);
        }
        Outcome::Forward
    }

    fn apply_rule(
        &self,
        rule: &Rule,
        doc: &mut Doc<'_>,
        ctx: &Ctx<'_>,
        key: &HmacKey,
        places: &mut Places,
    ) -> Option<Outcome> {
        let unconditional = rule.when.is_empty() && rule.unless.is_empty();
        if !rule.per_event {
            // Request-level conditions (consent, Sec-GPC, client address, bots) read no
            // event's fields.
            if !unconditional && !self.conds_hold(rule, ctx, doc, &EventView { layers: &[] }) {
                return None;
            }
            if let Action::DropRequest = rule.action {
                return Some(Outcome::Drop(rule.label.clone()));
            }
            for t in places.all(self, doc) {
                apply_at(&rule.action, doc, t, ctx, key, &self.keys);
            }
            return None;
        }
        let events = places.events(self, doc);
        let mut hits = Vec::new();
        for t in events {
            // The event's own fields, then the URL query shared by all events (GA4 batches).
            let own = walk::at(&doc.parts[t.part].root, &t.path);
            let shared = (t.part != 0).then(|| (&doc.parts[0].root, true));
            let layers = [own.map(|v| (v, doc.parts[t.part].flat)), shared];
            let layers = match layers {
                [Some(a), Some(b)] => &[a, b][..],
                [Some(a), None] | [None, Some(a)] => &[a][..],
                [None, None] => &[][..],
            };
            if self.conds_hold(rule, ctx, doc, &EventView { layers }) {
                hits.push(t.clone());
            }
        }
        let n = events.len();
        if let Action::DropRequest = rule.action {
            if !hits.is_empty() && hits.len() == n {
                return Some(Outcome::Drop(rule.label.clone()));
            }
            drop_events(doc, hits);
            // Events are gone: their positions have to be found again.
            *places = Places::default();
            return None;
        }
        for t in &hits {
            apply_at(&rule.action, doc, t, ctx, key, &self.keys);
        }
        None
    }

    /// `when`: all hold. `unless`: the rule is skipped when all of them hold.
    fn conds_hold(
        &self,
        rule: &Rule,
        ctx: &Ctx<'_>,
        doc: &Doc<'_>,
        ev: &EventView<'_, '_>,
    ) -> bool {
        let all = |cs: &[Cond]| {
            cs.iter()
                .all(|c| cond::holds(c, ctx, doc, ev, &self.event_field))
        };
        all(&rule.when) && (rule.unless.is_empty() || !all(&rule.unless))
    }

    /// Where rules act. `all`: every part (events of a JSON body, or the whole body); else
    /// only the events (GA4 lines; JSON `events`; otherwise the request as one event).
    fn targets(&self, doc: &Doc<'_>, all: bool) -> Vec<Target> {
        let mut out = Vec::new();
        let lines = doc
            .parts
            .iter()
            .any(|p| matches!(p.origin, Origin::Line(_)));
        for (i, p) in doc.parts.iter().enumerate() {
            match (&self.events, p.flat) {
                (Some(ev), false) => {
                    for path in walk::event_paths(&p.root, &ev.steps) {
                        out.push(Target { part: i, path });
                    }
                }
                _ if all => out.push(Target {
                    part: i,
                    path: vec![],
                }),
                _ if lines && matches!(p.origin, Origin::Line(_)) => out.push(Target {
                    part: i,
                    path: vec![],
                }),
                _ => {}
            }
        }
        if !all && out.is_empty() {
            // The request is the one event: rules act on every part.
            out = (0..doc.parts.len())
                .map(|part| Target { part, path: vec![] })
                .collect();
        }
        out
    }
}

fn apply_at(
    action: &Action,
    doc: &mut Doc<'_>,
    t: &Target,
    ctx: &Ctx<'_>,
    key: &HmacKey,
    idx: &KeyIndex,
) {
    let part = &mut doc.parts[t.part];
    let in_body = part.origin != Origin::Query;
    // A flat part's target is the whole part (only JSON bodies have events inside).
    let mut flat = (part.flat && t.path.is_empty()).then_some(&mut part.hot);
    if walk::at_mut(&mut part.root, &t.path, &mut |v| {
        action::apply(action, v, flat.as_deref_mut(), in_body, ctx, key, idx)
    }) {
        part.changed = true;
    }
}

/// Removes events: GA4 lines, or elements of a JSON body's events array.
fn drop_events(doc: &mut Doc<'_>, hits: Vec<Target>) {
    let mut lines: Vec<usize> = Vec::new();
    let mut by_part: Vec<(usize, Vec<Vec<usize>>)> = Vec::new();
    for t in hits {
        if t.path.is_empty() {
            lines.push(t.part);
        } else {
            match by_part.iter_mut().find(|(p, _)| *p == t.part) {
                Some((_, v)) => v.push(t.path),
                None => by_part.push((t.part, vec![t.path])),
            }
        }
    }
    for (p, paths) in by_part {
        if walk::remove_at(&mut doc.parts[p].root, paths) {
            doc.parts[p].changed = true;
        }
    }
    if !lines.is_empty() {
        let mut i = 0;
        doc.parts.retain(|_| {
            let keep = !lines.contains(&i);
            i += 1;
            keep
        });
        // A removed line changes the body: mark a remaining line (or write an empty body).
        if let Some(p) = doc.parts.iter_mut().find(|p| p.origin != Origin::Query) {
            p.changed = true;
        }
        if let decode::Frame::Lines { spaces, .. } = &mut doc.frame {
            let mut i = 0;
            spaces.retain(|_| {
                i += 1;
                !lines.contains(&i)
            });
        }
    }
}
