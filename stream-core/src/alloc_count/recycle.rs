//! Small freed blocks kept on a per-thread stack and handed out again
//! first, on the threads that ask for it (the stream threads), in front of
//! mimalloc.
//!
//! mimalloc frees a block onto its page's `local_free` list and allocates
//! from the page's `free` list until that is empty, then swaps the two: a
//! thread that allocates and frees the same few blocks per record (a
//! record's decoded strings) walks through every block of the page before
//! it meets one again, and each allocation's read of the block's link
//! misses the cache. In the watchlist's profile that read was about a
//! tenth of the stream thread's samples, mostly under the users' JSON
//! parse. Here the last blocks freed are the first handed out again, as
//! glibc's thread cache does, and handing one out reads nothing from it.
//!
//! Bounded: [`DEPTH`] blocks per size class, [`CLASSES`] classes of
//! blocks up to [`MAX_BYTES`], about 70 KiB per thread at most, given back
//! to mimalloc when the thread's [`Recycling`] guard is dropped. A thread
//! without a guard goes to mimalloc directly.

use std::alloc::Layout;
use std::cell::UnsafeCell;
use std::ptr::null_mut;

/// Size classes step by this many bytes; also the largest alignment a
/// kept block serves (every mimalloc block is aligned to at least 8).
const CLASS_BYTES: usize = 8;
/// Number of size classes.
const CLASSES: usize = 32;
/// The largest request kept or served.
pub(crate) const MAX_BYTES: usize = CLASS_BYTES * CLASSES;
/// Blocks kept per class.
const DEPTH: usize = 16;

/// One thread's stacks. Class `i` holds blocks freed from requests of
/// `i * 8 + 1 ..= (i + 1) * 8` bytes ([`class_of`]).
struct Stacks {
    on: bool,
    len: [u8; CLASSES],
    blocks: [[*mut u8; DEPTH]; CLASSES],
}

thread_local! {
    /// Constant-initialised and without a destructor, so that the
    /// allocator can use it on any thread without allocating.
    static STACKS: UnsafeCell<Stacks> = const {
        UnsafeCell::new(Stacks {
            on: false,
            len: [0; CLASSES],
            blocks: [[null_mut(); DEPTH]; CLASSES],
        })
    };
}

/// The class of a request for `layout`, if kept: its size rounded up
/// to [`CLASS_BYTES`]. A block mimalloc allocated for a size, or kept in
/// place for it through `mi_realloc`, is at least that long (its block
/// sizes are multiples of 8), so a block kept under its layout's class
/// serves any request of that class. (`mi_good_size`, which would put
/// mimalloc's whole size bins in one class, took 4% of the stream thread's
/// samples.)
#[inline]
fn class_of(layout: Layout) -> Option<usize> {
    let size = layout.size();
    (layout.align() <= CLASS_BYTES && size <= MAX_BYTES && size > 0)
        .then(|| size.div_ceil(CLASS_BYTES) - 1)
}

/// A kept block for `layout`, if this thread recycles and has one.
#[inline]
pub(crate) fn take(layout: Layout) -> Option<*mut u8> {
    let class = class_of(layout)?;
    STACKS
        .try_with(|s| {
            // SAFETY: the stacks are this thread's own, and nothing the
            // allocator calls while this borrow lives touches them.
            let s = unsafe { &mut *s.get() };
            let n = s.len[class] as usize;
            if !s.on || n == 0 {
                return None;
            }
            s.len[class] = (n - 1) as u8;
            Some(s.blocks[class][n - 1])
        })
        .ok()
        .flatten()
}

/// Keeps the block `ptr` (allocated by mimalloc for `layout`) if this
/// thread recycles and its class has room; `false` when the caller must
/// free it.
///
/// # Safety
/// `ptr` must be a live mimalloc block allocated for `layout`, not used
/// after this call returns `true`.
#[inline]
pub(crate) unsafe fn keep(ptr: *mut u8, layout: Layout) -> bool {
    let Some(class) = class_of(layout) else {
        return false;
    };
    STACKS
        .try_with(|s| {
            // SAFETY: as in `take`.
            let s = unsafe { &mut *s.get() };
            if !s.on {
                return false;
            }
            let n = s.len[class] as usize;
            if n == DEPTH {
                return false;
            }
            s.blocks[class][n] = ptr;
            s.len[class] = (n + 1) as u8;
            true
        })
        .unwrap_or(false)
}

