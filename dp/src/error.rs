//! The dp error type.

/// Errors of the DPDK layer. Each says what to do about it where there is
/// something to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This build has no DPDK (see `dpuproxy-dpdk-sys`).
    #[error(
        "this dpuproxy was built without DPDK (libdpdk was not found by pkg-config at build \
         time); install libdpdk-dev and rebuild"
    )]
    Unavailable,
    /// `rte_eal_init` runs at most once per process.
    #[error(
        "the DPDK EAL is already initialised in this process (DPDK allows one EAL per process)"
    )]
    AlreadyInitialized,
    /// An argument cannot be passed to C.
    #[error("EAL argument {0:?} contains a NUL byte")]
    BadArgument(String),
    /// `rte_eal_init` failed.
    #[error("DPDK EAL init failed: {reason} (rte_errno {code}: {msg}); EAL args: {args}")]
    EalInit {
        /// rte_errno.
        code: i32,
        /// DPDK's text for it.
        msg: String,
        /// What it most likely means.
        reason: &'static str,
        /// The arguments given.
        args: String,
    },
    /// No usable port after EAL init.
    #[error("no DPDK port: {0}")]
    NoPort(String),
    /// Another `Port` of this process holds the port id.
    #[error("port {0} is already open in this process (one Port per port id)")]
    PortInUse(u16),
    /// An ethdev call failed.
    #[error("{op} on port {port} failed: {msg} ({code})")]
    Port {
        /// Port id.
        port: u16,
        /// The DPDK call.
        op: &'static str,
        /// Negative errno DPDK returned.
        code: i32,
        /// Its text.
        msg: String,
    },
    /// A mempool could not be created.
    #[error("mempool {name} ({n} mbufs) could not be created: {msg}; {hint}")]
    Mempool {
        /// Pool name.
        name: String,
        /// Requested mbufs.
        n: u32,
        /// DPDK's text.
        msg: String,
        /// What to do.
        hint: &'static str,
    },
    /// A configuration value that cannot work.
    #[error("{0}")]
    Config(String),
    /// A libbpf call of the XDP flow steering failed.
    #[error("XDP flow steering: {op} failed: {msg}")]
    Xdp {
        /// The call.
        op: &'static str,
        /// errno's text.
        msg: String,
    },
}

/// dp results.
pub type Result<T> = std::result::Result<T, Error>;
