//! Wrappers around payloads, taken off before a codec parses them and put back after: bodies
//! compressed with `Content-Encoding` gzip, deflate or br; PostHog's raw gzip sent with no
//! header (`compression=gzip-js`); LinkedIn Insight Tag's text bodies that are base64 of gzip;
//! and the base64 JSON fields of Mixpanel (`data`), Snowplow (`cx`, `ue_px`) and TikTok.
//!
//! This module owns the byte-level transforms and their limits: decompression stops at a
//! caller-given size (a decompression bomb fails fast instead of filling memory), and a
//! truncated or corrupt stream is an error, never a partial body passed off as the whole.

use std::io::{ErrorKind, Read, Write};

use base64::Engine as _;
use base64::engine::GeneralPurpose;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use brotli::enc::{BrotliEncoderParams, StandardAlloc};
use brotli::{BrotliDecompressStream, BrotliResult, BrotliState};
use flate2::bufread::{DeflateDecoder, MultiGzDecoder, ZlibDecoder};
use flate2::write::{GzEncoder, ZlibEncoder};

use super::value::Wrap;

/// A compression a body can arrive in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    /// zlib-wrapped deflate (RFC 1950), what browsers mean by `deflate`.
    Deflate,
    Brotli,
}

/// Why a wrapped payload could not be unwrapped.
#[derive(Debug, thiserror::Error)]
pub enum WrapError {
    #[error("unsupported Content-Encoding {0:?} (gzip, deflate and br are supported)")]
    Unsupported(String),
    #[error("decompressed body larger than {0} bytes")]
    TooLarge(usize),
    #[error("body is not valid {0} data: {1}")]
    Corrupt(&'static str, String),
}

/// Bytes decompressed per step.
const CHUNK: usize = 32 * 1024;

impl Compression {
    /// The `Content-Encoding` token for this compression.
    pub fn token(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Deflate => "deflate",
            Compression::Brotli => "br",
        }
    }
}

/// Parses a `Content-Encoding` value: `gzip`/`x-gzip`, `deflate`, `br`; `identity` or empty
/// is no compression. Anything else, stacked codings (`gzip, br`) included, is unsupported.
pub fn content_encoding(value: &str) -> Result<Option<Compression>, WrapError> {
    let v = value.trim_matches([' ', '\t']).to_ascii_lowercase();
    match v.as_str() {
        "" | "identity" => Ok(None),
        "gzip" | "x-gzip" => Ok(Some(Compression::Gzip)),
        "deflate" => Ok(Some(Compression::Deflate)),
        "br" => Ok(Some(Compression::Brotli)),
        _ => Err(WrapError::Unsupported(value.chars().take(64).collect())),
    }
}

/// Decompresses `data`, failing with [`WrapError::TooLarge`] as soon as the output would pass
/// `limit` bytes (the output buffer never grows beyond `limit`). Gzip may have several
/// members; deflate is zlib-wrapped, or raw deflate as a fallback. Truncated, corrupt or
/// trailing data is [`WrapError::Corrupt`], and so is empty input (no valid stream is empty).
pub fn decompress(c: Compression, data: &[u8], limit: usize) -> Result<Vec<u8>, WrapError> {
    let mut out = Vec::new();
    decompress_into(c, data, limit, &mut out)?;
    Ok(out)
}

