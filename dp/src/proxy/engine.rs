//! The loop itself (DPDK builds only). See the module above for the turn.

use std::collections::VecDeque;

use crossbeam_queue::ArrayQueue;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use dpuproxy_l7::deadlines::Deadlines;
use dpuproxy_l7::{Action, Connection, ErrorKind, Shared};
use dpuproxy_tcp::smoltcp::phy::{self, ChecksumCapabilities, DeviceCapabilities, Medium};
use dpuproxy_tcp::smoltcp::wire::{EthernetAddress, HardwareAddress, Ipv4Cidr};
use dpuproxy_tcp::{ConnId, ConnectOptions, Event, Stack, StackConfig, TcpError};
use dpuproxy_tls::{Handshake, HandshakeConfig, Incoming, OpensslHandshake, RecordLayer};

use super::{
    DpMetrics, LcoreCounters, LcoreSummary, MAX_POLLERS, ProxyOptions, ProxySummary, STEER_RING,
    SteeringMode,
};
use crate::error::{Error, Result};
use crate::net::{Responder, Verdict};
use crate::steer::{FrameKind, RSS_KEY, Steering, classify};
use crate::{Eal, Mbuf, Mempool, Port, PortConfig, QueuePair, run_on_lcores, tsc, tsc_hz};

/// An Ethernet frame carrying IPv4 ICMP.
fn is_icmpv4(frame: &[u8]) -> bool {
    frame.len() > 23 && frame[12] == 0x08 && frame[13] == 0x00 && frame[23] == 1
}

const ARP_AND_TCP_MTU: usize = 1514;
/// Plaintext/ciphertext bytes held for one client before reads stop.
const MAX_TLS_BUFFER: usize = 256 * 1024;
const ROUNDS: usize = 32;
/// How long a closing connection may take to drain to its client.
const LINGER: std::time::Duration = std::time::Duration::from_secs(30);

/// smoltcp device over DPDK mbufs: received mbufs are handed to the stack
/// as they are; transmitted frames are written into fresh mbufs and queued
/// for the turn's single tx burst.
struct MbufDevice<'p> {
    pool: &'p Mempool<'p>,
    rx: VecDeque<Mbuf<'p>>,
    tx: Vec<Mbuf<'p>>,
    tx_nombuf: u64,
    caps: DeviceCapabilities,
}

struct RxTok<'p>(Mbuf<'p>);

struct TxTok<'a, 'p> {
    dev: &'a mut MbufDevice<'p>,
}

impl phy::RxToken for RxTok<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        // The mbuf goes back to the pool when `self.0` drops.
        f(self.0.data())
    }
}

impl phy::TxToken for TxTok<'_, '_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let slot = self.dev.pool.alloc().and_then(|mut m| {
            let len16 = u16::try_from(len).ok()?;
            m.append(len16)?;
            Some(m)
        });
        match slot {
            Some(mut m) => {
                let r = f(m.data_mut());
                self.dev.tx.push(m);
                r
            }
            None => {
                // No mbuf: the frame is lost like on a busy wire; TCP
                // retransmits. Counted.
                self.dev.tx_nombuf += 1;
                let mut scratch = [0u8; ARP_AND_TCP_MTU];
                match scratch.get_mut(..len) {
                    Some(frame) => f(frame),
                    None => f(&mut vec![0u8; len]),
                }
            }
        }
    }
}

impl<'p> phy::Device for MbufDevice<'p> {
    type RxToken<'a>
        = RxTok<'p>
    where
        Self: 'a;
    type TxToken<'a>
        = TxTok<'a, 'p>
    where
        Self: 'a;

    fn receive(
        &mut self,
        _t: dpuproxy_tcp::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let m = self.rx.pop_front()?;
        Some((RxTok(m), TxTok { dev: self }))
    }

    fn transmit(&mut self, _t: dpuproxy_tcp::Instant) -> Option<Self::TxToken<'_>> {
        Some(TxTok { dev: self })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.caps.clone()
    }
}

enum Tls {
    Handshaking(Box<OpensslHandshake>),
    Established(Box<RecordLayer>),
    Failed,
}

struct Upstream {
    id: ConnId,
    backend: usize,
    connected: bool,
}

/// Idle backend connections kept open for reuse (like the kernel path's
/// pool): without them every request would cost a TCP handshake and leave
/// a TIME-WAIT record on an ephemeral port.
const POOL_IDLE: std::time::Duration = std::time::Duration::from_secs(4);
const POOL_MAX_PER_BACKEND: usize = 256;

struct Client {
    tcp: ConnId,
    tls: Tls,
    core: Connection,
    /// TLS bytes received and not yet opened.
    inbuf: Vec<u8>,
    /// TLS bytes sealed and not yet taken by the TCP send buffer.
    outbuf: OutBuf,
    /// In `Proxy::dirty` (driven this turn).
    queued: bool,
    upstream: Option<Upstream>,
    /// `Some(flush)` once the core asked to close.
    closing: Option<bool>,
    /// When closing began: a client that stops reading is cut off after
    /// `LINGER` (its TCP keeps answering zero-window probes forever).
    closing_since: Option<Instant>,
    /// close_notify is in `outbuf` (or the TLS session cannot send one).
    close_notify_queued: bool,
    eof: bool,
    accepted_at: Instant,
}

/// Sealed TLS bytes waiting for the client's TCP send buffer. A partial
/// send moves a cursor instead of shifting the rest to the front; the space
/// before the cursor is reclaimed when the buffer empties, or when it is at
/// least half the buffer and more is appended.
#[derive(Default)]
struct OutBuf {
    buf: Vec<u8>,
    sent: usize,
}

impl OutBuf {
    fn pending(&self) -> &[u8] {
        &self.buf[self.sent..]
    }

