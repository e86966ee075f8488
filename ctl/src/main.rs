//! `dpuproxy`: the command line (clap), configuration, mode selection,
//! admin listener and demo. Everything below this crate is a library;
//! this and the benchmarks (`dpuproxy-bench`, operator-facing too) are the
//! only places that use `anyhow`.

#![forbid(unsafe_code)]

mod admin;
mod config;
mod control;
mod demo;
mod demo_client;
mod demo_switch;
mod dpdk_mode;
mod exposition;
mod hugepages_cmd;
mod keys;
mod limits;
mod port_cmd;
mod port_loop;
mod switch_admin;
mod tls_echo;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use config::{CliOverrides, FileConfig, Mode, RunConfig};

#[derive(Parser, Debug)]
#[command(
    name = "dpuproxy",
    version,
    about = "TLS-terminating reverse proxy for MCP Streamable HTTP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the proxy.
    Run(Box<RunArgs>),
    /// Start 3 real MCP backends, the proxy and a client session; print what happened.
    Demo {
        /// Python interpreter with the `mcp` SDK (default: $DPUPROXY_PYTHON, .venv, python3).
        #[arg(long)]
        python: Option<PathBuf>,
    },
    /// TLS echo server on a kernel socket, using the memory-BIO handshake and our record layer.
    TlsEcho(tls_echo::TlsEchoArgs),
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Write a self-signed certificate and key (EC P-256, SAN 127.0.0.1 and localhost).
    GenCert {
        /// Certificate output (PEM).
        #[arg(long)]
        cert: PathBuf,
        /// Key output (PEM, PKCS#8).
        #[arg(long)]
        key: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
    /// Bring one DPDK port up, answer ARP and ping for --ip, print port and lcore counters.
    Port(port_cmd::PortArgs),
    /// Show hugepages (sizes, counts, mounts, what a port needs); reserve or mount them.
    Hugepages(hugepages_cmd::HugepagesArgs),
    /// Live mode switch of a running proxy (`--dpdk-switchable`): move every
    /// established connection to the other data path (POST /switch on its
    /// admin listener); prints what moved.
    Switch(switch_admin::SwitchArgs),
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Record layer seal/open throughput against raw one-shot EVP, per suite and size.
    Records(dpuproxy_bench::records::RecordsArgs),
    /// Userspace TCP: two stacks over an in-memory wire, optionally with faults.
    Tcp(dpuproxy_bench::tcp::TcpArgs),
    /// Kernel TCP connections moved between sockets with TCP_REPAIR (needs root), timed and checked.
    Repair(dpuproxy_bench::repair::RepairArgs),
    /// TCP connections moved from kernel sockets to the userspace stack and back (needs root), timed and checked.
    Handoff(dpuproxy_bench::handoff::HandoffArgs),
    /// Whole-proxy comparison: kernel vs dpdk vs HAProxy on the same MCP workload.
    Proxy(Box<dpuproxy_bench::proxy::ProxyArgs>),
    /// Many SSE streams for minutes or hours, with churn and backend kills; samples RSS, fds, sessions.
    Soak(Box<dpuproxy_bench::soak::SoakArgs>),
    /// One load process of `bench soak` (started by it, driven over stdin).
    #[command(hide = true)]
    SoakPart(Box<dpuproxy_bench::soak::part::PartArgs>),
    /// The memif rig's peer of `bench proxy` (started by it, driven over stdin).
    #[command(hide = true)]
    Peer(Box<dpuproxy_bench::proxy::peer::PeerArgs>),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Data path: kernel, dpdk, or auto (dpdk if it can start, else kernel).
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Client-facing TLS address, e.g. 127.0.0.1:8443.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Backend [NAME=]HOST:PORT (repeatable; the name is its stable identity, default HOST:PORT).
    #[arg(long = "backend", value_name = "[NAME=]HOST:PORT")]
    backends: Vec<String>,
    /// PEM certificate chain.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Kernel mode's TLS records: openssl (kTLS when the kernel takes it,
    /// else SSL_read/SSL_write) or ours (the DPDK path's record layer).
    #[arg(long, value_enum)]
    tls_records: Option<config::RecordsChoice>,
    /// Worker threads, one epoll loop each (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Admin listener for /metrics, /sessions, /backends, /healthz (plain HTTP).
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// TOML config file; flags override it. SIGHUP and POST /reload re-read its backend list.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Seal the backend into the Mcp-Session-Id clients see (key file: current secret, optionally the previous one).
    #[arg(long = "session-key", value_name = "FILE")]
    session_key: Option<PathBuf>,
    /// Longest graceful drain (SIGTERM, POST /drain), e.g. 30s.
    #[arg(long = "drain-timeout", value_parser = humantime::parse_duration)]
    drain_timeout: Option<std::time::Duration>,
    #[command(flatten)]
    auth: AuthArgs,
    #[command(flatten)]
    dpdk: DpdkArgs,
}

