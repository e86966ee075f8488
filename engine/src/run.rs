//! Starting and stopping the engine: EAL, port, RSS, one loop per lcore,
//! and the mbuf accounting at the end (DPDK builds only).

use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_queue::ArrayQueue;
use dpuproxy_dp::steer::{RSS_KEY, Steering};
use dpuproxy_dp::{Eal, Mempool, Port, PortConfig, PortInfo, run_on_lcores, select_port, tsc_hz};

use crate::error::{Error, Result};
use crate::lanes::{AbortOnDrop, Lanes};
use crate::lcore::{build_stack, lcore_loop};
use crate::{
    DpMetrics, LcoreSummary, MAX_POLLERS, ProxySummary, RunContext, STEER_RING, SteeringMode,
};

/// Programs our RSS key and RETA when the port takes them, and says how
/// packets will reach their owner.
fn program_rss(port: &mut Port<'_>, queues: u16) -> (Steering, SteeringMode) {
    if queues < 2 {
        return (Steering::new(1, 0), SteeringMode::Single);
    }
    let steering = Steering::new(queues, usize::from(port.reta_size()));
    let attempt = (|| -> std::result::Result<(), String> {
        // The NIC picks the bucket from the hash's low bits; our `%` agrees
        // only for a power-of-two table.
        if port.reta_size() == 0 {
            return Err("the port has no redirection table".into());
        }
        if !steering.reta().len().is_power_of_two() {
            return Err(format!(
                "the port's redirection table has {} entries (not a power of two)",
                port.reta_size()
            ));
        }
        // 0: the PMD does not say (the read-back below decides).
        let key_size = usize::from(port.hash_key_size());
        if key_size != 0 && key_size != RSS_KEY.len() {
            return Err(format!(
                "the PMD takes a {}-byte RSS key, ours has {}",
                port.hash_key_size(),
                RSS_KEY.len()
            ));
        }
        let (_, hash_types) = port.rss_key().map_err(|e| e.to_string())?;
        if !dpuproxy_dp::hashes_ipv4_tcp_ports(hash_types) {
            return Err("the port does not hash the ports of IPv4 TCP".into());
        }
        let e = |e: dpuproxy_dp::Error| e.to_string();
        port.set_rss_key(&RSS_KEY, hash_types).map_err(e)?;
        port.set_reta(steering.reta()).map_err(e)?;
        if port.rss_key().map_err(e)?.0 != RSS_KEY || port.reta().map_err(e)? != steering.reta() {
            return Err("the port did not keep our key and RETA".into());
        }
        Ok(())
    })();
    match attempt {
        Ok(()) => {
            tracing::info!(
                queues,
                reta = steering.reta().len(),
                "RSS programmed with our key and RETA: the NIC delivers each flow to the lcore that owns it"
            );
            (steering, SteeringMode::Hardware)
        }
        Err(e) => {
            tracing::info!(
                queues,
                reason = %e,
                "no programmable RSS: lcores hand packets of flows they do not own to the owner (software steering)"
            );
            (Steering::new(queues, 0), SteeringMode::Software)
        }
    }
}

/// How many queue pairs poll: one per lcore, up to the port's queues and
/// [`MAX_POLLERS`]. Says which lcores stay idle and why.
fn polling_queues(lcores: &[u32], info: &PortInfo) -> Result<u16> {
    let (max_rx, max_tx) = Port::max_queues(info.id)?;
    let queues = lcores
        .len()
        .min(MAX_POLLERS)
        .min(usize::from(max_rx))
        .min(usize::from(max_tx))
        .max(1) as u16;
    let (polling, idle) = lcores.split_at(usize::from(queues));
    let port_queues = max_rx.min(max_tx);
    if port_queues == 1 {
        tracing::info!(
            port = %info.name,
            lcore = lcores.first().copied().unwrap_or_default(),
            idle_lcores = ?idle,
            "the port has one rx/tx queue pair: one lcore owns it (no RSS spreading); any other lcores stay idle"
        );
    } else if port_queues == queues && !idle.is_empty() {
        tracing::warn!(
            port = %info.name,
            queues,
            ?polling,
            idle_lcores = ?idle,
            "the port has fewer rx/tx queue pairs than lcores: one lcore owns each queue, the extra lcores stay idle"
        );
    } else if !idle.is_empty() {
        tracing::warn!(
            ?polling,
            idle_lcores = ?idle,
            "at most {MAX_POLLERS} lcores poll: the extra lcores stay idle"
        );
    }
    Ok(queues)
}

