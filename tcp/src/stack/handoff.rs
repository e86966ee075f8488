//! Handoff: an established connection leaves this stack as a [`ConnState`]
//! and continues in another owner (another stack, or the kernel through
//! `TCP_REPAIR`), or arrives from one. The peer sees no handshake, no RST
//! and no FIN; at worst some retransmissions.
//!
//! Order of a move (XO-style):
//! 1. [`Stack::export`] captures the connection and takes it out of the
//!    stack. Its 4-tuple stays *held*: frames for it are dropped silently
//!    (the peer retransmits them), never answered with a RST, and nothing
//!    is sent for it.
//! 2. The new owner restores the state. If it fails, [`Stack::import`] of
//!    the same state here takes the connection back as it was.
//!    A hold ends by itself after `StackConfig::hold` (30 s), counted in
//!    `Stats::held_expired`.
//! 3. Once frames for the flow reach the new owner *and this stack has read
//!    every frame its device had queued before the flip*, [`Stack::unhold`]
//!    frees the 4-tuple here. Unheld too early, a frame still queued for the
//!    flow is answered with RST and the moved connection dies (`bench
//!    handoff` saw exactly that before it drained the stack first).
//!
//! What is carried: both sequence numbers, the unacknowledged and unsent
//! bytes, the unread bytes, the peer's window, MSS and window scale, our
//! window scale and the last window we advertised, SACK. What is not: the
//! out-of-order segments not yet in the receive queue (the peer sends them
//! again), RTT estimates and congestion state (the new owner starts afresh),
//! timestamps (smoltcp's are off here; see the crate's limits). An imported
//! connection sends its whole send queue again at once; the peer drops what
//! it already had.

use smoltcp::socket::tcp::{RestoreError, Snapshot};
use smoltcp::time::Instant;
use smoltcp::wire::{IpAddress, IpEndpoint, TcpSeqNumber};

use super::conn::{Guard, Role, new_socket_holding};
use super::slots::user_conn_in;
use super::{ConnId, Stack};
use crate::TcpError;
use crate::config::SocketConfig;
use crate::flow::{FlowEntry, FourTuple};

/// An established connection's TCP state, as it moves between owners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnState {
    /// The connection's 4-tuple, seen from our side.
    pub tuple: FourTuple,
    /// Sequence number of the first byte of `send_queue` (the oldest
    /// unacknowledged byte).
    pub send_seq: u32,
    /// Bytes at the start of `send_queue` that were sent at least once; the
    /// rest were never sent.
    pub sent: usize,
    /// Bytes written and not yet acknowledged by the peer, oldest first.
    pub send_queue: Vec<u8>,
    /// Sequence number of the first byte of `recv_queue` (the oldest unread
    /// byte).
    pub recv_seq: u32,
    /// Bytes received and not yet read.
    pub recv_queue: Vec<u8>,
    /// The acknowledgement number we last sent: at most `recv_seq +
    /// recv_queue.len()`, and before `recv_seq` when bytes were read whose
    /// (delayed) acknowledgement has not left yet.
    pub last_ack: u32,
    /// The window we last advertised, in bytes from `last_ack`.
    pub last_window: u32,
    /// The shift the peer applies to the windows we advertise (0 without
    /// window scaling).
    pub window_shift: u8,
    /// The peer's window in bytes, counted from `send_seq`.
    pub peer_window: u32,
    /// The shift we apply to the windows the peer advertises; `None` when
    /// window scaling was not negotiated.
    pub peer_window_shift: Option<u8>,
    /// The largest segment the peer accepts.
    pub peer_mss: u16,
    /// Selective acknowledgements were negotiated.
    pub sack: bool,
}

impl Stack {
    /// Capture the established connection `id` and take it out of the
    /// stack: `id` is no longer valid, and its 4-tuple is held (frames for
    /// it are dropped silently) until [`Stack::unhold`], [`Stack::import`],
    /// or `StackConfig::hold` after `now`.
    ///
    /// Fails with `InvalidState` (the connection stays as it was) unless it
    /// is ESTABLISHED and caller-owned.
    pub fn export(&mut self, now: Instant, id: ConnId) -> Result<ConnState, TcpError> {
        let conn = user_conn_in(&mut self.slots, id)?;
        let tuple = conn.tuple;
        let sock = conn.socket()?;
        let snap = sock.snapshot().ok_or(TcpError::InvalidState)?;
        let mut send_queue = vec![0; sock.send_queue()];
        let copied = sock.peek_send_slice(0, &mut send_queue);
        let mut recv_queue = vec![0; sock.recv_queue()];
        let read = sock
            .peek_slice(&mut recv_queue)
            .map_err(|_| TcpError::InvalidState)?;
        debug_assert_eq!((copied, read), (send_queue.len(), recv_queue.len()));
        let state = ConnState {
            tuple,
            send_seq: seq_bits(snap.send_seq),
            sent: snap.sent,
            send_queue,
            recv_seq: seq_bits(snap.recv_seq),
            recv_queue,
            last_ack: seq_bits(snap.last_ack),
            last_window: u32::from(snap.last_window) << snap.window_shift,
            window_shift: snap.window_shift,
            peer_window: u32::try_from(snap.peer_window).unwrap_or(u32::MAX),
            peer_window_shift: snap.peer_window_shift,
            peer_mss: u16::try_from(snap.peer_mss).unwrap_or(u16::MAX),
            sack: snap.sack,
        };
        self.free_conn(id.index);
        // The hold counts from the caller's clock (the stack's own moves only
        // at `poll`, and an idle stack may not have been polled for long).
        let expires_us = now
            .total_micros()
            .max(self.now.total_micros())
            .saturating_add(i64::try_from(self.cfg.hold.total_micros()).unwrap_or(i64::MAX / 4));
        self.flows.insert(tuple, FlowEntry::Held { expires_us });
        self.held_queue.push(expires_us, tuple);
        self.held += 1;
        self.stats.exported += 1;
        Ok(state)
    }

