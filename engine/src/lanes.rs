//! What every polling lcore shares, and the software hand-over of frames
//! to the lcore that owns their flow (DPDK builds only).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crossbeam_queue::ArrayQueue;
use dpuproxy_dp::steer::{FrameKind, Steering, classify};
use dpuproxy_dp::{CpuSet, Mbuf, Mempool};

use crate::{LcoreCounters, RunContext};

/// Handed-over frames an lcore takes per turn.
pub(crate) const STEER_BUDGET: usize = 256;
/// How long an lcore waits for the others to report their CPUs.
const CPU_REPORT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What every polling lcore shares: read-only settings, atomics and the
/// lock-free hand-over rings. The only locks behind it are the L7 core's
/// shard locks (`shared`: affinity table, token cache) and the CPU report
/// taken once at start.
pub(crate) struct Lanes<'s, 'p> {
    pub(crate) ctx: RunContext<'s>,
    /// Set when one lcore fails: the others stop too.
    pub(crate) abort: AtomicBool,
    pub(crate) pool: &'p Mempool<'p>,
    pub(crate) mac: [u8; 6],
    pub(crate) steering: Steering,
    /// Our key and RETA are programmed into the port.
    pub(crate) hardware: bool,
    /// `rings[q]`: frames other lcores received for flows queue `q` owns.
    pub(crate) rings: Vec<ArrayQueue<Mbuf<'p>>>,
    /// CPUs each lcore may run on, once it has reported them (at start).
    pub(crate) cpu_sets: std::sync::Mutex<Vec<Option<CpuSet>>>,
}

/// An lcore's loop counters, counted locally and published every 100 ms
/// (no shared cache line written per packet).
#[derive(Default)]
pub(crate) struct LoopCounts {
    pub(crate) idle: u64,
    pub(crate) rx_cycles: u64,
    pub(crate) processing_cycles: u64,
    pub(crate) tx_cycles: u64,
    pub(crate) busy_turns: u64,
    pub(crate) idle_turns: u64,
    pub(crate) rx_packets: u64,
    pub(crate) out: u64,
    pub(crate) dropped: u64,
    pub(crate) handed_in: u64,
    pub(crate) hash_checked: u64,
    pub(crate) hash_mismatch: u64,
}

impl LoopCounts {
    /// Books one turn that began at `start`, received until `rx_done`,
    /// processed until `processed` and flushed until `end` (TSC): busy
    /// turns split into the three phases, an idle turn whole.
    pub(crate) fn book_turn(
        &mut self,
        worked: bool,
        start: u64,
        rx_done: u64,
        processed: u64,
        end: u64,
    ) {
        if worked {
            self.busy_turns += 1;
            self.rx_cycles += rx_done - start;
            self.processing_cycles += processed - rx_done;
            self.tx_cycles += end - processed;
        } else {
            self.idle_turns += 1;
            self.idle += end - start;
        }
    }

    /// Cycles of turns that did work: the three phases together.
    pub(crate) fn busy(&self) -> u64 {
        self.rx_cycles + self.processing_cycles + self.tx_cycles
    }

    pub(crate) fn publish(&self, to: &LcoreCounters) {
        to.busy_cycles.store(self.busy(), Ordering::Relaxed);
        to.idle_cycles.store(self.idle, Ordering::Relaxed);
        to.rx_cycles.store(self.rx_cycles, Ordering::Relaxed);
        to.processing_cycles
            .store(self.processing_cycles, Ordering::Relaxed);
        to.tx_cycles.store(self.tx_cycles, Ordering::Relaxed);
        to.busy_turns.store(self.busy_turns, Ordering::Relaxed);
        to.idle_turns.store(self.idle_turns, Ordering::Relaxed);
        to.rx_packets.store(self.rx_packets, Ordering::Relaxed);
        to.steered_out.store(self.out, Ordering::Relaxed);
        to.steer_dropped.store(self.dropped, Ordering::Relaxed);
        to.steered_in.store(self.handed_in, Ordering::Relaxed);
        to.rss_hash_checked
            .store(self.hash_checked, Ordering::Relaxed);
        to.rss_hash_mismatch
            .store(self.hash_mismatch, Ordering::Relaxed);
    }
}

/// Sets `abort` when dropped armed: an lcore that fails or panics stops
/// the others.
pub(crate) struct AbortOnDrop<'a>(pub(crate) &'a AtomicBool, pub(crate) bool);

impl Drop for AbortOnDrop<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

