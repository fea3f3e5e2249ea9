//! Reading rule files: from the rules folder (in name order) or, when that folder does not
//! exist, from the copies compiled into the binary. Parsing and compiling happen in
//! [`super::compile`]; this file only gets the text and reports unreadable files.

use std::path::{Path, PathBuf};

use super::diag::{ConfigError, Diagnostic};

include!(concat!(env!("OUT_DIR"), "/embedded_rules.rs"));

/// One rule file's name (as shown in diagnostics) and text.
#[derive(Debug, Clone)]
pub struct RuleText {
    pub name: String,
    pub text: String,
}

/// Where the rule files come from.
#[derive(Debug, Clone)]
pub enum RulesSource {
    /// `*.toml` files of a folder, in name order.
    Dir(PathBuf),
    /// The presets compiled into the binary.
    Embedded,
    /// In-memory files (tests, `tagway explain --rules-text`).
    Texts(Vec<RuleText>),
}

impl RulesSource {
    /// The folder if it exists, else the embedded presets (what `serve` and `check` do).
    pub fn dir_or_embedded(dir: &Path) -> RulesSource {
        if dir.is_dir() {
            RulesSource::Dir(dir.to_path_buf())
        } else {
            RulesSource::Embedded
        }
    }

    pub fn describe(&self) -> String {
        match self {
            RulesSource::Dir(d) => format!("rules folder {}", d.display()),
            RulesSource::Embedded => "the rule files embedded in the binary".into(),
            RulesSource::Texts(_) => "in-memory rule files".into(),
        }
    }

    /// Reads every rule file. Unreadable files are reported together.
    pub fn read(&self) -> Result<Vec<RuleText>, ConfigError> {
        match self {
            RulesSource::Embedded => Ok(EMBEDDED_RULES
                .iter()
                .map(|(n, t)| RuleText {
                    name: format!("<embedded>/{n}"),
                    text: t.to_string(),
                })
                .collect()),
            RulesSource::Texts(t) => Ok(t.clone()),
            RulesSource::Dir(dir) => read_dir(dir),
        }
    }
}

fn read_dir(dir: &Path) -> Result<Vec<RuleText>, ConfigError> {
    let whole = |message: String| ConfigError {
        diagnostics: vec![Diagnostic {
            file: dir.display().to_string(),
            line: 0,
            col: 0,
            message,
        }],
    };
    let entries =
        std::fs::read_dir(dir).map_err(|e| whole(format!("cannot read the rules folder: {e}")))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(whole("no *.toml rule files in this folder".into()));
    }
    let mut out = Vec::with_capacity(paths.len());
    let mut errors = Vec::new();
    for p in paths {
        let name = p.display().to_string();
        match std::fs::read_to_string(&p) {
            Ok(text) => out.push(RuleText { name, text }),
            Err(e) => errors.push(Diagnostic {
                file: name,
                line: 0,
                col: 0,
                message: format!("cannot read: {e}"),
            }),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ConfigError {
            diagnostics: errors,
        })
    }
}
