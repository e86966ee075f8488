//! One lcore's run-to-completion loop (DPDK builds only). A turn:
//! rx burst → steering (frames of other lcores' flows handed over) → ICMP
//! answered in place → TCP ingress and timers → stack events to the driver
//! → the driver runs the marked connections and its timers → TCP egress →
//! one tx burst. Every connection decision is the driver's.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Instant;

use dpuproxy_dp::net::{Responder, Verdict};
use dpuproxy_dp::{Eal, MAX_BURST, Mbuf, PacketRingDrops, QueuePair, TxBatch, tsc, tsc_hz};
use dpuproxy_driver::Driver;
use dpuproxy_switch::{FlowOwner, Moving, Path, Station, SwitchBoard};
use dpuproxy_tcp::smoltcp::phy::{ChecksumCapabilities, DeviceCapabilities, Medium};
use dpuproxy_tcp::smoltcp::wire::{EthernetAddress, HardwareAddress, Ipv4Cidr};
use dpuproxy_tcp::{Event, ListenerId, Stack, StackConfig};

use crate::device::{ARP_AND_TCP_MTU, MbufDevice};
use crate::error::{Error, Result};
use crate::lanes::{Lanes, LoopCounts, STEER_BUDGET, tsc_after};
use crate::transport::{UserspaceClient, UserspaceTransport};
use crate::{LcoreCounters, LcoreSummary, ProxyOptions};

/// An Ethernet frame carrying IPv4 ICMP.
fn is_icmpv4(frame: &[u8]) -> bool {
    frame.len() > 23 && frame[12] == 0x08 && frame[13] == 0x00 && frame[23] == 1
}

/// One lcore's state between turns.
struct Lcore<'l, 'p> {
    lanes: &'l Lanes<'l, 'p>,
    queue: u16,
    mine: &'l LcoreCounters,
    transport: UserspaceTransport<'l>,
    driver: Driver<UserspaceTransport<'l>>,
    dev: MbufDevice<'p>,
    listener: ListenerId,
    responder: Responder,
    origin: Instant,
    counts: LoopCounts,
    draining: bool,
    ending_streams: bool,
    /// TSC before which nothing is due: no timer of the stack or the
    /// driver, no connection waiting to be driven. A turn that receives
    /// nothing before then stops after the rx burst (0: not quiet).
    quiet_until: u64,
    /// TSC ticks per second.
    tsc_hz: u64,
    /// Queue 0 only: the af_packet kernel rings' drops, added to the
    /// port's missed count (the PMD does not report them).
    ring_drops: Option<RingDrops>,
    /// With the live mode switch: this path's station on the board.
    station: Option<Station>,
    /// Record-layer limits for sessions moved in.
    limits: dpuproxy_tls::Limits,
}

/// The watched af_packet rings and when a drop was last logged.
struct RingDrops {
    rings: PacketRingDrops,
    logged: u64,
    next_log: Instant,
}

/// One lcore: its own TCP stack, connections and timers over queue pair
/// `qp`, until the proxy stops. Resets its connections on the way out.
pub(crate) fn lcore_loop<'l, 'p>(
    lanes: &'l Lanes<'l, 'p>,
    qp: QueuePair<'_, 'p>,
) -> Result<LcoreSummary> {
    let mut l = Lcore::new(lanes, qp.queue())?;
    let lcore = Eal::current_lcore().unwrap_or(u32::MAX);
    l.mine.lcore.store(u64::from(lcore), Ordering::Relaxed);
    let yield_when_idle = lanes.rings.len() > 1 && lanes.shares_cpu(l.queue);
    if yield_when_idle {
        tracing::warn!(
            lcore,
            queue = l.queue,
            "this lcore shares a CPU with another polling lcore: idle turns yield the CPU (fine for tests; give each lcore a core of its own in production)"
        );
    }
    let mut txb = qp.tx_batch(lanes.ctx.opts.burst, 4);
    let mut rxv: Vec<Mbuf<'p>> = Vec::with_capacity(MAX_BURST);
    let report_every = tsc_hz() / 10;
    let mut next_report = tsc() + report_every;
    // A turn's end is the next turn's start: the report and a yield count
    // in the turn after them.
    let mut t0 = tsc();
    while !lanes.stopping() {
        let (worked, t1) = l.turn(&qp, &mut txb, &mut rxv, t0);
        if !worked && yield_when_idle {
            std::thread::yield_now();
        }
        if t1 >= next_report {
            next_report = t1 + report_every;
            l.report(&qp, &txb);
        }
        t0 = t1;
    }
    l.shutdown(&mut txb);
    drop(txb);
    drop(rxv);
    Ok(l.finish(lcore))
}

