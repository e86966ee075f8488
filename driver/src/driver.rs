//! The driver: client slots, readiness, timers, the idle backend pool,
//! and the entry points a data path's event loop calls.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dpuproxy_l7::deadlines::Deadlines;
use dpuproxy_l7::{Connection, ErrorKind, Shared};
use slab::Slab;

use crate::metrics::PathMetrics;
use crate::pool::BackendPool;
use crate::settings::DriverSettings;
use crate::slot::{Detached, Movable, Phase, Side, Slot, SlotId, Upstream};
use crate::transport::{Close, Transport};

/// How often idle pooled connections past their lifetime are closed.
const POOL_EXPIRY_EVERY: Duration = Duration::from_secs(1);

/// Drives every client connection of one worker or lcore over transport
/// `T`. See the crate docs for the calling contract.
pub struct Driver<T: Transport> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) settings: DriverSettings,
    pub(crate) metrics: Arc<PathMetrics>,
    pub(crate) slots: Slab<Slot<T::Client, T::Backend>>,
    /// The generation each slot index has now (bumped when it is freed).
    generations: Vec<u32>,
    pub(crate) timers: Deadlines,
    pub(crate) pool: BackendPool<T::Backend>,
    next_pool_expiry: Instant,
    /// Slots to drive this turn (each once: `Slot::queued`).
    dirty: Vec<usize>,
    /// Slots that used up their rounds: driven again next turn.
    pub(crate) carried: Vec<usize>,
    /// Spare list swapped with `carried`, so neither reallocates.
    carried_spare: Vec<usize>,
    /// Draining: no new client; each open one ends after its request.
    pub(crate) draining: bool,
    /// Slots accepted and (maybe, lazily checked) still handshaking,
    /// oldest first.
    handshaking: std::collections::VecDeque<(SlotId, Instant)>,
    /// This driver's share of [`PathMetrics::buffered`] as last reported.
    reported_buffered: u64,
}

