//! The backend set: addresses, health and load, shared by every worker.
//!
//! Contract:
//! - [`Backends::pick_round_robin`] returns the next healthy backend in
//!   turn (new handshake-era sessions), skipping unhealthy ones and any in
//!   `exclude` (backends that already failed for this request).
//! - [`Backends::pick_least_outstanding`] returns the healthy backend with
//!   the fewest requests in flight, ties broken round-robin (stateless
//!   requests).
//! - Health changes come from the data path: a failed connect marks a
//!   backend down, so neither pick returns it (no new session and no
//!   stateless request goes there; requests of sessions already bound to it
//!   still do); a successful probe or connect marks it up.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// One backend's shared state.
#[derive(Debug)]
pub struct Backend {
    /// `host:port` as configured (used in logs and metric labels).
    pub addr: String,
    healthy: AtomicBool,
    outstanding: AtomicUsize,
    /// Requests forwarded to this backend.
    pub requests: AtomicU64,
    /// Connect failures seen.
    pub connect_failures: AtomicU64,
}

impl Backend {
    /// Whether the picks may choose it (new sessions and stateless
    /// requests); requests of sessions already bound to it ignore this.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Requests currently in flight.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }
}

/// All configured backends.
#[derive(Debug)]
pub struct Backends {
    list: Vec<Backend>,
    next: AtomicUsize,
}

impl Backends {
    /// Backends in configuration order; all start healthy.
    pub fn new<I: IntoIterator<Item = String>>(addrs: I) -> Self {
        Self {
            list: addrs
                .into_iter()
                .map(|addr| Backend {
                    addr,
                    healthy: AtomicBool::new(true),
                    outstanding: AtomicUsize::new(0),
                    requests: AtomicU64::new(0),
                    connect_failures: AtomicU64::new(0),
                })
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// Number of backends.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Backend by index. Panics on an index not handed out by this set.
    pub fn get(&self, i: usize) -> &Backend {
        &self.list[i]
    }

    /// Iterate over all backends.
    pub fn iter(&self) -> impl Iterator<Item = &Backend> {
        self.list.iter()
    }

    /// Next healthy backend round-robin, not in `exclude`.
    pub fn pick_round_robin(&self, exclude: &[usize]) -> Option<usize> {
        let n = self.list.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|i| self.list[*i].is_healthy() && !exclude.contains(i))
    }

    /// Healthy backend with the fewest requests in flight, not in `exclude`.
    pub fn pick_least_outstanding(&self, exclude: &[usize]) -> Option<usize> {
        let n = self.list.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| (start + k) % n)
            .filter(|i| self.list[*i].is_healthy() && !exclude.contains(i))
            .min_by_key(|i| self.list[*i].outstanding())
    }

    /// Mark a backend down after a failed connect. Returns true when this
    /// call changed its state.
    pub fn mark_down(&self, i: usize) -> bool {
        self.list[i]
            .connect_failures
            .fetch_add(1, Ordering::Relaxed);
        self.list[i].healthy.swap(false, Ordering::Relaxed)
    }

    /// Mark a backend up after a successful probe or connect. Returns true
    /// when this call changed its state.
    pub fn mark_up(&self, i: usize) -> bool {
        !self.list[i].healthy.swap(true, Ordering::Relaxed)
    }

    /// A request was sent to backend `i`.
    pub fn request_started(&self, i: usize) {
        self.list[i].outstanding.fetch_add(1, Ordering::Relaxed);
        self.list[i].requests.fetch_add(1, Ordering::Relaxed);
    }

    /// A request to backend `i` finished (answered or aborted).
    pub fn request_finished(&self, i: usize) {
        // Saturating: a spurious call must not wrap the gauge.
        let _ = self.list[i]
            .outstanding
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Backends {
        Backends::new(["a:1", "b:2", "c:3"].map(String::from))
    }

    #[test]
    fn round_robin_skips_down_and_excluded() {
        let b = three();
        let picks: Vec<_> = (0..6).map(|_| b.pick_round_robin(&[]).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        b.mark_down(1);
        let picks: Vec<_> = (0..4).map(|_| b.pick_round_robin(&[]).unwrap()).collect();
        assert!(!picks.contains(&1));
        assert!(picks.contains(&0) && picks.contains(&2));
        assert_eq!(b.pick_round_robin(&[0, 2]), None);
        b.mark_down(0);
        b.mark_down(2);
        assert_eq!(b.pick_round_robin(&[]), None);
        assert!(b.mark_up(2));
        assert_eq!(b.pick_round_robin(&[]), Some(2));
    }

    #[test]
    fn least_outstanding() {
        let b = three();
        b.request_started(0);
        b.request_started(0);
        b.request_started(1);
        assert_eq!(b.pick_least_outstanding(&[]), Some(2));
        b.request_started(2);
        b.request_started(2);
        assert_eq!(b.pick_least_outstanding(&[]), Some(1));
        b.request_finished(0);
        b.request_finished(0);
        b.request_finished(0); // spurious: stays at zero
        assert_eq!(b.get(0).outstanding(), 0);
        assert_eq!(b.pick_least_outstanding(&[]), Some(0));
    }
}