impl<'l, 'p> Lcore<'l, 'p> {
    fn new(lanes: &'l Lanes<'l, 'p>, queue: u16) -> Result<Self> {
        let opts = lanes.ctx.opts;
        let (stack, listener, caps) =
            build_stack(opts, lanes.mac, queue, lanes.ctx.switch.is_some())?;
        let (steering, us) = (&lanes.steering, opts.ip);
        // Replies to a backend connection must hash back to this lcore.
        let filter =
            Box::new(move |ip, port, p| steering.local_port_lands_on(queue, ip, port, us, p));
        let mut transport = UserspaceTransport::new(stack, lanes.ctx.shared.clone(), filter);
        if let Some(board) = lanes.ctx.switch {
            transport = transport.with_switch(board);
        }
        let now = Instant::now();
        let driver = Driver::new(
            lanes.ctx.shared.clone(),
            opts.driver.clone(),
            lanes.ctx.path.clone(),
            now,
        );
        Ok(Self {
            lanes,
            queue,
            mine: &lanes.ctx.metrics.per_lcore[usize::from(queue)],
            transport,
            driver,
            dev: MbufDevice {
                pool: lanes.pool,
                rx: VecDeque::new(),
                tx: Vec::new(),
                tx_nombuf: 0,
                caps,
            },
            listener,
            responder: Responder::new(lanes.mac, opts.ip),
            origin: now,
            counts: LoopCounts::default(),
            draining: false,
            ending_streams: false,
            quiet_until: 0,
            tsc_hz: tsc_hz().max(1),
            station: lanes.ctx.switch.map(|_| Station::new(Path::Dpdk)),
            limits: lanes.ctx.tls_cfg.limits(),
            ring_drops: (queue == 0).then(|| {
                let rings = PacketRingDrops::find();
                if rings.sockets() > 0 {
                    tracing::info!(
                        sockets = rings.sockets(),
                        "counting af_packet kernel ring drops as the port's missed packets"
                    );
                }
                RingDrops {
                    logged: rings.dropped(),
                    rings,
                    next_log: now,
                }
            }),
        })
    }

    fn smol(&self, t: Instant) -> dpuproxy_tcp::Instant {
        dpuproxy_tcp::Instant::from_micros(
            t.saturating_duration_since(self.origin).as_micros() as i64
        )
    }

    /// One turn that began at TSC `start`, booked in the cycle counts;
    /// whether anything was done, and the TSC at its end.
    fn turn(
        &mut self,
        qp: &QueuePair<'_, 'p>,
        txb: &mut TxBatch<'_, 'p>,
        rxv: &mut Vec<Mbuf<'p>>,
        start: u64,
    ) -> (bool, u64) {
        let mut work = self.receive(qp, txb, rxv);
        let rx_done = tsc();
        if work == 0
            && rx_done < self.quiet_until
            && self.dev.rx.is_empty()
            && !self.control_changed()
        {
            // Nothing arrived and nothing is due: an idle turn is the rx
            // burst and two TSC reads.
            self.counts
                .book_turn(false, start, rx_done, rx_done, rx_done);
            return (false, rx_done);
        }
        let now = Instant::now();
        if !self.draining && self.lanes.ctx.drain.load(Ordering::Relaxed) {
            self.begin_drain(now);
        }
        if !self.ending_streams && self.lanes.ctx.end_streams.load(Ordering::Relaxed) {
            self.ending_streams = true;
            self.driver.drain_streams(now);
        }
        let snow = self.smol(now);
        work += self.transport.stack.poll_prefetching(snow, &mut self.dev);
        work += self.dispatch_events(now);
        work += self.switch_turn(now, snow);
        self.driver.run(&mut self.transport, now);
        if now >= self.driver.poll_timeout() {
            self.driver.handle_timeout(&mut self.transport, now);
            work += 1;
        }
        // The drives may have raised new events (e.g. accept backlog).
        work += self.dispatch_events(now);
        work += self.transport.stack.egress(snow, &mut self.dev);
        for m in self.dev.tx.drain(..) {
            txb.push(m);
        }
        let processed = tsc();
        let sent = txb.flush();
        let end = tsc();
        let worked = work > 0 || sent > 0 || self.driver.has_work();
        self.counts
            .book_turn(worked, start, rx_done, processed, end);
        self.quiet_until = self.quiet_until(now, snow, rx_done);
        (worked, end)
    }

