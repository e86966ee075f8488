//! `dpuproxy bench tcp`: two userspace TCP stacks (dpuproxy-tcp) over an
//! in-memory wire, on a virtual clock.
//!
//! A client stack opens N connections to a server stack (in batches, so the
//! SYN backlog is never the bottleneck), then every connection carries a
//! request and a response (64 bytes each, or `--bytes` spread over all
//! connections in each direction), at most `--active` of them at once
//! (1,024 by default; 0: all at once, in lock-step); every byte is checked against a
//! position-dependent pattern (`dpuproxy_tcp::pattern`). The client closes first; the run ends when
//! both stacks hold no connection. Faults (`--loss`, `--reorder`,
//! `--duplicate`, `--corrupt`) are injected on both directions by a seeded
//! `FaultyDevice`.
//!
//! Figures on the last line:
//! - `ns_per_packet`: this thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`)
//!   in the exchange phase (every connection established and idle, then
//!   request, response and close), over the frames both stacks
//!   transmitted in it. It covers both ends of every frame (sender and
//!   receiver) and the benchmark's own byte checking. With `--active`
//!   bounding the exchanges in flight, the connections being used stay few
//!   however many the stacks hold, so the figure shows what holding many
//!   connections costs each packet (flow table, timers, TIME-WAIT
//!   records); in lock-step (`--active 0`) every packet also pays for
//!   reaching a connection that N others have pushed out of the CPU
//!   caches since its last packet.
//! - `connect_ns_per_packet`: the same for the connect phase (handshakes),
//!   which also pays for allocating and first touching every endpoint's
//!   buffers.
//! - `bytes_per_conn`: measured, not computed: the process's resident memory
//!   (`/proc/self/statm`) grows by this much per connection endpoint between
//!   "stacks created" and "all N connections established and idle", divided
//!   over the 2N endpoints (client and server stacks use the same settings).
//!   The stack fills its buffers when it allocates them, so untouched pages
//!   are not missed. The stack's own account (`Stack::memory_usage`) is
//!   printed beside it as a cross-check.

use anyhow::{Context, bail};
use dpuproxy_tcp::fault::{Faults, FaultyDevice};
use dpuproxy_tcp::pattern::{Stream, recv_pattern, send_pattern};
use dpuproxy_tcp::smoltcp::phy::{Device, Medium};
use dpuproxy_tcp::smoltcp::wire::{HardwareAddress, Ipv4Address, Ipv4Cidr};
use dpuproxy_tcp::wire::{self, WirePort};
use dpuproxy_tcp::{ConnId, Duration, Event, Instant, RxPeek, Stack, StackConfig, TcpError};

/// `dpuproxy bench tcp` arguments.
#[derive(clap::Args, Debug)]
pub struct TcpArgs {
    /// Connections to open, use and close.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Probability that a frame is dropped (each direction), 0..=1.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Probability that a frame is held back behind later ones, 0..=1.
    #[arg(long, default_value_t = 0.0)]
    reorder: f64,
    /// Probability that a frame is delivered twice, 0..=1.
    #[arg(long, default_value_t = 0.0)]
    duplicate: f64,
    /// Probability that a frame gets a corrupted byte (checksums must drop it), 0..=1.
    #[arg(long, default_value_t = 0.0)]
    corrupt: f64,
    /// Bytes streamed in total in each direction, spread over the connections
    /// (default: a 64-byte request and a 64-byte response per connection).
    #[arg(long)]
    bytes: Option<u64>,
    /// Seed for the fault injector and the stacks.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Exchanges in flight at once in the exchange phase: a new one starts
    /// as one finishes, as the connect phase opens connections. 0 starts
    /// every connection's exchange at once (lock-step: every packet then
    /// meets a connection last touched N connections ago).
    #[arg(long, default_value_t = BATCH)]
    active: usize,
}

const CLIENT: Ipv4Address = Ipv4Address::new(10, 77, 0, 1);
const SERVER: Ipv4Address = Ipv4Address::new(10, 77, 0, 2);
const BASE_PORT: u16 = 9000;
/// Connections per server port (client ephemeral ports 1024..=65535).
const PER_PORT: usize = 60_000;
/// Connections opened at once.
const BATCH: usize = 1024;
/// Virtual time the run may take before it is declared stuck.
const VIRTUAL_LIMIT: Duration = Duration::from_secs(3600);

