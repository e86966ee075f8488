//! One TCP connection moved back and forth between a kernel socket
//! (`TCP_REPAIR`) and the userspace stack while the peer streams through
//! it; the peer must see every byte echoed in order, no reset and no new
//! connection.
//!
//! Topology (all created here and removed by a drop guard, also on
//! failure; every wait is bounded):
//! - namespace P: tap `P` with 10.88.x.2, a Python client that connects
//!   once to 10.88.x.1:7000, streams 3 MB paced over about two seconds and
//!   checks the echo byte by byte;
//! - namespace M: tap `M` with 10.88.x.1 (the proxy's address, fixed MAC)
//!   and TCP timestamps off (the userspace stack sends none); this test
//!   binary runs again inside M as the *kernel owner*: it accepts the
//!   connection, echoes, and on command captures it (`repair::capture`)
//!   or restores it (`repair::restore`);
//! - this process holds both taps' file descriptors and is the wire and
//!   the steering between them: frames from P for the connection go to the
//!   current owner (tap M or the userspace stack, dropped while it moves);
//!   everything else is bridged. The userspace stack has M's address and
//!   MAC.
//!
//! The echo's own unwritten bytes (the "application" state) move with the
//! connection, as the proxy's L7 object would.
//!
//! Run twice: over plain TCP, and over TLS 1.3 with Python's `ssl` as the
//! client. With TLS both owners run the proxy's TLS session
//! (`dpuproxy_tls::ServerSession`: OpenSSL's handshake over memory buffers,
//! our record layer), and its state (traffic secrets, sequence numbers,
//! buffered records) moves with the TCP state; the client must see no alert.
//!
//! Needs root, iproute2, python3 and /dev/net/tun; without them it is
//! skipped with a loud message, unless `DPUPROXY_REQUIRE_NETNS=1` (CI).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration as StdDuration, Instant as StdInstant};

use dpuproxy_kernel::handoff::{to_kernel, to_userspace};
use dpuproxy_kernel::repair::{self, RepairWindow, TcpState};
use dpuproxy_tcp::smoltcp::phy::{Device, Medium, RxToken, TunTapInterface, TxToken};
use dpuproxy_tcp::smoltcp::wire::{EthernetAddress, HardwareAddress, Ipv4Address, Ipv4Cidr};
use dpuproxy_tcp::wire::{self, WirePort};
use dpuproxy_tcp::{ConnId, Instant, SocketConfig, Stack, StackConfig, TcpError};
use dpuproxy_tls::session::Step;
use dpuproxy_tls::{
    CipherSuite, HandshakeConfig, Limits, RecordState, Secret, SecretMaterial, Secrets,
    ServerSession, SessionState, Side,
};

const HELPER_ENV: &str = "DPUPROXY_HANDOFF_KERNEL_OWNER";
/// Set for the TLS run: the directory with cert.pem and key.pem.
const CERT_ENV: &str = "DPUPROXY_HANDOFF_CERTS";
const PORT: u16 = 7000;
const TOTAL: usize = 3 * 1024 * 1024;
const DEADLINE: StdDuration = StdDuration::from_secs(60);

const PEER: &str = r#"
import socket, sys, random, time, select
ip, total, tls = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "tls"
s = socket.create_connection((ip, 7000), timeout=30)
again = (BlockingIOError,)
if tls:
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s = ctx.wrap_socket(s)
    again += (ssl.SSLWantReadError, ssl.SSLWantWriteError)
port = s.getsockname()[1]
print("PORT", port, flush=True)
data = random.Random(5).randbytes(total)
got = bytearray(); err = []
# One thread for both directions: an SSL socket must not be read and
# written from two threads at once (OpenSSL 3 then sends broken records).
# Writes are paced (32 KiB every 20 ms), reads taken whenever they come.
s.setblocking(False)
sent, chunk_end, next_send = 0, 0, time.monotonic()
deadline = time.monotonic() + 50
try:
    while len(got) < total and not err and time.monotonic() < deadline:
        now = time.monotonic()
        if sent == chunk_end < total and now >= next_send:
            chunk_end, next_send = min(sent + 32768, total), now + 0.02
        writing = sent < chunk_end
        r, w, _ = select.select([s], [s] if writing else [], [], 0.02)
        if r or (tls and s.pending()):
            try:
                while True:
                    b = s.recv(65536)
                    if not b:
                        err.append("eof")
                        break
                    got.extend(b)
                    if not (tls and s.pending()):
                        break
            except again:
                pass
        if writing and (w or tls):
            try:
                sent += s.send(data[sent:chunk_end])
            except again:
                pass
