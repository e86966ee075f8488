//! Per-flow steering between the DPDK path and the kernel on one
//! interface, through our XDP program (`bpf/flow_steer.bpf.c`) loaded by
//! `net_af_xdp`'s `xdp_prog=`.
//!
//! Both paths hold the same address and MAC. Each TCP flow has an owner:
//! DPDK (the frame is redirected to the AF_XDP socket), the kernel (passed
//! up its stack) or *held* (dropped while the connection moves between the
//! two; TCP retransmits it, and nobody answers it with a RST). A flow with
//! no entry goes to the default owner, so new connections follow the mode.
//! ARP requests, ICMP and other traffic go to the kernel; ARP replies go
//! to the default owner. See the program's header for the map contract.
//!
//! Use: [`ProgramFile::write`] the embedded program, start the EAL with
//! [`with_xdp_prog`]'s arguments, open the port (the PMD loads and attaches
//! the program when it sets up its queues), then [`FlowSteer::find`] the
//! program on the interface and set owners. Every update is one `bpf`
//! syscall (1–2 µs here), safe from any thread.
//!
//! libbpf does the syscalls and the netlink query (libdpdk-dev depends on
//! it; the af_xdp PMD links it anyway).

use std::ffi::{CString, c_int, c_void};
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The compiled program (`clang -target bpf`, see build.rs).
pub const PROGRAM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/flow_steer.bpf.o"));

/// The program's map names (at most 15 bytes: the kernel's limit).
const FLOWS_MAP: &str = "dpuproxy_flows";
const MODE_MAP: &str = "dpuproxy_mode";
const STATS_MAP: &str = "dpuproxy_stats";

/// Who receives a flow's frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The DPDK path (the AF_XDP socket of the frame's queue).
    Dpdk = 1,
    /// The kernel stack.
    Kernel = 2,
    /// Nobody: frames are dropped while the connection moves.
    Hold = 3,
}

impl Owner {
    fn from_u8(v: u8) -> Option<Owner> {
        match v {
            1 => Some(Owner::Dpdk),
            2 => Some(Owner::Kernel),
            3 => Some(Owner::Hold),
            _ => None,
        }
    }
}

/// A TCP flow as its frames arrive on the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    /// The peer's address and port.
    pub remote: SocketAddrV4,
    /// Ours.
    pub local: SocketAddrV4,
}

impl Flow {
    /// The program's key: remote address, local address, remote port,
    /// local port, all in network byte order (as in the headers).
    fn key(&self) -> [u8; 12] {
        let mut k = [0u8; 12];
        k[0..4].copy_from_slice(&self.remote.ip().octets());
        k[4..8].copy_from_slice(&self.local.ip().octets());
        k[8..10].copy_from_slice(&self.remote.port().to_be_bytes());
        k[10..12].copy_from_slice(&self.local.port().to_be_bytes());
        k
    }
}

/// Frames the program has steered, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SteerStats {
    /// Redirected to DPDK.
    pub to_dpdk: u64,
    /// Passed to the kernel.
    pub to_kernel: u64,
    /// Dropped because their flow was held.
    pub held: u64,
}

/// The program written to a file for `xdp_prog=` (the PMD opens it when it
/// sets up its queues); removed on drop.
#[derive(Debug)]
pub struct ProgramFile {
    path: PathBuf,
}

