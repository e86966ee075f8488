//! `dpuproxy bench soak`: many concurrent SSE streams through the proxy,
//! in either mode, for minutes or hours, with keep-alive request churn,
//! session create/delete churn and a backend killed and restarted on a
//! schedule; the proxy's RSS, open fds, sessions and buffered bytes are
//! sampled as it runs.
//!
//! The last line is the verdict:
//! `streams=N minutes=M rss_start_mb=A rss_end_mb=B rss_slope_kb_per_min=S
//! fds_leaked=F events_lost=L requests_failed=R`. With `--check` the
//! command fails unless F, L and R are 0 (CI runs it that way).
//!
//! - `rss_start_mb` is the first sample once every stream is open,
//!   `rss_end_mb` the last one under load; the slope is a least-squares fit
//!   over the samples between them.
//! - `fds_leaked`: open fds once every client has gone and idle pooled
//!   backend connections have expired, minus the count before any load.
//! - `events_lost`: gaps in the event ids of each stream, plus events a
//!   backend emitted that never arrived (counted after emission pauses).
//! - `requests_failed`: failures no killed backend explains (see
//!   [`client`]).

pub mod backend;
pub mod client;
pub mod sample;

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::proxy::netns::Netns;
use crate::proxy::targets::{self, Running};
use backend::{BackendSettings, SoakBackends};
use client::{ClientSettings, ClientStats, SoakClients};
use sample::Sample;

/// `dpuproxy bench soak` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct SoakArgs {
    /// Data path: kernel or dpdk.
    #[arg(long, default_value = "kernel")]
    pub mode: String,
    /// Concurrent SSE streams (one TLS connection and one session each).
    #[arg(long, default_value_t = 1000)]
    pub streams: usize,
    /// Minutes under full load (after every stream is open).
    #[arg(long, default_value_t = 1.0)]
    pub minutes: f64,
    /// Seconds between two samples.
    #[arg(long, default_value_t = 60.0)]
    pub sample_every: f64,
    /// Backends (several, so the proxy has ports enough for its upstream
    /// connections: ~16k per backend in dpdk mode).
    #[arg(long, default_value_t = 8)]
    pub backends: usize,
    /// Seconds between two backend kills (0: none; default: a third of the
    /// run, so two kills).
    #[arg(long)]
    pub kill_every: Option<f64>,
    /// Seconds a killed backend stays down.
    #[arg(long, default_value_t = 10.0)]
    pub down_for: f64,
    /// Seconds between two events of one stream.
    #[arg(long, default_value_t = 10.0)]
    pub event_every: f64,
    /// Padding bytes in each event.
    #[arg(long, default_value_t = 64)]
    pub event_pad: usize,
    /// Clients sending keep-alive requests (request churn).
    #[arg(long, default_value_t = 16)]
    pub requesters: usize,
    /// Milliseconds between two requests of one requester.
    #[arg(long, default_value_t = 100)]
    pub request_every_ms: u64,
    /// Clients creating and deleting sessions (session churn).
    #[arg(long, default_value_t = 4)]
    pub churners: usize,
    /// Milliseconds between two churn cycles of one churner.
    #[arg(long, default_value_t = 200)]
    pub churn_every_ms: u64,
    /// New client connections per second at most (ramp and reconnects).
    #[arg(long, default_value_t = 2000.0)]
    pub connect_rate: f64,
    /// CPUs for the proxy (taskset list; dpdk: its first CPU is the lcore).
    #[arg(long, default_value = "1")]
    pub proxy_cpus: String,
    /// CPUs for the clients and backends.
    #[arg(long, default_value = "0")]
    pub load_cpus: String,
    /// Fail unless fds_leaked, events_lost and requests_failed are all 0.
    #[arg(long)]
    pub check: bool,
    /// Output directory (configs, proxy log, JSON summary).
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
}

/// Client connections per source address (loopback offers ~28k ephemeral
/// ports per source; this leaves room for reconnects in TIME-WAIT).
const PER_SOURCE: usize = 12_000;

