//! `dpuproxy run --mode dpdk|auto`: the full-offload data path on the
//! thread that calls it (`run` in main.rs gives it a thread of its own),
//! which the EAL pins to the first lcore of `-l`.
//!
//! Threads that must not share the poller's core (admin listener, JWT key
//! reloader, housekeeping) are started before the EAL initialises, so they
//! keep the process's original CPU set.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use dpuproxy_driver::PathMetrics;
use dpuproxy_engine::{DpMetrics, ProxyOptions, RunContext, run_proxy};
use dpuproxy_l7::Shared;

use crate::config::{DpdkSettings, RunConfig};
use dpuproxy_bench::background::Background;

/// How the DPDK attempt ended.
#[derive(Debug)]
pub enum Outcome {
    /// Ran and stopped on a signal.
    Stopped,
    /// Could not start (before the port was up): the reason.
    DidNotStart(anyhow::Error),
}

/// What the DPDK path shares with the rest of the process.
pub struct Live<'a> {
    /// Port and lcore counters (the admin endpoint reads them).
    pub metrics: Arc<DpMetrics>,
    /// Connection counters.
    pub path: &'a Arc<PathMetrics>,
    /// Set to stop.
    pub stop: &'a AtomicBool,
    /// Set to drain.
    pub drain: &'a AtomicBool,
    /// Set when the drain's time is nearly up.
    pub end_streams: &'a AtomicBool,
    /// The live mode switch (`--dpdk-switchable`).
    pub switch: Option<&'a dpuproxy_switch::SwitchBoard>,
}

/// Every backend is IPv4 (the userspace stack is IPv4 only).
fn backends_v4(shared: &Shared) -> anyhow::Result<()> {
    for b in shared.backends.iter() {
        if !matches!(b.socket, SocketAddr::V4(_)) {
            bail!(
                "backend {} ({}): the DPDK path is IPv4 only",
                b.name,
                b.addr
            );
        }
    }
    Ok(())
}

fn tls_config(cfg: &RunConfig) -> anyhow::Result<dpuproxy_tls::HandshakeConfig> {
    Ok(dpuproxy_kernel::handshake_config(
        &cfg.kernel.tls_cert,
        &cfg.kernel.tls_key,
    )?)
}

/// Keep the wall clock anchored, expire idle sessions, and give backends
/// marked down another chance after a cool-down (the DPDK path has no
/// kernel route to them, so there is no separate prober: the next new
/// session tries the backend again and a failed connect marks it down
/// anew).
fn housekeeping(shared: &Shared, stop: &AtomicBool) {
    const COOL_DOWN: Duration = Duration::from_secs(5);
    let step = Duration::from_millis(200);
    dpuproxy_kernel::housekeeping(shared, stop, step, step, |i, down_for| {
        if down_for < COOL_DOWN {
            return false;
        }
        shared.backends.mark_up(i);
        tracing::info!(backend = %shared.backends.get(i).addr, "backend cool-down over: new sessions may try it again");
        true
    });
}

fn seed() -> u64 {
    let mut b = [0u8; 8];
    if openssl::rand::rand_bytes(&mut b).is_err() {
        return SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
    }
    u64::from_le_bytes(b)
}

/// Run the DPDK data path until `live.stop`.
pub fn run(
    cfg: &RunConfig,
    settings: &DpdkSettings,
    shared: &Arc<Shared>,
    live: Live<'_>,
) -> anyhow::Result<Outcome> {
    let metrics = live.metrics;
    // Anything that stops the DPDK path from starting is a reason, which
    // `--mode auto` logs before it falls back to kernel mode.
    if cfg.kernel.listen.ip() != std::net::IpAddr::V4(settings.ip) {
        return Ok(Outcome::DidNotStart(anyhow::anyhow!(
            "--listen ({}) must be on --dpdk-ip ({}) for the DPDK path",
            cfg.kernel.listen,
            settings.ip
        )));
    }
    if let Err(e) = backends_v4(shared) {
        return Ok(Outcome::DidNotStart(e));
    }
    let tls = tls_config(cfg)?;
    let house = {
        let shared = shared.clone();
        Background::spawn("dpuproxy-house", move |stop| housekeeping(&shared, &stop))?
    };
    let opts = ProxyOptions {
        eal_args: settings.eal_args.clone(),
        ip: settings.ip,
        prefix_len: settings.prefix_len,
        gateway: settings.gateway,
        listen_port: cfg.kernel.listen.port(),
        listen_backlog: cfg.kernel.listen_backlog,
        device: settings.device.clone(),
        burst: 32,
        seed: seed(),
        driver: cfg.kernel.driver_settings(),
    };
    let ctx = RunContext {
        opts: &opts,
        shared,
        tls_cfg: &tls,
        metrics: &metrics,
        path: live.path,
        stop: live.stop,
        drain: live.drain,
        end_streams: live.end_streams,
        switch: live.switch,
    };
    let result = run_proxy(ctx, |port, mac| {
        tracing::info!(
            port,
            mac = %crate::port_cmd::mac(&mac),
            listen = %cfg.kernel.listen,
            backends = shared.backends.len(),
            "dpdk data path running (userspace TCP and TLS records)"
        );
    });
    house.shutdown();
    match result {
        Ok(s) => {
            eprintln!(
                "dpdk: shutdown: port {}: mempool in_use={} of {} after close; steering {}",
                s.port,
                s.pool_in_use_after_close,
                s.pool_size,
                s.steering.label()
            );
            for l in &s.lcores {
                eprintln!(
                    "dpdk: lcore {} (queue {}): busy {} idle {} cycles, {} client connections accepted",
                    l.lcore, l.queue, l.busy_cycles, l.idle_cycles, l.accepted
                );
            }
            Ok(Outcome::Stopped)
        }
        Err(e) if !metrics.started.load(Ordering::Relaxed) => {
            Ok(Outcome::DidNotStart(anyhow::anyhow!("{e}")))
        }
        Err(e) => Err(anyhow::anyhow!("dpdk data path failed: {e}")),
    }
}
