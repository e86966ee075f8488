//! `settle`: what follows for a connection after it was touched (a segment,
//! a timer, a caller call) and given its turn to transmit. In order:
//! 1. observe: follow the socket's state and enforce the user timeout (an
//!    expired one aborts the socket, and its RST goes out on the next pass);
//! 2. retire: once nothing is left to transmit, a connection in TIME-WAIT or
//!    closed leaves: a TIME-WAIT record takes its place if it ended there,
//!    and it becomes a dead handle (caller-owned) or a free slot;
//! 3. raise events: a completed handshake moves a half-open connection into
//!    its listener's accept queue; a caller's connection gets its
//!    edge-triggered events;
//! 4. schedule the next visit: the ready list, a timer, or a wait for a
//!    neighbour (ARP).

use smoltcp::iface::Interface;
use smoltcp::socket::tcp;
use smoltcp::time::Instant;

use super::conn::{Conn, Dead, Role, arm_timer, fin_received, push_ready, synchronized};
use super::poll::EgressTurn;
use super::{ConnId, Event, ListenerId, Stack};
use crate::flow::FourTuple;

/// What `observe` found.
#[derive(Debug)]
enum Observation {
    /// The socket is gone (a dead connection the caller has not closed).
    NoSocket,
    /// The user timeout expired and the socket was aborted.
    TimedOut,
    /// The connection goes on.
    Live(Observed),
}

/// What the later steps of `settle` need to know of a live connection.
#[derive(Debug)]
struct Observed {
    /// The state at the previous settle.
    prev: tcp::State,
    /// The state now.
    state: tcp::State,
    /// Bytes waiting to be read.
    rx_queued: usize,
    /// The peer's FIN arrived and everything before it was read.
    eof: bool,
    /// Enough send-buffer space is free to report `Writable`.
    writable: bool,
    /// smoltcp's next deadline for the socket (virtual time).
    next: Option<Instant>,
    /// That deadline has come: smoltcp still has something to transmit.
    due: bool,
    /// The user-timeout deadline (real µs), while armed.
    user_deadline: Option<i64>,
}

/// How a finished connection leaves (see `Stack::retire`).
#[derive(Debug)]
struct Ending {
    tuple: FourTuple,
    role: Role,
    /// Our and the peer's next sequence numbers, for a TIME-WAIT record.
    time_wait: Option<(u32, u32)>,
    /// The peer's initial sequence number (connections a listener admitted).
    peer_isn: Option<u32>,
    /// Closed by a RST (received or sent), or not by the full FIN exchange.
    reset: bool,
}

impl Stack {
    /// After a connection was touched (ingress, timer, caller) and given its
    /// turn to transmit: follow its state, raise events, move it between
    /// accept queue / caller / TIME-WAIT / free, and schedule its timer.
    pub(super) fn settle(&mut self, slot: u32, now: Instant, vnow: Instant, turn: &EgressTurn) {
        let generation = self.slots[slot as usize].generation;
        let Some(conn) = self.slots[slot as usize].conn.as_mut() else {
            return;
        };
        let seen = match observe(conn, &mut self.iface, now, vnow, turn.next_poll) {
            Observation::NoSocket => return,
            Observation::TimedOut => {
                push_ready(conn, &mut self.ready, slot);
                return;
            }
            Observation::Live(seen) => seen,
        };
        let id = ConnId {
            index: slot,
            generation,
        };
        // Terminal states, once nothing is left to transmit.
        if !seen.due
            && let Some(end) = ending(conn, &seen)
        {
            self.retire(id, end);
            return;
        }
        self.raise_events(id, &seen);
        self.schedule(id, now, &seen, turn.sent, turn.exhausted, turn.wanted);
    }

