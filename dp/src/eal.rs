//! The Environment Abstraction Layer: once per process.

use std::ffi::{CStr, CString, c_char, c_int};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};

use dpuproxy_dpdk_sys as sys;

use crate::PortInfo;
use crate::error::{Error, Result};

/// Set by the first `Eal::init` attempt that got past argument checks.
/// DPDK cannot re-initialise the EAL in a process, even after cleanup.
static INITIALISED: AtomicBool = AtomicBool::new(false);

/// The initialised EAL. Cleaned up (`rte_eal_cleanup`) on drop.
///
/// Not `Send`: the EAL is cleaned up from the thread that owns it (the
/// main lcore, which `rte_eal_init` pinned to the first core of `-l`).
#[derive(Debug)]
pub struct Eal {
    _not_send: PhantomData<*const ()>,
}

/// DPDK's text for an errno value.
pub(crate) fn strerror(code: c_int) -> String {
    // SAFETY: rte_strerror accepts any value and returns a pointer to a
    // static or per-lcore NUL-terminated string.
    let p = unsafe { sys::rte_strerror(code.abs()) };
    if p.is_null() {
        return format!("errno {code}");
    }
    // SAFETY: non-null and NUL-terminated (see above); copied at once.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// The calling thread's rte_errno.
pub(crate) fn rte_errno() -> c_int {
    // SAFETY: reads a thread-local int; no preconditions.
    unsafe { sys::dpuproxy_rte_errno() }
}

impl Eal {
    /// `rte_eal_init` with `args` (without the program name, which is
    /// added), e.g. `["-l", "1", "--in-memory", "--vdev=net_null0"]`.
    ///
    /// Fails with [`Error::EalInit`] (rte_errno and a likely reason) when
    /// DPDK refuses the arguments or the environment, and with
    /// [`Error::AlreadyInitialized`] on any later call in the same process,
    /// whether the first succeeded or not (DPDK cannot retry).
    pub fn init<I, S>(args: I) -> Result<Eal>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let args: Vec<String> = std::iter::once("dpuproxy".to_string())
            .chain(args.into_iter().map(|s| s.as_ref().to_string()))
            .collect();
        let mut c_args = Vec::with_capacity(args.len());
        for a in &args {
            c_args.push(CString::new(a.as_str()).map_err(|_| Error::BadArgument(a.clone()))?);
        }
        if INITIALISED.swap(true, Ordering::SeqCst) {
            return Err(Error::AlreadyInitialized);
        }
        // EAL keeps pointers into argv (it permutes it, and some options
        // are referenced later), so the strings live for the process: a
        // few hundred bytes, once.
        let argv: &'static mut [*mut c_char] = Box::leak(
            c_args
                .into_iter()
                .map(CString::into_raw)
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        );
        let argc =
            c_int::try_from(argv.len()).map_err(|_| Error::Config("too many EAL args".into()))?;
        // SAFETY: argv holds argc valid, NUL-terminated, leaked strings;
        // the INITIALISED flag guarantees one call per process.
        let ret = unsafe { sys::rte_eal_init(argc, argv.as_mut_ptr()) };
        if ret < 0 {
            // No retry: after a failed rte_eal_init (even on bad
            // arguments) a second call in 22.11 fails again, so the flag
            // stays set and the process must exit.
            let code = rte_errno();
            return Err(Error::EalInit {
                code,
                msg: strerror(code),
                reason: eal_reason(code),
                args: args[1..].join(" "),
            });
        }
        Ok(Eal {
            _not_send: PhantomData,
        })
    }

    /// Ports the EAL probed (owned by nobody), in id order.
    pub fn ports(&self) -> Vec<PortInfo> {
        let mut out = Vec::new();
        let no_owner = u64::from(sys::RTE_ETH_DEV_NO_OWNER);
        // SAFETY: the EAL is initialised (self exists); these calls only read
        // the ethdev table.
        let mut id = unsafe { sys::rte_eth_find_next_owned_by(0, no_owner) };
        while id < u64::from(sys::RTE_MAX_ETHPORTS) {
            let pid = id as u16;
            out.push(port_info(pid));
            // SAFETY: as above.
            id = unsafe { sys::rte_eth_find_next_owned_by(pid + 1, no_owner) };
        }
        out
    }

    /// The main lcore (the thread that called `init`).
    pub fn main_lcore(&self) -> u32 {
        // SAFETY: reads EAL configuration after init.
        unsafe { sys::rte_get_main_lcore() }
    }

    /// All enabled lcores.
    pub fn lcores(&self) -> Vec<u32> {
        let mut out = Vec::new();
        // SAFETY: reads EAL configuration after init. -1 as unsigned starts
        // the iteration, as RTE_LCORE_FOREACH does.
        let mut i = unsafe { sys::rte_get_next_lcore(u32::MAX, 0, 0) };
        while i < sys::RTE_MAX_LCORE {
            out.push(i);
            // SAFETY: as above.
            i = unsafe { sys::rte_get_next_lcore(i, 0, 0) };
        }
        out
    }

    /// The calling thread's lcore id, None for a non-EAL thread.
    pub fn current_lcore() -> Option<u32> {
        // SAFETY: reads a thread-local; valid before and after init.
        let id = unsafe { sys::dpuproxy_rte_lcore_id() };
        (id != u32::MAX).then_some(id)
    }
}

