//! Time dilation: how a configurable minimum RTO is had from an unpatched smoltcp.
//!
//! smoltcp 0.13 fixes the RTO floor at one second (`RTTE_MIN_RTO`), a constant
//! with no setter. A data-centre proxy wants a floor of tens of milliseconds.
//! Rather than carry a patched smoltcp, the stack runs smoltcp on a dilated clock:
//! smoltcp sees `virtual = real * (1 s / min_rto)`. Every duration smoltcp
//! measures (RTT samples) or is handed (ACK delay, keep-alive, handshake
//! timeout) is scaled by the same factor, so the only things that change in
//! real time are smoltcp's own constants: the RTO floor, the initial RTO (1 s)
//! and the RTO ceiling (60 s) all become `* min_rto / 1 s`. Deadlines smoltcp
//! reports are converted back (rounded up, so a timer never fires early in
//! smoltcp's view). The user timeout is not smoltcp's: the stack enforces it
//! on the real clock.
//!
//! Side effects, all accounted for in the stack: smoltcp's TIME-WAIT (10 s) is
//! never used (the stack keeps its own compact TIME-WAIT records); the ARP
//! entry lifetime (60 s) and the neighbour-miss silence (1 s) shrink by the
//! same factor, so ARP refreshes are more frequent and a socket waiting for a
//! neighbour is woken by the ARP reply itself (see `Stack`), not by the timer.

use smoltcp::time::{Duration, Instant};

/// smoltcp's fixed RTO floor, in microseconds.
const SMOLTCP_MIN_RTO_US: i64 = 1_000_000;

/// Converts between the caller's (real) clock and smoltcp's (virtual) clock.
///
/// `virtual = real * num / den`, with `num / den = 1 s / min_rto` reduced
/// to lowest terms (30 ms gives 100 / 3), so the conversions a poll makes
/// are 64-bit multiplications and divisions; 128-bit arithmetic is only
/// the fallback for products that overflow 64 bits (instants centuries
/// away).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    num: i64,
    den: i64,
}

impl Clock {
    /// `min_rto` must be within 1 ms ..= 1 s (checked by the config).
    pub(crate) fn new(min_rto: Duration) -> Self {
        let min_rto_us = i64::try_from(min_rto.total_micros().max(1)).unwrap_or(i64::MAX);
        let g = gcd(SMOLTCP_MIN_RTO_US, min_rto_us);
        Self {
            num: SMOLTCP_MIN_RTO_US / g,
            den: min_rto_us / g,
        }
    }

    /// The factor by which smoltcp's clock runs faster than the real one.
    pub(crate) fn factor(&self) -> f64 {
        self.num as f64 / self.den as f64
    }

    pub(crate) fn to_virt(self, real: Instant) -> Instant {
        Instant::from_micros(mul_div_floor(real.total_micros(), self.num, self.den))
    }

    pub(crate) fn dur_to_virt(self, real: Duration) -> Duration {
        let us = i64::try_from(real.total_micros()).unwrap_or(i64::MAX);
        Duration::from_micros(
            u64::try_from(mul_div_floor(us, self.num, self.den)).unwrap_or(u64::MAX),
        )
    }

    /// The first real instant at which smoltcp's clock reads at least `virt`.
    pub(crate) fn to_real_ceil(self, virt: Instant) -> Instant {
        // ceil(v * den / num) = -floor(-v * den / num)
        let neg = mul_div_floor(virt.total_micros().saturating_neg(), self.den, self.num);
        Instant::from_micros(neg.saturating_neg())
    }
}

/// `floor(a * b / c)` for `b, c > 0`, clamped to `i64`.
fn mul_div_floor(a: i64, b: i64, c: i64) -> i64 {
    match a.checked_mul(b) {
        Some(n) => n.div_euclid(c),
        None => clamp_i64((i128::from(a) * i128::from(b)).div_euclid(i128::from(c))),
    }
}

fn gcd(mut a: i64, mut b: i64) -> i64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

fn clamp_i64(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_never_wakes_early() {
        let c = Clock::new(Duration::from_millis(30));
        for us in [0i64, 1, 7, 29_999, 30_000, 123_456_789, -5] {
            let real = Instant::from_micros(us);
            let v = c.to_virt(real);
            // Converting a virtual deadline back gives a real instant whose
            // virtual image is not before the deadline.
            let back = c.to_real_ceil(v);
            assert!(c.to_virt(back) >= v, "us={us}");
            assert!(
                back <= real,
                "ceil must not overshoot the original: us={us}"
            );
        }
        // One smoltcp second is one min_rto of real time.
        assert_eq!(
            c.to_real_ceil(Instant::from_secs(1)),
            Instant::from_millis(30)
        );
        assert_eq!(
            c.dur_to_virt(Duration::from_millis(3)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn matches_exact_rational_arithmetic() {
        for rto_ms in [1, 7, 30, 200, 333, 1000] {
            let c = Clock::new(Duration::from_millis(rto_ms));
            let m = i128::from(rto_ms) * 1000;
            for us in [
                0i64,
                1,
                -1,
                29_999,
                123_456_789,
                -987_654,
                i64::MAX / 3,
                i64::MIN / 5,
            ] {
                let v = (i128::from(us) * 1_000_000).div_euclid(m);
                assert_eq!(
                    c.to_virt(Instant::from_micros(us)).total_micros(),
                    clamp_i64(v),
                    "to_virt rto={rto_ms} us={us}"
                );
                let n = i128::from(us) * m;
                let q = n.div_euclid(1_000_000) + i128::from(n.rem_euclid(1_000_000) != 0);
                assert_eq!(
                    c.to_real_ceil(Instant::from_micros(us)).total_micros(),
                    clamp_i64(q),
                    "to_real_ceil rto={rto_ms} us={us}"
                );
            }
        }
    }

    #[test]
    fn identity_at_one_second() {
        let c = Clock::new(Duration::from_secs(1));
        let t = Instant::from_micros(987_654_321);
        assert_eq!(c.to_virt(t), t);
        assert_eq!(c.to_real_ceil(t), t);
    }
}
