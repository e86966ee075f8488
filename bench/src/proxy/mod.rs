//! `dpuproxy bench proxy`: the two data paths and HAProxy side by side on
//! the same MCP workload.
//!
//! One command does everything: it makes a certificate and an RS256 key,
//! starts the backends (native MCP servers by default, see
//! [`backend`]; `--backends sdk` uses the Python SDK), then for each target
//! starts it pinned to the proxy core, opens one MCP session per
//! connection, warms up, runs `--runs` measurement windows, stops it, and
//! reports the median run. Figures only; nothing is asserted.
//!
//! Fairness: every proxy gets the same CPU list (`--proxy-cpus`, default
//! core 1); the load generator and backends run on `--load-cpus` (core 0);
//! the same TLS 1.3 suite, payload and JWT checks for all; warm-up is
//! excluded; the median of several runs is reported.

mod backend;
mod corestat;
mod loadgen;
mod memif;
pub mod netns;
pub mod peer;
pub(crate) mod targets;

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

/// `dpuproxy bench proxy` arguments.
#[derive(clap::Args, Debug)]
pub struct ProxyArgs {
    /// Targets, comma-separated: kernel, dpdk, haproxy.
    #[arg(long, default_value = "kernel,dpdk,haproxy", value_delimiter = ',')]
    pub targets: Vec<String>,
    /// Seconds per measurement run.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of warm-up before the runs (excluded).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Measurement windows per target (the median is reported; at least 5
    /// with `--rate`). A window in which other processes took more than
    /// 2 % of the proxy core is retried, up to 3 times.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Concurrent connections, each with its own MCP session.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Load generator threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Bytes of text echoed by each tools/call.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Backends answer tools/call with an SSE stream (progress + result).
    #[arg(long)]
    pub sse: bool,
    /// Open-loop total request rate (requests/s); closed loop when absent.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Backend kind: native (fast, ours) or sdk (the MCP Python SDK).
    #[arg(long, default_value = "native")]
    pub backends: String,
    /// Number of backends.
    #[arg(long, default_value_t = 3)]
    pub backend_count: usize,
    /// CPUs for the proxy under test (taskset list).
    #[arg(long, default_value = "1")]
    pub proxy_cpus: String,
    /// CPUs for the load generator and backends (taskset list).
    #[arg(long, default_value = "0")]
    pub load_cpus: String,
    /// Output directory for JSON, SVG and generated configs.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// Also run wrk against the kernel target and print both figures.
    #[arg(long)]
    pub wrk: bool,
    /// TLS 1.3 suite for every target.
    #[arg(long, default_value = "TLS_AES_128_GCM_SHA256")]
    pub ciphersuite: String,
    /// The dpdk target's rig: memif (a peer DPDK process runs the load and
    /// the backends on our userspace TCP and TLS; no kernel network path)
    /// or veth (af_packet on a veth, kernel peers in a namespace).
    #[arg(long, default_value = "memif")]
    pub dpdk_rig: String,
    /// The kernel target's TLS records: openssl (the stock design: kTLS
    /// when the kernel takes it, else SSL_read/SSL_write) or ours (our
    /// record layer on the socket, as in DPDK mode).
    #[arg(long, default_value = "openssl")]
    pub kernel_records: String,
}

impl ProxyArgs {
    /// Clean windows wanted per target.
    fn windows(&self) -> usize {
        if self.rate.is_some() {
            self.runs.max(MIN_OPEN_LOOP_WINDOWS)
        } else {
            self.runs
        }
    }

    /// Extra windows allowed to replace disturbed ones.
    fn retries(&self) -> usize {
        3
    }
}

/// Open loop reports the median of at least this many windows.
const MIN_OPEN_LOOP_WINDOWS: usize = 5;

/// One target's result.
#[derive(Debug, Clone, serde::Serialize)]
struct TargetResult {
    target: String,
    status: String,
    describe: String,
    rps_runs: Vec<f64>,
    rps: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    p999_ms: Option<f64>,
    errors: u64,
    /// Requests per second of proxy-core time (median window).
    rps_per_core: Option<f64>,
    /// Proxy-core microseconds per request (median window).
    core_us_per_req: Option<f64>,
    /// Where `core_us_per_req` comes from.
    cost_source: String,
    /// Proxy-core time spent per second of wall time (median window).
    proxy_core_util: Option<f64>,
    /// Share of the proxy core other processes took (median window).
    other_share: Option<f64>,
    /// Windows in which other processes took more than 2 % of the proxy
    /// core (retried; counted in the median only if too few were clean).
    windows_disturbed: usize,
    /// dpdk: where the lcore's cycles went in the median run.
    lcore_breakdown: Option<LcoreBreakdown>,
    backend_spread: Vec<u64>,
    /// Requests that reached a backend that did not own their session
    /// (memif rig; the other targets' backends are counted at the end).
    misrouted: u64,
}

