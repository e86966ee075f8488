//! What the stack reports about itself: cumulative counters ([`Stats`],
//! bumped where the counted thing happens) and the memory it holds
//! ([`MemoryUsage`], computed on demand from the capacities of what it
//! allocated).

use smoltcp::socket::tcp;

use super::slots::Slot;
use super::{Event, Stack};

/// Counters, cumulative since the stack was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames taken from the device.
    pub rx_frames: u64,
    /// Frames handed to the device.
    pub tx_frames: u64,
    /// SYNs that created a half-open connection.
    pub syn_admitted: u64,
    /// Half-open connections dropped to make room for a newer SYN.
    pub syn_evicted: u64,
    /// SYNs dropped because the accept queue was full of established connections.
    pub syn_dropped: u64,
    /// SYNs to a listener dropped for a bad checksum before any state was made.
    pub syn_bad_checksum: u64,
    /// Connections turned into TIME-WAIT records.
    pub time_wait_created: u64,
    /// TIME-WAIT records replaced by a new connection (SYN with a higher sequence number).
    pub time_wait_reused: u64,
    /// TIME-WAIT records that expired.
    pub time_wait_expired: u64,
    /// TIME-WAIT records dropped early because `max_time_wait` was reached.
    pub time_wait_evicted: u64,
    /// ACKs sent from TIME-WAIT records.
    pub time_wait_acks: u64,
    /// Connection timers that fired.
    pub timer_fires: u64,
    /// Connections taken out by `export`.
    pub exported: u64,
    /// Connections continued by `import`.
    pub imported: u64,
    /// Frames dropped for a held (exported) 4-tuple.
    pub held_drops: u64,
    /// Held 4-tuples released because their hold ran out (the caller never
    /// called `unhold`).
    pub held_expired: u64,
}

/// Memory held by the stack, from the capacities of what it allocated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryUsage {
    /// Connection slots holding a connection.
    pub connections: usize,
    /// Bytes of socket buffers.
    pub buffers: usize,
    /// Bytes of socket state (smoltcp sockets and our per-connection records).
    pub sockets: usize,
    /// Bytes of tables: slab, flow hash table, timers, queues.
    pub tables: usize,
    /// TIME-WAIT records held.
    pub time_wait: usize,
    /// Entries in the TIME-WAIT expiry queue: one per record (a record whose
    /// 2MSL restarts keeps its entry), plus, until it expires, the entry of a
    /// record whose tuple a new connection took over.
    pub time_wait_queue: usize,
}

impl MemoryUsage {
    /// Everything together.
    pub fn total(&self) -> usize {
        self.buffers + self.sockets + self.tables
    }
}

impl Stack {
    /// Memory held, from the capacities of everything the stack allocated.
    /// Walks every connection: for reports, not for the fast path.
    pub fn memory_usage(&self) -> MemoryUsage {
        use core::mem::size_of;
        let mut m = MemoryUsage {
            time_wait: self.tw_count,
            time_wait_queue: self.tw_queue.len(),
            ..MemoryUsage::default()
        };
        for s in &self.slots {
            let Some(c) = &s.conn else { continue };
            m.connections += 1;
            m.buffers += c.leftover.capacity();
            if let Some(set) = &c.set {
                let sock = set.get::<tcp::Socket>(c.handle);
                m.buffers += sock.recv_capacity() + sock.send_capacity();
                m.sockets += size_of::<smoltcp::iface::SocketStorage<'static>>();
            }
        }
        m.sockets += self.slots.capacity() * size_of::<Slot>();
        m.tables += self.flows.bytes();
        m.tables += self.free.capacity() * 4
            + self.timers.capacity_bytes()
            + (self.ready.capacity() + self.spare.capacity()) * 4
            + self.events.capacity() * size_of::<Event>()
            + self.tw_queue.capacity_bytes()
            + self.held_queue.capacity_bytes()
            + self.neighbor_waiters.capacity() * 8;
        for l in self.listeners.iter().filter_map(|l| l.listener.as_ref()) {
            m.tables += (l.half_open.capacity() + l.queue.capacity()) * 8;
        }
        m
    }
}