impl<'p> Lanes<'_, 'p> {
    pub(crate) fn stopping(&self) -> bool {
        self.ctx.stop.load(Ordering::Relaxed) || self.abort.load(Ordering::Relaxed)
    }

    /// Decides where a frame from the wire goes: `Some` to handle it on
    /// `queue`, `None` when it was handed to its owner (or dropped on a
    /// full ring, counted). ARP replies are also copied to every other
    /// lcore.
    pub(crate) fn steer(
        &self,
        queue: u16,
        m: Mbuf<'p>,
        counts: &mut LoopCounts,
    ) -> Option<Mbuf<'p>> {
        if self.rings.len() < 2 {
            return Some(m);
        }
        match classify(m.data()) {
            FrameKind::Tcp(t) => {
                // With our key programmed, the NIC's hash must be ours: a
                // difference means the hardware hashes otherwise (counted;
                // the hand-over keeps the flow correct either way).
                let hash = self.steering.hash(&t);
                if self.hardware
                    && let Some(nic) = m.rss_hash()
                {
                    counts.hash_checked += 1;
                    if nic != hash {
                        counts.hash_mismatch += 1;
                    }
                }
                let owner = self.steering.owner_of_hash(hash);
                if owner == queue {
                    return Some(m);
                }
                match self.rings[usize::from(owner)].push(m) {
                    Ok(()) => counts.out += 1,
                    Err(dropped) => {
                        drop(dropped);
                        counts.dropped += 1;
                    }
                }
                None
            }
            FrameKind::ArpReply => {
                for (q, ring) in self.rings.iter().enumerate() {
                    if q == usize::from(queue) {
                        continue;
                    }
                    let copy = self
                        .pool
                        .alloc()
                        .and_then(|mut c| c.extend_from_slice(m.data()).then_some(c));
                    match copy.map(|c| ring.push(c)) {
                        Some(Ok(())) => counts.out += 1,
                        // A refused push hands the copy back; it is freed here.
                        _ => counts.dropped += 1,
                    }
                }
                Some(m)
            }
            FrameKind::Other => Some(m),
        }
    }

    /// Records this thread's CPUs for `queue` and reports whether another
    /// polling lcore may run on one of them (then idle turns yield the
    /// CPU). Waits, bounded, for the others to report.
    pub(crate) fn shares_cpu(&self, queue: u16) -> bool {
        let mine = CpuSet::of_this_thread();
        if let Ok(mut sets) = self.cpu_sets.lock() {
            sets[usize::from(queue)] = mine;
        }
        let Some(mine) = mine else {
            return false;
        };
        let start = Instant::now();
        loop {
            let (all_known, shared) = match self.cpu_sets.lock() {
                Ok(sets) => (
                    sets.iter().all(Option::is_some),
                    sets.iter().enumerate().any(|(q, other)| {
                        q != usize::from(queue) && other.is_some_and(|o| mine.meets(&o))
                    }),
                ),
                Err(_) => return false,
            };
            if all_known || start.elapsed() > CPU_REPORT_WAIT || self.stopping() {
                return shared;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

/// The TSC `wait` after TSC `at`, at `hz` ticks per second (saturating:
/// `Duration::MAX` is never).
pub(crate) fn tsc_after(at: u64, wait: std::time::Duration, hz: u64) -> u64 {
    let cycles = wait.as_nanos().saturating_mul(u128::from(hz)) / 1_000_000_000;
    at.saturating_add(u64::try_from(cycles).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::{LoopCounts, tsc_after};
    use std::time::Duration;

    #[test]
    fn tsc_after_converts_a_wait_at_the_calibrated_rate() {
        let hz = 2_400_000_000;
        assert_eq!(tsc_after(1_000, Duration::ZERO, hz), 1_000);
        assert_eq!(tsc_after(1_000, Duration::from_micros(5), hz), 13_000);
        assert_eq!(tsc_after(0, Duration::from_secs(3), hz), 7_200_000_000);
        assert_eq!(tsc_after(1, Duration::MAX, hz), u64::MAX);
        assert_eq!(
            tsc_after(u64::MAX - 1, Duration::from_secs(1), hz),
            u64::MAX
        );
    }

    #[test]
    fn a_busy_turn_is_split_into_its_phases_and_an_idle_turn_is_booked_whole() {
        let mut c = LoopCounts::default();
        c.book_turn(true, 100, 130, 190, 200);
        c.book_turn(false, 200, 210, 215, 250);
        assert_eq!(
            (c.rx_cycles, c.processing_cycles, c.tx_cycles),
            (30, 60, 10)
        );
        assert_eq!((c.busy(), c.idle), (100, 50));
        assert_eq!((c.busy_turns, c.idle_turns), (1, 1));
    }
}
