//! `dpuproxy port`: bring one DPDK port up, answer ARP and ping for an
//! address, print port and lcore counters every second, and exit cleanly
//! after `--for` or on SIGINT/SIGTERM.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::port_loop::{self, PortEvent, PortOptions};
use anyhow::{Context, bail};
use signal_hook::consts::{SIGINT, SIGTERM};

#[derive(clap::Args, Debug)]
pub struct PortArgs {
    /// EAL arguments as one string, e.g.
    /// "-l 1 --in-memory --no-telemetry --iova-mode=va --no-pci --vdev=net_af_packet0,iface=veth0".
    /// For mlx5 on a BlueField: "-l 1 -a <PCI address>,<devargs>".
    #[arg(long = "dpdk-eal", value_name = "ARGS", allow_hyphen_values = true)]
    pub dpdk_eal: String,
    /// IPv4 address/prefix to answer ARP and ICMP echo for, e.g. 10.77.9.1/24.
    #[arg(long, value_name = "ADDR/LEN")]
    pub ip: String,
    /// Run this many seconds, then exit (default: until SIGINT/SIGTERM).
    #[arg(long = "for", value_name = "SECONDS")]
    pub run_for: Option<f64>,
    /// Device name to use (default: the first port the EAL found).
    #[arg(long)]
    pub device: Option<String>,
    /// Rx/tx burst size (1..=64).
    #[arg(long, default_value_t = 32)]
    pub burst: usize,
}

