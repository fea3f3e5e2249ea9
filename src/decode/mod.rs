//! Stage 3, decode: the request's URL query and body → a [`Doc`], one tree per part, in the
//! shared [`value`] model, whatever the wire format. The body is first unwrapped (Content-Encoding
//! gzip/deflate/br, PostHog's raw gzip, LinkedIn's base64 of gzip), then parsed by the route's
//! codec; fields the route declares `nested` (JSON, or base64 of JSON, inside a string) are
//! decoded into the tree too. [`crate::encode`] writes it all back.
//!
//! Decoding never half-succeeds: a body that cannot be decoded is a [`DecodeError`], and the
//! route's policy decides what happens to the request.

pub mod json;
pub mod mask;
pub mod multipart;
pub mod query;
#[cfg(target_arch = "x86_64")]
mod unescape_vbmi2;
pub mod value;
pub mod wrap;

use std::borrow::Cow;

use serde::Deserialize;

pub use value::{Arr, Enc, Entry, Hot, Nested, Obj, Str, ThinVec, Value, Wrap};
use wrap::Compression;

/// How a route's body is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// By Content-Type (and a look at the first byte): form, multipart, JSON; an empty body is
    /// fine; anything else cannot be decoded.
    #[default]
    Auto,
    /// `key=value&…` (application/x-www-form-urlencoded, or text/plain carrying the same).
    Form,
    /// JSON, whatever the Content-Type says (Segment and Plausible send it as text/plain).
    Json,
    /// multipart/form-data.
    Multipart,
    /// GA4: shared parameters in the URL, one event per body line, each line `key=value&…`.
    Ga4,
    /// The body is passed through untouched (scripts, opaque payloads); only the URL query is
    /// decoded.
    Opaque,
}

/// Where a part came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Query,
    Body,
    /// Line `n` of a GA4 batch body.
    Line(usize),
}

/// One decoded part: the URL query, the body, or one line of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Part<'a> {
    pub origin: Origin,
    /// Fields are whole keys (`ep.email`, `cd[value]`) of a flat `key=value` list rather than
    /// paths into a JSON tree.
    pub flat: bool,
    pub root: Value<'a>,
    /// The text a flat part was decoded from: its fields' raw keys and values are slices of
    /// it, and the encoder copies runs of untouched fields from it in one piece.
    pub source: &'a str,
    /// Set by the rules when anything in this part changed; unchanged parts are written back
    /// from the original bytes.
    pub changed: bool,
    /// Of a flat part, the fields the rules can touch; every field until the rule program
    /// has classified the keys.
    pub hot: Hot,
}

/// JSON's whitespace (RFC 8259 `ws`).
const JSON_SPACE: [char; 4] = [' ', '\t', '\n', '\r'];

/// How the body parts are written back.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame<'a> {
    /// No body.
    Empty,
    /// Passed through as it came.
    Opaque,
    Form(query::Spaces),
    /// JSON, with the whitespace around the value as received (`{…}\n`).
    Json {
        lead: &'a str,
        trail: &'a str,
    },
    Multipart {
        boundary: String,
        layout: multipart::Layout<'a>,
    },
    /// GA4 batch lines: separator (`\r\n` or `\n`), whether the body ended with one, the
    /// space style of each line.
    Lines {
        sep: &'static str,
        trailing: bool,
        spaces: Vec<query::Spaces>,
    },
}

/// What surrounded the body on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyWrap {
    /// `Content-Encoding` header.
    Encoding(Compression),
    /// Raw gzip with no header (PostHog `compression=gzip-js`).
    BareGzip,
    /// Base64 text of gzip (LinkedIn).
    Base64Gzip,
}

/// A decoded request payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc<'a> {
    /// `parts[0]` is the URL query (possibly empty); body parts follow.
    pub parts: Vec<Part<'a>>,
    pub frame: Frame<'a>,
    pub wrap: Option<BodyWrap>,
    /// Space style of the URL query.
    pub query_spaces: query::Spaces,
    /// Lengths of the query and the (unwrapped) body as received: the encoder sizes its
    /// output from them, so that writing a changed part never grows a buffer.
    pub sizes: (usize, usize),
}

