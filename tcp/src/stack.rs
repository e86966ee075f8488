//! The stack: flow table, listeners with accept queues, active opens, timers,
//! TIME-WAIT records and events around smoltcp's `tcp::Socket`.

use std::collections::{HashMap, VecDeque};

use smoltcp::iface::{Config as IfaceConfig, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{
    EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint, IpListenEndpoint, Ipv4Address,
};

use crate::TcpError;
use crate::adapters::{EgressDev, InspectTx, OneShot, TxObs};
use crate::clock::Clock;
use crate::config::{Congestion, SocketConfig, StackConfig};
use crate::flow::{FlowEntry, FlowHashBuilder, FourTuple, TimeWait, splitmix};
use crate::frame::{self, Segment};
use crate::timer::{TimeWaitQueue, TimerHeap};

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

/// Options for `connect_with`.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Our address (default: the one smoltcp picks for the destination).
    pub local_addr: Option<Ipv4Address>,
    /// A fixed local port instead of an ephemeral one.
    pub local_port: Option<u16>,
    /// Settings for this connection (default: the stack's).
    pub socket: Option<SocketConfig>,
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// SYN received, handshake not complete; counted in the listener's backlog.
    HalfOpen(u32),
    /// Established, waiting in the listener's accept queue.
    Queued(u32),
    /// Owned by the caller.
    User,
    /// Given up by the caller; the stack finishes the close and frees it.
    Released,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dead {
    Closed,
    Reset,
}

#[derive(Debug)]
struct Conn {
    /// Exactly one `tcp::Socket`, at `handle`; `None` once the socket is gone
    /// (a dead connection the caller has not closed yet).
    set: Option<SocketSet<'static>>,
    handle: SocketHandle,
    tuple: FourTuple,
    role: Role,
    /// The state seen at the last settle.
    state: tcp::State,
    /// User timeout in real µs (see `settle`).
    timeout_us: Option<i64>,
    keep_alive: bool,
    /// When a segment for this connection last arrived (real µs).
    last_rx_us: i64,
    /// Since when the user timeout has been armed (real µs).
    guard_since: Option<i64>,
    /// The deadline (real µs) this connection has in the timer heap.
    timer_at: Option<i64>,
    in_ready: bool,
    /// Listed in `neighbor_waiters`.
    neighbor_wait: bool,
    readable_sent: bool,
    want_writable: bool,
    connected_sent: bool,
    rst_seen: bool,
    rst_sent: bool,
    last_seq_ack: Option<(u32, u32)>,
    dead: Option<Dead>,
    /// Unread bytes saved when the socket was dropped after a clean close.
    leftover: Vec<u8>,
    leftover_pos: usize,
}

impl Conn {
    /// The socket, or why a caller's operation on it fails.
    fn socket(&mut self) -> Result<&mut tcp::Socket<'static>, TcpError> {
        match (&mut self.set, self.dead) {
            (Some(set), _) => Ok(set.get_mut::<tcp::Socket>(self.handle)),
            (None, Some(Dead::Reset)) => Err(TcpError::Reset),
            (None, _) => Err(TcpError::InvalidState),
        }
    }
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    conn: Option<Conn>,
}

#[derive(Debug)]
struct Listener {
    addr: Option<Ipv4Address>,
    port: u16,
    backlog: usize,
    socket: SocketConfig,
    /// Half-open connections, oldest first (may hold stale entries).
    half_open: VecDeque<(u32, u32)>,
    half_open_count: usize,
    /// Established connections not yet accepted, oldest first (may hold stale entries).
    queue: VecDeque<(u32, u32)>,
    queued_count: usize,
}

#[derive(Debug)]
struct ListenerSlot {
    generation: u32,
    listener: Option<Listener>,
}

/// Take a half-open or queued connection out of its listener's counts.
fn leave_listener(listeners: &mut [ListenerSlot], role: Role) {
    let (l, queued) = match role {
        Role::HalfOpen(l) => (l, false),
        Role::Queued(l) => (l, true),
        Role::User | Role::Released => return,
    };
    if let Some(l) = listeners[l as usize].listener.as_mut() {
        if queued {
            l.queued_count -= 1;
        } else {
            l.half_open_count -= 1;
        }
    }
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
    flows: HashMap<FourTuple, FlowEntry, FlowHashBuilder>,
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
    port_cursor: u32,
    neighbor_waiters: Vec<(u32, u32)>,
    empty: SocketSet<'static>,
    now: Instant,
    stats: Stats,
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

// Written, not calloc'ed (which `vec![0; n]` would be): the pages are
// really held from the start, so process-level memory measurements see what
// the stack holds rather than what traffic happened to touch.
#[allow(clippy::slow_vector_initialization)]
fn zeroed(n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n);
    v.resize(n, 0);
    v
}

/// States in which the connection is synchronized (handshake done).
fn synchronized(s: tcp::State) -> bool {
    !matches!(
        s,
        tcp::State::Closed | tcp::State::Listen | tcp::State::SynSent | tcp::State::SynReceived
    )
}

