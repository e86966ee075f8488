//! The dpdk target on the memif rig (the default): the proxy serves a
//! `net_memif` socket on the proxy core, and a peer process
//! ([`super::peer`], `dpuproxy bench peer`) on the load core is the memif
//! client, running the load generator and the backends on our own
//! userspace TCP and TLS. No kernel network path runs on either side, so
//! the lcore's cycles are the proxy's own work (with af_packet on a veth,
//! each tx kick runs the veth and the peers' kernel receive path inside
//! the proxy's `sendto`).

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::loadgen::RunFigures;
use super::targets::{self, Job, Running};

/// The proxy's address on the rig's link (no kernel interface has it).
pub const PROXY_IP: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 1);
/// The peer's address.
pub const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 2);
/// The first backend port on the peer.
const BACKEND_PORT: u16 = 9001;
/// How long the peer may take to open every session.
const READY_WITHIN: Duration = Duration::from_secs(90);
/// How long the peer may take to answer a command.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// The running rig: proxy and peer; both stopped on drop.
#[derive(Debug)]
pub struct MemifRig {
    /// The proxy under test.
    pub proxy: Running,
    peer: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    socket: PathBuf,
}

/// What the rig needs from `bench proxy`'s arguments.
#[derive(Debug, Clone)]
pub struct RigLoad<'a> {
    pub connections: usize,
    pub payload: usize,
    pub backend_count: usize,
    pub sse: bool,
    pub load_cpus: &'a str,
    pub token: &'a str,
    /// Open loop: total requests/s.
    pub rate: Option<f64>,
}

impl MemifRig {
    /// Start the proxy on a fresh memif socket, then the peer, and wait
    /// until every session is open.
    pub fn start(job: &Job, load: &RigLoad<'_>) -> anyhow::Result<Self> {
        let socket =
            std::env::temp_dir().join(format!("dpuproxy-bench-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&socket);
        let ports: Vec<u16> = (0..load.backend_count)
            .map(|i| BACKEND_PORT + i as u16)
            .collect();
        let mut pjob = job.clone();
        pjob.backends = ports
            .iter()
            .map(|&p| SocketAddr::from((PEER_IP, p)))
            .collect();
        let proxy = targets::start_dpdk_memif(&pjob, &socket, PROXY_IP)?;
        let exe = std::env::current_exe().context("cannot find the dpuproxy binary")?;
        let eal = format!(
            "-l {} --in-memory --no-telemetry --iova-mode=va --no-pci --vdev=net_memif0,role=client,socket={}",
            targets::first_cpu(load.load_cpus),
            socket.display()
        );
        let ports_arg: Vec<String> = ports.iter().map(u16::to_string).collect();
        let log = job.out_dir.join("memif-peer.log");
        let mut cmd = Command::new(exe);
        cmd.args(["bench", "peer", "--eal", &eal, "--ip"])
            .arg(format!("{PEER_IP}/24"))
            .arg("--proxy")
            .arg(format!("{PROXY_IP}:8443"))
            .args(["--host", "localhost:8443", "--connections"])
            .arg(load.connections.to_string())
            .arg("--payload")
            .arg(load.payload.to_string())
            .args(["--token", load.token, "--ciphersuite", &job.ciphersuite])
            .arg("--backend-ports")
            .arg(ports_arg.join(","));
        if load.sse {
            cmd.arg("--sse");
        }
        if let Some(r) = load.rate {
            cmd.arg("--rate").arg(r.to_string());
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?);
        let mut peer = cmd.spawn().context("cannot start the memif peer")?;
        let stdout = peer.stdout.take().context("peer stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = peer.stdin.take();
        let mut rig = Self {
            proxy,
            peer,
            stdin,
            lines,
            socket,
        };
        match rig.next_line(READY_WITHIN) {
            Ok(l) if l == "ready" => Ok(rig),
            Ok(l) => bail!("memif peer: {l} (log: {})", log.display()),
            Err(e) => bail!("memif peer: {e:#} (log: {})", log.display()),
        }
    }

    fn next_line(&mut self, within: Duration) -> anyhow::Result<String> {
        match self.lines.recv_timeout(within) {
            Ok(l) => Ok(l),
            Err(RecvTimeoutError::Timeout) => bail!("no answer within {within:?}"),
            Err(RecvTimeoutError::Disconnected) => {
                let st = self.peer.wait()?;
                bail!("exited ({st})")
            }
        }
    }

    fn send(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("peer stdin closed")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Like [`super::loadgen::run`]: warm-up, then windows of `duration`
    /// (at most `max_windows`), `at_boundary(k)` before window `k` and
    /// after the last, which returns whether window `k` runs.
    pub fn run(
        &mut self,
        warmup: Duration,
        duration: Duration,
        max_windows: usize,
        mut at_boundary: impl FnMut(usize) -> bool,
    ) -> anyhow::Result<Vec<RunFigures>> {
        std::thread::sleep(warmup);
        let mut windows = 0;
        for k in 1..=max_windows + 1 {
            if !at_boundary(k) || k > max_windows {
                break;
            }
            self.send(&format!("w {k}"))?;
            windows = k;
            let end = Instant::now() + duration;
            while let Some(left) = end.checked_duration_since(Instant::now()) {
                std::thread::sleep(left);
            }
        }
        self.send("w 0")?;
        let mut figures = Vec::with_capacity(windows);
        for k in 1..=windows {
            self.send(&format!("report {k}"))?;
            let line = self.next_line(ANSWER_WITHIN)?;
            match super::peer::parse_figures(&line) {
                Some((got, f)) if got == k => figures.push(f),
                _ => bail!("memif peer: unexpected answer {line:?} to report {k}"),
            }
        }
        Ok(figures)
    }

    /// Requests each backend answered so far, and misrouted ones.
    pub fn spread(&mut self) -> anyhow::Result<(Vec<u64>, u64)> {
        self.send("spread")?;
        let line = self.next_line(ANSWER_WITHIN)?;
        super::peer::parse_spread(&line)
            .with_context(|| format!("memif peer: unexpected answer {line:?} to spread"))
    }
}

impl Drop for MemifRig {
    fn drop(&mut self) {
        let _ = self.send("quit");
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.peer.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.peer.kill();
        let _ = self.peer.wait();
        // The proxy (`Running`) stops when it drops, after this.
        let _ = std::fs::remove_file(&self.socket);
    }
}
