//! Finds libdpdk through pkg-config, generates bindings with bindgen and
//! compiles the C shim for DPDK's `static inline` functions.
//!
//! Without libdpdk the crate builds empty (`AVAILABLE == false`) so that
//! `cargo build --workspace` works anywhere; `DPUPROXY_REQUIRE_DPDK=1`
//! (set by CI) turns a missing libdpdk into a build error instead, and
//! `DPUPROXY_NO_DPDK=1` forces the empty build even where libdpdk exists.
//!
//! No architecture flags are written here: pkg-config's cflags carry
//! DPDK's own (`-include rte_config.h`, `-march=...` as DPDK was built:
//! `corei7` on Debian amd64, an armv8 level on arm64) and both bindgen and
//! cc get exactly those. Cross builds use the usual `PKG_CONFIG_SYSROOT_DIR`
//! / `PKG_CONFIG_PATH` (plus `PKG_CONFIG_ALLOW_CROSS=1`); bindgen picks the
//! clang target from cargo's `TARGET`.

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// The directories pkg-config searches (its `pc_path`), those that exist.
fn pkg_config_dirs() -> Vec<String> {
    let out = Command::new("pkg-config")
        .args(["--variable", "pc_path", "pkg-config"])
        .output();
    let listed = out
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    listed
        .split(':')
        .filter(|d| !d.is_empty() && std::path::Path::new(d).is_dir())
        .map(str::to_string)
        .collect()
}

fn main() {
    println!("cargo::rustc-check-cfg=cfg(dpdk)");
    println!("cargo::rerun-if-env-changed=DPUPROXY_REQUIRE_DPDK");
    println!("cargo::rerun-if-env-changed=DPUPROXY_NO_DPDK");
    println!("cargo::rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo::rerun-if-env-changed=PKG_CONFIG_SYSROOT_DIR");
    println!("cargo::rerun-if-changed=shim/shim.h");
    println!("cargo::rerun-if-changed=shim/shim.c");

    let require = env::var("DPUPROXY_REQUIRE_DPDK").is_ok_and(|v| v == "1");
    let forced_off = env::var("DPUPROXY_NO_DPDK").is_ok_and(|v| v == "1");
    if forced_off {
        assert!(
            !require,
            "DPUPROXY_REQUIRE_DPDK=1 and DPUPROXY_NO_DPDK=1 contradict each other"
        );
        unavailable("DPUPROXY_NO_DPDK=1");
        return;
    }

    let lib = match pkg_config::Config::new()
        .atleast_version("22.11")
        .cargo_metadata(true)
        .probe("libdpdk")
    {
        Ok(lib) => lib,
        Err(e) => {
            if require {
                panic!(
                    "DPUPROXY_REQUIRE_DPDK=1 but pkg-config cannot find libdpdk >= 22.11 \
                     (on Debian: apt-get install libdpdk-dev): {e}"
                );
            }
            // Installing libdpdk-dev later adds libdpdk.pc to one of
            // pkg-config's directories: watch them, so that the next build
            // finds it instead of keeping this empty one.
            for dir in pkg_config_dirs() {
                println!("cargo::rerun-if-changed={dir}");
            }
            unavailable(&format!("pkg-config libdpdk: {e}"));
            return;
        }
    };

    let cflags = dpdk_cflags();
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));

    let mut cc = cc::Build::new();
    cc.file("shim/shim.c").warnings(true).opt_level(3);
    for flag in &cflags {
        cc.flag(flag);
    }
    for inc in &lib.include_paths {
        cc.include(inc);
    }
    cc.compile("dpuproxy_dpdk_shim");

    let bindings = bindgen::Builder::default()
        .header("shim/shim.h")
        .clang_args(cflags.iter())
        .clang_args(
            lib.include_paths
                .iter()
                .map(|p| format!("-I{}", p.display())),
        )
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        // EAL, lcore, launch, errno.
        .allowlist_function("rte_eal_.*")
        .allowlist_function("rte_strerror")
        .allowlist_function("rte_lcore_.*")
        .allowlist_function("rte_get_main_lcore")
        .allowlist_function("rte_get_next_lcore")
        .allowlist_function("rte_get_tsc_hz")
        // ethdev.
        .allowlist_function("rte_eth_.*")
        .allowlist_type("rte_eth_.*")
        .allowlist_var("RTE_ETH_.*")
        // mbuf, mempool.
        .allowlist_function("rte_pktmbuf_pool_create")
        .allowlist_function("rte_mempool_(free|avail_count|in_use_count)")
        .allowlist_type("rte_mbuf")
        .allowlist_type("rte_mempool")
        .allowlist_var("RTE_MAX_.*")
        .allowlist_var("SOCKET_ID_ANY")
        .allowlist_var("RTE_MBUF_.*")
        .allowlist_var("RTE_PKTMBUF_.*")
        // The shim itself.
        .allowlist_function("dpuproxy_.*")
        .allowlist_var("DPUPROXY_.*")
        // Packed, aligned-inside-packed structs (rte_arp_hdr and friends)
        // cannot be laid out soundly by bindgen; headers are parsed as
        // bytes in `dp` instead, so keep anything that drags them in opaque.
        .opaque_type("rte_arp_hdr")
        .opaque_type("rte_arp_ipv4")
        .opaque_type("rte_l2tpv2_combined_msg_hdr")
        .opaque_type("rte_gtp_psc_generic_hdr")
        .derive_default(true)
        .derive_debug(true)
        .layout_tests(false)
        .prepend_enum_name(false)
        .generate_comments(false)
        .generate()
        .expect("bindgen over the DPDK headers failed");
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("write bindings.rs");

    println!("cargo::rustc-cfg=dpdk");
    println!("cargo::metadata=available=1");
}

/// `pkg-config --cflags libdpdk`, token by token: the crate's `Library`
/// keeps only -I/-D, but DPDK also needs `-include rte_config.h` and its
/// `-march`.
fn dpdk_cflags() -> Vec<String> {
    let pkg_config = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".into());
    let out = Command::new(&pkg_config)
        .args(["--cflags", "libdpdk"])
        .output()
        .unwrap_or_else(|e| panic!("running {pkg_config}: {e}"));
    assert!(
        out.status.success(),
        "{pkg_config} --cflags libdpdk: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("pkg-config output is UTF-8");
    let mut flags = Vec::new();
    let mut tokens = text.split_whitespace();
    while let Some(t) = tokens.next() {
        if t.starts_with("-I") {
            continue; // handed over through `include_paths`
        }
        if t == "-include" {
            if let Some(file) = tokens.next() {
                flags.push("-include".to_string());
                flags.push(file.to_string());
            }
            continue;
        }
        flags.push(t.to_string());
    }
    flags
}

fn unavailable(why: &str) {
    // A cargo directive is one line; pkg-config's errors span several.
    let why = why.split_whitespace().collect::<Vec<_>>().join(" ");
    println!(
        "cargo::warning=DPDK bindings disabled ({why}); dpuproxy-dp builds without a data path"
    );
    println!("cargo::metadata=available=0");
}
