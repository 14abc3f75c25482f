//! A global allocator that counts allocations, for measuring what the
//! processing path allocates per record.
//!
//! A program opts in by installing it; the count then shows in `/metrics`
//! (`process_allocations_total`) and in the instance's last log line.
//!
//! ```
//! #[global_allocator]
//! static ALLOC: stream_core::alloc_count::CountingAllocator =
//!     stream_core::alloc_count::CountingAllocator(std::alloc::System);
//!
//! let before = stream_core::alloc_count::allocations().unwrap_or(0);
//! let v = vec![1u8; 10];
//! assert!(stream_core::alloc_count::allocations().unwrap_or(0) > before);
//! # drop(v);
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Another allocator (`A`: the system's, or e.g. mimalloc), counting
/// every allocation and reallocation (one relaxed atomic add each).
#[derive(Debug, Clone, Copy, Default)]
pub struct CountingAllocator<A = System>(pub A);

// SAFETY: every call is forwarded unchanged to the inner allocator.
unsafe impl<A: GlobalAlloc> GlobalAlloc for CountingAllocator<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        self.0.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        self.0.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        self.0.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !INSTALLED.load(Ordering::Relaxed) {
            INSTALLED.store(true, Ordering::Relaxed);
        }
        self.0.dealloc(ptr, layout)
    }
}

/// [`CountingAllocator`] over mimalloc (feature `mimalloc`): the
/// allocator of the programs in `apps/` and `tests/`. Against glibc's
/// malloc it cut the benchmark's CPU per record by about a sixth
/// (docs/performance.md).
#[cfg(feature = "mimalloc")]
pub type Mimalloc = CountingAllocator<LeanMimalloc>;

/// The value of a [`Mimalloc`] global allocator.
#[cfg(feature = "mimalloc")]
pub const MIMALLOC: Mimalloc = CountingAllocator(LeanMimalloc);

/// mimalloc without eager commit of its arenas (option
/// `arena_eager_commit` = 0, set before the first allocation unless
/// `MIMALLOC_ARENA_EAGER_COMMIT` says otherwise): with the default, the
/// benchmark's peak RSS was about 50% higher than with glibc's malloc;
/// without it, within 10%.
#[cfg(feature = "mimalloc")]
#[derive(Debug, Clone, Copy, Default)]
pub struct LeanMimalloc;

#[cfg(feature = "mimalloc")]
impl LeanMimalloc {
    fn configure_once() {
        static CONFIGURED: AtomicBool = AtomicBool::new(false);
        if CONFIGURED.load(Ordering::Relaxed) {
            return;
        }
        CONFIGURED.store(true, Ordering::Relaxed);
        // `mi_option_arena_eager_commit` in mimalloc.h (v2 and v3 alike:
        // the enum keeps deprecated entries so its numbering never
        // changes); libmimalloc-sys does not name it. 2, the default,
        // means "eager on systems that overcommit", Linux among them.
        const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
        // SAFETY: reads and sets one option value; no allocation.
        unsafe {
            if libmimalloc_sys::mi_option_get(ARENA_EAGER_COMMIT) == 2 {
                libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
            }
        }
    }
}

// SAFETY: every call is forwarded unchanged to mimalloc.
#[cfg(feature = "mimalloc")]
unsafe impl GlobalAlloc for LeanMimalloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::configure_once();
        mimalloc::MiMalloc.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::configure_once();
        mimalloc::MiMalloc.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        mimalloc::MiMalloc.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        mimalloc::MiMalloc.dealloc(ptr, layout)
    }
}

/// Allocations by Rust code since the start (the C libraries' own
/// `malloc` calls, librdkafka's, are not counted); `None` when the
/// program has not installed [`CountingAllocator`].
pub fn allocations() -> Option<u64> {
    let n = ALLOCATIONS.load(Ordering::Relaxed);
    (n > 0 || INSTALLED.load(Ordering::Relaxed)).then_some(n)
}