/// The dpdk lcore's cycles in a measured run, OVS `pmd-stats` style.
#[derive(Debug, Clone, serde::Serialize)]
struct LcoreBreakdown {
    rx_us_per_req: f64,
    processing_us_per_req: f64,
    tx_us_per_req: f64,
    idle_share: f64,
    busy_turns: u64,
    idle_turns: u64,
    /// Mean length of an idle turn.
    idle_turn_ns: Option<f64>,
}

impl LcoreBreakdown {
    fn of(c: &targets::LcoreCycles, requests: u64) -> Option<Self> {
        let n = requests as f64;
        let total = c.busy_s() + c.idle_s;
        (requests > 0 && total > 0.0).then(|| Self {
            rx_us_per_req: c.rx_s / n * 1e6,
            processing_us_per_req: c.processing_s / n * 1e6,
            tx_us_per_req: c.tx_s / n * 1e6,
            idle_share: c.idle_s / total,
            busy_turns: c.busy_turns as u64,
            idle_turns: c.idle_turns as u64,
            idle_turn_ns: (c.idle_turns > 0.0).then(|| c.idle_s / c.idle_turns * 1e9),
        })
    }
}

impl TargetResult {
    fn unavailable(target: &str, why: String) -> Self {
        Self {
            target: target.to_string(),
            status: format!("not run: {why}"),
            describe: String::new(),
            rps_runs: Vec::new(),
            rps: None,
            p50_ms: None,
            p99_ms: None,
            p999_ms: None,
            errors: 0,
            rps_per_core: None,
            core_us_per_req: None,
            cost_source: String::new(),
            proxy_core_util: None,
            other_share: None,
            windows_disturbed: 0,
            lcore_breakdown: None,
            backend_spread: Vec::new(),
            misrouted: 0,
        }
    }
}

pub(crate) fn pin_self(cpus: &str) {
    // Threads inherit the affinity of the thread that creates them, so
    // pinning the main thread before anything is spawned pins the load
    // generator and the native backends.
    let pid = std::process::id().to_string();
    let ok = Command::new("taskset")
        .args(["-cp", cpus, &pid])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "bench: warning: could not pin the load generator to CPUs {cpus} (taskset missing?)"
        );
    }
}

pub(crate) fn make_keys(dir: &std::path::Path) -> anyhow::Result<(targets::Job, String)> {
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    dpuproxy_tls::certs::write_self_signed(&cert, &key, 2)?;
    let combined = dir.join("combined.pem");
    let mut both = std::fs::read(&cert)?;
    both.extend_from_slice(&std::fs::read(&key)?);
    std::fs::write(&combined, both)?;
    let rsa = PKey::from_rsa(Rsa::generate(2048)?)?;
    let jwt_pub = dir.join("jwt-pub.pem");
    std::fs::write(&jwt_pub, rsa.public_key_to_pem()?)?;
    let issuer = "https://issuer.bench".to_string();
    let audience = "mcp-proxy".to_string();
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 6 * 3600;
    let claims = serde_json::json!({"iss": issuer, "aud": audience, "sub": "bench", "exp": exp, "scope": "mcp:tools"});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&rsa.private_key_to_pem_pkcs8()?)?,
    )?;
    Ok((
        targets::Job {
            cert,
            key,
            combined,
            jwt_pub,
            issuer,
            audience,
            backends: Vec::new(),
            proxy_cpus: String::new(),
            ciphersuite: String::new(),
            out_dir: dir.to_path_buf(),
            extra_args: Vec::new(),
            af_packet_frames: targets::AF_PACKET_DEFAULT_FRAMES,
        },
        token,
    ))
}

/// Backends for the run; kept alive until dropped.
enum Backends {
    Native(Vec<backend::NativeBackend>),
    Sdk(Vec<std::process::Child>),
}

impl Backends {
    fn spread(&self) -> Vec<u64> {
        match self {
            Backends::Native(v) => v
                .iter()
                .map(|b| b.stats.requests.load(std::sync::atomic::Ordering::Relaxed))
                .collect(),
            Backends::Sdk(_) => Vec::new(),
        }
    }

