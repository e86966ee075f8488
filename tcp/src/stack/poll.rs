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
use smoltcp::time::Instant;

use super::{Event, Stack};
use crate::RxPeek;
use crate::adapters::{EgressDev, TxObs};
use crate::flow::FlowEntry;
use crate::frame;
use crate::prefetch::{prefetch, prefetch_addr};

use super::conn::Conn;
use super::slots::Slot;

/// How far behind the frame being handled `poll_prefetching` asks for the
/// flow-table slot of a waiting frame, for its connection record, and for
/// its socket: each step needs the one before in the cache.
const FLOW_AHEAD: usize = 6;
/// Connections below which the stack does not prefetch: a few thousand
/// records, sockets and buffers (4 KiB or so each) stay in the caches.
pub const PREFETCH_MIN_CONNS: usize = 4096;
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
    /// With fewer than [`PREFETCH_MIN_CONNS`] connections (whose records and
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
        self.poll_with(now, device, |stack, device| {
            let medium = stack.medium;
            device.peek_rx(FLOW_AHEAD, &mut |frame| {
                if let Some(seg) = frame::parse(medium, frame) {
                    stack.flows.prefetch(&seg.tuple);
                }
            });
            device.peek_rx(CONN_AHEAD, &mut |frame| {
                if let Some(slot) = stack.conn_slot_of(medium, frame) {
                    prefetch(slot);
                }
            });
            device.peek_rx(SOCKET_AHEAD, &mut |frame| {
                if let Some(Slot {
                    conn: Some(Conn { set: Some(set), .. }),
                    ..
                }) = stack.conn_slot_of(medium, frame)
                {
                    prefetch_addr(set.storage_addr());
                }
            });
        })
    }

    /// The slot of the connection `frame` is for, if any.
    fn conn_slot_of(&self, medium: Medium, frame: &[u8]) -> Option<&Slot> {
        let seg = frame::parse(medium, frame)?;
        match self.flows.get(&seg.tuple)? {
            &FlowEntry::Conn(slot) => self.slots.get(slot as usize),
            _ => None,
        }
    }

    fn poll_with<D: Device + ?Sized>(
        &mut self,
        now: Instant,
        device: &mut D,
        ahead: impl Fn(&Stack, &D),
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
                && let Some(&later) = batch.get(i + SOCKET_AHEAD)
                && let Some(Slot {
                    conn: Some(Conn { set: Some(set), .. }),
                    ..
                }) = self.slots.get(later as usize)
            {
                prefetch_addr(set.storage_addr());
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
        // Whether a turn that sends nothing waits for a neighbour (ARP) is
        // asked only until the connection has sent a segment: from then on
        // its neighbour is known, and should the entry expire later, the
        // miss sends an ARP request (`obs.arp`) or, while smoltcp keeps
        // quiet after another miss, leaves a deadline that the timer
        // honours. That saves a `poll_at` per turn on the hot path.
        let wanted = self.medium == Medium::Ethernet
            && !conn.neighbor_known
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
        conn.neighbor_known |= obs.segments > 0;
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
