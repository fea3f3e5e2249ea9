//! The site's own ids (abuse and spam): a route with `id_field` and `id_list` relays only
//! beacons whose id (GA4 `tid`, Meta `id`, TikTok pixel code, …) is in the site's
//! `[site.ids]` list of that name. Checked on the decoded request before any rule, so no rule
//! can rename the id first; a beacon for another id — or with none — is answered in the
//! vendor's place and counted (`tagway_dropped_foreign_id_total`), never forwarded.

use super::keys::KeyIndex;
use super::select::Selector;
use super::walk;
use crate::decode::{Doc, Origin};

/// One route's id check, compiled at load.
#[derive(Debug, Clone)]
pub struct IdCheck {
    /// Where the id is: whole-document selectors (like `nested`, not relative to `events`);
    /// a request's ids are the values of all of them.
    pub fields: Vec<Selector>,
    /// The `[site.ids]` list's name, for messages.
    pub list: String,
    /// The site's ids (never empty: an empty list means no check at all).
    pub allowed: Vec<String>,
}

impl IdCheck {
    /// `Ok` when every id the request carries is one of the site's (and it carries one);
    /// otherwise why not, naming the foreign id (ids are not personal data). `idx` is the
    /// route program's key index, which gives [`IdCheck::field`] its bit.
    pub fn check(&self, doc: &mut Doc<'_>, idx: &KeyIndex) -> Result<(), String> {
        let mut found = 0usize;
        let mut foreign: Option<String> = None;
        let sels = &self.fields[..];
        for part in &mut doc.parts {
            let in_body = part.origin != Origin::Query;
            walk::visit(
                &mut part.root,
                part.flat.then_some(&mut part.hot),
                sels,
                in_body,
                idx,
                &mut |_, v| {
                    if let Some(id) = v.as_str() {
                        found += 1;
                        let id = id.trim();
                        if foreign.is_none()
                            && !self.allowed.iter().any(|a| a.eq_ignore_ascii_case(id))
                        {
                            foreign = Some(id.chars().take(64).collect());
                        }
                    }
                    false
                },
            );
        }
        // The message is built only for a request that is refused.
        let field = || {
            self.fields
                .iter()
                .map(|f| f.text.as_str())
                .collect::<Vec<_>>()
                .join(" or ")
        };
        match (found, foreign) {
            (0, _) => Err(format!(
                "no id in {} (the site's [site.ids] {} list is not empty)",
                field(),
                self.list
            )),
            (_, Some(id)) => Err(format!(
                "id {id:?} in {} is not in the site's [site.ids] {} list",
                field(),
                self.list
            )),
            _ => Ok(()),
        }
    }
}
