//! Rule loading: rule files (TOML) → a compiled [`RuleSet`]. Runs at start-up, on reload and in
//! `tagway check`; never on the request path.
//!
//! - [`load`]: read the files ([`RulesSource`]) and compile them.
//! - [`model`]: what a file may contain; [`compile`]: validation and compilation;
//!   [`diag`]: `file:line:col` messages.

pub mod compile;
pub mod diag;
mod ids;
pub mod load;
pub mod model;
mod rules;

pub use rules::template;

pub use diag::{ConfigError, Diagnostic};
pub use load::{RuleText, RulesSource};

use crate::ruleset::RuleSet;

/// Replaces the origin of a named upstream (`--upstream NAME=URL`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamOverride {
    pub name: String,
    pub url: String,
}

impl std::str::FromStr for UpstreamOverride {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('=') {
            Some((n, u)) if !n.is_empty() && !u.is_empty() => Ok(UpstreamOverride {
                name: n.trim().to_string(),
                url: u.trim().to_string(),
            }),
            _ => Err(format!(
                "expected NAME=URL (like ga=http://127.0.0.1:9000), got {s:?}"
            )),
        }
    }
}

/// Reads and compiles a rule set. Secrets (the hashing key) must be available.
pub fn load(source: &RulesSource, overrides: &[UpstreamOverride]) -> Result<RuleSet, ConfigError> {
    let texts = source.read()?;
    compile::compile(&texts, overrides, source.describe(), true)
}

/// Like [`load`], but a missing secret is not an error (a random key stands in): what
/// `tagway check`, `explain` and `test` use, so rules can be checked in CI without secrets.
pub fn load_without_secrets(
    source: &RulesSource,
    overrides: &[UpstreamOverride],
) -> Result<RuleSet, ConfigError> {
    let texts = source.read()?;
    compile::compile(&texts, overrides, source.describe(), false)
}
