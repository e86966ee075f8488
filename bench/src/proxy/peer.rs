//! The memif rig's peer (`dpuproxy bench peer`, started by `bench proxy`
//! for the dpdk target): one DPDK process on the load core that runs both
//! the load generator and the native MCP backends over our own userspace
//! TCP stack on a `net_memif` port, so that no kernel network path runs on
//! either side and the proxy's lcore does only proxy work.
//!
//! - Backends: listeners on `--backend-ports`, answering like
//!   [`super::backend`] (same session checks, same replies).
//! - Clients: `--connections` TLS 1.3 connections to the proxy, each with
//!   an OpenSSL client over memory buffers (the TLS bytes go through our
//!   TCP stack), one MCP session each (`initialize`, then `tools/call` in a
//!   closed loop).
//!
//! Control over stdin/stdout, one line each way:
//! - the peer prints `ready` once every session is open (or `failed
//!   <why>`);
//! - `w K` makes responses count towards window K (0: none);
//! - `report K` prints `figures K <ok> <errors> <v:c,v:c,...>`: the
//!   latency histogram's recorded values (µs) with their counts;
//! - `spread` prints `spread <n1>,<n2>,... <misrouted>`: requests each
//!   backend answered so far, and those for a session it never issued;
//! - `quit` (or the end of stdin) stops it.

use std::io::{BufRead, Write};

use dpuproxy_tls::handshake::MemPipe;
use std::net::SocketAddrV4;

/// `dpuproxy bench peer` arguments.
#[derive(clap::Args, Debug)]
pub struct PeerArgs {
    /// EAL arguments (a memif client port, the load core).
    #[arg(long, allow_hyphen_values = true)]
    pub eal: String,
    /// Our address and prefix, e.g. 10.78.0.2/24.
    #[arg(long)]
    pub ip: String,
    /// The proxy's TLS address.
    #[arg(long)]
    pub proxy: SocketAddrV4,
    /// Host header value.
    #[arg(long)]
    pub host: String,
    /// TLS connections, one MCP session each.
    #[arg(long)]
    pub connections: usize,
    /// Bytes of text echoed by each tools/call.
    #[arg(long)]
    pub payload: usize,
    /// Bearer token.
    #[arg(long)]
    pub token: Option<String>,
    /// Ports the backends listen on (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub backend_ports: Vec<u16>,
    /// Backends answer tools/call with an SSE stream.
    #[arg(long)]
    pub sse: bool,
    /// TLS 1.3 suite offered.
    #[arg(long)]
    pub ciphersuite: String,
    /// Open loop: total requests/s over all connections, each on its own
    /// schedule, latency from the scheduled time (closed loop if absent).
    #[arg(long)]
    pub rate: Option<f64>,
}

/// A control command from stdin.
#[derive(Debug, PartialEq)]
enum Command {
    Window(usize),
    Report(usize),
    Spread,
    Quit,
}

fn parse_command(line: &str) -> Option<Command> {
    let mut w = line.split_whitespace();
    match (w.next()?, w.next()) {
        ("w", Some(k)) => k.parse().ok().map(Command::Window),
        ("report", Some(k)) => k.parse().ok().map(Command::Report),
        ("spread", None) => Some(Command::Spread),
        ("quit", None) => Some(Command::Quit),
        _ => None,
    }
}

/// Commands from stdin, read on a thread of their own; its end is `Quit`.
fn commands() -> std::sync::mpsc::Receiver<Command> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match parse_command(&line) {
                Some(c) => {
                    if tx.send(c).is_err() {
                        return;
                    }
                }
                None => eprintln!("bench peer: unknown command {line:?}"),
            }
        }
        let _ = tx.send(Command::Quit);
    });
    rx
}

/// One window's figures as the `figures` line carries them.
fn figures_line(k: usize, ok: u64, errors: u64, h: &hdrhistogram::Histogram<u64>) -> String {
    let values: Vec<String> = h
        .iter_recorded()
        .map(|v| format!("{}:{}", v.value_iterated_to(), v.count_at_value()))
        .collect();
    format!("figures {k} {ok} {errors} {}", values.join(","))
}

