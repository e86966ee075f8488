//! dpuproxy-engine: the full-offload data path. On each polling lcore:
//! DPDK port → userspace TCP (`dpuproxy-tcp`) → userspace TLS records
//! (`dpuproxy-tls`) → the shared driver (`dpuproxy-driver`) and its L7 core
//! (`dpuproxy-l7`), the same as kernel mode → back out, run to completion.
//!
//! What this crate holds is the transport and its plumbing, nothing of a
//! connection's life (that is the driver's):
//! - [`transport`]: the [`Transport`](dpuproxy_driver::Transport) over a
//!   userspace TCP stack, with the TLS handshake over memory buffers and
//!   our record layer (no DPDK needed: it runs over any smoltcp device);
//! - the owner table mapping TCP connections to driver slots (generation
//!   checked);
//! - with DPDK: the smoltcp device over mbufs, the per-lcore loop, the
//!   software hand-over of frames between lcores, and start/stop.
//!
//! One turn of the loop:
//! 1. rx burst (mbufs go to the smoltcp device, zero-copy until the TCP
//!    stack copies payload into its socket buffers);
//! 2. TCP: ingress, timers, events (each event marks a driver slot);
//! 3. the driver drives the marked connections (TLS, L7, backend bytes,
//!    record seal, TCP send) and fires its timers;
//! 4. TCP egress (frames written straight into fresh mbufs);
//! 5. one tx burst.
//!
//! Backends are plain HTTP/1.1 over the same stack and port; they must be
//! on-link or behind `gateway`.
//!
//! # Several lcores
//!
//! Every lcore of `-l`/`--lcores` (up to the port's queue count) runs this
//! loop on a queue pair of its own, with a TCP stack, connection table,
//! backend pool and timers of its own: nothing on the path is shared
//! between lcores except as listed here.
//!
//! - **Flow ownership** is [`crate::steer`]'s function of the 4-tuple
//!   (Toeplitz with our key, our RETA). A port that takes our key and
//!   RETA (mlx5) delivers each packet to its owner; otherwise (net_tap,
//!   memif, af_packet with `qpairs`) a packet that lands elsewhere is
//!   handed to its owner over a bounded lock-free ring (counted as
//!   steered; a full ring drops the frame like a full NIC queue, and TCP
//!   retransmits it). Backend connections pick a source port whose replies
//!   hash to the lcore that opened them.
//! - **Session affinity across lcores** uses the shared, sharded affinity
//!   table of the L7 core (the same one kernel-mode workers share): a
//!   session learned on one lcore is found by any other, with one shard
//!   lock per lookup and no global lock. We chose it over sealing the
//!   backend into the session id because it needs no change to the ids
//!   clients see, keeps DELETE/404 eviction and idle expiry in one place,
//!   and works the same in kernel mode; proxies behind an L4 balancer need
//!   the balancer to keep a client's connections on one proxy (a sealed id
//!   is the way to lift that, and is not done). Backend health is shared
//!   the same way (atomics).
//! - **ARP**: each stack has its own neighbour cache; an ARP reply is
//!   copied to every lcore. ARP requests and ICMP echo are answered by the
//!   lcore they reach.
//!
//! A vdev with one queue (af_packet without `qpairs`) is polled by one
//! lcore; the others in `-l` stay idle, and the log says so.

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use dpuproxy_driver::{DriverSettings, PathMetrics};
use dpuproxy_l7::Shared;
use dpuproxy_tls::HandshakeConfig;

mod error;
pub mod moving;
mod owners;
#[cfg(xdp_steer)]
pub mod steer;
pub mod transport;

#[cfg(dpdk)]
pub mod device;
#[cfg(dpdk)]
mod lanes;
#[cfg(dpdk)]
mod lcore;
#[cfg(dpdk)]
mod run;

pub use error::{Error, Result};

/// Whether this build has the DPDK engine.
pub const AVAILABLE: bool = cfg!(dpdk);

/// Frames one lcore's hand-over ring holds (software steering).
pub const STEER_RING: usize = 1024;
/// Rx and tx descriptors per queue the proxy asks for.
pub const QUEUE_DESCRIPTORS: u16 = 1024;

