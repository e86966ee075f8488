//! The XDP flow steering on a real `net_af_xdp` port: one interface, one
//! address, and each TCP flow delivered to DPDK or to the kernel (or held)
//! as its owner entry says, flipped while the flow is established.
//!
//! Topology (created here, removed by a drop guard even on failure):
//! namespace M holds veth `M` with 10.89.0.1/24, which DPDK drives through
//! `net_af_xdp` with our program *and* the kernel owns as an address (a
//! listener on :7100); namespace P holds the peer end with 10.89.0.2/24.
//! This test's thread enters M before the EAL starts (DPDK's sockets and
//! the listener live there); client sockets are opened from a thread that
//! enters P. Every wait is bounded.
//!
//! Needs root and a DPDK build; without them it says so and returns,
//! unless `DPUPROXY_REQUIRE_DPDK=1` (CI), which makes that a failure.
#![cfg(xdp_steer)]

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use dpuproxy_dp::xdp::{Flow, FlowSteer, Owner, ProgramFile, with_xdp_prog};
use dpuproxy_dp::{Eal, Mbuf, Mempool, Port, PortConfig};

const PROXY: &str = "10.89.0.1";
const PEER: &str = "10.89.0.2";
const PORT: u16 = 7100;

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        .unwrap_or(false)
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespaces M and P with the veth pair between them; removed on drop.
struct Topo {
    m: String,
    p: String,
    dev: String,
}

impl Topo {
    fn create() -> Topo {
        let pid = std::process::id();
        let t = Topo {
            m: format!("dpx{pid}m"),
            p: format!("dpx{pid}p"),
            dev: format!("dx{pid}m"),
        };
        let peer_dev = format!("dx{pid}p");
        sh(&["ip", "netns", "add", &t.m]);
        sh(&["ip", "netns", "add", &t.p]);
        sh(&[
            "ip", "link", "add", &t.dev, "netns", &t.m, "type", "veth", "peer", "name", &peer_dev,
            "netns", &t.p,
        ]);
        for (ns, dev, ip) in [(&t.m, &t.dev, PROXY), (&t.p, &peer_dev, PEER)] {
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                dev,
            ]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
            // Kernel-sent TCP must reach DPDK with full checksums.
            sh(&["ip", "netns", "exec", ns, "ethtool", "-K", dev, "tx", "off"]);
        }
        t
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        for ns in [&self.m, &self.p] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Move this thread into namespace `ns`.
fn enter(ns: &str) {
    let f = File::open(format!("/var/run/netns/{ns}")).expect("namespace file");
    // SAFETY: setns on a valid namespace fd affects only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// Connect from namespace P (a thread of its own enters it); the socket
/// stays in P wherever it is used.
fn connect_from(p: &str, timeout: Duration) -> std::io::Result<TcpStream> {
    let p = p.to_string();
    std::thread::spawn(move || {
        enter(&p);
        let to: SocketAddrV4 = format!("{PROXY}:{PORT}").parse().unwrap();
        TcpStream::connect_timeout(&to.into(), timeout)
    })
    .join()
    .unwrap()
}

/// A TCP frame's (source port, destination port, flags, payload), IPv4
/// over Ethernet only.
fn tcp_of(frame: &[u8]) -> Option<(u16, u16, u8, &[u8])> {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] || frame[23] != 6 {
        return None;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    let t = 14 + ihl;
    if frame.len() < t + 20 || total < ihl + 20 {
        return None;
    }
    let doff = usize::from(frame[t + 12] >> 4) * 4;
    let end = (14 + total).min(frame.len());
    let payload = frame.get(t + doff..end).unwrap_or(&[]);
    Some((
        u16::from_be_bytes([frame[t], frame[t + 1]]),
        u16::from_be_bytes([frame[t + 2], frame[t + 3]]),
        frame[t + 13],
        payload,
    ))
}

/// Poll DPDK's rx queue for up to `wait`: the TCP frames to our port, as
/// (source port, flags, payload).
fn dpdk_frames(port: &Port<'_>, wait: Duration) -> Vec<(u16, u8, Vec<u8>)> {
    let mut got = Vec::new();
    let mut rx: Vec<Mbuf<'_>> = Vec::with_capacity(32);
    let end = Instant::now() + wait;
    while Instant::now() < end {
        if port.rx_burst(0, &mut rx, 32) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        for m in rx.drain(..) {
            if let Some((sport, dport, flags, payload)) = tcp_of(m.data())
                && dport == PORT
            {
                got.push((sport, flags, payload.to_vec()));
            }
        }
    }
    got
}

/// Read what the kernel delivers on `s` within `wait` (non-blocking).
fn kernel_reads(s: &mut TcpStream, wait: Duration) -> Vec<u8> {
    s.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    let end = Instant::now() + wait;
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("kernel read: {e}"),
        }
    }
    got
}

