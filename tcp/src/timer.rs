//! Deadline-ordered wakeups for connections.
//!
//! A binary heap of `(deadline, slot, generation)`. Each connection remembers
//! the one deadline it has in the heap; a new deadline is pushed only when it
//! is earlier than that one, so a connection whose deadline keeps moving out
//! (every data segment restarts the retransmit timer) costs no heap work per
//! segment: the old entry fires, the connection is re-examined once, and the
//! true deadline is pushed. Stale entries (slot freed or reused, deadline
//! superseded) are skipped when popped. An idle connection (no retransmit,
//! no keep-alive) has no entry at all and costs nothing per poll.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

#[derive(Debug, Default)]
pub(crate) struct TimerHeap {
    heap: BinaryHeap<Reverse<(i64, u32, u32)>>,
}

impl TimerHeap {
    pub(crate) fn push(&mut self, at_us: i64, slot: u32, generation: u32) {
        self.heap.push(Reverse((at_us, slot, generation)));
    }

    /// The earliest entry due at or before `now_us`.
    pub(crate) fn pop_due(&mut self, now_us: i64) -> Option<(i64, u32, u32)> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now_us => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    pub(crate) fn next_at(&self) -> Option<i64> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    pub(crate) fn capacity_bytes(&self) -> usize {
        self.heap.capacity() * core::mem::size_of::<Reverse<(i64, u32, u32)>>()
    }

    /// Rebuild from the live entries only (called when stale entries dominate).
    pub(crate) fn retain(&mut self, mut live: impl FnMut(i64, u32, u32) -> bool) {
        let v: Vec<_> = core::mem::take(&mut self.heap)
            .into_vec()
            .into_iter()
            .filter(|Reverse((at, s, g))| live(*at, *s, *g))
            .collect();
        self.heap = BinaryHeap::from(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_deadline_order_and_only_when_due() {
        let mut t = TimerHeap::default();
        t.push(30, 3, 0);
        t.push(10, 1, 0);
        t.push(20, 2, 0);
        assert_eq!(t.pop_due(5), None);
        assert_eq!(t.next_at(), Some(10));
        assert_eq!(t.pop_due(25), Some((10, 1, 0)));
        assert_eq!(t.pop_due(25), Some((20, 2, 0)));
        assert_eq!(t.pop_due(25), None);
        t.retain(|_, s, _| s != 3);
        assert_eq!(t.len(), 0);
    }
}
