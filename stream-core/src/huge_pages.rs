//! Transparent huge pages for the large tables that are read at random:
//! restore's table of entries and its late-write guard, and the stores'
//! key filters.
//!
//! A lookup in a table of tens of megabytes lands on a different 4 KiB
//! page nearly every time, so besides the wait for the cache line it
//! misses the processor's address translation cache (on a virtual machine,
//! a walk of two levels of page tables). With the table on 2 MiB pages the
//! translations of a few hundred megabytes stay cached. Linux backs an
//! anonymous mapping with huge pages when the system says `always` in
//! `/sys/kernel/mm/transparent_hugepage/enabled`, or when it says
//! `madvise` and the range was advised `MADV_HUGEPAGE`, which is what
//! [`advise`] does. Where neither holds, or on other systems, the advice
//! changes nothing.
//!
//! Only the tables of slots are advised, which every lookup reads at
//! random and which are written whole when made. Advising restore's
//! chunks of keys and values too made restores slower (each first write
//! into a chunk's huge page clears 2 MiB at once) and their peak memory
//! higher. Measured in `docs/performance.md` ("Huge pages under the
//! tables").

/// Size of a transparent huge page on x86-64 and most arm64 kernels.
const HUGE_PAGE: usize = 2 << 20;

/// Asks the kernel to back the whole huge pages inside the `len` bytes at
/// `ptr` (an allocation not yet written, so that its first writes fault in
/// huge pages) with transparent huge pages. Advice only: nothing changes
/// if the kernel declines.
fn advise(ptr: *const u8, len: usize) {
    let start = (ptr as usize).next_multiple_of(HUGE_PAGE);
    let end = (ptr as usize).saturating_add(len) & !(HUGE_PAGE - 1);
    if end <= start {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: `madvise` with MADV_HUGEPAGE reads and writes no memory; the
    // range is whole pages inside an allocation the caller holds.
    unsafe {
        libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
    }
}

/// A vector of `len` values made by `make`, its memory advised for huge
/// pages before it is written.
pub(crate) fn filled<T>(len: usize, make: impl FnMut() -> T) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(len);
    advise(
        v.as_ptr().cast(),
        len.saturating_mul(std::mem::size_of::<T>()),
    );
    v.resize_with(len, make);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `/proc/self/smaps` says the mapping holding `addr` may use
    /// transparent huge pages; `None` where it does not say.
    #[cfg(target_os = "linux")]
    fn eligible(addr: usize) -> Option<bool> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if let Some((a, b)) = first.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    inside = (a..b).contains(&addr);
                    continue;
                }
            }
            if inside {
                if let Some(v) = line.strip_prefix("THPeligible:") {
                    return Some(v.trim() == "1");
                }
            }
        }
        None
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn should_make_a_large_table_eligible_for_huge_pages_where_the_system_allows_them() {
        let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        let allowed = mode.contains("[always]") || mode.contains("[madvise]");
        let v = filled(4 * HUGE_PAGE / 8, || 0u64);
        let page = (v.as_ptr() as usize).next_multiple_of(HUGE_PAGE);
        // A kernel whose smaps has no THPeligible line (before 5.0) says
        // nothing to check.
        if let Some(e) = eligible(page) {
            assert_eq!(e, allowed, "THP mode {mode:?}");
        }
    }

    #[test]
    fn should_fill_like_the_plain_constructors() {
        let v = filled(3 * HUGE_PAGE / 8, || 7u64);
        assert_eq!(v.len(), 3 * HUGE_PAGE / 8);
        assert!(v.iter().all(|&x| x == 7));
        // Smaller than a page, or empty: nothing to advise, still made.
        assert_eq!(filled(0, || 1u8).len(), 0);
        assert_eq!(filled(10, || 1u8), vec![1u8; 10]);
    }
}