/// The controller's side: a `figures` line back into numbers.
pub(crate) fn parse_figures(line: &str) -> Option<(usize, super::loadgen::RunFigures)> {
    let mut w = line.split(' ');
    if w.next()? != "figures" {
        return None;
    }
    let k = w.next()?.parse().ok()?;
    let ok = w.next()?.parse().ok()?;
    let errors = w.next()?.parse().ok()?;
    let mut latency = super::loadgen::new_histogram();
    for pair in w.next().unwrap_or("").split(',').filter(|p| !p.is_empty()) {
        let (v, c) = pair.split_once(':')?;
        latency.record_n(v.parse().ok()?, c.parse().ok()?).ok()?;
    }
    Some((
        k,
        super::loadgen::RunFigures {
            ok,
            errors,
            latency,
        },
    ))
}

/// The controller's side: a `spread` line into requests per backend and
/// misrouted requests.
pub(crate) fn parse_spread(line: &str) -> Option<(Vec<u64>, u64)> {
    let mut w = line.split(' ');
    if w.next()? != "spread" {
        return None;
    }
    let per = w
        .next()?
        .split(',')
        .filter(|v| !v.is_empty())
        .map(|v| v.parse().ok())
        .collect::<Option<Vec<u64>>>()?;
    Some((per, w.next()?.parse().ok()?))
}

/// Run the peer until `quit`.
pub fn run(args: &PeerArgs) -> anyhow::Result<()> {
    imp::run(args)
}

#[cfg(not(dpdk))]
mod imp {
    pub(super) fn run(_: &super::PeerArgs) -> anyhow::Result<()> {
        anyhow::bail!("this binary was built without DPDK")
    }
}

#[cfg(dpdk)]
mod imp {
    use super::*;

    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use anyhow::{Context, bail};
    use dpuproxy_dp::{Eal, Mbuf, Mempool, Port, PortConfig, select_port};
    use dpuproxy_engine::device::{ARP_AND_TCP_MTU, MbufDevice};
    use dpuproxy_tcp::smoltcp::phy::{ChecksumCapabilities, DeviceCapabilities, Medium};
    use dpuproxy_tcp::smoltcp::wire::{EthernetAddress, HardwareAddress, Ipv4Cidr};
    use dpuproxy_tcp::{ConnId, Event, ListenerId, Stack, StackConfig};
    use openssl::ssl::{ErrorCode, SslConnector, SslMethod, SslStream, SslVerifyMode, SslVersion};

    use crate::proxy::backend::BackendState;
    use crate::proxy::loadgen::{self, RunFigures};

    /// Connections opening at once.
    const OPENING: usize = 64;
    /// Giving up on the sessions.
    const READY_WITHIN: Duration = Duration::from_secs(60);
    const BURST: usize = 32;

    enum Role {
        Client(Box<Client>),
        Backend(Backend),
    }

    struct Client {
        tls: Option<SslStream<MemPipe>>,
        handshaken: bool,
        session: Option<String>,
        inbuf: Vec<u8>,
        in_flight: bool,
        sent_at: Instant,
        /// Open loop: when the next request is due.
        next_due: Instant,
    }

    struct Backend {
        state: usize,
        inbuf: Vec<u8>,
        out: Vec<u8>,
    }

