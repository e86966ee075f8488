//! Against the running kernel: detection agrees with /proc/meminfo, and
//! (as root) reserve and mount do what they say, restoring what they
//! changed. Root-only parts print why they did not run; with
//! `DPUPROXY_REQUIRE_DPDK=1` (CI) not being root is a failure instead.

use std::fs;

use dpuproxy_hugepages::{self as hp, PageSize};

fn is_root() -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    uid_line.split_whitespace().nth(2) == Some("0") // effective uid
}

fn root_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var("DPUPROXY_REQUIRE_DPDK").as_deref() != Ok("1"),
        "{test} needs root and DPUPROXY_REQUIRE_DPDK=1 forbids skipping"
    );
    eprintln!("{test}: skipped, needs root");
    false
}

fn meminfo(key: &str) -> u64 {
    let m = fs::read_to_string("/proc/meminfo").unwrap();
    m.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn detection_agrees_with_meminfo() {
    let st = hp::detect().unwrap();
    let default = st.default_size.expect("Hugepagesize in /proc/meminfo");
    assert_eq!(default.0, meminfo("Hugepagesize:"));
    let pool = st.pool(default).expect("a pool of the default size");
    // Sampled separately, so allow a concurrent change by re-reading once.
    let (t, f) = (meminfo("HugePages_Total:"), meminfo("HugePages_Free:"));
    let again = hp::detect().unwrap();
    let pool2 = again.pool(default).unwrap();
    assert!(
        (pool.total == t && pool.free == f) || (pool2.total == t && pool2.free == f),
        "sysfs {pool:?} vs meminfo total {t} free {f}"
    );
    if !pool.nodes.is_empty() {
        let sum: u64 = pool.nodes.iter().map(|n| n.total).sum();
        assert_eq!(sum, pool.total, "per-node totals add up");
    }
}

#[test]
fn reserve_reads_back_and_restores() {
    if !root_or_skip("reserve_reads_back_and_restores") {
        return;
    }
    let before = hp::detect().unwrap().pool(PageSize::M2).unwrap().total;
    let r = hp::reserve(PageSize::M2, before + 4, None).unwrap();
    assert_eq!(r.before, before);
    assert_eq!(r.requested, before + 4);
    let now = hp::detect().unwrap().pool(PageSize::M2).unwrap().total;
    assert_eq!(now, r.got, "read-back equals the kernel's count");
    assert!(r.got > before, "the kernel gave at least one 2M page: {r}");
    let back = hp::reserve(PageSize::M2, before, None).unwrap();
    assert_eq!(back.got, before, "{back}");

    // The per-node file of node 0 works the same way.
    let node_before = hp::detect().unwrap().pool(PageSize::M2).unwrap().nodes[0].total;
    let r = hp::reserve(PageSize::M2, node_before + 2, Some(0)).unwrap();
    assert_eq!(r.before, node_before);
    assert!(r.got > node_before, "{r}");
    hp::reserve(PageSize::M2, node_before, Some(0)).unwrap();

    let err = hp::reserve(PageSize(4), 1, None).unwrap_err().to_string();
    assert!(
        err.contains("no 4k hugepages") && err.contains("2M"),
        "{err}"
    );
}

#[test]
fn mount_shows_up_and_leftovers_are_found() {
    if !root_or_skip("mount_shows_up_and_leftovers_are_found") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("huge");
    hp::mount(&mnt, PageSize::M2).unwrap();
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = hp::unmount(&self.0);
        }
    }
    let guard = Unmount(mnt.clone());
    let st = hp::detect().unwrap();
    let m = st
        .mounts
        .iter()
        .find(|m| m.path == mnt)
        .expect("new mount listed");
    assert_eq!(m.size, PageSize::M2);
    let prefix = format!("dptest{}map_", std::process::id());
    assert!(hp::leftover_files(&st, &prefix).is_empty());
    fs::File::create(mnt.join(format!("{prefix}0"))).unwrap();
    assert_eq!(
        hp::leftover_files(&st, &prefix),
        [mnt.join(format!("{prefix}0"))]
    );
    fs::remove_file(mnt.join(format!("{prefix}0"))).unwrap();
    drop(guard);
    assert!(!hp::detect().unwrap().mounts.iter().any(|m| m.path == mnt));
}