    /// A finished connection leaves: a TIME-WAIT record takes its place if
    /// it ended in TIME-WAIT; a caller's connection keeps its slot as a dead
    /// handle (`Closed` or `Reset`), any other is freed.
    fn retire(&mut self, id: ConnId, end: Ending) {
        if let Some((snd_nxt, rcv_nxt)) = end.time_wait {
            self.enter_time_wait(end.tuple, snd_nxt, rcv_nxt, end.peer_isn);
        }
        match end.role {
            Role::User => {
                let dead = if end.reset { Dead::Reset } else { Dead::Closed };
                self.kill_socket(id.index, dead);
                self.events.push_back(if end.reset {
                    Event::Reset(id)
                } else {
                    Event::Closed(id)
                });
            }
            _ => self.free_conn(id.index),
        }
    }

    /// A completed handshake moves a half-open connection into its
    /// listener's accept queue (`Accept`); a caller's connection gets
    /// `Connected`, `Readable` and `Writable`, each once per change.
    fn raise_events(&mut self, id: ConnId, seen: &Observed) {
        let (slot, generation) = (id.index, id.generation);
        let Some(conn) = self.slots[slot as usize].conn.as_mut() else {
            return;
        };
        match conn.role {
            Role::HalfOpen(l) if synchronized(seen.state) => {
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
                if !conn.connected_sent && synchronized(seen.state) {
                    conn.connected_sent = true;
                    self.events.push_back(Event::Connected(id));
                }
                if (seen.rx_queued > 0 || seen.eof) && !conn.readable_sent {
                    conn.readable_sent = true;
                    self.events.push_back(Event::Readable(id));
                }
                if conn.want_writable && seen.writable {
                    conn.want_writable = false;
                    self.events.push_back(Event::Writable(id));
                }
            }
            _ => {}
        }
    }

