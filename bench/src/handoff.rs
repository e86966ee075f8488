//! `bench handoff`: established TCP connections moved from kernel sockets
//! to the userspace stack and back, timed and checked: the TCP half of the
//! live mode switch between the data paths.
//!
//! Rig (root; everything created here and removed on exit, also on
//! failure): namespace M holds the proxy's address on a tap whose file
//! descriptor this process holds, namespace P the peer's on another tap.
//! This process is the wire between the two taps and the steering: frames
//! from P for a connection go to its current owner, the kernel (tap M) or
//! our userspace TCP stack (same address and MAC), and are dropped while it
//! moves. A Python peer in P opens N connections to the kernel listener in
//! M, then on command sends 8 bytes on every connection and checks their
//! echo (a round).
//!
//! Sequence: round on the kernel; every connection moved to the userspace
//! stack (`repair::capture`, close in repair mode, `handoff::to_userspace`,
//! `Stack::import`, steering flip); round; every connection moved back
//! (`Stack::export`, `handoff::to_kernel`, `repair::restore`, flip); round.
//! A connection's pause runs from the start of its capture (or export) to
//! its steering flip; frames keep flowing between one move and the next, so
//! that is as long as its frames wait (the peer is idle while connections
//! move, so no retransmission is measured). With `--tls` every connection runs TLS 1.3 (Python's
//! `ssl` client; the proxy's `ServerSession`, handshaken on the kernel
//! socket), and each move carries the session too (snapshot, resume on the
//! other owner). The L7 object, which a real switch moves as well, is not
//! in these figures.
//!
//! Last line: `moved=N failed=F conns_per_s=R pause_p99_us=P`, where N
//! counts the connections that made both moves and passed every round, R
//! moves per second of moving (both directions), P the 99th percentile of
//! the pauses of all moves.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant as StdInstant};

use anyhow::{Context, bail};

use crate::proxy::netns::ip;
use dpuproxy_kernel::handoff::{to_kernel, to_userspace};
use dpuproxy_kernel::repair;
use dpuproxy_tcp::smoltcp::phy::{Device, Medium, RxToken, TunTapInterface, TxToken};
use dpuproxy_tcp::smoltcp::wire::{EthernetAddress, HardwareAddress, Ipv4Address, Ipv4Cidr};
use dpuproxy_tcp::wire::{self, WirePort};
use dpuproxy_tcp::{ConnId, Event, Instant, Stack, StackConfig};
use dpuproxy_tls::session::Step;
use dpuproxy_tls::{HandshakeConfig, Limits, ServerSession};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

/// `bench handoff` arguments.
#[derive(clap::Args, Debug)]
pub struct HandoffArgs {
    /// Connections to move (each moves twice: to the userspace stack and back).
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// TLS 1.3 on every connection (the proxy's TLS session moves with the
    /// TCP state).
    #[arg(long)]
    pub tls: bool,
}

const PORT: u16 = 7000;
/// Every wait of the run is bounded by this.
const DEADLINE: Duration = Duration::from_secs(300);

const PEER: &str = r#"
import socket, sys
ip, n, tls = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "tls"
if tls:
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
conns = []
for i in range(n):
    s = socket.create_connection((ip, 7000), timeout=60)
    if tls:
        s = ctx.wrap_socket(s)
    conns.append(s)
print("CONNECTED", len(conns), flush=True)
for line in sys.stdin:
    if line.strip() != "round":
        break
    for i, s in enumerate(conns):
        s.sendall(i.to_bytes(8, "big"))
    ok = bad = 0
    for i, s in enumerate(conns):
        want = i.to_bytes(8, "big")
        got = b""
        try:
            while len(got) < 8:
                b = s.recv(8 - len(got))
                if not b:
                    break
                got += b
        except Exception as e:
            got += repr(e).encode()
        if got == want:
            ok += 1
        else:
            if bad < 3:
                print("BAD", i, got.hex(), flush=True)
            print("BADIDX", i, flush=True)
            bad += 1
    print("ROUND", ok, bad, flush=True)
"#;