/// Run the soak and print its figures.
pub fn run(args: &SoakArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.streams > 0, "--streams must be at least 1");
    anyhow::ensure!(args.backends > 0, "--backends must be at least 1");
    anyhow::ensure!(
        args.minutes > 0.0 && args.sample_every > 0.0 && args.event_every > 0.0,
        "--minutes, --sample-every and --event-every must be positive"
    );
    let dpdk = match args.mode.as_str() {
        "kernel" => false,
        "dpdk" => true,
        other => bail!("--mode must be kernel or dpdk, not {other:?}"),
    };
    let clients_total = args.streams + args.requesters + args.churners;
    raise_nofile(clients_total * 3 + 10_000)?;
    crate::proxy::pin_self(&args.load_cpus);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let (mut job, token) = crate::proxy::make_keys(&args.out)?;
    job.proxy_cpus = args.proxy_cpus.clone();
    job.ciphersuite = "TLS_AES_128_GCM_SHA256".into();
    let sources = clients_total.div_ceil(PER_SOURCE);
    let ns = if dpdk {
        let ns = std::sync::Arc::new(Netns::create()?);
        for k in 1..sources {
            ns.add_peer_address(source_in_netns(k)?)?;
        }
        Some(ns)
    } else {
        None
    };
    let backend_ip = ns.as_ref().map_or(Ipv4Addr::LOCALHOST, |n| n.peer_ip);
    let backends = SoakBackends::start(BackendSettings {
        ip: backend_ip,
        count: args.backends,
        event_every: Duration::from_secs_f64(args.event_every),
        event_pad: args.event_pad,
        netns: ns.clone(),
    })?;
    job.backends = backends.addrs.clone();
    let config = write_proxy_config(&args.out, clients_total)?;
    let (proxy, admin) = start_proxy(&mut job, &config, ns.as_deref())?;
    let source_ips: Vec<Ipv4Addr> = match &ns {
        Some(n) => (0..sources)
            .map(|k| {
                if k == 0 {
                    Ok(n.peer_ip)
                } else {
                    source_in_netns(k)
                }
            })
            .collect::<anyhow::Result<_>>()?,
        None => (0..sources)
            .map(|k| Ipv4Addr::new(127, 0, 1, 1 + k as u8))
            .collect(),
    };
    let settings = ClientSettings {
        proxy: proxy.addr,
        sources: source_ips,
        token,
        ciphersuite: job.ciphersuite.clone(),
        streams: args.streams,
        requesters: args.requesters,
        request_every: Duration::from_millis(args.request_every_ms),
        churners: args.churners,
        churn_every: Duration::from_millis(args.churn_every_ms),
        connect_rate: args.connect_rate,
        max_connecting: 256,
        netns: ns.clone(),
    };
    let soak = Soak {
        args,
        pid: targets::proxy_pid(&proxy),
        admin,
        backends: &backends,
    };
    let outcome = soak.run(settings);
    drop(proxy);
    let report = outcome?;
    println!("{}", report.details);
    println!("{}", report.verdict);
    let json = args.out.join(format!("soak-{}.json", args.mode));
    std::fs::write(&json, &report.json)?;
    eprintln!("soak: wrote {}", json.display());
    if args.check && !report.clean {
        bail!("soak: fds leaked, events lost or requests failed (see the verdict line)");
    }
    Ok(())
}

/// The k-th extra client address inside the dpdk namespace (k ≥ 1).
fn source_in_netns(k: usize) -> anyhow::Result<Ipv4Addr> {
    let last = u8::try_from(10 + k).context("too many source addresses")?;
    Ok(Ipv4Addr::new(10, 77, 250, last))
}

/// Raise this process's open-file limit (soft and, as root, hard) to
/// `want`; the proxy inherits it.
fn raise_nofile(want: usize) -> anyhow::Result<()> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20);
    let want = (want as u64).min(nr_open);
    let now = getrlimit(Resource::Nofile);
    if now.current.is_some_and(|c| c >= want) {
        return Ok(());
    }
    let hard = now.maximum.map_or(want, |m| m.max(want));
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(want),
            maximum: Some(hard),
        },
    )
    .with_context(|| format!("cannot raise the open-file limit to {want} (run as root)"))
}

