//! Stages 3–5 for one request: decode → rules → encode. Used by the proxy on the request
//! path, and by `tagway explain` / `tagway test`, which observe the document after each rule.

use std::net::IpAddr;

use bytes::Bytes;
use http::HeaderMap;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE};

use crate::decode::{self, DecodeError, Doc, Input};
use crate::encode;
use crate::rules::Outcome;
use crate::rules::cond::Ctx;
use crate::ruleset::{Route, RuleSet};

/// What the rules made of a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Processed {
    /// Forward, with a new query string and/or body where they changed (`None`: as received).
    Forward {
        query: Option<String>,
        body: Option<Bytes>,
    },
    /// Do not forward; the label of the rule that decided.
    Dropped(String),
    /// Do not forward: the beacon is for an id the site does not list (`id_field`); why.
    ForeignId(String),
}

/// The route's id check alone, on a query string (a script route's loader URL, which has no
/// body and no rules): `Ok` only when the check passes; why not otherwise, including a query
/// that could not be read.
pub fn check_query_id(route: &Route, query: &str) -> Result<(), String> {
    let program = &route.program;
    let Some(ids) = &program.ids else {
        return Ok(());
    };
    let input = Input {
        body: std::borrow::Cow::Borrowed(&[]),
        wrap: None,
    };
    let mut doc =
        decode::decode(query, &input, None, decode::Codec::Opaque).map_err(|e| e.to_string())?;
    program.prepare(&mut doc).map_err(|e| e.to_string())?;
    ids.check(&mut doc, &program.keys)
}

/// Sees the document at each step of [`process`] (for `explain` and the inspector).
pub type Observer<'o> = &'o mut dyn FnMut(&str, &Doc<'_>);

/// Decodes, applies the route's program and encodes. `observe` sees the document as
/// received (label `received`), after each rule, and after the scan.
pub fn process(
    rules: &RuleSet,
    route: &Route,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
    client_ip: IpAddr,
    observe: Option<Observer<'_>>,
) -> Result<Processed, DecodeError> {
    let program = &route.program;
    let content_encoding = headers.get(CONTENT_ENCODING).and_then(|v| v.to_str().ok());
    let input = if program.codec == decode::Codec::Opaque {
        Input {
            body: std::borrow::Cow::Borrowed(body),
            wrap: None,
        }
    } else {
        Input::unwrap(body, content_encoding)?
    };
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let mut doc = decode::decode(query, &input, content_type, program.codec)?;
    program.prepare(&mut doc)?;
    let ctx = Ctx {
        headers,
        client_ip,
        site: &rules.inputs,
        consent: Default::default(),
    };
    if let Some(ids) = &program.ids
        && let Err(why) = ids.check(&mut doc, &program.keys)
    {
        if let Some(f) = observe {
            f("received", &doc);
        }
        return Ok(Processed::ForeignId(why));
    }
    let outcome = match observe {
        Some(f) => {
            f("received", &doc);
            program.run_observed(&mut doc, &ctx, &rules.key, f)
        }
        None => program.run(&mut doc, &ctx, &rules.key),
    };
    if let Outcome::Drop(label) = outcome {
        return Ok(Processed::Dropped(label));
    }
    let enc = encode::encode(&doc);
    Ok(Processed::Forward {
        query: enc.query,
        body: enc.body.map(Bytes::from),
    })
}
