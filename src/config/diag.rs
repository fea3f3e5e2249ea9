//! Diagnostics for rule files: `file:line:col: what is wrong`, with a suggestion when a name
//! looks misspelt. Every error the loader reports goes through here, so `tagway check`, start-up
//! and hot reload all print the same text.

use std::fmt;
use std::ops::Range;

/// One problem in one rule file, located at a byte range of its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file name as the user knows it (`rules/10-ga4.toml`, or `<embedded>/10-ga4.toml`).
    pub file: String,
    /// 1-based line and column; 0 when the problem concerns the whole file.
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.col, self.message
            )
        }
    }
}

/// All problems found while loading a rule set. Loading goes on after the first problem so a
/// user fixes a whole file at once.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// A rule file's text with a line index, so byte spans turn into `line:col`.
pub struct Source<'a> {
    pub name: &'a str,
    pub text: &'a str,
}

impl Source<'_> {
    pub fn at(&self, span: Option<Range<usize>>, message: impl Into<String>) -> Diagnostic {
        let (line, col) = match span {
            Some(r) => line_col(self.text, r.start),
            None => (0, 0),
        };
        Diagnostic {
            file: self.name.to_string(),
            line,
            col,
            message: message.into(),
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..floor_char_boundary(text, offset)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The closest of `candidates` to `word`, if it is close enough to be a likely typo.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// `; did you mean `x`?` for the closest of `candidates`, to append to a message.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    suggest(word, candidates).map(|s| format!("; did you mean `{s}`?"))
}

/// Adds "did you mean" to serde's "unknown field `x`, expected one of `a`, `b`" and
/// "unknown variant" messages, which is what a misspelt key or value produces.
pub fn with_suggestion(message: &str) -> String {
    let message = message.trim_end();
    for kind in ["unknown field `", "unknown variant `"] {
        let Some(start) = message.find(kind) else {
            continue;
        };
        let rest = &message[start + kind.len()..];
        let Some(end) = rest.find('`') else { continue };
        let word = &rest[..end];
        let expected = &rest[end + 1..];
        let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        if let Some(s) = suggest(word, candidates) {
            return format!("{message}; did you mean `{s}`?");
        }
    }
    message.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let t = "a = 1\nbb = 2\n";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 6), (2, 1));
        assert_eq!(line_col(t, 8), (2, 3));
    }

    #[test]
    fn misspelt_field_gets_a_suggestion() {
        let m = with_suggestion("unknown field `pathh`, expected one of `name`, `path`, `hosts`");
        assert!(m.ends_with("did you mean `path`?"), "{m}");
        let m = with_suggestion("unknown field `zzz`, expected one of `name`, `path`");
        assert!(!m.contains("did you mean"), "{m}");
    }
}
