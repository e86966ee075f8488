//! The data-path counters of both paths (relaxed atomics, one set per
//! proxy, shared by every worker or lcore). The admin listener renders
//! them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of the client connections' lives.
#[derive(Debug, Default)]
pub struct PathMetrics {
    /// Client connections accepted.
    pub accepted: AtomicU64,
    /// Client connections refused at the connection limit.
    pub rejected: AtomicU64,
    /// Client connections still in their TLS handshake closed to make room
    /// for new ones (the oldest first).
    pub shed: AtomicU64,
    /// Client connections closed (each accepted one once).
    pub closed: AtomicU64,
    /// Client connections closed abortively (RST, no close_notify).
    pub aborted: AtomicU64,
    /// Open client connections.
    pub open: AtomicU64,
    /// Completed TLS handshakes.
    pub handshakes: AtomicU64,
    /// Failed or timed-out TLS handshakes.
    pub handshake_failures: AtomicU64,
    /// Client connections ended by a TLS error after the handshake.
    pub tls_errors: AtomicU64,
    /// New backend connections opened.
    pub upstream_connects: AtomicU64,
    /// Backend connections taken from the idle pool.
    pub pool_reuses: AtomicU64,
    /// Idle pooled connections closed because they outlived `pool_idle`.
    pub pool_expired: AtomicU64,
    /// Pooled connections found dead (closed by the backend, or stray bytes).
    pub pool_dead: AtomicU64,
    /// Gauge: bytes held for clients outside the TCP buffers (plaintext
    /// both ways, TLS records), summed over workers, refreshed each second.
    pub buffered: AtomicU64,
}

impl PathMetrics {
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A counter's value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
