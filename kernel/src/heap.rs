//! Giving freed heap memory back to the system after a burst.
//!
//! glibc keeps what connections freed in its arenas (one per worker
//! thread), so a burst of thousands of connections would leave the process
//! at its peak size for good. [`trim_if_slack`] hands the free part back
//! when it is large; the data paths' housekeeping calls it every few
//! seconds. On other C libraries it does nothing.

/// Free heap bytes above which a trim is worth its cost.
pub const TRIM_SLACK: u64 = 8 * 1024 * 1024;

/// Free heap bytes held by the allocator (glibc), if known.
pub fn free_heap_bytes() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's statistics; it takes
        // no arguments and returns a plain struct by value.
        let info = unsafe { libc::mallinfo2() };
        Some(info.fordblks as u64)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// Give free heap memory back to the system when more than
/// [`TRIM_SLACK`] is held. Returns the free bytes seen (0 when unknown).
pub fn trim_if_slack() -> u64 {
    let free = free_heap_bytes().unwrap_or(0);
    if free > TRIM_SLACK {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim(0) is thread-safe (it locks each arena in
        // turn) and only releases memory the allocator owns and does not use.
        unsafe {
            libc::malloc_trim(0);
        }
        tracing::debug!(free_bytes = free, "heap trimmed after a burst");
    }
    free
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_memory_is_given_back() {
        let Some(_) = free_heap_bytes() else {
            return;
        };
        // 64 MiB in many small blocks, then freed.
        let blocks: Vec<Vec<u8>> = (0..16_384).map(|i| vec![i as u8; 4096]).collect();
        drop(blocks);
        let before = free_heap_bytes().unwrap();
        assert!(trim_if_slack() >= before.min(TRIM_SLACK));
        assert!(free_heap_bytes().unwrap() <= before);
    }
}
