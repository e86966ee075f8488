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
//! - `events_lost`: gaps in the event ids of each stream, plus each open
//!   stream whose last event (sent once emission pauses, marked `end`)
//!   never arrived.
//! - `requests_failed`: failures no killed backend explains (see
//!   [`client`]).
//!
//! Load runs in child processes (`dpuproxy bench soak-part`, see
//! [`part`]): this machine's hard open-file limit (20,000) caps every
//! process, so clients and backends are spread over as many processes as
//! their sockets need, and kernel mode runs as many proxy processes as its
//! sockets need, sharing the listen port by SO_REUSEPORT and routing any
//! session through sealed session ids (the fleet setup of the README).
//! A dpdk proxy holds no descriptor per connection and runs as one process.

pub mod backend;
pub mod client;
pub mod fleet;
pub mod host;
pub mod kills;
pub mod part;
pub mod sample;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::proxy::netns::Netns;
use crate::proxy::targets::{self, Running};
use fleet::{Part, sum_stats};
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
    /// Client connections still opening (before their first response) at
    /// most, over all load processes: bounds the handshakes queued at the
    /// proxy, so the ramp and reconnect storms measure the proxy at its
    /// pace instead of overloading it.
    #[arg(long, default_value_t = 256)]
    pub max_connecting: usize,
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

/// Sockets one load process holds at most (the hard open-file limit here
/// is 20,000).
const PER_PART: usize = 15_000;

/// Sockets one kernel-mode proxy process holds at most (a client and a
/// backend socket per stream).
const PER_KERNEL_PROXY: usize = 16_000;

/// How the soak is laid out over processes.
#[derive(Debug, Clone, Copy)]
struct Layout {
    clients: usize,
    client_parts: usize,
    backend_parts: usize,
    backends_per_part: usize,
    proxies: usize,
}

impl Layout {
    fn of(args: &SoakArgs, dpdk: bool) -> Self {
        let clients = args.streams + args.requesters + args.churners;
        let parts = clients.div_ceil(PER_PART);
        Self {
            clients,
            client_parts: parts,
            backend_parts: parts,
            backends_per_part: args.backends.div_ceil(parts),
            proxies: if dpdk {
                1
            } else {
                (2 * clients).div_ceil(PER_KERNEL_PROXY)
            },
        }
    }

    fn backends(&self) -> usize {
        self.backend_parts * self.backends_per_part
    }

    /// Share `n` over the client parts: part `k`'s part.
    fn share(&self, n: usize, k: usize) -> usize {
        n / self.client_parts + usize::from(k < n % self.client_parts)
    }
}

/// Run the soak and print its figures.
pub fn run(args: &SoakArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.streams > 0, "--streams must be at least 1");
    anyhow::ensure!(args.backends > 0, "--backends must be at least 1");
    anyhow::ensure!(
        args.max_connecting > 0,
        "--max-connecting must be at least 1"
    );
    anyhow::ensure!(
        args.minutes > 0.0 && args.sample_every > 0.0 && args.event_every > 0.0,
        "--minutes, --sample-every and --event-every must be positive"
    );
    let dpdk = match args.mode.as_str() {
        "kernel" => false,
        "dpdk" => true,
        other => bail!("--mode must be kernel or dpdk, not {other:?}"),
    };
    let layout = Layout::of(args, dpdk);
    crate::proxy::pin_self(&args.load_cpus);
    let _backlog = host::BacklogRaised::at_least(65_536);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let (mut job, token) = crate::proxy::make_keys(&args.out)?;
    job.proxy_cpus = args.proxy_cpus.clone();
    job.ciphersuite = "TLS_AES_128_GCM_SHA256".into();
    job.af_packet_frames = crate::proxy::targets::AF_PACKET_BURST_FRAMES;
    let token_file = args.out.join("soak-token");
    std::fs::write(&token_file, &token)?;
    let ns = if dpdk {
        let ns = Netns::create()?;
        for k in 1..layout.client_parts {
            ns.add_peer_address(source_in_netns(k)?)?;
        }
        Some(ns)
    } else {
        None
    };
    eprintln!(
        "soak: {} streams, {} load processes for clients and {} for {} backends, {} proxy process(es)",
        args.streams,
        layout.client_parts,
        layout.backend_parts,
        layout.backends(),
        layout.proxies
    );
    let mut backends = start_backend_parts(args, &layout, ns.as_ref())?;
    job.backends = backends.iter().flat_map(|(_, a)| a.clone()).collect();
    let config = write_proxy_config(&args.out, &layout)?;
    job.extra_args = vec![
        "--config".into(),
        config.display().to_string(),
        "--session-key".into(),
        write_session_key(&args.out)?.display().to_string(),
    ];
    let proxies = start_proxies(&job, &layout, ns.as_ref())?;
    let watched: Vec<(u32, SocketAddr)> = proxies
        .iter()
        .filter_map(|p| Some((targets::proxy_pid(p), p.admin?)))
        .collect();
    let idle = Sample::take(0.0, &watched);
    eprintln!(
        "soak: proxy idle: rss={:.1} MB fds={}",
        idle.rss_kb as f64 / 1024.0,
        idle.fds
    );
    let clients = start_client_parts(args, &layout, proxies[0].addr, &token_file, ns.as_ref())?;
    let mut soak = Soak {
        args,
        proxies: watched,
        backends: backends.drain(..).map(|(p, _)| p).collect(),
        backends_per_part: layout.backends_per_part,
        clients,
        softnet_dropped_before: host::softnet_dropped(),
    };
    let outcome = soak.run(&idle);
    drop(soak);
    drop(proxies);
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