/// The mbuf pool the DPDK proxy creates for `queues` queue pairs: the rx
/// and tx rings, the lcores' caches and bursts, as much again for frames
/// in flight (in the device, in the turn's batches, in TCP), and, with
/// several lcores, the hand-over rings.
pub fn pool_plan(queues: u16, burst: usize) -> dpuproxy_hugepages::MempoolPlan {
    let q = u32::from(queues.max(1));
    let desc = u32::from(QUEUE_DESCRIPTORS);
    let rings = if q > 1 { q * STEER_RING as u32 } else { 0 };
    dpuproxy_hugepages::MempoolPlan::for_port(&dpuproxy_hugepages::PortShape {
        rx_queues: q,
        tx_queues: q,
        lcores: q,
        rx_desc: desc,
        tx_desc: desc,
        burst: burst as u32,
        in_flight: q * 2 * desc + rings,
        ..dpuproxy_hugepages::PortShape::default()
    })
}

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
    /// Listen backlog per lcore: accepted-not-yet-taken plus half-open
    /// connections; beyond it a SYN evicts the oldest half-open one.
    pub listen_backlog: usize,
    /// Device name (default: the first port the EAL found).
    pub device: Option<String>,
    /// Rx/tx burst.
    pub burst: usize,
    /// Seed for TCP initial sequence numbers and hash keys (give entropy).
    pub seed: u64,
    /// Each lcore's driver settings (handshake timeout, backend pool,
    /// connection limit per lcore).
    pub driver: DriverSettings,
}

/// Most lcores that poll (one queue pair each).
pub const MAX_POLLERS: usize = 16;

/// How packets reach the lcore that owns their flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SteeringMode {
    /// One lcore polls everything.
    Single = 0,
    /// The NIC took our RSS key and RETA; software hand-over is a safety
    /// net that should stay at zero.
    Hardware = 1,
    /// The port spreads packets its own way (or not at all); lcores hand
    /// misdelivered packets to their owner.
    Software = 2,
}

impl SteeringMode {
    /// Label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            SteeringMode::Single => "single",
            SteeringMode::Hardware => "hardware",
            SteeringMode::Software => "software",
        }
    }

    fn from_u64(v: u64) -> SteeringMode {
        match v {
            1 => SteeringMode::Hardware,
            2 => SteeringMode::Software,
            _ => SteeringMode::Single,
        }
    }
}

/// One polling lcore's counters (relaxed atomics, refreshed by that lcore
/// every 100 ms, except `accepted`, which moves as connections arrive).
/// Aligned to 128 bytes so that two lcores' counters never share a cache
/// line (or an adjacent-line prefetch pair).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct LcoreCounters {
    /// EAL lcore id.
    pub lcore: AtomicU64,
    /// Queue pair it polls.
    pub queue: AtomicU64,
    /// Cycles in turns that did work.
    pub busy_cycles: AtomicU64,
    /// Cycles in empty turns.
    pub idle_cycles: AtomicU64,
    /// Of the busy cycles: the rx burst and handing frames out (steering,
    /// ICMP), OVS `pmd-stats` style.
    pub rx_cycles: AtomicU64,
    /// Of the busy cycles: TCP ingress and egress, timers, TLS and L7.
    pub processing_cycles: AtomicU64,
    /// Of the busy cycles: the tx burst (on af_packet and af_xdp vdevs
    /// this includes the kernel work the send kick does).
    pub tx_cycles: AtomicU64,
    /// Turns that did work.
    pub busy_turns: AtomicU64,
    /// Turns that found nothing to do.
    pub idle_turns: AtomicU64,
    /// Packets taken from its rx queue.
    pub rx_packets: AtomicU64,
    /// Client connections it accepted.
    pub accepted: AtomicU64,
    /// Packets it handed to the lcore owning their flow.
    pub steered_out: AtomicU64,
    /// Packets other lcores handed to it.
    pub steered_in: AtomicU64,
    /// Packets dropped because the owner's ring was full, and ARP copies
    /// that found no free mbuf or a full ring.
    pub steer_dropped: AtomicU64,
    /// Its open TCP connections (clients and backends).
    pub tcp_connections: AtomicU64,
    /// SYNs that evicted the oldest half-open connection (backlog full).
    pub syn_evicted: AtomicU64,
    /// SYNs dropped (backlog full of established connections).
    pub syn_dropped: AtomicU64,
    /// Hardware steering only: TCP packets the NIC marked as hashed, whose
    /// hash was compared with ours.
    pub rss_hash_checked: AtomicU64,
    /// Hardware steering only: TCP packets whose NIC RSS hash differs from
    /// ours (the NIC does not hash with our key; flows stay correct through
    /// the hand-over, but cost more).
    pub rss_hash_mismatch: AtomicU64,
    /// Frames it dropped on a full tx ring or with no free mbuf.
    pub tx_dropped: AtomicU64,
    /// Bytes its client connections hold outside the TCP buffers (TLS
    /// records in and out, plaintext waiting for the client or the
    /// backend). Bounded per connection: a slow client stops the backend
    /// reads, and the backend's TCP window closes.
    pub buffered_bytes: AtomicU64,
}

