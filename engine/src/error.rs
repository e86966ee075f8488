//! The engine's error type.

/// Why the full-offload engine could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// DPDK itself: EAL, port, mempool, lcores.
    #[error(transparent)]
    Dp(#[from] dpuproxy_dp::Error),
    /// The userspace TCP stack could not be built.
    #[error("userspace TCP stack: {0}")]
    Stack(String),
    /// The client-facing port could not be listened on.
    #[error("cannot listen on port {port} of the userspace TCP stack: {reason}")]
    Listen {
        /// The port.
        port: u16,
        /// Why.
        reason: String,
    },
    /// The live mode switch cannot run on this port or build.
    #[error("live mode switch: {0}")]
    Switch(String),
    /// The loop of one lcore panicked (the others were stopped).
    #[error("the loop polling queue {queue} panicked: {what}")]
    LcorePanic {
        /// Its queue.
        queue: usize,
        /// The panic message.
        what: String,
    },
}

/// Engine results.
pub type Result<T> = std::result::Result<T, Error>;
