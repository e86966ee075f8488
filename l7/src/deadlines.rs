//! One timer per connection, ordered by deadline: what every driver needs
//! to turn `Connection::poll_timeout` into wake-ups. Time is passed in.

use std::collections::BTreeSet;
use std::time::Instant;

/// Deadlines keyed by a small connection index (a slab key).
#[derive(Debug, Default)]
pub struct Deadlines {
    order: BTreeSet<(Instant, usize)>,
    armed: Vec<Option<Instant>>,
}

impl Deadlines {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Arm `idx` for `at`, replacing its earlier deadline; `None` disarms.
    pub fn set(&mut self, idx: usize, at: Option<Instant>) {
        if idx >= self.armed.len() {
            if at.is_none() {
                return;
            }
            self.armed.resize(idx + 1, None);
        }
        if self.armed[idx] == at {
            return;
        }
        if let Some(old) = self.armed[idx].take() {
            self.order.remove(&(old, idx));
        }
        if let Some(t) = at {
            self.order.insert((t, idx));
        }
        self.armed[idx] = at;
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.order.first().map(|(t, _)| *t)
    }

    /// Remove and return one index whose deadline is at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<usize> {
        let &(t, idx) = self.order.first()?;
        if t > now {
            return None;
        }
        self.order.pop_first();
        self.armed[idx] = None;
        Some(idx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rearm_replaces_and_pops_in_order() {
        let t0 = Instant::now();
        let s = |n| Some(t0 + Duration::from_secs(n));
        let mut d = Deadlines::new();
        d.set(3, s(30));
        d.set(1, s(10));
        d.set(3, s(5));
        d.set(7, s(20));
        d.set(7, None);
        assert_eq!(d.next(), s(5));
        assert_eq!(d.pop_due(t0 + Duration::from_secs(4)), None);
        assert_eq!(d.pop_due(t0 + Duration::from_secs(60)), Some(3));
        assert_eq!(d.pop_due(t0 + Duration::from_secs(60)), Some(1));
        assert_eq!(d.pop_due(t0 + Duration::from_secs(60)), None);
        // Disarming an index never armed is harmless.
        d.set(99, None);
        assert_eq!(d.next(), None);
    }
}
