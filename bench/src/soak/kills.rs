//! What a client process knows about backend kills: the orchestrator
//! tells every client process before it kills a backend and after it
//! restarts one, so a failure the kill causes is always seen after the
//! kill was booked. Kills are numbered: a session whose `initialize` left
//! before its backend's last kill may have died with it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Kill numbers, down flags and last state changes, per global backend
/// index.
#[derive(Debug)]
pub struct KillBook {
    down: Vec<AtomicBool>,
    /// Kills booked so far (all backends).
    booked: AtomicU64,
    /// Per backend: the number of its last kill (0: never killed).
    last_kill: Vec<AtomicU64>,
    transitions: Mutex<Vec<Option<Instant>>>,
}

impl KillBook {
    /// A book for `n` backends, none killed.
    pub fn new(n: usize) -> Self {
        Self {
            down: (0..n).map(|_| AtomicBool::new(false)).collect(),
            booked: AtomicU64::new(0),
            last_kill: (0..n).map(|_| AtomicU64::new(0)).collect(),
            transitions: Mutex::new(vec![None; n]),
        }
    }

    /// Backend `i` is about to be killed (out of range: ignored).
    pub fn killed(&self, i: usize) {
        if let (Some(k), Some(d)) = (self.last_kill.get(i), self.down.get(i)) {
            let number = self.booked.fetch_add(1, Ordering::Relaxed) + 1;
            k.store(number, Ordering::Relaxed);
            d.store(true, Ordering::Relaxed);
            self.mark(i);
        }
    }

    /// Backend `i` is back.
    pub fn up(&self, i: usize) {
        if let Some(d) = self.down.get(i) {
            d.store(false, Ordering::Relaxed);
            self.mark(i);
        }
    }

    /// Kills booked so far: note it when a session's `initialize` leaves.
    pub fn booked(&self) -> u64 {
        self.booked.load(Ordering::Relaxed)
    }

    /// Whether backend `i` was killed after `booked` kills had been booked
    /// (out of range: false).
    pub fn killed_since(&self, i: usize, booked: u64) -> bool {
        self.last_kill
            .get(i)
            .is_some_and(|k| k.load(Ordering::Relaxed) > booked)
    }

    /// True when some backend is down or changed state within `grace`: a
    /// request that had picked no backend yet may have met it.
    pub fn disturbed_within(&self, grace: Duration) -> bool {
        self.down.iter().any(|d| d.load(Ordering::Relaxed))
            || self
                .transitions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .flatten()
                .any(|t| t.elapsed() < grace)
    }

    fn mark(&self, i: usize) {
        if let Some(t) = self
            .transitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(i)
        {
            *t = Some(Instant::now());
        }
    }
}

/// The global backend index a backend name `b<K>` stands for (K from 1).
pub fn backend_index(name: &str) -> Option<usize> {
    name.strip_prefix('b')?
        .parse::<usize>()
        .ok()?
        .checked_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_indexes() {
        assert_eq!(backend_index("b1"), Some(0));
        assert_eq!(backend_index("b12"), Some(11));
        assert_eq!(backend_index("b0"), None);
        assert_eq!(backend_index("x1"), None);
    }

    #[test]
    fn a_kill_moves_the_count_and_disturbs() {
        let book = KillBook::new(2);
        assert!(!book.disturbed_within(Duration::from_secs(5)));
        let before = book.booked();
        book.killed(1);
        assert!(book.killed_since(1, before));
        assert!(!book.killed_since(0, before));
        assert!(!book.killed_since(1, book.booked()), "nothing since");
        assert!(book.disturbed_within(Duration::ZERO), "down now");
        book.up(1);
        assert!(
            book.disturbed_within(Duration::from_secs(5)),
            "just changed"
        );
        assert!(!book.disturbed_within(Duration::ZERO));
        book.killed(7); // out of range: ignored
        assert!(!book.killed_since(7, 0));
    }
}
