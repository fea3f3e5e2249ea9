//! Host rewriting inside a vendor's script: every literal pattern of the route's `rewrite`
//! table is replaced in one pass (Aho-Corasick, leftmost-longest, so `region1.example` wins
//! over `example` where both match), with `{host}` in a replacement standing for the
//! first-party host the browser asked. The automaton is built once, when the rules load.

use std::collections::BTreeMap;

use aho_corasick::{AhoCorasick, MatchKind};

/// A piece of a replacement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Host,
}

/// A compiled `rewrite` table.
#[derive(Debug, Default)]
pub struct Rewriter {
    /// `None` when the table is empty (the script is served as fetched).
    matcher: Option<AhoCorasick>,
    /// The replacement of pattern `i`.
    replacements: Vec<Vec<Part>>,
}

impl Rewriter {
    /// Compiles a table of pattern → replacement; every problem is returned.
    pub fn compile(table: &BTreeMap<String, String>) -> Result<Rewriter, Vec<String>> {
        let mut errs = Vec::new();
        let mut patterns = Vec::new();
        let mut replacements = Vec::new();
        for (from, to) in table {
            if from.is_empty() {
                errs.push("script.rewrite: a pattern is empty; write the vendor text to replace, like \"www.google-analytics.com\"".into());
                continue;
            }
            match template(to) {
                Ok(parts) => {
                    patterns.push(from.as_str());
                    replacements.push(parts);
                }
                Err(e) => errs.push(format!("script.rewrite {from:?}: {e}")),
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        if patterns.is_empty() {
            return Ok(Rewriter::default());
        }
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
            .map_err(|e| {
                vec![format!(
                    "script.rewrite: the patterns cannot be compiled: {e}"
                )]
            })?;
        Ok(Rewriter {
            matcher: Some(matcher),
            replacements,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.matcher.is_none()
    }

    /// `body` with every pattern replaced, `{host}` being `host`.
    pub fn apply(&self, body: &[u8], host: &str) -> Vec<u8> {
        let Some(m) = &self.matcher else {
            return body.to_vec();
        };
        let with: Vec<String> = self
            .replacements
            .iter()
            .map(|parts| {
                parts
                    .iter()
                    .map(|p| match p {
                        Part::Text(t) => t.as_str(),
                        Part::Host => host,
                    })
                    .collect()
            })
            .collect();
        m.replace_all_bytes(body, &with)
    }
}

/// Splits a replacement at its `{host}` placeholders; any other `{…}` is a mistake.
fn template(s: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('{') {
        let after = &rest[i..];
        let Some(end) = after.find('}') else {
            return Err(format!(
                "{s:?} has a `{{` without `}}`; the only placeholder is {{host}}"
            ));
        };
        let name = &after[1..end];
        if name != "host" {
            return Err(format!(
                "unknown placeholder {{{name}}} in {s:?}; the only placeholder is {{host}}"
            ));
        }
        if i > 0 {
            parts.push(Part::Text(rest[..i].to_string()));
        }
        parts.push(Part::Host);
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_string()));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(pairs: &[(&str, &str)]) -> Rewriter {
        Rewriter::compile(
            &pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn hosts_and_alias_paths_in_one_pass() {
        let r = rw(&[
            ("www.google-analytics.com", "{host}"),
            ("google-analytics.com", "{host}"),
            (
                "connect.facebook.net/en_US/fbevents.js",
                "{host}/fb/events.js",
            ),
            ("connect.facebook.net", "{host}/fb"),
        ]);
        let out = r.apply(
            b"a='https://www.google-analytics.com/g/collect';b='//region1.google-analytics.com';c='https://connect.facebook.net/en_US/fbevents.js';d='connect.facebook.net/signals'",
            "m.shop.example:8443",
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a='https://m.shop.example:8443/g/collect';b='//region1.m.shop.example:8443';c='https://m.shop.example:8443/fb/events.js';d='m.shop.example:8443/fb/signals'"
        );
    }

    #[test]
    fn replacements_are_not_rescanned_and_empty_tables_copy() {
        let r = rw(&[("a", "{host}a")]);
        assert_eq!(r.apply(b"xax", "a"), b"xaax");
        let none = rw(&[]);
        assert!(none.is_empty());
        assert_eq!(none.apply(b"same", "h"), b"same");
    }

    #[test]
    fn templates() {
        assert_eq!(
            template("{host}/p/{host}").unwrap(),
            vec![Part::Host, Part::Text("/p/".into()), Part::Host]
        );
        assert!(template("{host").is_err());
        assert!(template("{origin}").unwrap_err().contains("{origin}"));
    }
}