    fn misrouted(&self) -> u64 {
        match self {
            Backends::Native(v) => v
                .iter()
                .map(|b| {
                    b.stats
                        .unknown_session
                        .load(std::sync::atomic::Ordering::Relaxed)
                })
                .sum(),
            Backends::Sdk(_) => 0,
        }
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        if let Backends::Sdk(children) = self {
            for c in children {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn start_backends(args: &ProxyArgs) -> anyhow::Result<(Backends, Vec<SocketAddr>)> {
    match args.backends.as_str() {
        "native" => {
            let v = (0..args.backend_count)
                .map(|i| backend::NativeBackend::start(&format!("b{}", i + 1), args.sse))
                .collect::<std::io::Result<Vec<_>>>()?;
            let addrs = v
                .iter()
                .map(|b| SocketAddr::from((Ipv4Addr::LOCALHOST, b.port)))
                .collect();
            Ok((Backends::Native(v), addrs))
        }
        "sdk" => {
            let python =
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
            let script =
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/mcp_backend.py");
            let mut children = Vec::new();
            let mut addrs = Vec::new();
            for i in 0..args.backend_count {
                let port = crate::procs::free_port()?;
                let child = Command::new(&python)
                    .arg(&script)
                    .args([
                        "--port",
                        &port.to_string(),
                        "--name",
                        &format!("b{}", i + 1),
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .with_context(|| {
                        format!("cannot start {} (run scripts/setup.sh)", python.display())
                    })?;
                children.push(child);
                addrs.push(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
            }
            // Wrapped first, so that an early return kills every child.
            let mut all = Backends::Sdk(children);
            if let Backends::Sdk(children) = &mut all {
                for (child, a) in children.iter_mut().zip(&addrs) {
                    crate::procs::wait_listening(
                        *a,
                        child,
                        "SDK backend",
                        Duration::from_secs(30),
                        None,
                    )?;
                }
            }
            Ok((all, addrs))
        }
        other => bail!("--backends must be native or sdk, not {other:?}"),
    }
}

fn measure(
    name: &str,
    args: &ProxyArgs,
    job: &targets::Job,
    token: &str,
    backends: &Backends,
) -> anyhow::Result<TargetResult> {
    // The dpdk target's peers: a memif peer process (default), or kernel
    // peers behind a veth in their own namespace.
    let mut dpdk_env = None;
    let mut rig = None;
    let (running, backends) = match name {
        "kernel" => (
            Some(targets::start_kernel(job, &args.kernel_records)?),
            backends,
        ),
        "haproxy" => (Some(targets::start_haproxy(job)?), backends),
        "dpdk" if !dpuproxy_engine::AVAILABLE => bail!("this binary was built without DPDK"),
        "dpdk" if args.dpdk_rig == "memif" => {
            let load = memif::RigLoad {
                connections: args.connections,
                payload: args.payload,
                backend_count: args.backend_count,
                sse: args.sse,
                load_cpus: &args.load_cpus,
                token,
                rate: args.rate,
            };
            rig = Some(memif::MemifRig::start(job, &load)?);
            (None, backends)
        }
        "dpdk" if args.dpdk_rig == "veth" => {
            let ns = std::sync::Arc::new(netns::Netns::create()?);
            let set = (0..args.backend_count)
                .map(|i| {
                    backend::NativeBackend::start_in(
                        &format!("b{}", i + 1),
                        args.sse,
                        ns.peer_ip,
                        Some(ns.clone()),
                    )
                })
                .collect::<std::io::Result<Vec<_>>>()?;
            let mut djob = job.clone();
            djob.backends = set
                .iter()
                .map(|b| SocketAddr::from((ns.peer_ip, b.port)))
                .collect();
            let r = targets::start_dpdk(&djob, &ns)?;
            dpdk_env = Some((ns, Backends::Native(set)));
            (Some(r), backends)
        }
        "dpdk" => bail!("--dpdk-rig must be memif or veth, not {:?}", args.dpdk_rig),
        other => bail!("unknown target {other:?} (kernel, dpdk, haproxy)"),
    };
    let backends = match &dpdk_env {
        Some((_, b)) => b,
        None => backends,
    };
    let running = match (&running, &rig) {
        (Some(r), _) => r,
        (None, Some(rig)) => &rig.proxy,
        (None, None) => bail!("no target started"),
    };
    let pid = targets::proxy_pid(running);
    let cfg = loadgen::LoadConfig {
        netns: dpdk_env.as_ref().map(|(ns, _)| ns.clone()),
        addr: running.addr,
        host: format!("localhost:{}", running.addr.port()),
        connections: args.connections,
        threads: args.threads,
        token: Some(token.to_string()),
        payload: args.payload,
        rate: args.rate,
        ciphersuite: args.ciphersuite.clone(),
    };
    let describe = running.describe.clone();
    let spread_before = backends.spread();
    let cpus = corestat::parse_cpu_list(&args.proxy_cpus)
        .with_context(|| format!("--proxy-cpus {:?} is not a CPU list", args.proxy_cpus))?;
    let duration = Duration::from_secs_f64(args.duration);
    let secs = duration.as_secs_f64();
    let admin = running.admin;
    let wanted = args.windows();
    let mut marks: Vec<Mark> = Vec::new();
    let mut windows: Vec<Window> = Vec::new();
    let at_boundary = |_| {
        let mark = Mark {
            core: corestat::CoreMark::read(pid, &cpus),
            cycles: admin.and_then(targets::LcoreCycles::read),
        };
        if let Some(last) = marks.last() {
            windows.push(Window::between(last, &mark, &cpus, secs, admin.is_some()));
        }
        marks.push(mark);
        // Another window while too few are clean (a disturbed one is
        // retried, up to `retries()` times).
        let clean = windows.iter().filter(|w| !w.disturbed()).count();
        clean < wanted && windows.len() < wanted + args.retries()
    };
    let warmup = Duration::from_secs_f64(args.warmup);
    let max_windows = wanted + args.retries();
    let (figures, spread, misrouted) = match rig.as_mut() {
        Some(rig) => {
            let (before, _) = rig.spread()?;
            let figures = rig.run(warmup, duration, max_windows, at_boundary)?;
            let (after, misrouted) = rig.spread()?;
            let spread = after.iter().zip(&before).map(|(a, b)| a - b).collect();
            (figures, spread, misrouted)
        }
        None => {
            let figures = loadgen::run(&cfg, warmup, duration, max_windows, at_boundary)?;
            let spread = backends
                .spread()
                .iter()
                .zip(spread_before.iter().chain(std::iter::repeat(&0)))
                .map(|(a, b)| a - b)
                .collect();
            (figures, spread, 0)
        }
    };
    // Clean windows count; when too few are clean, all windows count and
    // the disturbed ones are flagged.
    let clean: Vec<usize> = (0..figures.len())
        .filter(|&i| windows.get(i).is_some_and(|w| !w.disturbed()))
        .collect();
    let disturbed = figures.len() - clean.len();
    let mut order: Vec<usize> = if clean.len() >= wanted.min(figures.len()) {
        clean
    } else {
        (0..figures.len()).collect()
    };
    // The median window by completed requests is the median by req/s.
    order.sort_by_key(|&i| figures[i].ok);
    let mid = order[order.len() / 2];
    let f = &figures[mid];
    let w = windows.get(mid).copied().unwrap_or_default();
    let q = |p: f64| f.latency.value_at_quantile(p) as f64 / 1000.0;
    let per_req = |s: Option<f64>| s.filter(|_| f.ok > 0).map(|c| c / f.ok as f64 * 1e6);
    let lcore_breakdown = match (marks.get(mid), marks.get(mid + 1)) {
        (
            Some(Mark {
                cycles: Some(a), ..
            }),
            Some(Mark {
                cycles: Some(b), ..
            }),
        ) => LcoreBreakdown::of(&b.since(a), f.ok),
        _ => None,
    };
    let core_us_per_req = per_req(w.cost_s);
    Ok(TargetResult {
        target: name.to_string(),
        status: "ok".into(),
        describe,
        rps: Some(f.ok as f64 / secs),
        rps_runs: figures.iter().map(|f| f.ok as f64 / secs).collect(),
        rps_per_core: core_us_per_req.filter(|u| *u > 0.0).map(|u| 1e6 / u),
        p50_ms: (f.ok > 0).then(|| q(0.5)),
        p99_ms: (f.ok > 0).then(|| q(0.99)),
        p999_ms: (f.ok > 0).then(|| q(0.999)),
        errors: figures.iter().map(|f| f.errors).sum(),
        core_us_per_req,
        cost_source: if admin.is_some() {
            "lcore busy cycles"
        } else {
            "proxy core busy time (/proc/stat)"
        }
        .into(),
        proxy_core_util: w.cost_s.map(|c| c / secs),
        other_share: w.other_share,
        windows_disturbed: disturbed,
        lcore_breakdown,
        backend_spread: spread,
        misrouted,
    })
}

/// Counters sampled at a window boundary.
#[derive(Debug, Clone)]
struct Mark {
    core: Option<corestat::CoreMark>,
    cycles: Option<targets::LcoreCycles>,
}

/// One measurement window's proxy-core cost and interference.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    /// Proxy-core seconds spent: lcore busy cycles for dpdk (its poller
    /// spins, so the core is always busy), the core's busy time otherwise.
    cost_s: Option<f64>,
    /// Share of the proxy core other processes took.
    other_share: Option<f64>,
}

/// A window in which other processes took more than this share of the
/// proxy core is retried (or flagged when retries run out).
const MAX_OTHER_SHARE: f64 = 0.02;

impl Window {
    fn between(a: &Mark, b: &Mark, cpus: &[usize], secs: f64, lcore: bool) -> Self {
        let core = match (&a.core, &b.core) {
            (Some(x), Some(y)) => Some(corestat::CoreWindow::between(x, y, cpus, secs)),
            _ => None,
        };
        let cost_s = if lcore {
            match (a.cycles, b.cycles) {
                (Some(x), Some(y)) => Some(y.since(&x).busy_s()),
                _ => None,
            }
        } else {
            core.map(|c| c.busy_s)
        };
        Self {
            cost_s,
            other_share: core.map(|c| c.other_share),
        }
    }

    fn disturbed(&self) -> bool {
        self.other_share.is_some_and(|s| s > MAX_OTHER_SHARE)
    }
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("n/a".into(), |x| format!("{x:.prec$}"))
}

fn table(results: &[TargetResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<8} {:>10} {:>13} {:>8} {:>8} {:>9} {:>6} {:>13} {:>9} {:>6}  backend spread",
        "target",
        "req/s",
        "req/s/core",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "errors",
        "core µs/req",
        "core util",
        "other"
    );
    let pct = |v: Option<f64>| v.map_or("n/a".into(), |u| format!("{:.0}%", u * 100.0));
    for r in results {
        if r.status != "ok" {
            let _ = writeln!(s, "{:<8} {}", r.target, r.status);
            continue;
        }
        let _ = writeln!(
            s,
            "{:<8} {:>10} {:>13} {:>8} {:>8} {:>9} {:>6} {:>13} {:>9} {:>6}  {:?}",
            r.target,
            fmt_opt(r.rps, 0),
            fmt_opt(r.rps_per_core, 0),
            fmt_opt(r.p50_ms, 2),
            fmt_opt(r.p99_ms, 2),
            fmt_opt(r.p999_ms, 2),
            r.errors,
            fmt_opt(r.core_us_per_req, 2),
            pct(r.proxy_core_util),
            r.other_share
                .map_or("n/a".into(), |u| format!("{:.1}%", u * 100.0)),
            r.backend_spread
        );
    }
    for r in results.iter().filter(|r| r.status == "ok") {
        let flag = if r.windows_disturbed > 0 {
            format!(
                "; {} window(s) had other processes above {:.0}% of the proxy core",
                r.windows_disturbed,
                MAX_OTHER_SHARE * 100.0
            )
        } else {
            String::new()
        };
        let _ = writeln!(s, "{} cost: {}{flag}", r.target, r.cost_source);
    }
    for r in results {
        if let Some(b) = &r.lcore_breakdown {
            let _ = writeln!(
                s,
                "{} lcore µs/req: rx {:.2} processing {:.2} tx {:.2}; idle {:.0}% of cycles; turns busy {} idle {} (idle turn {} ns)",
                r.target,
                b.rx_us_per_req,
                b.processing_us_per_req,
                b.tx_us_per_req,
                b.idle_share * 100.0,
                b.busy_turns,
                b.idle_turns,
                fmt_opt(b.idle_turn_ns, 0),
            );
        }
    }
    s
}

/// A two-panel bar chart (requests/s and p99) as plain SVG.
fn svg(results: &[TargetResult]) -> String {
    let (w, h) = (1080.0, 360.0);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
"#
    );
    type Metric = fn(&TargetResult) -> Option<f64>;
    let panels: [(&str, Metric); 3] = [
        ("requests/s (median window)", |r| r.rps),
        ("requests/s per proxy core", |r| r.rps_per_core),
        ("p99 latency (ms)", |r| r.p99_ms),
    ];
    let colors = ["#4878d0", "#ee854a", "#6acc64", "#d65f5f"];
    for (pi, (title, get)) in panels.iter().enumerate() {
        let x0 = 40.0 + pi as f64 * (w / panels.len() as f64);
        let (pw, ph, y0) = (w / panels.len() as f64 - 80.0, h - 110.0, 50.0);
        let max = results
            .iter()
            .filter_map(get)
            .fold(0.0_f64, f64::max)
            .max(1e-9);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="25" font-size="14" font-weight="bold">{title}</text>"#,
            x0
        );
        let _ = writeln!(
            s,
            r#"<line x1="{x0}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
            y0 + ph,
            x0 + pw,
            y0 + ph
        );
        let bw = pw / results.len().max(1) as f64;
        for (i, r) in results.iter().enumerate() {
            let bx = x0 + i as f64 * bw + bw * 0.15;
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
                bx + bw * 0.35,
                y0 + ph + 18.0,
                r.target
            );
            match get(r) {
                Some(v) => {
                    let bh = v / max * ph;
                    let _ = writeln!(
                        s,
                        r#"<rect x="{bx:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="{}"/>"#,
                        y0 + ph - bh,
                        bw * 0.7,
                        colors[i % colors.len()]
                    );
                    let _ = writeln!(
                        s,
                        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                        bx + bw * 0.35,
                        y0 + ph - bh - 5.0,
                        if v >= 100.0 {
                            format!("{v:.0}")
                        } else {
                            format!("{v:.2}")
                        }
                    );
                }
                None => {
                    let _ = writeln!(
                        s,
                        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="gray">n/a</text>"#,
                        bx + bw * 0.35,
                        y0 + ph - 5.0
                    );
                }
            }
        }
    }
    s.push_str("</svg>\n");
    s
}

/// `a`'s requests per second of proxy-core time over `b`'s.
fn ratio(results: &[TargetResult], a: &str, b: &str) -> String {
    let get = |t: &str| {
        results
            .iter()
            .find(|r| r.target == t)
            .and_then(|r| r.rps_per_core)
    };
    match (get(a), get(b)) {
        (Some(x), Some(y)) if y > 0.0 => format!("{:.2}", x / y),
        _ => "n/a".into(),
    }
}

/// The last line: per-core ratios and the dpdk target's cost per request.
fn ratios_line(results: &[TargetResult]) -> String {
    let dpdk_us = results
        .iter()
        .find(|r| r.target == "dpdk")
        .and_then(|r| r.core_us_per_req);
    format!(
        "ratios: kernel/haproxy={} dpdk/kernel={} dpdk_us_per_req={}",
        ratio(results, "kernel", "haproxy"),
        ratio(results, "dpdk", "kernel"),
        fmt_opt(dpdk_us, 2)
    )
}

fn wrk_cross_check(
    args: &ProxyArgs,
    job: &targets::Job,
    token: &str,
    ours: Option<f64>,
) -> anyhow::Result<String> {
    let running = targets::start_kernel(job, &args.kernel_records)?;
    let cfg = loadgen::LoadConfig {
        addr: running.addr,
        host: format!("localhost:{}", running.addr.port()),
        connections: 1,
        threads: 1,
        token: Some(token.to_string()),
        payload: args.payload,
        rate: None,
        ciphersuite: args.ciphersuite.clone(),
        netns: None,
    };
    // One session for all wrk connections (the native backends allow that).
    let session = one_session(&cfg)?;
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{}"}}}}}}"#,
        "x".repeat(args.payload)
    );
    let lua = job.out_dir.join("wrk.lua");
    std::fs::write(
        &lua,
        format!(
            "wrk.method = \"POST\"\nwrk.path = \"/mcp\"\nwrk.body = '{body}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"Accept\"] = \"application/json, text/event-stream\"\nwrk.headers[\"Authorization\"] = \"Bearer {token}\"\nwrk.headers[\"Mcp-Session-Id\"] = \"{session}\"\nwrk.headers[\"MCP-Protocol-Version\"] = \"2025-11-25\"\n"
        ),
    )?;
    let out = Command::new("taskset")
        .args(["-c", &args.load_cpus, "wrk", "-t1"])
        .arg(format!("-c{}", args.connections))
        .arg(format!("-d{}s", args.duration.max(1.0) as u64))
        .arg("-s")
        .arg(&lua)
        .arg(format!("https://localhost:{}/mcp", running.addr.port()))
        .output()
        .map_err(|_| anyhow::anyhow!("wrk is not installed (apt-get install wrk)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let wrk_rps: Option<f64> = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok());
    let non2xx = text
        .lines()
        .find(|l| l.contains("Non-2xx"))
        .unwrap_or("")
        .trim()
        .to_string();
    Ok(match (wrk_rps, ours) {
        (Some(w), Some(o)) => format!(
            "wrk cross-check (kernel target): wrk {w:.0} req/s, ours {o:.0} req/s, ours/wrk {:.2} {non2xx}",
            o / w
        ),
        (Some(w), None) => format!("wrk cross-check (kernel target): wrk {w:.0} req/s {non2xx}"),
        _ => format!("wrk cross-check: could not read wrk output:\n{text}"),
    })
}

fn one_session(cfg: &loadgen::LoadConfig) -> anyhow::Result<String> {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    use std::io::{Read, Write};
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    b.set_verify(SslVerifyMode::NONE);
    let c = b.build();
    let tcp = std::net::TcpStream::connect(cfg.addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut tls = c
        .configure()?
        .verify_hostname(false)
        .connect("localhost", tcp)?;
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"wrk-setup","version":"1"}}}"#;
    let req = format!(
        "POST /mcp HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        cfg.host,
        cfg.token.as_deref().unwrap_or(""),
        body.len()
    );
    tls.write_all(req.as_bytes())?;
    let mut resp = Vec::new();
    let _ = tls.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("mcp-session-id")
                .then(|| v.trim().to_string())
        })
        .with_context(|| format!("no session id in {text:?}"))
}

