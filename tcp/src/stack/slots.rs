//! The connection slab: slots with generations (a handle names a slot and
//! the generation it was issued for, so a reused slot does not answer to an
//! old handle), and the ways a connection enters and leaves it: inserted
//! with its flow-table entry, its socket dropped while the caller still
//! holds the handle, released by the caller, or freed.

use smoltcp::iface::SocketSet;
use smoltcp::socket::tcp;

use super::conn::{Conn, Dead, Guard, Role, push_ready};
use super::listen::leave_listener;
use super::{ConnId, Stack};
use crate::TcpError;
use crate::flow::{FlowEntry, FourTuple};

#[derive(Debug)]
pub(super) struct Slot {
    pub(super) generation: u32,
    pub(super) conn: Option<Conn>,
}

/// The caller-owned connection `id` names.
pub(super) fn user_conn_in(slots: &mut [Slot], id: ConnId) -> Result<&mut Conn, TcpError> {
    match slots.get_mut(id.index as usize) {
        Some(Slot {
            generation,
            conn: Some(c),
        }) if *generation == id.generation && c.role == Role::User => Ok(c),
        _ => Err(TcpError::InvalidHandle),
    }
}

impl Stack {
    pub(super) fn conn_at(&self, slot: u32, generation: u32) -> Option<&Conn> {
        let s = self.slots.get(slot as usize)?;
        if s.generation != generation {
            return None;
        }
        s.conn.as_ref()
    }

    pub(super) fn insert_conn(
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
            peer_isn: None,
            rx_max: guard.rx_max,
            tx_max: guard.tx_max,
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

    pub(super) fn mark_ready(&mut self, slot: u32) {
        if let Some(c) = self.slots[slot as usize].conn.as_mut() {
            push_ready(c, &mut self.ready, slot);
        }
    }

    /// Forget the connection in `slot` entirely.
    pub(super) fn free_conn(&mut self, slot: u32) {
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
    pub(super) fn kill_socket(&mut self, slot: u32, dead: Dead) {
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
    pub(super) fn release(&mut self, slot: u32, abort: bool) {
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
}