fn start_backend_parts(
    args: &SoakArgs,
    layout: &Layout,
    ns: Option<&Netns>,
) -> anyhow::Result<Vec<(Part, Vec<SocketAddr>)>> {
    let ip = ns.map_or(Ipv4Addr::LOCALHOST, |n| n.peer_ip);
    let mut parts = Vec::new();
    for k in 0..layout.backend_parts {
        let mut a = vec![
            "--role".to_string(),
            "backends".into(),
            "--ip".into(),
            ip.to_string(),
            "--first".into(),
            (k * layout.backends_per_part).to_string(),
            "--backends".into(),
            layout.backends_per_part.to_string(),
            "--event-every".into(),
            args.event_every.to_string(),
            "--event-pad".into(),
            args.event_pad.to_string(),
        ];
        if let Some(n) = ns {
            a.extend(["--netns".into(), n.name.clone()]);
        }
        let log = args.out.join(format!("soak-backends-{k}.log"));
        let mut part = Part::spawn(&format!("backends-{k}"), &a, &log)?;
        let mut addrs = Vec::new();
        loop {
            let line = part.line()?;
            if line == "ready" {
                break;
            }
            let addr = line
                .split_whitespace()
                .nth(2)
                .and_then(|a| a.parse().ok())
                .with_context(|| format!("backends-{k}: unexpected {line:?}"))?;
            addrs.push(addr);
        }
        parts.push((part, addrs));
    }
    Ok(parts)
}

fn start_client_parts(
    args: &SoakArgs,
    layout: &Layout,
    proxy: SocketAddr,
    token_file: &Path,
    ns: Option<&Netns>,
) -> anyhow::Result<Vec<Part>> {
    let mut parts = Vec::new();
    for k in 0..layout.client_parts {
        let source = match ns {
            Some(n) if k == 0 => n.peer_ip,
            Some(_) => source_in_netns(k)?,
            None => Ipv4Addr::new(127, 0, 1, u8::try_from(1 + k).context("too many parts")?),
        };
        let mut a = vec![
            "--role".to_string(),
            "clients".into(),
            "--proxy".into(),
            proxy.to_string(),
            "--sources".into(),
            source.to_string(),
            "--token-file".into(),
            token_file.display().to_string(),
            "--backends".into(),
            layout.backends().to_string(),
            "--streams".into(),
            layout.share(args.streams, k).to_string(),
            "--requesters".into(),
            layout.share(args.requesters, k).to_string(),
            "--request-every-ms".into(),
            args.request_every_ms.to_string(),
            "--churners".into(),
            layout.share(args.churners, k).to_string(),
            "--churn-every-ms".into(),
            args.churn_every_ms.to_string(),
            "--connect-rate".into(),
            (args.connect_rate / layout.client_parts as f64).to_string(),
            "--max-connecting".into(),
            layout.share(args.max_connecting, k).max(1).to_string(),
        ];
        if let Some(n) = ns {
            a.extend(["--netns".into(), n.name.clone()]);
        }
        let log = args.out.join(format!("soak-clients-{k}.log"));
        let mut part = Part::spawn(&format!("clients-{k}"), &a, &log)?;
        let ready = part.line()?;
        anyhow::ensure!(ready == "ready", "clients-{k}: unexpected {ready:?}");
        parts.push(part);
    }
    Ok(parts)
}

