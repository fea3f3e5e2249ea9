//! One spool record: a queued upstream request ([`Outgoing`]) with its route, its upstream
//! (by name: a reload may renumber upstreams) and when it was accepted, framed with a length
//! and a CRC-32 so a reader can tell a good record from a torn or damaged one.
//!
//! Frame: `"TWS1"` · payload length (u32 LE) · CRC-32 of the payload (u32 LE) · payload.
//! Payload (version 1): version u8 · accepted-at unix ms u64 · route (u16 len) · upstream
//! (u16 len) · method (u8 len) · target (u32 len) · header count u16 · per header: name (u16
//! len), value (u32 len) · body (u32 len). All lengths little-endian. A fixed binary layout
//! rather than a serde format: header values and bodies are bytes, and the reader must never
//! allocate from a length it has not bounds-checked.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};

use crate::deliver::{Outgoing, Target};

pub const MAGIC: [u8; 4] = *b"TWS1";
/// Magic, length, checksum.
pub const HEADER: usize = 12;
/// Largest payload a reader accepts (route bodies are far smaller; this bounds a damaged
/// length field).
pub const MAX_PAYLOAD: usize = 64 * 1024 * 1024;
const VERSION: u8 = 1;

/// A request read back from the spool.
#[derive(Debug, Clone)]
pub struct Record {
    /// When the gateway accepted it (unix milliseconds).
    pub accepted_ms: u64,
    pub route: String,
    pub upstream: String,
    /// `out.upstream` is meaningless here: the upstream is resolved by name when sending.
    pub out: Outgoing,
}

/// A payload whose checksum was right but whose content is not a request.
#[derive(Debug, thiserror::Error)]
#[error("record content is not valid: {0}")]
pub struct DecodeError(pub &'static str);

/// The whole frame for one request, ready to append.
pub fn encode(accepted_ms: u64, route: &str, upstream: &str, out: &Outgoing) -> Vec<u8> {
    let target = out.target.as_str();
    let head_len: usize = out
        .headers
        .iter()
        .map(|(n, v)| 6 + n.as_str().len() + v.len())
        .sum();
    let mut b = Vec::with_capacity(
        HEADER + 32 + route.len() + upstream.len() + target.len() + head_len + out.body.len(),
    );
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&[0; 8]);
    b.push(VERSION);
    b.extend_from_slice(&accepted_ms.to_le_bytes());
    put16(&mut b, route.as_bytes());
    put16(&mut b, upstream.as_bytes());
    let m = out.method.as_str().as_bytes();
    b.push(m.len().min(255) as u8);
    b.extend_from_slice(&m[..m.len().min(255)]);
    put32(&mut b, target.as_bytes());
    b.extend_from_slice(&(out.headers.len().min(u16::MAX as usize) as u16).to_le_bytes());
    for (n, v) in out.headers.iter().take(u16::MAX as usize) {
        put16(&mut b, n.as_str().as_bytes());
        put32(&mut b, v.as_bytes());
    }
    put32(&mut b, &out.body);
    let len = (b.len() - HEADER) as u32;
    let crc = crc32fast::hash(&b[HEADER..]);
    b[4..8].copy_from_slice(&len.to_le_bytes());
    b[8..12].copy_from_slice(&crc.to_le_bytes());
    b
}

fn put16(b: &mut Vec<u8>, s: &[u8]) {
    let s = &s[..s.len().min(u16::MAX as usize)];
    b.extend_from_slice(&(s.len() as u16).to_le_bytes());
    b.extend_from_slice(s);
}

fn put32(b: &mut Vec<u8>, s: &[u8]) {
    b.extend_from_slice(&(s.len() as u32).to_le_bytes());
    b.extend_from_slice(s);
}

/// Reads a payload (after its checksum was verified).
pub fn decode(p: &[u8]) -> Result<Record, DecodeError> {
    let mut r = Reader(p);
    if r.take(1)?[0] != VERSION {
        return Err(DecodeError("unknown record version"));
    }
    let accepted_ms = u64::from_le_bytes(r.take(8)?.try_into().map_err(|_| DecodeError("time"))?);
    let route = r.str16()?;
    let upstream = r.str16()?;
    let mlen = r.take(1)?[0] as usize;
    let method =
        Method::from_bytes(r.take(mlen)?).map_err(|_| DecodeError("method is not valid"))?;
    let target = std::str::from_utf8(r.bytes32()?)
        .map_err(|_| DecodeError("target is not text"))?
        .to_string();
    if !target.starts_with('/') {
        return Err(DecodeError("target does not start with /"));
    }
    let n = u16::from_le_bytes(r.take(2)?.try_into().map_err(|_| DecodeError("count"))?);
    let mut headers = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let name = HeaderName::from_bytes(r.bytes16()?)
            .map_err(|_| DecodeError("header name is not valid"))?;
        let value = HeaderValue::from_bytes(r.bytes32()?)
            .map_err(|_| DecodeError("header value is not valid"))?;
        headers.push((name, value));
    }
    let body = Bytes::copy_from_slice(r.bytes32()?);
    if !r.0.is_empty() {
        return Err(DecodeError("bytes after the body"));
    }
    Ok(Record {
        accepted_ms,
        route,
        upstream,
        out: Outgoing {
            method,
            upstream: usize::MAX,
            target: Target::Text(target),
            headers,
            body,
        },
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn bytes16(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = u16::from_le_bytes([self.take(1)?[0], self.take(1)?[0]]) as usize;
        self.take(n)
    }
    fn bytes32(&mut self) -> Result<&'a [u8], DecodeError> {
        let l = self.take(4)?;
        let n = u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize;
        self.take(n)
    }
    fn str16(&mut self) -> Result<String, DecodeError> {
        std::str::from_utf8(self.bytes16()?)
            .map(str::to_string)
            .map_err(|_| DecodeError("name is not text"))
    }
}