/// Both namespaces (and with them the taps) and the peer, removed on drop.
struct Rig {
    namespaces: [String; 2],
    /// Taps made here: removed with their namespace, or by name when the
    /// move into it failed.
    taps: Vec<String>,
    peer: Option<Child>,
    home: std::fs::File,
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut p) = self.peer.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        // `ip netns del` from our home namespace.
        let _ = rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&self.home),
            Some(rustix::thread::LinkNameSpaceType::Network),
        );
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
        for tap in &self.taps {
            let _ = ip(&["link", "del", tap]);
        }
    }
}

/// A tap opened here, then moved into `ns` with `addr` (and `mac`).
fn tap_in(ns: &str, name: &str, addr: &str, mac: Option<&str>) -> anyhow::Result<TunTapInterface> {
    let _ = ip(&["link", "del", name]);
    ip(&["tuntap", "add", "dev", name, "mode", "tap"])?;
    let tap = TunTapInterface::new(name, Medium::Ethernet)
        .with_context(|| format!("cannot open tap {name}"))?;
    ip(&["link", "set", name, "netns", ns])?;
    if let Some(mac) = mac {
        ip(&["-n", ns, "link", "set", name, "address", mac])?;
    }
    ip(&["-n", ns, "addr", "add", addr, "dev", name])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    ip(&["-n", ns, "link", "set", name, "up"])?;
    Ok(tap)
}

fn read_frame(dev: &mut impl Device) -> Option<Vec<u8>> {
    let (rx, _tx) = dev.receive(Instant::from_micros(0))?;
    Some(rx.consume(|b| b.to_vec()))
}

fn write_frame(dev: &mut impl Device, frame: &[u8]) {
    if let Some(tx) = dev.transmit(Instant::from_micros(0)) {
        tx.consume(frame.len(), |b| b.copy_from_slice(frame));
    }
}

