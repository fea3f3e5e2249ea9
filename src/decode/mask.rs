//! Byte masks of 64-byte blocks: bit `i` of a mask says whether byte `i` of the block is one
//! of a few bytes. Splitting a query string by searching for the next `&`, `=` or `%` costs a
//! mispredicted branch every few bytes (a GA4 hit has ~200 of them); walking the set bits of
//! a block's masks costs one per block instead.
//!
//! On x86_64 the masks come from SSE2 (part of every x86_64 CPU), elsewhere from a loop over
//! the bytes; the tests check that both agree.

/// The masks of one block of a `key=value&…` text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueryMasks {
    /// `&`
    pub amp: u64,
    /// `=`
    pub eq: u64,
    /// `%` or `+` (something to unescape)
    pub esc: u64,
    /// `+`
    pub plus: u64,
}

/// The masks of the 64-byte block of `b` from `at` (bytes past its end are none of them).
#[inline]
pub fn query_masks(b: &[u8], at: usize) -> QueryMasks {
    let [amp, eq, pct, plus] = masks_at(b, at, b"&=%+");
    QueryMasks {
        amp,
        eq,
        esc: pct | plus,
        plus,
    }
}

/// For each byte of `set`, the mask of where it occurs in the 64 bytes of `b` from `at` (bytes
/// past the end count as zero, as in [`block_at`]).
///
/// Where the CPU has AVX-512 BW (checked at run time) the block is read with one masked load
/// and compared whole, with no copy of a short last block; elsewhere through [`block_at`]
/// and [`byte_masks`].
#[inline]
pub fn masks_at<const N: usize>(b: &[u8], at: usize, set: &[u8; N]) -> [u64; N] {
    #[cfg(target_arch = "x86_64")]
    {
        if avx512::available() {
            // SAFETY: the CPU has AVX-512 F and BW (checked just above).
            return unsafe { avx512::masks_at(b, at, set) };
        }
    }
    let mut pad = [0u8; 64];
    byte_masks(block_at(b, at, &mut pad), set)
}

/// For each byte of `set`, the mask of where it occurs in `block`.
#[inline]
pub fn byte_masks<const N: usize>(block: &[u8; 64], set: &[u8; N]) -> [u64; N] {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        // SAFETY: SSE2 is enabled for this build (checked by the `cfg` above; every x86_64
        // CPU has it), and `sse2::byte_masks` reads only the 64 bytes `block` borrows.
        unsafe { sse2::byte_masks(block, set) }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    {
        byte_masks_scalar(block, set)
    }
}

/// [`byte_masks`] one byte at a time (the portable version, and the reference the tests
/// hold the SSE2 one to).
pub fn byte_masks_scalar<const N: usize>(block: &[u8; 64], set: &[u8; N]) -> [u64; N] {
    let mut m = [0u64; N];
    for (i, &c) in block.iter().enumerate() {
        for (mask, &want) in m.iter_mut().zip(set) {
            *mask |= ((c == want) as u64) << i;
        }
    }
    m
}

/// A 64-byte block of `b` from `at`, zero-padded past its end (zero is none of the bytes
/// the masks look for).
#[inline]
pub fn block_at<'b>(b: &'b [u8], at: usize, pad: &'b mut [u8; 64]) -> &'b [u8; 64] {
    let rest = b.get(at..).unwrap_or(&[]);
    match rest.first_chunk::<64>() {
        Some(full) => full,
        None => {
            pad[..rest.len()].copy_from_slice(rest);
            pad[rest.len()..].fill(0);
            pad
        }
    }
}

/// Where a JSON string's plain run ends: `(index, true)` for the first `"`, `\` or control
/// character (below 0x20) in `b` from `i`, found 16 bytes a step with SSE2; `(index, false)`
/// when fewer than 16 bytes are left from `index` without one (the caller searches those).
#[inline]
pub fn json_run_end(b: &[u8], i: usize) -> (usize, bool) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        // SAFETY: SSE2 is enabled for this build (checked by the `cfg` above; every x86_64
        // CPU has it), and `sse2::json_run_end` reads only bytes of `b`.
        unsafe { sse2::json_run_end(b, i) }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    {
        (i, false)
    }
}

