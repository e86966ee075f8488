//! Interop with the Linux kernel's TCP over a tap device.
//!
//! Topology: a tap device is created in the root namespace and opened by this
//! test (smoltcp's `TunTapInterface`); then the device is moved into a fresh
//! network namespace and given 10.77.<x>.2/24 there. The test process keeps
//! the file descriptor, so our stack (10.77.<x>.1, its own MAC) talks to the
//! kernel in the namespace, and nothing reaches the root namespace's stack.
//! A Python peer runs in the namespace:
//! 1. kernel as server: our stack connects, sends 10 MB, the peer echoes them
//!    (both directions at once) and prints the CRC-32 of what it received;
//! 2. kernel as client: it connects to our listener, sends 10 MB of random
//!    bytes, our stack echoes, the peer checks the echo and prints its CRC-32.
//!
//! Needs root, `ip` (iproute2), `python3` and /dev/net/tun; without them it
//! is skipped with a loud message, unless `DPUPROXY_REQUIRE_NETNS=1` (CI),
//! which makes that a failure. The namespace and the tap are removed by a
//! drop guard, also on failure; every wait is bounded.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration as StdDuration, Instant as StdInstant};

use dpuproxy_tcp::smoltcp::phy::{self, Device, Medium, TunTapInterface};
use dpuproxy_tcp::smoltcp::wire::{EthernetAddress, HardwareAddress, Ipv4Address, Ipv4Cidr};
use dpuproxy_tcp::{ConnId, Duration, Event, Instant, SocketConfig, Stack, StackConfig, TcpError};

const TOTAL: usize = 10 * 1024 * 1024;

const PEER: &str = r#"
import socket, sys, threading, zlib, random
ours, theirs, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((theirs, 7001)); srv.listen(1)
print("READY", flush=True)
srv.settimeout(60)
c, _ = srv.accept(); c.settimeout(60)
crc, n = 0, 0
while n < total:
    b = c.recv(65536)
    if not b: break
    crc = zlib.crc32(b, crc); n += len(b)
    c.sendall(b)
c.shutdown(socket.SHUT_WR)
rest = c.recv(1)
c.close()
print("ECHOED %d %08x %d" % (n, crc, len(rest)), flush=True)
data = random.Random(7).randbytes(total)
s = socket.create_connection((ours, 7002), timeout=60)
got = []
def reader():
    while True:
        b = s.recv(65536)
        if not b: break
        got.append(b)
t = threading.Thread(target=reader); t.start()
s.sendall(data); s.shutdown(socket.SHUT_WR)
t.join(60)
back = b"".join(got)
print("SENT %d %08x %s" % (total, zlib.crc32(data), "ECHO_OK" if back == data else "ECHO_BAD %d" % len(back)), flush=True)
"#;

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

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Removes the namespace and the tap; kills the peer.
struct Topology {
    ns: String,
    tap: String,
    peer: Option<Child>,
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Some(mut p) = self.peer.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        let _ = ip(&["netns", "del", &self.ns]);
        let _ = ip(&["link", "del", &self.tap]);
    }
}

