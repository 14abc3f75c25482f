//! A global allocator that counts allocations, for measuring what the
//! processing path allocates per record.
//!
//! A program opts in by installing it; the count then shows in `/metrics`
//! (`process_allocations_total`) and in the instance's last log line.
//!
//! ```
//! #[global_allocator]
//! static ALLOC: stream_core::alloc_count::CountingAllocator =
//!     stream_core::alloc_count::CountingAllocator;
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

/// The system allocator, counting every allocation and reallocation
/// (one relaxed atomic add each).
#[derive(Debug, Clone, Copy, Default)]
pub struct CountingAllocator;

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !INSTALLED.load(Ordering::Relaxed) {
            INSTALLED.store(true, Ordering::Relaxed);
        }
        System.dealloc(ptr, layout)
    }
}

/// Allocations by Rust code since the start (the C libraries' own
/// `malloc` calls, librdkafka's, are not counted); `None` when the
/// program has not installed [`CountingAllocator`].
pub fn allocations() -> Option<u64> {
    let n = ALLOCATIONS.load(Ordering::Relaxed);
    (n > 0 || INSTALLED.load(Ordering::Relaxed)).then_some(n)
}
