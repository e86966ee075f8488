//! The switch's counters and the per-connection pause histogram (relaxed
//! atomics: written by the paths, read by the admin endpoint).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::{Landing, Path};

/// Upper bounds (µs, inclusive) of the pause histogram's buckets; one more
/// bucket counts the rest.
pub const PAUSE_BOUNDS_US: [u64; 10] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 250_000,
];

/// Counters of every switch since start.
#[derive(Debug, Default)]
pub struct SwitchMetrics {
    /// Switches requested.
    pub switches: AtomicU64,
    /// Connections moved to the DPDK path.
    pub moved_to_dpdk: AtomicU64,
    /// Connections moved to the kernel path.
    pub moved_to_kernel: AtomicU64,
    /// Connections the destination could not restore, restored again on
    /// their source.
    pub taken_back: AtomicU64,
    /// Connections lost in a move (reset).
    pub failed: AtomicU64,
    /// Open connections that could not move and stayed on their path
    /// (e.g. a kernel connection with TCP timestamps).
    pub stayed: AtomicU64,
    /// Pauses per bucket of [`PAUSE_BOUNDS_US`] (the last: larger).
    pub pause_buckets: [AtomicU64; PAUSE_BOUNDS_US.len() + 1],
    /// Sum of the pauses, µs.
    pub pause_sum_us: AtomicU64,
    /// Longest pause, µs.
    pub pause_max_us: AtomicU64,
}

/// The counters at one moment (or their growth over one switch).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SwitchSummary {
    /// Connections moved (either way).
    pub moved: u64,
    /// Restored again on their source.
    pub taken_back: u64,
    /// Lost (reset).
    pub failed: u64,
    /// Could not move and stayed.
    pub stayed: u64,
    /// Pauses recorded.
    pub pauses: u64,
    /// Upper bound of the bucket holding the 99th percentile pause, µs
    /// (`u64::MAX` when beyond the last bound; 0 with no pauses).
    pub pause_p99_us: u64,
    #[serde(skip)]
    buckets: [u64; PAUSE_BOUNDS_US.len() + 1],
}

impl SwitchMetrics {
    /// Count a landed parcel and its pause.
    pub(crate) fn count(&self, to: Path, how: Landing, pause: Duration) {
        let c = match (how, to) {
            (Landing::Moved, Path::Dpdk) => &self.moved_to_dpdk,
            (Landing::Moved, Path::Kernel) => &self.moved_to_kernel,
            (Landing::TakenBack, _) => &self.taken_back,
            (Landing::Failed, _) => &self.failed,
        };
        c.fetch_add(1, Ordering::Relaxed);
        if how == Landing::Failed {
            return;
        }
        let us = u64::try_from(pause.as_micros()).unwrap_or(u64::MAX);
        let i = PAUSE_BOUNDS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(PAUSE_BOUNDS_US.len());
        self.pause_buckets[i].fetch_add(1, Ordering::Relaxed);
        self.pause_sum_us.fetch_add(us, Ordering::Relaxed);
        self.pause_max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// A connection lost outside a landing (it could neither move nor
    /// stay where it was).
    pub fn count_lost(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection that could not move stays where it is.
    pub fn count_stayed(&self) {
        self.stayed.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn summary(&self) -> SwitchSummary {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut s = SwitchSummary {
            moved: load(&self.moved_to_dpdk) + load(&self.moved_to_kernel),
            taken_back: load(&self.taken_back),
            failed: load(&self.failed),
            stayed: load(&self.stayed),
            ..SwitchSummary::default()
        };
        for (b, c) in s.buckets.iter_mut().zip(&self.pause_buckets) {
            *b = load(c);
        }
        s.finish()
    }
}

impl SwitchSummary {
    /// What grew since `before` (an earlier summary of the same metrics).
    pub fn since(&self, before: &SwitchSummary) -> SwitchSummary {
        let mut s = SwitchSummary {
            moved: self.moved.saturating_sub(before.moved),
            taken_back: self.taken_back.saturating_sub(before.taken_back),
            failed: self.failed.saturating_sub(before.failed),
            stayed: self.stayed.saturating_sub(before.stayed),
            ..SwitchSummary::default()
        };
        for (i, b) in s.buckets.iter_mut().enumerate() {
            *b = self.buckets[i].saturating_sub(before.buckets[i]);
        }
        s.finish()
    }

    /// Fill in the totals from the buckets.
    fn finish(mut self) -> SwitchSummary {
        self.pauses = self.buckets.iter().sum();
        self.pause_p99_us = 0;
        if self.pauses > 0 {
            // The smallest bucket bound with at least 99% at or below it.
            let want = self.pauses - self.pauses / 100;
            let mut seen = 0;
            for (i, &b) in self.buckets.iter().enumerate() {
                seen += b;
                if seen >= want {
                    self.pause_p99_us = PAUSE_BOUNDS_US.get(i).copied().unwrap_or(u64::MAX);
                    break;
                }
            }
        }
        self
    }
}