impl ProgramFile {
    /// Write the embedded program into `dir` under a name of this process.
    pub fn write(dir: &Path) -> Result<ProgramFile> {
        let path = dir.join(format!("dpuproxy-flow-steer-{}.bpf.o", std::process::id()));
        std::fs::write(&path, PROGRAM).map_err(|e| {
            Error::Config(format!(
                "cannot write the XDP program to {}: {e}",
                path.display()
            ))
        })?;
        Ok(ProgramFile { path })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ProgramFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `eal_args` with `xdp_prog=<program>` added to the one `net_af_xdp`
/// device, and that device's interface name. Errors when there is no such
/// device, several of them, or it already names a program.
pub fn with_xdp_prog(eal_args: &[String], program: &Path) -> Result<(Vec<String>, String)> {
    let mut args = eal_args.to_vec();
    let mut found: Option<(usize, String)> = None;
    for (i, a) in args.iter().enumerate() {
        let spec = match a.strip_prefix("--vdev=") {
            Some(s) => s,
            None if i > 0 && (eal_args[i - 1] == "--vdev" || eal_args[i - 1] == "-a") => a,
            None => continue,
        };
        if !spec.starts_with("net_af_xdp") {
            continue;
        }
        if found.is_some() {
            return Err(Error::Config(
                "XDP flow steering takes one net_af_xdp device; the EAL arguments name several"
                    .into(),
            ));
        }
        if spec.split(',').any(|kv| kv.starts_with("xdp_prog=")) {
            return Err(Error::Config(format!(
                "the net_af_xdp device already names an XDP program ({spec}); flow steering loads its own"
            )));
        }
        let iface = spec
            .split(',')
            .find_map(|kv| kv.strip_prefix("iface="))
            .ok_or_else(|| Error::Config(format!("net_af_xdp device without iface=: {spec}")))?;
        found = Some((i, iface.to_string()));
    }
    let Some((i, iface)) = found else {
        return Err(Error::Config(
            "XDP flow steering needs a net_af_xdp device (--vdev=net_af_xdp0,iface=...)".into(),
        ));
    };
    args[i] = format!("{},xdp_prog={}", args[i], program.display());
    Ok((args, iface))
}

// libbpf (1.x: failures return -errno).
unsafe extern "C" {
    fn bpf_xdp_query_id(ifindex: c_int, flags: c_int, prog_id: *mut u32) -> c_int;
    fn bpf_prog_get_fd_by_id(id: u32) -> c_int;
    fn bpf_map_get_fd_by_id(id: u32) -> c_int;
    fn bpf_obj_get_info_by_fd(fd: c_int, info: *mut c_void, info_len: *mut u32) -> c_int;
    fn bpf_map_update_elem(
        fd: c_int,
        key: *const c_void,
        value: *const c_void,
        flags: u64,
    ) -> c_int;
    fn bpf_map_delete_elem(fd: c_int, key: *const c_void) -> c_int;
    fn bpf_map_lookup_elem(fd: c_int, key: *const c_void, value: *mut c_void) -> c_int;
    fn libbpf_num_possible_cpus() -> c_int;
}

/// The head of the kernel's `struct bpf_prog_info` (uapi `linux/bpf.h`),
/// up to `name`: the kernel fills at most the length we pass, and the
/// layout of a uapi struct never changes.
#[repr(C)]
#[derive(Default)]
struct ProgInfoHead {
    kind: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<ProgInfoHead>() == 80);

/// The head of `struct bpf_map_info`, up to `name`.
#[repr(C)]
#[derive(Default)]
struct MapInfoHead {
    kind: u32,
    id: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    name: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<MapInfoHead>() == 40);

fn bpf_error(op: &'static str, rc: c_int) -> Error {
    Error::Xdp {
        op,
        msg: std::io::Error::from_raw_os_error(-rc).to_string(),
    }
}

/// An fd libbpf returned (negative: -errno).
fn owned_fd(op: &'static str, rc: c_int) -> Result<OwnedFd> {
    if rc < 0 {
        return Err(bpf_error(op, rc));
    }
    // SAFETY: a non-negative return of libbpf's *_get_fd_by_id is a new
    // descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(rc) })
}

/// `info` filled by `bpf_obj_get_info_by_fd` for `fd`.
fn object_info<T>(op: &'static str, fd: &OwnedFd, info: &mut T) -> Result<()> {
    let mut len = std::mem::size_of::<T>() as u32;
    // SAFETY: `info` is a live, writable `T` of `len` bytes; the kernel
    // writes at most `len` bytes, and the only pointer it follows
    // (`map_ids` of a prog info) is set by the caller to a buffer of
    // `nr_map_ids` entries.
    let rc = unsafe { bpf_obj_get_info_by_fd(fd.as_raw_fd(), (info as *mut T).cast(), &mut len) };
    if rc < 0 {
        return Err(bpf_error(op, rc));
    }
    Ok(())
}

fn name_of(raw: &[u8; 16]) -> &str {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    std::str::from_utf8(&raw[..end]).unwrap_or("")
}

/// Our program's maps on one interface.
#[derive(Debug)]
pub struct FlowSteer {
    ifname: String,
    prog_id: u32,
    flows: OwnedFd,
    mode: OwnedFd,
    stats: OwnedFd,
    cpus: usize,
}

impl FlowSteer {
    /// The program attached to `ifname` (by the af_xdp PMD) and its maps.
    /// Errors when the interface has no XDP program or not ours.
    pub fn find(ifname: &str) -> Result<FlowSteer> {
        let c = CString::new(ifname)
            .map_err(|_| Error::Config(format!("bad interface name {ifname:?}")))?;
        // SAFETY: `c` is a NUL-terminated string that outlives the call.
        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if ifindex == 0 {
            return Err(Error::Config(format!("no interface {ifname}")));
        }
        let mut prog_id = 0u32;
        // SAFETY: `prog_id` is a live u32 the call writes.
        let rc = unsafe { bpf_xdp_query_id(ifindex as c_int, 0, &mut prog_id) };
        if rc < 0 {
            return Err(bpf_error("bpf_xdp_query_id", rc));
        }
        if prog_id == 0 {
            return Err(Error::Config(format!(
                "{ifname} has no XDP program attached (is the net_af_xdp port open with xdp_prog=?)"
            )));
        }
        // SAFETY: plain syscall wrapper taking an id.
        let prog = owned_fd("bpf_prog_get_fd_by_id", unsafe {
            bpf_prog_get_fd_by_id(prog_id)
        })?;
        let mut head = ProgInfoHead::default();
        object_info("bpf_obj_get_info_by_fd (program)", &prog, &mut head)?;
        let mut ids = vec![0u32; head.nr_map_ids as usize];
        let mut head = ProgInfoHead {
            nr_map_ids: ids.len() as u32,
            map_ids: ids.as_mut_ptr() as u64,
            ..ProgInfoHead::default()
        };
        object_info("bpf_obj_get_info_by_fd (program maps)", &prog, &mut head)?;
        ids.truncate(head.nr_map_ids as usize);
        let (mut flows, mut mode, mut stats) = (None, None, None);
        for id in ids {
            // SAFETY: plain syscall wrapper taking an id.
            let fd = owned_fd("bpf_map_get_fd_by_id", unsafe { bpf_map_get_fd_by_id(id) })?;
            let mut info = MapInfoHead::default();
            object_info("bpf_obj_get_info_by_fd (map)", &fd, &mut info)?;
            match name_of(&info.name) {
                FLOWS_MAP if info.key_size == 12 && info.value_size == 1 => flows = Some(fd),
                MODE_MAP if info.value_size == 4 => mode = Some(fd),
                STATS_MAP if info.value_size == 8 => stats = Some(fd),
                _ => {}
            }
        }
        let (Some(flows), Some(mode), Some(stats)) = (flows, mode, stats) else {
            return Err(Error::Config(format!(
                "the XDP program on {ifname} (id {prog_id}) is not dpuproxy's flow steering"
            )));
        };
        // SAFETY: no arguments; reads sysfs.
        let cpus = unsafe { libbpf_num_possible_cpus() };
        if cpus <= 0 {
            return Err(bpf_error("libbpf_num_possible_cpus", cpus.min(-1)));
        }
        Ok(FlowSteer {
            ifname: ifname.to_string(),
            prog_id,
            flows,
            mode,
            stats,
            cpus: cpus as usize,
        })
    }

    /// The interface.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The program's id.
    pub fn prog_id(&self) -> u32 {
        self.prog_id
    }

    fn update(&self, op: &'static str, fd: &OwnedFd, key: &[u8], value: &[u8]) -> Result<()> {
        // SAFETY: key and value are live buffers of the map's key and value
        // sizes (checked in `find`); the kernel only reads them.
        let rc = unsafe {
            bpf_map_update_elem(
                fd.as_raw_fd(),
                key.as_ptr().cast(),
                value.as_ptr().cast(),
                0,
            )
        };
        if rc < 0 {
            return Err(bpf_error(op, rc));
        }
        Ok(())
    }

    /// Send `flow`'s frames to `owner` from now on.
    pub fn set(&self, flow: &Flow, owner: Owner) -> Result<()> {
        self.update(
            "bpf_map_update_elem (flow)",
            &self.flows,
            &flow.key(),
            &[owner as u8],
        )
    }

    /// Forget `flow`: it follows the default owner again. Forgetting a flow
    /// that has no entry is not an error.
    pub fn forget(&self, flow: &Flow) -> Result<()> {
        let key = flow.key();
        // SAFETY: `key` is a live buffer of the map's key size.
        let rc = unsafe { bpf_map_delete_elem(self.flows.as_raw_fd(), key.as_ptr().cast()) };
        if rc < 0 && rc != -libc::ENOENT {
            return Err(bpf_error("bpf_map_delete_elem (flow)", rc));
        }
        Ok(())
    }

    /// `flow`'s own entry (`None`: it follows the default).
    pub fn owner(&self, flow: &Flow) -> Result<Option<Owner>> {
        let key = flow.key();
        let mut v = [0u8; 1];
        // SAFETY: key and value are live buffers of the map's key and
        // value sizes; the kernel writes `v` only.
        let rc = unsafe {
            bpf_map_lookup_elem(
                self.flows.as_raw_fd(),
                key.as_ptr().cast(),
                v.as_mut_ptr().cast(),
            )
        };
        if rc == -libc::ENOENT {
            return Ok(None);
        }
        if rc < 0 {
            return Err(bpf_error("bpf_map_lookup_elem (flow)", rc));
        }
        Ok(Owner::from_u8(v[0]))
    }

    /// Where flows without an entry go (DPDK or the kernel; holding every
    /// new flow is refused).
    pub fn set_default(&self, owner: Owner) -> Result<()> {
        if owner == Owner::Hold {
            return Err(Error::Config(
                "the default owner is DPDK or the kernel, never hold".into(),
            ));
        }
        let v = (owner as u32).to_ne_bytes();
        self.update(
            "bpf_map_update_elem (mode)",
            &self.mode,
            &0u32.to_ne_bytes(),
            &v,
        )
    }

    /// The default owner.
    pub fn default_owner(&self) -> Result<Owner> {
        let key = 0u32.to_ne_bytes();
        let mut v = [0u8; 4];
        // SAFETY: key and value are live 4-byte buffers (the array map's
        // key and value sizes); the kernel writes `v` only.
        let rc = unsafe {
            bpf_map_lookup_elem(
                self.mode.as_raw_fd(),
                key.as_ptr().cast(),
                v.as_mut_ptr().cast(),
            )
        };
        if rc < 0 {
            return Err(bpf_error("bpf_map_lookup_elem (mode)", rc));
        }
        // The program treats anything but DPDK as the kernel.
        Ok(match u32::from_ne_bytes(v) {
            1 => Owner::Dpdk,
            _ => Owner::Kernel,
        })
    }

    /// The program's frame counters, summed over CPUs.
    pub fn stats(&self) -> Result<SteerStats> {
        let mut sums = [0u64; 3];
        let mut per_cpu = vec![0u64; self.cpus];
        for (i, sum) in sums.iter_mut().enumerate() {
            let key = (i as u32).to_ne_bytes();
            // SAFETY: a per-CPU array's value is one 8-byte slot per
            // possible CPU: `per_cpu` holds exactly that many u64s.
            let rc = unsafe {
                bpf_map_lookup_elem(
                    self.stats.as_raw_fd(),
                    key.as_ptr().cast(),
                    per_cpu.as_mut_ptr().cast(),
                )
            };
            if rc < 0 {
                return Err(bpf_error("bpf_map_lookup_elem (stats)", rc));
            }
            *sum = per_cpu.iter().sum();
        }
        Ok(SteerStats {
            to_dpdk: sums[0],
            to_kernel: sums[1],
            held: sums[2],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_is_embedded_and_an_elf_bpf_object() {
        assert_eq!(&PROGRAM[..4], b"\x7fELF");
        // e_machine (little-endian ELF header offset 18) is EM_BPF (247).
        assert_eq!(u16::from_le_bytes([PROGRAM[18], PROGRAM[19]]), 247);
    }

    #[test]
    fn a_flow_key_is_in_network_order_remote_first() {
        let f = Flow {
            remote: "10.1.2.3:40000".parse().unwrap(),
            local: "10.9.8.7:443".parse().unwrap(),
        };
        assert_eq!(
            f.key(),
            [10, 1, 2, 3, 10, 9, 8, 7, 0x9c, 0x40, 0x01, 0xbb],
            "40000 = 0x9c40, 443 = 0x01bb"
        );
    }

    #[test]
    fn the_program_path_goes_on_the_af_xdp_device_only() {
        let args: Vec<String> = [
            "-l",
            "1",
            "--vdev=net_ring0",
            "--vdev=net_af_xdp0,iface=v0,start_queue=0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (out, iface) = with_xdp_prog(&args, Path::new("/tmp/p.o")).unwrap();
        assert_eq!(iface, "v0");
        assert_eq!(out[2], "--vdev=net_ring0");
        assert_eq!(
            out[3],
            "--vdev=net_af_xdp0,iface=v0,start_queue=0,xdp_prog=/tmp/p.o"
        );
        let two_words: Vec<String> = ["--vdev", "net_af_xdp1,iface=v1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (out, iface) = with_xdp_prog(&two_words, Path::new("/p")).unwrap();
        assert_eq!(
            (out[1].as_str(), iface.as_str()),
            ("net_af_xdp1,iface=v1,xdp_prog=/p", "v1")
        );
        for bad in [
            vec!["--vdev=net_af_packet0,iface=v0"],
            vec!["--vdev=net_af_xdp0,iface=a", "--vdev=net_af_xdp1,iface=b"],
            vec!["--vdev=net_af_xdp0,iface=a,xdp_prog=/x.o"],
            vec!["--vdev=net_af_xdp0"],
        ] {
            let a: Vec<String> = bad.iter().map(|s| s.to_string()).collect();
            assert!(with_xdp_prog(&a, Path::new("/p")).is_err(), "{bad:?}");
        }
    }
}
