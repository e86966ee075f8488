//! `dpuproxy hugepages [--reserve N] [--show]`, like dpdk-hugepages.py:
//! show page sizes, counts and mounts; reserve N pages; say what a default
//! port needs and whether it will fit or must fall back to `--no-huge`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use dpuproxy_hugepages::{self as hp, MempoolPlan, PageSize, PortShape};

#[derive(clap::Args, Debug)]
pub struct HugepagesArgs {
    /// Set the number of pages of --size to N (0 releases them). Needs root.
    #[arg(long, value_name = "N")]
    pub reserve: Option<u64>,
    /// Show the state (the default when nothing else is asked).
    #[arg(long)]
    pub show: bool,
    /// Page size for --reserve and --mount: 2M or 1G (default: the kernel's default size).
    #[arg(long, value_name = "SIZE")]
    pub size: Option<String>,
    /// Reserve on this NUMA node only.
    #[arg(long)]
    pub node: Option<u32>,
    /// Mount hugetlbfs here (only needed for DPDK without --in-memory).
    #[arg(long, value_name = "DIR")]
    pub mount: Option<PathBuf>,
}

pub fn run(args: &HugepagesArgs) -> anyhow::Result<()> {
    let status = hp::detect().context("reading hugepage state")?;
    let size = match &args.size {
        Some(s) => PageSize::parse(s).with_context(|| format!("--size {s}: use 2M or 1G"))?,
        None => status.default_size.unwrap_or(PageSize::M2),
    };
    let mut did = false;
    if let Some(n) = args.reserve {
        let r = hp::reserve(size, n, args.node).map_err(|e| match &e {
            hp::Error::Io { source, .. }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                anyhow::anyhow!("{e}: reserving hugepages needs root")
            }
            _ => anyhow::anyhow!(e),
        })?;
        println!("reserve: {r}");
        did = true;
        if r.got < r.requested {
            eprintln!(
                "warning: only {} of {} pages; DPDK can still run with --no-huge",
                r.got, r.requested
            );
        }
    }
    if let Some(dir) = &args.mount {
        if status.mounts.iter().any(|m| &m.path == dir) {
            println!("mount: {} is already hugetlbfs", dir.display());
        } else {
            hp::mount(dir, size)?;
            println!("mount: hugetlbfs ({size} pages) on {}", dir.display());
        }
        did = true;
    }
    if args.show || !did {
        show()?;
    }
    Ok(())
}

fn show() -> anyhow::Result<()> {
    let st = hp::detect()?;
    if st.pools.is_empty() {
        bail!("this kernel offers no hugepages (no /sys/kernel/mm/hugepages); use --no-huge");
    }
    println!(
        "{:<6} {:>8} {:>8} {:>8} {:>8}  per node (total/free)",
        "size", "total", "free", "resv", "surplus"
    );
    for p in &st.pools {
        let nodes = p
            .nodes
            .iter()
            .map(|n| format!("node{}: {}/{}", n.node, n.total, n.free))
            .collect::<Vec<_>>()
            .join(" ");
        let default = if Some(p.size) == st.default_size {
            "*"
        } else {
            ""
        };
        println!(
            "{:<6} {:>8} {:>8} {:>8} {:>8}  {nodes}",
            format!("{}{default}", p.size),
            p.total,
            p.free,
            p.reserved,
            p.surplus
        );
    }
    if st.mounts.is_empty() {
        println!("mounts: none (fine with --in-memory; otherwise `--mount /dev/hugepages`)");
    }
    for m in &st.mounts {
        println!("mount: {} ({} pages)", m.path.display(), m.size);
    }
    let shape = PortShape::default();
    let plan = MempoolPlan::for_port(&shape);
    let need = plan.bytes + hp::EAL_OVERHEAD;
    println!(
        "a default port ({} rx + {} tx queue of {}, burst {}): pool of {} mbufs, ~{} MiB with EAL overhead",
        shape.rx_queues,
        shape.tx_queues,
        shape.rx_desc,
        shape.burst,
        plan.mbufs,
        need >> 20
    );
    for lcores in [1u16, 4] {
        let p = dpuproxy_engine::pool_plan(lcores, 32);
        println!(
            "`run --mode dpdk` with {lcores} polling lcore(s): pool of {} mbufs, ~{} MiB with EAL overhead",
            p.mbufs,
            (p.bytes + hp::EAL_OVERHEAD) >> 20
        );
    }
    let one_lcore = dpuproxy_engine::pool_plan(1, 32);
    println!(
        "advice (`run --mode dpdk`, one lcore): {}",
        hp::advise(&st, one_lcore.bytes + hp::EAL_OVERHEAD)
    );
    let left = hp::leftover_files(&st, "rtemap_");
    if !left.is_empty() {
        println!(
            "leftover DPDK hugepage files (a crashed run without --in-memory): {}",
            left.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    Ok(())
}