except Exception as e:
    err.append(repr(e))
print("DONE", len(got), "OK" if bytes(got) == data else "BAD", "PORT=%d" % port, "ERR=" + ";".join(err), flush=True)
s.close()
"#;

fn main() {
    if let Ok(ip) = std::env::var(HELPER_ENV) {
        let tls = std::env::var(CERT_ENV).ok().map(|dir| {
            let dir = std::path::PathBuf::from(dir);
            dpuproxy_kernel::handshake_config(&dir.join("cert.pem"), &dir.join("key.pem")).unwrap()
        });
        kernel_owner(&ip, tls);
        return;
    }
    for tls in [false, true] {
        moved_between_kernel_and_userspace_while_streaming(tls);
        println!("test moved_between_kernel_and_userspace_while_streaming (tls: {tls}) ... ok");
    }
}

// ---------------------------------------------------------------- state text

/// The state line: TCP fields, the TLS session's fields (or `-`), the
/// echo's unwritten bytes.
fn encode(s: &TcpState, tls: Option<&SessionState>, app: &[u8]) -> String {
    format!(
        "{} {} {}",
        encode_tcp(s),
        tls.map_or("-".into(), encode_tls),
        hex(app)
    )
}

fn decode(line: &str) -> (TcpState, Option<SessionState>, Vec<u8>) {
    let f: Vec<&str> = line.split(' ').collect();
    assert_eq!(f.len(), 21, "state line: {line}");
    (decode_tcp(&f[..19]), decode_tls(f[19]), unhex(f[20]))
}

/// One token: suite, secrets, sequence numbers, queued records, flags,
/// buffers (comma-separated).
fn encode_tls(t: &SessionState) -> String {
    let r = &t.records;
    let material = match &r.secrets.material {
        SecretMaterial::Tls13 { client, server } => {
            format!("13:{}:{}", hex(client.as_bytes()), hex(server.as_bytes()))
        }
        SecretMaterial::Tls12 { .. } => panic!("the peer negotiates TLS 1.3"),
    };
    [
        r.secrets.suite.iana().to_string(),
        material,
        r.secrets.tx_seq.to_string(),
        r.secrets.rx_seq.to_string(),
        hex(&r.pending),
        hex(&r.partial_handshake),
        u8::from(r.key_update_answer_queued).to_string(),
        u8::from(r.peer_closed).to_string(),
        u8::from(r.closed_for_writing).to_string(),
        hex(&t.inbuf),
        hex(&t.outbuf),
    ]
    .join(",")
}

fn decode_tls(token: &str) -> Option<SessionState> {
    if token == "-" {
        return None;
    }
    let f: Vec<&str> = token.split(',').collect();
    assert_eq!(f.len(), 11, "tls token: {token}");
    let m: Vec<&str> = f[1].split(':').collect();
    assert_eq!(m[0], "13");
    let secret = |h: &str| Secret::new(&unhex(h)).unwrap();
    let secrets = Secrets {
        side: Side::Server,
        suite: CipherSuite::from_iana(f[0].parse().unwrap()).unwrap(),
        material: SecretMaterial::Tls13 {
            client: secret(m[1]),
            server: secret(m[2]),
        },
        tx_seq: f[2].parse().unwrap(),
        rx_seq: f[3].parse().unwrap(),
    };
    Some(SessionState {
        records: RecordState {
            secrets,
            pending: unhex(f[4]),
            partial_handshake: unhex(f[5]),
            key_update_answer_queued: f[6] == "1",
            peer_closed: f[7] == "1",
            closed_for_writing: f[8] == "1",
            stats: Default::default(),
        },
        inbuf: unhex(f[9]),
        outbuf: unhex(f[10]),
    })
}