/// States in which the peer's FIN has been received.
fn fin_received(s: tcp::State) -> bool {
    matches!(
        s,
        tcp::State::CloseWait | tcp::State::LastAck | tcp::State::Closing | tcp::State::TimeWait
    )
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
        let flows = HashMap::with_hasher(FlowHashBuilder::new(splitmix(&mut seed)));
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
            port_cursor,
            neighbor_waiters: Vec::new(),
            empty: SocketSet::new(Vec::new()),
            now,
            stats: Stats::default(),
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

    // ---------------------------------------------------------------- listeners

    /// Listen on `port` (any of our addresses) with the default socket settings.
    pub fn listen(&mut self, port: u16, backlog: usize) -> Result<ListenerId, TcpError> {
        let socket = self.cfg.socket.clone();
        self.listen_with(None, port, backlog, socket)
    }

    /// Listen on `addr:port` (`None`: any of our addresses). At most `backlog`
    /// connections are half-open or waiting in `accept` together; a SYN beyond
    /// that evicts the oldest half-open one, or is dropped if all are established.
    pub fn listen_with(
        &mut self,
        addr: Option<Ipv4Address>,
        port: u16,
        backlog: usize,
        socket: SocketConfig,
    ) -> Result<ListenerId, TcpError> {
        socket.validate()?;
        if port == 0 {
            return Err(TcpError::Unaddressable);
        }
        if backlog == 0 {
            return Err(TcpError::Config("backlog must be positive"));
        }
        if let Some(a) = addr
            && !self.iface.has_ip_addr(a)
        {
            return Err(TcpError::Unaddressable);
        }
        if self.by_port.contains_key(&port) {
            return Err(TcpError::AddrInUse);
        }
        let listener = Listener {
            addr,
            port,
            backlog,
            socket,
            half_open: VecDeque::new(),
            half_open_count: 0,
            queue: VecDeque::new(),
            queued_count: 0,
        };
        let index = match self.listeners.iter().position(|l| l.listener.is_none()) {
            Some(i) => i,
            None => {
                self.listeners.push(ListenerSlot {
                    generation: 0,
                    listener: None,
                });
                self.listeners.len() - 1
            }
        };
        let slot = &mut self.listeners[index];
        slot.listener = Some(listener);
        self.by_port.insert(port, index as u32);
        Ok(ListenerId {
            index: index as u32,
            generation: slot.generation,
        })
    }

    fn listener_mut(&mut self, id: ListenerId) -> Result<&mut Listener, TcpError> {
        listener_in(&mut self.listeners, id)
    }

    /// Stop listening. Half-open and not-yet-accepted connections are reset.
    pub fn unlisten(&mut self, id: ListenerId) -> Result<(), TcpError> {
        let l = self.listener_mut(id)?;
        let entries: Vec<(u32, u32)> = l.half_open.drain(..).chain(l.queue.drain(..)).collect();
        let port = l.port;
        for (slot, generation) in entries {
            let role = self.conn_at(slot, generation).map(|c| c.role);
            if matches!(role, Some(Role::HalfOpen(i) | Role::Queued(i)) if i == id.index) {
                self.release(slot, true);
            }
        }
        self.by_port.remove(&port);
        let ls = &mut self.listeners[id.index as usize];
        ls.listener = None;
        ls.generation = ls.generation.wrapping_add(1);
        Ok(())
    }

    /// Take the oldest established connection from the listener's queue.
    pub fn accept(&mut self, id: ListenerId) -> Result<Option<ConnId>, TcpError> {
        let l = listener_in(&mut self.listeners, id)?;
        while let Some((slot, generation)) = l.queue.pop_front() {
            let s = &mut self.slots[slot as usize];
            if s.generation != generation {
                continue;
            }
            let Some(conn) = s.conn.as_mut().filter(|c| c.role == Role::Queued(id.index)) else {
                continue;
            };
            l.queued_count -= 1;
            conn.role = Role::User;
            // Data may have arrived while queued; the caller gets one event for it.
            push_ready(conn, &mut self.ready, slot);
            return Ok(Some(ConnId {
                index: slot,
                generation,
            }));
        }
        Ok(None)
    }

    /// Connections waiting in the listener's accept queue.
    pub fn accept_queue_len(&mut self, id: ListenerId) -> Result<usize, TcpError> {
        Ok(self.listener_mut(id)?.queued_count)
    }

    /// Half-open connections of the listener.
    pub fn half_open_len(&mut self, id: ListenerId) -> Result<usize, TcpError> {
        Ok(self.listener_mut(id)?.half_open_count)
    }

    // ---------------------------------------------------------------- active open

    /// Open a connection to `remote` from an ephemeral port. The SYN leaves on
    /// the next `poll`.
    pub fn connect(&mut self, remote: Ipv4Address, port: u16) -> Result<ConnId, TcpError> {
        self.connect_with(remote, port, &ConnectOptions::default(), |_| true)
    }

    /// Open a connection with options; the local port (unless fixed in
    /// `opts`) is the first free ephemeral port for which `port_ok` is true.
    /// DPDK mode uses `port_ok` to pick ports whose RSS hash lands on the
    /// calling core.
    pub fn connect_with(
        &mut self,
        remote: Ipv4Address,
        port: u16,
        opts: &ConnectOptions,
        port_ok: impl FnMut(u16) -> bool,
    ) -> Result<ConnId, TcpError> {
        if port == 0 || remote.is_unspecified() || remote.is_broadcast() || remote.is_multicast() {
            return Err(TcpError::Unaddressable);
        }
        let local = match opts.local_addr {
            Some(a) if self.iface.has_ip_addr(a) => a,
            Some(_) => return Err(TcpError::Unaddressable),
            None => self
                .iface
                .get_source_address_ipv4(&remote)
                .ok_or(TcpError::Unaddressable)?,
        };
        let socket_cfg = match &opts.socket {
            Some(s) => {
                s.validate()?;
                s.clone()
            }
            None => self.cfg.socket.clone(),
        };
        let local_port = match opts.local_port {
            Some(0) => return Err(TcpError::Unaddressable),
            Some(p) => {
                let t = FourTuple {
                    local_addr: local,
                    local_port: p,
                    remote_addr: remote,
                    remote_port: port,
                };
                if self.flows.contains_key(&t) {
                    return Err(TcpError::AddrInUse);
                }
                p
            }
            None => self.pick_port(local, remote, port, port_ok)?,
        };
        let tuple = FourTuple {
            local_addr: local,
            local_port,
            remote_addr: remote,
            remote_port: port,
        };
        let mut sock = new_socket(&socket_cfg, self.clock);
        sock.connect(
            self.iface.context(),
            IpEndpoint::new(IpAddress::Ipv4(remote), port),
            IpListenEndpoint {
                addr: Some(IpAddress::Ipv4(local)),
                port: local_port,
            },
        )
        .map_err(|_| TcpError::Unaddressable)?;
        let guard = Guard::of(&socket_cfg);
        let slot = self.insert_conn(sock, tuple, Role::User, guard);
        self.mark_ready(slot);
        Ok(ConnId {
            index: slot,
            generation: self.slots[slot as usize].generation,
        })
    }

    fn pick_port(
        &mut self,
        local: Ipv4Address,
        remote: Ipv4Address,
        remote_port: u16,
        mut port_ok: impl FnMut(u16) -> bool,
    ) -> Result<u16, TcpError> {
        let lo = u32::from(*self.cfg.ephemeral_ports.start());
        let n = u32::from(*self.cfg.ephemeral_ports.end()) - lo + 1;
        for _ in 0..n {
            let p = (lo + self.port_cursor % n) as u16;
            self.port_cursor = self.port_cursor.wrapping_add(1);
            if self.by_port.contains_key(&p) {
                continue;
            }
            let t = FourTuple {
                local_addr: local,
                local_port: p,
                remote_addr: remote,
                remote_port,
            };
            if !self.flows.contains_key(&t) && port_ok(p) {
                return Ok(p);
            }
        }
        Err(TcpError::NoPort)
    }

    // ---------------------------------------------------------------- data

    fn user_conn(&mut self, id: ConnId) -> Result<&mut Conn, TcpError> {
        user_conn_in(&mut self.slots, id)
    }

    fn user_socket(&mut self, id: ConnId) -> Result<&mut tcp::Socket<'static>, TcpError> {
        self.user_conn(id)?.socket()
    }

    /// Write through `write`, which returns a value and whether the write
    /// fell short of what the caller had. Then: a full send buffer or a short
    /// write asks for `Writable`; queued bytes have the connection transmit
    /// on the next poll.
    fn with_send<R>(
        &mut self,
        id: ConnId,
        write: impl FnOnce(&mut tcp::Socket<'static>) -> Result<(R, bool), tcp::SendError>,
    ) -> Result<R, TcpError> {
        let c = user_conn_in(&mut self.slots, id)?;
        let sock = c.socket()?;
        let before = sock.send_queue();
        let (r, short) = write(sock).map_err(|_| TcpError::InvalidState)?;
        let after = sock.send_queue();
        if short || after == sock.send_capacity() {
            c.want_writable = true;
        }
        if after != before {
            push_ready(c, &mut self.ready, id.index);
        }
        Ok(r)
    }

    /// Write into the send buffer: `f` gets the free space (one contiguous
    /// run of it) and returns how many bytes it filled and a value.
    pub fn send<R>(
        &mut self,
        id: ConnId,
        f: impl FnOnce(&mut [u8]) -> (usize, R),
    ) -> Result<R, TcpError> {
        self.with_send(id, |sock| {
            // A closure that claims more than it was given must not panic smoltcp.
            let r = sock.send(|buf| {
                let (n, r) = f(buf);
                (n.min(buf.len()), r)
            })?;
            Ok((r, false))
        })
    }

    /// Copy as much of `data` as fits into the send buffer; returns the count.
    pub fn send_slice(&mut self, id: ConnId, data: &[u8]) -> Result<usize, TcpError> {
        self.with_send(id, |sock| {
            let n = sock.send_slice(data)?;
            Ok((n, n < data.len()))
        })
    }

    /// Read from the connection: `saved` gets the unread bytes kept from a
    /// socket dropped after a clean close (and returns how many it consumed),
    /// otherwise `read` gets the socket; `ctx` goes to whichever runs.
    /// Re-arms `Readable`; a read that frees receive space has the connection
    /// transmit on the next poll.
    fn with_recv<C, R>(
        &mut self,
        id: ConnId,
        ctx: C,
        saved: impl FnOnce(C, &mut [u8]) -> (usize, R),
        read: impl FnOnce(C, &mut tcp::Socket<'static>) -> Result<R, tcp::RecvError>,
    ) -> Result<R, TcpError> {
        let c = user_conn_in(&mut self.slots, id)?;
        c.readable_sent = false;
        if c.leftover_pos < c.leftover.len() {
            let (n, r) = saved(ctx, &mut c.leftover[c.leftover_pos..]);
            c.leftover_pos = (c.leftover_pos + n).min(c.leftover.len());
            if c.leftover_pos == c.leftover.len() {
                c.leftover = Vec::new();
                c.leftover_pos = 0;
            }
            return Ok(r);
        }
        let sock = match (&mut c.set, c.dead) {
            (Some(set), _) => set.get_mut::<tcp::Socket>(c.handle),
            (None, Some(Dead::Reset)) => return Err(TcpError::Reset),
            (None, _) => return Err(TcpError::Finished),
        };
        let before = sock.recv_queue();
        let r = read(ctx, sock).map_err(|e| match e {
            tcp::RecvError::Finished => TcpError::Finished,
            _ => TcpError::InvalidState,
        });
        if sock.recv_queue() != before {
            // Reading may open the window enough to need a window update.
            push_ready(c, &mut self.ready, id.index);
        }
        r
    }

    /// Read from the receive buffer: `f` gets the queued bytes (one
    /// contiguous run; they may be modified in place, e.g. decrypted) and
    /// returns how many it consumed and a value. `Err(Finished)` once the
    /// peer has closed and everything was read.
    pub fn recv<R>(
        &mut self,
        id: ConnId,
        f: impl FnOnce(&mut [u8]) -> (usize, R),
    ) -> Result<R, TcpError> {
        self.with_recv(
            id,
            f,
            |f, saved| f(saved),
            |f, sock| {
                // A closure that claims more than it was given must not panic smoltcp.
                sock.recv(|buf| {
                    let (n, r) = f(buf);
                    (n.min(buf.len()), r)
                })
            },
        )
    }

    /// Copy queued bytes into `buf`; returns the count (0: nothing queued yet).
    pub fn recv_slice(&mut self, id: ConnId, buf: &mut [u8]) -> Result<usize, TcpError> {
        self.with_recv(
            id,
            buf,
            |buf, saved| {
                let n = saved.len().min(buf.len());
                buf[..n].copy_from_slice(&saved[..n]);
                (n, n)
            },
            |buf, sock| sock.recv_slice(buf),
        )
    }

    /// Bytes waiting to be read.
    pub fn recv_queue(&mut self, id: ConnId) -> Result<usize, TcpError> {
        let c = self.user_conn(id)?;
        let left = c.leftover.len() - c.leftover_pos;
        match &c.set {
            Some(set) => Ok(left + set.get::<tcp::Socket>(c.handle).recv_queue()),
            None => Ok(left),
        }
    }

    /// Free space in the send buffer.
    pub fn send_room(&mut self, id: ConnId) -> Result<usize, TcpError> {
        let s = self.user_socket(id)?;
        Ok(s.send_capacity() - s.send_queue())
    }

    /// The TCP state (`Closed` once the connection is dead).
    pub fn state(&mut self, id: ConnId) -> Result<tcp::State, TcpError> {
        let c = self.user_conn(id)?;
        Ok(match &c.set {
            Some(set) => set.get::<tcp::Socket>(c.handle).state(),
            None => tcp::State::Closed,
        })
    }

    /// The connection's 4-tuple.
    pub fn tuple(&mut self, id: ConnId) -> Result<FourTuple, TcpError> {
        Ok(self.user_conn(id)?.tuple)
    }

    /// Send a FIN after the queued data; keep receiving.
    pub fn shutdown(&mut self, id: ConnId) -> Result<(), TcpError> {
        let sock = self.user_socket(id)?;
        sock.close();
        // The final ACK must not be delayed: the TIME-WAIT record is built
        // from it (see `settle`).
        sock.set_ack_delay(None);
        self.mark_ready(id.index);
        Ok(())
    }

    /// Close gracefully (FIN after queued data) and give up the handle. Data
    /// that arrives afterwards is discarded.
    pub fn close(&mut self, id: ConnId) -> Result<(), TcpError> {
        self.user_conn(id)?;
        self.release(id.index, false);
        Ok(())
    }

    /// Reset the connection and give up the handle.
    pub fn abort(&mut self, id: ConnId) -> Result<(), TcpError> {
        self.user_conn(id)?;
        self.release(id.index, true);
        Ok(())
    }

    /// The next event, if any.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When `poll` should next be called if no frame arrives: `None` when
    /// nothing is scheduled, the time of the last `poll` if work is pending.
    #[must_use]
    pub fn poll_at(&self) -> Option<Instant> {
        if !self.ready.is_empty() {
            return Some(self.now);
        }
        let t = self.timers.next_at();
        let w = self.tw_queue.next_at();
        match (t, w) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
        .map(Instant::from_micros)
    }

    // ---------------------------------------------------------------- poll

    /// Receive up to `rx_burst` frames, run due timers, expire TIME-WAIT
    /// records, and transmit for every connection with something to send.
    /// Returns the number of frames received and sent.
    pub fn poll<D: Device + ?Sized>(&mut self, now: Instant, device: &mut D) -> usize {
        self.now = now;
        let vnow = self.clock.to_virt(now);
        let before = self.stats.rx_frames + self.stats.tx_frames;
        for _ in 0..self.cfg.rx_burst {
            let Some((rx, tx)) = device.receive(now) else {
                break;
            };
            self.stats.rx_frames += 1;
            rx.consume(|frame| self.ingress(now, vnow, frame, tx));
        }
        self.fire_timers(now);
        self.expire_time_wait(now);
        self.egress(now, device);
        (self.stats.rx_frames + self.stats.tx_frames - before) as usize
    }

    /// Transmit only (after `send`/`close` calls, without reading the device).
    pub fn egress<D: Device + ?Sized>(&mut self, now: Instant, device: &mut D) -> usize {
        self.now = now;
        let vnow = self.clock.to_virt(now);
        let before = self.stats.tx_frames;
        // Connections queue themselves again (into `ready`, the spare list)
        // while `batch` is worked through; then `batch` is the spare one.
        let mut batch = core::mem::replace(&mut self.ready, core::mem::take(&mut self.spare));
        let mut exhausted = false;
        for &slot in &batch {
            let Some(c) = self.slots[slot as usize].conn.as_mut() else {
                continue;
            };
            c.in_ready = false;
            if exhausted {
                self.mark_ready(slot);
                continue;
            }
            let (sent, ex, wanted) = self.egress_one(slot, now, vnow, device);
            exhausted = ex;
            self.settle(slot, now, vnow, sent, ex, wanted);
        }
        batch.clear();
        self.spare = batch;
        (self.stats.tx_frames - before) as usize
    }

    fn egress_one<D: Device + ?Sized>(
        &mut self,
        slot: u32,
        now: Instant,
        vnow: Instant,
        device: &mut D,
    ) -> (u64, bool, bool) {
        let Some(conn) = self.slots[slot as usize].conn.as_mut() else {
            return (0, false, false);
        };
        let Some(set) = conn.set.as_mut() else {
            return (0, false, false);
        };
        let wanted = self.medium == Medium::Ethernet
            && self.iface.poll_at(vnow, set).is_some_and(|t| t <= vnow);
        let mut obs = TxObs::default();
        let mut exhausted = false;
        for _ in 0..self.cfg.tx_burst_per_conn {
            let mut dev = EgressDev {
                inner: &mut *device,
                obs: &mut obs,
                now,
                medium: self.medium,
                exhausted: false,
            };
            let r = self.iface.poll_egress(vnow, &mut dev, set);
            exhausted = dev.exhausted;
            if r == PollResult::None || exhausted {
                break;
            }
        }
        if obs.last_seq_ack.is_some() {
            conn.last_seq_ack = obs.last_seq_ack;
        }
        conn.rst_sent |= obs.rst;
        self.stats.tx_frames += obs.frames;
        // An ARP request sent on this socket's behalf means it waits for a
        // neighbour, however the due-check before went.
        (obs.segments, exhausted, wanted || obs.arp)
    }

    fn ingress<T: TxToken>(&mut self, now: Instant, vnow: Instant, frame: &[u8], tx: T) {
        let Some(seg) = frame::parse(self.medium, frame) else {
            let arp = frame::is_arp(self.medium, frame);
            self.feed_empty(vnow, frame, tx);
            if arp {
                // A neighbour may just have been resolved: retry the sockets
                // that were held back for it rather than wait for their timer.
                for (slot, generation) in core::mem::take(&mut self.neighbor_waiters) {
                    if self.conn_at(slot, generation).is_some() {
                        if let Some(c) = self.slots[slot as usize].conn.as_mut() {
                            c.neighbor_wait = false;
                        }
                        self.mark_ready(slot);
                    }
                }
            }
            return;
        };
        match self.flows.get(&seg.tuple).copied() {
            Some(FlowEntry::Conn(slot)) => self.feed_conn(slot, vnow, frame, tx, &seg),
            Some(FlowEntry::TimeWait(tw)) => self.ingress_time_wait(now, vnow, frame, tx, &seg, tw),
            None => match self.listener_for(&seg) {
                Some(l) => self.admit(l, vnow, frame, tx, &seg, false),
                // No connection: smoltcp answers with a RST (or drops a RST).
                None => self.feed_empty(vnow, frame, tx),
            },
        }
    }

    fn feed_empty<T: TxToken>(&mut self, vnow: Instant, frame: &[u8], tx: T) {
        let obs = feed_one(
            &mut self.iface,
            self.medium,
            &self.caps,
            vnow,
            frame,
            tx,
            &mut self.empty,
        );
        self.stats.tx_frames += obs.frames;
    }

    fn feed_conn<T: TxToken>(
        &mut self,
        slot: u32,
        vnow: Instant,
        frame: &[u8],
        tx: T,
        seg: &Segment,
    ) {
        let Some(conn) = self.slots[slot as usize].conn.as_mut() else {
            return;
        };
        let Some(set) = conn.set.as_mut() else {
            return;
        };
        let obs = feed_one(
            &mut self.iface,
            self.medium,
            &self.caps,
            vnow,
            frame,
            tx,
            set,
        );
        conn.last_rx_us = self.now.total_micros();
        if seg.rst && set.get::<tcp::Socket>(conn.handle).state() == tcp::State::Closed {
            conn.rst_seen = true;
        }
        if obs.last_seq_ack.is_some() {
            conn.last_seq_ack = obs.last_seq_ack;
        }
        conn.rst_sent |= obs.rst;
        self.stats.tx_frames += obs.frames;
        self.mark_ready(slot);
    }

    fn listener_for(&self, seg: &Segment) -> Option<u32> {
        if !seg.is_pure_syn() {
            return None;
        }
        let &index = self.by_port.get(&seg.tuple.local_port)?;
        let l = self.listeners[index as usize].listener.as_ref()?;
        let addr_ok = match l.addr {
            Some(a) => a == seg.tuple.local_addr,
            None => self.iface.has_ip_addr(seg.tuple.local_addr),
        };
        addr_ok.then_some(index)
    }

    /// A SYN for a listener and no existing flow: apply the backlog policy,
    /// then create the connection and let smoltcp answer the SYN.
    fn admit<T: TxToken>(
        &mut self,
        lindex: u32,
        vnow: Instant,
        frame: &[u8],
        tx: T,
        seg: &Segment,
        verified: bool,
    ) {
        if !verified && !frame::checksums_ok(self.medium, frame, &self.caps.checksum) {
            self.stats.syn_bad_checksum += 1;
            return;
        }
        let Some(l) = self.listeners[lindex as usize].listener.as_mut() else {
            return;
        };
        if l.half_open_count + l.queued_count >= l.backlog {
            if l.half_open_count == 0 {
                self.stats.syn_dropped += 1;
                return;
            }
            // Drop-oldest: under a SYN flood the half-open slots cycle, and a
            // real client's handshake completes if its ACK comes back before
            // `backlog` newer SYNs arrive. SYN cookies would need a socket
            // created straight into ESTABLISHED, which smoltcp cannot do.
            let mut victim = None;
            while let Some((slot, generation)) = l.half_open.pop_front() {
                let s = &self.slots[slot as usize];
                if s.generation == generation
                    && s.conn.as_ref().map(|c| c.role) == Some(Role::HalfOpen(lindex))
                {
                    victim = Some(slot);
                    break;
                }
            }
            if let Some(slot) = victim {
                self.free_conn(slot);
                self.stats.syn_evicted += 1;
            }
        }
        let Some(l) = self.listeners[lindex as usize].listener.as_mut() else {
            return;
        };
        let mut sock = new_socket(&l.socket, self.clock);
        let endpoint = IpListenEndpoint {
            addr: l.addr.map(IpAddress::Ipv4),
            port: l.port,
        };
        if sock.listen(endpoint).is_err() {
            return;
        }
        let guard = Guard::of(&l.socket);
        let slot = self.insert_conn(sock, seg.tuple, Role::HalfOpen(lindex), guard);
        let generation = self.slots[slot as usize].generation;
        if let Some(l) = self.listeners[lindex as usize].listener.as_mut() {
            l.half_open.push_back((slot, generation));
            l.half_open_count += 1;
            if l.half_open.len() > 2 * l.half_open_count + 64 {
                let slots = &self.slots;
                l.half_open.retain(|&(s, g)| {
                    slots[s as usize].generation == g
                        && slots[s as usize]
                            .conn
                            .as_ref()
                            .is_some_and(|c| c.role == Role::HalfOpen(lindex))
                });
            }
        }
        self.stats.syn_admitted += 1;
        self.feed_conn(slot, vnow, frame, tx, seg);
    }

    fn ingress_time_wait<T: TxToken>(
        &mut self,
        now: Instant,
        vnow: Instant,
        frame: &[u8],
        tx: T,
        seg: &Segment,
        tw: TimeWait,
    ) {
        if !frame::checksums_ok(self.medium, frame, &self.caps.checksum) {
            return;
        }
        if seg.rst {
            // RFC 1337: a RST must not cut TIME-WAIT short.
            return;
        }
        if seg.is_pure_syn() {
            if frame::seq_gt(seg.seq, tw.rcv_nxt)
                && let Some(l) = self.listener_for(seg)
            {
                // A new incarnation of the connection (RFC 1122 4.2.2.13).
                self.flows.remove(&seg.tuple);
                self.tw_count -= 1;
                self.stats.time_wait_reused += 1;
                self.admit(l, vnow, frame, tx, seg, true);
                return;
            }
            self.time_wait_ack(tx, seg, tw);
            return;
        }
        if seg.fin || seg.syn || seg.payload_len > 0 {
            // Our final ACK was lost (or this is a stray): say where we are.
            self.time_wait_ack(tx, seg, tw);
            if seg.fin {
                // Restart 2MSL. The record keeps its one queue entry, which
                // follows the new deadline when it comes up (`pop_time_wait`).
                let expires_us = now.total_micros().saturating_add(self.tw_duration_us());
                if let Some(FlowEntry::TimeWait(r)) = self.flows.get_mut(&seg.tuple) {
                    r.expires_us = expires_us;
                }
            }
        }
    }

    fn time_wait_ack<T: TxToken>(&mut self, tx: T, seg: &Segment, tw: TimeWait) {
        if self.medium == Medium::Ethernet && (seg.eth_src.is_none() || self.our_mac.is_none()) {
            return;
        }
        let len = frame::ack_len(self.medium);
        let ack = frame::BareAck {
            medium: self.medium,
            our_mac: self.our_mac,
            peer_mac: seg.eth_src,
            tuple: seg.tuple,
            seq: tw.snd_nxt,
            ack: tw.rcv_nxt,
        };
        let caps = &self.caps.checksum;
        tx.consume(len, |buf| ack.write(buf, caps));
        self.stats.tx_frames += 1;
        self.stats.time_wait_acks += 1;
    }

    fn tw_duration_us(&self) -> i64 {
        i64::try_from(self.cfg.time_wait.total_micros()).unwrap_or(i64::MAX / 4)
    }

    fn fire_timers(&mut self, now: Instant) {
        let now_us = now.total_micros();
        while let Some((at, slot, generation)) = self.timers.pop_due(now_us) {
            let Some(s) = self.slots.get_mut(slot as usize) else {
                continue;
            };
            if s.generation != generation {
                continue;
            }
            let Some(c) = s.conn.as_mut() else {
                continue;
            };
            if c.timer_at != Some(at) {
                continue;
            }
            c.timer_at = None;
            self.stats.timer_fires += 1;
            self.mark_ready(slot);
        }
        if self.timers.len() > 4 * self.live + 1024 {
            let slots = &self.slots;
            self.timers.retain(|at, s, g| {
                slots.get(s as usize).is_some_and(|slot| {
                    slot.generation == g
                        && slot.conn.as_ref().is_some_and(|c| c.timer_at == Some(at))
                })
            });
        }
    }

    fn expire_time_wait(&mut self, now: Instant) {
        let now_us = now.total_micros();
        while self.tw_queue.next_at().is_some_and(|at| at <= now_us) {
            if self.pop_time_wait() {
                self.stats.time_wait_expired += 1;
            }
        }
    }

    /// Take the queue entry with the earliest deadline. If that is still its
    /// record's deadline, remove the record (true). If the record's 2MSL was
    /// restarted since, queue the entry again at the new deadline; if the
    /// record is gone, drop the entry.
    fn pop_time_wait(&mut self) -> bool {
        let Some((tuple, expires)) = self.tw_queue.pop() else {
            return false;
        };
        match self.flows.get(&tuple) {
            Some(FlowEntry::TimeWait(tw)) if tw.expires_us == expires => {
                self.flows.remove(&tuple);
                self.tw_count -= 1;
                true
            }
            Some(FlowEntry::TimeWait(tw)) if tw.expires_us > expires => {
                self.tw_queue.push(tw.expires_us, tuple);
                false
            }
            _ => false,
        }
    }

    fn enter_time_wait(&mut self, tuple: FourTuple, snd_nxt: u32, rcv_nxt: u32) {
        let expires_us = self
            .now
            .total_micros()
            .saturating_add(self.tw_duration_us());
        let prev = self.flows.insert(
            tuple,
            FlowEntry::TimeWait(TimeWait {
                expires_us,
                snd_nxt,
                rcv_nxt,
            }),
        );
        if !matches!(prev, Some(FlowEntry::TimeWait(_))) {
            self.tw_count += 1;
            self.tw_queue.push(expires_us, tuple);
        }
        self.stats.time_wait_created += 1;
        while self.tw_count > self.cfg.max_time_wait {
            if self.pop_time_wait() {
                self.stats.time_wait_evicted += 1;
            }
        }
    }

    // ---------------------------------------------------------------- slots

    fn conn_at(&self, slot: u32, generation: u32) -> Option<&Conn> {
        let s = self.slots.get(slot as usize)?;
        if s.generation != generation {
            return None;
        }
        s.conn.as_ref()
    }

    fn insert_conn(
        &mut self,
        sock: tcp::Socket<'static>,
        tuple: FourTuple,
        role: Role,
        guard: Guard,
    ) -> u32 {
        let mut set = SocketSet::new(Vec::with_capacity(1));
        let state = sock.state();
        let handle = set.add(sock);
        let conn = Conn {
            set: Some(set),
            handle,
            tuple,
            role,
            state,
            timeout_us: guard.timeout_us,
            keep_alive: guard.keep_alive,
            last_rx_us: self.now.total_micros(),
            guard_since: None,
            timer_at: None,
            in_ready: false,
            neighbor_wait: false,
            readable_sent: false,
            want_writable: false,
            connected_sent: role != Role::User,
            rst_seen: false,
            rst_sent: false,
            last_seq_ack: None,
            dead: None,
            leftover: Vec::new(),
            leftover_pos: 0,
        };
        let slot = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize].conn = Some(conn);
                i
            }
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    conn: Some(conn),
                });
                (self.slots.len() - 1) as u32
            }
        };
        self.live += 1;
        self.flows.insert(tuple, FlowEntry::Conn(slot));
        slot
    }

    fn mark_ready(&mut self, slot: u32) {
        if let Some(c) = self.slots[slot as usize].conn.as_mut() {
            push_ready(c, &mut self.ready, slot);
        }
    }

    /// Forget the connection in `slot` entirely.
    fn free_conn(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        let Some(conn) = s.conn.take() else {
            return;
        };
        s.generation = s.generation.wrapping_add(1);
        self.free.push(slot);
        self.live -= 1;
        if self.flows.get(&conn.tuple) == Some(&FlowEntry::Conn(slot)) {
            self.flows.remove(&conn.tuple);
        }
        leave_listener(&mut self.listeners, conn.role);
    }

    /// Drop the socket (and its buffers) of a caller-owned connection; the
    /// slot stays until the caller closes the handle.
    fn kill_socket(&mut self, slot: u32, dead: Dead) {
        let Some(conn) = self.slots[slot as usize].conn.as_mut() else {
            return;
        };
        conn.set = None;
        conn.dead = Some(dead);
        conn.timer_at = None;
        let tuple = conn.tuple;
        if self.flows.get(&tuple) == Some(&FlowEntry::Conn(slot)) {
            self.flows.remove(&tuple);
        }
    }

    /// The caller (or `unlisten`) gives the connection up.
    fn release(&mut self, slot: u32, abort: bool) {
        let Some(conn) = self.slots[slot as usize].conn.as_mut() else {
            return;
        };
        leave_listener(&mut self.listeners, conn.role);
        conn.role = Role::Released;
        conn.leftover = Vec::new();
        let Some(set) = conn.set.as_mut() else {
            self.free_conn(slot);
            return;
        };
        let sock = set.get_mut::<tcp::Socket>(conn.handle);
        if abort {
            sock.abort();
        } else {
            sock.close();
            sock.set_ack_delay(None);
        }
        self.mark_ready(slot);
    }

    /// After a connection was touched (ingress, timer, caller) and given its
    /// turn to transmit: follow its state, raise events, move it between
    /// accept queue / caller / TIME-WAIT / free, and schedule its timer.
    fn settle(
        &mut self,
        slot: u32,
        now: Instant,
        vnow: Instant,
        sent: u64,
        exhausted: bool,
        wanted: bool,
    ) {
        let generation = self.slots[slot as usize].generation;
        let Some(conn) = self.slots[slot as usize].conn.as_mut() else {
            return;
        };
        let Some(set) = conn.set.as_mut() else {
            return;
        };
        let sock = set.get_mut::<tcp::Socket>(conn.handle);
        let state = sock.state();
        let prev = core::mem::replace(&mut conn.state, state);
        if conn.role == Role::Released {
            // Nobody will read it: keep the window open so the peer can finish.
            while sock.recv(|b| (b.len(), b.len())).unwrap_or(0) > 0 {}
        }
        if !synchronized(prev) && synchronized(state) {
            // smoltcp's own timeout is the handshake timeout only: once
            // synchronized it would also abort idle connections (it counts
            // from the last segment received even with nothing in flight),
            // so the user timeout is enforced here instead.
            sock.set_timeout(None);
        }
        // The user timeout is armed while something of ours awaits an ACK
        // (data or FIN), while keep-alives probe, and for released
        // connections (a FIN-WAIT-2 peer that never closes must not pin
        // memory). It counts from the later of the last segment received and
        // the moment it was armed.
        let now_us = now.total_micros();
        let armed = synchronized(state)
            && state != tcp::State::TimeWait
            && (conn.role == Role::Released
                || conn.keep_alive
                || sock.send_queue() > 0
                || matches!(
                    state,
                    tcp::State::FinWait1 | tcp::State::Closing | tcp::State::LastAck
                ));
        if !armed {
            conn.guard_since = None;
        } else if conn.guard_since.is_none() {
            conn.guard_since = Some(now_us);
        }
        let user_deadline = match (conn.guard_since, conn.timeout_us) {
            (Some(since), Some(t)) => Some(since.max(conn.last_rx_us).saturating_add(t)),
            _ => None,
        };
        if user_deadline.is_some_and(|d| now_us >= d) && state != tcp::State::Closed {
            sock.abort();
            conn.rst_sent = true;
            conn.guard_since = None;
            push_ready(conn, &mut self.ready, slot);
            return;
        }
        let rx_queued = sock.recv_queue();
        let eof = fin_received(state) && rx_queued == 0;
        let room = sock.send_capacity() - sock.send_queue();
        let writable = sock.may_send() && room >= (sock.send_capacity() / 4).max(1);
        let next = self.iface.poll_at(vnow, set);
        let due = next.is_some_and(|t| t <= vnow);
        let role = conn.role;
        let id = ConnId {
            index: slot,
            generation,
        };

        // Terminal states, once nothing is left to transmit.
        if !due {
            let closed = state == tcp::State::Closed
                || (state == tcp::State::Listen && matches!(role, Role::HalfOpen(_)));
            if state == tcp::State::TimeWait || closed {
                let tw = (state == tcp::State::TimeWait)
                    .then_some(conn.last_seq_ack)
                    .flatten();
                let reset =
                    closed && (conn.rst_seen || conn.rst_sent || prev != tcp::State::LastAck);
                if role == Role::User && !reset && rx_queued > 0 {
                    let sock = set.get_mut::<tcp::Socket>(conn.handle);
                    let mut saved = vec![0; rx_queued];
                    let n = sock.recv_slice(&mut saved).unwrap_or(0);
                    saved.truncate(n);
                    conn.leftover = saved;
                    conn.leftover_pos = 0;
                }
                let tuple = conn.tuple;
                if let Some((snd_nxt, rcv_nxt)) = tw {
                    self.enter_time_wait(tuple, snd_nxt, rcv_nxt);
                }
                match role {
                    Role::User => {
                        self.kill_socket(slot, if reset { Dead::Reset } else { Dead::Closed });
                        self.events.push_back(if reset {
                            Event::Reset(id)
                        } else {
                            Event::Closed(id)
                        });
                    }
                    _ => self.free_conn(slot),
                }
                return;
            }
        }

        match role {
            Role::HalfOpen(l) if synchronized(state) => {
                conn.role = Role::Queued(l);
                if let Some(listener) = self.listeners[l as usize].listener.as_mut() {
                    listener.half_open_count -= 1;
                    listener.queued_count += 1;
                    listener.queue.push_back((slot, generation));
                    let lid = ListenerId {
                        index: l,
                        generation: self.listeners[l as usize].generation,
                    };
                    self.events.push_back(Event::Accept(lid));
                }
            }
            Role::User => {
                if !conn.connected_sent && synchronized(state) {
                    conn.connected_sent = true;
                    self.events.push_back(Event::Connected(id));
                }
                if (rx_queued > 0 || eof) && !conn.readable_sent {
                    conn.readable_sent = true;
                    self.events.push_back(Event::Readable(id));
                }
                if conn.want_writable && writable {
                    conn.want_writable = false;
                    self.events.push_back(Event::Writable(id));
                }
            }
            _ => {}
        }

        // Schedule the next visit.
        let Some(conn) = self.slots[slot as usize].conn.as_mut() else {
            return;
        };
        if due {
            if sent > 0 || exhausted {
                // Progress was made (or the device is full): go again next poll.
                push_ready(conn, &mut self.ready, slot);
            } else {
                // Due but nothing went out: retry after a short pause rather
                // than spin.
                let at = now.total_micros().saturating_add(1000);
                arm_timer(conn, &mut self.timers, at, slot, generation);
            }
        } else if let Some(at) = next
            .map(|v| self.clock.to_real_ceil(v).total_micros())
            .into_iter()
            .chain(user_deadline)
            .min()
        {
            let at = at.max(now.total_micros().saturating_add(1));
            arm_timer(conn, &mut self.timers, at, slot, generation);
        }
        if wanted && sent == 0 && !exhausted && !conn.neighbor_wait {
            // Held back for a neighbour (ARP); the ARP reply wakes it.
            conn.neighbor_wait = true;
            self.neighbor_waiters.push((slot, generation));
        }
    }

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
        // hashbrown: buckets are a power of two with at most 7/8 full; each
        // bucket holds a key-value pair and one control byte.
        let buckets = (self.flows.capacity() * 8 / 7 + 1).next_power_of_two();
        m.tables += buckets * (size_of::<(FourTuple, FlowEntry)>() + 1);
        m.tables += self.free.capacity() * 4
            + self.timers.capacity_bytes()
            + (self.ready.capacity() + self.spare.capacity()) * 4
            + self.events.capacity() * size_of::<Event>()
            + self.tw_queue.capacity_bytes()
            + self.neighbor_waiters.capacity() * 8;
        for l in self.listeners.iter().filter_map(|l| l.listener.as_ref()) {
            m.tables += (l.half_open.capacity() + l.queue.capacity()) * 8;
        }
        m
    }
}