/// A fresh session-sealing key (every kernel proxy of the soak shares it,
/// so any of them routes any session).
fn write_session_key(out: &Path) -> anyhow::Result<PathBuf> {
    let mut key = [0u8; 32];
    openssl::rand::rand_bytes(&mut key)?;
    let path = out.join("soak-session.key");
    std::fs::write(&path, format!("{}\n", hex_string(&key)))?;
    Ok(path)
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The proxies' config: limits sized for the soak (sessions and
/// connections beyond the defaults; the per-client session quota off, as
/// every soak client shares one token subject).
fn write_proxy_config(out: &Path, layout: &Layout) -> anyhow::Result<PathBuf> {
    let sessions = (layout.clients * 2).max(100_000);
    let text = format!(
        "# Written by `dpuproxy bench soak`.\n[limits]\nmax_sessions = {sessions}\nmax_sessions_per_client = {sessions}\nmax_connections_per_worker = {}\n",
        layout.clients + 4096
    );
    let path = out.join("soak-proxy.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn start_proxies(
    job: &targets::Job,
    layout: &Layout,
    ns: Option<&Netns>,
) -> anyhow::Result<Vec<Running>> {
    match ns {
        Some(ns) => Ok(vec![targets::start_dpdk(job, ns)?]),
        None => {
            let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, crate::procs::free_port()?));
            fleet::start_kernel_fleet(job, layout.proxies, listen)
        }
    }
}

struct Soak<'a> {
    args: &'a SoakArgs,
    /// (pid, admin) of every proxy process.
    proxies: Vec<(u32, SocketAddr)>,
    backends: Vec<Part>,
    backends_per_part: usize,
    clients: Vec<Part>,
    /// The host's backlog drops (`/proc/net/softnet_stat`) before the load.
    softnet_dropped_before: u64,
}

/// What the soak prints and writes.
struct Report {
    details: String,
    verdict: String,
    json: String,
    clean: bool,
}

