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
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

#[cfg(feature = "mimalloc")]
mod recycle;
#[cfg(feature = "mimalloc")]
pub use recycle::Recycling;

/// Counters, one per thread for the first [`SLOTS`] threads of the
/// process, each written by its thread alone with a plain load and store:
/// one shared counter (or any locked add) took about 4% of the stream
/// thread's time in the benchmark. Later threads share [`SHARED`].
const SLOTS: usize = 64;

/// One counter on a cache line of its own.
#[repr(align(128))]
struct Slot(AtomicU64);

static COUNTS: [Slot; SLOTS] = [const { Slot(AtomicU64::new(0)) }; SLOTS];
static SHARED: AtomicU64 = AtomicU64::new(0);
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// This thread's slot in [`COUNTS`] (`usize::MAX` until its first
    /// allocation, [`SLOTS`] when it has none). Constant-initialised and
    /// without a destructor, so it never allocates.
    static MY_SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Counts one allocation in the calling thread's slot.
#[inline]
fn count_one() {
    let slot = MY_SLOT
        .try_with(|s| {
            let mut i = s.get();
            if i == usize::MAX {
                i = NEXT_SLOT.fetch_add(1, Ordering::Relaxed).min(SLOTS);
                s.set(i);
            }
            i
        })
        .unwrap_or(SLOTS);
    match COUNTS.get(slot) {
        // Only this thread writes its slot: no read-modify-write needed.
        Some(c) => {
            c.0.store(c.0.load(Ordering::Relaxed) + 1, Ordering::Relaxed)
        }
        None => {
            SHARED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Another allocator (`A`: the system's, or e.g. mimalloc), counting
/// every allocation and reallocation (on a counter of the calling
/// thread's own, without a locked instruction).
#[derive(Debug, Clone, Copy, Default)]
pub struct CountingAllocator<A = System>(pub A);

// SAFETY: every call is forwarded unchanged to the inner allocator.
unsafe impl<A: GlobalAlloc> GlobalAlloc for CountingAllocator<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        self.0.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one();
        self.0.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
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
/// `arena_eager_commit` = 0) and with freed memory returned after 50 ms
/// (`purge_delay`, 1 s by default), both set before the first allocation
/// unless `MIMALLOC_ARENA_EAGER_COMMIT` / `MIMALLOC_PURGE_DELAY` say
/// otherwise: with mimalloc's defaults the benchmark's peak RSS was about
/// 50% higher than with glibc's malloc. With the `mimalloc-override`
/// feature, mimalloc also replaces C's `malloc` in the program
/// (librdkafka's allocations; libmimalloc-sys's `override`).
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
        // Keeps the early hook linked in wherever this allocator is.
        #[cfg(all(feature = "mimalloc-override", target_os = "linux"))]
        std::hint::black_box(&CONFIGURE_EARLY);
        // `mi_option_arena_eager_commit` in mimalloc.h (v2 and v3 alike:
        // the enum keeps deprecated entries so its numbering never
        // changes); libmimalloc-sys does not name it. 2, the default,
        // means "eager on systems that overcommit", Linux among them.
        const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
        // `mi_option_purge_delay`: how long freed memory stays committed
        // (1,000 ms by default in mimalloc v3). librdkafka's fetch and
        // produce buffers come and go in bursts; at 1 s the benchmark's
        // peak RSS was about 20% higher than at 50 ms, which costs a few
        // percent of CPU (docs/performance.md).
        const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
        // SAFETY: reads and sets option values; no allocation.
        unsafe {
            if libmimalloc_sys::mi_option_get(ARENA_EAGER_COMMIT) == 2 {
                libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
            }
            if libmimalloc_sys::mi_option_get(PURGE_DELAY) == 1000 {
                libmimalloc_sys::mi_option_set(PURGE_DELAY, 50);
            }
        }
    }
}

/// Sets the options before anything else runs (ELF `.preinit_array`, run
/// before every constructor): mimalloc also serves C's `malloc` (librdkafka's
/// allocations; feature `override` of libmimalloc-sys), so its first arena
/// is reserved at the C runtime's first `malloc`, before any Rust allocation,
/// and the option must be set by then (feature `mimalloc-override`).
#[cfg(all(feature = "mimalloc-override", target_os = "linux"))]
#[used]
#[link_section = ".preinit_array"]
static CONFIGURE_EARLY: extern "C" fn() = configure_early;

#[cfg(all(feature = "mimalloc-override", target_os = "linux"))]
extern "C" fn configure_early() {
    LeanMimalloc::configure_once();
}

// SAFETY: every call is forwarded to mimalloc, except small blocks a
// recycling thread keeps and hands out again (`recycle`), which are
// mimalloc's blocks too.
#[cfg(feature = "mimalloc")]
unsafe impl GlobalAlloc for LeanMimalloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if let Some(block) = recycle::take(layout) {
            return block;
        }
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
        if !recycle::keep(ptr, layout) {
            mimalloc::MiMalloc.dealloc(ptr, layout)
        }
    }
}

/// Allocations by Rust code since the start (the C libraries' own
/// `malloc` calls, librdkafka's, are not counted); `None` when the
/// program has not installed [`CountingAllocator`].
pub fn allocations() -> Option<u64> {
    let n: u64 = COUNTS
        .iter()
        .map(|c| c.0.load(Ordering::Relaxed))
        .sum::<u64>()
        + SHARED.load(Ordering::Relaxed);
    (n > 0 || INSTALLED.load(Ordering::Relaxed)).then_some(n)
}
