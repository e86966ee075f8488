//! dpuproxy-hugepages: find, reserve and size hugepages for DPDK.
//!
//! Contract:
//! - [`detect`] reads the kernel's own accounting: every page size under
//!   `/sys/kernel/mm/hugepages` (2 MiB and 1 GiB on x86_64 and arm64 with
//!   4 KiB base pages; arm64 with 64 KiB base pages has 512 MiB), total,
//!   free, reserved and surplus pages, the per-NUMA-node split, and the
//!   hugetlbfs mounts from `/proc/mounts`.
//! - [`reserve`] asks for N pages of a size, globally or on one node, and
//!   reads back what the kernel really gave (it can give fewer when memory
//!   is fragmented) and says so.
//! - [`mount`] mounts hugetlbfs (needed only without `--in-memory`).
//! - [`MempoolPlan`] sizes the mbuf pool a port configuration needs and
//!   [`advise`] turns it into EAL arguments: hugepages when enough are free,
//!   otherwise the `--no-huge -m N` fallback with the reason stated.
//! - [`leftover_files`] lists hugepage files a DPDK run left behind.
//!
//! No unsafe code: mount(2) goes through rustix. Paths are parameters
//! ([`Sysfs`], defaulting to the real `/sys` and `/proc`), so the tree
//! read can be moved (a chroot, a container's view).
#![forbid(unsafe_code)]

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Errors, each naming the file or call that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A file did not hold what the kernel documents.
    #[error("{path}: unexpected content {content:?}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was there.
        content: String,
    },
    /// The kernel does not offer this page size.
    #[error("no {0} hugepages on this kernel (sizes offered: {1})")]
    NoSuchSize(PageSize, String),
    /// mount(2) failed.
    #[error("mount -t hugetlbfs on {path}: {source}")]
    Mount {
        /// Mount point.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// A hugepage size in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageSize(pub u64);

impl PageSize {
    /// 2 MiB.
    pub const M2: PageSize = PageSize(2048);
    /// 1 GiB.
    pub const G1: PageSize = PageSize(1024 * 1024);

    /// Bytes per page.
    pub fn bytes(self) -> u64 {
        self.0 * 1024
    }

    /// Parses "2M", "2048k", "1G", "1048576kB" (sizes as DPDK and the
    /// kernel write them).
    pub fn parse(s: &str) -> Option<PageSize> {
        let s = s.trim();
        let s = s.strip_suffix('B').unwrap_or(s);
        let (num, mult) = match s.chars().last()? {
            'k' | 'K' => (&s[..s.len() - 1], 1),
            'm' | 'M' => (&s[..s.len() - 1], 1024),
            'g' | 'G' => (&s[..s.len() - 1], 1024 * 1024),
            _ => (s, 0),
        };
        let n: u64 = num.parse().ok()?;
        // A bare number is bytes (hugetlbfs `pagesize=2097152`).
        Some(if mult == 0 {
            PageSize(n / 1024)
        } else {
            PageSize(n * mult)
        })
    }
}

impl fmt::Display for PageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1024 * 1024) {
            write!(f, "{}G", self.0 / (1024 * 1024))
        } else if self.0.is_multiple_of(1024) {
            write!(f, "{}M", self.0 / 1024)
        } else {
            write!(f, "{}k", self.0)
        }
    }
}

/// Pages of one size on one NUMA node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePages {
    /// Node number.
    pub node: u32,
    /// Pages reserved on the node.
    pub total: u64,
    /// Free pages on the node.
    pub free: u64,
}

/// The kernel's accounting for one page size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PagePool {
    /// Page size.
    pub size: PageSize,
    /// `nr_hugepages`.
    pub total: u64,
    /// `free_hugepages`.
    pub free: u64,
    /// `resv_hugepages`: promised to a mapping, not yet faulted in.
    pub reserved: u64,
    /// `surplus_hugepages` (overcommit).
    pub surplus: u64,
    /// Per-node split (empty on kernels without NUMA sysfs).
    pub nodes: Vec<NodePages>,
}

impl PagePool {
    /// Pages a new user can still get (free minus reserved).
    pub fn usable(&self) -> u64 {
        self.free.saturating_sub(self.reserved)
    }
}