/// The bits `from..to` (both at most 64).
#[inline(always)]
pub fn bits(from: u32, to: u32) -> u64 {
    let below_to = u64::MAX.checked_shr(64 - to).unwrap_or(0);
    let from_up = u64::MAX.checked_shl(from).unwrap_or(0);
    below_to & from_up
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    /// Whether this CPU runs [`masks_at`].
    #[inline(always)]
    pub fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx512bw")
    }

    /// The (up to) 64 bytes of `b` from `at`, zero past its end, and which of them are in
    /// it (bit `k` for byte `at + k`): one masked load, however short the rest of `b` is.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    pub fn load(b: &[u8], at: usize) -> (__m512i, u64) {
        let rest = b.get(at..).unwrap_or(&[]);
        let live = super::bits(0, rest.len().min(64) as u32);
        // SAFETY: the mask covers exactly the first (at most 64) bytes of `rest`; masked-off
        // bytes are neither read nor faulted on, and read as zero.
        let x = unsafe { _mm512_maskz_loadu_epi8(live, rest.as_ptr().cast()) };
        (x, live)
    }

    /// The bytes of `x` in `from..from + n` (wrapping arithmetic: `from` at most 255 - `n`).
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    pub fn in_range(x: __m512i, from: u8, n: u8) -> u64 {
        let d = _mm512_sub_epi8(x, _mm512_set1_epi8(from as i8));
        _mm512_cmplt_epu8_mask(d, _mm512_set1_epi8(n as i8))
    }

    /// [`super::masks_at`] with one 64-byte compare per byte of `set`.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX-512 F and BW ([`available`]).
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn masks_at<const N: usize>(b: &[u8], at: usize, set: &[u8; N]) -> [u64; N] {
        let (x, _) = load(b, at);
        let mut m = [0u64; N];
        for (mask, &want) in m.iter_mut().zip(set) {
            *mask = _mm512_cmpeq_epi8_mask(x, _mm512_set1_epi8(want as i8));
        }
        m
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
mod sse2 {
    use std::arch::x86_64::*;

    /// [`super::json_run_end`].
    ///
    /// # Safety
    ///
    /// The CPU must have SSE2.
    #[target_feature(enable = "sse2")]
    #[inline]
    pub unsafe fn json_run_end(b: &[u8], mut i: usize) -> (usize, bool) {
        let (quote, backslash, low) = (
            _mm_set1_epi8(b'"' as i8),
            _mm_set1_epi8(b'\\' as i8),
            _mm_set1_epi8(0x1F),
        );
        while let Some(chunk) = b.get(i..).and_then(|r| r.first_chunk::<16>()) {
            // SAFETY: `chunk` is 16 bytes; unaligned loads are allowed.
            let x = unsafe { _mm_loadu_si128(chunk.as_ptr().cast()) };
            // A byte is at most 0x1F when max(byte, 0x1F) is 0x1F (unsigned).
            let control = _mm_cmpeq_epi8(_mm_max_epu8(x, low), low);
            let hits = _mm_or_si128(
                _mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, backslash)),
                control,
            );
            let m = _mm_movemask_epi8(hits) as u32;
            if m != 0 {
                return (i + m.trailing_zeros() as usize, true);
            }
            i += 16;
        }
        (i, false)
    }

    /// # Safety
    ///
    /// The CPU must have SSE2.
    #[target_feature(enable = "sse2")]
    #[inline]
    pub unsafe fn byte_masks<const N: usize>(block: &[u8; 64], set: &[u8; N]) -> [u64; N] {
        let mut m = [0u64; N];
        for k in 0..4 {
            // SAFETY: `block` is 64 bytes, so bytes 16k..16k + 16 are in it; unaligned loads
            // are allowed.
            let x = unsafe { _mm_loadu_si128(block.as_ptr().add(16 * k).cast()) };
            for (mask, &want) in m.iter_mut().zip(set) {
                let hits = _mm_cmpeq_epi8(x, _mm_set1_epi8(want as i8));
                *mask |= (_mm_movemask_epi8(hits) as u32 as u64) << (16 * k);
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_ranges() {
        assert_eq!(bits(0, 64), u64::MAX);
        assert_eq!(bits(64, 64), 0);
        assert_eq!(bits(3, 5), 0b11000);
        assert_eq!(bits(5, 5), 0);
    }

    proptest::proptest! {
        /// A JSON run ends at the first quote, backslash or control byte, or leaves fewer
        /// than 16 bytes unsearched.
        #[test]
        fn json_runs_end_at_the_first_special_byte(
            b in proptest::collection::vec(proptest::sample::select(b"a\"\\\x00\x1f\x20\x7f\x80\xff".to_vec()), 0..60),
            from in 0usize..60,
        ) {
            let from = from.min(b.len());
            let first = (from..b.len()).find(|&k| matches!(b[k], b'"' | b'\\') || b[k] < 0x20);
            match json_run_end(&b, from) {
                (at, true) => proptest::prop_assert_eq!(Some(at), first),
                (at, false) => {
                    proptest::prop_assert!(b.len() - at < 16);
                    proptest::prop_assert!(first.is_none_or(|f| f >= at));
                }
            }
        }

        /// The SSE2 masks (where built) are the byte-by-byte ones.
        #[test]
        fn masks_match_the_scalar_reference(
            bytes in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::sample::select(b"&=%+a\x00\xff\x80".to_vec()),
                    proptest::num::u8::ANY,
                ],
                64,
            )
        ) {
            let block: [u8; 64] = bytes.try_into().unwrap();
            proptest::prop_assert_eq!(byte_masks(&block, b"&=%+\0"), byte_masks_scalar(&block, b"&=%+\0"));
        }

        /// The masks of a block read in place (AVX-512, where the CPU has it) are those of the
        /// padded block, at every offset, short last blocks and past the end included.
        #[test]
        fn masks_in_place_match_the_padded_block(
            bytes in proptest::collection::vec(proptest::sample::select(b"&=%+a\x00\xff".to_vec()), 0..200),
            at in 0usize..210,
        ) {
            let mut pad = [0u8; 64];
            let want = byte_masks_scalar(block_at(&bytes, at, &mut pad), b"&=%+\0");
            proptest::prop_assert_eq!(masks_at(&bytes, at, b"&=%+\0"), want);
            #[cfg(target_arch = "x86_64")]
            if avx512::available() {
                // SAFETY: checked just above.
                let got = unsafe { avx512::masks_at(&bytes, at, b"&=%+\0") };
                proptest::prop_assert_eq!(got, want);
            }
        }
    }
}