fn encode_tcp(s: &TcpState) -> String {
    let w = s.window;
    format!(
        "{} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {}",
        s.local,
        s.peer,
        s.send_seq,
        s.recv_seq,
        hex(&s.send_queue),
        s.unsent,
        hex(&s.recv_queue),
        s.mss,
        s.wscale.map_or("-".into(), |(a, b)| format!("{a},{b}")),
        u8::from(s.sack),
        u8::from(s.timestamps),
        s.timestamp,
        w.snd_wl1,
        w.snd_wnd,
        w.max_window,
        w.rcv_wnd,
        w.rcv_wup,
        s.buffers.0,
        s.buffers.1,
    )
}

fn decode_tcp(f: &[&str]) -> TcpState {
    let n = |i: usize| f[i].parse::<u32>().unwrap();
    TcpState {
        local: f[0].parse::<SocketAddr>().unwrap(),
        peer: f[1].parse::<SocketAddr>().unwrap(),
        send_seq: n(2),
        recv_seq: n(3),
        send_queue: unhex(f[4]),
        unsent: f[5].parse().unwrap(),
        recv_queue: unhex(f[6]),
        mss: n(7),
        wscale: (f[8] != "-").then(|| {
            let (a, b) = f[8].split_once(',').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        }),
        sack: f[9] == "1",
        timestamps: f[10] == "1",
        timestamp: n(11),
        window: RepairWindow {
            snd_wl1: n(12),
            snd_wnd: n(13),
            max_window: n(14),
            rcv_wnd: n(15),
            rcv_wup: n(16),
        },
        buffers: (n(17), n(18)),
    }
}

fn hex(b: &[u8]) -> String {
    if b.is_empty() {
        return "-".into();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    if s == "-" {
        return Vec::new();
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

// ------------------------------------------------------ the kernel owner (M)

/// Runs inside namespace M. Lines on stdout starting with `@` are the
/// protocol; commands come on stdin: `capture`, `restore <state>`, `quit`.
/// With `tls`, the connection runs the proxy's TLS session over the socket.
fn kernel_owner(ip: &str, tls: Option<HandshakeConfig>) {
    let listener = TcpListener::bind((ip, PORT)).unwrap();
    println!("@READY");
    let (cmd_tx, cmds) = channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if cmd_tx.send(line).is_err() {
                break;
            }
        }
    });
    let (stream, _) = listener.accept().unwrap();
    stream.set_nonblocking(true).unwrap();
    println!("@ACCEPTED");
    let mut session = tls.as_ref().map(|cfg| ServerSession::new(cfg).unwrap());
    let mut announced = session.is_none();
    if announced {
        println!("@ESTABLISHED");
    }
    let mut conn = Some(stream);
    // Plaintext read and not yet echoed.
    let mut app: Vec<u8> = Vec::new();
    // Plain mode: bytes for the socket that it has not taken yet.
    let mut wire_out: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 65536];
    let started = StdInstant::now();
    while started.elapsed() < DEADLINE {
        match cmds.try_recv() {
            Ok(cmd) if cmd == "capture" => {
                let s = conn.take().expect("capture without a connection");
                let tls_state = session.as_ref().map(|t| t.snapshot().expect("established"));
                let state = repair::capture(&s).unwrap();
                // Closed in repair mode: nothing reaches the peer.
                drop(s);
                app.append(&mut wire_out);
                println!("@STATE {}", encode(&state, tls_state.as_ref(), &app));
                app.clear();
                session = None;
            }
            Ok(cmd) if cmd.starts_with("restore ") => {
                let (state, tls_state, carried) = decode(&cmd["restore ".len()..]);
                let restored = repair::restore(&state).unwrap();
                restored.stream.set_nonblocking(true).unwrap();
                match tls_state {
                    Some(mut t) => {
                        // TCP bytes the new socket did not take yet go first.
                        let mut out = restored.pending;
                        out.append(&mut t.outbuf);
                        t.outbuf = out;
                        session = Some(ServerSession::resume(&t, Limits::default()).unwrap());
                    }
                    None => wire_out = restored.pending,
                }
                app = carried;
                conn = Some(restored.stream);
                println!("@RESTORED");
            }
            Ok(cmd) if cmd == "quit" => return,
            Ok(cmd) => panic!("unknown command {cmd}"),
            Err(_) => {}
        }
        let Some(s) = conn.as_mut() else {
            std::thread::sleep(StdDuration::from_micros(200));
            continue;
        };
        let mut idle = true;
        let room = session
            .as_ref()
            .map_or(app.len() < 1 << 20, |t| !t.inbuf_full());
        if room {
            match s.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    match session.as_mut() {
                        Some(t) => t.inbuf().extend_from_slice(&buf[..n]),
                        None => app.extend_from_slice(&buf[..n]),
                    }
                    idle = false;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("kernel owner read: {e}"),
            }
        }
        if let Some(t) = session.as_mut() {
            if !t.is_established() {
                assert_ne!(t.handshake(), Step::Failed, "TLS handshake failed");
            }
            if t.is_established() {
                if !announced {
                    announced = true;
                    println!("@ESTABLISHED");
                }
                let opened = t.open(&mut |d| app.extend_from_slice(d));
                assert!(!opened.error, "TLS record error");
                if opened.close_notify {
                    return;
                }
                if !app.is_empty() && !t.outbuf_full() {
                    t.seal(&app).unwrap();
                    app.clear();
                }
            }
        } else {
            wire_out.append(&mut app);
        }
        let pending: &[u8] = match session.as_ref() {
            Some(t) => t.pending_out(),
            None => &wire_out,
        };
        if !pending.is_empty() {
            match s.write(pending) {
                Ok(n) => {
                    match session.as_mut() {
                        Some(t) => t.consume_out(n),
                        None => {
                            wire_out.drain(..n);
                        }
                    }
                    idle = false;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("kernel owner write: {e}"),
            }
        }
        if idle {
            std::thread::sleep(StdDuration::from_micros(200));
        }
    }
    panic!("kernel owner ran past its deadline");
}

