//! The fixture format of `tests/fixtures/vendors/`: a small parser for the shared reference
//! files (title, provenance, method, url, headers, body, decoded, notes).

use super::*;

// ---------------------------------------------------------------------------------------------
// The fixture format
// ---------------------------------------------------------------------------------------------
//
// A fixture is a small text file:
//
//     # Title line
//     provenance: where the shape comes from
//     method: POST
//     url: https://vendor.example/path?query
//     headers:
//       Content-Type: application/json    (free comment after two spaces and a parenthesis)
//     body:
//     {"the":"body"}                      (as many lines as it takes)
//     notes: free text
//       continued on indented lines
//
// Every line that starts at column 0 with `label:` or `label (remark):` opens a section
// (`label` is letters, digits, spaces, `_` and `-`); the text after the colon is the
// section's inline text, and the lines up to the next such line belong to it. Body lines can
// never be mistaken for a label: they start with `{`, or a `key=` pair, or base64 (which has
// no `:`), or are indented.
//
// The `body` section says in its remark or inline text how to read it:
// - `body: (empty)` / `body: (none)`: no body;
// - `… base64 here for transport …`: the lines are base64 of the real (binary) body;
// - `… CRLF between events …`: the lines are joined with CRLF (and, since the fixture says
//   plain LF is also seen, the LF variant is tested as well);
// - `… one part per param …`: the lines list `name=value` pairs separated by `, `, which a
//   browser's FormData would send as multipart/form-data with the Content-Type's boundary;
// - otherwise the lines are the body text, joined with `\n` (no trailing line break).

/// A parsed fixture file.
#[derive(Debug)]
pub(super) struct Fixture {
    /// File name without `.txt` (`ga4-collect-2`): what failure messages name.
    pub(super) name: String,
    pub(super) sections: Vec<Section>,
}

/// One `label (remark): inline` line and the lines that follow it.
#[derive(Debug)]
pub(super) struct Section {
    pub(super) label: String,
    pub(super) remark: String,
    pub(super) inline: String,
    pub(super) lines: Vec<String>,
}

/// A request built from a fixture.
#[derive(Debug)]
pub(super) struct Request {
    /// The fixture name, plus the variant when a fixture yields several requests.
    pub(super) what: String,
    /// The URL query without `?` (empty when there is none).
    pub(super) query: String,
    pub(super) content_type: Option<String>,
    pub(super) content_encoding: Option<String>,
    /// The body bytes exactly as they would travel.
    pub(super) body: Vec<u8>,
}

/// `label (remark): inline` at the start of a line, or `None` for any other line.
pub(super) fn section_line(line: &str) -> Option<(String, String, String)> {
    if !line.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let end = line.find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, ' ' | '_' | '-')))?;
    let (label, mut rest) = (line[..end].trim_end(), &line[end..]);
    let mut remark = "";
    if let Some(r) = rest.strip_prefix('(') {
        let close = r.find(')')?;
        (remark, rest) = (&r[..close], &r[close + 1..]);
    }
    let inline = rest.strip_prefix(':')?;
    Some((
        label.to_string(),
        remark.to_string(),
        inline.trim().to_string(),
    ))
}

impl Fixture {
    pub(super) fn parse(name: &str, text: &str) -> Fixture {
        let mut lines = text.lines();
        let title = lines.next().unwrap_or_default();
        assert!(title.starts_with("# "), "{name}: no `# title` line");
        let mut sections: Vec<Section> = Vec::new();
        for line in lines {
            if let Some((label, remark, inline)) = section_line(line) {
                sections.push(Section {
                    label,
                    remark,
                    inline,
                    lines: Vec::new(),
                });
            } else {
                let s = sections
                    .last_mut()
                    .unwrap_or_else(|| panic!("{name}: text before the first section: {line:?}"));
                s.lines.push(line.to_string());
            }
        }
        Fixture {
            name: name.to_string(),
            sections,
        }
    }