/// The peer's port of an IPv4 TCP frame to our port (from P).
fn peer_port(frame: &[u8]) -> Option<u16> {
    if frame.len() < 14 + 20 + 4 || frame[12..14] != [0x08, 0x00] || frame[14 + 9] != 6 {
        return None;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let tcp = frame.get(14 + ihl..14 + ihl + 4)?;
    (u16::from_be_bytes([tcp[2], tcp[3]]) == PORT).then(|| u16::from_be_bytes([tcp[0], tcp[1]]))
}

/// A TCP segment with RST set.
fn is_rst(frame: &[u8]) -> bool {
    if frame.len() < 14 + 20 + 14 || frame[12..14] != [0x08, 0x00] || frame[14 + 9] != 6 {
        return false;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    frame.get(14 + ihl + 13).is_some_and(|f| f & 0x04 != 0)
}

fn is_arp(frame: &[u8]) -> bool {
    frame.len() >= 14 && frame[12..14] == [0x08, 0x06]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Kernel,
    Userspace,
    Moving,
}

/// Where a connection lives now.
enum Where {
    Kernel(TcpStream),
    Userspace(ConnId),
}

/// One connection: its TCP owner and (with `--tls`) its TLS session.
struct Conn {
    at: Where,
    tls: Option<ServerSession>,
}

/// Echo on a kernel socket: read everything, answer it (through the TLS
/// session when there is one), send what the socket takes.
fn kernel_echo(s: &mut TcpStream, tls: Option<&mut ServerSession>) -> anyhow::Result<bool> {
    let mut buf = [0u8; 4096];
    let mut worked = false;
    let Some(t) = tls else {
        loop {
            match s.read(&mut buf) {
                Ok(0) => return Ok(worked),
                Ok(n) => s.write_all(&buf[..n]).context("kernel echo")?,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(worked),
                Err(e) => bail!("kernel echo: {e}"),
            }
            worked = true;
        }
    };
    // Edge-triggered: read until the socket says WouldBlock (or ends),
    // answering whenever the session's input is full.
    loop {
        let mut drained = false;
        while !t.inbuf_full() {
            match s.read(&mut buf) {
                Ok(0) => {
                    drained = true;
                    break;
                }
                Ok(n) => {
                    t.inbuf().extend_from_slice(&buf[..n]);
                    worked = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    drained = true;
                    break;
                }
                Err(e) => bail!("kernel echo: {e}"),
            }
        }
        answer(t)?;
        while t.out_len() > 0 {
            match s.write(t.pending_out()) {
                Ok(n) => t.consume_out(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => bail!("kernel echo: {e}"),
            }
        }
        if drained {
            return Ok(worked);
        }
    }
}

/// The TLS side of an echo: handshake, or open what came and seal it back.
fn answer(t: &mut ServerSession) -> anyhow::Result<()> {
    if !t.is_established() && t.handshake() == Step::Failed {
        bail!("TLS handshake failed");
    }
    if t.is_established() {
        let mut app = Vec::new();
        if t.open(&mut |d| app.extend_from_slice(d)).error {
            bail!("TLS record error");
        }
        if !app.is_empty() {
            t.seal(&app)?;
        }
    }
    Ok(())
}

/// Echo on a userspace connection, like [`kernel_echo`].
fn userspace_echo(
    stack: &mut Stack,
    c: ConnId,
    tls: Option<&mut ServerSession>,
) -> anyhow::Result<()> {
    let mut buf = [0u8; 4096];
    let Some(t) = tls else {
        loop {
            match stack.recv_slice(c, &mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    // 8-byte messages into a send buffer with room.
                    if stack.send_slice(c, &buf[..n])? < n {
                        bail!("userspace echo: send buffer full");
                    }
                }
                Err(e) => bail!("userspace echo: {e}"),
            }
        }
    };
    while !t.inbuf_full() {
        let inbuf = t.inbuf();
        let n = stack.recv(c, |b| {
            inbuf.extend_from_slice(b);
            (b.len(), b.len())
        })?;
        if n == 0 {
            break;
        }
    }
    answer(t)?;
    if t.out_len() > 0 {
        let n = stack.send_slice(c, t.pending_out())?;
        t.consume_out(n);
    }
    Ok(())
}

/// The wire between the taps, the steering, the userspace stack, and the
/// echo on both owners.
struct Wire {
    tap_p: TunTapInterface,
    tap_m: TunTapInterface,
    to_stack: WirePort,
    stack_port: WirePort,
    stack: Stack,
    /// Owner by the peer's port; unknown flows (new connections) go to the
    /// kernel.
    owners: HashMap<u16, Owner>,
    poll: Poll,
    events: Events,
    /// Connections by index (a kernel socket's token).
    conns: Vec<Option<Conn>>,
    by_conn: HashMap<ConnId, usize>,
    epoch: StdInstant,
    dropped: u64,
    rst_from_kernel: u64,
    rst_from_stack: u64,
}

impl Wire {
    /// A connection's move is done: its frames go to `owner` (the steering
    /// flip), its pause since `t0` is counted, and frames flow again before
    /// the next move (a connection waits only for its own).
    fn landed(
        &mut self,
        i: usize,
        port: u16,
        owner: Owner,
        conn: Conn,
        t0: StdInstant,
        pauses: &mut Vec<u64>,
    ) -> anyhow::Result<()> {
        self.owners.insert(port, owner);
        self.conns[i] = Some(conn);
        pauses.push(t0.elapsed().as_micros() as u64);
        self.pump().map(|_| ())
    }

    fn now(&self) -> Instant {
        Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    /// One round of everything: frames both ways, the stack, both echoes.
    fn pump(&mut self) -> anyhow::Result<bool> {
        let mut worked = false;
        while let Some(f) = read_frame(&mut self.tap_p) {
            worked = true;
            if is_arp(&f) {
                write_frame(&mut self.tap_m, &f);
                write_frame(&mut self.to_stack, &f);
                continue;
            }
            let owner = peer_port(&f).map_or(Owner::Kernel, |p| {
                self.owners.get(&p).copied().unwrap_or(Owner::Kernel)
            });
            match owner {
                Owner::Kernel => write_frame(&mut self.tap_m, &f),
                Owner::Userspace => write_frame(&mut self.to_stack, &f),
                Owner::Moving => self.dropped += 1,
            }
        }
        while let Some(f) = read_frame(&mut self.tap_m) {
            worked = true;
            if is_rst(&f) {
                self.rst_from_kernel += 1;
            }
            write_frame(&mut self.tap_p, &f);
        }
        let now = self.now();
        self.stack.poll(now, &mut self.stack_port);
        while let Some(e) = self.stack.poll_event() {
            if let Event::Readable(c) | Event::Writable(c) = e {
                // Only connections this rig owns on the stack now (an event
                // may be left from one exported since).
                let Some(conn) = self.by_conn.get(&c).and_then(|i| self.conns[*i].as_mut()) else {
                    continue;
                };
                userspace_echo(&mut self.stack, c, conn.tls.as_mut())?;
            }
        }
        self.stack.egress(now, &mut self.stack_port);
        while let Some(f) = read_frame(&mut self.to_stack) {
            worked = true;
            if is_rst(&f) {
                self.rst_from_stack += 1;
            }
            write_frame(&mut self.tap_p, &f);
        }
        self.poll
            .poll(&mut self.events, Some(Duration::ZERO))
            .context("epoll")?;
        let ready: Vec<usize> = self.events.iter().map(|e| e.token().0).collect();
        for i in ready {
            if let Some(Some(Conn {
                at: Where::Kernel(s),
                tls,
            })) = self.conns.get_mut(i)
            {
                worked |= kernel_echo(s, tls.as_mut())?;
            }
        }
        Ok(worked)
    }
}

/// Lines of a child's stdout, in a channel.
fn lines_of(out: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Accept every connection waiting on `l`, registered for the kernel echo
/// (with a TLS session to handshake when `tls` is given).
fn accept_waiting(
    wire: &mut Wire,
    l: &TcpListener,
    tls: Option<&HandshakeConfig>,
) -> anyhow::Result<()> {
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(true)?;
                let mut s = TcpStream::from_std(s);
                let i = wire.conns.len();
                wire.poll.registry().register(
                    &mut s,
                    Token(i),
                    Interest::READABLE | Interest::WRITABLE,
                )?;
                let tls = tls.map(ServerSession::new).transpose()?;
                wire.conns.push(Some(Conn {
                    at: Where::Kernel(s),
                    tls,
                }));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => bail!("accept: {e} (open-file limit?)"),
        }
    }
}

/// Pump until the peer prints a line starting with `prefix`.
fn wait_line(
    wire: &mut Wire,
    lines: &Receiver<String>,
    prefix: &str,
    started: StdInstant,
    accept: Option<(&TcpListener, Option<&HandshakeConfig>)>,
    failed: &mut [bool],
) -> anyhow::Result<String> {
    loop {
        if started.elapsed() > DEADLINE {
            bail!("timed out waiting for the peer's {prefix}");
        }
        if let Some((l, tls)) = accept {
            accept_waiting(wire, l, tls)?;
        }
        match lines.try_recv() {
            Ok(l) if l.starts_with(prefix) => return Ok(l),
            Ok(l) if l.starts_with("BADIDX ") => {
                if let Some(f) = l[7..]
                    .trim()
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| failed.get_mut(i))
                {
                    *f = true;
                }
            }
            Ok(l) => eprintln!("peer: {l}"),
            Err(std::sync::mpsc::TryRecvError::Empty) => {
                if !wire.pump()? {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
            Err(_) => bail!("the peer exited while we waited for {prefix}"),
        }
    }
}

/// One echo round on every connection: (ok, bad), and the bad ones are
/// marked in `failed`.
fn round(
    wire: &mut Wire,
    peer_in: &mut ChildStdin,
    lines: &Receiver<String>,
    started: StdInstant,
    failed: &mut [bool],
) -> anyhow::Result<(usize, usize)> {
    peer_in.write_all(b"round\n")?;
    peer_in.flush()?;
    let l = wait_line(wire, lines, "ROUND", started, None, failed)?;
    let f: Vec<&str> = l.split_whitespace().collect();
    Ok((f[1].parse()?, f[2].parse()?))
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Run the bench (root).
pub fn run(args: &HandoffArgs) -> anyhow::Result<()> {
    let n = args.connections;
    if n == 0 {
        bail!("--connections must be at least 1");
    }
    if !rustix::process::geteuid().is_root() {
        bail!("bench handoff needs root (namespaces, taps, TCP_REPAIR)");
    }
    let started = StdInstant::now();
    let pid = std::process::id();
    let x = (pid % 200 + 20) as u8;
    let home = std::fs::File::open("/proc/thread-self/ns/net")
        .context("cannot open this thread's network namespace")?;
    let (ns_p, ns_m) = (format!("dbh{pid}p"), format!("dbh{pid}m"));
    let mut rig = Rig {
        namespaces: [ns_p.clone(), ns_m.clone()],
        peer: None,
        home,
        taps: vec![format!("dbh{pid}P"), format!("dbh{pid}M")],
    };
    for ns in &rig.namespaces {
        let _ = ip(&["netns", "del", ns]);
        ip(&["netns", "add", ns])?;
    }
    let proxy_ip = format!("10.89.{x}.1");
    let mac = [0x02, 0, 0, 0x89, x, 1];
    let mac_text = format!("02:00:00:89:{x:02x}:01");
    let tap_p = tap_in(
        &ns_p,
        &format!("dbh{pid}P"),
        &format!("10.89.{x}.2/24"),
        None,
    )?;
    let tap_m = tap_in(
        &ns_m,
        &format!("dbh{pid}M"),
        &format!("{proxy_ip}/24"),
        Some(&mac_text),
    )?;
    // The userspace stack sends no timestamps; a big backlog for N connects.
    for sysctl in ["net.ipv4.tcp_timestamps=0", "net.core.somaxconn=65535"] {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns_m, "sysctl", "-qw", sysctl])
            .output()?;
        if !out.status.success() {
            bail!("sysctl {sysctl} in {ns_m} failed");
        }
    }
    // From here this thread lives in M: the listener and every restored
    // socket belong to it.
    crate::proxy::netns::enter_named(&ns_m)?;
    let listener = TcpListener::bind((proxy_ip.as_str(), PORT))?;
    listener.set_nonblocking(true)?;
    let certs = tempfile::tempdir()?;
    let tls = if args.tls {
        let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
        dpuproxy_tls::certs::write_self_signed(&cert, &key, 1)?;
        Some(dpuproxy_kernel::handshake_config(&cert, &key)?)
    } else {
        None
    };

    let (stack_port, to_stack) = wire::pair(Medium::Ethernet, 1514, 16384);
    let mut cfg = StackConfig::new(
        HardwareAddress::Ethernet(EthernetAddress(mac)),
        Ipv4Cidr::new(proxy_ip.parse::<Ipv4Address>()?, 24),
    );
    cfg.seed = u64::from(pid) ^ 0x5eed;
    let stack = Stack::new(cfg, stack_port.capabilities(), Instant::from_micros(0))?;
    let mut wire = Wire {
        tap_p,
        tap_m,
        to_stack,
        stack_port,
        stack,
        owners: HashMap::new(),
        poll: Poll::new()?,
        events: Events::with_capacity(1024),
        conns: Vec::with_capacity(n),
        by_conn: HashMap::new(),
        epoch: StdInstant::now(),
        dropped: 0,
        rst_from_kernel: 0,
        rst_from_stack: 0,
    };

    let mut peer = Command::new("ip")
        .args(["netns", "exec", &ns_p, "python3", "-c", PEER, &proxy_ip])
        .arg(n.to_string())
        .arg(if args.tls { "tls" } else { "plain" })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start the Python peer")?;
    let lines = lines_of(peer.stdout.take().context("peer stdout")?);
    let mut peer_in = peer.stdin.take().context("peer stdin")?;
    rig.peer = Some(peer);
    let mut failed = vec![false; n];
    wait_line(
        &mut wire,
        &lines,
        "CONNECTED",
        started,
        Some((&listener, tls.as_ref())),
        &mut failed,
    )?;
    // The peer saw every handshake complete; the last ones may still wait
    // in the backlog.
    let t = StdInstant::now();
    while wire.conns.len() < n && t.elapsed() < Duration::from_secs(10) {
        accept_waiting(&mut wire, &listener, tls.as_ref())?;
        wire.pump()?;
    }
    if wire.conns.len() != n {
        bail!("accepted {} of {n} connections", wire.conns.len());
    }
    eprintln!(
        "bench handoff: {n} {} connections from namespace {ns_p} to kernel sockets in {ns_m} ({:.1} s)",
        if args.tls { "TLS 1.3" } else { "TCP" },
        started.elapsed().as_secs_f64()
    );
    let mut rounds = vec![round(
        &mut wire,
        &mut peer_in,
        &lines,
        started,
        &mut failed,
    )?];

    // Kernel -> userspace.
    let mut pauses = Vec::with_capacity(2 * n);
    let t_move = StdInstant::now();
    for (i, failed_i) in failed.iter_mut().enumerate() {
        let Some(Conn {
            at: Where::Kernel(mut s),
            tls,
        }) = wire.conns[i].take()
        else {
            continue;
        };
        let t0 = StdInstant::now();
        let port = s.peer_addr()?.port();
        wire.owners.insert(port, Owner::Moving);
        let _ = wire.poll.registry().deregister(&mut s);
        let tls_state = tls.as_ref().map(ServerSession::snapshot);
        let captured = match tls_state {
            Some(None) => Err(anyhow::anyhow!("TLS session not established")),
            _ => repair::capture(&s).map_err(anyhow::Error::from),
        };
        let state = match captured {
            Ok(st) => st,
            Err(e) => {
                eprintln!("connection {i}: capture failed: {e}");
                *failed_i = true;
                // It stays on the kernel, registered again for its echo.
                wire.poll.registry().register(
                    &mut s,
                    Token(i),
                    Interest::READABLE | Interest::WRITABLE,
                )?;
                wire.owners.insert(port, Owner::Kernel);
                wire.conns[i] = Some(Conn {
                    at: Where::Kernel(s),
                    tls,
                });
                continue;
            }
        };
        drop(s);
        // The TLS session first: nothing is committed on the stack if it
        // cannot be resumed.
        let moved = tls_state
            .flatten()
            .map(|st| ServerSession::resume(&st, Limits::default()))
            .transpose()
            .map_err(anyhow::Error::from)
            .and_then(|tls| {
                let u = to_userspace(&state)?;
                Ok((wire.stack.import(&u, None)?, tls))
            });
        match moved {
            Ok((id, mut tls)) => {
                wire.by_conn.insert(id, i);
                // Sealed bytes the old socket had not taken go out now.
                userspace_echo(&mut wire.stack, id, tls.as_mut())?;
                let conn = Conn {
                    at: Where::Userspace(id),
                    tls,
                };
                wire.landed(i, port, Owner::Userspace, conn, t0, &mut pauses)?;
            }
            Err(e) => {
                eprintln!("connection {i}: import failed: {e}; reset");
                *failed_i = true;
                let _ = repair::reset(&state);
            }
        }
    }
    let to_user = t_move.elapsed();
    rounds.push(round(
        &mut wire,
        &mut peer_in,
        &lines,
        started,
        &mut failed,
    )?);

    // Userspace -> kernel.
    let mut to_unhold = Vec::with_capacity(n);
    let t_back = StdInstant::now();
    for (i, failed_i) in failed.iter_mut().enumerate() {
        let Some(Conn {
            at: Where::Userspace(id),
            tls,
        }) = wire.conns[i].take()
        else {
            continue;
        };
        let t0 = StdInstant::now();
        let tls_state = tls.as_ref().map(ServerSession::snapshot);
        let exported = match tls_state {
            Some(None) => Err(anyhow::anyhow!("TLS session not established")),
            _ => wire
                .stack
                .export(wire.now(), id)
                .map_err(anyhow::Error::from),
        };
        let state = match exported {
            Ok(st) => st,
            Err(e) => {
                eprintln!("connection {i}: export failed: {e}");
                *failed_i = true;
                wire.conns[i] = Some(Conn {
                    at: Where::Userspace(id),
                    tls,
                });
                continue;
            }
        };
        let port = state.tuple.remote_port;
        wire.owners.insert(port, Owner::Moving);
        wire.by_conn.remove(&id);
        let k = to_kernel(&state);
        match repair::restore(&k) {
            Ok(mut r) => {
                // The unsent tail that did not fit the new socket at once
                // goes before anything the session still holds.
                let tls = match tls_state.flatten() {
                    Some(mut st) => {
                        let mut out = std::mem::take(&mut r.pending);
                        out.append(&mut st.outbuf);
                        st.outbuf = out;
                        match ServerSession::resume(&st, Limits::default()) {
                            Ok(t) => Some(t),
                            Err(e) => {
                                eprintln!("connection {i}: TLS resume failed: {e}; reset");
                                *failed_i = true;
                                let _ = socket2::SockRef::from(&r.stream)
                                    .set_linger(Some(Duration::ZERO));
                                to_unhold.push(state.tuple);
                                continue;
                            }
                        }
                    }
                    None => {
                        // (Restored sockets are non-blocking: write this
                        // little tail blocking.)
                        r.stream.set_nonblocking(false)?;
                        r.stream.write_all(&r.pending)?;
                        None
                    }
                };
                let mut tls = tls;
                r.stream.set_nonblocking(true)?;
                let mut s = TcpStream::from_std(r.stream);
                wire.poll.registry().register(
                    &mut s,
                    Token(i),
                    Interest::READABLE | Interest::WRITABLE,
                )?;
                kernel_echo(&mut s, tls.as_mut())?;
                to_unhold.push(state.tuple);
                let conn = Conn {
                    at: Where::Kernel(s),
                    tls,
                };
                wire.landed(i, port, Owner::Kernel, conn, t0, &mut pauses)?;
            }
            Err(e) => {
                eprintln!("connection {i}: restore failed: {e}; reset");
                *failed_i = true;
                let _ = repair::reset(&k);
                to_unhold.push(state.tuple);
            }
        }
    }
    let to_kernel_time = t_back.elapsed();
    // Frames the stack had queued but not read before a flip are still for
    // the held 4-tuples (dropped, not answered with RST): only once the
    // stack has read everything queued is it told to forget them.
    let now = wire.now();
    while wire.stack.poll(now, &mut wire.stack_port) > 0 {}
    for t in &to_unhold {
        wire.stack.unhold(t);
    }
    rounds.push(round(
        &mut wire,
        &mut peer_in,
        &lines,
        started,
        &mut failed,
    )?);
    let _ = peer_in.write_all(b"quit\n");

    let failed_n = failed.iter().filter(|f| **f).count();
    pauses.sort_unstable();
    let moves = pauses.len();
    let secs = (to_user + to_kernel_time).as_secs_f64();
    println!(
        "rounds (ok, bad): kernel {:?}, userspace {:?}, kernel again {:?}",
        rounds[0], rounds[1], rounds[2]
    );
    println!(
        "kernel -> userspace: {n} in {:.1} ms; userspace -> kernel: {n} in {:.1} ms; \
         frames dropped while moving: {}; resets sent by the kernel {}, by the userspace stack {}",
        to_user.as_secs_f64() * 1e3,
        to_kernel_time.as_secs_f64() * 1e3,
        wire.dropped,
        wire.rst_from_kernel,
        wire.rst_from_stack
    );
    println!(
        "pause µs: p50 {} p90 {} p99 {} max {}",
        percentile(&pauses, 0.5),
        percentile(&pauses, 0.9),
        percentile(&pauses, 0.99),
        pauses.last().copied().unwrap_or(0)
    );
    let moved = n - failed_n;
    println!(
        "moved={moved} failed={} conns_per_s={:.0} pause_p99_us={}",
        n - moved,
        moves as f64 / secs.max(1e-9),
        percentile(&pauses, 0.99)
    );
    drop(rig);
    if moved != n {
        bail!("{} of {n} connections failed a move or a round", n - moved);
    }
    if wire.rst_from_kernel + wire.rst_from_stack > 0 || wire.stack.held_count() > 0 {
        bail!(
            "resets were sent ({} by the kernel, {} by the userspace stack) or 4-tuples are still held ({})",
            wire.rst_from_kernel,
            wire.rst_from_stack,
            wire.stack.held_count()
        );
    }
    Ok(())
}