/// Run the benchmark.
pub fn run(args: &TcpArgs) -> anyhow::Result<()> {
    if args.connections == 0 || args.connections > 1_000_000 {
        bail!("--connections must be within 1..=1000000");
    }
    for (name, p) in [
        ("--loss", args.loss),
        ("--reorder", args.reorder),
        ("--duplicate", args.duplicate),
        ("--corrupt", args.corrupt),
    ] {
        if !(0.0..=1.0).contains(&p) || p.is_nan() {
            bail!("{name} must be a probability within 0..=1, got {p}");
        }
    }
    if args.loss >= 0.5 {
        bail!("--loss must be below 0.5 for the run to finish");
    }
    let per_conn = match args.bytes {
        Some(b) => (b / args.connections as u64).max(1),
        None => 64,
    };
    let (pc, ps) = wire::pair(Medium::Ip, 1500, 1 << 22);
    let faults = Faults {
        drop: args.loss,
        reorder: args.reorder,
        duplicate: args.duplicate,
        corrupt: args.corrupt,
    };
    if faults == Faults::default() {
        Bench::new(args, per_conn, pc, ps)?.run()
    } else {
        let mut fc = FaultyDevice::new(pc, args.seed ^ 0xc11e);
        let mut fs = FaultyDevice::new(ps, args.seed ^ 0x5e4e);
        fc.set_tx_faults(faults);
        fs.set_tx_faults(faults);
        Bench::new(args, per_conn, fc, fs)?.run()
    }
}

/// Fault counters of a bench device, if it injects faults.
trait FaultReport {
    fn report(&self) -> Option<String>;
}

impl FaultReport for WirePort {
    fn report(&self) -> Option<String> {
        None
    }
}

impl FaultReport for FaultyDevice<WirePort> {
    fn report(&self) -> Option<String> {
        let tx = self.stats();
        Some(format!(
            "{} frames: {} dropped, {} reordered, {} duplicated, {} corrupted",
            tx.frames, tx.dropped, tx.reordered, tx.duplicated, tx.corrupted
        ))
    }
}

#[derive(Debug, Default)]
struct Side {
    /// Its exchange started and the client side is not done yet.
    exchanging: bool,
    /// Stream ids of the request and the response.
    req: u64,
    resp: u64,
    /// Bytes sent, and received and checked.
    io: Stream,
    done: bool,
}

struct Bench<'a, D> {
    args: &'a TcpArgs,
    per_conn: u64,
    client: Stack,
    server: Stack,
    dc: D,
    ds: D,
    now: Instant,
    clients: Table,
    servers: Table,
    connected: usize,
    accepted: usize,
    /// Exchanges started whose client side is not done, and the most
    /// there were at once.
    in_flight: usize,
    peak_in_flight: usize,
    completed: usize,
    corrupted: usize,
    failed: usize,
    events: Vec<Event>,
}

fn stack_config(addr: Ipv4Address, seed: u64) -> StackConfig {
    let mut c = StackConfig::new(HardwareAddress::Ip, Ipv4Cidr::new(addr, 24));
    c.seed = seed;
    c.ephemeral_ports = 1024..=65535;
    c
}

/// Per-connection bench state, indexed by `ConnId::index`.
#[derive(Default)]
struct Table(Vec<Option<(ConnId, Side)>>);

impl Table {
    fn insert(&mut self, c: ConnId, side: Side) {
        let i = c.index();
        if self.0.len() <= i {
            self.0.resize_with(i + 1, || None);
        }
        self.0[i] = Some((c, side));
    }
    fn get_mut(&mut self, c: &ConnId) -> Option<&mut Side> {
        match self.0.get_mut(c.index()) {
            Some(Some((id, side))) if id == c => Some(side),
            _ => None,
        }
    }
    fn remove(&mut self, c: &ConnId) -> Option<Side> {
        match self.0.get_mut(c.index()) {
            Some(slot @ Some(_)) if slot.as_ref().is_some_and(|(id, _)| id == c) => {
                slot.take().map(|(_, s)| s)
            }
            _ => None,
        }
    }
    fn ids(&self) -> Vec<ConnId> {
        self.0.iter().flatten().map(|(c, _)| *c).collect()
    }
}

