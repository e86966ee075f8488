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
use std::collections::{BTreeMap, BinaryHeap};

use crate::flow::FourTuple;

/// Deadlines are grouped by 256 µs (2^8); each group is a
/// small heap of its own, and the groups are kept in order. With many
/// connections one big binary heap made every push and pop walk some twenty
/// levels spread over megabytes (cache misses each); here the groups near
/// now stay small and in the cache. The order is the same: earliest
/// deadline first.
const GROUP_SHIFT: u32 = 8;

/// Emptied group heaps kept for reuse, so a group costs no allocation.
const SPARE_GROUPS: usize = 64;

type Entry = Reverse<(i64, u32, u32)>;

#[derive(Debug, Default)]
pub(crate) struct TimerHeap {
    groups: BTreeMap<i64, BinaryHeap<Entry>>,
    len: usize,
    spare: Vec<BinaryHeap<Entry>>,
}

impl TimerHeap {
    pub(crate) fn push(&mut self, at_us: i64, slot: u32, generation: u32) {
        let spare = &mut self.spare;
        self.groups
            .entry(at_us >> GROUP_SHIFT)
            .or_insert_with(|| spare.pop().unwrap_or_default())
            .push(Reverse((at_us, slot, generation)));
        self.len += 1;
    }

    /// The earliest entry due at or before `now_us`.
    pub(crate) fn pop_due(&mut self, now_us: i64) -> Option<(i64, u32, u32)> {
        let mut group = self.groups.first_entry()?;
        let heap = group.get_mut();
        match heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now_us => {}
            _ => return None,
        }
        let Reverse(e) = heap.pop()?;
        self.len -= 1;
        if heap.is_empty() {
            let emptied = group.remove();
            if self.spare.len() < SPARE_GROUPS {
                self.spare.push(emptied);
            }
        }
        Some(e)
    }

    pub(crate) fn next_at(&self) -> Option<i64> {
        let (_, heap) = self.groups.first_key_value()?;
        heap.peek().map(|Reverse((at, _, _))| *at)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn capacity_bytes(&self) -> usize {
        let entries: usize = self
            .groups
            .values()
            .chain(&self.spare)
            .map(BinaryHeap::capacity)
            .sum();
        entries * core::mem::size_of::<Entry>()
            + self.groups.len() * core::mem::size_of::<(i64, BinaryHeap<Entry>)>()
    }

    /// Rebuild from the live entries only (called when stale entries dominate).
    pub(crate) fn retain(&mut self, mut live: impl FnMut(i64, u32, u32) -> bool) {
        for heap in self.groups.values_mut() {
            heap.retain(|Reverse((at, s, g))| live(*at, *s, *g));
        }
        let spare = &mut self.spare;
        self.groups.retain(|_, heap| {
            if heap.is_empty() && spare.len() < SPARE_GROUPS {
                spare.push(std::mem::take(heap));
            }
            !heap.is_empty()
        });
        self.len = self.groups.values().map(BinaryHeap::len).sum();
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
        assert_eq!(t.next_at(), None);
    }

    /// Across groups and within one, with negative times and duplicates:
    /// the same order as sorting, and nothing before it is due.
    #[test]
    fn pops_in_sorted_order_across_groups() {
        let mut t = TimerHeap::default();
        let mut all = Vec::new();
        let mut x = 12345u64;
        for i in 0..5_000u32 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let at = ((x >> 33) % 50_000) as i64 - 2_000;
            t.push(at, i, i / 7);
            all.push((at, i, i / 7));
        }
        all.sort();
        assert_eq!(t.len(), all.len());
        assert_eq!(t.next_at(), Some(all[0].0));
        assert_eq!(t.pop_due(all[0].0 - 1), None);
        let mut popped = Vec::new();
        for now in (-2_000..50_000).step_by(997) {
            while let Some(e) = t.pop_due(now) {
                assert!(e.0 <= now);
                popped.push(e);
            }
            assert!(t.next_at().is_none_or(|at| at > now));
        }
        while let Some(e) = t.pop_due(i64::MAX) {
            popped.push(e);
        }
        assert_eq!(popped, all);
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
