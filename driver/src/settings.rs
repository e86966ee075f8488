//! The driver's limits and timeouts (the L7 core's are in `CoreConfig`).

use std::time::Duration;

/// Settings of one driver (a kernel worker or a DPDK lcore).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverSettings {
    /// A TLS handshake must finish within this time.
    pub handshake_timeout: Duration,
    /// How long a closing connection may take to flush to a client that
    /// does not read; then it is reset.
    pub linger_timeout: Duration,
    /// How long a closed connection (our FIN out) drains client input,
    /// waiting for the client's own end.
    pub linger_drain: Duration,
    /// Idle pooled backend connections older than this are closed (keep it
    /// below the backends' own keep-alive timeout).
    pub pool_idle: Duration,
    /// Most idle pooled connections per backend.
    pub pool_max_per_backend: usize,
    /// Most client connections; beyond it new ones are refused.
    pub max_connections: usize,
    /// Most client connections still in their TLS handshake; beyond it (or
    /// at `max_connections`) the oldest handshaking one is shed to make
    /// room, so stalled handshakes cannot shut established clients out.
    pub max_handshaking: usize,
    /// Rounds one connection is driven before the others get a turn.
    pub max_rounds: usize,
}

impl Default for DriverSettings {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            linger_timeout: Duration::from_secs(30),
            linger_drain: Duration::from_secs(2),
            pool_idle: Duration::from_secs(4),
            pool_max_per_backend: 64,
            max_connections: 50_000,
            max_handshaking: 4096,
            max_rounds: 64,
        }
    }
}
