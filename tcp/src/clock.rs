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
const SMOLTCP_MIN_RTO_US: i128 = 1_000_000;

/// Converts between the caller's (real) clock and smoltcp's (virtual) clock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    /// Real microseconds that correspond to one smoltcp second.
    min_rto_us: i128,
}

impl Clock {
    /// `min_rto` must be within 1 ms ..= 1 s (checked by the config).
    pub(crate) fn new(min_rto: Duration) -> Self {
        Self {
            min_rto_us: i128::from(min_rto.total_micros().max(1)),
        }
    }

    /// The factor by which smoltcp's clock runs faster than the real one.
    pub(crate) fn factor(&self) -> f64 {
        SMOLTCP_MIN_RTO_US as f64 / self.min_rto_us as f64
    }

    pub(crate) fn to_virt(self, real: Instant) -> Instant {
        let v = (i128::from(real.total_micros()) * SMOLTCP_MIN_RTO_US).div_euclid(self.min_rto_us);
        Instant::from_micros(clamp_i64(v))
    }

    pub(crate) fn dur_to_virt(self, real: Duration) -> Duration {
        let v = i128::from(real.total_micros()) * SMOLTCP_MIN_RTO_US / self.min_rto_us;
        Duration::from_micros(u64::try_from(v).unwrap_or(u64::MAX))
    }

    /// The first real instant at which smoltcp's clock reads at least `virt`.
    pub(crate) fn to_real_ceil(self, virt: Instant) -> Instant {
        let n = i128::from(virt.total_micros()) * self.min_rto_us;
        let q = n.div_euclid(SMOLTCP_MIN_RTO_US);
        let r = n.rem_euclid(SMOLTCP_MIN_RTO_US);
        Instant::from_micros(clamp_i64(if r == 0 { q } else { q + 1 }))
    }
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
    fn identity_at_one_second() {
        let c = Clock::new(Duration::from_secs(1));
        let t = Instant::from_micros(987_654_321);
        assert_eq!(c.to_virt(t), t);
        assert_eq!(c.to_real_ceil(t), t);
    }
}
