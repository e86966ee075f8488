//! What a client process knows about backend kills: the orchestrator
//! tells every client process before it kills a backend and after it
//! restarts one, so a failure the kill causes is always seen after the
//! count moved.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Kill counts, down flags and last state changes, per global backend index.
#[derive(Debug)]
pub struct KillBook {
    down: Vec<AtomicBool>,
    kills: Vec<AtomicU64>,
    transitions: Mutex<Vec<Option<Instant>>>,
}

impl KillBook {
    /// A book for `n` backends, none killed.
    pub fn new(n: usize) -> Self {
        Self {
            down: (0..n).map(|_| AtomicBool::new(false)).collect(),
            kills: (0..n).map(|_| AtomicU64::new(0)).collect(),
            transitions: Mutex::new(vec![None; n]),
        }
    }

    /// Backend `i` is about to be killed (out of range: ignored).
    pub fn killed(&self, i: usize) {
        if let (Some(k), Some(d)) = (self.kills.get(i), self.down.get(i)) {
            k.fetch_add(1, Ordering::Relaxed);
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

    /// Times backend `i` has been killed (None: out of range).
    pub fn kills(&self, i: usize) -> Option<u64> {
        self.kills.get(i).map(|k| k.load(Ordering::Relaxed))
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
        book.killed(1);
        assert_eq!(book.kills(1), Some(1));
        assert_eq!(book.kills(0), Some(0));
        assert!(book.disturbed_within(Duration::ZERO), "down now");
        book.up(1);
        assert!(
            book.disturbed_within(Duration::from_secs(5)),
            "just changed"
        );
        assert!(!book.disturbed_within(Duration::ZERO));
        book.killed(7); // out of range: ignored
        assert_eq!(book.kills(7), None);
    }
}
