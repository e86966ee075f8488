//! The proxies under test, each started pinned to the proxy core with the
//! same job: TLS termination (one TLS 1.3 suite), RS256 JWT validation and
//! `Mcp-Session-Id` affinity over the same backends.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::procs::{free_port, wait_listening};

/// How long a target may take to start listening.
pub(crate) const WAIT: Duration = Duration::from_secs(15);

/// Files and settings every target shares.
#[derive(Debug, Clone)]
pub struct Job {
    /// Server certificate (PEM).
    pub cert: PathBuf,
    /// Server key (PEM).
    pub key: PathBuf,
    /// Certificate + key in one file (HAProxy wants that).
    pub combined: PathBuf,
    /// RS256 public key (PEM).
    pub jwt_pub: PathBuf,
    /// Accepted issuer.
    pub issuer: String,
    /// Accepted audience.
    pub audience: String,
    /// Backend addresses.
    pub backends: Vec<SocketAddr>,
    /// CPU list for the proxy (taskset syntax).
    pub proxy_cpus: String,
    /// TLS 1.3 suite.
    pub ciphersuite: String,
    /// Where generated configs and logs go.
    pub out_dir: PathBuf,
    /// More `dpuproxy run` arguments (dpuproxy targets only).
    pub extra_args: Vec<String>,
    /// Frames in each af_packet ring of the dpdk target (`framecnt=`).
    pub af_packet_frames: u32,
}