    /// Continue the connection `state` describes here, as a caller-owned
    /// connection (no `Connected` event; `Readable` if it carries unread
    /// bytes). Its buffers are `socket`'s sizes (default: the stack's), or
    /// larger where a carried queue needs it. Nothing is sent before the
    /// next `poll`/`egress`, which sends the whole send queue.
    ///
    /// Fails, leaving the stack as it was, with `Unaddressable` if the local
    /// address is not ours, `AddrInUse` if the 4-tuple belongs to another
    /// connection (a held 4-tuple or a TIME-WAIT record is taken over), and
    /// `InvalidState` if the state contradicts itself.
    pub fn import(
        &mut self,
        state: &ConnState,
        socket: Option<&SocketConfig>,
    ) -> Result<ConnId, TcpError> {
        let t = state.tuple;
        if !self.iface.has_ip_addr(t.local_addr)
            || t.local_port == 0
            || t.remote_port == 0
            || t.remote_addr.is_unspecified()
        {
            return Err(TcpError::Unaddressable);
        }
        // A TIME-WAIT record of an older incarnation is taken over too:
        // the connection arriving proves the peer has moved on from it.
        let (was_held, was_time_wait) = match self.flows.get(&t) {
            None => (false, false),
            Some(FlowEntry::Held { .. }) => (true, false),
            Some(FlowEntry::TimeWait(_)) => (false, true),
            Some(FlowEntry::Conn(_)) => return Err(TcpError::AddrInUse),
        };
        let mut cfg = match socket {
            Some(s) => {
                s.validate()?;
                s.clone()
            }
            None => self.cfg.socket.clone(),
        };
        cfg.rx_buffer = cfg.rx_buffer.max(state.recv_queue.len());
        cfg.tx_buffer = cfg.tx_buffer.max(state.send_queue.len());
        let (snap, promised) = snapshot_of(state).ok_or(TcpError::InvalidState)?;
        // The receive buffer holds everything up to the right edge of the
        // window the peer was given (as rounded to the window unit), not
        // only the unread bytes.
        let mut sock = new_socket_holding(&cfg, self.clock, promised, state.send_queue.len());
        sock.restore(&snap, &state.send_queue, &state.recv_queue)
            .map_err(|e| {
                debug_assert_ne!(e, RestoreError::BufferTooSmall, "sized above");
                TcpError::InvalidState
            })?;
        // smoltcp's own timeout is for handshakes only (see `settle`).
        sock.set_timeout(None);
        let guard = Guard::of(&cfg);
        // The connection's flow entry replaces the hold (its queue entry
        // finds nothing to expire).
        if was_held {
            self.held -= 1;
        }
        if was_time_wait {
            // Its queue entry finds no record to expire.
            self.tw_count -= 1;
        }
        let slot = self.insert_conn(sock, t, Role::User, guard);
        if let Some(c) = self.slots[slot as usize].conn.as_mut() {
            c.connected_sent = true;
        }
        self.mark_ready(slot);
        self.stats.imported += 1;
        Ok(ConnId {
            index: slot,
            generation: self.slots[slot as usize].generation,
        })
    }

    /// Stop holding `tuple` after an export: frames for it are answered as
    /// for any unknown connection again. Returns false if it was not held.
    pub fn unhold(&mut self, tuple: &FourTuple) -> bool {
        if matches!(self.flows.get(tuple), Some(FlowEntry::Held { .. })) {
            self.flows.remove(tuple);
            self.held -= 1;
            true
        } else {
            false
        }
    }