pub(crate) fn port_info(id: u16) -> PortInfo {
    let mut name = [0 as c_char; sys::RTE_ETH_NAME_MAX_LEN as usize];
    // SAFETY: name has RTE_ETH_NAME_MAX_LEN bytes, as the call requires.
    let ok = unsafe { sys::rte_eth_dev_get_name_by_port(id, name.as_mut_ptr()) } == 0;
    let name = if ok {
        // SAFETY: DPDK wrote a NUL-terminated string into the buffer.
        unsafe { CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    } else {
        format!("port{id}")
    };
    let info = crate::port::dev_info(id).unwrap_or_default();
    let driver = if !info.driver_name.is_null() {
        // SAFETY: driver_name points at the driver's static name.
        unsafe { CStr::from_ptr(info.driver_name) }
            .to_string_lossy()
            .into_owned()
    } else {
        String::new()
    };
    // SAFETY: plain query of a valid port id.
    let socket = unsafe { sys::rte_eth_dev_socket_id(id) };
    PortInfo {
        id,
        name,
        driver,
        socket: u32::try_from(socket).ok(),
    }
}

fn eal_reason(code: c_int) -> &'static str {
    match code {
        libc_errno::EACCES | libc_errno::EPERM => {
            "permission denied: run as root (or with CAP_SYS_ADMIN/CAP_NET_RAW/CAP_IPC_LOCK)"
        }
        libc_errno::EINVAL => "invalid EAL arguments (see the usage text above)",
        libc_errno::ENOMEM => {
            "not enough memory: reserve hugepages (`dpuproxy hugepages --reserve N`) or run \
             with `--no-huge -m 256`"
        }
        libc_errno::EALREADY => "the EAL was already initialised in this process",
        libc_errno::ENOTSUP => "a device or bus could not be probed",
        libc_errno::ENODEV => "no usable device",
        libc_errno::EFAULT => "tailq or memory configuration corrupted",
        libc_errno::ENOEXEC => "could not load a PMD plugin",
        libc_errno::EPROTO => "the mode of the primary/secondary process is incompatible",
        libc_errno::EBUSY => {
            "another primary process holds the runtime directory: use a unique --file-prefix or --in-memory"
        }
        _ => "see the EAL messages above",
    }
}

/// The errno values the EAL reports (Linux numbering, same on aarch64).
mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const EACCES: i32 = 13;
    pub const EFAULT: i32 = 14;
    pub const EBUSY: i32 = 16;
    pub const ENODEV: i32 = 19;
    pub const EINVAL: i32 = 22;
    pub const ENOEXEC: i32 = 8;
    pub const ENOMEM: i32 = 12;
    pub const EPROTO: i32 = 71;
    pub const ENOTSUP: i32 = 95;
    pub const EALREADY: i32 = 114;
}

impl Drop for Eal {
    fn drop(&mut self) {
        // SAFETY: everything borrowing the EAL (pools, ports, mbufs) is gone
        // by the borrow rules; cleanup runs once because Eal is not Clone.
        let ret = unsafe { sys::rte_eal_cleanup() };
        if ret != 0 {
            eprintln!("dp: rte_eal_cleanup failed: {}", strerror(rte_errno()));
        }
    }
}
