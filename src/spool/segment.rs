//! Segment files and reading them back. A segment is `NNNNNNNNNNNNNNNN.seg` (its number,
//! zero-padded, so names sort in write order): frames appended one after another, never
//! rewritten. Beside it, `NNNNNNNNNNNNNNNN.ack` lists the offsets (u64 LE) of its records that
//! were delivered, so a restart does not send them again.
//!
//! [`scan`] walks a segment's bytes: every frame whose header and checksum are right is kept;
//! a damaged region is skipped up to the next good frame (found by its magic and checksum),
//! and a region that runs to the end of the file is a torn tail (a write cut short by a crash
//! or power loss). Each damaged region is reported.

use std::ops::Range;
use std::path::{Path, PathBuf};

use super::record::{HEADER, MAGIC, MAX_PAYLOAD};

pub fn seg_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016}.seg"))
}

pub fn ack_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016}.ack"))
}

/// The number of a segment file name (`0000000000000012.seg` → 12).
pub fn parse_name(name: &str) -> Option<u64> {
    let n = name.strip_suffix(".seg")?;
    (n.len() == 16 && n.bytes().all(|b| b.is_ascii_digit()))
        .then(|| n.parse().ok())
        .flatten()
}

/// A damaged region of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub offset: u64,
    pub len: u64,
    /// The region runs to the end of the file (a torn last write), rather than sitting
    /// between good records.
    pub tail: bool,
    pub reason: &'static str,
}

/// What a segment holds.
#[derive(Debug, Default)]
pub struct Scan {
    /// Good frames: the frame's offset and its payload's byte range.
    pub records: Vec<(u64, Range<usize>)>,
    pub damage: Vec<Damage>,
}

/// Checks the frame at `pos`: `Ok(payload range)` or why it is not a good frame.
fn frame_at(b: &[u8], pos: usize) -> Result<Range<usize>, &'static str> {
    let rest = &b[pos..];
    if rest.len() < HEADER {
        return Err("incomplete record header");
    }
    if rest[..4] != MAGIC {
        return Err("no record marker");
    }
    let len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
    if len > MAX_PAYLOAD {
        return Err("record length out of range");
    }
    if rest.len() < HEADER + len {
        return Err("record cut short");
    }
    let crc = u32::from_le_bytes([rest[8], rest[9], rest[10], rest[11]]);
    let payload = pos + HEADER..pos + HEADER + len;
    if crc32fast::hash(&b[payload.clone()]) != crc {
        return Err("checksum mismatch");
    }
    Ok(payload)
}

