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
    let (skew, lines) = line_span(p as usize, len);
    let first = p.wrapping_sub(skew);
    for i in 0..lines {
        prefetch_addr(first.wrapping_add(i * 64));
    }
}

/// For `len` bytes at address `addr`: how far `addr` lies into its cache
/// line, and how many lines the bytes touch (at least one).
fn line_span(addr: usize, len: usize) -> (usize, usize) {
    let skew = addr % 64;
    (skew, (skew + len.max(1)).div_ceil(64))
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

    /// The lines a span touches, aligned or not (a start off a line
    /// boundary once overflowed); and the hints run on real and null
    /// addresses without effect.
    #[test]
    fn spans_cover_exactly_the_lines_touched() {
        assert_eq!(line_span(0, 0), (0, 1));
        assert_eq!(line_span(128, 64), (0, 1));
        assert_eq!(line_span(128, 65), (0, 2));
        assert_eq!(line_span(191, 1), (63, 1));
        assert_eq!(line_span(191, 2), (63, 2));
        assert_eq!(line_span(200, 200), (8, 4));
        assert_eq!(line_span(usize::MAX - 63, 64), (0, 1));
        let bytes = [7u8; 300];
        for offset in [0, 1, 63, 64, 65, 200] {
            prefetch_lines(bytes[offset..].as_ptr(), 300 - offset);
        }
        prefetch(&bytes);
        prefetch_addr(core::ptr::null());
    }
}