    /// Schedule the next visit: with something due, the next poll if the
    /// turn made progress (or the device ran full), else after a short
    /// pause; otherwise a timer at smoltcp's next deadline or the user
    /// timeout, whichever comes first. A socket held back for a neighbour
    /// (ARP) also waits for the reply.
    fn schedule(
        &mut self,
        id: ConnId,
        now: Instant,
        seen: &Observed,
        sent: u64,
        exhausted: bool,
        wanted: bool,
    ) {
        let (slot, generation) = (id.index, id.generation);
        let Some(conn) = self.slots[slot as usize].conn.as_mut() else {
            return;
        };
        if seen.due {
            if sent > 0 || exhausted {
                // Progress was made (or the device is full): go again next poll.
                push_ready(conn, &mut self.ready, slot);
            } else {
                // Due but nothing went out: retry after a short pause rather
                // than spin.
                let at = now.total_micros().saturating_add(1000);
                arm_timer(conn, &mut self.timers, at, slot, generation);
            }
        } else if let Some(at) = seen
            .next
            .map(|v| self.clock.to_real_ceil(v).total_micros())
            .into_iter()
            .chain(seen.user_deadline)
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
}

/// Read the connection's socket after its turn: follow its state (kept for
/// the next settle) and enforce the user timeout, then take what the later
/// steps need. `next_poll` is smoltcp's deadline for the socket if the turn
/// already asked for it (see `EgressTurn::next_poll`).
fn observe(
    conn: &mut Conn,
    iface: &mut Interface,
    now: Instant,
    vnow: Instant,
    next_poll: Option<Option<Instant>>,
) -> Observation {
    let Some(set) = conn.set.as_mut() else {
        return Observation::NoSocket;
    };
    let sock = set.get_mut::<tcp::Socket>(conn.handle);
    let state = sock.state();
    let prev = core::mem::replace(&mut conn.state, state);
    if conn.role == Role::Released {
        // Nobody will read it: keep the window open so the peer can finish.
        while sock.recv(|b| (b.len(), b.len())).unwrap_or(0) > 0 {}
    }
    let just_synchronized = !synchronized(prev) && synchronized(state);
    if just_synchronized {
        // smoltcp's own timeout is the handshake timeout only: once
        // synchronized it would also abort idle connections (it counts
        // from the last segment received even with nothing in flight),
        // so the user timeout is enforced here instead.
        sock.set_timeout(None);
    }
    let now_us = now.total_micros();
    let armed = guard_armed(state, conn.role, conn.keep_alive, sock.send_queue());
    if !armed {
        conn.guard_since = None;
    } else if conn.guard_since.is_none() {
        conn.guard_since = Some(now_us);
    }
    // It counts from the later of the last segment received and the moment
    // it was armed.
    let user_deadline = match (conn.guard_since, conn.timeout_us) {
        (Some(since), Some(t)) => Some(since.max(conn.last_rx_us).saturating_add(t)),
        _ => None,
    };
    if user_deadline.is_some_and(|d| now_us >= d) && state != tcp::State::Closed {
        sock.abort();
        conn.rst_sent = true;
        conn.guard_since = None;
        return Observation::TimedOut;
    }
    let rx_queued = sock.recv_queue();
    let eof = fin_received(state) && rx_queued == 0;
    let room = sock.send_capacity() - sock.send_queue();
    let writable = sock.may_send() && room >= (sock.send_capacity() / 4).max(1);
    // A released connection's reads above may have changed its window,
    // and a connection that just synchronized lost its handshake timeout:
    // then the deadline is asked again.
    let next = match next_poll {
        Some(next) if conn.role != Role::Released && !just_synchronized => next,
        _ => iface.poll_at(vnow, set),
    };
    Observation::Live(Observed {
        prev,
        state,
        rx_queued,
        eof,
        writable,
        next,
        due: next.is_some_and(|t| t <= vnow),
        user_deadline,
    })
}

/// Whether the user timeout is armed: while something of ours awaits an ACK
/// (data or FIN), while keep-alives probe, and for released connections (a
/// FIN-WAIT-2 peer that never closes must not pin memory).
fn guard_armed(state: tcp::State, role: Role, keep_alive: bool, send_queue: usize) -> bool {
    synchronized(state)
        && state != tcp::State::TimeWait
        && (role == Role::Released
            || keep_alive
            || send_queue > 0
            || matches!(
                state,
                tcp::State::FinWait1 | tcp::State::Closing | tcp::State::LastAck
            ))
}

/// How a connection leaves if it is finished: in TIME-WAIT, or closed (a
/// half-open one back in LISTEN counts as closed). The unread bytes of a
/// caller's cleanly closed connection are saved before its socket goes.
/// Only for a connection with nothing due.
fn ending(conn: &mut Conn, seen: &Observed) -> Option<Ending> {
    let state = seen.state;
    let closed = state == tcp::State::Closed
        || (state == tcp::State::Listen && matches!(conn.role, Role::HalfOpen(_)));
    if state != tcp::State::TimeWait && !closed {
        return None;
    }
    let time_wait = (state == tcp::State::TimeWait)
        .then_some(conn.last_seq_ack)
        .flatten();
    let reset = closed && (conn.rst_seen || conn.rst_sent || seen.prev != tcp::State::LastAck);
    if conn.role == Role::User && !reset && seen.rx_queued > 0 {
        save_unread(conn, seen.rx_queued);
    }
    Some(Ending {
        tuple: conn.tuple,
        role: conn.role,
        time_wait,
        peer_isn: conn.peer_isn,
        reset,
    })
}

/// Keep the `rx_queued` unread bytes of a socket about to be dropped, for
/// the caller to read from the dead handle.
fn save_unread(conn: &mut Conn, rx_queued: usize) {
    let Some(set) = conn.set.as_mut() else {
        return;
    };
    let sock = set.get_mut::<tcp::Socket>(conn.handle);
    let mut saved = vec![0; rx_queued];
    let n = sock.recv_slice(&mut saved).unwrap_or(0);
    saved.truncate(n);
    conn.leftover = saved;
    conn.leftover_pos = 0;
}
