//! dpuproxy-dpdk-sys: bindgen-generated DPDK bindings (EAL, ethdev, mbuf,
//! mempool, lcore, errno, ring) over pkg-config `libdpdk`, plus a C shim
//! for DPDK's `static inline` functions.
//!
//! No bindings yet: generating them needs `libdpdk-dev`, and nothing in
//! the workspace links DPDK until the DPDK-foundation issue lands.