    fn len(&self) -> usize {
        self.buf.len() - self.sent
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `n` bytes were taken by TCP.
    fn consume(&mut self, n: usize) {
        self.sent = (self.sent + n).min(self.buf.len());
        if self.sent == self.buf.len() {
            self.buf.clear();
            self.sent = 0;
        }
    }

    /// The vector to append sealed records to.
    fn appender(&mut self) -> &mut Vec<u8> {
        if self.sent > 0 && self.sent * 2 >= self.buf.len() {
            self.buf.drain(..self.sent);
            self.sent = 0;
        }
        &mut self.buf
    }
}

/// Which side of a client a TCP connection is.
#[derive(Clone, Copy)]
enum Owner {
    Client(usize),
    Upstream(usize),
    /// In the idle pool of this backend.
    Pooled(usize),
}

struct Proxy<'s> {
    shared: &'s Arc<Shared>,
    opts: &'s ProxyOptions,
    metrics: &'s DpMetrics,
    /// This lcore's counters.
    mine: &'s LcoreCounters,
    /// This lcore's queue (its index among the pollers).
    queue: u16,
    steering: &'s Steering,
    tls_cfg: &'s HandshakeConfig,
    clients: slab::Slab<Client>,
    /// Indexed by `ConnId::index()`.
    owners: Owners,
    timers: Deadlines,
    /// Clients to drive this turn (each once: `Client::queued`).
    dirty: Vec<usize>,
    /// Connections that used up their rounds: driven again next turn.
    next_dirty: Vec<usize>,
    origin: Instant,
    /// Idle connections per backend index.
    pool: Vec<Vec<(ConnId, Instant)>>,
}

/// Which client each TCP connection belongs to, by `ConnId::index()` (the
/// stack's dense slot index, meant for callers' own tables).
#[derive(Default)]
struct Owners(Vec<Option<Owner>>);

impl Owners {
    fn get(&self, conn: &usize) -> Option<&Owner> {
        self.0.get(*conn).and_then(Option::as_ref)
    }

    fn insert(&mut self, conn: usize, owner: Owner) {
        if conn >= self.0.len() {
            self.0.resize(conn + 1, None);
        }
        self.0[conn] = Some(owner);
    }

    fn remove(&mut self, conn: &usize) -> Option<Owner> {
        self.0.get_mut(*conn).and_then(Option::take)
    }
}

