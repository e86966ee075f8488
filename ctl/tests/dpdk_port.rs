//! `dpuproxy port` against real kernel peers: a network namespace holds the
//! kernel end (10.77.x.2/24, tx checksum offload off) and the DPDK port
//! answers ARP and ping for 10.77.x.1 over `net_af_packet`, `net_af_xdp`
//! (on a veth) and `net_tap` (DPDK's tap, inside the namespace).
//!
//! Needs root and a DPDK build. Without them the tests say so and return,
//! unless `DPUPROXY_REQUIRE_DPDK=1` (CI), which makes that a failure.
//! Names carry the pid; namespaces, veths and processes are removed by
//! Drop guards even when an assertion fails; every wait is bounded. The
//! DPDK poller runs on lcore 1 (`-l 1`) so core 0 stays free; the tests
//! take a lock so that only one poller spins at a time.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dpuproxy_hugepages as hp;

static ONE_POLLER: Mutex<()> = Mutex::new(());

fn lock() -> MutexGuard<'static, ()> {
    ONE_POLLER.lock().unwrap_or_else(|e| e.into_inner())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        .unwrap_or(false)
}

fn can_run(test: &str) -> bool {
    let missing = if !dpuproxy_dp::AVAILABLE {
        "this build has no DPDK"
    } else if !is_root() {
        "needs root"
    } else {
        return true;
    };
    assert!(
        std::env::var("DPUPROXY_REQUIRE_DPDK").as_deref() != Ok("1"),
        "{test}: {missing}, and DPUPROXY_REQUIRE_DPDK=1 forbids skipping"
    );
    eprintln!("{test}: skipped: {missing}");
    false
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

/// A namespace (and optionally a veth pair into it), removed on drop.
struct Topo {
    ns: String,
    veth_out: Option<String>,
}

impl Topo {
    fn ns(tag: &str) -> Topo {
        let ns = format!("dpt{}{tag}", std::process::id());
        sh(&["ip", "netns", "add", &ns]);
        Topo { ns, veth_out: None }
    }

    /// A veth pair: `<out>` stays here for DPDK, `<in>` goes into the
    /// namespace with `ip`/24.
    fn veth(tag: &str, ip: &str) -> (Topo, String) {
        let mut t = Topo::ns(tag);
        let out = format!("dp{}{tag}a", std::process::id());
        let inner = format!("dp{}{tag}b", std::process::id());
        sh(&[
            "ip", "link", "add", &out, "type", "veth", "peer", "name", &inner, "netns", &t.ns,
        ]);
        t.veth_out = Some(out.clone());
        sh(&["ip", "link", "set", &out, "up"]);
        sh(&["ethtool", "-K", &out, "tx", "off"]);
        t.kernel_end(&inner, ip);
        (t, out)
    }

    /// Address, up, and no tx checksum offload (else the kernel hands DPDK
    /// partial checksums).
    fn kernel_end(&self, dev: &str, ip: &str) {
        sh(&["ip", "-n", &self.ns, "addr", "add", ip, "dev", dev]);
        sh(&["ip", "-n", &self.ns, "link", "set", dev, "up"]);
        sh(&[
            "ip", "netns", "exec", &self.ns, "ethtool", "-K", dev, "tx", "off",
        ]);
    }

    fn exec(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).args(args);
        c
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        if let Some(v) = &self.veth_out {
            let _ = Command::new("ip").args(["link", "del", v]).output();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

/// The running `dpuproxy port`, killed on drop if still alive.
struct Proc {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn dpuproxy port");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (bounded) for a stdout line containing `needle`.
    fn wait_line(&mut self, needle: &str, within: Duration) -> String {
        let end = Instant::now() + within;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    println!("port> {l}");
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "no line with {needle:?} within {within:?}; got:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn terminate_and_wait(&mut self) -> std::process::ExitStatus {
        sh(&["kill", "-TERM", &self.child.id().to_string()]);
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < end, "no exit within 15 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Hugepages when enough are free (CI reserves them), else --no-huge.
fn memory_args(tag: &str) -> (String, bool) {
    let st = hp::detect().unwrap();
    match hp::advise(&st, 64 << 20) {
        hp::Advice::Hugepages { .. } => ("--in-memory".into(), true),
        hp::Advice::NoHuge { reason, .. } => {
            eprintln!("no hugepages for the test ({reason}); using --no-huge");
            (
                format!(
                    "--no-huge -m 256 --no-shconf --file-prefix=dpt{}{tag}",
                    std::process::id()
                ),
                false,
            )
        }
    }
}

fn free_2m() -> u64 {
    hp::detect()
        .unwrap()
        .pool(hp::PageSize::M2)
        .map_or(0, |p| p.free)
}

fn port_cmd(eal: &str, ip: &str) -> Vec<String> {
    vec![
        env!("CARGO_BIN_EXE_dpuproxy").to_string(),
        "port".into(),
        "--dpdk-eal".into(),
        eal.into(),
        "--ip".into(),
        ip.into(),
        // A bound: SIGTERM ends it well before.
        "--for".into(),
        "60".into(),
    ]
}

fn mac_of(up_line: &str) -> String {
    up_line
        .split_whitespace()
        .skip_while(|w| *w != "mac")
        .nth(1)
        .expect("mac in the up line")
        .to_string()
}

/// Pings 5 times from the namespace, checks the neighbour entry is the
/// port's MAC, stops the port with SIGTERM and checks its final counters.
struct Expect {
    huge: bool,
    free_before: u64,
    /// af_xdp keeps its UMEM rings' mbufs until the pool is freed.
    returns_mbufs_on_close: bool,
}

fn ping_and_stop(topo: &Topo, proc: &mut Proc, up: &str, ip: &str, expect: Expect) {
    let Expect {
        huge,
        free_before,
        returns_mbufs_on_close,
    } = expect;
    let out = topo
        .exec(&["ping", "-c", "5", "-i", "0.2", "-W", "2", "-w", "10", ip])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(
        text.contains("5 packets transmitted, 5 received"),
        "ping 5/5: {text}"
    );
    let neigh = topo.exec(&["ip", "neigh", "show", ip]).output().unwrap();
    let neigh = String::from_utf8_lossy(&neigh.stdout);
    assert!(
        neigh.contains(&mac_of(up)),
        "ARP resolved {ip} to the port's MAC {}: {neigh}",
        mac_of(up)
    );

    // At least one periodic report with the lcore counters arrived.
    proc.wait_line("busy_cycles", Duration::from_secs(5));
    let st = proc.terminate_and_wait();
    let last = proc.wait_line("final:", Duration::from_secs(5));
    assert!(st.success(), "clean exit on SIGTERM: {st:?}");
    assert!(
        last.contains("icmp echo requests 5 replies 5"),
        "counters: {last}"
    );
    assert!(last.contains("bad checksums 0"), "{last}");
    if returns_mbufs_on_close {
        assert!(
            last.contains("after close 0"),
            "every mbuf back in the pool: {last}"
        );
    }
    let arp_replies: u64 = last
        .split("arp requests ")
        .nth(1)
        .and_then(|s| s.split(" replies ").nth(1))
        .and_then(|s| s.split(';').next())
        .and_then(|s| s.trim().parse().ok())
        .expect("arp replies in the final line");
    assert!(arp_replies >= 1, "answered ARP: {last}");
    if huge {
        // --in-memory: no hugepage files; every page is back.
        // The kernel releases an XDP socket's pinned UMEM from a workqueue
        // after the process is gone: allow it a bounded moment.
        let end = Instant::now() + Duration::from_secs(10);
        while free_2m() != free_before && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(free_2m(), free_before, "hugepages returned after exit");
    }
}

fn veth_vdev(tag: &str, subnet: u8, returns_mbufs_on_close: bool, vdev: impl Fn(&str) -> String) {
    let _one = lock();
    let ip_local = format!("10.77.{subnet}.1");
    let (topo, out) = Topo::veth(tag, &format!("10.77.{subnet}.2/24"));
    let (mem, huge) = memory_args(tag);
    let free_before = free_2m();
    let eal = format!(
        "-l 1 {mem} --no-telemetry --iova-mode=va --no-pci {}",
        vdev(&out)
    );
    let argv = port_cmd(&eal, &format!("{ip_local}/24"));
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    let mut proc = Proc::spawn(cmd);
    let up = proc.wait_line(" up: mac ", Duration::from_secs(20));
    let expect = Expect {
        huge,
        free_before,
        returns_mbufs_on_close,
    };
    ping_and_stop(&topo, &mut proc, &up, &ip_local, expect);
}

#[test]
fn ping_over_af_packet() {
    if can_run("ping_over_af_packet") {
        veth_vdev("p", 11, true, |dev| {
            format!("--vdev=net_af_packet0,iface={dev}")
        });
    }
}

#[test]
fn ping_over_af_xdp() {
    if can_run("ping_over_af_xdp") {
        veth_vdev("x", 12, false, |dev| {
            format!("--vdev=net_af_xdp0,iface={dev},start_queue=0,queue_count=1")
        });
    }
}

#[test]
fn ping_over_tap() {
    if !can_run("ping_over_tap") {
        return;
    }
    let _one = lock();
    // DPDK creates the tap; running it inside the namespace puts the
    // kernel end there too.
    let topo = Topo::ns("t");
    let tap = format!("dp{}t", std::process::id());
    let (mem, huge) = memory_args("t");
    let free_before = free_2m();
    let eal =
        format!("-l 1 {mem} --no-telemetry --iova-mode=va --no-pci --vdev=net_tap0,iface={tap}");
    let mut cmd = topo.exec(
        &port_cmd(&eal, "10.77.13.1/24")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    cmd.env("PATH", std::env::var("PATH").unwrap_or_default());
    let mut proc = Proc::spawn(cmd);
    let up = proc.wait_line(" up: mac ", Duration::from_secs(20));
    topo.kernel_end(&tap, "10.77.13.2/24");
    let expect = Expect {
        huge,
        free_before,
        returns_mbufs_on_close: true,
    };
    ping_and_stop(&topo, &mut proc, &up, "10.77.13.1", expect);
}

#[test]
fn clear_errors_not_panics() {
    if !can_run("clear_errors_not_panics") {
        return;
    }
    let _one = lock();
    let run = |eal: &str| {
        let argv = port_cmd(eal, "10.77.14.1/24");
        let out = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "error exit, not a panic: {err}");
        assert!(!err.contains("panicked"), "{err}");
        err
    };
    let common = format!(
        "-l 1 --no-huge -m 128 --no-shconf --file-prefix=dpterr{} --no-telemetry --no-pci",
        std::process::id()
    );
    let err = run(&format!("{common} --not-an-eal-option"));
    assert!(err.contains("invalid EAL arguments"), "{err}");
    let err = run(&format!(
        "{common} --vdev=net_af_packet0,iface=dpnosuch{}",
        std::process::id()
    ));
    assert!(
        err.contains("no DPDK port") && err.contains("exists in this network namespace"),
        "{err}"
    );
    let err = run(&format!("{common} --vdev=net_nosuchdriver0"));
    assert!(err.contains("EAL init failed"), "{err}");
}