/// The proxy's config: limits sized for the soak (sessions and
/// connections beyond the defaults; the per-client session quota off, as
/// every soak client shares one token subject).
fn write_proxy_config(out: &Path, clients: usize) -> anyhow::Result<PathBuf> {
    let sessions = (clients * 2).max(100_000);
    let text = format!(
        "# Written by `dpuproxy bench soak`.\n[limits]\nmax_sessions = {sessions}\nmax_sessions_per_client = {sessions}\nmax_connections_per_worker = {}\n",
        clients + 4096
    );
    let path = out.join("soak-proxy.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn start_proxy(
    job: &mut targets::Job,
    config: &Path,
    ns: Option<&Netns>,
) -> anyhow::Result<(Running, SocketAddr)> {
    job.extra_args = vec!["--config".into(), config.display().to_string()];
    match ns {
        Some(ns) => {
            let r = targets::start_dpdk(job, ns)?;
            let admin = r.admin.context("the dpdk target has an admin listener")?;
            Ok((r, admin))
        }
        None => {
            let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, crate::procs::free_port()?));
            job.extra_args.extend(["--admin".into(), admin.to_string()]);
            let r = targets::start_kernel(job)?;
            Ok((r, admin))
        }
    }
}

struct Soak<'a> {
    args: &'a SoakArgs,
    pid: u32,
    admin: SocketAddr,
    backends: &'a SoakBackends,
}

/// What the soak prints and writes.
struct Report {
    details: String,
    verdict: String,
    json: String,
    clean: bool,
}

