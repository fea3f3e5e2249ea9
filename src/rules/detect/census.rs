//! The detectors' pre-pass ([`super::arm`]): which trigger characters a value holds, and how
//! many digits, dots and colons. It reads every byte of every value the scan checks, so it is
//! the scan's biggest single cost.
//!
//! The portable version looks each byte up in a table. Where the CPU has AVX-512 VBMI (checked
//! at run time), 64 bytes at a time are classified by one in-register table lookup
//! (`vpermi2b`) and a value's tail is read with a masked load, so a short value costs about
//! the same few dozen instructions as a long one, where the table loop costs a few per byte.
//! The tests hold both to the same answer for every length.

use super::{AT, CLASS, COLON, COUNTS, DIGIT, DOT, EQ, LETTER_B, LETTER_J, PCT, PLUS, QH};
use super::{SEP, SPACE, UPPER};

/// What [`census`] found in a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Census {
    /// The trigger flags present (`AT`, `PCT`, …: bits 48 and up).
    pub flags: u64,
    /// Digits, dots and colons; all three 65,535 for a text longer than that (enough for
    /// the detectors' thresholds).
    pub digits: u64,
    pub dots: u64,
    pub colons: u64,
}

/// The [`Census`] of `b`.
#[inline]
pub fn census(b: &[u8]) -> Census {
    #[cfg(target_arch = "x86_64")]
    {
        if b.len() >= 32 && vbmi::available() {
            // SAFETY: the CPU has the features `vbmi::census` is compiled for (checked just
            // above).
            return unsafe { vbmi::census(b) };
        }
    }
    scalar(b)
}

/// Bit `k` set when `b[k]` is an ASCII digit, for texts of at most 64 bytes.
#[inline]
pub fn digit_mask(b: &[u8]) -> u64 {
    debug_assert!(b.len() <= 64);
    #[cfg(target_arch = "x86_64")]
    {
        if vbmi::available() {
            // SAFETY: the CPU has the features `vbmi::digit_mask` is compiled for (checked
            // just above); `b` is at most 64 bytes long.
            return unsafe { vbmi::digit_mask(b) };
        }
    }
    digit_mask_scalar(b)
}

/// [`digit_mask`] one byte at a time (branch-free: digits and letters alternate in ids).
pub fn digit_mask_scalar(b: &[u8]) -> u64 {
    b.iter()
        .take(64)
        .enumerate()
        .fold(0, |m, (k, c)| m | (c.is_ascii_digit() as u64) << k)
}

/// [`census`] one byte at a time (the portable version, and the reference the tests hold the
/// vector one to).
#[inline]
pub fn scalar(b: &[u8]) -> Census {
    let (mut flags, mut counts) = (0u64, 0u64);
    for &c in b {
        let k = CLASS[c as usize];
        flags |= k;
        counts = counts.wrapping_add(k); // flags carry only into the bits above the counts
    }
    if b.len() > 0xFFFF {
        counts = COUNTS; // the 16-bit counts may have carried: read them all as "many"
    }
    Census {
        flags: flags & !COUNTS,
        digits: counts & 0xFFFF,
        dots: counts >> 16 & 0xFFFF,
        colons: counts >> 32 & 0xFFFF,
    }
}

/// The class of every ASCII byte as two bytes: `(low, high)`. Low: digit, dot, colon, then
/// `AT`..`QH` (flags 48–52); high: `UPPER`..`SPACE` (flags 53–57). Non-ASCII bytes have no
/// class.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const fn split_classes() -> ([u8; 128], [u8; 128]) {
    let (mut lo, mut hi) = ([0u8; 128], [0u8; 128]);
    let mut i = 0;
    while i < 128 {
        let k = CLASS[i];
        lo[i] = ((k & DIGIT != 0) as u8)
            | ((k & DOT != 0) as u8) << 1
            | ((k & COLON != 0) as u8) << 2
            | ((k >> 48 & 0x1F) as u8) << 3;
        hi[i] = (k >> 53 & 0x1F) as u8;
        i += 1;
    }
    (lo, hi)
}