impl Soak<'_> {
    fn run(&mut self, idle: &Sample) -> anyhow::Result<Report> {
        let ramp = self.ramp()?;
        let samples = self.load_phase()?;
        for c in &mut self.clients {
            c.ok("quiet")?;
        }
        for b in &mut self.backends {
            b.ok("pause")?;
        }
        self.wait_for_last_events()?;
        let mut finals = Vec::new();
        for c in &mut self.clients {
            finals.push(c.command("finish")?);
        }
        let stats = sum_stats(&finals);
        self.save_metrics();
        let after = self.settle(idle.fds);
        let mut backend_lines = Vec::new();
        for b in &mut self.backends {
            backend_lines.push(b.command("stats")?);
        }
        let backend = sum_stats(&backend_lines);
        Ok(self.report(idle, ramp, &samples, &after, &stats, &backend))
    }

    /// Keep each proxy's `/metrics` as the load ended (error and local
    /// response counts by kind explain failures) in the output directory.
    fn save_metrics(&self) {
        for (k, &(_, admin)) in self.proxies.iter().enumerate() {
            if let Some(text) = targets::metrics_text(admin) {
                let path = self
                    .args
                    .out
                    .join(format!("soak-{}-metrics-{k}.txt", self.args.mode));
                let _ = std::fs::write(path, text);
            }
        }
    }

    /// After the pause: wait until every open stream has its `end` event,
    /// 120 s at most (a stream still without it then counts as lost). The
    /// pause sends every stream's `end` at once; what a burst loses on the
    /// way (an rx ring full) comes back by TCP retransmission, whose
    /// backoff can reach seconds after a few losses in a row.
    fn wait_for_last_events(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        let deadline = start + Duration::from_secs(120);
        loop {
            let awaiting = self
                .client_stats()?
                .get("streams_awaiting_end")
                .copied()
                .unwrap_or(0);
            if awaiting == 0 {
                eprintln!(
                    "soak: every stream had its end event {:.1} s after the pause",
                    start.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            if Instant::now() >= deadline {
                eprintln!("soak: {awaiting} streams still without their end event after 120 s");
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn client_stats(&mut self) -> anyhow::Result<BTreeMap<String, u64>> {
        let mut lines = Vec::new();
        for c in &mut self.clients {
            lines.push(c.command("stats")?);
        }
        Ok(sum_stats(&lines))
    }

    /// Wait until every stream is open; returns how long it took.
    fn ramp(&mut self) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let limit = Duration::from_secs_f64(
            60.0 + 3.0 * self.args.streams as f64 / self.args.connect_rate.max(1.0),
        );
        let mut last_report = start;
        loop {
            let open = self
                .client_stats()?
                .get("streams_open")
                .copied()
                .unwrap_or(0) as usize;
            if open >= self.args.streams {
                eprintln!(
                    "soak: {open} streams open after {:.1} s",
                    start.elapsed().as_secs_f64()
                );
                return Ok(start.elapsed());
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
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Kill global backend `b`: every client part hears first, so a failure
    /// the kill causes always finds the kill counted, and hears again once
    /// the backend is down, so a session whose `initialize` left between
    /// the two (and still reached the dying backend) is covered too.
    fn kill(&mut self, b: usize) -> anyhow::Result<()> {
        self.book_kill(b)?;
        let (part, local) = (b / self.backends_per_part, b % self.backends_per_part);
        self.backends[part].ok(&format!("down {local}"))?;
        // The backend thread applies the kill on its next turn (a 20 ms
        // poll); book again well after that.
        std::thread::sleep(Duration::from_millis(250));
        self.book_kill(b)
    }

    fn book_kill(&mut self, b: usize) -> anyhow::Result<()> {
        for c in &mut self.clients {
            c.ok(&format!("killed {b}"))?;
        }
        Ok(())
    }

    fn restart(&mut self, b: usize) -> anyhow::Result<()> {
        let (part, local) = (b / self.backends_per_part, b % self.backends_per_part);
        self.backends[part].ok(&format!("up {local}"))?;
        for c in &mut self.clients {
            c.ok(&format!("up {b}"))?;
        }
        Ok(())
    }

    /// Full load for `--minutes`: samples, kills and restarts.
    fn load_phase(&mut self) -> anyhow::Result<Vec<Sample>> {
        let total = Duration::from_secs_f64(self.args.minutes * 60.0);
        let kill_every = self.args.kill_every.unwrap_or(total.as_secs_f64() / 3.0);
        let down_for = Duration::from_secs_f64(self.args.down_for);
        let backends = self.backends.len() * self.backends_per_part;
        let start = Instant::now();
        let mut samples = vec![self.sample(start)?];
        let mut next_sample = Duration::from_secs_f64(self.args.sample_every);
        let mut kills = 0usize;
        let mut down: Option<(usize, Instant)> = None;
        while start.elapsed() < total {
            let t = start.elapsed().as_secs_f64();
            if let Some((b, since)) = down
                && since.elapsed() >= down_for
            {
                self.restart(b)?;
                eprintln!("soak: t={t:.0}s backend b{} restarted", b + 1);
                down = None;
            }
            if kill_every > 0.0 && down.is_none() && t >= kill_every * (kills + 1) as f64 {
                let b = kills % backends;
                kills += 1;
                self.kill(b)?;
                eprintln!("soak: t={t:.0}s backend b{} killed", b + 1);
                down = Some((b, Instant::now()));
            }
            if start.elapsed() >= next_sample {
                samples.push(self.sample(start)?);
                next_sample += Duration::from_secs_f64(self.args.sample_every);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some((b, _)) = down {
            self.restart(b)?;
        }
        samples.push(self.sample(start)?);
        Ok(samples)
    }

    fn sample(&mut self, start: Instant) -> anyhow::Result<Sample> {
        let s = Sample::take(start.elapsed().as_secs_f64(), &self.proxies);
        let c = self.client_stats()?;
        let g = |k: &str| c.get(k).copied().unwrap_or(0);
        eprintln!(
            "soak: t={:.0}s rss={:.1}MB fds={} sessions={} buffered={}KB proxy_conns={} proxy_streams={} streams={} events={} lost={} ok={} failed={} excused={} reconnects={}",
            s.t,
            s.rss_kb as f64 / 1024.0,
            s.fds,
            s.sessions,
            s.buffered / 1024,
            s.connections,
            s.proxy_streams,
            g("streams_open"),
            g("events"),
            g("events_lost"),
            g("requests_ok"),
            g("requests_failed"),
            g("requests_excused"),
            g("reconnects"),
        );
        Ok(s)
    }

    /// After the clients have gone: wait (30 s at most) for the proxies to
    /// close every client connection and expire their idle backend pools
    /// (pool_idle 4 s), then one housekeeping period more (5 s: freed heap
    /// goes back to the system), then sample.
    fn settle(&self, idle_fds: u64) -> Sample {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut s = Sample::take(0.0, &self.proxies);
        while Instant::now() < deadline && (s.connections > 0 || s.fds > idle_fds) {
            std::thread::sleep(Duration::from_millis(500));
            s = Sample::take(0.0, &self.proxies);
        }
        std::thread::sleep(Duration::from_secs(6));
        Sample::take(0.0, &self.proxies)
    }
    fn report(
        &self,
        idle: &Sample,
        ramp: Duration,
        samples: &[Sample],
        after: &Sample,
        clients: &BTreeMap<String, u64>,
        backends: &BTreeMap<String, u64>,
    ) -> Report {
        let c = |k: &str| clients.get(k).copied().unwrap_or(0);
        let b = |k: &str| backends.get(k).copied().unwrap_or(0);
        let first = samples.first().cloned().unwrap_or_default();
        let last = samples.last().cloned().unwrap_or_default();
        let slope = sample::rss_slope_kb_per_min(samples);
        let fds_leaked = after.fds.saturating_sub(idle.fds);
        let lost = c("events_lost") + c("events_duplicated");
        let failed = c("requests_failed");
        let n = self.args.streams as f64;
        let per_stream_kb = (first.rss_kb.saturating_sub(idle.rss_kb)) as f64 / n;
        let tcp_kb = first.tcp_mem_pages.saturating_sub(idle.tcp_mem_pages) as f64 * 4.0 / n;
        let host_dropped = host::softnet_dropped().saturating_sub(self.softnet_dropped_before);
        let details = format!(
            "soak: mode={} proxies={} ramp_s={:.1} rss_idle_mb={:.1} rss_after_mb={:.1} proxy_kb_per_stream={:.1} buffered_bytes_per_stream={:.0} kernel_tcp_kb_per_stream={:.1} events={} events_duplicated={} requests_ok={} requests_excused={} reconnects={} backend_events={} backend_stuck={} host_backlog_dropped={} proxy_rx_missed={}",
            self.args.mode,
            self.proxies.len(),
            ramp.as_secs_f64(),
            idle.rss_kb as f64 / 1024.0,
            after.rss_kb as f64 / 1024.0,
            per_stream_kb,
            first.buffered as f64 / n,
            tcp_kb,
            c("events"),
            c("events_duplicated"),
            c("requests_ok"),
            c("requests_excused"),
            c("reconnects"),
            b("events"),
            b("stuck"),
            host_dropped,
            after.rx_missed,
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
            "proxies": self.proxies.len(),
            "rss_idle_kb": idle.rss_kb, "rss_after_kb": after.rss_kb, "fds_idle": idle.fds,
            "fds_after": after.fds,
            "samples": samples.iter().map(|s| serde_json::json!({
                "t": s.t, "rss_kb": s.rss_kb, "fds": s.fds, "sessions": s.sessions,
                "buffered": s.buffered, "connections": s.connections,
                "proxy_streams": s.proxy_streams, "tcp_mem_pages": s.tcp_mem_pages,
            })).collect::<Vec<_>>(),
            "clients": clients, "backends": backends,
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