/// DPDK data-path flags (`--mode dpdk|auto`).
#[derive(clap::Args, Debug, Default)]
struct DpdkArgs {
    /// EAL arguments, e.g. "-l 1 --in-memory --no-telemetry --iova-mode=va --no-pci --vdev=net_af_packet0,iface=veth0".
    #[arg(long = "dpdk-eal", value_name = "ARGS", allow_hyphen_values = true)]
    dpdk_eal: Option<String>,
    /// Our IPv4 address and prefix on the DPDK port, e.g. 10.77.9.1/24.
    #[arg(long = "dpdk-ip", value_name = "ADDR/PREFIX")]
    dpdk_ip: Option<String>,
    /// Next hop for backends that are not on-link.
    #[arg(long = "dpdk-gateway", value_name = "IP")]
    dpdk_gateway: Option<std::net::Ipv4Addr>,
    /// Port name when the EAL finds several.
    #[arg(long = "dpdk-device", value_name = "NAME")]
    dpdk_device: Option<String>,
    /// Also run the kernel path on the same address, ready for the live
    /// mode switch (`POST /switch?to=kernel|dpdk`, `dpuproxy switch`):
    /// needs one lcore and a net_af_xdp port (our XDP program steers each
    /// flow to its path).
    #[arg(long = "dpdk-switchable")]
    dpdk_switchable: bool,
}

/// OAuth2 resource-server flags. Any key source turns auth on.
#[derive(clap::Args, Debug, Default)]
struct AuthArgs {
    /// PEM public key (RSA, EC P-256/P-384, Ed25519) for JWT validation (repeatable).
    #[arg(long = "jwt-key", value_name = "PEM")]
    jwt_keys: Vec<PathBuf>,
    /// JWKS file; keys are picked by kid and re-read on change, SIGHUP and unknown kid.
    #[arg(long = "jwt-jwks", value_name = "FILE")]
    jwt_jwks: Option<PathBuf>,
    /// File with an HS256 shared secret (the only way HMAC tokens are accepted).
    #[arg(long = "jwt-hs256-secret-file", value_name = "FILE")]
    jwt_hs256_secret_file: Option<PathBuf>,
    /// Accepted `iss` (repeatable).
    #[arg(long = "jwt-issuer")]
    jwt_issuers: Vec<String>,
    /// Accepted `aud` (repeatable).
    #[arg(long = "jwt-audience")]
    jwt_audiences: Vec<String>,
    /// Clock-skew allowance for exp/nbf/iat, e.g. 30s.
    #[arg(long = "jwt-leeway", value_parser = humantime::parse_duration)]
    jwt_leeway: Option<std::time::Duration>,
    /// Longest accepted token in bytes (default 8192).
    #[arg(long = "jwt-max-token-bytes")]
    jwt_max_token_bytes: Option<usize>,
    /// Scope rule: SCOPES, METHOD=SCOPES or METHOD:NAME=SCOPES (repeatable).
    #[arg(long = "jwt-require-scope", value_name = "RULE")]
    jwt_require_scopes: Vec<String>,
    /// Authorization server listed in the protected-resource metadata (repeatable).
    #[arg(long = "auth-server", value_name = "URL")]
    auth_servers: Vec<String>,
    /// `resource` in the metadata (default https://<Host>/mcp).
    #[arg(long = "auth-resource", value_name = "URL")]
    auth_resource: Option<String>,
    /// Pass the client's Authorization header to backends (off by default).
    #[arg(long)]
    forward_token: bool,
    /// Send the token's `sub` to backends as X-Authenticated-Subject.
    #[arg(long)]
    subject_header: bool,
}