/// A hugetlbfs mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Mount point.
    pub path: PathBuf,
    /// Its page size (`pagesize=` option, else the default size).
    pub size: PageSize,
}

/// Everything [`detect`] finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// One entry per page size the kernel offers, smallest first.
    pub pools: Vec<PagePool>,
    /// The default hugepage size (`Hugepagesize` in /proc/meminfo).
    pub default_size: Option<PageSize>,
    /// hugetlbfs mounts.
    pub mounts: Vec<Mount>,
}

impl Status {
    /// The pool of one size.
    pub fn pool(&self, size: PageSize) -> Option<&PagePool> {
        self.pools.iter().find(|p| p.size == size)
    }
}

/// Where the kernel files are (the real ones by default).
#[derive(Debug, Clone)]
pub struct Sysfs {
    /// `/sys`.
    pub sys: PathBuf,
    /// `/proc`.
    pub proc: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Self {
            sys: "/sys".into(),
            proc: "/proc".into(),
        }
    }
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn read_u64(path: &Path) -> Result<u64> {
    let s = read(path)?;
    s.trim().parse().map_err(|_| Error::Parse {
        path: path.to_path_buf(),
        content: s,
    })
}

fn size_dir(size: PageSize) -> String {
    format!("hugepages-{}kB", size.0)
}

impl Sysfs {
    /// See [`detect`].
    pub fn detect(&self) -> Result<Status> {
        let base = self.sys.join("kernel/mm/hugepages");
        let mut pools = Vec::new();
        let entries = match fs::read_dir(&base) {
            Ok(e) => e
                .collect::<io::Result<Vec<_>>>()
                .map_err(|source| Error::Io {
                    path: base.clone(),
                    source,
                })?,
            // A kernel without hugetlb support: no pools, not an error.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(Error::Io { path: base, source }),
        };
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(kb) = name
                .strip_prefix("hugepages-")
                .and_then(|s| s.strip_suffix("kB"))
                .and_then(|s| s.parse().ok())
            else {
                continue;
            };
            let size = PageSize(kb);
            let d = e.path();
            pools.push(PagePool {
                size,
                total: read_u64(&d.join("nr_hugepages"))?,
                free: read_u64(&d.join("free_hugepages"))?,
                reserved: read_u64(&d.join("resv_hugepages"))?,
                surplus: read_u64(&d.join("surplus_hugepages"))?,
                nodes: self.nodes(size)?,
            });
        }
        pools.sort_by_key(|p| p.size);
        let default_size = read(&self.proc.join("meminfo"))
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("Hugepagesize:").map(str::to_string))
            })
            .and_then(|v| PageSize::parse(&v.replace(' ', "")));
        let mounts = parse_mounts(&read(&self.proc.join("mounts"))?, default_size);
        Ok(Status {
            pools,
            default_size,
            mounts,
        })
    }

    fn nodes(&self, size: PageSize) -> Result<Vec<NodePages>> {
        let base = self.sys.join("devices/system/node");
        let Ok(entries) = fs::read_dir(&base) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(node) = name.strip_prefix("node").and_then(|n| n.parse().ok()) else {
                continue;
            };
            let d = e.path().join("hugepages").join(size_dir(size));
            if !d.exists() {
                continue;
            }
            out.push(NodePages {
                node,
                total: read_u64(&d.join("nr_hugepages"))?,
                free: read_u64(&d.join("free_hugepages"))?,
            });
        }
        out.sort_by_key(|n| n.node);
        Ok(out)
    }

    /// See [`reserve`].
    pub fn reserve(&self, size: PageSize, pages: u64, node: Option<u32>) -> Result<Reservation> {
        let status = self.detect()?;
        let Some(pool) = status.pool(size) else {
            let offered = status
                .pools
                .iter()
                .map(|p| p.size.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Error::NoSuchSize(size, offered));
        };
        let file = match node {
            Some(n) => self
                .sys
                .join(format!("devices/system/node/node{n}/hugepages"))
                .join(size_dir(size))
                .join("nr_hugepages"),
            None => self
                .sys
                .join("kernel/mm/hugepages")
                .join(size_dir(size))
                .join("nr_hugepages"),
        };
        let before = match node {
            Some(n) => pool
                .nodes
                .iter()
                .find(|x| x.node == n)
                .map(|x| x.total)
                .unwrap_or(0),
            None => pool.total,
        };
        fs::write(&file, format!("{pages}\n")).map_err(|source| Error::Io {
            path: file.clone(),
            source,
        })?;
        let after = read_u64(&file)?;
        Ok(Reservation {
            size,
            node,
            before,
            requested: pages,
            got: after,
        })
    }
}