    /// The drain or end-of-streams flag was raised since this lcore last
    /// looked.
    fn control_changed(&self) -> bool {
        let ctx = &self.lanes.ctx;
        (!self.draining && ctx.drain.load(Ordering::Relaxed))
            || (!self.ending_streams && ctx.end_streams.load(Ordering::Relaxed))
            || self.switch_pending()
    }

    /// A switch began, a batch is due, or parcels wait for this path.
    fn switch_pending(&self) -> bool {
        match (self.lanes.ctx.switch, &self.station) {
            (Some(board), Some(st)) => {
                st.news(board) || st.next_due().is_some() || board.has_mail(Path::Dpdk)
            }
            _ => false,
        }
    }

    /// The TSC until which nothing is due, reckoned from `now` (read at
    /// TSC `at`): the earlier of the stack's and the driver's next
    /// deadline; 0 when a connection is already waiting to be driven.
    fn quiet_until(&self, now: Instant, snow: dpuproxy_tcp::Instant, at: u64) -> u64 {
        if self.driver.has_work() {
            return 0;
        }
        let driver_in = self.driver.poll_timeout().saturating_duration_since(now);
        let stack_in = match self.transport.stack.poll_at() {
            // smoltcp's Instant difference is absolute: compare first.
            Some(t) if t <= snow => return 0,
            Some(t) => std::time::Duration::from_micros((t - snow).total_micros()),
            None => std::time::Duration::MAX,
        };
        tsc_after(at, driver_in.min(stack_in), self.tsc_hz)
    }

    /// The live mode switch's share of a turn: pin and export when this
    /// path is the source, restore what was mailed here.
    fn switch_turn(&mut self, now: Instant, snow: dpuproxy_tcp::Instant) -> usize {
        let (Some(board), Some(mut station)) = (self.lanes.ctx.switch, self.station.take()) else {
            return 0;
        };
        let mut work = 0;
        let transport = &mut self.transport;
        if let Some(to) = station.poll(board, now, |steer| pin_all(transport, steer, now)) {
            work += station.export_batch(
                board,
                to,
                &mut self.driver,
                &mut self.transport,
                now,
                |t, d| t.export(d, snow),
            );
        }
        self.transport.sweep_lingering(now);
        while let Some(m) = board.take(Path::Dpdk) {
            if let Some(id) = self.land(board, m, now, snow) {
                station.keep(id);
            }
            work += 1;
        }
        self.station = Some(station);
        work
    }

    /// Restore a parcel here and attach it (see [`SwitchBoard::land`]);
    /// the slot of a connection taken back.
    fn land(
        &mut self,
        board: &SwitchBoard,
        m: Moving,
        now: Instant,
        snow: dpuproxy_tcp::Instant,
    ) -> Option<dpuproxy_driver::SlotId> {
        let (transport, driver) = (&mut self.transport, &mut self.driver);
        board.land(Path::Dpdk, m, |parcel| {
            let d = transport.import(parcel, &self.limits, snow)?;
            Ok(driver.attach(transport, d, now))
        })
    }