fn crc32(crc: u32, data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    let mut c = !crc;
    for &b in data {
        c = t[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

fn pattern(off: usize) -> u8 {
    let x = (off as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (x >> 56) as u8 ^ (off >> 12) as u8
}

#[test]
fn ten_megabytes_each_way_with_the_kernel() {
    if !is_root()
        || !have("ip")
        || !have("python3")
        || !std::path::Path::new("/dev/net/tun").exists()
    {
        let why = "kernel_interop needs root, iproute2, python3 and /dev/net/tun";
        assert!(
            std::env::var("DPUPROXY_REQUIRE_NETNS").as_deref() != Ok("1"),
            "{why} (DPUPROXY_REQUIRE_NETNS=1)"
        );
        eprintln!("\n!!! SKIPPED: {why} !!!\n");
        return;
    }
    let pid = std::process::id();
    let x = (pid % 200 + 20) as u8;
    let ours = Ipv4Address::new(10, 77, x, 1);
    let theirs = Ipv4Address::new(10, 77, x, 2);
    let mut topo = Topology {
        ns: format!("dpt{pid}"),
        tap: format!("dpt{pid}t"),
        peer: None,
    };
    // Leftovers of an earlier run with the same pid.
    let _ = ip(&["netns", "del", &topo.ns]);
    let _ = ip(&["link", "del", &topo.tap]);
    ip(&["netns", "add", &topo.ns]).unwrap();
    ip(&["tuntap", "add", "dev", &topo.tap, "mode", "tap"]).unwrap();
    let mut tap = TunTapInterface::new(&topo.tap, Medium::Ethernet).unwrap();
    ip(&["link", "set", &topo.tap, "netns", &topo.ns]).unwrap();
    let cidr = format!("{theirs}/24");
    ip(&["-n", &topo.ns, "addr", "add", &cidr, "dev", &topo.tap]).unwrap();
    ip(&["-n", &topo.ns, "link", "set", "lo", "up"]).unwrap();
    ip(&["-n", &topo.ns, "link", "set", &topo.tap, "up"]).unwrap();

    let mut peer = Command::new("ip")
        .args(["netns", "exec", &topo.ns, "python3", "-c", PEER])
        .arg(ours.to_string())
        .arg(theirs.to_string())
        .arg(TOTAL.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(peer.stdout.take().unwrap());
    let mut stderr = peer.stderr.take().unwrap();
    topo.peer = Some(peer);
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    if line.trim() != "READY" {
        let mut e = String::new();
        let _ = stderr.read_to_string(&mut e);
        panic!("peer did not start: {line:?} {e}");
    }

    let start = StdInstant::now();
    let clock = |s: StdInstant| Instant::from_micros(s.elapsed().as_micros() as i64);
    let mut cfg = StackConfig::new(
        HardwareAddress::Ethernet(EthernetAddress([0x02, 0, 0, 0x77, x, 1])),
        Ipv4Cidr::new(ours, 24),
    );
    cfg.seed = u64::from(pid);
    // Above 64 KiB: window scaling is negotiated with Linux.
    cfg.socket = SocketConfig {
        rx_buffer: 256 * 1024,
        tx_buffer: 256 * 1024,
        ..SocketConfig::default()
    };
    let mut stack = Stack::new(cfg, tap.capabilities(), clock(start)).unwrap();
    let l = stack.listen(7002, 4).unwrap();
    let c = stack.connect(theirs, 7001).unwrap();

    // Phase 1 state: our stream out, its echo in.
    let (mut sent, mut echoed, mut bad1) = (0usize, 0usize, 0usize);
    let mut our_crc = 0u32;
    let mut c_done = false;
    // Phase 2 state: the kernel's stream in, echoed back.
    let mut s: Option<ConnId> = None;
    let mut pending: Vec<u8> = Vec::new();
    let (mut in_total, mut in_crc, mut s_done) = (0usize, 0u32, false);
    let mut fin_sent = false;

    let deadline = StdDuration::from_secs(120);
    let mut iterations = 0u64;
    while !(c_done && s_done) {
        iterations += 1;
        assert!(
            start.elapsed() < deadline && iterations < 50_000_000,
            "stuck: sent {sent} echoed {echoed} in {in_total} stats {:?}",
            stack.stats()
        );
        let now = clock(start);
        stack.poll(now, &mut tap);
        while let Some(e) = stack.poll_event() {
            match e {
                Event::Accept(id) if id == l => s = stack.accept(l).unwrap(),
                Event::Reset(id) => panic!("reset on {id:?}"),
                _ => {}
            }
        }
        // Phase 1: send the pattern, check the echo.
        if !c_done
            && stack
                .state(c)
                .is_ok_and(|st| st != dpuproxy_tcp::State::SynSent)
        {
            while sent < TOTAL {
                let n = stack
                    .send(c, |buf| {
                        let n = buf.len().min(TOTAL - sent);
                        for (i, b) in buf[..n].iter_mut().enumerate() {
                            *b = pattern(sent + i);
                        }
                        our_crc = crc32(our_crc, &buf[..n]);
                        (n, n)
                    })
                    .unwrap();
                if n == 0 {
                    break;
                }
                sent += n;
            }
            loop {
                match stack.recv(c, |buf| {
                    let bad = buf
                        .iter()
                        .enumerate()
                        .filter(|(i, b)| **b != pattern(echoed + i))
                        .count();
                    (buf.len(), (buf.len(), bad))
                }) {
                    Ok((0, _)) => break,
                    Ok((n, bad)) => {
                        echoed += n;
                        bad1 += bad;
                    }
                    Err(TcpError::Finished) => {
                        stack.close(c).unwrap();
                        c_done = true;
                        break;
                    }
                    Err(e) => panic!("phase 1: {e}"),
                }
            }
        }
        // Phase 2: echo what the kernel sends.
        if let Some(sid) = s.filter(|_| !s_done) {
            loop {
                let r = stack.recv(sid, |buf| {
                    in_crc = crc32(in_crc, buf);
                    pending.extend_from_slice(buf);
                    (buf.len(), buf.len())
                });
                match r {
                    Ok(0) => break,
                    Ok(n) => in_total += n,
                    Err(TcpError::Finished) => {
                        if pending.is_empty() && !fin_sent {
                            stack.close(sid).unwrap();
                            fin_sent = true;
                            s_done = true;
                        }
                        break;
                    }
                    Err(e) => panic!("phase 2: {e}"),
                }
            }
            if !pending.is_empty() {
                let n = stack.send_slice(sid, &pending).unwrap();
                pending.drain(..n);
            }
        }
        let wait = stack
            .poll_at()
            .map(|t| t - clock(start).min(t))
            .unwrap_or(Duration::from_millis(5))
            .min(Duration::from_millis(5));
        if wait > Duration::ZERO {
            phy::wait(tap.as_raw_fd(), Some(wait)).unwrap();
        }
    }
    // Let the last ACKs and FINs go out before the peer is read.
    let settle = StdInstant::now();
    while settle.elapsed() < StdDuration::from_millis(300) {
        stack.poll(clock(start), &mut tap);
        phy::wait(tap.as_raw_fd(), Some(Duration::from_millis(2))).unwrap();
    }
    let mut report = String::new();
    out.read_to_string(&mut report).unwrap();
    let mut err = String::new();
    let _ = stderr.read_to_string(&mut err);
    let _ = topo.peer.take().map(|mut p| p.wait());
    eprintln!(
        "kernel interop: {:.2} s, peer said:\n{report}{err}stack {:?}",
        start.elapsed().as_secs_f64(),
        stack.stats()
    );

    // Phase 1: the kernel got exactly our bytes; we got them back unchanged.
    assert_eq!(sent, TOTAL);
    assert_eq!(echoed, TOTAL);
    assert_eq!(bad1, 0);
    assert!(
        report.contains(&format!("ECHOED {TOTAL} {our_crc:08x} 0")),
        "CRC of what the kernel received: {report}"
    );
    // Phase 2: we got exactly the kernel's bytes; it got them back unchanged.
    assert_eq!(in_total, TOTAL);
    assert!(
        report.contains(&format!("SENT {TOTAL} {in_crc:08x} ECHO_OK")),
        "CRC of what we received: {in_crc:08x}: {report}"
    );
}