/// Run the comparison.
pub fn run(args: &ProxyArgs) -> anyhow::Result<()> {
    if args.runs == 0 || args.connections == 0 || args.duration <= 0.0 {
        bail!("--runs, --connections and --duration must be positive");
    }
    pin_self(&args.load_cpus);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let dir = std::fs::canonicalize(&args.out)?;
    let (mut job, token) = make_keys(&dir)?;
    let (backends, addrs) = start_backends(args)?;
    job.backends = addrs;
    job.proxy_cpus = args.proxy_cpus.clone();
    job.ciphersuite = args.ciphersuite.clone();
    println!(
        "bench proxy: {} {} backends, {} connections, payload {} B, {}, {} loop, TLS 1.3 {}, RS256 JWT, proxy CPUs {}, load CPUs {}",
        args.backend_count,
        args.backends,
        args.connections,
        args.payload,
        if args.sse {
            "SSE responses"
        } else {
            "JSON responses"
        },
        args.rate
            .map_or("closed".into(), |r| format!("open ({r} req/s)")),
        args.ciphersuite,
        args.proxy_cpus,
        args.load_cpus
    );
    let mut results = Vec::new();
    for t in &args.targets {
        let t = t.trim();
        println!(
            "bench proxy: {t}: warm-up {:.1}s, then {} × {:.1}s …",
            args.warmup,
            args.windows(),
            args.duration
        );
        let r = match measure(t, args, &job, &token, &backends) {
            Ok(r) => {
                println!(
                    "bench proxy: {t}: windows {:?} req/s, median {} req/s ({} per proxy core), {} errors",
                    r.rps_runs.iter().map(|x| x.round()).collect::<Vec<_>>(),
                    fmt_opt(r.rps, 0),
                    fmt_opt(r.rps_per_core, 0),
                    r.errors
                );
                r
            }
            Err(e) => {
                println!("bench proxy: {t}: cannot run: {e:#}");
                TargetResult::unavailable(t, format!("{e:#}"))
            }
        };
        results.push(r);
    }
    let misrouted = backends.misrouted() + results.iter().map(|r| r.misrouted).sum::<u64>();
    print!("\n{}", table(&results));
    if misrouted > 0 {
        println!("warning: {misrouted} requests reached a backend that did not own their session");
    }
    for r in &results {
        if !r.describe.is_empty() {
            println!("  {}: {}", r.target, r.describe);
        }
    }
    if args.wrk {
        let ours = results
            .iter()
            .find(|r| r.target == "kernel")
            .and_then(|r| r.rps);
        match wrk_cross_check(args, &job, &token, ours) {
            Ok(line) => println!("{line}"),
            Err(e) => println!("wrk cross-check: {e:#}"),
        }
    }
    let json = serde_json::json!({
        "settings": {
            "connections": args.connections, "payload": args.payload, "sse": args.sse,
            "rate": args.rate, "duration_s": args.duration, "warmup_s": args.warmup,
            "runs": args.runs, "windows": args.windows(), "max_other_share": MAX_OTHER_SHARE,
            "backends": args.backends, "backend_count": args.backend_count,
            "proxy_cpus": args.proxy_cpus, "load_cpus": args.load_cpus,
            "ciphersuite": args.ciphersuite,
        },
        "results": results,
        "misrouted": misrouted,
    });
    let json_path = dir.join("bench-proxy.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&json)?)?;
    let svg_path = dir.join("bench-proxy.svg");
    std::fs::write(&svg_path, svg(&results))?;
    println!("wrote {} and {}", json_path.display(), svg_path.display());
    println!("{}", ratios_line(&results));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_is_na_without_figures() {
        let ok = |t: &str, rps: f64, us: f64| TargetResult {
            rps: Some(rps),
            rps_per_core: Some(1e6 / us),
            core_us_per_req: Some(us),
            status: "ok".into(),
            ..TargetResult::unavailable(t, String::new())
        };
        let mut rs = vec![
            // Raw req/s say 1.0; per core kernel does 2× HAProxy's work.
            ok("kernel", 300.0, 25.0),
            ok("haproxy", 300.0, 50.0),
            TargetResult::unavailable("dpdk", "not built".into()),
        ];
        assert_eq!(ratio(&rs, "kernel", "haproxy"), "2.00");
        assert_eq!(ratio(&rs, "dpdk", "kernel"), "n/a");
        assert_eq!(
            ratios_line(&rs),
            "ratios: kernel/haproxy=2.00 dpdk/kernel=n/a dpdk_us_per_req=n/a"
        );
        rs[2] = ok("dpdk", 310.0, 5.0);
        assert_eq!(
            ratios_line(&rs),
            "ratios: kernel/haproxy=2.00 dpdk/kernel=5.00 dpdk_us_per_req=5.00"
        );
        rs[2] = TargetResult::unavailable("dpdk", "not built".into());
        let t = table(&rs);
        assert!(t.contains("not run: not built"), "{t}");
        assert!(svg(&rs).contains("n/a"));
    }

    #[test]
    fn lcore_breakdown_divides_each_phase_by_the_requests() {
        let c = targets::LcoreCycles {
            rx_s: 0.5,
            processing_s: 2.0,
            tx_s: 1.5,
            idle_s: 1.0,
            busy_turns: 1000.0,
            idle_turns: 4000.0,
        };
        let b = LcoreBreakdown::of(&c, 250_000).expect("requests were made");
        assert_eq!(b.rx_us_per_req, 2.0);
        assert_eq!(b.processing_us_per_req, 8.0);
        assert_eq!(b.tx_us_per_req, 6.0);
        assert_eq!(b.idle_share, 0.2);
        assert_eq!(b.idle_turn_ns, Some(250_000.0));
        assert!(LcoreBreakdown::of(&c, 0).is_none());
        let r = TargetResult {
            status: "ok".into(),
            lcore_breakdown: Some(b),
            ..TargetResult::unavailable("dpdk", String::new())
        };
        let t = table(&[r]);
        assert!(
            t.contains("dpdk lcore µs/req: rx 2.00 processing 8.00 tx 6.00; idle 20% of cycles; turns busy 1000 idle 4000 (idle turn 250000 ns)"),
            "{t}"
        );
    }
}

#[cfg(test)]
mod window_tests {
    use super::*;

    fn mark(busy_s: f64, other_ticks: u64, lcore_busy_s: f64) -> Mark {
        Mark {
            core: Some(corestat::CoreMark {
                core: corestat::CoreTimes {
                    busy_s,
                    steal_s: 0.0,
                },
                others: [(77, (other_ticks, 1))].into_iter().collect(),
            }),
            cycles: Some(targets::LcoreCycles {
                rx_s: 0.0,
                processing_s: lcore_busy_s,
                tx_s: 0.0,
                idle_s: 0.0,
                busy_turns: 0.0,
                idle_turns: 0.0,
            }),
        }
    }

    #[test]
    fn kernel_targets_cost_the_core_busy_time_and_dpdk_its_busy_cycles() {
        let (a, b) = (mark(10.0, 100, 1.0), mark(19.8, 110, 4.0));
        let k = Window::between(&a, &b, &[1], 10.0, false);
        assert!((k.cost_s.unwrap() - 9.8).abs() < 1e-9, "{k:?}");
        let d = Window::between(&a, &b, &[1], 10.0, true);
        assert!((d.cost_s.unwrap() - 3.0).abs() < 1e-9, "{d:?}");
        // Another process: 10 ticks, 0.1 s of 10 s, 1 %: clean.
        assert!((k.other_share.unwrap() - 0.01).abs() < 1e-9);
        assert!(!k.disturbed());
        let noisy = Window::between(&a, &mark(19.8, 130, 4.0), &[1], 10.0, false);
        assert!(noisy.disturbed(), "{noisy:?}");
    }

    #[test]
    fn open_loop_wants_five_windows() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            a: ProxyArgs,
        }
        let closed = Cli::parse_from(["x", "--runs", "3"]).a;
        assert_eq!(closed.windows(), 3);
        let open = Cli::parse_from(["x", "--runs", "3", "--rate", "1000"]).a;
        assert_eq!(open.windows(), 5);
        let many = Cli::parse_from(["x", "--runs", "7", "--rate", "1000"]).a;
        assert_eq!(many.windows(), 7);
    }
}
