//! dpuproxy-dpdk-sys: bindgen-generated DPDK bindings (EAL, lcore, ethdev,
//! mbuf, mempool, errno) over pkg-config `libdpdk` (22.11 or later),
//! plus a small hand-written C shim (`shim/shim.c`, compiled with `cc`) for
//! DPDK's `static inline` functions: `rte_eth_rx_burst`/`tx_burst`, the
//! `rte_pktmbuf_*` helpers, `rte_lcore_id`, `rte_errno` and the TSC read.
//! A shim was chosen over bindgen's experimental
//! `wrap_static_fns` because it names exactly the functions the data path
//! calls, and compiles no wrapper for inline code we never use.
//!
//! # Building with or without DPDK
//!
//! `build.rs` probes `pkg-config libdpdk`. When found, the bindings are
//! generated and the crate is compiled with `cfg(dpdk)`; [`AVAILABLE`] is
//! `true`. When missing, the crate is empty, [`AVAILABLE`] is `false`, and a
//! cargo warning says why, so `cargo build --workspace` works on a machine
//! without `libdpdk-dev`. Dependents learn the outcome through the `links`
//! metadata `DEP_DPDK_AVAILABLE`. `DPUPROXY_REQUIRE_DPDK=1` (CI sets it)
//! makes a missing libdpdk a hard error so the DPDK tests can never be
//! skipped silently; `DPUPROXY_NO_DPDK=1` forces the empty build.
//!
//! Linking is dynamic through pkg-config: Debian's EAL loads the PMDs
//! (`net_af_packet`, `net_mlx5`, ...) from its plugin directory by itself.
//!
//! # aarch64 (BlueField)
//!
//! Nothing here is x86-specific. All compiler flags come from
//! `pkg-config --cflags libdpdk`, which carries DPDK's own `-march` (an
//! armv8 level on arm64 packages, `corei7` on amd64), and the shim reads
//! cycles through DPDK's portable `rte_get_tsc_cycles()`. Build natively on
//! the DPU with `libdpdk-dev` installed, or cross-build with
//! `PKG_CONFIG_SYSROOT_DIR`/`PKG_CONFIG_PATH` pointing at an arm64 sysroot.
//!
//! Packed structs that bindgen cannot lay out (`rte_arp_hdr`) are opaque;
//! `dpuproxy-dp` parses protocol headers as bytes.

/// Whether this build links DPDK.
pub const AVAILABLE: bool = cfg!(dpdk);

#[cfg(dpdk)]
#[allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code,
    unnecessary_transmutes,
    missing_debug_implementations,
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    unsafe_op_in_unsafe_fn
)]
mod bindings {
    include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
}

#[cfg(dpdk)]
pub use bindings::*;