/// Counters the admin endpoint reads (relaxed atomics, refreshed by the
/// loops every 100 ms).
#[derive(Debug, Default)]
pub struct DpMetrics {
    /// Lcores polling (entries of `per_lcore` in use).
    pub pollers: AtomicU64,
    /// [`SteeringMode`] as a number.
    pub steering: AtomicU64,
    /// Per polling lcore, index = queue.
    pub per_lcore: [LcoreCounters; MAX_POLLERS],
    /// TSC ticks per second.
    pub tsc_hz: AtomicU64,
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
    /// Mbufs out of the pool.
    pub mempool_in_use: AtomicU64,
    /// Mbufs in the pool.
    pub mempool_size: AtomicU64,
    /// Set while the port is up and polling.
    pub up: AtomicBool,
    /// Set once the port came up; never cleared (a failure after this is
    /// a failure of the running data path, not a failure to start).
    pub started: AtomicBool,
}

impl DpMetrics {
    /// The counters of the lcores that poll.
    pub fn pollers(&self) -> &[LcoreCounters] {
        let n = (self.pollers.load(Ordering::Relaxed) as usize).min(MAX_POLLERS);
        &self.per_lcore[..n]
    }

    /// How packets reach their lcore.
    pub fn steering(&self) -> SteeringMode {
        SteeringMode::from_u64(self.steering.load(Ordering::Relaxed))
    }

    /// A per-lcore counter summed over the polling lcores.
    pub fn sum(&self, f: impl Fn(&LcoreCounters) -> &AtomicU64) -> u64 {
        self.pollers()
            .iter()
            .map(|c| f(c).load(Ordering::Relaxed))
            .sum()
    }
}

/// One lcore's share of a run.
#[derive(Debug, Clone)]
pub struct LcoreSummary {
    /// EAL lcore id.
    pub lcore: u32,
    /// Queue pair.
    pub queue: u16,
    /// Busy cycles over the run.
    pub busy_cycles: u64,
    /// Idle cycles over the run.
    pub idle_cycles: u64,
    /// Client connections accepted.
    pub accepted: u64,
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
    /// How packets reached their lcore.
    pub steering: SteeringMode,
    /// Per polling lcore.
    pub lcores: Vec<LcoreSummary>,
}

/// What the engine runs with, borrowed from the caller for the run.
#[derive(Debug, Clone, Copy)]
pub struct RunContext<'s> {
    /// What to run.
    pub opts: &'s ProxyOptions,
    /// The L7 state every lcore shares.
    pub shared: &'s Arc<Shared>,
    /// The server TLS configuration.
    pub tls_cfg: &'s HandshakeConfig,
    /// Port and lcore counters.
    pub metrics: &'s DpMetrics,
    /// Connection counters (the driver's).
    pub path: &'s Arc<PathMetrics>,
    /// Set to stop.
    pub stop: &'s AtomicBool,
    /// Set to drain: the lcores stop listening and close each connection
    /// after its request (set `stop` once `path.open` is 0).
    pub drain: &'s AtomicBool,
    /// Set when the drain's time is nearly up: every SSE stream ends at its
    /// next event boundary.
    pub end_streams: &'s AtomicBool,
    /// The live mode switch, when the kernel path runs beside this one:
    /// the port gets our XDP steering (`net_af_xdp` only, one queue), and
    /// the lcore exports and imports connections on the board's requests.
    pub switch: Option<&'s dpuproxy_switch::SwitchBoard>,
}

/// Run the proxy on the lcores of the EAL arguments until `ctx.stop` is
/// set (the calling thread becomes the main lcore and polls queue 0).
/// `on_up` is called once the port is up, with its name and MAC.
#[cfg(dpdk)]
pub fn run_proxy(ctx: RunContext<'_>, on_up: impl FnOnce(&str, [u8; 6])) -> Result<ProxySummary> {
    run::run(ctx, on_up)
}

/// Without DPDK in the build: always [`dpuproxy_dp::Error::Unavailable`].
#[cfg(not(dpdk))]
pub fn run_proxy(_ctx: RunContext<'_>, _on_up: impl FnOnce(&str, [u8; 6])) -> Result<ProxySummary> {
    Err(Error::Dp(dpuproxy_dp::Error::Unavailable))
}