/// Publish what the loops' counters are read against.
fn publish_setup(metrics: &DpMetrics, pool: &Mempool<'_>, mode: SteeringMode, polling: &[u32]) {
    metrics
        .mempool_size
        .store(u64::from(pool.capacity()), Ordering::Relaxed);
    metrics.tsc_hz.store(tsc_hz(), Ordering::Relaxed);
    metrics.steering.store(mode as u64, Ordering::Relaxed);
    for (q, &l) in polling.iter().enumerate() {
        metrics.per_lcore[q]
            .lcore
            .store(u64::from(l), Ordering::Relaxed);
        metrics.per_lcore[q]
            .queue
            .store(q as u64, Ordering::Relaxed);
    }
    metrics
        .pollers
        .store(polling.len() as u64, Ordering::Relaxed);
}

/// Our XDP program, written out for the af_xdp PMD, and the interface it
/// goes on.
#[cfg(xdp_steer)]
type SwitchPort = (dpuproxy_dp::xdp::ProgramFile, String);
#[cfg(not(xdp_steer))]
type SwitchPort = ();

/// The EAL arguments to start with: with the live mode switch, the one
/// `net_af_xdp` vdev loads our XDP program (`xdp_prog=`).
fn switch_eal_args(ctx: RunContext<'_>) -> Result<(Vec<String>, Option<SwitchPort>)> {
    if ctx.switch.is_none() {
        return Ok((ctx.opts.eal_args.clone(), None));
    }
    #[cfg(xdp_steer)]
    {
        use dpuproxy_dp::xdp;
        let file = xdp::ProgramFile::write(&std::env::temp_dir())?;
        let (args, iface) = xdp::with_xdp_prog(&ctx.opts.eal_args, file.path())?;
        Ok((args, Some((file, iface))))
    }
    #[cfg(not(xdp_steer))]
    Err(Error::Switch(
        "this build has no XDP steering (clang or libbpf was missing when it was built)".into(),
    ))
}

/// Find our program on the port's interface and give the board its
/// steering (default: the DPDK path).
fn start_steering(
    board: &dpuproxy_switch::SwitchBoard,
    queues: u16,
    port: Option<&SwitchPort>,
) -> Result<()> {
    if queues != 1 {
        return Err(Error::Switch(format!(
            "the switch needs one polling lcore (one queue pair), not {queues}"
        )));
    }
    #[cfg(xdp_steer)]
    {
        let Some((_, iface)) = port else {
            return Err(Error::Switch("no XDP program was loaded".into()));
        };
        let steer = dpuproxy_dp::xdp::FlowSteer::find(iface)?;
        tracing::info!(
            iface,
            prog_id = steer.prog_id(),
            "XDP flow steering up: new connections go to the dpdk path"
        );
        board
            .set_steer(std::sync::Arc::new(crate::steer::XdpSteer(steer)))
            .map_err(Error::Switch)?;
        board.mark_ready(dpuproxy_switch::Path::Dpdk);
        Ok(())
    }
    #[cfg(not(xdp_steer))]
    {
        let _ = (board, port);
        Err(Error::Switch("this build has no XDP steering".into()))
    }
}

