//! The per-frame receive path: demux one received frame and hand it to
//! smoltcp together with only the socket it is for.
//!
//! The frame's headers are peeked at (no checksum work) and its 4-tuple
//! looked up in the flow table: a connection gets the frame through a
//! one-frame device with its own socket set; a TIME-WAIT record answers it
//! itself (`time_wait`); a pure SYN for a listener is admitted (`listen`);
//! anything else (no flow, not TCP, ARP) goes to smoltcp with an empty set,
//! which answers as a closed port (RST) or as ARP/ICMP, except TCP for an
//! address not ours (broadcast, multicast), which is dropped. A connection
//! in SYN-SENT sees nothing before its SYN left, and no pure SYN. An ARP frame also
//! wakes the connections held back for a neighbour. Every connection a
//! frame reaches is queued for the egress pass.

use smoltcp::iface::{Interface, SocketSet};
use smoltcp::phy::{DeviceCapabilities, Medium, TxToken};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;

use super::Stack;
use super::conn::grow_rx;
use crate::adapters::{InspectTx, OneShot, TxObs};
use crate::flow::FlowEntry;
use crate::frame::{self, Segment};

impl Stack {
    pub(super) fn ingress<T: TxToken>(&mut self, now: Instant, vnow: Instant, frame: &[u8], tx: T) {
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
            Some(FlowEntry::Conn(slot)) if self.premature_for_syn_sent(slot, &seg) => {}
            Some(FlowEntry::Conn(slot)) => self.feed_conn(slot, vnow, frame, tx, &seg),
            Some(FlowEntry::TimeWait(tw)) => self.ingress_time_wait(now, vnow, frame, tx, &seg, tw),
            // Exported: neither answered nor acknowledged (the peer
            // retransmits to the connection's new owner).
            Some(FlowEntry::Held { .. }) => self.stats.held_drops += 1,
            None => match self.listener_for(&seg) {
                Some(l) => self.admit(l, vnow, frame, tx, &seg, false),
                // Not for one of our addresses (a broadcast or multicast
                // destination): dropped, since smoltcp would answer with a
                // RST sent *from* that address (RFC 1122 3.2.1.3, 4.2.3.10).
                None if !self.iface.has_ip_addr(seg.tuple.local_addr) => {}
                // No connection: smoltcp answers with a RST (or drops a RST).
                None => self.feed_empty(vnow, frame, tx),
            },
        }
    }

    /// A segment a connection in SYN-SENT must not see: anything before our
    /// own SYN left (held back for ARP or by a full device: no real peer
    /// can answer a SYN it never got, and smoltcp 0.13 panics on a SYN or a
    /// SYN-ACK then, reading back a window it never advertised), and a
    /// pure SYN (a simultaneous open: the proxy's backends never open
    /// towards it, and a peer that did still completes by answering our
    /// SYN with a SYN-ACK). Such segments are dropped.
    fn premature_for_syn_sent(&self, slot: u32, seg: &Segment) -> bool {
        let Some(conn) = self.slots[slot as usize].conn.as_ref() else {
            return false;
        };
        let syn_sent = conn
            .set
            .as_ref()
            .is_some_and(|set| set.get::<tcp::Socket>(conn.handle).state() == tcp::State::SynSent);
        syn_sent && (seg.is_pure_syn() || conn.last_seq_ack.is_none())
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

    pub(super) fn feed_conn<T: TxToken>(
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
        grow_rx(set.get_mut::<tcp::Socket>(conn.handle), conn.rx_max);
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
