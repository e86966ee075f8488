//! One connection as the stack keeps it: the [`Conn`] record around its
//! smoltcp socket (who owns it, what was last seen of it, which events were
//! raised, its user-timeout bookkeeping), how its socket is built from a
//! [`SocketConfig`], and the small steps every module takes on it (queue it
//! for egress, arm its timer, ask what its state means).

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;

use crate::TcpError;
use crate::clock::Clock;
use crate::config::{Congestion, SocketConfig};
use crate::flow::FourTuple;
use crate::timer::TimerHeap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
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
pub(super) enum Dead {
    Closed,
    Reset,
}

#[derive(Debug)]
pub(super) struct Conn {
    /// Exactly one `tcp::Socket`, at `handle`; `None` once the socket is gone
    /// (a dead connection the caller has not closed yet).
    pub(super) set: Option<SocketSet<'static>>,
    pub(super) handle: SocketHandle,
    pub(super) tuple: FourTuple,
    pub(super) role: Role,
    /// The state seen at the last settle.
    pub(super) state: tcp::State,
    /// User timeout in real µs (see `settle`).
    pub(super) timeout_us: Option<i64>,
    pub(super) keep_alive: bool,
    /// When a segment for this connection last arrived (real µs).
    pub(super) last_rx_us: i64,
    /// Since when the user timeout has been armed (real µs).
    pub(super) guard_since: Option<i64>,
    /// The deadline (real µs) this connection has in the timer heap.
    pub(super) timer_at: Option<i64>,
    pub(super) in_ready: bool,
    /// Listed in `neighbor_waiters`.
    pub(super) neighbor_wait: bool,
    pub(super) readable_sent: bool,
    pub(super) want_writable: bool,
    pub(super) connected_sent: bool,
    pub(super) rst_seen: bool,
    pub(super) rst_sent: bool,
    pub(super) last_seq_ack: Option<(u32, u32)>,
    /// The sequence number of the peer's SYN, for a connection a listener
    /// admitted (kept in its TIME-WAIT record).
    pub(super) peer_isn: Option<u32>,
    /// How far the buffers may grow.
    pub(super) rx_max: usize,
    pub(super) tx_max: usize,
    pub(super) dead: Option<Dead>,
    /// Unread bytes saved when the socket was dropped after a clean close.
    pub(super) leftover: Vec<u8>,
    pub(super) leftover_pos: usize,
}

impl Conn {
    /// The socket, or why a caller's operation on it fails.
    pub(super) fn socket(&mut self) -> Result<&mut tcp::Socket<'static>, TcpError> {
        match (&mut self.set, self.dead) {
            (Some(set), _) => Ok(set.get_mut::<tcp::Socket>(self.handle)),
            (None, Some(Dead::Reset)) => Err(TcpError::Reset),
            (None, _) => Err(TcpError::InvalidState),
        }
    }
}

/// Put the connection in `slot` on the ready list unless it is there.
pub(super) fn push_ready(conn: &mut Conn, ready: &mut Vec<u32>, slot: u32) {
    if !conn.in_ready {
        conn.in_ready = true;
        ready.push(slot);
    }
}

/// Schedule a visit at `at` (real µs) unless one is due earlier.
pub(super) fn arm_timer(
    conn: &mut Conn,
    timers: &mut TimerHeap,
    at: i64,
    slot: u32,
    generation: u32,
) {
    if conn.timer_at.is_none_or(|t| at < t) {
        conn.timer_at = Some(at);
        timers.push(at, slot, generation);
    }
}

/// States in which the connection is synchronized (handshake done).
pub(super) fn synchronized(s: tcp::State) -> bool {
    !matches!(
        s,
        tcp::State::Closed | tcp::State::Listen | tcp::State::SynSent | tcp::State::SynReceived
    )
}

/// States in which the peer's FIN has been received.
pub(super) fn fin_received(s: tcp::State) -> bool {
    matches!(
        s,
        tcp::State::CloseWait | tcp::State::LastAck | tcp::State::Closing | tcp::State::TimeWait
    )
}