    pub(super) fn section(&self, label: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.label == label)
    }

    /// `headers:` lines `  Name: value   (comment)`, the comment removed.
    pub(super) fn header(&self, name: &str) -> Option<String> {
        self.section("headers")?.lines.iter().find_map(|l| {
            let (n, v) = l.trim().split_once(':')?;
            let v = v.split("  (").next().unwrap_or(v).trim();
            n.trim().eq_ignore_ascii_case(name).then(|| v.to_string())
        })
    }

    /// Every URL the fixture shows a request to: each `url:` line (`meta-fbevents-1` has
    /// two, the script and its config) and each `… variant:` that is a bare URL
    /// (`linkedin-collect-1`'s conversion variant). Prose variants (`batch variant: POST …
    /// {…event…}`) describe shapes, not requests, and are not used.
    pub(super) fn urls(&self) -> Vec<&str> {
        let urls: Vec<&str> = self
            .sections
            .iter()
            .filter(|s| {
                s.label == "url"
                    || (s.label.ends_with("variant")
                        && s.inline.starts_with("https://")
                        && !s.inline.contains(char::is_whitespace))
            })
            .map(|s| s.inline.as_str())
            .collect();
        assert!(!urls.is_empty(), "{}: no `url:` line", self.name);
        urls
    }

    /// The body (or bodies, when the fixture names variants) as they travel, each with a
    /// variant label (empty for the only one).
    pub(super) fn bodies(&self) -> Vec<(&'static str, Vec<u8>)> {
        let Some(s) = self.section("body") else {
            return vec![("", Vec::new())];
        };
        if s.inline == "(empty)" || s.inline == "(none)" {
            assert!(s.lines.is_empty(), "{}: empty body with lines", self.name);
            return vec![("", Vec::new())];
        }
        let how = format!("{} {}", s.remark, s.inline);
        if !s.inline.is_empty() && !s.inline.ends_with(':') {
            // The body on the `body:` line itself.
            assert!(s.lines.is_empty(), "{}: body on two places", self.name);
            return vec![("", s.inline.clone().into_bytes())];
        }
        assert!(!s.lines.is_empty(), "{}: `body` has no lines", self.name);
        if how.contains("base64 here for transport") {
            let b64: String = s.lines.iter().map(|l| l.trim()).collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap_or_else(|e| panic!("{}: transport base64: {e}", self.name));
            return vec![("", bytes)];
        }
        if how.contains("CRLF between") {
            return vec![
                ("CRLF", s.lines.join("\r\n").into_bytes()),
                ("LF", s.lines.join("\n").into_bytes()),
            ];
        }
        if how.contains("one part per param") {
            return vec![("", self.form_data(&s.lines))];
        }
        vec![("", s.lines.join("\n").into_bytes())]
    }

    /// The `name=value, …` list of a `one part per param` body framed the way Chrome frames
    /// `FormData` for `navigator.sendBeacon`: CRLF line endings, one part per field in order,
    /// the closing delimiter followed by CRLF.
    pub(super) fn form_data(&self, lines: &[String]) -> Vec<u8> {
        let ctype = self.header("Content-Type").unwrap_or_default();
        let (_, boundary) = ctype
            .split_once("boundary=")
            .unwrap_or_else(|| panic!("{}: multipart without a boundary", self.name));
        let list = lines.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ");
        let mut out = String::new();
        for item in list.split(", ").map(|i| i.trim().trim_end_matches(',')) {
            if item.is_empty() {
                continue;
            }
            let (name, value) = item
                .split_once('=')
                .unwrap_or_else(|| panic!("{}: part {item:?} has no `=`", self.name));
            out += &format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            );
        }
        out += &format!("--{boundary}--\r\n");
        out.into_bytes()
    }

    /// The requests this fixture describes: the first URL with each body variant, then any
    /// further URLs as requests without a body.
    pub(super) fn requests(&self) -> Vec<Request> {
        let urls = self.urls();
        let query = |url: &str| {
            let q = url.split_once('?').map_or("", |(_, q)| q);
            q.split('#').next().unwrap_or("").to_string()
        };
        let mut out = Vec::new();
        for (variant, body) in self.bodies() {
            out.push(Request {
                what: match variant {
                    "" => self.name.clone(),
                    v => format!("{} ({v} body)", self.name),
                },
                query: query(urls[0]),
                content_type: self.header("Content-Type"),
                content_encoding: self.header("Content-Encoding"),
                body,
            });
        }
        for (i, url) in urls.iter().enumerate().skip(1) {
            out.push(Request {
                what: format!("{} (url {})", self.name, i + 1),
                query: query(url),
                content_type: None,
                content_encoding: None,
                body: Vec::new(),
            });
        }
        out
    }
}

/// Every fixture file, parsed, by name.
pub(super) fn fixtures() -> Vec<Fixture> {
    let mut names: Vec<_> = std::fs::read_dir(FIXTURES)
        .unwrap_or_else(|e| panic!("{FIXTURES}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy();
            let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{name}: {e}"));
            Fixture::parse(&name, &text)
        })
        .collect()
}