/// Hand smoltcp one received frame, with the reply token the device paired
/// with it, for the sockets in `set`; returns what smoltcp transmitted.
fn feed_one<T: TxToken>(
    iface: &mut Interface,
    medium: Medium,
    caps: &DeviceCapabilities,
    vnow: Instant,
    frame: &[u8],
    tx: T,
    set: &mut SocketSet<'static>,
) -> TxObs {
    let mut obs = TxObs::default();
    let mut dev = OneShot::new(
        frame,
        InspectTx {
            inner: tx,
            obs: &mut obs,
            medium,
        },
        caps.clone(),
    );
    let _ = iface.poll_ingress_single(vnow, &mut dev, set);
    obs
}

/// The listener `id` names.
fn listener_in(listeners: &mut [ListenerSlot], id: ListenerId) -> Result<&mut Listener, TcpError> {
    match listeners.get_mut(id.index as usize) {
        Some(ListenerSlot {
            generation,
            listener: Some(l),
        }) if *generation == id.generation => Ok(l),
        _ => Err(TcpError::InvalidHandle),
    }
}

/// The caller-owned connection `id` names.
fn user_conn_in(slots: &mut [Slot], id: ConnId) -> Result<&mut Conn, TcpError> {
    match slots.get_mut(id.index as usize) {
        Some(Slot {
            generation,
            conn: Some(c),
        }) if *generation == id.generation && c.role == Role::User => Ok(c),
        _ => Err(TcpError::InvalidHandle),
    }
}

