//! Mirrors dpdk-sys's outcome: `cfg(dpdk)` when the bindings were built
//! (read from the `links = "dpdk"` metadata, DEP_DPDK_AVAILABLE), and
//! dp's: `cfg(xdp_steer)` when `dpuproxy_dp::xdp` (our XDP flow steering,
//! which the live mode switch needs) was built (DEP_DPUPROXY_DP_XDP_STEER).
fn main() {
    println!("cargo::rustc-check-cfg=cfg(dpdk)");
    println!("cargo::rustc-check-cfg=cfg(xdp_steer)");
    println!("cargo::rerun-if-env-changed=DEP_DPDK_AVAILABLE");
    println!("cargo::rerun-if-env-changed=DEP_DPUPROXY_DP_XDP_STEER");
    if std::env::var("DEP_DPUPROXY_DP_XDP_STEER").is_ok_and(|v| v == "1") {
        println!("cargo::rustc-cfg=xdp_steer");
    }
    if std::env::var("DEP_DPDK_AVAILABLE").is_ok_and(|v| v == "1") {
        println!("cargo::rustc-cfg=dpdk");
    }
}