    struct Peer<'a> {
        args: &'a PeerArgs,
        stack: Stack,
        origin: Instant,
        connector: SslConnector,
        conns: Vec<Option<(ConnId, Role)>>,
        listeners: Vec<(ListenerId, usize)>,
        backends: Vec<BackendState>,
        opening: usize,
        ready: usize,
        window: usize,
        figures: Vec<RunFigures>,
        next_id: u64,
        /// Open loop: the time between two requests of one connection.
        interval: Option<Duration>,
        buf: Vec<u8>,
        events: Vec<Event>,
    }

    pub(super) fn run(args: &PeerArgs) -> anyhow::Result<()> {
        let cidr: Ipv4Cidr = args
            .ip
            .parse()
            .map_err(|_| anyhow::anyhow!("--ip {:?} is not an address/prefix", args.ip))?;
        let eal = Eal::init(args.eal.split_whitespace()).context("EAL")?;
        let info = select_port(&eal.ports(), None)?;
        let pool = Mempool::new(&eal, "peer", 16_383, 256, None, info.socket)?;
        let cfg = PortConfig {
            rx_queues: 1,
            tx_queues: 1,
            ..PortConfig::default()
        };
        let mut port = Port::open(info.id, &pool, &cfg)?;
        let mac = port.mac()?;
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = ARP_AND_TCP_MTU;
        caps.max_burst_size = Some(BURST);
        caps.checksum = ChecksumCapabilities::default();
        let mut scfg = StackConfig::new(HardwareAddress::Ethernet(EthernetAddress(mac)), cidr);
        scfg.rx_burst = BURST;
        scfg.ephemeral_ports = 1024..=65535;
        let mut stack = Stack::new(scfg, caps.clone(), dpuproxy_tcp::Instant::from_micros(0))
            .map_err(|e| anyhow::anyhow!("stack: {e}"))?;
        let mut listeners = Vec::new();
        let mut backends = Vec::new();
        for (i, &p) in args.backend_ports.iter().enumerate() {
            let l = stack
                .listen(p, 4096)
                .map_err(|e| anyhow::anyhow!("listen on {p}: {e}"))?;
            listeners.push((l, i));
            backends.push(BackendState::new(&format!("b{}", i + 1), args.sse));
        }
        let mut b = SslConnector::builder(SslMethod::tls_client())?;
        b.set_verify(SslVerifyMode::NONE);
        b.set_min_proto_version(Some(SslVersion::TLS1_3))?;
        b.set_ciphersuites(&args.ciphersuite)?;
        b.set_alpn_protos(b"\x08http/1.1")?;
        let mut peer = Peer {
            args,
            stack,
            origin: Instant::now(),
            connector: b.build(),
            conns: Vec::new(),
            listeners,
            backends,
            opening: 0,
            ready: 0,
            window: 0,
            figures: Vec::new(),
            next_id: 1,
            interval: args
                .rate
                .map(|r| Duration::from_secs_f64(args.connections as f64 / r.max(0.001))),
            buf: vec![0u8; 65536],
            events: Vec::new(),
        };
        let qp = port
            .queue_pairs()
            .pop()
            .context("the port has no queue pair")?;
        let mut dev = MbufDevice::new(&pool, caps);
        let mut txb = qp.tx_batch(BURST, 4);
        let mut rxv: Vec<Mbuf<'_>> = Vec::with_capacity(BURST);
        let commands = commands();
        let started = Instant::now();
        let mut announced = false;
        let mut turns = 0u64;
        let mut to_open = args.connections;
        loop {
            let n = qp.rx_burst(&mut rxv, BURST);
            dev.rx.extend(rxv.drain(..n));
            let now = peer.now();
            // Open connections, a bounded number at a time.
            while to_open > 0 && peer.opening < OPENING {
                peer.open_client()?;
                to_open -= 1;
            }
            peer.stack.poll(now, &mut dev);
            peer.dispatch();
            if peer.interval.is_some() && announced {
                peer.send_due();
            }
            peer.stack.egress(now, &mut dev);
            for m in dev.tx.drain(..) {
                txb.push(m);
            }
            txb.flush();
            if !announced {
                if peer.ready == args.connections {
                    announce("ready");
                    announced = true;
                } else if started.elapsed() > READY_WITHIN {
                    announce(&format!(
                        "failed only {}/{} sessions opened within {READY_WITHIN:?}",
                        peer.ready, args.connections
                    ));
                    bail!("sessions did not open");
                }
            }
            turns += 1;
            if turns.is_multiple_of(256) {
                match commands.try_recv() {
                    Ok(Command::Window(k)) => peer.set_window(k),
                    Ok(Command::Report(k)) => announce(&peer.report(k)),
                    Ok(Command::Spread) => announce(&peer.spread()),
                    Ok(Command::Quit) | Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        break;
                    }
                    Err(std::sync::mpsc::TryRecvError::Empty) => {}
                }
            }
        }
        drop(txb);
        dev.rx.clear();
        dev.tx.clear();
        drop(dev);
        drop(port);
        Ok(())
    }

    fn announce(line: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    impl Peer<'_> {
        fn now(&self) -> dpuproxy_tcp::Instant {
            dpuproxy_tcp::Instant::from_micros(self.origin.elapsed().as_micros() as i64)
        }

        fn set_window(&mut self, k: usize) {
            while self.figures.len() < k {
                self.figures.push(RunFigures {
                    ok: 0,
                    errors: 0,
                    latency: loadgen::new_histogram(),
                });
            }
            self.window = k;
        }

        fn report(&self, k: usize) -> String {
            match k.checked_sub(1).and_then(|i| self.figures.get(i)) {
                Some(f) => figures_line(k, f.ok, f.errors, &f.latency),
                None => figures_line(k, 0, 0, &loadgen::new_histogram()),
            }
        }

        fn spread(&self) -> String {
            let per: Vec<String> = self
                .backends
                .iter()
                .map(|b| b.stats().requests.load(Ordering::Relaxed).to_string())
                .collect();
            let misrouted: u64 = self
                .backends
                .iter()
                .map(|b| b.stats().unknown_session.load(Ordering::Relaxed))
                .sum();
            format!("spread {} {misrouted}", per.join(","))
        }

        /// Open loop: drive every idle client whose next request is due.
        fn send_due(&mut self) {
            let now = Instant::now();
            let due: Vec<ConnId> = self
                .conns
                .iter()
                .flatten()
                .filter_map(|(c, r)| match r {
                    Role::Client(cl)
                        if !cl.in_flight && cl.session.is_some() && now >= cl.next_due =>
                    {
                        Some(*c)
                    }
                    _ => None,
                })
                .collect();
            for c in due {
                self.service(c);
            }
        }

        fn current(&mut self) -> Option<&mut RunFigures> {
            let i = self.window.checked_sub(1)?;
            self.figures.get_mut(i)
        }

        fn insert(&mut self, c: ConnId, role: Role) {
            let i = c.index();
            if self.conns.len() <= i {
                self.conns.resize_with(i + 1, || None);
            }
            self.conns[i] = Some((c, role));
        }

        fn take(&mut self, c: ConnId) -> Option<Role> {
            match self.conns.get_mut(c.index()) {
                Some(slot) if slot.as_ref().is_some_and(|(id, _)| *id == c) => {
                    slot.take().map(|(_, r)| r)
                }
                _ => None,
            }
        }

        fn open_client(&mut self) -> anyhow::Result<()> {
            let c = self
                .stack
                .connect(*self.args.proxy.ip(), self.args.proxy.port())
                .map_err(|e| anyhow::anyhow!("connect: {e}"))?;
            self.opening += 1;
            self.insert(
                c,
                Role::Client(Box::new(Client {
                    tls: None,
                    handshaken: false,
                    session: None,
                    inbuf: Vec::new(),
                    in_flight: false,
                    sent_at: Instant::now(),
                    next_due: Instant::now(),
                })),
            );
            Ok(())
        }

        fn dispatch(&mut self) {
            let mut events = std::mem::take(&mut self.events);
            while let Some(e) = self.stack.poll_event() {
                events.push(e);
            }
            for e in events.drain(..) {
                match e {
                    Event::Accept(l) => self.accept(l),
                    Event::Connected(c) | Event::Readable(c) | Event::Writable(c) => {
                        self.service(c)
                    }
                    Event::Closed(c) | Event::Reset(c) => self.gone(c),
                }
            }
            self.events = events;
        }

        fn accept(&mut self, l: ListenerId) {
            let Some(&(_, state)) = self.listeners.iter().find(|(id, _)| *id == l) else {
                return;
            };
            while let Ok(Some(c)) = self.stack.accept(l) {
                self.insert(
                    c,
                    Role::Backend(Backend {
                        state,
                        inbuf: Vec::new(),
                        out: Vec::new(),
                    }),
                );
                self.service(c);
            }
        }

        fn gone(&mut self, c: ConnId) {
            if let Some(Role::Client(cl)) = self.take(c) {
                if cl.in_flight
                    && let Some(f) = self.current()
                {
                    f.errors += 1;
                }
                if !cl.handshaken || cl.session.is_none() {
                    self.opening = self.opening.saturating_sub(1);
                }
                // Replace it: the load keeps its connection count.
                let _ = self.open_client();
            }
            let _ = self.stack.close(c);
        }

        fn service(&mut self, c: ConnId) {
            let Some(role) = self.take(c) else { return };
            let keep = match role {
                Role::Backend(mut b) => self.serve_backend(c, &mut b).then_some(Role::Backend(b)),
                Role::Client(mut cl) => self.drive_client(c, &mut cl).then_some(Role::Client(cl)),
            };
            match keep {
                Some(r) => self.insert(c, r),
                None => {
                    let _ = self.stack.abort(c);
                }
            }
        }

        /// Everything readable into `into`; false once the peer has closed
        /// or the connection failed.
        fn read_all(&mut self, c: ConnId, into: &mut Vec<u8>) -> bool {
            loop {
                match self.stack.recv_slice(c, &mut self.buf) {
                    Ok(0) => return true,
                    Ok(n) => into.extend_from_slice(&self.buf[..n]),
                    Err(_) => return false,
                }
            }
        }

        /// Send what fits of `out`; the rest stays for `Writable`.
        fn write_some(&mut self, c: ConnId, out: &mut Vec<u8>) -> bool {
            if out.is_empty() {
                return true;
            }
            match self.stack.send_slice(c, out) {
                Ok(n) => {
                    out.drain(..n);
                    true
                }
                Err(_) => false,
            }
        }

        fn serve_backend(&mut self, c: ConnId, b: &mut Backend) -> bool {
            let mut inbuf = std::mem::take(&mut b.inbuf);
            let open = self.read_all(c, &mut inbuf);
            let mut used = 0;
            while let Ok(Some((head, len))) =
                dpuproxy_l7::http::parse_request_head(&inbuf[used..], 65536, 100)
            {
                let body_len = match head.framing {
                    dpuproxy_l7::http::BodyFraming::Length(n) => n as usize,
                    _ => 0,
                };
                if inbuf.len() - used < len + body_len {
                    break;
                }
                let body = &inbuf[used + len..used + len + body_len];
                b.out
                    .extend_from_slice(&self.backends[b.state].respond(&head, body));
                used += len + body_len;
            }
            inbuf.drain(..used);
            b.inbuf = inbuf;
            let mut out = std::mem::take(&mut b.out);
            let ok = self.write_some(c, &mut out);
            b.out = out;
            open && ok
        }

        fn drive_client(&mut self, c: ConnId, cl: &mut Client) -> bool {
            if cl.tls.is_none() {
                let ssl = self.connector.configure().and_then(|mut cfg| {
                    cfg.set_verify_hostname(false);
                    cfg.into_ssl("localhost")
                });
                match ssl.map(|s| SslStream::new(s, MemPipe::default())) {
                    Ok(Ok(s)) => cl.tls = Some(s),
                    _ => return false,
                }
            }
            let Some(mut tls) = cl.tls.take() else {
                return false;
            };
            let mut rx = std::mem::take(&mut tls.get_mut().input);
            let open = self.read_all(c, &mut rx);
            tls.get_mut().input = rx;
            let alive = open && self.client_tls(cl, &mut tls);
            let mut tx = std::mem::take(&mut tls.get_mut().output);
            let sent = self.write_some(c, &mut tx);
            tls.get_mut().output = tx;
            cl.tls = Some(tls);
            alive && sent
        }

        /// Handshake, then requests and responses; false on failure.
        fn client_tls(&mut self, cl: &mut Client, tls: &mut SslStream<MemPipe>) -> bool {
            if !cl.handshaken {
                match tls.connect() {
                    Ok(()) => cl.handshaken = true,
                    Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => {
                        return true;
                    }
                    Err(_) => return false,
                }
            }
            loop {
                match tls.ssl_read(&mut self.buf) {
                    Ok(0) => return false,
                    Ok(n) => cl.inbuf.extend_from_slice(&self.buf[..n]),
                    Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => {
                        break;
                    }
                    Err(_) => return false,
                }
            }
            while cl.in_flight {
                match loadgen::parse_response(&cl.inbuf) {
                    Ok(None) => break,
                    Ok(Some((status, sid, used))) => {
                        cl.inbuf.drain(..used);
                        cl.in_flight = false;
                        if cl.session.is_none() {
                            match (status, sid) {
                                (200, Some(s)) => {
                                    cl.session = Some(s);
                                    // Spread the schedules over one interval.
                                    cl.next_due = Instant::now()
                                        + self.interval.map_or(Duration::ZERO, |iv| {
                                            iv.mul_f64(
                                                self.ready as f64
                                                    / self.args.connections.max(1) as f64,
                                            )
                                        });
                                    self.opening = self.opening.saturating_sub(1);
                                    self.ready += 1;
                                }
                                _ => return false,
                            }
                            continue;
                        }
                        let us = cl.sent_at.elapsed().as_micros().max(1) as u64;
                        if let Some(f) = self.current() {
                            if (200..300).contains(&status) {
                                f.ok += 1;
                                let _ = f.latency.record(us.min(120_000_000));
                            } else {
                                f.errors += 1;
                            }
                        }
                        if status == 404 {
                            return false;
                        }
                    }
                    Err(()) => return false,
                }
            }
            let due = match self.interval {
                // Sessions open at once; then each connection keeps its
                // schedule (a late response does not push it back).
                Some(iv) if cl.session.is_some() => {
                    let now = Instant::now();
                    if now < cl.next_due {
                        false
                    } else {
                        cl.sent_at = cl.next_due;
                        cl.next_due += iv;
                        true
                    }
                }
                _ => {
                    cl.sent_at = Instant::now();
                    true
                }
            };
            if !cl.in_flight && due {
                let req = loadgen::request_bytes(
                    &self.args.host,
                    self.args.token.as_deref(),
                    self.args.payload,
                    cl.session.as_deref(),
                    self.next_id,
                );
                self.next_id += 1;
                cl.in_flight = true;
                if tls.ssl_write(&req).is_err() {
                    return false;
                }
            }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_and_unknown_ones_do_not() {
        assert_eq!(parse_command("w 3"), Some(Command::Window(3)));
        assert_eq!(parse_command("report 12"), Some(Command::Report(12)));
        assert_eq!(parse_command("quit"), Some(Command::Quit));
        assert_eq!(parse_command("w x"), None);
        assert_eq!(parse_command("jump 1"), None);
        assert_eq!(parse_command(""), None);
    }

    #[test]
    fn figures_lines_carry_the_histogram_across() {
        let mut h = super::super::loadgen::new_histogram();
        for v in [100u64, 100, 250, 4000] {
            h.record(v).unwrap();
        }
        let line = figures_line(2, 4, 1, &h);
        let (k, f) = parse_figures(&line).expect("parses");
        assert_eq!((k, f.ok, f.errors), (2, 4, 1));
        assert_eq!(f.latency.len(), 4);
        assert_eq!(f.latency.value_at_quantile(0.5), h.value_at_quantile(0.5));
        assert_eq!(f.latency.max(), h.max());
        let empty = figures_line(1, 0, 0, &super::super::loadgen::new_histogram());
        assert_eq!(parse_figures(&empty).expect("parses").1.latency.len(), 0);
        assert!(parse_figures("figures x").is_none());
        assert_eq!(parse_spread("spread 3,4,5 1"), Some((vec![3, 4, 5], 1)));
        assert_eq!(parse_spread("spread 3,x 1"), None);
        assert_eq!(parse_command("spread"), Some(Command::Spread));
    }

    #[test]
    fn the_pipe_reads_what_arrived_and_would_block_after() {
        use std::io::Read;
        let mut p = MemPipe::default();
        let mut b = [0u8; 4];
        assert_eq!(
            p.read(&mut b).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
        p.input.extend_from_slice(b"abcdef");
        assert_eq!(p.read(&mut b).unwrap(), 4);
        assert_eq!(&b, b"abcd");
        assert_eq!(p.read(&mut b).unwrap(), 2);
        assert_eq!(&b[..2], b"ef");
        assert!(p.input.is_empty() && p.in_pos == 0);
        p.write_all(b"xyz").unwrap();
        assert_eq!(p.output, b"xyz");
    }
}
