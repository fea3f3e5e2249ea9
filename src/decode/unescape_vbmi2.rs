//! Percent-decoding 64 bytes at a time, where the CPU has AVX-512 VBMI2 (checked at run time).
//!
//! The scan reads every escaped value decoded, and GA4's page URL and referrer arrive escaped
//! twice over (`https%3A%2F%2F…%3Futm_source%3D…`): an escape every few bytes. The byte loop of
//! [`super::query`] copies the run before each escape and decodes it, a few nanoseconds per
//! escape. Here a block's escapes are all decoded at once: the hex digits' values are read
//! from the block shifted by one and two bytes (`vpermb`), written over each `%`, and the
//! digits squeezed out with one compress (`vpcompressb`). The tests hold it to the byte loop.

use std::arch::x86_64::*;

use super::mask::avx512;

/// Whether this CPU runs [`unescape_bytes`].
#[inline(always)]
pub fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512vbmi2")
        && std::arch::is_x86_feature_detected!("avx512vbmi")
        && std::arch::is_x86_feature_detected!("avx512bw")
}

/// Byte `k` of the vector: `k + by` (the last bytes repeat byte 63, read by no escape).
const fn shifted(by: usize) -> [u8; 64] {
    let mut t = [0u8; 64];
    let mut k = 0;
    while k < 64 {
        t[k] = if k + by < 64 { (k + by) as u8 } else { 63 };
        k += 1;
    }
    t
}

static NEXT: [u8; 64] = shifted(1);
static AFTER_NEXT: [u8; 64] = shifted(2);

/// The low `n` bits (`n` at most 64).
#[inline(always)]
fn low(n: usize) -> u64 {
    super::mask::bits(0, n as u32)
}

/// What `super::query::unescape_bytes` does: `b` percent-decoded (`%XX` with two hex digits is
/// a byte, `+` a space, any other `%` stays) appended to `out`; whether an escape gave a byte
/// from 0x80.
///
/// # Safety
///
/// The CPU must have AVX-512 F, BW, VBMI and VBMI2 ([`available`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vbmi2")]
pub unsafe fn unescape_bytes(b: &[u8], out: &mut Vec<u8>) -> bool {
    // Decoding never lengthens: every block's output fits in what this reserves.
    out.reserve(b.len());
    // SAFETY: 64-byte tables, unaligned loads allowed.
    let (next, after_next) = unsafe {
        (
            _mm512_loadu_si512(NEXT.as_ptr().cast()),
            _mm512_loadu_si512(AFTER_NEXT.as_ptr().cast()),
        )
    };
    let mut high = false;
    let mut i = 0;
    while i < b.len() {
        let n = (b.len() - i).min(64);
        let (x, live) = avx512::load(b, i);
        let pct = _mm512_cmpeq_epi8_mask(x, _mm512_set1_epi8(b'%' as i8));
        let plus = _mm512_cmpeq_epi8_mask(x, _mm512_set1_epi8(b'+' as i8));
        // Hex digits and their values (other bytes' values are never used).
        let digit = _mm512_sub_epi8(x, _mm512_set1_epi8(b'0' as i8));
        let letter = _mm512_sub_epi8(
            _mm512_or_si512(x, _mm512_set1_epi8(0x20)),
            _mm512_set1_epi8(b'a' as i8),
        );
        let is_letter = _mm512_cmplt_epu8_mask(letter, _mm512_set1_epi8(6));
        let hex = (avx512::in_range(x, b'0', 10) | is_letter) & live;
        let value = _mm512_mask_blend_epi8(
            is_letter,
            digit,
            _mm512_add_epi8(letter, _mm512_set1_epi8(10)),
        );
        let value = _mm512_and_si512(value, _mm512_set1_epi8(0x0F));
        // An escape is a `%` with hex digits in the next two bytes. A `%` in the block's last
        // two bytes, with more text after, may have its digits in the next block: this block
        // ends before it. (Digits are never `%`, so no escape before it reaches past it.)
        let esc = pct & hex >> 1 & hex >> 2;
        let len = match pct & !esc & 0b11 << 62 {
            open if open != 0 && i + n < b.len() => open.trailing_zeros() as usize,
            _ => n,
        };
        let hi = _mm512_permutexvar_epi8(next, value);
        let lo = _mm512_permutexvar_epi8(after_next, value);
        // Nibbles are below 16, so shifting 16-bit lanes moves nothing across bytes.
        let byte = _mm512_or_si512(_mm512_slli_epi16(hi, 4), lo);
        let y = _mm512_mask_mov_epi8(x, esc, byte);
        let y = _mm512_mask_mov_epi8(y, plus, _mm512_set1_epi8(b' ' as i8));
        high |= _mm512_movepi8_mask(byte) & esc != 0;
        let keep = low(len) & !(esc << 1 | esc << 2);
        let packed = _mm512_maskz_compress_epi8(keep, y);
        let count = keep.count_ones() as usize;
        debug_assert!(out.len() + count <= out.capacity());
        // SAFETY: `count` is at most the `len` bytes this block consumes, and `out` has room
        // for all of `b` past its length (reserved above, and each block writes no more than
        // it consumes); the masked store writes exactly `count` bytes, which are then
        // initialised.
        unsafe {
            _mm512_mask_storeu_epi8(out.as_mut_ptr().add(out.len()).cast(), low(count), packed);
            out.set_len(out.len() + count);
        }
        i += len;
    }
    high
}
