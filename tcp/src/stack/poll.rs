//! The calling loop: `poll` (receive a burst, fire due timers, expire
//! TIME-WAIT records, transmit), `egress` (transmit only), `poll_event` and
//! `poll_at`.
//!
//! Only connections on the ready list (touched by a segment, a caller call
//! or a due timer) are visited on an egress pass: each gets a turn of at
//! most `tx_burst_per_conn` `poll_egress` calls over its own socket set,
//! then `settle`. A full device ends the transmitting for this pass; the
//! connections not reached stay on the ready list for the next one.

use smoltcp::iface::PollResult;
use smoltcp::phy::{Device, Medium, RxToken};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;

use super::{Event, Stack};
use crate::RxPeek;
use crate::adapters::{EgressDev, TxObs};
use crate::flow::FlowEntry;
use crate::frame;
use crate::prefetch::{prefetch, prefetch_addr, prefetch_lines};

use super::conn::Conn;
use super::slots::Slot;

/// How far behind the frame being handled `poll_prefetching` asks for the
/// flow-table slot of a waiting frame, for its connection record, and for
/// its socket: each step needs the one before in the cache.
const FLOW_AHEAD: usize = 6;
/// A socket's storage in its set (smoltcp's `tcp::Socket` and metadata).
const SOCKET_BYTES: usize = core::mem::size_of::<smoltcp::iface::SocketStorage<'static>>();

/// What the receive pipeline of `poll_prefetching` carries from one frame
/// to the next: the frames six and five places on (tuple and hash), then
/// four and three places on (connection slot), in two lanes that alternate
/// with each frame received (so a finding waits two frames for its next
/// step: 6, 4, 2); then the slot of the frame whose socket was asked for,
/// one place on at the next step.
#[derive(Debug, Default)]
pub(super) struct Ahead {
    flows: [Option<(crate::flow::FourTuple, u64)>; 2],
    slots: [Option<u32>; 2],
    socket: Option<u32>,
}
/// Connections below which the stack does not prefetch: a few thousand
/// records, sockets and buffers (4 KiB or so each) stay in the caches.
pub(crate) const PREFETCH_MIN_CONNS: usize = 4096;
const CONN_AHEAD: usize = 4;
const SOCKET_AHEAD: usize = 2;

/// What one connection's turn to transmit did.
#[derive(Debug, Default)]
pub(super) struct EgressTurn {
    /// Segments sent.
    pub(super) sent: u64,
    /// The device ran full.
    pub(super) exhausted: bool,
    /// It wanted to send (or had an ARP request sent for it): with nothing
    /// sent, it waits for a neighbour.
    pub(super) wanted: bool,
    /// smoltcp's next deadline for the socket (`Interface::poll_at`) as
    /// asked after its last segment went out, when nothing has touched the
    /// socket since; `None` when it was not asked.
    pub(super) next_poll: Option<Option<Instant>>,
}

impl Stack {
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
        [
            self.timers.next_at(),
            self.tw_queue.next_at(),
            self.held_queue.next_at(),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(Instant::from_micros)
    }

    /// Receive up to `rx_burst` frames, run due timers, expire TIME-WAIT
    /// records, and transmit for every connection with something to send.
    /// Returns the number of frames received and sent.
    pub fn poll<D: Device + ?Sized>(&mut self, now: Instant, device: &mut D) -> usize {
        self.poll_with(now, device, |_, _| {})
    }

    /// [`Stack::poll`] on a device that shows the frames waiting behind
    /// the next one ([`RxPeek`]): while it handles a frame, the stack asks
    /// the CPU for what the frames behind it will need, one dependent step
    /// per distance: the flow-table slot of the frame six places behind,
    /// the connection record of the one four behind (its flow slot is in
    /// the cache by then), and the socket of the one two behind (its
    /// record is). With many connections (more than the caches hold) a
    /// frame then does not wait for those loads one after the other.
    ///
    /// With fewer than 4,096 connections (whose records and
    /// sockets stay in the caches anyway) it is [`Stack::poll`]: asking
    /// would only parse each frame again.
    pub fn poll_prefetching<D: Device + RxPeek + ?Sized>(
        &mut self,
        now: Instant,
        device: &mut D,
    ) -> usize {
        if self.live < PREFETCH_MIN_CONNS {
            return self.poll(now, device);
        }
        self.poll_with(now, device, |stack, device| stack.prefetch_ahead(device))
    }

