//! Stage 5, encode: a [`Doc`] the rules have worked on → the URL query and body to send, in
//! the vendor's own format. Parts no rule changed are not re-encoded at all (the original
//! bytes go out, compression included); within a changed part, untouched fields are written
//! from their original text, in their original order.

use crate::decode::{
    BodyWrap, Doc, Frame, Origin, Value, json, multipart, nested_text, query, wrap,
};

/// What changed: `None` means "send the original".
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Encoded {
    /// The new query string (without `?`; empty means no query).
    pub query: Option<String>,
    pub body: Option<Vec<u8>>,
}

/// Encodes the changed parts of `doc`.
pub fn encode(doc: &Doc<'_>) -> Encoded {
    let mut out = Encoded::default();
    let q = &doc.parts[0];
    if q.changed
        && let Value::Obj(o) = &q.root
    {
        let mut s = String::with_capacity(doc.sizes.0 + doc.sizes.0 / 8 + 64);
        query::encode(o, q.source, doc.query_spaces, &mut s, &nested_text);
        out.query = Some(s);
    }
    if doc.parts[1..].iter().any(|p| p.changed) {
        out.body = Some(rewrap(doc.wrap, encode_body(doc).into_bytes()));
    }
    out
}

fn encode_body(doc: &Doc<'_>) -> String {
    let mut s = String::with_capacity(doc.sizes.1 + doc.sizes.1 / 8 + 64);
    let body = doc.parts.iter().filter(|p| p.origin != Origin::Query);
    match &doc.frame {
        Frame::Empty | Frame::Opaque => {}
        Frame::Form(spaces) => {
            for p in body {
                if let Value::Obj(o) = &p.root {
                    query::encode(o, p.source, *spaces, &mut s, &nested_text);
                }
            }
        }
        Frame::Json { lead, trail } => {
            s.push_str(lead);
            for p in body {
                json::encode_into(&p.root, &mut s, &nested_text);
            }
            s.push_str(trail);
        }
        Frame::Multipart { boundary, layout } => {
            for p in body {
                if let Value::Obj(o) = &p.root {
                    multipart::encode(o, layout, boundary, &mut s, &nested_text);
                }
            }
        }
        Frame::Lines {
            sep,
            trailing,
            spaces,
        } => {
            for (i, p) in body.enumerate() {
                if i > 0 {
                    s.push_str(sep);
                }
                if let Value::Obj(o) = &p.root {
                    let sp = spaces.get(i).copied().unwrap_or_default();
                    query::encode(o, p.source, sp, &mut s, &nested_text);
                }
            }
            if *trailing {
                s.push_str(sep);
            }
        }
    }
    s
}

/// Wraps the body again the way it came.
fn rewrap(w: Option<BodyWrap>, body: Vec<u8>) -> Vec<u8> {
    match w {
        None => body,
        Some(BodyWrap::Encoding(c)) => wrap::compress(c, &body),
        Some(BodyWrap::BareGzip) => wrap::compress(wrap::Compression::Gzip, &body),
        Some(BodyWrap::Base64Gzip) => {
            let gz = wrap::compress(wrap::Compression::Gzip, &body);
            wrap::base64_encode(&gz, crate::decode::Wrap::Base64 { pad: true }).into_bytes()
        }
    }
}
