//! One timer per connection, ordered by deadline: what every driver needs
//! to turn `Connection::poll_timeout` into wake-ups. Time is passed in.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// Deadlines keyed by a small connection index (a slab key).
///
/// A connection re-arms its timer on every drive, nearly always to a later
/// time (its idle timeout moves on). That costs no heap operation here: the
/// heap keeps the entry it has for the index (`queued`) and only the armed
/// time changes; when the early entry comes due it is pushed again at the
/// armed time. An earlier deadline pushes a new entry and leaves the old
/// one stale (skipped when it surfaces). So [`Deadlines::next`] may be
/// early, never late: a driver wakes once more than needed, never misses
/// a deadline.
#[derive(Debug, Default)]
pub struct Deadlines {
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
    /// The deadline each index is armed for.
    armed: Vec<Option<Instant>>,
    /// The time of each index's live heap entry (earlier than or equal to
    /// its armed time); entries at other times are stale.
    queued: Vec<Option<Instant>>,
    /// Indices armed now.
    live: usize,
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
            self.queued.resize(idx + 1, None);
        }
        let was = std::mem::replace(&mut self.armed[idx], at);
        match (was.is_some(), at.is_some()) {
            (false, true) => self.live += 1,
            (true, false) => self.live -= 1,
            _ => {}
        }
        if let Some(t) = at
            && self.queued[idx].is_none_or(|q| t < q)
        {
            self.queued[idx] = Some(t);
            self.heap.push(Reverse((t, idx)));
            self.compact_if_stale();
        }
    }

    /// A time at or before the earliest deadline (see the type's docs).
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// Remove and return one index whose deadline is at or before `now`
    /// (all of them, one per call; among those due, not necessarily the
    /// earliest first).
    pub fn pop_due(&mut self, now: Instant) -> Option<usize> {
        while let Some(&Reverse((t, idx))) = self.heap.peek() {
            if t > now {
                return None;
            }
            self.heap.pop();
            if self.queued[idx] != Some(t) {
                continue; // stale: the index has an earlier entry
            }
            self.queued[idx] = None;
            match self.armed[idx] {
                None => {}
                Some(at) if at > now => {
                    // Re-armed later meanwhile: queue it at its time.
                    self.queued[idx] = Some(at);
                    self.heap.push(Reverse((at, idx)));
                }
                Some(_) => {
                    self.armed[idx] = None;
                    self.live -= 1;
                    return Some(idx);
                }
            }
        }
        None
    }

    /// Rebuild the heap from the armed times when stale entries outnumber
    /// live ones (deadlines that keep moving earlier leave one each).
    fn compact_if_stale(&mut self) {
        if self.heap.len() <= 2 * self.live + 1024 {
            return;
        }
        self.heap.clear();
        for (idx, at) in self.armed.iter().enumerate() {
            self.queued[idx] = *at;
            if let Some(t) = at {
                self.heap.push(Reverse((*t, idx)));
            }
        }
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

    #[test]
    fn a_later_rearm_is_found_when_the_early_entry_surfaces() {
        let t0 = Instant::now();
        let at = |n| t0 + Duration::from_secs(n);
        let mut d = Deadlines::new();
        d.set(1, Some(at(10)));
        d.set(1, Some(at(30)));
        d.set(2, Some(at(20)));
        // `next` may be early, never late.
        assert!(d.next().is_some_and(|t| t <= at(20)));
        assert_eq!(d.pop_due(at(15)), None, "index 1 is armed for 30 now");
        assert_eq!(d.next(), Some(at(20)));
        assert_eq!(d.pop_due(at(25)), Some(2));
        assert_eq!(d.pop_due(at(25)), None);
        assert_eq!(d.pop_due(at(30)), Some(1));
        assert_eq!(d.next(), None);
    }

    #[test]
    fn deadlines_that_keep_moving_earlier_do_not_grow_the_heap() {
        let t0 = Instant::now();
        let mut d = Deadlines::new();
        for i in 0..10_000u64 {
            d.set(3, Some(t0 + Duration::from_secs(1_000_000 - i)));
        }
        assert!(d.heap.len() <= 1024 + 3, "{} entries", d.heap.len());
        assert_eq!(d.next(), Some(t0 + Duration::from_secs(1_000_000 - 9_999)));
        assert_eq!(d.pop_due(t0 + Duration::from_secs(1_000_000)), Some(3));
        assert_eq!(d.pop_due(t0 + Duration::from_secs(1_000_000)), None);
    }

    /// Random arms, re-arms and disarms against a plain model: the pops
    /// return exactly the indices whose deadline has come, none missed or
    /// returned twice.
    #[test]
    fn matches_a_plain_model_under_random_use() {
        let t0 = Instant::now();
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next_rand = |m: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % m
        };
        let mut d = Deadlines::new();
        let mut model: Vec<Option<Instant>> = vec![None; 64];
        let mut now = t0;
        for round in 0..20_000 {
            let idx = next_rand(64) as usize;
            let at = match next_rand(4) {
                0 => None,
                _ => Some(now + Duration::from_millis(next_rand(5_000))),
            };
            d.set(idx, at);
            model[idx] = at;
            if round % 7 == 0 {
                now += Duration::from_millis(next_rand(700));
                let mut due: Vec<(Instant, usize)> = model
                    .iter()
                    .enumerate()
                    .filter_map(|(i, t)| t.filter(|t| *t <= now).map(|t| (t, i)))
                    .collect();
                due.sort();
                let mut popped = Vec::new();
                while let Some(i) = d.pop_due(now) {
                    popped.push((model[i].expect("popped an armed index"), i));
                    model[i] = None;
                }
                popped.sort();
                assert_eq!(popped, due, "round {round}");
                let earliest = model.iter().flatten().min().copied();
                assert!(
                    d.next().is_some() || earliest.is_none(),
                    "a deadline is armed but next() is None"
                );
                if let (Some(n), Some(e)) = (d.next(), earliest) {
                    assert!(n <= e, "next() is late");
                }
            }
        }
        assert!(
            d.heap.len() <= 2 * d.live + 1024 + 1,
            "stale entries are compacted"
        );
    }
}
