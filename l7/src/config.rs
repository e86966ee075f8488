//! Every limit and timeout of the L7 core, with its default.
//!
//! Each value is named here once; the CLI/TOML layer in `ctl` maps onto
//! these fields. Most are tested at their limit in the core tests; not yet
//! `connect_timeout`, `max_response_header_bytes`, `max_pipelined_bytes`
//! and `max_sessions` (the affinity table's bound has a unit test).

use std::time::Duration;

/// Limits and timeouts for one proxy instance (shared by all workers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreConfig {
    /// Largest request head (request line + fields + CRLFCRLF); above it: 431.
    pub max_header_bytes: usize,
    /// Most request header fields; above it: 431.
    pub max_headers: usize,
    /// Largest request body; above it: 413. Request bodies are read whole
    /// before routing (MCP JSON-RPC messages are small and must be sniffed).
    pub max_body_bytes: u64,
    /// Largest response head a backend may send; above it: 502.
    pub max_response_header_bytes: usize,
    /// Bytes waiting for a slow client before the core stops reading the
    /// backend (TCP flow control then slows the backend down).
    pub max_downstream_buffer: usize,
    /// Most pipelined request bytes buffered while a response is in flight.
    pub max_pipelined_bytes: usize,
    /// Most sessions in the affinity table.
    pub max_sessions: usize,
    /// Most sessions one client (its address, or its token's subject when
    /// auth is on) may hold; another `initialize` gets 429. 0: a tenth of
    /// `max_sessions` (at least 16).
    pub max_sessions_per_client: usize,
    /// A session unused this long is forgotten.
    pub session_idle_timeout: Duration,
    /// A keep-alive client connection with no request for this long is closed.
    pub client_idle_timeout: Duration,
    /// A request must arrive completely within this time of its first byte: 408.
    pub request_timeout: Duration,
    /// A backend connect must complete within this time.
    pub connect_timeout: Duration,
    /// A backend must send its response head, and then keep a non-SSE body
    /// moving, within this time: 504.
    pub response_timeout: Duration,
    /// An SSE stream may stay silent (no backend bytes) this long. There is
    /// no limit on total stream duration.
    pub sse_idle_timeout: Duration,
    /// When nothing was sent to an SSE client for this long, a `:` comment
    /// line is sent so that middleboxes keep the stream open. Zero disables.
    pub sse_keepalive_interval: Duration,
}

impl CoreConfig {
    /// The per-client session quota in force.
    pub fn sessions_per_client(&self) -> usize {
        match self.max_sessions_per_client {
            0 => (self.max_sessions / 10).max(16),
            n => n,
        }
    }
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            max_body_bytes: 4 * 1024 * 1024,
            max_response_header_bytes: 64 * 1024,
            max_downstream_buffer: 256 * 1024,
            max_pipelined_bytes: 64 * 1024,
            max_sessions: 100_000,
            max_sessions_per_client: 0,
            session_idle_timeout: Duration::from_secs(30 * 60),
            client_idle_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(3),
            response_timeout: Duration::from_secs(300),
            sse_idle_timeout: Duration::from_secs(3600),
            sse_keepalive_interval: Duration::from_secs(15),
        }
    }
}
