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

/// The user-timeout settings a connection keeps.
#[derive(Debug, Clone, Copy)]
pub(super) struct Guard {
    pub(super) timeout_us: Option<i64>,
    pub(super) keep_alive: bool,
}

impl Guard {
    pub(super) fn of(cfg: &SocketConfig) -> Self {
        Self {
            timeout_us: cfg
                .timeout
                .map(|d| i64::try_from(d.total_micros()).unwrap_or(i64::MAX / 4)),
            keep_alive: cfg.keep_alive.is_some(),
        }
    }
}

pub(super) fn new_socket(cfg: &SocketConfig, clock: Clock) -> tcp::Socket<'static> {
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