fn parse_mounts(text: &str, default_size: Option<PageSize>) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 4 || f[2] != "hugetlbfs" {
                return None;
            }
            let size = f[3]
                .split(',')
                .find_map(|o| o.strip_prefix("pagesize="))
                .and_then(PageSize::parse)
                .or(default_size)?;
            // /proc/mounts escapes spaces as \040.
            Some(Mount {
                path: PathBuf::from(f[1].replace("\\040", " ")),
                size,
            })
        })
        .collect()
}

/// Page sizes, counts and hugetlbfs mounts of this machine.
pub fn detect() -> Result<Status> {
    Sysfs::default().detect()
}

/// What a reservation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// Page size.
    pub size: PageSize,
    /// Node, or None for the global pool.
    pub node: Option<u32>,
    /// Pages reserved before.
    pub before: u64,
    /// Pages asked for.
    pub requested: u64,
    /// Pages the kernel holds now.
    pub got: u64,
}

impl fmt::Display for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let place = match self.node {
            Some(n) => format!("node {n}"),
            None => "all nodes".into(),
        };
        write!(
            f,
            "{} pages on {place}: had {}, asked for {}, got {}",
            self.size, self.before, self.requested, self.got
        )?;
        if self.got < self.requested {
            write!(
                f,
                " (the kernel could not find enough contiguous memory: free some, \
                 reserve at boot with hugepages=N on the kernel command line, or run DPDK \
                 with --no-huge)"
            )?;
        }
        Ok(())
    }
}

/// Sets the number of `size` pages to `pages` (through
/// `/sys/kernel/mm/hugepages/.../nr_hugepages`, or the node's own file when
/// `node` is given) and reads back what the kernel gave. Needs root.
pub fn reserve(size: PageSize, pages: u64, node: Option<u32>) -> Result<Reservation> {
    Sysfs::default().reserve(size, pages, node)
}

/// Mounts hugetlbfs of `size` pages on `path` (created if missing). Needs
/// root. Only needed for DPDK runs without `--in-memory`.
pub fn mount(path: &Path, size: PageSize) -> Result<()> {
    let err = |source: io::Error| Error::Mount {
        path: path.to_path_buf(),
        source,
    };
    fs::create_dir_all(path).map_err(err)?;
    let opts =
        std::ffi::CString::new(format!("pagesize={}", size.bytes())).expect("no NUL in a number");
    rustix::mount::mount(
        "nodev",
        path,
        "hugetlbfs",
        rustix::mount::MountFlags::empty(),
        opts.as_c_str(),
    )
    .map_err(|e| err(e.into()))
}

/// Unmounts a hugetlbfs mount made by [`mount`].
pub fn unmount(path: &Path) -> Result<()> {
    rustix::mount::unmount(path, rustix::mount::UnmountFlags::empty()).map_err(|e| Error::Mount {
        path: path.to_path_buf(),
        source: e.into(),
    })
}

/// Files in the hugetlbfs mounts whose names start with `prefix` (DPDK
/// names them `<file-prefix>map_<n>`, `rtemap_<n>` by default). After a
/// clean DPDK exit with `--in-memory` there are none.
pub fn leftover_files(status: &Status, prefix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for m in &status.mounts {
        if let Ok(rd) = fs::read_dir(&m.path) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(prefix) {
                    out.push(e.path());
                }
            }
        }
    }
    out.sort();
    out
}