    /// Rx burst and the hand-over ring: ICMP echo is answered in place in
    /// the received mbuf; everything else goes to the TCP stack (which hands
    /// ARP and non-TCP IPv4 to smoltcp's interface).
    fn receive(
        &mut self,
        qp: &QueuePair<'_, 'p>,
        txb: &mut TxBatch<'_, 'p>,
        rxv: &mut Vec<Mbuf<'p>>,
    ) -> usize {
        let lanes = self.lanes;
        let n = qp.rx_burst(rxv, lanes.ctx.opts.burst);
        self.counts.rx_packets += n as u64;
        let mut work = n;
        let (dev, responder) = (&mut self.dev, &mut self.responder);
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
            if let Some(m) = lanes.steer(self.queue, m, &mut self.counts) {
                deliver(m);
            }
        }
        let ring = &lanes.rings[usize::from(self.queue)];
        for m in std::iter::from_fn(|| ring.pop()).take(STEER_BUDGET) {
            self.counts.handed_in += 1;
            work += 1;
            deliver(m);
        }
        work
    }

    /// Stop listening (SYNs are refused) and drain the connections.
    fn begin_drain(&mut self, now: Instant) {
        self.draining = true;
        let _ = self.transport.stack.unlisten(self.listener);
        self.driver.drain(&mut self.transport, now);
    }

    /// Stack events to the driver: new clients, readiness of a slot's side.
    fn dispatch_events(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while let Some(ev) = self.transport.stack.poll_event() {
            n += 1;
            match ev {
                Event::Accept(l) if l == self.listener => self.accept_all(now),
                Event::Accept(_) => {}
                Event::Connected(id)
                | Event::Readable(id)
                | Event::Writable(id)
                | Event::Closed(id)
                | Event::Reset(id) => {
                    if let Some((slot, side)) = self.transport.owner(id) {
                        self.driver.mark(slot, side);
                    }
                }
            }
        }
        n
    }

    fn accept_all(&mut self, now: Instant) {
        while let Ok(Some(id)) = self.transport.stack.accept(self.listener) {
            if !self.driver.admit(&mut self.transport, now) {
                let _ = self.transport.stack.abort(id);
                continue;
            }
            let peer = self
                .transport
                .stack
                .tuple(id)
                .map(|t| t.remote_addr.to_string())
                .unwrap_or_default();
            let client = match UserspaceClient::new(id, self.lanes.ctx.tls_cfg) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot create TLS state");
                    let _ = self.transport.stack.abort(id);
                    continue;
                }
            };
            self.mine.accepted.fetch_add(1, Ordering::Relaxed);
            let _ = self.driver.accept(&mut self.transport, client, peer, now);
        }
    }

    /// Publish this lcore's counters (every 100 ms), and the port's from
    /// queue 0.
    fn report(&mut self, qp: &QueuePair<'_, 'p>, txb: &TxBatch<'_, 'p>) {
        let mine = self.mine;
        self.counts.publish(mine);
        let tx = txb.stats();
        mine.tx_dropped.store(
            tx.dropped_full + tx.dropped_unsent + self.dev.tx_nombuf,
            Ordering::Relaxed,
        );
        mine.tcp_connections.store(
            self.transport.stack.connection_count() as u64,
            Ordering::Relaxed,
        );
        let tcp = self.transport.stack.stats();
        mine.syn_evicted.store(tcp.syn_evicted, Ordering::Relaxed);
        mine.syn_dropped.store(tcp.syn_dropped, Ordering::Relaxed);
        mine.buffered_bytes.store(
            self.driver.buffered_bytes(&self.transport) as u64,
            Ordering::Relaxed,
        );
        if self.queue != 0 {
            return;
        }
        let m = self.lanes.ctx.metrics;
        if let Ok(s) = qp.port_stats() {
            m.port_rx_packets.store(s.ipackets, Ordering::Relaxed);
            m.port_tx_packets.store(s.opackets, Ordering::Relaxed);
            m.port_rx_bytes.store(s.ibytes, Ordering::Relaxed);
            m.port_tx_bytes.store(s.obytes, Ordering::Relaxed);
            let ring = self.ring_drops.as_mut().map_or(0, RingDrops::poll);
            m.port_imissed.store(s.imissed + ring, Ordering::Relaxed);
            m.port_ierrors.store(s.ierrors, Ordering::Relaxed);
            m.port_oerrors.store(s.oerrors, Ordering::Relaxed);
        }
        m.mempool_in_use
            .store(u64::from(self.lanes.pool.in_use()), Ordering::Relaxed);
    }

    /// Reset every connection (clients and backends see RST) and send the
    /// last frames.
    fn shutdown(&mut self, txb: &mut TxBatch<'_, 'p>) {
        let now = Instant::now();
        self.driver.close_all(&mut self.transport, now);
        let snow = self.smol(now);
        self.transport.stack.egress(snow, &mut self.dev);
        for m in self.dev.tx.drain(..) {
            txb.push(m);
        }
        txb.flush();
        self.dev.rx.clear();
    }

    fn finish(self, lcore: u32) -> LcoreSummary {
        let mine = self.mine;
        drop(self.driver);
        drop(self.transport);
        mine.tcp_connections.store(0, Ordering::Relaxed);
        mine.buffered_bytes.store(0, Ordering::Relaxed);
        self.counts.publish(mine);
        LcoreSummary {
            lcore,
            queue: self.queue,
            busy_cycles: self.counts.busy(),
            idle_cycles: self.counts.idle,
            accepted: mine.accepted.load(Ordering::Relaxed),
        }
    }
}

impl RingDrops {
    /// The drops so far; a warning at most every 10 s while they grow.
    fn poll(&mut self) -> u64 {
        let total = self.rings.poll();
        let now = Instant::now();
        if total > self.logged && now >= self.next_log {
            tracing::warn!(
                dropped = total - self.logged,
                total,
                "the af_packet rx ring was full and the kernel dropped frames (TCP retransmits them); \
                 give the vdev a larger ring (framecnt=) if this recurs"
            );
            self.logged = total;
            self.next_log = now + std::time::Duration::from_secs(10);
        }
        total
    }
}