    /// The 4-tuple of every connection in any state (half-open ones
    /// included) and every TIME-WAIT record; not the held ones. What a
    /// steering in front of this stack must keep here when new
    /// connections start going elsewhere.
    pub fn tuples(&self) -> impl Iterator<Item = &FourTuple> + '_ {
        self.flows
            .iter()
            .filter(|(_, e)| !matches!(e, FlowEntry::Held { .. }))
            .map(|(t, _)| t)
    }

    /// Whether a connection (in any state, TIME-WAIT not counted) has
    /// this 4-tuple.
    pub fn has_connection(&self, tuple: &FourTuple) -> bool {
        matches!(self.flows.get(tuple), Some(FlowEntry::Conn(_)))
    }

    /// How many 4-tuples are held after an export.
    pub fn held_count(&self) -> usize {
        self.held
    }

    /// Release the holds whose time ran out (`StackConfig::hold`).
    pub(super) fn expire_held(&mut self, now: Instant) {
        let now_us = now.total_micros();
        while self.held_queue.next_at().is_some_and(|at| at <= now_us) {
            let Some((tuple, expires)) = self.held_queue.pop() else {
                break;
            };
            // Only the hold this entry was queued for (not a later one of
            // the same 4-tuple, nor what replaced it).
            if self.flows.get(&tuple)
                == Some(&FlowEntry::Held {
                    expires_us: expires,
                })
            {
                self.flows.remove(&tuple);
                self.held -= 1;
                self.stats.held_expired += 1;
            }
        }
    }
}

fn seq_bits(s: TcpSeqNumber) -> u32 {
    s.0 as u32
}

fn seq_of(bits: u32) -> TcpSeqNumber {
    TcpSeqNumber(bits as i32)
}

/// Largest receive window a moved connection may bring (smoltcp's buffer
/// limit).
const MAX_PROMISED: usize = 1 << 30;

/// The smoltcp snapshot for `state` and the receive buffer it needs (from
/// `recv_seq` to the right edge of the window already advertised), or
/// `None` if a field is out of range or the sequence numbers are out of
/// order (the socket's `restore` checks the rest).
fn snapshot_of(state: &ConnState) -> Option<(Snapshot, usize)> {
    let t = state.tuple;
    if state.window_shift > 14 {
        return None;
    }
    // Rounded up: the peer may already use all of the window it was given.
    let unit = 1u64 << state.window_shift;
    let last_window =
        u16::try_from((u64::from(state.last_window) + unit - 1) >> state.window_shift).ok()?;
    let recv_next = state.recv_seq.wrapping_add(state.recv_queue.len() as u32);
    let edge = state
        .last_ack
        .wrapping_add(u32::from(last_window) << state.window_shift);
    // last_ack <= recv_next <= edge, in sequence space; the ACK may lie
    // before recv_seq (read bytes not acknowledged yet).
    let ack_to_next = recv_next.wrapping_sub(state.last_ack) as usize;
    let ack_to_edge = edge.wrapping_sub(state.last_ack) as usize;
    if ack_to_next > ack_to_edge || ack_to_edge > MAX_PROMISED {
        return None;
    }
    let promised = edge.wrapping_sub(state.recv_seq) as usize;
    if promised > MAX_PROMISED {
        return None;
    }
    let snap = Snapshot {
        local: IpEndpoint::new(IpAddress::Ipv4(t.local_addr), t.local_port),
        remote: IpEndpoint::new(IpAddress::Ipv4(t.remote_addr), t.remote_port),
        send_seq: seq_of(state.send_seq),
        sent: state.sent,
        recv_seq: seq_of(state.recv_seq),
        last_ack: seq_of(state.last_ack),
        last_window,
        window_shift: state.window_shift,
        peer_window: state.peer_window as usize,
        peer_window_shift: state.peer_window_shift,
        peer_mss: usize::from(state.peer_mss),
        sack: state.sack,
    };
    Some((snap, promised.max(state.recv_queue.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_round_trip_through_smoltcp() {
        for bits in [0, 1, 0x7fff_ffff, 0x8000_0000, u32::MAX] {
            assert_eq!(seq_bits(seq_of(bits)), bits);
        }
    }

    #[test]
    fn a_window_the_shift_cannot_express_is_refused() {
        let state = ConnState {
            tuple: FourTuple {
                local_addr: smoltcp::wire::Ipv4Address::new(10, 0, 0, 1),
                local_port: 443,
                remote_addr: smoltcp::wire::Ipv4Address::new(10, 0, 0, 2),
                remote_port: 40000,
            },
            send_seq: 1,
            sent: 0,
            send_queue: Vec::new(),
            recv_seq: 1,
            recv_queue: Vec::new(),
            last_ack: 1,
            last_window: 1 << 20,
            window_shift: 2,
            peer_window: 65535,
            peer_window_shift: None,
            peer_mss: 1460,
            sack: false,
        };
        assert!(snapshot_of(&state).is_none());
        let ok = ConnState {
            window_shift: 7,
            ..state.clone()
        };
        let (snap, promised) = snapshot_of(&ok).expect("fits with shift 7");
        assert_eq!(promised, 1 << 20);
        assert_eq!(u32::from(snap.last_window), (1u32 << 20) >> 7);
        // A window that is no multiple of the unit is rounded up, never
        // below what was promised.
        let odd = ConnState {
            last_window: 1000,
            ..ok
        };
        let (snap, promised) = snapshot_of(&odd).unwrap();
        assert_eq!((snap.last_window, promised), (8, 1024));
    }
}