/// Stream id of a connection in one direction, the same on both ends.
fn stream_id(client_port: u16, server_port: u16, response: bool) -> u64 {
    (u64::from(client_port) << 17) | (u64::from(server_port) << 1) | u64::from(response)
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Keep this thread on the CPU it runs on: both stacks share its caches,
/// and a run that moves halfway pays for refilling them (a 1,000-connection
/// run varied between 510 and 870 ns per packet unpinned).
fn pin_to_this_cpu() -> std::io::Result<usize> {
    use rustix::thread::{CpuSet, sched_getcpu, sched_setaffinity};
    let cpu = sched_getcpu();
    let mut set = CpuSet::new();
    set.set(cpu);
    sched_setaffinity(None, &set)?;
    Ok(cpu)
}

fn cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    (t.tv_sec as u64) * 1_000_000_000 + t.tv_nsec as u64
}

impl<'a, D: Device + RxPeek + FaultReport> Bench<'a, D> {
    fn new(args: &'a TcpArgs, per_conn: u64, dc: D, ds: D) -> anyhow::Result<Self> {
        let now = Instant::from_secs(1);
        let client = Stack::new(stack_config(CLIENT, args.seed), dc.capabilities(), now)
            .context("client stack")?;
        let mut server = Stack::new(
            stack_config(SERVER, args.seed.wrapping_add(1)),
            ds.capabilities(),
            now,
        )
        .context("server stack")?;
        let ports = args.connections.div_ceil(PER_PORT);
        for i in 0..ports {
            server
                .listen(BASE_PORT + i as u16, 4096)
                .context("listen")?;
        }
        Ok(Self {
            args,
            per_conn,
            client,
            server,
            dc,
            ds,
            now,
            clients: Table::default(),
            servers: Table::default(),
            connected: 0,
            accepted: 0,
            in_flight: 0,
            peak_in_flight: 0,
            completed: 0,
            corrupted: 0,
            failed: 0,
            events: Vec::new(),
        })
    }

    /// Poll both stacks, handle their events, advance the virtual clock.
    fn step(&mut self) -> anyhow::Result<()> {
        let work = self.client.poll_prefetching(self.now, &mut self.dc)
            + self.server.poll_prefetching(self.now, &mut self.ds);
        self.handle_events();
        if work > 0 {
            self.now += Duration::from_micros(5);
        } else {
            let next = [self.client.poll_at(), self.server.poll_at()]
                .into_iter()
                .flatten()
                .min();
            self.now = match next {
                Some(t) if t > self.now => t,
                _ => self.now + Duration::from_micros(5),
            };
        }
        if self.now > Instant::from_secs(1) + VIRTUAL_LIMIT {
            bail!("no progress within {VIRTUAL_LIMIT} of virtual time");
        }
        Ok(())
    }

    fn handle_events(&mut self) {
        let mut events = std::mem::take(&mut self.events);
        while let Some(e) = self.client.poll_event() {
            events.push(e);
        }
        for e in events.drain(..) {
            self.client_event(e);
        }
        while let Some(e) = self.server.poll_event() {
            events.push(e);
        }
        for e in events.drain(..) {
            self.server_event(e);
        }
        self.events = events;
    }

    fn client_event(&mut self, e: Event) {
        match e {
            Event::Connected(c) => {
                self.connected += 1;
                if let Some(s) = self.clients.get_mut(&c)
                    && s.done
                {
                    // Not expected: a connection is only done after its exchange.
                    self.failed += 1;
                }
            }
            Event::Writable(c) => self.client_send(c),
            Event::Readable(c) => self.client_recv(c),
            Event::Reset(c) | Event::Closed(c) => {
                if let Some(s) = self.clients.get_mut(&c)
                    && !s.done
                {
                    s.done = true;
                    self.in_flight -= usize::from(std::mem::take(&mut s.exchanging));
                    self.failed += 1;
                    let _ = self.client.close(c);
                }
            }
            Event::Accept(_) => {}
        }
    }

    fn side(stack: &mut Stack, c: ConnId, server_side: bool) -> Side {
        let t = stack
            .tuple(c)
            .expect("a connection just opened has a tuple");
        let (cp, sp) = if server_side {
            (t.remote_port, t.local_port)
        } else {
            (t.local_port, t.remote_port)
        };
        Side {
            req: stream_id(cp, sp, false),
            resp: stream_id(cp, sp, true),
            ..Side::default()
        }
    }