/// The settings a connection keeps beside its socket: the user timeout and
/// how far its buffers may grow.
#[derive(Debug, Clone, Copy)]
pub(super) struct Guard {
    pub(super) timeout_us: Option<i64>,
    pub(super) keep_alive: bool,
    pub(super) rx_max: usize,
    pub(super) tx_max: usize,
}

impl Guard {
    pub(super) fn of(cfg: &SocketConfig) -> Self {
        Self {
            timeout_us: cfg
                .timeout
                .map(|d| i64::try_from(d.total_micros()).unwrap_or(i64::MAX / 4)),
            keep_alive: cfg.keep_alive.is_some(),
            rx_max: cfg.rx_buffer,
            tx_max: cfg.tx_buffer,
        }
    }
}

/// A new connection's receive buffer, before it grows with use.
pub(super) const INITIAL_RX: usize = 2048;
/// A new connection's send buffer, before it grows with use.
pub(super) const INITIAL_TX: usize = 1024;
/// Largest receive buffer that can grow: the window scale is negotiated
/// from the buffer's size at the handshake, and up to 64 KiB it is none at
/// all, so a grown buffer is advertised whole. Larger ones are allocated
/// whole from the start.
const GROWABLE_MAX: usize = 64 * 1024;

/// The size a buffer starts at for a maximum of `max` (and at least
/// `queued`, the bytes a moved connection brings).
fn initial_size(max: usize, initial: usize, queued: usize) -> usize {
    let start = if max <= GROWABLE_MAX {
        max.min(initial)
    } else {
        max
    };
    start.max(queued)
}

/// Grow the send buffer (doubling, up to `max`) when fewer than `want`
/// bytes are free. The queue moves with it.
pub(super) fn grow_tx(sock: &mut tcp::Socket<'static>, want: usize, max: usize) {
    let cap = sock.send_capacity();
    let queued = sock.send_queue();
    if cap - queued >= want || cap >= max {
        return;
    }
    let size = (cap * 2).max(queued + want).min(max);
    let _ = sock.replace_tx_buffer(tcp::SocketBuffer::new(zeroed(size)));
}

/// Grow the receive buffer (doubling, up to `max`) once it is more than
/// half full, so the window the peer sees opens again. The queue moves with
/// it; not while out-of-order data is held (smoltcp keeps it in the free
/// space), which the next segment retries.
pub(super) fn grow_rx(sock: &mut tcp::Socket<'static>, max: usize) {
    let cap = sock.recv_capacity();
    if sock.recv_queue() * 2 <= cap || cap >= max {
        return;
    }
    let _ = sock.replace_rx_buffer(tcp::SocketBuffer::new(zeroed((cap * 2).min(max))));
}

pub(super) fn new_socket(cfg: &SocketConfig, clock: Clock) -> tcp::Socket<'static> {
    new_socket_holding(cfg, clock, 0, 0)
}

/// A socket whose buffers start large enough for `rx_queued` and
/// `tx_queued` bytes (a moved connection's queues).
pub(super) fn new_socket_holding(
    cfg: &SocketConfig,
    clock: Clock,
    rx_queued: usize,
    tx_queued: usize,
) -> tcp::Socket<'static> {
    let rx = tcp::SocketBuffer::new(zeroed(initial_size(cfg.rx_buffer, INITIAL_RX, rx_queued)));
    let tx = tcp::SocketBuffer::new(zeroed(initial_size(cfg.tx_buffer, INITIAL_TX, tx_queued)));
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

// Written, not calloc'ed (which `vec![0; n]` would be): the pages are
// really held from the start, so process-level memory measurements see what
// the stack holds rather than what traffic happened to touch.
#[allow(clippy::slow_vector_initialization)]
fn zeroed(n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n);
    v.resize(n, 0);
    v
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
