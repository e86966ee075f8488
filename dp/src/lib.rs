//! dpuproxy-dp: the DPDK data path.
//!
//! Contract (built out by the DPDK issues): EAL, ports, queues, mempools,
//! an owning `Mbuf`, the smoltcp `Device` over mbufs and the per-lcore
//! run-to-completion loop (rx burst, TCP, TLS records, `dpuproxy-l7`,
//! tx burst). It will sit behind a cargo feature so that `cargo test` of
//! the rest of the workspace never needs libdpdk.
//! No code yet.
