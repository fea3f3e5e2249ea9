//! Compiling the site's own ids: `[site.ids]` lists, each route's `id_field` + `id_list`, and
//! the warnings for routes that relay beacons for any id (see [`crate::rules::ids`]).

use serde::Deserialize;
use toml::Spanned;

use super::RuleText;
use super::compile::Compiler;
use super::diag::did_you_mean;
use super::model::{RouteSpec, SiteSpec};
use crate::rules::ids::IdCheck;

/// A route's `id_field`: one selector (`"tid"`) or a list (`["api_key", "**.token"]`).
#[derive(Debug, Clone)]
pub struct IdFields(pub Vec<String>);

impl<'de> Deserialize<'de> for IdFields {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = IdFields;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a field selector or a list of them")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<IdFields, E> {
                Ok(IdFields(vec![s.to_string()]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<IdFields, A::Error> {
                let mut v = Vec::new();
                while let Some(s) = a.next_element::<String>()? {
                    v.push(s);
                }
                Ok(IdFields(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl Compiler {
    /// Reads `[site.ids]`: list names like route names, ids non-empty.
    pub(super) fn site_ids(&mut self, t: &RuleText, s: &SiteSpec) {
        for (name, ids) in &s.ids {
            if !super::compile::valid_name(name) {
                // The key has no span of its own; point at its first id.
                if let Some(first) = ids.first() {
                    self.err(
                        t,
                        first.span(),
                        format!(
                            "[site.ids] list name {name:?}: use letters, digits, `-`, `_` and `.`"
                        ),
                    );
                }
                continue;
            }
            let mut list = Vec::new();
            for id in ids {
                let v = id.get_ref().trim();
                if v.is_empty() || v.chars().any(char::is_control) {
                    self.err(
                        t,
                        id.span(),
                        format!("[site.ids] {name}: {:?} is not an id", id.get_ref()),
                    );
                } else {
                    list.push(v.to_string());
                }
            }
            self.site_ids.insert(name.clone(), list);
        }
    }

    /// A route's id check; `None` without `id_field`/`id_list` or with an empty list.
    pub(super) fn id_check(&mut self, t: &RuleText, r: &RouteSpec) -> Option<IdCheck> {
        let (field, list) = match (&r.id_field, &r.id_list) {
            (None, None) => return None,
            (Some(f), Some(l)) => (f, l),
            (Some(f), None) => {
                self.err(t, f.span(), "id_field needs id_list: the [site.ids] list (like \"ga4\") holding the site's ids for this route");
                return None;
            }
            (None, Some(l)) => {
                self.err(
                    t,
                    l.span(),
                    "id_list needs id_field: the field carrying the beacon's id (like \"tid\")",
                );
                return None;
            }
        };
        if field.get_ref().0.is_empty() {
            self.err(
                t,
                field.span(),
                "id_field = []: name the field carrying the beacon's id (like \"tid\")",
            );
            return None;
        }
        let mut fields = Vec::new();
        for f in &field.get_ref().0 {
            fields.push(self.payload_selector(
                t,
                &Spanned::new(field.span(), f.clone()),
                "the id is read from the payload (query or body), not from headers or cookies",
            )?);
        }
        let name = list.get_ref().clone();
        self.id_lists_used
            .entry(name.clone())
            .or_default()
            .push(r.name.get_ref().clone());
        let allowed = self.site_ids.get(&name).cloned().unwrap_or_default();
        (!allowed.is_empty()).then_some(IdCheck {
            fields,
            list: name,
            allowed,
        })
    }

    /// A script route's `id_field` must be a query parameter its `script.query` sends to the
    /// vendor: the check passes on the browser's id, and without the id the vendor would be
    /// asked for a script that loads nothing (or every site's, for a loader keyed by id).
    pub(super) fn script_id_fields(&mut self, t: &RuleText, r: &RouteSpec) {
        let (Some(field), Some(script)) = (&r.id_field, &r.script) else {
            return;
        };
        let sent: Vec<&str> = script
            .get_ref()
            .query
            .iter()
            .map(|q| q.get_ref().as_str())
            .collect();
        for f in &field.get_ref().0 {
            let name = f.strip_prefix("query:").unwrap_or(f);
            if sent.contains(&name) {
                continue;
            }
            let msg = if name.contains(['*', '.', '['])
                || f.contains(':') && !f.starts_with("query:")
            {
                format!(
                    "id_field {f:?}: a script route's id is a query parameter; name it as listed in script = {{ query = [...] }}"
                )
            } else {
                let hint = did_you_mean(name, sent.iter().copied()).unwrap_or_default();
                format!(
                    "id_field {f:?} is not in script = {{ query = [...] }}, so the vendor would be asked for the script without the id the check allows; add {name:?} to the script's query list{hint}"
                )
            };
            self.err(t, field.span(), msg);
        }
    }

    /// Routes relaying beacons for any id, and lists no route uses (a typo, or a preset
    /// switched off).
    pub(super) fn id_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let open: Vec<String> = self
            .id_lists_used
            .iter()
            .filter(|(l, _)| self.site_ids.get(*l).is_none_or(Vec::is_empty))
            .map(|(l, routes)| format!("{l} ({})", routes.join(", ")))
            .collect();
        if !open.is_empty() {
            out.push(format!(
                "beacons for any id are relayed: [site.ids] has no ids for {}; list the site's own ids so nobody can relay their traffic or spam through this gateway",
                open.join("; ")
            ));
        }
        for (l, ids) in &self.site_ids {
            if !ids.is_empty() && !self.id_lists_used.contains_key(l) {
                let hint = did_you_mean(l, self.id_lists_used.keys().map(String::as_str))
                    .unwrap_or_default();
                out.push(format!(
                    "[site.ids] {l}: no route names this list with id_list, so its ids check nothing{hint}"
                ));
            }
        }
        out
    }
}
