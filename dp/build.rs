//! Mirrors dpdk-sys's outcome: `cfg(dpdk)` when the bindings were built
//! (read from the `links = "dpdk"` metadata, DEP_DPDK_AVAILABLE).
//!
//! With DPDK, it also compiles our XDP program (`bpf/flow_steer.bpf.c`,
//! for `net_af_xdp`'s `xdp_prog=`) with clang into `OUT_DIR`, and links
//! libbpf (which libdpdk-dev depends on) for the map updates. A clang that
//! cannot build it leaves `cfg(xdp_steer)` unset: the steering then says
//! it is missing, and `DPUPROXY_REQUIRE_DPDK=1` (CI) makes that a build
//! error instead.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(dpdk)");
    println!("cargo::rustc-check-cfg=cfg(xdp_steer)");
    println!("cargo::rerun-if-env-changed=DEP_DPDK_AVAILABLE");
    println!("cargo::rerun-if-env-changed=DPUPROXY_REQUIRE_DPDK");
    println!("cargo::rerun-if-changed=bpf/flow_steer.bpf.c");
    if std::env::var("DEP_DPDK_AVAILABLE").is_ok_and(|v| v == "1") {
        println!("cargo::rustc-cfg=dpdk");
        match build_xdp_program() {
            Ok(()) => {
                println!("cargo::rustc-cfg=xdp_steer");
                println!("cargo::metadata=xdp_steer=1");
                println!("cargo::rustc-link-lib=bpf");
            }
            Err(e) => {
                if std::env::var("DPUPROXY_REQUIRE_DPDK").is_ok_and(|v| v == "1") {
                    panic!("DPUPROXY_REQUIRE_DPDK=1 but the XDP program does not build: {e}");
                }
                println!("cargo::warning=XDP steering left out: {e}");
            }
        }
    }
}

/// `clang -target bpf` over our program; the target's multiarch include
/// directory supplies `asm/types.h` (Debian), whatever the architecture.
fn build_xdp_program() -> Result<(), String> {
    let out = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let mut cmd = Command::new(&clang);
    cmd.args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"]);
    if let Some(dir) = multiarch_include() {
        cmd.arg(format!("-I{dir}"));
    }
    cmd.arg("-c")
        .arg("bpf/flow_steer.bpf.c")
        .arg("-o")
        .arg(out.join("flow_steer.bpf.o"));
    let o = cmd
        .output()
        .map_err(|e| format!("cannot run {clang} (apt-get install clang): {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "{clang} failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(())
}

fn multiarch_include() -> Option<String> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let o = Command::new(cc).arg("-print-multiarch").output().ok()?;
    let arch = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let dir = format!("/usr/include/{arch}");
    (!arch.is_empty() && std::path::Path::new(&dir).is_dir()).then_some(dir)
}