impl Soak<'_> {
    fn run(&self, settings: ClientSettings) -> anyhow::Result<Report> {
        let idle = Sample::take(0.0, self.pid, self.admin);
        eprintln!(
            "soak: proxy idle: rss={} MB fds={}",
            idle.rss_kb / 1024,
            idle.fds
        );
        let clients = SoakClients::start(settings, self.backends.control.clone())?;
        let ramp = self.ramp(&clients)?;
        let samples = self.load_phase(&clients)?;
        clients.quiet();
        self.backends.control.pause(true);
        std::thread::sleep(Duration::from_secs(3));
        let stats = clients.stats.clone();
        clients.finish()?;
        let after = self.settle(idle.fds);
        Ok(self.report(&idle, ramp, &samples, &after, &stats))
    }

    /// Wait until every stream is open; returns how long it took.
    fn ramp(&self, clients: &SoakClients) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let limit = Duration::from_secs_f64(
            60.0 + 3.0 * self.args.streams as f64 / self.args.connect_rate.max(1.0),
        );
        let mut last_report = start;
        loop {
            let open = clients.stats.streams_open.load(Ordering::Relaxed) as usize;
            if open >= self.args.streams {
                eprintln!(
                    "soak: {open} streams open after {:.1} s",
                    start.elapsed().as_secs_f64()
                );
                return Ok(start.elapsed());
            }
            if clients.is_finished() {
                bail!("the client thread ended during the ramp");
            }
            if start.elapsed() > limit {
                bail!(
                    "only {open} of {} streams open after {:.0} s",
                    self.args.streams,
                    limit.as_secs_f64()
                );
            }
            if last_report.elapsed() > Duration::from_secs(10) {
                last_report = Instant::now();
                eprintln!("soak: ramp: {open} streams open");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Full load for `--minutes`: samples, kills and restarts.
    fn load_phase(&self, clients: &SoakClients) -> anyhow::Result<Vec<Sample>> {
        let total = Duration::from_secs_f64(self.args.minutes * 60.0);
        let kill_every = self.args.kill_every.unwrap_or(total.as_secs_f64() / 3.0);
        let down_for = Duration::from_secs_f64(self.args.down_for);
        let start = Instant::now();
        let mut samples = vec![self.sample(start, &clients.stats)];
        let mut next_sample = Duration::from_secs_f64(self.args.sample_every);
        let mut kills = 0usize;
        let mut down: Option<(usize, Instant)> = None;
        while start.elapsed() < total {
            if clients.is_finished() {
                bail!("the client thread ended under load");
            }
            let t = start.elapsed();
            if let Some((b, since)) = down
                && since.elapsed() >= down_for
            {
                self.backends.control.set_down(b, false);
                eprintln!(
                    "soak: t={:.0}s backend b{} restarted",
                    t.as_secs_f64(),
                    b + 1
                );
                down = None;
            }
            let next_kill = kill_every * (kills + 1) as f64;
            if kill_every > 0.0 && down.is_none() && t.as_secs_f64() >= next_kill {
                let b = kills % self.args.backends;
                kills += 1;
                self.backends.control.set_down(b, true);
                eprintln!("soak: t={:.0}s backend b{} killed", t.as_secs_f64(), b + 1);
                down = Some((b, Instant::now()));
            }
            if t >= next_sample {
                samples.push(self.sample(start, &clients.stats));
                next_sample += Duration::from_secs_f64(self.args.sample_every);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some((b, _)) = down {
            self.backends.control.set_down(b, false);
        }
        samples.push(self.sample(start, &clients.stats));
        Ok(samples)
    }

    fn sample(&self, start: Instant, stats: &ClientStats) -> Sample {
        let s = Sample::take(start.elapsed().as_secs_f64(), self.pid, self.admin);
        let r = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        eprintln!(
            "soak: t={:.0}s rss={:.1}MB fds={} sessions={} buffered={}KB proxy_conns={} proxy_streams={} streams={} events={} lost={} ok={} failed={} excused={} reconnects={}",
            s.t,
            s.rss_kb as f64 / 1024.0,
            s.fds,
            s.sessions,
            s.buffered / 1024,
            s.connections,
            s.proxy_streams,
            r(&stats.streams_open),
            r(&stats.events),
            r(&stats.events_lost),
            r(&stats.requests_ok),
            r(&stats.requests_failed),
            r(&stats.requests_excused),
            r(&stats.reconnects),
        );
        s
    }

    /// After the clients have gone: wait for the proxy to close every
    /// client connection and expire its idle backend pool (pool_idle 4 s),
    /// then sample.
    fn settle(&self, idle_fds: u64) -> Sample {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut s = Sample::take(0.0, self.pid, self.admin);
        while Instant::now() < deadline && (s.connections > 0 || s.fds > idle_fds) {
            std::thread::sleep(Duration::from_millis(500));
            s = Sample::take(0.0, self.pid, self.admin);
        }
        s
    }

    fn report(
        &self,
        idle: &Sample,
        ramp: Duration,
        samples: &[Sample],
        after: &Sample,
        stats: &ClientStats,
    ) -> Report {
        let r = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let first = samples.first().cloned().unwrap_or_default();
        let last = samples.last().cloned().unwrap_or_default();
        let slope = sample::rss_slope_kb_per_min(samples);
        let fds_leaked = after.fds.saturating_sub(idle.fds);
        let lost = r(&stats.events_lost) + r(&stats.events_duplicated);
        let failed = r(&stats.requests_failed);
        let n = self.args.streams as f64;
        let per_stream_kb = (first.rss_kb.saturating_sub(idle.rss_kb)) as f64 / n;
        let tcp_kb = first.tcp_mem_pages.saturating_sub(idle.tcp_mem_pages) as f64 * 4.0 / n;
        let mut details = String::new();
        let _ = write!(
            details,
            "soak: mode={} ramp_s={:.1} rss_idle_mb={:.1} rss_after_mb={:.1} proxy_kb_per_stream={:.1} buffered_bytes_per_stream={:.0} kernel_tcp_kb_per_stream={:.1} events={} events_duplicated={} requests_ok={} requests_excused={} reconnects={} backend_events={} backend_stuck={}",
            self.args.mode,
            ramp.as_secs_f64(),
            idle.rss_kb as f64 / 1024.0,
            after.rss_kb as f64 / 1024.0,
            per_stream_kb,
            first.buffered as f64 / n,
            tcp_kb,
            r(&stats.events),
            r(&stats.events_duplicated),
            r(&stats.requests_ok),
            r(&stats.requests_excused),
            r(&stats.reconnects),
            r(&self.backends.control.events),
            r(&self.backends.control.stuck),
        );
        let verdict = format!(
            "streams={} minutes={} rss_start_mb={:.1} rss_end_mb={:.1} rss_slope_kb_per_min={:.1} fds_leaked={} events_lost={} requests_failed={}",
            self.args.streams,
            self.args.minutes,
            first.rss_kb as f64 / 1024.0,
            last.rss_kb as f64 / 1024.0,
            slope,
            fds_leaked,
            lost,
            failed
        );
        let json = serde_json::json!({
            "mode": self.args.mode, "streams": self.args.streams, "minutes": self.args.minutes,
            "rss_idle_kb": idle.rss_kb, "rss_after_kb": after.rss_kb,
            "samples": samples.iter().map(|s| serde_json::json!({
                "t": s.t, "rss_kb": s.rss_kb, "fds": s.fds, "sessions": s.sessions,
                "buffered": s.buffered, "connections": s.connections,
                "proxy_streams": s.proxy_streams, "tcp_mem_pages": s.tcp_mem_pages,
            })).collect::<Vec<_>>(),
            "verdict": verdict, "details": details,
        })
        .to_string();
        Report {
            clean: fds_leaked == 0 && lost == 0 && failed == 0,
            details,
            verdict,
            json,
        }
    }
}
