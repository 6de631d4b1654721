//! The process's allocator: mimalloc, called the way it is fast.
//!
//! The `mimalloc` crate hands every allocation to `mi_malloc_aligned`, whatever its
//! alignment. In mimalloc 3 that call takes its fast path only while the size class's page
//! has a free block ready. When the page's free list runs dry, a block of a size class that
//! is not a power of two (48, 80, 96, 160 bytes, ...) is served by over-allocating from a
//! larger class instead, and nothing on that path refills the dry page, so every later
//! allocation of that class goes the slow way too. callgrind counted nine of them per HTTP
//! API call, about 1,900 instructions, a twentieth of a state get (docs/benchmarks.md, "The
//! proxy floor, fourth pass").
//!
//! `mi_malloc` aligns every block to 16 bytes, or to its size below that (its size classes
//! are 8 bytes and then multiples of 16), so a layout whose alignment is at most 16 and at
//! most its size needs nothing more: it goes to `mi_malloc`, as Rust's own `System`
//! allocator sends such layouts to `malloc`. Larger alignments (tokio's task cells) keep
//! `mi_malloc_aligned`.
//!
//! Built without transparent huge pages (the `no_thp` feature), which would round an idle
//! sidecar's heap up to 2 MiB pages.

// The one other audited exception to the workspace's `unsafe_code = "deny"`: a global
// allocator is an `unsafe impl`, and its calls into mimalloc are FFI.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The largest alignment every `mi_malloc` block of at least that size has
/// (`MI_MAX_ALIGN_SIZE`).
const MALLOC_ALIGN: usize = 16;

/// Whether `mi_malloc(size)` is aligned enough for `layout`.
fn plain(align: usize, size: usize) -> bool {
    align <= MALLOC_ALIGN && align <= size
}

pub struct Mimalloc;

// SAFETY: every block comes from mimalloc and goes back to it (`mi_free` takes blocks from
// both `mi_malloc` and `mi_malloc_aligned`); a block is aligned as its layout asks, by
// mimalloc's guarantee above or by asking for the alignment.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: FFI calls with a size and a power-of-two alignment from a valid layout.
        unsafe {
            if plain(layout.align(), layout.size()) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe {
            if plain(layout.align(), layout.size()) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator, so from mimalloc.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator; the alignment is the layout's.
        unsafe {
            if plain(layout.align(), new_size) {
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

    /// Every layout comes back aligned as asked, and holds what is written into it, through
    /// growth and shrinking.
    #[test]
    fn blocks_are_aligned_as_their_layouts_ask() {
        let alloc = Mimalloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in [1, 7, 8, 15, 16, 24, 40, 48, 80, 100, 160, 1000, 70_000] {
                let layout = Layout::from_size_align(size, align).unwrap_or_else(|e| panic!("{e}"));
                // SAFETY: a non-zero size; each block is freed once with its layout.
                unsafe {
                    let p = alloc.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size}, align {align}");
                    p.write_bytes(0xab, size);
                    let grown = alloc.realloc(p, layout, size * 3);
                    assert_eq!(grown as usize % align, 0, "grown {size}, align {align}");
                    assert_eq!(*grown.add(size - 1), 0xab);
                    let layout3 =
                        Layout::from_size_align(size * 3, align).unwrap_or_else(|e| panic!("{e}"));
                    let shrunk = alloc.realloc(grown, layout3, size.div_ceil(2));
                    assert_eq!(shrunk as usize % align, 0, "shrunk {size}, align {align}");
                    assert_eq!(*shrunk, 0xab);
                    alloc.dealloc(
                        shrunk,
                        Layout::from_size_align(size.div_ceil(2), align)
                            .unwrap_or_else(|e| panic!("{e}")),
                    );
                    let z = alloc.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|b| *b == 0));
                    alloc.dealloc(z, layout);
                }
            }
        }
    }
}
