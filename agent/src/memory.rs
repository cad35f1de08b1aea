//! glibc malloc settings. A scrape renders the whole exposition (20 MiB at 10,000
//! mounts) on a blocking-pool thread, and each thread may get its own malloc arena
//! (up to 8 per core): the freed render buffers then stay in several arenas and the
//! RSS climbs to several times the exposition size (316 MiB at 10,000 mounts,
//! bench/mounts10k.py). Two arenas, and buffers of 256 KiB or more always mapped
//! (so that freeing them returns the memory), keep it near what is live.
//! musl's allocator needs none of this.

/// Applies the settings; call at start, before any thread exists.
pub fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; no memory is touched.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

/// Returns the free pages inside malloc's heaps to the kernel. After a render of
/// a big exposition, the small allocations it and a concurrent discovery freed
/// leave holes that glibc does not give back on its own (10,000 mounts with mount
/// churn during scrapes: 107 MiB retained against 38 MiB live). A no-op elsewhere.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