/// [`decompress`] into `out` (which the tests inspect for its peak capacity).
fn decompress_into(
    c: Compression,
    data: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<(), WrapError> {
    out.reserve_exact(data.len().saturating_mul(4).min(limit));
    match c {
        Compression::Gzip => read_all(MultiGzDecoder::new(data), "gzip", limit, out),
        Compression::Deflate => inflate(data, limit, out),
        Compression::Brotli => unbrotli(data, limit, out),
    }
}

/// zlib when the first two bytes are a zlib header, otherwise (or if that fails) raw deflate.
fn inflate(data: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), WrapError> {
    if !is_zlib(data) {
        return raw_deflate(data, limit, out);
    }
    let zlib_err = match zlib(data, limit, out) {
        Err(e @ WrapError::Corrupt(..)) => e,
        done => return done,
    };
    out.clear();
    match raw_deflate(data, limit, out) {
        Err(WrapError::Corrupt(..)) => Err(zlib_err),
        done => done,
    }
}

/// RFC 1950 header: compression method 8, window at most 32 KiB, check bits.
fn is_zlib(data: &[u8]) -> bool {
    matches!(data, [cmf, flg, ..] if cmf & 0x0f == 8 && cmf >> 4 <= 7
        && ((u16::from(*cmf) << 8) | u16::from(*flg)) % 31 == 0)
}

fn zlib(data: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), WrapError> {
    let mut d = ZlibDecoder::new(data);
    read_all(&mut d, "deflate", limit, out)?;
    all_read(d.total_in(), data, "deflate")
}

fn raw_deflate(data: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), WrapError> {
    let mut d = DeflateDecoder::new(data);
    read_all(&mut d, "deflate", limit, out)?;
    all_read(d.total_in(), data, "deflate")
}

/// Bytes after the end of a stream are an error: they would be lost on re-encoding.
fn all_read(used: u64, data: &[u8], what: &'static str) -> Result<(), WrapError> {
    if used == data.len() as u64 {
        Ok(())
    } else {
        Err(corrupt(what, "trailing bytes after the end of the stream"))
    }
}

/// Reads `r` to its end into `out`, within `limit`.
fn read_all(
    mut r: impl Read,
    what: &'static str,
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<(), WrapError> {
    let mut chunk = [0u8; CHUNK];
    loop {
        match r.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => push_capped(out, &chunk[..n], limit)?,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(WrapError::Corrupt(what, e.to_string())),
        }
    }
}

fn unbrotli(data: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), WrapError> {
    let alloc = StandardAlloc::default;
    let mut state = BrotliState::new(alloc(), alloc(), alloc());
    let (mut avail_in, mut in_at, mut total) = (data.len(), 0, 0);
    let mut chunk = [0u8; CHUNK];
    loop {
        let (mut avail_out, mut out_at) = (CHUNK, 0);
        let r = BrotliDecompressStream(
            &mut avail_in,
            &mut in_at,
            data,
            &mut avail_out,
            &mut out_at,
            &mut chunk,
            &mut total,
            &mut state,
        );
        push_capped(out, &chunk[..out_at], limit)?;
        match r {
            BrotliResult::NeedsMoreOutput => {}
            BrotliResult::ResultSuccess => return all_read(in_at as u64, data, "brotli"),
            BrotliResult::NeedsMoreInput => return Err(corrupt("brotli", "truncated stream")),
            BrotliResult::ResultFailure => return Err(corrupt("brotli", "invalid stream")),
        }
    }
}

/// Appends `bytes` unless the total would pass `limit`; capacity grows by doubling but never
/// beyond `limit`.
fn push_capped(out: &mut Vec<u8>, bytes: &[u8], limit: usize) -> Result<(), WrapError> {
    let len = out.len() + bytes.len();
    if len > limit {
        return Err(WrapError::TooLarge(limit));
    }
    if len > out.capacity() {
        let want = out.capacity().saturating_mul(2).clamp(len, limit);
        out.reserve_exact(want - out.len());
    }
    out.extend_from_slice(bytes);
    Ok(())
}

fn corrupt(what: &'static str, why: &str) -> WrapError {
    WrapError::Corrupt(what, why.to_string())
}

/// Compresses `data`: gzip and zlib-wrapped deflate at level 6, brotli at quality 5 with a
/// 4 MiB window (lgwin 22).
pub fn compress(c: Compression, data: &[u8]) -> Vec<u8> {
    let out = Vec::with_capacity(data.len() / 2 + 64);
    let level = flate2::Compression::new(6);
    let done = match c {
        Compression::Gzip => {
            let mut e = GzEncoder::new(out, level);
            e.write_all(data).and_then(|()| e.finish())
        }
        Compression::Deflate => {
            let mut e = ZlibEncoder::new(out, level);
            e.write_all(data).and_then(|()| e.finish())
        }
        Compression::Brotli => {
            let params = BrotliEncoderParams {
                quality: 5,
                lgwin: 22,
                ..Default::default()
            };
            let mut out = out;
            brotli::BrotliCompress(&mut &data[..], &mut out, &params).map(|_| out)
        }
    };
    done.expect("compressing into memory cannot fail")
}

/// Raw gzip: the magic bytes `1f 8b` and method 8 (deflate).
pub fn is_gzip(data: &[u8]) -> bool {
    data.starts_with(&[0x1f, 0x8b, 0x08])
}

/// Text that is base64 of gzip: it starts with `H4sI`, the base64 of the gzip magic (LinkedIn
/// Insight Tag bodies).
pub fn is_base64_gzip(data: &[u8]) -> bool {
    data.starts_with(b"H4sI")
}

/// Decodes base64 in whichever alphabet it uses, and reports which (with its padding) so
/// that [`base64_encode`] writes it back the same way. A text mixing `+/` with `-_`,
/// containing anything else (whitespace included), badly padded or shorter than 4 characters
/// is `None`. Ambiguous texts (neither `+/` nor `-_`) are read as standard base64; an
/// unpadded text whose length needs no padding counts as padded in the standard alphabet and
/// unpadded in the URL-safe one, the way btoa and base64url producers write them.
pub fn base64_decode(s: &str) -> Option<(Vec<u8>, Wrap)> {
    if s.len() < 4 {
        return None;
    }
    let (has_url, has_std) = (s.contains(['-', '_']), s.contains(['+', '/']));
    if has_url && has_std {
        return None;
    }
    // Text with neither alphabet's own characters is ambiguous. Browsers' `btoa` always pads,
    // so unpadded text of a length that needed padding is base64url (Snowplow `ue_px`, `cx`);
    // then a re-encoded field keeps `-`/`_` rather than switching alphabet.
    let url = has_url || (!has_std && !s.ends_with('=') && !s.len().is_multiple_of(4));
    let pad = s.ends_with('=') || (!url && s.len().is_multiple_of(4));
    let wrap = if url {
        Wrap::Base64Url { pad }
    } else {
        Wrap::Base64 { pad }
    };
    let bytes = engine(wrap)?.decode(s).ok()?;
    Some((bytes, wrap))
}

/// Encodes `data` as `wrap` says; [`Wrap::Plain`] gives the data as (lossy) UTF-8 text.
pub fn base64_encode(data: &[u8], wrap: Wrap) -> String {
    match engine(wrap) {
        Some(e) => e.encode(data),
        None => String::from_utf8_lossy(data).into_owned(),
    }
}

fn engine(wrap: Wrap) -> Option<&'static GeneralPurpose> {
    match wrap {
        Wrap::Plain => None,
        Wrap::Base64 { pad: true } => Some(&STANDARD),
        Wrap::Base64 { pad: false } => Some(&STANDARD_NO_PAD),
        Wrap::Base64Url { pad: true } => Some(&URL_SAFE),
        Wrap::Base64Url { pad: false } => Some(&URL_SAFE_NO_PAD),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Crc, FlushCompress};
    use proptest::prelude::*;
    use std::time::{Duration, Instant};

    const ALL: [Compression; 3] = [Compression::Gzip, Compression::Deflate, Compression::Brotli];
    const MIB: usize = 1 << 20;

    fn sample() -> Vec<u8> {
        let event =
            r#"{"event":"$pageview","properties":{"$current_url":"https://shop.example/"}}"#;
        event.repeat(200).into_bytes()
    }

    /// `mib` MiB of zeros as gzip (`zlib` false) or zlib, made of one compressed MiB repeated:
    /// compressing 100 MiB in a debug build would take seconds. Checksums are valid.
    fn bomb(mib: usize, zlib: bool) -> Vec<u8> {
        let mut c = Compress::new(flate2::Compression::new(6), false);
        let mut block = Vec::with_capacity(64 * 1024);
        c.compress_vec(&vec![0; MIB], &mut block, FlushCompress::Sync)
            .unwrap();
        assert_eq!(c.total_in(), MIB as u64);
        let (mut one, mut crc) = (Crc::new(), Crc::new());
        one.update(&vec![0; MIB]);
        let mut out = if zlib {
            vec![0x78, 0x9c]
        } else {
            vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]
        };
        for _ in 0..mib {
            out.extend_from_slice(&block);
            crc.combine(&one);
        }
        out.extend_from_slice(&[0x03, 0x00]); // final empty fixed-Huffman block
        let len = (mib * MIB) as u32;
        if zlib {
            out.extend_from_slice(&((len % 65521) << 16 | 1).to_be_bytes()); // Adler-32 of zeros
        } else {
            out.extend_from_slice(&crc.sum().to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
        }
        out
    }

    #[test]
    fn round_trips_each_compression() {
        let data = sample();
        for c in ALL {
            let packed = compress(c, &data);
            assert!(packed.len() < data.len() / 4, "{c:?}");
            assert_eq!(decompress(c, &packed, data.len()).unwrap(), data, "{c:?}");
            assert_eq!(decompress(c, &compress(c, b""), 0).unwrap(), b"", "{c:?}");
        }
    }

    #[test]
    fn gzip_members_and_raw_deflate() {
        let mut two = compress(Compression::Gzip, b"hello ");
        two.extend(compress(Compression::Gzip, b"world"));
        let one = decompress(Compression::Gzip, &two, 100).unwrap();
        assert_eq!(one, b"hello world");
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(6));
        raw.write_all(&sample()).unwrap();
        let raw = raw.finish().unwrap();
        let inflated = decompress(Compression::Deflate, &raw, 1 << 20).unwrap();
        assert_eq!(inflated, sample());
        assert!(is_gzip(&two) && !is_gzip(&raw));
    }

    /// `bomb` must fail with `TooLarge` within a second, never holding more than `limit` bytes.
    fn assert_defused(c: Compression, bomb: &[u8], limit: usize) {
        let (start, mut out) = (Instant::now(), Vec::new());
        let r = decompress_into(c, bomb, limit, &mut out);
        let elapsed = start.elapsed();
        assert!(
            matches!(r, Err(WrapError::TooLarge(l)) if l == limit),
            "{c:?}: {r:?}"
        );
        assert!(elapsed < Duration::from_secs(1), "{c:?}: {elapsed:?}");
        assert!(
            out.capacity() <= limit,
            "{c:?}: capacity {}",
            out.capacity()
        );
    }

    #[test]
    fn bombs_fail_fast_without_filling_memory() {
        let small = decompress(Compression::Gzip, &bomb(3, false), 3 * MIB).unwrap();
        assert_eq!(small, vec![0; 3 * MIB]);
        let small = decompress(Compression::Deflate, &bomb(3, true), 3 * MIB).unwrap();
        assert_eq!(small, vec![0; 3 * MIB]);
        for (c, zlib) in [(Compression::Gzip, false), (Compression::Deflate, true)] {
            let bomb = bomb(100, zlib); // 100 MiB of zeros
            assert!(bomb.len() < 120 * 1024, "{} bytes", bomb.len());
            assert_defused(c, &bomb, 4 * MIB);
        }
        let br = compress(Compression::Brotli, &vec![0; 16 * MIB]);
        assert_defused(Compression::Brotli, &br, MIB);
    }

    #[test]
    fn truncated_garbage_and_trailing_data_are_corrupt() {
        for c in ALL {
            let packed = compress(c, &sample());
            let trailing = [&packed[..], b"junk"].concat();
            let (half, short) = (&packed[..packed.len() / 2], &packed[..packed.len() - 1]);
            for bad in [half, short, &trailing, b"not compressed at all"] {
                let r = decompress(c, bad, 1 << 20);
                assert!(
                    matches!(r, Err(WrapError::Corrupt(..))),
                    "{c:?} {}: {r:?}",
                    bad.len()
                );
            }
        }
    }

    #[test]
    fn content_encoding_values() {
        let ok = |v| content_encoding(v).unwrap();
        let gzip = Some(Compression::Gzip);
        assert_eq!(
            (ok("gzip"), ok(" X-GZIP "), ok("identity"), ok("")),
            (gzip, gzip, None, None)
        );
        assert_eq!(
            (ok("deflate"), ok("br")),
            (Some(Compression::Deflate), Some(Compression::Brotli))
        );
        for bad in ["gzip, br", "zstd", "compress"] {
            let e = content_encoding(bad).unwrap_err().to_string();
            assert!(e.contains("gzip, deflate and br are supported"), "{e}");
        }
    }

    #[test]
    fn base64_alphabets_round_trip() {
        let data: Vec<u8> = (0u8..=255).chain([0xfb]).collect(); // needs padding, has +/ or -_
        let (std, url) = ([&STANDARD, &STANDARD_NO_PAD], [&URL_SAFE, &URL_SAFE_NO_PAD]);
        for (engine, wrap) in std
            .into_iter()
            .zip([true, false].map(|pad| Wrap::Base64 { pad }))
            .chain(
                url.into_iter()
                    .zip([true, false].map(|pad| Wrap::Base64Url { pad })),
            )
        {
            let text = engine.encode(&data);
            assert_eq!(base64_decode(&text), Some((data.clone(), wrap)), "{text}");
            assert_eq!(base64_encode(&data, wrap), text);
        }
        let json = Some((br#"{"a":1}"#.to_vec(), Wrap::Base64 { pad: true }));
        assert_eq!(base64_decode("eyJhIjoxfQ=="), json);
        // Nothing to pad: standard counts as padded, URL-safe as unpadded; both re-encode alike.
        let wraps = (
            base64_decode("YWJj").unwrap().1,
            base64_decode("-_-_").unwrap().1,
        );
        assert_eq!(
            wraps,
            (Wrap::Base64 { pad: true }, Wrap::Base64Url { pad: false })
        );
        for bad in [
            "",
            "abc",
            "ab+-cd==",
            "eyJh IjoxfQ==",
            "eyJhIjoxfQ=",
            "eyJhIjoxfQ===",
            "%%%%",
        ] {
            assert_eq!(base64_decode(bad), None, "{bad}");
        }
        assert_eq!(base64_encode("café".as_bytes(), Wrap::Plain), "café");
    }

    #[test]
    fn linkedin_base64_gzip_body() {
        let body = "H4sIAAAAAAAC/22QUUvDMBDHv8o48K1bW9u1IzDGkDkKPogtexkiWXuu55I0Nikqc9/d1BZR8B4Cl/x+/0tyBk2VAbYPr6N4nqSPHpiyJW132BpqFLAoWHhgSSKwMF0k8yhMHJdGHlSN5OQIwHcutcBZ2UjwoGuF26ut1Yb5/q8zv6yxPDWdXaETxfKFK5xVDV7Fwd8EzY9YkBVuJNyMzuRzshkgB7zhwZDFnI6Kiwd87dDYrHJ0MNb0n2Ws0PlkipYrI7hFZz1zYdADQbd8SIG+2RJXdmgkmRLYGbQ55NY5wKbxpU+5I3XCKlNrrX9iapTAVCeE+8nv+xUfun/I/Xq7edpleVbA5Qtq20BMdgEAAA==";
        assert!(is_base64_gzip(body.as_bytes()) && !is_base64_gzip(b"eyJhIjoxfQ=="));
        let (gz, wrap) = base64_decode(body).unwrap();
        assert_eq!(wrap, Wrap::Base64 { pad: true });
        assert!(is_gzip(&gz));
        let json = String::from_utf8(decompress(Compression::Gzip, &gz, 1 << 20).unwrap()).unwrap();
        assert!(json.starts_with(r#"{"pids":[1234567]"#), "{json}");
    }

    proptest! {
        #[test]
        fn decompress_never_panics(data in prop::collection::vec(any::<u8>(), 0..512), magic in 0..3usize) {
            let magics: [&[u8]; 3] = [b"", &[0x1f, 0x8b, 8], &[0x78, 0x9c]];
            let input = [magics[magic], &data].concat();
            for c in ALL {
                let _ = decompress(c, &input, 4096);
            }
        }
    }
}
