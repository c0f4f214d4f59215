//! How the C allocator treats the memory a tunnel frees.
//!
//! A tunnel allocates and frees a chunk-sized buffer for every message it moves. glibc's
//! defaults hand freed memory back to the system as soon as a few hundred KiB of it sit at
//! the top of a heap, and take it back on the next allocation: under load that is a `brk` or
//! `madvise` call, and page faults on freshly zeroed pages, every few messages. Letting a
//! heap keep up to [`KEEP_FREE`] removes the churn. It costs nothing at start, and after a
//! burst of traffic at most that much per heap stays with the process until it is used
//! again.

/// How much freed memory may sit at the top of a heap before it goes back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const KEEP_FREE: libc::c_int = 2 << 20;

/// Allocations at least this large get pages of their own from the system. It is fixed
/// above the largest message, so that buffers for messages always come from the heap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const OWN_PAGES_FROM: libc::c_int = 2 << 20;

/// Tunes the allocator for moving data; call it first thing, before any thread starts.
#[allow(unsafe_code)] // a foreign call into libc
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's parameters; it is called before other threads
    // exist, and an unknown parameter is refused by returning 0, which changes nothing.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_FREE);
        libc::mallopt(libc::M_MMAP_THRESHOLD, OWN_PAGES_FROM);
    }
}
