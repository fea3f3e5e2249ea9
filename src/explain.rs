//! `tagway explain`: what would go upstream for a request, field by field — the value before,
//! the value after, and the rule that changed it — as text for a terminal or as JSON.

use serde_json::json;

use crate::inspect::Inspection;

/// One field's story.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub path: String,
    pub before: Option<String>,
    pub after: Option<String>,
    /// Labels of the rules (or the scan) that changed it, in order.
    pub by: Vec<String>,
}

/// Attributes every change between consecutive steps to the step's rule.
pub fn fields(ins: &Inspection) -> Vec<Field> {
    let Some(first) = ins.steps.first() else {
        return vec![];
    };
    let mut out: Vec<Field> = first
        .fields
        .iter()
        .map(|(p, v)| Field {
            path: p.clone(),
            before: Some(v.clone()),
            after: Some(v.clone()),
            by: vec![],
        })
        .collect();
    for w in ins.steps.windows(2) {
        let (prev, cur) = (&w[0], &w[1]);
        for f in out.iter_mut() {
            let was = prev
                .fields
                .iter()
                .find(|(p, _)| *p == f.path)
                .map(|(_, v)| v);
            let now = cur
                .fields
                .iter()
                .find(|(p, _)| *p == f.path)
                .map(|(_, v)| v);
            if was != now {
                f.after = now.cloned();
                f.by.push(cur.label.clone());
            }
        }
        for (p, v) in &cur.fields {
            if !out.iter().any(|f| f.path == *p) {
                out.push(Field {
                    path: p.clone(),
                    before: None,
                    after: Some(v.clone()),
                    by: vec![cur.label.clone()],
                });
            }
        }
    }
    out
}

/// Text for a terminal.
pub fn text(ins: &Inspection) -> String {
    let mut s = format!("route     {}\nupstream  {}\n", ins.route, ins.upstream);
    let fs = fields(ins);
    let changed: Vec<&Field> = fs.iter().filter(|f| !f.by.is_empty()).collect();
    let unchanged: Vec<&Field> = fs.iter().filter(|f| f.by.is_empty()).collect();
    if changed.is_empty() {
        s.push_str("\nno field changed\n");
    } else {
        s.push_str("\nchanged fields:\n");
    }
    for f in &changed {
        s.push_str(&format!("  {}\n", f.path));
        s.push_str(&format!(
            "      before  {}\n",
            f.before.as_deref().unwrap_or("(absent)")
        ));
        s.push_str(&format!(
            "      after   {}\n",
            f.after.as_deref().unwrap_or("(removed)")
        ));
        s.push_str(&format!("      by      {}\n", f.by.join(" → ")));
    }
    if !unchanged.is_empty() {
        s.push_str("\nunchanged fields:\n");
        for f in &unchanged {
            s.push_str(&format!(
                "  {:<24} {}\n",
                f.path,
                f.before.as_deref().unwrap_or("")
            ));
        }
    }
    match (&ins.sent, &ins.dropped) {
        (_, Some(rule)) => s.push_str(&format!("\nNOT FORWARDED: dropped by rule \"{rule}\"; the gateway answers in the vendor's place\n")),
        (Some(sent), None) if ins.script => {
            s.push_str(&format!("\nscript route: fetched from {} (one fetch shared by every visitor, per ttl), rewritten to the host asked and served from the script cache\n", sent.url));
            for (n, v) in &sent.headers {
                s.push_str(&format!("  {n}: {v}\n"));
            }
        }
        (Some(sent), None) => {
            s.push_str(&format!("\nforwarded to {}\n", sent.url));
            for (n, v) in &sent.headers {
                s.push_str(&format!("  {n}: {v}\n"));
            }
            if !sent.body.is_empty() {
                s.push_str(&format!("  body ({} bytes): {}\n", sent.body.len(), String::from_utf8_lossy(&sent.body)));
            }
        }
        (None, None) => {}
    }
    s
}

/// The same as JSON.
pub fn json(ins: &Inspection) -> serde_json::Value {
    let fields: Vec<serde_json::Value> = fields(ins)
        .into_iter()
        .map(|f| json!({ "field": f.path, "before": f.before, "after": f.after, "changed_by": f.by }))
        .collect();
    json!({
        "route": ins.route,
        "upstream": ins.upstream,
        "forwarded": ins.dropped.is_none(),
        "dropped_by": ins.dropped,
        "url": ins.sent.as_ref().map(|s| s.url.clone()),
        "headers": ins.sent.as_ref().map(|s| s.headers.iter().map(|(n, v)| json!([n, v])).collect::<Vec<_>>()),
        "body": ins.sent.as_ref().map(|s| String::from_utf8_lossy(&s.body).into_owned()),
        "fields": fields,
        "script": ins.script,
    })
}