// The bit layout `split_classes` and `vbmi::census` rely on.
const _: () = assert!(
    AT == 1 << 48
        && PCT == 1 << 49
        && PLUS == 1 << 50
        && EQ == 1 << 51
        && QH == 1 << 52
        && UPPER == 1 << 53
        && LETTER_B == 1 << 54
        && LETTER_J == 1 << 55
        && SEP == 1 << 56
        && SPACE == 1 << 57
);

#[cfg(target_arch = "x86_64")]
pub(super) mod vbmi {
    use std::arch::x86_64::*;

    use crate::decode::mask::avx512;

    use super::Census;

    static TABLES: ([u8; 128], [u8; 128]) = super::split_classes();

    /// Whether this CPU runs [`census`].
    #[inline(always)]
    pub fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx512vbmi")
            && std::arch::is_x86_feature_detected!("avx512bw")
    }

    /// [`super::digit_mask`] by one masked load and compare.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX-512 F and BW ([`available`]), and `b` be at most 64 bytes long.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn digit_mask(b: &[u8]) -> u64 {
        let (x, live) = avx512::load(b, 0);
        live & avx512::in_range(x, b'0', 10)
    }

    /// Whether `b` has two capitals followed by two digits anywhere (an IBAN's head), from
    /// the capitals' and digits' masks of 64-byte blocks that overlap by 3 bytes.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX-512 F and BW ([`available`]).
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn has_iban_head(b: &[u8]) -> bool {
        let mut base = 0;
        while base + 3 < b.len() {
            let (x, live) = avx512::load(b, base);
            let up = live & avx512::in_range(x, b'A', 26);
            let digit = live & avx512::in_range(x, b'0', 10);
            if up & up >> 1 & digit >> 2 & digit >> 3 != 0 {
                return true;
            }
            // The next block starts where a head could start that this one did not hold.
            base += 61;
        }
        false
    }

    /// [`super::census`], 64 bytes a step.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX-512 F, BW and VBMI ([`available`]).
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub unsafe fn census(b: &[u8]) -> Census {
        let (lo, hi) = &TABLES;
        // SAFETY (all loads below): each table is 128 bytes, so bytes 0..64 and 64..128 are
        // in it; unaligned loads are allowed.
        let (lo0, lo1, hi0, hi1) = unsafe {
            (
                _mm512_loadu_si512(lo.as_ptr().cast()),
                _mm512_loadu_si512(lo.as_ptr().add(64).cast()),
                _mm512_loadu_si512(hi.as_ptr().cast()),
                _mm512_loadu_si512(hi.as_ptr().add(64).cast()),
            )
        };
        let (mut any_lo, mut any_hi) = (_mm512_setzero_si512(), _mm512_setzero_si512());
        let (mut digits, mut dots, mut colons) = (0u64, 0u64, 0u64);
        let (one, two, four) = (
            _mm512_set1_epi8(1),
            _mm512_set1_epi8(2),
            _mm512_set1_epi8(4),
        );
        for base in (0..b.len()).step_by(64) {
            let (x, live) = avx512::load(b, base);
            // Bytes from 0x80 have no class: the lookup uses only the low 7 bits.
            let ascii = live & !_mm512_movepi8_mask(x);
            let c_lo = _mm512_maskz_permutex2var_epi8(ascii, lo0, x, lo1);
            let c_hi = _mm512_maskz_permutex2var_epi8(ascii, hi0, x, hi1);
            digits += _mm512_test_epi8_mask(c_lo, one).count_ones() as u64;
            dots += _mm512_test_epi8_mask(c_lo, two).count_ones() as u64;
            colons += _mm512_test_epi8_mask(c_lo, four).count_ones() as u64;
            any_lo = _mm512_or_si512(any_lo, c_lo);
            any_hi = _mm512_or_si512(any_hi, c_hi);
        }
        let fold = |v: __m512i| {
            let mut w = _mm512_reduce_or_epi64(v) as u64;
            w |= w >> 32;
            w |= w >> 16;
            w |= w >> 8;
            w & 0xFF
        };
        if b.len() > 0xFFFF {
            (digits, dots, colons) = (0xFFFF, 0xFFFF, 0xFFFF); // as the table loop reads them
        }
        Census {
            flags: (fold(any_lo) >> 3) << 48 | fold(any_hi) << 53,
            digits,
            dots,
            colons,
        }
    }
}
