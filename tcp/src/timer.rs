//! Deadline-ordered wakeups for connections, and the expiry order of
//! TIME-WAIT records.
//!
//! A binary heap of `(deadline, slot, generation)`. Each connection remembers
//! the one deadline it has in the heap; a new deadline is pushed only when it
//! is earlier than that one, so a connection whose deadline keeps moving out
//! (every data segment restarts the retransmit timer) costs no heap work per
//! segment: the old entry fires, the connection is re-examined once, and the
//! true deadline is pushed. Stale entries (slot freed or reused, deadline
//! superseded) are skipped when popped. An idle connection (no retransmit,
//! no keep-alive) has no entry at all and costs nothing per poll.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use crate::flow::FourTuple;

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

/// The expiry order of TIME-WAIT records: a min-heap of `(deadline, push
/// order, tuple)`, earliest deadline first and, among equal deadlines, first
/// pushed first (the push counter wraps after 2^32 pushes; only the order
/// among equal deadlines depends on it).
///
/// The stack keeps one entry per record. A record whose deadline moves later
/// (a retransmitted FIN restarts 2MSL) keeps its entry at the old deadline and
/// pushes it again at the new one when it comes up, so restarts cost no
/// memory.
#[derive(Debug, Default)]
pub(crate) struct TimeWaitQueue {
    heap: BinaryHeap<Reverse<TwEntry>>,
    pushed: u32,
}

#[derive(Debug, Clone, Copy)]
struct TwEntry {
    expires_us: i64,
    seq: u32,
    tuple: FourTuple,
}

impl TwEntry {
    fn key(&self) -> (i64, u32) {
        (self.expires_us, self.seq)
    }
}

impl PartialEq for TwEntry {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for TwEntry {}

impl PartialOrd for TwEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for TwEntry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

impl TimeWaitQueue {
    pub(crate) fn push(&mut self, expires_us: i64, tuple: FourTuple) {
        let seq = self.pushed;
        self.pushed = self.pushed.wrapping_add(1);
        self.heap.push(Reverse(TwEntry {
            expires_us,
            seq,
            tuple,
        }));
    }

    /// The earliest entry, taken out: its tuple and deadline.
    pub(crate) fn pop(&mut self) -> Option<(FourTuple, i64)> {
        self.heap.pop().map(|Reverse(e)| (e.tuple, e.expires_us))
    }

    /// The earliest deadline queued.
    pub(crate) fn next_at(&self) -> Option<i64> {
        self.heap.peek().map(|Reverse(e)| e.expires_us)
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    pub(crate) fn capacity_bytes(&self) -> usize {
        self.heap.capacity() * core::mem::size_of::<Reverse<TwEntry>>()
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

    #[test]
    fn time_wait_queue_is_deadline_then_push_order() {
        let tuple = |port| FourTuple {
            local_addr: smoltcp::wire::Ipv4Address::new(10, 0, 0, 1),
            local_port: 80,
            remote_addr: smoltcp::wire::Ipv4Address::new(10, 0, 0, 2),
            remote_port: port,
        };
        let mut q = TimeWaitQueue::default();
        q.push(20, tuple(1));
        q.push(10, tuple(2));
        q.push(20, tuple(3));
        q.push(10, tuple(4));
        assert_eq!(q.len(), 4);
        assert_eq!(q.next_at(), Some(10));
        let order: Vec<_> = core::iter::from_fn(|| q.pop()).collect();
        assert_eq!(
            order,
            [
                (tuple(2), 10),
                (tuple(4), 10),
                (tuple(1), 20),
                (tuple(3), 20)
            ]
        );
        assert_eq!(q.next_at(), None);
        // The push order costs no room: it fits beside the deadline.
        assert!(
            core::mem::size_of::<Reverse<TwEntry>>() <= core::mem::size_of::<(FourTuple, i64)>()
        );
    }
}
