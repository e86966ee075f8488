//! Passive open: listeners, their accept queues and the backlog policy.
//!
//! A listener is a port (on one or all of our addresses) and the socket
//! settings for the connections it creates. A pure SYN for it, with no flow
//! of its own, is admitted as a half-open connection (checksums verified
//! first: it creates state); when its handshake completes, `settle` moves it
//! into the accept queue and raises `Accept`. Half-open plus queued
//! connections are at most `backlog`; a SYN beyond that evicts the oldest
//! half-open one, or is dropped if all are established (see the crate doc).
//! The per-listener lists of half-open and queued connections may hold stale
//! entries (connections gone since); the counts are exact.

use std::collections::VecDeque;

use smoltcp::phy::TxToken;
use smoltcp::time::Instant;
use smoltcp::wire::{IpAddress, IpListenEndpoint, Ipv4Address};

use super::conn::{Guard, Role, new_socket, push_ready};
use super::{ConnId, ListenerId, Stack};
use crate::TcpError;
use crate::config::SocketConfig;
use crate::frame::{self, Segment};

#[derive(Debug)]
pub(super) struct Listener {
    pub(super) addr: Option<Ipv4Address>,
    pub(super) port: u16,
    pub(super) backlog: usize,
    pub(super) socket: SocketConfig,
    /// Half-open connections, oldest first (may hold stale entries).
    pub(super) half_open: VecDeque<(u32, u32)>,
    pub(super) half_open_count: usize,
    /// Established connections not yet accepted, oldest first (may hold stale entries).
    pub(super) queue: VecDeque<(u32, u32)>,
    pub(super) queued_count: usize,
}

#[derive(Debug)]
pub(super) struct ListenerSlot {
    pub(super) generation: u32,
    pub(super) listener: Option<Listener>,
}

/// Take a half-open or queued connection out of its listener's counts.
pub(super) fn leave_listener(listeners: &mut [ListenerSlot], role: Role) {
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

impl Stack {
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

    /// The listener a segment is for: a pure SYN to a listening port, on the
    /// listener's address (or any of ours).
    pub(super) fn listener_for(&self, seg: &Segment) -> Option<u32> {
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
    pub(super) fn admit<T: TxToken>(
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
        if !self.make_room(lindex) {
            return;
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
        if let Some(c) = self.slots[slot as usize].conn.as_mut() {
            c.peer_isn = Some(seg.seq);
        }
        self.track_half_open(lindex, slot);
        self.stats.syn_admitted += 1;
        self.feed_conn(slot, vnow, frame, tx, seg);
    }

    /// The backlog policy: whether a new half-open connection may be added
    /// to the listener, after evicting the oldest half-open one if the
    /// backlog is full. False (the SYN is dropped) when every connection
    /// counted is established, or the listener is gone.
    fn make_room(&mut self, lindex: u32) -> bool {
        let Some(l) = self.listeners[lindex as usize].listener.as_mut() else {
            return false;
        };
        if l.half_open_count + l.queued_count < l.backlog {
            return true;
        }
        if l.half_open_count == 0 {
            self.stats.syn_dropped += 1;
            return false;
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
        true
    }

    /// Count the new half-open connection in `slot` with its listener, and
    /// drop the stale entries of the half-open list once they pile up.
    fn track_half_open(&mut self, lindex: u32, slot: u32) {
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
    }
}