// ------------------------------------------------------------- the harness

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Removes both namespaces (and with them the taps); kills the children.
struct Topology {
    namespaces: Vec<String>,
    /// Removed with their namespace, or by name if the move into it failed.
    taps: Vec<String>,
    children: Vec<Child>,
}

impl Drop for Topology {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        for tap in &self.taps {
            let _ = Command::new("ip").args(["link", "del", tap]).output();
        }
    }
}

/// A tap opened here, then moved into `ns` with `addr` (and `mac`).
fn tap_in(ns: &str, name: &str, addr: &str, mac: Option<&str>) -> TunTapInterface {
    let _ = Command::new("ip").args(["link", "del", name]).output();
    run("ip", &["tuntap", "add", "dev", name, "mode", "tap"]);
    let tap = TunTapInterface::new(name, Medium::Ethernet).unwrap();
    run("ip", &["link", "set", name, "netns", ns]);
    if let Some(mac) = mac {
        run("ip", &["-n", ns, "link", "set", name, "address", mac]);
    }
    run("ip", &["-n", ns, "addr", "add", addr, "dev", name]);
    run("ip", &["-n", ns, "link", "set", "lo", "up"]);
    run("ip", &["-n", ns, "link", "set", name, "up"]);
    tap
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

/// Who gets the connection's frames from P.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Kernel,
    Userspace,
    Moving,
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

/// An IPv4 TCP frame to our port 7000 (from P).
fn for_connection(frame: &[u8]) -> bool {
    frame.len() >= 14 + 20 + 4 && frame[12..14] == [0x08, 0x00] && frame[14 + 9] == 6 && {
        let ihl = usize::from(frame[14] & 0x0f) * 4;
        frame.len() >= 14 + ihl + 4
            && u16::from_be_bytes([frame[14 + ihl + 2], frame[14 + ihl + 3]]) == PORT
    }
}

/// The TCP flags byte of an IPv4 TCP frame.
fn tcp_flags(frame: &[u8]) -> Option<u8> {
    if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] || frame[14 + 9] != 6 {
        return None;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    frame.get(14 + ihl + 13).copied()
}

/// The source port of a SYN without ACK (a new connection's first segment).
fn syn_source_port(frame: &[u8]) -> Option<u16> {
    let flags = tcp_flags(frame)?;
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    (flags & 0x12 == 0x02).then(|| u16::from_be_bytes([frame[14 + ihl], frame[14 + ihl + 1]]))
}

fn is_rst(frame: &[u8]) -> bool {
    tcp_flags(frame).is_some_and(|f| f & 0x04 != 0)
}

fn is_arp(frame: &[u8]) -> bool {
    frame.len() >= 14 && frame[12..14] == [0x08, 0x06]
}

struct Rig {
    tap_p: TunTapInterface,
    tap_m: TunTapInterface,
    /// The wire end the steering uses; the stack has the other.
    to_stack: WirePort,
    stack_port: WirePort,
    stack: Stack,
    owner: Owner,
    conn: Option<ConnId>,
    /// The connection's TLS session while the userspace stack owns it (TLS
    /// run).
    session: Option<ServerSession>,
    /// The userspace echo's bytes read and not yet written back.
    app: Vec<u8>,
    epoch: StdInstant,
    dropped: usize,
    /// Source ports of every SYN the peer sent to our port: one connection,
    /// never a reconnect.
    syn_ports: std::collections::BTreeSet<u16>,
    /// RSTs sent to the peer by either owner.
    resets: usize,
}

impl Rig {
    fn now(&self) -> Instant {
        Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    /// Move frames one round: P's to their owner, M's and the stack's to P;
    /// run the stack and the userspace echo.
    fn pump(&mut self) -> bool {
        let mut worked = false;
        while let Some(f) = read_frame(&mut self.tap_p) {
            worked = true;
            if is_arp(&f) {
                write_frame(&mut self.tap_m, &f);
                write_frame(&mut self.to_stack, &f);
            } else if for_connection(&f) {
                if let Some(port) = syn_source_port(&f) {
                    self.syn_ports.insert(port);
                }
                match self.owner {
                    Owner::Kernel => write_frame(&mut self.tap_m, &f),
                    Owner::Userspace => write_frame(&mut self.to_stack, &f),
                    Owner::Moving => self.dropped += 1,
                }
            } else {
                write_frame(&mut self.tap_m, &f);
            }
        }
        while let Some(f) = read_frame(&mut self.tap_m) {
            worked = true;
            self.resets += usize::from(is_rst(&f));
            write_frame(&mut self.tap_p, &f);
        }
        let now = self.now();
        self.stack.poll(now, &mut self.stack_port);
        while self.stack.poll_event().is_some() {}
        if let Some(c) = self.conn {
            match self.session.as_mut() {
                None => {
                    while self.app.len() < 1 << 20 {
                        let mut buf = [0u8; 16384];
                        match self.stack.recv_slice(c, &mut buf) {
                            Ok(0) => break,
                            Ok(n) => self.app.extend_from_slice(&buf[..n]),
                            // The peer closes once it has every byte back.
                            Err(TcpError::Finished) => break,
                            Err(e) => panic!("userspace echo read: {e}"),
                        }
                    }
                    if !self.app.is_empty() {
                        let n = self.stack.send_slice(c, &self.app).unwrap();
                        self.app.drain(..n);
                    }
                }
                Some(t) => {
                    while !t.inbuf_full() {
                        let inbuf = t.inbuf();
                        let n = match self.stack.recv(c, |b| {
                            inbuf.extend_from_slice(b);
                            (b.len(), b.len())
                        }) {
                            Ok(n) => n,
                            // The peer closes once it has every byte back.
                            Err(TcpError::Finished) => 0,
                            Err(e) => panic!("userspace TLS read: {e}"),
                        };
                        if n == 0 {
                            break;
                        }
                    }
                    let app = &mut self.app;
                    let opened = t.open(&mut |d| app.extend_from_slice(d));
                    assert!(!opened.error, "TLS record error in the userspace owner");
                    if !self.app.is_empty() && !t.outbuf_full() {
                        t.seal(&self.app).unwrap();
                        self.app.clear();
                    }
                    if t.out_len() > 0 {
                        let n = self.stack.send_slice(c, t.pending_out()).unwrap();
                        t.consume_out(n);
                    }
                }
            }
            self.stack.egress(now, &mut self.stack_port);
        }
        while let Some(f) = read_frame(&mut self.to_stack) {
            worked = true;
            self.resets += usize::from(is_rst(&f));
            write_frame(&mut self.tap_p, &f);
        }
        worked
    }
}

/// Wait for the helper's next protocol line, pumping meanwhile.
fn expect(rig: &mut Rig, lines: &Receiver<String>, prefix: &str, started: StdInstant) -> String {
    loop {
        assert!(
            started.elapsed() < DEADLINE,
            "timed out waiting for {prefix}"
        );
        match lines.try_recv() {
            Ok(l) if l.starts_with(prefix) => return l[prefix.len()..].trim().to_string(),
            Ok(_) => {}
            Err(std::sync::mpsc::TryRecvError::Empty) => {
                if !rig.pump() {
                    std::thread::sleep(StdDuration::from_micros(100));
                }
            }
            Err(e) => panic!("kernel owner gone while waiting for {prefix}: {e}"),
        }
    }
}

fn send_cmd(stdin: &mut ChildStdin, cmd: &str) {
    stdin.write_all(cmd.as_bytes()).unwrap();
    stdin.write_all(b"\n").unwrap();
    stdin.flush().unwrap();
}

fn moved_between_kernel_and_userspace_while_streaming(tls: bool) {
    if !is_root()
        || !have("ip")
        || !have("python3")
        || !std::path::Path::new("/dev/net/tun").exists()
    {
        let why = "handoff_userspace needs root, iproute2, python3 and /dev/net/tun";
        assert!(
            std::env::var("DPUPROXY_REQUIRE_NETNS").as_deref() != Ok("1"),
            "{why} (DPUPROXY_REQUIRE_NETNS=1)"
        );
        eprintln!("\n!!! SKIPPED: {why} !!!\n");
        return;
    }
    let started = StdInstant::now();
    let pid = std::process::id();
    let x = (pid % 200 + 20) as u8;
    let (ns_p, ns_m) = (format!("dph{pid}p"), format!("dph{pid}m"));
    let mut topo = Topology {
        namespaces: vec![ns_p.clone(), ns_m.clone()],
        taps: vec![format!("dph{pid}P"), format!("dph{pid}M")],
        children: Vec::new(),
    };
    for ns in &topo.namespaces {
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
        run("ip", &["netns", "add", ns]);
    }
    let proxy_ip = format!("10.88.{x}.1");
    let mac = [0x02, 0, 0, 0x88, x, 1];
    let mac_text = format!("02:00:00:88:{x:02x}:01");
    let tap_p = tap_in(
        &ns_p,
        &format!("dph{pid}P"),
        &format!("10.88.{x}.2/24"),
        None,
    );
    let tap_m = tap_in(
        &ns_m,
        &format!("dph{pid}M"),
        &format!("{proxy_ip}/24"),
        Some(&mac_text),
    );
    // The userspace stack sends no timestamps, so connections it takes
    // must not have negotiated them.
    run(
        "ip",
        &[
            "netns",
            "exec",
            &ns_m,
            "sysctl",
            "-qw",
            "net.ipv4.tcp_timestamps=0",
        ],
    );

    let certs = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut owner = Command::new("ip");
    owner
        .args(["netns", "exec", &ns_m])
        .arg(&exe)
        .env(HELPER_ENV, &proxy_ip);
    if tls {
        dpuproxy_tls::certs::write_self_signed(
            &certs.path().join("cert.pem"),
            &certs.path().join("key.pem"),
            1,
        )
        .unwrap();
        owner.env(CERT_ENV, certs.path());
    }
    let mut owner = owner
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let owner_out = lines_of(owner.stdout.take().unwrap());
    let mut owner_in = owner.stdin.take().unwrap();
    topo.children.push(owner);

    let (stack_port, to_stack) = wire::pair(Medium::Ethernet, 1514, 4096);
    let mut cfg = StackConfig::new(
        HardwareAddress::Ethernet(EthernetAddress(mac)),
        Ipv4Cidr::new(proxy_ip.parse::<Ipv4Address>().unwrap(), 24),
    );
    cfg.seed = u64::from(pid);
    cfg.socket = SocketConfig {
        rx_buffer: 256 * 1024,
        tx_buffer: 256 * 1024,
        ..SocketConfig::default()
    };
    let epoch = StdInstant::now();
    let stack = Stack::new(cfg, stack_port.capabilities(), Instant::from_micros(0)).unwrap();
    let mut rig = Rig {
        tap_p,
        tap_m,
        to_stack,
        stack_port,
        stack,
        owner: Owner::Kernel,
        conn: None,
        session: None,
        app: Vec::new(),
        epoch,
        dropped: 0,
        syn_ports: Default::default(),
        resets: 0,
    };
    expect(&mut rig, &owner_out, "@READY", started);

    let mut peer = Command::new("ip")
        .args(["netns", "exec", &ns_p, "python3", "-c", PEER, &proxy_ip])
        .arg(TOTAL.to_string())
        .arg(if tls { "tls" } else { "plain" })
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let peer_out = lines_of(peer.stdout.take().unwrap());
    topo.children.push(peer);
    expect(&mut rig, &owner_out, "@ACCEPTED", started);
    // Moves start once the connection is established at both ends.
    expect(&mut rig, &owner_out, "@ESTABLISHED", started);

    let mut moves = 0;
    let mut pauses_us = Vec::new();
    let mut last_move = StdInstant::now();
    let mut peer_lines = Vec::new();
    let done = loop {
        assert!(
            started.elapsed() < DEADLINE,
            "timed out; peer said {peer_lines:?}"
        );
        if let Ok(l) = peer_out.try_recv() {
            if l.starts_with("DONE") {
                break l;
            }
            peer_lines.push(l);
        }
        if last_move.elapsed() > StdDuration::from_millis(150) {
            let t0 = StdInstant::now();
            rig.owner = Owner::Moving;
            match rig.conn.take() {
                None => {
                    send_cmd(&mut owner_in, "capture");
                    let line = expect(&mut rig, &owner_out, "@STATE ", started);
                    let (state, tls_state, app) = decode(&line);
                    assert_eq!(tls_state.is_some(), tls);
                    let carried = to_userspace(&state).unwrap();
                    rig.conn = Some(rig.stack.import(&carried, None).unwrap());
                    rig.session =
                        tls_state.map(|t| ServerSession::resume(&t, Limits::default()).unwrap());
                    rig.app = app;
                    rig.owner = Owner::Userspace;
                }
                Some(c) => {
                    let carried = rig.stack.export(rig.now(), c).unwrap();
                    let app = std::mem::take(&mut rig.app);
                    let tls_state = rig.session.take().map(|t| t.snapshot().unwrap());
                    let line = encode(&to_kernel(&carried), tls_state.as_ref(), &app);
                    send_cmd(&mut owner_in, &format!("restore {line}"));
                    expect(&mut rig, &owner_out, "@RESTORED", started);
                    rig.owner = Owner::Kernel;
                    // Frames the stack had queued for the flow before the
                    // flip meet the hold (dropped); only then is it released.
                    let now = rig.now();
                    while rig.stack.poll(now, &mut rig.stack_port) > 0 {}
                    assert!(rig.stack.unhold(&carried.tuple));
                }
            }
            pauses_us.push(t0.elapsed().as_micros());
            moves += 1;
            last_move = StdInstant::now();
        }
        if !rig.pump() {
            std::thread::sleep(StdDuration::from_micros(100));
        }
    };
    // The kernel owner ends by itself when the peer closes a connection it
    // holds; otherwise on `quit` (so the pipe may already be closed).
    let _ = owner_in.write_all(b"quit\n");
    let owner_status = (0..500).find_map(|_| {
        let status = topo.children[0].try_wait().unwrap();
        if status.is_none() {
            std::thread::sleep(StdDuration::from_millis(10));
        }
        status
    });
    assert!(
        owner_status.is_some_and(|s| s.success()),
        "kernel owner: {owner_status:?}"
    );
    let f: Vec<&str> = done.split(' ').collect();
    println!(
        "handoff_userspace (tls: {tls}): {moves} moves, pauses (µs) {pauses_us:?}, {} frames dropped in flight; peer: {done}",
        rig.dropped
    );
    assert_eq!(f[1], TOTAL.to_string(), "echo incomplete: {done}");
    assert_eq!(f[2], "OK", "echo differs: {done}");
    // One connection for the whole run (a reconnect would show a second
    // SYN from another port), and no RST from either owner.
    assert_eq!(
        rig.syn_ports.len(),
        1,
        "SYNs from ports {:?}",
        rig.syn_ports
    );
    assert_eq!(rig.resets, 0, "resets sent to the peer");
    assert_eq!(f[4], "ERR=", "peer errors: {done}");
    assert!(moves >= 4, "only {moves} moves before the stream ended");
    drop(topo);
}