/// A started target.
#[derive(Debug)]
pub struct Running {
    /// Child process (killed on drop).
    pub child: Child,
    /// TLS address clients use.
    pub addr: SocketAddr,
    /// Human description (version, settings).
    pub describe: String,
    /// Admin address (dpdk target: where the lcore counters are read).
    pub admin: Option<SocketAddr>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn taskset_available() -> bool {
    Command::new("taskset")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub(crate) fn pinned(cpus: &str, program: &Path) -> Command {
    if taskset_available() {
        let mut c = Command::new("taskset");
        c.arg("-c").arg(cpus).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// The arguments every dpuproxy target shares: listen address, TLS files,
/// the RS256 JWT checks, the backends, quiet logs into `log`.
pub(crate) fn same_job_args(
    cmd: &mut Command,
    job: &Job,
    listen: SocketAddr,
    log: &Path,
) -> anyhow::Result<()> {
    cmd.arg("--listen")
        .arg(listen.to_string())
        .arg("--tls-cert")
        .arg(&job.cert)
        .arg("--tls-key")
        .arg(&job.key)
        .arg("--jwt-key")
        .arg(&job.jwt_pub)
        .args(["--jwt-issuer", &job.issuer, "--jwt-audience", &job.audience]);
    for b in &job.backends {
        cmd.arg("--backend").arg(b.to_string());
    }
    cmd.args(&job.extra_args);
    cmd.env("DPUPROXY_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?);
    Ok(())
}

/// `dpuproxy run --mode kernel`, one worker, on the proxy core, with its
/// TLS records by `records` (`openssl` or `ours`).
pub fn start_kernel(job: &Job, records: &str) -> anyhow::Result<Running> {
    if !matches!(records, "openssl" | "ours") {
        anyhow::bail!("--kernel-records must be openssl or ours, not {records:?}");
    }
    let exe = std::env::current_exe().context("cannot find the dpuproxy binary")?;
    let port = free_port()?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let log = job.out_dir.join("kernel.log");
    let mut cmd = pinned(&job.proxy_cpus, &exe);
    cmd.args([
        "run",
        "--mode",
        "kernel",
        "--workers",
        "1",
        "--tls-records",
        records,
    ]);
    same_job_args(&mut cmd, job, addr, &log)?;
    let mut child = cmd.spawn().context("cannot start dpuproxy (kernel)")?;
    wait_listening(addr, &mut child, "dpuproxy kernel", WAIT, Some(&log))?;
    Ok(Running {
        child,
        addr,
        describe: format!(
            "dpuproxy {} --mode kernel --workers 1 --tls-records {records}",
            env!("CARGO_PKG_VERSION")
        ),
        admin: None,
    })
}

/// The af_packet PMD's own ring size (frames per ring), which `bench proxy`
/// keeps: a larger ring costs per request here (≈15 % at 32,768 frames).
pub const AF_PACKET_DEFAULT_FRAMES: u32 = 512;

/// The ring `bench soak` gives the dpdk target: its event ticks and the
/// backends' pause send 100,000 segments within a second, and the
/// retransmissions of what a 512-frame ring dropped come back in the same
/// waves and overflow it again for minutes. 32,768 frames of 2 KiB:
/// 64 MiB per ring, rx and tx.
pub const AF_PACKET_BURST_FRAMES: u32 = 32_768;

/// `dpuproxy run --mode dpdk` on the first proxy CPU, af_packet on the
/// namespace's root-side veth.
pub fn start_dpdk(job: &Job, ns: &super::netns::Netns) -> anyhow::Result<Running> {
    let vdev = format!(
        "net_af_packet0,iface={},framecnt={}",
        ns.root_if, job.af_packet_frames
    );
    let what = format!(
        "net_af_packet on {} ({} frames per ring)",
        ns.root_if, job.af_packet_frames
    );
    start_dpdk_on(job, &vdev, ns.proxy_ip, &what)
}

/// `dpuproxy run --mode dpdk` on the first proxy CPU, serving a memif
/// socket (the rig's peer is the client).
pub fn start_dpdk_memif(job: &Job, socket: &Path, ip: Ipv4Addr) -> anyhow::Result<Running> {
    let vdev = format!("net_memif0,role=server,socket={}", socket.display());
    let what = format!("net_memif server on {}", socket.display());
    start_dpdk_on(job, &vdev, ip, &what)
}

/// The first CPU of a taskset list.
pub(crate) fn first_cpu(list: &str) -> String {
    list.split([',', '-'])
        .next()
        .unwrap_or("1")
        .trim()
        .to_string()
}

fn start_dpdk_on(job: &Job, vdev: &str, ip: Ipv4Addr, what: &str) -> anyhow::Result<Running> {
    let exe = std::env::current_exe().context("cannot find the dpuproxy binary")?;
    let lcore = first_cpu(&job.proxy_cpus);
    let addr = SocketAddr::from((ip, 8443));
    let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
    let log = job.out_dir.join("dpdk.log");
    let eal =
        format!("-l {lcore} --in-memory --no-telemetry --iova-mode=va --no-pci --vdev={vdev}");
    let mut cmd = Command::new(&exe);
    cmd.args(["run", "--mode", "dpdk", "--dpdk-eal", &eal, "--dpdk-ip"])
        .arg(format!("{ip}/24"))
        .arg("--admin")
        .arg(admin.to_string());
    same_job_args(&mut cmd, job, addr, &log)?;
    let mut child = cmd.spawn().context("cannot start dpuproxy (dpdk)")?;
    wait_listening(admin, &mut child, "dpuproxy dpdk (admin)", WAIT, Some(&log))?;
    // The admin listener starts before the EAL: wait for the port.
    let deadline = std::time::Instant::now() + WAIT;
    while metric(admin, "dpuproxy_lcore_tsc_hz").unwrap_or(0.0) <= 0.0 {
        if let Some(st) = child.try_wait()? {
            bail!("dpuproxy dpdk exited ({st}); log: {}", log.display());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "dpuproxy dpdk did not bring its port up; log: {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Running {
        child,
        addr,
        describe: format!(
            "dpuproxy {} --mode dpdk, one lcore ({lcore}), {what}",
            env!("CARGO_PKG_VERSION"),
        ),
        admin: Some(admin),
    })
}

/// The sum of a metric family's samples (all lcores, say) from an admin
/// listener; None when it has none.
pub fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    sum_in(&metrics_text(admin)?, name)
}

/// The whole `/metrics` response of an admin listener (head included).
pub fn metrics_text(admin: SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text)
}

/// Every sample of metric family `name` in an exposition `text`, in order.
fn samples_in(text: &str, name: &str) -> Vec<f64> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect()
}

/// The sum of a family's samples in `text`; `None` if it has none.
fn sum_in(text: &str, name: &str) -> Option<f64> {
    let samples = samples_in(text, name);
    (!samples.is_empty()).then(|| samples.iter().sum())
}

/// The dpdk target's lcore cycle counters (summed over lcores), in
/// seconds, and its loop turns, from one scrape of `/metrics`.
#[derive(Debug, Clone, Copy)]
pub struct LcoreCycles {
    pub rx_s: f64,
    pub processing_s: f64,
    pub tx_s: f64,
    pub idle_s: f64,
    pub busy_turns: f64,
    pub idle_turns: f64,
}

impl LcoreCycles {
    /// Read from the admin listener now.
    pub fn read(admin: SocketAddr) -> Option<Self> {
        let text = metrics_text(admin)?;
        // Every lcore reports the same TSC rate.
        let hz = *samples_in(&text, "dpuproxy_lcore_tsc_hz").first()?;
        if hz <= 0.0 {
            return None;
        }
        let secs = |name| sum_in(&text, name).map(|c| c / hz);
        Some(Self {
            rx_s: secs("dpuproxy_lcore_rx_cycles_total")?,
            processing_s: secs("dpuproxy_lcore_processing_cycles_total")?,
            tx_s: secs("dpuproxy_lcore_tx_cycles_total")?,
            idle_s: secs("dpuproxy_lcore_idle_cycles_total")?,
            busy_turns: sum_in(&text, "dpuproxy_lcore_busy_turns_total")?,
            idle_turns: sum_in(&text, "dpuproxy_lcore_idle_turns_total")?,
        })
    }

    /// Busy seconds: the three phases together.
    pub fn busy_s(&self) -> f64 {
        self.rx_s + self.processing_s + self.tx_s
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            rx_s: self.rx_s - earlier.rx_s,
            processing_s: self.processing_s - earlier.processing_s,
            tx_s: self.tx_s - earlier.tx_s,
            idle_s: self.idle_s - earlier.idle_s,
            busy_turns: self.busy_turns - earlier.busy_turns,
            idle_turns: self.idle_turns - earlier.idle_turns,
        }
    }
}

/// The HAProxy configuration for the same job.
pub fn haproxy_config(job: &Job, addr: SocketAddr) -> String {
    let servers: String = job
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("    server b{} {b}\n", i + 1))
        .collect();
    format!(
        r#"# Generated by `dpuproxy bench proxy`: the same job as dpuproxy's targets.
global
    nbthread 1
    maxconn 4000
    ssl-default-bind-ciphersuites {suite}
    ssl-default-bind-options ssl-min-ver TLSv1.3

defaults
    mode http
    option http-keep-alive
    timeout connect 3s
    timeout client 60s
    timeout server 300s
    # SSE streams ride the tunnel timeout.
    timeout tunnel 1h
    timeout http-keep-alive 120s

frontend mcp_tls
    bind {addr} ssl crt {combined} alpn http/1.1
    # OAuth2 resource server: RS256 bearer JWT, issuer, audience, expiry.
    http-request set-var(txn.bearer) http_auth_bearer
    http-request deny deny_status 401 unless {{ var(txn.bearer) -m found }}
    http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')
    http-request deny deny_status 401 unless {{ var(txn.alg) -m str RS256 }}
    http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_verify(txn.alg,"{pubkey}") -m int 1 }}
    http-request set-var(txn.iss) var(txn.bearer),jwt_payload_query('$.iss')
    http-request deny deny_status 401 unless {{ var(txn.iss) -m str {issuer} }}
    http-request set-var(txn.aud) var(txn.bearer),jwt_payload_query('$.aud')
    http-request deny deny_status 401 unless {{ var(txn.aud) -m str {audience} }}
    http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
    http-request set-var(txn.now) date()
    http-request deny deny_status 401 if {{ var(txn.exp),sub(txn.now) -m int lt 0 }}
    http-request del-header Authorization
    default_backend mcp_backends