/// See [`crate::run_proxy`].
pub(crate) fn run(ctx: RunContext<'_>, on_up: impl FnOnce(&str, [u8; 6])) -> Result<ProxySummary> {
    let RunContext { opts, metrics, .. } = ctx;
    let (eal_args, switch_port) = switch_eal_args(ctx)?;
    let eal = Eal::init(&eal_args)?;
    let main = eal.main_lcore();
    // Queue 0 is polled by the main lcore, queue i by the i-th worker.
    let lcores: Vec<u32> = std::iter::once(main)
        .chain(eal.lcores().into_iter().filter(|&l| l != main))
        .collect();
    let info = select_port(&eal.ports(), opts.device.as_deref())?;
    let queues = polling_queues(&lcores, &info)?;
    let cfg = PortConfig {
        rx_queues: queues,
        tx_queues: queues,
        rx_desc: crate::QUEUE_DESCRIPTORS,
        tx_desc: crate::QUEUE_DESCRIPTORS,
        rss_key: Some(RSS_KEY.to_vec()),
        ..PortConfig::default()
    };
    let plan = crate::pool_plan(queues, opts.burst);
    let pool = Mempool::new(&eal, "proxy", plan.mbufs, plan.cache, None, info.socket)?;
    let mut port = Port::open(info.id, &pool, &cfg)?;
    let mac = port.mac()?;
    let (steering, mode) = program_rss(&mut port, queues);
    if let Some(board) = ctx.switch {
        start_steering(board, queues, switch_port.as_ref())?;
    }
    let polling = &lcores[..usize::from(queues)];
    publish_setup(metrics, &pool, mode, polling);
    let lanes = Lanes {
        ctx,
        abort: AtomicBool::new(false),
        pool: &pool,
        mac,
        steering,
        hardware: mode == SteeringMode::Hardware,
        rings: (0..queues).map(|_| ArrayQueue::new(STEER_RING)).collect(),
        cpu_sets: std::sync::Mutex::new(vec![None; usize::from(queues)]),
    };
    // What every lcore will build must work before we say we are up.
    drop(build_stack(opts, mac, 0, ctx.switch.is_some())?);
    metrics.up.store(true, Ordering::Relaxed);
    metrics.started.store(true, Ordering::Relaxed);
    on_up(&info.name, mac);
    tracing::info!(
        lcores = ?polling,
        steering = mode.label(),
        "polling {queues} queue pair(s), one per lcore"
    );
    let outcomes = run_lcores(&eal, &lanes, &mut port);
    // Every lcore has stopped: free what is still in the hand-over rings
    // (dropping a ring drops its mbufs), stop the port, and account for
    // every mbuf.
    metrics.up.store(false, Ordering::Relaxed);
    drop(lanes);
    drop(port);
    let in_use = pool.in_use();
    let size = pool.capacity();
    drop(pool);
    drop(eal);
    Ok(ProxySummary {
        port: info.name,
        pool_size: size,
        pool_in_use_after_close: in_use,
        steering: mode,
        lcores: outcomes?,
    })
}

/// One loop per queue pair, each on its lcore; their summaries, or the
/// first failure (a panic included).
fn run_lcores<'p>(
    eal: &Eal,
    lanes: &Lanes<'_, 'p>,
    port: &mut Port<'p>,
) -> Result<Vec<LcoreSummary>> {
    type Job<'a> = Box<dyn FnOnce() -> Result<LcoreSummary> + Send + 'a>;
    let jobs: Vec<Job<'_>> = port
        .queue_pairs()
        .into_iter()
        .map(|qp| {
            Box::new(move || {
                // Armed until the loop returns Ok: an error or a panic
                // stops every other lcore too.
                let mut guard = AbortOnDrop(&lanes.abort, true);
                let r = lcore_loop(lanes, qp);
                guard.1 = r.is_err();
                r
            }) as Job<'_>
        })
        .collect();
    let outcomes = run_on_lcores(eal, jobs, || lanes.abort.store(true, Ordering::Relaxed))?;
    let mut done = Vec::new();
    for (queue, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok(Ok(s)) => done.push(s),
            Ok(Err(e)) => return Err(e),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                return Err(Error::LcorePanic { queue, what });
            }
        }
    }
    Ok(done)
}
