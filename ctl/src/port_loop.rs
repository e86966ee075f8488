//! The loop behind `dpuproxy port`: bring a port up, answer ARP and ping
//! for one address, report counters, stop cleanly (on dp's wrappers).

use std::net::Ipv4Addr;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

#[cfg(not(dpdk))]
use dpuproxy_dp::Error;
use dpuproxy_dp::net::ResponderStats;
use dpuproxy_dp::{LcoreStats, PortInfo, PortStats, Result, TxStats};

/// What to run.
#[derive(Debug, Clone)]
pub struct PortOptions {
    /// EAL arguments (no program name).
    pub eal_args: Vec<String>,
    /// The address to answer for.
    pub ip: Ipv4Addr,
    /// Device name to use (default: the first port the EAL found).
    pub device: Option<String>,
    /// Stop after this long (None: on `stop` only).
    pub run_for: Option<Duration>,
    /// Rx/tx burst.
    pub burst: usize,
    /// Report interval.
    pub report_every: Duration,
}

impl PortOptions {
    /// Defaults for everything but the EAL arguments and the address.
    pub fn new(eal_args: Vec<String>, ip: Ipv4Addr) -> Self {
        Self {
            eal_args,
            ip,
            device: None,
            run_for: None,
            burst: 32,
            report_every: Duration::from_secs(1),
        }
    }
}

/// Everything known once the port is up.
#[derive(Debug, Clone)]
pub struct PortUp {
    /// The port.
    pub port: PortInfo,
    /// All ports the EAL found.
    pub all_ports: Vec<PortInfo>,
    /// Its MAC.
    pub mac: [u8; 6],
    /// Link up at start.
    pub link_up: bool,
    /// Link speed at start.
    pub link_speed_mbps: u32,
    /// The polling lcore.
    pub lcore: u32,
    /// Mbufs in the pool.
    pub pool_mbufs: u32,
    /// Bytes the pool was sized for.
    pub pool_bytes: u64,
}

/// Counters at one instant.
#[derive(Debug, Clone, Copy, Default)]
pub struct PortReport {
    /// Since the loop started.
    pub elapsed: Duration,
    /// ethdev counters.
    pub port: PortStats,
    /// Loop counters (busy/idle cycles).
    pub lcore: LcoreStats,
    /// Transmit batch counters.
    pub tx: TxStats,
    /// ARP/ICMP counters.
    pub responder: ResponderStats,
    /// Mbufs out of the pool (PMD rings included).
    pub pool_in_use: u32,
}

/// What happened, in order.
#[derive(Debug)]
pub enum PortEvent<'a> {
    /// The port is up and polling starts.
    Up(&'a PortUp),
    /// Periodic counters.
    Tick(&'a PortReport),
}

/// The end of a run.
#[derive(Debug, Clone)]
pub struct PortSummary {
    /// Final counters (taken before the port was closed).
    pub last: PortReport,
    /// Mbufs out of the pool right after the port started (PMDs that
    /// pre-fill rx rings or, like af_xdp, a UMEM fill ring hold these).
    pub in_use_at_start: u32,
    /// Mbufs out of the pool after the port was closed: 0 for PMDs that
    /// return everything on close (af_packet, tap, ring, null). af_xdp
    /// keeps the mbufs of its UMEM fill and completion rings until the
    /// pool itself is freed, which happens right after; so this is a
    /// statement about the PMD, reported, not judged. Our own accounting
    /// is exact: see [`TxStats`].
    pub in_use_after_close: u32,
}

/// Runs the port until `stop` is set or `opts.run_for` passes, calling
/// `on_event` on the polling lcore (once per `report_every`; keep it cheap).
#[cfg(not(dpdk))]
pub fn run_port(
    _opts: &PortOptions,
    _stop: &AtomicBool,
    _on_event: impl FnMut(PortEvent<'_>),
) -> Result<PortSummary> {
    Err(Error::Unavailable)
}

/// Runs the port until `stop` is set or `opts.run_for` passes, calling
/// `on_event` on the polling lcore (once per `report_every`; keep it cheap).
#[cfg(dpdk)]
pub fn run_port(
    opts: &PortOptions,
    stop: &AtomicBool,
    mut on_event: impl FnMut(PortEvent<'_>),
) -> Result<PortSummary> {
    use std::time::Instant;

    use dpuproxy_hugepages::{MempoolPlan, PortShape};

    use dpuproxy_dp::net::{Responder, Verdict};
    use dpuproxy_dp::{Eal, LoopOptions, Mempool, Port, PortConfig, run_loop, select_port};

    let eal = Eal::init(&opts.eal_args)?;
    let all_ports = eal.ports();
    let info = select_port(&all_ports, opts.device.as_deref())?;
    let cfg = PortConfig::default();
    let plan = MempoolPlan::for_port(&PortShape {
        rx_desc: u32::from(cfg.rx_desc),
        tx_desc: u32::from(cfg.tx_desc),
        burst: opts.burst as u32,
        ..PortShape::default()
    });
    let pool = Mempool::new(&eal, "port", plan.mbufs, plan.cache, None, info.socket)?;
    let port = Port::open(info.id, &pool, &cfg)?;
    let in_use_at_start = pool.in_use();
    let mac = port.mac()?;
    let link = port.link()?;
    let up = PortUp {
        port: info,
        all_ports,
        mac,
        link_up: link.up,
        link_speed_mbps: link.speed_mbps,
        lcore: Eal::current_lcore().unwrap_or(u32::MAX),
        pool_mbufs: pool.capacity(),
        pool_bytes: plan.bytes,
    };
    on_event(PortEvent::Up(&up));

    let mut responder = Responder::new(mac, opts.ip);
    let loop_opts = LoopOptions {
        burst: opts.burst,
        report_every: Some(opts.report_every),
        run_for: opts.run_for,
        ..LoopOptions::default()
    };
    let started = Instant::now();
    // Written by the handler, read by the reporter (same thread).
    let last_responder = std::cell::Cell::new(ResponderStats::default());
    let (lcore, tx) = {
        let responder_ref = &mut responder;
        let port_ref = &port;
        let pool_ref = &pool;
        let last_ref = &last_responder;
        run_loop(
            port_ref,
            &loop_opts,
            stop,
            |mut m, tx| {
                if responder_ref.handle(m.data_mut()) == Verdict::Reply {
                    tx.push(m);
                }
                last_ref.set(responder_ref.stats());
            },
            |lc, txs| {
                let r = PortReport {
                    elapsed: started.elapsed(),
                    port: port_ref.stats().unwrap_or_default(),
                    lcore: *lc,
                    tx: *txs,
                    responder: last_ref.get(),
                    pool_in_use: pool_ref.in_use(),
                };
                on_event(PortEvent::Tick(&r));
            },
        )
    };
    let last = PortReport {
        elapsed: started.elapsed(),
        port: port.stats().unwrap_or_default(),
        lcore,
        tx,
        responder: responder.stats(),
        pool_in_use: pool.in_use(),
    };
    drop(port);
    let in_use_after_close = pool.in_use();
    drop(pool);
    drop(eal);
    Ok(PortSummary {
        last,
        in_use_at_start,
        in_use_after_close,
    })
}