/// Why a payload could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Wrap(#[from] wrap::WrapError),
    #[error("body is not UTF-8 text")]
    NotText,
    #[error(transparent)]
    Json(#[from] json::JsonError),
    #[error(transparent)]
    Multipart(#[from] multipart::MultipartError),
    #[error("multipart body without a boundary in its Content-Type")]
    NoBoundary,
    #[error("cannot tell the body's format from Content-Type {0:?}; set `codec` on the route")]
    UnknownFormat(String),
    #[error("field {field} is declared nested but holds neither JSON nor base64 of JSON")]
    Nested { field: String },
}

/// The request body prepared for decoding: decompressed when it was compressed (else
/// borrowed as it is). The [`Doc`] borrows from it.
#[derive(Debug)]
pub struct Input<'b> {
    pub body: Cow<'b, [u8]>,
    pub wrap: Option<BodyWrap>,
}

/// Largest body after decompression.
pub const MAX_INFLATED: usize = 4 * 1024 * 1024;

impl<'b> Input<'b> {
    /// Unwraps `body` according to its `Content-Encoding` and its first bytes.
    pub fn unwrap(
        body: &'b [u8],
        content_encoding: Option<&str>,
    ) -> Result<Input<'b>, DecodeError> {
        if let Some(c) = content_encoding
            .map(wrap::content_encoding)
            .transpose()?
            .flatten()
        {
            let plain = wrap::decompress(c, body, MAX_INFLATED)?;
            return Ok(Input {
                body: Cow::Owned(plain),
                wrap: Some(BodyWrap::Encoding(c)),
            });
        }
        if wrap::is_gzip(body) {
            let plain = wrap::decompress(Compression::Gzip, body, MAX_INFLATED)?;
            return Ok(Input {
                body: Cow::Owned(plain),
                wrap: Some(BodyWrap::BareGzip),
            });
        }
        if wrap::is_base64_gzip(body) {
            let text = std::str::from_utf8(body).map_err(|_| DecodeError::NotText)?;
            if let Some((gz, _)) = wrap::base64_decode(text.trim_end()) {
                let plain = wrap::decompress(Compression::Gzip, &gz, MAX_INFLATED)?;
                return Ok(Input {
                    body: Cow::Owned(plain),
                    wrap: Some(BodyWrap::Base64Gzip),
                });
            }
        }
        Ok(Input {
            body: Cow::Borrowed(body),
            wrap: None,
        })
    }
}

