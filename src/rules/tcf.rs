//! IAB TCF v2 consent strings (the "TC string"), read for the consent conditions: where a
//! request carries one, and what it says about tagway's four purposes.
//!
//! Only the core segment's fixed part is decoded: version, and the purpose consent and
//! legitimate-interest bitfields (bits 152–199, see the IAB's "Consent string and vendor list
//! formats v2", core string). That is 25 bytes, decoded into a stack buffer: no allocation, no
//! loop driven by counts from the input, so a hostile string costs a bounded scan of its
//! characters and nothing else. Vendor sections are not read (see [`TcCore`]).
//!
//! Why not a crate: `lib_tcstring` 0.5 (the maintained-looking one) panics on some short or
//! range-encoded inputs and expands vendor ranges into vectors (a 2 KB string asks for tens of
//! megabytes), which a gateway reading strings from cookies cannot afford.
//!
//! Mapping to tagway's purposes (Google's published TCF → Consent Mode mapping, plus
//! analytics): `ads` (ad_storage) needs purpose 1; `ad_user_data` purposes 1 and 7;
//! `ad_personalization` purposes 3 and 4 — all by consent; `analytics` needs consent for
//! purpose 1 and, for purpose 8 (measure content performance), consent or legitimate interest.
//! A valid TC string grants or denies each purpose; it is never "unknown".

use super::cond::{Purpose, Signal};

/// What the core segment says. Bit `n - 1` stands for purpose `n` (1–24).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcCore {
    pub purposes_consent: u32,
    pub purposes_li: u32,
}

/// Why a string is not a TC string tagway can read (it is then ignored: no signal).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TcfError {
    #[error("longer than {MAX_LEN} characters")]
    TooLong,
    #[error("the core segment is shorter than its fixed fields")]
    TooShort,
    #[error("not base64url text")]
    NotBase64,
    #[error("version {0}, not 2")]
    Version(u8),
}

/// Longest TC string read (real ones are a few hundred characters; vendor sections can grow
/// them to a few kilobytes).
pub const MAX_LEN: usize = 16 * 1024;

/// Characters of the core segment decoded: 36 × 6 = 216 bits, through `PublisherCC`.
const CORE_CHARS: usize = 36;

/// Decodes the core segment's version and purpose bitfields. Every segment (`.`-separated)
/// must be base64url text (trailing `=` tolerated).
pub fn decode(tc: &str) -> Result<TcCore, TcfError> {
    use base64::Engine as _;
    let tc = tc.trim();
    if tc.len() > MAX_LEN {
        return Err(TcfError::TooLong);
    }
    let b64url = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    let mut core = "";
    for (i, seg) in tc.split('.').enumerate() {
        let seg = seg.trim_end_matches('=');
        if seg.is_empty() || !seg.bytes().all(b64url) {
            return Err(TcfError::NotBase64);
        }
        if i == 0 {
            core = seg;
        }
    }
    if core.len() < CORE_CHARS {
        return Err(TcfError::TooShort);
    }
    // 36 characters (a multiple of 4, so no padding question) → 27 bytes.
    let mut bytes = [0u8; CORE_CHARS * 6 / 8];
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode_slice(&core[..CORE_CHARS], &mut bytes)
        .map_err(|_| TcfError::NotBase64)?;
    let bits = |start: usize, len: usize| -> u32 {
        (start..start + len).fold(0u32, |acc, i| {
            (acc << 1) | u32::from((bytes[i / 8] >> (7 - i % 8)) & 1)
        })
    };
    let version = bits(0, 6) as u8;
    if version != 2 {
        return Err(TcfError::Version(version));
    }
    // Read MSB-first: purpose 1 is the first bit. Stored with purpose n at bit n - 1.
    let field = |start: usize| bits(start, 24).reverse_bits() >> 8;
    Ok(TcCore {
        purposes_consent: field(152),
        purposes_li: field(176),
    })
}

impl TcCore {
    /// Consent for purpose `n` (1–24).
    pub fn consent(&self, n: u8) -> bool {
        (1..=24).contains(&n) && self.purposes_consent & (1 << (n - 1)) != 0
    }

    /// Legitimate interest established (and not objected to) for purpose `n`.
    pub fn legitimate_interest(&self, n: u8) -> bool {
        (1..=24).contains(&n) && self.purposes_li & (1 << (n - 1)) != 0
    }

    /// What this string says about one of tagway's purposes (mapping in the module header).
    pub fn signal(&self, p: Purpose) -> Signal {
        let c = |n| self.consent(n);
        let ok = match p {
            Purpose::Ads => c(1),
            Purpose::AdUserData => c(1) && c(7),
            Purpose::AdPersonalization => c(3) && c(4),
            Purpose::Analytics => c(1) && (c(8) || self.legitimate_interest(8)),
        };
        if ok { Signal::Granted } else { Signal::Denied }
    }
}

#[cfg(test)]
mod tests;