    fn client_send(&mut self, c: ConnId) {
        if let Some(side) = self.clients.get_mut(&c) {
            send_pattern(&mut self.client, c, side.req, &mut side.io, self.per_conn);
        }
    }

    fn client_recv(&mut self, c: ConnId) {
        let Some(side) = self.clients.get_mut(&c) else {
            return;
        };
        let r = recv_pattern(&mut self.client, c, side.resp, &mut side.io);
        if side.done {
            return;
        }
        if side.io.received >= self.per_conn || r.is_err() {
            side.done = true;
            self.in_flight -= usize::from(std::mem::take(&mut side.exchanging));
            if side.io.bad > 0 || side.io.received != self.per_conn {
                self.corrupted += usize::from(side.io.bad > 0);
                self.failed += usize::from(side.io.bad == 0);
            } else {
                self.completed += 1;
            }
            let _ = self.client.close(c);
        }
    }

    fn server_event(&mut self, e: Event) {
        match e {
            Event::Accept(l) => {
                while let Ok(Some(c)) = self.server.accept(l) {
                    self.accepted += 1;
                    let side = Self::side(&mut self.server, c, true);
                    self.servers.insert(c, side);
                    self.server_recv(c);
                }
            }
            Event::Readable(c) => self.server_recv(c),
            Event::Writable(c) => self.server_send(c),
            Event::Closed(c) | Event::Reset(c) => {
                if let Some(side) = self.servers.remove(&c)
                    && !side.done
                {
                    self.failed += 1;
                }
                let _ = self.server.close(c);
            }
            Event::Connected(_) => {}
        }
    }

    fn server_send(&mut self, c: ConnId) {
        if let Some(side) = self.servers.get_mut(&c)
            && side.io.received >= self.per_conn
        {
            send_pattern(&mut self.server, c, side.resp, &mut side.io, self.per_conn);
        }
    }

    fn server_recv(&mut self, c: ConnId) {
        let Some(side) = self.servers.get_mut(&c) else {
            return;
        };
        let r = recv_pattern(&mut self.server, c, side.req, &mut side.io);
        if side.io.bad > 0 && !side.done {
            side.done = true;
            self.corrupted += 1;
        }
        if side.io.received >= self.per_conn {
            send_pattern(&mut self.server, c, side.resp, &mut side.io, self.per_conn);
        }
        if r == Err(TcpError::Finished) {
            // The client closed after reading the whole response.
            side.done = true;
            self.servers.remove(&c);
            let _ = self.server.close(c);
        }
    }