impl<T: Transport> std::fmt::Debug for Driver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("clients", &self.slots.len())
            .field("pooled", &self.pool.len())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<T: Transport> Driver<T> {
    /// A driver for the backends of `shared`, counting into `metrics`.
    pub fn new(
        shared: Arc<Shared>,
        settings: DriverSettings,
        metrics: Arc<PathMetrics>,
        now: Instant,
    ) -> Self {
        let backends = shared.backends.len();
        Self {
            shared,
            settings,
            metrics,
            slots: Slab::new(),
            generations: Vec::new(),
            timers: Deadlines::new(),
            pool: BackendPool::new(backends),
            next_pool_expiry: now + POOL_EXPIRY_EVERY,
            dirty: Vec::new(),
            carried: Vec::new(),
            carried_spare: Vec::new(),
            draining: false,
            handshaking: std::collections::VecDeque::new(),
            reported_buffered: 0,
        }
    }

    /// The counters this driver adds to.
    pub fn metrics(&self) -> &Arc<PathMetrics> {
        &self.metrics
    }

    /// Open client connections.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// No client connection is open.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Idle pooled backend connections held.
    pub fn pooled(&self) -> usize {
        self.pool.len()
    }

    /// Whether one more client may be accepted. When the handshake bound
    /// or the connection limit is reached, the oldest connection still in
    /// its handshake is shed (abortively) to make room; only when none is
    /// left to shed is the new one refused. A refusal is counted; the
    /// caller then closes the connection without TLS.
    pub fn admit(&mut self, t: &mut T, now: Instant) -> bool {
        if self.draining {
            PathMetrics::inc(&self.metrics.rejected);
            return false;
        }
        while self.handshakes_open() >= self.settings.max_handshaking
            || self.slots.len() >= self.settings.max_connections
        {
            if !self.shed_oldest_handshake(t, now) {
                PathMetrics::inc(&self.metrics.rejected);
                return false;
            }
        }
        true
    }

    /// Connections in their handshake (the queue's stale entries dropped).
    fn handshakes_open(&mut self) -> usize {
        self.handshaking.retain(|(id, _)| {
            self.slots
                .get(id.index as usize)
                .is_some_and(|s| matches!(s.phase, Phase::Handshaking { .. }))
                && self.generations.get(id.index as usize) == Some(&id.generation)
        });
        self.handshaking.len()
    }

    /// Close the oldest connection still in its handshake; false when there
    /// is none.
    fn shed_oldest_handshake(&mut self, t: &mut T, now: Instant) -> bool {
        while let Some((id, _)) = self.handshaking.pop_front() {
            if let Some(index) = self.live_index(id)
                && matches!(self.slots[index].phase, Phase::Handshaking { .. })
            {
                PathMetrics::inc(&self.metrics.shed);
                self.close(t, index, Close::Abort, now);
                return true;
            }
        }
        false
    }

    pub(crate) fn id_of(&self, index: usize) -> SlotId {
        SlotId {
            index: index as u32,
            generation: self.generations.get(index).copied().unwrap_or(0),
        }
    }

    /// The slot index of `id` if that slot still exists.
    fn live_index(&self, id: SlotId) -> Option<usize> {
        let index = id.index as usize;
        (self.slots.contains(index) && self.generations.get(index) == Some(&id.generation))
            .then_some(index)
    }

    /// Take a new client connection from `peer` (an IP address string, for
    /// `X-Forwarded-For`). It is driven on the next [`Driver::run`]. `None`
    /// when the transport could not attach it (it is closed then).
    pub fn accept(
        &mut self,
        t: &mut T,
        client: T::Client,
        peer: String,
        now: Instant,
    ) -> Option<SlotId> {
        let core = Connection::new(self.shared.clone(), peer, now);
        let id = self.insert(t, client, core, Phase::Handshaking { since: now }, false)?;
        self.handshaking.push_back((id, now));
        PathMetrics::inc(&self.metrics.accepted);
        Some(id)
    }

    fn insert(
        &mut self,
        t: &mut T,
        mut client: T::Client,
        core: Connection,
        phase: Phase,
        eof: bool,
    ) -> Option<SlotId> {
        let entry = self.slots.vacant_entry();
        let index = entry.key();
        if index >= self.generations.len() {
            self.generations.resize(index + 1, 0);
        }
        let id = SlotId {
            index: index as u32,
            generation: self.generations[index],
        };
        if let Err(e) = t.attach_client(&mut client, id) {
            tracing::warn!(error = %e, "cannot register a client connection");
            t.close(client, Close::Abort);
            return None;
        }
        entry.insert(Slot {
            client,
            core,
            upstream: None,
            phase,
            eof,
            read_blocked: false,
            write_blocked: false,
            queued: false,
        });
        PathMetrics::inc(&self.metrics.open);
        self.enqueue(index);
        Some(id)
    }

    /// The transport saw readiness (or an error) on `side` of slot `id`:
    /// that side may be tried again, and the slot is driven on the next
    /// [`Driver::run`]. Events for a slot that is gone are ignored.
    pub fn mark(&mut self, id: SlotId, side: Side) {
        let Some(index) = self.live_index(id) else {
            return;
        };
        let s = &mut self.slots[index];
        match side {
            // TLS may need to write while reading and the reverse.
            Side::Client => {
                s.read_blocked = false;
                s.write_blocked = false;
            }
            Side::Backend => {
                if let Some(u) = &mut s.upstream {
                    u.read_blocked = false;
                    u.write_blocked = false;
                }
            }
        }
        self.enqueue(index);
    }

    fn enqueue(&mut self, index: usize) {
        if let Some(s) = self.slots.get_mut(index)
            && !s.queued
        {
            s.queued = true;
            self.dirty.push(index);
        }
    }

    /// Drive every marked slot (and those left over from the last turn) as
    /// far as it can go without blocking.
    pub fn run(&mut self, t: &mut T, now: Instant) {
        let carried = std::mem::replace(&mut self.carried, std::mem::take(&mut self.carried_spare));
        for &index in &carried {
            self.enqueue(index);
        }
        self.carried_spare = carried;
        self.carried_spare.clear();
        while let Some(index) = self.dirty.pop() {
            if let Some(s) = self.slots.get_mut(index) {
                s.queued = false;
                self.drive(t, index, now);
            }
        }
    }

    /// Slots are waiting to be driven: the event loop must not sleep.
    pub fn has_work(&self) -> bool {
        !self.dirty.is_empty() || !self.carried.is_empty()
    }

    /// When [`Driver::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Instant {
        self.timers
            .next()
            .map_or(self.next_pool_expiry, |t| t.min(self.next_pool_expiry))
    }

    /// Fire every deadline at or before `now` (handshake, linger and L7
    /// timeouts) and expire the idle pool when it is due.
    pub fn handle_timeout(&mut self, t: &mut T, now: Instant) {
        while let Some(index) = self.timers.pop_due(now) {
            let Some(s) = self.slots.get_mut(index) else {
                continue;
            };
            match s.phase {
                Phase::Handshaking { .. } => {
                    PathMetrics::inc(&self.metrics.handshake_failures);
                    self.shared.metrics.error(ErrorKind::TlsHandshake);
                    self.close(t, index, Close::Abort, now);
                }
                // The client did not take what was left within the
                // linger timeout: it must not see a clean end.
                Phase::Flushing { .. } | Phase::Notified { .. } => {
                    self.close(t, index, Close::Abort, now)
                }
                Phase::Lingering { .. } => self.close(t, index, Close::Graceful, now),
                Phase::Open => {
                    s.core.handle_timeout(now);
                    self.drive(t, index, now);
                }
            }
        }
        if now >= self.next_pool_expiry {
            self.pool
                .expire(t, now, self.settings.pool_idle, &self.metrics);
            self.next_pool_expiry = now + POOL_EXPIRY_EVERY;
            let buffered = self.buffered_bytes(t) as u64;
            self.report_buffered(buffered);
            self.shrink_tables();
        }
    }

    /// After a burst: give back the slot table's and queues' unused room
    /// (the slab only drops trailing free entries, so keys stay valid).
    fn shrink_tables(&mut self) {
        if self.slots.capacity() > 64 && self.slots.len() < self.slots.capacity() / 4 {
            self.slots.shrink_to_fit();
            self.handshaking.shrink_to_fit();
            self.dirty.shrink_to_fit();
            self.carried.shrink_to_fit();
            self.carried_spare.shrink_to_fit();
        }
    }

    /// Move this driver's share of the shared buffered-bytes gauge to
    /// `now_buffered` (drivers of other workers add their own shares).
    fn report_buffered(&mut self, now_buffered: u64) {
        let gauge = &self.metrics.buffered;
        if now_buffered >= self.reported_buffered {
            gauge.fetch_add(now_buffered - self.reported_buffered, Ordering::Relaxed);
        } else {
            gauge.fetch_sub(self.reported_buffered - now_buffered, Ordering::Relaxed);
        }
        self.reported_buffered = now_buffered;
    }

    /// Arm the slot's one timer for its phase.
    pub(crate) fn rearm(&mut self, index: usize) {
        let Some(s) = self.slots.get(index) else {
            return;
        };
        let deadline = match s.phase {
            Phase::Handshaking { since } => Some(since + self.settings.handshake_timeout),
            Phase::Flushing { since, .. } | Phase::Notified { since, .. } => {
                Some(since + self.settings.linger_timeout)
            }
            Phase::Lingering { until } => Some(until),
            Phase::Open => s.core.poll_timeout(),
        };
        self.timers.set(index, deadline);
    }

    /// Close slot `index` and free it: its backend connection is aborted,
    /// and the core is told the client is gone (it settles its counters; a
    /// second end is harmless).
    pub(crate) fn close(&mut self, t: &mut T, index: usize, how: Close, now: Instant) {
        let Some(mut s) = self.remove(index) else {
            return;
        };
        s.core.handle_downstream_eof(now);
        if let Some(u) = s.upstream.take() {
            t.close_backend(u.conn, Close::Abort);
        }
        // Counted before the close is visible to the peer, so whoever sees
        // the close also sees it counted.
        PathMetrics::inc(&self.metrics.closed);
        if how == Close::Abort {
            PathMetrics::inc(&self.metrics.aborted);
        }
        t.close(s.client, how);
    }

    fn remove(&mut self, index: usize) -> Option<Slot<T::Client, T::Backend>> {
        let s = self.slots.try_remove(index)?;
        self.timers.set(index, None);
        let mask = (1u32 << crate::slot::GENERATION_BITS) - 1;
        self.generations[index] = (self.generations[index] + 1) & mask;
        self.metrics
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        Some(s)
    }

    /// Drain: refuse new clients ([`Driver::admit`] says no), close those
    /// still in their TLS handshake, and let every open one answer the
    /// request in flight, end an SSE stream at an event boundary, and then
    /// close (see `Connection::drain`). The driver is empty when done.
    pub fn drain(&mut self, t: &mut T, now: Instant) {
        if self.draining {
            return;
        }
        self.draining = true;
        let indexes: Vec<usize> = self.slots.iter().map(|(i, _)| i).collect();
        for index in indexes {
            match self.slots[index].phase {
                Phase::Handshaking { .. } => self.close(t, index, Close::Graceful, now),
                Phase::Open => {
                    self.slots[index].core.drain(now);
                    self.enqueue(index);
                }
                _ => {}
            }
        }
    }

    /// The drain's time is nearly up: every SSE stream ends at its next
    /// event boundary, answers to POSTs included.
    pub fn drain_streams(&mut self, now: Instant) {
        let indexes: Vec<usize> = self.slots.iter().map(|(i, _)| i).collect();
        for index in indexes {
            if self.slots[index].phase == Phase::Open {
                self.slots[index].core.drain_streams(now);
                self.enqueue(index);
            }
        }
    }

    /// Whether [`Driver::drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Close every client (abortively: a client mid-response must not see
    /// a clean end) and every pooled backend connection.
    pub fn close_all(&mut self, t: &mut T, now: Instant) {
        let indexes: Vec<usize> = self.slots.iter().map(|(i, _)| i).collect();
        for index in indexes {
            self.close(t, index, Close::Abort, now);
        }
        self.pool.clear(t, Close::Abort);
        self.report_buffered(0);
    }

    /// Bytes held for clients outside the TCP buffers: plaintext in the
    /// cores (both directions) and what the transport holds (TLS records).
    pub fn buffered_bytes(&self, t: &T) -> usize {
        self.slots
            .iter()
            .map(|(_, s)| {
                s.core.downstream_pending().len()
                    + s.core.upstream_pending().len()
                    + t.buffered(&s.client)
            })
            .sum()
    }

    /// The L7 state of slot `id`, if it still exists.
    pub fn core(&self, id: SlotId) -> Option<&Connection> {
        self.live_index(id).map(|i| &self.slots[i].core)
    }

    /// The life phase of slot `id`, if it still exists.
    pub fn phase(&self, id: SlotId) -> Option<Phase> {
        self.live_index(id).map(|i| self.slots[i].phase)
    }

    /// Whether slot `id` can move to another transport now (`None`: no
    /// such slot). Only an open connection moves: one still handshaking,
    /// or whose backend connect is under way, may later; one that is
    /// closing, or whose client ended its side, finishes where it is.
    pub fn movable(&self, id: SlotId) -> Option<Movable> {
        let s = &self.slots[self.live_index(id)?];
        Some(match s.phase {
            Phase::Open if s.eof => Movable::Never,
            Phase::Open if s.upstream.as_ref().is_some_and(|u| u.connecting) => Movable::Later,
            Phase::Open => Movable::Now,
            Phase::Handshaking { .. } => Movable::Later,
            _ => Movable::Never,
        })
    }

    /// The ids of every open slot.
    pub fn ids(&self) -> Vec<SlotId> {
        self.slots.iter().map(|(i, _)| self.id_of(i)).collect()
    }

    /// Take slot `id` out with all of its state, nothing closed: the
    /// transport's objects are handed back for the caller to move to
    /// another driver ([`Driver::attach`]). Counted as neither closed nor
    /// accepted.
    pub fn detach(&mut self, id: SlotId) -> Option<Detached<T::Client, T::Backend>> {
        let index = self.live_index(id)?;
        let s = self.remove(index)?;
        Some(Detached {
            client: s.client,
            upstream: s.upstream,
            core: s.core,
            phase: s.phase,
            eof: s.eof,
        })
    }

    /// Continue a detached connection here. Both directions are tried at
    /// once (the transport may hold bytes that arrived during the move).
    /// `None` when the transport could not attach the client (it and its
    /// backend connection are closed then).
    pub fn attach(
        &mut self,
        t: &mut T,
        d: Detached<T::Client, T::Backend>,
        now: Instant,
    ) -> Option<SlotId> {
        let Detached {
            client,
            upstream,
            core,
            phase,
            eof,
        } = d;
        let Some(id) = self.insert(t, client, core, phase, eof) else {
            if let Some(u) = upstream {
                t.close_backend(u.conn, Close::Abort);
            }
            return None;
        };
        if let Some(mut u) = upstream {
            if t.adopt(&mut u.conn, id) {
                self.slots[id.index as usize].upstream =
                    Some(Upstream::new(u.conn, u.backend, u.connecting));
            } else {
                t.close_backend(u.conn, Close::Abort);
                self.slots[id.index as usize]
                    .core
                    .handle_upstream_error(now);
            }
        }
        Some(id)
    }
}