fn accept_within(l: &TcpListener, wait: Duration) -> Option<TcpStream> {
    l.set_nonblocking(true).unwrap();
    let end = Instant::now() + wait;
    while Instant::now() < end {
        match l.accept() {
            Ok((s, _)) => return Some(s),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
    None
}

#[test]
fn flows_move_between_dpdk_and_the_kernel_on_one_interface() {
    if !is_root() {
        assert!(
            std::env::var("DPUPROXY_REQUIRE_DPDK").as_deref() != Ok("1"),
            "xdp_steer needs root, and DPUPROXY_REQUIRE_DPDK=1 forbids skipping"
        );
        eprintln!("xdp_steer: skipped: needs root");
        return;
    }
    let topo = Topo::create();
    enter(&topo.m);
    let program = ProgramFile::write(&std::env::temp_dir()).unwrap();
    let base: Vec<String> = format!(
        "-l 1 --no-huge -m 256 --no-shconf --file-prefix=dpx{} --no-telemetry --no-pci \
         --log-level=lib.eal:warning --vdev=net_af_xdp0,iface={},start_queue=0,queue_count=1",
        std::process::id(),
        topo.dev
    )
    .split_whitespace()
    .map(str::to_string)
    .collect();
    let (args, iface) = with_xdp_prog(&base, program.path()).unwrap();
    assert_eq!(iface, topo.dev);
    let eal = Eal::init(&args).expect("EAL with net_af_xdp and our program");
    let info = eal.ports()[0].clone();
    let pool = Mempool::new(&eal, "xdp", 8191, 64, None, info.socket).unwrap();
    let port = Port::open(info.id, &pool, &PortConfig::default()).expect("af_xdp port");
    let steer = FlowSteer::find(&topo.dev).expect("our program on the interface");
    assert_eq!(
        steer.default_owner().unwrap(),
        Owner::Kernel,
        "unset: kernel"
    );

    // 1. Default kernel: a connection reaches the kernel listener.
    let listener = TcpListener::bind(format!("{PROXY}:{PORT}")).unwrap();
    let mut client_a = connect_from(&topo.p, Duration::from_secs(5)).expect("connect A");
    let mut server_a =
        accept_within(&listener, Duration::from_secs(5)).expect("the kernel accepts A");
    let a = Flow {
        remote: match client_a.local_addr().unwrap() {
            std::net::SocketAddr::V4(v) => v,
            other => panic!("{other}"),
        },
        local: format!("{PROXY}:{PORT}").parse().unwrap(),
    };
    client_a.write_all(b"a1").unwrap();
    assert_eq!(
        kernel_reads(&mut server_a, Duration::from_millis(500)),
        b"a1"
    );
    server_a.write_all(b"s1").unwrap();
    let mut two = [0u8; 2];
    client_a
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client_a.read_exact(&mut two).unwrap();
    assert_eq!(&two, b"s1");

    // 2. Pin A to the kernel, make DPDK the default: a new connection's SYN
    // reaches DPDK (nobody answers it), A stays with the kernel.
    steer.set(&a, Owner::Kernel).unwrap();
    steer.set_default(Owner::Dpdk).unwrap();
    assert_eq!(steer.default_owner().unwrap(), Owner::Dpdk);
    let p = topo.p.clone();
    let b = std::thread::spawn(move || connect_from(&p, Duration::from_secs(2)));
    let frames = dpdk_frames(&port, Duration::from_millis(1500));
    assert!(
        frames
            .iter()
            .any(|(sport, flags, _)| *sport != a.remote.port() && flags & 0x02 != 0),
        "DPDK got the new connection's SYN: {frames:?}"
    );
    assert!(
        b.join().unwrap().is_err(),
        "the new connection must not complete (DPDK does not answer here)"
    );
    assert!(
        accept_within(&listener, Duration::from_millis(200)).is_none(),
        "the kernel must not see the new connection"
    );
    client_a.write_all(b"a2").unwrap();
    assert_eq!(
        kernel_reads(&mut server_a, Duration::from_millis(500)),
        b"a2"
    );

    // 3. Held: A's frames are dropped, nobody answers; back to the kernel,
    // TCP retransmits and the bytes arrive, the connection unharmed.
    let before = steer.stats().unwrap();
    steer.set(&a, Owner::Hold).unwrap();
    client_a.write_all(b"a3").unwrap();
    assert!(kernel_reads(&mut server_a, Duration::from_millis(300)).is_empty());
    assert!(
        steer.stats().unwrap().held > before.held,
        "held frames counted"
    );
    steer.set(&a, Owner::Kernel).unwrap();
    assert_eq!(kernel_reads(&mut server_a, Duration::from_secs(5)), b"a3");
    server_a.write_all(b"s2").unwrap();
    client_a.read_exact(&mut two).unwrap();
    assert_eq!(&two, b"s2", "no reset after the hold");

    // 4. A to DPDK: its next segment reaches the AF_XDP socket, not the
    // kernel.
    steer.set(&a, Owner::Dpdk).unwrap();
    client_a.write_all(b"a4").unwrap();
    let frames = dpdk_frames(&port, Duration::from_millis(1500));
    assert!(
        frames
            .iter()
            .any(|(sport, _, payload)| *sport == a.remote.port() && payload == b"a4"),
        "DPDK got A's segment: {frames:?}"
    );
    assert!(kernel_reads(&mut server_a, Duration::from_millis(100)).is_empty());

    // 5. Entries and counters.
    assert_eq!(steer.owner(&a).unwrap(), Some(Owner::Dpdk));
    steer.forget(&a).unwrap();
    steer.forget(&a).unwrap();
    assert_eq!(steer.owner(&a).unwrap(), None);
    assert!(steer.set_default(Owner::Hold).is_err());
    let s = steer.stats().unwrap();
    assert!(
        s.to_dpdk > 0 && s.to_kernel > 0 && s.held > 0,
        "every owner counted: {s:?}"
    );
    eprintln!("xdp_steer: {s:?}");

    drop(port);
    drop(pool);
    drop(eal);
    drop(program);
}
