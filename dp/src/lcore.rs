//! The per-lcore run-to-completion loop skeleton.
//!
//! One turn: `rx_burst` → the handler for each packet (it may queue
//! packets on the [`TxBatch`]) → `tick` → one tx flush. A turn that
//! received, queued or sent anything counts its TSC cycles as busy,
//! otherwise as idle, like OVS-DPDK's pmd-stats: busy / (busy + idle) is
//! the lcore's load and busy cycles per packet is the cost of the work.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dpuproxy_dpdk_sys as sys;

use crate::stats::{LcoreStats, TxStats};
use crate::{Eal, MAX_BURST, Mbuf, Port, TxBatch};

/// The TSC (or the arch's constant-rate counter on aarch64).
#[inline]
pub fn tsc() -> u64 {
    // SAFETY: reads the cycle counter; no preconditions.
    unsafe { sys::dpuproxy_rte_rdtsc() }
}

/// TSC ticks per second, as the EAL calibrated it.
pub fn tsc_hz() -> u64 {
    // SAFETY: reads the EAL's calibrated value (0 before init).
    unsafe { sys::rte_get_tsc_hz() }
}

/// Knobs of [`run_loop`].
#[derive(Debug, Clone)]
pub struct LoopOptions {
    /// Rx queue to poll (and tx queue to send on).
    pub queue: u16,
    /// Rx burst size (at most [`MAX_BURST`]).
    pub burst: usize,
    /// Extra `tx_burst` calls on a full ring before dropping.
    pub tx_retries: u32,
    /// Call `report` this often (None: never).
    pub report_every: Option<Duration>,
    /// Stop after this long (None: only on `stop`).
    pub run_for: Option<Duration>,
}

impl Default for LoopOptions {
    fn default() -> Self {
        Self {
            queue: 0,
            burst: 32,
            tx_retries: 4,
            report_every: Some(Duration::from_secs(1)),
            run_for: None,
        }
    }
}

fn cycles(hz: u64, d: Duration) -> u64 {
    (hz as u128 * d.as_nanos() / 1_000_000_000).min(u64::MAX as u128) as u64
}

/// Polls `port` until `stop` is set or `opts.run_for` has passed.
///
/// `handler` gets each received packet and the batch to queue replies on;
/// `tick` runs once per turn after the packets (timers go there);
/// `report` runs every `opts.report_every` on this lcore with the counters
/// so far. Returns the final counters; the batch is flushed before return.
pub fn run_loop<'p, H, T, R>(
    port: &Port<'p>,
    opts: &LoopOptions,
    stop: &AtomicBool,
    mut handler: H,
    mut tick: T,
    mut report: R,
) -> (LcoreStats, TxStats)
where
    H: FnMut(Mbuf<'p>, &mut TxBatch<'_, 'p>),
    T: FnMut(u64, &mut TxBatch<'_, 'p>),
    R: FnMut(&LcoreStats, &TxStats),
{
    let hz = tsc_hz();
    let burst = opts.burst.clamp(1, MAX_BURST);
    let mut tx = port.tx_batch(opts.queue, burst, opts.tx_retries);
    let mut rx: Vec<Mbuf<'p>> = Vec::with_capacity(MAX_BURST);
    let mut st = LcoreStats {
        lcore: Eal::current_lcore().unwrap_or(u32::MAX),
        tsc_hz: hz,
        ..LcoreStats::default()
    };
    let start = tsc();
    let deadline = opts.run_for.map(|d| start.saturating_add(cycles(hz, d)));
    let every = opts.report_every.map(|d| cycles(hz, d).max(1));
    let mut next_report = every.map(|e| start + e);
    let mut t0 = start;
    loop {
        let n = port.rx_burst(opts.queue, &mut rx, burst);
        let queued_before = tx.stats().queued;
        for m in rx.drain(..) {
            handler(m, &mut tx);
        }
        tick(t0, &mut tx);
        let sent = tx.flush();
        let t1 = tsc();
        let queued = tx.stats().queued - queued_before;
        st.iterations += 1;
        st.rx_packets += n as u64;
        st.tx_queued += queued;
        if n > 0 || queued > 0 || sent > 0 {
            st.busy_iterations += 1;
            st.busy_cycles += t1 - t0;
        } else {
            st.idle_cycles += t1 - t0;
        }
        t0 = t1;
        if let (Some(next), Some(e)) = (next_report.as_mut(), every)
            && t1 >= *next
        {
            report(&st, &tx.stats());
            *next = t1 + e;
        }
        if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| t1 >= d) {
            break;
        }
    }
    tx.flush();
    let txs = tx.stats();
    (st, txs)
}