backend mcp_backends
    balance roundrobin
    http-reuse safe
    # Mcp-Session-Id affinity: learn it from responses, route on it.
    stick-table type string len 128 size 200k expire 30m
    stick store-response res.hdr(Mcp-Session-Id)
    stick match req.hdr(Mcp-Session-Id)
{servers}"#,
        suite = job.ciphersuite,
        combined = job.combined.display(),
        pubkey = job.jwt_pub.display(),
        issuer = job.issuer,
        audience = job.audience,
    )
}

/// HAProxy (Debian's `haproxy`), one thread, on the proxy core.
pub fn start_haproxy(job: &Job) -> anyhow::Result<Running> {
    let version = Command::new("haproxy")
        .arg("-v")
        .output()
        .map_err(|_| anyhow::anyhow!("haproxy is not installed (apt-get install haproxy)"))?;
    let version = String::from_utf8_lossy(&version.stdout)
        .lines()
        .next()
        .unwrap_or("haproxy")
        .to_string();
    let port = free_port()?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let cfg_path = job.out_dir.join("haproxy.cfg");
    std::fs::write(&cfg_path, haproxy_config(job, addr))?;
    let check = Command::new("haproxy")
        .args(["-c", "-q", "-f"])
        .arg(&cfg_path)
        .output()?;
    if !check.status.success() {
        bail!(
            "haproxy rejected {}: {}",
            cfg_path.display(),
            String::from_utf8_lossy(&check.stderr).trim()
        );
    }
    let log = job.out_dir.join("haproxy.log");
    let mut cmd = pinned(&job.proxy_cpus, Path::new("haproxy"));
    cmd.args(["-db", "-f"])
        .arg(&cfg_path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    let mut child = cmd.spawn().context("cannot start haproxy")?;
    wait_listening(addr, &mut child, "haproxy", WAIT, Some(&log))?;
    Ok(Running {
        child,
        addr,
        describe: format!("{version}, nbthread 1 (config: {})", cfg_path.display()),
        admin: None,
    })
}

/// The pid that does the work: `taskset` execs the program, so the child's
/// pid is the proxy's.
pub fn proxy_pid(r: &Running) -> u32 {
    r.child.id()
}