    /// One step of the receive pipeline, before the next frame is taken
    /// (see [`Stack::poll_prefetching`]). Each frame is parsed and hashed
    /// once, at the first step; what a step finds is kept two frames for
    /// the next step (a best guess: should the frames have changed in
    /// between, only a hint is wasted).
    fn prefetch_ahead<D: RxPeek + ?Sized>(&mut self, device: &D) {
        // Lanes alternate with each frame received.
        let lane = (self.stats.rx_frames % 2) as usize;
        // Where the payload of the next frame goes in its socket's receive
        // buffer (the socket was asked for a frame ago).
        if let Some(slot) = self.ahead.socket.take()
            && let Some(Slot {
                conn: Some(conn), ..
            }) = self.slots.get(slot as usize)
            && let Some(set) = &conn.set
        {
            prefetch_addr(set.get::<tcp::Socket>(conn.handle).recv_write_addr());
        }
        // The socket of the frame two places on (its record was asked for
        // two frames ago).
        if let Some(slot) = self.ahead.slots[lane].take()
            && let Some(Slot {
                conn: Some(Conn { set: Some(set), .. }),
                ..
            }) = self.slots.get(slot as usize)
        {
            prefetch_lines(set.storage_addr(), SOCKET_BYTES);
            // One place on at the next step (or a wasted hint should the
            // burst end before).
            self.ahead.socket = Some(slot);
        }
        // The record of the frame four places on (its flow slot was asked
        // for two frames ago).
        if let Some((tuple, hash)) = self.ahead.flows[lane].take()
            && let Some(&FlowEntry::Conn(slot)) = self.flows.get_hashed(&tuple, hash)
            && let Some(s) = self.slots.get(slot as usize)
        {
            prefetch(s);
            self.ahead.slots[lane] = Some(slot);
        }
        // The flow slot of the frame six places on.
        let (medium, flows, next) = (self.medium, &self.flows, &mut self.ahead.flows[lane]);
        device.peek_rx(FLOW_AHEAD, &mut |frame| {
            if let Some(seg) = frame::parse(medium, frame) {
                let hash = flows.hash(&seg.tuple);
                flows.prefetch_hashed(hash);
                *next = Some((seg.tuple, hash));
            }
        });
    }

    fn poll_with<D: Device + ?Sized>(
        &mut self,
        now: Instant,
        device: &mut D,
        mut ahead: impl FnMut(&mut Stack, &D),
    ) -> usize {
        self.now = now;
        let vnow = self.clock.to_virt(now);
        let before = self.stats.rx_frames + self.stats.tx_frames;
        for _ in 0..self.cfg.rx_burst {
            ahead(self, device);
            let Some((rx, tx)) = device.receive(now) else {
                break;
            };
            self.stats.rx_frames += 1;
            rx.consume(|frame| self.ingress(now, vnow, frame, tx));
        }
        self.fire_timers(now);
        self.expire_time_wait(now);
        self.expire_held(now);
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
        let prefetching = self.live >= PREFETCH_MIN_CONNS;
        for (i, &slot) in batch.iter().enumerate() {
            // As on receive: the record of the connection four turns on,
            // the socket of the one two turns on.
            if prefetching
                && let Some(&later) = batch.get(i + CONN_AHEAD)
                && let Some(s) = self.slots.get(later as usize)
            {
                prefetch(s);
            }
            if prefetching
                && !exhausted
                && let Some(&later) = batch.get(i + SOCKET_AHEAD)
                && let Some(Slot {
                    conn: Some(Conn { set: Some(set), .. }),
                    ..
                }) = self.slots.get(later as usize)
            {
                prefetch_lines(set.storage_addr(), SOCKET_BYTES);
            }
            let Some(c) = self.slots[slot as usize].conn.as_mut() else {
                continue;
            };
            c.in_ready = false;
            if exhausted {
                self.mark_ready(slot);
                continue;
            }
            let turn = self.egress_one(slot, now, vnow, device);
            exhausted = turn.exhausted;
            self.settle(slot, now, vnow, &turn);
        }
        batch.clear();
        self.spare = batch;
        (self.stats.tx_frames - before) as usize
    }

    /// One connection's turn to transmit (see [`EgressTurn`]).
    fn egress_one<D: Device + ?Sized>(
        &mut self,
        slot: u32,
        now: Instant,
        vnow: Instant,
        device: &mut D,
    ) -> EgressTurn {
        let Some(conn) = self.slots[slot as usize].conn.as_mut() else {
            return EgressTurn::default();
        };
        let Some(set) = conn.set.as_mut() else {
            return EgressTurn::default();
        };
        let wanted = self.medium == Medium::Ethernet
            && self.iface.poll_at(vnow, set).is_some_and(|t| t <= vnow);
        let mut obs = TxObs::default();
        let mut exhausted = false;
        let mut next_poll = None;
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
                next_poll = None;
                break;
            }
            // Something went out: ask whether more is due rather than make
            // a dispatch that finds nothing; the answer also serves `settle`
            // while nothing else touches the socket.
            let at = self.iface.poll_at(vnow, set);
            next_poll = Some(at);
            if at.is_none_or(|t| t > vnow) {
                break;
            }
        }
        if obs.last_seq_ack.is_some() {
            conn.last_seq_ack = obs.last_seq_ack;
        }
        conn.rst_sent |= obs.rst;
        self.stats.tx_frames += obs.frames;
        EgressTurn {
            sent: obs.segments,
            exhausted,
            // An ARP request sent on this socket's behalf means it waits
            // for a neighbour, however the due-check before went.
            wanted: wanted || obs.arp,
            next_poll,
        }
    }

    /// Queue every connection whose timer is due for the egress pass, and
    /// compact the heap once stale entries outnumber the live connections.
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
}
