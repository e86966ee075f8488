//! The stack: flow table, listeners with accept queues, active opens, timers,
//! TIME-WAIT records and events around smoltcp's `tcp::Socket`.
//!
//! This module holds the [`Stack`] itself (its tables, construction and
//! accessors) and the handles and events it hands out. The work is split by
//! concern, each an `impl Stack` block of its own:
//! - `listen`: listeners, accept queues and the backlog policy for SYNs;
//! - `connect`: active opens and ephemeral port choice;
//! - `data`: send/recv and the caller's other per-connection calls;
//! - `handoff`: export and import of established connections;
//! - `poll`: the calling loop (`poll`, `egress`, timers, `poll_at`);
//! - `ingress`: demux of one received frame to its connection, listener,
//!   TIME-WAIT record or smoltcp's closed-port answer;
//! - `time_wait`: TIME-WAIT records: creation, answers, expiry, reuse;
//! - `settle`: what follows for a connection after it was touched;
//! - `slots`: the connection slab and the ways a connection leaves it;
//! - `conn`: the per-connection record and its smoltcp socket;
//! - `stats`: counters and memory accounting.

mod conn;
mod connect;
mod data;
mod handoff;
mod ingress;
mod listen;
mod poll;
mod settle;
mod slots;
mod stats;
mod time_wait;

use std::collections::{HashMap, VecDeque};

use smoltcp::iface::{Config as IfaceConfig, Interface, SocketSet};
use smoltcp::phy::{DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};

use crate::TcpError;
use crate::adapters::OneShot;
use crate::clock::Clock;
use crate::config::StackConfig;
use crate::flow::{FlowHashBuilder, splitmix};
use crate::flow_table::FlowTable;
use crate::timer::{TimeWaitQueue, TimerHeap};

use listen::ListenerSlot;
use slots::Slot;

pub use connect::ConnectOptions;
pub use handoff::ConnState;
pub use stats::{MemoryUsage, Stats};

/// A connection handle. Stays valid until `close` or `abort` is called on it
/// (or, for a connection never accepted, until the stack drops it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    index: u32,
    generation: u32,
}

impl ConnId {
    /// A small integer, unique among the connections the stack holds and
    /// reused once a connection is gone: an index for the caller's own
    /// per-connection tables.
    pub fn index(&self) -> usize {
        self.index as usize
    }
}

/// A listener handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerId {
    index: u32,
    generation: u32,
}

/// What `poll_event` reports. Events are edge-triggered: each is raised once
/// per change, and `Readable`/`Writable` are re-armed by `recv`/a short `send`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The listener has an established connection waiting in `accept`.
    Accept(ListenerId),
    /// An active open completed its handshake.
    Connected(ConnId),
    /// Data, or the end of the stream, can be read.
    Readable(ConnId),
    /// Send-buffer space came free after a short write.
    Writable(ConnId),
    /// Both directions finished cleanly. The handle stays valid (unread data
    /// can still be read) until `close`.
    Closed(ConnId),
    /// The connection was reset by the peer, refused, or timed out.
    Reset(ConnId),
}

/// A userspace TCP stack for one core. See the crate documentation for the
/// calling contract.
pub struct Stack {
    iface: Interface,
    clock: Clock,
    medium: Medium,
    caps: DeviceCapabilities,
    our_mac: Option<EthernetAddress>,
    cfg: StackConfig,
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    flows: FlowTable,
    listeners: Vec<ListenerSlot>,
    by_port: HashMap<u16, u32>,
    timers: TimerHeap,
    /// Connections to visit on the next egress pass.
    ready: Vec<u32>,
    /// The list `egress` works through is swapped with this one, so neither
    /// is reallocated when connections queue themselves again.
    spare: Vec<u32>,
    events: VecDeque<Event>,
    tw_queue: TimeWaitQueue,
    tw_count: usize,
    /// Expiry of held 4-tuples (see `handoff`), and how many are held.
    held_queue: TimeWaitQueue,
    held: usize,
    port_cursor: u32,
    neighbor_waiters: Vec<(u32, u32)>,
    empty: SocketSet<'static>,
    now: Instant,
    stats: Stats,
    /// The receive pipeline of `poll_prefetching`.
    ahead: poll::Ahead,
}

impl core::fmt::Debug for Stack {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Stack")
            .field("medium", &self.medium)
            .field("connections", &self.live)
            .field("time_wait", &self.tw_count)
            .field("listeners", &self.by_port.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Stack {
    /// A stack for a device with capabilities `caps`, at time `now`.
    pub fn new(cfg: StackConfig, caps: DeviceCapabilities, now: Instant) -> Result<Self, TcpError> {
        cfg.validate()?;
        let medium = caps.medium;
        let our_mac = match (cfg.hardware_addr, medium) {
            (HardwareAddress::Ethernet(mac), Medium::Ethernet) => Some(mac),
            (HardwareAddress::Ip, Medium::Ip) => None,
            _ => {
                return Err(TcpError::Config(
                    "hardware_addr does not match the device medium",
                ));
            }
        };
        if caps.ip_mtu() < 20 + 20 + 1 {
            return Err(TcpError::Config("device MTU too small for TCP"));
        }
        let clock = Clock::new(cfg.min_rto);
        let mut seed = cfg.seed;
        let mut icfg = IfaceConfig::new(cfg.hardware_addr);
        icfg.random_seed = splitmix(&mut seed);
        let mut iface = Interface::new(icfg, &mut OneShot::idle(caps.clone()), clock.to_virt(now));
        let mut full = false;
        iface.update_ip_addrs(|addrs| {
            for a in &cfg.addresses {
                full |= addrs.push(IpCidr::Ipv4(*a)).is_err();
            }
        });
        if full {
            return Err(TcpError::Config("too many addresses"));
        }
        if let Some(gw) = cfg.gateway {
            iface
                .routes_mut()
                .add_default_ipv4_route(gw)
                .map_err(|_| TcpError::Config("route table full"))?;
        }
        let flows = FlowTable::new(FlowHashBuilder::new(splitmix(&mut seed)));
        let port_cursor = splitmix(&mut seed) as u32;
        Ok(Self {
            iface,
            clock,
            medium,
            caps,
            our_mac,
            cfg,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            flows,
            listeners: Vec::new(),
            by_port: HashMap::new(),
            timers: TimerHeap::default(),
            ready: Vec::new(),
            spare: Vec::new(),
            events: VecDeque::new(),
            tw_queue: TimeWaitQueue::default(),
            tw_count: 0,
            held_queue: TimeWaitQueue::default(),
            held: 0,
            port_cursor,
            neighbor_waiters: Vec::new(),
            empty: SocketSet::new(Vec::new()),
            now,
            stats: Stats::default(),
            ahead: poll::Ahead::default(),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &StackConfig {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Connections held (any state, including dead ones not yet closed by the caller).
    pub fn connection_count(&self) -> usize {
        self.live
    }

    /// TIME-WAIT records held.
    pub fn time_wait_count(&self) -> usize {
        self.tw_count
    }

    /// How many times faster than real time smoltcp's clock runs (see the crate doc).
    pub fn time_dilation(&self) -> f64 {
        self.clock.factor()
    }
}
