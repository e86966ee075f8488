//! dpuproxy-hugepages: find, reserve and size hugepages for DPDK.
//!
//! Contract (built out by the DPDK-foundation issue): detect 2 MiB and
//! 1 GiB pages (total, free, mounts), reserve N through
//! `/proc/sys/vm/nr_hugepages` or per-node sysfs, mount hugetlbfs on
//! request, size mempools from the configuration, and when pages cannot be
//! had say so plainly and offer the `--no-huge` EAL fallback.
//! No code yet: nothing in the kernel data path needs hugepages.