/// While alive, the calling thread keeps its small freed blocks for its
/// next allocations (see the module's documentation); dropping it gives
/// them back. Nested guards on one thread are harmless: the first one
/// dropped ends the recycling.
#[derive(Debug)]
pub struct Recycling {
    _not_send: std::marker::PhantomData<*mut u8>,
}

impl Recycling {
    /// Starts recycling on the calling thread.
    pub fn start() -> Recycling {
        let _ = STACKS.try_with(|s| {
            // SAFETY: this thread's own stacks; no allocation meanwhile.
            unsafe { (*s.get()).on = true };
        });
        Recycling {
            _not_send: std::marker::PhantomData,
        }
    }
}

impl Drop for Recycling {
    fn drop(&mut self) {
        let _ = STACKS.try_with(|s| {
            // SAFETY: this thread's own stacks; `mi_free` does not
            // allocate through the Rust allocator.
            let s = unsafe { &mut *s.get() };
            s.on = false;
            for (len, blocks) in s.len.iter_mut().zip(s.blocks.iter()) {
                for &block in &blocks[..*len as usize] {
                    // SAFETY: a kept block is a live mimalloc block that
                    // nothing else refers to.
                    unsafe { libmimalloc_sys::mi_free(block.cast()) };
                }
                *len = 0;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        match Layout::from_size_align(size, align) {
            Ok(layout) => layout,
            Err(e) => panic!("{size} bytes aligned to {align}: {e}"),
        }
    }

    fn alloc(layout: Layout) -> *mut u8 {
        take(layout).unwrap_or_else(|| {
            // SAFETY: a non-zero size with a valid alignment.
            unsafe { libmimalloc_sys::mi_malloc_aligned(layout.size(), layout.align()).cast() }
        })
    }

    fn free(ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` with `layout` and is not used again.
        if !unsafe { keep(ptr, layout) } {
            unsafe { libmimalloc_sys::mi_free(ptr.cast()) };
        }
    }

    #[test]
    fn should_hand_out_the_last_block_freed_first_while_recycling() {
        let layout = layout(24, 8);
        let guard = Recycling::start();
        let a = alloc(layout);
        let b = alloc(layout);
        free(a, layout);
        free(b, layout);
        assert_eq!(alloc(layout), b);
        assert_eq!(alloc(layout), a);
        free(a, layout);
        free(b, layout);
        drop(guard);
        assert_eq!(
            take(layout),
            None,
            "dropping the guard gives every block back"
        );
    }

    #[test]
    fn should_serve_a_request_only_from_blocks_at_least_as_large() {
        let _guard = Recycling::start();
        for size in 1..=MAX_BYTES {
            let layout = layout(size, 1);
            let p = alloc(layout);
            // SAFETY: a live block.
            let usable = unsafe { libmimalloc_sys::mi_usable_size(p.cast()) };
            assert!(usable >= size, "a block of {usable} bytes served {size}");
            // SAFETY: writes within the request.
            unsafe { p.write_bytes(0xAB, size) };
            free(p, layout);
        }
    }

    #[test]
    fn should_not_keep_blocks_on_a_thread_that_did_not_ask() {
        let layout = layout(32, 8);
        let other = std::thread::spawn(move || {
            // SAFETY: a valid size and alignment.
            let p = unsafe { libmimalloc_sys::mi_malloc(32) }.cast::<u8>();
            // SAFETY: a live block allocated for `layout`.
            assert!(!unsafe { keep(p, layout) });
            unsafe { libmimalloc_sys::mi_free(p.cast()) };
            assert_eq!(take(layout), None);
        });
        assert!(other.join().is_ok(), "the other thread's checks passed");
    }

    #[test]
    fn should_leave_over_aligned_and_large_requests_to_mimalloc() {
        assert_eq!(class_of(layout(32, 16)), None);
        assert_eq!(class_of(layout(MAX_BYTES + 1, 8)), None);
        assert_eq!(class_of(layout(MAX_BYTES, 8)), Some(CLASSES - 1));
        assert_eq!(class_of(layout(1, 1)), Some(0));
        assert_eq!(class_of(layout(8, 8)), Some(0));
        assert_eq!(class_of(layout(9, 1)), Some(1));
    }
}
