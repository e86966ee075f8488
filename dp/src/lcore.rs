//! The per-lcore run-to-completion loop skeleton.
//!
//! One turn: `rx_burst` → the handler for each packet (it may queue
//! packets on the [`TxBatch`]) → one tx flush. A turn that
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
/// `report` runs every `opts.report_every` on this lcore with the counters
/// so far. Returns the final counters; the batch is flushed before return.
pub fn run_loop<'p, H, R>(
    port: &Port<'p>,
    opts: &LoopOptions,
    stop: &AtomicBool,
    mut handler: H,
    mut report: R,
) -> (LcoreStats, TxStats)
where
    H: FnMut(Mbuf<'p>, &mut TxBatch<'_, 'p>),
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

/// A job for one lcore and, after it ran, its outcome.
struct LaunchSlot<'a, R> {
    job: Option<Box<dyn FnOnce() -> R + Send + 'a>>,
    result: Option<std::thread::Result<R>>,
}

unsafe extern "C" fn run_slot<R>(arg: *mut std::ffi::c_void) -> std::ffi::c_int {
    // SAFETY: `arg` is the `LaunchSlot<R>` that `run_on_lcores` passed for
    // this worker only; it outlives the job because `run_on_lcores` waits
    // for every worker before it returns, and no one else touches it until
    // then.
    let slot = unsafe { &mut *arg.cast::<LaunchSlot<'_, R>>() };
    let Some(job) = slot.job.take() else {
        return -1;
    };
    // A panic must not unwind into DPDK's C frames.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
    let rc = if r.is_ok() { 0 } else { -1 };
    slot.result = Some(r);
    rc
}

/// Runs `jobs[0]` on the calling thread (the main lcore) and `jobs[i]` on
/// the i-th worker lcore of `-l`/`--lcores` (`rte_eal_remote_launch`),
/// and returns when all of them have finished, with each one's result (a
/// panic is caught and returned as `Err`, never unwound through DPDK).
///
/// Jobs may borrow from the caller's stack: nothing returns before every
/// worker is done. Fails without running anything when there are more
/// jobs than lcores. Should a launch fail part-way (a worker busy),
/// `cancel` is called so the jobs already running can stop, they are
/// waited for, and the error is returned.
pub fn run_on_lcores<'a, R: Send + 'a>(
    eal: &Eal,
    jobs: Vec<Box<dyn FnOnce() -> R + Send + 'a>>,
    cancel: impl FnOnce(),
) -> crate::Result<Vec<std::thread::Result<R>>> {
    let main = eal.main_lcore();
    let workers: Vec<u32> = eal.lcores().into_iter().filter(|&l| l != main).collect();
    if jobs.len() > workers.len() + 1 {
        return Err(crate::Error::Config(format!(
            "{} loops need {} lcores, the EAL has {}",
            jobs.len(),
            jobs.len(),
            workers.len() + 1
        )));
    }
    let mut slots: Vec<Box<LaunchSlot<'a, R>>> = jobs
        .into_iter()
        .map(|job| {
            Box::new(LaunchSlot {
                job: Some(job),
                result: None,
            })
        })
        .collect();
    let mut launched: Vec<u32> = Vec::new();
    let mut launch_error = None;
    for (slot, &worker) in slots.iter_mut().skip(1).zip(&workers) {
        let arg: *mut LaunchSlot<'a, R> = &mut **slot;
        // SAFETY: run_slot::<R> matches the slot type; the slot is boxed
        // (stable address) and kept alive until the wait below.
        let rc = unsafe { sys::rte_eal_remote_launch(Some(run_slot::<R>), arg.cast(), worker) };
        if rc != 0 {
            launch_error = Some(crate::Error::Config(format!(
                "rte_eal_remote_launch on lcore {worker}: {}",
                crate::eal::strerror(rc)
            )));
            break;
        }
        launched.push(worker);
    }
    if launch_error.is_none()
        && let Some(first) = slots.first_mut()
        && let Some(job) = first.job.take()
    {
        first.result = Some(std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)));
    }
    if launch_error.is_some() {
        // The workers must be waited for even if `cancel` panics: they
        // borrow the slots and the caller's stack.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(cancel));
    }
    for worker in launched {
        // SAFETY: the worker was launched above; waiting is always allowed
        // from the main lcore.
        unsafe { sys::rte_eal_wait_lcore(worker) };
    }
    if let Some(e) = launch_error {
        return Err(e);
    }
    Ok(slots
        .into_iter()
        .map(|s| {
            s.result
                .unwrap_or_else(|| Err(Box::new("the lcore job did not run")))
        })
        .collect())
}
