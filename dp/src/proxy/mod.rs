//! The full-offload proxy on one lcore: DPDK port → userspace TCP
//! (`dpuproxy-tcp`) → userspace TLS records (`dpuproxy-tls`) → the same L7
//! core as kernel mode (`dpuproxy-l7`) → back out, run to completion.
//!
//! One turn of the loop:
//! 1. rx burst (mbufs go to the smoltcp device, zero-copy until the TCP
//!    stack copies payload into its socket buffers);
//! 2. TCP: ingress, timers, events;
//! 3. per connection with work: TLS handshake or record open, `l7`
//!    `handle_*`, `l7` actions (backend connects, closes), backend bytes,
//!    record seal, TCP send;
//! 4. `l7` timers;
//! 5. TCP egress (frames written straight into fresh mbufs);
//! 6. one tx burst.
//!
//! There are no locks on the path except the L7 core's shared tables
//! (affinity, backend health), which are sharded and shared with other
//! lcores or workers. Backends are plain HTTP/1.1 over the same stack and
//! port; they must be on-link or behind `gateway`.
//!
//! This first version polls one rx/tx queue pair on the lcore that called
//! it (with `-l 1`, core 1). A vdev with one queue (af_packet) is always
//! polled that way; multi-queue RSS with one loop per lcore is future work.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use dpuproxy_l7::Shared;
use dpuproxy_tls::HandshakeConfig;

use crate::error::Result;

#[cfg(dpdk)]
mod engine;

/// What to run.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// EAL arguments (no program name).
    pub eal_args: Vec<String>,
    /// Our address on the port.
    pub ip: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// Next hop for off-link peers.
    pub gateway: Option<Ipv4Addr>,
    /// TLS port clients connect to (on `ip`).
    pub listen_port: u16,
    /// Backend addresses, index-aligned with `Shared::backends`.
    pub backends: Vec<SocketAddrV4>,
    /// Device name (default: the first port the EAL found).
    pub device: Option<String>,
    /// Rx/tx burst.
    pub burst: usize,
    /// Seed for TCP initial sequence numbers and hash keys (give entropy).
    pub seed: u64,
    /// A TLS handshake must finish within this time.
    pub handshake_timeout: Duration,
    /// Most client connections.
    pub max_connections: usize,
}

/// Counters the admin endpoint reads (relaxed atomics, refreshed by the
/// loop every 100 ms).
#[derive(Debug, Default)]
pub struct DpMetrics {
    /// The polling lcore.
    pub lcore: AtomicU64,
    /// TSC ticks per second.
    pub tsc_hz: AtomicU64,
    /// Cycles in turns that did work.
    pub busy_cycles: AtomicU64,
    /// Cycles in empty turns.
    pub idle_cycles: AtomicU64,
    /// ethdev rx packets.
    pub port_rx_packets: AtomicU64,
    /// ethdev tx packets.
    pub port_tx_packets: AtomicU64,
    /// ethdev rx bytes.
    pub port_rx_bytes: AtomicU64,
    /// ethdev tx bytes.
    pub port_tx_bytes: AtomicU64,
    /// ethdev rx drops (queue full).
    pub port_imissed: AtomicU64,
    /// ethdev rx errors.
    pub port_ierrors: AtomicU64,
    /// ethdev tx errors.
    pub port_oerrors: AtomicU64,
    /// Frames dropped because the tx ring stayed full or no mbuf was free.
    pub tx_dropped: AtomicU64,
    /// Mbufs out of the pool.
    pub mempool_in_use: AtomicU64,
    /// Mbufs in the pool.
    pub mempool_size: AtomicU64,
    /// Completed TLS handshakes (records then go through our record layer).
    pub handshakes: AtomicU64,
    /// Failed TLS handshakes.
    pub handshake_failures: AtomicU64,
    /// TLS connections ended by a record-layer error.
    pub record_errors: AtomicU64,
    /// Open client connections.
    pub client_connections: AtomicU64,
    /// Open TCP connections (clients and backends).
    pub tcp_connections: AtomicU64,
    /// Set once the port is up and polling.
    pub up: AtomicBool,
}

/// The end of a run.
#[derive(Debug, Clone)]
pub struct ProxySummary {
    /// Port name.
    pub port: String,
    /// Mbufs in the pool.
    pub pool_size: u32,
    /// Mbufs out of the pool after everything was closed and the port
    /// stopped (0 means none leaked).
    pub pool_in_use_after_close: u32,
    /// Busy cycles over the run.
    pub busy_cycles: u64,
    /// Idle cycles over the run.
    pub idle_cycles: u64,
}

/// Run the proxy on this lcore until `stop` is set. `on_up` is called once
/// the port is polling, with its name and MAC.
#[cfg(dpdk)]
pub fn run_proxy(
    opts: &ProxyOptions,
    shared: &Arc<Shared>,
    tls_cfg: &HandshakeConfig,
    metrics: &DpMetrics,
    stop: &AtomicBool,
    on_up: impl FnOnce(&str, [u8; 6]),
) -> Result<ProxySummary> {
    engine::run(opts, shared, tls_cfg, metrics, stop, on_up)
}

/// Without DPDK in the build: always [`crate::Error::Unavailable`].
#[cfg(not(dpdk))]
pub fn run_proxy(
    _opts: &ProxyOptions,
    _shared: &Arc<Shared>,
    _tls_cfg: &HandshakeConfig,
    _metrics: &DpMetrics,
    _stop: &AtomicBool,
    _on_up: impl FnOnce(&str, [u8; 6]),
) -> Result<ProxySummary> {
    Err(crate::Error::Unavailable)
}