impl Proxy<'_> {
    fn smol(&self, t: Instant) -> dpuproxy_tcp::Instant {
        dpuproxy_tcp::Instant::from_micros(
            t.saturating_duration_since(self.origin).as_micros() as i64
        )
    }

    fn mark(&mut self, idx: usize) {
        if let Some(c) = self.clients.get_mut(idx)
            && !c.queued
        {
            c.queued = true;
            self.dirty.push(idx);
        }
    }

    fn on_event(
        &mut self,
        stack: &mut Stack,
        ev: Event,
        listener: dpuproxy_tcp::ListenerId,
        now: Instant,
    ) {
        match ev {
            Event::Accept(l) if l == listener => {
                while let Ok(Some(id)) = stack.accept(listener) {
                    self.accept(stack, id, now);
                }
            }
            Event::Accept(_) => {}
            Event::Connected(id) => {
                if let Some(Owner::Upstream(idx)) = self.owners.get(&id.index()).copied()
                    && let Some(c) = self.clients.get_mut(idx)
                    && let Some(u) = &mut c.upstream
                    && u.id == id
                {
                    u.connected = true;
                    c.core.handle_upstream_connected(now, false);
                    self.mark(idx);
                }
            }
            Event::Reset(id) | Event::Closed(id) | Event::Readable(id)
                if matches!(self.owners.get(&id.index()), Some(Owner::Pooled(_))) =>
            {
                // A pooled connection the backend closed (or wrote to out
                // of turn): it can no longer be reused.
                if let Some(Owner::Pooled(b)) = self.owners.remove(&id.index())
                    && let Some(list) = self.pool.get_mut(b)
                {
                    list.retain(|(c, _)| *c != id);
                }
                let _ = stack.abort(id);
            }
            Event::Reset(id) => match self.owners.get(&id.index()).copied() {
                Some(Owner::Upstream(idx)) => {
                    if let Some(c) = self.clients.get_mut(idx)
                        && let Some(u) = &c.upstream
                        && u.id == id
                        && !u.connected
                    {
                        // Refused or unreachable: the core fails over.
                        let _ = stack.abort(id);
                        self.owners.remove(&id.index());
                        c.upstream = None;
                        c.core.handle_upstream_connect_failed(now);
                    }
                    self.mark(idx);
                }
                Some(Owner::Client(idx)) => self.mark(idx),
                Some(Owner::Pooled(_)) | None => {}
            },
            Event::Readable(id) | Event::Writable(id) | Event::Closed(id) => {
                match self.owners.get(&id.index()).copied() {
                    Some(Owner::Client(idx) | Owner::Upstream(idx)) => self.mark(idx),
                    Some(Owner::Pooled(_)) | None => {}
                }
            }
        }
    }

    fn accept(&mut self, stack: &mut Stack, id: ConnId, now: Instant) {
        if self.clients.len() >= self.opts.max_connections {
            let _ = stack.abort(id);
            return;
        }
        let peer = stack
            .tuple(id)
            .map(|t| t.remote_addr.to_string())
            .unwrap_or_default();
        let hs = match OpensslHandshake::new(self.tls_cfg) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "cannot create TLS state");
                let _ = stack.abort(id);
                return;
            }
        };
        let idx = self.clients.insert(Client {
            tcp: id,
            tls: Tls::Handshaking(Box::new(hs)),
            core: Connection::new(self.shared.clone(), peer, now),
            inbuf: Vec::new(),
            outbuf: OutBuf::default(),
            queued: false,
            upstream: None,
            closing: None,
            closing_since: None,
            close_notify_queued: false,
            eof: false,
            accepted_at: now,
        });
        self.owners.insert(id.index(), Owner::Client(idx));
        self.metrics
            .client_connections
            .fetch_add(1, Ordering::Relaxed);
        self.mine.accepted.fetch_add(1, Ordering::Relaxed);
        self.mark(idx);
    }

    /// Everything one client connection can do now, bounded.
    fn drive(&mut self, stack: &mut Stack, idx: usize, now: Instant) {
        for _ in 0..ROUNDS {
            let Some(c) = self.clients.get_mut(idx) else {
                return;
            };
            let mut progress = false;

            // Client TCP → TLS input.
            let wants_input = match c.tls {
                Tls::Handshaking(_) => true,
                Tls::Established(_) => c.core.wants_downstream_read(),
                Tls::Failed => false,
            };
            if wants_input && !c.eof && c.inbuf.len() < MAX_TLS_BUFFER {
                let inbuf = &mut c.inbuf;
                match stack.recv(c.tcp, |buf| {
                    inbuf.extend_from_slice(buf);
                    (buf.len(), buf.len())
                }) {
                    Ok(0) => {}
                    Ok(_) => progress = true,
                    Err(TcpError::Finished) => {
                        c.eof = true;
                        c.core.handle_downstream_eof(now);
                        progress = true;
                    }
                    Err(_) => {
                        c.eof = true;
                        c.core.handle_downstream_eof(now);
                        c.closing = Some(false);
                        progress = true;
                    }
                }
            }

            // TLS.
            match &mut c.tls {
                Tls::Handshaking(hs) => {
                    if !c.inbuf.is_empty() {
                        let r = hs.feed(&c.inbuf);
                        c.inbuf.clear();
                        let _ = hs.poll_output(c.outbuf.appender());
                        match r {
                            Err(e) => {
                                tracing::debug!(error = %e, "TLS handshake failed");
                                self.metrics
                                    .handshake_failures
                                    .fetch_add(1, Ordering::Relaxed);
                                self.shared.metrics.error(ErrorKind::TlsHandshake);
                                c.tls = Tls::Failed;
                                c.closing = Some(true);
                            }
                            Ok(()) if !hs.is_handshaking() => {
                                let Tls::Handshaking(hs) =
                                    std::mem::replace(&mut c.tls, Tls::Failed)
                                else {
                                    unreachable!("matched above")
                                };
                                match hs.into_established() {
                                    Ok(est) => {
                                        c.outbuf.appender().extend_from_slice(&est.output);
                                        c.inbuf = est.leftover;
                                        c.tls = Tls::Established(Box::new(est.record_layer));
                                        self.metrics.handshakes.fetch_add(1, Ordering::Relaxed);
                                    }
                                    Err(e) => {
                                        tracing::debug!(error = %e, "TLS hand-over failed");
                                        self.metrics
                                            .handshake_failures
                                            .fetch_add(1, Ordering::Relaxed);
                                        c.closing = Some(true);
                                    }
                                }
                            }
                            Ok(()) => {}
                        }
                        progress = true;
                    }
                }
                Tls::Established(rl) => {
                    let mut used = 0;
                    let mut failed = false;
                    while used < c.inbuf.len() {
                        match rl.open_next(&mut c.inbuf[used..]) {
                            Ok(o) => {
                                let n = o.consumed;
                                match o.incoming {
                                    Incoming::NeedMore => break,
                                    Incoming::AppData(data) => {
                                        if !data.is_empty() {
                                            c.core.handle_downstream_data(now, data);
                                        }
                                    }
                                    Incoming::Control => {}
                                    Incoming::CloseNotify => {
                                        if !c.eof {
                                            c.eof = true;
                                            c.core.handle_downstream_eof(now);
                                        }
                                    }
                                }
                                used += n;
                                progress = true;
                                if n == 0 {
                                    break;
                                }
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "TLS record error");
                                self.metrics.record_errors.fetch_add(1, Ordering::Relaxed);
                                self.shared.metrics.error(ErrorKind::TlsIo);
                                failed = true;
                                break;
                            }
                        }
                    }
                    c.inbuf.drain(..used.min(c.inbuf.len()));
                    let _ = rl.poll_output(c.outbuf.appender());
                    if failed {
                        c.inbuf.clear();
                        if !c.eof {
                            c.eof = true;
                            c.core.handle_downstream_eof(now);
                        }
                        // The alert is in outbuf: flush it, then close.
                        c.closing = Some(true);
                    }
                }
                Tls::Failed => {}
            }

            // Core actions.
            while let Some(a) = c.core.poll_action() {
                progress = true;
                match a {
                    Action::ConnectUpstream { backend, fresh } => {
                        if !fresh {
                            let list = &mut self.pool[backend];
                            let mut reused = None;
                            while let Some((id, since)) = list.pop() {
                                let alive = now.saturating_duration_since(since) < POOL_IDLE
                                    && stack.state(id) == Ok(dpuproxy_tcp::State::Established)
                                    && stack.recv_queue(id) == Ok(0);
                                if alive {
                                    reused = Some(id);
                                    break;
                                }
                                self.owners.remove(&id.index());
                                let _ = stack.abort(id);
                            }
                            if let Some(id) = reused {
                                self.owners.insert(id.index(), Owner::Upstream(idx));
                                c.upstream = Some(Upstream {
                                    id,
                                    backend,
                                    connected: true,
                                });
                                c.core.handle_upstream_connected(now, true);
                                continue;
                            }
                        }
                        let addr = self.opts.backends[backend];
                        // Replies must hash back to this lcore.
                        let (steering, queue, us) = (self.steering, self.queue, self.opts.ip);
                        match stack.connect_with(
                            *addr.ip(),
                            addr.port(),
                            &ConnectOptions::default(),
                            |p| steering.local_port_lands_on(queue, *addr.ip(), addr.port(), us, p),
                        ) {
                            Ok(id) => {
                                self.owners.insert(id.index(), Owner::Upstream(idx));
                                c.upstream = Some(Upstream {
                                    id,
                                    backend,
                                    connected: false,
                                });
                            }
                            Err(e) => {
                                tracing::warn!(backend = %addr, error = %e, "backend connect failed");
                                c.core.handle_upstream_connect_failed(now);
                            }
                        }
                    }
                    Action::ReleaseUpstream { reusable } => {
                        if let Some(u) = c.upstream.take() {
                            let list = &mut self.pool[u.backend];
                            if reusable && list.len() < POOL_MAX_PER_BACKEND {
                                self.owners.insert(u.id.index(), Owner::Pooled(u.backend));
                                list.push((u.id, now));
                            } else {
                                self.owners.remove(&u.id.index());
                                let _ = stack.close(u.id);
                            }
                        }
                    }
                    Action::AbortUpstream => {
                        if let Some(u) = c.upstream.take() {
                            self.owners.remove(&u.id.index());
                            let _ = stack.abort(u.id);
                        }
                    }
                    Action::CloseDownstream { flush } => {
                        // A TLS failure already asked to flush its alert:
                        // keep that; otherwise take the core's choice.
                        if c.closing.is_none() {
                            c.closing = Some(flush);
                        }
                    }
                }
            }

            // Core ↔ upstream.
            if let Some(u) = &c.upstream
                && u.connected
            {
                let uid = u.id;
                if !c.core.upstream_pending().is_empty() {
                    match stack.send_slice(uid, c.core.upstream_pending()) {
                        Ok(n) if n > 0 => {
                            c.core.upstream_consumed(n);
                            progress = true;
                        }
                        Ok(_) => {}
                        Err(_) => {
                            c.core.handle_upstream_error(now);
                            progress = true;
                        }
                    }
                }
                if c.upstream.is_some() && c.core.wants_upstream_read() {
                    let core = &mut c.core;
                    match stack.recv(uid, |buf| {
                        if !buf.is_empty() {
                            core.handle_upstream_data(now, buf);
                        }
                        (buf.len(), buf.len())
                    }) {
                        Ok(0) => {}
                        Ok(_) => progress = true,
                        Err(TcpError::Finished) => {
                            c.core.handle_upstream_eof(now);
                            progress = true;
                        }
                        Err(_) => {
                            c.core.handle_upstream_error(now);
                            progress = true;
                        }
                    }
                }
            }

            // Core → seal → client TCP.
            if let Tls::Established(rl) = &mut c.tls
                && c.closing != Some(false)
                && c.outbuf.len() < MAX_TLS_BUFFER
                && !c.core.downstream_pending().is_empty()
            {
                let n = c.core.downstream_pending().len();
                match rl.write_app_data(c.core.downstream_pending(), c.outbuf.appender()) {
                    Ok(()) => {
                        c.core.downstream_consumed(now, n);
                        progress = true;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "TLS seal failed");
                        c.closing = Some(false);
                    }
                }
            }
            if !c.outbuf.is_empty() {
                match stack.send_slice(c.tcp, c.outbuf.pending()) {
                    Ok(n) if n > 0 => {
                        c.outbuf.consume(n);
                        progress = true;
                    }
                    Ok(_) => {}
                    Err(_) => c.closing = Some(false),
                }
            }

            if let Some(flush) = c.closing {
                c.closing_since.get_or_insert(now);
                if !flush {
                    return self.close_client(stack, idx, false, now);
                }
                let drained = c.outbuf.is_empty() && c.core.downstream_pending().is_empty();
                if drained && !c.close_notify_queued {
                    // close_notify goes through outbuf like any record, so
                    // a full send buffer cannot cut it short.
                    c.close_notify_queued = true;
                    if let Tls::Established(rl) = &mut c.tls
                        && rl.send_close_notify().is_ok()
                    {
                        let _ = rl.poll_output(c.outbuf.appender());
                        continue;
                    }
                }
                if drained && c.outbuf.is_empty() {
                    return self.close_client(stack, idx, true, now);
                }
            }
            if !progress {
                self.rearm(idx);
                return;
            }
        }
        // Still busy after the round limit: continue next turn (`mark`
        // drops repeats then).
        self.next_dirty.push(idx);
        self.rearm(idx);
    }

    fn close_client(&mut self, stack: &mut Stack, idx: usize, graceful: bool, now: Instant) {
        let Some(mut c) = self.clients.try_remove(idx) else {
            return;
        };
        // The core must see the end of the client even when we noticed it
        // first (a failed send): it settles backend and SSE counters. A
        // second EOF is harmless.
        c.core.handle_downstream_eof(now);
        self.timers.set(idx, None);
        if let Some(u) = c.upstream.take() {
            self.owners.remove(&u.id.index());
            let _ = stack.abort(u.id);
        }
        self.owners.remove(&c.tcp.index());
        if graceful {
            // Whatever is still queued (close_notify, an alert) is in the
            // TCP send buffer; close sends FIN after it.
            let _ = stack.close(c.tcp);
        } else {
            let _ = stack.abort(c.tcp);
        }
        self.metrics
            .client_connections
            .fetch_sub(1, Ordering::Relaxed);
    }

    fn rearm(&mut self, idx: usize) {
        let Some(c) = self.clients.get_mut(idx) else {
            return;
        };
        let deadline = match (&c.tls, c.closing_since) {
            (_, Some(since)) => Some(since + LINGER),
            (Tls::Handshaking(_), None) => Some(c.accepted_at + self.opts.handshake_timeout),
            _ => c.core.poll_timeout(),
        };
        self.timers.set(idx, deadline);
    }

    fn fire_timers(&mut self, stack: &mut Stack, now: Instant) {
        while let Some(idx) = self.timers.pop_due(now) {
            let Some(c) = self.clients.get_mut(idx) else {
                continue;
            };
            if c.closing_since.is_some() {
                // The client did not drain within LINGER.
                self.close_client(stack, idx, false, now);
                continue;
            }
            if matches!(c.tls, Tls::Handshaking(_)) {
                self.metrics
                    .handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.shared.metrics.error(ErrorKind::TlsHandshake);
                self.close_client(stack, idx, false, now);
                continue;
            }
            c.core.handle_timeout(now);
            self.drive(stack, idx, now);
        }
    }
}