    fn run(mut self) -> anyhow::Result<()> {
        let n = self.args.connections;
        println!(
            "bench tcp: {n} connections, {} bytes each way per connection, exchanges in flight {}, loss={} reorder={} duplicate={} corrupt={} seed={}",
            self.per_conn,
            match self.args.active {
                0 => "all".to_string(),
                a => a.to_string(),
            },
            self.args.loss,
            self.args.reorder,
            self.args.duplicate,
            self.args.corrupt,
            self.args.seed
        );
        println!(
            "bench tcp: smoltcp clock dilation x{:.0} (min RTO {} ms)",
            self.client.time_dilation(),
            self.client.config().min_rto.total_millis()
        );
        match pin_to_this_cpu() {
            Ok(cpu) => println!(
                "bench tcp: pinned to CPU {cpu} (a move between CPUs mid-run costs a cache refill)"
            ),
            Err(e) => println!("bench tcp: not pinned ({e}); figures may vary more"),
        }
        let rss0 = rss_bytes();
        let cpu0 = cpu_ns();
        let wall0 = std::time::Instant::now();

        // Phase 1: connect, in batches.
        let mut opened = 0;
        while self.connected + self.failed < n || self.accepted < self.connected {
            while opened < n && opened - (self.connected + self.failed) < BATCH {
                let port = BASE_PORT + (opened / PER_PORT) as u16;
                let c = self
                    .client
                    .connect(SERVER, port)
                    .with_context(|| format!("connect #{opened}"))?;
                let side = Self::side(&mut self.client, c, false);
                self.clients.insert(c, side);
                opened += 1;
            }
            self.step()?;
        }
        // Let the last handshake ACKs land and delayed ACKs drain: idle.
        for _ in 0..100 {
            self.step()?;
        }
        let rss1 = rss_bytes();
        let cpu1 = cpu_ns();
        let connect_packets = self.client.stats().tx_frames + self.server.stats().tx_frames;
        let mem_s = self.server.memory_usage();
        let mem_c = self.client.memory_usage();
        let bytes_per_conn = rss1.saturating_sub(rss0) / (2 * n as u64);
        println!(
            "bench tcp: connected {} accepted {} in {:.1} ms cpu; rss +{} MiB = {} B per endpoint; stack account: server {} B/conn, client {} B/conn",
            self.connected,
            self.accepted,
            (cpu1 - cpu0) as f64 / 1e6,
            rss1.saturating_sub(rss0) >> 20,
            bytes_per_conn,
            mem_s.total() / mem_s.connections.max(1),
            mem_c.total() / mem_c.connections.max(1),
        );

        // Phase 2: request and response on every connection, at most
        // `active` at once; the client closes once it has the whole
        // response.
        let ids = self.clients.ids();
        let active = match self.args.active {
            0 => n,
            a => a,
        };
        let mut started = 0;
        let mut last_report = self.completed;
        loop {
            let finished = self.completed + self.corrupted + self.failed;
            while started < ids.len() && self.in_flight < active {
                let c = ids[started];
                started += 1;
                if let Some(side) = self.clients.get_mut(&c)
                    && !side.done
                {
                    side.exchanging = true;
                    self.in_flight += 1;
                    self.peak_in_flight = self.peak_in_flight.max(self.in_flight);
                    self.client_send(c);
                }
            }
            if finished >= n && self.client.connection_count() + self.server.connection_count() == 0
            {
                break;
            }
            self.step()?;
            if self.completed >= last_report + n.div_ceil(4).max(1) {
                last_report = self.completed;
                println!(
                    "bench tcp: completed {}/{n} (virtual {} ms)",
                    self.completed,
                    (self.now - Instant::from_secs(1)).total_millis()
                );
            }
        }
        let cpu2 = cpu_ns();
        let wall = wall0.elapsed();
        let sc = self.client.stats();
        let ss = self.server.stats();
        let packets = sc.tx_frames + ss.tx_frames;
        let data_packets = packets - connect_packets;
        // The exchange phase (request, response, close) on established
        // connections: what a packet costs once the connection exists. The
        // connect phase also pays for allocating and first touching each
        // endpoint's buffers, which page faults dominate on a VM.
        let ns_per_packet = (cpu2 - cpu1) / data_packets.max(1);
        let connect_ns_per_packet = (cpu1 - cpu0) / connect_packets.max(1);
        println!(
            "bench tcp: phases: connect {:.0} ns/packet ({connect_packets} packets, {:.1} us per connection incl. allocation), exchange+close {:.0} ns/packet ({data_packets} packets)",
            (cpu1 - cpu0) as f64 / connect_packets.max(1) as f64,
            (cpu1 - cpu0) as f64 / 1e3 / n as f64,
            (cpu2 - cpu1) as f64 / data_packets.max(1) as f64,
        );
        println!(
            "bench tcp: {packets} packets in {:.1} ms cpu ({:.1} ms wall), {} ms virtual; client {:?}",
            (cpu2 - cpu0) as f64 / 1e6,
            wall.as_secs_f64() * 1e3,
            (self.now - Instant::from_secs(1)).total_millis(),
            sc
        );
        println!("bench tcp: server {ss:?}");
        println!(
            "bench tcp: at most {} exchanges were in flight at once",
            self.peak_in_flight
        );
        println!(
            "bench tcp: TIME-WAIT records: client {}, server {}; failed {}",
            self.client.time_wait_count(),
            self.server.time_wait_count(),
            self.failed
        );
        if let (Some(c), Some(s)) = (self.dc.report(), self.ds.report()) {
            println!("bench tcp: faults client->server {c}; server->client {s}");
        }
        println!(
            "connections={n} completed={}/{n} corrupted={} ns_per_packet={ns_per_packet} connect_ns_per_packet={connect_ns_per_packet} bytes_per_conn={bytes_per_conn} active={active}",
            self.completed, self.corrupted
        );
        if self.completed != n || self.corrupted != 0 {
            bail!(
                "{} of {n} connections did not complete cleanly ({} corrupted)",
                n - self.completed,
                self.corrupted
            );
        }
        Ok(())
    }
}