fn parse_cidr(s: &str) -> anyhow::Result<(Ipv4Addr, u8)> {
    let (addr, len) = s.split_once('/').unwrap_or((s, "32"));
    let ip: Ipv4Addr = addr
        .parse()
        .with_context(|| format!("--ip {s}: not an IPv4 address"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .with_context(|| format!("--ip {s}: prefix length must be 0..=32"))?;
    Ok((ip, len))
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn run(args: &PortArgs) -> anyhow::Result<()> {
    let (ip, prefix_len) = parse_cidr(&args.ip)?;
    if !(1..=dpuproxy_dp::MAX_BURST).contains(&args.burst) {
        bail!("--burst must be 1..={}", dpuproxy_dp::MAX_BURST);
    }
    let run_for = match args.run_for {
        Some(s) if !(s.is_finite() && s > 0.0) => {
            bail!("--for must be a positive number of seconds")
        }
        Some(s) => Some(Duration::from_secs_f64(s)),
        None => None,
    };
    let eal_args = dpuproxy_dp::split_eal_args(&args.dpdk_eal);
    if eal_args.is_empty() {
        bail!(
            "--dpdk-eal is empty: give at least the lcore and a device, e.g. \"-l 1 --vdev=net_tap0\""
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    let mut opts = PortOptions::new(eal_args, ip);
    opts.device = args.device.clone();
    opts.run_for = run_for;
    opts.burst = args.burst;

    let mut prev = None;
    let summary = port_loop::run_port(&opts, &stop, |ev| match ev {
        PortEvent::Up(up) => {
            println!(
                "port {} {} (driver {}) up: mac {} link {} {} Mbit/s, answering {ip}/{prefix_len}; \
                 lcore {}, pool {} mbufs (~{} MiB){}",
                up.port.id,
                up.port.name,
                up.port.driver,
                mac(&up.mac),
                if up.link_up { "up" } else { "down" },
                up.link_speed_mbps,
                up.lcore,
                up.pool_mbufs,
                up.pool_bytes >> 20,
                if up.all_ports.len() > 1 {
                    format!(", {} ports found", up.all_ports.len())
                } else {
                    String::new()
                }
            );
        }
        PortEvent::Tick(r) => {
            let d = match &prev {
                Some(p) => r.lcore.since(p),
                None => r.lcore,
            };
            prev = Some(r.lcore);
            println!(
                "t={:.1}s port rx {} pkts {} B tx {} pkts {} B drops imissed {} ierrors {} oerrors {} \
                 nombuf {} tx_full {} | lcore {} busy {:.2}% busy_cycles {} idle_cycles {} \
                 (total busy {} idle {}) | arp {} icmp {} bad_csum {} | mbufs in use {}",
                r.elapsed.as_secs_f64(),
                r.port.ipackets,
                r.port.ibytes,
                r.port.opackets,
                r.port.obytes,
                r.port.imissed,
                r.port.ierrors,
                r.port.oerrors,
                r.port.rx_nombuf,
                r.tx.dropped_full,
                r.lcore.lcore,
                d.busy_percent(),
                d.busy_cycles,
                d.idle_cycles,
                r.lcore.busy_cycles,
                r.lcore.idle_cycles,
                r.responder.arp_replies,
                r.responder.icmp_echo_replies,
                r.responder.bad_checksum,
                r.pool_in_use,
            );
        }
    })?;
    let l = &summary.last;
    println!(
        "final: {:.1}s rx {} tx {} pkts; arp requests {} replies {}; icmp echo requests {} \
         replies {}; bad checksums {}; ignored {}; tx sent {} dropped_full {} retries {}; lcore {} \
         iterations {} busy {:.2}% ({} busy / {} idle cycles, {} cycles/pkt); mbufs in use at start {} \
         after close {}",
        l.elapsed.as_secs_f64(),
        l.port.ipackets,
        l.port.opackets,
        l.responder.arp_requests,
        l.responder.arp_replies,
        l.responder.icmp_echo_requests,
        l.responder.icmp_echo_replies,
        l.responder.bad_checksum,
        l.responder.ignored,
        l.tx.sent,
        l.tx.dropped_full,
        l.tx.retries,
        l.lcore.lcore,
        l.lcore.iterations,
        l.lcore.busy_percent(),
        l.lcore.busy_cycles,
        l.lcore.idle_cycles,
        l.lcore
            .cycles_per_packet()
            .map_or("-".to_string(), |c| c.to_string()),
        summary.in_use_at_start,
        summary.in_use_after_close,
    );
    remove_hugepage_files(&opts.eal_args);
    Ok(())
}

/// Without `--in-memory` or `--huge-unlink` the EAL keeps its hugepage
/// files (`<file-prefix>map_N`) after cleanup, for secondary processes that
/// never come here; they would pin the pages. The EAL has been cleaned up
/// when we get here, so remove ours and say so.
fn remove_hugepage_files(eal_args: &[String]) {
    if eal_args
        .iter()
        .any(|a| a == "--in-memory" || a.starts_with("--huge-unlink") || a == "--no-huge")
    {
        return;
    }
    let prefix = eal_args
        .iter()
        .enumerate()
        .find_map(|(i, a)| match a.strip_prefix("--file-prefix") {
            Some(rest) if rest.starts_with('=') => Some(rest[1..].to_string()),
            Some("") => eal_args.get(i + 1).cloned(),
            _ => None,
        })
        .unwrap_or_else(|| "rte".to_string());
    let Ok(status) = dpuproxy_hugepages::detect() else {
        return;
    };
    let files = dpuproxy_hugepages::leftover_files(&status, &format!("{prefix}map_"));
    let removed = files
        .iter()
        .filter(|f| std::fs::remove_file(f).is_ok())
        .count();
    if !files.is_empty() {
        println!(
            "hugepages: removed {removed} of {} files the EAL left ({prefix}map_*); \
             --in-memory or --huge-unlink avoids them",
            files.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing() {
        assert_eq!(
            parse_cidr("10.77.9.1/24").unwrap(),
            (Ipv4Addr::new(10, 77, 9, 1), 24)
        );
        assert_eq!(parse_cidr("10.0.0.1").unwrap().1, 32);
        assert!(parse_cidr("10.0.0.1/33").is_err());
        assert!(parse_cidr("nope/24").is_err());
    }
}