/// The memory a port's mbuf pool needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MempoolPlan {
    /// Mbufs (of the form 2^k - 1, the efficient size for ring pools).
    pub mbufs: u32,
    /// Per-lcore cache size.
    pub cache: u32,
    /// Bytes of the pool, headers included.
    pub bytes: u64,
}

/// The inputs of [`MempoolPlan::for_port`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortShape {
    /// Rx queues.
    pub rx_queues: u32,
    /// Tx queues.
    pub tx_queues: u32,
    /// Rx descriptors per queue.
    pub rx_desc: u32,
    /// Tx descriptors per queue.
    pub tx_desc: u32,
    /// Polling lcores.
    pub lcores: u32,
    /// Burst size.
    pub burst: u32,
    /// Mbufs the application holds beyond the rings (reassembly, TCP
    /// retransmit queues...).
    pub in_flight: u32,
    /// Data room per mbuf, headroom included (DPDK default 2176).
    pub data_room: u32,
}

impl Default for PortShape {
    fn default() -> Self {
        Self {
            rx_queues: 1,
            tx_queues: 1,
            rx_desc: 1024,
            tx_desc: 1024,
            lcores: 1,
            burst: 32,
            in_flight: 1024,
            data_room: 2048 + 128,
        }
    }
}

/// sizeof(struct rte_mbuf): two cache lines on every DPDK target.
const MBUF_HEADER: u64 = 128;
/// Per-object mempool header and cache-line padding (rounded up).
const OBJ_OVERHEAD: u64 = 64;
/// A mempool's per-lcore cache array (RTE_MAX_LCORE caches of up to
/// 2 x 512 pointers): allocated whether used or not, about 1.1 MiB with
/// Debian's RTE_MAX_LCORE of 128.
const CACHE_ARRAY: u64 = 128 * (3 * 512 * 8 + 64);

impl MempoolPlan {
    /// Sizes the pool for a port: every rx and tx descriptor full, one
    /// burst in hand and a full cache per lcore, plus `in_flight`.
    pub fn for_port(s: &PortShape) -> MempoolPlan {
        let cache = 256u32.min(s.burst.max(1) * 8);
        let need = s.rx_queues * s.rx_desc
            + s.tx_queues * s.tx_desc
            + s.lcores * (s.burst + cache)
            + s.in_flight;
        let mbufs = (need.saturating_add(1))
            .checked_next_power_of_two()
            .map_or(u32::MAX, |p| p - 1);
        let obj = MBUF_HEADER + u64::from(s.data_room) + OBJ_OVERHEAD;
        // The backing ring holds a pointer per object, rounded to 2^k.
        let ring = 8 * u64::from(mbufs + 1);
        MempoolPlan {
            mbufs,
            cache,
            bytes: u64::from(mbufs) * obj + ring + CACHE_ARRAY,
        }
    }

    /// Pages of `size` this plan needs, with `eal_overhead` bytes on top
    /// for the EAL's own memzones (ethdev rings, tailqs).
    pub fn pages(&self, size: PageSize, eal_overhead: u64) -> u64 {
        (self.bytes + eal_overhead).div_ceil(size.bytes())
    }
}

/// What the EAL memory bytes a run needs beyond its pools: ethdev queue
/// memzones and EAL bookkeeping (measured: ~20 MiB for one port).
pub const EAL_OVERHEAD: u64 = 32 << 20;

/// What to do for a given need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Advice {
    /// Enough free pages of this size.
    Hugepages {
        /// Page size to use.
        size: PageSize,
        /// Pages needed.
        pages: u64,
        /// Pages usable now.
        usable: u64,
    },
    /// Not enough: run with `--no-huge`.
    NoHuge {
        /// Why.
        reason: String,
        /// EAL arguments to add (`--no-huge -m N`).
        eal_args: Vec<String>,
    },
}

impl fmt::Display for Advice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Advice::Hugepages {
                size,
                pages,
                usable,
            } => write!(f, "use {size} hugepages: need {pages}, {usable} usable"),
            Advice::NoHuge { reason, eal_args } => write!(
                f,
                "{reason}; fall back to anonymous memory with `{}` (slower: 4 KiB pages mean TLB \
                 misses, and PMDs that need physical addresses will not work)",
                eal_args.join(" ")
            ),
        }
    }
}

