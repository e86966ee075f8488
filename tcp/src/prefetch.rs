//! A cache prefetch hint, the one `unsafe` of this crate.

/// Ask the CPU to start loading the cache lines that hold `value`, for a
/// read soon after. A hint only: nothing is read, written or checked, and
/// on targets without a prefetch instruction here it does nothing.
#[inline(always)]
pub(crate) fn prefetch<T>(value: &T) {
    prefetch_lines((value as *const T).cast(), core::mem::size_of::<T>());
}

/// [`prefetch_addr`] for every 64-byte cache line of the `len` bytes at `p`.
#[inline(always)]
pub(crate) fn prefetch_lines(p: *const u8, len: usize) {
    let skew = p as usize % 64;
    let lines = (skew + len.max(1)).div_ceil(64);
    let first = p.wrapping_sub(skew);
    for i in 0..lines {
        prefetch_addr(first.wrapping_add(i * 64));
    }
}

/// [`prefetch`] by address (any address: a prefetch never faults).
#[inline(always)]
#[allow(unsafe_code)]
pub(crate) fn prefetch_addr(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 never faults and does not access memory
    // architecturally, whatever the address. SSE is part of the x86_64
    // baseline.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: PRFM is a hint that never faults and changes no register or
    // memory, whatever the address.
    unsafe {
        core::arch::asm!("prfm pldl1keep, [{0}]", in(reg) p, options(nostack, readonly, preserves_flags));
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Aligned or not, any length, and the null address: nothing is read
    /// and the line arithmetic does not overflow (debug builds check).
    #[test]
    fn hints_never_fault_or_overflow() {
        let bytes = [7u8; 300];
        for offset in [0, 1, 63, 64, 65, 200] {
            prefetch_lines(bytes[offset..].as_ptr(), 300 - offset);
        }
        prefetch(&bytes);
        prefetch_lines(core::ptr::null(), 0);
        prefetch_addr(core::ptr::null());
        assert_eq!(bytes[299], 7);
    }
}