/// Decodes the URL query and the (unwrapped) body with `codec`.
pub fn decode<'a>(
    query: &'a str,
    input: &'a Input<'_>,
    content_type: Option<&str>,
    codec: Codec,
) -> Result<Doc<'a>, DecodeError> {
    let (qobj, query_spaces) = query::decode(query);
    let mut parts = Vec::with_capacity(2);
    parts.push(Part {
        origin: Origin::Query,
        flat: true,
        root: Value::Obj(qobj),
        source: query,
        changed: false,
        hot: Hot::ALL,
    });
    let body = &input.body[..];
    let ctype = content_type.unwrap_or("").to_ascii_lowercase();
    let codec = match codec {
        Codec::Auto if body.is_empty() => Codec::Opaque,
        Codec::Auto => sniff(&ctype, body)?,
        c => c,
    };
    let frame = match codec {
        Codec::Opaque | Codec::Auto => {
            if body.is_empty() {
                Frame::Empty
            } else {
                Frame::Opaque
            }
        }
        _ if body.is_empty() => Frame::Empty,
        Codec::Form => {
            let t = text(body)?;
            let (obj, spaces) = query::decode(t);
            parts.push(Part {
                origin: Origin::Body,
                flat: true,
                root: Value::Obj(obj),
                source: t,
                changed: false,
                hot: Hot::ALL,
            });
            Frame::Form(spaces)
        }
        Codec::Json => {
            let t = text(body)?;
            let inner = t.trim_matches(JSON_SPACE);
            let lead = &t[..t.len() - t.trim_start_matches(JSON_SPACE).len()];
            let trail = &t[lead.len() + inner.len()..];
            parts.push(Part {
                origin: Origin::Body,
                flat: false,
                root: json::parse(t)?,
                source: t,
                changed: false,
                hot: Hot::ALL,
            });
            Frame::Json { lead, trail }
        }
        Codec::Multipart => {
            // Boundaries are case-sensitive: read them from the header as sent.
            let boundary =
                multipart::boundary(content_type.unwrap_or("")).ok_or(DecodeError::NoBoundary)?;
            let t = text(body)?;
            let (obj, layout) = multipart::decode(t, boundary)?;
            parts.push(Part {
                origin: Origin::Body,
                flat: true,
                root: Value::Obj(obj),
                source: t,
                changed: false,
                hot: Hot::ALL,
            });
            Frame::Multipart {
                boundary: boundary.to_string(),
                layout,
            }
        }
        Codec::Ga4 => {
            let t = text(body)?;
            let sep = if t.contains("\r\n") { "\r\n" } else { "\n" };
            let trailing = t.ends_with(sep);
            let lines = t.strip_suffix(sep).unwrap_or(t);
            let mut spaces = Vec::new();
            for (i, line) in lines.split(sep).enumerate() {
                let (obj, sp) = query::decode(line);
                spaces.push(sp);
                parts.push(Part {
                    origin: Origin::Line(i),
                    flat: true,
                    root: Value::Obj(obj),
                    source: line,
                    changed: false,
                    hot: Hot::ALL,
                });
            }
            Frame::Lines {
                sep,
                trailing,
                spaces,
            }
        }
    };
    Ok(Doc {
        parts,
        frame,
        wrap: input.wrap,
        query_spaces,
        sizes: (query.len(), body.len()),
    })
}

fn text(body: &[u8]) -> Result<&str, DecodeError> {
    std::str::from_utf8(body).map_err(|_| DecodeError::NotText)
}

/// The codec for a body by its Content-Type and first byte.
fn sniff(ctype: &str, body: &[u8]) -> Result<Codec, DecodeError> {
    let mime = ctype.split(';').next().unwrap_or("").trim();
    let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
    Ok(match mime {
        "application/x-www-form-urlencoded" => Codec::Form,
        "multipart/form-data" => Codec::Multipart,
        m if m == "application/json" || m.ends_with("+json") => Codec::Json,
        _ if matches!(first, Some(b'{') | Some(b'[')) => Codec::Json,
        "text/plain" | "" if body.contains(&b'=') => Codec::Form,
        _ => return Err(DecodeError::UnknownFormat(mime.to_string())),
    })
}

/// Decodes the document inside a string field declared `nested`: plain JSON, or base64
/// (standard or URL-safe) of JSON. Empty strings stay plain.
pub fn decode_nested(field: &str, s: &mut Str<'_>) -> Result<(), DecodeError> {
    if s.has_nested() {
        return Ok(());
    }
    let text = s.text();
    let text = text.trim();
    if text.is_empty() {
        return Ok(());
    }
    let nested_err = || DecodeError::Nested {
        field: field.to_string(),
    };
    let (wrap, root) = if text.starts_with('{') || text.starts_with('[') {
        (
            Wrap::Plain,
            json::parse(text).map_err(|_| nested_err())?.into_owned(),
        )
    } else {
        let (bytes, wrap) = wrap::base64_decode(text).ok_or_else(nested_err)?;
        let inner = std::str::from_utf8(&bytes).map_err(|_| nested_err())?;
        (
            wrap,
            json::parse(inner).map_err(|_| nested_err())?.into_owned(),
        )
    };
    s.set_nested(Nested { wrap, root });
    Ok(())
}

/// The text a string field carries when its nested document changed.
pub fn nested_text(s: &Str<'_>) -> Option<String> {
    let n = s.nested()?;
    if !s.is_changed() {
        return None;
    }
    let inner = json::to_string(&n.root);
    Some(match n.wrap {
        Wrap::Plain => inner,
        w => wrap::base64_encode(inner.as_bytes(), w),
    })
}
