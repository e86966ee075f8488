//! dpuproxy-dp: the DPDK data path.
//!
//! What is here (DPDK foundation):
//! - [`Eal`]: `rte_eal_init` from an argument vector (once per process),
//!   `rte_eal_cleanup` on drop.
//! - [`Mempool`] (mbufs in EAL memory: hugepages, or anonymous memory with
//!   `--no-huge`) and [`Mbuf`], which frees itself on drop and is handed
//!   back to DPDK explicitly ([`Mbuf::into_raw`]) only at transmit.
//! - [`Port`]: configure queues, start, stop, MAC, link, stats, RSS key
//!   and RETA; burst receive.
//! - [`TxBatch`]: transmit batched once per loop turn; when the tx ring is
//!   full it retries a bounded number of times, then frees what is left and
//!   counts it. No mbuf is ever leaked or lost track of.
//! - [`run_loop`]: the per-lcore run-to-completion loop skeleton (rx burst
//!   → handler → one tx flush), counting busy and idle TSC cycles like
//!   OVS-DPDK's pmd-stats.
//! - [`net::Responder`]: ARP and ICMP echo for the port's IPv4 address.
//! - [`PacketRingDrops`]: frames an af_packet vdev's kernel ring dropped
//!   (its PMD does not report them).
//! - [`select_port`]: the port to run on, with errors that say what to
//!   check.
//!
//! - [`run_on_lcores`]: one job per lcore of `-l`/`--lcores`
//!   (`rte_eal_remote_launch`), each polling its own [`QueuePair`], the
//!   per-queue handle a [`Port`] hands out once per queue.
//! - [`steer`]: which lcore owns a TCP flow (Toeplitz with our key and
//!   RETA), for hardware RSS and the software hand-over alike.
//! - [`CpuSet`]: whether two polling threads may share a CPU.
//!
//! The proxy that runs on all of this is `dpuproxy-engine`; the
//! `dpuproxy port` command is in `ctl`.
//!
//! Lifetimes carry DPDK's ordering rules: a [`Mempool`] borrows the
//! [`Eal`], a [`Port`] and every [`Mbuf`] borrow the pool, so the port is
//! closed before its pool is freed and the pool before the EAL is cleaned
//! up. `Port` is neither `Send` nor `Sync`; a [`QueuePair`] is `Send` but
//! not `Sync`: a queue is polled by one thread.
//!
//! # Building without DPDK
//!
//! The DPDK parts exist only when `dpuproxy-dpdk-sys` found libdpdk
//! (`cfg(dpdk)`, see that crate). Otherwise [`AVAILABLE`] is false, only
//! the byte-level [`net`] and [`steer`] modules, [`CpuSet`] and the plain
//! data types are compiled, and everything above keeps building. CI sets `DPUPROXY_REQUIRE_DPDK=1`
//! so the DPDK tests cannot be skipped there.

mod cpus;
mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod net;
mod packet_ring;
#[cfg(dpdk)]
mod select;
mod stats;
pub mod steer;

#[cfg(dpdk)]
mod eal;
#[cfg(dpdk)]
mod lcore;
#[cfg(dpdk)]
mod mbuf;
#[cfg(dpdk)]
mod port;
#[cfg(xdp_steer)]
pub mod xdp;

pub use cpus::CpuSet;
pub use error::{Error, Result};
pub use packet_ring::PacketRingDrops;
#[cfg(dpdk)]
pub use select::select_port;
pub use stats::{LcoreStats, PortInfo, PortStats, TxStats};

#[cfg(dpdk)]
pub use eal::Eal;
#[cfg(dpdk)]
pub use lcore::{LoopOptions, run_loop, run_on_lcores, tsc, tsc_hz};
#[cfg(dpdk)]
pub use mbuf::{Mbuf, Mempool};
#[cfg(dpdk)]
pub use port::{Link, Port, PortConfig, QueuePair, TxBatch, hashes_ipv4_tcp_ports};

/// Whether this build has the DPDK data path.
pub const AVAILABLE: bool = cfg!(dpdk);

/// Whether this build has the XDP flow steering ([`xdp`]; DPDK and clang
/// at build time).
pub const XDP_STEER: bool = cfg!(xdp_steer);

/// Splits an EAL argument string on whitespace (EAL arguments carry no
/// spaces; device args use commas).
pub fn split_eal_args(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

/// Largest rx/tx burst the wrappers accept.
pub const MAX_BURST: usize = 64;