/// Picks hugepages (the smallest size with enough usable pages) or the
/// `--no-huge` fallback for a need of `bytes`.
pub fn advise(status: &Status, bytes: u64) -> Advice {
    for p in &status.pools {
        let pages = bytes.div_ceil(p.size.bytes());
        if p.usable() >= pages {
            return Advice::Hugepages {
                size: p.size,
                pages,
                usable: p.usable(),
            };
        }
    }
    let mib = bytes.div_ceil(1 << 20).max(64);
    let reason = if status.pools.is_empty() {
        "this kernel offers no hugepages".to_string()
    } else {
        let have = status
            .pools
            .iter()
            .map(|p| format!("{} usable {}", p.usable(), p.size))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "{} MiB needed but only {have} pages (reserve more with `dpuproxy hugepages --reserve N`)",
            mib
        )
    };
    Advice::NoHuge {
        reason,
        eal_args: vec!["--no-huge".into(), "-m".into(), mib.to_string()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_parsing() {
        assert_eq!(PageSize::parse("2M"), Some(PageSize::M2));
        assert_eq!(PageSize::parse("2048kB"), Some(PageSize::M2));
        assert_eq!(PageSize::parse("1G"), Some(PageSize::G1));
        assert_eq!(PageSize::parse("2097152"), Some(PageSize::M2));
        assert_eq!(PageSize::parse("x"), None);
        assert_eq!(PageSize::G1.to_string(), "1G");
        assert_eq!(PageSize(64).to_string(), "64k");
    }

    #[test]
    fn mounts_take_pagesize_option_or_default() {
        let text = "proc /proc proc rw 0 0\n\
                    hugetlbfs /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0\n\
                    nodev /mnt/huge\\0401g hugetlbfs rw,pagesize=1024M 0 0\n\
                    nodev /mnt/h hugetlbfs rw 0 0\n";
        let m = parse_mounts(text, Some(PageSize::M2));
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].size, PageSize::M2);
        assert_eq!(m[1].path, PathBuf::from("/mnt/huge 1g"));
        assert_eq!(m[1].size, PageSize::G1);
        assert_eq!(m[2].size, PageSize::M2);
    }

    #[test]
    fn plan_covers_rings_and_caches_with_2k_minus_1() {
        let s = PortShape::default();
        let p = MempoolPlan::for_port(&s);
        let need = 1024 + 1024 + 32 + 256 + 1024;
        assert!(p.mbufs >= need, "{p:?}");
        assert!((p.mbufs + 1).is_power_of_two(), "{p:?}");
        assert!(p.mbufs / 2 < need, "not more than twice the need: {p:?}");
        let bigger = MempoolPlan::for_port(&PortShape {
            rx_queues: 4,
            tx_queues: 4,
            lcores: 4,
            ..s
        });
        assert!(bigger.mbufs > p.mbufs && bigger.bytes > p.bytes);
        assert_eq!(p.pages(PageSize::M2, 0), p.bytes.div_ceil(2 << 20));
    }

    #[test]
    fn advice_prefers_hugepages_and_falls_back_plainly() {
        let mut st = Status {
            pools: vec![PagePool {
                size: PageSize::M2,
                total: 10,
                free: 10,
                reserved: 2,
                surplus: 0,
                nodes: vec![],
            }],
            default_size: Some(PageSize::M2),
            mounts: vec![],
        };
        // 8 usable pages of 2 MiB = 16 MiB.
        assert!(matches!(
            advise(&st, 16 << 20),
            Advice::Hugepages {
                pages: 8,
                usable: 8,
                ..
            }
        ));
        match advise(&st, (16 << 20) + 1) {
            Advice::NoHuge { reason, eal_args } => {
                assert!(reason.contains("8 usable 2M"), "{reason}");
                assert_eq!(eal_args, ["--no-huge", "-m", "64"]);
            }
            a => panic!("{a:?}"),
        }
        st.pools.clear();
        let a = advise(&st, 100 << 20).to_string();
        assert!(
            a.contains("no hugepages") && a.contains("--no-huge -m 100"),
            "{a}"
        );
    }
}