/// Handed-over frames an lcore takes per turn.
const STEER_BUDGET: usize = 256;
/// How long an lcore waits for the others to report their CPUs.
const CPU_REPORT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What every polling lcore shares: read-only settings, atomics and the
/// lock-free hand-over rings. The only locks behind it are the L7 core's
/// shard locks (`shared`: affinity table, token cache) and the CPU report
/// taken once at start.
struct Lanes<'s, 'p> {
    opts: &'s ProxyOptions,
    shared: &'s Arc<Shared>,
    tls_cfg: &'s HandshakeConfig,
    metrics: &'s DpMetrics,
    stop: &'s AtomicBool,
    /// Set when one lcore fails: the others stop too.
    abort: AtomicBool,
    pool: &'p Mempool<'p>,
    mac: [u8; 6],
    steering: Steering,
    /// Our key and RETA are programmed into the port.
    hardware: bool,
    /// `rings[q]`: frames other lcores received for flows queue `q` owns.
    rings: Vec<ArrayQueue<Mbuf<'p>>>,
    /// CPUs each lcore may run on, once it has reported them (at start).
    cpu_sets: std::sync::Mutex<Vec<Option<libc::cpu_set_t>>>,
}

/// An lcore's loop counters, counted locally and published every 100 ms
/// (no shared cache line written per packet).
#[derive(Default)]
struct LoopCounts {
    busy: u64,
    idle: u64,
    rx_packets: u64,
    out: u64,
    dropped: u64,
    handed_in: u64,
    hash_checked: u64,
    hash_mismatch: u64,
}

