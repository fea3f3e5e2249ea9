//! The process's allocator: mimalloc, called the way its small-object fast path expects.
//!
//! The `mimalloc` crate's `GlobalAlloc` passes every request to `mi_malloc_aligned`. In
//! mimalloc v3 that takes the plain path only when the block size is a power of two; any
//! other size (a GA4 hit's field vector, most strings) goes through the aligned fallback,
//! which costs a few hundred instructions and may round the block up. Every Rust request with
//! an alignment of at most 16 whose size is a multiple of it is met by a plain size class
//! (classes are multiples of 8, 16 above 16, and a page's first block is 16-aligned), so
//! those go to `mi_malloc`; anything else keeps the aligned calls. This is the dispatch
//! proposed upstream (purpleprotocol/mimalloc_rust#170).

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The gateway's allocator (`#[global_allocator]` in the binary and the benchmarks).
pub struct MiMalloc;

/// mimalloc's `MI_MAX_ALIGN_SIZE`: what every plain allocation is aligned to at least.
const PLAIN_ALIGN: usize = 16;

#[inline(always)]
fn plain(layout: &Layout) -> bool {
    // Alignments are powers of two: a mask, not a division.
    layout.align() <= PLAIN_ALIGN && layout.size() & (layout.align() - 1) == 0
}

// SAFETY: every method forwards to the mimalloc function with the contract `GlobalAlloc`
// asks for: memory of at least `layout.size()` bytes aligned to `layout.align()` (plain
// calls only when `plain` shows that the size class guarantees the alignment, see the module
// header), null on failure, and `mi_free`/`mi_realloc*` only on pointers mimalloc gave out.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if plain(&layout) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if plain(&layout) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: see the impl; `ptr` came from this allocator.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: see the impl; the new size keeps the old alignment.
        unsafe {
            if layout.align() <= PLAIN_ALIGN && new_size & (layout.align() - 1) == 0 {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain and aligned requests alike come back aligned as asked, usable, and freed.
    #[test]
    fn alignment_is_kept_for_every_size_class() {
        let a = MiMalloc;
        for align in [1usize, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [1usize, 3, 8, 24, 40, 48, 88, 100, 1000, 5000, 70_000] {
                let size = size.next_multiple_of(align.min(size.max(1)));
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    continue;
                };
                // SAFETY: `layout` has a non-zero size; the block is written within its size
                // and freed with the same layout.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    p.write_bytes(0xA5, size);
                    let q = a.realloc(p, layout, size * 2);
                    assert_eq!(q as usize % align, 0, "realloc size {size} align {align}");
                    assert_eq!(*q.add(size - 1), 0xA5);
                    a.dealloc(q, Layout::from_size_align(size * 2, align).unwrap());
                    let z = a.alloc_zeroed(layout);
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