pub fn scan(b: &[u8]) -> Scan {
    let mut s = Scan::default();
    let mut pos = 0;
    while pos < b.len() {
        match frame_at(b, pos) {
            Ok(p) => {
                s.records.push((pos as u64, p.clone()));
                pos = p.end;
            }
            Err(reason) => {
                // Look for the next good frame after the damage.
                let mut next = None;
                let mut from = pos + 1;
                while let Some(i) = memchr::memmem::find(&b[from..], &MAGIC) {
                    if frame_at(b, from + i).is_ok() {
                        next = Some(from + i);
                        break;
                    }
                    from += i + 1;
                }
                let end = next.unwrap_or(b.len());
                s.damage.push(Damage {
                    offset: pos as u64,
                    len: (end - pos) as u64,
                    tail: next.is_none(),
                    reason,
                });
                pos = end;
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::super::record::{decode, encode};
    use super::*;
    use crate::deliver::{Outgoing, Target};

    fn frame(i: u32) -> Vec<u8> {
        let out = Outgoing {
            method: http::Method::POST,
            upstream: 0,
            target: Target::Text(format!("/g/collect?n={i}")),
            headers: vec![(
                http::header::USER_AGENT,
                http::HeaderValue::from_static("UA"),
            )],
            body: bytes::Bytes::from(format!("en=page_view&n={i}")),
        };
        encode(1_700_000_000_000 + i as u64, "r", "v", &out)
    }

    fn file(n: u32) -> (Vec<u8>, Vec<usize>) {
        let mut b = Vec::new();
        let mut starts = Vec::new();
        for i in 0..n {
            starts.push(b.len());
            b.extend(frame(i));
        }
        (b, starts)
    }

    fn targets(b: &[u8], s: &Scan) -> Vec<String> {
        s.records
            .iter()
            .map(|(_, r)| {
                decode(&b[r.clone()])
                    .unwrap()
                    .out
                    .target
                    .as_str()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn round_trip() {
        let (b, starts) = file(3);
        let s = scan(&b);
        assert!(s.damage.is_empty());
        assert_eq!(
            s.records.iter().map(|r| r.0 as usize).collect::<Vec<_>>(),
            starts
        );
        let r = decode(&b[s.records[2].1.clone()]).unwrap();
        assert_eq!(r.accepted_ms, 1_700_000_000_002);
        assert_eq!((r.route.as_str(), r.upstream.as_str()), ("r", "v"));
        assert_eq!(r.out.method, http::Method::POST);
        assert_eq!(r.out.target.as_str(), "/g/collect?n=2");
        assert_eq!(r.out.headers[0].1, "UA");
        assert_eq!(&r.out.body[..], b"en=page_view&n=2");
    }

    #[test]
    fn every_truncation_keeps_the_complete_records() {
        let (b, starts) = file(3);
        let ends: Vec<usize> = starts.iter().skip(1).copied().chain([b.len()]).collect();
        for cut in 1..b.len() {
            let s = scan(&b[..cut]);
            let complete = ends.iter().filter(|&&e| e <= cut).count();
            assert_eq!(s.records.len(), complete, "cut at {cut}");
            if ends.contains(&cut) {
                assert!(s.damage.is_empty(), "cut at a boundary {cut}");
            } else {
                assert_eq!(s.damage.len(), 1, "cut at {cut}");
                assert!(s.damage[0].tail);
                assert_eq!(s.damage[0].offset + s.damage[0].len, cut as u64);
            }
        }
    }

    #[test]
    fn a_flipped_byte_in_the_middle_loses_only_that_record() {
        let (mut b, starts) = file(4);
        b[starts[1] + HEADER + 5] ^= 0x40;
        let s = scan(&b);
        assert_eq!(
            targets(&b, &s),
            ["/g/collect?n=0", "/g/collect?n=2", "/g/collect?n=3"]
        );
        assert_eq!(s.damage.len(), 1);
        assert_eq!(s.damage[0].reason, "checksum mismatch");
        assert!(!s.damage[0].tail);
        assert_eq!(s.damage[0].offset, starts[1] as u64);
        assert_eq!(s.damage[0].len, (starts[2] - starts[1]) as u64);
    }

    #[test]
    fn a_damaged_length_and_zeroed_tail_are_found() {
        let (mut b, starts) = file(3);
        b[starts[1] + 6] = 0xff;
        let s = scan(&b);
        assert_eq!(targets(&b, &s), ["/g/collect?n=0", "/g/collect?n=2"]);
        assert!(!s.damage[0].tail);

        // Power loss: the file's size grew but the last write's blocks are zeros.
        let (mut b, _) = file(2);
        b.extend(vec![0u8; 300]);
        let s = scan(&b);
        assert_eq!(s.records.len(), 2);
        assert_eq!(s.damage.len(), 1);
        assert!(s.damage[0].tail);
        assert_eq!(s.damage[0].reason, "no record marker");
    }

    #[test]
    fn garbage_is_not_a_record() {
        let s = scan(b"TWS1\x05\0\0\0\0\0\0\0hello and more");
        assert!(s.records.is_empty());
        assert_eq!(s.damage.len(), 1);
        assert!(decode(b"").is_err());
        assert!(decode(&[1, 0, 0]).is_err());
    }

    #[test]
    fn names() {
        assert_eq!(parse_name("0000000000000012.seg"), Some(12));
        assert_eq!(parse_name("12.seg"), None);
        assert_eq!(parse_name("0000000000000012.ack"), None);
        assert_eq!(
            seg_path(Path::new("/s"), 7),
            Path::new("/s/0000000000000007.seg")
        );
    }
}