impl From<AuthArgs> for config::AuthSection {
    fn from(a: AuthArgs) -> Self {
        Self {
            keys: a.jwt_keys,
            jwks: a.jwt_jwks,
            hs256_secret_file: a.jwt_hs256_secret_file,
            issuers: a.jwt_issuers,
            audiences: a.jwt_audiences,
            leeway: a.jwt_leeway,
            max_token_bytes: a.jwt_max_token_bytes,
            require_scopes: a.jwt_require_scopes,
            authorization_servers: a.auth_servers,
            resource: a.auth_resource,
            forward_token: a.forward_token,
            subject_header: a.subject_header,
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DPUPROXY_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let cli = CliOverrides {
        mode: args.mode,
        listen: args.listen,
        backends: args.backends,
        workers: args.workers,
        admin: args.admin,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        tls_records: args.tls_records,
        auth: args.auth.into(),
        dpdk: config::DpdkSection {
            eal: args.dpdk.dpdk_eal,
            ip: args.dpdk.dpdk_ip,
            gateway: args.dpdk.dpdk_gateway,
            device: args.dpdk.dpdk_device,
            switchable: args.dpdk.dpdk_switchable.then_some(true),
        },
        session_key: args.session_key,
        drain_timeout: args.drain_timeout,
    };
    let cfg = RunConfig::resolve(file, cli)?;
    if cfg.mode == Mode::Dpdk && !dpuproxy_engine::AVAILABLE {
        bail!(
            "--mode dpdk: this binary was built without DPDK (libdpdk-dev was missing at build time); use --mode kernel, or --mode auto to fall back automatically"
        );
    }
    // The DPDK path is IPv4 only; `auto` may fall back to kernel mode, so
    // it takes any address and the DPDK attempt checks.
    let ipv4_only = cfg.mode == Mode::Dpdk;
    let specs = control::resolve_backends(&cfg.backends, ipv4_only)?;
    let shared = Arc::new(build_shared(&cfg, specs)?);
    let control = Arc::new(control::Control::new(
        &cfg,
        args.config.clone(),
        shared.clone(),
        ipv4_only,
    ));
    let reload_now = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let control_reload = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for flag in [&reload_now, &control_reload] {
        signal_hook::flag::register(SIGHUP, flag.clone())
            .context("cannot install signal handlers")?;
    }
    let watcher = control::Watcher::start(control.clone(), control_reload)?;
    let reload_stats = Arc::new(keys::ReloadStats::default());
    let reloader = match &cfg.auth {
        Some(a) => Some(keys::KeyReloader::start(
            a.clone(),
            shared.clone(),
            reload_now.clone(),
            reload_stats.clone(),
        )?),
        None => None,
    };
    // Connection counters of whichever data path runs (both, in turn, when
    // --mode auto falls back).
    let path = Arc::new(dpuproxy_driver::PathMetrics::default());
    let live = Live {
        shared,
        path,
        control,
        reload_stats,
    };
    let result = match try_dpdk(&cfg)? {
        Some(settings) => match run_dpdk(&cfg, &settings, &live)? {
            Some(()) => Ok(()),
            None => run_kernel(&cfg, &live),
        },
        None => run_kernel(&cfg, &live),
    };
    watcher.shutdown();
    if let Some(r) = reloader {
        r.shutdown();
    }
    result
}

/// What both data paths share while the proxy runs.
struct Live {
    shared: Arc<dpuproxy_l7::Shared>,
    path: Arc<dpuproxy_driver::PathMetrics>,
    control: Arc<control::Control>,
    reload_stats: Arc<keys::ReloadStats>,
}

impl Live {
    fn admin_state(&self, mode: &'static str) -> admin::AdminState {
        admin::AdminState {
            mode,
            shared: self.shared.clone(),
            path: self.path.clone(),
            control: Some(self.control.clone()),
            kernel: None,
            ktls: None,
            dpdk: None,
            switch: None,
            reloads: self.reload_stats.clone(),
        }
    }
}

/// The L7 state: backends, auth, sealed session ids.
fn build_shared(
    cfg: &RunConfig,
    specs: Vec<dpuproxy_l7::BackendSpec>,
) -> anyhow::Result<dpuproxy_l7::Shared> {
    let mut shared = dpuproxy_l7::Shared::new(cfg.core.clone(), specs);
    if let Some(a) = &cfg.auth {
        let keys = keys::load_keys(a)?;
        tracing::info!(
            keys = keys.len(),
            issuers = ?a.issuers,
            audiences = ?a.audiences,
            scope_rules = a.require_scopes.len(),
            forward_token = a.forward_token,
            "auth is on: bearer JWTs are validated at the proxy"
        );
        if a.issuers.is_empty() || a.audiences.is_empty() {
            tracing::warn!(
                "auth: no --jwt-issuer and/or --jwt-audience: tokens minted for other services by the same keys would be accepted"
            );
        }
        shared = shared.with_auth(dpuproxy_l7::auth::Authenticator::new(a.to_config()?, keys));
    } else {
        tracing::warn!(
            "auth is off: no --jwt-key/--jwt-jwks/--jwt-hs256-secret-file given; requests are not authenticated"
        );
    }
    if let Some(p) = &cfg.session_key {
        let secrets = control::load_session_secrets(p)?;
        let previous = secrets.len() > 1;
        shared = shared.with_sealer(dpuproxy_l7::seal::Sealer::new(&secrets)?);
        tracing::info!(
            file = %p.display(),
            previous_key = previous,
            "sealed session ids: any proxy with this key routes any session"
        );
    }
    Ok(shared)
}

/// The DPDK settings to try, if any.
fn try_dpdk(cfg: &RunConfig) -> anyhow::Result<Option<config::DpdkSettings>> {
    Ok(match (cfg.mode, &cfg.dpdk) {
        (Mode::Kernel, _) => None,
        (Mode::Dpdk, Some(d)) => Some(d.clone()),
        (Mode::Dpdk, None) => unreachable!("checked by RunConfig::resolve"),
        (Mode::Auto, Some(d)) if dpuproxy_engine::AVAILABLE => Some(d.clone()),
        (Mode::Auto, Some(_)) => {
            tracing::warn!("--mode auto: this binary has no DPDK; falling back to kernel mode");
            None
        }
        (Mode::Auto, None) => {
            tracing::warn!("--mode auto: no --dpdk-eal/--dpdk-ip given; running kernel mode");
            None
        }
    })
}

/// Run the DPDK path until SIGINT, or a drain (SIGTERM, POST /drain) ends.
/// `Ok(None)`: it did not start and `--mode auto` falls back to kernel mode.
fn run_dpdk(
    cfg: &RunConfig,
    settings: &config::DpdkSettings,
    live: &Live,
) -> anyhow::Result<Option<()>> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register(SIGINT, stop.clone()).context("cannot install signal handlers")?;
    let drain_on_term = Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register(SIGTERM, drain_on_term.clone())
        .context("cannot install signal handlers")?;
    let end_streams = std::sync::atomic::AtomicBool::new(false);
    let metrics = Arc::new(dpuproxy_engine::DpMetrics::default());
    // With the live mode switch the kernel path runs beside, on the same
    // address. It starts once our XDP program steers (before that, every
    // frame reaches the kernel, whose connections would then be cut by
    // the steering), from this thread, which the EAL does not pin.
    let board = settings.switchable.then(|| {
        Arc::new(dpuproxy_switch::SwitchBoard::new(
            dpuproxy_switch::Path::Dpdk,
        ))
    });
    let kernel_metrics = Arc::new(dpuproxy_kernel::KernelMetrics::default());
    let admin = match cfg.admin {
        Some(addr) => {
            let mut state = live.admin_state("dpdk");
            state.dpdk = Some(metrics.clone());
            state.kernel = board.as_ref().map(|_| kernel_metrics.clone());
            state.switch = board.clone();
            Some(admin::Admin::start(addr, state)?)
        }
        None => None,
    };
    // The EAL pins the thread that initialises it to the poller's core.
    // Doing that on a thread of its own keeps the main thread (and any
    // kernel workers an auto-mode fallback starts from it) unpinned. The
    // main thread supervises: a drain ends with `stop` once every
    // connection is closed or the drain timeout passed.
    let outcome = std::thread::scope(|s| {
        let lcores = std::thread::Builder::new()
            .name("dpuproxy-lcore".into())
            .spawn_scoped(s, || {
                let ctx = dpdk_mode::Live {
                    metrics: metrics.clone(),
                    path: &live.path,
                    stop: &stop,
                    drain: live.control.drain_flag(),
                    end_streams: &end_streams,
                    switch: board.as_deref(),
                };
                dpdk_mode::run(cfg, settings, &live.shared, ctx)
            })
            .map_err(anyhow::Error::from)?;
        let kernel = match &board {
            Some(board) => match start_kernel_beside(cfg, live, board, &kernel_metrics, || {
                lcores.is_finished()
            }) {
                Ok(k) => k,
                Err(e) => {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    let _ = lcores.join();
                    return Err(e);
                }
            },
            None => None,
        };
        supervise_dpdk(
            live,
            &stop,
            &end_streams,
            &drain_on_term,
            &metrics,
            kernel.as_ref(),
            || lcores.is_finished(),
        );
        let outcome = lcores
            .join()
            .map_err(|_| anyhow::anyhow!("the DPDK data path thread panicked"));
        if let Some(k) = kernel {
            k.shutdown();
        }
        outcome?
    });
    if let Some(a) = admin {
        a.shutdown();
    }
    match outcome? {
        dpdk_mode::Outcome::Stopped => Ok(Some(())),
        dpdk_mode::Outcome::DidNotStart(e)
            if cfg.mode == Mode::Auto && stop.load(std::sync::atomic::Ordering::Relaxed) =>
        {
            // Asked to stop while the DPDK attempt was starting.
            tracing::info!("stopping (the DPDK data path had not started: {e:#})");
            Ok(Some(()))
        }
        dpdk_mode::Outcome::DidNotStart(e) if cfg.mode == Mode::Auto => {
            tracing::warn!(
                "--mode auto: the DPDK data path did not start ({e:#}); falling back to kernel mode"
            );
            Ok(None)
        }
        dpdk_mode::Outcome::DidNotStart(e) => {
            Err(e.context("--mode dpdk: the DPDK data path did not start"))
        }
    }
}

/// `--dpdk-switchable`: once the DPDK port is up with our XDP steering,
/// start the kernel path beside it (`None` if the DPDK path ended first).
fn start_kernel_beside(
    cfg: &RunConfig,
    live: &Live,
    board: &Arc<dpuproxy_switch::SwitchBoard>,
    metrics: &Arc<dpuproxy_kernel::KernelMetrics>,
    finished: impl Fn() -> bool,
) -> anyhow::Result<Option<dpuproxy_kernel::KernelProxy>> {
    while board.steer().is_none() {
        if finished() {
            return Ok(None);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let mut kcfg = cfg.kernel.clone();
    fit_open_files(&mut kcfg, live.shared.backends.len());
    let k = dpuproxy_kernel::start_beside_dpdk(
        &kcfg,
        live.shared.clone(),
        live.path.clone(),
        board.clone(),
        metrics.clone(),
    )
    .context(
        "--dpdk-switchable: the kernel path could not start on the listen address (it must be an address of the af_xdp port's kernel interface)",
    )?;
    board.mark_ready(dpuproxy_switch::Path::Kernel);
    tracing::info!(listen = %k.local_addr, "kernel path ready beside the dpdk path: POST /switch?to=kernel|dpdk moves the connections");
    Ok(Some(k))
}

/// While the DPDK path runs: turn SIGTERM into a drain, and end a drain
/// with `stop` once it is done (or timed out).
fn supervise_dpdk(
    live: &Live,
    stop: &std::sync::atomic::AtomicBool,
    end_streams: &std::sync::atomic::AtomicBool,
    drain_on_term: &std::sync::atomic::AtomicBool,
    metrics: &dpuproxy_engine::DpMetrics,
    kernel: Option<&dpuproxy_kernel::KernelProxy>,
    finished: impl Fn() -> bool,
) {
    use std::sync::atomic::Ordering;
    while !finished() {
        if drain_on_term.swap(false, Ordering::Relaxed) {
            tracing::info!("SIGTERM: draining");
            live.control.start_drain();
        }
        if live.control.is_draining() && !stop.load(Ordering::Relaxed) {
            if !metrics.started.load(Ordering::Relaxed) {
                // Not up yet: nothing to drain.
                stop.store(true, Ordering::Relaxed);
                continue;
            }
            if let Some(k) = kernel {
                k.drain();
            }
            control::wait_drained(
                &live.control,
                || dpuproxy_driver::PathMetrics::get(&live.path.open),
                || {
                    end_streams.store(true, Ordering::Relaxed);
                    if let Some(k) = kernel {
                        k.drain_streams();
                    }
                },
            );
            stop.store(true, Ordering::Relaxed);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Kernel mode needs a file per socket: raise the limit to what the
/// configuration can use, or fit the configuration to the limit (said).
fn fit_open_files(kernel: &mut dpuproxy_kernel::KernelConfig, backends: usize) {
    let pooled = kernel.pool_max_per_backend * backends;
    let needed = limits::files_needed(kernel.workers, kernel.max_connections_per_worker, pooled);
    let limit = limits::ensure_open_files(needed);
    if limit < needed {
        let fit = limits::connections_that_fit(limit, kernel.workers, pooled).max(1);
        tracing::warn!(
            limit,
            needed,
            configured = kernel.max_connections_per_worker,
            now = fit,
            "the open-file limit is below what the configuration needs: client connections per worker lowered to fit (raise the hard limit, e.g. LimitNOFILE= or ulimit -Hn, to keep them)"
        );
        kernel.max_connections_per_worker = fit;
        kernel.max_handshaking_per_worker = kernel.max_handshaking_per_worker.min(fit);
    }
}

fn run_kernel(cfg: &RunConfig, live: &Live) -> anyhow::Result<()> {
    let mut kernel = cfg.kernel.clone();
    fit_open_files(&mut kernel, live.shared.backends.len());
    let proxy = dpuproxy_kernel::start(&kernel, live.shared.clone(), live.path.clone())?;
    let admin = match cfg.admin {
        Some(addr) => {
            let mut state = live.admin_state("kernel");
            state.kernel = Some(proxy.metrics.clone());
            state.ktls = Some(proxy.ktls.clone());
            let a = admin::Admin::start(addr, state)?;
            tracing::info!(addr = %a.addr, "admin listener: /metrics /sessions /backends /healthz, POST /reload /drain");
            Some(a)
        }
        None => None,
    };
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("cannot install signal handlers")?;
    'run: loop {
        for sig in signals.pending() {
            if sig == SIGINT {
                tracing::info!("SIGINT: shutting down now");
                break 'run;
            }
            tracing::info!("SIGTERM: draining");
            live.control.start_drain();
        }
        if live.control.is_draining() {
            proxy.drain();
            control::wait_drained(
                &live.control,
                || dpuproxy_driver::PathMetrics::get(&live.path.open),
                || proxy.drain_streams(),
            );
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if let Some(a) = admin {
        a.shutdown();
    }
    proxy.shutdown();
    Ok(())
}

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Run(args) => run(*args),
        Command::Demo { python } => demo::run(python),
        Command::TlsEcho(args) => tls_echo::run(&args),
        Command::Bench(BenchCommand::Records(args)) => dpuproxy_bench::records::run(&args),
        Command::Bench(BenchCommand::Tcp(args)) => dpuproxy_bench::tcp::run(&args),
        Command::Bench(BenchCommand::Repair(args)) => {
            // Two sockets per connection (the old one closes before its
            // restore opens the new one).
            limits::ensure_open_files(2 * args.connections as u64 + 64);
            dpuproxy_bench::repair::run(&args)
        }
        Command::Bench(BenchCommand::Handoff(args)) => {
            // One socket per connection, and one more for each while it moves.
            limits::ensure_open_files(args.connections as u64 + 64);
            dpuproxy_bench::handoff::run(&args)
        }
        Command::Bench(BenchCommand::Proxy(args)) => dpuproxy_bench::proxy::run(&args),
        Command::Bench(BenchCommand::Soak(args)) => dpuproxy_bench::soak::run(&args),
        Command::Bench(BenchCommand::SoakPart(args)) => dpuproxy_bench::soak::part::run(&args),
        Command::Bench(BenchCommand::Peer(args)) => dpuproxy_bench::proxy::peer::run(&args),
        Command::GenCert { cert, key, days } => {
            dpuproxy_tls::certs::write_self_signed(&cert, &key, days)
                .map_err(anyhow::Error::from)
                .map(|()| println!("wrote {} and {}", cert.display(), key.display()))
        }
        Command::Port(args) => port_cmd::run(&args),
        Command::Hugepages(args) => hugepages_cmd::run(&args),
        Command::Switch(args) => switch_admin::run(&args),
    };
    if let Err(e) = result {
        eprintln!("dpuproxy: error: {e:#}");
        std::process::exit(2);
    }
}
