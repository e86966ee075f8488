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
//! - [`app::run_port`]: all of the above as the `dpuproxy port` command.
//! - [`proxy::run_proxy`]: the full-offload proxy, one loop per lcore and
//!   queue pair (DPDK port, `dpuproxy-tcp`, `dpuproxy-tls` records, the
//!   `dpuproxy-l7` core).
//!
//! - [`run_on_lcores`]: one job per lcore of `-l`/`--lcores`
//!   (`rte_eal_remote_launch`), each polling its own [`QueuePair`], the
//!   per-queue handle a [`Port`] hands out once per queue.
//! - [`steer`]: which lcore owns a TCP flow (Toeplitz with our key and
//!   RETA), for hardware RSS and the software hand-over alike.
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
//! the byte-level [`net`] module, the plain data types and
//! [`app::run_port`] (which returns [`Error::Unavailable`]) are compiled,
//! and everything above keeps building. CI sets `DPUPROXY_REQUIRE_DPDK=1`
//! so the DPDK tests cannot be skipped there.

pub mod app;
mod error;
pub mod net;
pub mod proxy;
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

pub use error::{Error, Result};
pub use stats::{LcoreStats, PortInfo, PortStats, TxStats};

#[cfg(dpdk)]
pub use eal::Eal;
#[cfg(dpdk)]
pub use lcore::{LoopOptions, run_loop, run_on_lcores, tsc, tsc_hz};
#[cfg(dpdk)]
pub use mbuf::{Mbuf, Mempool};
#[cfg(dpdk)]
pub use port::{Link, Port, PortConfig, QueuePair, TxBatch};

/// Whether this build has the DPDK data path.
pub const AVAILABLE: bool = cfg!(dpdk);

/// Largest rx/tx burst the wrappers accept.
pub const MAX_BURST: usize = 64;