/// Put the connection in `slot` on the ready list unless it is there.
fn push_ready(conn: &mut Conn, ready: &mut Vec<u32>, slot: u32) {
    if !conn.in_ready {
        conn.in_ready = true;
        ready.push(slot);
    }
}

/// Schedule a visit at `at` (real µs) unless one is due earlier.
fn arm_timer(conn: &mut Conn, timers: &mut TimerHeap, at: i64, slot: u32, generation: u32) {
    if conn.timer_at.is_none_or(|t| at < t) {
        conn.timer_at = Some(at);
        timers.push(at, slot, generation);
    }
}

/// The user-timeout settings a connection keeps.
#[derive(Debug, Clone, Copy)]
struct Guard {
    timeout_us: Option<i64>,
    keep_alive: bool,
}

impl Guard {
    fn of(cfg: &SocketConfig) -> Self {
        Self {
            timeout_us: cfg
                .timeout
                .map(|d| i64::try_from(d.total_micros()).unwrap_or(i64::MAX / 4)),
            keep_alive: cfg.keep_alive.is_some(),
        }
    }
}

fn new_socket(cfg: &SocketConfig, clock: Clock) -> tcp::Socket<'static> {
    let rx = tcp::SocketBuffer::new(zeroed(cfg.rx_buffer));
    let tx = tcp::SocketBuffer::new(zeroed(cfg.tx_buffer));
    let mut s = tcp::Socket::new(rx, tx);
    s.set_nagle_enabled(cfg.nagle);
    s.set_ack_delay(cfg.ack_delay.map(|d| clock.dur_to_virt(d)));
    s.set_keep_alive(cfg.keep_alive.map(|d| clock.dur_to_virt(d)));
    s.set_timeout(Some(clock.dur_to_virt(cfg.handshake_timeout)));
    s.set_congestion_control(match cfg.congestion {
        Congestion::None => tcp::CongestionControl::None,
        Congestion::Reno => tcp::CongestionControl::Reno,
    });
    s.set_hop_limit(cfg.hop_limit);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_predicates() {
        assert!(synchronized(tcp::State::Established));
        assert!(!synchronized(tcp::State::SynReceived));
        assert!(fin_received(tcp::State::TimeWait));
        assert!(!fin_received(tcp::State::FinWait2));
    }
}
