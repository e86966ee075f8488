//! Mirrors dpdk-sys's outcome: `cfg(dpdk)` when the bindings were built
//! (read from the `links = "dpdk"` metadata, DEP_DPDK_AVAILABLE).
fn main() {
    println!("cargo::rustc-check-cfg=cfg(dpdk)");
    println!("cargo::rerun-if-env-changed=DEP_DPDK_AVAILABLE");
    if std::env::var("DEP_DPDK_AVAILABLE").is_ok_and(|v| v == "1") {
        println!("cargo::rustc-cfg=dpdk");
    }
}