/// The kernel's ephemeral ports (`net.ipv4.ip_local_port_range`; its
/// default when unreadable).
fn kernel_ephemeral_ports() -> std::ops::RangeInclusive<u16> {
    let parsed = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(str::parse::<u16>);
            Some(it.next()?.ok()?..=it.next()?.ok()?)
        });
    parsed.unwrap_or(32768..=60999)
}

/// The larger range of unprivileged ports outside `kernel`; `None` when
/// `kernel` takes them all.
fn ports_beside_kernel(
    kernel: &std::ops::RangeInclusive<u16>,
) -> Option<std::ops::RangeInclusive<u16>> {
    let below = 1024..=kernel.start().saturating_sub(1);
    #[allow(clippy::reversed_empty_ranges)]
    let above = match kernel.end().checked_add(1) {
        Some(first) => first.max(1024)..=65535,
        None => 1..=0,
    };
    let len = |r: &std::ops::RangeInclusive<u16>| {
        usize::from(*r.end()).saturating_sub(usize::from(*r.start())) + usize::from(!r.is_empty())
    };
    let best = if len(&below) >= len(&above) {
        below
    } else {
        above
    };
    (!best.is_empty()).then_some(best)
}

/// Pin every flow of the stack to the DPDK path (before the default moves
/// away from it); TIME-WAIT records are remembered as lingering, so that
/// their entries go once they are done.
fn pin_all(
    transport: &mut UserspaceTransport<'_>,
    steer: &dyn dpuproxy_switch::Steer,
    now: Instant,
) {
    let (mut pinned, mut failed) = (0usize, 0usize);
    for t in transport.stack.tuples() {
        let flow = dpuproxy_switch::Flow::of(t);
        // A TIME-WAIT record keeps its pin for a while; a live connection
        // moves (its destination steers it) or lingers when it closes.
        if !transport.stack.has_connection(t) {
            transport.lingering.push(flow, now);
        }
        match steer.set(flow, FlowOwner::Path(Path::Dpdk)) {
            Ok(()) => pinned += 1,
            Err(e) => {
                failed += 1;
                tracing::warn!(error = %e, "cannot pin a flow to the dpdk path");
            }
        }
    }
    tracing::info!(pinned, failed, "dpdk flows pinned before the default moves");
}

/// One lcore's TCP stack, listening on the proxy port, and the device
/// capabilities it was built for.
pub(crate) fn build_stack(
    opts: &ProxyOptions,
    mac: [u8; 6],
    queue: u16,
    beside_kernel: bool,
) -> Result<(Stack, ListenerId, DeviceCapabilities)> {
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
    if beside_kernel {
        // With the live switch both paths open backend connections from
        // the same address: ours must not pick the kernel's ports.
        let kernel = kernel_ephemeral_ports();
        scfg.ephemeral_ports = ports_beside_kernel(&kernel).ok_or_else(|| {
            Error::Stack(format!(
                "the kernel's ip_local_port_range ({}-{}) leaves no unprivileged port for \
                 the DPDK path's backend connections; narrow it \
                 (sysctl net.ipv4.ip_local_port_range)",
                kernel.start(),
                kernel.end()
            ))
        })?;
    }
    let mut stack = Stack::new(scfg, caps.clone(), dpuproxy_tcp::Instant::from_micros(0))
        .map_err(|e| Error::Stack(e.to_string()))?;
    let listener = stack
        .listen(opts.listen_port, opts.listen_backlog)
        .map_err(|e| Error::Listen {
            port: opts.listen_port,
            reason: e.to_string(),
        })?;
    Ok((stack, listener, caps))
}

#[cfg(test)]
mod tests {
    use super::ports_beside_kernel;

    #[test]
    fn backend_ports_stay_out_of_the_kernels_range() {
        assert_eq!(ports_beside_kernel(&(32768..=60999)), Some(1024..=32767));
        assert_eq!(ports_beside_kernel(&(1024..=50000)), Some(50001..=65535));
        assert_eq!(ports_beside_kernel(&(2000..=65000)), Some(1024..=1999));
        assert_eq!(ports_beside_kernel(&(1500..=65000)), Some(65001..=65535));
        assert_eq!(ports_beside_kernel(&(20000..=65535)), Some(1024..=19999));
        assert_eq!(ports_beside_kernel(&(1024..=65534)), Some(65535..=65535));
        assert_eq!(ports_beside_kernel(&(1024..=65535)), None);
        assert_eq!(ports_beside_kernel(&(1..=65535)), None);
    }
}