impl LoopCounts {
    fn publish(&self, to: &LcoreCounters) {
        to.busy_cycles.store(self.busy, Ordering::Relaxed);
        to.idle_cycles.store(self.idle, Ordering::Relaxed);
        to.rx_packets.store(self.rx_packets, Ordering::Relaxed);
        to.steered_out.store(self.out, Ordering::Relaxed);
        to.steer_dropped.store(self.dropped, Ordering::Relaxed);
        to.steered_in.store(self.handed_in, Ordering::Relaxed);
        to.rss_hash_checked
            .store(self.hash_checked, Ordering::Relaxed);
        to.rss_hash_mismatch
            .store(self.hash_mismatch, Ordering::Relaxed);
    }
}

/// Sets `abort` when dropped armed: an lcore that fails or panics stops
/// the others.
struct AbortOnDrop<'a>(&'a AtomicBool, bool);

impl Drop for AbortOnDrop<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

impl<'p> Lanes<'_, 'p> {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.abort.load(Ordering::Relaxed)
    }

    /// Decides where a frame from the wire goes: `Some` to handle it on
    /// `queue`, `None` when it was handed to its owner (or dropped on a
    /// full ring, counted). ARP replies are also copied to every other
    /// lcore.
    fn steer(&self, queue: u16, m: Mbuf<'p>, counts: &mut LoopCounts) -> Option<Mbuf<'p>> {
        if self.rings.len() < 2 {
            return Some(m);
        }
        match classify(m.data()) {
            FrameKind::Tcp(t) => {
                // With our key programmed, the NIC's hash must be ours: a
                // difference means the hardware hashes otherwise (counted;
                // the hand-over keeps the flow correct either way).
                let hash = self.steering.hash(&t);
                if self.hardware
                    && let Some(nic) = m.rss_hash()
                {
                    counts.hash_checked += 1;
                    if nic != hash {
                        counts.hash_mismatch += 1;
                    }
                }
                let owner = self.steering.owner_of_hash(hash);
                if owner == queue {
                    return Some(m);
                }
                match self.rings[usize::from(owner)].push(m) {
                    Ok(()) => counts.out += 1,
                    Err(dropped) => {
                        drop(dropped);
                        counts.dropped += 1;
                    }
                }
                None
            }
            FrameKind::ArpReply => {
                for (q, ring) in self.rings.iter().enumerate() {
                    if q == usize::from(queue) {
                        continue;
                    }
                    let copy = self
                        .pool
                        .alloc()
                        .and_then(|mut c| c.extend_from_slice(m.data()).then_some(c));
                    match copy.map(|c| ring.push(c)) {
                        Some(Ok(())) => counts.out += 1,
                        // A refused push hands the copy back; it is freed here.
                        _ => counts.dropped += 1,
                    }
                }
                Some(m)
            }
            FrameKind::Other => Some(m),
        }
    }

    /// Records this thread's CPUs for `queue` and reports whether another
    /// polling lcore may run on one of them (then idle turns yield the
    /// CPU). Waits, bounded, for the others to report.
    fn shares_cpu(&self, queue: u16) -> bool {
        let mine = current_cpu_set();
        if let Ok(mut sets) = self.cpu_sets.lock() {
            sets[usize::from(queue)] = mine;
        }
        let Some(mine) = mine else {
            return false;
        };
        let start = Instant::now();
        loop {
            let (all_known, shared) = match self.cpu_sets.lock() {
                Ok(sets) => (
                    sets.iter().all(Option::is_some),
                    sets.iter().enumerate().any(|(q, other)| {
                        q != usize::from(queue) && other.is_some_and(|o| cpu_sets_meet(&mine, &o))
                    }),
                ),
                Err(_) => return false,
            };
            if all_known || start.elapsed() > CPU_REPORT_WAIT || self.stopping() {
                return shared;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

/// The calling thread's CPU affinity (None when it cannot be read).
fn current_cpu_set() -> Option<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain data; zeroed is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid out-parameter of the size passed.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    (rc == 0).then_some(set)
}

/// Whether two CPU sets have a CPU in common.
fn cpu_sets_meet(a: &libc::cpu_set_t, b: &libc::cpu_set_t) -> bool {
    (0..libc::CPU_SETSIZE as usize).any(|cpu| {
        // SAFETY: cpu is below CPU_SETSIZE, the size of both sets.
        unsafe { libc::CPU_ISSET(cpu, a) && libc::CPU_ISSET(cpu, b) }
    })
}

/// Programs our RSS key and RETA when the port takes them, and says how
/// packets will reach their owner.
fn program_rss(port: &mut Port<'_>, queues: u16) -> (Steering, SteeringMode) {
    if queues < 2 {
        return (Steering::new(1, 0), SteeringMode::Single);
    }
    let steering = Steering::new(queues, usize::from(port.reta_size()));
    let attempt = (|| -> Result<()> {
        // The NIC picks the bucket from the hash's low bits; our `%` agrees
        // only for a power-of-two table.
        if port.reta_size() == 0 {
            return Err(Error::Config("the port has no redirection table".into()));
        }
        if !steering.reta().len().is_power_of_two() {
            return Err(Error::Config(format!(
                "the port's redirection table has {} entries (not a power of two)",
                port.reta_size()
            )));
        }
        // 0: the PMD does not say (the read-back below decides).
        let key_size = usize::from(port.hash_key_size());
        if key_size != 0 && key_size != RSS_KEY.len() {
            return Err(Error::Config(format!(
                "the PMD takes a {}-byte RSS key, ours has {}",
                port.hash_key_size(),
                RSS_KEY.len()
            )));
        }
        let (_, hash_types) = port.rss_key()?;
        // SAFETY: reads an immutable constant defined in the shim.
        let tcp4 = unsafe { dpuproxy_dpdk_sys::DPUPROXY_RTE_ETH_RSS_NONFRAG_IPV4_TCP };
        if hash_types & tcp4 == 0 {
            return Err(Error::Config(
                "the port does not hash the ports of IPv4 TCP".into(),
            ));
        }
        port.set_rss_key(&RSS_KEY, hash_types)?;
        port.set_reta(steering.reta())?;
        if port.rss_key()?.0 != RSS_KEY || port.reta()? != steering.reta() {
            return Err(Error::Config(
                "the port did not keep our key and RETA".into(),
            ));
        }
        Ok(())
    })();
    match attempt {
        Ok(()) => {
            tracing::info!(
                queues,
                reta = steering.reta().len(),
                "RSS programmed with our key and RETA: the NIC delivers each flow to the lcore that owns it"
            );
            (steering, SteeringMode::Hardware)
        }
        Err(e) => {
            tracing::info!(
                queues,
                reason = %e,
                "no programmable RSS: lcores hand packets of flows they do not own to the owner (software steering)"
            );
            (Steering::new(queues, 0), SteeringMode::Software)
        }
    }
}

/// See [`super::run_proxy`].
pub(super) fn run(
    opts: &ProxyOptions,
    shared: &Arc<Shared>,
    tls_cfg: &HandshakeConfig,
    metrics: &DpMetrics,
    stop: &AtomicBool,
    on_up: impl FnOnce(&str, [u8; 6]),
) -> Result<ProxySummary> {
    if opts.backends.len() != shared.backends.len() {
        return Err(Error::NoPort(
            "backend list and shared state disagree".into(),
        ));
    }
    let eal = Eal::init(&opts.eal_args)?;
    let main = eal.main_lcore();
    // Queue 0 is polled by the main lcore, queue i by the i-th worker.
    let lcores: Vec<u32> = std::iter::once(main)
        .chain(eal.lcores().into_iter().filter(|&l| l != main))
        .collect();
    let all_ports = eal.ports();
    let info = crate::app::select_port(&all_ports, opts.device.as_deref())?;
    let (max_rx, max_tx) = Port::max_queues(info.id)?;
    let queues = lcores
        .len()
        .min(MAX_POLLERS)
        .min(usize::from(max_rx))
        .min(usize::from(max_tx))
        .max(1) as u16;
    let (polling, idle) = lcores.split_at(usize::from(queues));
    let port_queues = max_rx.min(max_tx);
    if port_queues == 1 {
        tracing::info!(
            port = %info.name,
            lcore = main,
            idle_lcores = ?idle,
            "the port has one rx/tx queue pair: one lcore owns it (no RSS spreading); any other lcores stay idle"
        );
    } else if usize::from(port_queues) == usize::from(queues) && !idle.is_empty() {
        tracing::warn!(
            port = %info.name,
            queues,
            ?polling,
            idle_lcores = ?idle,
            "the port has fewer rx/tx queue pairs than lcores: one lcore owns each queue, the extra lcores stay idle"
        );
    } else if !idle.is_empty() {
        tracing::warn!(
            ?polling,
            idle_lcores = ?idle,
            "at most {MAX_POLLERS} lcores poll: the extra lcores stay idle"
        );
    }
    let cfg = PortConfig {
        rx_queues: queues,
        tx_queues: queues,
        rx_desc: super::QUEUE_DESCRIPTORS,
        tx_desc: super::QUEUE_DESCRIPTORS,
        rss_key: Some(RSS_KEY.to_vec()),
        ..PortConfig::default()
    };
    let plan = super::pool_plan(queues, opts.burst);
    let pool = Mempool::new(&eal, "proxy", plan.mbufs, plan.cache, None, info.socket)?;
    let mut port = Port::open(info.id, &pool, &cfg)?;
    let mac = port.mac()?;
    let (steering, mode) = program_rss(&mut port, queues);
    metrics
        .mempool_size
        .store(u64::from(pool.capacity()), Ordering::Relaxed);
    metrics.tsc_hz.store(tsc_hz(), Ordering::Relaxed);
    metrics.steering.store(mode as u64, Ordering::Relaxed);
    for (q, &l) in polling.iter().enumerate() {
        metrics.per_lcore[q]
            .lcore
            .store(u64::from(l), Ordering::Relaxed);
        metrics.per_lcore[q]
            .queue
            .store(q as u64, Ordering::Relaxed);
    }
    metrics.pollers.store(u64::from(queues), Ordering::Relaxed);

    let lanes = Lanes {
        opts,
        shared,
        tls_cfg,
        metrics,
        stop,
        abort: AtomicBool::new(false),
        pool: &pool,
        mac,
        steering,
        hardware: mode == SteeringMode::Hardware,
        rings: (0..queues).map(|_| ArrayQueue::new(STEER_RING)).collect(),
        cpu_sets: std::sync::Mutex::new(vec![None; usize::from(queues)]),
    };
    // What every lcore will build must work before we say we are up.
    drop(build_stack(opts, mac, 0)?);
    metrics.up.store(true, Ordering::Relaxed);
    metrics.started.store(true, Ordering::Relaxed);
    on_up(&info.name, mac);
    tracing::info!(
        lcores = ?polling,
        steering = mode.label(),
        "polling {queues} queue pair(s), one per lcore"
    );

    let pairs = port.queue_pairs();
    let lanes_ref = &lanes;
    let jobs: Vec<Box<dyn FnOnce() -> Result<LcoreSummary> + Send + '_>> = pairs
        .into_iter()
        .map(|qp| {
            Box::new(move || {
                // Armed until the loop returns Ok: an error or a panic
                // stops every other lcore too.
                let mut guard = AbortOnDrop(&lanes_ref.abort, true);
                let r = lcore_loop(lanes_ref, qp);
                guard.1 = r.is_err();
                r
            }) as Box<dyn FnOnce() -> Result<LcoreSummary> + Send + '_>
        })
        .collect();
    let outcomes = run_on_lcores(&eal, jobs, || lanes.abort.store(true, Ordering::Relaxed));

    // Every lcore has stopped: free what is still in the hand-over rings
    // (dropping a ring drops its mbufs), stop the port, and account for
    // every mbuf.
    metrics.up.store(false, Ordering::Relaxed);
    drop(lanes);
    drop(port);
    let in_use = pool.in_use();
    let size = pool.capacity();
    drop(pool);
    drop(eal);
    let mut lcores_done = Vec::new();
    for (q, outcome) in outcomes?.into_iter().enumerate() {
        match outcome {
            Ok(Ok(s)) => lcores_done.push(s),
            Ok(Err(e)) => return Err(e),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                return Err(Error::Config(format!(
                    "the loop of queue {q} panicked: {what}"
                )));
            }
        }
    }
    Ok(ProxySummary {
        port: info.name,
        pool_size: size,
        pool_in_use_after_close: in_use,
        steering: mode,
        lcores: lcores_done,
    })
}

/// One lcore's TCP stack, listening on the proxy port, and the device
/// capabilities it was built for.
fn build_stack(
    opts: &ProxyOptions,
    mac: [u8; 6],
    queue: u16,
) -> Result<(Stack, dpuproxy_tcp::ListenerId, DeviceCapabilities)> {
    let mut caps = DeviceCapabilities::default();
    caps.medium = Medium::Ethernet;
    caps.max_transmission_unit = ARP_AND_TCP_MTU;
    caps.max_burst_size = Some(opts.burst);
    caps.checksum = ChecksumCapabilities::default();
    let mut scfg = StackConfig::new(
        HardwareAddress::Ethernet(EthernetAddress(mac)),
        Ipv4Cidr::new(opts.ip, opts.prefix_len),
    );
    scfg.gateway = opts.gateway;
    // Each lcore draws its own initial sequence numbers and hash keys.
    scfg.seed = opts.seed ^ u64::from(queue).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    scfg.rx_burst = opts.burst.max(32);
    let mut stack = Stack::new(scfg, caps.clone(), dpuproxy_tcp::Instant::from_micros(0))
        .map_err(|e| Error::NoPort(format!("TCP stack: {e}")))?;
    let listener = stack
        .listen(opts.listen_port, 1024)
        .map_err(|e| Error::NoPort(format!("listen on port {}: {e}", opts.listen_port)))?;
    Ok((stack, listener, caps))
}

/// One lcore: its own TCP stack, connections and timers over queue pair
/// `qp`, until the proxy stops. Resets its connections on the way out.
fn lcore_loop<'p>(lanes: &Lanes<'_, 'p>, qp: QueuePair<'_, 'p>) -> Result<LcoreSummary> {
    let opts = lanes.opts;
    let queue = qp.queue();
    let mine = &lanes.metrics.per_lcore[usize::from(queue)];
    let lcore = Eal::current_lcore().unwrap_or(u32::MAX);
    mine.lcore.store(u64::from(lcore), Ordering::Relaxed);
    let hz = tsc_hz();

    let origin = Instant::now();
    let (mut stack, listener, caps) = build_stack(opts, lanes.mac, queue)?;

    let mut dev = MbufDevice {
        pool: lanes.pool,
        rx: VecDeque::new(),
        tx: Vec::new(),
        tx_nombuf: 0,
        caps,
    };
    let mut proxy = Proxy {
        shared: lanes.shared,
        opts,
        metrics: lanes.metrics,
        mine,
        queue,
        steering: &lanes.steering,
        tls_cfg: lanes.tls_cfg,
        clients: slab::Slab::new(),
        owners: Owners::default(),
        timers: Deadlines::new(),
        dirty: Vec::new(),
        next_dirty: Vec::new(),
        origin,
        pool: vec![Vec::new(); opts.backends.len()],
    };
    let yield_when_idle = lanes.rings.len() > 1 && lanes.shares_cpu(queue);
    if yield_when_idle {
        tracing::warn!(
            lcore,
            queue,
            "this lcore shares a CPU with another polling lcore: idle turns yield the CPU (fine for tests; give each lcore a core of its own in production)"
        );
    }

    let mut txb = qp.tx_batch(opts.burst, 4);
    let mut responder = Responder::new(lanes.mac, opts.ip);
    let mut rxv: Vec<Mbuf<'_>> = Vec::with_capacity(crate::MAX_BURST);
    let mut counts = LoopCounts::default();
    let report_every = hz / 10;
    let mut next_report = tsc() + report_every;
    let mut t0 = tsc();
    let ring = &lanes.rings[usize::from(queue)];
    loop {
        let n = qp.rx_burst(&mut rxv, opts.burst);
        counts.rx_packets += n as u64;
        let mut work = n;
        // ICMP echo is answered here, in place in the received mbuf (no
        // neighbour lookup, no new mbuf); other ICMP is dropped. Everything
        // else goes to the TCP stack (which hands ARP and non-TCP IPv4 to
        // smoltcp's interface).
        let mut deliver = |mut m: Mbuf<'p>| {
            if is_icmpv4(m.data()) {
                if responder.handle(m.data_mut()) == Verdict::Reply {
                    txb.push(m);
                }
            } else {
                dev.rx.push_back(m);
            }
        };
        for m in rxv.drain(..) {
            if let Some(m) = lanes.steer(queue, m, &mut counts) {
                deliver(m);
            }
        }
        for m in std::iter::from_fn(|| ring.pop()).take(STEER_BUDGET) {
            counts.handed_in += 1;
            work += 1;
            deliver(m);
        }
        let now = Instant::now();
        let snow = proxy.smol(now);
        work += stack.poll(snow, &mut dev);
        while let Some(ev) = stack.poll_event() {
            work += 1;
            proxy.on_event(&mut stack, ev, listener, now);
        }
        let mut carried = std::mem::take(&mut proxy.next_dirty);
        for &idx in &carried {
            proxy.mark(idx);
        }
        carried.clear();
        proxy.next_dirty = carried;
        while let Some(idx) = proxy.dirty.pop() {
            if let Some(c) = proxy.clients.get_mut(idx) {
                c.queued = false;
            }
            proxy.drive(&mut stack, idx, now);
            work += 1;
        }
        proxy.fire_timers(&mut stack, now);
        // The drives may have raised new events (e.g. accept backlog).
        while let Some(ev) = stack.poll_event() {
            proxy.on_event(&mut stack, ev, listener, now);
        }
        work += stack.egress(snow, &mut dev);
        for m in dev.tx.drain(..) {
            txb.push(m);
        }
        let sent = txb.flush();
        let t1 = tsc();
        if work > 0 || sent > 0 {
            counts.busy += t1 - t0;
        } else {
            counts.idle += t1 - t0;
            if yield_when_idle {
                std::thread::yield_now();
            }
        }
        t0 = tsc();
        if t1 >= next_report {
            next_report = t1 + report_every;
            let now = Instant::now();
            for list in &mut proxy.pool {
                list.retain(|(id, since)| {
                    let keep = now.saturating_duration_since(*since) < POOL_IDLE;
                    if !keep {
                        proxy.owners.remove(&id.index());
                        let _ = stack.close(*id);
                    }
                    keep
                });
            }
            counts.publish(mine);
            let tx = txb.stats();
            mine.tx_dropped.store(
                tx.dropped_full + tx.dropped_unsent + dev.tx_nombuf,
                Ordering::Relaxed,
            );
            mine.tcp_connections
                .store(stack.connection_count() as u64, Ordering::Relaxed);
            let buffered: usize = proxy
                .clients
                .iter()
                .map(|(_, c)| {
                    c.inbuf.len()
                        + c.outbuf.len()
                        + c.core.downstream_pending().len()
                        + c.core.upstream_pending().len()
                })
                .sum();
            mine.buffered_bytes
                .store(buffered as u64, Ordering::Relaxed);
            if queue == 0 {
                let m = lanes.metrics;
                if let Ok(s) = qp.port_stats() {
                    m.port_rx_packets.store(s.ipackets, Ordering::Relaxed);
                    m.port_tx_packets.store(s.opackets, Ordering::Relaxed);
                    m.port_rx_bytes.store(s.ibytes, Ordering::Relaxed);
                    m.port_tx_bytes.store(s.obytes, Ordering::Relaxed);
                    m.port_imissed.store(s.imissed, Ordering::Relaxed);
                    m.port_ierrors.store(s.ierrors, Ordering::Relaxed);
                    m.port_oerrors.store(s.oerrors, Ordering::Relaxed);
                }
                m.mempool_in_use
                    .store(u64::from(lanes.pool.in_use()), Ordering::Relaxed);
            }
        }
        if lanes.stopping() {
            break;
        }
    }

    // Shutdown: reset every connection (clients and backends see RST) and
    // send the last frames.
    let idxs: Vec<usize> = proxy.clients.iter().map(|(i, _)| i).collect();
    for idx in idxs {
        proxy.close_client(&mut stack, idx, false, Instant::now());
    }
    for list in proxy.pool.drain(..) {
        for (id, _) in list {
            let _ = stack.abort(id);
        }
    }
    let now = Instant::now();
    let snow = proxy.smol(now);
    stack.egress(snow, &mut dev);
    for m in dev.tx.drain(..) {
        txb.push(m);
    }
    txb.flush();
    drop(txb);
    dev.rx.clear();
    drop(rxv);
    drop(stack);
    mine.tcp_connections.store(0, Ordering::Relaxed);
    mine.buffered_bytes.store(0, Ordering::Relaxed);
    counts.publish(mine);
    Ok(LcoreSummary {
        lcore,
        queue,
        busy_cycles: counts.busy,
        idle_cycles: counts.idle,
        accepted: mine.accepted.load(Ordering::Relaxed),
    })
}
