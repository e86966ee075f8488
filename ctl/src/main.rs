//! `dpuproxy`: the command line (clap), configuration, mode selection,
//! admin listener and demo. Everything below this crate is a library; this
//! is the only place that uses `anyhow`.

mod admin;
mod certs;
mod config;
mod demo;

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
    Run(RunArgs),
    /// Start 3 real MCP backends, the proxy and a client session; print what happened.
    Demo {
        /// Python interpreter with the `mcp` SDK (default: $DPUPROXY_PYTHON, .venv, python3).
        #[arg(long)]
        python: Option<PathBuf>,
    },
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
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Data path: kernel, dpdk, or auto (dpdk if it can start, else kernel).
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Client-facing TLS address, e.g. 127.0.0.1:8443.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Backend host:port (repeatable).
    #[arg(long = "backend")]
    backends: Vec<String>,
    /// PEM certificate chain.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Worker threads, one epoll loop each (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Admin listener for /metrics, /sessions, /backends (plain HTTP).
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// TOML config file; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
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
    };
    let cfg = RunConfig::resolve(file, cli)?;
    match cfg.mode {
        Mode::Kernel => {}
        Mode::Dpdk => bail!(
            "--mode dpdk: this build has no DPDK data path yet (the dpuproxy-dp crate is a stub); use --mode kernel, or --mode auto to fall back automatically"
        ),
        Mode::Auto => tracing::warn!(
            "--mode auto: the DPDK data path is not built into this binary; falling back to kernel mode"
        ),
    }
    tracing::info!(
        "auth is off: no --jwt-* settings (JWT validation is not implemented in this build)"
    );
    let shared = Arc::new(dpuproxy_l7::Shared::new(
        cfg.core.clone(),
        cfg.kernel.backends.clone(),
    ));
    let proxy = dpuproxy_kernel::start(&cfg.kernel, shared.clone())?;
    let admin = match cfg.admin {
        Some(addr) => {
            let a = admin::Admin::start(
                addr,
                admin::AdminState {
                    mode: "kernel",
                    shared: shared.clone(),
                    kernel: proxy.metrics.clone(),
                    ktls: proxy.ktls.clone(),
                },
            )?;
            tracing::info!(addr = %a.addr, "admin listener: /metrics /sessions /backends /healthz");
            Some(a)
        }
        None => None,
    };
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP]).context("cannot install signal handlers")?;
    for sig in signals.forever() {
        if sig == SIGHUP {
            tracing::info!("SIGHUP: nothing to reload in this build");
            continue;
        }
        tracing::info!(signal = sig, "shutting down");
        break;
    }
    if let Some(a) = admin {
        a.shutdown();
    }
    proxy.shutdown();
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Demo { python } => demo::run(python),
        Command::GenCert { cert, key, days } => certs::write_self_signed(&cert, &key, days)
            .map(|()| println!("wrote {} and {}", cert.display(), key.display())),
    };
    if let Err(e) = result {
        eprintln!("dpuproxy: error: {e:#}");
        std::process::exit(2);
    }
}
